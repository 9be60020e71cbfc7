"""The benchmark's data: two test sets kept out of every method's training, and the training data of
the baselines, all made locally.

Test sets (``TestSet``: paired low-dose / full-dose HU volumes per case):
- ``simulated_test_set``: the embedded simulated set's test patients (``simulate.make_simulated_dataset``,
  disjoint from its training and validation patients);
- ``real_ct_test_set``: real CT slices shipped in ``pydicom-data`` / pydicom, each given the project's
  projection-domain low dose at one dose (``low_dose.simulate_low_dose``), one test set per dose.
Training data, in the training window's [-1, 1] units (``ct.hu_to_unit``), as ``(input, target)`` pairs:
- ``paired_training_slices``: the simulated set's *clean* training patients with a simulated low dose
  of their own (the supervised baselines need pairs; ISCL sees these patients' full dose only);
- ``noisy_training_slices``: the simulated set's *noisy* training patients, input = target (the
  blind-spot baselines; ISCL sees the same slices as its noisy set);
- ``unpaired_training_slices``: ISCL's two pools, clean and noisy training patients, unpaired (UIDNet);
- ``real_ct_training_pairs``: the real-CT set's noisy pool with its own full dose (``training_pairs``),
  the supervised ceiling on real CT (ISCL sees these slices' low doses only, unpaired).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np

from scripts.core.ct import hu_to_unit
from scripts.datasets.data import read_json
from scripts.datasets.low_dose import simulate_low_dose
from scripts.volumes.volume_io import read_volume

__all__ = ["TestCase", "TestSet", "simulated_test_set", "real_ct_slices", "real_ct_test_set", "real_ct_volume_test_sets",
           "paired_training_slices", "noisy_training_slices", "unpaired_training_slices",
           "real_ct_training_pairs"]

#: real CT slices: (name, file in pydicom-data or pydicom's own test files)
REAL_CT_FILES = (("pancreas 512", "explicit_VR-UN.dcm"), ("head 512", "693_UNCI.dcm"), ("spine 128", "CT_small.dcm"))


@dataclass
class TestCase:
    name: str
    low: np.ndarray  # (S, H, W) HU
    full: np.ndarray
    pixel_spacing: Tuple[float, float]


@dataclass
class TestSet:
    name: str
    description: str
    i0: float  # the dose of its low-dose images (photons per ray)
    cases: List[TestCase] = field(default_factory=list)

    @property
    def n_slices(self) -> int:
        return sum(case.full.shape[0] for case in self.cases)


def _params(datalist: dict) -> dict:
    """The simulation parameters recorded beside a simulated set's datalist."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(datalist["test"][0]["image"])))
    return read_json(os.path.join(folder, "params.json"), "simulation parameters", ValueError)


def simulated_test_set(datalist: dict) -> TestSet:
    params = _params(datalist)
    cases = []
    for item in datalist["test"]:
        low, full = read_volume(item["image"]), read_volume(item["label"])
        cases.append(TestCase(item["patient"], low.hu, full.hu, tuple(full.pixel_spacing)))
    description = (f"simulated test patients ({len(cases)} patients, {sum(c.full.shape[0] for c in cases)} slices, "
                   f"{params['size']} px at {params['pixel_size_mm']:g} mm, I0 {params['i0']:g})")
    return TestSet("simulated", description, float(params["i0"]), cases)


def _real_ct_path(file_name: str) -> str:
    import data_store
    from pydicom.data import get_testdata_file

    shipped = os.path.join(os.path.dirname(data_store.__file__), "data", file_name)
    return shipped if os.path.isfile(shipped) else get_testdata_file(file_name)


def real_ct_slices() -> List[Tuple[str, np.ndarray, float]]:
    """``(name, full-dose HU slice, pixel size mm)`` of the real CT slices."""
    out = []
    for name, file_name in REAL_CT_FILES:
        volume = read_volume(_real_ct_path(file_name))
        out.append((name, volume.hu[0], float(volume.pixel_spacing[0])))
    return out


