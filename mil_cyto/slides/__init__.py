"""Whole-slide images (pyramidal TIFF, SVS, NDPI) as specimens: read lazily at a working
pixel size, cell-rich regions found at low resolution, instances streamed in chunks.

* :mod:`~mil_cyto.slides.config`: :class:`SlideConfig`.
* :mod:`~mil_cyto.slides.reader`: :class:`SlideReader`, :data:`READERS`, :func:`open_slide`,
  :func:`is_slide_file`.
* :mod:`~mil_cyto.slides.resolution`: :func:`choose_level`, :func:`read_working`.
* :mod:`~mil_cyto.slides.regions`: :func:`find_regions`, :class:`RegionMap`.
* :mod:`~mil_cyto.slides.stream`: :class:`SlideStream`, :func:`open_stream`.
"""

from mil_cyto.slides.config import SlideConfig
from mil_cyto.slides.reader import READERS, SlideReader, is_slide_file, open_slide
from mil_cyto.slides.regions import RegionMap, find_regions
from mil_cyto.slides.resolution import LevelChoice, choose_level, read_working
from mil_cyto.slides.stream import InstanceChunk, SlideStream, open_stream

__all__ = [
    "READERS",
    "InstanceChunk",
    "LevelChoice",
    "RegionMap",
    "SlideConfig",
    "SlideReader",
    "SlideStream",
    "choose_level",
    "find_regions",
    "is_slide_file",
    "open_slide",
    "open_stream",
    "read_working",
]
