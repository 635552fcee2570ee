"""The mil-cyto review app:
``streamlit run app/viewer.py -- --runs-root RUNS`` or ``-- --run RUN``.

Pages: the test photos of a run (case list and photo view with attention, cell boxes,
top-k tiles, attributions and review marks), a new photo, and the run summary (with the
marks per reviewer and their agreement). The server's command line fixes the runs root;
the browser can open only the runs below it. Run it from the repository root (or through
``mil-cyto review``) so that ``.streamlit/config.toml`` applies: it binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import streamlit as st

if str(Path(__file__).resolve().parent) not in sys.path:  # the panels beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from panels.cases import cases_page  # noqa: E402
from panels.login import gate  # noqa: E402
from panels.summary import summary_page  # noqa: E402
from panels.upload import upload_page  # noqa: E402

from mil_cyto.errors import MilCytoError  # noqa: E402
from mil_cyto.review.confine import RunsRoot  # noqa: E402
from mil_cyto.review.runs import Run  # noqa: E402

PAGES = {"Test photos": cases_page, "Run summary": summary_page, "New photo": upload_page}
DEFAULT_ROOT = Path("runs")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamlit run app/viewer.py --")
    parser.add_argument("--run", type=Path, help="a run folder to open (alone: the only one)")
    parser.add_argument(
        "--runs-root",
        "--root",
        dest="runs_root",
        type=Path,
        help="the folder whose runs the browser may open (default: runs/, or the --run folder)",
    )
    args, _ = parser.parse_known_args(argv)
    return args


def server_root(args: argparse.Namespace) -> tuple[RunsRoot, Path | None]:
    """The runs root fixed by the command line, and the run to open first (if any).

    Raises:
        MilCytoError: the root is not a folder, or ``--run`` lies outside ``--runs-root``.
    """
    if args.runs_root is not None:
        root = RunsRoot.open(args.runs_root)
        start = None
        if args.run is not None:
            if not root.contains(args.run):
                raise MilCytoError(
                    f"--run {args.run} is outside --runs-root {root.path}; give a run below it"
                )
            start = args.run.resolve()
        return root, start
    if args.run is not None:
        return RunsRoot.open(args.run), args.run.resolve()
    if not DEFAULT_ROOT.is_dir():
        raise MilCytoError(
            f"no runs folder {DEFAULT_ROOT.resolve()}; start the app with --runs-root DIR or "
            "--run RUN (train one with `python -m mil_cyto.train --out runs/demo`)"
        )
    return RunsRoot.open(DEFAULT_ROOT), None


def pick_run(root: RunsRoot, start: Path | None) -> Run | None:
    """The sidebar run picker: the runs below the root (a ``?run=`` link preselects one), or
    one typed relative to it; anything outside the root is refused with a message."""
    bar = st.sidebar
    bar.caption(f"runs root: `{root.path}` (fixed by the server)")
    typed = bar.text_input(
        "run folder below the root (optional)",
        key="run_path",
        help="a path relative to the runs root; paths outside it are refused",
    ).strip()
    if typed:
        try:
            return Run.open(root.resolve(typed))
        except MilCytoError as err:
            st.error(str(err))
    runs = root.runs()
    linked = str(st.query_params.get("run", "")).strip()  # a link: preselects a run
    if linked:
        try:
            start = root.resolve(linked)
        except MilCytoError as err:
            st.error(str(err))
    if not runs:
        st.info(
            f"No run folder under `{root.path}`. Train one with `python -m mil_cyto.train "
            "--out runs/demo`, then open `streamlit run app/viewer.py -- --run runs/demo`."
        )
        return None
    first = runs.index(start) if start in runs else 0
    labels = [root.label(p) for p in runs]
    index = bar.selectbox(
        "run", range(len(runs)), index=first, format_func=lambda i: labels[i], key="run"
    )
    return Run.open(runs[index])


def main() -> None:
    st.set_page_config(page_title="mil-cyto review", layout="wide")
    identity = gate()  # stops here until a needed login is done
    st.sidebar.title("mil-cyto review")
    try:
        root, start = server_root(parse_args(sys.argv[1:]))
        run = pick_run(root, start)
        if run is None:
            return
        page = st.sidebar.radio("page", list(PAGES), key="page")
        if identity:
            st.session_state["reviewer"] = identity
            st.sidebar.markdown(f"reviewer: **{identity}** (from the login)")
        else:
            st.sidebar.text_input("reviewer (saved with marks)", key="reviewer")
        PAGES[page](run)
    except MilCytoError as err:
        st.error(str(err))


main()
