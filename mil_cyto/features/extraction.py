"""Fast, memory-bounded tile embedding: photos -> per-photo ``(N, D)`` float32 features.

The pipeline keeps the cores busy and the memory flat:

- a background thread decodes photos (a small thread pool, or
  :class:`~mil_cyto.features.decoding.DecodingProcesses` where decoding is the bottleneck, as
  on a GPU; a few photos ahead: :mod:`mil_cyto.features.decoding`), finds their instances
  and cuts them straight into fixed-size batches that span photos, so a photo of ten tiles
  and one of twenty thousand both feed full batches;
- tiles are cut as ``(B, T, T, 3)``, which viewed as ``(B, 3, T, T)`` is already channels-last
  (no transposing copy before the convolutions);
- the main thread runs the frozen encoder under ``torch.inference_mode``, optionally compiled
  by ``torch.compile`` (Inductor, weights frozen as constants on CPU) with a clean fallback
  to eager mode, and optionally under fp16 autocast on CUDA (the default there) or bf16
  autocast on a CPU with native bf16 (opt-in);
- only the photo's features accumulate; tiles exist a few batches at a time.
"""

from __future__ import annotations

import shutil
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mil_cyto.data.instances import PhotoPlan, load_photo
from mil_cyto.data.manifest import ManifestRow
from mil_cyto.data.tiling import TilingConfig
from mil_cyto.devices import autocast_to, extraction_dtype
from mil_cyto.encoders.base import TileEncoder
from mil_cyto.errors import MilCytoError
from mil_cyto.features.decoding import DecodingProcesses, prefetch_photos, run_in_background

COMPILE_CHOICES = ("auto", "on", "off")


@dataclass
class TileBatch:
    """``tiles`` ``(B, 3, T, T)`` uint8 (channels-last strides); its first ``n_real`` rows are
    real tiles, the rest padding. ``segments``: ``(photo_index, start, stop)`` per photo run,
    in batch order, indexing that photo's ``coords``."""

    tiles: torch.Tensor
    n_real: int
    segments: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class PhotoFeatures:
    """One finished photo: its instance boxes ``coords`` ``(N, 4)`` and ``size`` ``(H, W)`` in
    its own pixels (:attr:`PhotoPlan.native_coords`) and ``features`` ``(N, D)`` float32."""

    row: ManifestRow
    coords: np.ndarray
    size: tuple[int, int]
    features: np.ndarray


def batch_tiles(
    plans: Iterable[PhotoPlan],
    batch_size: int,
    *,
    pad: bool = False,
    on_plan: Callable[[int, PhotoPlan], None] | None = None,
) -> Iterator[TileBatch]:
    """Cut the photos' tiles into batches of ``batch_size`` that span photos.

    ``pad`` fills the last batch with zero tiles so every batch has one shape (a compiled
    forward then never recompiles). ``on_plan(index, plan)`` is called as each photo starts.
    If reading a photo fails, the batch in progress is emitted first, then the error raised,
    so every photo before the bad one is still embedded.
    """
    if batch_size < 1:
        raise MilCytoError(f"batch size {batch_size} must be >= 1")
    buf: np.ndarray | None = None
    segments: list[tuple[int, int, int]] = []
    filled = 0
    source = iter(enumerate(plans))
    while True:
        try:
            item = next(source, None)
        except Exception:
            if filled and buf is not None:
                yield _tile_batch(buf, filled, segments, pad)
            raise
        if item is None:
            break
        index, plan = item
        if on_plan is not None:
            on_plan(index, plan)
        size = int(plan.coords[0, 2] - plan.coords[0, 0])
        start = 0
        while start < len(plan.coords):
            if buf is None:
                buf = np.empty((batch_size, size, size, 3), dtype=np.uint8)
            take = min(batch_size - filled, len(plan.coords) - start)
            for k, (x0, y0, x1, y1) in enumerate(plan.coords[start : start + take]):
                buf[filled + k] = plan.image[y0:y1, x0:x1]
            segments.append((index, start, start + take))
            filled += take
            start += take
            if filled == batch_size:
                yield _tile_batch(buf, filled, segments, pad)
                buf, segments, filled = None, [], 0
    if filled and buf is not None:
        yield _tile_batch(buf, filled, segments, pad)


