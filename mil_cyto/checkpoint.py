"""Trained models on disk: ``model.safetensors`` plus ``model.json`` (how to rebuild it).

Nothing is unpickled: weights are safetensors, the recipe is JSON. ``model.json``'s
``calibration.temperature`` (absent: 1) divides the reloaded aggregator's logits
(:func:`mil_cyto.calibration.attach_temperature`), so whoever reloads the model reads the
calibrated probabilities the run wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mil_cyto import __version__
from mil_cyto.calibration import attach_temperature, check_temperature
from mil_cyto.encoders import EncoderSpec, create_encoder
from mil_cyto.errors import MilCytoError
from mil_cyto.io import atomic_path, write_json
from mil_cyto.labels import GRADES
from mil_cyto.models import MILModel, create_aggregator
from mil_cyto.models.ensemble import HeadEnsemble

FORMAT = "mil-cyto-model/1"


def model_recipe(
    encoder: EncoderSpec,
    aggregator: str,
    aggregator_kwargs: dict[str, Any],
    in_dim: int,
    tiling: dict[str, Any],
    members: int = 1,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """The JSON that rebuilds a model; encoder weights come from the safetensors file.
    ``members`` > 1: the head is a :class:`HeadEnsemble` of that many aggregators;
    ``temperature``: what its photo logits are divided by (fitted on validation photos)."""
    aggregator_recipe = {"name": aggregator, "kwargs": aggregator_kwargs, "in_dim": in_dim}
    if members > 1:
        aggregator_recipe["members"] = members
    return {
        "format": FORMAT,
        "mil_cyto_version": __version__,
        "classes": list(GRADES),
        "encoder": {"name": encoder.name, "kwargs": encoder.kwargs},
        "encoder_init": {"weights": encoder.weights, "cache_dir": encoder.cache_dir},
        "aggregator": aggregator_recipe,
        "tiling": tiling,
        "calibration": {"temperature": float(temperature)},
    }


def save_model(run_dir: Path, model: MILModel, recipe: dict[str, Any]) -> None:
    """Write ``model.safetensors`` and ``model.json`` atomically into ``run_dir``."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(Path(run_dir) / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    write_json(Path(run_dir) / "model.json", recipe)


def build_model(recipe: dict[str, Any]) -> MILModel:
    """An untrained model of the recipe's architecture (random init, no weight files)."""
    encoder = create_encoder(
        EncoderSpec(name=recipe["encoder"]["name"], kwargs=recipe["encoder"]["kwargs"])
    )
    agg = recipe["aggregator"]
    heads = [
        create_aggregator(
            agg["name"], in_dim=agg["in_dim"], n_classes=len(recipe["classes"]), **agg["kwargs"]
        )
        for _ in range(int(agg.get("members", 1)))
    ]
    return MILModel(encoder, heads[0] if len(heads) == 1 else HeadEnsemble(heads))


def load_model(run_dir: Path) -> tuple[MILModel, dict[str, Any]]:
    """Rebuild a trained model from a run folder (or a folder holding the two files), its
    aggregator's logits divided by the recipe's ``calibration.temperature`` (1 when absent).

    Raises:
        MilCytoError: missing files, a foreign format, or weights that do not fit the recipe.
    """
    run_dir = Path(run_dir)
    recipe_path, weights_path = run_dir / "model.json", run_dir / "model.safetensors"
    for path in (recipe_path, weights_path):
        if not path.is_file():
            raise MilCytoError(f"{path} not found; is {run_dir} a finished training run?")
    try:
        recipe = json.loads(recipe_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MilCytoError(
            f"{recipe_path} is not valid JSON ({err}); retrain or restore it"
        ) from None
    if recipe.get("format") != FORMAT:
        raise MilCytoError(f"{recipe_path}: format {recipe.get('format')!r}, expected {FORMAT!r}")
    try:
        model = build_model(recipe)
    except (KeyError, TypeError) as err:
        raise MilCytoError(
            f"{recipe_path} lacks {err} or holds a wrong value; use the model.json saved with "
            "these weights"
        ) from None
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise MilCytoError(f"{weights_path} is not a readable safetensors file ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0][:300]
        raise MilCytoError(
            f"{weights_path} does not match the architecture in {recipe_path} ({first}); "
            "use the model.json saved with these weights"
        ) from None
    temperature = check_temperature(
        (recipe.get("calibration") or {}).get("temperature", 1.0), str(recipe_path)
    )
    attach_temperature(model.aggregator, temperature)
    model.eval()
    return model, recipe


def state_equal(a: MILModel, b: MILModel) -> bool:
    """True when two models hold identical parameters and buffers."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
