"""The gateway's HTTP server: every protocol on one port, each served by the fastest
implementation that serves it fully.

A connection's first bytes choose. The HTTP/2 connection preface (cleartext, prior
knowledge: how gRPC clients and `buf curl --http2-prior-knowledge` connect) goes to
Hypercorn, whose HTTP/2 carries the trailers real gRPC needs. Anything else is
HTTP/1.1 (Connect, gRPC-Web, REST, Server-Sent Events, the console) and goes to
uvicorn's httptools protocol, which answers a request for about a third of Hypercorn's
CPU (h11), with a bound on the request head that httptools lacks. uvicorn's `Server`
owns the socket, the application's lifespan and the graceful stop for both: every
connection, HTTP/2 ones included, is asked to finish, and what still runs after
`graceful_timeout` (streams) is ended cleanly.

Written here because neither server does both halves: uvicorn's own HTTP/2 (zttp
0.0.35) sent GOAWAY ENHANCE_YOUR_CALM to a grpc.aio client after a few thousand calls
on one connection, and Hypercorn's HTTP/1.1 is the slow part.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

import uvicorn
from google.rpc import code_pb2
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import AppWrapper
from hypercorn.utils import wrap_app
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway import hypercorn_workaround

log = logging.getLogger("shop.gateway")

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# The most a request's line and headers may take on HTTP/1.1 (Hypercorn's h11 limit, which
# the gateway had before): httptools sets none, and a client could send headers forever.
MAX_HEAD_BYTES = 16 * 1024
# The most a request's head may take to arrive once it has begun.
HEAD_TIMEOUT_SECONDS = 30.0
# gRPC and Connect clients keep one connection for many calls: never close it after a
# number of requests (clients that ignore GOAWAY then fail), and only after this long idle.
KEEP_ALIVE_SECONDS = 75.0
# How long what was ended at the end of the stop's grace may take to unwind.
STUCK_SECONDS = 2.0


class Http2Side:
    """What every HTTP/2 connection shares: Hypercorn's settings, its view of the
    application, and the signal to finish."""

    def __init__(self, app: Any) -> None:
        hypercorn_workaround.apply()
        self.config = HypercornConfig()
        self.config.accesslog = None
        self.config.errorlog = logging.getLogger("hypercorn.error")
        self.config.keep_alive_max_requests = 1_000_000
        self.config.keep_alive_timeout = KEEP_ALIVE_SECONDS
        self.config.include_server_header = False  # as on HTTP/1.1
        self.app: AppWrapper = wrap_app(app, self.config.wsgi_max_body_size, "asgi")
        self.context = WorkerContext(None)
        self._finishing: asyncio.Task[None] | None = None

    def finish(self) -> None:
        """Busy connections close once their streams end, idle ones at once."""
        if self._finishing is None:
            self._finishing = asyncio.get_running_loop().create_task(self.context.terminated.set())


class Http2Connection(asyncio.StreamReaderProtocol):
    """One HTTP/2 connection, served by Hypercorn's TCPServer as if Hypercorn had accepted
    it, and known to uvicorn's server state so that the graceful stop waits for it."""

    def __init__(
        self,
        side: Http2Side,
        server_state: ServerState,
        app_state: dict[str, Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._side = side
        self._server_state = server_state
        self._app_state = app_state
        self._served: TCPServer | None = None
        self._closing: asyncio.Task[None] | None = None
        super().__init__(asyncio.StreamReader(loop=loop), self._serve, loop=loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._server_state.connections.add(self)  # type: ignore[arg-type]
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_state.connections.discard(self)
        super().connection_lost(exc)

    def shutdown(self) -> None:
        self._side.finish()
        # Hypercorn closes a connection at the stop once a stream of it ends, or at once if
        # its idle timer runs; one that never opened a stream (a gRPC channel connected,
        # unused) has none running and would wait out the grace: closed here (twice is
        # harmless).
        protocol = getattr(getattr(self._served, "protocol", None), "protocol", None)
        if getattr(protocol, "idle", False):
            self.close()

    def close(self) -> asyncio.Task[None] | None:
        """Closes the connection and its streams now, so that what their handlers still
        send is dropped instead of waiting on a connection that no longer writes."""
        if self._served is not None and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close(self._served))
        return self._closing

    @staticmethod
    async def _close(served: TCPServer) -> None:
        await served._initiate_server_close()
        # Hypercorn's closing leaves each stream's send buffer waiting for a writer that is
        # gone: a handler's last send (a stream's trailers) would wait on it for ever.
        protocol = getattr(served.protocol, "protocol", None)
        for buffer in list(getattr(protocol, "stream_buffers", {}).values()):
            await buffer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._server_state.tasks.add(task)
        task.add_done_callback(self._server_state.tasks.discard)
        loop = asyncio.get_running_loop()
        side, state = self._side, self._app_state
        self._served = TCPServer(side.app, loop, side.config, side.context, state, reader, writer)
        try:
            await self._served
        except asyncio.CancelledError:
            # The stop's grace ran out: the connection is closed, and that is all (let out,
            # asyncio's stream protocol would log the cancellation as an error).
            writer.close()


class HeadTooLarge(Exception):
    """Raised inside the parser's callbacks to stop it; answered with 431."""


class Http1Connection(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head: over MAX_HEAD_BYTES it
    is answered 431 (Request Header Fields Too Large), and one not complete within
    HEAD_TIMEOUT_SECONDS of its first byte closes the connection (a client sending a
    header a byte at a time holds nothing for long). The target and each header are
    counted as the parser completes them; and since the parser keeps a header until it
    ends, a chunk read while the same head was under way, and still is, counts too (it
    was all head), so a header that never ends is cut off as well."""

    _head_bytes = 0  # of the current request's head: what the parser completed
    _head_chunks = 0  # what arrived while the head stayed incomplete
    _in_head = False
    _began = False  # a request began within the chunk being parsed
    _refused = False
    _head_timer: asyncio.TimerHandle | None = None

    def on_message_begin(self) -> None:
        self._head_bytes = self._head_chunks = 0
        self._in_head = self._began = True
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_SECONDS, self.transport.close)
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        was_in_head, self._began = self._in_head, False
        super().data_received(data)
        if was_in_head and self._in_head and not self._began and not self.transport.is_closing():
            self._head_chunks += len(data)
            if self._head_chunks > MAX_HEAD_BYTES:
                self._refuse()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def send_400_response(self, msg: str) -> None:
        if self._refused:
            return
        super().send_400_response(msg)

    def _grow(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._refuse()
            raise HeadTooLarge  # the parser stops; its error answer is skipped above

    def _refuse(self) -> None:
        """431 with the error as the request's protocol writes one: the Connect error
        JSON for a procedure path, a google.rpc.Status (as REST answers) for any other."""
        self._refused = True
        message = "the request headers are too large"
        error: dict[str, object]
        if bytes(self.url).startswith((b"/shop.", b"/grpc.")):
            error = {"code": "resource_exhausted", "message": message}
        else:
            error = {"code": code_pb2.RESOURCE_EXHAUSTED, "message": message, "details": []}
        body = json.dumps(error).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


class OnePortProtocol(asyncio.Protocol):
    """Reads a connection's first bytes, then hands it, those bytes included, to the
    HTTP/2 or the HTTP/1.1 protocol (the way uvicorn's own HTTP/2 support dispatches)."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        http2: Http2Side,
    ) -> None:
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self._loop = _loop or asyncio.get_event_loop()
        self._http2 = http2
        self._transport: asyncio.Transport | None = None
        self._timeout: asyncio.TimerHandle | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._server_state.connections.add(self)  # type: ignore[arg-type]
        self._timeout = self._loop.call_later(self._config.timeout_keep_alive, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def shutdown(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) < len(HTTP2_PREFACE) and HTTP2_PREFACE.startswith(self._buffer):
            return
        self._forget()
        assert self._transport is not None
        protocol: asyncio.Protocol
        if self._buffer.startswith(HTTP2_PREFACE):
            protocol = Http2Connection(self._http2, self._server_state, self._app_state, self._loop)
        else:
            protocol = Http1Connection(
                config=self._config,
                server_state=self._server_state,
                app_state=self._app_state,
                _loop=self._loop,
            )
        self._transport.set_protocol(protocol)
        protocol.connection_made(self._transport)
        protocol.data_received(self._buffer)

    def _forget(self) -> None:
        self._server_state.connections.discard(self)
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None


def ending_at_the_stop(app: ASGIApp) -> ASGIApp:
    """`app`, its HTTP/1.1 responses ended cleanly when cancelled (which happens to what
    still runs when the stop's grace is over, and to nothing else): a stream under way
    ends as a stream that is over, a response not begun is a 503, where uvicorn would
    log "Exception in ASGI application" with a traceback and cut the connection."""

    async def ended(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = ended = False

        async def sending(message: Message) -> None:
            nonlocal started, ended
            started = started or message["type"] == "http.response.start"
            ended = message["type"] == "http.response.body" and not message.get("more_body")
            await send(message)

        try:
            await app(scope, receive, sending)
        except asyncio.CancelledError:
            if not started:
                headers = [(b"content-length", b"0"), (b"retry-after", b"1")]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    return ended


async def serve(
    app: Any,
    sock: socket.socket,
    shutdown_trigger: Callable[[], Awaitable[Any]],
    graceful_timeout: float = 5.0,
) -> None:
    """Serves `app` on the listening `sock` until `shutdown_trigger()` returns, then lets
    requests under way finish for up to `graceful_timeout` seconds. Runs the
    application's lifespan around it. The socket is closed on return."""
    http2 = Http2Side(app)
    config = uvicorn.Config(
        app,
        http=functools.partial(OnePortProtocol, http2=http2),  # type: ignore[arg-type]
        interface="asgi3",
        lifespan="on",
        log_config=None,
        access_log=False,
        # The client is the TCP peer, as the rate limit and the services expect: a
        # forwarded-for header from a local client is not believed.
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=int(KEEP_ALIVE_SECONDS),
        timeout_graceful_shutdown=None,  # the grace is kept below, without an error logged
    )
    # uvicorn tells of the lifespan's steps at INFO under "uvicorn.error"; the gateway
    # says "serving" and "stopped" itself. Its warnings and errors still show.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    server = uvicorn.Server(config)
    config.load()
    config.loaded_app = ending_at_the_stop(config.loaded_app)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])  # exits the process if the lifespan fails

    async def stop_when_triggered() -> None:
        try:
            await shutdown_trigger()
        finally:
            server.should_exit = True

    trigger = asyncio.create_task(stop_when_triggered())
    try:
        # Ticks every 0.1 s: keeps the Date header current, and ends on should_exit.
        await server.main_loop()
    finally:
        trigger.cancel()
        # Every connection is asked to finish; what still runs when the grace is over
        # (streams, mostly) is ended, and the stop goes on.
        stopping = asyncio.create_task(server.shutdown(sockets=[sock]))
        done, _ = await asyncio.wait({stopping}, timeout=graceful_timeout)
        if not done:
            await _end_what_runs(server, stopping)
        await stopping


async def _end_what_runs(server: uvicorn.Server, stopping: asyncio.Task[None]) -> None:
    """The stop's grace is over: HTTP/2 connections are closed first, then every handler
    is cancelled (those of HTTP/2 streams with their connection's task), so that their
    last sends return. What still ignores its cancellation is left behind (the loop's end
    cancels it again), and the stop goes on, the application's included."""
    state = server.server_state
    log.info("the stop's grace is over: ending what runs", extra={"running": len(state.tasks)})
    closing = [
        connection.close()
        for connection in list(state.connections)
        if isinstance(connection, Http2Connection)
    ]
    if any(closing):
        await asyncio.wait([task for task in closing if task], timeout=STUCK_SECONDS)
    for task in list(state.tasks):
        task.cancel()
    done, _ = await asyncio.wait({stopping}, timeout=STUCK_SECONDS)
    if not done:
        log.warning("left what would not end", extra={"running": len(state.tasks)})
        server.force_exit = True
        await stopping
        await server.lifespan.shutdown()
