"""`make bench`: the mesh against a baseline and a peer, in one bounded run on loopback.

Starts what it measures (a bare grpc.aio server, the mesh with its gateway, a FastAPI
peer), runs each scenario at 1 and 64 requests in flight, stops everything, prints a
table per mode with the ratios the project aims for (issue 14's goals, each met or
not), and writes bench/results/<time>.json and .md.

Modes, each beside the same baseline server:
- the mesh on SQLite (`--db sqlite`, the default) and/or on PostgreSQL (`--db postgres`
  or `both`: fresh databases on the shared server, dropped afterwards);
- the mTLS comparison (scenario `mtls`, with the first of those): internal GetProduct,
  and the in-memory baseline, through mutual TLS and through plaintext, loaded in
  turns by one client, bench.grpcload, since h2load can't present a client
  certificate (h2load still measures the plaintext side, to judge that client);
- `--cluster`: two replicas of every service and two gateways on PostgreSQL and NATS
  (a stream of the run's own, deleted afterwards). Figures only: on 2 cores the
  replicas share the cores with each other and the load tools.

Each level's scenarios run in turns (`--turns`, default 2): every scenario in each turn
for its share of `--seconds`, the order reversed every other turn, so the scenarios a
ratio compares (the gateway and the peer, the mesh and the baseline) meet the same
moments of a shared machine rather than one busy stretch each.

h2load measures gRPC, wrk HTTP/1.1, and an asyncio client order-to-notification
latency on an open stream. Each tool's own CPU is recorded: a client that saturates
its core measures itself, not the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import cpu
from bench.grpcload import Endpoint, grpcload
from bench.loadtools import (
    Figures,
    h2load_grpc,
    in_turns,
    lua_binary_request,
    lua_create_orders,
    lua_request,
    side_by_side,
    wrk,
)
from bench.mesh import (
    PRODUCT_PATH,
    SERVICES,
    Mesh,
    baseline,
    database_prefix,
    nats_stream,
    postgres_databases,
    postgres_load,
    process,
    say,
    seed,
    signed_in,
    sqlite_urls,
    start_mesh,
    uvicorn_peer,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LEVELS = (1, 64)
# A load client using this much of a core (CPU seconds per wall second) or more was its
# own bottleneck: its figure is a floor for the server, not the server's limit.
SATURATED = 0.9


# -- scenarios ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What one mode's scenarios are pointed at."""

    baseline: str | None
    mesh: Mesh
    peer: str | None
    user_id: str
    product_id: str
    token: str
    notify_orders: int


ScenarioRun = Callable[[Target, str, int, float], Awaitable[Figures]]


@dataclass(frozen=True)
class Scenario:
    """One measurement, run at each level of LEVELS (or once: `per_level=False`)."""

    name: str  # what --only takes
    alias: str  # its number in earlier runs' --only (2, 3a, ...)
    title: str
    run: ScenarioRun
    per_level: bool = True
    # Run against the replicas of --cluster too.
    cluster: bool = True


def _spread(addresses: list[str], level: int) -> list[tuple[str, int]]:
    """`level` requests in flight over replicas: a lone request goes to the first, more
    are shared evenly (64 over 2 replicas: 32 each)."""
    if level < len(addresses):
        return [(addresses[0], level)]
    share, extra = divmod(level, len(addresses))
    return [(address, share + (i < extra)) for i, address in enumerate(addresses)]


async def _over(
    addresses: list[str], level: int, one: Callable[[str, int], Awaitable[Figures]]
) -> Figures:
    parts = _spread(addresses, level)
    if len(parts) == 1:
        return await one(*parts[0])
    return await side_by_side([one(address, n) for address, n in parts])


def _get_product(product_id: str) -> bytes:
    from shop.product.v1 import product_pb2

    return product_pb2.GetProductRequest(id=product_id).SerializeToString()


async def _baseline(t: Target, title: str, level: int, seconds: float) -> Figures:
    assert t.baseline is not None
    url = f"http://{t.baseline}{PRODUCT_PATH}"
    return await h2load_grpc(url, _get_product("prd_baseline"), title, level, seconds)


async def _internal(t: Target, title: str, level: int, seconds: float) -> Figures:
    body = _get_product(t.product_id)
    return await _over(
        t.mesh.addresses["product"],
        level,
        lambda address, n: h2load_grpc(f"http://{address}{PRODUCT_PATH}", body, title, n, seconds),
    )


