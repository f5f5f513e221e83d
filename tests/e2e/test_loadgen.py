"""The traffic-mix load generator, run as a user runs it, against the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests import tokens
from tests.e2e.conftest import Stack


async def test_traffic_mix_runs_every_operation_without_errors(
    stack: Stack, tmp_path: Path
) -> None:
    out = tmp_path / "load.json"
    # Not subprocess.run: the mesh serves from this test's event loop.
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        "--target",
        stack.url,
        "--rate",
        "40",
        "--duration",
        "3",
        "--report-every",
        "1",
        "--stream-hold",
        "0.5",
        "--users",
        "3",
        "--signing-key",
        str(tokens.KEYS / "private.pem"),
        "--catalogue",
        "4",
        "--mix",
        "browse=10,view=5,order=3,decline=1,list=2,payments=2,stream=2",
        "--json",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Should it ever crash in native code, the Python stacks land in stderr.
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    stdout, stderr = (part.decode() for part in await asyncio.wait_for(child.communicate(), 60))
    assert child.returncode == 0, stderr
    summary = json.loads(out.read_text())
    operations = summary["operations"]
    assert set(operations) == {
        "browse",
        "view",
        "order",
        "decline",
        "list",
        "payments",
        "stream",
    }
    for name, figures in operations.items():
        assert figures["errors"] == {}, (name, figures)
        assert figures["ok"] + figures["unmeasured"] > 0, name
    # Reports came while it ran, and the table at the end names every operation.
    assert stderr.count("in flight") >= 2
    assert all(f"| {name} |" in stdout for name in operations)
    # Every order the generator counted as placed is in the order service, and no other.
    placed = await stack.mesh.sql("order", "SELECT count(*) FROM orders WHERE status = 'PLACED'")
    assert placed == operations["order"]["ok"]
    # Each declined order is a declined payment, and no order; each placed one is paid.
    payments = dict(
        await stack.mesh.rows("payment", "SELECT state, count(*) FROM payments GROUP BY state")
    )
    assert payments.get("DECLINED", 0) == operations["decline"]["ok"]
    assert payments.get("CAPTURED", 0) + payments.get("AUTHORIZED", 0) == placed
    assert await stack.mesh.sql("product", "SELECT count(*) FROM products") == 4


def test_bad_mix_is_refused_with_a_clear_message() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "--mix", "browse=10,checkout=1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2
    assert "bad mix entry 'checkout=1'" in run.stderr
