"""A real-CT data set built from registry packages (``real_ct_sources``): HU NIfTI volumes, a range of
simulated doses, and a datalist split by volume.

Split (one volume is one patient; no volume is in two roles):
- ``training_clean``: lung2 at full dose (61 slices);
- ``training_noisy``: lung1 with ``NOISY_DRAWS`` low-dose draws per slice, each at its own dose, I0
  log-uniform over ``NOISY_DOSE_RANGE`` (the dose of every slice is in the item's ``i0`` list);
- ``training_pairs``: the same draws with lung1's full dose as label, for the supervised baselines'
  ceiling only (ISCL reads the clean and noisy pools, never a pair);
- ``validation``: every ``HEAD_SLICE_STEP``-th slice of the head and the neck slice at each of
  ``VALIDATION_DOSES`` (a mild and a severe noise level);
- ``test``: the original abdomen DICOM series at each of ``TEST_DOSES`` (one pair of volumes per dose,
  the item's ``i0`` says which); no training step reads it.
Low doses come from ``low_dose.simulate_low_dose`` (projection-domain Poisson noise, the slice's own
pixel size), on top of the full dose's own noise. Volumes are float32 HU, uncompressed, (H, W, S) like
the simulated set, with the source's geometry (RAS+ affine of ``[row, column, slice]``).

Caching as ``simulate.make_simulated_dataset``: ``params.json`` records what the set was made from
(checksums, doses, seed); an equal complete set is reused, otherwise it is built in a staging folder
and renamed into place when complete.
"""

from __future__ import annotations

import os
import plistlib
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..core.atomic import replace_folder, staged_folder, write_json
from ..core.errors import DataError
from ..volumes.volume_io import index_affine, read_volume, write_hu_nifti
from .data import load_datalist, read_json
from .low_dose import simulate_low_dose
from .real_ct_sources import SOURCES, fetch_member
from .simulate import dataset_complete

FORMAT_VERSION = 2
ROLES = {
    "training_clean": ("lung2",),
    "training_noisy": ("lung1",),
    "training_pairs": ("lung1",),
    "validation": ("head", "neck"),
    "test": ("abdomen",),
}
#: lung1 is a slim chest at 0.57 mm: at I0 5e3…5e4 its soft-tissue noise is only 35–80 HU, while a large
#: abdomen in a 500 mm field (the test volume) carries 130–230 HU at I0 2.5e4…5e3. The pool reaches down to
#: I0 5e2 so that its noise spans 35–330 HU: the range of noise levels, not of tube settings, is what the
#: denoiser must have seen.
NOISY_DOSE_RANGE = (5e2, 5e4)
NOISY_DRAWS = 3
VALIDATION_DOSES = (1e4, 1.5e3)
TEST_DOSES = (2.5e4, 1e4, 5e3)
HEAD_SLICE_STEP = 12
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class RealVolume:
    hu: np.ndarray  # float32 (S, H, W)
    affine: np.ndarray  # RAS+ of [row, column, slice]
    pixel_mm: float  # between columns, for the dose simulation


def _read_nrrd(path: str) -> RealVolume:
    import itk

    image = itk.imread(path)
    spacing, origin = np.asarray(image.GetSpacing(), float), np.asarray(image.GetOrigin(), float)
    direction = itk.array_from_matrix(image.GetDirection())
    lps = np.eye(4)
    lps[:3, :3] = (direction * spacing)[:, [1, 0, 2]]  # itk index (column, row, slice)
    lps[:3, 3] = origin
    return RealVolume(itk.array_from_image(image).astype(np.float32), LPS_TO_RAS @ lps, float(spacing[0]))


def _read_dicom(path: str) -> RealVolume:
    volume = read_volume(path)
    return RealVolume(volume.hu, index_affine(volume)[:, [1, 2, 0, 3]], float(volume.pixel_spacing[1]))


def _read_inv3(path: str) -> RealVolume:
    """An InVesalius project: ``main.plist`` gives the int16 HU matrix's shape and spacing."""
    with tarfile.open(path) as tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
        header = plistlib.loads(tar.extractfile(members["main.plist"]).read())
        matrix = header["matrix"]
        raw = tar.extractfile(members[matrix["filename"]]).read()
    hu = np.frombuffer(raw, dtype=matrix["dtype"]).reshape(matrix["shape"]).astype(np.float32)
    column, row, thickness = (float(v) for v in header["spacing"])
    affine = np.diag([-column, -row, thickness, 1.0])[:, [1, 0, 2, 3]]
    return RealVolume(hu, affine, column)


def read_source(path: str) -> RealVolume:
    """A fetched source file (NRRD, InVesalius project, DICOM file or series folder) in HU."""
    if path.endswith(".nrrd"):
        return _read_nrrd(path)
    if path.endswith(".inv3"):
        return _read_inv3(path)
    return _read_dicom(path)


def _noise(job: tuple) -> np.ndarray:
    """The simulated low-dose noise of one slice (a process-pool job)."""
    hu, i0, pixel_mm, seed = job
    return simulate_low_dose(hu, i0=i0, pixel_size_mm=pixel_mm, rng=np.random.SeedSequence(seed), return_noise=True)[1]


