"""Whole-volume inference (scripts/tasks/inference.py, configs/inference.json, cli.py denoise) on real files.

The "identity model" is a real ISCLDenoiser state dict with gamma = 0 and the noise extractor's last
conv zeroed: x - H(x) = x, so the whole path (reading, HU scaling, padding, inferer, cropping, writing)
must give the input back.
"""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run
from monai.transforms import MapTransform
from torch import nn

from conftest import BUNDLE_ROOT
from scripts.volumes.dicom_io import DicomDataError, scan_series
from scripts.volumes.dicom_write import write_ct_series
from scripts.core.errors import InferenceError
from scripts.tasks.inference import denoise_path, denoise_volume, load_denoiser
from scripts.tasks.pipeline import DenoisePipeline
from scripts.volumes.volume_io import Volume, read_volume, write_nifti
from scripts.core.ct import HU_RANGE, restore_outside_window
from scripts.model.networks import Generator, ISCLDenoiser
from scripts.datasets.phantom import phantom

INFERENCE_CONFIG = os.path.join(BUNDLE_ROOT, "configs", "inference.json")
TRAIN_CONFIG = os.path.join(BUNDLE_ROOT, "configs", "train.json")
CLI = os.path.join(BUNDLE_ROOT, "scripts", "cli.py")
ROWS, COLS = 130, 98  # neither a multiple of 4
ANGLE = 0.2
ORIENTATION = (np.cos(ANGLE), np.sin(ANGLE), 0.0, -np.sin(ANGLE), np.cos(ANGLE), 0.0)  # tilted in-plane
RESCALE = (2.0, -1024.0)  # slope 2: stored values are not HU
NIFTI_AFFINE = np.array([  # rotation about z by 30 degrees, spacing (0.7, 0.8, 2.5) mm, offset
    [0.7 * np.cos(0.5236), -0.8 * np.sin(0.5236), 0.0, -120.0],
    [0.7 * np.sin(0.5236), 0.8 * np.cos(0.5236), 0.0, 35.0],
    [0.0, 0.0, 2.5, -60.0],
    [0.0, 0.0, 0.0, 1.0],
])


# ------------------------------------------------------------------------------------- helpers
def ct_volume(n=4, rows=ROWS, cols=COLS, seed=0):
    """Procedural abdomen slices in HU, cropped to rows x cols."""
    size = max(rows, cols) + 16
    vol = np.stack([phantom(size, seed=seed, z_mm=5.0 * k) for k in range(n)])
    return vol[:, 8 : 8 + rows, 8 : 8 + cols].astype(np.float32)


def write_series(path, hu, **kw):
    args = dict(source=None, patient_id="P001", patient_name="Test^Patient", series_description="Abdomen 1.0 B30f",
                series_number=3, pixel_spacing=(0.7, 0.8), slice_spacing=2.5, origin=(-100.0, -90.0, 30.0),
                orientation=ORIENTATION, rescale=RESCALE)
    args.update(kw)
    return write_ct_series(hu, path, **args)


def identity_output(hu):
    """What a network that returns its input gives in HU: the window clipped on the way in, the
    input HU restored outside it (ct.restore_outside_window)."""
    hu = np.asarray(hu, dtype=np.float64)
    return restore_outside_window(np.clip(hu, *HU_RANGE), hu, HU_RANGE)


def tree_digest(root):
    """sha256 of every file (and its relative name) under root, or of root itself when it is a file."""
    files = [root] if os.path.isfile(root) else sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True))
    h = hashlib.sha256()
    for f in files:
        if os.path.isfile(f):
            h.update(os.path.relpath(f, os.path.dirname(root)).encode())
            h.update(open(f, "rb").read())
    return h.hexdigest()


