"""Hostile input through both entry points, as subprocesses: `cli.py denoise` and
`python -m monai.bundle run inference`. Every probe must end with exactly one `error:` line naming
the file or value, no traceback, a non-zero exit, nothing written and the input unchanged."""

import errno
import hashlib
import os
import shutil
import struct
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from conftest import BUNDLE_ROOT
from scripts.volumes.dicom_write import write_ct_series
from scripts.model.networks import ISCLDenoiser

CLI = os.path.join(BUNDLE_ROOT, "scripts", "cli.py")
INFERENCE_CONFIG = os.path.join(BUNDLE_ROOT, "configs", "inference.json")


# ------------------------------------------------------------------------------ probes
def _with_air(shape):
    """Water with a band of air: a CT volume without air is refused as not HU."""
    volume = np.zeros(shape, np.float32)
    volume[:4] = -1000.0
    return volume


def _series(tmp):
    hu = np.full((2, 64, 64), 40.0, np.float32)
    return write_ct_series(hu, tmp / "series", patient_id="P1").files


def missing(tmp):
    return tmp / "nothing", "nothing: no such file or directory"


def empty_folder(tmp):
    (tmp / "empty").mkdir()
    return tmp / "empty", "empty"


def not_dicom(tmp):
    (tmp / "notes").mkdir()
    (tmp / "notes" / "README.txt").write_text("not an image\n")
    return tmp / "notes", "notes"


def truncated_dicom(tmp):
    files = _series(tmp)
    with open(files[1], "r+b") as f:
        f.truncate(os.path.getsize(files[1]) - 100)
    return tmp / "series", os.path.basename(files[1]) + ": truncated DICOM file"


def forged_dicom(tmp):
    files = _series(tmp)
    ds = pydicom.dcmread(files[0])
    ds.Rows = ds.Columns = 65535
    ds.save_as(files[0])
    return tmp / "series", os.path.basename(files[0]) + ": the header describes 65535x65535 pixels"


def forged_nifti(tmp):
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 2), np.int16), np.eye(4)), str(tmp / "forged.nii"))
    raw = bytearray((tmp / "forged.nii").read_bytes())
    struct.pack_into("<hhhh", raw, 40, 3, 32767, 32767, 64)
    (tmp / "forged.nii").write_bytes(bytes(raw))
    return tmp / "forged.nii", "forged.nii: the header describes 32767x32767x64 voxels"


def nan_nifti(tmp):
    volume = np.zeros((64, 64, 2), np.float32)
    volume[3, 4, 1] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp / "nan.nii"))
    return tmp / "nan.nii", "nan.nii: contains NaN or Inf voxels"


def pydicom_file(name, message):
    def make(tmp):
        (tmp / "in").mkdir()
        shutil.copy(get_testdata_file(name), tmp / "in")
        return tmp / "in", f"{name}: {message}"

    make.__name__ = name
    return make


PROBES = [
    missing, empty_folder, not_dicom, truncated_dicom, forged_dicom, forged_nifti, nan_nifti,
    pydicom_file("MR_small_RLE.dcm", "modality MR is not CT"),
    pydicom_file("emri_small.dcm", "multi-frame image (10 frames)"),
    pydicom_file("JPEG2000.dcm", "missing or invalid ImagePositionPatient"),
    pydicom_file("JPEG-LL.dcm", "missing or invalid ImagePositionPatient"),
    pydicom_file("SC_rgb.dcm", "missing or invalid ImagePositionPatient"),
    pydicom_file("rtplan.dcm", "truncated or corrupt DICOM file (or not an image)"),
]
THROUGH_BUNDLE = [missing, truncated_dicom, forged_dicom, forged_nifti, nan_nifti, PROBES[7]]


# ------------------------------------------------------------------------------ checks
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(ISCLDenoiser().state_dict(), str(path))
    return str(path)


def checksums(folder):
    sums = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                sums[path] = hashlib.sha256(f.read()).hexdigest()
    return sums


