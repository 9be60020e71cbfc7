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

Axis conventions
    ``Volume.hu`` is ``(S, H, W)`` float32: slice, row, column.  DICOM: exactly
    ``dicom_io.read_series_hu`` (slices ordered along the slice normal).  NIfTI: nibabel's
    ``(X, Y, Z)`` array becomes ``hu[k] = data[:, :, k]`` (``np.moveaxis(data, -1, 0)``), the same
    slices ``data.read_slice_hu`` feeds training; a 2D ``(X, Y)`` image is ``S = 1``.
    ``write_volume`` inverts this exactly.

Outputs (``denoise_path``)
    Same format as the input.  NIfTI: ``output_dir/<input name>``, float32 HU, with the input's
    affine, header (only data type and scaling change), shape and axis order.  DICOM: one derived
    series folder per input series (``dicom_io.write_ct_series`` with ``source``): patient/study/
    geometry tags kept, new SeriesInstanceUID/SOPInstanceUIDs, ImageType DERIVED\\SECONDARY,
    SeriesDescription + ``suffix``, HU re-encoded with RescaleSlope/Intercept (re-read within
    0.5 HU).  Everything is written into a temporary sibling of ``output_dir`` and moved into place
    when all volumes are done; on an error nothing appears in ``output_dir``.  Inputs are only read.

Errors about the input are ``ValueError`` subclasses (:class:`InferenceError`, ``DicomDataError``,
``DataError``) whose message names the file.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import DivisiblePad, MapTransform
from torch import nn

from .atomic import check_output_folder, staging_dir
from .ct import HU_RANGE, OUTSIDE_WINDOW_MARGIN_HU, hu_to_unit, restore_outside_window, unit_to_hu
from .data import DataError, check_nifti_size, is_nifti, load_datalist
from .dicom_io import DicomSkipWarning, SeriesInfo, list_files, read_series_hu, scan_series, write_ct_series
from .networks import ISCLDenoiser

__all__ = [
    "InferenceError",
    "Volume",
    "MIN_SIZE",
    "load_weights",
    "load_denoiser",
    "read_volume",
    "read_series",
    "write_volume",
    "write_nifti",
    "check_hu",
    "make_inferer",
    "denoise_volume",
    "collect_inputs",
    "denoise_path",
    "LoadVolumed",
]

MIN_SIZE = 8  # smallest in-plane size accepted (rows and columns)
DIVISOR = 4  # the generator downsamples twice
DERIVED_IMAGE_TYPE = ("DERIVED", "SECONDARY", "AXIAL")


class InferenceError(ValueError):
    """Bad inference input, output location or model file; the message names the file."""


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
    network.load_state_dict(state, strict=True)
    return network.eval()


def load_denoiser(model_path: str | os.PathLike, gamma: float = 0.5, device=None) -> ISCLDenoiser:
    """The exported ensemble ``ISCLDenoiser(gamma=gamma)`` with the weights of ``model_path``, eval mode,
    on ``device`` (default: CUDA when available, else CPU)."""
    return load_weights(ISCLDenoiser(gamma=gamma).to(resolve_device(device)), model_path)


def resolve_device(device=None) -> torch.device:
    """``device`` as a torch.device; None (or "") means CUDA when available, else CPU. A device this
    machine's torch cannot use is refused here, before any input is read."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InferenceError(f"device {device!r}: not a torch device ({error}).") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device {device!r}: this torch has no usable CUDA device "
                             f"(torch {torch.__version__}); use --device cpu or install a CUDA build.")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InferenceError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here.")
    return resolved


def describe_device(device: torch.device) -> str:
    """The device in words, for reports and benchmarks: the GPU model, or the CPU model and torch threads."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model}, {torch.get_num_threads()} torch threads"


# ----------------------------------------------------------------------------------- reading
@dataclass
class Volume:
    """A CT volume in HU as read for inference; ``source`` is what ``write_volume`` needs to write it back."""

    hu: np.ndarray  # float32 (S, H, W)
    kind: str  # "dicom" | "nifti"
    source: Any  # SeriesInfo (DICOM) or the nibabel image (NIfTI)
    path: str  # the NIfTI file or the series folder

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """(between rows, between columns) in mm."""
        if self.kind == "dicom":
            return tuple(float(v) for v in self.source.pixel_spacing)
        zooms = self.source.header.get_zooms()
        return float(zooms[0]), float(zooms[1])


