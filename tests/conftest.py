"""Shared test helpers: tiny synthetic Pap-smear-like photos and a network guard."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import configuration as hypothesis_configuration
from PIL import Image

# Hypothesis keeps caches (charmaps, examples) in ./.hypothesis by default; keep the checkout
# clean by pointing it at the system temp folder instead.
hypothesis_configuration.set_hypothesis_home_dir(
    Path(tempfile.gettempdir()) / "mil-cyto-hypothesis"
)


def make_blob_photo(
    height: int = 128,
    width: int = 128,
    blobs: Sequence[tuple[int, int, int]] = ((40, 40, 10), (90, 80, 12)),
    *,
    seed: int = 0,
) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 photo: near-white glass with dark round "cells".

    ``blobs`` are ``(cx, cy, radius)`` in pixels; a little noise keeps it photo-like.
    """
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 240, dtype=np.int16)
    image += rng.integers(-4, 5, size=image.shape, dtype=np.int16)
    yy, xx = np.mgrid[0:height, 0:width]
    for cx, cy, r in blobs:
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        image[inside] = (90, 40, 110)
    return np.clip(image, 0, 255).astype(np.uint8)


def save_png(path: Path, array: np.ndarray) -> Path:
    """Save an array as PNG (creating parent folders) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def blob_photo() -> Callable[..., np.ndarray]:
    """The :func:`make_blob_photo` factory (fixtures keep tests free of conftest imports)."""
    return make_blob_photo


@pytest.fixture
def write_png() -> Callable[[Path, np.ndarray], Path]:
    """The :func:`save_png` helper."""
    return save_png


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a network connection (and tell HF libraries to stay offline)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"test tried to reach the network: {args!r}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
