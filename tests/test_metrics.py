import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from scripts.core.metrics import (
    describe,
    find_flat_roi,
    flat_roi_stats,
    nps_2d,
    radial_nps,
    roi_mask,
    windowed_metrics,
    windowed_psnr,
    windowed_ssim,
)


def _slice(seed=0, n=64):
    """A smooth 'anatomy' between about -100 and 200 HU."""
    g = np.random.default_rng(seed)
    return 50.0 + 150.0 * ndimage.gaussian_filter(g.standard_normal((n, n)), 3) / 0.1


def test_psnr_constant_error_hand_computed():
    ref = np.full((32, 32), 40.0)
    pred = ref + 40.0
    # abdomen window [-160, 240]: width 400, error 40 HU -> 0.1 in [0, 1] -> mse 0.01 -> 20 dB
    assert windowed_psnr(pred, ref, "abdomen") == pytest.approx(20.0, abs=1e-9)
    # chest window [-400, 1000]: width 1400 -> 20 log10(1400 / 40)
    assert windowed_psnr(pred, ref, "chest") == pytest.approx(20 * math.log10(1400 / 40), abs=1e-9)
    # explicit (low, high) window
    assert windowed_psnr(pred, ref, (0.0, 400.0)) == pytest.approx(20.0, abs=1e-9)


def test_psnr_half_of_pixels_wrong():
    ref = np.zeros((16, 16))
    pred = ref.copy()
    pred[:8] = 80.0  # 0.2 in the abdomen window on half the pixels: mse = 0.02
    assert windowed_psnr(pred, ref, "abdomen") == pytest.approx(-10 * math.log10(0.02), abs=1e-9)


def test_perfect_prediction():
    ref = _slice()
    assert windowed_psnr(ref, ref.copy(), "abdomen") == math.inf
    assert windowed_ssim(ref, ref.copy(), "abdomen") == pytest.approx(1.0, abs=1e-9)


def test_window_clipping():
    ref = _slice()
    pred = ref.copy()
    bone = ref > 150
    assert bone.any() and (~bone).any()
    ref2, pred2 = ref.copy(), pred.copy()
    ref2[bone], pred2[bone] = 500.0, 900.0  # differ only above the abdomen window
    assert windowed_psnr(pred2, ref2, "abdomen") == math.inf
    assert windowed_ssim(pred2, ref2, "abdomen") == pytest.approx(1.0, abs=1e-9)
    assert windowed_psnr(pred2, ref2, "chest") < 40.0  # inside the chest window they differ
    assert windowed_ssim(pred2, ref2, "chest") < 0.999


def _reference_ssim(x, y, sigma=1.5, radius=5, c1=0.01**2, c2=0.03**2):
    """SSIM from its definition (Wang et al. 2004), Gaussian weights, valid region only."""
    f = lambda im: ndimage.gaussian_filter(im, sigma, truncate=radius / sigma)  # noqa: E731
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s[radius:-radius, radius:-radius].mean()


def test_ssim_matches_its_definition():
    ref = _slice(1)
    noisy = ref + np.random.default_rng(2).normal(0, 30, ref.shape)
    ours = windowed_ssim(noisy, ref, "abdomen")
    a = np.clip((noisy + 160) / 400, 0, 1)
    b = np.clip((ref + 160) / 400, 0, 1)
    assert 0.0 < ours < 0.99
    assert ours == pytest.approx(_reference_ssim(a, b), abs=1e-6)
    # more noise -> lower SSIM
    noisier = ref + np.random.default_rng(2).normal(0, 60, ref.shape)
    assert windowed_ssim(noisier, ref, "abdomen") < ours


def test_torch_inputs_and_channel_dims():
    ref = _slice()
    pred = ref + 40.0
    p_t = torch.from_numpy(pred).float()[None]  # (1, H, W)
    r_t = torch.from_numpy(ref).float()[None]
    assert windowed_psnr(p_t, r_t, "abdomen") == pytest.approx(windowed_psnr(pred, ref, "abdomen"), abs=1e-3)
    with pytest.raises(ValueError):
        windowed_psnr(pred, ref[:-1], "abdomen")


