"""One trace per request across the mesh, and exact request metrics on /metrics."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from shop.order.v1 import order_connect
from shop.user.v1 import user_connect, user_pb2
from tests import tokens
from tests.conftest import require
from tests.e2e.conftest import gateway_in_process
from tests.mesh import Mesh, running_mesh
from tests.rpc import fails
from tests.waits import eventually


class Capturing(Sampler):
    """Records spans only while a test captures them, so other tests pay nothing."""

    on = False

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> SamplingResult:
        if not self.on:
            return SamplingResult(Decision.DROP)
        # The span keeps the attributes the sampler passes on.
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "Capturing"


_exporter = InMemorySpanExporter()
_sampler = Capturing()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider records into memory for this test."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(sampler=_sampler)
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    _exporter.clear()
    _sampler.on = True
    try:
        yield _exporter
    finally:
        _sampler.on = False
        _exporter.clear()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with running_mesh(tmp_path) as running:
        yield running


def _scope(span: ReadableSpan) -> str:
    return span.instrumentation_scope.name if span.instrumentation_scope else ""


@pytest.fixture(params=["embedded", "nats"])
async def any_transport_mesh(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Mesh]:
    broker = ""
    if request.param == "nats":
        require("127.0.0.1", 4222, "NATS")
        broker = "nats://127.0.0.1:4222"
    async with running_mesh(tmp_path, broker) as running:
        yield running


CREATE_AT_THE_GATEWAY = "POST /shop.order.v1.OrderService/CreateOrder"


async def test_one_create_order_through_the_gateway_is_one_connected_trace(
    any_transport_mesh: Mesh, spans: InMemorySpanExporter
) -> None:
    mesh = any_transport_mesh
    user = await mesh.user()
    await mesh.replica_holds(user.id, True)
    product = await mesh.product(stock=5)
    async with gateway_in_process(mesh) as edge:
        url = edge.url
        spans.clear()
        async with order_connect.OrderServiceClient(
            url, interceptors=[tokens.ConnectBearer()]
        ) as client:
            placed = await client.create_order(mesh.order_request(user.id, {product.id: 2}))

    def order_consumed() -> bool:
        """The notification service has processed the order's event (its span ended)."""
        finished = spans.get_finished_spans()
        traces = {s.context.trace_id for s in finished if s.name == CREATE_AT_THE_GATEWAY}
        return any(s.kind is SpanKind.CONSUMER and s.context.trace_id in traces for s in finished)

    await eventually(order_consumed, "the order's event was consumed")

    everything = spans.get_finished_spans()
    gateway = [
        s for s in everything if _scope(s).endswith("asgi") and s.name == CREATE_AT_THE_GATEWAY
    ]
    assert len(gateway) == 1
    trace_id = gateway[0].context.trace_id
    ours = [s for s in everything if s.context.trace_id == trace_id]
    # One root: the test's own HTTP client span (the connectrpc client traces too).
    roots = [s for s in ours if s.parent is None]
    assert len(roots) == 1
    assert gateway[0].parent is not None and gateway[0].parent.span_id == roots[0].context.span_id
    names = {(s.kind, s.name) for s in ours}

    assert (SpanKind.SERVER, "POST /shop.order.v1.OrderService/CreateOrder") in names
    for method in (
        "/shop.order.v1.OrderService/CreateOrder",
        "/shop.product.v1.ProductInternalService/ReserveStock",
        "/shop.payment.v1.PaymentInternalService/Authorize",
    ):
        assert (SpanKind.CLIENT, method) in names, method
        assert (SpanKind.SERVER, method) in names, method
    # The order service's replica knew the user as active: the user service was not asked.
    assert not any(name.endswith("/ValidateUser") for _, name in names)
    (order_server,) = [
        s
        for s in ours
        if s.kind == SpanKind.SERVER and s.name == "/shop.order.v1.OrderService/CreateOrder"
    ]
    described = dict(order_server.attributes or {})
    assert (described["rpc.system"], described["rpc.service"], described["rpc.method"]) == (
        "grpc",
        "shop.order.v1.OrderService",
        "CreateOrder",
    )
    assert described["rpc.grpc.status_code"] == 0 and described["net.peer.ip"] == "127.0.0.1"
    database = [
        s for s in ours if "db.system" in (s.attributes or {}) and s.kind == SpanKind.CLIENT
    ]
    assert len(database) >= 6  # reads and writes in product, order, notification
    publish = [s for s in ours if s.kind == SpanKind.PRODUCER and s.name.endswith(" publish")]
    process = [s for s in ours if s.kind == SpanKind.CONSUMER and s.name.endswith(" process")]
    assert len(publish) == 1 and len(process) == 1
    consumed, published = dict(process[0].attributes or {}), dict(publish[0].attributes or {})
    assert consumed["messaging.message.id"] == published["messaging.message.id"]
    if mesh.broker_url:  # through NATS, the processing is a child of the publish
        assert process[0].parent is not None
        assert process[0].parent.span_id == publish[0].context.span_id
    # The notification's own database write happens inside the consumer span.
    inside = [s for s in database if s.parent and s.parent.span_id == process[0].context.span_id]
    assert inside, "no database span under the consumer span"

    # Parent links are intact: every span but the root has its parent in this trace.
    by_id = {s.context.span_id: s for s in ours}
    for span in ours:
        if span is not roots[0]:
            assert span.parent is not None and span.parent.span_id in by_id, span.name
    assert placed.order.id


