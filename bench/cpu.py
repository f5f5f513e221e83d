"""How busy the machine was while a part of the benchmark ran, and how much of that was
the benchmark's own work.

The machine has 2 cores and is shared: other work running at the same time skews
every figure, and a quiet start is no promise of a quiet run. A section whose "other
work" share is above DISTURBED should be measured again. Linux only (/proc);
elsewhere nothing is said.

The benchmark's work is this process and its descendants (reaped ones through
RUSAGE_CHILDREN), plus processes whose command line holds a marker: PostgreSQL's
backends name their database there, and they work for the benchmark though they are
the server's children. A pool closes the connections it opened beyond its size, so
backends come and go: they are polled every second and counted up to their last poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Other work taking more than this share of the machine skews the figures.
DISTURBED = 0.05
POLL = 1.0


def _machine_busy() -> float:
    """CPU seconds the machine spent busy since boot, all cores."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / TICK


def _stat(pid: int) -> tuple[int, float] | None:
    """A process's parent and CPU seconds (None: gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def descendants_cpu() -> float:
    """CPU seconds of this process's descendants still running (the mesh's processes,
    between two load runs: a load tool that has exited is not among them)."""
    return sum(descendants_cpu_by_name().values())


def descendants_cpu_by_name() -> dict[str, float]:
    """`descendants_cpu()` by process name: the module a process runs (`order` for
    `python -m services.order`, `gateway`), replicas of one summed."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for pid in _pids():
        if (found := _stat(pid)) is not None:
            parents[pid], cpu[pid] = found
    mine: set[int] = set()
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - mine
        mine |= frontier
    by_name: dict[str, float] = {}
    for pid in mine:
        name = _name(pid)
        by_name[name] = by_name.get(name, 0.0) + cpu[pid]
    return by_name


def _name(pid: int) -> str:
    """What a process runs: the last part of its `-m` module, else its program's name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].rsplit(".", 1)[-1]
    return Path(argv[0]).name or "?"


class Watch:
    """`start()` ... `await stop()`: the machine's busy time between the two, and the
    benchmark's share of it, as a sentence for a section's notes."""

    def __init__(self, markers: tuple[str, ...] = ()) -> None:
        self._markers = markers
        self._classified: dict[int, bool] = {}  # pid -> holds a marker
        self._marked_start: dict[int, float] = {}  # CPU of marked processes at start
        self._marked_last: dict[int, float] = {}  # and at their last poll
        self._poller: asyncio.Task[None] | None = None
        self._start: tuple[float, float, float, float] | None = None

    def _marked(self, pid: int) -> bool:
        if pid in self._classified:
            return self._classified[pid]
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        marked = any(marker in command for marker in self._markers)
        # A new backend names its database only once it has one: look at it again.
        if marked or "postgres" not in command:
            self._classified[pid] = marked
        return marked

    def _poll_marked(self) -> None:
        if not self._markers:
            return
        for pid in _pids():
            if self._marked(pid) and (found := _stat(pid)) is not None:
                self._marked_last[pid] = found[1]

    def _own(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime

    def _sample(self) -> tuple[float, float, float, float]:
        return _machine_busy(), self._own(), descendants_cpu(), time.monotonic()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            self._poll_marked()

    def start(self) -> None:
        try:
            self._start = self._sample()
            self._poll_marked()
        except (OSError, ValueError, IndexError):
            self._start = None
            return
        self._marked_start = dict(self._marked_last)
        self._poller = asyncio.create_task(self._poll())

    async def stop(self) -> str | None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._start is None:
            return None
        try:
            self._poll_marked()
            busy, own, live, now = self._sample()
        except (OSError, ValueError, IndexError):
            return None
        busy_before, own_before, live_before, then = self._start
        marked = sum(
            cpu - self._marked_start.get(pid, 0.0) for pid, cpu in self._marked_last.items()
        )
        ours = own - own_before + live - live_before + marked
        return describe(now - then, busy - busy_before, ours)


def describe(wall: float, busy: float, ours: float) -> str:
    cores = os.cpu_count() or 1
    others = max(0.0, busy - ours)
    share = others / (wall * cores)
    return (
        f"CPU while this ran ({wall:.0f} s, {cores} cores): {busy / (wall * cores):.0%} busy; "
        f"the benchmark's processes (and the database's and broker's work) used {ours:.0f} "
        f"CPU s, other work (and kernel time charged to no process) {others:.0f} CPU s, "
        f"{share:.0%} of the machine."
        + (
            " **Disturbed by other work: measure again on a quiet machine.**"
            if share > DISTURBED
            else ""
        )
    )
