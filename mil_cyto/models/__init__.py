"""MIL aggregators behind one registry, and the full tiles-to-grade model.

Importing this package registers every aggregator: ``abmil``, ``gated_abmil``, ``mean``,
``max``, ``clam_sb``, ``clam_mb``, ``dsmil``, ``sil`` and ``transmil``, each an
:class:`Aggregator` (the contract, in :mod:`mil_cyto.models.base`).
"""

from mil_cyto.models import clam, dsmil, pooling, sil, transmil  # noqa: F401  (registration)
from mil_cyto.models.aggregators import AGGREGATORS, create_aggregator
from mil_cyto.models.base import Aggregator, MILOutput
from mil_cyto.models.ensemble import HeadEnsemble
from mil_cyto.models.mil_model import MILModel, pad_bags

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "HeadEnsemble",
    "MILModel",
    "MILOutput",
    "create_aggregator",
    "pad_bags",
]
