"""Plain tests, a parametrized one and a module-scoped fixture."""

import time

import pytest


@pytest.fixture(scope="module")
def warehouse(catalogue):
    time.sleep(0.2)  # an expensive set-up, kept alive across the tests of this module
    return dict(catalogue)


@pytest.mark.parametrize("fruit", ["apple", "pear", "plum"])
def test_fruit_is_stocked(warehouse, fruit):
    assert warehouse[fruit] > 0


def test_total_stock(warehouse):
    assert sum(warehouse.values()) == 15


@pytest.mark.parametrize("count", range(20))
def test_restock(warehouse, count):
    assert warehouse["apple"] + count >= 3
