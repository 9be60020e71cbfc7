"""DICOM primitives: header-only series scanning, slice/series reading in HU, CT series writing.

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
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from pydicom.valuerep import DS

from .atomic import staging_dir

__all__ = [
    "DicomDataError",
    "DicomSkipWarning",
    "SeriesInfo",
    "read_header",
    "SCAN_TAGS",
    "list_files",
    "scan_series",
    "read_slice_hu",
    "read_series_hu",
    "write_ct_series",
]

POSITION_TOL_MM = 1e-3  # two slices closer than this along the normal are duplicates
ORIENTATION_TOL = 1e-4  # max abs difference between direction cosines of one series
SPACING_TOL_MM = 1e-3

# pydicom 3 here; MONAI Label 0.8.5's environment pins pydicom 2.4 (integrations/monailabel_app), whose
# writing, original-encoding and modality-LUT APIs differ; the few places that differ branch on this.
PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])

_PIXEL_DATA_LE = b"\xe0\x7f\x10\x00"  # tag (7FE0,0010) little endian
_PIXEL_DATA_BE = b"\x7f\xe0\x00\x10"


class DicomDataError(ValueError):
    """A DICOM file or series that cannot be used; the message names the file and the problem."""


class DicomSkipWarning(UserWarning):
    """A file that is not DICOM (or not an image) was skipped."""


# ----------------------------------------------------------------------------------------------
# header reading
# ----------------------------------------------------------------------------------------------


def _looks_like_dicom(path: str) -> bool:
    """'DICM' at byte 128, or (preamble-less files) a group 0002/0008 tag at byte 0."""
    with open(path, "rb") as f:
        head = f.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00")


def read_header(path: str, *, check_pixels: bool = True, tags: Sequence[str] | None = None) -> Dataset | None:
    """Read one file's header (no pixel data).

    Returns ``None`` (after a :class:`DicomSkipWarning` naming the file) for a file that is not DICOM
    or is a DICOM object without an image series (e.g. a DICOMDIR). Raises :class:`DicomDataError`
    for a DICOM file that is truncated or corrupt. With ``check_pixels`` the Pixel Data element's
    declared length is checked against the file size (a seek, no pixel bytes are read). ``tags``:
    only these keywords are kept (faster; see pydicom's ``specific_tags``).
    """
    path = os.fspath(path)
    try:
        if not _looks_like_dicom(path):
            warnings.warn(f"{path}: not a DICOM file, skipped.", DicomSkipWarning, stacklevel=2)
            return None
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=tags)
            except InvalidDicomError:
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True, specific_tags=tags)
            pixel_offset = fp.tell()
            tag_and_length = fp.read(12)
    except OSError as e:
        raise DicomDataError(f"{path}: cannot read file ({e}).") from e
    except DicomDataError:
        raise
    except Exception as e:  # pydicom raises many types on corrupt input
        raise DicomDataError(f"{path}: corrupt or truncated DICOM header ({type(e).__name__}: {e}).") from e

    if "SeriesInstanceUID" not in ds:
        sop_class = ds.file_meta.get("MediaStorageSOPClassUID") if getattr(ds, "file_meta", None) else None
        if pixel_offset >= size and sop_class != pydicom.uid.MediaStorageDirectoryStorage:
            raise DicomDataError(
                f"{path}: truncated or corrupt DICOM file: the header ends at byte {size} without SeriesInstanceUID or Pixel Data."
            )
        warnings.warn(f"{path}: DICOM file without SeriesInstanceUID (not an image), skipped.", DicomSkipWarning, stacklevel=2)
        return None
    if check_pixels:
        _check_pixel_data_extent(path, ds, pixel_offset, tag_and_length, size)
    return ds


def _check_pixel_data_extent(path: str, ds: Dataset, offset: int, head: bytes, size: int) -> None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    big_endian = bool(ts is not None and ts == pydicom.uid.ExplicitVRBigEndian)
    tag = _PIXEL_DATA_BE if big_endian else _PIXEL_DATA_LE
    if len(head) < 8 or head[:4] != tag:
        raise DicomDataError(
            f"{path}: truncated or corrupt DICOM file (or not an image): the header ends at byte {offset} of "
            f"{size} without Pixel Data (7FE0,0010)."
        )
    order = "big" if big_endian else "little"
    if head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"):  # explicit VR: tag, VR, 2 reserved, length
        if len(head) < 12:
            raise DicomDataError(f"{path}: truncated DICOM file inside the Pixel Data element header.")
        length, start = int.from_bytes(head[8:12], order), offset + 12
    else:  # implicit VR: tag, length
        length, start = int.from_bytes(head[4:8], order), offset + 8
    if length != 0xFFFFFFFF and start + length > size:  # undefined length = encapsulated, not checked
        raise DicomDataError(
            f"{path}: truncated DICOM file: Pixel Data declares {length} bytes but only {max(size - start, 0)} remain."
        )
    _check_image_size(path, ds, None if length == 0xFFFFFFFF else length)


MAX_ENCAPSULATED_BYTES = 1 << 30  # 1 GiB decoded: far beyond any CT image, far below a forged 65535 x 65535 x 16


def _check_image_size(path: str, ds: Dataset, pixel_bytes: int | None) -> None:
    """Rows x Columns x BitsAllocated x samples x frames against the Pixel Data length (native), or
    against a plausibility cap (encapsulated), before any pixel array is allocated."""
    if not all(keyword in ds for keyword in ("Rows", "Columns", "BitsAllocated")):
        return  # a header read with a tag subset: checked when the full header is read
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    needed = rows * columns * frames * samples * bits // 8
    described = f"{rows}x{columns} pixels x {frames} frame(s) of {bits} bits ({needed} bytes)"
    if pixel_bytes is not None and needed > pixel_bytes:
        raise DicomDataError(f"{path}: the header describes {described} but Pixel Data holds {pixel_bytes} bytes "
                             "(truncated or forged header).")
    if pixel_bytes is None and needed > MAX_ENCAPSULATED_BYTES:
        raise DicomDataError(f"{path}: the header describes {described}, implausibly large for a CT image "
                             "(forged header?).")


def list_files(paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Every regular file under a directory (recursively, sorted; hidden files skipped), or the given paths."""
    if isinstance(paths_or_dir, (str, os.PathLike)):
        root = os.fspath(paths_or_dir)
        if os.path.isfile(root):
            return [root]
        if not os.path.isdir(root):
            raise DicomDataError(f"{root}: no such file or directory.")
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
        return out
    return [os.fspath(p) for p in paths_or_dir]


# ----------------------------------------------------------------------------------------------
# series description
# ----------------------------------------------------------------------------------------------


def _floats(value, n: int | None = None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]))
    except (TypeError, ValueError):
        return None
    if n is not None and len(values) != n:
        return None
    return values