def check_hu(hu: np.ndarray, where: str) -> np.ndarray:
    """``hu`` unchanged, or an InferenceError naming ``where``: in-plane size below MIN_SIZE, NaN or Inf voxels."""
    if hu.shape[-2] < MIN_SIZE or hu.shape[-1] < MIN_SIZE:
        raise InferenceError(
            f"{where}: image is {hu.shape[-2]}x{hu.shape[-1]} pixels; at least {MIN_SIZE}x{MIN_SIZE} is needed."
        )
    if not np.isfinite(hu).all():
        raise InferenceError(f"{where}: contains NaN or Inf voxels; expected finite HU values.")
    return hu


def _read_nifti(path: str) -> Volume:
    try:
        image = nib.load(path)
    except Exception as e:
        raise InferenceError(f"{path}: cannot read NIfTI file ({type(e).__name__}: {e}).") from e
    if image.ndim not in (2, 3):
        raise InferenceError(f"{path}: expected a 2D or 3D NIfTI image, got shape {image.shape}.")
    try:
        check_nifti_size(path, image)
    except DataError as e:
        raise InferenceError(str(e)) from None
    try:
        data = image.get_fdata(dtype=np.float32)
    except Exception as e:  # truncated / corrupt data block
        raise InferenceError(f"{path}: cannot read the NIfTI voxel data ({type(e).__name__}: {e}).") from e
    hu = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
    return Volume(np.ascontiguousarray(check_hu(hu, path)), "nifti", image, path)


def _check_modality(series: SeriesInfo, force: bool) -> None:
    if series.modality == "CT":
        return
    message = (
        f"{series.files[0]}: modality {series.modality or '(missing)'} is not CT (series {series.directory}); "
        "the denoiser was trained on CT in HU"
    )
    if not force:
        raise InferenceError(message + "; pass force=True (--force) to process it anyway.")
    warnings.warn(message + "; processing it anyway (force=True).", UserWarning, stacklevel=3)


def read_series(series: SeriesInfo, force: bool = False) -> Volume:
    """One scanned DICOM series as a :class:`Volume` (non-CT refused unless ``force``)."""
    _check_modality(series, force)
    hu, _ = read_series_hu(series)
    return Volume(check_hu(hu, series.directory), "dicom", series, series.directory)


def _scan_dicom(paths) -> list[SeriesInfo]:
    """Every DICOM series among ``paths`` (a folder or files), any modality; skipped files summed up in one warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DicomSkipWarning)
        series = scan_series(paths, modality=None)
    skipped = [w for w in caught if issubclass(w.category, DicomSkipWarning)]
    for w in caught:
        if not issubclass(w.category, DicomSkipWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if skipped and series:
        warnings.warn(f"{len(skipped)} file(s) skipped, e.g. {skipped[0].message}", DicomSkipWarning, stacklevel=3)
    return series


def read_volume(path: str | os.PathLike, force: bool = False) -> Volume:
    """A NIfTI file or a folder holding one DICOM series as a :class:`Volume` (HU, float32, (S, H, W))."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InferenceError(f"{path}: no such file or directory (expected a NIfTI file or a DICOM series folder).")
    item = _volume_item(path)
    return read_series(item, force=force) if isinstance(item, SeriesInfo) else _read_nifti(item)


# ----------------------------------------------------------------------------------- writing
def _series_description(source: SeriesInfo, suffix: str) -> str:
    base = source.series_description[: max(64 - len(suffix), 0)]  # LO: 64 characters at most
    return (base + suffix).strip()[:64]


def _same_shape(volume: Volume, hu: np.ndarray, out_path: str) -> np.ndarray:
    hu = np.asarray(hu, dtype=np.float32)
    if hu.shape != volume.hu.shape:
        raise ValueError(f"{out_path}: volume shape {hu.shape} differs from the input's {volume.hu.shape} ({volume.path}).")
    return hu


