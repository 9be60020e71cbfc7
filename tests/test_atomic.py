import json
import os
import stat

import pytest

from scripts.core.atomic import STALE_FILE_S, STALE_FOLDER_S, atomic_path, check_output_folder, staging_dir, write_json


def test_write_json_round_trip_and_permissions(tmp_path):
    path = tmp_path / "sub" / "list.json"
    write_json({"a": [1, 2]}, path)
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(path.parent) == ["list.json"]  # no temporary file left


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path, ".pt") as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_temporary_keeps_the_suffix_and_lives_beside_the_target(tmp_path):
    with atomic_path(tmp_path / "vol.nii", ".nii") as tmp:
        assert tmp.endswith(".nii") and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "w").close()
    assert os.path.exists(tmp_path / "vol.nii")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_staging_dir_is_a_hidden_sibling_with_a_plain_mkdir_mode(tmp_path):
    target = tmp_path / "new" / "series"
    staging = staging_dir(target)
    assert os.path.dirname(staging) == str(target.parent) and os.path.basename(staging).startswith(".series.tmp-")
    assert os.listdir(staging) == [] and not target.exists()
    assert stat.S_IMODE(os.stat(staging).st_mode) == 0o777 & ~_umask()


def test_folders_built_in_staging_keep_a_plain_mkdir_mode(tmp_path):
    """A derived DICOM series and a denoise_path output folder are readable like any
    folder the user makes (not mkdtemp's 0o700)."""
    import numpy as np
    import torch

    from scripts.volumes.dicom_write import write_ct_series
    from scripts.tasks.inference import denoise_path
    from scripts.model.networks import ISCLDenoiser

    expected = 0o777 & ~_umask()
    series = tmp_path / "in" / "series"
    write_ct_series(np.pad(np.zeros((2, 14, 16), np.float32), ((0, 0), (2, 0), (0, 0)), constant_values=-1000.0),
                    series)  # soft tissue with a band of air (a CT without air is refused as not HU)
    model = tmp_path / "model.pt"
    torch.save(ISCLDenoiser().state_dict(), model)
    out = tmp_path / "out"
    denoise_path(series, out, model, device="cpu", progress=False)
    for folder in (series, out, out / "series"):
        assert stat.S_IMODE(os.stat(folder).st_mode) == expected, folder


def test_output_folder_that_is_a_file_or_lies_under_a_file_is_refused(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(ValueError, match="notes.txt: exists and is not a folder; choose another output folder"):
        check_output_folder(a_file)
    with pytest.raises(ValueError, match="notes.txt: is not a folder, so .*deeper cannot be created"):
        check_output_folder(a_file / "sub" / "deeper")
    assert a_file.read_text() == "mine" and sorted(os.listdir(tmp_path)) == ["notes.txt"]
    check_output_folder(tmp_path / "new" / "nested")  # creatable: fine, and nothing is created yet
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_folder_under_a_read_only_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="locked: not writable"):
            check_output_folder(locked / "out")
    finally:
        locked.chmod(0o755)


def _age(path, seconds):
    then = os.stat(path).st_mtime - seconds
    os.utime(path, (then, then))


def test_stale_temporaries_of_the_same_target_are_removed_and_nothing_else(tmp_path):
    stale = tmp_path / ".model.pt.tmp-killed.pt"  # left by a SIGKILL during a checkpoint write
    fresh = tmp_path / ".model.pt.tmp-running.pt"  # another writer, still at work
    other = tmp_path / ".checkpoint.pt.tmp-killed.pt"  # another target's leftover
    mine = tmp_path / "model.pt.tmp-notes"  # not hidden: not ours
    for path in (stale, fresh, other, mine):
        path.write_bytes(b"x")
    for path in (stale, other, mine):
        _age(path, STALE_FILE_S + 60)
    with atomic_path(tmp_path / "model.pt", ".pt") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
    names = sorted(os.listdir(tmp_path))
    assert names == sorted([fresh.name, other.name, mine.name, "model.pt"])

    stale_folder = tmp_path / ".out.tmp-killed"  # a denoise staging folder after SIGKILL
    (stale_folder / "series").mkdir(parents=True)
    _age(stale_folder, STALE_FOLDER_S + 60)
    made = staging_dir(tmp_path / "out")
    assert not stale_folder.exists() and os.path.isdir(made)


def test_sigterm_during_denoise_leaves_no_staging_folder(tmp_path):
    """The CLI turns SIGTERM into a clean exit: the staging folder of the interrupted run is removed."""
    import subprocess
    import sys

    import nibabel as nib
    import numpy as np
    import torch

    from conftest import BUNDLE_ROOT
    from scripts.model.networks import ISCLDenoiser

    low = tmp_path / "low.nii"
    volume = np.zeros((64, 64, 2), np.float32)
    volume[:4] = -1000.0  # air: a CT without air is refused as not HU
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(low))
    model = tmp_path / "model.pt"
    torch.save(ISCLDenoiser().state_dict(), str(model))
    out = tmp_path / "results" / "out"
    script = f"""
import os, signal, sys, time
sys.path.insert(0, {BUNDLE_ROOT!r})
import scripts.tasks.pipeline as pipeline
def killed_midway(*args, **kwargs):  # SIGTERM arrives while the first volume is being denoised
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
pipeline.DenoisePipeline.denoise = killed_midway
from scripts import cli
cli.main(["denoise", {str(low)!r}, {str(out)!r}, "--model_path", {str(model)!r}, "--device", "cpu"])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 143, result.stderr
    assert os.listdir(tmp_path / "results") == []  # no staging folder, no partial output
