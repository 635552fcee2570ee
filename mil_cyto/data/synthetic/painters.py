"""Painters of the normal cells of a smear: squamous (superficial, intermediate, parabasal),
inflammatory cells and debris, and the nucleus and cytoplasm helpers every cell uses.

Each painter adds optical density to a :class:`~mil_cyto.data.synthetic.canvas.Canvas` at a
centre ``(cx, cy)`` in px and records the cell's box; ``um`` is micrometres per pixel.
"""

from __future__ import annotations

import math

import numpy as np

from mil_cyto.data.synthetic.canvas import Canvas
from mil_cyto.data.synthetic.geometry import Shape, bump, coverage, make_shape
from mil_cyto.data.synthetic.stain import HAEM


def draw_nucleus(
    cv: Canvas,
    cx: float,
    cy: float,
    shape: Shape,
    od: float,
    *,
    vesicular: float = 0.0,
    chromatin: float = 0.1,
    granular: float = 0.0,
    edge: float = 0.8,
) -> None:
    """Add a haematoxylin nucleus of peak OD ``od``.

    ``vesicular`` lightens the interior against a darker membrane, ``chromatin`` sets the fine
    grain, ``granular`` adds coarse chromatin clumps (hyperchromatic HSIL nuclei).
    """
    w = cv.window(cx, cy, *shape.half_size())
    if w is None:
        return
    win, xs, ys = w
    d = shape.sdf(xs, ys)
    m = coverage(d, edge)
    dens = 1.0 + chromatin * cv.fine[win]
    if vesicular > 0:
        membrane = bump((d + 1.0) * (1.0 / 1.3))
        dens = dens - vesicular * (1.0 - membrane)
    if granular > 0:
        dens = dens + granular * (np.maximum(cv.medium[win] - 0.2, 0.0) - 0.35)
    cv.add(HAEM, win, np.float32(od) * m * np.maximum(dens, 0.05))


def _folds(
    rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, radius: float, n: int
) -> np.ndarray | float:
    """Thin dark fold lines starting inside the cell and running to its edge (density units)."""
    out: np.ndarray | float = 0.0
    for _ in range(n):
        r0 = radius * math.sqrt(rng.uniform(0.0, 0.4))
        a0 = rng.uniform(0, 2 * math.pi)
        px, py = r0 * math.cos(a0), r0 * math.sin(a0)
        al = rng.uniform(0, 2 * math.pi)
        ca, sa = math.cos(al), math.sin(al)
        width = rng.uniform(1.2, 2.8)
        dist = (xs - px) * sa - (ys - py) * ca
        along = (xs - px) * ca + (ys - py) * sa
        line = bump(dist * (1.0 / width))
        line *= np.clip(0.5 + 0.2 * along, 0.0, 1.0)
        out = out + rng.uniform(0.5, 1.3) * line
    return out


def cytoplasm_mix(rng: np.random.Generator, cyanophilic: float) -> tuple[float, float, float]:
    """Dye shares (haematoxylin, eosin, light green) of a cytoplasm; ``cyanophilic`` in [0, 1]."""
    g = float(np.clip(cyanophilic + rng.normal(0, 0.08), 0.0, 1.0))
    return 0.04, 1.0 - g, g


