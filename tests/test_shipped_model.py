"""The shipped weights (bundle/models/model.pt) denoise: held-out simulated patients and real CT slices.

Real CT: pydicom-data's abdominal slice (the demo's sample) and pydicom's CT_small.dcm (a 128 x 128
spine crop at 0.66 mm), each given the project's simulated low dose at the default I0. How the file
was trained and the figures it reaches: docs/README.md, "Shipped weights".
"""

import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import BUNDLE_ROOT
from scripts.tasks.demo import measure, sample_path
from scripts.volumes.volume_io import read_slice_hu
from scripts.tasks.inference import denoise_volume, load_denoiser
from scripts.core.metrics import windowed_psnr, windowed_ssim
from scripts.datasets.low_dose import DEFAULT_I0, simulate_low_dose
from scripts.datasets.simulate import simulated_patient

MODEL = os.path.join(BUNDLE_ROOT, "models", "model.pt")
SIMULATED_GAIN_DB = 4.0  # the bar; measured + 4.92 dB here (27.23 -> 32.15), + 4.11 on the validation slices
NOISE_REDUCTION, MAX_BIAS_HU = 0.40, 10.0  # the bar for real CT
# minimum PSNR gain against the full dose: CT_small's "full dose" carries 22 HU of its own noise and
# streaks in its flattest ROI, which the model removes too (model(full dose) scores 26.5 dB against
# it), so PSNR cannot show denoising there and only noise and bias are checked
REAL_CT_PSNR_GAIN_DB = {"pydicom-data abdomen": 3.0, "CT_small": None}  # measured + 3.53 dB / (- 4.32 dB)


@pytest.fixture(scope="module")
def denoiser():
    return load_denoiser(MODEL, device="cpu")


def denoise(low_hu, network):
    return np.asarray(denoise_volume(np.asarray(low_hu, np.float32)[None], network, progress=False))[0]


def test_held_out_simulated_patients(denoiser):
    """The default data set's two test patients (never seen in training), 8 slices, abdomen window."""
    low_psnr, out_psnr, low_ssim, out_ssim = [], [], [], []
    for index in range(2):
        full, low = simulated_patient("test", index)
        for low_slice, full_slice in zip(low, full):
            out = denoise(low_slice, denoiser)
            low_psnr.append(windowed_psnr(low_slice, full_slice))
            out_psnr.append(windowed_psnr(out, full_slice))
            low_ssim.append(windowed_ssim(low_slice, full_slice))
            out_ssim.append(windowed_ssim(out, full_slice))
    gain = np.mean(out_psnr) - np.mean(low_psnr)
    assert gain >= SIMULATED_GAIN_DB, (np.mean(low_psnr), np.mean(out_psnr))
    assert np.mean(out_ssim) > np.mean(low_ssim) + 0.03


@pytest.mark.parametrize("name", ["pydicom-data abdomen", "CT_small"])
def test_real_ct_slice_with_simulated_low_dose(denoiser, name):
    path = sample_path() if name == "pydicom-data abdomen" else get_testdata_file("CT_small.dcm")
    full = read_slice_hu(path).astype(np.float64)
    pixel_mm = float(pydicom.dcmread(path, stop_before_pixels=True).PixelSpacing[0])
    low = simulate_low_dose(full, i0=DEFAULT_I0, pixel_size_mm=pixel_mm, rng=0)
    figures = measure(low, denoise(low, denoiser), full)
    low_fig, out_fig = figures["low_dose"], figures["denoised"]
    assert out_fig["noise_hu"] <= (1.0 - NOISE_REDUCTION) * low_fig["noise_hu"], figures
    assert abs(out_fig["bias_hu"]) <= MAX_BIAS_HU, figures
    if REAL_CT_PSNR_GAIN_DB[name] is not None:
        assert out_fig["psnr"] >= low_fig["psnr"] + REAL_CT_PSNR_GAIN_DB[name], figures
