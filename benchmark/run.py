"""The quality benchmark: every method of ``benchmark.json`` on the same test sets, one table.

``run_benchmark(out_dir, budget, seeds)``:
1. test sets (``benchmark_data``): the simulated test patients and the real CT slices at each dose of
   ``real_ct_doses`` -- none of them seen by any method in training;
2. per method and seed (deterministic methods -- input, BM3D, shipped weights -- once): its denoiser
   (``benchmark_methods``, trained and cached on first use), then per test set the per-slice metrics of
   ``evaluate.evaluate_volume`` (PSNR/SSIM in every window of ``windows``, data range 1; flat-ROI noise
   std and HU bias), cached in ``<out>/cache/metrics/<method>-<digest>_seed<k>.json`` with its output
   on the figure slice (``.npy``);
3. per test set and method: the mean over cases for each seed, then mean +- sample std over seeds;
   ``benchmark_report`` writes ``results.csv``, ``results.md`` and the figures.
A second run with the same ``out_dir`` reuses every cached model and metric: only the table is redrawn
(each method's cache name carries a digest of its settings and of the budget section it trains with;
metrics are recomputed when the test sets changed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from scripts.core.atomic import write_json
from .data import TestSet, real_ct_test_set, real_ct_volume_test_sets, simulated_test_set
from .methods import TRAINED_BASELINES, Context, cache_name, make_denoiser
from scripts.datasets.data import read_json, resolve_datalist
from scripts.core.device import describe_device, resolve_device
from scripts.tasks.evaluate import evaluate_volume
from scripts.core.summary import nanmean

__all__ = ["BENCHMARK_CONFIG", "figure_panels", "load_config", "run_benchmark", "summarise"]

logger = logging.getLogger("iscl.benchmark")
BENCHMARK_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark.json")
DETERMINISTIC = ("input", "bm3d", "shipped")
#: the figure slice: first case of the simulated test set, its middle slice
FIGURE_SET = "simulated"


def load_config(config_file: str = BENCHMARK_CONFIG, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(overrides)
    return parser


def _figure_slice(test_set: TestSet) -> int:
    return test_set.cases[0].full.shape[0] // 2


def figure_panels(test_set: TestSet, outputs: Dict[str, str]) -> dict:
    """The crop figure's data: the first case's figure slice (low and full dose) of ``test_set`` and each
    method's saved output of that slice (``outputs``: method -> ``.npy``)."""
    case, k = test_set.cases[0], _figure_slice(test_set)
    return {"low_dose": case.low[k], "full_dose": case.full[k], "caption": f"{case.name}, slice {k}", "outputs": outputs}


def evaluate_method(denoiser, test_sets: Sequence[TestSet], windows: Sequence[str]) -> tuple[dict, Optional[np.ndarray]]:
    """Per test set the per-slice metric rows of one denoiser, and its output on the figure slice."""
    rows, figure = {}, None
    for test_set in test_sets:
        rows[test_set.name] = []
        for case in test_set.cases:
            start = time.perf_counter()
            denoised = denoiser(case.low, case.pixel_spacing[0], test_set.i0)
            seconds = (time.perf_counter() - start) / case.full.shape[0]
            result = evaluate_volume(case.low, case.full, {"method": denoised}, windows, case.pixel_spacing)
            rows[test_set.name] += [{"case": case.name, "seconds_per_slice": seconds, **row}
                                    for row in result["slices"] if row["method"] == "method"]
            if figure is None and test_set.name == FIGURE_SET:
                figure = np.asarray(denoised[_figure_slice(test_set)], np.float32)
    return rows, figure


def _method_results(name: str, spec: dict, seed: int, context: Context, test_sets, windows) -> dict:
    """One method and seed: cached metrics, or its denoiser run over the test sets now."""
    folder = os.path.join(context.cache_dir, "metrics")
    path = os.path.join(folder, cache_name(context, name, seed) + ".json")
    if os.path.isfile(path):
        cached = read_json(path, "cached benchmark metrics", ValueError)
        if set(cached["rows"]) == {t.name for t in test_sets}:
            return cached
    denoiser, facts = make_denoiser(name, spec, seed, context)
    rows, figure = evaluate_method(denoiser, test_sets, windows)
    os.makedirs(folder, exist_ok=True)
    if figure is not None:
        np.save(os.path.join(folder, cache_name(context, name, seed) + ".npy"), figure)
    results = {"method": name, "seed": seed, "facts": facts, "rows": rows}
    write_json(results, path)
    return results


def summarise(per_seed: Dict[str, List[dict]]) -> List[dict]:
    """``{method: [results of each seed]}`` -> one row per (test set, method): for every metric the mean
    over the seeds of the per-seed mean over slices, its sample std (NaN for one seed) and n seeds."""
    table = []
    for method, seeds in per_seed.items():
        for test_set in seeds[0]["rows"]:
            keys = [k for k in seeds[0]["rows"][test_set][0] if k not in ("case", "slice", "method")]
            row = {"test_set": test_set, "method": method, "n_seeds": len(seeds)}
            for key in keys:
                means = [nanmean(r.get(key, math.nan) for r in s["rows"][test_set]) for s in seeds]
                row[key] = float(np.mean(means))
                row[key + " std"] = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
            table.append(row)
    return table