def _through_gateway(path: Callable[[Target], str], script: Callable[[Target], str]) -> ScenarioRun:
    """wrk on every gateway at once; `script` is called per gateway (CreateOrder's
    idempotency keys must differ between them)."""

    async def run(t: Target, title: str, level: int, seconds: float) -> Figures:
        return await _over(
            t.mesh.addresses["gateway"],
            level,
            lambda address, n: wrk(f"http://{address}{path(t)}", script(t), title, n, seconds),
        )

    return run


async def _peer(t: Target, title: str, level: int, seconds: float) -> Figures:
    assert t.peer is not None
    return await wrk(
        f"http://{t.peer}/products/prd_peer", lua_request("GET"), title, level, seconds
    )


async def _notify(t: Target, title: str, level: int, seconds: float) -> Figures:
    return await notification_latency(
        t.mesh.first("gateway"), t.user_id, t.product_id, t.notify_orders, t.token, title
    )


SCENARIOS = (
    Scenario("baseline", "1", "baseline: bare grpc.aio GetProduct", _baseline),
    Scenario("internal", "2", "internal GetProduct (gRPC)", _internal),
    Scenario(
        "connect-json",
        "3a",
        "gateway Connect JSON GetProduct",
        _through_gateway(
            lambda t: PRODUCT_PATH, lambda t: lua_request("POST", json.dumps({"id": t.product_id}))
        ),
    ),
    Scenario(
        "connect-proto",
        "3b",
        "gateway Connect binary GetProduct",
        _through_gateway(
            lambda t: PRODUCT_PATH,
            lambda t: lua_binary_request(_get_product(t.product_id), "application/proto"),
        ),
    ),
    Scenario(
        "rest",
        "3c",
        "gateway REST GET /v1/products/{id}",
        _through_gateway(lambda t: f"/v1/products/{t.product_id}", lambda t: lua_request("GET")),
    ),
    Scenario("peer", "4", "FastAPI + SQLAlchemy ORM peer (same database)", _peer, cluster=False),
    Scenario(
        "create-order",
        "5",
        "CreateOrder through the gateway (REST)",
        _through_gateway(
            lambda t: "/v1/orders",
            lambda t: lua_create_orders(t.user_id, t.product_id, uuid.uuid4().hex[:8], t.token),
        ),
    ),
    Scenario(
        "notify",
        "notify",
        "order -> notification (Connect stream)",
        _notify,
        per_level=False,
    ),
)
# The mTLS comparison: a phase of its own (it starts its own product services).
MTLS = "mtls"


def pick(only: str) -> set[str]:
    """`--only internal,connect-json,mtls` (or the old numbers: 2,3a; 3 is 3a-3c) as
    scenario names; empty picks all."""
    names = {s.name for s in SCENARIOS} | {MTLS}
    if not only.strip():
        return names
    picked = set()
    for key in (part.strip() for part in only.split(",") if part.strip()):
        matches = {s.name for s in SCENARIOS if key in (s.alias, s.alias.rstrip("abc"))}
        if key in names:
            picked.add(key)
        elif matches:
            picked |= matches
        else:
            raise SystemExit(f"--only: no scenario {key!r}; they are {', '.join(sorted(names))}")
    return picked


# -- order -> notification ---------------------------------------------------------


async def notification_latency(
    gateway: str, user_id: str, product_id: str, orders: int, token: str, title: str
) -> Figures:
    """Order placed (reply received) -> its notification read from an open Connect stream."""
    from shop.notification.v1 import notification_connect, notification_pb2
    from shop.order.v1 import order_connect, order_pb2

    latencies: list[float] = []
    headers = {"authorization": f"Bearer {token}"}
    async with (
        notification_connect.NotificationServiceClient(f"http://{gateway}") as notifications,
        order_connect.OrderServiceClient(f"http://{gateway}") as client,
    ):
        stream = aiter(
            notifications.stream_notifications(
                notification_pb2.StreamNotificationsRequest(user_id=user_id, cursor=""),
                headers=headers,
            )
        )
        # Drain what is there already (orders placed by earlier scenarios are unread).
        pending = asyncio.ensure_future(anext(stream))
        while True:
            done, _ = await asyncio.wait([pending], timeout=1.0)
            if not done:
                break
            pending = asyncio.ensure_future(anext(stream))
        started = time.perf_counter()
        for _ in range(orders):
            request = order_pb2.CreateOrderRequest(
                user_id=user_id,
                idempotency_key=uuid.uuid4().hex,
                items=[order_pb2.CreateOrderItem(product_id=product_id, quantity=1)],
            )
            placed = (await client.create_order(request, headers=headers)).order
            sent = time.perf_counter()
            while True:
                message = await asyncio.wait_for(pending, 10)
                pending = asyncio.ensure_future(anext(stream))
                if message.notification.order_id == placed.id:
                    latencies.append((time.perf_counter() - sent) * 1000)
                    break
        elapsed = time.perf_counter() - started
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending
    ordered = sorted(latencies)
    return Figures(
        title,
        "asyncio client",
        1,
        len(latencies),
        len(latencies) / elapsed,
        statistics.median(ordered),
        ordered[int(0.99 * (len(ordered) - 1))],
        0,
    )


