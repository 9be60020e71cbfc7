"""Evaluation (scripts.tasks.evaluate) and its report (scripts.tasks.report): aggregation on hand-made numbers,
a perfect prediction, an end-to-end run on a tiny simulated test split with a random-weight model,
the CLI and bundle config, and that nothing is left half-written on error."""

import csv
import glob
import json
import math
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BUNDLE_ROOT
from scripts import cli
from scripts.tasks import report, report_figures
from scripts.tasks.evaluate import METHODS, assemble_results, evaluate, evaluate_volume, model_outputs
from scripts.tasks.evaluation_data import paired_items, simulated_datalist
from scripts.core.summary import aggregate_patients, mean_over_patients_nps, summarize
from scripts.core.metrics import windowed_psnr, windowed_ssim
from scripts.model.networks import ISCLDenoiser

# evaluate.json layers on train.json (its ids: bundle root, model path, window, device, gamma, data)
EVALUATE_CONFIG = [os.path.join(BUNDLE_ROOT, "configs", "train.json"), os.path.join(BUNDLE_ROOT, "configs", "evaluate.json")]
CLI = os.path.join(BUNDLE_ROOT, "scripts", "cli.py")
# 2 test patients of 2 slices, 64 x 64; the training pools are only there because the simulated set has them
TINY = {"n_clean": 1, "n_noisy": 1, "n_validation": 1, "n_test": 4, "size": 64, "slices_per_patient": 2,
        "n_angles": 32, "progress": False}
PSNR_PAPER = "PSNR [dB], abdomen window [-160, 240] HU, data range 1"
SSIM_PAPER = "SSIM, abdomen window [-160, 240] HU, data range 1"
PSNR_LDCT = "PSNR [dB], abdomen_ldct window [-150, 250] HU, data range 1"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _volume(path):
    return np.asarray(nib.load(path).dataobj, dtype=np.float64).transpose(2, 0, 1)  # (S, H, W) as read_volume


# ------------------------------------------------------------------------ aggregation
def test_mean_per_patient_then_over_patients_hand_computed():
    rows = [
        {"patient": "A", "slice": 0, "method": "ensemble", "psnr[abdomen]": 30.0, "noise_std_hu": 10.0},
        {"patient": "A", "slice": 1, "method": "ensemble", "psnr[abdomen]": 32.0, "noise_std_hu": math.nan},
        {"patient": "B", "slice": 0, "method": "ensemble", "psnr[abdomen]": 20.0, "noise_std_hu": 4.0},
        {"patient": "B", "slice": 1, "method": "ensemble", "psnr[abdomen]": 24.0, "noise_std_hu": 6.0},
        {"patient": "B", "slice": 2, "method": "ensemble", "psnr[abdomen]": 28.0, "noise_std_hu": 8.0},
    ]
    per_patient = aggregate_patients(rows)
    assert list(per_patient) == ["A", "B"]
    assert per_patient["A"]["ensemble"] == {"psnr[abdomen]": 31.0, "noise_std_hu": 10.0, "n_slices": 2}  # NaN: no ROI
    assert per_patient["B"]["ensemble"] == {"psnr[abdomen]": 24.0, "noise_std_hu": 6.0, "n_slices": 3}
    summary = summarize(per_patient)["ensemble"]
    # patients weigh equally (not slices): mean(31, 24); sample std = |31 - 24| / sqrt(2)
    assert summary["psnr[abdomen]"]["mean"] == pytest.approx(27.5)
    assert summary["psnr[abdomen]"]["std"] == pytest.approx(7.0 / math.sqrt(2.0))
    assert summary["noise_std_hu"]["mean"] == pytest.approx(8.0)
    assert summary["psnr[abdomen]"]["n"] == 2


def test_one_patient_has_no_std_and_infinity_propagates():
    rows = [{"patient": "A", "slice": k, "method": "F", "psnr[abdomen]": v} for k, v in enumerate([40.0, math.inf])]
    per_patient = aggregate_patients(rows)
    assert per_patient["A"]["F"]["psnr[abdomen]"] == math.inf
    stat = summarize(per_patient)["F"]["psnr[abdomen]"]
    assert stat["mean"] == math.inf and math.isnan(stat["std"])
    assert report.fmt(math.inf) == "inf" and report.fmt(math.nan) == "n/a" and report.fmt(1.23456, 2) == "1.23"
    assert report.fmt(-0.001, 1) == "0.0"


