"""Writing CT series: a volume in HU as one DICOM series, new or derived from a source series.

``write_ct_series(volume_hu, out_dir, options)`` (or the options as keywords). Slice order, axis
order and the affine follow ``dicom_io``'s conventions, so ``dicom_pixels.read_series_hu`` reads the
written series back as the volume (HU within RescaleSlope / 2). The series is built in a staging
folder and renamed into place (``atomic.staged_folder``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DS

from ..core.atomic import staged_folder
from .dicom_header import PYDICOM_MAJOR
from .dicom_io import read_header, scan_series
from .dicom_series import SeriesInfo

__all__ = ["SeriesOptions", "write_ct_series"]


@dataclass
class SeriesOptions:
    """Everything ``write_ct_series`` writes besides the voxels.

    Geometry, in order of precedence: ``source`` (a :class:`SeriesInfo` with the same shape: its
    per-slice ImagePositionPatient, orientation, spacing, thickness, and its patient/study/frame of
    reference/acquisition tags are copied; the new series is ImageType DERIVED\\SECONDARY\\AXIAL and
    references the source SOP instances), ``affine`` (as returned by ``read_series_hu``), or
    ``origin``/``orientation``/``pixel_spacing``/``slice_spacing``.

    Encoding: stored values are ``round((HU - intercept) / slope)`` as uint16 (or int16 when needed
    or when ``signed=True``). ``rescale`` is ``(slope, intercept)`` for all slices or a list of one
    pair per slice; default slope 1, intercept -1024 (wider ranges get a lower intercept / larger
    slope). ``file_names``: one name per slice (slice order); default ``CT0001.dcm``...
    ``out_dir`` must not exist unless ``overwrite``.
    """

    source: SeriesInfo | None = None
    # identity
    patient_id: str | None = None
    patient_name: str | None = None
    series_description: str = ""
    series_number: int | None = None
    study_uid: str | None = None
    frame_of_reference_uid: str | None = None
    image_type: Sequence[str] | None = None
    derivation_description: str | None = None
    kvp: float | None = None
    kernel: str | None = None
    extra_tags: dict | None = None
    # geometry
    pixel_spacing: Sequence[float] = (1.0, 1.0)
    slice_spacing: float = 1.0
    slice_thickness: float | None = None
    origin: Sequence[float] = (0.0, 0.0, 0.0)
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    affine: np.ndarray | None = None
    # encoding and files
    rescale: tuple[float, float] | Sequence[tuple[float, float]] | None = None
    signed: bool | None = None
    file_names: Sequence[str] | None = None
    overwrite: bool = False


def _ds(value: float) -> DS:
    return DS(float(value), auto_format=True)


def _choose_rescale(lo: float, hi: float) -> tuple[float, float]:
    """Slope 1 / intercept -1024 (the common CT choice) unless the range needs more."""
    intercept = -1024.0 if lo >= -1024.0 else float(np.floor(lo))
    slope = 1.0
    if (hi - intercept) / slope > 65535:
        slope = float(_ds(np.ceil((hi - intercept) / 65535 * 1e4) / 1e4))
    return slope, intercept


def _quantise(
    hu: np.ndarray, slope: float, intercept: float, signed: bool | None, where: str
) -> tuple[np.ndarray, bool]:
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
        return (
            [np.asarray(p, float) for p in source.image_positions],
            tuple(source.orientation),
            tuple(source.pixel_spacing),
        )
    if affine is not None:
        a = np.asarray(affine, dtype=float)
        row_step, col_step = a[:3, 1], a[:3, 2]
        ps = (float(np.linalg.norm(row_step)), float(np.linalg.norm(col_step)))
        iop = tuple(col_step / ps[1]) + tuple(row_step / ps[0])
        return [a[:3, 3] + k * a[:3, 0] for k in range(n)], iop, ps
    o = np.asarray(orientation, dtype=float)
    normal = np.cross(o[:3], o[3:])
    start = np.asarray(origin, dtype=float)
    return (
        [start + k * float(slice_spacing) * normal for k in range(n)],
        tuple(o),
        tuple(float(v) for v in pixel_spacing),
    )


_COPY_FROM_SOURCE = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Manufacturer",
    "ManufacturerModelName",
    "BodyPartExamined",
    "PatientPosition",
    "KVP",
    "ConvolutionKernel",
    "AcquisitionDate",
    "AcquisitionTime",
    "DataCollectionDiameter",
    "ReconstructionDiameter",
    "GantryDetectorTilt",
    "Exposure",
    "XRayTubeCurrent",
    "ExposureTime",
    "CTDIvol",
)


# identity and study tags of type 2 (present, possibly empty) that a derived series must not invent
_TYPE2_IDENTITY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PositionReferenceIndicator",
    "Manufacturer",
)


def _save_dicom(ds: Dataset, path: str) -> None:
    """Write ``ds`` with a standard file meta, encoded explicit VR little endian (its TransferSyntaxUID)."""
    if PYDICOM_MAJOR >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pydicom 2 takes the encoding from the dataset itself
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def _checked_volume(volume_hu, out_dir: str, opt: SeriesOptions) -> np.ndarray:
    """``volume_hu`` as ``(S, rows, cols)``; refused when empty, not finite, unlike ``opt.source`` or
    when ``out_dir`` exists without ``opt.overwrite``."""
    vol = np.asarray(volume_hu)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3 or 0 in vol.shape:
        raise ValueError(f"{out_dir}: volume must be (slices, rows, cols), got shape {np.shape(volume_hu)}.")
    if not np.isfinite(vol).all():
        raise ValueError(f"{out_dir}: volume contains NaN or Inf.")
    source = opt.source
    if source is not None and (source.num_slices, source.rows, source.cols) != vol.shape:
        raise ValueError(
            f"{out_dir}: volume shape {vol.shape} differs from the source series "
            f"{(source.num_slices, source.rows, source.cols)} ({source.directory})."
        )
    if os.path.exists(out_dir) and not opt.overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True to replace it).")
    return vol


def _file_names(n: int, out_dir: str, names: Sequence[str] | None) -> list[str]:
    names = [f"CT{k + 1:04d}.dcm" for k in range(n)] if names is None else [str(f) for f in names]
    if len(names) != n or len(set(names)) != n or any(os.sep in f or f.startswith(".") for f in names):
        raise ValueError(f"{out_dir}: file_names must be {n} distinct plain, non-hidden file names.")
    return names


def _rescale_pairs(vol: np.ndarray, out_dir: str, rescale) -> list[tuple[float, float]]:
    """One (slope, intercept) per slice, as the DS strings will store them (so re-reading is exact to slope/2)."""
    n = len(vol)
    if rescale is None:
        pairs = [_choose_rescale(float(vol.min()), float(vol.max()))] * n
    elif len(rescale) == 2 and np.isscalar(rescale[0]):
        pairs = [tuple(rescale)] * n
    else:
        pairs = [tuple(p) for p in rescale]
        if len(pairs) != n:
            raise ValueError(f"{out_dir}: rescale lists {len(pairs)} (slope, intercept) pairs for {n} slices.")
    pairs = [(float(_ds(s)), float(_ds(b))) for s, b in pairs]
    if any(s <= 0 for s, _ in pairs):
        raise ValueError(f"{out_dir}: RescaleSlope must be positive.")
    return pairs


def _slice_thickness(opt: SeriesOptions, positions) -> float:
    if opt.slice_thickness is not None:
        return opt.slice_thickness
    if opt.source is not None and opt.source.slice_thickness is not None:
        return opt.source.slice_thickness
    steps = (
        np.linalg.norm(np.diff(np.asarray(positions), axis=0), axis=1) if len(positions) > 1 else [opt.slice_spacing]
    )
    return float(np.median(steps))


def _identity_tags(ds: Dataset, opt: SeriesOptions, source_header: Dataset | None, date: str, time: str) -> None:
    """Patient and study. A derived series copies them from its source and never invents one: a tag the
    source lacks stays empty (no made-up ID, name or today's date joining the source's study). A new
    series gets placeholders. Explicit options win."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    for keyword in _TYPE2_IDENTITY:
        setattr(ds, keyword, "")
    if source_header is None:
        ds.StudyDate, ds.StudyTime, ds.StudyID = date, time, "1"
        ds.PatientName = opt.patient_name or opt.patient_id or "ANONYMOUS"
        ds.PatientID = opt.patient_id or "ANONYMOUS"
        ds.Manufacturer = "ISCL bundle"
    else:
        for keyword in _COPY_FROM_SOURCE:
            if keyword in source_header:
                setattr(ds, keyword, source_header[keyword].value)
    if opt.patient_id is not None:
        ds.PatientID = opt.patient_id
    if opt.patient_name is not None:
        ds.PatientName = opt.patient_name


