import json
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pydicom
import pytest
import torch

from mayo_fixtures import aapm_tree, copy_tree, make_tcia_tree, tcia_tree  # noqa: F401  (pytest fixtures)
from scripts.volumes.dicom_io import DicomSkipWarning, scan_series
from scripts.volumes.dicom_pixels import read_series_hu
from scripts.datasets.mayo import (
    AAPM2016_DEFAULT_SPLIT,
    DATALIST_KEYS,
    MayoDataError,
    load_datalist,
    prepare_mayo,
)
from scripts.datasets.mayo_layout import detect_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO, "bundle", "scripts", "cli.py")
TCIA_TRAIN = {"L004", "L006", "L014", "L019"}


def _prepare(root, out, **kw):
    kw.setdefault("progress", False)
    with pytest.warns(UserWarning):  # absent split patients are reported
        return prepare_mayo(root, out, **kw)


def _roles(dl):
    return {key: {it["patient"] for it in dl[key]} for key in DATALIST_KEYS}


def _assert_disjoint(dl):
    roles = _roles(dl)
    keys = list(roles)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not roles[a] & roles[b], (a, b)


@pytest.fixture(scope="session")
def tcia_datalist(tcia_tree, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dl") / "tcia.json")
    return out, _prepare(tcia_tree.root, out)


def test_layout_detection(tcia_tree, aapm_tree):
    assert detect_layout(tcia_tree.root) == "tcia"
    assert detect_layout(os.path.dirname(tcia_tree.root)) == "tcia"  # NBIA download folder above the collection
    assert detect_layout(aapm_tree.root) == "aapm2016"


def test_tcia_authors_split(tcia_datalist, capsys):
    out, dl = tcia_datalist
    assert dl["layout"] == "tcia" and dl["region"] == "abdomen" and dl["thickness"] == "1mm"
    roles = _roles(dl)
    assert roles["test"] == {"L125"}
    assert roles["training_clean"] | roles["training_noisy"] | roles["validation"] == TCIA_TRAIN
    assert len(roles["validation"]) == 1 and len(roles["training_clean"]) == 2 and len(roles["training_noisy"]) == 1
    _assert_disjoint(dl)
    assert "L033" in dl["split"]["absent"] and "L131" in dl["split"]["absent"]
    for it in dl["training_clean"]:
        assert "Full Dose Images" in it["image"] and "label" not in it
    for it in dl["training_noisy"]:
        assert "Low Dose Images" in it["image"]
    for it in dl["test"] + dl["validation"]:
        assert "Low Dose Images" in it["image"] and "Full Dose Images" in it["label"] and it["num_slices"] == 4


def test_summary_table_and_notes(tcia_tree, tmp_path, capsys):
    _prepare(tcia_tree.root, tmp_path / "dl.json", seed=1)
    text = capsys.readouterr().out
    assert re.search(r"L125\s+test\s+full\s+4\s+1\s+120\s+B30f", text)
    assert re.search(r"L125\s+test\s+low\s+4", text)
    assert "total test: 1 patients, 4 slices" in text and "absent" in text and "L033" in text


def test_split_deterministic_given_seed(tcia_tree, tmp_path):
    a = _prepare(tcia_tree.root, tmp_path / "a.json", seed=7)
    b = _prepare(tcia_tree.root, tmp_path / "b.json", seed=7)
    assert a == b
    assignments = set()
    for seed in range(8):
        dl = _prepare(tcia_tree.root, tmp_path / f"s{seed}.json", seed=seed)
        _assert_disjoint(dl)
        assignments.add((tuple(dl["split"]["validation"]), tuple(dl["split"]["clean_half"])))
    assert len(assignments) > 1


def test_root_above_collection_and_unsplit_patients(tcia_tree, tmp_path):
    tree = copy_tree(tcia_tree, str(tmp_path / "download" / "LDCT-and-Projection-data"))
    shutil.copytree(os.path.join(tree.root, "L006"), os.path.join(tree.root, "L999"))
    shutil.copytree(os.path.join(tree.root, "L006"), os.path.join(tree.root, "C002"))
    dl = _prepare(tmp_path / "download", tmp_path / "dl.json")
    assert dl["split"]["unsplit"] == ["L999"]  # abdomen patient in no split: reported, not used
    assert "C002" not in json.dumps(dl["training_clean"] + dl["training_noisy"] + dl["validation"] + dl["test"])
    assert all(it["image"].startswith("LDCT-and-Projection-data/") for it in dl["test"])


def test_aapm_default_split_and_thickness(aapm_tree, tmp_path):
    out = tmp_path / "dl.json"
    with pytest.raises(MayoDataError, match=re.escape(aapm_tree.root) + ".*1mm, 3mm.*--thickness"), pytest.warns(UserWarning):
        prepare_mayo(aapm_tree.root, out, progress=False)
    with pytest.raises(MayoDataError, match="no 5mm series.*available: 1mm, 3mm"), pytest.warns(UserWarning):
        prepare_mayo(aapm_tree.root, out, thickness="5mm", progress=False)
    assert not out.exists()
    for thickness, label, slices in (("3mm", "3mm", 2), (1, "1mm", 4)):
        dl = _prepare(aapm_tree.root, out, thickness=thickness)
        assert dl["layout"] == "aapm2016" and dl["thickness"] == label
        roles = _roles(dl)
        assert roles["test"] == set(AAPM2016_DEFAULT_SPLIT["test"]) == {"L333", "L506"}
        assert roles["training_clean"] | roles["training_noisy"] | roles["validation"] == {"L067", "L096", "L109", "L143"}
        assert {it["num_slices"] for k in DATALIST_KEYS for it in dl[k]} == {slices}
        _assert_disjoint(dl)
        assert sorted(dl["split"]["absent"]) == ["L192", "L286", "L291", "L310"]
        assert all(it["image"].startswith(f"quarter_{label}/") and it["label"].startswith(f"full_{label}/") for it in dl["test"])
    with pytest.raises(MayoDataError, match="abdomen patients only"):
        prepare_mayo(aapm_tree.root, out, region="chest", thickness="1mm", progress=False)


def test_slice_order_and_hu_exact(tcia_tree, aapm_tree, tcia_datalist, tmp_path):
    dl = load_datalist(tcia_datalist[0])
    checked = 0
    for it in dl["test"] + dl["validation"]:
        for key, dose in (("image", "low"), ("label", "full")):
            truth = tcia_tree.truth[(it["patient"], dose, "1mm")]
            assert it[key] == truth.directory
            series = scan_series(it[key])[0]
            names = [os.path.basename(f) for f in series.files]
            assert names == truth.file_names and names != sorted(names)  # position order, not name order
            assert np.all(np.diff(series.positions) > 0)
            hu, _ = read_series_hu(series)
            for k, (slope, _) in enumerate(truth.rescale):
                assert np.abs(hu[k] - truth.hu[k]).max() <= slope / 2 + 1e-3
            checked += 1
        full, _ = read_series_hu(it["label"])
        low, _ = read_series_hu(it["image"])
        assert np.std(low - full) > 5.0  # the low-dose series is really noisier
    assert checked == 4
    # slopes other than 1 and signed storage really occur in the tree
    slopes = {float(pydicom.dcmread(f, stop_before_pixels=True).RescaleSlope) for f in series.files}
    assert slopes - {1.0}
    # the AAPM layout's .IMA files read the same way
    _prepare(aapm_tree.root, tmp_path / "a.json", thickness="1mm")
    it = load_datalist(tmp_path / "a.json")["test"][0]
    truth = aapm_tree.truth[(it["patient"], "low", "1mm")]
    hu, _ = read_series_hu(it["image"])
    assert all(np.abs(hu[k] - truth.hu[k]).max() <= s / 2 + 1e-3 for k, (s, _) in enumerate(truth.rescale))


def test_datalist_round_trip(tcia_tree, tcia_datalist, tmp_path):
    out, dl = tcia_datalist
    with open(out) as f:
        on_disk = json.load(f)
    assert on_disk == dl
    assert on_disk["dataset_dir"] == os.path.abspath(tcia_tree.root)
    assert all(not os.path.isabs(it["image"]) for k in DATALIST_KEYS for it in on_disk[k])
    resolved = load_datalist(out)
    for key in DATALIST_KEYS:
        for raw, it in zip(on_disk[key], resolved[key]):
            assert it["image"] == os.path.join(tcia_tree.root, raw["image"]) and os.path.isdir(it["image"])
            if "label" in raw:
                assert os.path.isdir(it["label"])
    # data moved: the same datalist with another dataset_dir
    moved = load_datalist(out, dataset_dir=tmp_path)
    assert moved["test"][0]["image"] == os.path.join(str(tmp_path), on_disk["test"][0]["image"])
    with pytest.raises(ValueError, match="not found"):
        load_datalist(tmp_path / "missing.json")


def test_cli_from_another_cwd(tcia_tree, tmp_path):
    cmd = [sys.executable, CLI, "prepare_mayo", "--root", tcia_tree.root, "--out", "dl.json", "--seed", "3"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    dl = load_datalist(tmp_path / "dl.json")
    assert dl["split"]["seed"] == 3 and _roles(dl)["test"] == {"L125"}
    missing = tmp_path / "no-such-root"
    cmd = [sys.executable, CLI, "prepare_mayo", "--root", str(missing), "--out", "bad.json"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert f"{missing}: dataset root does not exist" in run.stderr
    assert "Traceback" not in run.stderr and run.stderr.startswith("error: ")
    assert not (tmp_path / "bad.json").exists()


# ---------------------------------------------------------------------------------------------
# bad input: one clear message naming the path, an exception (non-zero CLI exit), no datalist
# ---------------------------------------------------------------------------------------------


def _fails(root, out, path, problem, **kw):
    kw.setdefault("progress", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # absent split patients etc. are also reported; not the point here
        with pytest.raises(MayoDataError, match=re.escape(str(path)) + ".*" + problem):
            prepare_mayo(root, out, **kw)
    assert not os.path.exists(out)


@pytest.fixture
def broken(tcia_tree, tmp_path):
    return copy_tree(tcia_tree, str(tmp_path / "data"))


def _files(tree, patient, dose):
    w = tree.truth[(patient, dose, "1mm")]
    return [os.path.join(w.directory, n) for n in w.file_names]  # slice order


def test_missing_root(tmp_path):
    _fails(tmp_path / "nope", tmp_path / "dl.json", tmp_path / "nope", "does not exist")


def test_root_without_dicom(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "notes.txt").write_text("hello")
    _fails(tmp_path / "root", tmp_path / "dl.json", tmp_path / "root", "no Mayo low-dose CT data found")
    for dose in ("Full", "Low"):
        d = tmp_path / "root" / "L004" / "study" / f"1.0-{dose} Dose Images-1"
        d.mkdir(parents=True)
        (d / "1-01.dcm").write_text("not dicom")
    _fails(tmp_path / "root", tmp_path / "dl.json", tmp_path / "root", "no DICOM image files")


def test_non_dicom_file_is_skipped_with_warning(broken, tmp_path):
    junk = os.path.join(broken.truth[("L125", "low", "1mm")].directory, "README.txt")
    with open(junk, "w") as f:
        f.write("downloaded with NBIA Data Retriever\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dl = prepare_mayo(broken.root, tmp_path / "dl.json", progress=False)
    skipped = [w for w in caught if issubclass(w.category, DicomSkipWarning)]
    assert len(skipped) == 1 and junk in str(skipped[0].message) and "not a DICOM file" in str(skipped[0].message)
    assert dl["test"][0]["num_slices"] == 4 and (tmp_path / "dl.json").exists()


def test_truncated_dicom(broken, tmp_path):
    path = _files(broken, "L006", "full")[2]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-500])
    _fails(broken.root, tmp_path / "dl.json", path, "truncated")


def test_mixed_orientations(broken, tmp_path):
    path = _files(broken, "L014", "low")[1]
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(path)
    _fails(broken.root, tmp_path / "dl.json", path, "mixed orientations")


def test_duplicate_positions(broken, tmp_path):
    first, second = _files(broken, "L019", "full")[:2]
    ds = pydicom.dcmread(second)
    ds.ImagePositionPatient = pydicom.dcmread(first).ImagePositionPatient
    ds.save_as(second)
    _fails(broken.root, tmp_path / "dl.json", "", "duplicate slice position")
    with pytest.raises(MayoDataError) as e, pytest.warns(Warning):
        prepare_mayo(broken.root, tmp_path / "dl.json", progress=False)
    assert first in str(e.value) and second in str(e.value)


def test_patient_with_one_dose_level(broken, tmp_path):
    shutil.rmtree(broken.truth[("L004", "low", "1mm")].directory)
    full = broken.truth[("L004", "full", "1mm")].directory
    _fails(broken.root, tmp_path / "dl.json", full, "patient L004 has only one dose level.*low-dose series is missing")


def test_non_ct_modality(broken, tmp_path):
    path = _files(broken, "L125", "full")[0]
    ds = pydicom.dcmread(path)
    ds.Modality = "MR"
    ds.save_as(path)
    _fails(broken.root, tmp_path / "dl.json", path, "modality MR")


def test_low_and_full_positions_must_match(broken, tmp_path):
    for path in _files(broken, "L125", "low"):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], ds.ImagePositionPatient[2] + 0.5]
        ds.save_as(path)
    _fails(broken.root, tmp_path / "dl.json", broken.truth[("L125", "low", "1mm")].directory, "slice positions differ")


def test_split_file(tcia_tree, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["L004", "L006", "L014"], "validation": ["L019"], "test": ["L125"]}))
    dl = prepare_mayo(tcia_tree.root, tmp_path / "dl.json", split=str(split), progress=False)
    roles = _roles(dl)
    assert roles["validation"] == {"L019"} and roles["test"] == {"L125"}
    assert roles["training_clean"] | roles["training_noisy"] == {"L004", "L006", "L014"}
    _assert_disjoint(dl)
    assert dl["split"]["source"] == str(split)
    split.write_text(json.dumps({"train": ["L004", "L006"], "test": ["L125"], "validation": []}))
    with pytest.warns(UserWarning, match="present but in no split, not used: L014, L019"):
        dl = prepare_mayo(tcia_tree.root, tmp_path / "dl.json", split=str(split), progress=False)
    assert dl["validation"] == [] and dl["split"]["unsplit"] == ["L014", "L019"]


