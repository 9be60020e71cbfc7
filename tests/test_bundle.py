"""End-to-end runs of bundle/configs/train.json on tiny simulated data: export, SWA, resume, bad input."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from scripts.model.model_facts import read_model_facts
from monai.bundle import ConfigParser, run
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import BUNDLE_ROOT

TRAIN_CONFIG = os.path.join(BUNDLE_ROOT, "configs", "train.json")
TINY_SIMULATION = {"n_clean": 2, "n_noisy": 2, "n_validation": 1, "n_test": 0, "size": 64,
                   "slices_per_patient": 2, "n_angles": 32, "progress": False}


@pytest.fixture(scope="module")
def simulated_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("simulated"))


def tiny_overrides(out_dir, simulated_dir, **extra):
    settings = {
        "output_dir": str(out_dir),
        "model_path": os.path.join(str(out_dir), "model.pt"),
        "dataset_dir": simulated_dir,
        "simulation": TINY_SIMULATION,
        "batch_size": 2,
        "num_iterations": 4,
        "epoch_length": 2,
    }
    settings.update(extra)
    return settings


def train(**overrides):
    run("training", config_file=TRAIN_CONFIG, logging_file=False, **overrides)


def assert_fails_with(message, **overrides):
    """MONAI wraps errors raised inside config expressions; the ValueError with the message is in the chain."""
    with pytest.raises(Exception) as info:
        train(**overrides)
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    assert any(isinstance(e, ValueError) and message in str(e) for e in chain), chain


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, simulated_dir):
    out = tmp_path_factory.mktemp("full_run")
    train(**tiny_overrides(out, simulated_dir))
    return out


def test_training_writes_model_checkpoint_and_tensorboard(full_run):
    out = full_run
    state = torch.load(out / "model.pt", weights_only=True)
    parser = ConfigParser()
    parser.read_config(TRAIN_CONFIG)
    network_def = parser.get_parsed_content("network_def")
    network_def.load_state_dict(state, strict=True)  # a plain state dict of network_def
    assert network_def.gamma == 0.5
    # the model says how to use it: gamma and the training window beside the weights
    assert read_model_facts(out / "model.pt") == {"gamma": 0.5, "hu_range": (-160.0, 240.0),
                                                  "source": str(out / "model.pt") + ".json"}

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    for key in ("trainer", "denoiser", "noise_generator", "noise_extractor", "noisy_discriminator",
                "clean_discriminator", "generators_optimizer", "discriminators_optimizer", "extractor_optimizer",
                "generators_lr_schedule", "swa"):
        assert key in checkpoint, key
    assert checkpoint["trainer"]["iteration"] == 4
    assert "slow_weights" in checkpoint["discriminators_optimizer"]  # Lookahead state travels with it

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("loss_d_noisy", "loss_cycle", "loss_bypass", "loss_noise", "lr/generators", "lr/extractor",
                "psnr_ensemble", "psnr_low_dose_input", "ssim_ensemble", "psnr_F", "ssim_F", "psnr_x_minus_H",
                "ssim_x_minus_H", "ssim_low_dose_input"):
        assert any(t.endswith(tag) for t in scalars), (tag, scalars)
    assert {"train", "validation"} <= set(events.Tags()["images"])
    lr = [e.value for e in events.Scalars("lr/generators")]
    assert lr[0] > lr[-1] > 0  # linear decay


def test_exported_denoiser_is_the_swa_average(full_run):
    out = full_run
    model = torch.load(out / "model.pt", weights_only=True)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    averaged = checkpoint["swa"]["denoiser"]
    assert averaged["n_averaged"].item() == 3  # iterations 2, 3, 4 of 4 (start at 60 %)
    name = "encoder.1.weight"  # the first conv of F
    assert torch.equal(model["denoiser." + name], averaged["module." + name])
    assert not torch.equal(model["denoiser." + name], checkpoint["denoiser"][name])  # live F differs


def test_resume_matches_uninterrupted_run(full_run, tmp_path, simulated_dir):
    out = full_run
    first = tmp_path / "first"
    # the same run, stopped after epoch 1 of 2 ...
    train(**tiny_overrides(first, simulated_dir), **{"train#trainer#max_epochs": 1})
    resumed = tmp_path / "resumed"
    # ... and continued from its checkpoint
    train(**tiny_overrides(resumed, simulated_dir, resume=str(first / "checkpoint.pt")))
    expected = torch.load(out / "model.pt", weights_only=True)
    got = torch.load(resumed / "model.pt", weights_only=True)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


KILLED_MID_CHECKPOINT = """
import json, os, signal, sys
import torch
sys.path.insert(0, {bundle!r})
real_save, writes = torch.save, []