def draw_squamous(
    cv: Canvas, rng: np.random.Generator, cx: float, cy: float, kind: str, um: float
) -> None:
    """Superficial, intermediate or parabasal cell (``um`` = micrometres per pixel)."""
    if kind == "superficial":
        diam, cyto_od = rng.uniform(45, 65), rng.uniform(0.10, 0.22)
        mix = cytoplasm_mix(rng, 0.1 if rng.random() < 0.8 else 0.6)
        bank = cv.bank(rng, kind, poly=(0.55, 1.0), irregularity=0.05, orders=(2, 3, 5))
        shape = make_shape(rng, cv.lut, diam / um / 2, aspect=(0.6, 1.0), bank=bank)
        n_folds = min(int(rng.poisson(0.7)), 2)
    elif kind == "intermediate":
        diam, cyto_od = rng.uniform(42, 62), rng.uniform(0.12, 0.26)
        mix = cytoplasm_mix(rng, 0.9 if rng.random() < 0.85 else 0.4)
        bank = cv.bank(rng, kind, poly=(0.2, 0.8), irregularity=0.06, orders=(2, 3, 4))
        shape = make_shape(rng, cv.lut, diam / um / 2, aspect=(0.6, 1.0), bank=bank)
        n_folds = min(int(rng.poisson(0.7)), 2)
    else:  # parabasal: small round dense cyanophilic cell, moderate N/C
        diam, cyto_od = rng.uniform(20, 25), rng.uniform(0.26, 0.40)
        mix = cytoplasm_mix(rng, 0.85)
        bank = cv.bank(rng, kind, irregularity=0.04, orders=(2, 3))
        shape = make_shape(rng, cv.lut, diam / um / 2, aspect=(0.8, 1.0), bank=bank)
        n_folds = 0
    w = cv.window(cx, cy, *shape.half_size(3.0))
    if w is None:
        return
    win, xs, ys = w
    d = shape.sdf(xs, ys) + np.float32(rng.uniform(0.3, 0.9)) * cv.medium[win]
    m = coverage(d)
    rim_w = rng.uniform(1.5, 3.5)
    rim = bump((d + rim_w) * (1.0 / rim_w))
    dens = 1.0 + rng.uniform(0.08, 0.2) * cv.coarse[win] + rng.uniform(0.3, 0.9) * rim
    if n_folds:
        dens = dens + _folds(rng, xs, ys, min(shape.a, shape.b), n_folds)
    cv.add_mix(mix, win, np.float32(cyto_od) * m * dens)

    off_r = rng.uniform(0, 0.25) * min(shape.a, shape.b)
    off_a = rng.uniform(0, 2 * math.pi)
    nx, ny = cx + off_r * math.cos(off_a), cy + off_r * math.sin(off_a)
    if kind == "superficial":  # tiny dark pyknotic nucleus ~5 um
        nshape = make_shape(rng, cv.lut, rng.uniform(4.2, 6.0) / um / 2, aspect=(0.85, 1.0))
        draw_nucleus(cv, nx, ny, nshape, rng.uniform(1.1, 1.6), chromatin=0.05)
    elif kind == "intermediate":  # small vesicular nucleus ~7-8 um, faint chromatin
        nshape = make_shape(rng, cv.lut, rng.uniform(6.8, 8.6) / um / 2, aspect=(0.75, 1.0))
        draw_nucleus(cv, nx, ny, nshape, rng.uniform(0.5, 0.75), vesicular=0.3, chromatin=0.2)
    else:  # parabasal nucleus ~8-9 um, smooth
        nshape = make_shape(rng, cv.lut, rng.uniform(8.0, 9.2) / um / 2, aspect=(0.8, 1.0))
        draw_nucleus(cv, nx, ny, nshape, rng.uniform(0.65, 0.9), vesicular=0.25, chromatin=0.2)
    cv.record(win, m, "normal", kind)


