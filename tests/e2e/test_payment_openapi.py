"""The gateway's OpenAPI document includes the public PaymentService like the other
services (from its google.api.http annotations, no per-RPC code), never the internal
one, and documents the payment notifications' kinds from the protos' comments."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.e2e.conftest import Stack, curl


def parameter(operation: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in operation["parameters"] if p["name"] == name)


async def test_openapi_has_the_payment_routes_and_the_payment_notifications(
    stack: Stack,
) -> None:
    status, spec = await asyncio.to_thread(curl, f"{stack.url}/openapi.json")
    assert status == 200
    paths = spec["paths"]

    get_payment = paths["/v1/payments/{id}"]["get"]
    list_payments = paths["/v1/users/{user_id}/payments"]["get"]
    assert get_payment["tags"] == list_payments["tags"] == ["PaymentService"]
    assert parameter(get_payment, "id")["in"] == "path"
    assert parameter(list_payments, "orderId")["in"] == "query"
    assert {"pageSize", "pageToken"} <= {p["name"] for p in list_payments["parameters"]}
    payment = get_payment["responses"]["200"]["content"]["application/json"]["schema"]
    assert payment == {"$ref": "#/components/schemas/shop.payment.v1.GetPaymentResponse"}
    # Authorize, Capture, Void and Refund are the order service's, never the gateway's.
    operations = [op for methods in paths.values() for op in methods.values()]
    assert not [op for op in operations if "PaymentInternalService" in op["tags"]]
    assert (
        "PAYMENT_STATE_REFUNDED"
        in (spec["components"]["schemas"]["shop.payment.v1.Payment"]["properties"]["state"]["enum"])
    )

    kind = spec["components"]["schemas"]["shop.notification.v1.Notification"]["properties"]["kind"]
    assert kind["enum"][-2:] == [
        "NOTIFICATION_KIND_PAYMENT_REFUNDED",
        "NOTIFICATION_KIND_PAYMENT_FAILED",
    ]
    assert (
        "- `NOTIFICATION_KIND_PAYMENT_REFUNDED`: The payment of a cancelled order"
        in (kind["description"])
    )
    assert "- `NOTIFICATION_KIND_PAYMENT_FAILED`: An order attempt" in kind["description"]