# -- modes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    name: str
    title: str
    postgres: bool
    replicas: int = 1


MODES = {
    "sqlite": Mode("sqlite", "SQLite, one process per service", postgres=False),
    "postgres": Mode("postgres", "PostgreSQL (asyncpg), one process per service", postgres=True),
    "cluster": Mode(
        "cluster",
        "cluster: PostgreSQL + NATS, 2 replicas of every service, 2 gateways (figures only)",
        postgres=True,
        replicas=2,
    ),
}


@dataclass(frozen=True)
class Settings:
    seconds: float
    notify_orders: int
    picked: set[str]
    pg_url: str
    broker_url: str
    turns: int = 2


@dataclass
class Section:
    """One mode's figures by (scenario name, requests in flight), in the order run."""

    mode: str
    title: str
    measured: dict[tuple[str, int], Figures] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


async def measure_mode(
    mode: Mode, baseline_address: str | None, settings: Settings, run_dir: Path, mtls: bool
) -> list[Section]:
    """Starts the mesh of `mode`, runs the picked scenarios on it and stops it; and the
    mTLS comparison on the same database if `mtls`."""
    data_dir = run_dir / mode.name
    data_dir.mkdir()
    section = Section(mode.name, mode.title)
    # The PostgreSQL backends serving this mode's databases count as the benchmark's; so
    # do the servers' shared processes (WAL, checkpoints; NATS), busy with this mode's
    # writes while the machine is otherwise quiet.
    prefix = database_prefix()
    markers: tuple[str, ...] = ()
    if mode.postgres:
        markers = (prefix, "walwriter", "checkpointer", "background writer", "autovacuum")
    if mode.replicas > 1:
        markers += ("nats-server",)
    watch = cpu.Watch(markers)
    watch.start()
    scenarios = [
        s for s in SCENARIOS if s.name in settings.picked and (s.cluster or mode.replicas == 1)
    ]
    names = {s.name for s in scenarios}
    sections = [section]
    async with AsyncExitStack() as stack:
        databases = [*SERVICES, "peer"]
        if mode.postgres:
            used, limit, version = await postgres_load(settings.pg_url)
            section.notes.append(
                f"PostgreSQL {version}: {used} of its {limit} connections were in use when "
                "this mode started (the server is shared; each mesh process pools up to 20)."
            )
            urls = await stack.enter_async_context(
                postgres_databases(settings.pg_url, databases, prefix)
            )
        else:
            urls = sqlite_urls(data_dir, databases)
        extra_env = {}
        if mode.replicas > 1:
            extra_env = await stack.enter_async_context(nats_stream(settings.broker_url))
        say(f"{mode.name}: starting the mesh ({mode.replicas} of each process)")
        mesh = await start_mesh(stack, data_dir, urls, mode.replicas, extra_env)
        peer = None
        if "peer" in names:
            peer = await stack.enter_async_context(uvicorn_peer(urls["peer"]))
        user_id, product_id = await seed(mesh.first("gateway"), data_dir)
        target = Target(
            baseline_address,
            mesh,
            peer,
            user_id,
            product_id,
            signed_in(data_dir, user_id),
            settings.notify_orders,
        )
        per_level = [s for s in scenarios if s.per_level]
        # wrk and h2load count whole seconds: each turn's share is rounded up.
        turns, share = settings.turns, float(math.ceil(settings.seconds / settings.turns))
        for level in LEVELS:
            runs: dict[str, list[Figures]] = {s.name: [] for s in per_level}
            order_cpu: dict[str, float] = {}  # CPU seconds by process while CreateOrder ran
            for turn in range(turns):
                ordered = per_level if turn % 2 == 0 else per_level[::-1]
                for scenario in ordered:
                    say(f"{mode.name} turn {turn + 1}/{turns}: {scenario.title}, {level} in flight")
                    before = cpu.descendants_cpu_by_name()
                    runs[scenario.name].append(
                        await scenario.run(target, scenario.title, level, share)
                    )
                    if scenario.name == "create-order":
                        after = cpu.descendants_cpu_by_name()
                        for name, seconds in after.items():
                            order_cpu[name] = (
                                order_cpu.get(name, 0.0) + seconds - before.get(name, 0)
                            )
            for scenario in per_level:
                section.measured[(scenario.name, level)] = in_turns(runs[scenario.name])
            if orders := runs.get("create-order"):
                placed = sum(f.requests - f.errors for f in orders)
                section.notes.append(cpu_per_order(order_cpu, placed, level, mode.postgres))
        for scenario in (s for s in scenarios if not s.per_level):
            say(f"{mode.name}: {scenario.title}")
            figures = await scenario.run(target, scenario.title, 1, settings.seconds)
            section.measured[(scenario.name, 1)] = figures
        if note := await watch.stop():
            section.notes.append(note)
        if mtls:
            sections.append(await measure_mtls(mesh, product_id, settings.seconds, mode, markers))
        say(f"{mode.name}: stopping everything")
    return sections


