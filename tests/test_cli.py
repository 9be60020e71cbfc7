"""cli.py: options are checked before any work; a bad value names its option (one `error:` line, exit 2)."""

import os

import nibabel as nib
import numpy as np
import pytest

from scripts import cli


def _cli(args, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    return info.value.code, capsys.readouterr().err


@pytest.fixture
def ct_nifti(tmp_path):
    path = tmp_path / "low.nii"
    volume = np.zeros((64, 64, 2), np.float32)
    volume[:4] = -1000.0  # air: a CT without air is refused as not HU
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))
    return str(path)


def test_misspelled_option_fails_before_anything_is_written(ct_nifti, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _cli(["denoise", ct_nifti, str(out), "--froce"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: denoise: unknown option --froce")
    assert "--force" in err  # the options it has are listed
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["low.nii"]


def test_unknown_option_with_value_and_dashes(tmp_path, capsys):
    code, err = _cli(["evaluate", "--datalist", "d.json", "--out", str(tmp_path / "r"), "--max-figure=2"], capsys)
    assert code == 2 and "unknown option --max_figure " in err
    assert not (tmp_path / "r").exists()


def test_known_options_pass_the_check():
    cli.check_options(["denoise", "in", "out", "--force", "--noamp", "--tile-size=128", "--gamma", "0.3"])
    cli.check_options(["simulate", "out", "--", "--help"])  # fire's own flags after "--"
    cli.check_options(["no_such_command", "--whatever"])  # fire reports the command itself
    cli.check_options([])


@pytest.mark.parametrize("args, option", [
    (["--gamma", "abc"], "--gamma: expected a number, got 'abc'"),
    (["--batch_size", "2.5"], "--batch_size: expected an integer, got 2.5"),
    (["--tile_size", "True"], "--tile_size: expected an integer, got True"),
])
def test_bad_value_names_its_option(ct_nifti, tmp_path, capsys, args, option):
    out = tmp_path / "out"
    code, err = _cli(["denoise", ct_nifti, str(out), *args], capsys)
    assert code == 2 and err == f"error: {option}\n"
    assert not out.exists()


def test_switches_read_true_or_false_words(ct_nifti, tmp_path, capsys):
    """fire hands `--overwrite false` over as the string "false": it must mean False, not a truthy string."""
    import torch

    from scripts.model.networks import ISCLDenoiser

    model = tmp_path / "model.pt"
    torch.save(ISCLDenoiser().state_dict(), model)
    out = tmp_path / "out"
    common = ["denoise", ct_nifti, str(out), "--model_path", str(model), "--device", "cpu"]
    cli.main(common)
    written = out / "low.nii"
    before = written.stat().st_mtime_ns
    code, err = _cli(common + ["--overwrite", "false"], capsys)
    assert code == 2 and "already exists" in err and written.stat().st_mtime_ns == before
    code, err = _cli(common + ["--overwrite", "true", "--amp", "maybe"], capsys)
    assert code == 2 and err.count("\n") == 1 and "amp must be true or false, got 'maybe'" in err
    cli.main(common + ["--overwrite", "yes"])
    assert written.stat().st_mtime_ns != before


def test_evaluate_without_a_datalist_scores_the_bundles_own_test_patients(tmp_path):
    """`cli.py evaluate --out X` alone evaluates the shipped weights on the simulated test split."""
    report = cli.evaluate(out=str(tmp_path / "report"), device="cpu", max_figures=0)
    text = open(report).read()
    assert os.path.join("cache", "simulated") in text and "split `test`" in text
    assert "Clean input: does the model leave it alone?" in text


def test_evaluate_needs_an_output_folder(capsys):
    code, err = _cli(["evaluate"], capsys)
    assert code == 2 and err == "error: --out: needs the folder to write the report to.\n"
