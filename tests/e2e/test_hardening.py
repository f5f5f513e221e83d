"""Holes an outside test found, each pinned by the input that opened it, and the edge
test: the same bad inputs over Connect (JSON and binary), gRPC-Web, gRPC and REST get
a clean refusal in the caller's protocol, never a 500, INTERNAL or UNKNOWN, and
change no row."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.auth import Authentication
from shop.order.v1 import order_pb2
from shop.user.v1 import user_pb2
from tests import tokens
from tests.e2e.conftest import Stack, gateway_in_process
from tests.mesh import Mesh, running_mesh
from tests.rpc import fails, reason_of, violated_fields
from tests.waits import eventually

UPDATE_USER = "/shop.user.v1.UserService/UpdateUser"
CREATE_USER = "/shop.user.v1.UserService/CreateUser"
PROTOCOLS = ("connect-json", "connect-proto", "grpc-web", "grpc", "rest")


@dataclass
class Answer:
    http_status: int
    grpc_status: str  # "" when the protocol has none
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def frame(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def call(
    url: str,
    protocol: str,
    procedure: str,
    message: Any,
    headers: list[bytes] | None = None,
    *,
    json_body: bytes | None = None,
    rest: tuple[str, str] | None = None,
    token: str | None = tokens.ADMIN_TOKEN,
    work: Path,
) -> Answer:
    """One request with curl, as an outside client would send it; `headers` are raw
    bytes, so they may be anything a socket can carry."""
    body_file, head_file, out_file = work / "body", work / "head", work / "out"
    command: list[str | bytes] = ["curl", "-s", "-m", "10", "-D", str(head_file)]
    command += ["-o", str(out_file), "-X", rest[0] if rest else "POST"]
    if token:
        command += ["-H", f"authorization: Bearer {token}"]
    for header in headers or []:
        command += ["-H", header]
    as_json = json_body if json_body is not None else _to_json(message)
    if protocol == "connect-json":
        body, content_type = as_json, "application/json"
    elif protocol == "connect-proto":
        body, content_type = message.SerializeToString(), "application/proto"
    elif protocol == "grpc-web":
        body, content_type = frame(message.SerializeToString()), "application/grpc-web+proto"
    elif protocol == "grpc":
        body, content_type = frame(message.SerializeToString()), "application/grpc"
        command += ["--http2-prior-knowledge", "-H", "te: trailers"]
    else:
        body, content_type = as_json, "application/json"
    body_file.write_bytes(body)
    command += ["-H", f"content-type: {content_type}", "--data-binary", f"@{body_file}"]
    command.append(url + (rest[1] if rest else procedure))
    subprocess.run(command, check=True, timeout=30)
    head = head_file.read_bytes().decode("latin-1")
    lines = [line for line in head.splitlines() if line.strip()]
    status = int(lines[0].split()[1])
    found = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    content = out_file.read_bytes() if out_file.exists() else b""
    grpc_status = found.get("grpc-status", "")
    if protocol == "grpc-web" and not grpc_status:
        for line in content[5:].decode("latin-1").splitlines():  # the trailers frame
            if line.lower().startswith("grpc-status:"):
                grpc_status = line.split(":", 1)[1].strip()
    return Answer(status, grpc_status, found, content)


def _to_json(message: Any) -> bytes:
    from google.protobuf import json_format

    return json_format.MessageToJson(message).encode()


def refused_cleanly(answer: Answer, protocol: str, grpc_code: int, http_status: int) -> None:
    """The refusal is the expected code in the caller's protocol."""
    if protocol in ("grpc", "grpc-web"):
        assert answer.http_status == 200, answer
        assert answer.grpc_status == str(grpc_code), answer
    else:
        assert answer.http_status == http_status, answer
        if protocol == "connect-json" or protocol == "connect-proto":
            name = grpc.StatusCode(_code(grpc_code)).name.lower()
            assert answer.json()["code"] == name, answer
        else:
            assert answer.json()["code"] == grpc_code, answer  # google.rpc.Status


def _code(number: int) -> Any:
    return next(code.value for code in grpc.StatusCode if code.value[0] == number)


