"""Training data: unpaired pools of 2D CT slices in HU, read one slice at a time.

A datalist (``training_clean``, ``training_noisy``, ``validation``, ``test``) names volumes: NIfTI
files or DICOM series folders. ``slice_items`` expands each volume into per-slice items once (from
headers only) and ``LoadSliced`` reads a single slice per sample, so training never holds whole
volumes in memory. ``UnpairedDataset`` draws a noisy and a clean slice independently and uniformly
from the whole pools; its randomness is a function of (seed, epoch, index) so that a run resumed
from a checkpoint sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

from ..core.errors import DataError
from ..core.settings import flag
from ..volumes.dicom_io import scan_series
from ..volumes.volume_io import check_same_geometry, is_nifti, open_nifti, read_slice_hu, slice_name

DATALIST_KEYS = ("training_clean", "training_noisy", "validation", "test")
#: roles a datalist may carry for other readers: the supervised baselines' (low, full) pairs (real-CT set)
OPTIONAL_KEYS = ("training_pairs",)


class LoadSliced(MapTransform):
    """Load ``{key: path, key_slice: k}`` as a (1, H, W) float32 HU tensor for each key."""

    def __init__(self, keys, slice_suffix: str = "_slice"):
        super().__init__(keys)
        self.slice_suffix = slice_suffix

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            hu = read_slice_hu(d[key], d.get(key + self.slice_suffix))
            d[key] = torch.from_numpy(np.ascontiguousarray(hu))[None]
        return d


def volume_slices(path: str) -> list[tuple[str, int | None]]:
    """(file, slice index) for every slice of a NIfTI file or DICOM series folder, in slice order."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or directory (expected a NIfTI file or a DICOM series folder).")
    if is_nifti(path):
        shape = open_nifti(path).shape
        return [(path, None)] if len(shape) == 2 else [(path, k) for k in range(shape[2])]
    series = scan_series(path)
    if len(series) != 1:
        raise DataError(f"{path}: expected one DICOM series, found {len(series)}.")
    return [(f, None) for f in series[0].files]


def slice_items(items: Sequence[dict], keys: Sequence[str] = ("image",)) -> list[dict]:
    """Expand volume items into one item per slice; paired keys (image/label) must have equal slice counts.

    Each entry: ``{key: file, key + "_slice": index}`` (no ``_slice`` for a 2D file or a DICOM slice) and
    ``"patient"`` when the volume item has one.
    """
    out = []
    for item in items:
        per_key = {key: volume_slices(item[key]) for key in keys}
        counts = {key: len(v) for key, v in per_key.items()}
        if len(set(counts.values())) != 1:
            raise DataError(f"{item}: paired volumes have different slice counts {counts}.")
        for k in range(counts[keys[0]]):
            # no None values: the default collate of a DataLoader rejects them (2D files, DICOM slices)
            entry = {} if item.get("patient") is None else {"patient": item["patient"]}
            for key in keys:
                entry[key], index = per_key[key][k]
                if index is not None:
                    entry[key + "_slice"] = index
            out.append(entry)
    return out


