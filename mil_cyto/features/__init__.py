"""Frozen-encoder feature extraction into an HDF5 bag store (features + coords)."""

from mil_cyto.features.store import BagStore, extract_to_store

__all__ = ["BagStore", "extract_to_store"]
