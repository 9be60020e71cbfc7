"""Simulated CT data for tests and the default demo (no downloads needed).

Three parts, all deterministic given their seeds:

``phantom`` (module ``phantom``)
    A procedural axial abdomen/pelvis slice in HU; the seed is the "patient", ``z_mm`` the
    table position.  The field of view is ``DEFAULT_FOV_MM = 384`` mm whatever the matrix
    size, i.e. the default pixel size is 384 / size mm: **1.5 mm at 256 x 256** (0.75 mm at 512).

``simulate_low_dose`` (module ``low_dose``)
    Projection-domain low-dose simulation (parallel-beam Poisson counts, FBP of the noise), at
    ``DEFAULT_I0`` = 2.5e4 photons per ray per view: the Mayo quarter-dose noise level.

``make_simulated_dataset``
    The embedded default data set, written as float32 NIfTI volumes in HU with an
    unpaired split exactly like the real protocol (see ``make_simulated_dataset``).
    Timing (2-core dev machine, defaults: 48 + 48 + 8 + 8 slices at 256 x 256 = 64 low-dose
    simulations + 112 phantom slices, 33 MB): first build 74 s wall / 58 s CPU (machine
    otherwise busy), < 1 ms when reused.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Dict, List, Optional

import numpy as np

from ..core.atomic import replace_folder, staged_folder, write_json
from ..volumes.volume_io import write_hu_nifti
from .low_dose import DEFAULT_I0, DEFAULT_N_ANGLES, MU_WATER_PER_MM, simulate_low_dose
from .phantom import default_pixel_size, phantom

__all__ = ["DATASET_FORMAT_VERSION", "patient_seed", "nifti_affine", "simulated_patient", "make_simulated_dataset"]

DATASET_FORMAT_VERSION = 1


# ------------------------------------------------------------------------------ NIfTI
def nifti_affine(pixel_size_mm: float, slice_spacing_mm: float) -> np.ndarray:
    """Affine for arrays indexed [row, col, slice] of axial slices displayed the usual way
    (row -> posterior, col -> patient left, slice -> superior), in NIfTI's RAS+ world."""
    aff = np.zeros((4, 4))
    aff[1, 0] = -pixel_size_mm  # row    -> posterior  = -A
    aff[0, 1] = -pixel_size_mm  # column -> left       = -R
    aff[2, 2] = slice_spacing_mm  # slice -> superior
    aff[3, 3] = 1.0
    return aff


# ---------------------------------------------------------------------------- dataset
_ROLES = {"training_clean": 0, "training_noisy": 1, "validation": 2, "test": 3}
_ROLE_TAG = {"training_clean": "A", "training_noisy": "B", "validation": "C", "test": "D"}
_SEEDS_PER_ROLE = 100_000
_GENERATOR = "scripts.simulate.make_simulated_dataset"  # the data set's identity (a name, kept across refactors)


def patient_seed(seed: int, role: str, index: int) -> int:
    """Phantom seed of patient ``index`` in ``role``; the four roles use disjoint seed ranges."""
    if not 0 <= index < _SEEDS_PER_ROLE:
        raise ValueError("too many patients")
    return (int(seed) * len(_ROLES) + _ROLES[role]) * _SEEDS_PER_ROLE + int(index)


def simulated_patient(
    role: str,
    index: int,
    n_slices: int = 4,
    size: int = 256,
    i0: float = DEFAULT_I0,
    seed: int = 0,
    slice_spacing_mm: float = 3.0,
    pixel_size_mm: Optional[float] = None,
    n_angles: int = DEFAULT_N_ANGLES,
    low_dose: bool = True,
    on_slice=None,
):
    """One simulated patient exactly as ``make_simulated_dataset`` makes it (e.g. to write it
    as DICOM too): ``(full_dose, low_dose)`` float32 HU volumes ``(n_slices, H, W)``, slices
    centred on z = 0 and ``slice_spacing_mm`` apart; ``low_dose`` is None unless requested.
    ``role`` in training_clean / training_noisy / validation / test selects the disjoint
    seed range (``patient_seed``); the Poisson noise of slice k is seeded by
    (seed, role, index, k).  ``on_slice()`` is called after each slice (progress bars)."""
    px = default_pixel_size(size) if pixel_size_mm is None else float(pixel_size_mm)
    pseed = patient_seed(seed, role, index)
    zs = (np.arange(n_slices) - (n_slices - 1) / 2.0) * slice_spacing_mm
    full = np.stack([phantom(size, pseed, px, z_mm=z) for z in zs])
    low = None
    if low_dose:
        low = np.empty_like(full)
    for k in range(n_slices):
        if low is not None:
            noise_rng = np.random.SeedSequence([int(seed), _ROLES[role], int(index), k, 0xD05E])
            low[k] = simulate_low_dose(full[k], i0=i0, pixel_size_mm=px, rng=noise_rng, n_angles=n_angles)
        if on_slice is not None:
            on_slice()
    return full, low


