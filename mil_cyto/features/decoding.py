"""Background work for extraction: photos decoded ahead, iterators drained on a thread.

- :func:`prefetch_photos` decodes photos and finds their instances a few photos ahead, on a
  small thread pool or on :class:`DecodingProcesses` (where decoding is the bottleneck, as on
  a GPU);
- :func:`run_in_background` drains any iterator (the tile batcher) on a daemon thread into a
  short queue, so the CPU side cuts tiles while the encoder runs on the main thread.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import TypeVar, cast

import numpy as np

from mil_cyto.data.instances import PhotoPlan, load_photo
from mil_cyto.data.manifest import ManifestRow
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.errors import MilCytoError

Item = TypeVar("Item")


def prefetch_photos(
    rows: Sequence[ManifestRow],
    tiling: TilingConfig,
    *,
    workers: int = 2,
    depth: int = 3,
    loader: Callable[..., PhotoPlan] = load_photo,
    known: Mapping[str, np.ndarray] | None = None,
    pool: Executor | None = None,
) -> Iterator[PhotoPlan]:
    """Decode photos in row order, at most ``depth`` ahead: on ``workers`` threads, or on
    ``pool`` (an executor the caller owns, e.g. :class:`DecodingProcesses`; not shut down
    here). ``known``: boxes already found per image id; ``loader`` gets a photo's own as
    ``known=boxes`` (so a process pool is sent one photo's boxes, not the whole mapping)."""
    own = pool is None
    executor = ThreadPoolExecutor(max_workers=max(1, workers)) if pool is None else pool

    def submit(row: ManifestRow) -> Future[PhotoPlan]:
        if known is not None and row.image_id in known:
            return executor.submit(loader, row, tiling, known=known[row.image_id])
        return executor.submit(loader, row, tiling)

    pending: deque[Future[PhotoPlan]] = deque()
    try:
        remaining = iter(rows)
        for row in remaining:
            pending.append(submit(row))
            if len(pending) >= max(1, depth):
                break
        while pending:
            plan = pending.popleft().result()
            nxt = next(remaining, None)
            if nxt is not None:
                pending.append(submit(nxt))
            yield plan
    finally:
        for future in pending:  # an error or an early stop: drop what is queued
            future.cancel()
        if own:
            executor.shutdown(wait=True, cancel_futures=True)


class DecodingProcesses(ProcessPoolExecutor):
    """A pool of ``workers`` processes that decode photos and find their instances, for
    :func:`~mil_cyto.features.extraction.embed_photos` / ``extract_to_store(decoder=...)`` and
    :func:`~mil_cyto.data.bags.load_bags` in place of decoding threads.

    For GPU extraction, where the CPU side is the bottleneck and decoding threads stop
    scaling after a few (parts of PNG decoding and of the tissue / nucleus search hold the
    GIL). Start it once and reuse it across extractions (it is a context manager): starting
    processes costs seconds. Workers come from a fork server (``spawn`` where there is none)
    that imports the calling script and the decoding modules once, and never touches CUDA;
    a script that uses it needs an ``if __name__ == "__main__":`` guard, as with any process
    pool.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise MilCytoError(f"decoding processes: {workers} must be >= 1")
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        context = mp.get_context(method)
        if method == "forkserver":
            context.set_forkserver_preload(["__main__", "mil_cyto.data.bags"])
        super().__init__(max_workers=workers, mp_context=context)
        self.workers = workers


def run_in_background(items: Iterator[Item], depth: int = 2) -> Iterator[Item]:
    """Drain ``items`` on a daemon thread into a queue of ``depth``; errors re-raised here."""
    channel: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        channel.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            channel.put(("done", None))
        except BaseException as err:  # handed to the consumer, raised there
            channel.put(("error", err))

    thread = threading.Thread(target=produce, name="mil-cyto-tiles", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = channel.get()
            if kind == "done":
                return
            if kind == "error":
                assert isinstance(payload, BaseException)
                raise payload
            yield cast(Item, payload)
    finally:
        stop.set()
        thread.join(timeout=5.0)
