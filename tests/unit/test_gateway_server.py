"""The gateway's one-port server (gateway/server.py) on its own, with a small ASGI
application and real sockets: what a slow, pipelining or idle client does to it."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h2.connection
import pytest

from gateway import server


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = f"{scope['method']} {scope['path']} {len(body)}".encode()
    length = [(b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": length})
    await send({"type": "http.response.body", "body": answer})


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[str, int, asyncio.Event, asyncio.Task[None]]]:
    sock = socket.create_server(("127.0.0.1", 0))
    stop = asyncio.Event()
    task = asyncio.create_task(server.serve(app, sock, stop.wait, graceful_timeout=5.0))
    await asyncio.sleep(0.2)
    host, port = sock.getsockname()[:2]
    try:
        yield host, port, stop, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_request_head_that_never_completes_is_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server, "HEAD_TIMEOUT_SECONDS", 0.5)
    async with serving() as (host, port, _, _):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: a")
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no answer
        assert time.monotonic() - started < 3
        writer.close()


async def test_pipelined_requests_with_a_large_body_are_not_taken_for_a_large_head() -> None:
    async with serving() as (host, port, _, _):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-le")
        await writer.drain()
        await asyncio.sleep(0.1)
        # The end of the first head, a body larger than a head may be, the next head begun.
        body = b"x" * (server.MAX_HEAD_BYTES + 4000)
        writer.write(b"ngth: %d\r\n\r\n%s" % (len(body), body) + b"GET /b HTTP/1.1\r\nho")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"st: x\r\nconnection: close\r\n\r\n")
        answers = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert answers.count(b"HTTP/1.1 200 ") == 2, answers
    assert b"POST /a %d" % len(body) in answers and b"GET /b 0" in answers


async def test_an_http2_connection_that_never_opened_a_stream_does_not_hold_the_stop() -> None:
    async with serving() as (host, port, stop, task):
        reader, writer = await asyncio.open_connection(host, port)
        connection = h2.connection.H2Connection()
        connection.initiate_connection()
        writer.write(connection.data_to_send())
        await reader.read(65536)  # the server's SETTINGS: it is served, and idle
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - started < 2.0
        writer.close()


async def test_both_protocols_answer_on_the_one_port() -> None:
    async with serving() as (host, port, _, _):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /h1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert (await reader.read()).endswith(b"GET /h1 0")
        writer.close()

        reader, writer = await asyncio.open_connection(host, port)
        connection = h2.connection.H2Connection()
        connection.initiate_connection()
        headers = [(":method", "GET"), (":path", "/h2"), (":scheme", "http"), (":authority", "x")]
        connection.send_headers(1, headers, end_stream=True)
        writer.write(connection.data_to_send())
        body = b""
        while not body.endswith(b"GET /h2 0"):
            for event in connection.receive_data(await asyncio.wait_for(reader.read(65536), 5)):
                body += getattr(event, "data", b"")
            writer.write(connection.data_to_send())
        writer.close()
