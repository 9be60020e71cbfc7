import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from scripts.datasets.data import (
    DataError,
    LoadSliced,
    RandTissueCropd,
    UnpairedDataset,
    check_patch_settings,
    load_datalist,
    add_training_pools,
    resolve_datalist,
    slice_items,
    volume_slices,
)
from scripts.volumes.volume_io import read_slice_hu

BUNDLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundle")


def write_nifti(path, array):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))
    return str(path)


def volume(shape=(4, 5, 3)):
    """int16 HU volume: value = 100 * slice + 10 * row + col - 1000 (every voxel distinct)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (100 * k + 10 * i + j - 1000).astype(np.int16)


# ------------------------------------------------------------------------------------ read_slice_hu


def test_read_slice_hu_from_3d_nifti(tmp_path):
    path = write_nifti(tmp_path / "vol.nii.gz", volume())
    hu = read_slice_hu(path, 1)
    assert hu.dtype == np.float32
    assert hu.shape == (4, 5)
    # slice 1 along the last axis: -900 + 10 * row + col
    np.testing.assert_array_equal(hu[0], [-900, -899, -898, -897, -896])
    np.testing.assert_array_equal(hu[3], [-870, -869, -868, -867, -866])
    np.testing.assert_array_equal(read_slice_hu(path, 2)[1, 4], -786)


def test_read_slice_hu_3d_without_index_or_4d_raises(tmp_path):
    path = write_nifti(tmp_path / "vol.nii.gz", volume())
    with pytest.raises(DataError, match="vol.nii.gz"):
        read_slice_hu(path)
    path4 = write_nifti(tmp_path / "four.nii.gz", np.zeros((2, 2, 2, 2), dtype=np.float32))
    with pytest.raises(DataError, match="four.nii.gz"):
        read_slice_hu(path4, 0)


def test_read_slice_hu_from_2d_nifti(tmp_path):
    data = np.array([[-1024.0, 0.5, 40.0], [3071.0, -3.25, 7.0]], dtype=np.float32)
    path = write_nifti(tmp_path / "slice.nii", data)
    hu = read_slice_hu(path)
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, data)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_read_slice_hu_rejects_non_finite(tmp_path, bad):
    vol = volume().astype(np.float32)
    vol[2, 3, 1] = bad
    path = write_nifti(tmp_path / "bad.nii.gz", vol)
    with pytest.raises(DataError, match="bad.nii.gz"):
        read_slice_hu(path, 1)
    assert np.isfinite(read_slice_hu(path, 0)).all()  # the other slices stay readable

    flat = np.zeros((3, 3), dtype=np.float32)
    flat[1, 1] = bad
    path2d = write_nifti(tmp_path / "bad2d.nii", flat)
    with pytest.raises(DataError, match="bad2d.nii"):
        read_slice_hu(path2d)


# --------------------------------------------------------------------------------------- LoadSliced


def test_load_sliced_image_and_label(tmp_path):
    image = write_nifti(tmp_path / "low.nii.gz", volume())
    label = write_nifti(tmp_path / "full.nii.gz", volume() + 7)
    out = LoadSliced(keys=["image", "label"])(
        {"image": image, "image_slice": 2, "label": label, "label_slice": 0, "patient": "L067"}
    )
    for key in ("image", "label"):
        assert isinstance(out[key], torch.Tensor)
        assert out[key].shape == (1, 4, 5)
        assert out[key].dtype == torch.float32
    assert out["image"][0, 0, 0].item() == -800  # slice 2
    assert out["label"][0, 1, 2].item() == -1000 + 10 + 2 + 7  # slice 0, plus 7
    assert out["patient"] == "L067"


def test_load_sliced_2d_without_slice_key(tmp_path):
    path = write_nifti(tmp_path / "s.nii", np.full((3, 2), 12.5, dtype=np.float32))
    out = LoadSliced(keys="image")({"image": path})
    assert out["image"].shape == (1, 3, 2)
    assert (out["image"] == 12.5).all()


# ---------------------------------------------------------------------------- volume_slices / slice_items


def test_volume_slices(tmp_path):
    p3 = write_nifti(tmp_path / "v.nii.gz", volume((4, 5, 3)))
    p2 = write_nifti(tmp_path / "s.nii", np.zeros((4, 5), dtype=np.float32))
    assert volume_slices(p3) == [(p3, 0), (p3, 1), (p3, 2)]
    assert volume_slices(p2) == [(p2, None)]


def test_volume_slices_missing_and_4d(tmp_path):
    missing = str(tmp_path / "absent.nii.gz")
    with pytest.raises(DataError, match="absent.nii.gz"):
        volume_slices(missing)
    p4 = write_nifti(tmp_path / "four.nii.gz", np.zeros((2, 2, 2, 2), dtype=np.float32))
    with pytest.raises(DataError, match="four.nii.gz"):
        volume_slices(p4)


def test_slice_items_expands_volumes(tmp_path):
    a = write_nifti(tmp_path / "a.nii.gz", volume((4, 5, 3)))
    b = write_nifti(tmp_path / "b.nii", np.zeros((4, 5), dtype=np.float32))
    items = slice_items([{"image": a, "patient": "A"}, {"image": b}])
    # no None values (a DataLoader cannot collate them): no slice index for a 2D file, no missing patient
    assert items == [
        {"patient": "A", "image": a, "image_slice": 0},
        {"patient": "A", "image": a, "image_slice": 1},
        {"patient": "A", "image": a, "image_slice": 2},
        {"image": b},
    ]


def test_slice_items_paired(tmp_path):
    low = write_nifti(tmp_path / "low.nii.gz", volume((4, 5, 2)))
    full = write_nifti(tmp_path / "full.nii.gz", volume((4, 5, 2)))
    items = slice_items([{"image": low, "label": full}], ["image", "label"])
    assert [(d["image_slice"], d["label_slice"]) for d in items] == [(0, 0), (1, 1)]
    assert all(d["label"] == full for d in items)

    short = write_nifti(tmp_path / "short.nii.gz", volume((4, 5, 1)))
    with pytest.raises(DataError, match="slice counts"):
        slice_items([{"image": low, "label": short}], ["image", "label"])


# ------------------------------------------------------------------------------------ UnpairedDataset


@pytest.fixture()
def pools(tmp_path):
    """Noisy pool: 6 slices of constant -100 - k; clean pool: 4 slices of constant 500 + k (HU)."""
    noisy = np.stack([np.full((4, 4), -100.0 - k, dtype=np.float32) for k in range(6)], axis=-1)
    clean = np.stack([np.full((4, 4), 500.0 + k, dtype=np.float32) for k in range(4)], axis=-1)
    n = write_nifti(tmp_path / "noisy.nii.gz", noisy)
    c = write_nifti(tmp_path / "clean.nii.gz", clean)
    return slice_items([{"image": n}]), slice_items([{"image": c}])


def _values(dataset, indices):
    return [(dataset[i]["noisy"][0, 0, 0].item(), dataset[i]["clean"][0, 0, 0].item()) for i in indices]


def test_unpaired_dataset_draws_from_own_pools_reproducibly(pools):
    noisy, clean = pools
    ds = UnpairedDataset(noisy, clean, Compose([LoadSliced("image")]), samples_per_epoch=48, seed=3)
    assert len(ds) == 48
    epoch0 = _values(ds, range(48))
    assert {n for n, _ in epoch0} <= {-100.0 - k for k in range(6)}
    assert {c for _, c in epoch0} <= {500.0 + k for k in range(4)}
    # uniform over the whole pools: every slice shows up in 48 draws
    assert len({n for n, _ in epoch0}) == 6 and len({c for _, c in epoch0}) == 4
    # same (seed, epoch, index) -> same sample, whatever was drawn in between and in any order
    assert _values(ds, [17, 5, 0]) == [epoch0[17], epoch0[5], epoch0[0]]
    again = UnpairedDataset(noisy, clean, Compose([LoadSliced("image")]), samples_per_epoch=48, seed=3)
    assert _values(again, range(48)) == epoch0

    ds.set_epoch(1)
    epoch1 = _values(ds, range(48))
    assert epoch1 != epoch0
    ds.set_epoch(0)
    assert _values(ds, range(48)) == epoch0
    other_seed = UnpairedDataset(noisy, clean, Compose([LoadSliced("image")]), samples_per_epoch=48, seed=4)
    assert _values(other_seed, range(48)) != epoch0


def test_aligned_unpaired_patches_share_place_and_orientation_but_not_the_slice(tmp_path, train_config):
    """aligned_patches: the clean patch comes from the noisy patch's place, rotated and flipped alike."""
    train_config["hu_range"] = [-1024.0, 3072.0]
    train_config["patch_min_tissue"] = 0.0
    transform = train_config.get_parsed_content("train#preprocessing")
    ramp = np.arange(96 * 96, dtype=np.float32).reshape(96, 96) * 0.3 - 1024.0  # distinct, inside the range
    noisy = slice_items([{"image": write_nifti(tmp_path / "noisy.nii", np.stack([ramp, ramp + 0.25], -1))}])
    clean = slice_items([{"image": write_nifti(tmp_path / "clean.nii", np.stack([ramp + 0.5, ramp + 0.75], -1))}])
    aligned = UnpairedDataset(noisy, clean, transform, samples_per_epoch=40, seed=0, aligned=True)
    independent = UnpairedDataset(noisy, clean, transform, samples_per_epoch=40, seed=0)
    same_place, slices = 0, set()
    for i in range(40):
        a, b = aligned[i], independent[i]
        offset = (a["clean"] - a["noisy"]) * 2048.0  # HU: 0.25 .. 0.75 when cut at the same place and pose
        assert float(offset.min()) == pytest.approx(float(offset.max()), abs=1e-2)
        assert 0.2 < float(offset.mean()) < 0.8
        slices.add(round(float(offset.mean()), 2))
        assert torch.equal(a["noisy"], b["noisy"])  # the noisy draw is the default one
        same_place += int(torch.allclose((b["clean"] - b["noisy"]) * 2048.0, offset, atol=1e-2))
    assert slices == {0.25, 0.5, 0.75}  # slices still drawn independently (offsets 0.5 +- 0.25)
    assert same_place < 10  # independent draws rarely share place and pose