def _digest(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()[:8]


def _budget_section(kind: str, settings: dict):
    """The part of a budget a method of ``kind`` trains with (None: it does not train)."""
    if kind == "iscl":  # the training configs' text too: an edited train.json retrains ISCL
        return [settings["iscl"], [_file_digest(p) for p in settings["train_config"]]]
    return settings["baselines"] if kind in TRAINED_BASELINES else None


def training_schedule(train_config: Sequence[str]) -> dict:
    """``num_iterations``, ``batch_size``, ``epoch_length``, ``patch_size`` of the layered training configs."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(train_config))
    return {key: parser.get_parsed_content(key) for key in ("num_iterations", "batch_size", "epoch_length", "patch_size")}


def resolve_budget(budget: dict) -> dict:
    """A budget with its schedules filled in from its training configs (train.json, + train_paper.json for the
    paper): ISCL and the trained baselines at the configs' iterations, batch and patch size, each unless the
    budget's own ``iscl`` / ``baselines`` section says otherwise."""
    schedule = training_schedule(budget["train_config"])
    iscl = {key: schedule[key] for key in ("num_iterations", "batch_size", "epoch_length")}
    baselines = {"iterations": schedule["num_iterations"], "batch_size": schedule["batch_size"],
                 "patch_size": schedule["patch_size"]}
    return {**budget, "iscl": {**iscl, **budget.get("iscl", {})}, "baselines": {**baselines, **budget.get("baselines", {})}}


def _method_cache_names(parser, names: Sequence[str], settings: dict) -> Dict[str, str]:
    """Method -> name + digest of its raw settings, of the network configs it refers to and of the budget
    section it trains with: a method whose settings or budget change is trained again, the others not."""
    out = {}
    for name in names:
        raw = parser.get(f"methods#{name}")
        referred = {key: parser.get(value[1:]) for key, value in raw.items()
                    if isinstance(value, str) and value.startswith("@")}
        parts = [raw, referred.pop("network", None), _budget_section(raw["kind"], settings)]
        out[name] = f"{name}-{_digest(parts + ([referred] if referred else []))}"  # one network: the digest as before
    return out


def _test_sets(datalist: dict, doses: Sequence[float], volume: dict) -> List[TestSet]:
    volume_sets = (real_ct_volume_test_sets(volume["data_dir"], volume["downloads_dir"], volume["slice_step"])
                   if volume["enabled"] else [])
    return [simulated_test_set(datalist)] + [real_ct_test_set(float(i0)) for i0 in doses] + volume_sets


def run_benchmark(out_dir: str, budget: str = "cpu", seeds: int = 1, methods: Optional[Sequence[str]] = None,
                  device=None, config_file: str = BENCHMARK_CONFIG, progress: bool = True, **overrides) -> dict:
    """Run (or re-render from the cache) the benchmark into ``out_dir``; returns the results dict and
    writes ``results.csv``, ``results.md`` and ``figures/`` there (see ``benchmark_report``).  ``overrides``:
    config ids to replace (e.g. ``simulation``, ``real_ct_doses``, ``budgets``), as on the command line."""
    from . import report as benchmark_report

    parser = load_config(config_file, **overrides)
    budgets = parser.get_parsed_content("budgets")
    if budget not in budgets:
        raise ValueError(f"budget={budget!r}: expected one of {sorted(budgets)}.")
    settings = resolve_budget(budgets[budget])
    all_methods = parser.get_parsed_content("methods")
    chosen = list(all_methods) if methods is None else list(methods)
    unknown = [m for m in chosen if m not in all_methods]
    if unknown or int(seeds) < 1:
        raise ValueError(f"methods {unknown} not in {list(all_methods)}" if unknown else f"seeds={seeds}: need >= 1")
    out_dir = os.path.abspath(os.fspath(out_dir))
    dev = resolve_device(device)
    simulated = {"dataset_dir": parser.get_parsed_content("dataset_dir"),
                 "simulation": parser.get_parsed_content("simulation")}
    datalist = resolve_datalist(None, simulated["dataset_dir"], simulated["simulation"])
    volume = parser.get_parsed_content("real_ct_volume")
    context = Context(datalist, tuple(parser.get_parsed_content("hu_range")), settings,
                      os.path.join(out_dir, "cache", budget), dev, progress, settings["train_config"],
                      simulated, _method_cache_names(parser, chosen, settings),
                      (volume["data_dir"], volume["downloads_dir"]))
    windows = list(parser.get_parsed_content("windows"))
    test_sets = _test_sets(datalist, parser.get_parsed_content("real_ct_doses"), volume)
    per_seed = {}
    for name in chosen:
        spec = all_methods[name]
        runs = [0] if spec["kind"] in DETERMINISTIC else range(int(seeds))
        per_seed[name] = [_method_results(name, spec, seed, context, test_sets, windows) for seed in runs]
        logger.info("benchmark: %s done", name)
    schedule = settings["baselines"]
    description = (f"{settings['description']} ({schedule['iterations']} iterations x {schedule['batch_size']} "
                   f"patches of {schedule['patch_size']}²)")
    results = {"budget": budget, "budget_description": description, "windows": windows,
               "device": describe_device(dev), "test_sets": {t.name: t.description for t in test_sets},
               "labels": {m: all_methods[m].get("label", m) for m in chosen}, "per_seed": per_seed,
               "table": summarise(per_seed)}
    results["figure"] = figure_panels(test_sets[0], {  # the low dose is shown once
        m: os.path.join(context.cache_dir, "metrics", cache_name(context, m, 0) + ".npy")
        for m in chosen if all_methods[m]["kind"] != "input"})
    results["files"] = benchmark_report.write_results(results, out_dir)
    return results
