"""Starting a mesh process and waiting for its listen line, for `make run`, the
benchmark and the tests (the platform itself never starts one, and the image does not
carry this).

A service, the gateway or the benchmark's baseline says where it listens with one
JSON line on stdout, such as {"service": "user", "listening": "127.0.0.1:50051", ...}.
`launch` starts one and returns once that line is read (or fails if the process exits,
or takes too long, first); `MeshProcess.stop` sends SIGTERM and kills after a grace.

    async with await launch([sys.executable, "-m", "services.user"], name="user") as user:
        ...  # user.address, user.listening, user.stderr_lines
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeAlias

ROOT = Path(__file__).resolve().parent.parent
# The kernel kills a child whose parent died (a hard timeout ends pytest with os._exit,
# which runs no clean-up; `make run` may be killed too), so nothing is left behind.
# setpriv execs the command with that setting; a preexec_fn would run Python in a
# forked child, which gRPC's threads in the parent do not survive.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL"] if shutil.which("setpriv") else []
TAIL = 30  # lines of a process's stderr shown when it fails

# Where a process's stderr goes: kept in `stderr_lines`, the parent's own (a terminal),
# or a file (a log, shown when the process fails to start).
Stderr: TypeAlias = Literal["capture", "inherit"] | Path


class StartError(RuntimeError):
    """The process exited, or took too long, before it printed its listen line."""


@dataclass
class MeshProcess:
    """A started process and what its listen line said. As an async context manager,
    it is stopped (and its stderr read to the end) on leaving."""

    name: str
    process: asyncio.subprocess.Process
    listening: dict[str, Any]
    stderr_lines: list[str] = field(default_factory=list)
    grace: float = 10.0  # for the stop on leaving the context
    killed: bool = False  # SIGKILLed by `stop`, the grace being over
    drain: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return str(self.listening["listening"])

    def tail(self, lines: int = TAIL) -> str:
        return "\n".join(self.stderr_lines[-lines:])

    def signal(self, signum: int) -> None:
        """Sends `signum` unless it has exited. (By os.kill: Popen.send_signal reaps an
        exited process behind asyncio's back, which then reports exit code 255.)"""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    async def stop(self, grace: float | None = None) -> int:
        """SIGTERM, then SIGKILL if it has not exited `grace` seconds later; its exit code."""
        if self.process.returncode is None:
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), self.grace if grace is None else grace)
            except TimeoutError:
                self.killed = True
                self.signal(signal.SIGKILL)
        return await self.process.wait()

    async def close(self) -> int:
        """Stops it (if it still runs) and reads its stderr to the end."""
        returncode = await self.stop()
        if self.drain is not None:
            await self.drain
        return returncode

    async def __aenter__(self) -> MeshProcess:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def launch(
    argv: Sequence[str],
    *,
    name: str,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    cwd: Path = ROOT,
    stderr: Stderr = "capture",
    die_with_parent: bool = True,
    new_session: bool = False,
    start_timeout: float = 60.0,
    grace: float = 10.0,
) -> MeshProcess:
    """Starts `argv` in `cwd` with `env` (over this process's environment, unless not
    `inherit_env`) and returns once it prints its JSON listen line; lines before it
    that are not one are passed over. With `die_with_parent` (and setpriv installed) the
    kernel kills it if this process dies; with `new_session` it leads a process group
    of its own. Raises StartError, the process killed, if it exits or `start_timeout`
    passes first. `grace` is the stop's on leaving it as a context manager."""
    log = stderr if isinstance(stderr, Path) else None
    with contextlib.ExitStack() as files:
        process = await asyncio.create_subprocess_exec(
            *(DIE_WITH_PARENT if die_with_parent else []),
            *argv,
            cwd=cwd,
            env={**os.environ, **(env or {})} if inherit_env else dict(env or {}),
            stdout=asyncio.subprocess.PIPE,
            stderr=(
                files.enter_context(log.open("wb"))
                if log is not None
                else (asyncio.subprocess.PIPE if stderr == "capture" else None)
            ),
            start_new_session=new_session,
        )
    assert process.stdout is not None
    started = MeshProcess(name, process, {}, grace=grace)
    if process.stderr is not None:
        started.drain = asyncio.create_task(_drain(process.stderr, started.stderr_lines))
    passed_over: list[str] = []
    try:
        found = await asyncio.wait_for(_listen_line(process.stdout, passed_over), start_timeout)
        why = "exited before listening"
    except TimeoutError:
        found, why = None, f"printed no listen line within {start_timeout:g} s"
    if found is not None:
        started.listening = found
        return started
    # Failed: kill what is left of it, and say what it said.
    if new_session:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    started.signal(signal.SIGKILL)
    await started.close()
    said = [*passed_over, *started.stderr_lines]
    if log is not None:
        said += log.read_text(errors="replace").splitlines()
    elif stderr == "inherit":
        said.append("(its stderr is above)")
    details = "\n".join(said[-TAIL:]) or "(it said nothing)"
    raise StartError(f"{name} {why}:\n{details}")


async def _listen_line(
    stdout: asyncio.StreamReader, passed_over: list[str]
) -> dict[str, Any] | None:
    """The first line of `stdout` that is a JSON object with "listening"; None at its end."""
    async for raw in stdout:
        text = raw.decode(errors="replace").rstrip("\n")
        try:
            line = json.loads(text)
        except ValueError:
            line = None
        if isinstance(line, dict) and "listening" in line:
            return line
        passed_over.append(text)
    return None


async def _drain(stream: asyncio.StreamReader, into: list[str]) -> None:
    async for line in stream:
        into.append(line.decode(errors="replace").rstrip("\n"))
