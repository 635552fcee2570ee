"""``python -m mil_cyto.train``: the ``mil-cyto train`` command (:mod:`mil_cyto.cli.train`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mil_cyto.cli.train import main as command


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mil-cyto train`` under its ``python -m`` name; returns the exit status."""
    return command(argv, prog="python -m mil_cyto.train")


if __name__ == "__main__":
    sys.exit(main())
