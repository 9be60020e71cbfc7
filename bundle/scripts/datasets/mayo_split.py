"""Which Mayo patients train, validate and test (this project's policies, recorded in the datalist's
``split`` entry):

* **Split**: abdomen (L...) and chest (C...) use the authors' TCIA split (``AUTHORS_SPLIT``);
  patients of that split that are absent are reported and skipped, patients present but not in
  it are reported and not used. For the AAPM-2016 release (10 patients, none in the authors'
  split) the default is test = L333, L506 and the other eight for training
  (``AAPM2016_DEFAULT_SPLIT``, this project's choice). A split file (JSON:
  ``{"train": [...], "test": [...], "validation": [...]}``, "validation" optional) replaces the
  built-in split; every patient it names must be present.
* **Validation** (paired, for monitoring only): with a split file, its "validation" list (may be
  empty). Otherwise ``round(10 %)`` of the present training patients (at least 1; 20 -> 2, 8 -> 1)
  are held out of training, chosen deterministically from ``seed``; with fewer than 4 training
  patients none is held out (warning). Test patients are never used for validation.
* **Unpaired halves**: the remaining training patients are ordered by ``sha256(f"{seed}:...")``
  (stable across Python/NumPy versions); the first ``ceil(n/2)`` give ``training_clean`` (their
  full-dose series), the others ``training_noisy`` (their low-dose series). Disjoint by
  construction; at least 2 training patients are required.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from typing import Iterable

from ..volumes.dicom_io import DicomDataError
from .data import read_json

__all__ = [
    "MayoDataError",
    "REGION_PREFIX",
    "AUTHORS_SPLIT",
    "AAPM2016_PATIENTS",
    "AAPM2016_DEFAULT_SPLIT",
    "load_split",
    "resolve_split",
    "assign_roles",
]

REGION_PREFIX = {"abdomen": "L", "chest": "C", "head": "N"}

AUTHORS_SPLIT = {
    "abdomen": {
        "train": "L004 L006 L014 L019 L033 L049 L056 L057 L058 L064 L071 L072 L075 L077 L081 L107 L110 L114 L116 L123".split(),
        "test": "L125 L131 L134 L145 L148 L150 L160 L170 L175 L178".split(),
    },
    "chest": {
        "train": "C002 C004 C012 C016 C027 C030 C050 C052 C067 C077 C081 C095 C099 C107 C111 C120 C121 C124 C128 C135".split(),
        "test": "C158 C160 C162 C166 C170 C179 C190 C193 C202 C203".split(),
    },
}
AAPM2016_PATIENTS = ("L067", "L096", "L109", "L143", "L192", "L286", "L291", "L310", "L333", "L506")
AAPM2016_DEFAULT_SPLIT = {
    "train": [p for p in AAPM2016_PATIENTS if p not in ("L333", "L506")],
    "test": ["L333", "L506"],
}
VALIDATION_FRACTION = 0.1
MIN_TRAIN_FOR_VALIDATION = 4
_SPLIT_KEYS = {
    "train": "train",
    "training": "train",
    "test": "test",
    "testing": "test",
    "validation": "validation",
    "val": "validation",
}


class MayoDataError(DicomDataError):
    """The Mayo data, split or options cannot make a datalist; the message names the path and the problem."""


def load_split(path) -> dict:
    """A split file: JSON ``{"train": [...], "test": [...], "validation": [...]}`` ("validation" optional)."""
    path = os.path.abspath(os.fspath(path))
    raw = read_json(path, "split", MayoDataError)
    if not isinstance(raw, dict):
        raise MayoDataError(f"{path}: split file must be a JSON object with 'train' and 'test' lists.")
    split: dict[str, list[str]] = {}
    for key, value in raw.items():
        if key not in _SPLIT_KEYS:
            raise MayoDataError(f"{path}: unknown key {key!r} in split file (expected train, test, validation).")
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise MayoDataError(f"{path}: {key!r} must be a list of patient IDs (strings).")
        split[_SPLIT_KEYS[key]] = [v.strip() for v in value]
    if "train" not in split or "test" not in split:
        raise MayoDataError(f"{path}: split file needs both 'train' and 'test' lists.")
    seen: dict[str, str] = {}
    for key, ids in split.items():
        for pid in ids:
            if pid in seen:
                raise MayoDataError(f"{path}: patient {pid} is listed twice (in {seen[pid]!r} and {key!r}).")
            seen[pid] = key
    return split


def _order(patients: Iterable[str], seed: int, salt: str) -> list[str]:
    return sorted(patients, key=lambda p: hashlib.sha256(f"{seed}:{salt}:{p}".encode()).hexdigest())


def _split_from_file(split, root: str, present: list[str]):
    split_path = os.path.abspath(os.fspath(split))
    plan = load_split(split_path)
    named = [p for ids in plan.values() for p in ids]
    absent = [p for p in named if p not in present]
    if absent:
        raise MayoDataError(
            f"{split_path}: the split names patients not present under {root}: {', '.join(absent)} "
            f"(present: {', '.join(present) or 'none'})."
        )
    return plan, split_path, absent, [p for p in present if p not in named]


def _builtin_split(root: str, layout: str, region: str, present: list[str], notes: list[str]):
    if layout == "aapm2016":
        if region != "abdomen":
            raise MayoDataError(
                f"{root}: the AAPM 2016 release holds abdomen patients only; region={region!r} needs --split FILE."
            )
        plan, source = {
            k: list(v) for k, v in AAPM2016_DEFAULT_SPLIT.items()
        }, "aapm2016-default (this project's choice: test L333, L506)"
    else:
        if region not in AUTHORS_SPLIT:
            raise MayoDataError(f"{root}: no built-in split for region {region!r}; pass --split FILE.")
        plan, source = {k: list(v) for k, v in AUTHORS_SPLIT[region].items()}, f"authors ({region})"
    named = plan["train"] + plan["test"]
    prefix = REGION_PREFIX[region]
    other = [p for p in present if not p.startswith(prefix)]
    if other:
        notes.append(
            f"other regions, ignored: {len(other)} patients ({', '.join(other[:10])}{' ...' if len(other) > 10 else ''})"
        )
    if not any(p in present for p in named):
        raise MayoDataError(
            f"{root}: none of the {source} split's patients are present "
            f"(split: {', '.join(named)}; present: {', '.join(present) or 'none'}); pass --split FILE."
        )
    absent = [p for p in named if p not in present]
    return plan, source, absent, [p for p in present if p not in named and p.startswith(prefix)]


def resolve_split(root: str, layout: str, region: str, split, present: list[str], notes: list[str]):
    """``(plan, source, absent, unsplit)``: the split file's or the built-in split for ``region``, the
    split's patients missing under ``root`` (skipped) and those present in no split (not used); both
    noted and warned about."""
    if split is not None:
        plan, source, absent, unsplit = _split_from_file(split, root, present)
    else:
        plan, source, absent, unsplit = _builtin_split(root, layout, region, present, notes)
    if absent:
        notes.append(f"absent from {root}, skipped: {', '.join(absent)}")
        warnings.warn(f"{root}: split patients absent, skipped: {', '.join(absent)}", stacklevel=4)
    if unsplit:
        notes.append(f"present but in no split, not used: {', '.join(unsplit)}")
        warnings.warn(f"{root}: patients present but in no split, not used: {', '.join(unsplit)}", stacklevel=4)
    return plan, source, absent, unsplit


def _held_out(root: str, train: list[str], seed: int, num_validation: int | None) -> list[str]:
    n_val = num_validation
    if n_val is None:
        n_val = max(1, round(VALIDATION_FRACTION * len(train))) if len(train) >= MIN_TRAIN_FOR_VALIDATION else 0
        if n_val == 0:
            warnings.warn(
                f"{root}: only {len(train)} training patients; no validation patients held out (validation = []).",
                stacklevel=5,
            )
    n_val = int(n_val)
    if n_val < 0 or len(train) - n_val < 2:
        n_val = max(0, min(n_val, len(train) - 2))
    return sorted(_order(train, seed, "validation")[:n_val])


def assign_roles(
    root: str, split, plan: dict, present: list[str], train: list[str], seed: int, num_validation: int | None
):
    """``(clean, noisy, validation, policy)``: the validation patients (the split file's, or a seeded
    hold-out of the training patients) and the rest of ``train`` cut into disjoint unpaired halves."""
    if split is not None and "validation" in plan:
        validation = [p for p in plan["validation"] if p in present]
        policy = "from the split file"
    else:
        validation = _held_out(root, train, seed, num_validation)
        policy = (
            f"{len(validation)} training patient(s) held out (10% of {len(train)}, at least 1 when >= "
            f"{MIN_TRAIN_FOR_VALIDATION}; sha256 order with seed {seed})"
        )
        train = [p for p in train if p not in validation]
    if len(train) < 2:
        raise MayoDataError(
            f"{split if split is not None else root}: {len(train)} training patient(s) present ({', '.join(train) or 'none'}); "
            "unpaired training needs at least 2 (disjoint clean and noisy halves)."
        )
    ordered = _order(train, seed, "halves")
    n_clean = math.ceil(len(ordered) / 2)
    return sorted(ordered[:n_clean]), sorted(ordered[n_clean:]), validation, policy