def _n_patients(n_slices: int, per_patient: int) -> List[int]:
    """Slices of each patient: full patients of ``per_patient`` slices, the last one may be shorter."""
    full, rest = divmod(int(n_slices), int(per_patient))
    return [per_patient] * full + ([rest] if rest else [])


def _dataset_files(params: dict) -> Dict[str, List[dict]]:
    """Relative paths of every volume, by role (the datalist with relative paths)."""
    out: Dict[str, List[dict]] = {}
    roles = {
        "training_clean": params["n_clean"],
        "training_noisy": params["n_noisy"],
        "validation": params["n_validation"],
        "test": params["n_test"],
    }
    for role, n in roles.items():
        items = []
        for i, ns in enumerate(_n_patients(n, params["slices_per_patient"])):
            pid = f"SIM{_ROLE_TAG[role]}{i:03d}"
            if role == "training_clean":
                items.append({"patient": pid, "image": f"{role}/{pid}_full.nii", "_slices": ns, "_index": i})
            elif role == "training_noisy":
                items.append({"patient": pid, "image": f"{role}/{pid}_low.nii", "_slices": ns, "_index": i})
            else:
                items.append(
                    {
                        "patient": pid,
                        "image": f"{role}/{pid}_low.nii",
                        "label": f"{role}/{pid}_full.nii",
                        "_slices": ns,
                        "_index": i,
                    }
                )
        out[role] = items
    return out


def _public_datalist(files: Dict[str, List[dict]], root: str) -> Dict[str, List[dict]]:
    dl = {}
    for role, items in files.items():
        dl[role] = [
            {
                k: (os.path.join(root, v) if k in ("image", "label") else v)
                for k, v in it.items()
                if not k.startswith("_")
            }
            for it in items
        ]
    return dl


def dataset_complete(out_dir: str, params: dict, datalist: dict | None = None) -> bool:
    """Whether ``out_dir`` holds a data set built with ``params``: its ``params.json`` says so and every
    file ``datalist`` names (default: this simulator's files for ``params``) exists."""
    try:
        with open(os.path.join(out_dir, "params.json")) as f:
            if json.load(f) != params:
                return False
    except (OSError, ValueError):
        return False
    datalist = _dataset_files(params) if datalist is None else datalist
    return all(
        os.path.isfile(os.path.join(out_dir, it[k]))
        for items in datalist.values()
        for it in items
        for k in ("image", "label")
        if k in it
    )


def _install_unless_built(staging: str, out_dir: str, params: dict) -> None:
    """Install a finished build, unless a concurrent run finished the same one meanwhile (keep theirs)."""
    if dataset_complete(out_dir, params):
        return
    try:
        replace_folder(staging, out_dir)
    except OSError:
        if not dataset_complete(out_dir, params):  # lost a race to a concurrent build of other params
            raise


def _is_ours(out_dir: str) -> bool:
    """Whether ``out_dir`` holds a (possibly stale) data set made by ``make_simulated_dataset``."""
    try:
        with open(os.path.join(out_dir, "params.json")) as f:
            return json.load(f).get("generator") == _GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _finish(files: Dict[str, List[dict]], root: str, params: dict) -> Dict[str, List[dict]]:
    """The datalist of a complete data set at ``root`` (``datalist.json`` rewritten only when it differs)."""
    dl = _public_datalist(files, root)
    if not params["n_test"]:
        dl["test"] = [dict(it) for it in dl["validation"]]
    path = os.path.join(root, "datalist.json")
    try:
        with open(path) as f:
            same = json.load(f) == dl
    except (OSError, ValueError):
        same = False
    if not same:
        write_json(dl, path)
    return dl