def test_patches_per_slice_keeps_a_group_of_samples_on_one_noisy_and_one_clean_slice(pools):
    noisy, clean = pools
    ds = UnpairedDataset(noisy, clean, Compose([LoadSliced("image")]), samples_per_epoch=48, seed=3, patches_per_slice=4)
    values = _values(ds, range(48))
    groups = [values[k:k + 4] for k in range(0, 48, 4)]
    assert all(len(set(group)) == 1 for group in groups)  # one (noisy, clean) slice pair per group of 4
    assert len({group[0] for group in groups}) > 3  # different groups draw different slices
    default = UnpairedDataset(noisy, clean, Compose([LoadSliced("image")]), samples_per_epoch=48, seed=3)
    assert _values(default, range(48)) != values and len(set(_values(default, range(4)))) > 1
    with pytest.raises(DataError, match="patches_per_slice"):
        UnpairedDataset(noisy, clean, Compose([LoadSliced("image")]), samples_per_epoch=4, patches_per_slice=0)


def test_unpaired_dataset_empty_pool(pools):
    noisy, clean = pools
    with pytest.raises(DataError, match="noisy"):
        UnpairedDataset([], clean, Compose([LoadSliced("image")]), samples_per_epoch=4)
    with pytest.raises(DataError, match="clean"):
        UnpairedDataset(noisy, [], Compose([LoadSliced("image")]), samples_per_epoch=4)