def _series_tags(opt: SeriesOptions, source_header: Dataset | None, iop, pixel_spacing, thickness: float) -> Dataset:
    """The tags every slice of the new series shares."""
    source = opt.source
    ds = Dataset()
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    _identity_tags(ds, opt, source_header, date, time)
    ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID = opt.study_uid or (source.study_uid if source is not None else None) or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = (
        opt.frame_of_reference_uid or (source.frame_of_reference_uid if source is not None else None) or generate_uid()
    )
    ds.Modality = "CT"
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.SeriesNumber = int(
        opt.series_number
        if opt.series_number is not None
        else (source.series_number or 0) + 1000 if source is not None else 1
    )
    ds.AcquisitionNumber = 1
    ds.SeriesDescription = opt.series_description
    derived = ("DERIVED", "SECONDARY", "AXIAL") if source is not None else ("ORIGINAL", "PRIMARY", "AXIAL")
    ds.ImageType = list(opt.image_type if opt.image_type is not None else derived)
    if opt.derivation_description:
        ds.DerivationDescription = opt.derivation_description
    if opt.kvp is not None:
        ds.KVP = _ds(opt.kvp)
    if opt.kernel is not None:
        ds.ConvolutionKernel = opt.kernel
    ds.ImageOrientationPatient = [_ds(v) for v in iop]
    ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
    ds.SliceThickness = _ds(thickness)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = _ds(40), _ds(400)
    return ds


