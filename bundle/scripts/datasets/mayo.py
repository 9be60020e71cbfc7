"""Index a Mayo low-dose CT copy (TCIA or AAPM-2016 layout) into an unpaired-training datalist.

Layouts (detected from the folder names under ``root``):

* ``aapm2016`` -- the 2016 AAPM Grand Challenge release:
  ``<root>/{full,quarter}_{1mm,3mm}/<patient>/.../*.IMA``; dose and thickness come from the
  top folder's name, the patient from the folder below it.
* ``tcia`` -- TCIA "LDCT-and-Projection-data": ``<root>/<patient>/<study>/<series>/*.dcm`` where
  the series folder's name contains "Full Dose Images" or "Low Dose Images" (any depth under
  ``root``; the patient is the folder two levels above the series folder). Slice thickness comes
  from the series' SliceThickness header.

Policies (this project's choices, also recorded in the datalist's ``split`` entry):

* **Thickness**: where only one slice thickness exists it is used; where several exist (the
  AAPM release always has 1 mm and 3 mm) ``thickness`` must be given -- no silent default --
  and the error lists the available ones.
* **Split, validation hold-out, unpaired halves**: see ``mayo_split``.
* **Paths**: ``image``/``label`` are series folders relative to ``dataset_dir`` (the absolute
  root, POSIX separators); :func:`load_datalist` returns them absolute.

Every problem with the data raises :class:`MayoDataError` (a ``ValueError``) whose message names
the path and the problem; the datalist is written (atomically) only after all checks passed.
"""

from __future__ import annotations

import io
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import PurePath

from ..core.atomic import write_json
from ..volumes.dicom_io import DicomDataError, SeriesInfo, list_files, read_header, scan_series
from .data import DATALIST_KEYS, load_datalist  # datalists are read in one place (data.py)
from .mayo_split import (
    AAPM2016_DEFAULT_SPLIT,
    AAPM2016_PATIENTS,
    AUTHORS_SPLIT,
    REGION_PREFIX,
    MayoDataError,
    assign_roles,
    load_split,
    resolve_split,
)

