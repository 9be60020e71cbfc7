"""Evaluation report: CSV tables, a Markdown report and PNG figures, written atomically.

``write_report(results, out_dir)`` takes the dict made by ``evaluate.evaluate`` and writes

``metrics.csv``
    one row per patient x method, then one ``mean`` row per method (mean over patients of the
    per-patient means); columns ``patient, method, description, slices`` and one column per
    metric whose header states the window and data range, e.g.
    ``PSNR [dB], abdomen window [-160, 240] HU, data range 1``.  Infinite values read ``inf``
    (a perfect prediction), missing ones ``nan`` (no flat ROI).
``nps.csv``
    radial NPS of the residual (method - full dose) per patient and the mean over patients:
    ``patient, method, frequency [1/mm], NPS [HU^2 mm^2]``.
``report.md``
    data source, split, region, model, device and metric definitions at the top; one table per
    window (methods x PSNR / SSIM mean +- sample std over patients, flat-ROI noise std and HU
    bias); per-patient tables; the figures.
``figures/``
    ``slice_<patient>_<k>.png``: low dose / ensemble / full dose / difference (ensemble - full
    dose, symmetric colour range) in the region's clinical (paper) window; ``nps.png``: the
    mean residual NPS per method.  Drawn with matplotlib (Agg, no display needed).

Everything is built in a temporary sibling folder and moved into ``out_dir`` when complete; a
previous report in ``out_dir`` is replaced only with ``overwrite`` (like ``denoise``), any other
non-empty folder is refused (``check_out_dir``) before the evaluation starts.
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import re
from typing import List, Sequence

import numpy as np

from ..core.atomic import check_output_folder, staged_folder
from ..core.ct import resolve_window
from .report_figures import figure_name, residual_nps_figure, slice_figure, window_label

__all__ = ["REPORT_FILES", "check_out_dir", "column_label", "fmt", "metrics_table", "render_markdown", "write_report"]

#: what a report folder holds (a folder holding only these, with report.md, may be replaced)
REPORT_FILES = ("report.md", "metrics.csv", "nps.csv", "figures")


# -------------------------------------------------------------------------- out_dir
def check_out_dir(out_dir: str, overwrite: bool = False) -> None:
    """Refuse an ``out_dir`` that is a file, a non-empty folder that is not a previous report, or a
    previous report unless ``overwrite``."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    check_output_folder(out_dir, "report folder")
    if os.path.isdir(out_dir):
        entries = set(os.listdir(out_dir))
        if entries and not ("report.md" in entries and entries <= set(REPORT_FILES)):
            raise ValueError(
                f"{out_dir}: exists, is not empty and is not an evaluation report; "
                "refusing to overwrite it (choose a new report folder)."
            )
        if entries and not overwrite:
            raise ValueError(
                f"{out_dir}: holds a previous evaluation report (choose another folder or pass "
                "overwrite to replace it)."
            )


# --------------------------------------------------------------------------- labels
def column_label(key: str) -> str:
    """Header of a metric column, stating window and data range (or the ROI)."""
    match = re.fullmatch(r"(psnr|ssim)\[(.+)\]", key)
    if match:
        kind, window = match.groups()
        low, high = resolve_window(window)
        name = "PSNR [dB]" if kind == "psnr" else "SSIM"
        return f"{name}, {window} window [{low:g}, {high:g}] HU, data range 1"
    if key == "noise_std_hu":
        return "noise std [HU], flat soft-tissue ROI"
    if key == "bias_hu":
        return "HU bias [HU] (method - full dose), flat soft-tissue ROI"
    return key


def fmt(value, digits: int = 2) -> str:
    """A number for a table: fixed ``digits``, 'inf' for infinity, 'n/a' for NaN / None."""
    if value is None:
        return "n/a"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0.0 else text  # no '-0.0'


def _mean_std(stat: dict, digits: int) -> str:
    mean, std = stat.get("mean"), stat.get("std")
    text = fmt(mean, digits)
    if std is not None and not math.isnan(std) and not math.isinf(float(mean)):
        text += f" ± {fmt(std, digits)}"
    return text


