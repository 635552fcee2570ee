"""The features stage (frozen mode): the encoder's features of every photo, extracted once
into a bag store (``--features``, default ``RUN/features.h5``), as feature bags."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mil_cyto import __version__
from mil_cyto.config import TrainConfig
from mil_cyto.data.manifest import ManifestRow
from mil_cyto.data.pixel_size import WORKING_UM_PER_PX, working_factor
from mil_cyto.distributed import main_first
from mil_cyto.features import BagStore, extract_to_store
from mil_cyto.pipeline.data import decoding
from mil_cyto.pipeline.encoder_training import TrainedEncoder
from mil_cyto.pipeline.recipe import ModelParts
from mil_cyto.pipeline.runtime import Runtime
from mil_cyto.training import FeatureBag


def extract_features(
    config: TrainConfig,
    rows: list[ManifestRow],
    parts: ModelParts,
    trained: TrainedEncoder,
    runtime: Runtime,
) -> list[FeatureBag]:
    """Freeze ``parts.encoder`` and return the cached features of every photo in ``rows``
    (extracted by rank 0 first, into the bag store, if not there yet). The store's provenance
    names the trained encoder's weights (``trained.digest``); the instance boxes ``trained``
    found already are not searched again."""
    encoder = parts.encoder
    for p in encoder.parameters():
        p.requires_grad_(False)
    store_path = Path(config.features) if config.features else runtime.run_dir / "features.h5"
    provenance = {
        "encoder": config.encoder,
        "encoder_kwargs": config.encoder_kwargs or {},
        "weights": config.weights,
        "weights_cache": config.weights_cache,
        "mil_cyto_version": __version__,
    }
    if trained.digest is not None:
        provenance["pretrained_sha256"] = trained.digest
    resampled = sorted(
        {
            r.um_per_px
            for r in rows
            if r.um_per_px is not None and working_factor(r.um_per_px) != 1.0
        }
    )
    if resampled:  # photos resampled to the working scale: a store of other sizes differs
        provenance["pixel_size"] = {"working": WORKING_UM_PER_PX, "um_per_px": resampled}
    with main_first(runtime.ctx):
        with decoding(config) as pool:
            extract_to_store(
                rows,
                encoder,
                store_path,
                tiling=parts.tiling,
                provenance=provenance,
                device=runtime.device,
                workers=config.workers,
                progress=runtime.progress,
                known_coords=trained.known_coords,
                decoder=pool,
            )
        return stored_bags(store_path, rows)


def stored_bags(store_path: Path, rows: Sequence[ManifestRow]) -> list[FeatureBag]:
    """The cached features of ``rows``' photos in the bag store at ``store_path``, in order,
    as feature bags with their labels from the manifest."""
    with BagStore(store_path) as store:
        bags = []
        for row in rows:
            feats, coords = store[row.image_id]
            bags.append(
                FeatureBag(
                    row.image_id, row.patient_id, row.label, feats, coords, store.size(row.image_id)
                )
            )
    return bags