def test_nps_mean_over_patients_on_a_common_grid():
    # patient A: 0.1/mm steps up to 0.3; patient B (coarser pixels): 0.2/mm steps up to 0.4
    a = {"freq": np.array([0.0, 0.1, 0.2, 0.3]), "F": np.array([0.0, 1.0, 2.0, 3.0])}
    b = {"freq": np.array([0.0, 0.2, 0.4]), "F": np.array([0.0, 4.0, 8.0])}
    mean = mean_over_patients_nps({"A": a, "B": b})
    np.testing.assert_allclose(mean["freq"], [0.0, 0.2])  # coarsest step, lowest maximum
    np.testing.assert_allclose(mean["F"], [0.0, (2.0 + 4.0) / 2])


def test_column_labels_state_window_and_data_range():
    assert report.column_label("psnr[abdomen]") == PSNR_PAPER
    assert report.column_label("ssim[chest_ldct]") == "SSIM, chest_ldct window [-1350, 150] HU, data range 1"
    assert report_figures.window_label("abdomen_ldct") == "abdomen_ldct window [-150, 250] HU (LDCT benchmark, C 50 / W 400)"
    assert report_figures.window_label("chest") == "chest window [-400, 1000] HU (ISCL paper)"


def test_region_from_the_datalist_else_the_argument():
    from scripts.tasks.evaluation_data import REGION_WINDOWS, evaluation_region

    assert evaluation_region({"region": "chest"}, None) == "chest" and REGION_WINDOWS["chest"] == ("chest", "chest_ldct")
    assert evaluation_region({}, None) == "abdomen" and evaluation_region({}, "chest") == "chest"
    with pytest.warns(UserWarning, match="overrides the datalist's region 'abdomen'"):
        assert evaluation_region({"region": "abdomen"}, "chest") == "chest"
    with pytest.raises(ValueError, match="region='knee'"):
        evaluation_region({}, "knee")


def test_paired_items_errors_name_the_source(tmp_path):
    with pytest.raises(ValueError, match=r"lst\.json: no paired 'test' items"):
        paired_items({"validation": []}, "test", "lst.json")
    with pytest.raises(ValueError, match=r"test\[0\].*'label' \(full dose\)"):
        paired_items({"test": [{"image": str(tmp_path)}]}, "test", "lst.json")
    with pytest.raises(FileNotFoundError, match="nowhere.nii"):
        paired_items({"test": [{"image": str(tmp_path), "label": str(tmp_path / "nowhere.nii")}]}, "test", "x")
    items = paired_items({"test": [{"patient": "P", "image": str(tmp_path), "label": str(tmp_path)}] * 2})
    assert [it["patient"] for it in items] == ["P", "P#2"]


# ------------------------------------------------------------------ perfect prediction
def _phantom_pair(seed=0, n_slices=2, size=48):
    g = np.random.default_rng(seed)
    from scipy import ndimage

    full = np.stack([40.0 + 60.0 * ndimage.gaussian_filter(g.standard_normal((size, size)), 4) / 0.05
                     for _ in range(n_slices)])
    full[:, :, :8] = -1000.0  # some air
    low = full + 25.0 * g.standard_normal(full.shape)
    return low, full


def _perfect_results():
    """Every 'network' returns the reference: the evaluation of the label against itself."""
    rows, nps, ref_noise = [], {}, {}
    for pid, seed in (("P1", 0), ("P2", 1)):
        low, full = _phantom_pair(seed)
        res = evaluate_volume(low, full, {m: full for m in METHODS[1:]}, ("abdomen", "abdomen_ldct"), (0.7, 0.7))
        rows += [{"patient": pid, **r} for r in res["slices"]]
        nps[pid] = res["nps"]
        ref_noise[pid] = float(np.mean(res["reference_noise_std_hu"]))
    figures = [{"patient": "P1", "slice": 0, "low_dose": low[0], "ensemble": full[0], "full_dose": full[0]}]
    meta = {"data_source": "hand-made", "region": "abdomen", "model_path": "identity", "device": "cpu", "gamma": 0.5}
    return assemble_results(rows, nps, ref_noise, figures, meta), (low, full)


