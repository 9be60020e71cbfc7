"""Denoise whole CT volumes (DICOM series, NIfTI files, datalists) at full resolution, in HU.

Pipeline of one volume (``denoise_volume``)
    HU ``(S, H, W)`` -> ``hu_to_unit`` (clip to ``hu_range``, map to [-1, 1]) -> pad each slice at its
    bottom/right edge to a multiple of 4 by repeating the edge pixels (MONAI ``DivisiblePad``,
    mode "edge", method "end": the ISCL generator downsamples twice) -> the network on every
    slice through a MONAI ``SliceInferer`` (``make_inferer``) -> crop the padding off (the output
    grid is the input grid exactly) -> ``unit_to_hu`` -> ``ct.restore_outside_window`` (input HU
    kept where the input lies well outside ``hu_range``, a continuous blend at its edges).  Slices go through in chunks of
    ``batch_size`` with a tqdm bar over slices; in eval mode the ISCL network normalises each
    slice by its own statistics, so the chunking does not change the result.

    ``mode="slice"`` (default): each full slice in one forward pass.  ``mode="tiled"``:
    ``tile_size`` x ``tile_size`` tiles with ``overlap``, blended with a Gaussian weight (lower
    peak memory for very large slices; not bit-equal to full slices: the network's BIN layers
    normalise by each tile's statistics, see tests/test_inference.py).  Every step after the
    network is continuous in its output, so a network whose output leaves [-1, 1] is extrapolated,
    not clipped.  HU outside ``hu_range`` are clipped on the way in, as in training, and restored
    on the way out.

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
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import DivisiblePad, MapTransform
from torch import nn

from .atomic import check_output_folder, folder_lock, merge_into_folder, staged_folder
from .ct import HU_RANGE, OUTSIDE_WINDOW_MARGIN_HU, hu_to_unit, restore_outside_window, unit_to_hu
from .device import resolve_device
from .errors import InferenceError
from .inputs import check_outputs, collect_inputs
from .model_facts import model_settings
from .networks import ISCLDenoiser, non_finite_values
from .settings import flag
from .volume_io import MIN_SIZE, Volume, index_affine, is_nifti, read_volume, write_volume

__all__ = ["load_weights", "load_denoiser", "make_inferer", "denoise_volume", "DenoiseOptions", "DeclaredPipeline",
           "denoise_path", "LoadVolumed", "RestoreOutsideWindowd"]

DIVISOR = 4  # the generator downsamples twice
MAX_TILE = 2048  # a larger tile only pads (a 100,000-pixel tile would allocate 40 GB)


# ----------------------------------------------------------------------------------- model
def load_weights(network: nn.Module, model_path: str | os.PathLike) -> nn.Module:
    """Load a ``network_def`` state dict (``models/model.pt``) into ``network`` strictly; eval mode."""
    path = os.fspath(model_path)
    if not os.path.isfile(path):
        raise InferenceError(f"{path}: model file not found (expected the bundle's models/model.pt).")
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    not_iscl = f"{path}: not an ISCL network_def state dict (scripts.networks.ISCLDenoiser)"
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
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state.items()
             if v.shape != expected[k].shape]
    if wrong:
        raise InferenceError(f"{not_iscl}: {len(wrong)} tensor(s) of the wrong shape, e.g. {wrong[0]}.")
    bad, total = non_finite_values(state)
    if bad:
        raise InferenceError(f"{path}: {bad} of {total} weights are NaN or infinite (a diverged training); "
                             "refusing to denoise with it.")
    network.load_state_dict(state, strict=True)
    return network.eval()


def load_denoiser(model_path: str | os.PathLike, gamma: float | None = None, device=None) -> ISCLDenoiser:
    """The exported ensemble ``ISCLDenoiser(gamma)`` with the weights of ``model_path``, eval mode, on
    ``device`` (default: CUDA when available, else CPU); ``gamma`` None: the model's own (``model_facts``)."""
    gamma, _ = model_settings(model_path, gamma)
    return load_weights(ISCLDenoiser(gamma=gamma).to(resolve_device(device)), model_path)


