import pytest
from google.protobuf import field_mask_pb2

from gateway.rest import _fill_update_mask, _to_json
from gateway.transcode import PathTemplate, build_request
from services.common.errors import InvalidArgument
from shop.notification.v1 import notification_pb2
from shop.order.v1 import order_pb2
from shop.product.v1 import product_pb2


def test_templates_match_variables_nested_fields_and_verbs() -> None:
    cancel = PathTemplate.parse("/v1/orders/{id}:cancel")
    assert cancel.match("/v1/orders/ord_1:cancel") == {"id": "ord_1"}
    assert cancel.match("/v1/orders/ord_1") is None
    assert cancel.match("/v1/orders/a/b:cancel") is None
    nested = PathTemplate.parse("/v1/products/{product.id}")
    assert nested.match("/v1/products/prd_9") == {"product.id": "prd_9"}
    wide = PathTemplate.parse("/v1/{name=shelves/*/books/**}")
    assert wide.match("/v1/shelves/s1/books/a/b") == {"name": "shelves/s1/books/a/b"}
    assert PathTemplate.parse("/v1/products:batchGet").specificity > nested.specificity


def test_query_sets_nested_repeated_and_json_named_fields() -> None:
    request = product_pb2.UpdateProductRequest()
    build_request(
        request,
        path_values={"product.id": "prd_1"},
        query=[("product.name", "Mug"), ("updateMask", "name,stock"), ("product.stock", "4")],
        body="",
        raw_body=b"",
    )
    assert (request.product.id, request.product.name, request.product.stock) == ("prd_1", "Mug", 4)
    assert list(request.update_mask.paths) == ["name", "stock"]

    batch = product_pb2.BatchGetProductsRequest()
    build_request(batch, path_values={}, query=[("ids", "a"), ("ids", "b")], body="", raw_body=b"")
    assert list(batch.ids) == ["a", "b"]

    listing = notification_pb2.ListNotificationsRequest()
    build_request(
        listing,
        path_values={"user_id": "usr_1"},
        query=[("page_size", "10"), ("unreadOnly", "true")],
        body="",
        raw_body=b"",
    )
    assert (listing.page_size, listing.unread_only, listing.user_id) == (10, True, "usr_1")


@pytest.mark.parametrize(
    ("query", "body", "raw", "field"),
    [
        ([("id", "ord_other")], "", b"", "id"),  # the query may not override the path
        ([], "*", b'{"id": "ord_other"}', "id"),  # nor the body
        ([("reason", "x"), ("reason", "y")], "", b"", "reason"),
        ([("nope", "1")], "", b"", "nope"),
        ([], "*", b"[1, 2]", "body"),
        ([], "*", b'{"bogus": 1}', "bogus"),  # an unknown field, by its name
        ([], "*", b"{not json", "body"),
    ],
)
def test_bad_cancel_requests_are_refused(
    query: list[tuple[str, str]], body: str, raw: bytes, field: str
) -> None:
    request = order_pb2.CancelOrderRequest()
    with pytest.raises(InvalidArgument) as caught:
        build_request(request, path_values={"id": "ord_1"}, query=query, body=body, raw_body=raw)
    assert [v.field for v in caught.value.violations] == [field]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ([("page_size", "ten")], "page_size"),
        ([("page_size", "99999999999")], "page_size"),
        ([("user_id", "usr_other")], "user_id"),
    ],
)
def test_bad_query_values_are_refused(query: list[tuple[str, str]], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        build_request(
            order_pb2.ListOrdersRequest(),
            path_values={"user_id": "usr_1"},
            query=query,
            body="",
            raw_body=b"",
        )
    assert [v.field for v in caught.value.violations] == [field]


def test_the_same_value_in_path_and_body_is_fine() -> None:
    request = order_pb2.CancelOrderRequest()
    build_request(
        request,
        path_values={"id": "ord_1"},
        query=[],
        body="*",
        raw_body=b'{"id": "ord_1", "reason": "r"}',
    )
    assert (request.id, request.reason) == ("ord_1", "r")


def test_patch_without_a_mask_updates_the_fields_in_the_body() -> None:
    request = product_pb2.UpdateProductRequest()
    document = build_request(
        request,
        path_values={"product.id": "prd_1"},
        query=[],
        body="product",
        raw_body=b'{"name": "Mug", "price": {"currencyCode": "EUR", "amountMinor": "5"}}',
    )
    _fill_update_mask(request, "product", document, {"product.id"})
    assert sorted(request.update_mask.paths) == ["name", "price"]
    given = product_pb2.UpdateProductRequest(update_mask=field_mask_pb2.FieldMask(paths=["stock"]))
    _fill_update_mask(given, "product", {"name": "x"}, set())
    assert list(given.update_mask.paths) == ["stock"], "a mask from the client is kept"


def test_response_body_answers_with_one_field() -> None:
    reply = product_pb2.GetProductResponse(product=product_pb2.Product(id="prd_1", name="Mug"))
    assert _to_json(reply, "product") == '{"id": "prd_1", "name": "Mug"}'
    listing = product_pb2.ListProductsResponse(products=[product_pb2.Product(id="a")])
    assert _to_json(listing, "products") == '[{"id": "a"}]'
