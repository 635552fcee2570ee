"""``python -m explain --run RUN``: attention maps, Captum attributions, suspect cells,
localization and faithfulness for a run's test photos; see ``--help``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from explain.attributions import AttributionSettings, list_methods
from explain.maps import NORMALISATIONS
from explain.run import TARGET_RULES, ExplainConfig, explain_run
from mil_cyto.errors import MilCytoError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m explain",
        description="Explain a trained run's test photos: per-method maps and overlays in "
        "RUN/explain/, and RUN/localization.json (instance AUROC, pointing game, FROC "
        "sensitivity, deletion / insertion AUCs against random orders, CPU seconds per photo).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--run", required=True, type=Path, help="a finished training run folder")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list_methods(),
        choices=list_methods(),
        metavar="METHOD",
        help=f"methods to run, from: {', '.join(list_methods())}",
    )
    parser.add_argument("--max-images", type=int, default=None, help="first K test photos only")
    parser.add_argument(
        "--target", choices=TARGET_RULES, default="abnormal", help="class explained"
    )
    parser.add_argument("--norm", choices=NORMALISATIONS, default="rank", help="overlay scaling")
    parser.add_argument("--map-scale", type=int, default=4, help="stored maps: px per cell")
    parser.add_argument("--no-overlays", action="store_true", help="skip the PNG overlays")
    parser.add_argument("--ig-steps", type=int, default=16, help="integrated gradients steps")
    parser.add_argument("--shap-samples", type=int, default=8, help="gradient SHAP samples")
    parser.add_argument("--occlusion-window", type=int, default=16, help="occlusion window, px")
    parser.add_argument("--occlusion-stride", type=int, default=16, help="occlusion stride, px")
    parser.add_argument("--chunk", type=int, default=256, help="tiles per encoder pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = default")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _summary(payload: dict[str, Any]) -> str:
    lines = [
        f"{payload['n_photos']} test photos ({payload['n_abnormal_photos']} abnormal); "
        f"wrote {payload['run']}/localization.json and {payload['run']}/explain/",
        "| method | inst AUROC, grid (instances) | pointing | FROC@1FP | del AUC (random) | "
        "ins AUC (random) | CPU s/photo |",
        "|---|---|---|---|---|---|---|",
    ]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for name, m in payload["methods"].items():
        froc = (m.get("froc") or {}).get("1")
        own = (m.get("per_instance") or {}).get("instance_auroc")
        lines.append(
            f"| {name} | {f(m['instance_auroc'])} ({f(own)}) | {f(m['pointing_game'])} | "
            f"{f(froc)} | "
            f"{f(m['deletion_auc'])} ({f(m['random_deletion_auc'])}) | "
            f"{f(m['insertion_auc'])} ({f(m['random_insertion_auc'])}) | "
            f"{f(m['cpu_seconds_per_photo'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    settings = AttributionSettings(
        n_steps=args.ig_steps,
        n_samples=args.shap_samples,
        occlusion_window=args.occlusion_window,
        occlusion_stride=args.occlusion_stride,
        chunk=args.chunk,
    )
    config = ExplainConfig(
        methods=tuple(dict.fromkeys(args.methods)),
        max_images=args.max_images,
        target=args.target,
        norm=args.norm,
        map_scale=args.map_scale,
        overlays=not args.no_overlays,
        settings=settings,
    )
    try:
        if args.max_images is not None and args.max_images < 1:
            raise MilCytoError("--max-images must be >= 1")
        payload = explain_run(args.run, config, device=args.device, progress=not args.quiet)
    except MilCytoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_summary(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