def _slice_dataset(
    series: Dataset,
    k: int,
    position,
    normal,
    stored: np.ndarray,
    signed: bool,
    rescale: tuple[float, float],
    source_reference: Dataset | None,
    extra_tags: dict | None,
) -> Dataset:
    """Slice ``k``: the series' tags plus its own UID, position, encoding and pixels."""
    ds = copy.deepcopy(series)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if source_reference is not None:
        ds.SourceImageSequence = [source_reference]
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(float(np.dot(position, normal)))
    ds.Rows, ds.Columns = stored.shape
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope, ds.RescaleIntercept = _ds(rescale[0]), _ds(rescale[1])
    for keyword, value in (extra_tags or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    return ds


def _source_reference(source: SeriesInfo | None, source_header: Dataset | None, k: int) -> Dataset | None:
    if source is None:
        return None
    ref = Dataset()
    ref.ReferencedSOPClassUID = source_header.get("SOPClassUID", CTImageStorage)
    ref.ReferencedSOPInstanceUID = source.sop_instance_uids[k]
    return ref


def write_ct_series(
    volume_hu: np.ndarray, out_dir: str | os.PathLike, options: SeriesOptions | None = None, **fields
) -> SeriesInfo:
    """Write ``volume_hu`` ``(S, rows, cols)`` (HU, slice order as in ``dicom_pixels.read_series_hu``) as a CT
    series in ``out_dir``, as ``options`` (or its fields given as keywords) say; re-reading gives HU
    within RescaleSlope / 2. A new SeriesInstanceUID and new SOPInstanceUIDs are always generated.
    Returns the written series, scanned back."""
    opt = dataclasses.replace(options or SeriesOptions(), **fields)
    out_dir = os.path.abspath(os.fspath(out_dir))
    vol = _checked_volume(volume_hu, out_dir, opt)
    n = len(vol)
    file_names = _file_names(n, out_dir, opt.file_names)
    pairs = _rescale_pairs(vol, out_dir, opt.rescale)
    positions, iop, ps = _geometry(
        n, opt.source, opt.affine, opt.origin, opt.orientation, opt.pixel_spacing, opt.slice_spacing
    )
    source_header = read_header(opt.source.files[0], check_pixels=False) if opt.source is not None else None
    series = _series_tags(opt, source_header, iop, ps, _slice_thickness(opt, positions))
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    with staged_folder(out_dir) as tmp:
        for k in range(n):
            stored, signed = _quantise(vol[k], *pairs[k], opt.signed, f"{out_dir} slice {k}")
            ds = _slice_dataset(
                series,
                k,
                positions[k],
                normal,
                stored,
                signed,
                pairs[k],
                _source_reference(opt.source, source_header, k),
                opt.extra_tags,
            )
            _save_dicom(ds, os.path.join(tmp, file_names[k]))
    return scan_series(out_dir, modality=None)[0]
