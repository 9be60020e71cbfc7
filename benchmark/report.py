"""The benchmark's table and figures: ``results.csv``, ``results.md``, ``figures/psnr.png`` (bars with
error bars over seeds, per test set) and ``figures/crops.png`` (one slice: low dose, each method,
full dose, abdomen window).  Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from scripts.core.atomic import atomic_path
from scripts.core.ct import apply_window, resolve_window

__all__ = ["PAPER_ABDOMEN_PSNR", "budget_text", "write_results", "markdown", "goals"]

#: the paper's abdomen PSNR (Mayo, its Tables II and IV), for the side-by-side column
PAPER_ABDOMEN_PSNR = {"low_dose": None, "bm3d": 30.31, "dncnn": 30.57, "dncnn_shipped_budget": 30.57,
                      "noise2void": 28.32, "noise2self": 28.94,
                      "iscl_A": 22.33, "iscl_AB": 22.10, "iscl_ABC": 29.43, "iscl_ABCD": 30.13, "iscl_ABCDE": 30.61,
                      "iscl_shipped": 30.61}
MAIN_METRIC = "psnr[abdomen]"
COLUMNS = ("psnr[abdomen]", "ssim[abdomen]", "psnr[abdomen_ldct]", "psnr[chest]", "ssim[chest]", "psnr[chest_ldct]",
           "noise_std_hu", "bias_hu", "seconds_per_slice")
ABLATION_ORDER = ("iscl_A", "iscl_ABC", "iscl_ABCD", "iscl_ABCDE")


def budget_text(facts: Sequence[Optional[dict]]) -> str:
    """"iterations x batch, wall time (device)" of a trained method over its seeds (the wall time as a
    range when the seeds differ), or what it is otherwise."""
    first = facts[0]
    if not first:
        return "no training"
    if "trained" in first:
        return first["trained"]
    minutes = sorted({f"{f['wall_s'] / 60:.1f}" for f in facts}, key=float)
    wall = minutes[0] if len(minutes) == 1 else f"{minutes[0]}–{minutes[-1]}"
    return f"{first['iterations']} x {first['batch_size']}, {wall} min ({first['device']})"


def _budgets(results: dict) -> Dict[str, str]:
    return {m: budget_text([s["facts"] for s in seeds]) for m, seeds in results["per_seed"].items()}


def _cell(row: dict, key: str, digits: int) -> str:
    value, std = row.get(key, math.nan), row.get(key + " std", math.nan)
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _digits(key: str) -> int:
    return 3 if key.startswith("ssim") else 2 if key.startswith("psnr") or key.startswith("seconds") else 1


def goals(results: dict) -> List[str]:
    """The issue's goals, each stated with its measured margin, on every test set."""
    lines = []
    for test_set in results["test_sets"]:
        psnr = {r["method"]: r[MAIN_METRIC] for r in results["table"] if r["test_set"] == test_set}
        if "iscl_shipped" in psnr and "bm3d" in psnr:
            best_bm3d = max(value for method, value in psnr.items() if method.startswith("bm3d"))
            lines.append(f"{test_set}: shipped ISCL − best BM3D = {psnr['iscl_shipped'] - best_bm3d:+.2f} dB (goal ≥ +0.5)")
        for iscl, dncnn, what in (("iscl_ABCDE", "dncnn", "ISCL − DnCNN, both at the budget's schedule"),
                                  ("iscl_shipped", "dncnn_shipped_budget", "shipped ISCL − DnCNN at its budget")):
            if iscl in psnr and dncnn in psnr:
                lines.append(f"{test_set}: {what} = {psnr[iscl] - psnr[dncnn]:+.2f} dB (goal within 0.5)")
        order = [psnr[m] for m in ABLATION_ORDER if m in psnr]
        if len(order) == len(ABLATION_ORDER):
            kept = all(a < b for a, b in zip(order, order[1:]))
            lines.append(f"{test_set}: ablation A < A+B+C < +D < +E: {'reproduced' if kept else 'not reproduced'} "
                         f"({' < '.join(f'{v:.2f}' for v in order)})")
    return lines


