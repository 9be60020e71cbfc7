import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import scripts.datasets.low_dose as low_dose
import scripts.datasets.simulate as sim
from scripts.core.metrics import flat_roi_stats
from scripts.datasets.low_dose import DEFAULT_I0, add_gaussian_noise, noise_std_in_roi, simulate_low_dose, soft_tissue_roi
from scripts.datasets.phantom import default_pixel_size, phantom, uniform_phantom
from scripts.datasets.phantom_anatomy import LABELS
from scripts.datasets.simulate import make_simulated_dataset, nifti_affine, patient_seed, simulated_patient
from scripts.volumes.volume_io import read_volume, write_hu_nifti


def _neighbour_corr(r):
    return np.corrcoef(r[:, :-1].ravel(), r[:, 1:].ravel())[0, 1]


# ---------------------------------------------------------------------------- phantom
def test_default_pixel_size_covers_fov():
    assert default_pixel_size(256) == 1.5
    assert default_pixel_size(512) == 0.75


def test_phantom_is_deterministic_per_seed_and_varies_between_seeds():
    a = phantom(128, seed=3)
    assert a.dtype == np.float32 and a.shape == (128, 128)
    np.testing.assert_array_equal(a, phantom(128, seed=3))
    b = phantom(128, seed=4)
    assert np.mean(np.abs(a - b)) > 20.0
    # a different patient also has a different body outline
    assert np.sum((a > -500) != (b > -500)) > 0.02 * a.size


def test_phantom_hu_values_plausible():
    hu, lab = phantom(256, seed=0, return_labels=True)
    assert hu.shape == lab.shape == (256, 256)
    # air outside the body (corners)
    for corner in (hu[:10, :10], hu[:10, -10:], hu[-10:, :10], hu[-10:, -10:]):
        np.testing.assert_array_equal(corner, -1000.0)
    assert np.all(hu >= -1000.0) and hu.max() < 1500.0
    assert (hu > 300).sum() > 100  # bone
    soft = hu[lab == LABELS["soft_tissue"]]
    assert 20 < np.median(soft) < 60
    fat = hu[lab == LABELS["fat"]]
    assert -130 < np.median(fat) < -70
    body = (hu > -900).mean()
    assert 0.25 < body < 0.8  # a body inside a 384 mm field of view
    # fine texture: a flat organ is not perfectly flat, but only a few HU
    roi = soft_tissue_roi(lab)
    assert 1.0 < hu[roi].std() < 15.0
    # lesions / organs: more than a handful of distinct tissue classes
    assert len(np.unique(lab)) >= 7


def test_phantom_slices_of_one_patient_are_similar_but_not_equal():
    a, b = phantom(128, seed=5, z_mm=0.0), phantom(128, seed=5, z_mm=3.0)
    other = phantom(128, seed=6)
    assert not np.array_equal(a, b)
    assert np.mean(np.abs(a - b)) < 0.5 * np.mean(np.abs(a - other))


def test_phantom_scales_with_matrix_size():
    small, big = phantom(64, seed=2), phantom(256, seed=2)
    # same anatomy: the body fraction of the field of view agrees
    assert abs((small > -500).mean() - (big > -500).mean()) < 0.02


# ------------------------------------------------------------------------ low dose
@pytest.fixture(scope="module")
def default_sim():
    hu, lab = phantom(256, seed=0, return_labels=True)
    low, noise = simulate_low_dose(hu, rng=0, return_noise=True)
    return hu, lab, low, noise


def test_default_low_dose_noise_level_and_bias(default_sim):
    hu, lab, low, noise = default_sim
    assert low.dtype == np.float32 and low.shape == hu.shape
    np.testing.assert_allclose(low - hu, noise, atol=1e-3)
    roi = soft_tissue_roi(lab)
    std, bias = flat_roi_stats(low - hu, np.zeros_like(hu), roi)
    assert 20.0 < std < 40.0  # documented: quarter-dose level, 26..36 HU over seeds 0-7
    assert abs(bias) < 3.0
    # the disc-ROI helper measures the same noise inside that region
    depth = ndimage.distance_transform_edt(roi)
    c = np.unravel_index(int(np.argmax(depth)), roi.shape)
    r = min(10.0, depth[c] - 1)
    disc_std = noise_std_in_roi(low, c, r, reference=hu)
    assert 0.6 * std < disc_std < 1.6 * std
    assert noise_std_in_roi(low, c, r) > disc_std * 0.9  # without reference: noise + texture


