"""One DICOM image series as its headers describe it (``SeriesInfo``: files and positions in slice order,
geometry, the acquisition's facts), and the header values converted safely (``float_tuple``,
``float_or_none``, ``header_text``: None or "" where a value is missing or malformed). The scan that builds
a ``SeriesInfo`` from a folder, and its conventions (slice order, affine), are ``dicom_io``'s."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pydicom

__all__ = ["SeriesInfo", "float_tuple", "float_or_none", "header_text"]


def float_tuple(value, n: int | None = None) -> tuple[float, ...] | None:
    """A header value (one number or several) as a tuple of floats; None when missing, malformed or not ``n``
    long."""
    if value is None:
        return None
    try:
        values = tuple(
            float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value])
        )
    except (TypeError, ValueError):
        return None
    if n is not None and len(values) != n:
        return None
    return values


def float_or_none(value) -> float | None:
    """A header value as a float; None when missing or malformed."""
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def header_text(value) -> str:
    """A header value as text ("" when missing; several values joined by backslashes, as DICOM writes them)."""
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
    without_rescale: tuple[str, ...] = ()  # files lacking RescaleSlope or RescaleIntercept
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
        """4x4: (k, i, j, 1) -> LPS mm; see ``dicom_io``'s module docstring."""
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