def test_perfect_prediction_reports_infinite_psnr_and_ssim_one(tmp_path):
    results, (low, full) = _perfect_results()
    for method in ("F", "x_minus_H", "ensemble"):
        s = results["summary"][method]
        assert s["psnr[abdomen]"]["mean"] == math.inf and s["psnr[abdomen_ldct]"]["mean"] == math.inf
        assert s["ssim[abdomen]"]["mean"] == pytest.approx(1.0, abs=1e-12)
        assert s["bias_hu"]["mean"] == 0.0
        assert np.all(results["nps"]["mean"][method] == 0.0)
    # the floor row of the last patient is the low-dose input scored directly
    direct = np.mean([windowed_psnr(low[k], full[k], "abdomen") for k in range(len(full))])
    assert results["per_patient"]["P2"]["low_dose"]["psnr[abdomen]"] == pytest.approx(direct, rel=1e-12)

    path = report.write_report(results, str(tmp_path / "report"))
    rows = read_csv(tmp_path / "report" / "metrics.csv")
    ensemble = [r for r in rows if r["method"] == "ensemble"]
    assert [r["patient"] for r in ensemble] == ["P1", "P2", "mean"]
    assert all(r[PSNR_PAPER] == "inf" and float(r[SSIM_PAPER]) == 1.0 for r in ensemble)
    assert all(math.isfinite(float(r[PSNR_PAPER])) for r in rows if r["method"] == "low_dose")
    text = open(path).read()
    assert "| ensemble (gamma = 0.5) | inf | 1.0000 ± 0.0000 | " in text
    assert "| P2 | ensemble (gamma = 0.5) | 2 | inf | 1.0000 | inf | 1.0000 |" in text
    for png in glob.glob(str(tmp_path / "report" / "figures" / "*.png")):
        Image.open(png).verify()