def real_ct_test_set(i0: float, seed: int = 0) -> TestSet:
    cases = []
    for k, (name, full, pixel_mm) in enumerate(real_ct_slices()):
        low = simulate_low_dose(full, i0=i0, pixel_size_mm=pixel_mm, rng=[int(seed), k])
        cases.append(TestCase(name, low[None], full[None].astype(np.float32), (pixel_mm, pixel_mm)))
    description = (f"real CT slices ({', '.join(c.name for c in cases)}; pydicom-data / pydicom) with the "
                   f"project's simulated low dose at I0 {i0:g}")
    return TestSet(f"real CT, I0 {i0:g}", description, float(i0), cases)


def _real_ct_datalist(real_ct_dir: str, downloads_dir: str) -> dict:
    from scripts.datasets.real_ct import make_real_ct_dataset

    return make_real_ct_dataset(real_ct_dir, downloads_dir)


def real_ct_volume_test_sets(real_ct_dir: str, downloads_dir: str, slice_step: int = 1) -> List[TestSet]:
    """The real-CT data set's test volume (``real_ct``: an original abdomen series no training reads), one
    test set per dose; every ``slice_step``-th slice (BM3D takes seconds per 512² slice)."""
    datalist = _real_ct_datalist(real_ct_dir, downloads_dir)
    sets = []
    for item in datalist["test"]:
        low, full = read_volume(item["image"]), read_volume(item["label"])
        step = slice(None, None, int(slice_step))
        case = TestCase(item["patient"], low.hu[step], full.hu[step], tuple(full.pixel_spacing))
        description = (f"real CT volume ({item['patient']}: TotalSegmentator's original abdomen series, "
                       f"{case.full.shape[0]} slices, {case.full.shape[1]}² at {case.pixel_spacing[0]:.2f} mm) with the "
                       f"project's simulated low dose at I0 {float(item['i0']):g}")
        sets.append(TestSet(f"real CT volume, I0 {float(item['i0']):g}", description, float(item["i0"]), [case]))
    return sets


def _slices(path: str) -> np.ndarray:
    return read_volume(path).hu


def _unit_pair(low: np.ndarray, full: np.ndarray, hu_range: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """A (low dose, full dose) pair in the training window's [-1, 1] units, float32."""
    return hu_to_unit(low, hu_range).astype(np.float32), hu_to_unit(full, hu_range).astype(np.float32)


def paired_training_slices(datalist: dict, hu_range: Sequence[float], seed: int = 0) -> List[Tuple[np.ndarray, ...]]:
    """(low dose, full dose) of every clean training slice, in window units; the low dose is drawn at the
    simulated set's own dose and pixel size, seeded per slice."""
    params = _params(datalist)
    pairs = []
    for p, item in enumerate(datalist["training_clean"]):
        for k, full in enumerate(_slices(item["image"])):
            low = simulate_low_dose(full, i0=params["i0"], pixel_size_mm=params["pixel_size_mm"], rng=[seed, p, k])
            pairs.append(_unit_pair(low, full, hu_range))
    return pairs


def real_ct_training_pairs(real_ct_dir: str, downloads_dir: str, hu_range: Sequence[float]) -> List[Tuple[np.ndarray, ...]]:
    """(low dose, full dose) of every slice of the real-CT set's ``training_pairs``, in window units."""
    pairs = []
    for item in _real_ct_datalist(real_ct_dir, downloads_dir)["training_pairs"]:
        for low, full in zip(_slices(item["image"]), _slices(item["label"])):
            pairs.append(_unit_pair(low, full, hu_range))
    return pairs


def _unit_slices(datalist: dict, role: str, hu_range: Sequence[float]) -> List[np.ndarray]:
    """Every slice of the simulated set's ``role`` patients, in window units."""
    return [hu_to_unit(hu, hu_range).astype(np.float32) for item in datalist[role] for hu in _slices(item["image"])]


def noisy_training_slices(datalist: dict, hu_range: Sequence[float]) -> List[Tuple[np.ndarray, ...]]:
    """(noisy, noisy) of every noisy training slice, in window units (blind-spot training)."""
    return [(unit, unit) for unit in _unit_slices(datalist, "training_noisy", hu_range)]


def unpaired_training_slices(datalist: dict, hu_range: Sequence[float]) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """(clean slices, noisy slices) of the simulated set's training patients, in window units: the two
    unpaired pools ISCL learns from, for the other unpaired methods (UIDNet)."""
    return _unit_slices(datalist, "training_clean", hu_range), _unit_slices(datalist, "training_noisy", hu_range)
