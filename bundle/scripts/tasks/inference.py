"""Denoise whole CT volumes (DICOM series, NIfTI files, datalists) at full resolution, in HU.

The model (``load_weights``, ``load_denoiser``: strict, finite weights; gamma and window from the
model's ``model_facts``) and the runs over files (``denoise_path``); each volume goes through the one
pipeline of ``pipeline.make_pipeline`` (window, pad, MONAI ``SliceInferer``, unpad, HU, outside-window
restore).  ``denoise_volume`` is that pipeline on an array.

Outputs (``denoise_path``)
    Same format as the input (``volume_io.write_volume``): ``output_dir/<input name>`` for a NIfTI
    file, one derived series folder per input DICOM series.  Everything is written into a staging
    sibling of ``output_dir`` and merged into place when all volumes are done
    (``atomic.staged_folder``); on an error nothing appears in ``output_dir``.  Inputs are only read.

Errors about the input are ``ValueError`` subclasses (:class:`InferenceError`, ``DicomDataError``,
``DataError``) whose message names the file.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..core.atomic import check_output_folder, folder_lock, merge_into_folder, staged_folder
from ..core.ct import HU_RANGE, OUTSIDE_WINDOW_MARGIN_HU
from ..core.device import resolve_device, usable_compile
from ..core.errors import InferenceError
from ..core.settings import flag
from ..model.model_facts import model_settings
from ..model.networks import ISCLDenoiser, non_finite_values
from ..volumes.volume_io import is_nifti
from .inputs import check_outputs, collect_inputs
from .pipeline import DenoisePipeline, make_pipeline, network_device
from .volume_denoiser import VolumeDenoiser

__all__ = [
    "load_weights",
    "load_denoiser",
    "denoise_volume",
    "DenoiseOptions",
    "check_output",
    "denoise_path",
    "denoise_with",
]


# ----------------------------------------------------------------------------------- model
def load_weights(network: nn.Module, model_path: str | os.PathLike) -> nn.Module:
    """Load a ``network_def`` state dict (``models/model.pt``) into ``network`` strictly; eval mode."""
    path = os.fspath(model_path)
    if not os.path.isfile(path):
        raise InferenceError(f"{path}: model file not found (expected the bundle's models/model.pt).")
    device = network_device(network)
    not_iscl = f"{path}: not an ISCL network_def state dict (scripts.model.networks.ISCLDenoiser)"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # pickle / zip errors of many types
        raise InferenceError(f"{not_iscl}: cannot be read by torch.load ({type(e).__name__}: {e}).") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InferenceError(f"{not_iscl}: it holds a {type(state).__name__}, not a mapping of tensors.")
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise InferenceError(
            f"{not_iscl}: {len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected key(s) {unexpected[:3]}."
        )
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise InferenceError(f"{not_iscl}: {len(wrong)} tensor(s) of the wrong shape, e.g. {wrong[0]}.")
    bad, total = non_finite_values(state)
    if bad:
        raise InferenceError(
            f"{path}: {bad} of {total} weights are NaN or infinite (a diverged training); "
            "refusing to denoise with it."
        )
    network.load_state_dict(state, strict=True)
    return network.eval()


def load_denoiser(model_path: str | os.PathLike, gamma: float | None = None, device=None) -> ISCLDenoiser:
    """The exported ensemble ``ISCLDenoiser(gamma)`` with the weights of ``model_path``, eval mode, on
    ``device`` (default: CUDA when available, else CPU); ``gamma`` None: the model's own (``model_facts``)."""
    gamma, _ = model_settings(model_path, gamma)
    return load_weights(ISCLDenoiser(gamma=gamma).to(resolve_device(device)), model_path)


# ----------------------------------------------------------------------------------- denoising
def denoise_volume(
    hu,
    network: nn.Module,
    device=None,
    hu_range=HU_RANGE,
    mode: str = "slice",
    tile_size: int = 256,
    overlap: float = 0.25,
    amp: bool = False,
    progress: bool = True,
    batch_size: int = 1,
    outside_margin: float | None = OUTSIDE_WINDOW_MARGIN_HU,
) -> np.ndarray:
    """Denoise ``hu`` ``(S, H, W)`` (or one ``(H, W)`` slice) with ``network`` through the bundle's pipeline
    (``pipeline.make_pipeline`` with these settings); float32 HU of the same shape."""
    pipeline = make_pipeline(
        hu_range, mode, tile_size, overlap, batch_size, amp=amp, progress=progress, outside_margin=outside_margin
    )
    return pipeline.denoise(hu, network, device)


