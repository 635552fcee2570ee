"""``python -m explain --run RUN``: attention maps, Captum attributions, suspect cells,
localization and faithfulness for a run's test photos. The command is
:mod:`mil_cyto.cli.explain` (also ``mil-cyto explain``); see ``--help``."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mil-cyto explain``; returns the exit status (2 on a user error)."""
    from mil_cyto.cli.explain import main as command

    return command(argv, prog="python -m explain")


if __name__ == "__main__":
    sys.exit(main())