def test_split_naming_absent_patients(tcia_tree, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["L004", "L006", "L777"], "test": ["L125"]}))
    _fails(tcia_tree.root, tmp_path / "dl.json", split, "names patients not present.*L777", split=str(split))
    split.write_text(json.dumps({"train": ["L004"], "test": ["L125", "L004"]}))
    _fails(tcia_tree.root, tmp_path / "dl.json", split, "listed twice", split=str(split))


def test_builtin_split_with_no_patient_present(tmp_path):
    root = tmp_path / "data"
    make_tcia_tree(str(root), patients=("L900", "L901"), n_slices=2)
    _fails(root, tmp_path / "dl.json", root, "none of the authors .abdomen. split's patients are present")


def test_fewer_than_two_training_patients(tcia_tree, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["L004"], "test": ["L125"]}))
    _fails(tcia_tree.root, tmp_path / "dl.json", split, "1 training patient.*at least 2", split=str(split))
    root = tmp_path / "data"
    make_tcia_tree(str(root), patients=("L004", "L125"), n_slices=2)
    _fails(root, tmp_path / "dl.json", root, "1 training patient.*at least 2")


# ---------------------------------------------------------------------------------------------
# end to end: the datalist written from a DICOM tree trains the real bundle config
# ---------------------------------------------------------------------------------------------


def test_training_runs_on_a_prepared_dicom_datalist(tcia_datalist, tmp_path):
    from monai.bundle import run

    datalist_path, datalist = tcia_datalist
    assert datalist["validation"], "the fixture tree holds out a validation patient"
    out = tmp_path / "run"
    config = os.path.join(REPO, "bundle", "configs", "train.json")
    run("training", config_file=config, logging_file=False, datalist=str(datalist_path), output_dir=str(out),
        model_path=str(out / "model.pt"), batch_size=2, num_iterations=2, epoch_length=1)
    state = torch.load(out / "model.pt", weights_only=True)
    assert any(key.startswith("denoiser.") for key in state) and any(key.startswith("noise_extractor.") for key in state)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["trainer"]["iteration"] == 2
