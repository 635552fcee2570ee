"""The run summary: metrics table, confusion matrix, localization, comparison table, and the
reviewer marks exported as cell annotations."""

from __future__ import annotations

import csv
import math
import re

import streamlit as st

from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES
from mil_cyto.review.agreement import agreement_table
from mil_cyto.review.marks import (
    cells_csv_text,
    marks_as_cells,
    marks_csv_text,
    marks_path,
    read_marks,
    reviewers,
    write_cells_csv,
)
from mil_cyto.review.overlay import top_k
from mil_cyto.review.runs import Run

from . import cache


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value))


def metrics_rows(metrics: dict) -> list[dict[str, str]]:
    """One row per grade plus a mean row: sensitivity, specificity, support (test photos)."""
    rows = []
    for grade in GRADES:
        m = metrics.get("per_class", {}).get(grade, {})
        rows.append(
            {
                "grade": grade,
                "sensitivity": _fmt(m.get("sensitivity")),
                "specificity": _fmt(m.get("specificity")),
                "test photos": _fmt(m.get("support")),
            }
        )
    rows.append(
        {
            "grade": "mean (macro)",
            "sensitivity": _fmt(metrics.get("macro_sensitivity")),
            "specificity": _fmt(metrics.get("macro_specificity")),
            "test photos": _fmt(metrics.get("n_test")),
        }
    )
    return rows


def summary_page(run: Run) -> None:
    metrics = run.metrics()
    st.markdown(f"### Run `{run.name}`")
    st.caption(str(run.path))
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("accuracy", _fmt(metrics.get("accuracy")))
    c2.metric("mean sensitivity", _fmt(metrics.get("macro_sensitivity")))
    c3.metric("mean specificity", _fmt(metrics.get("macro_specificity")))
    c4.metric("test photos", _fmt(metrics.get("n_test")))
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Metrics** (one-vs-rest per grade, on patient-disjoint test photos)")
        st.table(metrics_rows(metrics))
        loc = metrics.get("localization")
        if loc:
            st.markdown("**Localization** (against annotated cells, never used in training)")
            st.table(
                [
                    {
                        "instance AUROC": _fmt(loc.get("instance_auroc")),
                        "pointing game": _fmt(loc.get("pointing_game")),
                        "abnormal photos": _fmt(loc.get("n_images")),
                    }
                ]
            )
    with right:
        cm = run.path / "confusion_matrix.png"
        if cm.is_file():
            st.image(str(cm), caption="confusion matrix (rows truth, columns prediction)")
    _comparison(run)
    _marks_export(run)
    report = run.path / "report.md"
    if report.is_file():
        with st.expander("report.md"):
            st.markdown(report.read_text(encoding="utf-8"))


def _comparison(run: Run) -> None:
    path = run.comparison_path()
    if path is None:
        st.caption("no comparison table (comparison.csv in the run folder or beside it)")
        return
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    st.markdown(f"**Comparison** (`{path}`)")
    st.dataframe(rows, hide_index=True)


EVERYONE = "everyone"


def _slug(name: str) -> str:
    """A reviewer's name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "unnamed"


def _marks_export(run: Run) -> None:
    path = marks_path(run.path)
    try:
        marks = read_marks(path)
    except MilCytoError as err:
        st.error(str(err))
        return
    names = reviewers(marks)
    st.markdown(
        f"**Review marks**: {len(marks)} in `{path.name}`, by {len(names)} reviewer"
        f"{'' if len(names) == 1 else 's'}"
    )
    if not marks:
        return
    rows = cache.predictions(str(run.path), cache.stamp(run.path / "predictions.csv"))
    who = st.selectbox(
        "export the marks of",
        [EVERYONE, *names],
        format_func=lambda n: n or "(no name)",
        key="export_reviewer",
    )
    chosen = marks if who == EVERYONE else [m for m in marks if m.reviewer == who]
    suffix = "" if who == EVERYONE else f"_{_slug(who)}"
    cells = marks_as_cells(chosen, {r["image"]: r["label"] for r in rows})
    st.caption(f"{len(chosen)} marks, {len(cells)} usable as cell annotations (unsure left out)")
    c1, c2, c3 = st.columns(3)
    c1.download_button(
        "Download as cells.csv", cells_csv_text(cells), f"review_cells{suffix}.csv", "text/csv"
    )
    c2.download_button(
        "Download the marks", marks_csv_text(chosen), f"review_marks{suffix}.csv", "text/csv"
    )
    if c3.button(f"Write review_cells{suffix}.csv into the run folder"):
        out = run.path / f"review_cells{suffix}.csv"
        write_cells_csv(out, cells)
        st.success(f"wrote {out}")
    _agreement(run, marks)


def _agreement(run: Run, marks: list) -> None:
    k = int(st.session_state.get("topk", 8))
    maps = cache.tile_maps(str(run.path), cache.stamp(run.path / "attention.h5"))
    top = {name: tm.coords[top_k(tm.attention, k)] for name, tm in maps.items()}
    table = agreement_table(marks, top, k=k)
    st.markdown(
        "**Agreement** (Cohen's kappa on the boxes both sides judged; the model calls a box "
        f"atypical when its centre lies in one of the photo's top-{k} attention tiles)"
    )
    st.dataframe(
        [
            {
                "between": r["between"],
                "shared boxes": r["shared boxes"],
                "agree": "-" if math.isnan(r["agree"]) else f"{r['agree']:.2f}",
                "kappa": "-" if math.isnan(r["kappa"]) else f"{r['kappa']:.3f}",
            }
            for r in table
        ],
        hide_index=True,
        key="agreement_table",
    )
