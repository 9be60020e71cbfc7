"""The one-minute demo: a real CT slice (pydicom-data) with simulated low dose, through the bundle's inference entry."""

import os
import re
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import torch

from conftest import BUNDLE_ROOT, REPO_ROOT
from scripts.tasks.demo import measure, sample_path
from scripts.volumes.dicom_io import scan_series
from scripts.volumes.dicom_pixels import read_series_hu
from scripts.volumes.volume_io import read_slice_hu
from scripts.model.networks import ISCLDenoiser

CONFIGS = "['bundle/configs/inference.json','bundle/configs/demo.json']"
GAIN = re.compile(r"PSNR ([\d.]+) -> ([\d.]+) dB \(gain ([+-][\d.]+) dB\).*flat-ROI noise ([\d.]+) -> ([\d.]+) HU")


def run_demo(demo_dir, *options):
    command = [sys.executable, "-m", "monai.bundle", "run", "demo", "--config_file", CONFIGS,
               "--demo_dir", str(demo_dir), *options]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": BUNDLE_ROOT})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory):
    """x - H(x) with H's last layer zeroed: the denoised series must equal the low-dose one."""
    network = ISCLDenoiser(gamma=0.0)
    with torch.no_grad():
        network.noise_extractor.layers[-1].weight.zero_()
        network.noise_extractor.layers[-1].bias.zero_()
    path = tmp_path_factory.mktemp("demo_model") / "identity.pt"
    torch.save(network.state_dict(), path)
    return str(path)


def test_demo_writes_series_figure_and_a_measured_gain(identity_model, tmp_path):
    demo_dir = tmp_path / "demo"
    out = run_demo(demo_dir, "--model_path", identity_model, "--ensemble_gamma", "0.0")

    full, _ = read_series_hu(str(demo_dir / "full_dose"))
    low, _ = read_series_hu(str(demo_dir / "low_dose"))
    np.testing.assert_allclose(full[0], read_slice_hu(sample_path()), atol=0.5)  # the real slice, in HU
    assert 20.0 < np.std(low[0] - full[0]) < 200.0  # the simulated low dose is noisier than the full dose

    (denoised,) = scan_series(str(demo_dir / "denoised"))
    header = pydicom.dcmread(denoised.files[0], stop_before_pixels=True)
    assert header.Modality == "CT" and "DERIVED" in header.ImageType
    inside = (low >= -160.0) & (low <= 240.0)  # outside the window inference blends back to the input HU
    np.testing.assert_allclose(read_series_hu(denoised)[0][inside], low[inside], atol=0.5)  # identity network

    with open(demo_dir / "low_dose-denoised-full_dose.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    psnr_low, psnr_out, gain, noise_low, noise_out = map(float, GAIN.search(out).groups())
    assert abs(gain) < 0.01 and abs(psnr_out - psnr_low) < 0.01 and abs(noise_out - noise_low) < 1.0, out  # only clipped noise tails differ


def test_measure_sees_a_real_improvement():
    """The demo's figures are those of the metrics module: a third of the noise scores ~9.5 dB better."""
    full = read_slice_hu(sample_path()).astype(np.float64)
    noise = np.random.default_rng(0).normal(0.0, 30.0, full.shape)
    figures = measure(full + noise, full + noise / 3.0, full)
    assert 8.0 < figures["denoised"]["psnr"] - figures["low_dose"]["psnr"] < 10.0
    assert figures["denoised"]["ssim"] > figures["low_dose"]["ssim"]
    assert figures["denoised"]["noise_hu"] < 0.5 * figures["low_dose"]["noise_hu"]  # plus the ROI's own texture
    assert abs(figures["denoised"]["bias_hu"]) < 3.0
