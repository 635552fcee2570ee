"""Cached loaders: each file is read once per change (keyed by path and modification time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from mil_cyto.checkpoint import load_model
from mil_cyto.data.images import load_rgb
from mil_cyto.localization import CellBox, read_cells
from mil_cyto.review import explain_bridge
from mil_cyto.review.overlay import attention_map
from mil_cyto.review.runs import Run, TileMap


def stamp(path: Path) -> float:
    """Modification time of ``path`` (0 when absent): part of every cache key."""
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(show_spinner="loading the trained model ...", max_entries=4)
def model(run_path: str, _stamp: float) -> tuple[Any, dict[str, Any]]:
    """``(MILModel in eval mode on CPU, recipe)`` of a run (one copy shared by sessions)."""
    return load_model(Path(run_path))


def model_for(run: Run) -> tuple[Any, dict[str, Any]]:
    return model(str(run.path), stamp(run.path / "model.safetensors"))


@st.cache_data(show_spinner=False, max_entries=8)
def predictions(run_path: str, _stamp: float) -> list[dict[str, Any]]:
    return Run(Path(run_path)).predictions()


@st.cache_data(show_spinner=False, max_entries=8)
def tile_maps(run_path: str, _stamp: float) -> dict[str, TileMap]:
    return Run(Path(run_path)).tile_maps()


@st.cache_data(show_spinner=False, max_entries=12)
def photo(path: str, _stamp: float) -> np.ndarray:
    """A photo as ``(H, W, 3)`` uint8 (raises MilCytoError naming the file)."""
    return load_rgb(Path(path))


@st.cache_data(show_spinner=False, max_entries=4)
def cells(path: str, _stamp: float) -> dict[str, list[CellBox]]:
    return read_cells(Path(path))


@st.cache_data(show_spinner=False, max_entries=32)
def heatmap(
    key: str, size_hw: tuple[int, int], coords: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """Rank attention map ``(H, W)`` of one photo (``key`` names it in the cache)."""
    return attention_map(size_hw, coords, scores)


@st.cache_data(show_spinner=False, max_entries=64)
def attribution(
    key: str,
    method: str,
    target: int,
    _model: Any,
    _tiles: np.ndarray,
    _coords: np.ndarray,
    size_hw: tuple[int, int],
) -> explain_bridge.Attribution:
    """One attribution map, computed once per (photo key, method, class)."""
    return explain_bridge.attribute(_model, _tiles, _coords, method, target, size_hw)


@st.cache_data(show_spinner="finding suspect cells ...", max_entries=32)
def suspects(
    key: str, _photo: np.ndarray, coords: np.ndarray, scores: np.ndarray, instances: str
) -> tuple[np.ndarray, np.ndarray]:
    """Suspect cells of one photo's attention (``key`` names the photo in the cache)."""
    size = int(coords[0, 2] - coords[0, 0])
    return explain_bridge.suspect_cells(_photo, coords, scores, size, instances=instances)