def cpu_per_order(by_process: dict[str, float], orders: int, level: int, postgres: bool) -> str:
    """The CPU an order took across the mesh's processes, and in each (where to look
    first): a figure that does not swing with what else the machine runs, as throughput
    does."""

    def per_order(seconds: float) -> float:
        return seconds / orders * 1000 if orders else float("nan")

    also = " (PostgreSQL's own work not counted)" if postgres else ""
    shares = ", ".join(
        f"{name} {per_order(seconds):.2f}"
        for name, seconds in sorted(by_process.items(), key=lambda item: -item[1])
        if per_order(seconds) >= 0.01
    )
    return (
        f"CPU per order at {level} in flight: {per_order(sum(by_process.values())):.1f} ms "
        f"across the mesh's processes{also} ({shares}), {orders} orders (their /proc times "
        "around the CreateOrder runs)."
    )


async def measure_mtls(
    mesh: Mesh, product_id: str, seconds: float, mode: Mode, markers: tuple[str, ...]
) -> Section:
    """Internal GetProduct on two product services alike but for TLS_MODE, beside the
    mesh and on its database; and the same for the in-memory baseline, where TLS's share
    of the work is the largest it can be. Each pair is loaded in turns by one client
    (bench.grpcload, which presents a `service` certificate of the development PKI), and
    each plaintext server by h2load too, to see how far that client is from one that is
    not the bottleneck."""
    database = "SQLite" if not mode.postgres else "PostgreSQL"
    section = Section(MTLS, f"mutual TLS vs plaintext, same client ({database})")
    tls_dir = mesh.data_dir / "dev-pki"
    env = {**mesh.env, "PRODUCT_DATABASE_URL": mesh.database_urls["product"]}
    product = [sys.executable, "-m", "services.product"]
    async with AsyncExitStack() as stack:
        say("mtls: starting plaintext and mTLS product services and baselines")
        plain_env = {**env, "TLS_MODE": "plaintext"}
        mtls_env = {**env, "TLS_MODE": "mtls", "TLS_DIR": str(tls_dir)}
        servers = [
            await stack.enter_async_context(context)
            for context in (
                process(product, plain_env, "product-plain", mesh.data_dir),
                process(product, mtls_env, "product-mtls", mesh.data_dir),
                process(product, plain_env, "product-plain-2", mesh.data_dir),
                baseline(mesh.data_dir, name="baseline-plain"),
                baseline(mesh.data_dir, tls_dir, name="baseline-mtls"),
                baseline(mesh.data_dir, name="baseline-plain-2"),
            )
        ]
        # Each pair with a control: a second plaintext process, loaded in the same turns.
        # Two processes alike differ too (where their threads run, what they cached):
        # the control's difference from the first is the noise the mTLS difference is in.
        pairs = [
            ("", "internal GetProduct", servers[0:3], _get_product(product_id)),
            ("baseline-", "baseline GetProduct", servers[3:6], _get_product("prd_baseline")),
        ]
        watch = cpu.Watch(markers)
        watch.start()
        for level in LEVELS:
            for prefix, what, (plain, secure, control), body in pairs:
                say(f"mtls: {what}, plaintext, mTLS and control in turns, {level} in flight")
                plaintext, mtls, second = await grpcload(
                    [Endpoint(plain), Endpoint(secure, tls_dir), Endpoint(control)],
                    PRODUCT_PATH,
                    body,
                    [
                        f"{what}, plaintext",
                        f"{what}, mutual TLS",
                        f"{what}, plaintext (control: a second process)",
                    ],
                    level,
                    seconds,
                    turns=max(1, round(2 * seconds)),
                )
                section.measured[(f"{prefix}plaintext", level)] = plaintext
                section.measured[(f"{prefix}mtls", level)] = mtls
                section.measured[(f"{prefix}control", level)] = second
                say(f"mtls: {what} in plaintext with h2load, {level} in flight")
                url = f"http://{plain}{PRODUCT_PATH}"
                section.measured[(f"{prefix}plaintext-h2load", level)] = await h2load_grpc(
                    url, body, f"{what}, plaintext", level, seconds
                )
        if note := await watch.stop():
            section.notes.append(note)
    for (key, level), figures in section.measured.items():
        if figures.client_cpu is not None and figures.client_cpu >= SATURATED:
            section.notes.append(
                f"{figures.tool} used {figures.client_cpu:.2f} of a core at {level} in flight "
                f"({key}): it saturated its core, so that figure is the client's limit and "
                "a floor for the server's."
            )
    for key, how in (
        ("plaintext", "product service, plaintext"),
        ("mtls", "product service, mutual TLS"),
        ("baseline-plaintext", "baseline, plaintext"),
        ("baseline-mtls", "baseline, mutual TLS"),
    ):
        ours_at_64 = section.measured.get((key, 64))
        if ours_at_64 and ours_at_64.client_cpu and ours_at_64.rps:
            per_call = ours_at_64.client_cpu / ours_at_64.rps
            section.notes.append(
                f"grpcload's own CPU at 64 in flight, {how}: {per_call * 1e6:.0f} us a call, "
                f"so one core of its own would drive at most ~{1 / per_call:.0f} calls/s."
            )
    with contextlib.suppress(KeyError, ZeroDivisionError):
        m = section.measured
        noise_p50 = _p50(m, "control") - _p50(m, "plaintext")
        noise_rps = 1 - _rps(m, "control") / _rps(m, "plaintext")
        tls_p50 = _p50(m, "mtls") - _p50(m, "plaintext")
        tls_rps = 1 - _rps(m, "mtls") / _rps(m, "plaintext")
        section.notes.append(
            f"Control on the product service: two plaintext processes alike differed by "
            f"{noise_p50:+.3f} ms p50 at 1 in flight and {noise_rps:+.1%} rps at 64; mTLS "
            f"differed by {tls_p50:+.3f} ms and {tls_rps:+.1%}. A difference no larger "
            "than the control's is noise, not TLS's cost."
        )
    for prefix, what in (("", "the product service"), ("baseline-", "the baseline")):
        with contextlib.suppress(KeyError):
            ours = section.measured[(f"{prefix}plaintext", 64)]
            h2load = section.measured[(f"{prefix}plaintext-h2load", 64)]
            section.notes.append(
                f"At 64 in flight on {what} in plaintext grpcload reached {ours.rps:.0f} rps "
                f"using {ours.client_cpu or 0:.2f} of a core, h2load {h2load.rps:.0f} using "
                f"{h2load.client_cpu or 0:.2f} ({ours.rps / h2load.rps:.0%}). "
                + (
                    "The client saturated its core: it, not the server, set the pace."
                    if (ours.client_cpu or 0) >= SATURATED
                    else "The client did not saturate its core; but on 2 cores the CPU it "
                    "takes is the server's."
                    if ours.rps < 0.9 * h2load.rps
                    else "The client kept up with the server."
                )
            )
    return section