class UnpairedDataset(torch.utils.data.Dataset):
    """Each sample: a noisy patch and a clean patch drawn independently from the two pools.

    ``transform`` maps ``{"image": path, "image_slice": k}`` to ``{"image": tensor}`` (load, scale,
    random crop, dihedral augmentation); it is reseeded per sample from (seed, epoch, index).
    ``aligned``: the clean patch is cut with the noisy patch's random state -- the same place in its
    slice and the same flip/rotation (on equal-sized slices) -- as the authors' data pipeline pairs
    them (both sets cut into the same grid of patches and zipped in order); the slices stay unpaired.
    ``patches_per_slice``: that many consecutive samples (a batch, when equal to the batch size) share
    their noisy slice and their clean slice, as the authors' short shuffle buffer keeps neighbouring
    patches of one slice together; 1 = every patch from its own draw.
    """

    def __init__(
        self,
        noisy: Sequence[dict],
        clean: Sequence[dict],
        transform,
        samples_per_epoch: int,
        seed: int = 0,
        aligned: bool = False,
        patches_per_slice: int = 1,
    ):
        if not noisy or not clean:
            empty = "noisy" if not noisy else "clean"
            raise DataError(f"The {empty} training pool is empty; both unpaired pools need at least one slice.")
        self.noisy, self.clean = list(noisy), list(clean)
        self.transform = transform
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.aligned = flag(aligned, "aligned_patches")
        if int(patches_per_slice) != patches_per_slice or patches_per_slice < 1:
            raise DataError(f"patches_per_slice={patches_per_slice!r}: expected an integer >= 1.")
        self.patches_per_slice = int(patches_per_slice)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _draw(
        self,
        pool: Sequence[dict],
        rng: np.random.Generator,
        state: int | None = None,
        slice_rng: np.random.Generator | None = None,
    ):
        item = pool[(rng if slice_rng is None else slice_rng).integers(len(pool))]
        state = int(rng.integers(2**31)) if state is None else state
        self.transform.set_random_state(seed=state)
        return self.transform(dict(item))["image"], state

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        group = None  # the slices a group of consecutive samples shares
        if self.patches_per_slice > 1:
            group = np.random.default_rng([self.seed, self.epoch, index // self.patches_per_slice, 1])
        noisy, state = self._draw(self.noisy, rng, slice_rng=group)
        clean, _ = self._draw(self.clean, rng, state if self.aligned else None, slice_rng=group)
        return {"noisy": noisy, "clean": clean}


class RandTissueCropd(Randomizable, MapTransform):
    """A uniformly placed ``roi_size`` patch, re-drawn (up to ``max_tries``) until at least
    ``min_tissue`` of its pixels of ``keys[0]`` lie above ``air_level`` (the window's lower edge).

    A patch of pure air is constant; on it every normalised layer divides by sqrt(eps) and the
    gradients overflow to NaN. With 64-pixel patches of 0.75 mm CT (Mayo, 512 x 512) such patches
    are common in the air around the body. ``min_tissue=0`` keeps every first draw.
    """

    def __init__(
        self, keys, roi_size: Sequence[int], min_tissue: float = 0.05, air_level: float = -1.0, max_tries: int = 50
    ) -> None:
        MapTransform.__init__(self, keys)
        self.roi_size = tuple(int(n) for n in roi_size)
        self.min_tissue, self.air_level, self.max_tries = float(min_tissue), float(air_level), int(max_tries)
        self._corner = (0, 0)

    def _tissue(self, image, top: int, left: int) -> float:
        rows, cols = self.roi_size
        return float((image[..., top : top + rows, left : left + cols] > self.air_level).float().mean())

    def randomize(self, image) -> None:
        rows, cols = self.roi_size
        height, width = image.shape[-2:]
        if height < rows or width < cols:
            raise DataError(f"image of {height} x {width} pixels is smaller than the {rows} x {cols} patch.")
        for _ in range(self.max_tries):
            self._corner = (self.R.randint(height - rows + 1), self.R.randint(width - cols + 1))
            if self._tissue(image, *self._corner) >= self.min_tissue:
                return

    def __call__(self, data):
        d = dict(data)
        self.randomize(torch.as_tensor(d[self.keys[0]]))
        (top, left), (rows, cols) = self._corner, self.roi_size
        for key in self.key_iterator(d):
            d[key] = d[key][..., top : top + rows, left : left + cols]
        return d


def check_patch_settings(patch_size: int, batch_size: int, num_iterations: int, epoch_length: int) -> None:
    """Fail early, before any data is built or a model written, on settings the networks cannot take."""
    if not isinstance(patch_size, int) or patch_size < 64 or patch_size % 4:
        raise DataError(
            f"patch_size={patch_size!r}: expected an integer >= 64 (the discriminator's receptive field) "
            "and a multiple of 4 (the generator downsamples twice)."
        )
    for name, value in (("batch_size", batch_size), ("num_iterations", num_iterations), ("epoch_length", epoch_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(f"{name}={value!r}: expected an integer >= 1.")
    if num_iterations % epoch_length:
        raise DataError(f"num_iterations={num_iterations} must be a multiple of epoch_length={epoch_length}.")


def check_slices(items: Sequence[dict], keys: Sequence[str], min_size: int, what: str) -> int:
    """Read every slice of ``items`` (``slice_items`` entries) once, before training starts: each must be
    readable, finite and at least ``min_size`` pixels in both dimensions; a bad one raises a DataError
    naming its file and slice instead of surfacing when a random patch first draws it. Returns the count."""
    for item in items:
        shapes = {}
        for key in keys:
            path, index = item[key], item.get(key + "_slice")
            hu = read_slice_hu(path, index)
            if min(hu.shape) < min_size:
                raise DataError(
                    f"{slice_name(path, index)}: {hu.shape[0]}x{hu.shape[1]} pixels is smaller than the {min_size}x{min_size} "
                    f"the {what} needs."
                )
            shapes[slice_name(path, index)] = hu.shape
        if len(set(shapes.values())) > 1:
            (a, shape_a), (b, shape_b) = list(shapes.items())[:2]
            raise DataError(
                f"{b}: {shape_b[0]}x{shape_b[1]} pixels, but its pair {a} has {shape_a[0]}x{shape_a[1]}; "
                f"the {what} pairs must match."
            )
    return len(items)


def check_pair_grids(items: Sequence[dict], what: str) -> None:
    """Each ``{"image", "label"}`` volume pair covers the same voxels (``volume_io.check_same_geometry``):
    a pair three slices apart would be scored silently otherwise."""
    for item in items:
        check_same_geometry(item["image"], item["label"], what)


def read_json(path: str, what: str, error: type[ValueError] = DataError):
    """Parse a JSON file; a missing or unparsable file raises ``error`` naming the path and ``what`` it is."""
    if not os.path.isfile(path):
        raise error(f"{path}: {what} file not found.")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise error(f"{path}: {what} file is not valid JSON ({e}).") from e


def load_datalist(path, dataset_dir=None) -> dict:
    """Read a datalist JSON with ``image``/``label`` made absolute.

    The base folder is ``dataset_dir`` if given (e.g. the data moved), else the file's
    ``dataset_dir`` (a relative one is taken relative to the JSON's folder), else the JSON's folder.
    """
    path = os.path.abspath(os.fspath(path))
    datalist = read_json(path, "datalist")
    if not isinstance(datalist, dict):
        raise DataError(
            f"{path}: a datalist must be a JSON object with keys such as {list(DATALIST_KEYS)}, "
            f"got a JSON {type(datalist).__name__}."
        )
    here = os.path.dirname(path)
    base = dataset_dir if dataset_dir is not None else datalist.get("dataset_dir") or here
    base = os.path.normpath(os.path.join(here, os.path.expanduser(os.fspath(base))))
    datalist["dataset_dir"] = base
    for key in DATALIST_KEYS + OPTIONAL_KEYS:
        items = datalist.get(key, [])
        if not isinstance(items, list):
            raise DataError(f"{path}: {key!r} must be a list of items.")
        for item in items:
            if not isinstance(item, dict):
                raise DataError(f"{path}: every item of {key!r} must be an object with an 'image', got {item!r}.")
            for field in ("image", "label"):
                if isinstance(item.get(field), str):
                    item[field] = os.path.normpath(os.path.join(base, item[field]))
    return datalist


def add_training_pools(datalist: dict, extra: dict) -> dict:
    """``datalist`` with ``extra``'s clean and noisy training slices added to its pools (validation and
    test stay ``datalist``'s own), e.g. a second simulated set at another pixel size."""
    merged = dict(datalist)
    for key in ("training_clean", "training_noisy"):
        merged[key] = list(datalist.get(key, [])) + list(extra.get(key, []))
    return merged


def resolve_datalist(datalist: str | None, simulated_dir: str, simulation: dict | None = None) -> dict:
    """The user's datalist JSON, or (when None) the embedded simulated low-dose CT set, built once and cached."""
    if datalist:
        resolved = load_datalist(datalist)
        source = datalist
    else:
        from .simulate import make_simulated_dataset

        resolved = make_simulated_dataset(simulated_dir, **(simulation or {}))
        source = simulated_dir
    for key in ("training_clean", "training_noisy"):
        if not resolved.get(key):
            raise DataError(f"{source}: '{key}' is empty or missing; unpaired training needs both pools.")
    return resolved