def assert_nothing_written(out):
    assert not os.path.exists(out), os.listdir(out)
    leftovers = glob.glob(os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-*"))
    assert not leftovers, leftovers


def nifti_header_without_dtype(image):
    skip = {"datatype", "bitpix", "scl_slope", "scl_inter", "vox_offset"}
    return {k: np.asarray(image.header[k]).tolist() for k in image.header.keys() if k not in skip}


class Recorder(nn.Module):
    """Identity that remembers the shapes and the last input it saw."""

    def __init__(self):
        super().__init__()
        self.shapes, self.last = [], None

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        self.last = x.clone()
        return x


class Smooth(nn.Module):
    """A local, normalisation-free network (two 5x5 box blurs, receptive field 9 px)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 5, padding=2, padding_mode="replicate", bias=False)
        nn.init.constant_(self.conv.weight, 1.0 / 25)

    def forward(self, x):
        return self.conv(self.conv(x))


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    torch.manual_seed(0)
    random_model = root / "random_model.pt"
    torch.save(ISCLDenoiser().state_dict(), random_model)
    identity = ISCLDenoiser(gamma=0.0)
    with torch.no_grad():
        identity.noise_extractor.layers[-1].weight.zero_()
        identity.noise_extractor.layers[-1].bias.zero_()
    identity_model = root / "identity_model.pt"
    torch.save(identity.state_dict(), identity_model)

    hu = ct_volume()
    series = write_series(root / "dicom" / "series_a", hu)
    reread = np.stack([pydicom.dcmread(f).pixel_array * RESCALE[0] + RESCALE[1] for f in series.files])

    vol = ct_volume(n=3, rows=62, cols=54, seed=1)
    vol[0, :3, :3] = -2000.0  # far outside hu_range: clipped like in training, restored on the way out
    image = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(vol, 0, -1)), NIFTI_AFFINE)
    image.header.set_xyzt_units("mm", "sec")
    image.header["descrip"] = b"test volume"
    nifti = root / "nifti" / "case_1.nii.gz"
    nifti.parent.mkdir()
    nib.save(image, nifti)
    return {"root": root, "random_model": str(random_model), "identity_model": str(identity_model),
            "dicom": str(root / "dicom" / "series_a"), "dicom_hu": reread.astype(np.float32), "series": series,
            "nifti": str(nifti), "nifti_hu": vol}


# ------------------------------------------------------------------------------------- round trips
def test_dicom_round_trip_keeps_geometry_and_tags_and_hu(files, tmp_path):
    before = tree_digest(os.path.dirname(files["dicom"]))
    out = tmp_path / "out"
    written = denoise_path(files["dicom"], out, files["identity_model"], gamma=0.0, device="cpu", progress=False)
    assert written == [str(out / "series_a")]
    assert tree_digest(os.path.dirname(files["dicom"])) == before  # the input's bytes and file list unchanged
    assert not glob.glob(str(tmp_path / ".out.tmp-*"))

    src = files["series"]
    result = scan_series(written[0])
    assert len(result) == 1
    new = result[0]
    assert new.num_slices == src.num_slices and (new.rows, new.cols) == (ROWS, COLS)
    sources = [pydicom.dcmread(f) for f in src.files]
    outputs = [pydicom.dcmread(f) for f in new.files]
    for a, b in zip(sources, outputs):
        assert np.allclose([float(v) for v in b.ImagePositionPatient], [float(v) for v in a.ImagePositionPatient], atol=1e-4)
        assert np.allclose([float(v) for v in b.ImageOrientationPatient], [float(v) for v in a.ImageOrientationPatient], atol=1e-6)
        assert [float(v) for v in b.PixelSpacing] == [float(v) for v in a.PixelSpacing]
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "StudyDate"):
            assert b.get(keyword) == a.get(keyword), keyword
        assert b.SeriesInstanceUID != a.SeriesInstanceUID
        assert "DERIVED" in list(b.ImageType)
        assert b.SeriesDescription == "Abdomen 1.0 B30f ISCL denoised"
        assert b.Modality == "CT" and float(b.RescaleSlope) > 0
        assert b.SourceImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert len({b.SeriesInstanceUID for b in outputs}) == 1
    assert not {b.SOPInstanceUID for b in outputs} & {a.SOPInstanceUID for a in sources}
    assert len({b.SOPInstanceUID for b in outputs}) == len(outputs)

    hu = read_volume(written[0]).hu
    assert np.abs(hu - identity_output(files["dicom_hu"])).max() <= 1.0  # identity model, within 1 HU


def test_nifti_round_trip_keeps_affine_header_shape_and_hu(files, tmp_path):
    before = tree_digest(files["nifti"])
    out = tmp_path / "out"
    written = denoise_path(files["nifti"], out, files["identity_model"], gamma=0.0, device="cpu", progress=False)
    assert written == [str(out / "case_1.nii.gz")]
    assert tree_digest(files["nifti"]) == before
    src, res = nib.load(files["nifti"]), nib.load(written[0])
    assert res.shape == src.shape and np.array_equal(res.affine, src.affine)
    assert res.get_data_dtype() == np.float32
    assert nifti_header_without_dtype(res) == nifti_header_without_dtype(src)
    expected = identity_output(np.moveaxis(files["nifti_hu"], 0, -1))
    assert np.abs(res.get_fdata() - expected).max() <= 1e-3


def test_nifti_axis_mapping_and_2d_images(files, tmp_path):
    volume = read_volume(files["nifti"])
    assert isinstance(volume, Volume) and volume.kind == "nifti" and volume.hu.dtype == np.float32
    data = nib.load(files["nifti"]).get_fdata()
    assert volume.hu.shape == (3, 62, 54)
    assert np.array_equal(volume.hu[1], data[:, :, 1].astype(np.float32))  # hu[k] = data[:, :, k]
    assert volume.pixel_spacing == pytest.approx((0.7, 0.8))

    image_2d = files["nifti_hu"][1]
    path = tmp_path / "slice.nii"
    nib.save(nib.Nifti1Image(image_2d, NIFTI_AFFINE), path)
    assert read_volume(path).hu.shape == (1, 62, 54)
    written = denoise_path(path, tmp_path / "out", files["identity_model"], gamma=0.0, device="cpu", progress=False)
    res = nib.load(written[0])
    assert res.shape == (62, 54) and np.abs(res.get_fdata() - identity_output(image_2d)).max() <= 1e-3


def test_dicom_volume_as_nifti_places_each_slice_at_its_dicom_position(files, tmp_path):
    """write_nifti of a DICOM volume (what the MONAI Label and Deploy apps return): float32 HU, array
    [row, col, slice], RAS+ affine; read back as the same volume."""
    volume = read_volume(files["dicom"])
    path = write_nifti(volume, volume.hu, str(tmp_path / "series.nii.gz"))
    image = nib.load(path)
    assert image.get_data_dtype() == np.float32 and image.shape == (ROWS, COLS, 4)
    for k, ipp in enumerate(volume.source.image_positions):
        assert np.allclose(image.affine @ [0.0, 0.0, k, 1.0], [-ipp[0], -ipp[1], ipp[2], 1.0], atol=1e-4)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    # array axis 0 (rows) steps 0.7 mm down the column cosines, axis 1 (columns) 0.8 mm along the row cosines
    assert np.allclose(image.affine[:3, 0], lps_to_ras * np.array(ORIENTATION[3:]) * 0.7, atol=1e-6)
    assert np.allclose(image.affine[:3, 1], lps_to_ras * np.array(ORIENTATION[:3]) * 0.8, atol=1e-6)
    assert np.array_equal(read_volume(path).hu, volume.hu)
    with pytest.raises(ValueError, match="differs from the input"):
        write_nifti(volume, volume.hu[:2], str(tmp_path / "wrong.nii.gz"))


def test_folder_with_several_series_gives_one_derived_series_each(files, tmp_path):
    root = tmp_path / "study"
    hu = ct_volume(n=2, rows=40, cols=44)
    write_series(root / "a", hu)
    write_series(root / "b", hu + 10.0, series_number=4)
    flat = write_series(tmp_path / "one", hu, series_number=5)  # two series sharing one folder
    other = write_series(tmp_path / "two", hu, series_number=6)
    os.makedirs(root / "flat")
    for f in flat.files:
        shutil.copy(f, root / "flat" / ("x_" + os.path.basename(f)))
    for f in other.files:
        shutil.copy(f, root / "flat" / ("y_" + os.path.basename(f)))
    written = denoise_path(root, tmp_path / "out", files["identity_model"], gamma=0.0, device="cpu", progress=False)
    names = sorted(os.path.relpath(p, tmp_path / "out") for p in written)
    assert names == ["a", "b", "flat_series5", "flat_series6"]
    for p in written:
        (series,) = scan_series(p)
        assert series.num_slices == 2 and series.series_description.endswith("ISCL denoised")


def test_datalist_test_items_are_each_denoised(files, tmp_path):
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"dataset_dir": str(files["root"]),
                                    "test": [{"image": "nifti/case_1.nii.gz"}, {"image": "dicom/series_a"}]}))
    written = denoise_path(datalist, tmp_path / "out", files["identity_model"], gamma=0.0, device="cpu", progress=False)
    assert written == [str(tmp_path / "out" / "nifti" / "case_1.nii.gz"), str(tmp_path / "out" / "dicom" / "series_a")]
    assert nib.load(written[0]).shape == (62, 54, 3)
    assert np.abs(read_volume(written[1]).hu - identity_output(files["dicom_hu"])).max() <= 1.0


# ------------------------------------------------------------------------------------- the inferer
@pytest.mark.parametrize("shape, padded", [((1, ROWS, COLS), (132, 100)), ((2, 9, 11), (12, 12)), ((3, 16, 20), (16, 20))])
def test_slices_are_edge_padded_to_a_multiple_of_4_and_cropped_back(shape, padded):
    hu = np.random.default_rng(0).uniform(-1000, 2000, shape).astype(np.float32)
    net = Recorder()
    out = denoise_volume(hu, net, progress=False)
    assert out.shape == hu.shape and out.dtype == np.float32
    assert np.abs(out - identity_output(hu)).max() <= 1e-3  # cropped back exactly onto the input grid
    assert {s[-2:] for s in net.shapes} == {padded}
    x, (h, w) = net.last[0, 0], shape[1:]
    assert torch.equal(x[h:, :w], x[h - 1 : h, :w].expand(padded[0] - h, w))  # bottom rows repeat the last row
    assert torch.equal(x[:, w:], x[:, w - 1 : w].expand(padded[0], padded[1] - w))  # right columns repeat the last column


def test_2d_input_and_slice_batching():
    hu = ct_volume(n=3, rows=36, cols=40)
    torch.manual_seed(0)
    net = ISCLDenoiser().eval()
    one = denoise_volume(hu, net, progress=False)
    batched = denoise_volume(hu, net, progress=False, batch_size=3)
    assert np.abs(one - batched).max() < 1e-2  # eval-mode BIN normalises each slice alone
    assert np.array_equal(denoise_volume(hu[1], net, progress=False), one[1])


def test_tiled_matches_full_slices_on_a_local_network():
    """Tiles of 64 with overlap 0.5 and Gaussian blending against full slices, on a 128 x 128 CT slice.

    The network must be local and free of image statistics for the two to agree: ISCL's BIN layers
    normalise by the statistics of what they see, so with (random) ISCL weights a 64-pixel tile and the
    full slice are normalised differently and differ by hundreds of HU (about 400 HU mean with random
    weights) -- a property of the network, not of the blending. A 9-pixel receptive field blur differs
    only within 4 px of an internal tile edge, where the tile sees repeated edge pixels instead of its
    neighbours; there the Gaussian weight (sigma = 0.125 x 64 = 8 px, 28-32 px from the tile centre:
    about e^-6..e^-8 of the centre weight) is small next to the tile that has the pixel near its centre.
    Measured: max 4.5 HU at a bone edge, mean 0.03 HU; without overlap the seams reach about 60 HU.
    """
    hu = ct_volume(n=1, rows=128, cols=128)
    net = Smooth().eval()
    full = denoise_volume(hu, net, progress=False)
    tiled = denoise_volume(hu, net, mode="tiled", tile_size=64, overlap=0.5, progress=False)
    seams = denoise_volume(hu, net, mode="tiled", tile_size=64, overlap=0.0, progress=False)
    error = np.abs(full - tiled)
    assert error.max() < 10.0 and error.mean() < 0.1, (error.max(), error.mean())
    assert np.abs(full - seams).max() > 5 * error.max()  # the blending is what makes them agree


def test_one_tile_covering_the_slice_equals_full_slice_with_iscl():
    hu = ct_volume(n=1, rows=128, cols=128)
    torch.manual_seed(0)
    net = ISCLDenoiser().eval()
    full = denoise_volume(hu, net, progress=False)
    tiled = denoise_volume(hu, net, mode="tiled", tile_size=128, overlap=0.5, progress=False)
    assert np.abs(full - tiled).max() < 1e-2  # the Gaussian weight of a single window divides out


def test_amp_on_cpu_warns_and_runs_in_float32():
    hu = ct_volume(n=1, rows=16, cols=16)
    with pytest.warns(UserWarning, match="CUDA-only"):
        out = denoise_volume(hu, Recorder(), device="cpu", amp=True, progress=False)
    assert np.abs(out - identity_output(hu)).max() <= 1e-3


def test_load_denoiser_gives_an_eval_mode_ensemble(files):
    model = load_denoiser(files["random_model"], gamma=0.25, device="cpu")
    assert isinstance(model, ISCLDenoiser) and not model.training and model.gamma == 0.25


# ------------------------------------------------------------------------------------- bad input
def _copy_series(files, dst):
    shutil.copytree(files["dicom"], dst)
    return sorted(glob.glob(os.path.join(dst, "*.dcm")))


def bad_truncated(files, tmp):
    names = _copy_series(files, tmp / "truncated")
    with open(names[1], "r+b") as f:
        f.truncate(os.path.getsize(names[1]) // 2)
    return str(tmp / "truncated"), names[1]


def bad_mixed_sizes(files, tmp):
    _copy_series(files, tmp / "mixed")
    small = write_series(tmp / "small", ct_volume(n=1, rows=32, cols=32))
    ds = pydicom.dcmread(small.files[0])
    ds.SeriesInstanceUID = files["series"].series_uid
    ds.ImagePositionPatient = [-100.0, -90.0, 100.0]
    odd = str(tmp / "mixed" / "odd.dcm")
    ds.save_as(odd)
    return str(tmp / "mixed"), odd


def bad_modality(files, tmp):
    series = write_series(tmp / "mr", ct_volume(n=2, rows=32, cols=32), extra_tags={"Modality": "MR"})
    return str(tmp / "mr"), series.files[0]


def bad_small(files, tmp):
    path = tmp / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((7, 9), np.float32), np.eye(4)), path)
    return str(path), str(path)


def bad_nan(files, tmp):
    data = np.zeros((16, 16, 2), np.float32)
    data[3, 4, 1] = np.nan
    path = tmp / "nan.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return str(path), str(path)


def bad_missing(files, tmp):
    return str(tmp / "does_not_exist"), str(tmp / "does_not_exist")


def bad_empty_folder(files, tmp):
    os.makedirs(tmp / "notes")
    (tmp / "notes" / "readme.txt").write_text("no images here")
    return str(tmp / "notes"), str(tmp / "notes")


def bad_nan_after_a_good_volume(files, tmp):
    """The first item is fine and gets denoised; the second fails: nothing of the first may appear."""
    bad, _ = bad_nan(files, tmp)
    datalist = tmp / "list.json"
    datalist.write_text(json.dumps({"test": [{"image": files["nifti"]}, {"image": bad}]}))
    return str(datalist), bad


@pytest.mark.parametrize("make", [bad_missing, bad_empty_folder, bad_truncated, bad_mixed_sizes, bad_modality,
                                  bad_small, bad_nan, bad_nan_after_a_good_volume])
def test_bad_input_is_refused_naming_the_file_and_writes_nothing(files, tmp_path, make):
    src, named = make(files, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as info:
        denoise_path(src, out, files["random_model"], device="cpu", progress=False)
    assert named in str(info.value), str(info.value)
    assert_nothing_written(str(out))


def test_non_ct_series_is_refused_even_when_forced(files, tmp_path):
    """A derived series of an MR source would be written as a CT image: refused, nothing written."""
    src, named = bad_modality(files, tmp_path)
    with pytest.raises(ValueError, match="is not CT .*--force does not change the modality"):
        denoise_path(src, tmp_path / "out", files["identity_model"], gamma=0.0, device="cpu", force=True,
                     progress=False)
    assert_nothing_written(str(tmp_path / "out"))


def test_truncated_and_mixed_series_errors_come_from_dicom_io(files, tmp_path):
    for make in (bad_truncated, bad_mixed_sizes):
        src, named = make(files, tmp_path)
        with pytest.raises(DicomDataError, match=named):
            read_volume(src)


def test_output_inside_or_equal_to_the_input_is_refused(files, tmp_path):
    series_dir = tmp_path / "in" / "series"
    shutil.copytree(files["dicom"], series_dir)
    before = tree_digest(str(tmp_path / "in"))
    for out in (series_dir, series_dir / "denoised", tmp_path / "in"):  # equal, inside, would replace it
        with pytest.raises(InferenceError, match=str(series_dir)):
            denoise_path(series_dir, out, files["random_model"], device="cpu", progress=False)
    with pytest.raises(InferenceError, match="case_1.nii.gz"):  # NIfTI written over itself
        denoise_path(files["nifti"], os.path.dirname(files["nifti"]), files["random_model"], device="cpu", progress=False)
    assert tree_digest(str(tmp_path / "in")) == before


def test_existing_output_is_refused_unless_overwrite(files, tmp_path):
    out = tmp_path / "out"
    denoise_path(files["nifti"], out, files["identity_model"], gamma=0.0, device="cpu", progress=False)
    with pytest.raises(InferenceError, match="already exists"):
        denoise_path(files["nifti"], out, files["identity_model"], gamma=0.0, device="cpu", progress=False)
    written = denoise_path(files["nifti"], out, files["random_model"], device="cpu", progress=False, overwrite=True)
    assert os.listdir(out) == ["case_1.nii.gz"] and os.path.isfile(written[0])


def test_missing_or_mismatched_model_is_refused(files, tmp_path):
    generator = tmp_path / "generator.pt"
    torch.save(Generator().state_dict(), generator)
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a model")
    wrong_shape = tmp_path / "wrong_shape.pt"
    state = ISCLDenoiser().state_dict()
    state["denoiser.encoder.1.weight"] = torch.zeros(3, 1, 7, 7)
    torch.save(state, wrong_shape)
    mismatch = "not an ISCL network_def state dict"
    for model, message in ((tmp_path / "none.pt", "not found"), (generator, mismatch), (garbage, mismatch),
                           (wrong_shape, mismatch)):
        with pytest.raises(InferenceError, match=message) as info:
            denoise_path(files["nifti"], tmp_path / "out", model, device="cpu", progress=False)
        assert str(model) in str(info.value)
        assert_nothing_written(str(tmp_path / "out"))


def _cli(*args, cwd):
    return subprocess.run([sys.executable, CLI, "denoise", *map(str, args)], cwd=str(cwd), capture_output=True,
                          text=True, timeout=120)


def test_cli_bad_input_exits_2_with_one_error_line(files, tmp_path):
    missing = tmp_path / "nowhere"
    result = _cli(missing, tmp_path / "out", "--model_path", files["random_model"], cwd=tmp_path)
    assert result.returncode == 2 and f"error: {missing}: no such file" in result.stderr
    generator = tmp_path / "generator.pt"
    torch.save(Generator().state_dict(), generator)
    result = _cli(files["nifti"], tmp_path / "out", "--model_path", generator, cwd=tmp_path)
    assert result.returncode == 2 and f"error: {generator}: not an ISCL network_def state dict" in result.stderr
    assert_nothing_written(str(tmp_path / "out"))


# ------------------------------------------------------------------------------------- entry points
def test_cli_denoise_writes_a_derived_series(files, tmp_path):
    result = _cli(files["dicom"], "out", "--model_path", files["identity_model"], "--gamma", "0", "--device", "cpu",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "out" / "series_a")
    assert np.abs(read_volume(tmp_path / "out" / "series_a").hu - identity_output(files["dicom_hu"])).max() <= 1.0


def test_bundle_config_runs_from_another_directory(files, tmp_path):
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", INFERENCE_CONFIG,
            "--input_path", files["nifti"], "--output_dir", str(tmp_path / "out"),
            "--model_path", files["identity_model"], "--ensemble_gamma", "0.0", "--progress", "false"]
    result = subprocess.run(args, cwd=str(tmp_path), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    res = nib.load(tmp_path / "out" / "case_1.nii.gz")
    expected = identity_output(np.moveaxis(files["nifti_hu"], 0, -1))
    assert np.abs(res.get_fdata() - expected).max() <= 1e-3


def test_bundle_config_layers_on_train_json(files, tmp_path):
    out = tmp_path / "out"
    bundle_run(config_file=[TRAIN_CONFIG, INFERENCE_CONFIG], logging_file=False, input_path=files["dicom"],
               output_dir=str(out), model_path=files["random_model"], device="$torch.device('cpu')", progress=False)
    expected = denoise_path(files["dicom"], tmp_path / "direct", files["random_model"], device="cpu", progress=False)
    assert np.abs(read_volume(out / "series_a").hu - read_volume(expected[0]).hu).max() <= 1.0


def test_the_configs_transforms_are_the_one_pipelines_and_run_as_consumers_call_them(files):
    """What Deploy/Label take from the config (keys image -> pred) is make_pipeline's own three objects."""
    parser = ConfigParser()
    parser.read_config(INFERENCE_CONFIG)
    parser["device"] = "$torch.device('cpu')"
    pipeline = parser.get_parsed_content("pipeline")
    assert isinstance(pipeline, DenoisePipeline)
    preprocessing, inferer, postprocessing = (parser.get_parsed_content(k)
                                              for k in ("preprocessing", "inferer", "postprocessing"))
    assert (preprocessing, inferer, postprocessing) == (pipeline.preprocessing, pipeline.inferer, pipeline.postprocessing)
    # flat map transforms: MONAI Deploy drops the reader and then treats a Compose as dict-based only when its
    # first transform is a MapTransform
    assert all(isinstance(step, MapTransform) for step in (*preprocessing.transforms, *postprocessing.transforms))
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(files["random_model"], weights_only=True))
    network.eval()

    data = preprocessing({"image": files["nifti"]})
    assert data["image"].shape == (1, 3, 64, 56)  # (C, S, H, W) padded to multiples of 4
    assert np.allclose(data["image"].affine.numpy(), NIFTI_AFFINE[:, [2, 0, 1, 3]])  # (s, h, w) -> RAS mm
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    data = postprocessing(data)
    assert data["pred"].shape == (1, 3, 62, 54)  # the padding undone: the input grid
    chunked = pipeline.denoise(files["nifti_hu"], network)  # the CLI's way: chunks of slices
    assert np.abs(data["pred"][0].numpy() - chunked).max() <= 1e-3