@pytest.fixture
def train_config():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(os.path.join(BUNDLE_DIR, "configs", "train.json"))
    parser["patch_size"] = 64
    return parser


def test_train_transforms_give_all_8_dihedral_transforms_and_scale_intensity(tmp_path, train_config):
    train_config["hu_range"] = [-1024.0, 3072.0]  # a wide range keeps every pixel of the test slice distinct
    transform = train_config.get_parsed_content("train#preprocessing")
    # asymmetric 64 x 64 slice (every pixel distinct): HU -1024 ... 3071
    asym = (np.arange(64 * 64, dtype=np.float32).reshape(64, 64) - 1024.0)
    # rows of known HU for the scaling check: -2000 (clipped), -1024, 1024, 3072, 5000 (clipped), rest 0 HU
    levels = np.zeros((64, 64), dtype=np.float32)
    levels[:5] = np.array([-2000.0, -1024.0, 1024.0, 3072.0, 5000.0])[:, None]
    noisy = slice_items([{"image": write_nifti(tmp_path / "asym.nii.gz", asym[..., None])}])
    clean = slice_items([{"image": write_nifti(tmp_path / "levels.nii", levels)}])
    ds = UnpairedDataset(noisy, clean, transform, samples_per_epoch=200, seed=0)

    # hand scaling: HU -1024 -> -1, 0 -> -0.5, 1024 -> 0, 3072 -> 1; outside [-1024, 3072] clipped
    unit = (asym + 1024.0) / 2048.0 - 1.0
    assert unit[0, 0] == -1.0 and unit[16, 0] == -0.5 and unit[32, 0] == 0.0
    dihedral = [np.rot90(unit, k) for k in range(4)] + [np.rot90(unit, k)[::-1] for k in range(4)]
    assert len({d.tobytes() for d in map(np.ascontiguousarray, dihedral)}) == 8

    seen = {}
    for i in range(200):
        sample = ds[i]
        x = sample["noisy"]
        assert isinstance(x, torch.Tensor) and x.shape == (1, 64, 64) and x.dtype == torch.float32
        x = x[0].numpy()
        matches = [k for k, d in enumerate(dihedral) if np.allclose(x, d, atol=1e-6)]
        assert len(matches) == 1, "output is not a dihedral transform of the (scaled) input slice"
        seen[matches[0]] = seen.get(matches[0], 0) + 1

        y = sample["clean"][0].numpy()
        values, counts = np.unique(y, return_counts=True)
        assert values.tolist() == [-1.0, -0.5, 0.0, 1.0]
        assert counts.tolist() == [128, 59 * 64, 64, 128]
    assert sorted(seen) == list(range(8))
    # each of the 8 should come up roughly 1/8 of the time (25 expected of 200)
    assert min(seen.values()) >= 10


