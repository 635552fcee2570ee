"""Field photos composed of real single-cell crops ("mosaic bags", as MNIST-bags for Ilse et al.).

A folder-per-class set of cell crops plus a mapping file (class folder -> ``normal`` /
``CIN1`` / ``CIN2+`` / ``drop``) becomes a data set in the synthetic set's format: field
photos, ``manifest.csv`` (plus a ``split`` column) and ``cells.csv`` with every placed cell's
box, grade and class folder (``kind``). A field's label is the highest grade it holds.

How a field is made:

* Every crop is assigned once to train, val or test (stratified by class folder), so no
  cell appears in two splits; ``cell_splits.csv`` lists the assignment. Virtual patients
  (several fields each, one grade, one split) draw their cells from their split's pool only.
* Each crop becomes optical density relative to its own background (Beer-Lambert), cut out by
  its mask when one is given (``masks``), else by a feathered ellipse. It keeps its native
  pixel size (optionally rescaled within ``scale``, at most 2x either way), and turns by a
  right angle and flips at random, so no pixel is resampled by default.
* The glass comes from the synthetic generator (:mod:`mil_cyto.data.synthetic`): slide tint,
  faint mucus, uneven illumination, focus blur and sensor noise; cells darken it
  multiplicatively, so overlapping cells darken each other as on a real slide.

Public entry points: :class:`MosaicConfig`, :class:`MaskSpec`, :func:`read_mapping`,
:func:`scan_cells`, :func:`generate_mosaics`. Modules, one job each: ``config`` (settings and
file names), ``crops`` (mapping file and crops on disk), ``sprites`` (crop -> optical density
and alpha), ``plan`` (splits, patients, field size), ``draw`` (one field photo) and ``dataset``
(the data set on disk).
"""

from mil_cyto.data.mosaic.config import (
    CELL_SPLITS_FILE,
    CONFIG_FILE,
    DROP,
    MOSAIC_MANIFEST_COLUMNS,
    PLACEMENTS_FILE,
    SPLITS,
    MaskSpec,
    MosaicConfig,
)
from mil_cyto.data.mosaic.crops import IMAGE_SUFFIXES, CellCrop, read_mapping, scan_cells
from mil_cyto.data.mosaic.dataset import generate_mosaics
from mil_cyto.data.mosaic.draw import draw_mosaic
from mil_cyto.data.mosaic.plan import FieldPlan, assign_splits, field_size, plan_fields
from mil_cyto.data.mosaic.sprites import CellSprite, load_sprite, pose_sprite
from mil_cyto.data.synthetic.config import CELLS_FILE, MANIFEST_FILE

__all__ = [
    "CELLS_FILE",
    "CELL_SPLITS_FILE",
    "CONFIG_FILE",
    "DROP",
    "IMAGE_SUFFIXES",
    "MANIFEST_FILE",
    "MOSAIC_MANIFEST_COLUMNS",
    "PLACEMENTS_FILE",
    "SPLITS",
    "CellCrop",
    "CellSprite",
    "FieldPlan",
    "MaskSpec",
    "MosaicConfig",
    "assign_splits",
    "draw_mosaic",
    "field_size",
    "generate_mosaics",
    "load_sprite",
    "plan_fields",
    "pose_sprite",
    "read_mapping",
    "scan_cells",
]