# -- ratios and goals --------------------------------------------------------------

Measured = Mapping[tuple[str, int], Figures]


def _rps(m: Measured, name: str, level: int = 64) -> float:
    return m[(name, level)].rps


def _p50(m: Measured, name: str, level: int = 1) -> float:
    return m[(name, level)].p50_ms


def _all(m: Measured, name: str, value: Callable[[Figures], int]) -> int:
    found = [value(f) for (n, _), f in m.items() if n == name]
    if not found:
        raise KeyError(name)
    return sum(found)


@dataclass(frozen=True)
class Ratio:
    """A figure derived from a mode's measurements, and the goal it has in each mode
    (none: printed for information)."""

    name: str
    value: Callable[[Measured], float]
    goals: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    modes: tuple[str, ...] = ("sqlite", "postgres")
    fmt: str = "{:.2f}"
    # The same figure between two setups alike (a control): a value no further from 0
    # than this is noise, and the verdict says so.
    noise: Callable[[Measured], float] | None = None


def _mtls_ratios(what: str, prefix: str, goals: bool) -> list[Ratio]:
    """mTLS against plaintext on one trio of servers (figures `<prefix>plaintext`,
    `<prefix>mtls` and `<prefix>control`, a second plaintext process): the throughput cost
    and the p50 added at 64 and 1 in flight, and the control's own differences (noise).
    With `goals`, issue 14's goals at 64 (throughput) and 1 (p50), judged against that
    noise."""
    plaintext = f"{prefix}plaintext"

    def cost(of: str, level: int) -> Callable[[Measured], float]:
        return lambda m: 1 - _rps(m, prefix + of, level) / _rps(m, plaintext, level)

    def slower(of: str, level: int) -> Callable[[Measured], float]:
        return lambda m: _p50(m, prefix + of, level) - _p50(m, plaintext, level)

    cost_name = "mTLS throughput cost at {} in flight"
    formula = " (1 - mTLS rps / plaintext rps)"  # spelt out where judged
    p50_name = "mTLS p50 - plaintext p50 at {} in flight (ms)"
    ratios = []
    for at_cost, at_p50, goal in ((64, 1, goals), (1, 64, False)):
        ratios += [
            Ratio(
                f"{what}: {cost_name.format(at_cost)}" + (formula if goal else ""),
                cost("mtls", at_cost),
                {MTLS: ("<=", 0.10)} if goal else {},
                (MTLS,),
                "{:.1%}",
                cost("control", at_cost) if goal else None,
            ),
            Ratio(
                f"{what}: {p50_name.format(at_p50)}",
                slower("mtls", at_p50),
                {MTLS: ("<=", 0.1)} if goal else {},
                (MTLS,),
                "{:.3f}",
                slower("control", at_p50) if goal else None,
            ),
        ]
    control = f"{what}, control: "
    return [
        *ratios,
        Ratio(
            f"{control}1 - second plaintext rps / plaintext rps at 64 in flight (noise)",
            cost("control", 64),
            modes=(MTLS,),
            fmt="{:.1%}",
        ),
        Ratio(
            f"{control}second plaintext p50 - plaintext p50 at 1 in flight (ms, noise)",
            slower("control", 1),
            modes=(MTLS,),
            fmt="{:.3f}",
        ),
    ]


