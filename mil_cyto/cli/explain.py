"""``mil-cyto explain`` (``python -m explain --run RUN``): maps, attributions, localization.

Attention maps, Captum attributions, suspect cells, localization and faithfulness for a
run's test photos. Flags: the fields of :class:`ExplainOptions`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explain.attributions import AttributionSettings, list_methods
from explain.maps import NORMALISATIONS
from explain.run import TARGET_RULES, ExplainConfig, explain_run
from mil_cyto.cli.options import (
    Console,
    device_option,
    exit_code,
    from_args,
    option,
    set_threads,
    threads_option,
)
from mil_cyto.cli.options import build_parser as generated_parser
from mil_cyto.errors import MilCytoError

PROG = "mil-cyto explain"
DESCRIPTION = (
    "Explain a trained run's test photos: per-method maps and overlays in RUN/explain/, and "
    "RUN/localization.json (instance AUROC, pointing game, FROC sensitivity, deletion / "
    "insertion AUCs against random orders, CPU seconds per photo)."
)


def _methods() -> tuple[str, ...]:
    return tuple(list_methods())


@dataclass
class ExplainOptions:
    """The flags of ``explain``; defaults are those of :class:`ExplainConfig` and
    :class:`AttributionSettings`."""

    run: Path = option(help="a finished training run folder")
    methods: tuple[str, ...] = option(
        default_factory=_methods,
        nargs="+",
        choices=list_methods(),
        metavar="METHOD",
        help=f"methods to run, from: {', '.join(list_methods())}",
        default_help="all of them",
    )
    max_images: int | None = option(
        None, help="first K test photos only", default_help="every test photo"
    )
    target: str = option(ExplainConfig.target, choices=TARGET_RULES, help="class explained")
    norm: str = option(ExplainConfig.norm, choices=NORMALISATIONS, help="overlay scaling")
    map_scale: int = option(ExplainConfig.map_scale, help="stored maps: px per cell")
    overlays: bool = option(ExplainConfig.overlays, help="write the PNG overlays")
    ig_steps: int = option(AttributionSettings.n_steps, help="integrated gradients steps")
    shap_samples: int = option(AttributionSettings.n_samples, help="gradient SHAP samples")
    occlusion_window: int = option(
        AttributionSettings.occlusion_window, help="occlusion window, px"
    )
    occlusion_stride: int = option(
        AttributionSettings.occlusion_stride, help="occlusion stride, px"
    )
    chunk: int = option(AttributionSettings.chunk, help="tiles per encoder pass")
    device: str = device_option("cpu")
    threads: int = threads_option()

    def explain_config(self) -> ExplainConfig:
        """The explanation these options ask for."""
        settings = AttributionSettings(
            n_steps=self.ig_steps,
            n_samples=self.shap_samples,
            occlusion_window=self.occlusion_window,
            occlusion_stride=self.occlusion_stride,
            chunk=self.chunk,
        )
        return ExplainConfig(
            methods=tuple(dict.fromkeys(self.methods)),
            max_images=self.max_images,
            target=self.target,
            norm=self.norm,
            map_scale=self.map_scale,
            overlays=self.overlays,
            settings=settings,
        )


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """One flag per :class:`ExplainOptions` field, plus ``--quiet``."""
    return generated_parser(prog, DESCRIPTION, ExplainOptions)


def summary(payload: dict[str, Any]) -> str:
    """The table printed at the end: one row per method."""
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


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the command; returns the exit status (2 on a user error)."""
    args = build_parser(prog).parse_args(argv)
    options = from_args(ExplainOptions, args)
    quiet = from_args(Console, args).quiet
    set_threads(options.threads)

    def run() -> int:
        if options.max_images is not None and options.max_images < 1:
            raise MilCytoError("--max-images must be >= 1")
        config = options.explain_config()
        payload = explain_run(options.run, config, device=options.device, progress=not quiet)
        print(summary(payload))
        return 0

    return exit_code(run)