def test_validation_items_collate_for_2d_files_without_patient(tmp_path, train_config):
    # the validation pipeline of train.json on slice_items: 2D files (like DICOM slices) have no slice
    # index and this datalist no patient; the DataLoader must still collate the items
    from monai.data import DataLoader, Dataset

    low = write_nifti(tmp_path / "low.nii", np.full((6, 8), 1024.0, dtype=np.float32))
    full = write_nifti(tmp_path / "full.nii", np.full((6, 8), -1024.0, dtype=np.float32))
    vol = write_nifti(tmp_path / "vol.nii.gz", np.zeros((6, 8, 2), dtype=np.float32))
    items = slice_items([{"image": low, "label": full}, {"image": vol, "label": vol, "patient": "P1"}],
                        ["image", "label"])
    loader = DataLoader(Dataset(items, train_config.get_parsed_content("validate#preprocessing")), batch_size=1)
    batches = list(loader)
    assert len(batches) == 3
    first = batches[0]
    assert first["image"].shape == (1, 1, 8, 8)  # 6 rows padded to a multiple of 4
    # the default abdomen window [-160, 240] HU: 1024 HU -> 1, -1024 HU -> -1 (clipped), 0 HU -> -0.2
    assert (first["image"] == 1.0).all() and (first["label"] == -1.0).all()
    assert torch.allclose(batches[1]["image"], torch.tensor(-0.2))
    assert batches[2]["patient"] == ["P1"]
    assert batches[2]["image_slice"].tolist() == [1]


