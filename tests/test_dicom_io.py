import os
import re

import numpy as np
import pydicom
import pytest

from scripts.volumes.dicom_io import DicomDataError, DicomSkipWarning, scan_series
from scripts.volumes.dicom_pixels import read_dicom_slice, read_series_hu
from scripts.volumes.dicom_write import write_ct_series


def _volume(n=4, rows=16, cols=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1100.0, 2500.0, (n, rows, cols)).astype(np.float32)


def _tol(slope):
    return slope / 2 + 1e-3  # quantisation plus float32 rounding at a few thousand HU


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """4 slices written with per-file rescale and file names in reverse slice order."""
    vol = _volume()
    rescale = [(1.0, -1024.0), (0.5, -1000.0), (2.0, -1024.0), (0.25, -2048.0)]
    out = tmp_path_factory.mktemp("dicom_io") / "series"
    info = write_ct_series(
        vol, out, patient_id="P1", series_description="test", pixel_spacing=(0.7, 0.8), slice_spacing=2.5,
        origin=(-100.0, -90.0, 30.0), rescale=rescale, kvp=120, kernel="B30f",
        file_names=["d.dcm", "c.dcm", "b.dcm", "a.dcm"],
    )
    return vol, rescale, info


def test_hu_exact_with_per_file_rescale(series):
    vol, rescale, info = series
    hu, _ = read_series_hu(info)
    assert hu.dtype == np.float32 and hu.shape == vol.shape
    for k, (slope, _) in enumerate(rescale):
        assert np.abs(hu[k] - vol[k]).max() <= _tol(slope)
    # the files really carry different slopes/intercepts and signed storage where values < intercept
    ds = [pydicom.dcmread(f) for f in info.files]
    assert [(float(d.RescaleSlope), float(d.RescaleIntercept)) for d in ds] == rescale
    assert ds[0].PixelRepresentation == 1  # values below -1024 with intercept -1024
    assert not np.allclose(ds[1].pixel_array, hu[1])  # raw stored values are not HU


def test_slices_ordered_by_position_not_name(series):
    vol, _, info = series
    assert [os.path.basename(f) for f in info.files] == ["d.dcm", "c.dcm", "b.dcm", "a.dcm"]
    assert info.positions == pytest.approx((30.0, 32.5, 35.0, 37.5))
    assert info.slice_spacing == pytest.approx(2.5)
    # shuffle the names on disk: the order follows ImagePositionPatient, not names or InstanceNumber
    again = scan_series(info.directory)[0]
    assert again.files == info.files and again.num_slices == 4
    assert info.pixel_spacing == pytest.approx((0.7, 0.8)) and info.slice_thickness == pytest.approx(2.5)
    assert info.modality == "CT" and info.patient_id == "P1" and info.kvp == 120 and info.kernel == "B30f"


