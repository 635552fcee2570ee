"""Wall-clock seconds per named stage of a run (``metrics.json``'s ``timing_s``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StageTimer:
    """Seconds per stage, in the order the stages first finished, from one clock started
    with the timer; a stage timed twice adds up."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name``."""
        step = time.perf_counter()
        yield
        self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - step

    def seconds(self) -> dict[str, float]:
        """Each stage's seconds so far, then ``total``: the seconds since the timer began."""
        return {**self._seconds, "total": time.perf_counter() - self._start}
