"""Explain a run folder's test photos: maps, suspect cells, faithfulness, then one summary.

Per photo, every method's results go into ``RUN/explain/maps/<photo>.npz`` (written
atomically; a rerun skips what is there with the same settings, so a long job resumes)
and one overlay PNG into ``RUN/explain/overlays/``. :func:`summarise` pools the photos
into ``RUN/localization.json``.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from explain.attributions import (
    AttributionSettings,
    PhotoInput,
    TileAttribution,
    attribute_tiles,
    list_methods,
    photo_input,
)
from explain.detect import (
    Detections,
    Nuclei,
    detect_cells,
    find_nuclei,
    instance_detections,
    tile_map_detections,
)
from explain.faithfulness import faithfulness
from explain.froc import froc_sensitivity
from explain.maps import downsample, pixel_heatmap, save_overlay, tile_heatmap
from mil_cyto.checkpoint import load_model
from mil_cyto.data.images import load_rgb
from mil_cyto.data.instances import instance_centres
from mil_cyto.data.manifest import ManifestRow, read_manifest
from mil_cyto.data.tiling import TilingConfig, extract_tiles
from mil_cyto.devices import resolve_device
from mil_cyto.errors import MilCytoError
from mil_cyto.io import atomic_path, write_json
from mil_cyto.labels import GRADES
from mil_cyto.localization import grid_localization, read_cell_boxes
from mil_cyto.models.mil_model import MILModel

TARGET_RULES = ("abnormal", "pred", "label")
DETECTOR = "peaks-to-LoG-nuclei/6"  # bump when detection changes: stored results are redone
FAITH_KEYS = ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc")


@dataclass
class ExplainConfig:
    """``target``: the class explained per photo: ``abnormal`` the abnormal grade the model
    finds likelier (label-free, one rule for every photo, so detections pool across
    photos), ``pred`` the predicted grade, ``label`` the true grade. ``map_scale``: stored
    maps are block means over this many pixels."""

    methods: tuple[str, ...] = tuple(list_methods())
    max_images: int | None = None
    target: str = "abnormal"
    norm: str = "rank"
    map_scale: int = 4
    max_detections: int = 30
    overlays: bool = True
    settings: AttributionSettings = field(default_factory=AttributionSettings)

    def fingerprint(self, tiling: TilingConfig) -> str:
        """What a stored result depends on: these settings and the run's ``tiling`` (which
        instances are explained); methods excluded, each is stored on its own."""
        keys = {"target": self.target, "map_scale": self.map_scale, "detector": DETECTOR}
        keys["max_detections"] = self.max_detections
        keys["tiling"] = asdict(tiling)
        return json.dumps({**keys, "settings": asdict(self.settings)}, sort_keys=True)


@dataclass
class RunInputs:
    """What a run folder provides: the model, the test photos, tiling, cell boxes."""

    run_dir: Path
    model: MILModel
    rows: list[ManifestRow]
    tiling: TilingConfig
    boxes: dict[str, np.ndarray] | None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise MilCytoError(f"{path} not found; is {path.parent} a finished training run?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MilCytoError(f"{path} is not valid JSON ({err}); retrain or restore it") from None


def load_run(run_dir: Path, device: torch.device | str = "cpu") -> RunInputs:
    """The trained model, the test photos (in ``splits.json`` order) and the atypical cell
    boxes (``config.cells`` or ``DATA/cells.csv``; None when there are none)."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json")
    test_ids = _read_json(run_dir / "splits.json").get("test", [])
    model, recipe = load_model(run_dir)
    model.to(device)
    data = Path(config.get("data_resolved") or config.get("data") or "")
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        raise MilCytoError(
            f"{run_dir / 'config.json'} points at data {data}, which has no manifest.csv; "
            "restore the data folder or fix data_resolved"
        )
    rows = read_manifest(manifest, label_column=config.get("label_column"))
    by_id = {r.image_id: r for r in rows}
    missing = [i for i in test_ids if i not in by_id]
    if missing:
        raise MilCytoError(f"test photos {missing[:3]} of splits.json are not in {manifest}")
    tiling_keys = {**config, **(recipe.get("tiling") or {})}
    try:
        tiling = TilingConfig(
            int(tiling_keys["tile_size"]),
            int(tiling_keys["stride"]),
            float(tiling_keys.get("min_tissue", TilingConfig.min_tissue)),
            str(tiling_keys.get("instances", "grid")),  # runs before --instances: grid
        )
    except (KeyError, TypeError, ValueError) as err:
        raise MilCytoError(
            f"{run_dir}: no usable tiling ({err}) in model.json or config.json; "
            "use the files the training run wrote"
        ) from None
    cells = Path(config["cells"]) if config.get("cells") else data / "cells.csv"
    boxes = read_cell_boxes(cells) if cells.is_file() else None
    return RunInputs(run_dir, model, [by_id[i] for i in test_ids], tiling, boxes)


