"""Every benchmark method as a denoiser ``(low-dose HU (S, H, W), pixel size mm, I0) -> HU (S, H, W)``,
trained on first use and cached, so that re-rendering the table costs seconds.

Kinds (``benchmark.json``, ``methods``): ``input`` (the low dose itself, the floor); ``bm3d`` (white
noise, std from the slice, or ``correlated`` with a PSD from a calibration scan or from the slice);
``supervised`` and ``blind_spot`` (a network declared in the config, trained by ``baseline_training``;
a supervised method with ``"pairs": "real_ct"`` learns from the real-CT set's pairs instead of the
simulated set's); ``unpaired`` (UIDNet: the config's denoiser ``network``, ``noise_generator`` and
``critic``, trained by ``uidnet`` on ISCL's two unpaired pools);
``iscl`` (``train.json`` with the method's ablation ``components``, trained through ``monai.bundle
run``); ``shipped`` (a model file).
Trained weights go to ``<cache>/<method>-<digest of its settings>_seed<k>/``, with ``facts.json``
(budget, wall time, device): a method whose settings change is trained again.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from scripts.core.atomic import torch_save, write_json
from .baseline_training import train_baseline
from .data import noisy_training_slices, paired_training_slices, real_ct_training_pairs, unpaired_training_slices
from .bm3d import bm3d_denoise, calibration_psd, estimate_noise_std, slice_psd
from scripts.datasets.data import read_json
from scripts.core.device import describe_device
from scripts.tasks.inference import denoise_volume, load_denoiser
from .uidnet import train_uidnet

__all__ = ["Context", "TRAINED_BASELINES", "cache_name", "make_denoiser"]

Denoiser = Callable[[np.ndarray, float, float], np.ndarray]
#: a baseline's training settings: from the budget's ``baselines``, each replaceable in the method's entry
BASELINE_SETTINGS = ("iterations", "batch_size", "patch_size", "learning_rate")
#: the method kinds trained by ``baseline_training`` with the budget's ``baselines`` settings
TRAINED_BASELINES = ("supervised", "blind_spot", "unpaired")


@dataclass
class Context:
    """What every method needs: the simulated datalist (training data), the training window, the
    budget's settings, where to cache, which device, whether to show progress, and for ISCL the
    training config files and the overrides that point it at the same simulated data."""

    datalist: dict
    hu_range: tuple
    budget: dict
    cache_dir: str
    device: torch.device
    progress: bool = True
    train_config: Optional[list] = None
    train_overrides: Optional[dict] = None
    cache_names: Optional[dict] = None  # method -> its cache name (the name and a digest of its settings)
    real_ct_dirs: Optional[tuple] = None  # (data set, downloads) folders of the real-CT set


def cache_name(context: Context, name: str, seed: int) -> str:
    return f"{(context.cache_names or {}).get(name, name)}_seed{seed}"


def _cached(context: Context, name: str, seed: int) -> str:
    return os.path.join(context.cache_dir, cache_name(context, name, seed))


def _read_facts(folder: str) -> Optional[dict]:
    path = os.path.join(folder, "facts.json")
    return read_json(path, "benchmark facts", ValueError) if os.path.isfile(path) else None


def _network_denoiser(network: torch.nn.Module, context: Context) -> Denoiser:
    network.eval()

    def run(low, pixel_mm, i0):
        return denoise_volume(low, network, device=context.device, hu_range=context.hu_range, progress=False)

    return run


def _bm3d(spec: dict) -> Denoiser:
    """BM3D with white noise, or correlated noise whose spectrum comes from a ``calibration`` scan or
    from the ``slice`` itself."""
    correlated = spec.get("correlated")
    if correlated not in (None, "calibration", "slice"):
        raise ValueError(f"bm3d correlated={correlated!r}: expected 'calibration', 'slice' or none")

    def run(low, pixel_mm, i0):
        out = []
        for hu in low:
            std = estimate_noise_std(hu)
            psd = (calibration_psd(hu.shape, pixel_mm, std, i0) if correlated == "calibration"
                   else slice_psd(hu, std) if correlated == "slice" else None)
            out.append(bm3d_denoise(hu, std, psd))
        return np.stack(out)

    return run


def _training_slices(spec: dict, context: Context, seed: int):
    if spec["kind"] == "blind_spot":
        return noisy_training_slices(context.datalist, context.hu_range)
    pairs = spec.get("pairs", "simulated")
    if pairs == "real_ct":
        return real_ct_training_pairs(*context.real_ct_dirs, context.hu_range)
    if pairs == "simulated":
        return paired_training_slices(context.datalist, context.hu_range, seed)
    raise ValueError(f"supervised pairs={pairs!r}: expected 'simulated' or 'real_ct'")


def _train(spec: dict, network: torch.nn.Module, settings: dict, seed: int, context: Context) -> None:
    schedule = {k: settings[k] for k in BASELINE_SETTINGS}  # both trainers take these four by name
    if spec["kind"] == "unpaired":
        clean, noisy = unpaired_training_slices(context.datalist, context.hu_range)
        train_uidnet(network, clean, noisy, **schedule, device=context.device, seed=seed, progress=context.progress,
                     generator=spec["noise_generator"](), critic=spec["critic"](patch_size=settings["patch_size"]))
    else:
        train_baseline(network, _training_slices(spec, context, seed), **schedule, masking=spec.get("masking"),
                       device=context.device, seed=seed, progress=context.progress)


def _baseline(name: str, spec: dict, seed: int, context: Context):
    """A config-declared network, trained once per seed (supervised pairs, blind-spot masking, or UIDNet)."""
    folder = _cached(context, name, seed)
    weights = os.path.join(folder, "model.pt")
    torch.manual_seed(seed)
    network = spec["network"]()
    if not os.path.isfile(weights):
        # a method may fix its own schedule (e.g. the shipped weights' budget); the budget gives the rest
        settings = {**context.budget["baselines"], **{k: spec[k] for k in BASELINE_SETTINGS if k in spec}}
        start = time.perf_counter()
        _train(spec, network, settings, seed, context)
        facts = {**{k: settings[k] for k in BASELINE_SETTINGS}, "wall_s": time.perf_counter() - start,
                 "device": describe_device(context.device)}
        os.makedirs(folder, exist_ok=True)
        torch_save(network.state_dict(), weights)
        write_json(facts, os.path.join(folder, "facts.json"))
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return _network_denoiser(network.to(context.device), context), _read_facts(folder)


def _train_iscl(name: str, spec: dict, seed: int, context: Context, folder: str) -> None:
    from monai.bundle import run

    settings = dict(context.budget["iscl"])
    overrides = {"output_dir": folder, "model_path": os.path.join(folder, "model.pt"), "seed": seed,
                 "components": spec["components"], **(context.train_overrides or {}), **settings}
    start = time.perf_counter()
    run("training", config_file=context.train_config, logging_file=False, **overrides)
    facts = {"iterations": settings["num_iterations"], "batch_size": settings["batch_size"],
             "wall_s": time.perf_counter() - start, "device": describe_device(context.device),
             "components": spec["components"]}
    write_json(facts, os.path.join(folder, "facts.json"))


def _iscl(name: str, spec: dict, seed: int, context: Context):
    """ISCL with the method's components, trained once per seed at the budget's schedule."""
    folder = _cached(context, name, seed)
    model_path = os.path.join(folder, "model.pt")
    if not (os.path.isfile(model_path) and _read_facts(folder)):
        _train_iscl(name, spec, seed, context, folder)
    return _network_denoiser(load_denoiser(model_path, device=context.device), context), _read_facts(folder)


def _shipped(spec: dict, context: Context):
    model = load_denoiser(spec["model_path"], device=context.device)
    return _network_denoiser(model, context), {"trained": spec.get("trained", "shipped weights")}


def make_denoiser(name: str, spec: dict, seed: int, context: Context) -> tuple[Denoiser, Optional[dict]]:
    """``(denoiser, facts)`` of one method and seed (training it on first use)."""
    kind = spec["kind"]
    if kind == "input":
        return (lambda low, pixel_mm, i0: np.asarray(low, np.float32)), None
    if kind == "bm3d":
        return _bm3d(spec), None
    if kind in TRAINED_BASELINES:
        return _baseline(name, spec, seed, context)
    if kind == "iscl":
        return _iscl(name, spec, seed, context)
    if kind == "shipped":
        return _shipped(spec, context)
    raise ValueError(f"benchmark method {name!r}: unknown kind {kind!r}")