async def counts(mesh: Mesh) -> tuple[int, ...]:
    return (
        await mesh.sql("user", "SELECT count(*) FROM users"),
        await mesh.sql("product", "SELECT count(*) FROM products"),
        await mesh.sql("order", "SELECT count(*) FROM orders"),
        await mesh.sql("notification", "SELECT count(*) FROM notifications"),
    )


def update_user(user_id: str, **fields: Any) -> user_pb2.UpdateUserRequest:
    return user_pb2.UpdateUserRequest(user=user_pb2.User(id=user_id, **fields))


# -- hole 1: a deactivated user can't reactivate himself --------------------------------


async def test_a_deactivated_user_cannot_reactivate_himself(stack: Stack, tmp_path: Path) -> None:
    mesh = stack.mesh
    ann = await mesh.user()
    product = await mesh.product(stock=5)
    from google.protobuf import field_mask_pb2

    await mesh.users.UpdateUser(  # the admin deactivates Ann
        user_pb2.UpdateUserRequest(
            user=user_pb2.User(id=ann.id, active=False),
            update_mask=field_mask_pb2.FieldMask(paths=["active"]),
        )
    )
    own = tokens.token(ann.id)
    answer = await asyncio.to_thread(
        call,
        stack.url,
        "rest",
        "",
        None,
        json_body=b'{"active": true}',
        rest=("PATCH", f"/v1/users/{ann.id}"),
        token=own,
        work=tmp_path,
    )
    assert answer.http_status == 403, answer
    assert answer.json()["details"][0]["reason"] == "ADMIN_ONLY"
    with_mask = update_user(ann.id, active=True, display_name="Ann")
    with_mask.update_mask.paths[:] = ["display_name", "active"]
    for protocol in ("connect-json", "grpc"):
        answer = await asyncio.to_thread(
            call, stack.url, protocol, UPDATE_USER, with_mask, token=own, work=tmp_path
        )
        refused_cleanly(answer, protocol, 7, 403)
    stored = await mesh.users.GetUser(user_pb2.GetUserRequest(id=ann.id))
    assert stored.user.active is False and stored.user.display_name == "T"  # nothing written
    await mesh.replica_holds(ann.id, False)  # the order service has heard of it
    error = await fails(
        mesh.orders.CreateOrder(
            mesh.order_request(ann.id, {product.id: 1}),
            metadata=(("authorization", f"Bearer {own}"),),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "USER_INACTIVE"
    # Her own display name she may still change.
    renamed = await asyncio.to_thread(
        call,
        stack.url,
        "rest",
        "",
        None,
        json_body=b'{"displayName": "Annie"}',
        rest=("PATCH", f"/v1/users/{ann.id}"),
        token=own,
        work=tmp_path,
    )
    assert renamed.http_status == 200 and renamed.json()["user"]["displayName"] == "Annie"
    assert renamed.json()["user"].get("active", False) is False


# -- hole 3: NUL characters, on both databases ------------------------------------------


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_a_nul_character_is_refused_in_every_string_field(
    tmp_path: Path, database: str
) -> None:
    async with running_mesh(tmp_path, database=database) as mesh:
        user = await mesh.user()
        product = await mesh.product(stock=3)
        before = await counts(mesh)
        cases = [
            (
                mesh.users.CreateUser(
                    user_pb2.CreateUserRequest(email="nul@example.com", display_name="A\x00B")
                ),
                {"display_name"},
            ),
            (
                mesh.users.UpdateUser(update_user(user.id, display_name="\x00")),
                {"user.display_name"},
            ),
            (
                mesh.orders.CreateOrder(mesh.order_request(user.id, {product.id: 1}, key="k\x00")),
                {"idempotency_key"},
            ),
            (
                mesh.orders.CancelOrder(order_pb2.CancelOrderRequest(id="ord_x", reason="no\x00")),
                {"reason"},
            ),
        ]
        pending: Any
        for pending, fields in cases:
            error = await fails(pending, grpc.StatusCode.INVALID_ARGUMENT)
            assert fields <= violated_fields(error), violated_fields(error)
        assert await counts(mesh) == before


# -- hole 5: token lifetime ---------------------------------------------------------------


async def test_a_token_that_lives_longer_than_the_maximum_is_refused(stack: Stack) -> None:
    user = await stack.mesh.user()
    ten_years = tokens.token(user.id, ttl=10 * 365 * 24 * 3600)
    a_day = tokens.token(user.id, ttl=24 * 3600)
    request = user_pb2.GetUserRequest(id=user.id)
    for token, expected in ((ten_years, 401), (a_day, 200)):
        from tests.e2e.conftest import curl

        status, body = await asyncio.to_thread(curl, f"{stack.url}/v1/users/{user.id}", token=token)
        assert status == expected, body
    # Straight to the service, past the gateway: the same rule.
    error = await fails(
        stack.mesh.users.GetUser(request, metadata=(("authorization", f"Bearer {ten_years}"),)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert reason_of(error) == "TOKEN_INVALID"


# -- the edge test -------------------------------------------------------------------------

DEEP = b'{"email": "d@example.com", "displayName": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_bad_inputs_are_refused_cleanly_in_every_protocol(
    stack: Stack, tmp_path: Path, protocol: str
) -> None:
    mesh = stack.mesh
    user = await mesh.user()
    before = await counts(mesh)
    rest = ("POST", "/v1/users") if protocol == "rest" else None
    sign_up = user_pb2.CreateUserRequest(email="edge@example.com", display_name="Edge")

    def send(message: Any, headers: list[bytes] | None = None, **options: Any) -> Answer:
        return call(
            stack.url, protocol, CREATE_USER, message, headers, rest=rest, work=tmp_path, **options
        )

    # Header bytes that are not UTF-8 (a refused token, and any other header).
    for header in (b"authorization: Bearer \xff\xfe", b"x-note: caf\xe9"):
        answer = await asyncio.to_thread(send, sign_up, [header], token=None)
        refused_cleanly(answer, protocol, 3, 400)
        assert answer.headers.get("x-request-id")
    # Two Authorization headers.
    twice = [f"authorization: Bearer {tokens.token(user.id)}".encode()]
    answer = await asyncio.to_thread(send, sign_up, twice)
    refused_cleanly(answer, protocol, 16, 401)
    # A NUL character in a string.
    nul = user_pb2.CreateUserRequest(email="nul@example.com", display_name="A\x00B")
    answer = await asyncio.to_thread(send, nul)
    refused_cleanly(answer, protocol, 3, 400)
    # JSON nested 10,000 deep.
    if protocol in ("connect-json", "rest"):
        answer = await asyncio.to_thread(send, sign_up, json_body=DEEP)
        refused_cleanly(answer, protocol, 3, 400)
    # A method the gateway does not serve: unknown, and internal.
    for procedure in (
        "/shop.user.v1.UserService/Nope",
        "/shop.no.v1.NoService/Nope",
        "/shop.product.v1.ProductInternalService/ReserveStock",
    ):
        if protocol == "rest":
            answer = await asyncio.to_thread(
                call, stack.url, protocol, "", sign_up, rest=("POST", "/v1/nope"), work=tmp_path
            )
            refused_cleanly(answer, protocol, 5, 404)
            break
        answer = await asyncio.to_thread(
            call, stack.url, protocol, procedure, sign_up, work=tmp_path
        )
        if protocol in ("grpc", "grpc-web"):
            refused_cleanly(answer, protocol, 12, 200)
        else:
            assert answer.http_status == 404 and answer.json()["code"] == "unimplemented"
    assert await counts(mesh) == before


async def test_error_messages_speak_of_fields_not_of_python(stack: Stack) -> None:
    from tests.e2e.conftest import curl

    url = stack.url
    status, body = await asyncio.to_thread(curl, f"{url}/v1/products?pageSize=abc")
    assert (
        status == 400 and body["message"] == 'invalid request: page_size: "abc" is not an integer'
    )
    for path, document, expected in (
        (
            CREATE_USER,
            {"email": "a@example.com", "displayName": 5},
            "display_name: must be a string",
        ),
        (CREATE_USER, {"email": "a@example.com", "colour": "red"}, "colour: unknown field"),
    ):
        for target in (f"{url}{path}", f"{url}/v1/users"):
            status, body = await asyncio.to_thread(
                curl,
                "-X",
                "POST",
                target,
                "-H",
                "content-type: application/json",
                "-d",
                json.dumps(document),
            )
            assert status == 400 and body["message"] == f"invalid request: {expected}", body
            assert "Available Fields" not in json.dumps(body)


async def test_an_exception_inside_the_gateway_is_a_clean_500_in_each_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that raises anywhere in the gateway answers `internal` in the caller's
    protocol, with the request id, and without the exception's text."""

    def broken(self: Any, scope: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Authentication, "_caller", broken)
    sign_up = user_pb2.CreateUserRequest(email="x@example.com", display_name="X")
    async with running_mesh(tmp_path) as mesh, gateway_in_process(mesh) as gateway:
        for protocol in PROTOCOLS:
            rest = ("POST", "/v1/users") if protocol == "rest" else None
            answer = await asyncio.to_thread(
                call,
                gateway.url,
                protocol,
                CREATE_USER,
                sign_up,
                [b"x-request-id: req-under-test"],
                rest=rest,
                work=tmp_path,
            )
            refused_cleanly(answer, protocol, 13, 500)
            assert answer.headers.get("x-request-id") == "req-under-test", answer
            assert b"secret" not in answer.body and b"Traceback" not in answer.body


async def test_refused_requests_are_logged_once_with_their_reason(
    stack: Stack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One access-log line per request, refused or served (gateway process's stderr)."""
    from tests.e2e.conftest import curl

    await asyncio.to_thread(curl, f"{stack.url}/v1/users/usr_x", token=None)
    await asyncio.to_thread(curl, f"{stack.url}/v1/users/usr_x", token="not-a-jwt")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in stack.gateway_log if '"request"' in line]
        if len(lines) >= 2:
            break
        await asyncio.sleep(0.05)
    refused = [line for line in lines if line.get("route") == "GET /v1/users/{id}"]
    assert [(line["code"], line["reason"], line["http_status"]) for line in refused] == [
        ("UNAUTHENTICATED", "TOKEN_MISSING", 401),
        ("UNAUTHENTICATED", "TOKEN_MALFORMED", 401),
    ]
    assert all(line["request_id"] for line in refused)


def _h2_late_body_then_another_request(address: str) -> tuple[int, int]:
    """Over one HTTP/2 connection: a POST whose body is sent only after the (early)
    answer came, then a second request. Returns both statuses."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    host, port = address.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    sock.sendall(connection.data_to_send())

    def request(stream_id: int, method: str, path: str, end: bool) -> None:
        headers = [(":method", method), (":path", path), (":scheme", "http")]
        headers += [(":authority", address), ("content-type", "application/json")]
        connection.send_headers(stream_id, headers, end_stream=end)
        sock.sendall(connection.data_to_send())

    def answer(stream_id: int) -> int:
        status = 0
        while True:
            data = sock.recv(65535)
            assert data, "the connection was closed"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                    status = int(dict(event.headers)[b":status"])
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                    sock.sendall(connection.data_to_send())
                    return status
            sock.sendall(connection.data_to_send())

    try:
        request(1, "POST", "/v1/orders", end=False)  # no token: refused before the body
        first = answer(1)
        connection.send_data(1, b'{"late": true}', end_stream=True)  # the body, too late
        sock.sendall(connection.data_to_send())
        request(3, "GET", "/healthz", end=True)
        return first, answer(3)
    finally:
        sock.close()


async def test_a_body_sent_after_an_early_answer_does_not_break_the_connection(
    stack: Stack,
) -> None:
    def requests_logged() -> int:
        return sum('"message": "request"' in line for line in stack.gateway_log)

    before = requests_logged()
    first, second = await asyncio.to_thread(_h2_late_body_then_another_request, stack.url)
    assert (first, second) == (401, 200)
    await eventually(lambda: requests_logged() >= before + 2, "both requests logged")
    assert not [line for line in stack.gateway_log if "Traceback" in line or "KeyError" in line]
