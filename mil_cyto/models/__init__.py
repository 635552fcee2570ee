"""MIL aggregators behind one registry, and the full tiles-to-grade model."""

from mil_cyto.models.aggregators import AGGREGATORS, MILOutput, create_aggregator
from mil_cyto.models.mil_model import MILModel, pad_bags

__all__ = ["AGGREGATORS", "MILModel", "MILOutput", "create_aggregator", "pad_bags"]