def save_then_die_on_the_second_checkpoint(obj, path, *args, **kwargs):
    if os.path.basename(str(path)).startswith(".checkpoint.pt.tmp-"):
        writes.append(path)
        if len(writes) == 2:  # half a file on disk, then kill -9: no handler, no cleanup runs
            with open(path, "wb") as f:
                f.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *args, **kwargs)

torch.save = save_then_die_on_the_second_checkpoint
from monai.bundle import run
run("training", config_file={config!r}, logging_file=False, **json.loads({overrides!r}))
"""


def test_kill_9_mid_checkpoint_then_resume_matches_uninterrupted_run(full_run, tmp_path, simulated_dir):
    out = tmp_path / "killed"
    overrides = json.dumps(tiny_overrides(out, simulated_dir))
    script = KILLED_MID_CHECKPOINT.format(bundle=BUNDLE_ROOT, config=TRAIN_CONFIG, overrides=overrides)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, done.stderr[-2000:]

    # the last complete checkpoint survived (epoch 1 of 2); the half-written one is a hidden temporary
    assert torch.load(out / "checkpoint.pt", weights_only=False)["trainer"]["iteration"] == 2
    (leftover,) = glob.glob(str(out / ".checkpoint.pt.tmp-*"))
    two_hours_ago = os.path.getmtime(leftover) - 7200
    os.utime(leftover, (two_hours_ago, two_hours_ago))  # older than any write in progress could be

    train(**tiny_overrides(out, simulated_dir, resume=str(out / "checkpoint.pt")))
    expected = torch.load(full_run / "model.pt", weights_only=True)
    got = torch.load(out / "model.pt", weights_only=True)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert not glob.glob(str(out / ".*.tmp-*"))  # the resumed run removed the stale temporary


def test_sigterm_mid_checkpoint_removes_the_temporary_and_keeps_the_last_checkpoint(tmp_path, simulated_dir):
    """SIGTERM (e.g. a job scheduler) while a checkpoint is being written: exit status 143, the partial
    temporary removed on the way out, the previous complete checkpoint intact."""
    out = tmp_path / "terminated"
    overrides = json.dumps(tiny_overrides(out, simulated_dir))
    script = KILLED_MID_CHECKPOINT.format(bundle=BUNDLE_ROOT, config=TRAIN_CONFIG, overrides=overrides)
    script = script.replace("signal.SIGKILL", "signal.SIGTERM")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=False)["trainer"]["iteration"] == 2
    assert not glob.glob(str(out / ".*.tmp-*"))


def test_init_from_starts_a_new_run_from_a_checkpoints_networks(full_run, tmp_path, simulated_dir):
    """--init_from (fine-tuning): with vanishing learning rates the exported networks are the checkpoint's own."""
    checkpoint = torch.load(full_run / "checkpoint.pt", weights_only=False)
    out = tmp_path / "fine_tuned"
    train(**tiny_overrides(out, simulated_dir, init_from=str(full_run / "checkpoint.pt"), num_iterations=2,
                           learning_rate=1e-20, discriminator_learning_rate=1e-20, final_learning_rate=1e-21))
    model = torch.load(out / "model.pt", weights_only=True)
    for network in ("denoiser", "noise_extractor"):
        for name, weight in checkpoint[network].items():
            torch.testing.assert_close(model[f"{network}.{name}"], weight, rtol=0, atol=1e-12, msg=name)
    assert torch.load(out / "checkpoint.pt", weights_only=False)["trainer"]["iteration"] == 2  # its own schedule


@pytest.mark.parametrize(
    "override, message",
    [
        ({"components#bypas": False}, "bypas"),
        ({"patch_size": 66}, "patch_size=66"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"datalist": "/nonexistent/datalist.json"}, "/nonexistent/datalist.json"),
    ],
)
def test_bad_settings_stop_before_training(tmp_path, simulated_dir, override, message):
    assert_fails_with(message, **{**tiny_overrides(tmp_path, simulated_dir), **override})
    assert not os.path.exists(tmp_path / "model.pt")
    assert not os.path.exists(tmp_path / "checkpoint.pt")


