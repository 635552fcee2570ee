"""A finished run folder, read for review: predictions, attention, photos and cell boxes.

The folder layout is the run-folder contract of the README (``metrics.json``,
``predictions.csv``, ``attention.h5``, ``config.json`` with ``data_resolved`` ...).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES

REQUIRED = ("metrics.json", "predictions.csv", "attention.h5", "config.json")
"""Files without which a folder is not a finished run for the viewer."""


@dataclass(frozen=True)
class TileMap:
    """One photo's tiles: ``coords`` ``(N, 4)`` int ``x0, y0, x1, y1`` pixels, ``attention``
    ``(N,)`` softmax weights, ``scores`` ``(N,)`` attention logits, ``size_hw`` of the photo."""

    coords: np.ndarray
    attention: np.ndarray
    scores: np.ndarray
    size_hw: tuple[int, int]


def is_run(path: Path) -> bool:
    """True when ``path`` holds every file the viewer needs."""
    return all((Path(path) / name).is_file() for name in REQUIRED)


def find_runs(root: Path, max_depth: int = 3) -> list[Path]:
    """Run folders at or below ``root`` (at most ``max_depth`` levels down), as absolute paths
    sorted by path."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        return []
    found: list[Path] = []
    frontier = [root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for folder in frontier:
            if is_run(folder):
                found.append(folder)
                continue
            try:
                nxt += sorted(
                    p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                )
            except OSError:
                continue
        frontier = nxt
    return sorted(found)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MilCytoError(f"{path} not found; is {path.parent} a finished training run?") from None
    except json.JSONDecodeError as err:
        raise MilCytoError(f"{path} is not valid JSON ({err}); rerun the training") from None


@dataclass(frozen=True)
class Run:
    """A run folder opened for review (cheap: files are read on demand)."""

    path: Path

    @classmethod
    def open(cls, path: Path) -> Run:
        """Check that ``path`` is a finished run.

        Raises:
            MilCytoError: naming the missing file.
        """
        path = Path(path).expanduser().resolve()
        if not path.is_dir():
            raise MilCytoError(f"run folder {path} not found; pass --run RUN_FOLDER")
        missing = [name for name in REQUIRED if not (path / name).is_file()]
        if missing:
            raise MilCytoError(f"{path} lacks {', '.join(missing)}; is it a finished training run?")
        return cls(path)

    @property
    def name(self) -> str:
        return self.path.name

    def metrics(self) -> dict[str, Any]:
        return _read_json(self.path / "metrics.json")

    def config(self) -> dict[str, Any]:
        return _read_json(self.path / "config.json")

    def data_dir(self) -> Path | None:
        """The data folder the run was trained on (``config.json``'s ``data_resolved``)."""
        config = self.config()
        value = config.get("data_resolved") or config.get("data")
        return Path(value) if value else None

    def predictions(self) -> list[dict[str, Any]]:
        """``predictions.csv`` rows: image, patient_id, label, pred and ``p_<grade>`` floats."""
        path = self.path / "predictions.csv"
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"image", "label", "pred", *(f"p_{g}" for g in GRADES)} - set(
                reader.fieldnames or []
            )
            if missing:
                raise MilCytoError(f"{path}: missing columns {sorted(missing)}")
            rows = []
            for row in reader:
                for g in GRADES:
                    row[f"p_{g}"] = float(row[f"p_{g}"])
                rows.append(row)
        return rows

    def tile_maps(self) -> dict[str, TileMap]:
        """Every test photo's tiles and attention from ``attention.h5``, keyed by image id."""
        maps: dict[str, TileMap] = {}
        path = self.path / "attention.h5"
        try:
            with h5py.File(path, "r") as handle:
                for key in handle:
                    group = handle[key]
                    height, width = group.attrs["size_hw"]
                    maps[str(group.attrs["image"])] = TileMap(
                        coords=group["coords"][()].astype(np.int64),
                        attention=group["attention"][()].astype(np.float64),
                        scores=group["scores"][()].astype(np.float64),
                        size_hw=(int(height), int(width)),
                    )
        except (OSError, KeyError) as err:
            raise MilCytoError(
                f"{path} is unreadable or incomplete ({err}); rerun the training"
            ) from None
        return maps

    def photo_path(self, image_id: str) -> Path:
        """Where a test photo lies (its id is relative to the data folder)."""
        data = self.data_dir()
        if data is None:
            raise MilCytoError(f"{self.path / 'config.json'} names no data folder")
        return data / image_id

    def cells_path(self) -> Path | None:
        """The cell annotations CSV: ``config.json``'s ``cells``, else ``DATA/cells.csv``."""
        config = self.config()
        if config.get("cells"):
            path = Path(config["cells"])
        else:
            data = self.data_dir()
            if data is None:
                return None
            path = data / "cells.csv"
        return path if path.is_file() else None

    def comparison_path(self) -> Path | None:
        """A comparison table: ``RUN/comparison.csv``, else ``RUN/../comparison.csv``."""
        for path in (self.path / "comparison.csv", self.path.parent / "comparison.csv"):
            if path.is_file():
                return path
        return None