def _float_or_none(value) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _str(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class SeriesInfo:
    """One image series as read from its headers, slices ordered along the slice normal (ascending)."""

    series_uid: str
    files: tuple[str, ...]
    positions: tuple[float, ...]  # mm along the normal, ascending, one per file
    image_positions: tuple[tuple[float, float, float], ...]  # ImagePositionPatient per file (LPS, mm)
    orientation: tuple[float, ...]  # ImageOrientationPatient: row cosines, column cosines
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    slice_thickness: float | None
    modality: str
    patient_id: str
    study_uid: str
    frame_of_reference_uid: str
    series_number: int | None
    series_description: str
    kvp: float | None
    kernel: str
    manufacturer: str
    image_type: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]
    exposure_mas: float | None = None  # mean Exposure (mAs) over slices, a dose hint
    ctdi_vol: float | None = None  # mean CTDIvol (mGy) over slices, a dose hint

    @property
    def num_slices(self) -> int:
        return len(self.files)

    @property
    def directory(self) -> str:
        """The folder holding the series' files (their common folder)."""
        dirs = {os.path.dirname(os.path.abspath(f)) for f in self.files}
        return dirs.pop() if len(dirs) == 1 else os.path.commonpath(sorted(dirs))

    @property
    def normal(self) -> np.ndarray:
        o = np.asarray(self.orientation, dtype=float)
        return np.cross(o[:3], o[3:])

    @property
    def slice_spacing(self) -> float | None:
        """Median distance between consecutive slices along the normal (None for one slice)."""
        if len(self.positions) < 2:
            return None
        return float(np.median(np.diff(self.positions)))

    @property
    def affine(self) -> np.ndarray:
        """4x4: (k, i, j, 1) -> LPS mm; see the module docstring."""
        o = np.asarray(self.orientation, dtype=float)
        ipp = np.asarray(self.image_positions, dtype=float)
        a = np.eye(4)
        if len(ipp) > 1:
            a[:3, 0] = (ipp[-1] - ipp[0]) / (len(ipp) - 1)
        else:
            a[:3, 0] = self.normal * (self.slice_thickness or 1.0)
        a[:3, 1] = o[3:] * self.pixel_spacing[0]
        a[:3, 2] = o[:3] * self.pixel_spacing[1]
        a[:3, 3] = ipp[0]
        return a


