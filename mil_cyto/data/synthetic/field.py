"""One synthetic field photo: how many cells of each kind, where they go, painted and rendered.

:func:`draw_field` is the whole photo in memory: ``(image, cells)`` with the (H, W, 3) uint8
RGB photo and one box dict per drawn cell (the rows of ``cells.csv``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mil_cyto.data.synthetic.atypical import draw_hsil, draw_koilocyte
from mil_cyto.data.synthetic.canvas import Canvas, positions, render
from mil_cyto.data.synthetic.painters import draw_debris, draw_inflammatory, draw_squamous
from mil_cyto.data.synthetic.stain import Stain
from mil_cyto.errors import MilCytoError
from mil_cyto.labels import GRADES

_REF_FIELD_UM2 = 800 * 600 * 0.7 * 0.7  # physical area of the reference 800x600 px field


@dataclass(frozen=True)
class _Counts:
    """Cells of each kind in one photo, and the share of superficial among squamous cells."""

    squamous: int
    parabasal: int
    inflammatory: int
    koilocytes: int
    hsil: int
    p_superficial: float


def draw_field(
    rng: np.random.Generator,
    width: int,
    height: int,
    grade: str,
    stain: Stain,
    *,
    cells_per_field: tuple[int, int] = (40, 150),
    atypical_per_field: tuple[int, int] = (1, 5),
    um_per_px: float = 0.7,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one Pap-smear field photo of ``grade``.

    Args:
        rng: the photo's random stream (all randomness of the photo comes from it).
        width, height: photo size in px.
        grade: one of ``GRADES``: ``normal`` has no atypical cell, ``CIN1`` 1-5 koilocytes,
            ``CIN2+`` 1-5 HSIL cells (single or in groups of 2-3) plus 0-2 koilocytes.
        stain: the slide's stain.
        cells_per_field: cell count range for an 800x600 px field at 0.7 um/px (scaled by
            physical area otherwise); debris is drawn on top.
        atypical_per_field: range of atypical cells of ``grade`` in an abnormal photo.
        um_per_px: micrometres per pixel.

    Returns:
        ``(image, cells)``: image (H, W, 3) uint8 RGB; cells: one dict per drawn cell with
        ``x0, y0, x1, y1`` (int px, x1/y1 exclusive, clipped to the image), ``grade``, ``kind``.
    """
    if grade not in GRADES:
        raise MilCytoError(f"unknown grade {grade!r}; expected one of {', '.join(GRADES)}")
    um = float(um_per_px)
    cv = Canvas(rng, width, height, stain)
    scale = width * height * um * um / _REF_FIELD_UM2
    counts = _cell_counts(rng, grade, scale, cells_per_field, atypical_per_field)
    squam_xy = _draw_squamous_cells(cv, rng, counts, um)
    _draw_inflammatory_cells(cv, rng, counts.inflammatory, um)
    n_debris = int(rng.poisson(1.5 * max(scale, 0.2)))
    for x, y in rng.uniform((0, 0), (width, height), (n_debris, 2)):
        draw_debris(cv, rng, float(x), float(y), um)
    for _ in range(counts.koilocytes):
        draw_koilocyte(cv, rng, *_atypical_centre(cv, rng, squam_xy, um), um)
    _draw_hsil_groups(cv, rng, counts.hsil, squam_xy, um)
    return render(cv, rng), cv.cells


