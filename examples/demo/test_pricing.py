"""Some slower tests: the queue balances them across workers."""

import time

import pytest

PRICES = {"apple": 0.5, "pear": 0.75, "plum": 1.25}


@pytest.mark.parametrize("fruit", sorted(PRICES))
def test_price_lookup_is_slow(fruit):
    time.sleep(0.3)
    assert PRICES[fruit] > 0


def test_basket_total():
    assert sum(PRICES.values()) == pytest.approx(2.5)


@pytest.mark.skip(reason="discounts are not implemented yet")
def test_discount():
    raise NotImplementedError


@pytest.mark.xfail(reason="rounding to the cent is a known gap", strict=True)
def test_rounding():
    assert round(2.675, 2) == 2.68
