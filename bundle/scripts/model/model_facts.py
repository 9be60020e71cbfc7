"""What a model file needs beside its weights to be used right: the ensemble's gamma and the training
window (the HU range mapped to [-1, 1]), in a sidecar ``<model file>.json`` that training writes with the
weights. The weights stay a plain state dict, so MONAI's loaders (``CheckpointLoader``, ``ckpt_export``)
read them as before; ``cli.py denoise``, evaluation and the benchmark read the sidecar, so a chest model
runs in the chest window and an ablation that exports F alone runs with gamma 1 without being told.

A model file without a sidecar (trained before bundle 0.11.0) gets the abdomen model's values,
``DEFAULT_FACTS``, and says so in ``source``.
"""

from __future__ import annotations

import json
import math
import os

from ..core.atomic import write_json
from ..core.ct import HU_RANGE
from ..core.errors import DataError
from .networks import ENSEMBLE_GAMMA

__all__ = ["DEFAULT_FACTS", "facts_path", "check_facts", "read_model_facts", "model_settings", "ModelFactsWriter"]

FACTS_SUFFIX = ".json"
DEFAULT_FACTS = {"gamma": ENSEMBLE_GAMMA, "hu_range": tuple(HU_RANGE)}


def facts_path(model_path) -> str:
    """``model.pt`` -> ``model.pt.json``."""
    return os.fspath(model_path) + FACTS_SUFFIX


def check_facts(facts: dict, where: str) -> dict:
    """``{"gamma", "hu_range"}`` checked (gamma in [0, 1], two increasing finite HU values), as plain numbers."""
    try:
        gamma = float(facts["gamma"])
        low, high = (float(v) for v in facts["hu_range"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f'{where}: expected {{"gamma": number, "hu_range": [low, high]}}, got {facts!r}.') from None
    if not 0.0 <= gamma <= 1.0 or not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise DataError(
            f"{where}: gamma must be in [0, 1] and hu_range two increasing HU values; got gamma "
            f"{gamma}, hu_range [{low}, {high}]."
        )
    return {"gamma": gamma, "hu_range": (low, high)}


def read_model_facts(model_path) -> dict:
    """The model's gamma and window, from its sidecar, else ``DEFAULT_FACTS``; ``source`` names which."""
    path = facts_path(model_path)
    if not os.path.isfile(path):
        return {**DEFAULT_FACTS, "source": "defaults (no " + os.path.basename(path) + ")"}
    try:
        with open(path) as f:
            facts = json.load(f)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: model facts file is not valid JSON ({error}).") from None
    return {**check_facts(facts, path), "source": path}


def model_settings(model_path, gamma=None, hu_range=None) -> tuple:
    """``(gamma, hu_range)`` to run ``model_path`` with: each given value, else the model's own."""
    facts = read_model_facts(model_path)
    return (
        facts["gamma"] if gamma is None else float(gamma),
        facts["hu_range"] if hu_range is None else tuple(float(v) for v in hu_range),
    )


class ModelFactsWriter:
    """Write ``model_path``'s sidecar when training completes (after the model file's own saver)."""

    def __init__(self, model_path: str, gamma: float, hu_range) -> None:
        self.model_path = model_path
        self.facts = check_facts({"gamma": gamma, "hu_range": hu_range}, "model facts")

    def attach(self, engine) -> None:
        from ignite.engine import Events  # here, not at the top: inference (Deploy's venv) reads facts without Ignite

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine=None) -> None:
        write_json(
            {"gamma": self.facts["gamma"], "hu_range": list(self.facts["hu_range"])}, facts_path(self.model_path)
        )