# the header elements a scan keeps (read with pydicom's ``specific_tags``: other values are skipped)
SCAN_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "Modality", "PatientID", "SeriesNumber", "SeriesDescription", "Manufacturer", "ImageType", "KVP",
    "ConvolutionKernel", "Exposure", "CTDIvol", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "SamplesPerPixel",
)


def _header_record(path: str, ds: Dataset) -> dict:
    """The few values a series needs, converted once (datasets are not kept: 100k files stay cheap)."""
    frames = ds.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) > 1:
        raise DicomDataError(f"{path}: multi-frame image ({frames} frames); only single-frame CT slices are supported.")
    return {
        "path": path,
        "uid": str(ds.SeriesInstanceUID),
        "modality": _str(ds.get("Modality")),
        "iop": _floats(ds.get("ImageOrientationPatient"), 6),
        "ipp": _floats(ds.get("ImagePositionPatient"), 3),
        "size": (ds.get("Rows"), ds.get("Columns")),
        "ps": _floats(ds.get("PixelSpacing"), 2),
        "sop": _str(ds.get("SOPInstanceUID")),
        "exposure": _float_or_none(ds.get("Exposure")),
        "ctdi": _float_or_none(ds.get("CTDIvol")),
        "ds": ds,  # dropped for all but each series' first file
    }


def _series_from_headers(uid: str, records: list[dict]) -> SeriesInfo:
    r0 = records[0]
    first_path, first = r0["path"], r0["ds"]
    iop0, size0, ps0 = r0["iop"], r0["size"], r0["ps"]
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

    o = np.asarray(iop0)
    normal = np.cross(o[:3], o[3:])
    if not 0.99 < np.linalg.norm(normal) < 1.01:
        raise DicomDataError(f"{first_path}: ImageOrientationPatient {list(iop0)} is not two orthonormal directions.")
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
        slice_thickness=_float_or_none(first.get("SliceThickness")),
        modality=_str(first.get("Modality")),
        patient_id=_str(first.get("PatientID")),
        study_uid=_str(first.get("StudyInstanceUID")),
        frame_of_reference_uid=_str(first.get("FrameOfReferenceUID")),
        series_number=int(series_number) if series_number not in (None, "") else None,
        series_description=_str(first.get("SeriesDescription")),
        kvp=_float_or_none(first.get("KVP")),
        kernel=_str(first.get("ConvolutionKernel")),
        manufacturer=_str(first.get("Manufacturer")),
        image_type=tuple(str(v) for v in (first.get("ImageType") or ())),
        sop_instance_uids=tuple(r["sop"] for r in records),
        exposure_mas=mean_of("exposure"),
        ctdi_vol=mean_of("ctdi"),
    )