# ------------------------------------------------------------------------------- check_patch_settings


@pytest.mark.parametrize(
    "args, text",
    [
        ((66, 4, 300, 25), "66"),
        ((60, 4, 300, 25), "60"),
        ((64.0, 4, 300, 25), "64.0"),
        ((64, 0, 300, 25), "batch_size=0"),
        ((64, True, 300, 25), "batch_size=True"),
        ((64, 4, 0, 25), "num_iterations=0"),
        ((64, 4, 300, 0), "epoch_length=0"),
        ((64, 4, 310, 25), "num_iterations=310.*epoch_length=25"),
    ],
)
def test_check_patch_settings_rejects(args, text):
    with pytest.raises(DataError, match=text):
        check_patch_settings(*args)


@pytest.mark.parametrize("args", [(64, 4, 300, 25), (128, 1, 25, 25), (68, 64, 8000, 8000)])
def test_check_patch_settings_accepts(args):
    assert check_patch_settings(*args) is None


# ---------------------------------------------------------------------------------- datalists


def _write_json(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f)
    return str(path)


def test_load_datalist_relative_to_json_folder(tmp_path):
    path = _write_json(tmp_path / "lists" / "d.json", {
        "training_clean": [{"image": "full/a.nii.gz"}],
        "training_noisy": [{"image": "/abs/low/b.nii.gz"}],
        "validation": [{"image": "low/c.nii.gz", "label": "full/c.nii.gz"}],
    })
    d = load_datalist(path)
    base = str(tmp_path / "lists")
    assert d["training_clean"] == [{"image": os.path.join(base, "full", "a.nii.gz")}]
    assert d["training_noisy"] == [{"image": "/abs/low/b.nii.gz"}]
    assert d["validation"] == [{"image": os.path.join(base, "low", "c.nii.gz"),
                                "label": os.path.join(base, "full", "c.nii.gz")}]


def test_load_datalist_relative_to_dataset_dir(tmp_path):
    data_dir = str(tmp_path / "data")
    path = _write_json(tmp_path / "lists" / "d.json", {
        "dataset_dir": data_dir,
        "training_clean": [{"image": "a.nii.gz"}],
        "test": [{"image": "t.nii.gz", "label": "u.nii.gz"}],
    })
    d = load_datalist(path)
    assert d["training_clean"] == [{"image": os.path.join(data_dir, "a.nii.gz")}]
    assert d["test"] == [{"image": os.path.join(data_dir, "t.nii.gz"), "label": os.path.join(data_dir, "u.nii.gz")}]


def test_load_datalist_relative_dataset_dir_is_relative_to_the_json(tmp_path, monkeypatch):
    path = _write_json(tmp_path / "lists" / "d.json", {"dataset_dir": "../data", "training_clean": [{"image": "a.nii"}]})
    monkeypatch.chdir("/")  # the working directory must not matter
    d = load_datalist(path)
    assert os.path.normpath(d["training_clean"][0]["image"]) == str(tmp_path / "data" / "a.nii")


def test_load_datalist_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothere.json"):
        load_datalist(str(tmp_path / "nothere.json"))