def test_one_function_builds_the_inference_pipeline():
    """grep: make_pipeline is the only place that assembles the pipeline's transforms."""
    sources = [os.path.join(folder, f) for folder, _, names in os.walk(os.path.join(BUNDLE_ROOT, "scripts"))
               for f in names if f.endswith(".py")]
    builders = [s for s in sources if "DivisiblePadd(" in open(s).read() or "SliceInferer(" in open(s).read()]
    assert [os.path.relpath(s, BUNDLE_ROOT) for s in builders] == [os.path.join("scripts", "tasks", "pipeline.py")]


def test_devices_resolve_and_are_named_for_reports():
    from scripts.core.device import describe_device, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("") == resolve_device(None)
    name = describe_device(torch.device("cpu"))
    assert name.startswith("CPU ") and name.endswith(f"{torch.get_num_threads()} torch threads")
    with pytest.raises(InferenceError, match="'gpu': not a torch device"):
        resolve_device("gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_on_a_cpu_only_torch_is_refused_before_reading(files, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, CLI, "denoise", files["nifti"], str(out), "--model_path",
                             files["random_model"], "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device 'cuda': this torch has no usable CUDA device")


def test_output_that_is_an_existing_file_is_refused_and_kept(files, tmp_path):
    out = tmp_path / "out"
    out.write_bytes(b"not a folder")
    result = subprocess.run([sys.executable, CLI, "denoise", files["nifti"], str(out), "--model_path",
                             files["random_model"], "--device", "cpu"], capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == f"error: {out}: exists and is not a folder; choose another output directory."
    assert out.read_bytes() == b"not a folder"
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]  # no staging left