def test_order_along_normal_and_affine_for_oblique_series(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    iop = (c, s, 0.0, 0.0, 0.0, -1.0)  # coronal-ish, tilted; normal = (-s, c, 0)
    vol = _volume(n=3, rows=8, cols=10, seed=1)
    info = write_ct_series(vol, tmp_path / "obl", orientation=iop, origin=(5.0, -3.0, 7.0), slice_spacing=1.5,
                           pixel_spacing=(0.5, 0.6), file_names=["z.dcm", "a.dcm", "m.dcm"])
    hu, affine = read_series_hu(info)
    assert np.abs(hu - vol).max() <= _tol(1.0)
    normal = np.cross(iop[:3], iop[3:])
    ipp = np.array([pydicom.dcmread(f).ImagePositionPatient for f in info.files], dtype=float)
    assert np.all(np.diff(ipp @ normal) > 0)
    for k in range(3):  # affine maps (k, i, j) -> LPS
        assert affine @ [k, 0, 0, 1] == pytest.approx([*ipp[k], 1])
    assert affine @ [0, 1, 0, 1] == pytest.approx([*(ipp[0] + 0.5 * np.array(iop[3:])), 1])
    assert affine @ [0, 0, 1, 1] == pytest.approx([*(ipp[0] + 0.6 * np.array(iop[:3])), 1])
    # writing with that affine reproduces the geometry
    again = write_ct_series(hu, tmp_path / "again", affine=affine)
    assert np.allclose(again.image_positions, info.image_positions, atol=1e-4)
    assert np.allclose(again.orientation, iop, atol=1e-6) and again.pixel_spacing == pytest.approx((0.5, 0.6))


def test_matches_monai_pydicom_reader(series):
    from monai.transforms import LoadImage

    vol, _, info = series
    ours, _ = read_series_hu(info)
    img = LoadImage(reader="PydicomReader", image_only=True)(info.directory)
    theirs = np.asarray(img)  # MONAI: (cols, rows, slices)
    assert theirs.shape == (info.cols, info.rows, info.num_slices)
    assert np.allclose(np.transpose(theirs, (2, 1, 0)), ours, atol=1e-3)


def test_read_slice_hu_uses_rescale_on_pydicom_test_file():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = read_dicom_slice(path)
    assert hu.dtype == np.float32 and hu.shape == (ds.Rows, ds.Columns)
    assert np.array_equal(hu, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_derived_series_copies_source_and_gets_new_uids(series, tmp_path):
    vol, _, info = series
    derived = write_ct_series(vol * 0.5, tmp_path / "denoised", source=info, series_description="ISCL denoised",
                              derivation_description="ISCL")
    assert derived.series_uid != info.series_uid
    assert not set(derived.sop_instance_uids) & set(info.sop_instance_uids)
    assert derived.study_uid == info.study_uid and derived.patient_id == "P1"
    assert derived.frame_of_reference_uid == info.frame_of_reference_uid
    assert derived.image_type[0] == "DERIVED"
    assert np.allclose(derived.image_positions, info.image_positions)
    ds = pydicom.dcmread(derived.files[2])
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == info.sop_instance_uids[2]
    assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage and ds.KVP == 120
    hu, _ = read_series_hu(derived.directory)
    assert np.abs(hu - vol * 0.5).max() <= _tol(1.0)
    with pytest.raises(ValueError, match="differs from the source"):
        write_ct_series(vol[:2], tmp_path / "bad", source=info)


def test_writer_is_atomic_and_refuses_to_overwrite(series, tmp_path):
    vol, _, _ = series
    out = tmp_path / "s"
    write_ct_series(vol, out)
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        write_ct_series(vol, out)
    bad = vol.copy()
    bad[-1, 0, 0] = 1e6  # the last slice cannot be stored with slope 1: fails after 3 files were written
    with pytest.raises(ValueError, match="does not fit"):
        write_ct_series(bad, out, rescale=(1.0, -1024.0), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no temp folder left, old series untouched
    assert len(os.listdir(out)) == 4
    info = write_ct_series(vol + 10, out, overwrite=True)
    assert np.abs(read_series_hu(info)[0] - vol - 10).max() <= _tol(1.0)
    assert sorted(os.listdir(tmp_path)) == ["s"]
    wide = write_ct_series(np.array([[[-3000.0, 70000.0]]]), tmp_path / "wide")  # auto slope/intercept
    assert read_series_hu(wide)[0] == pytest.approx(np.array([[[-3000.0, 70000.0]]]), abs=1.0)


def _rewrite(path, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


@pytest.fixture
def copy_of(series, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(series[2].directory, dst)
    return dst


def test_non_dicom_file_is_skipped_with_warning(copy_of):
    junk = copy_of / "README.txt"
    junk.write_text("not a DICOM file\n")
    with pytest.warns(DicomSkipWarning, match=re.escape(str(junk))):
        found = scan_series(copy_of)
    assert len(found) == 1 and found[0].num_slices == 4


def test_truncated_header_and_pixel_data_raise_naming_the_file(copy_of):
    files = sorted(copy_of.iterdir())
    head, pix = files[0], files[1]
    head.write_bytes(head.read_bytes()[:400])
    with pytest.raises(DicomDataError, match=re.escape(str(head)) + ".*truncated"):
        scan_series(copy_of)
    head.unlink()
    pix.write_bytes(pix.read_bytes()[:-100])
    with pytest.raises(DicomDataError, match=re.escape(str(pix)) + ".*truncated.*Pixel Data"):
        scan_series(copy_of)
    with pytest.raises(DicomDataError, match=re.escape(str(pix))):
        read_dicom_slice(pix)


def test_forged_image_size_is_refused_before_allocating(copy_of):
    files = sorted(copy_of.iterdir())
    _rewrite(files[1], Rows=65535, Columns=65535)  # 8 GiB of 16-bit pixels claimed, a few KiB stored
    message = re.escape(str(files[1])) + ": the header describes 65535x65535 pixels .* but Pixel Data holds"
    with pytest.raises(DicomDataError, match=message):
        scan_series(copy_of)
    with pytest.raises(DicomDataError, match=message):
        read_dicom_slice(files[1])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}, "mixed orientations"),
        ({"ImagePositionPatient": None}, "duplicate slice position"),
        ({"Modality": "MR"}, "modality MR"),
    ],
)
def test_inconsistent_series_raise_naming_the_file(copy_of, change, message):
    files = sorted(copy_of.iterdir())
    if "ImagePositionPatient" in change:
        change = {"ImagePositionPatient": pydicom.dcmread(files[0]).ImagePositionPatient}
    _rewrite(files[1], **change)
    with pytest.raises(DicomDataError, match=re.escape(str(files[1])) + ".*" + message):
        scan_series(copy_of)


@pytest.mark.parametrize("tag", ["PatientID", "StudyInstanceUID", "FrameOfReferenceUID"])
def test_a_series_uid_shared_by_two_patients_is_refused(copy_of, tag):
    """Two patients' slices under one SeriesInstanceUID must never be merged into one volume."""
    files = sorted(copy_of.iterdir())
    value = "PAT_B" if tag == "PatientID" else pydicom.uid.generate_uid()
    for path in files[2:]:
        _rewrite(path, **{tag: value})
    with pytest.raises(DicomDataError, match=f"series .* mixes {tag} .*one patient, study and frame of reference"):
        scan_series(copy_of)


def test_mixed_sizes_raise(copy_of, tmp_path):
    other = write_ct_series(_volume(n=1, rows=8, cols=8), tmp_path / "small")
    ds, source = pydicom.dcmread(other.files[0]), pydicom.dcmread(next(copy_of.iterdir()))
    for tag in ("SeriesInstanceUID", "PatientID", "StudyInstanceUID", "FrameOfReferenceUID"):
        setattr(ds, tag, getattr(source, tag))
    ds.ImagePositionPatient = [0, 0, 99]
    ds.save_as(copy_of / "zz.dcm")
    with pytest.raises(DicomDataError, match="mixed image sizes"):
        scan_series(copy_of)


def test_preamble_less_file_is_read(copy_of):
    path = sorted(copy_of.iterdir())[0]
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    found = scan_series(copy_of)
    assert found[0].num_slices == 4 and str(path) in found[0].files
    assert read_dicom_slice(path).shape == (16, 20)


def test_series_grouped_by_uid(series, tmp_path):
    a = write_ct_series(_volume(n=2), tmp_path / "a", patient_id="A")
    b = write_ct_series(_volume(n=3), tmp_path / "b", patient_id="B")
    found = scan_series(list(a.files) + list(b.files))
    assert [(s.patient_id, s.num_slices) for s in found] == [("A", 2), ("B", 3)]
    assert len(scan_series(tmp_path)) == 2
    with pytest.raises(DicomDataError, match="expected one DICOM series"):
        read_series_hu(tmp_path)
