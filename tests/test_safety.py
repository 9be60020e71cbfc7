"""Clinical-data safety (docs/README.md, "Safety rules"): never mix patients, never write or load a
model with non-finite weights, never guess HU or identity. Real DICOM written by pydicom, real NIfTI,
real subprocesses through `cli.py` and `python -m monai.bundle run`."""

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from conftest import BUNDLE_ROOT
from scripts.volumes.dicom_write import write_ct_series
from scripts.model.checkpoints import StateSaver
from scripts.model.networks import ISCLDenoiser
from scripts.datasets.phantom import phantom

CLI = os.path.join(BUNDLE_ROOT, "scripts", "cli.py")
TRAIN = os.path.join(BUNDLE_ROOT, "configs", "train.json")


def _phantom_series(folder, patient="PAT_A", z0=0.0, **options):
    hu = np.stack([phantom(64, 1, 6.0, z_mm=z0 + 3.0 * k) for k in range(2)])
    return write_ct_series(hu, folder, patient_id=patient, slice_spacing=3.0, origin=(0.0, 0.0, z0), **options)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(ISCLDenoiser().state_dict(), str(path))
    return str(path)


def _denoise(source, out, model, *extra):
    return subprocess.run([sys.executable, CLI, "denoise", str(source), str(out), "--model_path", model,
                           "--device", "cpu", *extra], capture_output=True, text=True, timeout=300)


def assert_one_error(result, expected):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and expected in lines[0], result.stderr[-3000:]


def _rewrite_all(folder, change):
    for name in os.listdir(folder):
        ds = pydicom.dcmread(os.path.join(folder, name))
        change(ds)
        ds.save_as(os.path.join(folder, name))


def test_two_patients_under_one_series_uid_are_refused_and_nothing_is_written(tmp_path, model):
    a = _phantom_series(tmp_path / "a", "PAT_A", 0.0)
    b = _phantom_series(tmp_path / "b", "PAT_B", 6.0)
    mix = tmp_path / "mix"
    mix.mkdir()
    for k, path in enumerate(a.files + b.files):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = a.series_uid
        ds.save_as(str(mix / f"{k}.dcm"))
    result = _denoise(mix, tmp_path / "out", model)
    assert_one_error(result, "mixes PatientID 'PAT_B' with 'PAT_A'")
    assert not (tmp_path / "out").exists()


def _strip_rescale(ds):
    """Stored values = HU + 1024 with RescaleSlope/Intercept removed (a broken export)."""
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    ds.PixelData = np.clip(hu + 1024, 0, 65535).astype(np.uint16).tobytes()
    ds.PixelRepresentation = 0
    del ds.RescaleSlope, ds.RescaleIntercept


def test_a_series_without_rescale_tags_is_refused_unless_forced(tmp_path, model):
    series = _phantom_series(tmp_path / "in")
    _rewrite_all(series.directory, _strip_rescale)
    result = _denoise(series.directory, tmp_path / "out", model)
    assert_one_error(result, "have no RescaleSlope/RescaleIntercept")
    assert "no voxel below -500 HU" in result.stderr  # air read at +24 HU
    assert not (tmp_path / "out").exists()
    forced = _denoise(series.directory, tmp_path / "out", model, "--force")
    assert forced.returncode == 0 and "processing it anyway" in forced.stderr, forced.stderr[-2000:]


def test_a_rescale_slope_of_zero_is_refused_even_when_forced(tmp_path, model):
    series = _phantom_series(tmp_path / "in")
    _rewrite_all(series.directory, lambda ds: setattr(ds, "RescaleSlope", 0))
    assert_one_error(_denoise(series.directory, tmp_path / "out", model, "--force"), "RescaleSlope is 0")
    assert not (tmp_path / "out").exists()


def test_a_nifti_volume_without_air_is_refused_unless_forced(tmp_path, model):
    stored = np.stack([phantom(64, 1, 6.0)] * 2, axis=-1) + 1024  # stored values, not HU
    nib.save(nib.Nifti1Image(stored.astype(np.float32), np.diag([6.0, 6.0, 3.0, 1.0])), str(tmp_path / "s.nii"))
    assert_one_error(_denoise(tmp_path / "s.nii", tmp_path / "out", model), "s.nii: no voxel below -500 HU")
    assert not (tmp_path / "out").exists()


