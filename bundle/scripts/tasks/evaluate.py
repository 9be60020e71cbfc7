"""Evaluate the ISCL denoiser on a paired split (low dose in, full dose as reference) and write a report.

``evaluate(datalist, out_dir, model_path, ...)`` runs, for every paired item of the split
(``{"patient", "image": low dose, "label": full dose}``, NIfTI files or DICOM series folders):

Methods (rows of every table)
    ``low_dose``   the low-dose input itself -- the floor row;
    ``F``          the denoiser F alone (ensemble gamma = 1);
    ``x_minus_H``  the noise-extractor branch x - H(x) alone (gamma = 0);
    ``ensemble``   gamma F(x) + (1 - gamma)(x - H(x)) with the model's gamma (default 0.5).

    Cost: F and H run **once** per volume, not once per variant. ``denoise_volume`` is given
    the two *unclamped* branches (``F(x)`` and ``x - H(x)``) as networks of their own; the
    inference pipeline around the network (HU -> [-1, 1], padding, slice/tile inferer,
    Gaussian blending, [-1, 1] -> HU) is affine in the network output, so the three model
    outputs are then formed in HU by the model's own ``ISCLDenoiser.combine`` with gamma = 1, 0
    and the model's gamma, clipped to ``hu_range`` (= the model's clamp to [-1, 1]), then
    ``ct.restore_outside_window`` as
    ``denoise_volume`` does.  Equal to running the model three times
    with ``model.gamma`` = 1, 0, gamma up to float rounding (< 0.01 HU; checked by the tests),
    at half the cost (F + H instead of 2 F + 2 H).

Per slice (``slice_metrics``)
    PSNR and SSIM (``metrics.windowed_psnr`` / ``windowed_ssim``: scikit-image SSIM, data range
    1 after clipping both images to the window and scaling it to [0, 1]) in the region's paper
    window and its ldct-benchmark window (``REGION_WINDOWS``); noise std (HU) and mean HU bias
    (method - full dose) in the flattest soft-tissue disc of the *full-dose* slice
    (``metrics.find_flat_roi``, radius ``roi_radius(shape)``; NaN on a slice without one);
    the radial NPS of the residual (method - full dose) over the whole slice.

Aggregation
    ``aggregate_patients``: mean over a patient's slices (NaN -- no ROI -- ignored; an infinite
    PSNR makes the patient's mean infinite: a perfect prediction stays "inf").
    ``summarize``: mean and sample standard deviation (n - 1) over patients (std NaN for one
    patient or when a value is infinite).  The NPS is averaged over a patient's slices, then
    over patients on a common frequency grid (linear interpolation).

Region
    ``region=None``: the datalist's ``"region"`` key (the Mayo datalists carry one), else
    "abdomen".  An explicit ``region`` wins (with a warning when it contradicts the datalist).

The report (``report.write_report``) is built in a temporary sibling folder and moved into
``out_dir`` only when complete; a failed run leaves no trace there.

Entry points
    ``python bundle/scripts/cli.py evaluate --datalist D --out REPORT_DIR [--model_path P]
    [--region abdomen|chest|head] [--device cpu] [--mode tiled] [--gamma 0.5] [--max_figures 3]``;
    ``python -m monai.bundle run evaluating --config_file "['bundle/configs/train.json','bundle/configs/evaluate.json']"
    --datalist D --output_dir REPORT_DIR`` (evaluate.json layers on train.json, as the model-zoo
    bundles do; ids: ``datalist``, ``output_dir``, ``model_path``,
    ``region``, ``split``, ``device``, ``inference_mode``, ``amp``, ``hu_range``,
    ``ensemble_gamma``, ``max_figures``, ``progress``; ``evaluating`` / ``run``).  Without
    ``--datalist`` the config evaluates the simulated set's test split
    (``simulated_datalist(dataset_dir, simulation)``: the same cached set
    ``train.json`` builds in ``bundle/cache/simulated``, made on first use).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .. import MODEL_PATH
from ..core.ct import HU_RANGE, resolve_window, restore_outside_window
from ..core.device import describe_device, resolve_device
from ..core.metrics import find_flat_roi, flat_roi_stats, radial_nps, windowed_metrics
from ..core.settings import flag
from ..core.summary import aggregate_patients, mean_over_patients_nps, nanmean, summarize
from ..datasets.data import DataError
from ..model.model_facts import model_settings
from ..model.networks import ENSEMBLE_GAMMA
from ..volumes.volume_io import check_same_geometry, read_volume
from .evaluation_data import REGION_WINDOWS, evaluation_region, load_evaluation_datalist, paired_items
from .fidelity import full_dose_fidelity, noise_free_fidelity
from .inference import denoise_volume, load_denoiser

__all__ = [
    "METHODS",
    "METHOD_LABELS",
    "FLAT_ROI_HU_RANGE",
    "evaluate",
    "evaluate_volume",
    "model_outputs",
    "assemble_results",
    "slice_metrics",
    "roi_radius",
]

logger = logging.getLogger("evaluation")

METHODS = ("low_dose", "F", "x_minus_H", "ensemble")
METHOD_LABELS = {
    "low_dose": "low-dose input (floor)",
    "F": "F alone (gamma = 1)",
    "x_minus_H": "x - H(x) alone (gamma = 0)",
    "ensemble": "ensemble (gamma = {gamma:g})",
}
#: HU range a flat-ROI disc must lie in (soft tissue)
FLAT_ROI_HU_RANGE = (-50.0, 150.0)


def roi_radius(shape: Sequence[int]) -> int:
    """Flat-ROI disc radius in pixels: min(H, W) / 40, at least 4 and at most 12 (12 px at 512 x 512)."""
    return int(min(12, max(4, min(shape[-2:]) // 40)))


# ---------------------------------------------------------------------------- compute
class _Branch(torch.nn.Module):
    """One unclamped branch of an ``ISCLDenoiser`` as a network of its own: ``model.denoised`` (F(x))
    or ``model.extracted`` (x - H(x))."""

    def __init__(self, model: torch.nn.Module, which: str):
        super().__init__()
        self.model, self.which = model, which

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.which)(x)


def slice_metrics(pred_hu, ref_hu, windows: Sequence[str], roi=None) -> dict:
    """PSNR/SSIM per window (``psnr[<window>]``, ``ssim[<window>]``) and the flat-ROI
    ``noise_std_hu`` / ``bias_hu`` (NaN without ``roi``) of one 2D slice against its reference."""
    out = windowed_metrics(pred_hu, ref_hu, windows, roi)
    if roi is None:
        out["noise_std_hu"] = out["bias_hu"] = math.nan
    return out


def evaluate_volume(
    low_hu: np.ndarray,
    full_hu: np.ndarray,
    outputs: Dict[str, np.ndarray],
    windows: Sequence[str],
    pixel_spacing=(1.0, 1.0),
) -> dict:
    """Per-slice metrics and the patient's mean residual NPS for (S, H, W) HU volumes.

    ``outputs``: method -> (S, H, W) HU volume, or a callable ``k -> (H, W)`` slice (to avoid
    holding every variant in memory).  Returns ``{"slices": [row...], "nps": {"freq": f,
    method: nps}, "reference_noise_std_hu": [...]}``; each row is ``{"slice", "method", metric...}``.
    """
    methods = {"low_dose": low_hu, **outputs}
    rows, nps_sum, ref_noise, freq = [], {}, [], None
    for k in range(full_hu.shape[0]):
        ref = np.asarray(full_hu[k], dtype=np.float64)
        try:
            roi = find_flat_roi(ref, roi_radius(ref.shape), FLAT_ROI_HU_RANGE)
        except ValueError:
            roi = None
        if roi is not None:
            ref_noise.append(flat_roi_stats(ref, ref, roi)[0])
        for method, source in methods.items():
            pred = np.asarray(source(k) if callable(source) else source[k], dtype=np.float64)
            rows.append({"slice": k, "method": method, **slice_metrics(pred, ref, windows, roi)})
            f, p = radial_nps(pred - ref, pixel_spacing)
            freq = f if freq is None else freq
            nps_sum[method] = nps_sum.get(method, 0.0) + p
    n = max(full_hu.shape[0], 1)
    nps = {"freq": freq, **{m: s / n for m, s in nps_sum.items()}}
    return {"slices": rows, "nps": nps, "reference_noise_std_hu": ref_noise}


def _pick_slices(n_slices: int, count: int) -> List[int]:
    """``count`` slice indices spread over a volume (its middle one first)."""
    if count <= 0 or n_slices <= 0:
        return []
    if count == 1:
        return [n_slices // 2]
    return sorted({int(round(v)) for v in np.linspace(0, n_slices - 1, count + 2)[1:-1]})


def model_outputs(
    low_hu: np.ndarray,
    model: torch.nn.Module,
    gamma: Optional[float] = None,
    device=None,
    hu_range=HU_RANGE,
    mode: str = "slice",
    amp: bool = False,
) -> Dict[str, object]:
    """The model's three outputs for a low-dose (S, H, W) HU volume, running F and H once.

    Returns ``{"F", "x_minus_H", "ensemble"}`` -> callables ``k -> (H, W)`` float64 HU slice, equal to
    ``denoise_volume`` with ``model.gamma`` = 1, 0 and ``gamma`` (default ``model.gamma``) -- see the
    module docstring; the ensemble is formed per slice, so only two volumes are held.
    """

    gamma = float(model.gamma if gamma is None else gamma)
    lo, hi = (float(v) for v in hu_range)
    dev = resolve_device(device)
    raw = {}
    with torch.no_grad():
        for which in ("denoised", "extracted"):
            net = _Branch(model, which).eval()
            raw[which] = np.asarray(
                denoise_volume(
                    low_hu, net, device=dev, hu_range=(lo, hi), mode=mode, amp=amp, progress=False, outside_margin=None
                ),
                dtype=np.float32,
            )

    def output(weight):  # the model's ensemble formula in HU, then the input HU outside the window
        def slice_hu(k):
            branches = (torch.from_numpy(raw[which][k].astype(np.float64)) for which in ("denoised", "extracted"))
            hu = model.combine(*branches, gamma=weight, bounds=(lo, hi)).numpy()
            return restore_outside_window(hu, low_hu[k].astype(np.float64), (lo, hi))

        return slice_hu

    return {"F": output(1.0), "x_minus_H": output(0.0), "ensemble": output(gamma)}


def clean_input_checks(model, full_dose_paths, gamma, device, hu_range, mode, amp) -> dict:
    """The ensemble on input with nothing to remove: each full-dose volume, and the noise-free inputs
    (``fidelity``); keyed by the volume's path and by the synthetic input's name."""

    def denoise(hu):
        ensemble = model_outputs(hu, model, gamma=gamma, device=device, hu_range=hu_range, mode=mode, amp=amp)
        return np.stack([ensemble["ensemble"](k) for k in range(len(hu))])

    full_dose = {}
    for path in sorted(full_dose_paths):
        hu = read_volume(path).hu
        full_dose[path] = full_dose_fidelity(hu, denoise, roi_radius(hu.shape))
    return {"full_dose": full_dose, "noise_free": noise_free_fidelity(denoise)}


def assemble_results(
    rows: Sequence[dict],
    nps: Dict[str, dict],
    reference_noise: Dict[str, float],
    figure_slices: Sequence[dict],
    meta: dict,
) -> dict:
    """The results dict ``report.write_report`` takes, from per-slice rows (``{"patient", "slice",
    "method", metric...}``), per-patient NPS curves (``{"freq", method: nps}``), per-patient
    reference noise std, figure slices and run facts (``meta``: data_source, split, region,
    model_path, device, gamma, mode, amp, hu_range)."""
    per_patient = aggregate_patients(rows)
    region = meta.get("region", "abdomen")
    windows = list(meta.get("windows") or REGION_WINDOWS[region])
    gamma = float(meta.get("gamma", ENSEMBLE_GAMMA))
    full_meta = {
        "split": "test",
        "mode": "slice",
        "amp": False,
        "hu_range": tuple(HU_RANGE),
        **meta,
        "region": region,
        "windows": windows,
        "gamma": gamma,
        "window_ranges": {w: resolve_window(w) for w in windows},
        "n_patients": len(per_patient),
        "n_slices": sum(next(iter(v.values()))["n_slices"] for v in per_patient.values()),
        "roi_hu_range": FLAT_ROI_HU_RANGE,
    }
    methods = [m for m in METHODS if any(m in v for v in per_patient.values())]
    return {
        "meta": full_meta,
        "methods": methods,
        "method_labels": {m: METHOD_LABELS[m].format(gamma=gamma) for m in methods},
        "slices": list(rows),
        "per_patient": per_patient,
        "summary": summarize(per_patient),
        "reference_noise_std_hu": dict(reference_noise),
        "nps": {"per_patient": dict(nps), "mean": mean_over_patients_nps(nps)},
        "figure_slices": list(figure_slices),
    }


# ------------------------------------------------------------------------------- main
def evaluate(
    datalist,
    out_dir: str,
    model_path: Optional[str] = None,
    region: Optional[str] = None,
    split: str = "test",
    device=None,
    mode: str = "slice",
    hu_range=None,
    gamma: Optional[float] = None,
    max_figures: int = 3,
    amp: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Evaluate ``model_path`` on the paired ``split`` of ``datalist`` and write the report to ``out_dir``.

    ``datalist``: a datalist JSON path (paths relative to its ``dataset_dir``) or a datalist dict.
    ``model_path``: ``model.pt`` (default: the bundle's ``models/model.pt``); ``gamma``: the
    ensemble's weight of F, ``hu_range``: the training window (None: the model's own, ``model_facts``).
    ``mode``: "slice" (full slices) or "tiled" (``inference.denoise_volume``).
    ``out_dir``: created (or, with ``overwrite``, a previous report there replaced) only when the
    report is complete.
    Returns the results dict (``per_patient``, ``summary``, ``nps``, ``meta`` ...) plus ``"report"``,
    the path of ``report.md``.
    """
    from . import report as report_mod

    amp, progress, overwrite = flag(amp, "amp"), flag(progress, "progress"), flag(overwrite, "overwrite")
    out_dir = os.path.abspath(os.fspath(out_dir))
    report_mod.check_out_dir(out_dir, overwrite)  # fail before any compute
    dev = resolve_device(device)
    data, source = load_evaluation_datalist(datalist)
    items = paired_items(data, split, source)
    region = evaluation_region(data, region)
    model_path = os.path.abspath(os.fspath(MODEL_PATH if model_path is None else model_path))
    gamma, hu_range = model_settings(model_path, gamma, hu_range)
    model = load_denoiser(model_path, gamma=gamma, device=dev)
    model.eval()
    run = {"gamma": gamma, "device": dev, "hu_range": hu_range, "mode": mode, "amp": amp}
    rows, nps, ref_noise, figures = _evaluate_items(items, model, REGION_WINDOWS[region], run, max_figures, progress)
    clean_input = clean_input_checks(model, {it["label"] for it in items}, gamma, dev, hu_range, mode, amp)
    meta = {
        "data_source": source,
        "split": split,
        "region": region,
        "model_path": model_path,
        "device": describe_device(dev),
        "gamma": gamma,
        "mode": mode,
        "amp": amp,
        "hu_range": hu_range,
    }
    results = assemble_results(rows, nps, ref_noise, figures, meta)
    results["clean_input"] = clean_input
    results["report"] = report_mod.write_report(results, out_dir, overwrite)
    logger.info("evaluation report: %s", results["report"])
    return results