@pytest.mark.parametrize("through", ["function", "bundle run"])
def test_an_unusable_output_is_refused_before_any_input_is_read(files, tmp_path, monkeypatch, through):
    out = tmp_path / "out"
    out.write_bytes(b"not a folder")
    missing = str(tmp_path / "no_such_input.nii.gz")  # reading it would fail with another message
    if through == "function":
        with pytest.raises(ValueError, match="exists and is not a folder"):
            denoise_path(missing, str(out), files["random_model"], device="cpu")
        return
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", INFERENCE_CONFIG,
                             "--input_path", missing, "--output_dir", str(out), "--model_path", files["random_model"],
                             "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "exists and is not a folder" in result.stderr, result.stderr[-2000:]
    assert out.read_bytes() == b"not a folder"


def test_force_given_as_text_is_read_as_a_flag(files):
    """``--force false`` through monai.bundle run arrives as the string "false", which must not switch force on."""
    from scripts.tasks.inputs import collect_inputs
    from scripts.tasks.pipeline import make_pipeline

    assert make_pipeline(HU_RANGE, force="false").reader.force is False
    assert make_pipeline(HU_RANGE, force="true").reader.force is True
    with pytest.raises(ValueError, match="force must be true or false"):
        make_pipeline(HU_RANGE, force="maybe")
    with pytest.raises(ValueError, match="force must be true or false"):
        collect_inputs(files["nifti"], force="maybe")