def _build_dataset(tmp: str, files: Dict[str, List[dict]], params: dict, progress: bool) -> None:
    """Simulate every patient of ``files`` into ``tmp``; ``params.json`` last (it marks completeness)."""
    from tqdm.auto import tqdm

    px, spacing = params["pixel_size_mm"], params["slice_spacing_mm"]
    affine = nifti_affine(px, spacing)
    jobs = [(role, it) for role, items in files.items() for it in items]
    total = sum(it["_slices"] for _, it in jobs)
    with tqdm(total=total, desc="simulated CT", unit="slice", disable=not progress) as bar:
        for role, it in jobs:
            full, low = simulated_patient(
                role,
                it["_index"],
                n_slices=it["_slices"],
                size=params["size"],
                i0=params["i0"],
                seed=params["seed"],
                slice_spacing_mm=spacing,
                pixel_size_mm=px,
                n_angles=params["n_angles"],
                low_dose=role != "training_clean",
                on_slice=lambda: bar.update(1),
            )
            if low is not None:
                write_hu_nifti(low, os.path.join(tmp, it["image"]), affine)
            if role == "training_clean":
                write_hu_nifti(full, os.path.join(tmp, it["image"]), affine)
            elif role != "training_noisy":
                write_hu_nifti(full, os.path.join(tmp, it["label"]), affine)
    write_json(params, os.path.join(tmp, "params.json"))


def make_simulated_dataset(
    out_dir: str,
    n_clean: int = 48,
    n_noisy: int = 48,
    n_validation: int = 8,
    n_test: int = 8,
    size: int = 256,
    i0: float = DEFAULT_I0,
    seed: int = 0,
    slices_per_patient: int = 4,
    slice_spacing_mm: float = 3.0,
    pixel_size_mm: Optional[float] = None,
    n_angles: int = DEFAULT_N_ANGLES,
    progress: bool = True,
) -> Dict[str, List[dict]]:
    """Build (or reuse) the simulated default data set in ``out_dir``; returns the datalist.

    Patients: one phantom seed = one patient = one NIfTI volume (H, W, S) of
    ``slices_per_patient`` slices ``slice_spacing_mm`` apart (the last patient of a role may
    have fewer).  ``n_*`` count *slices*.  Each role draws its patients from its own,
    disjoint seed range (``patient_seed``), exactly like the real unpaired protocol:

    - ``training_clean`` (set A): full-dose slices only, ``SIMA###_full.nii``;
    - ``training_noisy`` (set B): low-dose slices only, ``SIMB###_low.nii``;
    - ``validation`` (set C): pairs ``SIMC###_low.nii`` (image) / ``SIMC###_full.nii`` (label);
    - ``test`` (set D): pairs as validation, from a further disjoint set; with
      ``n_test=0`` the ``test`` list repeats the validation pairs.

    Datalist entries: ``{"patient", "image"}`` (training) and ``{"patient", "image",
    "label"}`` (validation/test), absolute paths; also written to ``out_dir/datalist.json``.
    Volumes are float32 HU, uncompressed ``.nii`` (lazily sliceable).

    Caching: ``out_dir/params.json`` records every parameter and the format version; a
    complete data set with equal parameters is reused as is.  Otherwise it is built in a
    temporary sibling folder and renamed into place only when complete (a stale data set
    made by this function is replaced; any other non-empty folder is refused).
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    px = default_pixel_size(size) if pixel_size_mm is None else float(pixel_size_mm)
    params = dict(
        format_version=DATASET_FORMAT_VERSION,
        generator=_GENERATOR,
        n_clean=int(n_clean),
        n_noisy=int(n_noisy),
        n_validation=int(n_validation),
        n_test=int(n_test),
        size=int(size),
        i0=float(i0),
        seed=int(seed),
        slices_per_patient=int(slices_per_patient),
        slice_spacing_mm=float(slice_spacing_mm),
        pixel_size_mm=px,
        n_angles=int(n_angles),
        mu_water=MU_WATER_PER_MM,
        fov_mm=px * size,
    )
    if slices_per_patient < 1:
        raise ValueError("slices_per_patient must be >= 1")
    return _build_or_reuse(out_dir, params, progress)


def _build_or_reuse(out_dir: str, params: dict, progress: bool) -> Dict[str, List[dict]]:
    """The datalist of the data set ``params`` describes in ``out_dir``: reused when complete, else built in a
    staging folder and installed (another non-empty folder is refused)."""
    files = _dataset_files(params)
    if dataset_complete(out_dir, params):
        return _finish(files, out_dir, params)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not _is_ours(out_dir):
        raise FileExistsError(f"{out_dir} exists, is not empty and is not a simulated data set; refusing to replace it")
    with staged_folder(out_dir, install=functools.partial(_install_unless_built, params=params)) as tmp:
        _build_dataset(tmp, files, params, progress)
    return _finish(files, out_dir, params)