def test_describe_states_window_and_range():
    s = describe("abdomen")
    assert "abdomen" in s and "[-160, 240] HU" in s and "data range 1" in s
    assert "[-1350, 150] HU" in describe("chest_ldct")
    assert "[0, 100] HU" in describe((0, 100))


def test_windowed_metrics_dict():
    ref = _slice()
    out = windowed_metrics(ref + 40.0, ref, windows=("abdomen", "chest"), roi=(32, 32, 5))
    assert set(out) == {"psnr[abdomen]", "ssim[abdomen]", "psnr[chest]", "ssim[chest]", "noise_std_hu", "bias_hu"}
    assert out["bias_hu"] == pytest.approx(40.0)


def test_flat_roi_stats_known_values():
    ref = np.zeros((5, 5))
    pred = np.zeros((5, 5))
    mask = np.zeros((5, 5), bool)
    mask[1, 1:5] = True
    pred[1, 1:5] = [1.0, 2.0, 3.0, 4.0]
    std, bias = flat_roi_stats(pred, ref, mask)
    assert std == pytest.approx(np.sqrt(5.0 / 3.0))  # sample std of 1..4
    assert bias == pytest.approx(2.5)
    # bias is measured against the reference
    std2, bias2 = flat_roi_stats(pred, ref + 10.0, mask)
    assert std2 == pytest.approx(std) and bias2 == pytest.approx(-7.5)


def test_disc_roi_equals_mask():
    g = np.random.default_rng(0)
    pred, ref = g.normal(40, 20, (32, 32)), np.full((32, 32), 40.0)
    disc = roi_mask(pred.shape, (10, 12, 4))
    assert disc.sum() == 49  # lattice points with i^2 + j^2 <= 16
    assert disc[10, 12] and disc[14, 12] and not disc[15, 12] and not disc[13, 15]
    assert flat_roi_stats(pred, ref, (10, 12, 4)) == flat_roi_stats(pred, ref, disc)


def test_find_flat_roi_finds_the_flat_patch():
    g = np.random.default_rng(0)
    img = 40.0 + g.normal(0, 20, (64, 64))
    img[40:56, 8:24] = 45.0  # flat patch
    img[:, 60:] = -1000.0  # air: out of the soft-tissue range
    row, col, r = find_flat_roi(img, radius=5)
    assert r == 5 and 45 <= row <= 50 and 13 <= col <= 18


def test_nps_white_noise_parseval_and_flat():
    g = np.random.default_rng(0)
    sigma, px = 10.0, 0.5
    stack = g.normal(0.0, sigma, (16, 64, 64))
    fy, fx, nps = nps_2d(stack, px)
    dfy, dfx = fy[1] - fy[0], fx[1] - fx[0]
    var = np.mean([r.var() for r in stack])  # mean-subtracted, ddof=0
    assert nps.sum() * dfy * dfx == pytest.approx(var, rel=1e-10)  # Parseval
    assert abs(fx).max() == pytest.approx(1.0 / (2 * px))  # Nyquist in 1/mm
    f, rad = radial_nps(stack, px)
    assert f[0] == 0.0 and f[-1] == pytest.approx(1.0 / (2 * px))
    expected = sigma**2 * px * px  # white noise: NPS = sigma^2 dx dy
    assert np.mean(rad[1:]) == pytest.approx(expected, rel=0.05)
    assert np.std(rad[3:]) / np.mean(rad[3:]) < 0.1  # flat


def test_nps_of_correlated_noise_is_low_pass():
    g = np.random.default_rng(1)
    stack = np.stack([ndimage.gaussian_filter(g.normal(0, 10, (64, 64)), 1.5, mode="wrap") for _ in range(8)])
    fy, fx, nps = nps_2d(stack, (1.0, 1.0))
    assert nps.sum() * (fy[1] - fy[0]) * (fx[1] - fx[0]) == pytest.approx(np.mean(stack.var(axis=(1, 2))), rel=1e-10)
    f, rad = radial_nps(stack, 1.0)
    low, high = rad[(f > 0) & (f < 0.05)].mean(), rad[f > 0.3].mean()
    assert low > 50 * high