def _tile_batch(
    buf: np.ndarray, filled: int, segments: list[tuple[int, int, int]], pad: bool
) -> TileBatch:
    """The batch of ``buf``'s first ``filled`` tiles ``(B, T, T, 3)``, or of all of ``buf``
    with the rest zeroed when ``pad``; ``segments`` is copied."""
    n = filled if not pad else len(buf)
    if pad:
        buf[filled:] = 0
    tiles = torch.from_numpy(buf[:n]).permute(0, 3, 1, 2)  # NHWC memory = channels-last
    return TileBatch(tiles, filled, list(segments))


def compiler_available(device: torch.device) -> bool:
    """Whether Inductor can build kernels here: a C++ compiler on CPU, Triton on CUDA."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


class EncoderRunner:
    """The frozen encoder as a batch function: ``(B, 3, T, T)`` uint8 -> ``(B, D)`` float32 CPU.

    ``compile``: ``"off"`` eager; ``"on"`` torch.compile or a MilCytoError; ``"auto"``
    torch.compile when a compiler is available, eager (with a warning) if compiling fails.
    ``amp`` (default on CUDA, off on CPU): fp16 autocast on CUDA, bf16 autocast on a CPU with
    native bf16 (:func:`~mil_cyto.devices.extraction_dtype`); ``dtype`` holds which (None =
    float32). In float32 the numbers match the plain eager encoder within float tolerance
    (compiling folds batch norm into the convolutions).
    The compiled graph serves the first batch shape it sees (the full batch); any other shape
    (the last, short batch) runs eager rather than paying a recompilation or padding.
    """

    def __init__(
        self,
        encoder: TileEncoder,
        device: torch.device | str = "cpu",
        *,
        compile: str | bool = "off",
        amp: bool | None = None,
    ) -> None:
        if isinstance(compile, bool):
            compile = "on" if compile else "off"
        if compile not in COMPILE_CHOICES:
            raise MilCytoError(f"--compile {compile!r}: use one of {', '.join(COMPILE_CHOICES)}")
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.out_dim = int(encoder.out_dim)
        self.amp = bool(amp if amp is not None else self.device.type == "cuda")
        self.dtype = extraction_dtype(self.device, self.amp)
        self.mode = compile
        self.compiled = False
        self._fn: Callable[[torch.Tensor], torch.Tensor] = self.encoder
        self._shape: tuple[int, ...] | None = None
        if compile == "on" or (compile == "auto" and compiler_available(self.device)):
            self._fn = self._compile()
            self.compiled = True

    def _compile(self) -> Callable[[torch.Tensor], torch.Tensor]:
        options: dict[str, str | int | bool | Callable[..., Any]] = (
            {"freezing": True} if self.device.type == "cpu" else {}
        )
        return torch.compile(self.encoder, dynamic=False, options=options)

    @torch.inference_mode()
    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        tiles = tiles.to(self.device, non_blocking=True)
        if self._shape is None:
            self._shape = tuple(tiles.shape)
        fn = self._fn if tuple(tiles.shape) == self._shape else self.encoder
        try:
            with autocast_to(self.device, self.dtype):
                out = fn(tiles)
        except Exception as err:
            if not self.compiled or self.mode == "on":
                if self.compiled:
                    raise MilCytoError(
                        f"torch.compile failed ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200]}); use --compile off"
                    ) from None
                raise
            warnings.warn(
                f"torch.compile failed ({type(err).__name__}); falling back to eager mode",
                RuntimeWarning,
                stacklevel=2,
            )
            self._fn, self.compiled = self.encoder, False
            with autocast_to(self.device, self.dtype):
                out = self._fn(tiles)
        return out.float().cpu()

    def warm_up(self, tile_size: int, batch_size: int) -> None:
        """Run one batch of zeros (compiles now, so timings and errors come early)."""
        zeros = torch.zeros(batch_size, tile_size, tile_size, 3, dtype=torch.uint8)
        self(zeros.permute(0, 3, 1, 2))


def embed_photos(
    rows: Sequence[ManifestRow],
    runner: EncoderRunner,
    tiling: TilingConfig,
    *,
    batch_size: int = 64,
    workers: int = 2,
    prefetch: int | None = None,
    loader: Callable[..., PhotoPlan] = load_photo,
    known: Mapping[str, np.ndarray] | None = None,
    decoder: DecodingProcesses | None = None,
) -> Iterator[PhotoFeatures]:
    """Embed every photo's instances; yields each photo, in row order, once it is complete.

    Photos are decoded on ``workers`` threads, or on ``decoder``'s processes when given.
    ``prefetch``: photos decoded ahead (default one more than the decoding threads or
    processes: every one busy while the batcher cuts a photo; a smaller depth would leave
    some idle, which on a GPU, where decoding is the bottleneck, costs throughput in
    proportion). ``known``: boxes already found per image id (see :func:`load_photo`).
    Memory: the photos decoded ahead, two batches of tiles in flight, and the features of the
    photos in progress; never a whole bag of tiles.
    """
    decoders = decoder.workers if decoder is not None else max(1, workers)
    depth = prefetch if prefetch is not None else decoders + 1
    plans: dict[int, PhotoPlan] = {}
    feats: dict[int, np.ndarray] = {}
    left: dict[int, int] = {}
    lock = threading.Lock()

    def register(index: int, plan: PhotoPlan) -> None:
        with lock:
            plans[index] = plan
            feats[index] = np.empty((len(plan.coords), runner.out_dim), dtype=np.float32)
            left[index] = len(plan.coords)

    photos = prefetch_photos(
        rows, tiling, workers=workers, depth=depth, loader=loader, known=known, pool=decoder
    )
    batches = batch_tiles(photos, batch_size, on_plan=register)
    for batch in run_in_background(batches):
        out = runner(batch.tiles)[: batch.n_real].numpy()
        offset = 0
        for index, start, stop in batch.segments:
            with lock:
                feats[index][start:stop] = out[offset : offset + stop - start]
                left[index] -= stop - start
                done = left[index] == 0
            offset += stop - start
            if done:
                with lock:
                    plan, features = plans.pop(index), feats.pop(index)
                    del left[index]
                yield PhotoFeatures(plan.row, plan.native_coords, plan.size, features)


def batch_instances(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], batch_size: int
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Re-cut a stream of instance chunks (``tiles`` ``(n, T, T, 3)`` uint8, ``coords``
    ``(n, 4)``; e.g. a whole-slide image's, :mod:`mil_cyto.slides.stream`) into batches of
    ``batch_size``: ``(B, 3, T, T)`` uint8 (channels-last strides) and their ``(B, 4)`` coords.
    """
    if batch_size < 1:
        raise MilCytoError(f"batch size {batch_size} must be >= 1")
    buf: np.ndarray | None = None
    boxes: np.ndarray | None = None
    filled = 0
    for tiles, coords in chunks:
        start = 0
        while start < len(tiles):
            if buf is None or boxes is None:
                buf = np.empty((batch_size, *tiles.shape[1:]), dtype=np.uint8)
                boxes = np.empty((batch_size, 4), dtype=np.int32)
            take = min(batch_size - filled, len(tiles) - start)
            buf[filled : filled + take] = tiles[start : start + take]
            boxes[filled : filled + take] = coords[start : start + take]
            filled += take
            start += take
            if filled == batch_size:
                yield torch.from_numpy(buf).permute(0, 3, 1, 2), boxes
                buf, boxes, filled = None, None, 0
    if filled and buf is not None and boxes is not None:
        yield torch.from_numpy(buf[:filled]).permute(0, 3, 1, 2), boxes[:filled]


def embed_instances(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    runner: EncoderRunner,
    *,
    batch_size: int = 64,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Embed a stream of instance chunks (a whole-slide image's): yields ``(features (B, D)
    float32, coords (B, 4) int32)`` per batch, in stream order. The chunks are read and cut
    on a background thread while the encoder runs here. Memory: the chunk being read, two
    batches of tiles in flight, one batch of features; never the whole bag."""

    for tiles, coords in run_in_background(batch_instances(chunks, batch_size)):
        yield runner(tiles).numpy(), coords
