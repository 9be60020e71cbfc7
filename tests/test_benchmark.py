"""The quality benchmark: test sets, the table and figures on fixed numbers, and every method kind end to end
on tiny data (then re-rendered from the cache without training)."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import BUNDLE_ROOT

from benchmark import methods as benchmark_methods, report as benchmark_report, run as benchmark
from benchmark.data import real_ct_test_set

TINY_SIMULATION = {"n_clean": 2, "n_noisy": 2, "n_validation": 1, "n_test": 2, "size": 64, "slices_per_patient": 2,
                   "n_angles": 32, "progress": False}
TINY_BUDGETS = {"cpu": {"description": "tiny test budget", "train_config": ["@train_json"],
                        "iscl": {"num_iterations": 2, "batch_size": 2, "epoch_length": 2},
                        "baselines": {"iterations": 3, "batch_size": 2, "patch_size": 32, "learning_rate": 0.001}}}
TINY_METHODS = ["low_dose", "bm3d", "bm3d_psd", "dncnn", "dncnn_shipped_budget", "red_cnn", "noise2void", "noise2self", "uidnet", "iscl_A",
                "iscl_shipped"]


def _row(test_set, method, psnr, std=math.nan):
    return {"test_set": test_set, "method": method, "n_seeds": 2, "psnr[abdomen]": psnr, "psnr[abdomen] std": std,
            "ssim[abdomen]": 0.8, "ssim[abdomen] std": math.nan, "noise_std_hu": 10.0, "noise_std_hu std": math.nan,
            "bias_hu": 0.5, "bias_hu std": math.nan}


def test_summarise_takes_the_mean_over_slices_then_mean_and_std_over_seeds():
    seeds = [{"rows": {"sim": [{"case": "a", "slice": 0, "method": "method", "psnr[abdomen]": v},
                               {"case": "a", "slice": 1, "method": "method", "psnr[abdomen]": v + 2.0}]}}
             for v in (29.0, 31.0)]
    (row,) = benchmark.summarise({"dncnn": seeds})
    assert row["test_set"] == "sim" and row["method"] == "dncnn" and row["n_seeds"] == 2
    assert row["psnr[abdomen]"] == pytest.approx(31.0)  # seed means 30 and 32
    assert row["psnr[abdomen] std"] == pytest.approx(math.sqrt(2.0))
    (single,) = benchmark.summarise({"bm3d": seeds[:1]})
    assert single["psnr[abdomen]"] == pytest.approx(30.0) and math.isnan(single["psnr[abdomen] std"])


def _fixed_results():
    table = [_row("sim", "low_dose", 28.0), _row("sim", "bm3d", 30.0), _row("sim", "dncnn", 31.0, 0.2),
             _row("sim", "iscl_A", 22.0, 0.5), _row("sim", "iscl_ABC", 29.0), _row("sim", "iscl_ABCD", 30.5),
             _row("sim", "iscl_ABCDE", 30.8, 0.1), _row("sim", "iscl_shipped", 32.0),
             _row("sim", "dncnn_shipped_budget", 33.0)]
    facts = {"iterations": 800, "batch_size": 8, "wall_s": 300.0, "device": "cpu (2 threads)"}
    per_seed = {r["method"]: [{"facts": facts if r["method"] in ("dncnn", "iscl_A") else None}] for r in table}
    per_seed["dncnn"].append({"facts": dict(facts, wall_s=360.0)})  # a second seed, a minute slower
    return {"budget": "cpu", "budget_description": "fixed", "windows": ["abdomen"], "device": "cpu (2 threads)",
            "test_sets": {"sim": "fixed numbers"}, "labels": {r["method"]: r["method"].upper() for r in table},
            "per_seed": per_seed, "table": table,
            "figure": {"low_dose": np.zeros((16, 16)), "full_dose": np.zeros((16, 16)), "caption": "fixed"}}


def test_table_and_figures_from_fixed_numbers(tmp_path):
    results = _fixed_results()
    files = benchmark_report.write_results(results, str(tmp_path))
    with open(files["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == [r["method"] for r in results["table"]]
    dncnn = next(r for r in rows if r["method"] == "dncnn")
    assert float(dncnn["psnr[abdomen]"]) == 31.0 and float(dncnn["psnr[abdomen] std"]) == 0.2
    assert dncnn["budget"] == "800 x 8, 5.0–6.0 min (cpu (2 threads))" and dncnn["data_range"] == "1"
    iscl_a = next(r for r in rows if r["method"] == "iscl_A")
    assert iscl_a["budget"] == "800 x 8, 5.0 min (cpu (2 threads))"
    assert next(r for r in rows if r["method"] == "bm3d")["budget"] == "no training"
    text = open(files["markdown"]).read()
    assert "| DNCNN | 31.00 ± 0.20 | 0.800 |" in text and "| 30.57 |" in text  # measured, then the paper's
    assert "sim: shipped ISCL − best BM3D = +2.00 dB (goal ≥ +0.5)" in text
    assert "sim: ISCL − DnCNN, both at the budget's schedule = -0.20 dB (goal within 0.5)" in text
    assert "sim: shipped ISCL − DnCNN at its budget = -1.00 dB (goal within 0.5)" in text
    assert "reproduced (22.00 < 29.00 < 30.50 < 30.80)" in text
    for name in ("bars", "crops"):
        assert open(files[name], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_goals_say_when_the_ablation_order_is_not_reproduced():
    results = _fixed_results()
    next(r for r in results["table"] if r["method"] == "iscl_ABCD")["psnr[abdomen]"] = 31.5
    assert any("not reproduced" in line for line in benchmark_report.goals(results))


def test_real_ct_test_set_has_each_slice_at_the_dose():
    test_set = real_ct_test_set(12500.0)
    assert test_set.i0 == 12500.0 and len(test_set.cases) == 3 and "I0 12500" in test_set.name
    for case in test_set.cases:
        assert case.low.shape == case.full.shape and case.low.ndim == 3
        soft = (case.full > -100) & (case.full < 100)
        assert 5.0 < np.std((case.low - case.full)[soft]) < 200.0  # a CT noise level, not zero, not garbage


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    overrides = {"dataset_dir": str(out / "simulated"), "simulation": TINY_SIMULATION,
                 "real_ct_doses": [], "real_ct_volume#enabled": False, "budgets": TINY_BUDGETS, "methods#dncnn_shipped_budget#iterations": 4}
    results = benchmark.run_benchmark(str(out / "run"), methods=TINY_METHODS, seeds=2, device="cpu", progress=False,
                                      **overrides)
    return out, overrides, results


def test_every_method_kind_runs_end_to_end(tiny_benchmark):
    out, _, results = tiny_benchmark
    assert [r["method"] for r in results["table"]] == TINY_METHODS
    by_method = {r["method"]: r for r in results["table"]}
    assert by_method["low_dose"]["n_seeds"] == 1 and by_method["dncnn"]["n_seeds"] == 2  # trained methods per seed
    for row in results["table"]:
        assert np.isfinite(row["psnr[abdomen]"]) and 0.0 < row["ssim[abdomen]"] <= 1.0, row
    assert by_method["bm3d"]["noise_std_hu"] < by_method["low_dose"]["noise_std_hu"]
    facts = results["per_seed"]["iscl_A"][1]["facts"]
    assert facts["iterations"] == 2 and facts["components"]["noise_extractor"] is False
    (cache,) = (out / "run" / "cache").iterdir()
    (model,) = cache.glob("iscl_A-*_seed1/model.pt")
    assert cache.name == "cpu" and model.is_file()
    # (A) exports F alone: its model file says gamma 1, so the row measures F, not 0.5 F + 0.5 x
    from scripts.model.model_facts import read_model_facts

    assert read_model_facts(model)["gamma"] == 1.0
    # a method's own schedule replaces the budget's (the shipped-budget DnCNN), the rest is the budget's
    assert results["per_seed"]["dncnn"][0]["facts"]["iterations"] == 3
    shipped_budget = results["per_seed"]["dncnn_shipped_budget"][0]["facts"]
    assert shipped_budget["iterations"] == 4 and shipped_budget["batch_size"] == 2


def test_second_run_redraws_the_table_from_the_cache_without_training(tiny_benchmark, monkeypatch):
    out, overrides, first = tiny_benchmark

    def no_training(*args, **kwargs):
        raise AssertionError("a cached method was trained again")

    monkeypatch.setattr(benchmark, "make_denoiser", no_training)
    monkeypatch.setattr(benchmark_methods, "train_baseline", no_training)
    again = benchmark.run_benchmark(str(out / "run"), methods=TINY_METHODS, seeds=2, device="cpu", progress=False,
                                    **overrides)
    assert again["table"] == first["table"]
    cached = sorted(p.name for p in (out / "run" / "cache").rglob("*"))
    layer = out / "tiny.json"
    layer.write_text(json.dumps(overrides))
    command = [sys.executable, os.path.join(BUNDLE_ROOT, "scripts", "cli.py"), "benchmark", str(out / "run"),
               "--methods", "low_dose,dncnn", "--seeds", "2", "--device", "cpu", "--config_file", str(layer)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(out))  # the cached run: no training
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("results.md")
    assert sorted(p.name for p in (out / "run" / "cache").rglob("*")) == cached  # nothing trained or scored again
    assert "DnCNN (supervised, paired)" in (out / "run" / "results.md").read_text()


def test_unknown_method_or_budget_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="budget='gpu'"):
        benchmark.run_benchmark(str(tmp_path / "out"), budget="gpu")
    with pytest.raises(ValueError, match=r"methods \['dncn'\] not in"):
        benchmark.run_benchmark(str(tmp_path / "out"), methods=["dncn"])
    assert not (tmp_path / "out").exists()


def _cache_names(**overrides):
    parser = benchmark.load_config(**overrides)
    methods = ["dncnn", "noise2void", "iscl_A", "bm3d"]
    return benchmark._method_cache_names(parser, methods, benchmark.resolve_budget(parser.get_parsed_content("budgets")["cpu"]))


def test_a_method_whose_settings_or_budget_change_gets_a_new_cache_name():
    names, wider = _cache_names(), _cache_names(**{"dncnn#features": 32})
    other_lr = _cache_names(**{"methods#noise2void#learning_rate": 1e-4})
    assert names["dncnn"].startswith("dncnn-") and names["dncnn"] != wider["dncnn"]
    assert names["noise2void"] == wider["noise2void"] != other_lr["noise2void"]
    assert names["dncnn"] == other_lr["dncnn"]
    # a longer baseline schedule retrains the baselines only; a longer ISCL schedule ISCL only
    longer_baselines = _cache_names(**{"budgets#cpu#baselines#iterations": 800})
    longer_iscl = _cache_names(**{"budgets#cpu#iscl": {"num_iterations": 800}})
    assert longer_baselines["dncnn"] != names["dncnn"] and longer_baselines["noise2void"] != names["noise2void"]
    assert longer_baselines["iscl_A"] == names["iscl_A"] != longer_iscl["iscl_A"]
    assert longer_iscl["dncnn"] == names["dncnn"] and longer_iscl["bm3d"] == names["bm3d"] == longer_baselines["bm3d"]


def test_an_edited_training_config_retrains_iscl_only(tmp_path):
    import shutil

    edited = tmp_path / "train.json"
    shutil.copy(benchmark.load_config().get_parsed_content("train_json"), edited)
    same = _cache_names(train_json=str(edited))
    assert same == _cache_names()  # the same text under another path: nothing retrains
    edited.write_text(edited.read_text().replace('"cycle_weight": 30.0', '"cycle_weight": 10.0'))
    assert "\"cycle_weight\": 10.0" in edited.read_text()  # the edit took
    changed = _cache_names(train_json=str(edited))
    assert changed["iscl_A"] != same["iscl_A"] and changed["dncnn"] == same["dncnn"]


def test_the_real_ct_volume_gives_one_test_set_per_dose(tmp_path, monkeypatch):
    from scripts.datasets import real_ct
    from benchmark.data import real_ct_volume_test_sets
    from scripts.datasets.phantom import phantom
    from scripts.datasets.simulate import nifti_affine
    from scripts.volumes.volume_io import write_hu_nifti

    full = np.stack([phantom(64, 2, 6.0, z_mm=3.0 * k) for k in range(4)])
    write_hu_nifti(full, str(tmp_path / "full.nii"), nifti_affine(6.0, 3.0))
    test = []
    for i0 in (2.5e4, 5e3):
        write_hu_nifti(full + 1e5 / i0, str(tmp_path / f"low_{int(i0)}.nii"), nifti_affine(6.0, 3.0))
        test.append({"patient": "abdomen", "i0": i0, "image": str(tmp_path / f"low_{int(i0)}.nii"),
                     "label": str(tmp_path / "full.nii")})
    monkeypatch.setattr(real_ct, "make_real_ct_dataset", lambda data_dir, downloads_dir: {"test": test})
    sets = real_ct_volume_test_sets("unused", "unused", slice_step=2)
    assert [s.name for s in sets] == ["real CT volume, I0 25000", "real CT volume, I0 5000"]
    assert [s.i0 for s in sets] == [2.5e4, 5e3] and all(s.n_slices == 2 for s in sets)
    np.testing.assert_allclose(sets[1].cases[0].low - sets[1].cases[0].full, 20.0, atol=1e-3)


def test_a_supervised_method_on_real_ct_pairs_learns_from_the_real_ct_sets_pairs(tmp_path, monkeypatch):
    from scripts.datasets import real_ct
    from scripts.core.ct import hu_to_unit
    from scripts.datasets.phantom import phantom
    from scripts.datasets.simulate import nifti_affine
    from scripts.volumes.volume_io import write_hu_nifti

    full = np.stack([phantom(64, 3, 6.0, z_mm=3.0 * k) for k in range(3)])
    write_hu_nifti(full, str(tmp_path / "full.nii"), nifti_affine(6.0, 3.0))
    write_hu_nifti(full + 30.0, str(tmp_path / "low.nii"), nifti_affine(6.0, 3.0))
    pairs_item = {"patient": "lung1", "image": str(tmp_path / "low.nii"), "label": str(tmp_path / "full.nii")}
    monkeypatch.setattr(real_ct, "make_real_ct_dataset", lambda data_dir, cache_dir: {"training_pairs": [pairs_item]})
    context = benchmark_methods.Context({}, (-1024.0, 3072.0), {}, str(tmp_path), "cpu",
                                        real_ct_dirs=("unused", "unused"))
    pairs = benchmark_methods._training_slices({"kind": "supervised", "pairs": "real_ct"}, context, seed=0)
    assert len(pairs) == 3
    for k, (low, target) in enumerate(pairs):
        np.testing.assert_allclose(target, hu_to_unit(full[k], (-1024.0, 3072.0)), atol=1e-6)
        np.testing.assert_allclose(low - target, 30.0 / 2048.0, atol=1e-5)  # 30 HU in [-1, 1] units
    with pytest.raises(ValueError, match="supervised pairs='mayo'"):
        benchmark_methods._training_slices({"kind": "supervised", "pairs": "mayo"}, context, seed=0)


def test_the_paper_budget_trains_every_method_at_the_papers_schedule():
    budgets = benchmark.load_config().get_parsed_content("budgets")
    paper = benchmark.resolve_budget(budgets["paper"])
    assert (paper["iscl"]["num_iterations"], paper["iscl"]["batch_size"]) == (8000, 64)
    assert (paper["baselines"]["iterations"], paper["baselines"]["batch_size"], paper["baselines"]["patch_size"]) == (8000, 64, 64)


def test_paper_budget_counts_the_flops_torch_counts_and_uidnets_three_steps():
    from torch.utils.flop_counter import FlopCounterMode

    from benchmark.baseline_networks import DnCNN
    from benchmark.paper_budget import baseline_step, step_flops
    from benchmark.uidnet import NoiseGenerator, SharpenedCritic

    supervised = {"kind": "supervised", "network": lambda: DnCNN(depth=3, features=8)}
    with FlopCounterMode(display=False) as counter:
        baseline_step(supervised, 2, 16)()
    assert step_flops(baseline_step(supervised, 2, 16)) == counter.get_total_flops() > 0
    unpaired = {**supervised, "kind": "unpaired", "noise_generator": lambda: NoiseGenerator((4, 8, 16)),
                "critic": lambda patch_size: SharpenedCritic(patch_size, (4, 8, 8, 8))}
    assert step_flops(baseline_step(unpaired, 2, 16)) > step_flops(baseline_step(supervised, 2, 16))
    assert step_flops(baseline_step(supervised, 4, 16)) == 2 * step_flops(baseline_step(supervised, 2, 16))


def test_merging_cached_runs_redraws_their_table_without_training(tiny_benchmark, tmp_path, monkeypatch):
    from benchmark.merge import merge_runs

    out, overrides, first = tiny_benchmark
    monkeypatch.setattr(benchmark_methods, "make_denoiser", lambda *a, **k: (_ for _ in ()).throw(AssertionError()))
    merged = merge_runs(str(tmp_path / "merged"), [str(out / "run")], methods=["low_dose", "dncnn", "uidnet"],
                        **overrides)
    expected = [r for r in first["table"] if r["method"] in ("low_dose", "dncnn", "uidnet")]
    assert sorted(merged["table"], key=lambda r: r["method"]) == sorted(expected, key=lambda r: r["method"])
    assert merged["labels"]["uidnet"].startswith("UIDNet") and (tmp_path / "merged" / "figures" / "psnr.png").is_file()
    with pytest.raises(ValueError, match="no cached metrics"):
        merge_runs(str(tmp_path / "none"), [str(out / "run")], methods=["red_cnn_real_ct"], **overrides)
