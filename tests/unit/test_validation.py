import pytest

from services.common.errors import InvalidArgument
from services.common.validation import validate, violations_of
from shop.order.v1 import order_pb2
from shop.product.v1 import product_internal_pb2


def test_field_paths_name_nested_and_repeated_fields() -> None:
    request = order_pb2.CreateOrderRequest(
        user_id="usr_1",
        idempotency_key="key-1",
        items=[
            order_pb2.CreateOrderItem(product_id="prd_1", quantity=1),
            order_pb2.CreateOrderItem(product_id="prd_2", quantity=0),
        ],
    )
    assert [v.field for v in violations_of(request)] == ["items[1].quantity"]


def test_message_rules_name_their_field_by_rule_id() -> None:
    item = product_internal_pb2.StockItem(product_id="p", quantity=1)
    request = product_internal_pb2.ReserveStockRequest(reservation_id="r", items=[item, item])
    (violation,) = violations_of(request)
    assert (violation.field, violation.reason) == ("items.product_id", "items.product_id.unique")


def test_validate_raises_with_every_violation() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate(order_pb2.CreateOrderRequest())
    assert {v.field for v in caught.value.violations} == {"user_id", "items", "idempotency_key"}
    assert caught.value.code.name == "INVALID_ARGUMENT"


def test_valid_request_passes() -> None:
    validate(order_pb2.GetOrderRequest(id="ord_1"))