def test_empty_pool_is_refused(tmp_path, simulated_dir):
    from scripts.datasets.simulate import make_simulated_dataset

    datalist = make_simulated_dataset(simulated_dir, **TINY_SIMULATION)  # the cached set the runs use
    datalist["training_clean"] = []
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    assert_fails_with("training_clean", **tiny_overrides(tmp_path, simulated_dir, datalist=str(path)))
    assert not os.path.exists(tmp_path / "model.pt")


def test_patch_larger_than_the_slices_is_refused_before_training(tmp_path, simulated_dir):
    assert_fails_with("64x64 pixels is smaller than the 128x128 the training patch needs",
                      **tiny_overrides(tmp_path, simulated_dir, patch_size=128))
    assert not glob.glob(str(tmp_path / "*.pt"))


def test_one_nan_voxel_in_a_training_volume_is_found_before_training(tmp_path, simulated_dir):
    import nibabel as nib
    import numpy as np
    from scripts.datasets.simulate import make_simulated_dataset

    datalist = make_simulated_dataset(simulated_dir, **TINY_SIMULATION)
    source = nib.load(datalist["training_noisy"][-1]["image"])
    volume = np.asarray(source.dataobj, dtype=np.float32).copy()
    volume[10, 20, 1] = np.nan  # one voxel of the last slice
    bad = tmp_path / "bad_low.nii"
    nib.save(nib.Nifti1Image(volume, source.affine), str(bad))
    datalist["training_noisy"][-1] = {"image": str(bad)}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    assert_fails_with(f"{bad} slice 1: contains NaN or Inf voxels",
                      **tiny_overrides(tmp_path, simulated_dir, datalist=str(path)))
    assert not glob.glob(str(tmp_path / "*.pt"))


def test_cli_exits_nonzero_with_the_message(tmp_path, simulated_dir):
    """The documented command, from another working directory, on an unknown ablation name."""
    settings = tiny_overrides(tmp_path, simulated_dir)
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN_CONFIG,
            "--components#boost", "false"]
    for key, value in settings.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, dict) else str(value)]
    result = subprocess.run(args, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--components#boost: no setting of that name" in result.stderr
    assert not glob.glob(str(tmp_path / "*.pt"))


def test_final_validation_states_the_gain_over_the_input(tmp_path, simulated_dir, caplog):
    with caplog.at_level("INFO", logger="iscl"):
        train(**tiny_overrides(tmp_path, simulated_dir, num_iterations=2))
    lines = [r.getMessage() for r in caplog.records if r.name == "iscl" and r.getMessage().startswith("validation ")]
    assert len(lines) == 6  # the last epoch's validation and the exported model's: ensemble, F, x - H(x) each
    assert lines[0].startswith("validation ensemble PSNR") and "gain" in lines[0] and "window [-160, 240] HU" in lines[0]


def test_paper_config_layers_on_train(tmp_path):
    parser = ConfigParser()
    parser.read_config([TRAIN_CONFIG, os.path.join(BUNDLE_ROOT, "configs", "train_paper.json")])
    assert parser["batch_size"] == 64 and parser["num_iterations"] == 8000
    assert parser["patch_size"] == 64 and parser["components"]["swa_lookahead"] is True
    assert parser.get_parsed_content("train#trainer#max_epochs", instantiate=False) is not None
    # the paper's method exactly: no identity start, BIN discriminators on separate batches, weights 1 / 30
    assert parser["generator_skip"] == 0.0 and parser["zero_init_extractor"] is False
    assert parser["discriminator_norm"] == "bin" and parser["discriminator_batch"] == "separate"
    losses = parser.get_parsed_content("losses")
    assert parser["discriminator_steps"] == 1 and losses.adversarial_weight == 1.0
    assert losses.cycle_weight == 30.0 and losses.cycle_weight_warmup == 0 and losses.fake_hinge == "code"
    assert losses.noisy_cycle_weight == 1.0 and losses.extractor_noisy_weight == 1.0
    assert losses.lowpass_weight == 0.0 and losses.identity_weight == 0.0
    assert parser.get_parsed_content("discriminator_learning_rate") == parser.get_parsed_content("learning_rate") == 1e-4
    assert parser.get_parsed_content("hu_range") == [-160.0, 240.0]  # the authors trained in the display window


def test_chest_config_layers_the_chest_window():
    parser = ConfigParser()
    parser.read_config([TRAIN_CONFIG, os.path.join(BUNDLE_ROOT, "configs", "train_chest.json")])
    assert parser.get_parsed_content("metric_window") == [-400.0, 1000.0]
    assert parser.get_parsed_content("hu_range") == [-400.0, 1000.0]


def test_torchscript_export_matches_eager_and_verifies(tmp_path):
    """`monai.bundle ckpt_export` / `verify_net_in_out` as documented (PYTHONPATH=bundle makes `scripts` importable)."""
    parser = ConfigParser()
    parser.read_config(TRAIN_CONFIG)
    torch.manual_seed(0)
    eager = parser.get_parsed_content("network_def").eval()
    ckpt = tmp_path / "model.pt"
    torch.save(eager.state_dict(), ckpt)
    configs = "['%s','%s']" % (TRAIN_CONFIG, os.path.join(BUNDLE_ROOT, "configs", "inference.json"))
    meta = os.path.join(BUNDLE_ROOT, "configs", "metadata.json")
    env = {**os.environ, "PYTHONPATH": BUNDLE_ROOT}
    export = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"),
              "--ckpt_file", str(ckpt), "--meta_file", meta, "--config_file", configs]
    result = subprocess.run(export, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    verify = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", meta,
              "--config_file", configs]
    result = subprocess.run(verify, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "verified with no error" in result.stdout + result.stderr, result.stderr[-2000:]

    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    x = torch.rand(1, 1, 512, 512) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(scripted(x), eager(x), atol=1e-5)


def test_bf16_autocast_and_channels_last_switches_train_end_to_end(tmp_path, simulated_dir):
    """--amp true (bfloat16 autocast, here on the CPU) and --channels_last true through the real config."""
    train(**tiny_overrides(tmp_path, simulated_dir, amp=True, channels_last=True))
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.isfinite(value).all() for value in weights.values())
    assert {value.dtype for value in weights.values() if value.is_floating_point()} == {torch.float32}