def test_an_existing_nifti_output_file_is_kept_without_overwrite(files, tmp_path):
    out = tmp_path / "out.nii"  # a NIfTI name: the output file itself
    out.write_bytes(b"an earlier result")
    result = subprocess.run([sys.executable, CLI, "denoise", files["nifti"], str(out), "--model_path",
                             files["random_model"], "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: {out}: already exists (choose another output or pass --overwrite true).")
    assert out.read_bytes() == b"an earlier result"


def test_forged_nifti_header_is_one_error_before_allocating(tmp_path):
    import struct

    plain = tmp_path / "ok.nii"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 2), np.int16), np.eye(4)), str(plain))
    raw = bytearray(plain.read_bytes())
    struct.pack_into("<hhhh", raw, 40, 3, 32767, 32767, 64)
    forged = tmp_path / "forged.nii"
    forged.write_bytes(bytes(raw))
    with pytest.raises(InferenceError, match=r"forged.nii: the header describes 32767x32767x64 voxels"):
        read_volume(str(forged))


def test_compile_option_gives_the_eager_output(files, tmp_path):
    """denoise_path(compile=True) (the CLI's --compile, inference.json's compile): torch.compile'd
    network, same HU as eager within 0.05 HU (1e-4 of the window's scale is 0.02 HU)."""
    written = {}
    for compiled in (False, True):
        out = tmp_path / f"compile_{compiled}"
        (path,) = denoise_path(files["nifti"], out, files["random_model"], compile=compiled, progress=False)
        written[compiled] = read_volume(path).hu
    assert np.abs(written[True] - written[False]).max() < 0.05
    assert np.abs(written[False] - files["nifti_hu"]).max() > 1.0  # a random network changes the image


