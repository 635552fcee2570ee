"""Tile encoders: ``create_encoder(name, ...)`` for the small CNN and any timm backbone."""

from mil_cyto.encoders.base import TileEncoder
from mil_cyto.encoders.factory import ENCODERS, EncoderSpec, create_encoder, list_encoders

__all__ = ["ENCODERS", "EncoderSpec", "TileEncoder", "create_encoder", "list_encoders"]
