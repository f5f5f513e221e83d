"""Runs h2load (HTTP/2, gRPC) and wrk (HTTP/1.1) and reads their figures."""

from __future__ import annotations

import asyncio
import re
import resource
import statistics
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any


@dataclass
class Figures:
    scenario: str
    tool: str
    in_flight: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    # Every failed request, timeouts included.
    errors: int
    # wrk's socket timeouts (a part of `errors`).
    timeouts: int = 0
    # CPU the load tool itself used, in cores (CPU seconds per wall second): near 1.0 it
    # was its own bottleneck (h2load and grpcload run on one core; wrk at 64 on two).
    client_cpu: float | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _run(*argv: str) -> tuple[str, float]:
    """The tool's output, and the cores it used while it ran (its rusage, read once it
    has been reaped: the mesh's processes are children too but live on, so the
    difference is the tool's alone while measurements run one at a time)."""
    before, started = _children_cpu(), time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    cpu = (_children_cpu() - before) / (time.perf_counter() - started)
    return out.decode(errors="replace"), cpu


def _pooled(parts: list[Figures], **changes: Any) -> Figures:
    """Several measurements of one scenario as one figure: requests, errors and timeouts
    add up; p50 is the request-weighted mean of theirs and p99 the worst of theirs (wrk
    gives percentiles, not the latencies to pool); `changes` says the rest."""
    requests = sum(p.requests for p in parts)
    return replace(
        parts[0],
        requests=requests,
        p50_ms=sum(p.p50_ms * p.requests for p in parts) / max(1, requests),
        p99_ms=max(p.p99_ms for p in parts),
        errors=sum(p.errors for p in parts),
        timeouts=sum(p.timeouts for p in parts),
        **changes,
    )


async def side_by_side(runs: list[Awaitable[Figures]]) -> Figures:
    """Several loads at once (one per replica or gateway) as one figure: rps and tool CPU
    add up too."""
    before, started = _children_cpu(), time.perf_counter()
    parts = await asyncio.gather(*runs)
    cpu = (_children_cpu() - before) / (time.perf_counter() - started)
    return _pooled(
        parts,
        tool=f"{parts[0].tool} x{len(parts)}",
        in_flight=sum(p.in_flight for p in parts),
        rps=sum(p.rps for p in parts),
        client_cpu=cpu,
    )


def in_turns(turns: list[Figures]) -> Figures:
    """One scenario measured in turns of equal length as one figure: rps and tool CPU are
    the turns' mean."""
    if len(turns) == 1:
        return turns[0]
    cpus = [t.client_cpu for t in turns if t.client_cpu is not None]
    return _pooled(
        turns,
        tool=f"{turns[0].tool}, {len(turns)} turns",
        rps=sum(t.rps for t in turns) / len(turns),
        client_cpu=sum(cpus) / len(cpus) if cpus else None,
    )


def split(in_flight: int) -> tuple[int, int]:
    """Connections and streams per connection for a number of requests in flight."""
    connections = 1 if in_flight < 8 else 4
    return connections, max(1, in_flight // connections)


async def h2load_grpc(
    url: str, body: bytes, scenario: str, in_flight: int, seconds: float
) -> Figures:
    """A gRPC unary method under h2load, with a pre-framed request body."""
    with tempfile.TemporaryDirectory() as tmp:
        request, log = Path(tmp) / "request.bin", Path(tmp) / "log.tsv"
        request.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)
        connections, streams = split(in_flight)
        out, cpu = await _run(
            "h2load",
            "-D",
            str(int(seconds)),
            "--warm-up-time=1",
            "-c",
            str(connections),
            "-m",
            str(streams),
            "-d",
            str(request),
            "--log-file",
            str(log),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            url,
        )
        latencies = [
            int(line.split("\t")[2]) / 1000
            for line in log.read_text().splitlines()
            if line.count("\t") >= 2
        ]
    done = re.search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored",
        out,
    )
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    if done is None or rps is None:
        raise RuntimeError(f"h2load said:\n{out}")
    return Figures(
        scenario,
        "h2load",
        in_flight,
        int(done.group(1)),
        float(rps.group(1)),
        statistics.median(latencies) if latencies else float("nan"),
        percentile(latencies, 0.99),
        int(done.group(3)) + int(done.group(4)),
        client_cpu=cpu,
    )


def _wrk_ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


async def wrk(url: str, script: str, scenario: str, in_flight: int, seconds: float) -> Figures:
    """An HTTP/1.1 route under wrk; `script` is the Lua that shapes each request."""
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "request.lua"
        lua.write_text(script)
        threads = 1 if in_flight == 1 else 2
        out, cpu = await _run(
            "wrk",
            f"-t{threads}",
            f"-c{in_flight}",
            f"-d{int(seconds)}s",
            "--latency",
            "-s",
            str(lua),
            url,
        )
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"50%\s+([\d.]+\w+)", out)
    p99 = re.search(r"99%\s+([\d.]+\w+)", out)
    if not (rps and total and p50 and p99):
        raise RuntimeError(f"wrk said:\n{out}")
    errors = timeouts = 0
    if bad := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(bad.group(1))
    if sockets := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(n) for n in sockets.groups())
        timeouts = int(sockets.group(4))
    return Figures(
        scenario,
        "wrk",
        in_flight,
        int(total.group(1)),
        float(rps.group(1)),
        _wrk_ms(p50.group(1)),
        _wrk_ms(p99.group(1)),
        errors,
        timeouts,
        cpu,
    )


def lua_request(method: str, body: str = "", content_type: str = "application/json") -> str:
    escaped = body.replace("\\", "\\\\").replace("'", "\\'")
    return (
        f'wrk.method = "{method}"\n'
        f"wrk.body = '{escaped}'\n"
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
    )


def lua_binary_request(body: bytes, content_type: str) -> str:
    escaped = "".join(f"\\{b}" for b in body)
    return (
        f'wrk.method = "POST"\nwrk.body = "{escaped}"\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
    )


def lua_create_orders(user_id: str, product_id: str, run: str, token: str) -> str:
    """Every request a new order: its own idempotency key (run, thread, counter),
    signed in as `user_id`."""
    return f"""
local thread_count = 0
function setup(thread)
  thread_count = thread_count + 1
  thread:set("tag", thread_count)
end
counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{{"userId":"{user_id}","idempotencyKey":"{run}-%d-%d","items":[{{"productId":"{product_id}","quantity":1}}]}}',
    tag, counter)
  local headers = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {token}"}}
  return wrk.format("POST", nil, headers, body)
end
"""
