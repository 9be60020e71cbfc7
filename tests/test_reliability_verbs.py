"""Hostile input for training, evaluation and prepare_mayo, through `cli.py` and `python -m monai.bundle
run`, as subprocesses: each probe must end with exactly one `error:` line naming the file or value, no
traceback, a non-zero exit, nothing written and the inputs unchanged (tests/test_reliability.py does
the same for denoising)."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BUNDLE_ROOT
from scripts.model.networks import ISCLDenoiser
from test_reliability import checksums

CLI = os.path.join(BUNDLE_ROOT, "scripts", "cli.py")
CONFIGS = os.path.join(BUNDLE_ROOT, "configs")
TRAIN = os.path.join(CONFIGS, "train.json")
EVALUATE = str([TRAIN, os.path.join(CONFIGS, "evaluate.json")])


def _volume(path, nan=False, size=64, z0=0.0):
    hu = np.random.default_rng(0).normal(40.0, 30.0, (size, size, 2)).astype(np.float32)
    if nan:
        hu[5, 6, 1] = np.nan
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[2, 3] = z0
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return str(path)


@pytest.fixture()
def inputs(tmp_path):
    """A tiny valid datalist (NIfTI volumes), a model and a few broken variants, in ``tmp_path/inputs``."""
    root = tmp_path / "inputs"
    root.mkdir()
    good = {"training_clean": [{"image": _volume(root / "clean.nii")}],
            "training_noisy": [{"image": _volume(root / "noisy.nii")}],
            "validation": [{"image": _volume(root / "val_low.nii"), "label": _volume(root / "val_full.nii")}]}
    good["test"] = good["validation"]
    variants = {
        "good": good,
        "shifted_pair": {**good, "validation": [{"image": _volume(root / "val_low.nii"),
                                                 "label": _volume(root / "val_up.nii", z0=9.0)}]},
        "mismatched_pair": {**good, "validation": [{"image": _volume(root / "val_low.nii"),
                                                    "label": _volume(root / "val_72.nii", size=72)}]},
        "no_clean": {**good, "training_clean": []},
        "nan": {**good, "training_noisy": [{"image": _volume(root / "nan.nii", nan=True)}]},
    }
    for name, content in variants.items():
        (root / f"{name}.json").write_text(json.dumps(content))
    (root / "list.json").write_text(json.dumps([good]))
    torch.save(ISCLDenoiser().state_dict(), str(root / "model.pt"))
    (root / "truncated.pt").write_bytes((root / "model.pt").read_bytes()[:5000])
    (root / "a_file").write_text("not a folder\n")
    (root / "mayo_empty").mkdir()
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("keep me\n")
    return root


def training(*args):
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN,
            "--num_iterations", "2", "--epoch_length", "1", "--batch_size", "2", *args]


def evaluating(*args):
    return [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", EVALUATE, "--progress", "false",
            *args]


def cli(*args):
    return [sys.executable, CLI, *args]


PROBES = {  # name: (command with {in} and {out}, expected part of the one error line)
    "train_list_datalist": (training("--datalist", "{in}/list.json", "--output_dir", "{out}"), "list.json: a datalist must be a JSON object"),
    "train_empty_pool": (training("--datalist", "{in}/no_clean.json", "--output_dir", "{out}"), "'training_clean' is empty or missing"),
    "train_nan_volume": (training("--datalist", "{in}/nan.json", "--output_dir", "{out}"), "nan.nii slice 1: contains NaN or Inf"),
    "train_patch_too_big": (training("--datalist", "{in}/good.json", "--output_dir", "{out}", "--patch_size", "128"),
                            "smaller than the 128x128"),
    "train_resume_missing": (training("--datalist", "{in}/good.json", "--output_dir", "{out}", "--resume", "{in}/none.pt"),
                             "none.pt: no such checkpoint file"),
    "train_resume_truncated": (training("--datalist", "{in}/good.json", "--output_dir", "{out}", "--resume",
                                        "{in}/truncated.pt"), "truncated.pt: not a readable checkpoint"),
    "train_unknown_override": (training("--datalist", "{in}/good.json", "--output_dir", "{out}", "--lr", "abc"),
                               "--lr: no setting of that name in"),
    "train_bad_learning_rate": (training("--datalist", "{in}/good.json", "--output_dir", "{out}", "--learning_rate",
                                         "abc"), "learning_rate: expected a number, got 'abc'"),
    "train_bad_swa_fraction": (training("--datalist", "{in}/good.json", "--output_dir", "{out}",
                                        "--swa_start_fraction", "5"), "swa_start_fraction: must be between 0 and 1"),
    "evaluate_unknown_override": (evaluating("--datalist", "{in}/good.json", "--output_dir", "{out}", "--hu_ragne",
                                             "[-400,1000]"), "--hu_ragne: no setting of that name"),
    "train_resume_a_model_file": (training("--datalist", "{in}/good.json", "--output_dir", "{out}", "--resume",
                                           "{in}/model.pt"), "model.pt: does not fit --resume: denoiser: no denoiser entry"),
    "train_model_path_is_a_folder": (training("--datalist", "{in}/good.json", "--output_dir", "{out}", "--model_path",
                                              "{in}"), "is a folder; model_path must name a file"),
    "train_validation_pair_sizes": (training("--datalist", "{in}/mismatched_pair.json", "--output_dir", "{out}"),
                                    "val_72.nii slice 0: 72x72 pixels, but its pair"),
    "train_validation_pair_grids": (training("--datalist", "{in}/shifted_pair.json", "--output_dir", "{out}"),
                                    "the validation pair's voxel grids differ by up to 9 mm"),
    "cli_denoise_model_path_without_value": (cli("denoise", "{in}/clean.nii", "{out}", "--model_path"),
                                             "--model_path: needs a value"),
    "cli_denoise_meta_device": (cli("denoise", "{in}/clean.nii", "{out}", "--device", "meta"),
                                "device 'meta': this bundle runs on cpu or cuda"),
    "cli_denoise_huge_tile": (cli("denoise", "{in}/clean.nii", "{out}", "--mode", "tiled", "--tile_size", "100000",
                                  "--model_path", "{in}/model.pt"), "tile_size=100000: expected an integer from 8"),
    "cli_evaluate_negative_figures": (cli("evaluate", "--datalist", "{in}/good.json", "--out", "{out}", "--max_figures",
                                          "-1"), "--max_figures: must be at least 0, got -1"),
    "cli_simulate_tiny": (cli("simulate", "{out}", "--size", "4"), "--size: must be at least 64, got 4"),
    "cli_prepare_mayo_bad_seed": (cli("prepare_mayo", "--root", "{in}/mayo_empty", "--out", "{out}/d.json", "--seed",
                                      "abc"), "--seed: expected an integer, got 'abc'"),
    "evaluate_missing_datalist": (evaluating("--datalist", "{in}/none.json", "--output_dir", "{out}"),
                                  "none.json: datalist file not found"),
    "evaluate_list_datalist": (evaluating("--datalist", "{in}/list.json", "--output_dir", "{out}"),
                               "list.json: a datalist must be a JSON object"),
    "evaluate_missing_model": (evaluating("--datalist", "{in}/good.json", "--output_dir", "{out}", "--model_path",
                                          "{in}/none.pt"), "none.pt: model file not found"),
    "evaluate_truncated_model": (evaluating("--datalist", "{in}/good.json", "--output_dir", "{out}", "--model_path",
                                            "{in}/truncated.pt"), "truncated.pt: not an ISCL network_def state dict"),
    "cli_evaluate_output_is_a_file": (cli("evaluate", "--datalist", "{in}/good.json", "--out", "{in}/a_file",
                                          "--model_path", "{in}/model.pt"), "a_file: exists and is not a folder"),
    "cli_evaluate_foreign_folder": (cli("evaluate", "--datalist", "{in}/good.json", "--out", "{in}/foreign",
                                        "--model_path", "{in}/model.pt"), "foreign: exists, is not empty and is not an evaluation report"),
    "cli_evaluate_bad_gamma": (cli("evaluate", "--datalist", "{in}/good.json", "--out", "{out}", "--gamma", "abc"),
                               "--gamma: expected a number"),
    "cli_prepare_mayo_missing_root": (cli("prepare_mayo", "--root", "{in}/none", "--out", "{out}/d.json"),
                                      "none: dataset root does not exist"),
    "cli_prepare_mayo_no_layout": (cli("prepare_mayo", "--root", "{in}/mayo_empty", "--out", "{out}/d.json"), "mayo_empty"),
    "cli_prepare_mayo_bad_region": (cli("prepare_mayo", "--root", "{in}/mayo_empty", "--out", "{out}/d.json",
                                        "--region", "lung"), "region='lung'"),
}


@pytest.mark.parametrize("name", sorted(PROBES))
def test_probe_is_one_clean_error(name, inputs, tmp_path):
    command, expected = PROBES[name]
    results = tmp_path / "results"
    results.mkdir()
    before = checksums(inputs)
    args = [a.format(**{"in": inputs, "out": results / "out"}) for a in command]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and expected in lines[0], result.stderr[-3000:]
    assert checksums(inputs) == before  # inputs never modified
    assert os.listdir(results) == []  # nothing written, no staging leftovers
    assert sorted(os.listdir(tmp_path)) == ["inputs", "results"]
