"""A closed-loop gRPC load client on grpc.aio that can present a client certificate.

h2load can't do mutual TLS, and the mesh runs it by default; this client can, so
plaintext and mTLS are measured with the same client and the difference between
them is TLS, not the tool. Each of `in_flight` workers sends a unary call, waits for
its reply and sends the next; calls are spread over 1 connection below 8 in flight
and 4 above (as bench.loadtools gives h2load). Requests are pre-serialised bytes and
replies are not parsed, so the client spends its time on gRPC, not protobuf.

Given several targets, it loads them in turns (A B B A A B ...), each turn opening
with a short uncounted warm-up, until each has had `seconds`: a server's speed here
drifts by 20% from one run to the next, far more than TLS costs, and turns spread
that drift over both sides alike.

`python -m bench.grpcload --target HOST:PORT [--tls-target HOST:PORT --tls-dir DIR]
--method /pkg.Svc/Method --body HEX` prints one JSON line per target: requests, rps,
p50, p99, errors and the client's own CPU time per second of wall time, because a
Python client can saturate its core before the server does (then its figure is the
client's limit, not the server's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.loadtools import Figures, percentile, split

# Before the first turn on a target (connections, the server's caches), as h2load's
# --warm-up-time; and before each turn after that (the pipeline filling again).
WARM_UP = 1.0
TURN_WARM_UP = 0.25


@dataclass(frozen=True)
class Endpoint:
    """A server to load; `tls_dir` holds the development PKI for mutual TLS (None:
    plaintext)."""

    address: str
    tls_dir: Path | None = None


@dataclass
class Tally:
    """What the workers recorded inside the measured windows of one endpoint."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    measured: float = 0.0  # seconds
    cpu: float = 0.0  # the client's CPU seconds in those windows


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _channel(endpoint: Endpoint, client_name: str) -> grpc.aio.Channel:
    # A subchannel pool of its own per channel: otherwise channels to one target share
    # one connection, and "4 connections" would be one.
    options = [("grpc.use_local_subchannel_pool", 1)]
    if endpoint.tls_dir is None:
        return grpc.aio.insecure_channel(endpoint.address, options=options)
    from services.common.tls import SERVICE, dev_pki

    credentials = dev_pki(endpoint.tls_dir, client_name, SERVICE).channel_credentials()
    return grpc.aio.secure_channel(endpoint.address, credentials, options=options)


Call = grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]


async def _worker(call: Call, body: bytes, start: float, end: float, tally: Tally | None) -> None:
    while True:
        sent = time.perf_counter()
        if sent >= end:
            return
        try:
            await call(body, timeout=30)
            failed = None
        except grpc.aio.AioRpcError as error:
            failed = error.code().name
        done = time.perf_counter()
        if tally is not None and start <= done <= end:  # as h2load: what completes inside
            if failed is None:
                tally.latencies_ms.append((done - sent) * 1000)
            else:
                tally.errors[failed] += 1


async def _turn(
    calls: list[Call], body: bytes, in_flight: int, warm_up: float, seconds: float, tally: Tally
) -> None:
    """`in_flight` workers for `warm_up` + `seconds`; the last `seconds` are counted."""
    start = time.perf_counter() + warm_up
    end = start + seconds
    workers = [
        asyncio.create_task(_worker(calls[i % len(calls)], body, start, end, tally))
        for i in range(in_flight)
    ]
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    cpu_before = _cpu_seconds()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    tally.cpu += _cpu_seconds() - cpu_before
    tally.measured += seconds
    await asyncio.gather(*workers)  # the calls still out finish uncounted


