"""The benchmark's baselines: reference networks, blind-spot masking, baseline training, BM3D."""

import numpy as np
import pytest
import torch

from benchmark.baseline_networks import DnCNN, REDCNN
from benchmark.baseline_training import train_baseline
from benchmark.blind_spot import masked_mse, noise2self_mask, noise2void_mask
from benchmark.bm3d import bm3d_denoise, calibration_psd, estimate_noise_std, slice_psd


@pytest.mark.parametrize("network", [DnCNN(depth=5, features=8), REDCNN(features=8)])
def test_reference_networks_keep_the_shape(network):
    x = torch.randn(2, 1, 40, 36)
    assert network(x).shape == x.shape


def test_dncnn_predicts_the_noise_and_returns_the_image_minus_it():
    network = DnCNN(depth=3, features=4)
    torch.nn.init.zeros_(network.noise[-1].weight)
    torch.nn.init.zeros_(network.noise[-1].bias)
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(network.eval()(x), x)  # zero noise estimate: the image itself


def test_noise2void_masks_one_pixel_per_box_with_a_neighbour_value():
    x = torch.arange(2 * 32 * 32, dtype=torch.float32).view(2, 1, 32, 32)  # every value unique
    masked, mask = noise2void_mask(x, box=8, radius=2, generator=torch.Generator().manual_seed(3))
    assert mask.shape == x.shape and mask.sum() == 2 * 16  # 4 x 4 boxes per image
    for n in range(2):
        boxes = mask[n, 0].view(4, 8, 4, 8).sum(dim=(1, 3))
        assert torch.equal(boxes, torch.ones(4, 4, dtype=boxes.dtype))
    assert torch.equal(masked[~mask], x[~mask])
    for n, _, row, col in mask.nonzero().tolist():
        source = (x[n, 0] == masked[n, 0, row, col]).nonzero()[0].tolist()
        assert (source[0], source[1]) != (row, col) and max(abs(source[0] - row), abs(source[1] - col)) <= 2


def test_noise2self_replaces_one_grid_phase_by_the_mean_of_four_neighbours():
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    masked, mask = noise2self_mask(x, grid=4, generator=torch.Generator().manual_seed(1))
    assert mask.sum() == 16 and torch.equal(masked[~mask], x[~mask])
    _, _, row, col = next(p for p in mask.nonzero().tolist() if 0 < p[2] < 15 and 0 < p[3] < 15)
    expected = (x[0, 0, row - 1, col] + x[0, 0, row + 1, col] + x[0, 0, row, col - 1] + x[0, 0, row, col + 1]) / 4
    torch.testing.assert_close(masked[0, 0, row, col], expected)
    assert masked_mse(masked, x, ~mask) == 0


def _toy_pairs(seed=0, n=3, size=40, sigma=0.1):
    rng = np.random.default_rng(seed)
    clean = [np.tile(0.3 * np.sin(np.arange(size) / 4.0 + k), (size, 1)).astype(np.float32) for k in range(n)]
    return [(c + sigma * rng.standard_normal(c.shape).astype(np.float32), c) for c in clean]


@pytest.mark.parametrize("masking", [None, noise2void_mask])
def test_baseline_training_learns_to_denoise(masking):
    pairs = _toy_pairs()
    inputs = pairs if masking is None else [(x, x) for x, _ in pairs]  # blind spot: noisy images only
    network = train_baseline(DnCNN(depth=5, features=16), inputs, iterations=150, batch_size=8, patch_size=32,
                             masking=masking, progress=False, seed=0)
    noisy, clean = _toy_pairs(seed=9)[0]
    with torch.no_grad():
        denoised = network(torch.from_numpy(noisy)[None, None])[0, 0].numpy()
    assert not network.training
    assert np.abs(denoised - clean).mean() < 0.7 * np.abs(noisy - clean).mean()


def test_noise_std_is_estimated_from_flat_soft_tissue():
    rng = np.random.default_rng(0)
    flat = 40.0 + 20.0 * rng.standard_normal((136, 136))
    assert estimate_noise_std(flat) == pytest.approx(20.0, rel=0.05)
    with_bone = flat.copy()
    with_bone[:, :68] += 700.0  # half the slice is bone: only the soft-tissue squares count
    assert estimate_noise_std(with_bone) == pytest.approx(20.0, rel=0.05)
    with pytest.raises(ValueError, match="no 5x5 soft-tissue square"):
        estimate_noise_std(np.full((64, 64), -1000.0))


def test_calibration_psd_has_bm3ds_scale_and_a_ct_shape():
    psd = calibration_psd((64, 64), pixel_size_mm=3.0, noise_std_hu=25.0, draws=2)
    assert psd.shape == (64, 64)
    assert psd.mean() == pytest.approx((25.0 / 1000.0) ** 2 * 64 * 64)  # variance 25^2 HU^2 in HU/1000 units
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(64) * 64, np.fft.fftfreq(64) * 64, indexing="ij"))
    low, middle = psd[(radius > 0) & (radius <= 2)].mean(), psd[(radius > 12) & (radius <= 20)].mean()
    assert low < 0.5 * middle  # the ramp filter of back projection: little power at low frequencies


def test_slice_psd_measures_the_noise_colour_from_flat_squares():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(2)
    white = rng.standard_normal((136, 136))
    blurred = gaussian_filter(white, 1.5)  # low-pass correlated noise of known spectrum
    soft = 40.0 + 20.0 * blurred / blurred.std()
    psd = slice_psd(soft, noise_std_hu=20.0)
    assert psd.shape == soft.shape and (psd > 0).all()
    assert psd.mean() == pytest.approx((20.0 / 1000.0) ** 2 * soft.size)  # the level BM3D expects
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(136), np.fft.fftfreq(136), indexing="ij"))
    expected = np.exp(-(2 * np.pi * 1.5 * frequency) ** 2)  # |Gaussian transfer function|^2
    assert np.corrcoef(psd.ravel(), expected.ravel())[0, 1] > 0.8
    # small squares lose some of the lowest frequencies, but the colour is there: measured 8.8x / 0.16x
    assert psd[frequency < 0.05].mean() > 5.0 * psd.mean() and psd[frequency > 0.25].mean() < 0.3 * psd.mean()
    flat = slice_psd(40.0 + 20.0 * white, noise_std_hu=20.0)  # white noise: a flat spectrum
    assert flat.std() < 0.2 * flat.mean()


def test_bm3d_lowers_the_noise_and_keeps_the_edge():
    rng = np.random.default_rng(1)
    clean = np.where(np.arange(64)[None, :] < 32, 0.0, 100.0) * np.ones((64, 1))
    noisy = clean + 20.0 * rng.standard_normal(clean.shape)
    denoised = bm3d_denoise(noisy)
    assert denoised.dtype == np.float32 and denoised.shape == clean.shape
    assert np.abs(denoised - clean).mean() < 0.4 * np.abs(noisy - clean).mean()
