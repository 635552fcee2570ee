"""Cell level on the real CRIC crops: how well a frozen encoder's features grade single cells.

Issue 23's "Cell level" table: every CRIC crop (``$MIL_CYTO_DATA/cric``, cell mapping NILM
normal, LSIL CIN1, HSIL and SCC CIN2+, ASC dropped; ``--include-asc`` maps ASC-US CIN1 and
ASC-H CIN2+) is embedded by a frozen encoder; photo-disjoint 5-fold cross-validation
(``StratifiedGroupKFold`` grouped by CRIC ``image_id``: crops of one photo share pixels)
fits a standardised logistic-regression probe and a ``HistGradientBoostingClassifier`` on
the training folds' cells and scores the held-out fold: three-class balanced accuracy and
abnormal-vs-normal AUROC (``1 - p(normal)``), mean +- sd over the folds.

Each encoder runs with and without colour (the stain confound: photos of one slide share
their stain): without colour, morphometry drops its colour columns
(``mil_cyto.encoders.morphometry.COLOUR_FEATURES``) and a CNN sees grey crops. With
``--stain-jitter`` the training folds also get one HED-jittered copy of each crop
(haematoxylin, eosin, DAB densities each scaled by U(0.7, 1.3) and shifted by
U(-0.01, 0.01); the held-out fold is never jittered).

Prints one JSON line per configuration (encoder, colour, jitter, classifier), with the CPU's
model name, the feature extraction's crops per second and the per-fold figures::

    MIL_CYTO_DATA=../shared/data python benchmarks/cric_cells.py
    python benchmarks/cric_cells.py --encoders morphometry --stain-jitter
    python benchmarks/cric_cells.py --encoders resnet18 --weights resnet18.safetensors
    python benchmarks/cric_cells.py --herlev $MIL_CYTO_DATA/herlev   # Herlev's 40x40 cells

On Herlev (``herlev_mapping.csv``) every cell is its own group: Herlev does not say which
cells share a slide.

``--encoders`` takes registered names (``morphometry``, ``smallcnn``: randomly initialised,
a reference) or any timm model name (with ``--weights FILE``, else random weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.color import hed_from_rgb, rgb_from_hed
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mil_cyto.data.cric import load_cric_cells
from mil_cyto.data.images import load_rgb
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.encoders.morphometry import COLOUR_FEATURES, FEATURE_NAMES
from mil_cyto.labels import GRADES

CROP = 100
HERE = Path(__file__).resolve().parent


def cpu_model() -> str:
    """``lscpu``'s model name (platform's processor string where lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def load_crops(cric_dir: Path, include_asc: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops ``(N, 100, 100, 3)`` uint8 (clipped ones padded by reflection, the nucleus kept
    at row/column 50 from the top-left), grades ``(N,)`` int and photo ids ``(N,)``."""
    cells = [c for c in load_cric_cells(cric_dir, include_asc=include_asc) if c.grade]
    crops = np.empty((len(cells), CROP, CROP, 3), dtype=np.uint8)
    for i, cell in enumerate(cells):
        crop = load_rgb(cell.crop)[:CROP, :CROP]
        # a crop clipped by the photo's top or left edge has its nucleus off-centre there
        h, w = crop.shape[:2]
        x0, y0 = cell.corner
        top = CROP - h if y0 == 0 else 0
        left = CROP - w if x0 == 0 else 0
        pad = ((top, CROP - h - top), (left, CROP - w - left), (0, 0))
        crops[i] = np.pad(crop, pad, mode="reflect") if (h, w) != (CROP, CROP) else crop
    grades = np.array([GRADES.index(c.grade) for c in cells])
    groups = np.array([c.image_id for c in cells])
    return crops, grades, groups


def load_herlev(herlev_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Herlev's 917 cells (40x40, squashed) by ``herlev_mapping.csv`` (folder -> grade);
    each cell its own group (Herlev does not say which cells share a slide)."""
    mapping = dict(
        line.split(",")
        for line in (HERE / "herlev_mapping.csv").read_text().split()[1:]
        if line.strip()
    )
    files = [
        (path, GRADES.index(grade))
        for folder, grade in sorted(mapping.items())
        for path in sorted((herlev_dir / folder).glob("*.BMP"))
    ]
    if not files:
        raise SystemExit(f"no Herlev cells under {herlev_dir} (class folders of .BMP files)")
    crops = np.stack([load_rgb(path) for path, _ in files])
    return crops, np.array([g for _, g in files]), np.arange(len(files)).astype(str)


def hed_jitter(crops: np.ndarray, rng: np.random.Generator, sigma: float = 0.3) -> np.ndarray:
    """One HED stain jitter per crop (Tellez et al. 2018): the optical density
    ``-ln((I + 1) / 256)`` is unmixed into haematoxylin, eosin and DAB with scikit-image's
    Ruifrok-Johnston matrix, each stain's density is scaled by ``U(1 - sigma, 1 + sigma)`` and
    shifted by ``U(-0.02, 0.02)``, and mixed back (exactly invertible: no clipping of
    negative densities, unlike ``skimage.color.rgb2hed``). ``(N, T, T, 3)`` uint8 -> same."""
    density = -np.log((crops.astype(np.float64) + 1.0) / 256.0)
    stains = density @ hed_from_rgb  # (N, T, T, 3) H, E, D
    alpha = rng.uniform(1 - sigma, 1 + sigma, (len(crops), 1, 1, 3))
    beta = rng.uniform(-0.02, 0.02, (len(crops), 1, 1, 3))
    mixed = (stains * alpha + beta) @ rgb_from_hed
    return np.clip(256.0 * np.exp(-mixed) - 1.0 + 0.5, 0, 255).astype(np.uint8)


def grey(crops: np.ndarray) -> np.ndarray:
    """Crops in grey (luma), kept 3-channel: what a CNN sees without colour."""
    luma = crops.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat(np.clip(luma + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=3)


def embed(encoder: torch.nn.Module, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    """``(N, T, T, 3)`` uint8 -> ``(N, D)`` float32 frozen features."""
    encoder.eval()
    parts = []
    with torch.inference_mode():
        for i in range(0, len(crops), batch):
            tiles = torch.from_numpy(crops[i : i + batch]).permute(0, 3, 1, 2).contiguous()
            parts.append(encoder(tiles).float().numpy())
    return np.concatenate(parts)


def classifiers(seed: int) -> dict[str, Any]:
    return {
        "logreg": make_pipeline(
            StandardScaler(),
            LogisticRegression(max_iter=3000, class_weight="balanced", C=1.0),
        ),
        "hgb": HistGradientBoostingClassifier(
            max_iter=300,
            learning_rate=0.05,
            class_weight="balanced",
            early_stopping=True,  # on 10% of the training cells (the test fold stays out)
            random_state=seed,
        ),
    }


def cross_validate(
    features: np.ndarray,
    grades: np.ndarray,
    groups: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    name: str,
    seed: int,
    jittered: np.ndarray | None,
) -> dict[str, Any]:
    """Fit classifier ``name`` on each fold's training cells (plus their jittered copies)
    and score the held-out fold; per-fold balanced accuracy and abnormal AUROC."""
    balanced, auroc = [], []
    for train, test in folds:
        x, y = features[train], grades[train]
        if jittered is not None:
            x, y = np.concatenate([x, jittered[train]]), np.concatenate([y, y])
        model = classifiers(seed)[name].fit(x, y)
        proba = model.predict_proba(features[test])
        balanced.append(balanced_accuracy_score(grades[test], proba.argmax(axis=1)))
        auroc.append(roc_auc_score(grades[test] > 0, 1 - proba[:, 0]))
    return {
        "balanced_accuracy": round(float(np.mean(balanced)), 4),
        "balanced_accuracy_sd": round(float(np.std(balanced, ddof=1)), 4),
        "abnormal_auroc": round(float(np.mean(auroc)), 4),
        "abnormal_auroc_sd": round(float(np.std(auroc, ddof=1)), 4),
        "per_fold_balanced_accuracy": [round(float(v), 4) for v in balanced],
        "per_fold_auroc": [round(float(v), 4) for v in auroc],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = os.environ.get("MIL_CYTO_DATA")
    parser.add_argument(
        "--cric", type=Path, default=Path(data) / "cric" if data else None, help="CRIC folder"
    )
    parser.add_argument(
        "--herlev", type=Path, help="run on these Herlev cells instead (folder of class folders)"
    )
    parser.add_argument("--encoders", default="morphometry,smallcnn")
    parser.add_argument("--weights", help="local weights for a timm encoder")
    parser.add_argument(
        "--radial-rings", type=int, default=0, help="add the radial OD profile (rings)"
    )
    parser.add_argument("--classifiers", default="logreg,hgb")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--include-asc", action="store_true")
    parser.add_argument("--stain-jitter", action="store_true", help="also with HED jitter")
    parser.add_argument("--no-colour-only", action="store_true", help="skip the colour runs")
    args = parser.parse_args(argv)
    if args.cric is None and args.herlev is None:
        raise SystemExit("set MIL_CYTO_DATA (the folder holding cric/) or pass --cric DIR")
    torch.manual_seed(args.seed)
    cpu = cpu_model()
    if args.herlev is not None:
        crops, grades, groups = load_herlev(args.herlev)
    else:
        crops, grades, groups = load_crops(args.cric, args.include_asc)
    splitter = StratifiedGroupKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    folds = list(splitter.split(crops, grades, groups))
    jittered_crops = (
        hed_jitter(crops, np.random.default_rng(args.seed)) if args.stain_jitter else None
    )
    counts = {g: int((grades == i).sum()) for i, g in enumerate(GRADES)}
    for name in args.encoders.split(","):
        weights = args.weights if name not in ("morphometry", "smallcnn") else None
        kwargs = {"radial_rings": args.radial_rings} if args.radial_rings else {}
        encoder = create_encoder(EncoderSpec(name, weights=weights, kwargs=kwargs))
        cache: dict[bool, tuple[np.ndarray, np.ndarray | None, float]] = {}
        for colour in (False,) if args.no_colour_only else (True, False):
            features, jittered, rate = _features(
                encoder, name, crops, jittered_crops, colour, cache
            )
            for variant in (None, jittered) if jittered is not None else (None,):
                for clf in args.classifiers.split(","):
                    scores = cross_validate(
                        features, grades, groups, folds, clf, args.seed, variant
                    )
                    record = {
                        "dataset": "herlev" if args.herlev is not None else "cric",
                        "encoder": name,
                        "weights": weights,
                        "radial_rings": args.radial_rings,
                        "colour": colour,
                        "stain_jitter": variant is not None,
                        "classifier": clf,
                        **scores,
                        "feature_dim": int(features.shape[1]),
                        "n_cells": int(len(grades)),
                        "cells_per_grade": counts,
                        "n_photos": int(len(set(groups))),
                        "folds": args.folds,
                        "include_asc": args.include_asc,
                        "crops_per_s": rate,
                        "torch_threads": torch.get_num_threads(),
                        "cpu": cpu,
                    }
                    print(json.dumps(record), flush=True)


def _features(
    encoder: torch.nn.Module,
    name: str,
    crops: np.ndarray,
    jittered_crops: np.ndarray | None,
    colour: bool,
    cache: dict[bool, tuple[np.ndarray, np.ndarray | None, float]],
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Features of the crops and of their jittered copies, and crops/s of the extraction.
    Without colour a CNN sees grey crops; morphometry drops its colour columns instead
    (grey crops would still carry the stain's darkness into every OD feature alike)."""
    if name == "morphometry" and not colour:
        full, jittered, rate = cache.get(True) or _features(
            encoder, name, crops, jittered_crops, True, cache
        )
        rings = encoder.radial.rings if encoder.radial is not None else 0
        keep = [6 * rings + i for i, n in enumerate(FEATURE_NAMES) if n not in COLOUR_FEATURES]

        def plain(x: np.ndarray) -> np.ndarray:
            # the radial profile (channel-major mean and spread per ring): averaged over the
            # colour channels, i.e. the grey OD's ring means (and mean spreads)
            grey_rings = x[:, : 6 * rings].reshape(len(x), 3, 2 * rings).mean(axis=1)
            return np.concatenate([grey_rings, x[:, keep]], axis=1)

        return plain(full), None if jittered is None else plain(jittered), rate
    start = time.perf_counter()
    features = embed(encoder, crops if colour else grey(crops))
    rate = round(len(crops) / (time.perf_counter() - start), 1)
    jittered = None
    if jittered_crops is not None:
        jittered = embed(encoder, jittered_crops if colour else grey(jittered_crops))
    cache[colour] = (features, jittered, rate)
    return features, jittered, rate


if __name__ == "__main__":
    sys.exit(main())