def test_identity_is_copied_never_invented(tmp_path, model):
    series = _phantom_series(tmp_path / "in")
    for keyword in ("PatientID", "PatientName", "StudyDate", "StudyID"):
        _rewrite_all(series.directory, lambda ds: delattr(ds, keyword) if keyword in ds else None)
    result = _denoise(series.directory, tmp_path / "out", model)
    assert result.returncode == 0, result.stderr[-2000:]
    out_folder = os.path.join(tmp_path / "out", os.listdir(tmp_path / "out")[0])
    written = pydicom.dcmread(os.path.join(out_folder, sorted(os.listdir(out_folder))[0]))
    source = pydicom.dcmread(series.files[0])
    for keyword in ("PatientID", "PatientName", "StudyDate", "StudyID"):
        assert keyword in written and str(written.get(keyword)) == "", keyword  # type 2: present and empty
    assert written.StudyInstanceUID == source.StudyInstanceUID
    assert written.Modality == "CT" and written.SeriesInstanceUID != source.SeriesInstanceUID


def test_a_model_with_non_finite_weights_is_never_loaded(tmp_path):
    state = ISCLDenoiser().state_dict()
    state["denoiser.encoder.1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, str(tmp_path / "nan.pt"))
    nib.save(nib.Nifti1Image(np.stack([phantom(64, 1, 6.0)] * 2, -1), np.eye(4)), str(tmp_path / "s.nii"))
    result = _denoise(tmp_path / "s.nii", tmp_path / "out", str(tmp_path / "nan.pt"))
    assert_one_error(result, "nan.pt: 1 of ")
    assert "weights are NaN or infinite" in result.stderr and not (tmp_path / "out").exists()


def test_a_state_with_non_finite_values_is_never_written_and_the_previous_file_stays(tmp_path):
    network = torch.nn.Linear(2, 2)
    saver = StateSaver({"network": network}, str(tmp_path / "model.pt"))
    saver()
    before = (tmp_path / "model.pt").read_bytes()
    with torch.no_grad():
        network.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="model.pt: not written: 1 of 6 values of network are NaN or infinite"):
        saver()
    assert (tmp_path / "model.pt").read_bytes() == before


def test_a_diverged_training_stops_with_one_line_and_exports_nothing(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--num_iterations", "2",
         "--epoch_length", "1", "--learning_rate", "1e30", "--discriminator_learning_rate", "1e30",
         "--output_dir", str(out), "--model_path", str(out / "model.pt")],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert_one_error(result, "training diverged at iteration 1:")
    assert not (out / "model.pt").exists() and not (out / "checkpoint.pt").exists()


def _nifti(path, seed=1):
    nib.save(nib.Nifti1Image(np.stack([phantom(64, seed, 6.0)] * 2, -1), np.diag([6.0, 6.0, 3.0, 1.0])), str(path))
    return str(path)


def test_a_folder_another_run_is_writing_is_refused_at_once(tmp_path, model):
    from scripts.core.atomic import folder_lock

    source = _nifti(tmp_path / "scan.nii")
    with folder_lock(tmp_path / "out"):  # another run holds the output folder
        result = _denoise(source, tmp_path / "out", model)
    assert_one_error(result, "out: another run is writing this output directory now")
    assert sorted(os.listdir(tmp_path)) == ["model", "scan.nii"] or "out" not in os.listdir(tmp_path)
    assert _denoise(source, tmp_path / "out", model).returncode == 0  # the lock went with its holder
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".lock")]


def test_an_input_named_twice_is_refused_and_the_old_output_kept(tmp_path, model):
    import json

    source = _nifti(tmp_path / "low.nii")
    assert _denoise(source, tmp_path / "out", model).returncode == 0
    before = (tmp_path / "out" / "low.nii").read_bytes()
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"test": [{"image": source}, {"image": source}]}))
    result = _denoise(datalist, tmp_path / "out", model, "--overwrite", "true")
    assert_one_error(result, "low.nii: two inputs would be written to this one output")
    assert (tmp_path / "out" / "low.nii").read_bytes() == before


