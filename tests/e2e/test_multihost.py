"""Separate hosts and a partition: every process on a network namespace of its own (a
private PostgreSQL, a private nats-server, user, two product replicas on one product
database, payment, order, notification and the load client), joined by a bridge. Mid-load one
product replica's link goes down for OUTAGE seconds, then comes back.

What must hold: orders keep succeeding through the other replica while one is cut off
(the order service balances over both: `PRODUCT_SERVICE_ADDR=a:50052,b:50052`), and
nothing is lost or doubled: the PLACED orders in the order database are exactly those
the client saw placed, stock + reserved == the starting stock, one notification per
order. The healed replica is taken back into rotation.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import tokens
from tests.nats_server import NatsServer, require_nats_server
from tests.netns import Host, Network, Postgres, network, postgres_on

pytestmark = [pytest.mark.timeout(90)]

PORTS = {"user": 50051, "product": 50052, "order": 50053, "notification": 50054, "payment": 50055}
DATABASES = {
    "user": "shop_users",
    "product": "shop_products",
    "order": "shop_orders",
    "notification": "shop_notifications",
    "payment": "shop_payments",
}
STOCK = 5000
RATE = 20.0  # orders started a second
BEFORE_CUT = 2.5  # seconds of load before the cut
OUTAGE = 12.0  # seconds the replica stays cut off: longer than RECOVERY_BOUND
# Calls already sent to the cut replica hang until their connection is declared dead:
# gRPC sets TCP_USER_TIMEOUT to the keepalive timeout (5 s, services.common.clients).
# Then the breaker may be open for BREAKER_RESET_SECONDS; then orders flow through the
# other replica. The bound allows 3 s more, for a loaded 2-core machine.
DETECTION = 5.0
BREAKER_RESET = 1.0
RECOVERY_BOUND = DETECTION + BREAKER_RESET + 3.0
SETTLE_WITHIN = 15.0


def requests_served(metrics: str, service_prefix: str) -> int:
    """rpc_server_requests_total of the methods under `service_prefix` that answered OK,
    from a /metrics page."""
    total = 0.0
    for line in metrics.splitlines():
        ours = line.startswith("rpc_server_requests_total{") and 'code="OK"' in line
        if ours and f'method="{service_prefix}' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


async def calls_served(client: Host, replica: Host) -> int:
    """How many product RPCs (BatchGetProducts, ReserveStock, ...) `replica` has answered,
    read from its /metrics by `client` (on the test network, never from the root)."""
    metrics = await client.http_get(f"http://{replica.address}:{PORTS['product'] + 1000}/metrics")
    return requests_served(metrics, "shop.product.v1.")


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch within [start, end] with no time in `times`."""
    marks = [start, *sorted(t for t in times if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(marks))


@dataclass
class Run:
    """What one run saw: the client's summary, the fault's times, the databases."""

    summary: dict[str, Any]
    cut_at: float
    healed_at: float
    calls_on_b_before_cut: int
    b_back_after_heal: float
    checks: dict[str, Any]
    order_warnings: dict[str, int]


async def test_orders_go_on_while_a_product_replica_is_cut_off(tmp_path: Path) -> None:
    require_nats_server()
    async with network() as net:
        # Bounded inside the test's own 90 s, so that teardown always runs.
        run = await asyncio.wait_for(partition_under_load(net, tmp_path), 80)

    summary = run.summary
    placed = sorted(o["order_id"] for o in summary["orders"] if o["code"] == "OK")
    report = outcome_report(summary, run.cut_at, run.healed_at)
    report.update(run.checks)
    report.update(
        calls_on_b_before_cut=run.calls_on_b_before_cut,
        b_back_in_rotation_after_heal_s=round(run.b_back_after_heal, 2),
        order_service_warnings=run.order_warnings,
    )
    shown = {k: v for k, v in report.items() if k not in ("placed_ids", "notified_ids")}
    print("partition:", json.dumps(shown))

    assert summary["failed"] == 0, [o for o in summary["orders"] if o["code"] != "OK"]
    assert len(placed) > RATE * (BEFORE_CUT + OUTAGE)
    assert run.calls_on_b_before_cut > 0, "both replicas served before the cut"
    assert report["placed_ids"] == ",".join(placed), "PLACED == what the client saw"
    assert report["stock"] + report["reserved"] == STOCK
    assert report["reserved"] == len(placed)
    assert report["notifications"] == len(placed)
    assert report["notified_ids"] == report["placed_ids"]
    assert report["notifications_doubled"] == 0
    assert report["unfinished_orders"] == 0
    assert report["recovered_after_cut_s"] <= RECOVERY_BOUND, shown
    assert report["first_try_orders_through_a"] > 0, shown
    assert report["longest_gap_during_outage_s"] <= RECOVERY_BOUND, shown


async def partition_under_load(net: Network, tmp_path: Path) -> Run:
    names = (
        *("db", "nats", "user", "product-a", "product-b", "payment", "order", "notification"),
        "client",
    )
    hosts = {name: net.add_host(name) for name in names}
    a, b, client_host = hosts["product-a"], hosts["product-b"], hosts["client"]
    async with postgres_on(hosts["db"], net.subnet, list(DATABASES.values())) as db:
        broker = NatsServer(tmp_path / "nats", host=hosts["nats"].address, port=4222)
        await hosts["nats"].spawn(broker.argv(), name="nats-server")
        await hosts["nats"].wait_port(broker.host, broker.port)

        def address(name: str, host: str = "") -> str:
            return f"{hosts[host or name].address}:{PORTS[name]}"

        env = {
            **tokens.ENV,
            "DATA_DIR": str(tmp_path / "data"),
            "LOG_LEVEL": "WARNING",
            "BREAKER_RESET_SECONDS": str(BREAKER_RESET),
            # The client gives an attempt 6 s: an attempt stuck on the cut-off replica
            # ends at 8 s, and its key is free for the retry within 8 + 5 s + a sweep
            # (with the default 20 s, a retry could wait ~27 s, most of the client's 40).
            "ORDER_ATTEMPT_TIMEOUT": "8",
            "BROKER_URL": broker.url,
            "USER_SERVICE_ADDR": address("user"),
            "PRODUCT_SERVICE_ADDR": f"{address('product', 'product-a')},"
            f"{address('product', 'product-b')}",
            "ORDER_SERVICE_ADDR": address("order"),
            "NOTIFICATION_SERVICE_ADDR": address("notification"),
            "PAYMENT_SERVICE_ADDR": address("payment"),
            **{
                f"{name.upper()}_DATABASE_URL": db.url(database)
                for name, database in DATABASES.items()
            },
        }
        # The order service checks both replicas against the first one's address: their
        # shared certificate names both (each other service's names its own HOST).
        replica_env = {**env, "TLS_DEV_SANS": f"{a.address},{b.address}"}
        await asyncio.gather(
            *(
                hosts[name].start_service(name, env, port=PORTS[name], within=40)
                for name in ("user", "payment", "order", "notification")
            ),
            a.start_service("product", replica_env, port=PORTS["product"], within=40),
            b.start_service("product", replica_env, port=PORTS["product"], within=40),
        )

        options = {
            "--user": env["USER_SERVICE_ADDR"],
            "--product": address("product", "product-a"),
            "--order": env["ORDER_SERVICE_ADDR"],
            "--ca": str(tokens.CLIENT_TLS.ca_file),
            "--cert": str(tokens.CLIENT_TLS.cert_file),
            "--key": str(tokens.CLIENT_TLS.key_file),
            "--stock": str(STOCK),
            "--rate": str(RATE),
            "--in-flight": "1000",
            "--attempt-timeout": "6",
            "--give-up-after": "40",
        }
        load = await client_host.spawn(
            [
                *(sys.executable, "-m", "tests.load_client", "--until-stdin-closes"),
                *itertools.chain.from_iterable(options.items()),
            ],
            env={"LOAD_TOKEN": tokens.ADMIN_TOKEN},
            name="load_client",
            stdin=True,
        )
        await load.wait_line(lambda line: line.startswith('{"ready"'), within=20)
        await asyncio.sleep(BEFORE_CUT)
        calls_on_b_before_cut = await calls_served(client_host, b)

        b.cut()
        cut_at = time.monotonic()
        await asyncio.sleep(OUTAGE)
        b.heal()
        healed_at = time.monotonic()
        served_at_heal = await calls_served(client_host, b)
        while await calls_served(client_host, b) <= served_at_heal:
            assert time.monotonic() - healed_at < 15, "the healed replica is never called"
            await asyncio.sleep(0.2)
        b_back_after_heal = time.monotonic() - healed_at
        await asyncio.sleep(1.0)
        await load.close_stdin()  # the load ends; the client waits for its orders
        await load.wait(within=45)  # (each gives up after 40 s)
        summary = json.loads(
            await load.wait_line(lambda line: line.startswith('{"summary"'), within=1)
        )["summary"]
        placed = sum(o["code"] == "OK" for o in summary["orders"])
        checks = await settle(db, summary["product_id"], placed)
        return Run(
            summary,
            cut_at,
            healed_at,
            calls_on_b_before_cut,
            b_back_after_heal,
            checks,
            warnings_of(hosts["order"].processes[0].stderr),
        )


async def settle(db: Postgres, product_id: str, placed: int) -> dict[str, Any]:
    """Waits until the databases agree (every notification in, every failed attempt's
    stock released), then reads what the checks need."""

    async def scalar(database: str, sql: str) -> str:
        return (await db.query(DATABASES[database], sql)).strip()

    deadline = time.monotonic() + SETTLE_WITHIN
    while True:
        checks: dict[str, Any] = {
            "placed_ids": await scalar(
                "order",
                "SELECT coalesce(string_agg(id, ',' ORDER BY id), '') FROM orders"
                " WHERE status = 'PLACED'",
            ),
            "unfinished_orders": int(
                await scalar("order", "SELECT count(*) FROM orders WHERE status <> 'PLACED'")
            ),
            "stock": int(
                await scalar("product", f"SELECT stock FROM products WHERE id = '{product_id}'")
            ),
            "reserved": int(
                await scalar(
                    "product",
                    "SELECT coalesce(sum(i.quantity), 0) FROM reservation_items i"
                    " JOIN reservations r ON r.id = i.reservation_id"
                    f" WHERE r.state = 'RESERVED' AND i.product_id = '{product_id}'",
                )
            ),
            "notifications": int(
                await scalar("notification", "SELECT count(*) FROM notifications")
            ),
            "notified_ids": await scalar(
                "notification",
                "SELECT coalesce(string_agg(order_id, ',' ORDER BY order_id), '')"
                " FROM notifications",
            ),
            "notifications_doubled": int(
                await scalar(
                    "notification",
                    "SELECT count(*) FROM (SELECT order_id FROM notifications"
                    " GROUP BY order_id HAVING count(*) > 1) d",
                )
            ),
        }
        settled = (
            checks["notifications"] >= placed
            and checks["reserved"] == placed
            and checks["unfinished_orders"] == 0
        )
        if settled or time.monotonic() > deadline:
            return checks
        await asyncio.sleep(0.5)


def outcome_report(summary: dict[str, Any], cut_at: float, healed_at: float) -> dict[str, Any]:
    """What the client saw around the cut, in seconds from it."""
    orders = summary["orders"]
    ends = [o["end"] for o in orders if o["code"] == "OK"]
    codes: dict[str, int] = {}
    for order in orders:
        for _, code, _ in order["errors"]:
            codes[code] = codes.get(code, 0) + 1
    # Orders that started while B was cut off and saw an attempt fail before the heal;
    # the last of them to start marks when the mesh had routed around the cut.
    hit = [
        o for o in orders if cut_at <= o["start"] < healed_at and o["errors"]
        and o["errors"][0][0] < healed_at
    ]  # fmt: skip
    recovered_at = max((o["start"] for o in hit), default=cut_at)
    through_a = [
        o for o in orders if recovered_at < o["start"] and o["end"] < healed_at
        and not o["errors"]
    ]  # fmt: skip
    latencies = sorted(o["end"] - o["start"] for o in through_a)
    return {
        "orders": len(orders),
        "placed": summary["placed"],
        "failed": summary["failed"],
        "orders_retried": sum(bool(o["errors"]) for o in orders),
        "failed_attempts_by_code": codes,
        "orders_hit_by_the_cut": len(hit),
        "recovered_after_cut_s": round(recovered_at - cut_at, 2),
        "first_try_orders_through_a": len(through_a),
        "their_latency_p50_max_s": [
            round(latencies[len(latencies) // 2], 2) if latencies else None,
            round(latencies[-1], 2) if latencies else None,
        ],
        "completions_during_outage": sum(cut_at <= t <= healed_at for t in ends),
        "longest_gap_during_outage_s": round(longest_gap(ends, cut_at, healed_at), 2),
        "slowest_order_s": round(max((o["end"] - o["start"] for o in orders), default=0.0), 2),
        "last_order_done_after_cut_s": round(max(ends, default=cut_at) - cut_at, 2),
        "load_s": round(summary["load_end"] - summary["load_start"], 1),
    }


def warnings_of(stderr: list[str]) -> dict[str, int]:
    """A service's JSON log lines (LOG_LEVEL=WARNING), counted by message."""
    counts: dict[str, int] = {}
    for line in stderr:
        try:
            message = str(json.loads(line).get("message", ""))
        except ValueError:
            continue
        counts[message] = counts.get(message, 0) + 1
    return counts