def test_cli_denoise_runs_a_chest_model_in_its_own_window_without_a_flag(files, tmp_path):
    """A model file trained with train_chest.json carries its window ([-400, 1000] HU) in model.pt.json:
    `cli.py denoise` uses it, and the result differs from the same weights run in the abdomen window."""
    from scripts.model.model_facts import facts_path, read_model_facts

    chest_model = tmp_path / "chest" / "model.pt"
    chest_model.parent.mkdir()
    shutil.copy(files["random_model"], chest_model)
    with open(facts_path(chest_model), "w") as f:
        json.dump({"gamma": 1.0, "hu_range": [-400.0, 1000.0]}, f)
    result = _cli(files["nifti"], "out.nii.gz", "--model_path", str(chest_model), "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got = read_volume(tmp_path / "out.nii.gz").hu
    network = load_denoiser(str(chest_model), device="cpu")
    assert network.gamma == 1.0 and read_model_facts(chest_model)["hu_range"] == (-400.0, 1000.0)
    chest = denoise_volume(files["nifti_hu"], network, device="cpu", hu_range=(-400.0, 1000.0), progress=False)
    abdomen = denoise_volume(files["nifti_hu"], network, device="cpu", hu_range=(-160.0, 240.0), progress=False)
    assert np.abs(got - chest).max() <= 0.5
    assert np.abs(got - abdomen).max() > 50.0


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"),
                                              ('{"gamma": 2, "hu_range": [-160, 240]}', "gamma must be in"),
                                              ('{"gamma": 0.5}', "expected")])
def test_a_bad_model_facts_file_is_one_error_naming_it(files, tmp_path, content, message):
    from scripts.core.errors import DataError
    from scripts.model.model_facts import facts_path

    model = tmp_path / "model.pt"
    shutil.copy(files["random_model"], model)
    with open(facts_path(model), "w") as f:
        f.write(content)
    with pytest.raises(DataError, match=message) as error:
        load_denoiser(str(model), device="cpu")
    assert str(model) + ".json" in str(error.value)
