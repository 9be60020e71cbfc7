"""DICOM series from headers alone: scan, group, order and check the slices (pixels to HU: ``dicom_pixels``;
writing: ``dicom_write``).

Conventions
-----------
* Pixel values become HU through each file's own RescaleSlope/RescaleIntercept (or its Modality
  LUT), never the raw stored values.
* A series' slices are ordered by their position along the slice normal
  ``n = row_cosines x column_cosines`` (from ImageOrientationPatient), position ``= IPP . n``,
  ascending. File names and InstanceNumber play no part in the order.
* Volumes are ``float32`` arrays of shape ``(S, rows, cols)``: ``volume[k, i, j]`` is slice ``k``
  (in the order above), row ``i``, column ``j``, exactly as a single slice's ``pixel_array``.
* The 4x4 ``affine`` maps a homogeneous index ``(k, i, j, 1)`` (same axis order as the array) to
  DICOM patient coordinates (LPS, mm): column 0 is the step between slices, column 1 the step
  between rows (column cosines x PixelSpacing[0]), column 2 the step between columns (row cosines
  x PixelSpacing[1]), column 3 the ImagePositionPatient of slice 0.

Errors about the data are :class:`DicomDataError` (a ``ValueError``) whose message starts with the
offending path. Files that are not DICOM at all are skipped with a :class:`DicomSkipWarning`.
"""

from __future__ import annotations

import os
import stat
import warnings
from typing import Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from .dicom_header import DicomDataError, DicomSkipWarning, read_header
from .dicom_series import SeriesInfo, float_or_none, float_tuple, header_text

__all__ = ["DicomDataError", "DicomSkipWarning", "read_header", "SCAN_TAGS", "list_files", "scan_series"]

POSITION_TOL_MM = 1e-3  # two slices closer than this along the normal are duplicates
ORIENTATION_TOL = 1e-4  # max abs difference between direction cosines of one series
SPACING_TOL_MM = 1e-3


def _regular_files(dirpath: str, names) -> list[str]:
    """The regular files among ``names`` (hidden ones skipped); a named pipe, socket or device is skipped
    with a warning (reading a pipe would block the scan forever)."""
    out = []
    for name in sorted(n for n in names if not n.startswith(".")):
        path = os.path.join(dirpath, name)
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError as e:  # a dangling symlink
            warnings.warn(f"{path}: skipped ({e.strerror}).", DicomSkipWarning, stacklevel=3)
            continue
        if regular:
            out.append(path)
        else:
            warnings.warn(f"{path}: skipped (not a regular file).", DicomSkipWarning, stacklevel=3)
    return out


