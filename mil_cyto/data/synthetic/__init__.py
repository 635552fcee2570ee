"""Synthetic Pap-smear field photos with known cell boxes and grades.

The generator paints 10x-objective-like field photos (about 0.7 um per pixel) with an
optical-density (Beer-Lambert) model: every cell adds haematoxylin, eosin and light-green
optical density on its own local patch, and the photo is rendered once as
``RGB = 255 * illumination * exp(-OD @ stain_vectors)``. Overlapping cells therefore darken
naturally. Each patient is one slide (one stain) with one histology grade; a photo's label is
the highest grade of the cells it holds. Every drawn cell is written to ``cells.csv`` with its
box, grade and kind, for localization checks only (never for training).

Modules, one job each:

* :mod:`~mil_cyto.data.synthetic.config`: :class:`SynthConfig`, file and column names.
* :mod:`~mil_cyto.data.synthetic.stain`: :class:`Stain`, :func:`random_stain`,
  :func:`reference_stain`.
* :mod:`~mil_cyto.data.synthetic.geometry`: noise, outlines and coverage in px.
* :mod:`~mil_cyto.data.synthetic.canvas`: :class:`Canvas`, :func:`positions`, :func:`render`
  (the placement API the mosaic builder shares).
* :mod:`~mil_cyto.data.synthetic.painters` and :mod:`~mil_cyto.data.synthetic.atypical`: the
  cell painters (normal cells; koilocytes and HSIL cells).
* :mod:`~mil_cyto.data.synthetic.field`: :func:`draw_field`, one photo in memory.
* :mod:`~mil_cyto.data.synthetic.plan`: :func:`plan_patients`, :func:`allocate`.
* :mod:`~mil_cyto.data.synthetic.png`: :func:`write_png`.
* :mod:`~mil_cyto.data.synthetic.dataset`: :func:`generate_dataset`, the data set on disk.
"""

from mil_cyto.data.synthetic.canvas import Canvas, Window, positions, render
from mil_cyto.data.synthetic.config import (
    ATYPICAL_KIND,
    CELL_COLUMNS,
    CELL_KINDS,
    CELLS_FILE,
    CONFIG_FILE,
    GENERATOR_VERSION,
    IMAGES_DIR,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    SynthConfig,
)
from mil_cyto.data.synthetic.dataset import generate_dataset
from mil_cyto.data.synthetic.field import draw_field
from mil_cyto.data.synthetic.plan import PatientPlan, allocate, plan_patients
from mil_cyto.data.synthetic.png import write_png
from mil_cyto.data.synthetic.stain import Stain, random_stain, reference_stain

__all__ = [
    "ATYPICAL_KIND",
    "CELLS_FILE",
    "CELL_COLUMNS",
    "CELL_KINDS",
    "CONFIG_FILE",
    "GENERATOR_VERSION",
    "IMAGES_DIR",
    "MANIFEST_COLUMNS",
    "MANIFEST_FILE",
    "Canvas",
    "PatientPlan",
    "Stain",
    "SynthConfig",
    "Window",
    "allocate",
    "draw_field",
    "generate_dataset",
    "plan_patients",
    "positions",
    "random_stain",
    "reference_stain",
    "render",
    "write_png",
]
