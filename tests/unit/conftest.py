"""Fixtures shared by the use-case tests: the order service's use cases on fakes."""

from __future__ import annotations

import pytest

from services.order.usecases import Orders
from tests.fakes.order import Shop


@pytest.fixture
def shop() -> Shop:
    return Shop()


@pytest.fixture
def orders(shop: Shop) -> Orders:
    return shop.orders()
