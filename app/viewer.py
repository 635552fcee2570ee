"""The mil-cyto review app: ``streamlit run app/viewer.py -- --run RUN [--root ROOT]``.

Pages: the test photos of a run (case list and photo view with attention, cell boxes,
top-k tiles, attributions and review marks), a new photo, and the run summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import streamlit as st

if str(Path(__file__).resolve().parent) not in sys.path:  # the panels beside this script
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from panels.cases import cases_page  # noqa: E402
from panels.summary import summary_page  # noqa: E402
from panels.upload import upload_page  # noqa: E402

from mil_cyto.errors import MilCytoError  # noqa: E402
from mil_cyto.review.runs import Run, find_runs  # noqa: E402

PAGES = {"Test photos": cases_page, "Run summary": summary_page, "New photo": upload_page}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamlit run app/viewer.py --")
    parser.add_argument("--run", type=Path, help="a run folder to open")
    parser.add_argument("--root", type=Path, help="a folder to search for run folders (runs/)")
    args, _ = parser.parse_known_args(argv)
    return args


def pick_run(args: argparse.Namespace) -> Run | None:
    """The sidebar run picker: run folders under a root, the ``--run`` one preselected."""
    default_root = args.root or (args.run.resolve().parent if args.run else Path("runs"))
    root = Path(st.sidebar.text_input("runs folder", str(default_root), key="root"))
    root = root.expanduser().resolve()
    runs = find_runs(root)
    if args.run is not None and args.run.resolve() not in runs:
        runs.insert(0, args.run.resolve())
    if not runs:
        st.info(
            f"No run folder under `{root}`. Train one with `python -m mil_cyto.train --out "
            "runs/demo`, then open `streamlit run app/viewer.py -- --run runs/demo`."
        )
        return None
    start = runs.index(args.run.resolve()) if args.run is not None else 0
    labels = [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in runs]
    index = st.sidebar.selectbox(
        "run", range(len(runs)), index=start, format_func=lambda i: labels[i], key="run"
    )
    return Run.open(runs[index])


def main() -> None:
    st.set_page_config(page_title="mil-cyto review", layout="wide")
    st.sidebar.title("mil-cyto review")
    args = parse_args(sys.argv[1:])
    try:
        run = pick_run(args)
        if run is None:
            return
        page = st.sidebar.radio("page", list(PAGES), key="page")
        st.sidebar.text_input("reviewer (saved with marks)", key="reviewer")
        PAGES[page](run)
    except MilCytoError as err:
        st.error(str(err))


main()