def test_command_line_true_and_false_are_booleans(tmp_path, simulated_dir):
    """`--components#bypass false` (as documented) reaches the config as the string "false": it must switch
    the component off, and a word that is no boolean must be refused with the setting's name."""
    parser = ConfigParser()
    parser.read_config(TRAIN_CONFIG)
    parser.update({"components#noise_extractor": "false", "components#swa_lookahead": "False",
                   "zero_init_extractor": "false"})
    assert parser.get_parsed_content("enabled_components") == {
        "bypass": True, "noise_extractor": False, "boosting": True, "swa_lookahead": False}
    assert parser.get_parsed_content("ensemble_gamma") == 1.0
    assert parser.get_parsed_content("swa").enabled is False
    assert parser.get_parsed_content("network_def").noise_extractor.layers[-1].weight.abs().sum() > 0
    assert_fails_with("channels_last must be true or false, got 'maybe'",
                      **tiny_overrides(tmp_path, simulated_dir, channels_last="maybe"))


def test_training_ends_with_a_summary_of_what_it_made(tmp_path, simulated_dir):
    """The last lines of a 2-iteration run: model, checkpoint and TensorBoard paths, the exported model's
    validation PSNR/SSIM."""
    settings = tiny_overrides(tmp_path, simulated_dir, num_iterations=2, epoch_length=1)
    args = [a for key, value in settings.items() for a in (f"--{key}", json.dumps(value) if isinstance(value, dict)
                                                            else str(value))]
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", TRAIN_CONFIG,
                             *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    tail = [line.split(" - INFO - ", 1)[-1] for line in (result.stdout + result.stderr).splitlines()
            if " - iscl - INFO - " in line][-7:]
    assert tail[0] == "training finished in " + tail[0].split("in ", 1)[1] and "(2 iterations)" in tail[0]
    assert tail[1].startswith(f"model:        {tmp_path / 'model.pt'}")
    assert tail[2].startswith(f"checkpoint:   {tmp_path / 'checkpoint.pt'}")
    assert tail[3].startswith(f"TensorBoard:  {tmp_path / 'tensorboard'}")
    assert tail[4].startswith("exported model on validation: ensemble PSNR ") and "SSIM" in tail[4]
    assert os.path.isfile(tmp_path / "model.pt") and os.path.isfile(tmp_path / "checkpoint.pt")