def _cell_counts(
    rng: np.random.Generator,
    grade: str,
    scale: float,
    cells_per_field: tuple[int, int],
    atypical_per_field: tuple[int, int],
) -> _Counts:
    """Draw the photo's cell counts; ``scale`` is its physical area over the reference field's."""
    n_total = max(3, round(int(rng.integers(cells_per_field[0], cells_per_field[1] + 1)) * scale))
    n_atyp = (
        0
        if grade == "normal"
        else int(rng.integers(atypical_per_field[0], atypical_per_field[1] + 1))
    )
    n_koilo = n_atyp if grade == "CIN1" else (int(rng.integers(0, 3)) if grade == "CIN2+" else 0)
    n_hsil = n_atyp if grade == "CIN2+" else 0
    n_inflam = round(rng.uniform(0.0, 0.3) ** 1.5 / 0.3**0.5 * n_total)
    n_para = min(int(rng.integers(0, 5)), round(0.06 * n_total))
    n_squam = max(1, n_total - n_hsil - n_koilo - n_inflam - n_para)
    p_superficial = rng.uniform(0.25, 0.75)
    return _Counts(n_squam, n_para, n_inflam, n_koilo, n_hsil, p_superficial)


def _draw_squamous_cells(
    cv: Canvas, rng: np.random.Generator, counts: _Counts, um: float
) -> np.ndarray:
    """Superficial / intermediate, then parabasal cells; returns the (n, 2) squamous centres."""
    squam_xy = positions(rng, counts.squamous, cv.width, cv.height)
    for x, y in squam_xy:
        kind = "superficial" if rng.random() < counts.p_superficial else "intermediate"
        draw_squamous(cv, rng, float(x), float(y), kind, um)
    for x, y in positions(rng, counts.parabasal, cv.width, cv.height):
        draw_squamous(cv, rng, float(x), float(y), "parabasal", um)
    return squam_xy


def _draw_inflammatory_cells(cv: Canvas, rng: np.random.Generator, n: int, um: float) -> None:
    """``n`` inflammatory cells in small clusters."""
    width, height = cv.width, cv.height
    left = n
    while left > 0:
        size = min(left, int(rng.geometric(0.25)))
        ccx, ccy = rng.uniform(0, width), rng.uniform(0, height)
        spread = (4.0 + 3.0 * math.sqrt(size)) / um
        for _ in range(size):
            x = float(np.clip(ccx + rng.normal(0, spread), 0, width - 1))
            y = float(np.clip(ccy + rng.normal(0, spread), 0, height - 1))
            draw_inflammatory(cv, rng, x, y, um)
        left -= size


def _atypical_centre(
    cv: Canvas, rng: np.random.Generator, squam_xy: np.ndarray, um: float
) -> tuple[float, float]:
    """Centre (px) of an atypical cell: half of them among the squamous cells (same smear
    streaks), half anywhere; kept 18 um (at most a quarter of the photo) from the borders."""
    width, height = cv.width, cv.height
    margin_x = min(18.0 / um, width / 4)
    margin_y = min(18.0 / um, height / 4)
    if rng.random() < 0.5:
        x, y = squam_xy[int(rng.integers(0, len(squam_xy)))] + rng.normal(0, 15.0 / um, 2)
    else:
        x, y = rng.uniform(0, width), rng.uniform(0, height)
    return (
        float(np.clip(x, margin_x, width - margin_x)),
        float(np.clip(y, margin_y, height - margin_y)),
    )


def _draw_hsil_groups(
    cv: Canvas, rng: np.random.Generator, n: int, squam_xy: np.ndarray, um: float
) -> None:
    """``n`` HSIL cells alone or in small groups of 2-3 touching cells."""
    left = n
    while left > 0:
        size = min(left, 1 if rng.random() < 0.6 else int(rng.integers(2, 4)))
        x, y = _atypical_centre(cv, rng, squam_xy, um)
        prev_r = 0.0
        for i in range(size):
            diam = rng.uniform(15.0, 26.0)
            if i:
                dist = (prev_r + diam / um / 2) * rng.uniform(0.75, 0.95)
                a = rng.uniform(0, 2 * math.pi)
                x = float(np.clip(x + dist * math.cos(a), 0, cv.width - 1))
                y = float(np.clip(y + dist * math.sin(a), 0, cv.height - 1))
            draw_hsil(cv, rng, x, y, um, diam)
            prev_r = diam / um / 2
        left -= size