def test_low_dose_noise_is_spatially_correlated_unlike_gaussian(default_sim):
    hu, lab, low, noise = default_sim
    roi = soft_tissue_roi(lab)
    rows, cols = np.nonzero(roi)
    box = noise[rows.min():rows.max(), cols.min():cols.max()]
    assert _neighbour_corr(box) > 0.3
    g = add_gaussian_noise(hu, 30.0, rng=0) - hu
    assert abs(_neighbour_corr(g[50:200, 50:200])) < 0.05
    assert g[50:200, 50:200].std() == pytest.approx(30.0, rel=0.03)


def test_noise_halves_at_four_times_the_dose():
    u = uniform_phantom(128)
    sl = (slice(44, 84), slice(34, 94))

    def std(i0):
        return np.sqrt(np.mean([simulate_low_dose(u, i0=i0, rng=k, return_noise=True)[1][sl].var() for k in range(2)]))

    ratio = std(4 * DEFAULT_I0) / std(DEFAULT_I0)
    assert 0.42 < ratio < 0.58


def test_simulation_is_reproducible_and_seeded():
    u = uniform_phantom(64)
    a = simulate_low_dose(u, rng=1)
    np.testing.assert_array_equal(a, simulate_low_dose(u, rng=1))
    assert not np.array_equal(a, simulate_low_dose(u, rng=2))


def test_zero_count_handling_is_unbiased_where_clamping_is_not():
    u = uniform_phantom(128)  # flat 40 HU body
    sl = (slice(44, 84), slice(34, 94))
    i0 = 1e3  # ~ a few photons behind the body: many zero counts

    def bias(mode):
        return np.mean([simulate_low_dose(u, i0=i0, rng=k, zero_counts=mode, return_noise=True)[1][sl].mean()
                        for k in range(2)])

    half, clamp = bias("half"), bias("clamp")
    default = np.mean([simulate_low_dose(u, i0=i0, rng=k, return_noise=True)[1][sl].mean() for k in range(2)])
    assert default == pytest.approx(half)  # the default is the unbiased log
    assert abs(half) < 5.0
    assert abs(clamp) > 10.0  # the shortcut biases HU by many units


def test_counts_to_line_integrals():
    p = low_dose.counts_to_line_integrals(np.array([0, 1, 99.5]), 100.0)
    np.testing.assert_allclose(p, [-np.log(0.005), -np.log(0.015), 0.0], atol=1e-12)
    assert low_dose.counts_to_line_integrals(np.array([0]), 100.0, "clamp")[0] == pytest.approx(np.log(100))
    with pytest.raises(ValueError):
        low_dose.counts_to_line_integrals(np.array([0]), 100.0, "zero")


def test_non_square_slice_keeps_shape_and_air_stays_quiet():
    u = uniform_phantom(64, semi_axes_mm=(100, 80))[:, 8:56]  # 64 x 48
    out, noise = simulate_low_dose(u, rng=0, return_noise=True)
    assert out.shape == (64, 48)
    assert np.abs(noise).mean() < 50.0


# ----------------------------------------------------------------------------- NIfTI
def test_simulated_volumes_are_written_slice_first_in_memory_and_row_column_slice_on_disk(tmp_path):
    vol = np.random.default_rng(0).normal(0, 100, (3, 16, 12)).astype(np.float32)  # (S, H, W)
    path = write_hu_nifti(vol, tmp_path / "v.nii", nifti_affine(1.5, 3.0))
    img = nib.load(path)
    assert img.header.get_zooms() == (1.5, 1.5, 3.0) and img.shape == (16, 12, 3)
    np.testing.assert_array_equal(img.dataobj[..., 1], vol[1])  # one slice read lazily
    np.testing.assert_array_equal(read_volume(path, force=True).hu, vol)  # the Volume reads it back as written
    assert os.listdir(tmp_path) == ["v.nii"]  # no temporary files left
    full, low = simulated_patient("test", 0, n_slices=2, size=64)
    assert full.shape == low.shape == (2, 64, 64)


# --------------------------------------------------------------------------- dataset
TINY = dict(n_clean=2, n_noisy=2, n_validation=1, n_test=1, size=64, slices_per_patient=2, progress=False)


