"""CPU seconds and peak resident memory of a block of code (Linux ``/proc``; no psutil)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def rss_mb() -> float:
    """This process's resident set size in MiB (0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def measure(interval_s: float = 0.05) -> Iterator[dict[str, float]]:
    """Yield a dict filled on exit with ``cpu_s`` (process CPU time, all threads), ``wall_s``,
    ``peak_rss_mb`` (sampled every ``interval_s``) and ``extra_rss_mb`` (peak minus the RSS
    at entry: what the block itself needed on top of what the process already held)."""
    result: dict[str, float] = {}
    start_rss = rss_mb()
    peak = [start_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    cpu, wall = time.process_time(), time.perf_counter()
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], rss_mb())
        result.update(
            cpu_s=time.process_time() - cpu,
            wall_s=time.perf_counter() - wall,
            peak_rss_mb=peak[0],
            extra_rss_mb=peak[0] - start_rss,
        )
