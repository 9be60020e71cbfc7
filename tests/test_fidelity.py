"""The clean-input checks: a denoiser that leaves its input alone passes them, one that adds texture or
moves edges is caught, and the evaluation report carries them."""

import numpy as np
import pytest

from scripts.tasks import fidelity
from scripts.datasets.phantom import phantom


def _identity(hu):
    return np.array(hu, dtype=np.float64)


def _adds_texture(hu):
    return hu + np.random.default_rng(1).normal(0.0, 10.0, np.shape(hu))


def _blurs(hu):
    from scipy import ndimage

    return np.stack([ndimage.gaussian_filter(s.astype(np.float64), 2.0) for s in hu])


@pytest.fixture(scope="module")
def full_dose():
    rng = np.random.default_rng(0)
    return np.stack([phantom(128, 3, 3.0, z_mm=z) + rng.normal(0, 8.0, (128, 128)) for z in (0, 6)])


def test_flat_rois_lie_in_soft_tissue_and_do_not_overlap(full_dose):
    rois = fidelity.flat_rois(full_dose[0], 4)
    assert len(rois) == fidelity.FLAT_ROIS_PER_SLICE
    for i, (r, c, radius) in enumerate(rois):
        disc = full_dose[0][r - radius:r + radius + 1, c - radius:c + radius + 1]
        assert np.all((disc >= -50) & (disc <= 150))
        for r2, c2, _ in rois[i + 1:]:
            assert max(abs(r - r2), abs(c - c2)) > 2 * radius


def test_the_identity_passes_and_texture_or_blur_is_caught(full_dose):
    same = fidelity.full_dose_fidelity(full_dose, _identity, 4)
    assert same["rois_rising"] == 0 and same["p99_change_body_hu"] == 0 and same["p99_change_edges_hu"] == 0
    rough = fidelity.full_dose_fidelity(full_dose, _adds_texture, 4)
    assert rough["rois_rising"] == rough["n_rois"] == 6 and rough["max_std_rise_hu"] > 2
    blurred = fidelity.full_dose_fidelity(full_dose, _blurs, 4)
    assert blurred["mean_std_out_hu"] < blurred["mean_std_in_hu"]  # blurring lowers the noise...
    assert blurred["p99_change_edges_hu"] > 50 and blurred["p99_change_edges_hu"] > blurred["p99_change_body_hu"]


def test_noise_free_inputs_show_added_texture():
    same = fidelity.noise_free_fidelity(_identity)
    assert set(same) == {"noise-free phantom", "disc, 4 HU white noise"}
    disc = same["disc, 4 HU white noise"]
    assert disc["flat_std_in_hu"] == pytest.approx(4.0, rel=0.1) and disc["p99_change_hu"] == 0
    rough = fidelity.noise_free_fidelity(_adds_texture)["disc, 4 HU white noise"]
    assert rough["flat_std_out_hu"] > 2 * rough["flat_std_in_hu"] and rough["p99_change_hu"] > 15
