"""Services as real processes (`python -m services.<name>`), stopped with SIGTERM afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests import tokens

ROOT = Path(__file__).resolve().parent.parent


# The kernel kills a child whose test run died (a hard timeout ends pytest with
# os._exit, which runs no clean-up), so nothing is left behind. setpriv execs the
# command with that setting; a preexec_fn would run Python in a forked child, which
# gRPC's threads in this process do not survive.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []


@dataclass
class ServiceProcess:
    name: str
    process: asyncio.subprocess.Process
    address: str
    stderr_lines: list[str] = field(default_factory=list)

    async def stop(self, grace: float = 10.0) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode or 0


async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
    async for line in stream:
        into.append(line.decode(errors="replace").rstrip("\n"))


@asynccontextmanager
async def service_process(
    name: str, env: Mapping[str, str], *, module: str = "", start_timeout: float = 30.0
) -> AsyncIterator[ServiceProcess]:
    """Starts `python -m services.<name>` (or `module`) on 127.0.0.1 port 0 and yields
    once it says where it listens."""
    full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": "0", **tokens.ENV, **env}
    process = await asyncio.create_subprocess_exec(
        *DIE_WITH_PARENT,
        sys.executable,
        "-m",
        module or f"services.{name}",
        cwd=ROOT,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    stderr_lines: list[str] = []
    drain = asyncio.create_task(_drain(process.stderr, stderr_lines))
    try:
        try:
            line = await asyncio.wait_for(process.stdout.readline(), start_timeout)
            address = json.loads(line)["listening"]
        except (TimeoutError, ValueError, KeyError) as exc:
            process.kill()
            await process.wait()
            await drain
            raise RuntimeError(f"{name} did not start:\n" + "\n".join(stderr_lines[-30:])) from exc
        service = ServiceProcess(name, process, address, stderr_lines)
        try:
            yield service
        finally:
            await service.stop()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await drain
