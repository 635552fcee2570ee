"""The photo view: attention overlay, cell boxes, suspect cells, top-k tiles, attributions,
review marks. Shared by test photos and uploaded ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from mil_cyto.data.tiling import extract_tiles
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES
from mil_cyto.localization import CellBox
from mil_cyto.review import explain_bridge
from mil_cyto.review.marks import MARKS, Mark, read_marks, remove_mark, save_mark
from mil_cyto.review.overlay import (
    COLOUR_MAPS,
    Box,
    blend,
    crop,
    draw_boxes,
    normalise_map,
    top_k,
)
from mil_cyto.review.runs import TileMap

from . import cache

ATYPICAL = (0, 220, 255)  # cyan: annotated atypical cells
NORMAL_CELL = (60, 200, 60)  # green: annotated normal cells
SUSPECT = (255, 0, 200)  # magenta: suspect cells detected by explain
TOP_TILE = (255, 230, 0)  # yellow: top-k attention tiles
MARK_COLOURS = {"atypical": (230, 30, 30), "normal": (30, 160, 30), "unsure": (255, 140, 0)}


@dataclass
class PhotoCase:
    """What the view shows for one photo. ``key`` names it in marks (the image id for test
    photos); ``cache_key`` names it in caches (run, model and photo); ``probs`` ``(C,)``;
    ``truth`` None for uploads."""

    key: str
    cache_key: str
    title: str
    photo: np.ndarray
    tiles: TileMap
    probs: np.ndarray
    truth: str | None
    cells: list[CellBox]
    marks_file: Path | None
    model_loader: Any
    instances: str = "grid"  # the run's: grid tiles or nucleus crops ("cells")


def _probabilities(case: PhotoCase) -> str:
    """One line: the prediction, the truth when known, the class probabilities."""
    pred = GRADES[int(np.argmax(case.probs))]
    line = f"predicted **{pred}**"
    if case.truth is not None:
        verdict = "right" if pred == case.truth else "**wrong**"
        line += f", truth **{case.truth}** ({verdict})"
    probs = " · ".join(f"P({g}) {p:.2f}" for g, p in zip(GRADES, case.probs, strict=True))
    return f"{line} · {probs}"


def _controls() -> dict[str, Any]:
    """Overlay settings in the sidebar (shared by every photo)."""
    bar = st.sidebar
    bar.markdown("**Overlay**")
    return {
        "opacity": bar.slider("overlay opacity", 0.0, 1.0, 0.5, 0.05, key="opacity"),
        "cmap": bar.selectbox("colour map", COLOUR_MAPS, key="cmap"),
        "k": bar.slider("top-k tiles", 1, 24, 8, key="topk"),
        "show_cells": bar.checkbox("annotated atypical cells (cyan)", True, key="show_cells"),
        "show_normal": bar.checkbox("annotated normal cells (green)", False, key="show_normal"),
        "show_suspects": bar.checkbox(
            "suspect cells (magenta, from explain)", True, key="show_suspects"
        ),
        "show_marks": bar.checkbox("review marks", True, key="show_marks"),
    }


def _suspects(case: PhotoCase) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """Suspect cells from the attention logits, or None and the reason there are none."""
    if explain_bridge.status() is not None:
        return None, f"suspect cells: {explain_bridge.status()}"
    try:
        found = cache.suspects(
            case.cache_key, case.photo, case.tiles.coords, case.tiles.scores, case.instances
        )
    except MilCytoError as err:
        return None, f"suspect cells: {err}"
    return found, ""


def photo_view(case: PhotoCase) -> None:
    """Render one photo: probabilities, overlays, gallery, attributions and marks."""
    opts = _controls()
    st.markdown(f"#### {case.title}")
    st.markdown(_probabilities(case))
    tm = case.tiles
    heat = cache.heatmap(case.cache_key, tm.size_hw, tm.coords, tm.scores)
    top = top_k(tm.attention, opts["k"])
    marks = read_marks(case.marks_file) if case.marks_file else []
    marks = [m for m in marks if m.image == case.key]
    suspects, why_none = _suspects(case) if opts["show_suspects"] else (None, "")

    boxes: list[Box] = []
    if opts["show_cells"]:
        boxes += [Box(c.box, ATYPICAL, 2) for c in case.cells if c.atypical]
    if opts["show_normal"]:
        boxes += [Box(c.box, NORMAL_CELL, 1) for c in case.cells if not c.atypical]
    if suspects is not None:
        boxes += [Box(tuple(b), SUSPECT, 2) for b in suspects[0]]
    if opts["show_marks"]:
        boxes += [Box((m.x0, m.y0, m.x1, m.y1), MARK_COLOURS[m.mark], 3) for m in marks]
    parts = []
    if opts["show_cells"] and case.cells:
        parts.append(f"{sum(c.atypical for c in case.cells)} annotated atypical cells (cyan)")
    if suspects is not None:
        parts.append(f"{len(suspects[0])} suspect cells (magenta)")
    if opts["show_marks"] and marks:
        parts.append(f"{len(marks)} review marks")
    left, right = st.columns(2)
    left.image(
        draw_boxes(case.photo, boxes),
        caption="photo" + (": " + ", ".join(parts) if parts else ""),
        width="stretch",
    )
    overlay = blend(case.photo, heat, cmap=opts["cmap"], opacity=opts["opacity"])
    overlay = draw_boxes(overlay, [Box(tuple(tm.coords[i]), TOP_TILE, 2) for i in top])
    right.image(
        overlay,
        caption=f"attention (rank) overlay, top-{len(top)} tiles in yellow",
        width="stretch",
    )
    if case.cells and not any(c.atypical for c in case.cells) and opts["show_cells"]:
        st.caption("annotations: no atypical cell in this photo")
    if why_none:
        st.caption(why_none)

    _gallery(case, top)
    _attributions(case, opts)
    if case.marks_file is not None:
        _marks_form(case, top, suspects, marks)
    else:
        st.caption("review marks are kept for the run's test photos only")


def _gallery(case: PhotoCase, top: np.ndarray) -> None:
    tm = case.tiles
    n = len(tm.attention)
    st.markdown(f"**Top-{len(top)} tiles by attention** ({n} tiles; x1.0 = uniform attention)")
    cols = st.columns(min(len(top), 8) or 1)
    for rank, i in enumerate(top):
        x0, y0, _, _ = (int(v) for v in tm.coords[i])
        cols[rank % len(cols)].image(
            crop(case.photo, tm.coords[i]),
            caption=f"#{rank + 1} att {tm.attention[i]:.3f} (x{tm.attention[i] * n:.1f}) "
            f"at {x0},{y0}",
            width="stretch",
        )


def _attributions(case: PhotoCase, opts: dict[str, Any]) -> None:
    with st.expander("Attributions (Captum, on demand)", expanded=False):
        reason = explain_bridge.status()
        if reason is not None:
            st.info(reason)
            return
        try:
            methods = explain_bridge.methods()
        except MilCytoError as err:
            st.error(str(err))
            return
        c1, c2 = st.columns(2)
        method = c1.selectbox("method", methods, key="attr_method")
        default = int(np.argmax(case.probs))
        target = c2.selectbox("class", GRADES, index=default, key="attr_class")
        store = st.session_state.setdefault("attributions", {})
        wanted = (case.cache_key, method, target)
        if st.button("Compute attribution", key="attr_go"):
            try:
                with st.spinner(f"{method} for {target} ..."):
                    model, _ = case.model_loader()
                    tm = case.tiles
                    tiles = extract_tiles(case.photo, tm.coords.astype(np.int64))
                    store[wanted] = cache.attribution(
                        case.cache_key,
                        method,
                        GRADES.index(target),
                        model,
                        tiles,
                        tm.coords,
                        tm.size_hw,
                    )
            except MilCytoError as err:
                st.error(str(err))
            except Exception as err:  # a failing method must not take the page down
                st.error(f"{method} failed on this photo ({type(err).__name__}: {err})")
        result = store.get(wanted)
        if result is None:
            st.caption("pick a method and a class, then compute (cached once computed)")
            return
        shown = normalise_map(result.pixel_map, signed=result.signed)
        cmap = "coolwarm" if result.signed else opts["cmap"]
        st.image(
            blend(case.photo, shown, cmap=cmap, opacity=opts["opacity"]),
            caption=f"{method} for class {target}"
            + (" (red for, blue against; 99th-percentile scale)" if result.signed else ""),
            width="stretch",
        )
        order = top_k(result.tile_scores, 8)
        cols = st.columns(len(order) or 1)
        for rank, i in enumerate(order):
            cols[rank].image(
                crop(case.photo, case.tiles.coords[i]),
                caption=f"#{rank + 1} {result.tile_scores[i]:.3g}",
                width="stretch",
            )


def _marks_form(
    case: PhotoCase,
    top: np.ndarray,
    suspects: tuple[np.ndarray, np.ndarray] | None,
    marks: list[Mark],
) -> None:
    st.markdown("**Review marks** (saved to the run folder at once)")
    choices: list[tuple[str, tuple[int, int, int, int], str]] = []
    for rank, i in enumerate(top):
        box = tuple(int(v) for v in case.tiles.coords[i])
        choices.append(("tile", box, f"tile #{rank + 1} at {box[0]},{box[1]}"))
    for c in case.cells:
        box = tuple(int(round(v)) for v in c.box)
        choices.append(("cell", box, f"annotated {c.grade} cell at {box[0]},{box[1]}"))
    if suspects is not None:
        for b, s in zip(*suspects, strict=True):
            box = tuple(int(round(v)) for v in b)
            choices.append(("suspect", box, f"suspect cell at {box[0]},{box[1]} ({s:.2f})"))
    with st.form("marks_form", clear_on_submit=False):
        c1, c2 = st.columns([3, 2])
        c1.selectbox(
            "tile or cell",
            range(len(choices)),
            format_func=lambda j: choices[j][2],
            key="mark_target",
        )
        c2.radio("mark", [*MARKS, "remove"], horizontal=True, key="mark_value")
        st.form_submit_button("Save mark", on_click=_save_mark, args=(case, choices))
    message = st.session_state.pop("mark_message", None)
    if message is not None:
        (st.success if message[0] == "ok" else st.error)(message[1])
    if marks:
        st.dataframe(
            [
                {
                    "target": m.target,
                    "x0": m.x0,
                    "y0": m.y0,
                    "x1": m.x1,
                    "y1": m.y1,
                    "mark": m.mark,
                    "reviewer": m.reviewer,
                    "time": m.time,
                }
                for m in marks
            ],
            hide_index=True,
        )


def _save_mark(case: PhotoCase, choices: list[tuple[str, tuple[int, int, int, int], str]]) -> None:
    """Form callback: runs before the rerun, so the new mark shows on the photo at once."""
    if not choices or case.marks_file is None:
        return
    target, box, label = choices[st.session_state["mark_target"]]
    verdict = st.session_state["mark_value"]
    reviewer = str(st.session_state.get("reviewer", "")).strip()
    if not reviewer:
        st.session_state["mark_message"] = (
            "error",
            "type your name in the sidebar (reviewer) first: marks are kept per reviewer",
        )
        return
    try:
        if verdict == "remove":
            remove_mark(case.marks_file, (reviewer, case.key, *box))
            st.session_state["mark_message"] = ("ok", f"removed {reviewer}'s mark on {label}")
        else:
            save_mark(case.marks_file, Mark(case.key, *box, target, verdict, reviewer))
            st.session_state["mark_message"] = (
                "ok",
                f"saved: {label} = {verdict} by {reviewer} in {case.marks_file}",
            )
    except MilCytoError as err:
        st.session_state["mark_message"] = ("error", str(err))
