"""Fixtures for the plugin tests: each module runs one real plugin (from the test extras)
beside plain pytest."""

from __future__ import annotations

import pytest


@pytest.fixture
def with_plugins(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Every installed plugin active, as in a project that installs them."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "")
    return pytester