def write_volume(volume: Volume, hu: np.ndarray, out_path: str, suffix: str = " ISCL denoised") -> str:
    """Write ``hu`` (same shape as ``volume.hu``) like ``volume``: a NIfTI file or a derived DICOM series folder."""
    if volume.kind != "dicom":
        return write_nifti(volume, hu, out_path)
    write_ct_series(
        _same_shape(volume, hu, out_path), out_path, source=volume.source,
        series_description=_series_description(volume.source, suffix), image_type=DERIVED_IMAGE_TYPE,
        derivation_description="Denoised by the ISCL bundle (scripts/inference.py)",
    )
    return out_path


def write_nifti(volume: Volume, hu: np.ndarray, out_path: str) -> str:
    """Write ``hu`` (same shape as ``volume.hu``) as a float32 NIfTI file: a NIfTI input's affine, header
    and axis order; a DICOM series' geometry as the RAS+ affine of an array ``[row, column, slice]``."""
    hu = _same_shape(volume, hu, out_path)
    if volume.kind == "dicom":
        image = nib.Nifti1Image(np.moveaxis(hu, 0, -1), _index_affine(volume)[:, [1, 2, 0, 3]])
        image.header.set_xyzt_units("mm", "sec")
    else:
        source = volume.source
        data = hu[0] if len(source.shape) == 2 else np.moveaxis(hu, 0, -1)
        image = type(source)(data, source.affine, source.header.copy())
    image.header.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    nib.save(image, out_path)
    return out_path


# ----------------------------------------------------------------------------------- denoising
def make_inferer(mode: str = "slice", tile_size: int = 256, overlap: float = 0.25, batch_size: int = 1,
                 progress: bool = False) -> SliceInferer:
    """The MONAI inferer for a ``(N, 1, S, H, W)`` volume of slices (``spatial_dim=0``).

    "slice": each full slice at once (``roi_size=(-1, -1)``: the whole padded slice).  "tiled":
    ``tile_size`` tiles (a multiple of 4), ``overlap`` in [0, 1), Gaussian blending; slices smaller
    than a tile are padded by edge replication inside the inferer and cropped back.
    ``batch_size``: slices (or tiles) per forward pass.
    """
    common = {"spatial_dim": 0, "sw_batch_size": int(batch_size), "progress": bool(progress)}
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1.")
    if mode == "slice":
        return SliceInferer(roi_size=(-1, -1), overlap=0.0, **common)
    if mode == "tiled":
        if int(tile_size) != tile_size or tile_size < MIN_SIZE or tile_size % DIVISOR:
            raise ValueError(f"tile_size={tile_size!r}: expected an integer >= {MIN_SIZE}, a multiple of {DIVISOR}.")
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap={overlap!r}: expected a value in [0, 1).")
        return SliceInferer(roi_size=(int(tile_size), int(tile_size)), overlap=float(overlap), mode="gaussian",
                            padding_mode="replicate", **common)
    raise ValueError(f"mode={mode!r}: expected 'slice' or 'tiled'.")


def _network_device(network: nn.Module) -> torch.device:
    return next((p.device for p in network.parameters()), torch.device("cpu"))


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
    if amp and dev.type != "cuda":
        warnings.warn(f"amp=True is CUDA-only; running in float32 on {dev}.", UserWarning, stacklevel=2)
    use_amp = bool(amp) and dev.type == "cuda"
    inferer = inferer if inferer is not None else make_inferer(mode, tile_size, overlap, batch_size)
    pad = DivisiblePad(k=(1, DIVISOR, DIVISOR), mode="edge", method="end")

    from tqdm.auto import tqdm

    s, h, w = volume.shape
    chunk = max(int(batch_size), 1)
    out = np.empty((s, h, w), dtype=np.float32)
    was_training = network.training
    network.eval()

    def run_network(x):  # accumulate in float32 even under autocast
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
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