def _low_dose(volume: RealVolume, doses, seed: list, pool) -> np.ndarray:
    """``volume`` with slice k at dose ``doses[k]``, seeded by ``seed + [k]``."""
    jobs = [(volume.hu[k], float(doses[k]), volume.pixel_mm, seed + [k]) for k in range(len(volume.hu))]
    return volume.hu + np.stack(list(pool.map(_noise, jobs)))


def _write(hu: np.ndarray, volume: RealVolume, path: str) -> str:
    return write_hu_nifti(hu, path, volume.affine)


def _build(tmp: str, volumes: dict, params: dict, pool) -> dict:
    """Write every role's volumes into ``tmp``; the datalist with names relative to it."""
    seed, rng = params["seed"], np.random.default_rng(params["seed"])
    lung1, head, neck, abdomen = (volumes[n] for n in ("lung1", "head", "neck", "abdomen"))
    head = RealVolume(head.hu[HEAD_SLICE_STEP // 2 :: HEAD_SLICE_STEP], head.affine, head.pixel_mm)
    datalist = {
        "training_clean": [
            {
                "patient": "lung2",
                "image": _write(volumes["lung2"].hu, volumes["lung2"], os.path.join(tmp, "lung2_full.nii")),
            }
        ],
        "training_noisy": [],
        "training_pairs": [],
        "validation": [],
        "test": [],
    }
    lung1_full = _write(lung1.hu, lung1, os.path.join(tmp, "lung1_full.nii"))
    for draw in range(NOISY_DRAWS):
        doses = np.exp(rng.uniform(*np.log(NOISY_DOSE_RANGE), size=len(lung1.hu)))
        low = _low_dose(lung1, doses, [seed, 1, draw], pool)
        item = {
            "patient": "lung1",
            "i0": [round(float(d)) for d in doses],
            "image": _write(low, lung1, os.path.join(tmp, f"lung1_low_{draw}.nii")),
        }
        datalist["training_noisy"].append(item)
        datalist["training_pairs"].append({**item, "label": lung1_full})
    for index, (name, volume) in enumerate((("head", head), ("neck", neck))):
        full = _write(volume.hu, volume, os.path.join(tmp, f"{name}_full.nii"))
        for dose_index, i0 in enumerate(VALIDATION_DOSES):
            low = _low_dose(volume, [i0] * len(volume.hu), [seed, 2, index, dose_index], pool)
            datalist["validation"].append(
                {
                    "patient": name,
                    "i0": i0,
                    "label": full,
                    "image": _write(low, volume, os.path.join(tmp, f"{name}_low_i0_{int(i0)}.nii")),
                }
            )
    full = _write(abdomen.hu, abdomen, os.path.join(tmp, "abdomen_full.nii"))
    for index, i0 in enumerate(TEST_DOSES):
        low = _low_dose(abdomen, [i0] * len(abdomen.hu), [seed, 3, index], pool)
        path = _write(low, abdomen, os.path.join(tmp, f"abdomen_low_i0_{int(i0)}.nii"))
        datalist["test"].append({"patient": "abdomen", "i0": i0, "image": path, "label": full})
    return {
        role: [{k: (os.path.basename(v) if k in ("image", "label") else v) for k, v in item.items()} for item in items]
        for role, items in datalist.items()
    }


def _params(seed: int) -> dict:
    return dict(
        format_version=FORMAT_VERSION,
        generator="scripts.real_ct.make_real_ct_dataset",
        seed=int(seed),
        sources={n: s.sha256 for n, s in SOURCES.items()},
        roles={r: list(v) for r, v in ROLES.items()},
        noisy_dose_range=list(NOISY_DOSE_RANGE),
        noisy_draws=NOISY_DRAWS,
        validation_doses=list(VALIDATION_DOSES),
        test_doses=list(TEST_DOSES),
        head_slice_step=HEAD_SLICE_STEP,
    )


def _complete(out_dir: str, params: dict) -> dict | None:
    """The relative datalist of a complete set made with ``params`` in ``out_dir``, else None."""
    try:
        datalist = read_json(os.path.join(out_dir, "datalist.json"), "datalist")
    except (DataError, OSError):
        return None
    return datalist if dataset_complete(out_dir, params, datalist) else None


def make_real_ct_dataset(out_dir: str, cache_dir: str, seed: int = 0, workers: int | None = None) -> dict:
    """Build (or reuse) the real-CT set in ``out_dir``, fetching sources into ``cache_dir``; returns the
    datalist with absolute paths (``out_dir/datalist.json`` names the files relative to itself)."""
    out_dir, params = os.path.abspath(out_dir), _params(seed)
    if _complete(out_dir, params) is None:
        if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, "params.json")):
            raise DataError(f"{out_dir}: exists, is not empty and is not a real-CT data set; refusing to replace it.")
        volumes = {name: read_source(fetch_member(source, cache_dir)) for name, source in SOURCES.items()}
        with staged_folder(out_dir, install=replace_folder) as tmp:
            with ProcessPoolExecutor(max_workers=workers or min(2, os.cpu_count() or 1)) as pool:
                relative = _build(tmp, volumes, params, pool)
            write_json(relative, os.path.join(tmp, "datalist.json"))
            write_json(params, os.path.join(tmp, "params.json"))
    return load_datalist(os.path.join(out_dir, "datalist.json"))