def _families(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _sample(families: dict[str, Any], name: str, sample: str, **labels: str) -> float:
    for sample_ in families[name].samples:
        if sample_.name == sample and all(sample_.labels.get(k) == v for k, v in labels.items()):
            return float(sample_.value)
    return 0.0


async def scrape(url: str) -> dict[str, Any]:
    return await asyncio.to_thread(_families, url)


async def test_metrics_count_calls_and_errors_exactly(mesh: Mesh) -> None:
    user = await mesh.user()
    for _ in range(3):
        await mesh.users.GetUser(user_pb2.GetUserRequest(id=user.id))
    for _ in range(2):
        missing = user_pb2.GetUserRequest(id="usr_missing")
        await fails(mesh.users.GetUser(missing), grpc.StatusCode.NOT_FOUND)
    empty = user_pb2.GetUserRequest(id="")
    await fails(mesh.users.GetUser(empty), grpc.StatusCode.INVALID_ARGUMENT)

    port = mesh.services["user"].metrics_port
    families = await scrape(f"http://127.0.0.1:{port}/metrics")
    method = "shop.user.v1.UserService/GetUser"
    counted = {
        code: _sample(
            families, "rpc_server_requests", "rpc_server_requests_total", method=method, code=code
        )
        for code in ("OK", "NOT_FOUND", "INVALID_ARGUMENT")
    }
    assert counted == {"OK": 3, "NOT_FOUND": 2, "INVALID_ARGUMENT": 1}
    durations = _sample(
        families, "rpc_server_duration_seconds", "rpc_server_duration_seconds_count", method=method
    )
    assert durations == 6
    assert _sample(families, "db_pool_connections_in_use", "db_pool_connections_in_use") == 0

    # The gateway counts by route: a Connect procedure, a REST rule, never a raw id.
    async with gateway_in_process(mesh) as edge:
        url = edge.url
        async with user_connect.UserServiceClient(
            url, interceptors=[tokens.ConnectBearer()]
        ) as client:
            for _ in range(2):
                await client.get_user(user_pb2.GetUserRequest(id=user.id))
        await asyncio.to_thread(_get_status, f"{url}/v1/users/usr_missing")
        await asyncio.to_thread(_get_status, f"{url}/no/such/path")
        public = await asyncio.to_thread(_get_status, f"{url}/metrics")
        gateway = await scrape(f"{edge.metrics_url}/metrics")
    requests = "gateway_requests_total"
    assert public == 404, "metrics are not served on the public port"
    assert (
        _sample(
            gateway,
            "gateway_requests",
            requests,
            route="/shop.user.v1.UserService/GetUser",
            protocol="connect",
            code="OK",
            status="200",
        )
        == 2
    )
    refused = _sample(
        gateway, "gateway_requests", requests, route="GET /v1/users/{id}", code="UNAUTHENTICATED"
    )
    assert refused == 1  # refused for want of a token, and still counted under its route
    assert (
        _sample(
            gateway, "gateway_requests", requests, route="other", code="NOT_FOUND", status="404"
        )
        == 2  # /no/such/path, and /metrics on the public port
    )
    routes = {s.labels["route"] for s in gateway["gateway_requests"].samples}
    assert not any("usr_missing" in route for route in routes)


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


async def test_event_metrics_show_the_outbox_drained_and_the_consumer_caught_up(
    mesh: Mesh,
) -> None:
    user = await mesh.user()
    product = await mesh.product(stock=5)
    for _ in range(3):
        await mesh.orders.CreateOrder(mesh.order_request(user.id, {product.id: 1}))
    consumer = mesh.services["notification"].parts.consumer

    async def caught_up() -> bool:
        return bool(consumer.applied == 3)

    await eventually(caught_up, "the consumer caught up")
    order = await scrape(f"http://127.0.0.1:{mesh.services['order'].metrics_port}/metrics")
    notification = await scrape(
        f"http://127.0.0.1:{mesh.services['notification'].metrics_port}/metrics"
    )
    assert _sample(order, "outbox_backlog_events", "outbox_backlog_events") == 0
    assert (
        _sample(order, "outbox_oldest_unsent_age_seconds", "outbox_oldest_unsent_age_seconds") == 0
    )
    assert _sample(notification, "event_consumer_applied", "event_consumer_applied") == 3
    assert _sample(notification, "notification_open_streams", "notification_open_streams") == 0
    lag = _sample(notification, "event_consumer_lag_seconds", "event_consumer_lag_seconds")
    assert 0 < lag < 5