# Issue 14's goals.
RATIOS = (
    Ratio(
        "internal GetProduct / baseline, rps at 64 in flight",
        lambda m: _rps(m, "internal") / _rps(m, "baseline"),
        {"sqlite": (">=", 0.5), "postgres": (">=", 0.35)},
    ),
    Ratio(
        "internal GetProduct p50 / baseline p50 at 1 in flight",
        lambda m: _p50(m, "internal") / _p50(m, "baseline"),
        {"sqlite": ("<=", 1.5)},
    ),
    Ratio(
        "gateway Connect JSON / FastAPI peer, rps at 64 in flight",
        lambda m: _rps(m, "connect-json") / _rps(m, "peer"),
        {"sqlite": (">=", 2.0)},
    ),
    Ratio(
        "gateway Connect JSON p50 - internal gRPC p50 at 1 in flight (ms)",
        lambda m: _p50(m, "connect-json") - _p50(m, "internal"),
        {"sqlite": ("<=", 0.3)},
    ),
    Ratio(
        "CreateOrder / baseline, rps at 64 in flight",
        lambda m: _rps(m, "create-order") / _rps(m, "baseline"),
        {"sqlite": (">=", 0.05), "postgres": (">=", 0.04)},
        fmt="{:.3f}",
    ),
    Ratio(
        "CreateOrder errors, timeouts included (1 and 64 in flight)",
        lambda m: _all(m, "create-order", lambda f: f.errors),
        {"sqlite": ("<=", 0), "postgres": ("<=", 0)},
        fmt="{:.0f}",
    ),
    Ratio(
        "CreateOrder timeouts (1 and 64 in flight)",
        lambda m: _all(m, "create-order", lambda f: f.timeouts),
        {"sqlite": ("<=", 0)},
        fmt="{:.0f}",
    ),
    Ratio(
        "CreateOrder p99 at 64 in flight (ms)",
        lambda m: m[("create-order", 64)].p99_ms,
        {"sqlite": ("<=", 250.0)},
        fmt="{:.1f}",
    ),
    Ratio(
        "order -> notification p99 (ms)",
        lambda m: m[("notify", 1)].p99_ms,
        {"sqlite": ("<=", 50.0)},
        fmt="{:.1f}",
    ),
    *_mtls_ratios("internal", "", goals=True),
    *_mtls_ratios("baseline", "baseline-", goals=False),
    Ratio(
        "grpcload / h2load, plaintext rps at 64 in flight (same server)",
        lambda m: _rps(m, "plaintext") / _rps(m, "plaintext-h2load"),
        modes=(MTLS,),
    ),
    Ratio(
        "grpcload / h2load, plaintext rps at 1 in flight (same server)",
        lambda m: _rps(m, "plaintext", 1) / _rps(m, "plaintext-h2load", 1),
        modes=(MTLS,),
    ),
    Ratio(
        "baseline: grpcload / h2load, plaintext rps at 64 in flight",
        lambda m: _rps(m, "baseline-plaintext") / _rps(m, "baseline-plaintext-h2load"),
        modes=(MTLS,),
    ),
)


