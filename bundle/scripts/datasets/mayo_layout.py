"""A Mayo low-dose CT copy on disk: its layout, its series folders (patient, dose, slice thickness) and the
one full- and one low-dose series per patient, read from their headers and checked as pairs.

Layouts (detected from the folder names under ``root``):

* ``aapm2016`` -- the 2016 AAPM Grand Challenge release:
  ``<root>/{full,quarter}_{1mm,3mm}/<patient>/.../*.IMA``; dose and thickness come from the
  top folder's name, the patient from the folder below it.
* ``tcia`` -- TCIA "LDCT-and-Projection-data": ``<root>/<patient>/<study>/<series>/*.dcm`` where
  the series folder's name contains "Full Dose Images" or "Low Dose Images" (any depth under
  ``root``; the patient is the folder two levels above the series folder). Slice thickness comes
  from the series' SliceThickness header.

Every problem with the data raises :class:`MayoDataError` naming the path and the problem. The datalist
built from these folders is ``mayo``'s.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import PurePath

from ..volumes.dicom_io import DicomDataError, list_files, read_header, scan_series
from ..volumes.dicom_series import SeriesInfo
from .mayo_split import MayoDataError

__all__ = [
    "SeriesFolder",
    "check_root",
    "detect_layout",
    "thickness_label",
    "find_series_folders",
    "choose_thickness",
    "dose_folders",
    "read_headers",
]

_AAPM_DIR = re.compile(r"^(full|quarter)_(1|3)mm$", re.IGNORECASE)
_TCIA_SERIES = re.compile(r"(full|low) dose images", re.IGNORECASE)
PAIR_POSITION_TOL_MM = 0.01


@dataclass
class SeriesFolder:
    """A folder expected to hold one series of one patient at one dose level."""

    patient: str
    dose: str  # "full" or "low"
    dose_label: str  # as named on disk: full / quarter (AAPM), full / low (TCIA)
    thickness: str | None  # e.g. "1mm"; None until known
    path: str
    series: SeriesInfo | None = None


def check_root(root) -> str:
    """``root`` as an absolute path; :class:`MayoDataError` unless it is an existing folder."""
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(root):
        raise MayoDataError(f"{root}: dataset root does not exist.")
    if not os.path.isdir(root):
        raise MayoDataError(f"{root}: dataset root is not a folder.")
    return root


def detect_layout(root) -> str:
    """``"aapm2016"`` or ``"tcia"`` from folder names only; :class:`MayoDataError` if neither."""
    root = check_root(root)
    if any(_AAPM_DIR.match(d) and os.path.isdir(os.path.join(root, d)) for d in os.listdir(root)):
        return "aapm2016"
    for _, dirnames, _ in os.walk(root):
        if any(_TCIA_SERIES.search(d) for d in dirnames):
            return "tcia"
    raise MayoDataError(
        f"{root}: no Mayo low-dose CT data found: expected folders full_1mm/, quarter_1mm/, full_3mm/, "
        "quarter_3mm/ (AAPM 2016 release) or series folders whose names contain 'Full Dose Images' / "
        "'Low Dose Images' (TCIA LDCT-and-Projection-data)."
    )


def thickness_label(value) -> str:
    """1, 1.0, "1", "1mm", "1 mm" -> "1mm"."""
    text = str(value).strip().lower().replace(" ", "")
    text = text[:-2] if text.endswith("mm") else text
    try:
        mm = float(text)
    except ValueError:
        raise MayoDataError(f"thickness={value!r}: expected a slice thickness such as 1mm or 3mm.") from None
    if not mm > 0:
        raise MayoDataError(f"thickness={value!r}: must be positive.")
    return f"{round(mm, 2):g}mm"


def _first_header(folder: str):
    """The first readable header in a folder (problems are reported by the full scan, if the folder is used)."""
    for path in list_files(folder):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = read_header(path, check_pixels=False)
            except DicomDataError:
                continue
        if ds is not None:
            return ds
    return None


def find_series_folders(root, layout: str | None = None) -> list[SeriesFolder]:
    """The candidate series folders (patient, dose, thickness, path); reads at most one header per TCIA folder."""
    root = check_root(root)
    layout = layout or detect_layout(root)
    found = []
    if layout == "aapm2016":
        for top in sorted(os.listdir(root)):
            m = _AAPM_DIR.match(top)
            if not m or not os.path.isdir(os.path.join(root, top)):
                continue
            label = m.group(1).lower()
            for patient in sorted(os.listdir(os.path.join(root, top))):
                path = os.path.join(root, top, patient)
                if os.path.isdir(path) and not patient.startswith("."):
                    dose = "full" if label == "full" else "low"
                    found.append(SeriesFolder(patient, dose, label, f"{m.group(2)}mm", path))
    elif layout == "tcia":
        for dirpath, dirnames, _ in os.walk(root):
            dirnames.sort()
            for d in list(dirnames):
                m = _TCIA_SERIES.search(d)
                if not m:
                    continue
                dirnames.remove(d)  # a series folder is a leaf for our purposes
                path = os.path.join(dirpath, d)
                rel = PurePath(os.path.relpath(path, root)).parts
                if len(rel) < 3:
                    raise MayoDataError(
                        f"{path}: TCIA series folder is not at <root>/<patient>/<study>/<series>; cannot tell the patient."
                    )
                label = m.group(1).lower()
                ds = _first_header(path)
                thick = None
                if ds is not None and ds.get("SliceThickness") not in (None, ""):
                    thick = thickness_label(ds.SliceThickness)
                found.append(SeriesFolder(rel[-3], label, label, thick, path))
    else:
        raise MayoDataError(f"{root}: unknown layout {layout!r} (expected 'aapm2016' or 'tcia').")
    return found


def _check_pair(patient: str, full: SeriesFolder, low: SeriesFolder) -> None:
    a, b = full.series, low.series
    where = f"{low.path} vs {full.path}"
    if (a.rows, a.cols) != (b.rows, b.cols):
        raise MayoDataError(
            f"{where}: patient {patient}: low- and full-dose image sizes differ ({(b.rows, b.cols)} vs {(a.rows, a.cols)})."
        )
    if a.num_slices != b.num_slices:
        raise MayoDataError(
            f"{where}: patient {patient}: low- and full-dose series have different slice counts "
            f"({b.num_slices} vs {a.num_slices}); the slice positions must match."
        )
    if max(abs(x - y) for x, y in zip(a.orientation, b.orientation)) > 1e-4:
        raise MayoDataError(f"{where}: patient {patient}: low- and full-dose orientations differ.")
    for k, (pa, pb) in enumerate(zip(a.positions, b.positions)):
        if abs(pa - pb) > PAIR_POSITION_TOL_MM:
            raise MayoDataError(
                f"{where}: patient {patient}: slice positions differ at slice {k} "
                f"({pb:.3f} mm in {b.files[k]} vs {pa:.3f} mm in {a.files[k]})."
            )
    if max(abs(x - y) for x, y in zip(a.pixel_spacing, b.pixel_spacing)) > 1e-3:
        raise MayoDataError(
            f"{where}: patient {patient}: pixel spacings differ ({b.pixel_spacing} vs {a.pixel_spacing})."
        )


def choose_thickness(root: str, folders: list[SeriesFolder], used: set, thickness) -> str:
    """The slice thickness to use: the one asked for, or the only one the used patients have."""
    for f in folders:  # TCIA: from a header; a used folder without a readable one is scanned for the real error
        if f.patient in used and f.thickness is None:
            scan_series(f.path, modality="CT")
            raise MayoDataError(f"{f.path}: no DICOM image files with a SliceThickness in this series folder.")
    by_thickness = sorted({f.thickness for f in folders if f.patient in used and f.thickness})
    if thickness is not None:
        chosen = thickness_label(thickness)
        if chosen not in by_thickness:
            raise MayoDataError(
                f"{root}: no {chosen} series for the split's patients; available: {', '.join(by_thickness) or 'none'}."
            )
        return chosen
    if len(by_thickness) == 1:
        return by_thickness[0]
    raise MayoDataError(
        f"{root}: several slice thicknesses exist ({', '.join(by_thickness)}); choose one with --thickness, "
        f"e.g. --thickness {by_thickness[0]}."
    )


def dose_folders(root: str, folders: list[SeriesFolder], patient: str, chosen: str) -> dict[str, SeriesFolder]:
    """The one full- and one low-dose series folder of ``patient`` at the chosen thickness."""
    per_dose: dict[str, SeriesFolder] = {}
    for f in (f for f in folders if f.patient == patient and f.thickness == chosen):
        if f.dose in per_dose:
            raise MayoDataError(
                f"{f.path}: patient {patient} has several {f.dose}-dose {chosen} series folders "
                f"({per_dose[f.dose].path} and {f.path}); keep one."
            )
        per_dose[f.dose] = f
    if not per_dose:
        others = sorted({f.thickness or "?" for f in folders if f.patient == patient})
        raise MayoDataError(
            f"{os.path.join(root, patient)}: patient {patient} has no {chosen} series (has: {', '.join(others)})."
        )
    if len(per_dose) < 2:
        have = next(iter(per_dose.values()))
        missing = "low" if "full" in per_dose else "full"
        raise MayoDataError(
            f"{have.path}: patient {patient} has only one dose level at {chosen} "
            f"({have.dose_label} dose); the {missing}-dose series is missing."
        )
    return per_dose


def _scan_folder(f: SeriesFolder, files: list[str], bar) -> None:
    if not files:
        raise MayoDataError(f"{f.path}: series folder is empty.")
    found = scan_series(files, modality="CT", progress=bar)
    if not found:
        raise MayoDataError(f"{f.path}: no DICOM image files in this series folder.")
    if len(found) > 1:
        raise MayoDataError(
            f"{f.path}: {len(found)} series (SeriesInstanceUIDs {', '.join(s.series_uid for s in found)}) "
            "in one folder; expected one."
        )
    f.series = found[0]


def read_headers(chosen_folders: dict, progress: bool, notes: list[str]) -> None:
    """Scan every chosen series (the slow part, one progress bar over all files) and check the pairs."""
    todo = [(f, list_files(f.path)) for p in sorted(chosen_folders) for f in chosen_folders[p].values()]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(files) for _, files in todo), desc="Reading DICOM headers", unit="file", disable=None)
    try:
        for f, files in todo:
            _scan_folder(f, files, bar)
    finally:
        if bar is not None:
            bar.close()
    for p, per_dose in chosen_folders.items():
        _check_pair(p, per_dose["full"], per_dose["low"])
        for f in per_dose.values():
            if f.series.patient_id and f.series.patient_id != p:
                notes.append(
                    f"note: {f.path}: PatientID header {f.series.patient_id!r} differs from folder name {p!r}; using {p!r}."
                )