def _csv_value(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"  # inf -> 'inf', nan -> 'nan'
    return str(value)


_DIGITS = {"psnr": 2, "ssim": 4, "noise_std_hu": 1, "bias_hu": 1}


def _digits(key: str) -> int:
    return _DIGITS.get(key.split("[")[0], 3)


def _metric_columns(results: dict) -> List[str]:
    keys = []
    for by_method in results["per_patient"].values():
        for values in by_method.values():
            keys += [k for k in values if k != "n_slices" and k not in keys]
    return keys


# ------------------------------------------------------------------------------ CSV
def _write_metrics_csv(results: dict, path: str) -> None:
    keys = _metric_columns(results)
    labels = results["method_labels"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient", "method", "description", "slices"] + [column_label(k) for k in keys])
        for pid, by_method in results["per_patient"].items():
            for method in results["methods"]:
                values = by_method[method]
                writer.writerow(
                    [pid, method, labels[method], values["n_slices"]]
                    + [_csv_value(values.get(k, math.nan)) for k in keys]
                )
        n_patients = len(results["per_patient"])
        for method in results["methods"]:
            stats = results["summary"][method]
            writer.writerow(
                [
                    "mean",
                    method,
                    f"{labels[method]}, mean over {n_patients} patients",
                    sum(v[method]["n_slices"] for v in results["per_patient"].values()),
                ]
                + [_csv_value(stats[k]["mean"]) if k in stats else "nan" for k in keys]
            )


def _write_nps_csv(results: dict, path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient", "method", "frequency [1/mm]", "NPS [HU^2 mm^2] of residual (method - full dose)"])
        curves = list(results["nps"]["per_patient"].items()) + [("mean", results["nps"]["mean"])]
        for pid, curve in curves:
            if curve.get("freq") is None:
                continue
            for method in results["methods"]:
                if method in curve:
                    for fr, value in zip(curve["freq"], curve[method]):
                        writer.writerow([pid, method, f"{float(fr):.6g}", f"{float(value):.6g}"])


# ------------------------------------------------------------------------- markdown
def metrics_table(results: dict, window: str) -> List[str]:
    """Markdown lines: methods x PSNR / SSIM in ``window`` (mean ± std over patients), noise std, HU bias."""
    n = len(results["per_patient"])
    header = ("| Method | PSNR [dB] | SSIM | noise std [HU] | HU bias [HU] |", "|---|---:|---:|---:|---:|")
    lines = list(header)
    for method in results["methods"]:
        s = results["summary"][method]
        cells = [
            _mean_std(s[f"psnr[{window}]"], 2),
            _mean_std(s[f"ssim[{window}]"], 4),
            _mean_std(s["noise_std_hu"], 1),
            _mean_std(s["bias_hu"], 1),
        ]
        lines.append(f"| {results['method_labels'][method]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Mean ± sample standard deviation over {n} patient{'s' if n != 1 else ''} of the per-patient "
        "means over slices; PSNR/SSIM with data range 1 after clipping both images to the window "
        "and scaling it to [0, 1]."
    )
    return lines


def _patient_table(results: dict) -> List[str]:
    keys = _metric_columns(results)
    short = []
    for k in keys:
        m = re.fullmatch(r"(psnr|ssim)\[(.+)\]", k)
        short.append(
            f"{m.group(1).upper()} {m.group(2)}"
            if m
            else {"noise_std_hu": "noise std [HU]", "bias_hu": "HU bias [HU]"}.get(k, k)
        )
    lines = ["| Patient | Method | slices | " + " | ".join(short) + " |", "|---|---|---:|" + "---:|" * len(keys)]
    for pid, by_method in results["per_patient"].items():
        for method in results["methods"]:
            v = by_method[method]
            lines.append(
                f"| {pid} | {results['method_labels'][method]} | {v['n_slices']} | "
                + " | ".join(fmt(v.get(k, math.nan), _digits(k)) for k in keys)
                + " |"
            )
    return lines


def render_markdown(results: dict, figures: Sequence[dict] = (), nps_figure: str = None) -> str:
    """report.md: the run's facts, a table per window, the per-patient table, the NPS, the clean-input checks
    and the slice figures (``figures``: ``{"patient", "slice", "path"}``; ``nps_figure``: the NPS plot's path)."""
    windows = results["meta"]["windows"]
    lines = _facts_lines(results)
    for w in windows:
        lines += [f"## {window_label(w)}, data range 1", ""] + metrics_table(results, w) + [""]
    lines += (
        [
            "## Per patient",
            "",
            "Mean over the patient's slices; window names as above (`_ldct`: LDCT benchmark windows), data range 1.",
            "",
        ]
        + _patient_table(results)
        + [""]
    )
    lines += [
        "## Noise power spectrum of the residual",
        "",
        "Radial NPS of (method - full dose) over whole slices, mean-subtracted per slice, "
        "averaged over slices and then patients; HU^2 mm^2 against spatial frequency in 1/mm "
        "(no window).",
        "",
    ]
    if nps_figure:
        lines += [f"![Radial NPS of the residual per method]({nps_figure})", ""]
    lines += clean_input_lines(results.get("clean_input"))
    if figures:
        clinical = windows[0]
        lines += [
            "## Images",
            "",
            f"Low dose / ensemble / full dose in the {window_label(clinical)}; difference "
            "(ensemble - full dose) in HU, symmetric colour range.",
            "",
        ]
        for fig in figures:
            lines += [f"![{fig['patient']} slice {fig['slice']}]({fig['path']})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _facts_lines(results: dict) -> List[str]:
    """The report's title and the run's facts: data, region and windows, metric definitions, model, device,
    noise and bias ROI, aggregation, date."""
    meta = results["meta"]
    lo, hi = meta["hu_range"]
    ref_noise = [v for v in results.get("reference_noise_std_hu", {}).values() if not math.isnan(v)]
    return [
        "# ISCL low-dose CT denoising: evaluation report",
        "",
        f"- **Data**: `{meta['data_source']}`, split `{meta['split']}`: {meta['n_patients']} patients, "
        f"{meta['n_slices']} slices (low dose in, full dose as reference)",
        f"- **Region**: {meta['region']}; windows: " + "; ".join(window_label(w) for w in meta["windows"]),
        "- **Data range**: PSNR/SSIM on both images clipped to the window and scaled to [0, 1] "
        "(data range 1); PSNR = 10 log10(1 / MSE); SSIM = scikit-image `structural_similarity` "
        "(Gaussian 11 x 11, sigma 1.5, k1 0.01, k2 0.03)",
        f"- **Model**: `{meta['model_path']}`; ensemble gamma = {meta['gamma']:g} "
        "(gamma F(x) + (1 - gamma)(x - H(x)))",
        f"- **Device**: {meta['device']}; inference mode `{meta['mode']}`"
        f"{', AMP' if meta.get('amp') else ''}; network HU range [{lo:g}, {hi:g}] mapped to [-1, 1]",
        f"- **Noise / bias**: std of the image (HU) and mean of (method - full dose) (HU) in the flattest "
        f"soft-tissue disc ({meta['roi_hu_range'][0]:g}..{meta['roi_hu_range'][1]:g} HU) of each full-dose slice"
        + (f"; the full-dose reference's own std there: {np.mean(ref_noise):.1f} HU" if ref_noise else ""),
        "- **Aggregation**: per-slice metrics, mean over each patient's slices, then mean ± sample std "
        "over patients; the low-dose input is the floor row",
        f"- **Generated**: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        "tables also in `metrics.csv`, NPS curves in `nps.csv`",
        "",
    ]


def clean_input_lines(clean_input: dict | None) -> List[str]:
    """The clean-input section: full-dose volumes and noise-free inputs through the ensemble."""
    if not clean_input:
        return []
    lines = [
        "## Clean input: does the model leave it alone?",
        "",
        "Each full-dose volume is denoised as if it were low dose. Flat ROIs: the 3 flattest soft-tissue "
        "discs of each input slice; a ROI rises when its std (HU) is larger in the output. p99: the 99th "
        "percentile of |output - input| (HU) inside the body and in a 2-pixel band around its edges.",
        "",
        "| full-dose volume | ROIs | ROIs rising | largest rise | mean std in → out | p99 body | p99 edges |",
        "|---|---|---|---|---|---|---|",
    ]
    for path, v in clean_input["full_dose"].items():
        lines.append(
            f"| `{os.path.basename(path)}` | {v['n_rois']} | {v['rois_rising']} | {fmt(v['max_std_rise_hu'], 1)} | "
            f"{fmt(v['mean_std_in_hu'], 1)} → {fmt(v['mean_std_out_hu'], 1)} | "
            f"{fmt(v['p99_change_body_hu'], 1)} | {fmt(v['p99_change_edges_hu'], 1)} |"
        )
    lines += ["", "| noise-free input | flat std in → out | p99 | p99 edges |", "|---|---|---|---|"]
    for name, v in clean_input["noise_free"].items():
        lines.append(
            f"| {name} | {fmt(v['flat_std_in_hu'], 1)} → {fmt(v['flat_std_out_hu'], 1)} | "
            f"{fmt(v['p99_change_hu'], 1)} | {fmt(v['p99_change_edges_hu'], 1)} |"
        )
    return lines + [""]


# ----------------------------------------------------------------------------- main
def write_report(results: dict, out_dir: str, overwrite: bool = False) -> str:
    """Write metrics.csv, nps.csv, figures/ and report.md into ``out_dir`` atomically (a previous report
    there only with ``overwrite``); returns report.md's path."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    check_out_dir(out_dir, overwrite)
    with staged_folder(out_dir) as tmp:
        os.makedirs(os.path.join(tmp, "figures"))
        _write_metrics_csv(results, os.path.join(tmp, "metrics.csv"))
        _write_nps_csv(results, os.path.join(tmp, "nps.csv"))
        figures = []
        clinical = results["meta"]["windows"][0]
        for fs in results.get("figure_slices", []):
            rel = f"figures/slice_{figure_name(fs['patient'])}_{int(fs['slice']):03d}.png"
            slice_figure(os.path.join(tmp, rel), fs, clinical, f"ensemble (gamma = {results['meta']['gamma']:g})")
            figures.append({"patient": fs["patient"], "slice": fs["slice"], "path": rel})
        nps_rel = None
        if results["nps"]["mean"].get("freq") is not None:
            nps_rel = "figures/nps.png"
            residual_nps_figure(
                os.path.join(tmp, nps_rel), results["nps"]["mean"], results["methods"], results["method_labels"]
            )
        with open(os.path.join(tmp, "report.md"), "w") as f:
            f.write(render_markdown(results, figures, nps_rel))
    return os.path.join(out_dir, "report.md")