def _evaluate_items(items: Sequence[dict], model, windows: Sequence[str], run: dict, max_figures: int, progress: bool):
    """Every pair through the model (``run``: ``model_outputs``' gamma, device, hu_range, mode, amp): the
    per-slice rows, per-patient NPS and reference noise, and up to ``max_figures`` figure slices spread over
    the patients."""
    from tqdm.auto import tqdm

    rows, nps, ref_noise, figure_slices = [], {}, {}, []
    per_patient_figures = math.ceil(max(int(max_figures), 0) / len(items)) if max_figures else 0
    for item in tqdm(items, desc="evaluation", unit="patient", disable=not progress):
        low, full, pixel_spacing = _read_pair(item)
        outputs = model_outputs(low, model, **run)
        result = evaluate_volume(low, full, outputs, windows, pixel_spacing)
        rows += [{"patient": item["patient"], **row} for row in result["slices"]]
        nps[item["patient"]] = result["nps"]
        ref_noise[item["patient"]] = nanmean(result["reference_noise_std_hu"])
        for k in _pick_slices(full.shape[0], per_patient_figures):
            if len(figure_slices) < max_figures:
                figure_slices.append(
                    {
                        "patient": item["patient"],
                        "slice": k,
                        "low_dose": low[k].copy(),
                        "ensemble": outputs["ensemble"](k).astype(np.float32),
                        "full_dose": full[k].copy(),
                    }
                )
        del outputs, low, full
    return rows, nps, ref_noise, figure_slices


def _read_pair(item: dict):
    """A pair's low- and full-dose (S, H, W) float32 HU volumes, checked to share shape and geometry, and the
    full dose's pixel spacing."""
    low_vol, full_vol = read_volume(item["image"]), read_volume(item["label"])
    low, full = np.asarray(low_vol.hu, dtype=np.float32), np.asarray(full_vol.hu, dtype=np.float32)
    if low.shape != full.shape:
        raise DataError(
            f"{item['image']} {low.shape} and {item['label']} {full.shape}: the low-dose and "
            "full-dose volumes of a pair must have the same shape (S, H, W)."
        )
    check_same_geometry(item["image"], item["label"], "evaluation")
    return low, full, full_vol.pixel_spacing