def assert_clean_error(result, expected, inputs_before, inputs):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert ".tmp-" not in lines[0], lines[0]  # the output it names is the user's, not a hidden temporary
    assert checksums(inputs) == inputs_before  # the input is never modified
    assert not (inputs.parent / "results").exists() or os.listdir(inputs.parent / "results") == []


def run_probe(make, tmp_path, command):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path, expected = make(inputs)
    before = checksums(inputs)
    (tmp_path / "results").mkdir()
    result = subprocess.run(command(str(path), str(tmp_path / "results" / "out")), capture_output=True, text=True,
                            timeout=300, cwd=str(tmp_path))
    assert_clean_error(result, expected, before, inputs)
    assert os.listdir(tmp_path / "results") == []  # no output, no staging folder
    return result


@pytest.mark.parametrize("make", PROBES, ids=lambda make: make.__name__)
def test_cli_denoise_probe(make, tmp_path, model):
    result = run_probe(make, tmp_path, lambda src, out: [sys.executable, CLI, "denoise", src, out,
                                                         "--model_path", model, "--device", "cpu"])
    assert result.returncode == 2


@pytest.mark.parametrize("make", THROUGH_BUNDLE, ids=lambda make: make.__name__)
def test_bundle_inference_probe(make, tmp_path, model):
    run_probe(make, tmp_path, lambda src, out: [sys.executable, "-m", "monai.bundle", "run", "inference",
                                                "--config_file", INFERENCE_CONFIG, "--input_path", src,
                                                "--output_dir", out, "--model_path", model, "--device", "cpu"])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_write_failure_midway_is_one_line_and_leaves_nothing(tmp_path, model, code):
    """Disk full / read-only file system while the output is being written (the write is made to fail)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(_with_air((64, 64, 2)), np.eye(4)), str(inputs / "low.nii"))
    before = checksums(inputs)
    out = tmp_path / "results" / "out"
    script = f"""
import os, sys
sys.path.insert(0, {BUNDLE_ROOT!r})
import scripts.tasks.volume_denoiser as engine
def failing_write(volume, hu, path, suffix=""):
    with open(path, "wb") as f:
        f.write(b"half a file")
    raise OSError({code}, os.strerror({code}), path)
engine.write_volume = failing_write
from scripts import cli
cli.main(["denoise", {str(inputs / "low.nii")!r}, {str(out)!r}, "--model_path", {model!r}, "--device", "cpu"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert_clean_error(result, os.strerror(code), before, inputs)
    assert os.listdir(tmp_path / "results") == []


# ------------------------------------------------------------------------------ real small file systems
@pytest.fixture()
def small_fs(tmp_path):
    """A 256 KiB tmpfs (root only; skipped where this test may not mount one: then the ENOSPC/EROFS
    cases above, which make the write fail, are the check)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _denoise_into(inputs, out, model):
    return subprocess.run([sys.executable, CLI, "denoise", str(inputs / "big.nii"), str(out), "--model_path", model,
                           "--device", "cpu"], capture_output=True, text=True, timeout=300)


def test_disk_full_on_a_real_small_file_system_is_one_line_and_leaves_nothing(tmp_path, small_fs, model):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(_with_air((64, 64, 40)), np.eye(4)), str(inputs / "big.nii"))  # 640 KiB out
    before = checksums(inputs)
    result = _denoise_into(inputs, small_fs / "out", model)
    assert result.returncode == 2
    assert_clean_error(result, os.strerror(errno.ENOSPC), before, inputs)
    assert os.listdir(small_fs) == []  # neither the output nor its staging folder


def test_read_only_file_system_is_refused_before_any_work(tmp_path, small_fs, model):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(_with_air((64, 64, 2)), np.eye(4)), str(inputs / "big.nii"))
    before = checksums(inputs)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    result = _denoise_into(inputs, small_fs / "out", model)
    assert result.returncode == 2
    assert_clean_error(result, "not writable", before, inputs)
    assert os.listdir(small_fs) == []
