"""Synthetic Mayo low-dose CT trees written as real DICOM series, in both release layouts.

Import the fixtures into a test module (``from mayo_fixtures import tcia_tree, aapm_tree``);
pytest puts ``tests/`` on ``sys.path`` (rootdir-relative "prepend" import mode, no __init__.py).

Each slice is a procedural phantom (``scripts.datasets.phantom.phantom``, the patient is the seed, z the
table position); the low-dose series is the same slice through the projection-domain simulator
(``scripts.datasets.low_dose.simulate_low_dose``). Full- and low-dose series share slice positions and have
different SeriesInstanceUIDs. Rescale slope/intercept vary per file (1/-1024, 0.5/-1000, 2/-1024,
1/-1000; int16 where values fall below the intercept), and file names are shuffled so that name
order differs from slice order. ``truth`` maps (patient, dose, thickness) to what was written.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import numpy as np
import pytest

from scripts.volumes.dicom_write import write_ct_series
from scripts.datasets.low_dose import simulate_low_dose
from scripts.datasets.phantom import phantom

SIZE = 64
PIXEL_MM = 384.0 / SIZE  # the phantom's default field of view
RESCALES = [(1.0, -1024.0), (0.5, -1000.0), (2.0, -1024.0), (1.0, -1000.0)]
TCIA_PATIENTS = ("L004", "L006", "L014", "L019", "L125")  # authors' abdomen split: 4 train, 1 test
AAPM_PATIENTS = ("L067", "L096", "L109", "L143", "L333", "L506")
LOW_DOSE_I0 = 5e3  # strong noise at 64 x 64 (6 mm pixels) so full and low dose clearly differ
N_ANGLES = 90  # fewer views than the simulator's default: these trees are built for every test session


@dataclass
class Written:
    directory: str
    hu: np.ndarray  # (S, rows, cols) float32, ascending slice position
    positions_z: list  # ImagePositionPatient z per slice (ascending)
    rescale: list  # (slope, intercept) per slice
    file_names: list  # per slice, in slice order


@dataclass
class Tree:
    root: str
    layout: str
    truth: dict = field(default_factory=dict)  # (patient, "full"/"low", "1mm") -> Written


def _patient_seed(patient: str) -> int:
    return int(patient[1:]) if patient[1:].isdigit() else sum(map(ord, patient))


def patient_volumes(patient: str, n_slices: int, thickness_mm: float) -> tuple[np.ndarray, np.ndarray, list]:
    """(full-dose HU, low-dose HU, z positions) for one synthetic patient."""
    seed = _patient_seed(patient)
    z = [-50.0 + k * thickness_mm for k in range(n_slices)]
    full = np.stack([phantom(SIZE, seed=seed, z_mm=zk) for zk in z]).astype(np.float32)
    low = np.stack(
        [simulate_low_dose(full[k], i0=LOW_DOSE_I0, rng=seed * 1000 + k, n_angles=N_ANGLES) for k in range(n_slices)]
    ).astype(np.float32)
    return full, low, z


def _names(style: str, patient: str, dose: str, n: int, rng: np.random.Generator) -> list:
    numbers = rng.permutation(n) + 1
    while n > 1 and np.all(numbers == np.arange(1, n + 1)):
        numbers = rng.permutation(n) + 1
    if style == "tcia":
        return [f"1-{m:02d}.dcm" for m in numbers]
    tag = "FD" if dose == "full" else "QD"
    return [f"{patient}_{tag}_1_1.CT.0001.{m:04d}.2015.12.22.18.09.40.840353.{100 + m}.IMA" for m in numbers]


def write_series(directory: str, hu: np.ndarray, z: list, patient: str, dose: str, thickness_mm: float,
                 style: str, rng: np.random.Generator, study_uid: str, for_uid: str) -> Written:
    n = hu.shape[0]
    rescale = [RESCALES[(k + (dose == "low")) % len(RESCALES)] for k in range(n)]
    names = _names(style, patient, dose, n, rng)
    write_ct_series(
        hu, directory,
        patient_id=patient,
        series_description=f"{'Full' if dose == 'full' else 'Low'} Dose Images",
        series_number=1 if dose == "full" else 2,
        study_uid=study_uid,
        frame_of_reference_uid=for_uid,
        pixel_spacing=(PIXEL_MM, PIXEL_MM),
        slice_spacing=thickness_mm,
        slice_thickness=thickness_mm,
        origin=(-192.0 + PIXEL_MM / 2, -192.0 + PIXEL_MM / 2, z[0]),
        rescale=rescale,
        kvp=120,
        kernel="B30f",
        file_names=names,
    )
    return Written(directory, hu, list(z), rescale, names)


def make_tcia_tree(root: str, patients=TCIA_PATIENTS, n_slices: int = 4, thickness_mm: float = 1.0) -> Tree:
    """``<root>/<patient>/<study>/<n>.000000-{Full,Low} Dose Images-<uid5>/1-NN.dcm``"""
    from pydicom.uid import generate_uid

    tree = Tree(root, "tcia")
    for i, patient in enumerate(patients):
        rng = np.random.default_rng(_patient_seed(patient))
        full, low, z = patient_volumes(patient, n_slices, thickness_mm)
        study = os.path.join(root, patient, f"01-0{i + 1}-2018-NA-ABDOMEN-{12345 + i}")
        study_uid, for_uid = generate_uid(), generate_uid()
        for dose, hu, number in (("full", full, 1), ("low", low, 2)):
            label = "Full Dose Images" if dose == "full" else "Low Dose Images"
            d = os.path.join(study, f"{number}.000000-{label}-{40000 + 7 * i + number}")
            tree.truth[(patient, dose, f"{thickness_mm:g}mm")] = write_series(
                d, hu, z, patient, dose, thickness_mm, "tcia", rng, study_uid, for_uid)
    return tree


def make_aapm_tree(root: str, patients=AAPM_PATIENTS, n_slices: dict | None = None) -> Tree:
    """``<root>/{full,quarter}_{1mm,3mm}/<patient>/{full,quarter}_{1mm,3mm}/*.IMA``"""
    from pydicom.uid import generate_uid

    n_slices = n_slices or {"1mm": 4, "3mm": 2}
    tree = Tree(root, "aapm2016")
    for patient in patients:
        rng = np.random.default_rng(_patient_seed(patient))
        study_uid, for_uid = generate_uid(), generate_uid()
        for thick, n in n_slices.items():
            full, low, z = patient_volumes(patient, n, float(thick[:-2]))
            for dose, hu in (("full", full), ("low", low)):
                top = f"{'full' if dose == 'full' else 'quarter'}_{thick}"
                d = os.path.join(root, top, patient, top)
                tree.truth[(patient, dose, thick)] = write_series(
                    d, hu, z, patient, dose, float(thick[:-2]), "aapm", rng, study_uid, for_uid)
    return tree


def copy_tree(tree: Tree, root: str) -> Tree:
    """A private copy (to break in a test) with truth paths rewritten."""
    shutil.copytree(tree.root, root)
    out = Tree(root, tree.layout)
    for key, w in tree.truth.items():
        out.truth[key] = Written(os.path.join(root, os.path.relpath(w.directory, tree.root)), w.hu, w.positions_z,
                                 w.rescale, w.file_names)
    return out


@pytest.fixture(scope="session")
def tcia_tree(tmp_path_factory) -> Tree:
    return make_tcia_tree(str(tmp_path_factory.mktemp("tcia") / "LDCT-and-Projection-data"))


@pytest.fixture(scope="session")
def aapm_tree(tmp_path_factory) -> Tree:
    return make_aapm_tree(str(tmp_path_factory.mktemp("aapm") / "AAPM2016"))
