"""Painters of the atypical cells that carry a grade: CIN1 koilocytes and CIN2+ (HSIL) cells.

Same conventions as :mod:`mil_cyto.data.synthetic.painters`: centre ``(cx, cy)`` in px, ``um``
micrometres per pixel, optical density added to the canvas and the cell's box recorded.
"""

from __future__ import annotations

import math

import numpy as np

from mil_cyto.data.synthetic.canvas import Canvas
from mil_cyto.data.synthetic.geometry import bump, coverage, make_shape
from mil_cyto.data.synthetic.painters import cytoplasm_mix, draw_nucleus


def draw_koilocyte(cv: Canvas, rng: np.random.Generator, cx: float, cy: float, um: float) -> None:
    """CIN1 koilocyte: large cell, enlarged wrinkled hyperchromatic nucleus (2-3x the area of an
    intermediate nucleus), sometimes two, inside a sharp clear halo with a dense rim."""
    diam = rng.uniform(50, 68)
    shape = make_shape(
        rng,
        cv.lut,
        diam / um / 2,
        aspect=(0.65, 1.0),
        irregularity=0.06,
        orders=(2, 3, 4),
        poly=rng.uniform(0.2, 0.7),
    )
    cyto_od = rng.uniform(0.18, 0.30)
    mix = cytoplasm_mix(rng, 0.85 if rng.random() < 0.7 else 0.15)
    rn = 7.6 * math.sqrt(rng.uniform(2.0, 3.0)) / um / 2
    binucleate = rng.random() < 0.3
    if binucleate:
        rn *= 0.85
    rmin = min(shape.a, shape.b)
    off_r = rng.uniform(0, 0.12) * rmin
    off_a = rng.uniform(0, 2 * math.pi)
    hx, hy = off_r * math.cos(off_a), off_r * math.sin(off_a)  # halo centre, local coords
    sep = rn * rng.uniform(0.9, 1.15) if binucleate else 0.0
    halo_r = min(rn * rng.uniform(1.8, 2.5) + sep, 0.7 * rmin)
    halo = make_shape(rng, cv.lut, halo_r, aspect=(0.7, 1.0), irregularity=0.07, orders=(2, 3, 4))

    w = cv.window(cx, cy, *shape.half_size(3.0))
    if w is None:
        return
    win, xs, ys = w
    d = shape.sdf(xs, ys) + np.float32(rng.uniform(0.3, 0.9)) * cv.medium[win]
    m = coverage(d)
    dh = halo.sdf(xs - np.float32(hx), ys - np.float32(hy)) + 0.3 * cv.medium[win]
    hole = coverage(dh, 0.6)
    ring_w = rng.uniform(2.0, 3.5) / um
    ring = bump((dh - ring_w) * (1.0 / ring_w)) * (1.0 - hole)
    rim = bump((d + 2.0) * 0.5)
    clear = rng.uniform(0.08, 0.35)
    dens = (
        (1.0 + 0.15 * cv.coarse[win]) * (1.0 - (1.0 - clear) * hole)
        + rng.uniform(0.35, 0.8) * ring
        + 0.5 * rim
    )
    cv.add_mix(mix, win, np.float32(cyto_od) * m * dens)
    _draw_koilocyte_nuclei(cv, rng, (cx, cy), (hx, hy), rn, sep if binucleate else None)
    cv.record(win, m, "CIN1", "koilocyte")


def _draw_koilocyte_nuclei(
    cv: Canvas,
    rng: np.random.Generator,
    centre: tuple[float, float],
    halo: tuple[float, float],
    rn: float,
    sep: float | None,
) -> None:
    """The koilocyte's nucleus (radius about ``rn`` px) at the halo centre (``halo``: offset in
    px from the cell ``centre``), or two nuclei ``sep`` px either side of it (binucleate)."""
    (cx, cy), (hx, hy) = centre, halo
    n_od = rng.uniform(0.95, 1.3)
    ang = rng.uniform(0, 2 * math.pi)
    centres = (
        [(hx, hy)]
        if sep is None
        else [(hx + s * sep * math.cos(ang), hy + s * sep * math.sin(ang)) for s in (-1.0, 1.0)]
    )
    for ox, oy in centres:
        nshape = make_shape(
            rng,
            cv.lut,
            rn * rng.uniform(0.92, 1.08),
            aspect=(0.7, 1.0),
            irregularity=0.07,
            orders=(3, 5, 7, 9),
        )
        draw_nucleus(
            cv, cx + ox, cy + oy, nshape, n_od, vesicular=0.08, chromatin=0.3, granular=0.15
        )


def draw_hsil(
    cv: Canvas, rng: np.random.Generator, cx: float, cy: float, um: float, diam_um: float
) -> None:
    """CIN2+ cell: small (15-26 um), nucleus 60-85% of the cell diameter, strongly
    hyperchromatic, irregular contour, coarse granular chromatin."""
    r = diam_um / um / 2
    shape = make_shape(
        rng,
        cv.lut,
        r,
        aspect=(0.7, 1.0),
        irregularity=0.07,
        orders=(2, 3, 4),
        poly=rng.uniform(0.0, 0.5),
    )
    cyto_od = rng.uniform(0.26, 0.42)
    mix = cytoplasm_mix(rng, 0.85 if rng.random() < 0.8 else 0.3)
    w = cv.window(cx, cy, *shape.half_size(3.0))
    if w is None:
        return
    win, xs, ys = w
    d = shape.sdf(xs, ys) + np.float32(rng.uniform(0.3, 0.8)) * cv.medium[win]
    m = coverage(d)
    dens = 1.0 + 0.12 * cv.coarse[win] + 0.4 * bump((d + 1.5) * 0.6)
    cv.add_mix(mix, win, np.float32(cyto_od) * m * dens)

    ratio = rng.uniform(0.6, 0.85)
    rn = r * ratio
    slack = max(0.0, min(shape.a, shape.b) - rn)
    off_r = rng.uniform(0, 0.5) * slack
    off_a = rng.uniform(0, 2 * math.pi)
    nshape = make_shape(
        rng,
        cv.lut,
        rn,
        aspect=(0.7, 1.0),
        irregularity=rng.uniform(0.05, 0.11),
        orders=(2, 3, 4, 5, 7),
    )
    draw_nucleus(
        cv,
        cx + off_r * math.cos(off_a),
        cy + off_r * math.sin(off_a),
        nshape,
        rng.uniform(1.15, 1.6),
        chromatin=0.3,
        granular=0.45,
    )
    cv.record(win, m, "CIN2+", "hsil")