def list_files(paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Every regular file under a directory (recursively, symlinked folders followed once, sorted;
    hidden and special files skipped), or the given paths."""
    if isinstance(paths_or_dir, (str, os.PathLike)):
        root = os.fspath(paths_or_dir)
        if os.path.isfile(root):
            return [root]
        if not os.path.isdir(root):
            raise DicomDataError(f"{root}: no such file or directory.")
        out, seen = [], set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a symlink loop, or a folder reached twice
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out.extend(_regular_files(dirpath, filenames))
        return out
    return [os.fspath(p) for p in paths_or_dir]


# what must agree within a series (the same SeriesInstanceUID on two patients is a corrupt export)
IDENTITY_TAGS = ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID")

# the header elements a scan keeps (read with pydicom's ``specific_tags``: other values are skipped)
SCAN_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "PatientID",
    "SeriesNumber",
    "SeriesDescription",
    "Manufacturer",
    "ImageType",
    "KVP",
    "ConvolutionKernel",
    "Exposure",
    "CTDIvol",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsAllocated",
    "SamplesPerPixel",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
)


def _header_record(path: str, ds: Dataset) -> dict:
    """The few values a series needs, converted once (datasets are not kept: 100k files stay cheap)."""
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) > 1:
        raise DicomDataError(f"{path}: multi-frame image ({frames} frames); only single-frame CT slices are supported.")
    return {
        "path": path,
        "uid": str(ds.SeriesInstanceUID),
        "modality": header_text(ds.get("Modality")),
        "iop": float_tuple(ds.get("ImageOrientationPatient"), 6),
        "ipp": float_tuple(ds.get("ImagePositionPatient"), 3),
        "size": (ds.get("Rows"), ds.get("Columns")),
        "ps": float_tuple(ds.get("PixelSpacing"), 2),
        "sop": header_text(ds.get("SOPInstanceUID")),
        "exposure": float_or_none(ds.get("Exposure")),
        "ctdi": float_or_none(ds.get("CTDIvol")),
        "rescale": ("RescaleSlope" in ds and "RescaleIntercept" in ds) or "ModalityLUTSequence" in ds,
        "identity": {tag: header_text(ds.get(tag)) for tag in IDENTITY_TAGS},
        "ds": ds,  # dropped for all but each series' first file
    }


def _check_one_patient(uid: str, records: list[dict]) -> None:
    """A series is one patient, one study, one frame of reference: refuse a series UID shared across them."""
    first = records[0]
    for r in records:
        for tag in IDENTITY_TAGS:
            if r["identity"][tag] != first["identity"][tag]:
                raise DicomDataError(
                    f"{r['path']}: series {uid} mixes {tag} {r['identity'][tag] or '(missing)'!r} with "
                    f"{first['identity'][tag] or '(missing)'!r} of {first['path']}; a series must be one patient, "
                    "study and frame of reference (separate the files into one folder per series)."
                )


def _check_consistent(uid: str, records: list[dict]) -> None:
    """One patient; every slice placeable, with the first slice's orientation, size and pixel spacing."""
    _check_one_patient(uid, records)
    r0 = records[0]
    first_path, iop0, size0, ps0 = r0["path"], r0["iop"], r0["size"], r0["ps"]
    for r in records:
        path, iop, ipp = r["path"], r["iop"], r["ipp"]
        if iop is None or ipp is None:
            raise DicomDataError(
                f"{path}: missing or invalid ImagePositionPatient/ImageOrientationPatient; the slice cannot be placed."
            )
        if max(abs(a - b) for a, b in zip(iop, iop0)) > ORIENTATION_TOL:
            raise DicomDataError(
                f"{path}: mixed orientations in series {uid}: ImageOrientationPatient {list(iop)} differs from "
                f"{list(iop0)} in {first_path}."
            )
        if r["size"] != size0 or None in r["size"]:
            raise DicomDataError(f"{path}: mixed image sizes in series {uid}: {r['size']} vs {size0} in {first_path}.")
        ps = r["ps"]
        if ps is None:
            raise DicomDataError(f"{path}: missing or invalid PixelSpacing.")
        if ps0 is None or max(abs(a - b) for a, b in zip(ps, ps0)) > SPACING_TOL_MM:
            raise DicomDataError(f"{path}: mixed PixelSpacing in series {uid}: {list(ps)} vs {ps0} in {first_path}.")


def _order_slices(uid: str, records: list[dict]) -> tuple[list[dict], np.ndarray]:
    """The records sorted along the slice normal, with their positions; duplicates refused."""
    iop0 = records[0]["iop"]
    o = np.asarray(iop0)
    normal = np.cross(o[:3], o[3:])
    if not 0.99 < np.linalg.norm(normal) < 1.01:
        raise DicomDataError(
            f"{records[0]['path']}: ImageOrientationPatient {list(iop0)} is not two orthonormal directions."
        )
    pos = np.asarray([r["ipp"] for r in records], dtype=float) @ normal
    order = np.argsort(pos, kind="stable")
    records = [records[k] for k in order]
    pos = pos[order]
    for k in range(1, len(records)):
        if pos[k] - pos[k - 1] < POSITION_TOL_MM:
            raise DicomDataError(
                f"{records[k]['path']}: duplicate slice position {pos[k]:.3f} mm in series {uid} "
                f"(same as {records[k - 1]['path']})."
            )
    return records, pos


def _series_from_headers(uid: str, records: list[dict]) -> SeriesInfo:
    _check_consistent(uid, records)
    first, iop0, size0, ps0 = records[0]["ds"], records[0]["iop"], records[0]["size"], records[0]["ps"]
    records, pos = _order_slices(uid, records)

    def mean_of(key):
        vals = [r[key] for r in records if r[key] is not None]
        return float(np.mean(vals)) if vals else None

    series_number = first.get("SeriesNumber")
    return SeriesInfo(
        series_uid=uid,
        files=tuple(r["path"] for r in records),
        positions=tuple(float(p) for p in pos),
        image_positions=tuple(tuple(r["ipp"]) for r in records),
        orientation=tuple(iop0),
        rows=int(size0[0]),
        cols=int(size0[1]),
        pixel_spacing=(float(ps0[0]), float(ps0[1])),
        slice_thickness=float_or_none(first.get("SliceThickness")),
        modality=header_text(first.get("Modality")),
        patient_id=header_text(first.get("PatientID")),
        study_uid=header_text(first.get("StudyInstanceUID")),
        frame_of_reference_uid=header_text(first.get("FrameOfReferenceUID")),
        series_number=int(series_number) if series_number not in (None, "") else None,
        series_description=header_text(first.get("SeriesDescription")),
        kvp=float_or_none(first.get("KVP")),
        kernel=header_text(first.get("ConvolutionKernel")),
        manufacturer=header_text(first.get("Manufacturer")),
        image_type=tuple(str(v) for v in (first.get("ImageType") or ())),
        sop_instance_uids=tuple(r["sop"] for r in records),
        without_rescale=tuple(r["path"] for r in records if not r["rescale"]),
        exposure_mas=mean_of("exposure"),
        ctdi_vol=mean_of("ctdi"),
    )


def _usable_series(groups: dict, skip_bad_series: bool) -> list[SeriesInfo]:
    """A SeriesInfo per group; a group that cannot be a volume raises, or with ``skip_bad_series`` is
    skipped with a warning naming the file and the problem (an exam folder's scout or dose report)."""
    series = []
    for uid, entries in groups.items():
        try:
            series.append(_series_from_headers(uid, entries))
        except DicomDataError as e:
            if not skip_bad_series:
                raise
            warnings.warn(f"series {uid} skipped: {e}", UnusableSeriesWarning, stacklevel=3)
    return series


class UnusableSeriesWarning(UserWarning):
    """A series of an exam folder that cannot be a CT volume was skipped; the others are processed."""


def scan_series(
    paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    modality: str | Sequence[str] | None = "CT",
    progress: bool | object = False,
    skip_bad_series: bool = False,
) -> list[SeriesInfo]:
    """Group files by SeriesInstanceUID from their headers only, each series ordered along its normal.

    ``paths_or_dir``: a folder (scanned recursively) or file paths. Non-DICOM files are skipped with
    a warning. ``modality``: the allowed Modality value(s) (``None``: any); another modality raises
    :class:`DicomDataError` naming the file. ``progress``: ``True`` for a tqdm bar over the files,
    or an object with ``update(n)`` (e.g. a shared tqdm bar). Raises :class:`DicomDataError` for
    truncated/corrupt files, mixed orientations, sizes or pixel spacings, duplicate positions; with
    ``skip_bad_series`` a series with such a problem is skipped with an ``UnusableSeriesWarning``.
    Series are returned sorted by (patient id, series number, series UID).
    """
    files = list_files(paths_or_dir)
    allowed = None if modality is None else {modality} if isinstance(modality, str) else set(modality)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="DICOM headers", unit="file", disable=None)
    elif progress:
        bar = progress
    groups: dict[str, list[dict]] = {}
    try:
        for path in files:
            ds = read_header(path, tags=SCAN_TAGS)
            if bar is not None:
                bar.update(1)
            if ds is None:
                continue
            mod = header_text(ds.get("Modality"))
            if allowed is not None and mod not in allowed:
                raise DicomDataError(
                    f"{path}: modality {mod or '(missing)'} is not supported here (expected {'/'.join(sorted(allowed))})."
                )
            try:
                record = _header_record(path, ds)
            except DicomDataError as e:  # e.g. a multi-frame scout
                if not skip_bad_series:
                    raise
                warnings.warn(f"skipped: {e}", UnusableSeriesWarning, stacklevel=2)
                continue
            group = groups.setdefault(record["uid"], [])
            if group:
                del record["ds"]
            group.append(record)
    finally:
        if progress is True and bar is not None:
            bar.close()
    series = _usable_series(groups, skip_bad_series)
    series.sort(key=lambda s: (s.patient_id, s.series_number if s.series_number is not None else -1, s.series_uid))
    return series