async def load(
    endpoints: list[Endpoint],
    method: str,
    body: bytes,
    in_flight: int,
    seconds: float,
    turns: int = 1,
    client_name: str = "bench-client",
) -> list[dict[str, object]]:
    """`seconds` of load on each endpoint, in `turns` turns each; the figures of each,
    as JSON-able dicts in the order of `endpoints`."""
    connections, _ = split(in_flight)
    channels = [[_channel(e, client_name) for _ in range(connections)] for e in endpoints]
    tallies = [Tally() for _ in endpoints]
    try:
        for own in channels:
            for channel in own:
                await asyncio.wait_for(channel.channel_ready(), 10)
        calls: list[list[Call]] = [
            [
                c.unary_unary(method, request_serializer=None, response_deserializer=None)
                for c in own
            ]
            for own in channels
        ]
        order = list(range(len(endpoints)))
        for turn in range(turns):
            for index in order if turn % 2 == 0 else order[::-1]:
                warm_up = WARM_UP if turn == 0 else TURN_WARM_UP
                share = seconds / turns
                await _turn(calls[index], body, in_flight, warm_up, share, tallies[index])
    finally:
        for own in channels:
            for channel in own:
                await channel.close()
    results: list[dict[str, object]] = []
    for endpoint, tally in zip(endpoints, tallies, strict=True):
        ok, errors = tally.latencies_ms, sum(tally.errors.values())
        results.append(
            {
                "target": endpoint.address,
                "tls": endpoint.tls_dir is not None,
                "requests": len(ok) + errors,
                "rps": (len(ok) + errors) / tally.measured,
                "p50_ms": statistics.median(ok) if ok else float("nan"),
                "p99_ms": percentile(ok, 0.99),
                "errors": errors,
                "error_codes": dict(tally.errors),
                "client_cpu": tally.cpu / tally.measured,
            }
        )
    return results


async def grpcload(
    endpoints: list[Endpoint],
    method: str,
    body: bytes,
    scenarios: list[str],
    in_flight: int,
    seconds: float,
    turns: int = 1,
) -> list[Figures]:
    """The client in a process of its own (its CPU is its own, as h2load's is), read
    back as one Figures per endpoint, titled by `scenarios`."""
    argv = [sys.executable, "-m", "bench.grpcload", "--method", method, "--body", body.hex()]
    argv += ["--in-flight", str(in_flight), "--seconds", str(seconds), "--turns", str(turns)]
    for endpoint in endpoints:
        if endpoint.tls_dir is None:
            argv += ["--target", endpoint.address]
        else:
            argv += ["--tls-target", endpoint.address, "--tls-dir", str(endpoint.tls_dir)]
    child = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"bench.grpcload failed:\n{err.decode(errors='replace')}")
    tool = "grpcload" if turns == 1 else f"grpcload, {turns} turns"
    # The command line lists plaintext targets first: match the lines by target.
    results = {
        (line["target"], line["tls"]): line for line in map(json.loads, out.decode().splitlines())
    }
    figures = []
    for scenario, endpoint in zip(scenarios, endpoints, strict=True):
        result = results[(endpoint.address, endpoint.tls_dir is not None)]
        figures.append(
            Figures(
                scenario,
                tool,
                in_flight,
                int(result["requests"]),
                float(result["rps"]),
                float(result["p50_ms"]),
                float(result["p99_ms"]),
                int(result["errors"]),
                client_cpu=float(result["client_cpu"]),
            )
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", default=[], help="HOST:PORT, plaintext")
    parser.add_argument(
        "--tls-target", action="append", default=[], help="HOST:PORT, mutual TLS (--tls-dir)"
    )
    parser.add_argument("--tls-dir", type=Path, help="the development PKI (services.common.tls)")
    parser.add_argument("--client-name", default="bench-client", help="its certificate's name")
    parser.add_argument("--method", required=True, help="/package.Service/Method")
    parser.add_argument("--body", default="", help="the serialised request, in hex")
    parser.add_argument("--in-flight", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0, help="on each target")
    parser.add_argument("--turns", type=int, default=1, help="turns each target gets")
    # grpc.aio's client did more calls a second on the standard loop than on uvloop here.
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop"
    )
    args = parser.parse_args()
    if args.tls_target and args.tls_dir is None:
        parser.error("--tls-target needs --tls-dir")
    endpoints = [Endpoint(address) for address in args.target]
    endpoints += [Endpoint(address, args.tls_dir) for address in args.tls_target]
    if not endpoints:
        parser.error("give at least one --target or --tls-target")
    coroutine = load(
        endpoints,
        args.method,
        bytes.fromhex(args.body),
        args.in_flight,
        args.seconds,
        args.turns,
        args.client_name,
    )
    if args.loop == "uvloop":
        import uvloop

        results = uvloop.run(coroutine)
    else:
        results = asyncio.run(coroutine)
    for result in results:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
