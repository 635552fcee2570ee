"""The Herlev benchmark: mosaic fields of real Herlev cells, MIL vs whole-image vs reference.

Steps (each a separate command, run as a subprocess so that every figure can be repeated):

1. ``python -m mil_cyto.mosaic`` on ``$MIL_CYTO_DATA/herlev`` with ``herlev_mapping.csv``
   and the Herlev nucleus/cytoplasm masks, at the mosaic command's default field settings.
2. ``python -m mil_cyto.train`` once per MIL aggregator (image-level labels only), on the
   mosaic's cell-disjoint train / val / test split.
3. ``python -m mil_cyto.compare`` (quick budget) on the same split, at the MIL rows' tiles.
4. ``python -m mil_cyto.baseline``: a whole-image CNN on the same split.
5. ``benchmarks/instance_upper_bound.py``: REFERENCE ONLY, an encoder trained on the
   single-cell labels feeding the same MIL head.

Then it writes ``docs/benchmarks.md`` (table, settings, exact command, gap to the targets).

    python benchmarks/herlev.py                       # full settings
    python benchmarks/herlev.py --n-images 150 --epochs 3 --baseline-epochs 3   # modest
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGETS = {"accuracy": 0.895, "macro_sensitivity": 0.870, "macro_specificity": 0.943}
TARGET_AUROC = 0.90
MASK_ARGS = ["--masks", "masks", "--mask-suffix=-d", "--mask-background", "1,4"]


def _run(cmd: list[str], log: Path) -> str:
    """Run a command, tee its output to ``log``; raise with the log's tail on failure."""
    print("$ " + shlex.join(cmd), flush=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(
            f"failed ({proc.returncode}): {shlex.join(cmd)}\n{(proc.stdout + proc.stderr)[-2000:]}"
        )
    return proc.stdout


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _row(name: str, m: dict[str, Any], seconds: float | None, note: str = "") -> str:
    loc = m.get("localization") or {}
    cells = [
        name,
        _fmt(m.get("accuracy")),
        _fmt(m.get("macro_sensitivity")),
        _fmt(m.get("macro_specificity")),
        _fmt(loc.get("instance_auroc")),
        _fmt(loc.get("pointing_game")),
        "-" if seconds is None else f"{seconds:.0f}",
        note,
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_root = os.environ.get("MIL_CYTO_DATA")
    p.add_argument("--cells", type=Path, default=Path(data_root) / "herlev" if data_root else None)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "herlev")
    p.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--n-images", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aggregators", default="gated_abmil,abmil")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--tile-size", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline-arch", default="resnet18")
    p.add_argument("--baseline-size", type=int, default=224)
    p.add_argument("--baseline-epochs", type=int, default=6)
    p.add_argument("--cell-epochs", type=int, default=20)
    args = p.parse_args()
    if args.cells is None or not args.cells.is_dir():
        raise SystemExit("set MIL_CYTO_DATA (the folder holding herlev/) or pass --cells DIR")
    start = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    mosaic = out / "mosaic"
    _run(
        [
            py,
            "-m",
            "mil_cyto.mosaic",
            "--cells",
            str(args.cells),
            "--mapping",
            str(HERE / "herlev_mapping.csv"),
            "--out",
            str(mosaic),
            "--n-images",
            str(args.n_images),
            "--seed",
            str(args.seed),
            *MASK_ARGS,
            "--no-progress",
        ],
        out / "mosaic.log",
    )
    rows: list[str] = []
    results: dict[str, Any] = {}
    for agg in [a for a in args.aggregators.split(",") if a]:
        run = out / f"mil-{agg}"
        if not (run / "metrics.json").is_file():
            _run(
                [
                    py,
                    "-m",
                    "mil_cyto.train",
                    "--data",
                    str(mosaic),
                    "--out",
                    str(run),
                    "--aggregator",
                    agg,
                    "--epochs",
                    str(args.epochs),
                    "--tile-size",
                    str(args.tile_size),
                    "--stride",
                    str(args.tile_size),
                    "--seed",
                    str(args.seed),
                    "--threads",
                    str(args.threads),
                    "--quiet",
                ],
                out / f"mil-{agg}.log",
            )
        m = json.loads((run / "metrics.json").read_text())
        results[f"mil-{agg}"] = m
        rows.append(_row(f"MIL: smallcnn + {agg} (ours)", m, m["timing_s"].get("training")))

    compare_dir = out / f"compare-tile{args.tile_size}"  # at the MIL rows' tile size
    _run(
        [
            *[py, "-m", "mil_cyto.compare", "--data", str(mosaic), "--out", str(compare_dir)],
            *["--quiet", "--tile-size", str(args.tile_size), "--stride", str(args.tile_size)],
        ],
        out / "compare.log",
    )
    compare_note = (
        f"mil_cyto.compare (budget quick, the MIL rows' {args.tile_size}-px tiles): ran, "
        f"table in {compare_dir / 'comparison.md'}"
    )

    base_run = out / "whole_image"  # finished steps are reused, as the MIL runs are
    if not (base_run / "metrics.json").is_file():
        cmd = [py, "-m", "mil_cyto.baseline", "--data", str(mosaic), "--out", str(base_run)]
        cmd += ["--arch", args.baseline_arch, "--size", str(args.baseline_size)]
        cmd += ["--epochs", str(args.baseline_epochs), "--seed", str(args.seed), "--quiet"]
        _run(cmd, out / "whole_image.log")
    base = json.loads((base_run / "metrics.json").read_text())
    results["whole_image"] = base
    rows.append(
        _row(
            f"whole image: {args.baseline_arch} at {args.baseline_size} px",
            base,
            base.get("timing_s", {}).get("training"),
            "Grad-CAM localization",
        )
    )
    ub_path = out / "upper_bound.json"
    if not ub_path.is_file():
        cmd = [py, str(HERE / "instance_upper_bound.py"), "--mosaic", str(mosaic)]
        cmd += ["--cells", str(args.cells), "--out", str(ub_path)]
        cmd += ["--tile-size", str(args.tile_size), "--cell-epochs", str(args.cell_epochs)]
        cmd += ["--mil-epochs", str(args.epochs), "--seed", str(args.seed)]
        _run(cmd, out / "upper_bound.log")
    ub = json.loads(ub_path.read_text())
    results["upper_bound"] = ub
    rows.append(
        _row(
            "REFERENCE ONLY, cell-label-supervised encoder + gated_abmil",
            ub,
            ub.get("seconds"),
            "uses single-cell labels",
        )
    )
    rows.append(
        "| reference study DenseNet121 (targets) | 0.895 | 0.870 | 0.943 | >= 0.90 (target) | - "
        "| - | other data: 512 px Pap photos |"
    )
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    argv = " ".join(shlex.quote(a) for a in sys.argv[1:])
    compare_note += _first_table(compare_dir / "comparison.md")
    _write_doc(args, rows, results, compare_note, argv)
    print(f"wrote {args.doc} ({time.perf_counter() - start:.0f} s)")


