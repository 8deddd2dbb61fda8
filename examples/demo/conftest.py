"""Shared fixtures of the demo suite; they behave the same under pytest and conveyor."""

import pytest


@pytest.fixture(scope="session")
def catalogue():
    """A session-wide resource: set up once per worker process."""
    return {"apple": 3, "pear": 5, "plum": 7}
