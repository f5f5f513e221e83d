"""How busy the machine was while a part of the benchmark ran, and how much of that
was the benchmark's own processes.

The machine has 2 cores and is shared: other work running at the same time skews
every figure, and a quiet start is no promise of a quiet run. A section whose
"other work" share is more than a few percent should be measured again. Linux only
(/proc); elsewhere nothing is said.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# Other work taking more than this share of the machine skews the figures.
DISTURBED = 0.05


@dataclass(frozen=True)
class Sample:
    busy: float  # CPU seconds the machine spent busy since boot, all cores
    ours: float  # CPU seconds of this process and every descendant, reaped or alive
    wall: float


def _machine_busy() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / TICK


def _live(markers: tuple[str, ...]) -> float:
    """CPU seconds of the descendants still running (reaped ones are in RUSAGE_CHILDREN),
    and of the processes whose command line holds one of `markers` (PostgreSQL's
    backends name their database there: they work for the benchmark but are the
    server's children, not ours)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    marked: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().decode(errors="replace") if markers else ""
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / TICK
        if any(marker in command for marker in markers):
            marked.add(pid)
    mine: set[int] = set()
    frontier = {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - mine
        mine |= frontier
    return sum(cpu[pid] for pid in mine | marked)


def sample(markers: tuple[str, ...] = ()) -> Sample | None:
    """The machine's busy time and the benchmark's CPU so far; processes matching
    `markers` must be alive at both samples to be counted right."""
    try:
        busy = _machine_busy()
        live = _live(markers)
    except (OSError, ValueError, IndexError):
        return None
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime + live
    return Sample(busy, ours, time.monotonic())


def other_work(before: Sample | None, after: Sample | None) -> str | None:
    """A sentence on the machine's CPU between two samples. The processes counted as the
    benchmark's must have started after `before` or still run at `after`."""
    if before is None or after is None:
        return None
    cores = os.cpu_count() or 1
    wall = after.wall - before.wall
    busy, ours = after.busy - before.busy, after.ours - before.ours
    others = max(0.0, busy - ours)
    disturbed = others / (wall * cores) > DISTURBED
    return (
        f"CPU while this ran ({wall:.0f} s, {cores} cores): {busy / (wall * cores):.0%} busy; "
        f"the benchmark's processes (and database backends) used {ours:.0f} CPU s, other "
        "work (and kernel time "
        f"charged to no process) {others:.0f} CPU s, {others / (wall * cores):.0%} of the machine."
        + (" **Disturbed by other work: measure again on a quiet machine.**" if disturbed else "")
    )