@dataclass(frozen=True)
class Verdict:
    name: str
    value: float
    shown: str
    goal: str  # "" when the ratio has no goal in this mode
    met: bool | None
    # The control's value when this one is within it (noise), else None.
    within_noise: str | None = None


def judge(section: Section) -> list[Verdict]:
    """Each ratio of the section's mode whose scenarios were measured, against its goal."""
    verdicts = []
    for ratio in RATIOS:
        if section.mode not in ratio.modes:
            continue
        try:
            value = ratio.value(section.measured)
        except (KeyError, ZeroDivisionError):
            continue
        goal, met = "", None
        if section.mode in ratio.goals:
            op, target = ratio.goals[section.mode]
            met = value >= target if op == ">=" else value <= target
            goal = f"{op} {ratio.fmt.format(target)}"
        within = None
        with contextlib.suppress(KeyError, ZeroDivisionError):
            if ratio.noise is not None and abs(value) <= abs(
                noise := ratio.noise(section.measured)
            ):
                within = ratio.fmt.format(noise)
        verdicts.append(Verdict(ratio.name, value, ratio.fmt.format(value), goal, met, within))
    return verdicts


# -- the report --------------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "cores": str(os.cpu_count())}
    packages = ["grpcio", "protobuf", "connectrpc", "hypercorn", "httptools", "uvicorn"]
    packages += ["starlette", "sqlalchemy", "aiosqlite", "asyncpg", "nats-py", "uvloop", "fastapi"]
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "-"
    for tool, flag in (("h2load", "--version"), ("wrk", "-v")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: `make bench` installs it (wrk, nghttp2-client)")
        out = (
            subprocess.run([tool, flag], capture_output=True, text=True).stdout.strip().splitlines()
        )
        found[tool] = out[0] if out else "?"
    return found


def render(sections: list[Section], info: dict[str, str]) -> str:
    lines = [
        f"# Shop mesh benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"{info['cores']} cores, Python {info['python']}, grpcio {info['grpcio']}, "
        f"connectrpc {info['connectrpc']}, SQLAlchemy {info['sqlalchemy']}, "
        f"asyncpg {info['asyncpg']}. Tool CPU: the load tool's own CPU seconds per second "
        f"(>= {SATURATED} on one core: the tool was the bottleneck).",
    ]
    tally: list[tuple[str, Verdict]] = []
    for section in sections:
        lines += ["", f"## {section.title}"]
        if section.measured:
            lines += [
                "",
                "| scenario | tool | in flight | requests | rps | p50 ms | p99 ms | errors "
                "| timeouts | tool CPU |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
        for f in section.measured.values():
            cpu = "-" if f.client_cpu is None else f"{f.client_cpu:.2f}"
            lines.append(
                f"| {f.scenario} | {f.tool} | {f.in_flight} | {f.requests} | {f.rps:.0f} "
                f"| {f.p50_ms:.2f} | {f.p99_ms:.2f} | {f.errors} | {f.timeouts} | {cpu} |"
            )
        verdicts = judge(section)
        if verdicts:
            lines += ["", "| ratio | value | goal | |", "| --- | ---: | --- | --- |"]
            for v in verdicts:
                state = "" if v.met is None else ("met" if v.met else "**NOT met**")
                if v.within_noise is not None:
                    state += f" (within noise: the control differs by {v.within_noise})"
                lines.append(f"| {v.name} | {v.shown} | {v.goal} | {state} |")
                if v.met is not None:
                    tally.append((section.title, v))
        if section.notes:
            lines += ["", *(f"- {note}" for note in section.notes)]
    if tally:
        met = sum(1 for _, v in tally if v.met)
        lines += ["", f"## Goals: {met} of {len(tally)} met", ""]
        lines += [
            f"- {'met' if v.met else 'NOT met'}: {v.name} = {v.shown} (goal {v.goal}; {title})"
            + ("" if v.within_noise is None else f"; within noise ({v.within_noise})")
            for title, v in tally
        ]
    return "\n".join(lines)


def as_json(sections: list[Section], info: dict[str, str], args: dict[str, object]) -> str:
    return json.dumps(
        {
            "versions": info,
            "args": args,
            "sections": [
                {
                    "mode": s.mode,
                    "title": s.title,
                    "figures": [
                        {"name": name, **f.as_dict()} for (name, _), f in s.measured.items()
                    ],
                    "ratios": [
                        {
                            "name": v.name,
                            "value": v.value,
                            "goal": v.goal,
                            "met": v.met,
                            "within_noise_of": v.within_noise,
                        }
                        for v in judge(s)
                    ],
                    "notes": s.notes,
                }
                for s in sections
            ],
        },
        indent=2,
    )


async def measure(modes: list[Mode], settings: Settings) -> list[Section]:
    """Every mode in turn, beside one baseline server; the mTLS comparison with the first."""
    sections: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="shop-bench-") as tmp:
        run_dir = Path(tmp)
        async with AsyncExitStack() as stack:
            address = None
            if "baseline" in settings.picked:
                say("starting the baseline server")
                address = await stack.enter_async_context(baseline(run_dir))
            for index, mode in enumerate(modes):
                mtls = index == 0 and MTLS in settings.picked
                sections += await measure_mode(mode, address, settings, run_dir, mtls)
    return sections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument(
        "--orders", type=int, default=200, help="orders for the notification latency"
    )
    names = ", ".join([*(s.name for s in SCENARIOS), MTLS])
    parser.add_argument(
        "--only", default="", help=f"scenarios to run, comma-separated, of: {names} (default: all)"
    )
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres", "both"),
        default="sqlite",
        help="the mesh's database: SQLite files, or fresh PostgreSQL databases (default sqlite)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="also 2 replicas of every service and 2 gateways on PostgreSQL and NATS",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="the PostgreSQL server to make databases on (default $PG_URL or local)",
    )
    parser.add_argument("--broker-url", default="nats://127.0.0.1:4222", help="NATS for --cluster")
    parser.add_argument(
        "--turns",
        type=int,
        default=2,
        help="turns each level's scenarios take, --seconds shared among them, each turn's "
        "share rounded up to whole seconds (default 2)",
    )
    args = parser.parse_args()
    databases = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    modes = [MODES[name] for name in databases]
    if args.cluster:
        modes.append(MODES["cluster"])
    if args.turns < 1:
        raise SystemExit("--turns: at least 1")
    settings = Settings(
        args.seconds, args.orders, pick(args.only), args.pg_url, args.broker_url, args.turns
    )
    info = versions()
    sections = asyncio.run(measure(modes, settings))
    report = render(sections, info)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"{stamp}.md").write_text(report + "\n")
    (RESULTS / f"{stamp}.json").write_text(as_json(sections, info, vars(args)) + "\n")
    say(f"written to bench/results/{stamp}.json and .md")


if __name__ == "__main__":
    main()
