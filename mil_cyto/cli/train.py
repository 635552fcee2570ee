"""``mil-cyto train`` (``python -m mil_cyto.train``): photos -> bags -> attention-MIL -> a run.

With no arguments it builds (or reuses) the built-in synthetic Pap-smear set, trains on CPU
and evaluates on patient-disjoint test photos. Settings: :class:`~mil_cyto.config.TrainConfig`
defaults, overridden by ``--config FILE``, overridden by the flags given.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mil_cyto.cli.options import Console, exit_code, from_args, given, option
from mil_cyto.cli.options import build_parser as generated_parser
from mil_cyto.config import TrainConfig, load_config_file, resolve_config
from mil_cyto.metrics import format_table

PROG = "mil-cyto train"
DESCRIPTION = (
    "Train and evaluate an attention-MIL model on photos with image-level grades "
    "(normal / CIN1 / CIN2+). No arguments: the built-in synthetic set."
)


@dataclass
class TrainCommand:
    """The flags of ``train`` that are not settings of the run."""

    config: Path | None = option(
        None, help="JSON config (e.g. a run's config.json); flags given override it"
    )


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """One flag per :class:`TrainConfig` field, plus ``--config`` and ``--quiet``."""
    return generated_parser(prog, DESCRIPTION, TrainConfig, TrainCommand)


def summary(run_dir: Path, metrics: dict[str, Any]) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = ["", f"run folder: {run_dir}", "", format_table(metrics), ""]
    loc = metrics.get("localization")
    if loc and loc.get("instance_auroc") is not None:
        lines.append(
            f"localization: instance AUROC {loc['instance_auroc']:.3f}, pointing game "
            f"{loc['pointing_game']:.3f} ({loc['n_images']} abnormal test photos, "
            f"{loc.get('tiles', 'the instances')})"
        )
    timing = metrics["timing_s"]
    lines.append("time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()))
    lines.append(f"read first: {run_dir / 'report.md'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the command; returns the exit status (2 on a user error)."""
    from mil_cyto.distributed import context_from_env, shutdown
    from mil_cyto.pipeline.run import run_training

    args = build_parser(prog).parse_args(argv)
    command = from_args(TrainCommand, args)
    quiet = from_args(Console, args).quiet

    def run() -> int:
        file_values = load_config_file(command.config) if command.config else {}
        config = resolve_config(file_values, given(TrainConfig, args))
        run_dir, metrics = run_training(config, progress=not quiet)
        if metrics:
            print(summary(run_dir, metrics))
        return 0

    try:
        return exit_code(run)
    finally:
        shutdown(context_from_env())