def test_a_failed_merge_puts_the_old_outputs_back(tmp_path, monkeypatch):
    """The second new file cannot be moved in (disk full): the first new one is taken out again and
    both old outputs are back."""
    from scripts.core import atomic

    out, staging = tmp_path / "out", tmp_path / "staging"
    out.mkdir()
    staging.mkdir()
    for name in ("a.nii", "b.nii"):
        (out / name).write_text("old " + name)
        (staging / name).write_text("new " + name)
    real_replace, failed = os.replace, []

    def replace_failing_once(src, dst):
        if str(src) == str(staging / "b.nii") and not failed:
            failed.append(dst)
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_failing_once)
    with pytest.raises(OSError, match="No space left"):
        atomic.merge_into_folder(str(staging), str(out), ["a.nii", "b.nii"])
    assert failed and (out / "a.nii").read_text() == "old a.nii" and (out / "b.nii").read_text() == "old b.nii"


def test_an_exam_folder_follows_symlinks_skips_odd_series_and_special_files(tmp_path, model):
    """A symlinked series folder is denoised, an RGB secondary capture and an MR series are skipped with a
    warning, and a named pipe does not block the scan."""
    import shutil

    from pydicom.data import get_testdata_file

    exam = tmp_path / "exam"
    _phantom_series(exam / "ct")
    _phantom_series(tmp_path / "elsewhere", "PAT_A", 30.0)
    os.symlink(tmp_path / "elsewhere", exam / "linked")
    (exam / "report").mkdir()
    shutil.copy(get_testdata_file("SC_rgb.dcm"), exam / "report")
    (exam / "mr").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), exam / "mr")
    os.mkfifo(exam / "pipe")
    result = _denoise(exam, tmp_path / "out", model)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["ct", "linked"]
    assert "SC_rgb.dcm" in result.stderr and "missing or invalid ImagePositionPatient" in result.stderr
    assert "modality MR is not CT" in result.stderr and "pipe: skipped (not a regular file)" in result.stderr


def test_an_exam_folder_with_nothing_usable_is_refused_naming_the_problem(tmp_path, model):
    import shutil

    from pydicom.data import get_testdata_file

    (tmp_path / "exam").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "exam")
    assert_one_error(_denoise(tmp_path / "exam", tmp_path / "out", model), "MR_small.dcm: modality MR is not CT")


def _interrupt_when(command, marker, cwd):
    """Run ``command``, send SIGINT once ``marker`` appears in its output; (return code, output)."""
    import signal

    # a test run started in the background inherits SIGINT ignored; the child must see Ctrl-C as a user would
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            process.send_signal(signal.SIGINT)
            break
    rest, _ = process.communicate(timeout=120)
    return process.returncode, "".join(lines) + rest


def test_ctrl_c_during_training_is_one_line_and_exit_130(tmp_path):
    code, output = _interrupt_when(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--num_iterations", "400",
         "--epoch_length", "100", "--output_dir", str(tmp_path / "run"), "--model_path", str(tmp_path / "model.pt")],
        "| 1/400", str(tmp_path))  # the run's progress bar after the first iteration
    assert code == 130 and "Traceback" not in output, output[-3000:]
    assert [line for line in output.splitlines() if line.startswith("error:")] == [
        "error: interrupted (Ctrl-C); outputs are written only when complete, so none was left half-way."]
    assert not (tmp_path / "model.pt").exists()


def test_ctrl_c_during_denoising_is_one_line_and_exit_130(tmp_path, model):
    volume = np.stack([phantom(256, 1, 1.5, z_mm=3.0 * k) for k in range(40)], -1)
    nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 3.0, 1.0])), str(tmp_path / "big.nii"))
    code, output = _interrupt_when([sys.executable, "-u", CLI, "denoise", str(tmp_path / "big.nii"),
                                    str(tmp_path / "out"), "--model_path", model, "--device", "cpu"], "%|", str(tmp_path))
    assert code == 130 and "Traceback" not in output, output[-3000:]
    assert output.count("error: interrupted (Ctrl-C)") == 1
    assert sorted(os.listdir(tmp_path)) == ["big.nii"]  # no output, no staging folder, no lock


