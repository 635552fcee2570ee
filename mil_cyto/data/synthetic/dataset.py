"""The synthetic data set on disk: every photo drawn (optionally in worker processes) and
written with ``manifest.csv``, ``cells.csv`` and ``synth_config.json``; a folder that already
holds the same config is reused (cache hit)."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mil_cyto.data.synthetic.config import (
    CELL_COLUMNS,
    CELLS_FILE,
    CONFIG_FILE,
    IMAGES_DIR,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    SynthConfig,
)
from mil_cyto.data.synthetic.field import draw_field
from mil_cyto.data.synthetic.plan import PatientPlan, plan_patients
from mil_cyto.data.synthetic.png import write_png
from mil_cyto.data.synthetic.stain import Stain
from mil_cyto.errors import MilCytoError
from mil_cyto.io import atomic_dir, write_csv


@dataclass(frozen=True)
class _ImageTask:
    index: int
    rel_path: str
    out_path: str
    grade: str
    stain: Stain
    seed: int
    width: int
    height: int
    cells_per_field: tuple[int, int]
    atypical_per_field: tuple[int, int]
    um_per_px: float


def _image_name(index: int, n_images: int) -> str:
    digits = max(5, len(str(n_images - 1)))
    return f"{IMAGES_DIR}/img_{index:0{digits}d}.png"


def _make_image(task: _ImageTask) -> list[tuple[Any, ...]]:
    """Pool worker: draw one photo, write its PNG, return its ``cells.csv`` rows."""
    rng = np.random.default_rng(np.random.SeedSequence(task.seed, spawn_key=(1, task.index)))
    img, cells = draw_field(
        rng,
        task.width,
        task.height,
        task.grade,
        task.stain,
        cells_per_field=task.cells_per_field,
        atypical_per_field=task.atypical_per_field,
        um_per_px=task.um_per_px,
    )
    write_png(task.out_path, img)
    return [
        (task.rel_path, c["x0"], c["y0"], c["x1"], c["y1"], c["grade"], c["kind"]) for c in cells
    ]


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _check_existing(out_dir: Path, config: SynthConfig) -> bool:
    """True when ``out_dir`` already holds this data set; raise when it holds anything else."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise MilCytoError(f"{out_dir} exists and is not a folder; choose another output path")
    cfg_path = out_dir / CONFIG_FILE
    if cfg_path.is_file():
        found = _read_config(cfg_path)
        want = config.to_json_dict()
        if found == want:
            return True
        diff = sorted(
            k for k in set(want) | set(found or {}) if (found or {}).get(k) != want.get(k)
        )
        raise MilCytoError(
            f"{out_dir} holds a synthetic data set made with a different config "
            f"(differs in: {', '.join(diff) or 'unreadable ' + CONFIG_FILE}); delete that "
            "folder or choose another output folder"
        )
    if any(out_dir.iterdir()):
        raise MilCytoError(
            f"{out_dir} exists, is not empty and has no {CONFIG_FILE}, so it is not a "
            "mil-cyto synthetic data set; choose a new or empty output folder"
        )
    return False


def _draw_images(
    tmp: Path, plans: list[PatientPlan], config: SynthConfig, workers: int, progress: bool
) -> tuple[list[tuple[Any, ...]], list[tuple[str, ...]]]:
    """Draw every photo of ``plans`` into ``tmp``; returns the cell rows and manifest rows."""
    tasks: list[_ImageTask] = []
    manifest: list[tuple[str, ...]] = []
    for plan in plans:
        for index in plan.images:
            rel = _image_name(index, config.n_images)
            manifest.append((rel, plan.patient_id, plan.histology, plan.cytology, plan.hpv))
            tasks.append(
                _ImageTask(
                    index,
                    rel,
                    str(tmp / rel),
                    plan.histology,
                    plan.stain,
                    config.seed,
                    config.width,
                    config.height,
                    config.cells_per_field,
                    config.atypical_per_field,
                    config.um_per_px,
                )
            )
    n_workers = max(1, min(int(workers), len(tasks)))
    cell_rows: list[tuple[Any, ...]] = []
    with tqdm(total=len(tasks), disable=not progress, unit="img", desc="synthetic fields") as bar:
        if n_workers == 1:
            for rows in map(_make_image, tasks):
                cell_rows.extend(rows)
                bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            chunk = max(1, min(4, len(tasks) // (8 * n_workers)))
            with ctx.Pool(n_workers) as pool:
                for rows in pool.imap(_make_image, tasks, chunksize=chunk):
                    cell_rows.extend(rows)
                    bar.update(1)
    return cell_rows, manifest


def generate_dataset(
    out_dir: Path,
    config: SynthConfig,
    *,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write the synthetic data set of ``config`` to ``out_dir`` and return ``out_dir``.

    Layout: ``images/img_00000.png ...``, ``manifest.csv`` (image, patient_id, histology,
    cytology, hpv), ``cells.csv`` (image, x0, y0, x1, y1, grade, kind; one row per drawn cell)
    and ``synth_config.json``. The result is byte-identical for the same config whatever
    ``workers`` is. The data set is built in ``<out_dir>.partial-<pid>`` and renamed at the end.
    An existing ``out_dir`` with the same config is returned untouched (cache hit).
    ``workers > 1`` uses a spawn-context process pool, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard.

    Raises:
        MilCytoError: ``out_dir`` holds another config or unrelated files, or is not writable.
    """
    out_dir = Path(out_dir)
    if _check_existing(out_dir, config):
        return out_dir
    plans = plan_patients(config)
    try:
        with atomic_dir(out_dir) as tmp:
            (tmp / IMAGES_DIR).mkdir()
            cell_rows, manifest = _draw_images(tmp, plans, config, workers, progress)
            write_csv(tmp / MANIFEST_FILE, MANIFEST_COLUMNS, manifest)
            write_csv(tmp / CELLS_FILE, CELL_COLUMNS, cell_rows)
            (tmp / CONFIG_FILE).write_text(
                json.dumps(config.to_json_dict(), indent=2, sort_keys=True) + "\n",
                encoding="utf-8",
            )
    except OSError:
        # Another process finished the same folder first: accept it if it is ours.
        if _check_existing(out_dir, config):
            return out_dir
        raise
    return out_dir
