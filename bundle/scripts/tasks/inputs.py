"""What a denoising run reads and where it writes: the volumes an input path names, and the output
names checked against the inputs before any work (an output never replaces or lies inside an input)."""

from __future__ import annotations

import os
import warnings
from typing import Any

from ..core.errors import InferenceError
from ..core.settings import flag
from ..datasets.data import load_datalist
from ..volumes.dicom_io import UnusableSeriesWarning, list_files
from ..volumes.dicom_series import SeriesInfo
from ..volumes.volume_io import check_modality, is_nifti, scan_dicom, volume_item

__all__ = ["collect_inputs", "check_outputs"]


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _inside(path: str, root: str) -> bool:
    """``path`` equals ``root`` or lies inside it (real paths)."""
    path, root = _real(path), _real(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _rel_name(path: str, root: str) -> str:
    rel = os.path.relpath(_real(path), _real(root))
    return os.path.basename(os.path.normpath(path)) if rel in (".", "") or rel.startswith("..") else rel


def _ct_series(files: list[str], force: bool = False) -> list[SeriesInfo]:
    """The usable CT series among an exam folder's files; the others (a scout, a dose report, an MR
    series) are skipped with a warning, unless nothing usable is left: then the first problem is raised."""
    if not files:
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnusableSeriesWarning)
        series = scan_dicom(files, skip_bad_series=True)
    unusable = [str(w.message) for w in caught if issubclass(w.category, UnusableSeriesWarning)]
    for w in caught:
        if not issubclass(w.category, UnusableSeriesWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    ct = [s for s in series if s.modality == "CT"]
    unusable += [
        f"series {s.series_uid} skipped: modality {s.modality or '(missing)'} is not CT ({s.files[0]})"
        for s in series
        if s.modality != "CT"
    ]
    if not ct and unusable:
        for s in series:
            check_modality(s, force)  # the non-CT refusal names the file
        scan_dicom(files)  # raises the first series' own problem
    for message in unusable:
        warnings.warn(message, UnusableSeriesWarning, stacklevel=3)
    return ct


def _dir_inputs(root: str, force: bool = False) -> list[tuple[str, Any]]:
    files = list_files(root)
    niftis = [f for f in files if is_nifti(f)]
    series = _ct_series([f for f in files if not is_nifti(f) and not f.lower().endswith(".json")], force)
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
        items.append((_rel_name(image, root), volume_item(image)))
    return items


def collect_inputs(input_path: str, force: bool = False, split: str = "test") -> list[tuple[str, Any]]:
    """``(output name, NIfTI path | SeriesInfo)`` for every volume ``input_path`` names.

    A NIfTI file; a datalist JSON (its ``split`` items' ``image``); a folder (every NIfTI file and every
    DICOM series below it, named by their path relative to it; a folder that is itself one series is
    named like the folder); a single DICOM file.  Headers are checked here (truncated files, mixed sizes,
    non-CT modality, even with ``force``) before any pixel is read.
    """
    force = flag(force, "force")  # "false" from the command line is False, not a truthy string
    if input_path is None:
        raise InferenceError("input_path is not set: pass a DICOM folder, a NIfTI file or a datalist JSON.")
    path = os.fspath(input_path)
    if not os.path.exists(path):
        raise InferenceError(
            f"{path}: no such file or directory (expected a DICOM folder, a NIfTI file or a datalist)."
        )
    if os.path.isfile(path) and is_nifti(path):
        return [(os.path.basename(path), path)]
    if os.path.isfile(path) and path.lower().endswith(".json"):
        items = _datalist_inputs(path, split)
    elif os.path.isdir(path):
        items = _dir_inputs(path, force)
    else:
        series = scan_dicom(path)
        if not series:
            raise InferenceError(f"{path}: not a NIfTI file, a datalist JSON, a DICOM file or a folder.")
        items = [(os.path.splitext(os.path.basename(path))[0], series[0])]
    for _, item in items:
        if isinstance(item, SeriesInfo):
            check_modality(item, force)
    return items


def _source_paths(item) -> list[str]:
    return [item.directory] if isinstance(item, SeriesInfo) else [os.fspath(item)]


def check_outputs(items, output_dir: str, input_path: str, overwrite: bool) -> list[str]:
    """The output path of every item; refused when one would replace or lie inside an input, or
    already exists without ``overwrite``."""
    sources = [os.fspath(input_path)] + [p for _, item in items for p in _source_paths(item)]
    for src in sources:
        if os.path.isdir(src) and _inside(output_dir, src):
            raise InferenceError(f"{output_dir}: the output directory is (inside) the input {src}; choose another one.")
    targets = [os.path.join(output_dir, name) for name, _ in items]
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise InferenceError(f"{twice[0]}: two inputs would be written to this one output (an input named twice?).")
    for target in targets:
        for src in sources:
            if _inside(src, target) or _inside(target, src):
                raise InferenceError(f"{target}: the output would replace or lie inside the input {src}.")
        if os.path.lexists(target) and not overwrite:
            raise InferenceError(f"{target}: already exists (choose another output or pass --overwrite true).")
    return targets
