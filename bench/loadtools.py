"""Runs h2load (HTTP/2, gRPC) and wrk (HTTP/1.1) and reads their figures."""

from __future__ import annotations

import asyncio
import re
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Figures:
    scenario: str
    tool: str
    in_flight: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    return out.decode(errors="replace")


def _split(in_flight: int) -> tuple[int, int]:
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
        connections, streams = _split(in_flight)
        out = await _run(
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
        _percentile(latencies, 0.99),
        int(done.group(3)) + int(done.group(4)),
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
        out = await _run(
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
    errors = 0
    if bad := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(bad.group(1))
    if sockets := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(n) for n in sockets.groups())
    return Figures(
        scenario,
        "wrk",
        in_flight,
        int(total.group(1)),
        float(rps.group(1)),
        _wrk_ms(p50.group(1)),
        _wrk_ms(p99.group(1)),
        errors,
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