# ----------------------------------------------------------------------------------- paths
def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _inside(path: str, root: str) -> bool:
    """``path`` equals ``root`` or lies inside it (real paths)."""
    path, root = _real(path), _real(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _rel_name(path: str, root: str) -> str:
    rel = os.path.relpath(_real(path), _real(root))
    return os.path.basename(os.path.normpath(path)) if rel in (".", "") or rel.startswith("..") else rel


def _dir_inputs(root: str) -> list[tuple[str, Any]]:
    files = list_files(root)
    niftis = [f for f in files if is_nifti(f)]
    others = [f for f in files if not is_nifti(f) and not f.lower().endswith(".json")]
    series = _scan_dicom(others) if others else []
    if not niftis and not series:
        raise InferenceError(f"{root}: no DICOM series or NIfTI file found.")
    items = [(_rel_name(f, root), f) for f in niftis]
    named: dict[str, list[SeriesInfo]] = {}
    for s in series:
        named.setdefault(_rel_name(s.directory, root), []).append(s)
    for name, group in named.items():  # several series in one folder: one output folder each
        numbers = [s.series_number for s in group]
        unique = None not in numbers and len(set(numbers)) == len(numbers)
        for k, s in enumerate(group):
            tag = "" if len(group) == 1 else f"_series{numbers[k] if unique else k + 1}"
            items.append((name + tag, s))
    return items


def _datalist_inputs(path: str, split: str) -> list[tuple[str, Any]]:
    entries = load_datalist(path).get(split) or []
    images = []
    for i, item in enumerate(entries):
        if not isinstance(item, dict) or "image" not in item:
            raise InferenceError(f"{path}: {split}[{i}] has no 'image' entry.")
        images.append(item["image"])
    if not images:
        raise InferenceError(f"{path}: the datalist has no '{split}' items to denoise.")
    root = os.path.commonpath([os.path.dirname(_real(p)) for p in images])
    items = []
    for image in images:
        if not os.path.exists(image):
            raise InferenceError(f"{image}: no such file or directory (listed in {path}).")
        items.append((_rel_name(image, root), _volume_item(image)))
    return items


def _volume_item(path: str):
    """A NIfTI path as is, a DICOM folder as its one SeriesInfo (headers checked now)."""
    if os.path.isfile(path) and is_nifti(path):
        return path
    found = _scan_dicom(path)
    if len(found) != 1:
        what = "no DICOM series or NIfTI file" if not found else f"{len(found)} DICOM series (expected one)"
        raise InferenceError(f"{path}: {what} found.")
    return found[0]


def collect_inputs(input_path: str, force: bool = False, split: str = "test") -> list[tuple[str, Any]]:
    """``(output name, NIfTI path | DICOM folder | SeriesInfo)`` for every volume ``input_path`` names.

    A NIfTI file; a datalist JSON (its ``split`` items' ``image``); a folder (every NIfTI file and every
    DICOM series below it, named by their path relative to it; a folder that is itself one series is
    named like the folder); a single DICOM file.  Headers are checked here (truncated files, mixed sizes,
    non-CT modality unless ``force``) before any pixel is read.
    """
    if input_path is None:
        raise InferenceError("input_path is not set: pass a DICOM folder, a NIfTI file or a datalist JSON.")
    path = os.fspath(input_path)
    if not os.path.exists(path):
        raise InferenceError(f"{path}: no such file or directory (expected a DICOM folder, a NIfTI file or a datalist).")
    if os.path.isfile(path) and is_nifti(path):
        return [(os.path.basename(path), path)]
    if os.path.isfile(path) and path.lower().endswith(".json"):
        items = _datalist_inputs(path, split)
    elif os.path.isdir(path):
        items = _dir_inputs(path)
    else:
        series = _scan_dicom(path)
        if not series:
            raise InferenceError(f"{path}: not a NIfTI file, a datalist JSON, a DICOM file or a folder.")
        items = [(os.path.splitext(os.path.basename(path))[0], series[0])]
    for _, item in items:
        if isinstance(item, SeriesInfo):
            _check_modality(item, force)
    return items


def _source_paths(item) -> list[str]:
    return [item.directory] if isinstance(item, SeriesInfo) else [os.fspath(item)]


def _check_outputs(items, output_dir: str, input_path: str, overwrite: bool) -> list[str]:
    sources = [os.fspath(input_path)] + [p for _, item in items for p in _source_paths(item)]
    for src in sources:
        if os.path.isdir(src) and _inside(output_dir, src):
            raise InferenceError(f"{output_dir}: the output directory is (inside) the input {src}; choose another one.")
    targets = [os.path.join(output_dir, name) for name, _ in items]
    for target in targets:
        for src in sources:
            if _inside(src, target) or _inside(target, src):
                raise InferenceError(f"{target}: the output would replace or lie inside the input {src}.")
        if os.path.lexists(target) and not overwrite:
            raise InferenceError(f"{target}: already exists (choose another output directory or pass overwrite=True).")
    return targets


def _read_item(item, force: bool) -> Volume:
    return read_series(item, force=force) if isinstance(item, SeriesInfo) else read_volume(item, force=force)


def _move_into_place(staging: str, output_dir: str, names: Sequence[str]) -> None:
    """Rename the staged outputs into ``output_dir`` (the whole staging folder when it does not exist yet)."""
    if not os.path.exists(output_dir):
        os.replace(staging, output_dir)
        return
    for name in names:
        target = os.path.join(output_dir, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.lexists(target):  # overwrite=True: set the old one aside first
            old = tempfile.mkdtemp(prefix=".old-", dir=staging)
            os.replace(target, os.path.join(old, "x"))
        os.replace(os.path.join(staging, name), target)
    shutil.rmtree(staging, ignore_errors=True)


def denoise_path(input_path, output_dir, model_path, gamma: float = 0.5, device=None, mode: str = "slice",
                 tile_size: int = 256, overlap: float = 0.25, amp: bool = False, force: bool = False,
                 hu_range=HU_RANGE, suffix: str = " ISCL denoised", batch_size: int = 1, progress: bool = True,
                 overwrite: bool = False, split: str = "test", network: nn.Module | None = None,
                 inferer=None) -> list[str]:
    """Denoise every volume ``input_path`` names (see ``collect_inputs``) into ``output_dir``; the written paths.

    ``network``: a ``network_def`` instance to load ``model_path`` into (default ``ISCLDenoiser(gamma)``;
    its own gamma then applies).  ``inferer``: overrides mode/tile_size/overlap (see ``make_inferer``).
    ``output_dir`` must not be (inside) an input folder; an existing output name is refused unless
    ``overwrite``.  All outputs are written to a temporary sibling of ``output_dir`` and moved into
    place when every volume is done.
    """
    if output_dir is None:
        raise InferenceError("output_dir is not set: pass the folder to write the denoised volumes to.")
    output_dir = os.path.abspath(os.fspath(output_dir))
    check_output_folder(output_dir, "output directory")
    dev = resolve_device(device)
    items = collect_inputs(input_path, force=force, split=split)
    targets = _check_outputs(items, output_dir, input_path, overwrite)
    net = load_weights((network if network is not None else ISCLDenoiser(gamma=gamma)).to(dev), model_path)
    inferer = inferer if inferer is not None else make_inferer(mode, tile_size, overlap, batch_size)

    staging = staging_dir(output_dir)
    try:
        for name, item in items:
            volume = _read_item(item, force)
            hu = denoise_volume(volume.hu, net, device=dev, hu_range=hu_range, amp=amp, progress=progress,
                                batch_size=batch_size, inferer=inferer)
            staged = os.path.join(staging, name)
            os.makedirs(os.path.dirname(staged), exist_ok=True)
            write_volume(volume, hu, staged, suffix=suffix)
            del volume, hu
        _move_into_place(staging, output_dir, [name for name, _ in items])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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
            d[key] = MetaTensor(torch.from_numpy(volume.hu)[None], affine=torch.as_tensor(_index_affine(volume)),
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


def _index_affine(volume: Volume) -> np.ndarray:
    """4x4 mapping ``(s, h, w, 1)`` of ``volume.hu`` to RAS+ mm."""
    if volume.kind == "dicom":
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.source.affine  # dicom_io: (k, i, j) -> LPS
    affine = np.asarray(volume.source.affine, dtype=float)
    return affine[:, [2, 0, 1, 3]]  # (X, Y, Z) -> (Z, X, Y); a 2D image's slice axis is its (unit) third axis
