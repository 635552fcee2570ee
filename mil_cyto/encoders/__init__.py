"""Tile encoders: ``create_encoder(name, ...)`` for the small CNN, nucleus morphometry
(``morphometry``, no training) and any timm backbone."""

from mil_cyto.encoders.base import TileEncoder
from mil_cyto.encoders.factory import ENCODERS, EncoderSpec, create_encoder, list_encoders
from mil_cyto.encoders.morphometry import Morphometry

__all__ = [
    "ENCODERS",
    "EncoderSpec",
    "Morphometry",
    "TileEncoder",
    "create_encoder",
    "list_encoders",
]