__all__ = [
    "MayoDataError",
    "AUTHORS_SPLIT",
    "AAPM2016_PATIENTS",
    "AAPM2016_DEFAULT_SPLIT",
    "REGION_PREFIX",
    "DATALIST_KEYS",
    "detect_layout",
    "find_series_folders",
    "load_split",
    "prepare_mayo",
    "load_datalist",
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


# ----------------------------------------------------------------------------------------------
# layout
# ----------------------------------------------------------------------------------------------


def _check_root(root) -> str:
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(root):
        raise MayoDataError(f"{root}: dataset root does not exist.")
    if not os.path.isdir(root):
        raise MayoDataError(f"{root}: dataset root is not a folder.")
    return root


def detect_layout(root) -> str:
    """``"aapm2016"`` or ``"tcia"`` from folder names only; :class:`MayoDataError` if neither."""
    root = _check_root(root)
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


def _thickness_label(value) -> str:
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
    root = _check_root(root)
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
                    thick = _thickness_label(ds.SliceThickness)
                found.append(SeriesFolder(rel[-3], label, label, thick, path))
    else:
        raise MayoDataError(f"{root}: unknown layout {layout!r} (expected 'aapm2016' or 'tcia').")
    return found


# ----------------------------------------------------------------------------------------------
# main entry (the split itself: mayo_split)
# ----------------------------------------------------------------------------------------------


def _rel(path: str, root: str) -> str:
    return PurePath(os.path.relpath(path, root)).as_posix()


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


def _fmt(value, spec: str = "g") -> str:
    return "-" if value in (None, "") else format(value, spec)


def _print_summary(rows: list[dict], datalist: dict, notes: list[str], out) -> None:
    header = ("patient", "role", "dose", "slices", "thick mm", "kVp", "kernel", "CTDIvol", "mAs")
    table = [header] + [
        (
            r["patient"],
            r["role"],
            r["dose"],
            str(r["slices"]),
            _fmt(r["thickness"]),
            _fmt(r["kvp"]),
            r["kernel"] or "-",
            _fmt(r["ctdi"], ".1f"),
            _fmt(r["mas"], ".0f"),
        )
        for r in rows
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    print(
        f"Mayo LDCT: {datalist['dataset_dir']} (layout {datalist['layout']}, region {datalist['region']}, "
        f"thickness {datalist['thickness']})",
        file=out,
    )
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out)
        if i == 0:
            print("  ".join("-" * w for w in widths), file=out)
    for key in DATALIST_KEYS:
        items = datalist[key]
        print(f"total {key}: {len(items)} patients, {sum(it['num_slices'] for it in items)} slices", file=out)
    for note in notes:
        print(note, file=out)


def prepare_mayo(
    root,
    out,
    region: str = "abdomen",
    thickness=None,
    split=None,
    seed: int = 0,
    *,
    num_validation: int | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> dict:
    """Index a Mayo LDCT copy at ``root`` and write the datalist JSON ``out``; returns the datalist.

    ``region``: abdomen | chest | head (selects the built-in split); ``thickness``: e.g. "1mm" or
    "3mm", required only where several exist; ``split``: optional split JSON file; ``seed``:
    validation hold-out and unpaired halves. ``num_validation`` overrides the hold-out size
    (ignored with a split file). See the module docstring for the policies. Raises
    :class:`MayoDataError` (nothing written) on any problem.
    """
    try:
        return _prepare(root, out, region, thickness, split, seed, num_validation, progress, verbose)
    except MayoDataError:
        raise
    except DicomDataError as e:
        raise MayoDataError(str(e)) from e


def _choose_thickness(root: str, folders: list[SeriesFolder], used: set, thickness) -> str:
    """The slice thickness to use: the one asked for, or the only one the used patients have."""
    for f in folders:  # TCIA: from a header; a used folder without a readable one is scanned for the real error
        if f.patient in used and f.thickness is None:
            scan_series(f.path, modality="CT")
            raise MayoDataError(f"{f.path}: no DICOM image files with a SliceThickness in this series folder.")
    by_thickness = sorted({f.thickness for f in folders if f.patient in used and f.thickness})
    if thickness is not None:
        chosen = _thickness_label(thickness)
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


def _dose_folders(root: str, folders: list[SeriesFolder], patient: str, chosen: str) -> dict[str, SeriesFolder]:
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


def _read_headers(chosen_folders: dict, progress: bool, notes: list[str]) -> None:
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


def _datalist_item(chosen_folders: dict, root: str, p: str, dose: str | None) -> dict:
    """A training item (one dose level) or, with ``dose=None``, a paired low/full item."""
    per = chosen_folders[p]
    if dose is not None:
        s = per[dose].series
        return {"patient": p, "image": _rel(s.directory, root), "num_slices": s.num_slices}
    low, full = per["low"].series, per["full"].series
    return {
        "patient": p,
        "image": _rel(low.directory, root),
        "label": _rel(full.directory, root),
        "num_slices": low.num_slices,
    }


def _summary_rows(chosen_folders: dict, roles: dict[str, str]) -> list[dict]:
    rows = []
    for p in sorted(roles):
        for dose in ("full", "low"):
            f = chosen_folders[p][dose]
            s = f.series
            rows.append(
                {
                    "patient": p,
                    "role": roles[p],
                    "dose": f.dose_label,
                    "slices": s.num_slices,
                    "thickness": s.slice_thickness,
                    "kvp": s.kvp,
                    "kernel": s.kernel,
                    "ctdi": s.ctdi_vol,
                    "mas": s.exposure_mas,
                }
            )
    return rows


def _check_region(region) -> str:
    region = str(region).strip().lower()
    if region not in REGION_PREFIX:
        raise MayoDataError(f"region={region!r}: expected one of {', '.join(REGION_PREFIX)}.")
    return region


def _prepare(root, out, region, thickness, split, seed, num_validation, progress, verbose) -> dict:
    log = sys.stdout if verbose else io.StringIO()
    root = _check_root(root)
    out = os.path.abspath(os.path.expanduser(os.fspath(out)))
    region, seed = _check_region(region), int(seed)
    layout = detect_layout(root)
    folders = find_series_folders(root, layout)
    present = sorted({f.patient for f in folders})
    notes: list[str] = []
    plan, source, absent, unsplit = resolve_split(root, layout, region, split, present, notes)
    train = [p for p in plan["train"] if p in present]
    test = [p for p in plan["test"] if p in present]
    used = set(train) | set(test) | {p for p in plan.get("validation", []) if p in present}
    chosen = _choose_thickness(root, folders, used, thickness)
    chosen_folders = {p: _dose_folders(root, folders, p, chosen) for p in sorted(used)}
    _read_headers(chosen_folders, progress, notes)
    clean, noisy, validation, policy = assign_roles(root, split, plan, present, train, seed, num_validation)
    if not test:
        warnings.warn(f"{root}: no test patients present; 'test' is empty.", stacklevel=3)

    def items(patients, dose):
        return [_datalist_item(chosen_folders, root, p, dose) for p in patients]

    datalist = {
        "name": "Mayo low-dose CT",
        "description": f"{layout} layout, {region}, {chosen}; unpaired training halves, paired validation/test",
        "dataset_dir": root,
        "layout": layout,
        "region": region,
        "thickness": chosen,
        "split": {
            "source": source,
            "seed": seed,
            "train": sorted(clean + noisy),
            "clean_half": clean,
            "noisy_half": noisy,
            "validation": validation,
            "test": test,
            "validation_policy": policy,
            "absent": absent,
            "unsplit": unsplit,
        },
        "training_clean": items(clean, "full"),
        "training_noisy": items(noisy, "low"),
        "validation": items(validation, None),
        "test": items(test, None),
    }
    roles = {
        **dict.fromkeys(clean, "train-clean"),
        **dict.fromkeys(noisy, "train-noisy"),
        **dict.fromkeys(validation, "validation"),
        **dict.fromkeys(test, "test"),
    }
    write_json(datalist, out)
    _print_summary(_summary_rows(chosen_folders, roles), datalist, notes, log)
    print(f"wrote {out}", file=log)
    return datalist