def test_an_evaluation_pair_on_two_grids_is_refused(tmp_path, model):
    import json

    volume = np.stack([phantom(64, 1, 6.0)] * 2, -1)
    nib.save(nib.Nifti1Image(volume, np.diag([6.0, 6.0, 3.0, 1.0])), str(tmp_path / "low.nii"))
    shifted = np.diag([6.0, 6.0, 3.0, 1.0])
    shifted[2, 3] = 9.0  # the "full dose" three slices further up
    nib.save(nib.Nifti1Image(volume, shifted), str(tmp_path / "shifted.nii"))
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"test": [{"image": str(tmp_path / "low.nii"), "label": str(tmp_path / "shifted.nii")}]}))
    result = subprocess.run([sys.executable, CLI, "evaluate", "--datalist", str(datalist), "--out", str(tmp_path / "r"),
                             "--model_path", model, "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert_one_error(result, "the evaluation pair's voxel grids differ by up to 9 mm")
    assert not (tmp_path / "r").exists()


def test_resuming_with_other_network_settings_is_refused_before_training(tmp_path):
    """A checkpoint of discriminators without normalisation, resumed with --discriminator_norm bin."""
    from scripts.model.networks import Discriminator, Generator, NoiseExtractor

    networks = {"denoiser": Generator(), "noise_generator": Generator(), "noise_extractor": NoiseExtractor(),
                "noisy_discriminator": Discriminator("none"), "clean_discriminator": Discriminator("none")}
    state = {name: net.state_dict() for name, net in networks.items()}
    state.update({name: {} for name in ("generators_optimizer", "discriminators_optimizer", "extractor_optimizer",
                                        "generators_lr_schedule", "discriminators_lr_schedule",
                                        "extractor_lr_schedule", "swa", "trainer")})
    torch.save(state, str(tmp_path / "checkpoint.pt"))
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN, "--resume",
         str(tmp_path / "checkpoint.pt"), "--discriminator_norm", "bin", "--output_dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert_one_error(result, "checkpoint.pt: does not fit --resume: noisy_discriminator:")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_an_output_named_like_a_nifti_file_is_that_file(tmp_path, model, kind):
    if kind == "nifti":
        source = _nifti(tmp_path / "scan.nii")
    else:
        source = _phantom_series(tmp_path / "series").directory
    result = _denoise(source, tmp_path / "out.nii.gz", model)
    assert result.returncode == 0, result.stderr[-2000:]
    image = nib.load(str(tmp_path / "out.nii.gz"))  # a file nibabel opens, not a folder
    assert image.shape == (64, 64, 2) and np.isfinite(image.get_fdata()).all()
    assert result.stdout.strip().endswith("out.nii.gz")


def test_a_failed_write_names_the_output_not_its_hidden_temporary(tmp_path):
    from scripts.core.atomic import atomic_path, staged_folder

    with pytest.raises(OSError) as info:
        with staged_folder(tmp_path / "out") as staging:
            raise OSError(28, "No space left on device", os.path.join(staging, "scan.nii"))
    assert info.value.filename == str(tmp_path / "out" / "scan.nii") and info.value.errno == 28
    with pytest.raises(OSError) as info:
        with atomic_path(tmp_path / "model.pt") as tmp:
            raise OSError(28, "No space left on device", tmp)
    assert info.value.filename == str(tmp_path / "model.pt")
    assert sorted(os.listdir(tmp_path)) == []


@pytest.fixture()
def writable_home_in_read_only_parent(tmp_path):
    """``parent/home`` writable inside a read-only ``parent`` (a home folder under a read-only /home):
    two tmpfs mounts, the outer one remounted read-only (root only; skipped where mounting is refused)."""
    parent = tmp_path / "parent"
    parent.mkdir()
    steps = [["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(parent)], ["mkdir", str(parent / "home")],
             ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(parent / "home")],
             ["mount", "-o", "remount,ro", str(parent)]]
    mounted = []
    for step in steps:
        done = subprocess.run(step, capture_output=True)
        if done.returncode != 0:
            for path in reversed(mounted):
                subprocess.run(["umount", "-l", path], capture_output=True)
            pytest.skip(f"cannot mount here: {done.stderr.decode(errors='replace').strip()}")
        if step[0] == "mount" and "remount,ro" not in step:
            mounted.append(step[-1])
    yield parent / "home"
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", path], capture_output=True)


def test_a_writable_output_folder_under_a_read_only_parent_is_used(tmp_path, model, writable_home_in_read_only_parent):
    home = writable_home_in_read_only_parent
    result = _denoise(_nifti(tmp_path / "scan.nii"), home, model)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(home)) == ["scan.nii"]  # no staging folder or lock left inside it
