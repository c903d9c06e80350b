"""Readings of /proc: a process's children, liveness, memory and CPU time; killing a process tree.

Shared with the tests (tests/support.py imports them from here).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def children(pid: int) -> list[int]:
    """The live direct children of `pid`, from /proc (zombies left out): an RQ work horse, gunicorn's workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of `pid` (RQ's work horse leaves its parent's process group)."""
    found = children(pid)
    for child in list(found):
        found.extend(descendants(child))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything it forked, all at once."""
    for victim in [pid, *descendants(pid)]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def rss_kib(pid: int) -> int | None:
    """Resident memory of `pid` in KiB (VmRSS), or None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    """CPU time (user + system) of `pid`, with that of its children it has waited for; 0 once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: utime, stime, cutime, cstime are fields 14-17 of stat(5), here 11-14.
    ticks = [int(v) for v in fields[11:15]]
    return sum(ticks if with_children else ticks[:2]) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children; children already reaped count through the parent."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))