@pytest.mark.parametrize("content, message", [
    ([{"image": "a.nii"}], "must be a JSON object .* got a JSON list"),
    ({"training_noisy": ["a.nii"]}, "every item of 'training_noisy' must be an object"),
])
def test_load_datalist_wrong_shape_names_the_file(tmp_path, content, message):
    path = tmp_path / "list.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=message) as info:
        load_datalist(str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("empty_key", ["training_clean", "training_noisy"])
def test_resolve_datalist_requires_both_pools(tmp_path, empty_key):
    content = {"training_clean": [{"image": "a.nii.gz"}], "training_noisy": [{"image": "b.nii.gz"}]}
    content[empty_key] = []
    path = _write_json(tmp_path / "d.json", content)
    with pytest.raises(DataError, match=empty_key):
        resolve_datalist(path, str(tmp_path / "sim"))
    del content[empty_key]
    path = _write_json(tmp_path / "d2.json", content)
    with pytest.raises(DataError, match=empty_key):
        resolve_datalist(path, str(tmp_path / "sim"))


def test_resolve_datalist_user_list(tmp_path):
    path = _write_json(tmp_path / "d.json", {"training_clean": [{"image": "a.nii.gz"}],
                                             "training_noisy": [{"image": "b.nii.gz"}]})
    d = resolve_datalist(path, str(tmp_path / "sim"))
    assert d["training_noisy"] == [{"image": str(tmp_path / "b.nii.gz")}]
    assert not os.path.exists(tmp_path / "sim")  # the simulated set is not built when a datalist is given


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_forged_nifti_header_is_refused_before_allocating(tmp_path, suffix):
    import gzip
    import struct

    from scripts.volumes.volume_io import read_slice_hu

    plain = tmp_path / "ok.nii"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 2), np.int16), np.eye(4)), str(plain))
    raw = bytearray(plain.read_bytes())
    struct.pack_into("<hhhh", raw, 40, 3, 32767, 32767, 64)  # dim[0..3]: a 128 GiB volume
    forged = tmp_path / f"forged{suffix}"
    forged.write_bytes(gzip.compress(bytes(raw)) if suffix.endswith(".gz") else bytes(raw))
    with pytest.raises(DataError, match=r"forged\.nii.*32767x32767x64 voxels of 2 bytes.*truncated or forged header"):
        read_slice_hu(str(forged), 0)
    assert read_slice_hu(str(plain), 1).shape == (64, 64)  # the genuine file still reads


def test_add_training_pools_extends_both_pools_and_keeps_validation():
    base = {"training_clean": [{"image": "a0"}], "training_noisy": [{"image": "b0"}],
            "validation": [{"image": "c0", "label": "c0f"}], "test": [{"image": "d0", "label": "d0f"}]}
    extra = {"training_clean": [{"image": "a1"}, {"image": "a2"}], "training_noisy": [{"image": "b1"}],
             "validation": [{"image": "c1", "label": "c1f"}]}
    merged = add_training_pools(base, extra)
    assert [it["image"] for it in merged["training_clean"]] == ["a0", "a1", "a2"]
    assert [it["image"] for it in merged["training_noisy"]] == ["b0", "b1"]
    assert merged["validation"] == base["validation"] and merged["test"] == base["test"]
    assert base["training_clean"] == [{"image": "a0"}]  # the inputs are left alone


def test_rand_tissue_crop_avoids_air_patches():
    """Patches of pure air (constant) make normalised layers overflow; the crop re-draws them."""
    image = -torch.ones(1, 256, 256)
    image[:, 100:140, 180:230] = 0.2  # a small patch of tissue in a sea of air
    crop = RandTissueCropd("image", (64, 64), min_tissue=0.05, max_tries=200)
    crop.set_random_state(seed=0)
    for _ in range(20):
        patch = crop({"image": image})["image"]
        assert patch.shape == (1, 64, 64)
        assert (patch > -1.0).float().mean() >= 0.05


def test_rand_tissue_crop_without_minimum_is_uniform_and_deterministic():
    image = torch.arange(128.0 * 96).reshape(1, 128, 96)
    corners = []
    for _ in range(2):
        crop = RandTissueCropd("image", (32, 32), min_tissue=0.0)
        crop.set_random_state(seed=3)
        corners.append([int(crop({"image": image})["image"][0, 0, 0]) for _ in range(50)])  # the corner's index
    assert corners[0] == corners[1]  # same seed, same patches
    rows = [c // 96 for c in corners[0]]
    cols = [c % 96 for c in corners[0]]
    assert max(rows) <= 128 - 32 and max(cols) <= 96 - 32 and len(set(corners[0])) > 40


def test_rand_tissue_crop_refuses_an_image_smaller_than_the_patch():
    with pytest.raises(DataError, match="smaller than the 64 x 64 patch"):
        RandTissueCropd("image", (64, 64))({"image": torch.zeros(1, 48, 80)})