def draw_inflammatory(
    cv: Canvas, rng: np.random.Generator, cx: float, cy: float, um: float
) -> None:
    """Neutrophil (2-4 dark lobes in a pale cell, 9-12 um) or lymphocyte (7-9 um, round)."""
    if rng.random() < 0.7:
        r = rng.uniform(9.0, 12.0) / um / 2
        n_lobes = int(rng.integers(2, 5))
        lobe_r = rng.uniform(2.0, 2.8) / um / 2 * 1.3
        arc_r = 0.45 * r
        a0 = rng.uniform(0, 2 * math.pi)
        span = rng.uniform(1.6, 3.2)
        lobes = [
            (
                arc_r * math.cos(a0 + span * (i / max(1, n_lobes - 1) - 0.5)),
                arc_r * math.sin(a0 + span * (i / max(1, n_lobes - 1) - 0.5)),
            )
            for i in range(n_lobes)
        ]
        n_od = rng.uniform(0.9, 1.4)
        cyto_od, mix = rng.uniform(0.08, 0.16), (0.3, 0.5, 0.2)
    else:
        r = rng.uniform(7.0, 9.0) / um / 2
        lobes = [(rng.uniform(-0.1, 0.1) * r, rng.uniform(-0.1, 0.1) * r)]
        lobe_r = 0.8 * r
        n_od = rng.uniform(1.0, 1.4)
        cyto_od, mix = rng.uniform(0.06, 0.12), (0.3, 0.2, 0.5)
    w = cv.window(cx, cy, r + 2)
    if w is None:
        return
    win, xs, ys = w
    rr = np.sqrt(xs * xs + ys * ys)
    m = coverage(rr - r + 0.4 * cv.medium[win])
    cv.add_mix(mix, win, np.float32(cyto_od) * m)
    nuc: np.ndarray | None = None
    for lx, ly in lobes:
        dl = np.sqrt(np.square(xs - np.float32(lx)) + np.square(ys - np.float32(ly))) - lobe_r
        c = coverage(dl, 0.7)
        nuc = c if nuc is None else np.maximum(nuc, c)
    assert nuc is not None  # at least one lobe
    cv.add(HAEM, win, np.float32(n_od) * nuc * (1.0 + 0.1 * cv.fine[win]))
    cv.record(win, m, "normal", "inflammatory")


def draw_debris(cv: Canvas, rng: np.random.Generator, cx: float, cy: float, um: float) -> None:
    """A faint mucus strand (curved line) or a clump of small mixed-stain granules."""
    mix = tuple(float(x) for x in rng.dirichlet((1.0, 1.5, 1.5)))
    if rng.random() < 0.55:
        n = int(rng.integers(5, 11))
        step = rng.uniform(10, 25) / um
        ang = np.cumsum(rng.normal(0, 0.45, n)) + rng.uniform(0, 2 * math.pi)
        pts = np.stack([np.cumsum(step * np.cos(ang)), np.cumsum(step * np.sin(ang))], 1)
        pts = pts - pts.mean(axis=0)
        width = rng.uniform(1.2, 3.5) / um
        lo, hi = pts.min(axis=0) - 3 * width, pts.max(axis=0) + 3 * width
        mid = (lo + hi) / 2
        w = cv.window(cx + mid[0], cy + mid[1], (hi[0] - lo[0]) / 2, (hi[1] - lo[1]) / 2)
        if w is None:
            return
        win, xs, ys = w
        xs, ys = xs + np.float32(mid[0]), ys + np.float32(mid[1])
        dist2: np.ndarray | None = None
        plist = pts.tolist()
        for (ax, ay), (bx, by) in zip(plist[:-1], plist[1:], strict=True):
            ex, ey = bx - ax, by - ay
            t = np.clip(((xs - ax) * ex + (ys - ay) * ey) / (ex * ex + ey * ey + 1e-9), 0, 1)
            dd = np.square(xs - ax - t * ex) + np.square(ys - ay - t * ey)
            dist2 = dd if dist2 is None else np.minimum(dist2, dd)
        assert dist2 is not None  # at least 5 points, so 4 segments
        prof = np.exp(-dist2 * (1.0 / (width * width))) * (1.0 + 0.3 * cv.medium[win])
        cv.add_mix(mix, win, np.float32(rng.uniform(0.06, 0.16)) * prof)
        cv.record(win, prof * 2.0, "normal", "debris")
    else:
        spread = rng.uniform(6, 18) / um
        w = cv.window(cx, cy, spread + 4)
        if w is None:
            return
        win, xs, ys = w
        acc: np.ndarray | None = None
        for _ in range(int(rng.integers(3, 13))):
            gx, gy = rng.normal(0, spread / 2.5, 2).clip(-spread, spread).tolist()
            gr = rng.uniform(0.6, 2.2) / um / 2
            g = coverage(np.sqrt(np.square(xs - gx) + np.square(ys - gy)) - gr, 0.8)
            g = g * rng.uniform(0.3, 1.0)
            acc = g if acc is None else np.maximum(acc, g)
        assert acc is not None  # at least 3 granules
        cv.add_mix(mix, win, np.float32(rng.uniform(0.4, 0.8)) * acc)
        cv.record(win, acc * 2.0, "normal", "debris")
