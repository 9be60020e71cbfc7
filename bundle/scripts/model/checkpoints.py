"""Checkpoints of a training run: ``StateSaver`` writes them (atomically, never a diverged one),
``ResumeFrom`` restores one when the run starts (``--resume``, ``--init_from``), and the checks refuse a
missing, truncated or corrupt file, or one that does not fit the configuration, before any work."""

from __future__ import annotations

import os
import zipfile
from typing import Mapping

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from ..core.atomic import torch_save
from .networks import non_finite_values

__all__ = ["StateSaver", "check_checkpoint_file", "check_start_checkpoints", "check_checkpoint_holds", "ResumeFrom"]


class StateSaver:
    """Save ``{name: obj.state_dict()}`` atomically every ``interval`` epochs and when training completes.

    ``engine_key`` adds the engine this handler is attached to (its epoch/iteration) under that name,
    which a config cannot reference without a cycle. With a single object the file holds that
    object's state dict itself (e.g. a plain model.pt).
    """

    def __init__(
        self, save_dict: Mapping[str, object], filepath: str, interval: int = 0, engine_key: str | None = None
    ):
        self.save_dict = dict(save_dict)
        self.filepath = filepath
        self.interval = int(interval)
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        if self.engine_key:
            self.save_dict[self.engine_key] = engine
        if self.interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        states = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        for name, state in states.items():
            bad, total = non_finite_values(state) if isinstance(state, dict) else (0, 0)
            if bad:
                raise ValueError(
                    f"{self.filepath}: not written: {bad} of {total} values of {name} are NaN or "
                    "infinite (training diverged); the file there, if any, is the last good one."
                )
        torch_save(next(iter(states.values())) if len(states) == 1 else states, self.filepath)


def check_checkpoint_file(path: str) -> None:
    """Refuse a truncated or corrupt checkpoint before training starts: torch.save writes a zip archive,
    whose central directory (at the end) and per-member CRCs catch a cut-off or damaged file."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as error:
        raise ValueError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {error}); "
            "use an earlier copy or start without --resume / --init_from."
        ) from None
    if damaged is not None:
        raise ValueError(f"{path}: damaged checkpoint ({damaged} fails its CRC check); use an earlier copy.")


def check_start_checkpoints(*paths: str | None) -> None:
    """Each given checkpoint (``--resume``, ``--init_from``) exists and reads: checked before the trainer
    is built, so a bad path leaves no TensorBoard folder or checkpoint behind."""
    for path in paths:
        if not path:
            continue
        if not isinstance(path, (str, os.PathLike)) or os.path.isdir(path):
            raise ValueError(f"{path!r}: expected a checkpoint file.")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such checkpoint file.")
        check_checkpoint_file(path)


def _key_mismatch(held, module: torch.nn.Module) -> str | None:
    """How a state dict differs from ``module``'s (None when the keys agree)."""
    expected = set(module.state_dict())
    keys = set(held) if isinstance(held, Mapping) else set()
    if keys == expected:
        return None
    missing, extra = sorted(expected - keys), sorted(keys - expected)
    return (
        f"{len(missing)} of its {len(expected)} entries missing"
        + (f" (e.g. {missing[0]})" if missing else "")
        + (f", {len(extra)} unexpected (e.g. {extra[0]})" if extra else "")
    )


def check_checkpoint_holds(path: str | None, option: str, expected) -> None:
    """``path`` (given as ``--option``) fits this configuration: ``expected`` is a network (the file is its
    state dict: a model file) or ``{name: object}`` (a training checkpoint with those entries, each
    network's with the same layers). The wrong file, or one made with other network settings (e.g.
    ``--discriminator_norm``), is named before any work."""
    if not path:
        return
    check_start_checkpoints(path)
    held = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    problems = (
        {"": _key_mismatch(held, expected)}
        if isinstance(expected, torch.nn.Module)
        else {
            name: (
                f"no {name} entry"
                if not isinstance(held, Mapping) or name not in held
                else _key_mismatch(held[name], obj) if isinstance(obj, torch.nn.Module) else None
            )
            for name, obj in expected.items()
        }
    )
    problems = {name: problem for name, problem in problems.items() if problem}
    if problems:
        name, problem = next(iter(problems.items()))
        raise ValueError(
            f"{path}: does not fit --{option}: {(name + ': ') if name else ''}{problem} "
            f"({len(problems)} mismatch(es); another kind of file, or other network settings?)."
        )


class ResumeFrom:
    """Restore a StateSaver checkpoint when the run starts; no-op without a path.

    With ``engine_key`` the engine's progress (iteration, epoch) is restored too (``--resume``);
    with ``engine_key=None`` only the objects in ``load_dict`` are, so a new run with its own
    schedule starts from those weights (``--init_from``, fine-tuning).
    """

    def __init__(
        self,
        checkpoint_path: str | None,
        load_dict: Mapping[str, object],
        engine_key: str | None = "trainer",
        map_location=None,
    ):
        self.checkpoint_path = checkpoint_path
        self.load_dict = dict(load_dict)
        self.engine_key = engine_key
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        if not self.checkpoint_path:
            return
        check_start_checkpoints(self.checkpoint_path)
        loader = CheckpointLoader(
            load_path=self.checkpoint_path,
            load_dict={**self.load_dict, self.engine_key: engine} if self.engine_key else self.load_dict,
            map_location=self.map_location,
            strict=True,
        )
        loader.attach(engine)
