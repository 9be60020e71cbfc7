"""The benchmark's baselines: reference networks, blind-spot masking, baseline training, BM3D, UIDNet."""

import numpy as np
import pytest
import torch

from benchmark.baseline_networks import DnCNN, REDCNN
from benchmark.baseline_training import train_baseline
from benchmark.blind_spot import masked_mse, noise2self_mask, noise2void_mask
from benchmark.bm3d import bm3d_denoise, calibration_psd, estimate_noise_std, slice_psd
from benchmark.uidnet import NoiseGenerator, SharpenedCritic, gradient_penalty, sharpen, train_uidnet


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


def test_uidnet_networks_keep_the_shape_and_the_critic_its_patch_size():
    clean = torch.rand(2, 1, 32, 32) * 2 - 1
    noise = NoiseGenerator(features=(4, 8, 16))(torch.rand_like(clean) * 2 - 1, clean)
    assert noise.shape == clean.shape and noise.abs().max() < 1  # tanh: window units
    critic = SharpenedCritic(32, features=(4, 8, 8, 8))
    assert critic(clean).shape == (2, 1)
    with pytest.raises(ValueError, match="multiple of 16"):
        SharpenedCritic(40)


def test_sharpening_adds_the_high_pass_beside_the_image():
    flat = torch.full((1, 1, 8, 8), 0.3)
    torch.testing.assert_close(sharpen(flat), torch.cat([flat, torch.zeros_like(flat)], dim=1))  # border included
    spike = torch.zeros(1, 1, 8, 8)
    spike[0, 0, 4, 4] = 9.0
    assert sharpen(spike)[0, 1, 4, 4] == pytest.approx(9.0 - 1.0)  # minus the 3x3 mean


def test_gradient_penalty_vanishes_for_a_critic_of_unit_slope_only():
    real, fake = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    direction = torch.randn(1, 1, 8, 8)
    for scale, expected in ((1.0, 0.0), (3.0, 4.0)):  # (||grad|| - 1)² with ||grad|| = scale
        weight = scale * direction / direction.norm()
        penalty = gradient_penalty(lambda x, w=weight: (x * w).sum(dim=(1, 2, 3)), real, fake)
        assert penalty.item() == pytest.approx(expected, abs=1e-5)


def test_uidnet_generated_noise_moves_towards_the_noisy_pools_in_a_short_run():
    rng = np.random.default_rng(0)
    pattern = [np.tile(0.3 * np.sin(np.arange(64) / 4.0 + k), (64, 1)).astype(np.float32) for k in range(8)]
    clean, noisy = pattern[:4], [p + 0.15 * rng.standard_normal(p.shape).astype(np.float32) for p in pattern[4:]]
    torch.manual_seed(0)
    generator = NoiseGenerator(features=(8, 16, 32))
    torch.nn.init.zeros_(generator.head[2].weight)  # start without noise: clean + G(z, clean) = clean

    def high_pass_std(images):
        return float(np.mean([(sharpen(torch.from_numpy(i)[None, None])[0, 1]).std().item() for i in images]))

    def generated_high_pass():
        batch = torch.from_numpy(np.stack(clean))[:, None]
        with torch.no_grad():
            return high_pass_std((batch + generator.eval()(torch.rand_like(batch) * 2 - 1, batch))[:, 0].numpy())

    before, target = generated_high_pass(), high_pass_std(noisy)
    denoiser, _ = train_uidnet(DnCNN(depth=3, features=8), clean, noisy, iterations=400, batch_size=8, patch_size=16,
                               seed=0, progress=False, generator=generator.train(),
                               critic=SharpenedCritic(16, features=(16, 32, 64, 128)))
    after = generated_high_pass()
    assert before < 0.02 < target  # the clean pool is smooth, the noisy one is not
    assert abs(after - target) < abs(before - target) and after > 2 * before, (before, after, target)
    assert not denoiser.training and all(torch.isfinite(p).all() for p in denoiser.parameters())
