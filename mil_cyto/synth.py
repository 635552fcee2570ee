"""``python -m mil_cyto.synth``: write the built-in synthetic Pap-smear data set.

The command is :mod:`mil_cyto.cli.synth` (also ``mil-cyto synth``); see ``--help``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mil-cyto synth``; returns the exit status (2 on a user error)."""
    from mil_cyto.cli.synth import main as command

    return command(argv, prog="python -m mil_cyto.synth")


if __name__ == "__main__":
    sys.exit(main())
