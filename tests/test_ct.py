import numpy as np
import pytest
import torch

from scripts.core.ct import (
    HU_RANGE,
    OUTSIDE_WINDOW_MARGIN_HU,
    WINDOWS,
    apply_window,
    hu_to_unit,
    resolve_window,
    restore_outside_window,
    unit_to_hu,
    window_from_center_width,
)

WIDE = (-1024.0, 3072.0)


def test_default_range_is_the_abdomen_window():
    assert HU_RANGE == WINDOWS["abdomen"] == (-160.0, 240.0)
    assert hu_to_unit(-160.0) == -1.0
    assert hu_to_unit(240.0) == 1.0
    assert hu_to_unit(40.0) == 0.0  # midpoint of the window
    assert hu_to_unit(-1000.0) == -1.0 and hu_to_unit(1500.0) == 1.0  # clipped
    assert hu_to_unit(1024.0, WIDE) == 0.0


def _tissue_slice():
    """A 64x64 slice with air, fat, soft tissue and bone regions and 30 HU noise."""
    rng = np.random.default_rng(0)
    hu = np.full((64, 64), -1000.0)
    hu[8:56, 8:56] = -100.0  # fat
    hu[16:48, 16:48] = 40.0  # soft tissue
    hu[26:38, 26:38] = 900.0  # bone
    return hu + rng.normal(0.0, 30.0, hu.shape)


def test_restore_outside_window_keeps_bone_and_air_and_the_window_output():
    low_dose = _tissue_slice()
    denoised = np.clip(np.round(low_dose / 50.0) * 50.0, -160.0, 240.0)  # stand-in network output in the window
    out = restore_outside_window(denoised, low_dose, HU_RANGE)
    far = (low_dose < -160.0 - OUTSIDE_WINDOW_MARGIN_HU) | (low_dose > 240.0 + OUTSIDE_WINDOW_MARGIN_HU)
    inside = (low_dose >= -160.0) & (low_dose <= 240.0)
    assert far[:4].all() and far[30, 30]  # air and bone are far outside
    np.testing.assert_array_equal(out[far], low_dose[far])  # input HU exactly
    np.testing.assert_array_equal(out[inside], denoised[inside])  # fat and soft tissue: the network's output
    assert np.abs(out[30, 30] - low_dose[30, 30]) == 0 and out[30, 30] > 700  # bone keeps its HU


@pytest.mark.parametrize("edge, direction", [(-160.0, -1.0), (240.0, 1.0)])
def test_restore_outside_window_is_continuous_at_the_edges(edge, direction):
    """Input values crossing a window edge in 0.1 HU steps: no output step larger than the noise sigma
    (30 HU); the output moves from the network's edge value to the input HU."""
    low_dose = edge + direction * np.linspace(-50.0, 150.0, 2001)
    denoised = np.clip(low_dose, -160.0, 240.0)  # the network saw the clipped input
    out = restore_outside_window(denoised, low_dose, HU_RANGE)
    assert np.abs(np.diff(out)).max() < 0.5  # 0.1 HU input steps: nowhere near a 30 HU jump
    assert out[-1] == low_dose[-1]
    torch_out = restore_outside_window(torch.from_numpy(denoised), torch.from_numpy(low_dose), HU_RANGE)
    np.testing.assert_allclose(torch_out.numpy(), out)


def test_restore_outside_window_rejects_a_bad_margin():
    with pytest.raises(ValueError, match="margin"):
        restore_outside_window(np.zeros(2), np.zeros(2), HU_RANGE, margin=0.0)


def test_round_trip_is_exact_within_range_numpy():
    hu = np.linspace(-1024, 3072, 4097)
    back = unit_to_hu(hu_to_unit(hu, WIDE), WIDE)
    np.testing.assert_allclose(back, hu, rtol=0, atol=1e-9)
    u = np.linspace(-1, 1, 101)
    np.testing.assert_allclose(hu_to_unit(unit_to_hu(u)), u, atol=1e-12)


def test_round_trip_torch_and_dtype_kept():
    hu = torch.linspace(-1024, 3072, 1001, dtype=torch.float32)
    u = hu_to_unit(hu, WIDE)
    assert isinstance(u, torch.Tensor) and u.dtype == torch.float32
    assert torch.allclose(unit_to_hu(u, WIDE), hu, atol=1e-3)  # float32: ~1e-4 HU resolution at 3000 HU
    assert float(u.min()) == -1.0 and float(u.max()) == 1.0


def test_clipping_outside_range_and_no_clipping_in_inverse():
    hu = np.array([-3000.0, -1024.0, 5000.0])
    np.testing.assert_array_equal(hu_to_unit(hu, WIDE), [-1.0, -1.0, 1.0])
    np.testing.assert_array_equal(hu_to_unit(torch.tensor(hu), WIDE).numpy(), [-1.0, -1.0, 1.0])
    # the inverse extrapolates (a network output slightly beyond [-1, 1] is not hidden)
    assert unit_to_hu(1.5, WIDE) == pytest.approx(3072 + 0.5 * 2048)
    assert unit_to_hu(-2.0, WIDE) == pytest.approx(-1024 - 2048)


def test_custom_range():
    assert hu_to_unit(0.0, hu_range=(-1000, 1000)) == 0.0
    assert unit_to_hu(0.5, hu_range=(-1000, 1000)) == 500.0
    with pytest.raises(ValueError):
        hu_to_unit(0.0, hu_range=(100, 100))


def test_windows():
    assert WINDOWS["abdomen"] == (-160.0, 240.0)
    assert WINDOWS["chest"] == (-400.0, 1000.0)
    assert WINDOWS["abdomen_ldct"] == (-150.0, 250.0)
    assert WINDOWS["chest_ldct"] == (-1350.0, 150.0)
    assert WINDOWS["head_ldct"] == (0.0, 80.0)
    assert window_from_center_width(40, 80) == (0.0, 80.0)
    assert resolve_window((-10, 10)) == (-10.0, 10.0)
    with pytest.raises(KeyError):
        resolve_window("liver")
    with pytest.raises(ValueError):
        window_from_center_width(0, 0)


def test_apply_window():
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 2000.0])
    np.testing.assert_allclose(apply_window(hu, "abdomen"), [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(apply_window(torch.tensor(hu), (0, 80)).numpy(), [0, 0, 0.5, 1, 1])