# ------------------------------------------------------------------ atomic report folder
def test_report_folder_is_replaced_whole_or_left_alone(tmp_path, monkeypatch):
    results, _ = _perfect_results()
    out = tmp_path / "report"
    report.write_report(results, str(out))
    (out / "figures" / "stale.png").write_bytes(b"old")
    with pytest.raises(ValueError, match="previous evaluation report .* overwrite"):
        report.write_report(results, str(out))  # like denoise: replacing asks for overwrite
    assert (out / "figures" / "stale.png").read_bytes() == b"old"
    report.write_report(results, str(out), overwrite=True)  # a previous report is replaced as a whole
    assert not (out / "figures" / "stale.png").exists()
    before = {p: os.path.getmtime(p) for p in glob.glob(str(out / "**"), recursive=True)}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "residual_nps_figure", broken)
    with pytest.raises(RuntimeError):
        report.write_report(results, str(out), overwrite=True)
    assert {p: os.path.getmtime(p) for p in glob.glob(str(out / "**"), recursive=True)} == before
    with pytest.raises(RuntimeError):
        report.write_report(results, str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["report"]  # no new folder, no temporary left

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an evaluation report"):
        report.check_out_dir(str(foreign), overwrite=True)  # overwrite never replaces other files


# ------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    datalist = simulated_datalist(str(root / "simulated"), TINY)
    torch.manual_seed(0)
    model_path = str(root / "model.pt")
    torch.save(ISCLDenoiser().state_dict(), model_path)
    out = str(root / "report")
    results = evaluate(datalist, out, model_path=model_path, device="cpu", progress=False, max_figures=3)
    return {"root": root, "datalist": datalist, "model": model_path, "out": out, "results": results}


def test_end_to_end_metrics_csv(tiny):
    rows = read_csv(os.path.join(tiny["out"], "metrics.csv"))
    patients = [it["patient"] for it in json.load(open(tiny["datalist"]))["test"]]
    assert len(patients) == 2
    assert len(rows) == 4 * (len(patients) + 1)
    assert [(r["patient"], r["method"]) for r in rows] == [(p, m) for p in patients + ["mean"] for m in METHODS]
    assert list(rows[0]) == ["patient", "method", "description", "slices", PSNR_PAPER, SSIM_PAPER, PSNR_LDCT,
                             "SSIM, abdomen_ldct window [-150, 250] HU, data range 1",
                             "noise std [HU], flat soft-tissue ROI",
                             "HU bias [HU] (method - full dose), flat soft-tissue ROI"]
    assert all(r["slices"] == "2" for r in rows if r["patient"] != "mean")
    for r in rows:  # finite metrics for a random model
        assert math.isfinite(float(r[PSNR_PAPER])) and -1.0 <= float(r[SSIM_PAPER]) <= 1.0


def test_low_dose_row_is_the_input_scored_directly(tiny):
    rows = read_csv(os.path.join(tiny["out"], "metrics.csv"))
    items = json.load(open(tiny["datalist"]))["test"]
    direct = {}
    for it in items:
        low, full = _volume(it["image"]), _volume(it["label"])
        direct[it["patient"]] = (np.mean([windowed_psnr(low[k], full[k], "abdomen") for k in range(len(full))]),
                                 np.mean([windowed_ssim(low[k], full[k], "abdomen_ldct") for k in range(len(full))]))
        got = tiny["results"]["per_patient"][it["patient"]]["low_dose"]
        assert got["psnr[abdomen]"] == pytest.approx(direct[it["patient"]][0], rel=1e-12)
        assert got["ssim[abdomen_ldct]"] == pytest.approx(direct[it["patient"]][1], rel=1e-12)
    csv_rows = {r["patient"]: r for r in rows if r["method"] == "low_dose"}
    for pid, (psnr, _) in direct.items():
        assert float(csv_rows[pid][PSNR_PAPER]) == pytest.approx(psnr, rel=1e-5)
    assert float(csv_rows["mean"][PSNR_PAPER]) == pytest.approx(np.mean([v[0] for v in direct.values()]), rel=1e-5)


def test_combined_branches_equal_three_model_runs(tiny):
    """F and H run once; the three outputs equal denoise_volume with model.gamma = 1, 0, 0.5."""
    from scripts.tasks.inference import denoise_volume, load_denoiser
    from scripts.volumes.volume_io import read_volume

    item = json.load(open(tiny["datalist"]))["test"][0]
    low = read_volume(item["image"]).hu[:1]  # one slice is enough (and cheap)
    model = load_denoiser(tiny["model"], gamma=0.5, device="cpu")
    outputs = model_outputs(low, model, device="cpu")
    for method, gamma in (("F", 1.0), ("x_minus_H", 0.0), ("ensemble", 0.5)):
        model.gamma = gamma
        expected = denoise_volume(low, model, device="cpu", progress=False)
        got = np.stack([outputs[method](k) for k in range(len(low))])
        assert np.abs(got - expected).max() < 0.01, method


def test_report_markdown_and_figures(tiny):
    text = open(os.path.join(tiny["out"], "report.md")).read()
    for label in ("abdomen window [-160, 240] HU (ISCL paper), data range 1",
                  "abdomen_ldct window [-150, 250] HU (LDCT benchmark, C 50 / W 400), data range 1",
                  tiny["model"], tiny["datalist"], "**Device**: CPU ",
                  f"{torch.get_num_threads()} torch threads; inference mode", "low-dose input (floor)",
                  "x - H(x) alone (gamma = 0)", "ensemble (gamma = 0.5)", "figures/nps.png"):
        assert label in text, label
    figures = sorted(os.listdir(os.path.join(tiny["out"], "figures")))
    assert len(figures) == 4 and "nps.png" in figures  # max_figures=3 slices (2 + 1 over 2 patients) + NPS
    for name in figures:
        with Image.open(os.path.join(tiny["out"], "figures", name)) as image:
            image.load()
            assert image.format == "PNG" and image.size[0] > 300
        assert f"figures/{name}" in text
    nps_rows = read_csv(os.path.join(tiny["out"], "nps.csv"))
    assert {r["method"] for r in nps_rows} == set(METHODS) and "mean" in {r["patient"] for r in nps_rows}
    assert not [p for p in os.listdir(tiny["root"]) if ".tmp-" in p or ".old-" in p]


def test_bundle_config_runs_and_defaults_to_the_simulated_set(tiny, tmp_path):
    from monai.bundle import ConfigParser, run

    parser = ConfigParser()
    parser.read_config(EVALUATE_CONFIG)
    parser.update({"dataset_dir": str(tiny["root"] / "simulated"), "simulation": TINY})
    assert parser.get_parsed_content("evaluation_datalist") == tiny["datalist"]

    out = tmp_path / "config_report"
    run("evaluating", config_file=EVALUATE_CONFIG, logging_file=False, datalist=tiny["datalist"],
        output_dir=str(out), model_path=tiny["model"], device="cpu", max_figures=1, progress=False)
    rows = read_csv(out / "metrics.csv")
    ours = read_csv(os.path.join(tiny["out"], "metrics.csv"))
    assert [r[PSNR_PAPER] for r in rows] == [r[PSNR_PAPER] for r in ours]


# ------------------------------------------------------------------------ CLI and errors
def _cli(args, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    return info.value.code, capsys.readouterr().err


def test_cli_missing_datalist_exits_2_with_one_line(tmp_path):
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, CLI, "evaluate", "--datalist", str(tmp_path / "missing.json"),
                             "--out", str(out), "--device", "cpu"], cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.json" in lines[0], result.stderr
    assert not out.exists()


def test_cli_unpaired_datalist_exits_2(tiny, tmp_path, capsys):
    datalist = json.load(open(tiny["datalist"]))
    path = tmp_path / "unpaired.json"
    path.write_text(json.dumps({"training_noisy": datalist["training_noisy"],
                                "test": [{"image": it["image"]} for it in datalist["test"]]}))
    code, err = _cli(["evaluate", "--datalist", str(path), "--out", str(tmp_path / "r"), "--model_path",
                      tiny["model"], "--device", "cpu"], capsys)
    assert code == 2 and err.count("\n") == 1 and "unpaired.json" in err and "'label' (full dose)" in err
    path.write_text(json.dumps({"training_noisy": datalist["training_noisy"]}))
    code, err = _cli(["evaluate", "--datalist", str(path), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and err.startswith("error: ") and "no paired 'test' items" in err
    assert not (tmp_path / "r").exists()


def test_failure_midway_leaves_nothing(tiny, tmp_path, capsys):
    """The second pair has mismatched shapes: found after the first patient was evaluated."""
    items = json.load(open(tiny["datalist"]))["test"]
    other = tmp_path / "other.nii"
    volume = np.zeros((32, 32, 2), np.float32)
    volume[:4] = -1000.0  # air: a CT without air is refused as not HU
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(other))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"test": [items[0], {"patient": "X", "image": items[1]["image"], "label": str(other)}]}))
    code, err = _cli(["evaluate", "--datalist", str(path), "--out", str(tmp_path / "r"), "--model_path",
                      tiny["model"], "--device", "cpu"], capsys)
    assert code == 2 and "other.nii" in err and "same shape" in err
    assert sorted(os.listdir(tmp_path)) == ["bad.json", "other.nii"]


def test_cli_writes_the_report(tiny, tmp_path, capsys):
    out = tmp_path / "cli_report"
    cli.main(["evaluate", "--datalist", tiny["datalist"], "--out", str(out), "--model_path", tiny["model"],
              "--device", "cpu", "--max_figures", "0"])
    assert os.path.realpath(capsys.readouterr().out.strip().splitlines()[-1]) == os.path.realpath(out / "report.md")
    assert sorted(os.listdir(out)) == ["figures", "metrics.csv", "nps.csv", "report.md"]
    assert os.listdir(out / "figures") == ["nps.png"]
    before = (out / "metrics.csv").stat().st_mtime_ns
    args = ["evaluate", "--datalist", tiny["datalist"], "--out", str(out), "--model_path", tiny["model"],
            "--device", "cpu", "--max_figures", "0"]
    code, err = _cli(args, capsys)  # an existing report is kept unless --overwrite
    assert code == 2 and err.count("\n") == 1 and "previous evaluation report" in err and "overwrite" in err
    assert (out / "metrics.csv").stat().st_mtime_ns == before
    cli.main(args + ["--overwrite"])
    assert (out / "metrics.csv").stat().st_mtime_ns != before
