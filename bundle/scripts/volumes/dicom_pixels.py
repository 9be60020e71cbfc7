"""DICOM pixel data to HU: one file (``read_dicom_slice``) or a whole series in slice order (``read_series_hu``),
with the conventions of ``dicom_io`` (each file's own RescaleSlope/RescaleIntercept or Modality LUT; volumes
``(S, rows, cols)`` float32 with the series' index affine)."""

from __future__ import annotations

import os

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .dicom_header import PYDICOM_MAJOR, DicomDataError, check_image_size, looks_like_dicom
from .dicom_io import scan_series
from .dicom_series import SeriesInfo, float_or_none

__all__ = ["read_dicom_slice", "read_series_hu"]


def _to_hu(path: str, ds: Dataset) -> np.ndarray:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    native = "PixelData" in ds and not (ts is not None and ts.is_compressed)
    check_image_size(path, ds, len(ds.PixelData) if native else None)
    try:
        raw = ds.pixel_array
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        what = f" (transfer syntax {ts.name})" if ts is not None else ""
        raise DicomDataError(f"{path}: cannot decode pixel data{what}: {e}") from e
    if raw.ndim != 2:
        raise DicomDataError(f"{path}: expected one 2D grayscale frame, got pixel array of shape {raw.shape}.")
    if "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" not in ds:
        slope = float_or_none(ds.get("RescaleSlope"))
        intercept = float_or_none(ds.get("RescaleIntercept"))
        slope = 1.0 if slope is None else slope
        intercept = 0.0 if intercept is None else intercept
        if slope == 0:
            raise DicomDataError(
                f"{path}: RescaleSlope is 0, so the stored values cannot be converted to HU (a corrupt header)."
            )
        hu = raw.astype(np.float64) * slope + intercept
    else:
        if PYDICOM_MAJOR >= 3:
            from pydicom.pixels import apply_modality_lut
        else:
            from pydicom.pixel_data_handlers.util import apply_modality_lut

        hu = apply_modality_lut(raw, ds)
    return hu.astype(np.float32)


def read_dicom_slice(path: str | os.PathLike) -> np.ndarray:
    """One DICOM slice as float32 HU, shape (rows, cols), via its own RescaleSlope/RescaleIntercept."""
    path = os.fspath(path)
    try:
        if not looks_like_dicom(path):
            raise DicomDataError(f"{path}: not a DICOM file.")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:  # preamble-less (old) files: looks_like_dicom saw a DICOM tag at byte 0
            ds = pydicom.dcmread(path, force=True)
            if "TransferSyntaxUID" not in ds.file_meta:  # record how it was parsed so the pixels can decode
                implicit, little = (
                    ds.original_encoding if PYDICOM_MAJOR >= 3 else (ds.is_implicit_VR, ds.is_little_endian)
                )
                ds.file_meta.TransferSyntaxUID = (
                    pydicom.uid.ImplicitVRLittleEndian
                    if implicit
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
        hu = read_dicom_slice(path)
        if hu.shape != volume.shape[1:]:
            raise DicomDataError(f"{path}: pixel array shape {hu.shape} differs from the header's {volume.shape[1:]}.")
        volume[k] = hu
    return volume, series.affine
