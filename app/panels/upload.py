"""A new photo: upload, check, run through the trained model, show the same views."""

from __future__ import annotations

import hashlib

import streamlit as st

from mil_cyto.errors import MilCytoError
from mil_cyto.review.runs import Run, TileMap
from mil_cyto.review.upload import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, check_upload, predict_photo

from . import cache
from .photo import PhotoCase, photo_view


@st.cache_data(show_spinner=False, max_entries=8)
def _predict(run_path: str, model_stamp: float, digest: str, _rgb, name: str):
    """The model's reading of an uploaded photo, once per (run, model, photo content)."""
    model, recipe = cache.model(run_path, model_stamp)
    return predict_photo(model, recipe, _rgb, name=name)


def upload_page(run: Run) -> None:
    st.markdown("### A new photo")
    st.caption(
        f"PNG, JPEG or TIFF, up to {MAX_UPLOAD_BYTES // 2**20} MB and "
        f"{MAX_UPLOAD_PIXELS / 1e6:.0f} MP; grayscale and RGBA photos are converted to RGB. "
        f"It is tiled as `{run.name}` was trained and graded by its model."
    )
    # the limit is set three times: server.maxUploadSize (.streamlit/config.toml: the server
    # refuses a bigger body before reading it), the widget's own limit, and the size check
    upload = st.file_uploader(
        "photo", key="upload", max_upload_size=max(1, MAX_UPLOAD_BYTES // 2**20)
    )
    if upload is None:
        return
    if upload.size > MAX_UPLOAD_BYTES:
        st.error(
            f"{upload.name} is {upload.size / 2**20:.1f} MB, above the "
            f"{MAX_UPLOAD_BYTES / 2**20:.1f} MB limit; crop it into fields or save it as JPEG"
        )
        return
    data = upload.getvalue()
    try:
        model, recipe = cache.model_for(run)
        checked = check_upload(upload.name, data, tile_size=int(recipe["tiling"]["tile_size"]))
        for note in checked.notes:
            st.info(f"{upload.name}: {note}")
        digest = hashlib.sha1(data).hexdigest()
        with st.spinner("tiling and grading the photo ..."):
            pred = _predict(
                str(run.path),
                cache.stamp(run.path / "model.safetensors"),
                digest,
                checked.rgb,
                upload.name,
            )
    except MilCytoError as err:
        st.error(str(err))
        return
    except Exception as err:  # the page must not show a trace for a bad upload
        st.error(f"{upload.name} could not be graded ({type(err).__name__}: {err})")
        return
    rgb = checked.rgb
    photo_view(
        PhotoCase(
            key=f"upload:{digest[:12]}:{upload.name}",
            cache_key=f"{run.path}|{cache.stamp(run.path / 'model.safetensors')}|{digest}",
            title=f"{upload.name} ({rgb.shape[1]}x{rgb.shape[0]} px, {len(pred.coords)} tiles)",
            photo=rgb,
            tiles=TileMap(pred.coords, pred.attention, pred.scores, rgb.shape[:2]),
            probs=pred.probs,
            truth=None,
            cells=[],
            marks_file=None,
            model_loader=lambda: (model, recipe),
            instances=str(recipe["tiling"].get("instances", "grid")),
        )
    )