def _first_table(markdown: Path) -> str:
    """The first markdown table of ``markdown`` (the comparison's method rows), indented
    under a list item."""
    lines = markdown.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return ":\n\n" + "\n".join("  " + line for line in lines[start:end]) + "\n"


def _write_doc(
    args: argparse.Namespace,
    rows: list[str],
    results: dict[str, Any],
    compare_note: str,
    argv: str,
) -> None:
    mil = {k: v for k, v in results.items() if k.startswith("mil-")}
    best_name, best = max(mil.items(), key=lambda kv: kv[1]["macro_sensitivity"] or 0)
    gaps = ", ".join(
        f"{k.replace('macro_', 'mean ')} {best[k]:.3f} vs {t:.3f} ({best[k] - t:+.3f})"
        for k, t in TARGETS.items()
    )
    auroc = (best.get("localization") or {}).get("instance_auroc")
    sc = results["upper_bound"]["single_cell"]
    n_test = best.get("n_test")
    text = f"""# Benchmarks

## Herlev mosaics (real cells, image-level labels)

Fields composed of the 917 real Herlev cells (`$MIL_CYTO_DATA/herlev`, 40x40 px crops, see
its SOURCE.md) by `python -m mil_cyto.mosaic` at its default field settings (20-40 cells per
field, 1-5 atypical cells in an abnormal field, CIN2+ fields may hold CIN1 cells, fields
balanced across grades, several fields per virtual patient), cut out with the Herlev
nucleus/cytoplasm masks. Mapping: `benchmarks/herlev_mapping.csv` (normal = the three normal
classes, CIN1 = light dysplastic, CIN2+ = moderate, severe, carcinoma in situ). Every crop
belongs to one of train / val / test (`cell_splits.csv`), so no test cell was seen in
training; all rows use the same split. {n_test} test fields.

Command (run from the repository root, on a 2-core CPU shared with other jobs, so the
"train s" column, wall-clock seconds, is inflated by contention):

```bash
MIL_CYTO_DATA=../shared/data python benchmarks/herlev.py {argv}
```

| model | acc | mean sens | mean spec | instance AUROC | pointing game | train s | note |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

- {compare_note}
- Gap of the best MIL row ({best_name}) to the reference study's DenseNet121 targets
  (measured on other data, 512 px Pap photos): {gaps}; instance AUROC {_fmt(auroc)} vs
  {TARGET_AUROC:.2f}.
- With instance attention (the `train` default) abmil and gated_abmil have no attention MLP
  of their own (the instance head scores the tiles), so they are the same model and give
  identical rows; the comparison's heads train without it and differ.
- The REFERENCE row is not a MIL result: its encoder was trained on single-cell labels
  (train crops only). That encoder's single-cell accuracy on the test crops, native
  {sc["native_crop_px"][0]}x{sc["native_crop_px"][1]} px resized to {sc["input_px"]} px:
  accuracy {_fmt(sc["test_accuracy"])}, mean sensitivity {_fmt(sc["test_macro_sensitivity"])}.
  This bounds what the small CNN can tell apart at this resolution: Herlev here is
  downsampled to 40x40 px (squashed), so chromatin and texture are largely lost.
- Why every row sits near chance (0.33 for three balanced grades): a field holds 20-40
  cells, of which 1-5 are atypical in an abnormal field. A cell classifier that is right on
  two cells in three (the encoder above) calls several normal cells of every normal field
  atypical, as many as an abnormal field holds, so the field-level evidence drowns; image
  labels alone cannot do better than the cells' own separability.
- Settings: MIL `--epochs {args.epochs} --tile-size {args.tile_size} --stride
  {args.tile_size}`; whole image `{args.baseline_arch}` at {args.baseline_size} px,
  {args.baseline_epochs} epochs, from scratch (no pretrained weights offline);
  {args.n_images} fields, seed {args.seed}.
"""
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(text)


if __name__ == "__main__":
    main()