def _mtimes(root):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(root) for f in fs}


def test_make_simulated_dataset_tiny(tmp_path, monkeypatch):
    out = tmp_path / "sim"
    dl = make_simulated_dataset(out, **TINY)
    assert set(dl) == {"training_clean", "training_noisy", "validation", "test"}
    with open(out / "datalist.json") as f:
        assert json.load(f) == dl
    assert [len(dl[k]) for k in ("training_clean", "training_noisy", "validation", "test")] == [1, 1, 1, 1]
    for item in dl["training_clean"] + dl["training_noisy"]:
        assert set(item) == {"patient", "image"} and os.path.isabs(item["image"])
    for item in dl["validation"] + dl["test"]:
        assert set(item) == {"patient", "image", "label"}

    # readable NIfTI in HU with the documented geometry
    clean = nib.load(dl["training_clean"][0]["image"])
    assert clean.shape == (64, 64, 2) and clean.get_data_dtype() == np.float32
    assert clean.header.get_zooms() == pytest.approx((6.0, 6.0, 3.0))
    c = np.asarray(clean.dataobj)
    assert c.min() == pytest.approx(-1000.0) and c.max() > 300

    # disjoint patients: ids and phantom seeds differ; every volume comes from its own seed
    ids = [it["patient"] for k in dl for it in dl[k]]
    assert len(set(ids)) == len(ids)
    noisy = np.asarray(nib.load(dl["training_noisy"][0]["image"]).dataobj)
    own = np.stack([phantom(64, patient_seed(0, "training_noisy", 0), z_mm=z) for z in (-1.5, 1.5)], -1)
    other = np.stack([phantom(64, patient_seed(0, "training_clean", 0), z_mm=z) for z in (-1.5, 1.5)], -1)
    np.testing.assert_allclose(c, other, atol=1e-4)
    assert np.mean(np.abs(noisy - own)) < 0.3 * np.mean(np.abs(noisy - other))
    assert 0.5 < np.std(noisy - own) < 100  # noise was added

    # validation pair: low dose vs its own full-dose reference
    low = np.asarray(nib.load(dl["validation"][0]["image"]).dataobj)
    full = np.asarray(nib.load(dl["validation"][0]["label"]).dataobj)
    assert low.shape == full.shape == (64, 64, 1)
    assert 0.5 < np.std(low - full) < 100 and abs(np.mean(low - full)) < 5

    # second call: reused, nothing recomputed or rewritten
    before = _mtimes(out)
    monkeypatch.setattr(sim, "simulate_low_dose", lambda *a, **k: pytest.fail("recomputed a cached data set"))
    monkeypatch.setattr(sim, "phantom", lambda *a, **k: pytest.fail("recomputed a cached data set"))
    assert make_simulated_dataset(out, **TINY) == dl
    assert _mtimes(out) == before


def test_dataset_parameter_change_rebuilds_atomically(tmp_path, monkeypatch):
    out = tmp_path / "sim"
    dl = make_simulated_dataset(out, **{**TINY, "n_test": 0})
    assert dl["test"] == dl["validation"]  # n_test=0: test repeats the validation pairs
    old_noisy = np.asarray(nib.load(dl["training_noisy"][0]["image"]).dataobj)

    dl2 = make_simulated_dataset(out, **{**TINY, "n_test": 0, "i0": DEFAULT_I0 / 16})
    with open(out / "params.json") as f:
        assert json.load(f)["i0"] == DEFAULT_I0 / 16
    new_noisy = np.asarray(nib.load(dl2["training_noisy"][0]["image"]).dataobj)
    assert not np.array_equal(old_noisy, new_noisy)
    assert os.listdir(tmp_path) == ["sim"]  # no temporary or stale folders left

    # a failing build leaves the previous complete data set untouched and no temp folder
    before = _mtimes(out)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sim, "write_hu_nifti", boom)
    with pytest.raises(RuntimeError):
        make_simulated_dataset(out, **{**TINY, "seed": 1})
    assert _mtimes(out) == before and os.listdir(tmp_path) == ["sim"]


def test_dataset_refuses_to_replace_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_simulated_dataset(out, **TINY)
    assert (out / "notes.txt").read_text() == "keep me"
