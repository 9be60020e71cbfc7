import numpy as np
import pytest
import torch

from scripts.ct import HU_RANGE, WINDOWS, apply_window, hu_to_unit, resolve_window, unit_to_hu, window_from_center_width


def test_documented_range_maps_to_unit_interval():
    assert HU_RANGE == (-1024.0, 3072.0)
    assert hu_to_unit(-1024.0) == -1.0
    assert hu_to_unit(3072.0) == 1.0
    assert hu_to_unit(1024.0) == 0.0  # midpoint of the range
    assert hu_to_unit(0.0) == pytest.approx(-0.5)


def test_round_trip_is_exact_within_range_numpy():
    hu = np.linspace(-1024, 3072, 4097)
    back = unit_to_hu(hu_to_unit(hu))
    np.testing.assert_allclose(back, hu, rtol=0, atol=1e-9)
    u = np.linspace(-1, 1, 101)
    np.testing.assert_allclose(hu_to_unit(unit_to_hu(u)), u, atol=1e-12)


def test_round_trip_torch_and_dtype_kept():
    hu = torch.linspace(-1024, 3072, 1001, dtype=torch.float32)
    u = hu_to_unit(hu)
    assert isinstance(u, torch.Tensor) and u.dtype == torch.float32
    assert torch.allclose(unit_to_hu(u), hu, atol=1e-3)  # float32: ~1e-4 HU resolution at 3000 HU
    assert float(u.min()) == -1.0 and float(u.max()) == 1.0


def test_clipping_outside_range_and_no_clipping_in_inverse():
    hu = np.array([-3000.0, -1024.0, 5000.0])
    np.testing.assert_array_equal(hu_to_unit(hu), [-1.0, -1.0, 1.0])
    np.testing.assert_array_equal(hu_to_unit(torch.tensor(hu)).numpy(), [-1.0, -1.0, 1.0])
    # the inverse extrapolates (a network output slightly beyond [-1, 1] is not hidden)
    assert unit_to_hu(1.5) == pytest.approx(3072 + 0.5 * 2048)
    assert unit_to_hu(-2.0) == pytest.approx(-1024 - 2048)


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
