"""``mil-cyto baseline`` (``python -m mil_cyto.baseline``): the study's whole-image CNNs.

Flags: the fields of :class:`mil_cyto.baseline.BaselineConfig`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mil_cyto.baseline import BaselineConfig, run_baseline
from mil_cyto.cli.options import Console, exit_code, from_args
from mil_cyto.cli.options import build_parser as generated_parser
from mil_cyto.errors import MilCytoError
from mil_cyto.metrics import format_table

PROG = "mil-cyto baseline"
DESCRIPTION = (
    "Train a whole-image CNN (the reference study's protocol) on the same patient-disjoint "
    "split as mil-cyto train and write a run folder."
)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """One flag per :class:`BaselineConfig` field, plus ``--quiet``."""
    return generated_parser(prog, DESCRIPTION, BaselineConfig)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the command; returns the exit status (2 on a user error)."""
    args = build_parser(prog).parse_args(argv)
    config = from_args(BaselineConfig, args)
    quiet = from_args(Console, args).quiet

    def run() -> int:
        if config.epochs < 1 or config.size < 32 or config.batch_size < 1:
            raise MilCytoError("--epochs and --batch-size must be >= 1 and --size >= 32")
        run_dir, metrics = run_baseline(config, progress=not quiet)
        print(f"\nrun folder: {run_dir}\n\n{format_table(metrics)}")
        loc = metrics.get("localization")
        if loc and loc.get("instance_auroc") is not None:
            print(
                f"\nlocalization (Grad-CAM): instance AUROC {loc['instance_auroc']:.3f}, "
                f"pointing game {loc['pointing_game']:.3f}"
            )
        return 0

    return exit_code(run)
