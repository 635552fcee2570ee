"""Instance-level methods against the attention head on CRIC fields, by cross-validation.

Runs ``mil_cyto.compare`` (library call, resumable) once per seed on the same bag store of
cell features, each seed its own patient-disjoint folds, then pools every (seed, fold):
mean +- sd of accuracy, mean sensitivity, mean specificity and the atypical cells' instance
AUROC (on the photo's grid, and on the instances themselves) over the held-out folds, with
the per-seed means beside them. Figures from CV folds of the visible photos only: they are
for choosing a default, never a test-set report.

    python -m mil_cyto.extract --data /tmp/cric_fields --out /tmp/sil/morph_cells96.h5 \\
        --encoder morphometry --instances cells --tile-size 96
    OMP_NUM_THREADS=1 python benchmarks/cric_instance_cv.py --data /tmp/cric_fields \\
        --features /tmp/sil/morph_cells96.h5 --out /tmp/sil --seeds 0 1 2

``--report-only`` reads the folds already on disk (e.g. a ``train-default`` row run apart).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from mil_cyto.compare import BUDGETS, Budget, _slug, run_comparison

METHODS = "gated_abmil@cells,sil@cells,sil_gbm@cells,pseudo_gbm@cells"
KEYS = ("accuracy", "macro_sensitivity", "macro_specificity")


def _fold_figures(record: dict[str, Any]) -> dict[str, float | None]:
    metrics = record["metrics"]
    loc = metrics.get("localization") or {}
    own = loc.get("per_instance") or {}
    out: dict[str, float | None] = {k: metrics[k] for k in KEYS}
    out["grid_auroc"] = loc.get("instance_auroc")
    out["cell_auroc"] = own.get("instance_auroc")
    out["pointing"] = loc.get("pointing_game")
    return out


def pooled(out: Path, seeds: list[int], methods: list[str]) -> list[dict[str, Any]]:
    """Per method: mean, sd over every (seed, fold) found, the per-seed means and counts."""
    table = []
    for method in methods:
        per_seed: dict[int, list[dict[str, float | None]]] = {}
        for seed in seeds:
            folder = out / f"cv_s{seed}" / "folds" / _slug(method)
            for path in sorted(folder.glob("fold*.json")):
                per_seed.setdefault(seed, []).append(_fold_figures(json.loads(path.read_text())))
        row: dict[str, Any] = {"method": method, "folds": sum(map(len, per_seed.values()))}
        for key in (*KEYS, "grid_auroc", "cell_auroc", "pointing"):
            values = [f[key] for folds in per_seed.values() for f in folds if f[key] is not None]
            row[key] = (
                (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
                if values
                else None
            )
            row[f"{key}_per_seed"] = {
                seed: round(float(np.mean([f[key] for f in folds if f[key] is not None])), 3)
                for seed, folds in per_seed.items()
                if any(f[key] is not None for f in folds)
            }
        table.append(row)
    return table


def markdown(table: list[dict[str, Any]]) -> str:
    head = "| method | folds | acc | mean sens | mean spec | grid AUROC | cell AUROC | pointing |"
    lines = [head, "|" + "---|" * 8]
    for row in table:
        cells = [row["method"], str(row["folds"])]
        for key in (*KEYS, "grid_auroc", "cell_auroc", "pointing"):
            value = row[key]
            cells.append("-" if value is None else f"{value[0]:.3f} +- {value[1]:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for row in table:
        lines.append(f"- {row['method']} mean sens per seed: {row['macro_sensitivity_per_seed']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--features", type=Path, required=True, help="bag store of --data")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--mil-epochs", type=int, default=40)
    parser.add_argument("--tile-size", type=int, default=96)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    methods = args.methods.split(",")
    if not args.report_only:
        settings = {**vars(BUDGETS["full"]), "folds": args.folds, "mil_epochs": args.mil_epochs}
        settings.update(tile_size=args.tile_size, stride=args.tile_size, encoder_epochs=0)
        budget = Budget(**settings)
        for seed in args.seeds:
            run_comparison(
                args.data, methods, args.out / f"cv_s{seed}", budget, "full", seed=seed,
                workers=1, features=args.features,
            )  # fmt: skip
    table = pooled(args.out, args.seeds, methods)
    text = markdown(table)
    print(text)
    (args.out / "instance_cv.md").write_text(text + "\n")
    (args.out / "instance_cv.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
