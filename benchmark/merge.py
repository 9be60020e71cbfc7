"""One table and figure from the cached metrics of several benchmark runs: nothing is trained or scored.

    python -m benchmark.merge OUT RUN [RUN ...] [--budget cpu] [--methods low_dose,uidnet,...]

Each RUN is a benchmark output folder (``cli.py benchmark --out RUN``); its
``cache/<budget>/metrics/<method>-<digest>_seed<k>.json`` files are read (a method found in several runs:
the first run listed wins), summarised per test set as ``run.run_benchmark`` does, and written to OUT by
``report.write_results`` (results.csv, results.md, figures/psnr.png, figures/crops.png).  For drawing
methods measured in different runs together, e.g. one added after the others were measured; only test
sets every chosen method was scored on are kept.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
from typing import Dict, List, Optional, Sequence

from scripts.datasets.data import read_json, resolve_datalist
from .data import simulated_test_set
from .report import write_results
from .run import FIGURE_SET, figure_panels, load_config, summarise

__all__ = ["cached_runs", "merge_runs", "main"]

_METRICS = re.compile(r"(?P<method>.+)-[0-9a-f]{8}_seed(?P<seed>\d+)\.json$")


def cached_runs(runs: Sequence[str], budget: str = "cpu") -> Dict[str, List[dict]]:
    """``{method: [cached results of each seed]}`` from the runs' metrics caches, the first run winning."""
    found: Dict[str, List[dict]] = {}
    for run in runs:
        per_run: Dict[str, Dict[int, dict]] = {}
        for path in sorted(glob.glob(os.path.join(run, "cache", budget, "metrics", "*.json"))):
            match = _METRICS.match(os.path.basename(path))
            if match:
                results = read_json(path, "cached benchmark metrics", ValueError)
                results["figure_path"] = path[:-len(".json")] + ".npy"
                per_run.setdefault(match["method"], {})[int(match["seed"])] = results
        for method, seeds in per_run.items():
            found.setdefault(method, [seeds[k] for k in sorted(seeds)])
    return found


def merge_runs(out_dir: str, runs: Sequence[str], budget: str = "cpu", methods: Optional[Sequence[str]] = None,
               **overrides) -> dict:
    """Write the merged table and figures of ``runs`` into ``out_dir``; returns the results dict.  ``overrides``:
    benchmark.json ids, as for ``run_benchmark`` (the simulated set draws the figure's low and full dose)."""
    per_seed = cached_runs(runs, budget)
    chosen = list(methods) if methods else list(per_seed)
    missing = [m for m in chosen if m not in per_seed]
    if missing or not chosen:
        raise ValueError(f"no cached metrics of {missing or 'any method'} in {list(runs)} (budget {budget!r})")
    sets = [t for t in per_seed[chosen[0]][0]["rows"] if all(t in s["rows"] for m in chosen for s in per_seed[m])]
    per_seed = {m: [{**s, "rows": {t: s["rows"][t] for t in sets}} for s in per_seed[m]] for m in chosen}
    config = load_config(**overrides)
    specs = {m: config.get(f"methods#{m}") or {} for m in chosen}
    labels = {m: specs[m].get("label", m) for m in chosen}
    results = {"budget": budget, "budget_description": f"cached metrics of {', '.join(runs)}", "windows": ["abdomen"],
               "device": "as each method's budget column says", "test_sets": {t: t for t in sets}, "labels": labels,
               "per_seed": per_seed, "table": summarise(per_seed)}
    datalist = resolve_datalist(None, config.get_parsed_content("dataset_dir"), config.get_parsed_content("simulation"))
    outputs = {m: per_seed[m][0]["figure_path"] for m in chosen if specs[m].get("kind") != "input"}
    results["figure"] = figure_panels(simulated_test_set(datalist), outputs if FIGURE_SET in sets else {})
    results["files"] = write_results(results, os.path.abspath(out_dir))
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--budget", default="cpu")
    parser.add_argument("--methods", default=None, help="comma-separated, in table order (default: all found)")
    args = parser.parse_args(argv)
    results = merge_runs(args.out, args.runs, args.budget, args.methods.split(",") if args.methods else None)
    print("\n".join(results["files"].values()))


if __name__ == "__main__":
    main()
