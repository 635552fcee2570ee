"""``python -m mil_cyto.mosaic``: field photos composed of real single-cell crops.

The command is :mod:`mil_cyto.cli.mosaic` (also ``mil-cyto mosaic``); see ``--help``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mil-cyto mosaic``; returns the exit status (2 on a user error)."""
    from mil_cyto.cli.mosaic import main as command

    return command(argv, prog="python -m mil_cyto.mosaic")


if __name__ == "__main__":
    sys.exit(main())
