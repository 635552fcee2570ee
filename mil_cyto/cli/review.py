"""``mil-cyto review``: the Streamlit review app on a run, or on a folder of runs.

Launches ``streamlit run app/viewer.py [streamlit flags] -- [--run RUN] [--runs-root DIR]``
from the checkout's root (so its ``.streamlit/config.toml`` applies), bound to 127.0.0.1
unless ``--server.address`` is given. Flags this command does not know (``--server.port
8502``, ...) go to ``streamlit run``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mil_cyto
from mil_cyto.cli.options import build_parser as generated_parser
from mil_cyto.cli.options import exit_code, from_args, option
from mil_cyto.errors import MilCytoError

PROG = "mil-cyto review"
DESCRIPTION = (
    "Open the review app (Streamlit, localhost) on a run folder or on a folder of runs. "
    "Other flags, e.g. --server.port 8502, are passed to `streamlit run`."
)
LOCALHOST = "127.0.0.1"


@dataclass
class ReviewOptions:
    """What the review app opens; each field is a flag (``--field-name``)."""

    run: Path | None = option(
        None, help="a run folder to open first (alone: the only run the browser may open)"
    )
    runs_root: Path | None = option(
        None,
        help="the folder whose runs the browser may open",
        default_help="./runs, or the --run folder when only --run is given",
    )
    app: Path | None = option(
        None, help="the Streamlit script", default_help="app/viewer.py of this checkout"
    )


def checkout_app() -> Path:
    """``app/viewer.py`` beside the installed ``mil_cyto`` package (a source checkout)."""
    return Path(mil_cyto.__file__).resolve().parents[1] / "app" / "viewer.py"


def review_command(
    options: ReviewOptions, streamlit_flags: Sequence[str], cwd: Path
) -> tuple[list[str], Path]:
    """The ``streamlit run`` command line and the folder to start it in (the checkout's root,
    or ``cwd`` with ``--app``); user paths are made absolute against ``cwd``.

    Raises:
        MilCytoError: the app script or the runs folder does not exist.
    """
    app = (cwd / options.app).resolve() if options.app else checkout_app()
    if not app.is_file():
        raise MilCytoError(
            f"no review app at {app}: it ships with the source checkout (app/viewer.py); "
            "run from a checkout or give --app PATH"
        )
    viewer: list[str] = []
    if options.run is not None:
        viewer += ["--run", str((cwd / options.run).resolve())]
    root = options.runs_root
    if root is None and options.run is None:
        root = Path("runs")
        if not (cwd / root).is_dir():
            raise MilCytoError(
                f"no runs folder {(cwd / root).resolve()}; give --runs-root DIR or --run RUN "
                "(train one with `mil-cyto train --out runs/demo`)"
            )
    if root is not None:
        viewer += ["--runs-root", str((cwd / root).resolve())]
    flags = list(streamlit_flags)
    if not any(f == "--server.address" or f.startswith("--server.address=") for f in flags):
        flags = ["--server.address", LOCALHOST, *flags]
    command = [sys.executable, "-m", "streamlit", "run", str(app), *flags, "--", *viewer]
    return command, (cwd if options.app else app.parents[1])


def launch(command: Sequence[str], folder: Path) -> int:
    """Run ``command`` in ``folder`` until it ends; on Ctrl-C (which reaches the app too) give
    it 10 s to stop, then kill it. Returns its exit status (130 after Ctrl-C)."""
    process = subprocess.Popen(list(command), cwd=folder)
    try:
        return process.wait()
    except KeyboardInterrupt:
        try:
            process.wait(timeout=10)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            process.kill()
        return 130


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """One flag per :class:`ReviewOptions` field (no ``--quiet``: the app has no progress)."""
    return generated_parser(prog, DESCRIPTION, ReviewOptions, console=False)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Launch the app and wait for it; returns its exit status (2 on a user error)."""
    args, streamlit_flags = build_parser(prog).parse_known_args(argv)
    options = from_args(ReviewOptions, args)

    def run() -> int:
        command, folder = review_command(options, streamlit_flags, Path.cwd())
        print("starting: " + " ".join(command), flush=True)
        return launch(command, folder)

    return exit_code(run)