def scan_series(
    paths_or_dir: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    modality: str | Sequence[str] | None = "CT",
    progress: bool | object = False,
) -> list[SeriesInfo]:
    """Group files by SeriesInstanceUID from their headers only, each series ordered along its normal.

    ``paths_or_dir``: a folder (scanned recursively) or file paths. Non-DICOM files are skipped with
    a warning. ``modality``: the allowed Modality value(s) (``None``: any); another modality raises
    :class:`DicomDataError` naming the file. ``progress``: ``True`` for a tqdm bar over the files,
    or an object with ``update(n)`` (e.g. a shared tqdm bar). Raises :class:`DicomDataError` for
    truncated/corrupt files, mixed orientations, sizes or pixel spacings, duplicate positions.
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
            mod = _str(ds.get("Modality"))
            if allowed is not None and mod not in allowed:
                raise DicomDataError(
                    f"{path}: modality {mod or '(missing)'} is not supported here (expected {'/'.join(sorted(allowed))})."
                )
            record = _header_record(path, ds)
            group = groups.setdefault(record["uid"], [])
            if group:
                del record["ds"]
            group.append(record)
    finally:
        if progress is True and bar is not None:
            bar.close()
    series = [_series_from_headers(uid, entries) for uid, entries in groups.items()]
    series.sort(key=lambda s: (s.patient_id, s.series_number if s.series_number is not None else -1, s.series_uid))
    return series


# ----------------------------------------------------------------------------------------------
# pixel reading
# ----------------------------------------------------------------------------------------------


def _to_hu(path: str, ds: Dataset) -> np.ndarray:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    native = "PixelData" in ds and not (ts is not None and ts.is_compressed)
    _check_image_size(path, ds, len(ds.PixelData) if native else None)
    try:
        raw = ds.pixel_array
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        what = f" (transfer syntax {ts.name})" if ts is not None else ""
        raise DicomDataError(f"{path}: cannot decode pixel data{what}: {e}") from e
    if raw.ndim != 2:
        raise DicomDataError(f"{path}: expected one 2D grayscale frame, got pixel array of shape {raw.shape}.")
    if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" not in ds:
        slope = _float_or_none(ds.get("RescaleSlope"))
        intercept = _float_or_none(ds.get("RescaleIntercept"))
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
        hu = raw.astype(np.float64) * slope + intercept
    else:
        if PYDICOM_MAJOR >= 3:
            from pydicom.pixels import apply_modality_lut
        else:
            from pydicom.pixel_data_handlers.util import apply_modality_lut

        hu = apply_modality_lut(raw, ds)
    return hu.astype(np.float32)


def read_slice_hu(path: str | os.PathLike) -> np.ndarray:
    """One DICOM slice as float32 HU, shape (rows, cols), via its own RescaleSlope/RescaleIntercept."""
    path = os.fspath(path)
    try:
        if not _looks_like_dicom(path):
            raise DicomDataError(f"{path}: not a DICOM file.")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:  # preamble-less (old) files: _looks_like_dicom saw a DICOM tag at byte 0
            ds = pydicom.dcmread(path, force=True)
            if "TransferSyntaxUID" not in ds.file_meta:  # record how it was parsed so the pixels can decode
                implicit, little = (ds.original_encoding if PYDICOM_MAJOR >= 3
                                    else (ds.is_implicit_VR, ds.is_little_endian))
                ds.file_meta.TransferSyntaxUID = (
                    pydicom.uid.ImplicitVRLittleEndian if implicit
                    else pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
                )
    except DicomDataError:
        raise
    except OSError as e:
        raise DicomDataError(f"{path}: cannot read file ({e}).") from e
    except Exception as e:
        raise DicomDataError(f"{path}: corrupt or truncated DICOM file ({type(e).__name__}: {e}).") from e
    return _to_hu(path, ds)


def read_series_hu(series: SeriesInfo | str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """A whole series as float32 HU ``(S, rows, cols)`` in slice order, and its 4x4 affine.

    ``series`` is a :class:`SeriesInfo` or a folder holding exactly one series.
    """
    if not isinstance(series, SeriesInfo):
        found = scan_series(series)
        if len(found) != 1:
            raise DicomDataError(f"{os.fspath(series)}: expected one DICOM series, found {len(found)}.")
        series = found[0]
    volume = np.empty((series.num_slices, series.rows, series.cols), dtype=np.float32)
    for k, path in enumerate(series.files):
        hu = read_slice_hu(path)
        if hu.shape != volume.shape[1:]:
            raise DicomDataError(f"{path}: pixel array shape {hu.shape} differs from the header's {volume.shape[1:]}.")
        volume[k] = hu
    return volume, series.affine


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------


def _ds(value: float) -> DS:
    return DS(float(value), auto_format=True)


def _choose_rescale(lo: float, hi: float) -> tuple[float, float]:
    """Slope 1 / intercept -1024 (the common CT choice) unless the range needs more."""
    intercept = -1024.0 if lo >= -1024.0 else float(np.floor(lo))
    slope = 1.0
    if (hi - intercept) / slope > 65535:
        slope = float(_ds(np.ceil((hi - intercept) / 65535 * 1e4) / 1e4))
    return slope, intercept


def _quantise(hu: np.ndarray, slope: float, intercept: float, signed: bool | None, where: str) -> tuple[np.ndarray, bool]:
    stored = np.rint((hu.astype(np.float64) - intercept) / slope)
    lo, hi = float(stored.min()), float(stored.max())
    if signed is None:
        signed = lo < 0 or hi > 65535
    rng = (-32768, 32767) if signed else (0, 65535)
    if lo < rng[0] or hi > rng[1]:
        raise ValueError(
            f"{where}: HU range [{lo * slope + intercept:g}, {hi * slope + intercept:g}] does not fit "
            f"{'int16' if signed else 'uint16'} with RescaleSlope {slope:g} / RescaleIntercept {intercept:g}."
        )
    return stored.astype(np.int16 if signed else np.uint16), signed


def _geometry(n: int, source: SeriesInfo | None, affine, origin, orientation, pixel_spacing, slice_spacing):
    """(IPP per slice, IOP, PixelSpacing)."""
    if source is not None:
        return [np.asarray(p, float) for p in source.image_positions], tuple(source.orientation), tuple(source.pixel_spacing)
    if affine is not None:
        a = np.asarray(affine, dtype=float)
        row_step, col_step = a[:3, 1], a[:3, 2]
        ps = (float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step)))
        iop = tuple(col_step / ps[1]) + tuple(row_step / ps[0])
        return [a[:3, 3] + k * a[:3, 0] for k in range(n)], iop, ps
    o = np.asarray(orientation, dtype=float)
    normal = np.cross(o[:3], o[3:])
    start = np.asarray(origin, dtype=float)
    return [start + k * float(slice_spacing) * normal for k in range(n)], tuple(o), tuple(float(v) for v in pixel_spacing)


_COPY_FROM_SOURCE = (
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "FrameOfReferenceUID", "PositionReferenceIndicator", "Manufacturer",
    "ManufacturerModelName", "BodyPartExamined", "PatientPosition", "KVP", "ConvolutionKernel",
    "AcquisitionDate", "AcquisitionTime", "DataCollectionDiameter", "ReconstructionDiameter",
    "GantryDetectorTilt", "Exposure", "XRayTubeCurrent", "ExposureTime", "CTDIvol",
)


def _save_dicom(ds: Dataset, path: str) -> None:
    """Write ``ds`` with a standard file meta, encoded explicit VR little endian (its TransferSyntaxUID)."""
    if PYDICOM_MAJOR >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pydicom 2 takes the encoding from the dataset itself
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def write_ct_series(
    volume_hu: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    source: SeriesInfo | None = None,
    patient_id: str | None = None,
    patient_name: str | None = None,
    series_description: str = "",
    series_number: int | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    pixel_spacing: Sequence[float] = (1.0, 1.0),
    slice_spacing: float = 1.0,
    slice_thickness: float | None = None,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    affine: np.ndarray | None = None,
    rescale: tuple[float, float] | Sequence[tuple[float, float]] | None = None,
    signed: bool | None = None,
    kvp: float | None = None,
    kernel: str | None = None,
    image_type: Sequence[str] | None = None,
    derivation_description: str | None = None,
    file_names: Sequence[str] | None = None,
    extra_tags: dict | None = None,
    overwrite: bool = False,
) -> SeriesInfo:
    """Write ``volume_hu`` ``(S, rows, cols)`` (HU, slice order as in :func:`read_series_hu`) as a CT series.

    Geometry, in order of precedence: ``source`` (a :class:`SeriesInfo` with the same shape: its
    per-slice ImagePositionPatient, orientation, spacing, thickness, and its patient/study/frame of
    reference/acquisition tags are copied; the new series is ImageType DERIVED\\SECONDARY\\AXIAL and
    references the source SOP instances), ``affine`` (as returned by :func:`read_series_hu`), or
    ``origin``/``orientation``/``pixel_spacing``/``slice_spacing``. A new SeriesInstanceUID and new
    SOPInstanceUIDs are always generated.

    Stored values are ``round((HU - intercept) / slope)`` as uint16 (or int16 when needed or when
    ``signed=True``), so re-reading gives HU within ``slope / 2``. ``rescale`` is ``(slope,
    intercept)`` for all slices or a list of one pair per slice; default slope 1, intercept -1024
    (wider ranges get a lower intercept / larger slope). ``file_names``: one name per slice (slice
    order); default ``CT0001.dcm``... The series is written to a temporary sibling folder and renamed
    to ``out_dir`` (which must not exist unless ``overwrite``). Returns the written series, scanned back.
    """
    vol = np.asarray(volume_hu)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3 or 0 in vol.shape:
        raise ValueError(f"{out_dir}: volume must be (slices, rows, cols), got shape {np.shape(volume_hu)}.")
    if not np.isfinite(vol).all():
        raise ValueError(f"{out_dir}: volume contains NaN or Inf.")
    n, rows, cols = vol.shape
    if source is not None and (source.num_slices, source.rows, source.cols) != vol.shape:
        raise ValueError(
            f"{out_dir}: volume shape {vol.shape} differs from the source series "
            f"{(source.num_slices, source.rows, source.cols)} ({source.directory})."
        )
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True to replace it).")
    if file_names is None:
        file_names = [f"CT{k + 1:04d}.dcm" for k in range(n)]
    file_names = [str(f) for f in file_names]
    if len(file_names) != n or len(set(file_names)) != n or any(os.sep in f or f.startswith(".") for f in file_names):
        raise ValueError(f"{out_dir}: file_names must be {n} distinct plain, non-hidden file names.")

    if rescale is None:
        pairs = [_choose_rescale(float(vol.min()), float(vol.max()))] * n
    elif len(rescale) == 2 and np.isscalar(rescale[0]):
        pairs = [tuple(rescale)] * n
    else:
        pairs = [tuple(p) for p in rescale]
        if len(pairs) != n:
            raise ValueError(f"{out_dir}: rescale lists {len(pairs)} (slope, intercept) pairs for {n} slices.")
    # quantise with the values as they will be written (DS strings), so re-reading is exact to slope/2
    pairs = [(float(_ds(s)), float(_ds(b))) for s, b in pairs]
    if any(s <= 0 for s, _ in pairs):
        raise ValueError(f"{out_dir}: RescaleSlope must be positive.")

    positions, iop, ps = _geometry(n, source, affine, origin, orientation, pixel_spacing, slice_spacing)
    src_header = read_header(source.files[0], check_pixels=False) if source is not None else None
    if slice_thickness is None:
        if source is not None and source.slice_thickness is not None:
            slice_thickness = source.slice_thickness
        else:
            steps = np.linalg.norm(np.diff(np.asarray(positions), axis=0), axis=1) if n > 1 else [slice_spacing]
            slice_thickness = float(np.median(steps))

    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    series_uid = generate_uid()
    study_uid = study_uid or (source.study_uid if source is not None else None) or generate_uid()
    for_uid = frame_of_reference_uid or (source.frame_of_reference_uid if source is not None else None) or generate_uid()
    if image_type is None:
        image_type = ("DERIVED", "SECONDARY", "AXIAL") if source is not None else ("ORIGINAL", "PRIMARY", "AXIAL")
    if series_number is None:
        series_number = (source.series_number or 0) + 1000 if source is not None else 1
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))

    tmp = staging_dir(out_dir)
    parent = os.path.dirname(tmp)
    try:
        for k in range(n):
            slope, intercept = pairs[k]
            stored, is_signed = _quantise(vol[k], slope, intercept, signed, f"{out_dir} slice {k}")
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.StudyDate, ds.StudyTime = date, time
            ds.ReferringPhysicianName = ""
            ds.StudyID = "1"
            ds.AccessionNumber = ""
            ds.PatientName = patient_name or patient_id or "ANONYMOUS"
            ds.PatientID = patient_id or "ANONYMOUS"
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.Manufacturer = "ISCL bundle"
            ds.PositionReferenceIndicator = ""
            if src_header is not None:
                for keyword in _COPY_FROM_SOURCE:
                    if keyword in src_header:
                        setattr(ds, keyword, src_header[keyword].value)
                if patient_id is not None:
                    ds.PatientID = patient_id
                if patient_name is not None:
                    ds.PatientName = patient_name
                ref = Dataset()
                ref.ReferencedSOPClassUID = src_header.get("SOPClassUID", CTImageStorage)
                ref.ReferencedSOPInstanceUID = source.sop_instance_uids[k]
                ds.SourceImageSequence = [ref]
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = for_uid
            ds.Modality = "CT"
            ds.SeriesDate, ds.SeriesTime = date, time
            ds.ContentDate, ds.ContentTime = date, time
            ds.SeriesNumber = int(series_number)
            ds.InstanceNumber = k + 1
            ds.AcquisitionNumber = 1
            ds.SeriesDescription = series_description
            ds.ImageType = list(image_type)
            if derivation_description:
                ds.DerivationDescription = derivation_description
            if kvp is not None:
                ds.KVP = _ds(kvp)
            if kernel is not None:
                ds.ConvolutionKernel = kernel
            ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
            ds.ImageOrientationPatient = [_ds(v) for v in iop]
            ds.SliceLocation = _ds(float(np.dot(positions[k], normal)))
            ds.PixelSpacing = [_ds(v) for v in ps]
            ds.SliceThickness = _ds(slice_thickness)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = rows, cols
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1 if is_signed else 0
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleSlope = _ds(slope)
            ds.RescaleType = "HU"
            ds.WindowCenter = _ds(40)
            ds.WindowWidth = _ds(400)
            for keyword, value in (extra_tags or {}).items():
                setattr(ds, keyword, value)
            ds.PixelData = stored.tobytes()
            _save_dicom(ds, os.path.join(tmp, file_names[k]))
        if os.path.exists(out_dir):
            trash = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.rename(out_dir, os.path.join(trash, "old"))
            os.rename(tmp, out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return scan_series(out_dir, modality=None)[0]