def markdown(results: dict) -> str:
    budgets = _budgets(results)
    lines = [f"# ISCL benchmark — budget `{results['budget']}`", "",
             f"Budget: {results['budget_description']}. Device: {results['device']}.",
             "PSNR/SSIM after clipping to each window, window scaled to [0, 1] (data range 1); windows: "
             + ", ".join(f"{w} [{resolve_window(w)[0]:g}, {resolve_window(w)[1]:g}] HU" for w in results["windows"])
             + ". Noise: std in flat soft-tissue discs of the full dose (HU); bias: mean (method − full dose) there.",
             "Mean over test slices for each seed, then mean ± sample std over seeds (deterministic methods: one run).",
             "The paper column is the paper's Mayo abdomen PSNR — different data, for orientation only.", ""]
    header = "| method | " + " | ".join(COLUMNS) + " | paper (Mayo) | budget |"
    for test_set, description in results["test_sets"].items():
        lines += [f"## {test_set}", "", description, "", header, "|" + "---|" * (len(COLUMNS) + 3)]
        for row in (r for r in results["table"] if r["test_set"] == test_set):
            paper = PAPER_ABDOMEN_PSNR.get(row["method"])
            cells = [_cell(row, key, _digits(key)) for key in COLUMNS]
            lines.append(f"| {results['labels'][row['method']]} | " + " | ".join(cells)
                         + f" | {'–' if paper is None else paper} | {budgets[row['method']]} |")
        lines.append("")
    lines += ["## Goals", ""] + [f"- {line}" for line in goals(results)] + [""]
    return "\n".join(lines)


def _write_csv(results: dict, path: str) -> None:
    budgets = _budgets(results)
    keys = [k for k in results["table"][0] if k not in ("test_set", "method")]
    with atomic_path(path, ".csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["test_set", "method", "label", *keys, "budget", "device", "windows", "data_range"])
        for row in results["table"]:
            writer.writerow([row["test_set"], row["method"], results["labels"][row["method"]],
                             *[row.get(k, "") for k in keys], budgets[row["method"]], results["device"],
                             " ".join(results["windows"]), 1])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str) -> None:
    with atomic_path(path, ".png") as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    _pyplot().close(figure)


def _bar_chart(results: dict, path: str) -> None:
    plt = _pyplot()
    sets = list(results["test_sets"])
    methods = list(results["labels"])
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 5), squeeze=False)
    for ax, test_set in zip(axes[0], sets):
        rows = {r["method"]: r for r in results["table"] if r["test_set"] == test_set}
        values = [rows[m][MAIN_METRIC] for m in methods]
        errors = [0.0 if math.isnan(rows[m][MAIN_METRIC + " std"]) else rows[m][MAIN_METRIC + " std"] for m in methods]
        ax.barh(range(len(methods)), values, xerr=errors, color="tab:blue", capsize=3)
        ax.set_yticks(range(len(methods)), [results["labels"][m] for m in methods], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(min(values) - 2.0, max(values) + 1.0)
        ax.set_title(f"{test_set}\nPSNR, abdomen window [-160, 240] HU", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _crop_grid(results: dict, path: str) -> None:
    plt = _pyplot()
    figure = results["figure"]
    panels = [("low dose", figure["low_dose"])]
    for method, label in results["labels"].items():
        saved = figure.get("outputs", {}).get(method)
        if saved and os.path.isfile(saved):
            panels.append((label, np.load(saved)))
    panels.append(("full dose", figure["full_dose"]))
    h, w = panels[0][1].shape
    crop = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    columns = 4
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, image) in zip(axes.flat, panels):
        ax.imshow(apply_window(np.asarray(image)[crop], "abdomen"), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"{figure['caption']} (centre crop), abdomen window [-160, 240] HU", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def write_results(results: dict, out_dir: str) -> Dict[str, str]:
    """Write the table and figures into ``out_dir``; returns their paths."""
    os.makedirs(os.path.join(out_dir, "figures"), exist_ok=True)
    files = {"csv": os.path.join(out_dir, "results.csv"), "markdown": os.path.join(out_dir, "results.md"),
             "bars": os.path.join(out_dir, "figures", "psnr.png"),
             "crops": os.path.join(out_dir, "figures", "crops.png")}
    _write_csv(results, files["csv"])
    with atomic_path(files["markdown"], ".md") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(markdown(results))
    _bar_chart(results, files["bars"])
    _crop_grid(results, files["crops"])
    return files
