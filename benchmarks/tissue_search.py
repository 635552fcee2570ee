"""Tissue search per photo: the 8-bit histogram search of ``tiling.tissue_mask`` against the
float64 search it replaced (``rgb2gray``, ``np.percentile``, Otsu on the image), on the same
decoded synthetic photos, with how many pixels their masks disagree on.

    python benchmarks/tissue_search.py --photos 40
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from skimage.color import rgb2gray
from skimage.filters import threshold_otsu

from mil_cyto.data.images import load_rgb
from mil_cyto.data.manifest import read_manifest
from mil_cyto.data.tiling import grey_levels, open_cross, tissue_mask


def float64_search(image: np.ndarray) -> np.ndarray:
    """The tissue search before the 8-bit one (same cap, same opening)."""
    grey = rgb2gray(image)
    threshold = min(threshold_otsu(grey), float(np.percentile(grey, 95)) - 0.03)
    return open_cross(grey < threshold)


def _ms_per_photo(fn, images: list[np.ndarray]) -> float:
    for image in images[:3]:
        fn(image)  # warm up
    clock = time.perf_counter()
    for image in images:
        fn(image)
    return round((time.perf_counter() - clock) / len(images) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder with manifest.csv (default: built-in synthetic)")
    parser.add_argument("--photos", type=int, default=40)
    args = parser.parse_args()
    from extract_throughput import _data_dir  # the benchmarks' shared synthetic set

    rows = read_manifest(_data_dir(args.data) / "manifest.csv")[: args.photos]
    images = [load_rgb(r.image) for r in rows]
    disagree = [float((tissue_mask(im) != float64_search(im)).mean()) for im in images]
    result = {
        "photo_hw": list(images[0].shape[:2]),
        "tissue_mask_ms": _ms_per_photo(tissue_mask, images),
        "float64_search_ms": _ms_per_photo(float64_search, images),
        "grey_levels_ms": _ms_per_photo(grey_levels, images),
        "rgb2gray_ms": _ms_per_photo(rgb2gray, images),
        "pixels_disagreeing_mean": round(float(np.mean(disagree)), 4),
        "pixels_disagreeing_max": round(max(disagree), 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
