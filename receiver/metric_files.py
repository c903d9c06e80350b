"""The Prometheus multiprocess directory: a file per process and metric type, compacted as processes exit.

prometheus_client keeps each process's counters and histograms in files named
`<type>_<pid>.db`, and a scrape adds up every file. RQ forks a work horse per job
and gunicorn recycles its workers, so the files of exited processes pile up
(thousands a day) and every scrape would read them all. A scrape that finds more
than COMPACT_AFTER of them first merges them into one archive per type
(`<type>_archive.db`, totals unchanged) and deletes them. The merge holds an
exclusive lock on the directory and scrapes read under a shared one, so no scrape
counts a file twice or loses one that vanished while it read.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.mmap_dict import mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

COMPACT_AFTER = 64
"""Files of exited processes a scrape tolerates before it merges them."""

TYPES = ("counter", "histogram")
"""The file types the service writes (it has no multiprocess gauges)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def exited_files(directory: Path) -> list[Path]:
    """The files of processes of this host that have exited (the archives excluded)."""
    found = []
    for kind in TYPES:
        for path in directory.glob(f"{kind}_*.db"):
            pid = path.stem.removeprefix(f"{kind}_")
            if pid.isdigit() and not _alive(int(pid)):
                found.append(path)
    return found


@contextmanager
def _locked(directory: Path, exclusive: bool) -> Iterator[None]:
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield  # closing the file releases the lock


def compact(directory: Path) -> int:
    """Merge the files of exited processes into the archives and delete them; returns how many."""
    with _locked(directory, exclusive=True):
        exited = exited_files(directory)
        for kind in TYPES:
            files = [path for path in exited if path.name.startswith(f"{kind}_")]
            if not files:
                continue
            archive = directory / f"{kind}_archive.db"
            staging = directory / f"{kind}_archive.new"  # not *.db: scrapes ignore it
            staging.unlink(missing_ok=True)
            sources = [str(path) for path in ([archive] if archive.exists() else []) + files]
            merged = MmapedDict(str(staging))
            try:
                for metric in MultiProcessCollector.merge(sources, accumulate=False):
                    _write(merged, metric)
            finally:
                merged.close()
            os.replace(staging, archive)
            for path in files:
                path.unlink()
        return len(exited)


def _write(into: MmapedDict, metric: Metric) -> None:
    for sample in metric.samples:
        key = mmap_key(metric.name, sample.name, list(sample.labels), list(sample.labels.values()),
                       metric.documentation)
        into.write_value(key, sample.value, 0.0)


def collect(directory: Path) -> list[Metric]:
    """Every counted metric of this host's processes, merging the exited ones' files first when they pile up."""
    if len(exited_files(directory)) > COMPACT_AFTER:
        compact(directory)
    with _locked(directory, exclusive=False):
        return list(MultiProcessCollector(None, path=str(directory)).collect())