def choose_target(probs: np.ndarray, label: int, rule: str) -> int:
    """The class to explain for one photo (see :class:`ExplainConfig`)."""
    if rule == "abnormal":
        return 1 + int(np.argmax(probs[1:]))
    if rule == "pred":
        return int(np.argmax(probs))
    if rule == "label":
        return int(label)
    raise MilCytoError(f"target rule {rule!r}: use one of {', '.join(TARGET_RULES)}")


def safe_name(image_id: str) -> str:
    """A file name for a photo id (path separators and odd characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or "photo"


def _stored(path: Path, fingerprint: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return {}  # a damaged file is recomputed
    return stored if str(stored.get("fingerprint", "")) == fingerprint else {}


@dataclass
class _Photo:
    """One test photo cut as the run was: ``photo`` ``(H, W, 3)`` uint8, instance
    ``centres`` ``(N, 2)`` and ``coords`` ``(N, 4)``, the model's ``prepared`` input; its
    nuclei are found on first need (``nuclei_cpu``: the detector's CPU seconds)."""

    photo: np.ndarray
    centres: np.ndarray
    coords: np.ndarray
    prepared: PhotoInput
    nuclei: Nuclei | None = None
    nuclei_cpu: float = 0.0

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        height, width = self.photo.shape[:2]
        return height, width

    def found_nuclei(self) -> Nuclei:
        """The photo's nuclei, detected once (on the first call)."""
        if self.nuclei is None:
            clock = time.process_time()
            self.nuclei = find_nuclei(self.photo)
            self.nuclei_cpu = time.process_time() - clock
        return self.nuclei


def _class_probs(model: MILModel, prepared: PhotoInput) -> np.ndarray:
    """The model's class probabilities ``(C,)`` for one photo."""
    with torch.no_grad():
        probs = torch.softmax(model.aggregator(prepared.features[None]).logits[0], 0)
    return probs.cpu().numpy()


def _heat_and_detections(
    attr: TileAttribution, photo: _Photo, tiling: TilingConfig, max_detections: int
) -> tuple[np.ndarray, Detections]:
    """A method's ``(H, W)`` heat map and its suspect-cell detections: nucleus crops at their
    nuclei, pixel maps' peaks moved to nuclei, tile maps' tiles ranked with nuclei tied."""
    size, coords, tile = photo.size, photo.coords, tiling.tile_size
    if attr.pixel is None and tiling.instances == "cells":  # each instance is a nucleus already
        heat = tile_heatmap(size, coords, attr.tile)
        dets = instance_detections(photo.centres, coords, attr.across_photos, max_detections)
        return heat, dets
    nuclei = photo.found_nuclei()
    if attr.pixel is not None:
        heat = pixel_heatmap(size, coords, attr.pixel)
        dets = detect_cells(heat, nuclei, sigma=4.0, radius=tile / 3, max_detections=max_detections)
    else:  # constant per tile: peaks at tile centres, nuclei tie within a tile
        heat = tile_heatmap(size, coords, attr.tile)
        ranked = heat if attr.pooled is None else tile_heatmap(size, coords, attr.pooled)
        dets = tile_map_detections(ranked, nuclei, tile, max_detections)
    return heat, dets


def _explain_method(
    inputs: RunInputs,
    image_id: str,
    photo: _Photo,
    method: str,
    target: int,
    config: ExplainConfig,
) -> tuple[dict[str, np.ndarray], np.ndarray, Detections]:
    """One method on one photo: its stored arrays (``<method>.tile``, ``.pooled``, ``.map``,
    ``.detections``, ``.cpu_s``, ``.faithfulness``), heat map and detections."""
    clock = time.process_time()
    with _seeded(f"{image_id}/{method}"):
        attr = attribute_tiles(inputs.model, photo.prepared, method, target, config.settings)
    cpu = time.process_time() - clock
    heat, dets = _heat_and_detections(attr, photo, inputs.tiling, config.max_detections)
    faith = faithfulness(inputs.model, photo.prepared.features, attr.tile, target)
    arrays = {f"{method}.tile": attr.tile}
    if attr.pooled is not None:
        arrays[f"{method}.pooled"] = attr.pooled
    arrays[f"{method}.map"] = downsample(heat, config.map_scale)
    arrays[f"{method}.detections"] = dets.to_array()
    arrays[f"{method}.cpu_s"] = np.array(cpu)
    arrays[f"{method}.faithfulness"] = np.array([faith[k] for k in FAITH_KEYS])
    return arrays, heat, dets


def _overlay_title(row: ManifestRow, probs: np.ndarray, target: int) -> str:
    """The overlay's title: photo, true grade, class probabilities, explained grade."""
    return (
        f"{row.image_id}: true {GRADES[row.label]}, "
        + ", ".join(f"p {g} {p:.2f}" for g, p in zip(GRADES, probs, strict=True))
        + f"; explaining {GRADES[target]}"
    )


def explain_photo(inputs: RunInputs, row: ManifestRow, config: ExplainConfig) -> dict[str, Any]:
    """Every requested method on one photo; reuses and extends its stored results."""
    out_dir = inputs.run_dir / "explain"
    npz = out_dir / "maps" / f"{safe_name(row.image_id)}.npz"
    result = _stored(npz, config.fingerprint(inputs.tiling))
    todo = [m for m in config.methods if f"{m}.tile" not in result]
    overlay = out_dir / "overlays" / f"{safe_name(row.image_id)}.png"
    if not todo and (overlay.is_file() or not config.overlays):
        return result
    image = load_rgb(row.image, hint=f"test photo {row.image_id!r}")
    centres, coords = instance_centres(image, inputs.tiling, name=str(row.image))
    prepared = photo_input(inputs.model, extract_tiles(image, coords))
    photo = _Photo(image, centres, coords, prepared)
    probs_np = _class_probs(inputs.model, prepared)
    target = choose_target(probs_np, row.label, config.target)
    result.update(
        fingerprint=np.array(config.fingerprint(inputs.tiling)),
        image=np.array(row.image_id),
        label=np.array(row.label),
        target=np.array(target),
        probs=probs_np.astype(np.float32),
        coords=coords.astype(np.int32),
        size_hw=np.array(photo.size),
    )
    panels = []
    for method in config.methods:
        arrays, heat, dets = _explain_method(inputs, row.image_id, photo, method, target, config)
        result.update(arrays)
        panels.append((method, heat, dets.boxes[:5]))
    result["nuclei_cpu_s"] = np.array(photo.nuclei_cpu)
    _save_npz(npz, result)
    if config.overlays:
        truth = (inputs.boxes or {}).get(row.image_id)
        title = _overlay_title(row, probs_np, target)
        save_overlay(overlay, image, panels, truth, title=title, how=config.norm)
    return result


def _save_npz(path: Path, arrays: dict[str, Any]) -> None:
    """``np.savez_compressed`` written atomically (through an open handle, so no ``.npz``
    suffix is appended to the temporary name)."""
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez_compressed(handle, **arrays)


@contextlib.contextmanager
def _seeded(key: str) -> Iterator[None]:
    """Torch's and NumPy's global random streams seeded from ``key`` inside the block and
    restored after it: GradientShap (Captum) draws its references and points from both, so a
    photo's attribution is the same in every run, whatever was explained before it."""
    seed = zlib.crc32(key.encode())
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


def _mean(values: Sequence[float] | np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _size_hw(value: Sequence[int]) -> tuple[int, int]:
    height, width = value
    return int(height), int(width)


def summarise(
    results: Sequence[dict[str, Any]],
    boxes: dict[str, np.ndarray] | None,
    methods: Sequence[str],
    tile: int,
) -> dict[str, Any]:
    """One entry per method: localization (instance AUROC and pointing game on the photos'
    ``tile``-px grid, and on the instances under ``per_instance``; FROC), deletion /
    insertion AUCs against random orders (abnormal photos), CPU seconds per photo."""
    images = [str(r["image"]) for r in results]
    abnormal = [str(r["image"]) for r in results if int(r["label"]) > 0]
    coords = {str(r["image"]): r["coords"] for r in results}
    sizes = {str(r["image"]): _size_hw(r["size_hw"]) for r in results}
    out: dict[str, Any] = {}
    for m in methods:
        entry: dict[str, Any] = {}
        scores = {str(r["image"]): r[f"{m}.tile"] for r in results}
        if boxes is not None:
            loc = grid_localization(coords, scores, sizes, boxes, abnormal, tile)
            for key in ("instance_auroc", "pointing_game", "per_instance"):
                entry[key] = loc[key]
            dets = {str(r["image"]): Detections.from_array(r[f"{m}.detections"]) for r in results}
            entry["froc"] = froc_sensitivity(dets, boxes, images)
        else:
            entry.update(instance_auroc=None, pointing_game=None, per_instance=None, froc=None)
        faith = np.array([r[f"{m}.faithfulness"] for r in results if int(r["label"]) > 0])
        for i, key in enumerate(FAITH_KEYS):
            entry[key] = _mean(faith[:, i]) if len(faith) else None
        entry["cpu_seconds_per_photo"] = _mean([float(r[f"{m}.cpu_s"]) for r in results])
        out[m] = entry
    return out


def explain_run(
    run_dir: Path, config: ExplainConfig, *, device: str = "cpu", progress: bool = True
) -> dict[str, Any]:
    """Explain the run's test photos and write ``RUN/localization.json``; returns it."""
    unknown = sorted(set(config.methods) - set(list_methods()))
    if unknown:
        raise MilCytoError(f"unknown methods {unknown}; available: {', '.join(list_methods())}")
    if config.target not in TARGET_RULES:
        raise MilCytoError(f"--target {config.target!r}: use one of {', '.join(TARGET_RULES)}")
    inputs = load_run(run_dir, resolve_device(device))
    rows = inputs.rows[: config.max_images] if config.max_images else inputs.rows
    if not rows:
        raise MilCytoError(f"{Path(run_dir) / 'splits.json'} lists no test photos to explain")
    results = [
        explain_photo(inputs, row, config)
        for row in tqdm(rows, desc="explaining", unit="photo", disable=not progress)
    ]
    summary = {
        "run": str(run_dir),
        "n_photos": len(results),
        "n_abnormal_photos": sum(int(r["label"]) > 0 for r in results),
        "target": config.target,
        "cell_annotations": inputs.boxes is not None,
        "nucleus_detector_cpu_seconds_per_photo": _mean(
            [float(r["nuclei_cpu_s"]) for r in results]
        ),
        "settings": asdict(config.settings),
        "conventions": {
            "instance_auroc": "on each photo's grid of tile-size tiles, every grid tile scored "
            "by the mean of the method's tile-score map over it (overlapping instances "
            "painted, their mean where they overlap); per_instance: on the instances",
            "froc": "sensitivity for atypical cells at N false positives per photo; a hit is a "
            "detection point inside an annotated atypical cell box (CAMELYON16)",
            "detections": "nucleus-crop runs, tile-level scores: every crop at its nucleus; "
            "otherwise peaks of the smoothed map moved to LoG nuclei; attention's detections "
            "are ranked by its logits (before the softmax within each photo, which makes "
            "the weights shares of their photo), comparable across photos",
            "faithfulness": "AUC of the target probability vs fraction of tiles deleted / "
            "inserted in the map's order, mean over abnormal photos; random = mean of "
            "5 seeds",
            "cpu_seconds_per_photo": "process CPU time of the method alone (all threads)",
        },
        "methods": summarise(results, inputs.boxes, config.methods, inputs.tiling.tile_size),
    }
    write_json(Path(run_dir) / "localization.json", summary)
    return summary
