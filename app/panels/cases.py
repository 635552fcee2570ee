"""The case list of a run's test photos, and the photo picked from it."""

from __future__ import annotations

import numpy as np
import streamlit as st

from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES
from mil_cyto.review.cases import OUTCOMES, SORTS, case_list
from mil_cyto.review.marks import marks_path
from mil_cyto.review.runs import Run

from . import cache
from .photo import PhotoCase, photo_view


def cases_page(run: Run) -> None:
    """Filters, the sortable table of test photos, and the selected photo's view."""
    rows = cache.predictions(str(run.path), cache.stamp(run.path / "predictions.csv"))
    bar = st.sidebar
    bar.markdown("**Case list**")
    sort = bar.selectbox(
        "sort by",
        list(SORTS),
        key="sort",
        help="\n\n".join(f"**{k}**: {v}" for k, v in SORTS.items()),
    )
    truth = bar.multiselect("true grade", GRADES, default=list(GRADES), key="truth")
    predicted = bar.multiselect("predicted grade", GRADES, default=list(GRADES), key="predicted")
    outcome = bar.radio("outcome", OUTCOMES, horizontal=True, key="outcome")
    cases = case_list(rows, sort=sort, truth=truth, predicted=predicted, outcome=outcome)
    right = sum(c["correct"] for c in cases)
    st.markdown(
        f"#### Test photos of `{run.name}`: {len(cases)} of {len(rows)} shown, "
        f"{right} right, {len(cases) - right} wrong"
    )
    if not cases:
        st.info("no test photo matches these filters")
        return
    st.dataframe(
        [
            {
                "image": c["image"],
                "patient": c.get("patient_id", ""),
                "truth": c["label"],
                "predicted": c["pred"],
                **{f"P({g})": round(c[f"p_{g}"], 2) for g in GRADES},
                "suspicion": round(c["suspicion"], 2),
                "right": "yes" if c["correct"] else "no",
            }
            for c in cases
        ],
        hide_index=True,
        height=min(35 * (len(cases) + 1) + 3, 220),
        key="case_table",
    )
    names = [c["image"] for c in cases]
    by_name = {c["image"]: c for c in cases}
    image = bar.selectbox(
        "photo",
        names,
        key="photo",
        format_func=lambda n: (
            f"{n}  (truth {by_name[n]['label']}, predicted {by_name[n]['pred']}"
            f"{'' if by_name[n]['correct'] else ', WRONG'})"
        ),
    )
    _show_photo(run, by_name[image])


def _show_photo(run: Run, row: dict) -> None:
    image = row["image"]
    maps = cache.tile_maps(str(run.path), cache.stamp(run.path / "attention.h5"))
    if image not in maps:
        st.error(f"{image} has no attention in {run.path / 'attention.h5'}; rerun the training")
        return
    try:
        path = run.photo_path(image)
        photo = cache.photo(str(path), cache.stamp(path))
    except MilCytoError as err:
        st.error(
            f"{err}. The photo is read from the run's data folder (config.json "
            "'data_resolved'); move the data back or fix that path."
        )
        return
    cells_path = run.cells_path()
    cells = []
    if cells_path is not None:
        try:
            cells = cache.cells(str(cells_path), cache.stamp(cells_path)).get(image, [])
        except MilCytoError as err:
            st.warning(f"cell annotations not shown: {err}")
    photo_view(
        PhotoCase(
            key=image,
            cache_key=f"{run.path}|{cache.stamp(run.path / 'model.safetensors')}|{image}",
            title=image,
            photo=photo,
            tiles=maps[image],
            probs=np.array([row[f"p_{g}"] for g in GRADES]),
            truth=row["label"],
            cells=cells,
            marks_file=marks_path(run.path),
            model_loader=lambda: cache.model_for(run),
            instances=str(run.config().get("instances", "grid")),
        )
    )