# ----------------------------------------------------------------------------------- denoising
def make_inferer(mode: str = "slice", tile_size: int = 256, overlap: float = 0.25, batch_size: int = 1,
                 progress: bool = False) -> SliceInferer:
    """The MONAI inferer for a ``(N, 1, S, H, W)`` volume of slices (``spatial_dim=0``).

    "slice": each full slice at once (``roi_size=(-1, -1)``: the whole padded slice).  "tiled":
    ``tile_size`` tiles (a multiple of 4), ``overlap`` in [0, 1), Gaussian blending; slices smaller
    than a tile are padded by edge replication inside the inferer and cropped back.
    ``batch_size``: slices (or tiles) per forward pass.
    """
    common = {"spatial_dim": 0, "sw_batch_size": int(batch_size), "progress": flag(progress, "progress")}
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1.")
    if mode == "slice":
        return SliceInferer(roi_size=(-1, -1), overlap=0.0, **common)
    if mode == "tiled":
        if int(tile_size) != tile_size or not MIN_SIZE <= tile_size <= MAX_TILE or tile_size % DIVISOR:
            raise ValueError(f"tile_size={tile_size!r}: expected an integer from {MIN_SIZE} to {MAX_TILE}, a multiple of "
                             f"{DIVISOR}.")
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap={overlap!r}: expected a value in [0, 1).")
        return SliceInferer(roi_size=(int(tile_size), int(tile_size)), overlap=float(overlap), mode="gaussian",
                            padding_mode="replicate", **common)
    raise ValueError(f"mode={mode!r}: expected 'slice' or 'tiled'.")


def _network_device(network: nn.Module) -> torch.device:
    return next((p.device for p in network.parameters()), torch.device("cpu"))


def _float16_autocast(device: torch.device, amp: bool):
    """float16 autocast where it pays (CUDA); a no-op context elsewhere."""
    return torch.autocast("cuda", dtype=torch.float16, enabled=amp and device.type == "cuda")


