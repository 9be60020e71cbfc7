"""CT volumes in HU from and to files: NIfTI and DICOM series, read and written the same way for
training, inference, evaluation, MONAI Label and MONAI Deploy.

Axis conventions
    ``Volume.hu`` is ``(S, H, W)`` float32: slice, row, column.  DICOM: exactly
    ``dicom_pixels.read_series_hu`` (slices ordered along the slice normal).  NIfTI: nibabel's
    ``(X, Y, Z)`` array becomes ``hu[k] = data[:, :, k]`` (``np.moveaxis(data, -1, 0)``), the same
    slices ``read_slice_hu`` feeds training (both open files with ``open_nifti``); a 2D
    ``(X, Y)`` image is ``S = 1``.  ``write_volume`` inverts this exactly.

Writing
    Same format as the input.  NIfTI: float32 HU with the input's affine, header (only data type and
    scaling change), shape and axis order.  DICOM: a derived series (``dicom_write.write_ct_series``
    with ``source``): patient/study/geometry tags kept, new SeriesInstanceUID/SOPInstanceUIDs,
    ImageType DERIVED\\SECONDARY, SeriesDescription + ``suffix``, HU re-encoded with
    RescaleSlope/Intercept (re-read within 0.5 HU).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

from ..core.atomic import atomic_path
from ..core.errors import DataError, InferenceError
from .dicom_io import DicomSkipWarning, scan_series
from .dicom_pixels import read_dicom_slice, read_series_hu
from .dicom_series import SeriesInfo
from .dicom_write import write_ct_series

__all__ = [
    "Volume",
    "MIN_SIZE",
    "is_nifti",
    "open_nifti",
    "check_nifti_size",
    "check_hu",
    "check_ct_values",
    "check_modality",
    "scan_dicom",
    "volume_item",
    "read_series",
    "read_volume",
    "write_volume",
    "write_nifti",
    "write_hu_nifti",
    "read_slice_hu",
    "slice_name",
    "index_affine",
    "header_grid",
    "check_same_geometry",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
GZIP_MAX_RATIO = 1032  # deflate cannot expand data more than ~1032:1
MIN_SIZE = 8  # smallest in-plane size accepted (rows and columns)
AIR_HU = -500.0  # CT of a body holds air (about -1000 HU); a volume with nothing below this is suspect
DERIVED_IMAGE_TYPE = ("DERIVED", "SECONDARY", "AXIAL")


# ----------------------------------------------------------------------------------- NIfTI files
def is_nifti(path: str) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def check_nifti_size(path: str, image, error: type[ValueError] = DataError) -> None:
    """Refuse a NIfTI whose header promises more voxel bytes than the file can hold, before any
    array is allocated (a forged 32767 x 32767 header must not become a 64 GiB allocation)."""
    header = image.header
    itemsize = np.dtype(header.get_data_dtype()).itemsize
    needed = int(np.prod([int(n) for n in image.shape], dtype=np.float64)) * itemsize
    data_file = image.file_map["image"].filename or path
    offset = int(header.get("vox_offset", 0)) if data_file == path else 0
    size = os.path.getsize(data_file)
    if str(data_file).lower().endswith(".gz"):
        with open(data_file, "rb") as f:  # the gzip trailer holds the uncompressed size mod 2**32
            f.seek(-4, os.SEEK_END)
            stored = int.from_bytes(f.read(4), "little")
        available = stored if offset + needed < 2**32 else size * GZIP_MAX_RATIO
    else:
        available = size
    if offset + needed > available:
        raise error(
            f"{path}: the header describes {'x'.join(str(n) for n in image.shape)} voxels of "
            f"{itemsize} bytes ({needed / 2**20:.1f} MiB) but the file holds at most "
            f"{max(available - offset, 0) / 2**20:.1f} MiB of voxel data (truncated or forged header)."
        )


def open_nifti(path: str, error: type[ValueError] = DataError):
    """The nibabel image of a 2D or 3D NIfTI file, its header checked against the file size; voxels not read."""
    try:
        image = nib.load(path)
    except Exception as e:  # nibabel raises many types for a damaged header
        raise error(f"{path}: cannot read NIfTI file ({type(e).__name__}: {e}).") from e
    if image.ndim not in (2, 3):
        raise error(f"{path}: expected a 2D or 3D NIfTI image, got shape {image.shape}.")
    check_nifti_size(path, image, error)
    return image


# ----------------------------------------------------------------------------------- reading
@dataclass
class Volume:
    """A CT volume in HU as read for inference; ``source`` is what ``write_volume`` needs to write it back."""

    hu: np.ndarray  # float32 (S, H, W)
    kind: str  # "dicom" | "nifti"
    source: Any  # SeriesInfo (DICOM) or the nibabel image (NIfTI)
    path: str  # the NIfTI file or the series folder

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """(between rows, between columns) in mm."""
        if self.kind == "dicom":
            return tuple(float(v) for v in self.source.pixel_spacing)
        zooms = self.source.header.get_zooms()
        return float(zooms[0]), float(zooms[1])


def check_hu(hu: np.ndarray, where: str) -> np.ndarray:
    """``hu`` unchanged, or an InferenceError naming ``where``: in-plane size below MIN_SIZE, NaN or Inf voxels."""
    if hu.shape[-2] < MIN_SIZE or hu.shape[-1] < MIN_SIZE:
        raise InferenceError(
            f"{where}: image is {hu.shape[-2]}x{hu.shape[-1]} pixels; at least {MIN_SIZE}x{MIN_SIZE} is needed."
        )
    if not np.isfinite(hu).all():
        raise InferenceError(f"{where}: contains NaN or Inf voxels; expected finite HU values.")
    return hu


def check_ct_values(hu: np.ndarray, where: str, force: bool, without_rescale: tuple = ()) -> None:
    """Refuse (or, with ``force``, warn about) values that cannot be CT in HU: DICOM files without rescale
    tags (their stored values would be taken as HU), or no air anywhere in the volume."""
    problems = []
    if without_rescale:
        problems.append(
            f"{len(without_rescale)} file(s) have no RescaleSlope/RescaleIntercept (e.g. "
            f"{without_rescale[0]}), so their stored values would be taken as HU"
        )
    if hu.size and float(hu.min()) > AIR_HU:
        problems.append(
            f"no voxel below {AIR_HU:g} HU (lowest {float(hu.min()):.0f} HU) although CT holds air near "
            "-1000 HU: these may not be HU (stored values without their rescale?)"
        )
    if not problems:
        return
    message = f"{where}: " + "; ".join(problems)
    if not force:
        raise InferenceError(message + "; pass --force to process it anyway.")
    warnings.warn(message + "; processing it anyway (--force).", UserWarning, stacklevel=3)


def _read_nifti(path: str, force: bool = False) -> Volume:
    image = open_nifti(path, InferenceError)
    try:
        data = image.get_fdata(dtype=np.float32)
    except Exception as e:  # truncated / corrupt data block
        raise InferenceError(f"{path}: cannot read the NIfTI voxel data ({type(e).__name__}: {e}).") from e
    hu = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
    check_ct_values(hu, path, force)
    return Volume(np.ascontiguousarray(check_hu(hu, path)), "nifti", image, path)


def check_modality(series: SeriesInfo, force: bool = False) -> None:
    """Refuse a non-CT series, ``force`` or not: the denoiser knows HU of CT only, and the derived series it
    writes is a CT image, which an MR or PET source must not become."""
    if series.modality == "CT":
        return
    raise InferenceError(
        f"{series.files[0]}: modality {series.modality or '(missing)'} is not CT (series {series.directory}); "
        "the denoiser was trained on CT in HU and its DICOM output is a CT image"
        + (
            " (--force does not change the modality; convert the volume to NIfTI to process it anyway)."
            if force
            else "."
        )
    )


def read_series(series: SeriesInfo, force: bool = False) -> Volume:
    """One scanned DICOM series as a :class:`Volume` (non-CT refused unless ``force``)."""
    check_modality(series, force)
    hu, _ = read_series_hu(series)
    check_ct_values(hu, series.directory, force, series.without_rescale)
    return Volume(check_hu(hu, series.directory), "dicom", series, series.directory)


def scan_dicom(paths, skip_bad_series: bool = False) -> list[SeriesInfo]:
    """Every DICOM series among ``paths`` (a folder or files), any modality; skipped files summed up in one
    warning; with ``skip_bad_series`` an unusable series is skipped with a warning instead of refused."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DicomSkipWarning)
        series = scan_series(paths, modality=None, skip_bad_series=skip_bad_series)
    skipped = [w for w in caught if issubclass(w.category, DicomSkipWarning)]
    for w in caught:
        if not issubclass(w.category, DicomSkipWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if skipped and series:
        warnings.warn(f"{len(skipped)} file(s) skipped, e.g. {skipped[0].message}", DicomSkipWarning, stacklevel=3)
    return series


def volume_item(path: str):
    """A NIfTI path as is, a DICOM folder as its one SeriesInfo (headers checked now)."""
    if os.path.isfile(path) and is_nifti(path):
        return path
    found = scan_dicom(path)
    if len(found) != 1:
        what = "no DICOM series or NIfTI file" if not found else f"{len(found)} DICOM series (expected one)"
        raise InferenceError(f"{path}: {what} found.")
    return found[0]


def read_volume(path: str | os.PathLike | SeriesInfo, force: bool = False) -> Volume:
    """A NIfTI file, a folder holding one DICOM series or a scanned series as a :class:`Volume`
    (HU, float32, (S, H, W))."""
    if isinstance(path, SeriesInfo):
        return read_series(path, force=force)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InferenceError(f"{path}: no such file or directory (expected a NIfTI file or a DICOM series folder).")
    item = volume_item(path)
    return read_series(item, force=force) if isinstance(item, SeriesInfo) else _read_nifti(item, force)


# ----------------------------------------------------------------------------------- writing
def _series_description(source: SeriesInfo, suffix: str) -> str:
    base = source.series_description[: max(64 - len(suffix), 0)]  # LO: 64 characters at most
    return (base + suffix).strip()[:64]


def _same_shape(volume: Volume, hu: np.ndarray, out_path: str) -> np.ndarray:
    hu = np.asarray(hu, dtype=np.float32)
    if hu.shape != volume.hu.shape:
        raise ValueError(
            f"{out_path}: volume shape {hu.shape} differs from the input's {volume.hu.shape} ({volume.path})."
        )
    return hu


def write_volume(volume: Volume, hu: np.ndarray, out_path: str, suffix: str = " ISCL denoised") -> str:
    """Write ``hu`` (same shape as ``volume.hu``) like ``volume``: a NIfTI file or a derived DICOM series folder;
    an ``out_path`` named like a NIfTI file is a NIfTI file whatever the input."""
    if volume.kind != "dicom" or is_nifti(out_path):
        return write_nifti(volume, hu, out_path)
    write_ct_series(
        _same_shape(volume, hu, out_path),
        out_path,
        source=volume.source,
        series_description=_series_description(volume.source, suffix),
        image_type=DERIVED_IMAGE_TYPE,
        derivation_description="Denoised by the ISCL bundle (scripts/tasks/inference.py)",
    )
    return out_path


def write_nifti(volume: Volume, hu: np.ndarray, out_path: str) -> str:
    """Write ``hu`` (same shape as ``volume.hu``) as a float32 NIfTI file: a NIfTI input's affine, header
    and axis order; a DICOM series' geometry as the RAS+ affine of an array ``[row, column, slice]``."""
    hu = _same_shape(volume, hu, out_path)
    if volume.kind == "dicom":
        return write_hu_nifti(hu, out_path, index_affine(volume)[:, [1, 2, 0, 3]])
    return write_hu_nifti(hu, out_path, like=volume.source)


def write_hu_nifti(hu: np.ndarray, out_path, affine: np.ndarray | None = None, like=None) -> str:
    """The one NIfTI writer: ``hu`` ``(S, H, W)`` (the project's order) as a float32 file indexed
    ``[row, column, slice]``, with ``affine`` (RAS+ of that index), or with the class, affine, header
    and dimensionality of the nibabel image ``like`` (only data type and scaling change).  Atomic."""
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3:
        raise ValueError(f"{out_path}: expected (S, H, W) HU, got shape {hu.shape}.")
    if like is None:
        image = nib.Nifti1Image(np.moveaxis(hu, 0, -1), affine)
        image.header.set_xyzt_units("mm", "sec")
        image.header["descrip"] = b"HU, float32"
    else:
        data = hu[0] if len(like.shape) == 2 else np.moveaxis(hu, 0, -1)
        image = type(like)(data, like.affine, like.header.copy())
    image.header.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    out_path = os.fspath(out_path)
    with atomic_path(out_path, ".nii.gz" if out_path.endswith(".gz") else ".nii") as tmp:
        nib.save(image, tmp)
    return out_path


def slice_name(path: str, index: int | None) -> str:
    """How errors name a slice: ``file slice k`` for a volume's slice, the file alone for a 2D file."""
    return f"{path} slice {index}" if index is not None else path


def read_slice_hu(path: str, index: int | None = None) -> np.ndarray:
    """One 2D slice in HU as float32: ``index`` along the last axis of a NIfTI volume, or a DICOM file."""
    if is_nifti(path):
        image = open_nifti(path)
        if image.ndim == 3 and index is None:
            raise DataError(f"{path}: a 3D NIfTI volume needs a slice index (use slice_items).")
        data = image.dataobj[..., index] if image.ndim == 3 else image.dataobj
        hu = np.asarray(data, dtype=np.float32)
    else:
        hu = read_dicom_slice(path)
    if not np.isfinite(hu).all():
        raise DataError(f"{slice_name(path, index)}: contains NaN or Inf voxels; expected finite HU values.")
    return hu


def header_grid(path: str) -> np.ndarray:
    """``index_affine`` of a NIfTI file or DICOM series from its headers alone (no pixel is read)."""
    item = volume_item(path)
    if isinstance(item, SeriesInfo):
        return index_affine(Volume(None, "dicom", item, item.directory))
    return index_affine(Volume(None, "nifti", open_nifti(item), item))


def check_same_geometry(image: str, label: str, what: str, tolerance_mm: float = 0.01) -> None:
    """Refuse a pair (low dose, full dose) whose voxels are not the same places: other spacing, offset or
    orientation, from the headers (shapes are checked where the pixels are read)."""
    offsets = np.abs(header_grid(image) - header_grid(label))
    if offsets.max() > tolerance_mm:
        raise DataError(
            f"{image} and {label}: the {what} pair's voxel grids differ by up to {offsets.max():.3g} mm "
            "(spacing, position or orientation); a pair must cover the same voxels."
        )


def index_affine(volume: Volume) -> np.ndarray:
    """4x4 mapping ``(s, h, w, 1)`` of ``volume.hu`` to RAS+ mm."""
    if volume.kind == "dicom":
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.source.affine  # dicom_io: (k, i, j) -> LPS
    affine = np.asarray(volume.source.affine, dtype=float)
    return affine[:, [2, 0, 1, 3]]  # (X, Y, Z) -> (Z, X, Y); a 2D image's slice axis is its (unit) third axis
