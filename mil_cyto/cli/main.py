"""``mil-cyto COMMAND [flags]``: one entry point for every command.

Each command lives in ``mil_cyto.cli.<command>`` with ``main(argv, prog) -> int`` and is
imported only when it runs, so ``mil-cyto --help`` is quick. ``python -m mil_cyto.train``
and the other ``python -m`` forms run the same code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from mil_cyto import __version__


@dataclass(frozen=True)
class Command:
    """A subcommand: its module (``main(argv, prog)``) and a one-line summary."""

    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command(
        "mil_cyto.cli.train",
        "train and evaluate an attention-MIL model (no flags: the built-in demo)",
    ),
    "extract": Command("mil_cyto.cli.extract", "embed photos' tiles into an HDF5 bag store"),
    "compare": Command(
        "mil_cyto.cli.compare", "MIL heads and whole-image CNNs on the same patient folds"
    ),
    "baseline": Command("mil_cyto.cli.baseline", "the reference study's whole-image CNN"),
    "explain": Command(
        "mil_cyto.cli.explain", "attention maps, attributions and localization of a run"
    ),
    "mosaic": Command("mil_cyto.cli.mosaic", "field photos composed of real single-cell crops"),
    "synth": Command("mil_cyto.cli.synth", "the built-in synthetic Pap-smear data set"),
    "review": Command("mil_cyto.cli.review", "the Streamlit review app on a run"),
}


def build_parser() -> argparse.ArgumentParser:
    """``mil-cyto [--version] COMMAND ...``; the command parses the rest."""
    listing = "\n".join(f"  {name:<10}{c.summary}" for name, c in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="mil-cyto",
        description="Weakly supervised attention-MIL for cervical cytology photos.",
        epilog=f"commands:\n{listing}\n\n`mil-cyto COMMAND --help` shows a command's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mil-cyto {__version__}")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="see below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the command's flags")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mil-cyto``; returns the command's exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    module = importlib.import_module(COMMANDS[args.command].module)
    return int(module.main(args.args, prog=f"mil-cyto {args.command}"))


if __name__ == "__main__":
    sys.exit(main())