@dataclass
class DenoiseOptions:
    """How ``denoise_path`` runs: ``gamma`` (ensemble weight of F, for the default network; None: the
    model's own, ``model_facts``), ``device``
    (None: CUDA when available), ``mode``/``tile_size``/``overlap``/``batch_size`` (see ``pipeline.make_inferer``),
    ``amp`` (float16 autocast, CUDA only), ``force`` (process values that fail the HU sanity check of
    ``volume_io.check_ct_values``), ``hu_range`` (the
    training window; None: the model's own), ``suffix`` (appended to a derived series' description), ``progress``,
    ``overwrite`` (replace existing outputs), ``split`` (the datalist split to denoise), ``compile``
    (``torch.compile`` the loaded network: the first slice of each size compiles, 10–20 s on 2 CPU
    cores, then a 512 x 512 slice takes 0.98 instead of 1.82 s there; same output within 1e-4; needs
    a C++ compiler)."""

    gamma: float | None = None
    device: Any = None
    mode: str = "slice"
    tile_size: int = 256
    overlap: float = 0.25
    batch_size: int = 1
    amp: bool = False
    force: bool = False
    hu_range: Sequence[float] | None = None
    suffix: str = " ISCL denoised"
    progress: bool = True
    overwrite: bool = False
    split: str = "test"
    compile: bool = False

    def __post_init__(self):
        for name in ("amp", "force", "progress", "overwrite", "compile"):
            setattr(self, name, flag(getattr(self, name), name))


def _output_folder_and_file(output) -> tuple[str, str | None]:
    """An output named like a NIfTI file (``out.nii.gz``) is that file in its folder; anything else a folder."""
    output = os.path.abspath(os.fspath(output))
    if is_nifti(output) and not os.path.isdir(output):
        return os.path.dirname(output), os.path.basename(output)
    return output, None


def check_output(output_dir) -> tuple[str, str | None]:
    """The output folder and file name ``output_dir`` names; refused (unset, an existing file, an unwritable
    place) before any input is read."""
    if output_dir is None:
        raise InferenceError("output_dir is not set: pass the folder to write the denoised volumes to.")
    folder, file_name = _output_folder_and_file(output_dir)
    check_output_folder(folder, "output directory")
    return folder, file_name


def _one_output_file(items: list, input_path, output_dir: str, output_file: str) -> list:
    if len(items) != 1:
        raise InferenceError(
            f"{os.path.join(output_dir, output_file)}: a .nii / .nii.gz output names one file, but "
            f"{input_path} holds {len(items)} volumes; give an output folder instead."
        )
    return [(output_file, items[0][1])]


def denoise_path(
    input_path,
    output_dir,
    model_path,
    options: DenoiseOptions | None = None,
    *,
    network: nn.Module | None = None,
    pipeline: DenoisePipeline | None = None,
    **fields,
) -> list[str]:
    """Denoise every volume ``input_path`` names (see ``inputs.collect_inputs``) into ``output_dir``; the
    written paths.  ``options`` (or its fields as keywords): see :class:`DenoiseOptions`.

    ``network``: a ``network_def`` instance to load ``model_path`` into (default ``ISCLDenoiser(gamma)``;
    its own gamma then applies).  ``pipeline``: the config's ``pipeline.make_pipeline`` (default: one made from
    the options, in the model's window).  Runs :func:`denoise_with` on a ``VolumeDenoiser`` of them.
    """
    opt = dataclasses.replace(options or DenoiseOptions(), **fields)
    check_output(output_dir)
    volumes = collect_inputs(input_path, force=opt.force, split=opt.split)
    gamma, hu_range = model_settings(model_path, opt.gamma, opt.hu_range)
    if pipeline is None:
        pipeline = make_pipeline(
            hu_range,
            opt.mode,
            opt.tile_size,
            opt.overlap,
            opt.batch_size,
            amp=opt.amp,
            force=opt.force,
            progress=opt.progress,
        )
    network = network if network is not None else ISCLDenoiser(gamma=gamma)
    engine = VolumeDenoiser(resolve_device(opt.device), volumes, network, pipeline, opt.suffix)
    return denoise_with(engine, input_path, output_dir, model_path, opt)


def denoise_with(engine: VolumeDenoiser, input_path, output_dir, model_path, options: DenoiseOptions) -> list[str]:
    """Load ``model_path`` into the engine's network and run the engine (``inference.json``'s ``evaluator``,
    its volumes found in ``input_path``) into ``output_dir``; the written paths.

    ``output_dir`` must not be (inside) an input folder; an existing output name is refused unless
    ``overwrite``. An ``output_dir`` named like a NIfTI file (``out.nii.gz``) is that file (one input volume,
    DICOM or NIfTI, written as NIfTI).  All outputs are staged next to ``output_dir`` and merged into it when every
    volume is done.
    """
    output_dir, output_file = check_output(output_dir)
    if output_file is not None:
        engine.set_volumes(_one_output_file(engine.volumes, input_path, output_dir, output_file))
    check_outputs(engine.volumes, output_dir, input_path, options.overwrite)
    with folder_lock(output_dir, "output directory"):
        # checked again: another run may have written them meanwhile
        targets = check_outputs(engine.volumes, output_dir, input_path, options.overwrite)
        device = engine.state.device
        network = load_weights(engine.network.to(device), model_path)
        engine.network = torch.compile(network) if usable_compile(options.compile, device) else network
        names = [name for name, _ in engine.volumes]
        with staged_folder(output_dir, install=functools.partial(merge_into_folder, names=names)) as staging:
            engine.denoise_into(staging)
    return targets
