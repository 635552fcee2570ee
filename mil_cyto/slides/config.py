"""Settings for reading whole-slide images: the working pixel size and the region search."""

from __future__ import annotations

from dataclasses import dataclass

from mil_cyto.cli.options import option
from mil_cyto.errors import MilCytoError


@dataclass(frozen=True)
class SlideConfig:
    """How a whole-slide image becomes instances.

    A slide is read at ``um_per_px`` (the run's working pixel size): every instance box and
    every tile is in pixels of that resolution, as a photo's are in its own pixels. Regions
    rich in cells are found first on a low-resolution level near ``overview_um_per_px``;
    only there is the slide read, ``chunk`` x ``chunk`` working pixels at a time.
    """

    um_per_px: float = option(
        0.7, help="working pixel size for whole-slide images, micrometres per pixel"
    )
    overview_um_per_px: float = option(
        8.0, help="pixel size of the overview on which cell-rich regions are searched"
    )
    chunk: int = option(1024, help="side of one slide read, in working pixels (bounds memory)")
    min_region_um2: float = option(
        2000.0, help="smallest cell-rich region kept in the overview, square micrometres"
    )
    region_margin_um: float = option(
        30.0, help="margin grown around each cell-rich region, micrometres"
    )
    tolerance: float = option(
        0.02,
        help="relative pixel-size slack: a level up to this much coarser than --um-per-px "
        "still counts as reaching it",
    )
    reader: str = option("tiffslide", help="slide reader backend")

    def __post_init__(self) -> None:
        if not 0.05 <= self.um_per_px <= 50.0:
            raise MilCytoError(f"--um-per-px {self.um_per_px}: use a value in [0.05, 50]")
        if self.overview_um_per_px < self.um_per_px:
            raise MilCytoError(
                f"--overview-um-per-px {self.overview_um_per_px} is finer than --um-per-px "
                f"{self.um_per_px}; the overview must be coarser"
            )
        if self.chunk < 256:
            raise MilCytoError(f"--chunk {self.chunk}: use >= 256 working pixels")
        if not 0.0 <= self.tolerance < 0.5:
            raise MilCytoError(f"--tolerance {self.tolerance}: use a value in [0, 0.5)")
        if self.min_region_um2 < 0 or self.region_margin_um < 0:
            raise MilCytoError("--min-region-um2 and --region-margin-um must be >= 0")
