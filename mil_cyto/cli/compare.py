"""``mil-cyto compare`` (``python -m mil_cyto.compare``): every method on the same folds.

Flags: the fields of :class:`CompareConfig`; the knobs of a :class:`~mil_cyto.compare.Budget`
default to the ``--budget`` preset's and each may be overridden.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mil_cyto.cli.options import (
    Console,
    exit_code,
    from_args,
    option,
    out_option,
    seed_option,
    set_threads,
    threads_option,
    workers_option,
)
from mil_cyto.cli.options import build_parser as generated_parser
from mil_cyto.compare import BUDGETS, DEFAULT_METHODS, Budget, available_methods, run_comparison

PROG = "mil-cyto compare"
DESCRIPTION = (
    "Compare MIL aggregators (grid tiles or cell crops), instance classifiers, whole-image "
    "CNNs and the train default on the same patient-grouped folds; writes comparison.csv "
    "and comparison.md."
)


def preset(help: str, name: str) -> Any:
    """A field overriding the ``--budget`` preset's ``name`` (None: the preset's value)."""
    values = {key: getattr(budget, name) for key, budget in sorted(BUDGETS.items())}
    text = {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in values.items()}
    if len(set(text.values())) == 1:
        shown = f"{next(iter(text.values()))} in every --budget"
    else:
        shown = "per --budget: " + ", ".join(f"{key} {value}" for key, value in text.items())
    return option(None, help=help, default_help=shown)


@dataclass
class CompareConfig:
    """What ``mil-cyto compare`` runs; each field is a flag (``--field-name``)."""

    data: str | None = option(
        None, help="folder with manifest.csv", default_help="the built-in synthetic set"
    )
    methods: str | None = option(
        None, help="comma-separated methods (see --list)", default_help="the default list"
    )
    out: str | None = out_option("output folder", default_help="runs/compare-<budget>")
    budget: str = option(
        "quick", choices=sorted(BUDGETS), help="preset of the knobs below (each one overrides it)"
    )
    show_methods: bool = option(False, flag="--list", help="print the available methods and exit")
    features: str | None = option(
        None,
        help="bag store (python -m mil_cyto.extract on --data) whose features the MIL and "
        "instance methods use on every fold instead of a fold encoder",
        default_help="a fold encoder's features",
    )
    folds: int | None = preset("patient-grouped folds", "folds")
    encoder: str | None = preset("tile encoder shared by the MIL methods", "encoder")
    encoder_kwargs: dict[str, Any] | None = preset(
        "the encoder's keyword arguments as a JSON object", "encoder_kwargs"
    )
    tile_size: int | None = preset("tile side in pixels", "tile_size")
    stride: int | None = preset("grid stride in pixels", "stride")
    pretrain_epochs: int | None = preset(
        "SimCLR epochs on the fold's training instances first (0 = none)", "pretrain_epochs"
    )
    encoder_epochs: int | None = preset(
        "epochs fine-tuning the fold's encoder (0 = its seeded random init)", "encoder_epochs"
    )
    encoder_max_tiles: int | None = preset(
        "tiles per photo per encoder-training step (0 = all)", "encoder_max_tiles"
    )
    radial_rings: int | None = preset(
        "rings of each tile's radial optical-density profile beside its features (0 = none)",
        "radial_rings",
    )
    mil_epochs: int | None = preset("MIL head epochs", "mil_epochs")
    mil_batch_bags: int | None = preset("photos per MIL optimisation step", "mil_batch_bags")
    mil_lr: float | None = preset("MIL head learning rate", "mil_lr")
    cnn_size: int | None = preset("whole-image CNN input side", "cnn_size")
    cnn_epochs: int | None = preset("whole-image CNN epochs", "cnn_epochs")
    cnn_batch_size: int | None = preset("whole-image CNN batch size", "cnn_batch_size")
    cnn_lr: float | None = preset("whole-image CNN initial learning rate", "cnn_lr")
    gbm_max_iter: int | None = preset(
        "boosting iterations of the instance classifiers (sil_gbm, pseudo_gbm)", "gbm_max_iter"
    )
    pseudo_top_k: int | None = preset(
        "pseudo_gbm: instances per abnormal training photo labelled with its grade",
        "pseudo_top_k",
    )
    seed: int = seed_option("seed of folds, encoder init and training")
    workers: int = workers_option()
    threads: int = threads_option()

    def budget_settings(self) -> Budget:
        """The ``--budget`` preset with the knobs given here."""
        budget = Budget(**asdict(BUDGETS[self.budget]))
        for name in asdict(budget):
            value = getattr(self, name)
            if value is not None:
                setattr(budget, name, value)
        return budget


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """One flag per :class:`CompareConfig` field, plus ``--quiet``."""
    return generated_parser(prog, DESCRIPTION, CompareConfig)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the command; returns the exit status (2 on a user error)."""
    args = build_parser(prog).parse_args(argv)
    config = from_args(CompareConfig, args)
    quiet = from_args(Console, args).quiet
    if config.show_methods:
        print("\n".join(available_methods()))
        print(f"\ndefault: {','.join(DEFAULT_METHODS)}")
        return 0
    budget = config.budget_settings()
    set_threads(config.threads)
    methods = config.methods.split(",") if config.methods else DEFAULT_METHODS
    out = Path(config.out or f"runs/compare-{config.budget}")

    def run() -> int:
        from mil_cyto.config import TrainConfig
        from mil_cyto.pipeline.data import resolve_data

        data = resolve_data(TrainConfig(data=config.data, workers=config.workers), not quiet)
        table = run_comparison(
            data,
            [m.strip() for m in methods if m.strip()],
            out,
            budget,
            config.budget,
            seed=config.seed,
            workers=config.workers,
            progress=not quiet,
            features=Path(config.features) if config.features else None,
        )
        print((out / "comparison.md").read_text())
        print(f"{len(table)} methods; written {out / 'comparison.csv'}")
        return 0

    return exit_code(run)
