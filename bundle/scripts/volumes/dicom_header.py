"""Reading one DICOM file's header safely: not-DICOM files skipped with a warning, truncated or
corrupt files and forged image sizes refused (checked against the file size before any pixel
array is allocated). Errors are :class:`DicomDataError` naming the file."""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

__all__ = ["DicomDataError", "DicomSkipWarning", "PYDICOM_MAJOR", "looks_like_dicom", "read_header", "check_image_size"]

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


def looks_like_dicom(path: str) -> bool:
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
        if not looks_like_dicom(path):
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
        warnings.warn(
            f"{path}: DICOM file without SeriesInstanceUID (not an image), skipped.", DicomSkipWarning, stacklevel=2
        )
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
    check_image_size(path, ds, None if length == 0xFFFFFFFF else length)


MAX_ENCAPSULATED_BYTES = 1 << 30  # 1 GiB decoded: far beyond any CT image, far below a forged 65535 x 65535 x 16


def check_image_size(path: str, ds: Dataset, pixel_bytes: int | None) -> None:
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
        raise DicomDataError(
            f"{path}: the header describes {described} but Pixel Data holds {pixel_bytes} bytes "
            "(truncated or forged header)."
        )
    if pixel_bytes is None and needed > MAX_ENCAPSULATED_BYTES:
        raise DicomDataError(
            f"{path}: the header describes {described}, implausibly large for a CT image (forged header?)."
        )
