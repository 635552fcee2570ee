"""The run summary: metrics table, confusion matrix, localization, comparison table, and the
reviewer marks exported as cell annotations."""

from __future__ import annotations

import csv

import streamlit as st

from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES
from mil_cyto.review.marks import (
    cells_csv_text,
    marks_as_cells,
    marks_path,
    read_marks,
    write_cells_csv,
)
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


def _marks_export(run: Run) -> None:
    path = marks_path(run.path)
    try:
        marks = read_marks(path)
    except MilCytoError as err:
        st.error(str(err))
        return
    st.markdown(f"**Review marks**: {len(marks)} in `{path.name}`")
    if not marks:
        return
    rows = cache.predictions(str(run.path), cache.stamp(run.path / "predictions.csv"))
    cells = marks_as_cells(marks, {r["image"]: r["label"] for r in rows})
    st.caption(f"{len(cells)} usable as cell annotations (unsure marks left out)")
    c1, c2 = st.columns(2)
    c1.download_button(
        "Download as cells.csv", cells_csv_text(cells), "review_cells.csv", "text/csv"
    )
    if c2.button("Write review_cells.csv into the run folder"):
        write_cells_csv(run.path / "review_cells.csv", cells)
        st.success(f"wrote {run.path / 'review_cells.csv'}")