def denoise_volume(hu, network: nn.Module, device=None, hu_range=HU_RANGE, mode: str = "slice", tile_size: int = 256,
                   overlap: float = 0.25, amp: bool = False, progress: bool = True, batch_size: int = 1,
                   inferer=None, outside_margin: float = OUTSIDE_WINDOW_MARGIN_HU) -> np.ndarray:
    """Denoise ``hu`` ``(S, H, W)`` (or one ``(H, W)`` slice) slice by slice; float32 HU of the same shape.

    ``network``: any module mapping ``(N, 1, H, W)`` in [-1, 1] to the same shape (put in eval mode
    for the call).  ``device``: where it runs (default: the network's device; the network is moved
    there).  ``amp``: float16 autocast, CUDA only (ignored with a warning on CPU).  ``inferer``: a
    ready inferer (``make_inferer``, e.g. the config's ``inferer``) instead of mode/tile_size/overlap.
    ``outside_margin``: see ``ct.restore_outside_window``; None returns the network's output in
    ``hu_range`` alone (no input HU restored outside it).
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim not in (2, 3) or hu.shape[-1] < 1 or hu.shape[-2] < 1:
        raise ValueError(f"denoise_volume expects (S, H, W) or (H, W) HU, got shape {hu.shape}.")
    volume = hu[None] if hu.ndim == 2 else hu
    dev = _network_device(network) if device is None else torch.device(device)
    network.to(dev)
    amp, progress = flag(amp, "amp"), flag(progress, "progress")
    if amp and dev.type != "cuda":
        warnings.warn(f"amp=True is CUDA-only; running in float32 on {dev}.", UserWarning, stacklevel=2)
    inferer = inferer if inferer is not None else make_inferer(mode, tile_size, overlap, batch_size)
    pad = DivisiblePad(k=(1, DIVISOR, DIVISOR), mode="edge", method="end")

    from tqdm.auto import tqdm

    s, h, w = volume.shape
    chunk = max(int(batch_size), 1)
    out = np.empty((s, h, w), dtype=np.float32)
    was_training = network.training
    network.eval()

    def run_network(x):  # accumulate in float32 even under autocast
        with _float16_autocast(dev, amp):
            return network(x).float()

    try:
        with torch.inference_mode(), tqdm(total=s, unit="slice", desc="denoising", disable=not progress) as bar:
            for k in range(0, s, chunk):
                source = torch.from_numpy(volume[k : k + chunk])
                x = pad(hu_to_unit(source, hu_range)[None]).as_tensor()[None].to(dev)  # (1, 1, n, Hp, Wp)
                y = unit_to_hu(inferer(x, run_network)[0, 0, :, :h, :w].float().cpu(), hu_range)
                if outside_margin is not None:
                    y = restore_outside_window(y, source, hu_range, outside_margin)
                out[k : k + chunk] = y.numpy()
                bar.update(min(chunk, s - k))
    finally:
        network.train(was_training)
    return out[0] if hu.ndim == 2 else out


@dataclass
class DenoiseOptions:
    """How ``denoise_path`` runs: ``gamma`` (ensemble weight of F, for the default network; None: the
    model's own, ``model_facts``), ``device``
    (None: CUDA when available), ``mode``/``tile_size``/``overlap``/``batch_size`` (see ``make_inferer``),
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


class DeclaredPipeline:
    """One volume through a config's declared ``preprocessing`` -> ``inferer`` -> ``postprocessing``
    (``inference.json``; MONAI Label and Deploy take the same three): read and keep the input HU,
    window to [-1, 1], pad to a multiple of 4, the network on every slice, unpad, back to HU, the
    input HU restored outside the window.  Equal to ``denoise_volume`` up to float rounding."""

    def __init__(self, preprocessing, inferer, postprocessing, amp: bool = False):
        self.preprocessing, self.inferer, self.postprocessing = preprocessing, inferer, postprocessing
        self.amp = flag(amp, "amp")

    def __call__(self, item, network: nn.Module, device: torch.device) -> tuple[Volume, np.ndarray]:
        data = self.preprocessing({"image": item})
        with torch.no_grad(), _float16_autocast(device, self.amp):
            data["pred"] = self.inferer(data["image"][None].to(device), network)[0].float().cpu()
        data = self.postprocessing(data)
        return data["image_volume"], data["pred"][0].numpy()


def _direct_pipeline(inferer, opt: DenoiseOptions):
    """``denoise_volume`` as a pipeline (what ``cli.py denoise`` and evaluation run)."""

    def run(item, network: nn.Module, device: torch.device) -> tuple[Volume, np.ndarray]:
        volume = read_volume(item, force=opt.force)
        return volume, denoise_volume(volume.hu, network, device=device, hu_range=opt.hu_range, amp=opt.amp,
                                      progress=opt.progress, batch_size=opt.batch_size, inferer=inferer)

    return run


def _output_folder_and_file(output) -> tuple[str, str | None]:
    """An output named like a NIfTI file (``out.nii.gz``) is that file in its folder; anything else a folder."""
    output = os.path.abspath(os.fspath(output))
    if is_nifti(output) and not os.path.isdir(output):
        return os.path.dirname(output), os.path.basename(output)
    return output, None


def _one_output_file(items: list, input_path, output_dir: str, output_file: str) -> list:
    if len(items) != 1:
        raise InferenceError(f"{os.path.join(output_dir, output_file)}: a .nii / .nii.gz output names one file, but "
                             f"{input_path} holds {len(items)} volumes; give an output folder instead.")
    return [(output_file, items[0][1])]


def denoise_path(input_path, output_dir, model_path, options: DenoiseOptions | None = None, *,
                 network: nn.Module | None = None, inferer=None, pipeline=None, **fields) -> list[str]:
    """Denoise every volume ``input_path`` names (see ``inputs.collect_inputs``) into ``output_dir``; the
    written paths.  ``options`` (or its fields as keywords): see :class:`DenoiseOptions`.

    ``network``: a ``network_def`` instance to load ``model_path`` into (default ``ISCLDenoiser(gamma)``;
    its own gamma then applies).  ``inferer``: overrides mode/tile_size/overlap.  ``pipeline``: how one
    volume is read and denoised (a :class:`DeclaredPipeline`; default ``denoise_volume``).
    ``output_dir`` must not be (inside) an input folder; an existing output name is refused unless
    ``overwrite``. An ``output_dir`` named like a NIfTI file (``out.nii.gz``) is that file (one input volume,
    DICOM or NIfTI, written as NIfTI).  All outputs are staged next to ``output_dir`` and merged into it when every
    volume is done.
    """
    opt = dataclasses.replace(options or DenoiseOptions(), **fields)
    if output_dir is None:
        raise InferenceError("output_dir is not set: pass the folder to write the denoised volumes to.")
    output_dir, output_file = _output_folder_and_file(output_dir)
    check_output_folder(output_dir, "output directory")
    dev = resolve_device(opt.device)
    items = collect_inputs(input_path, force=opt.force, split=opt.split)
    if output_file is not None:
        items = _one_output_file(items, input_path, output_dir, output_file)
    check_outputs(items, output_dir, input_path, opt.overwrite)
    with folder_lock(output_dir, "output directory"):
        return _denoise_items(items, input_path, output_dir, model_path, opt, network, inferer, pipeline, dev)


def _denoise_items(items, input_path, output_dir, model_path, opt: DenoiseOptions, network, inferer, pipeline,
                   dev) -> list[str]:
    """``denoise_path`` once the output folder is locked: the outputs checked again (another run may have
    written them meanwhile), then every volume staged and merged."""
    targets = check_outputs(items, output_dir, input_path, opt.overwrite)
    gamma, hu_range = model_settings(model_path, opt.gamma, opt.hu_range)
    opt = dataclasses.replace(opt, gamma=gamma, hu_range=hu_range)
    net = load_weights((network if network is not None else ISCLDenoiser(gamma=opt.gamma)).to(dev), model_path)
    net = torch.compile(net) if opt.compile else net
    if pipeline is None:
        inferer = inferer if inferer is not None else make_inferer(opt.mode, opt.tile_size, opt.overlap, opt.batch_size)
        pipeline = _direct_pipeline(inferer, opt)

    names = [name for name, _ in items]
    with staged_folder(output_dir, install=functools.partial(merge_into_folder, names=names)) as staging:
        for name, item in items:
            volume, hu = pipeline(item, net, dev)
            staged = os.path.join(staging, name)
            os.makedirs(os.path.dirname(staged), exist_ok=True)
            write_volume(volume, hu, staged, suffix=opt.suffix)
            del volume, hu
    return targets


# ----------------------------------------------------------------------------------- transform
class LoadVolumed(MapTransform):
    """``{key: path}`` -> ``{key: MetaTensor (1, S, H, W) HU, key + "_volume": Volume}`` via ``read_volume``.

    The reader of the config's ``preprocessing`` (NIfTI or a one-series DICOM folder); the tensor's
    affine maps its ``(s, h, w)`` index to RAS+ mm (MONAI's convention).
    """

    def __init__(self, keys, force: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.force = force

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            volume = read_volume(d[key], force=self.force)
            d[key] = MetaTensor(torch.from_numpy(volume.hu)[None], affine=torch.as_tensor(index_affine(volume)),
                                meta={"filename_or_obj": volume.path})
            d[key + "_volume"] = volume
        return d


class RestoreOutsideWindowd(MapTransform):
    """``ct.restore_outside_window`` as the last step of the config's ``postprocessing``: ``d[key]``
    (denoised HU) blended back into the input HU ``d[source_key]`` (kept by ``CopyItemsd`` before
    the window is applied) where the input lies outside ``hu_range``."""

    def __init__(self, keys, source_key: str, hu_range, margin: float = OUTSIDE_WINDOW_MARGIN_HU,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.hu_range = tuple(float(v) for v in hu_range)
        self.margin = float(margin)

    def __call__(self, data):
        d = dict(data)
        source = torch.as_tensor(d[self.source_key])
        for key in self.key_iterator(d):
            pred = d[key]
            d[key] = restore_outside_window(pred, source.to(device=pred.device, dtype=pred.dtype),
                                            self.hu_range, self.margin)
        return d
