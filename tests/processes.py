"""Services as real processes (`python -m services.<name>`), stopped with SIGTERM afterwards."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from scripts import procs
from tests import tokens

ServiceProcess = procs.MeshProcess


@asynccontextmanager
async def service_process(
    name: str, env: Mapping[str, str], *, module: str = "", start_timeout: float = 30.0
) -> AsyncIterator[ServiceProcess]:
    """Starts `python -m services.<name>` (or `module`) on 127.0.0.1 port 0 and yields
    once it says where it listens. The kernel kills it if the test run dies
    (procs.DIE_WITH_PARENT)."""
    async with await procs.launch(
        [sys.executable, "-m", module or f"services.{name}"],
        name=name,
        env={"HOST": "127.0.0.1", "PORT": "0", **tokens.ENV, **env},
        start_timeout=start_timeout,
    ) as service:
        yield service
