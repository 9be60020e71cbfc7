"""Per-slice metric rows to per-patient means, and those to mean ± sample std over patients (NaN ignored);
the radial NPS averaged over patients. Evaluation and the benchmark summarise with the same functions."""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Sequence

import numpy as np

__all__ = ["nanmean", "nanstd", "metric_keys", "aggregate_patients", "summarize", "mean_over_patients_nps"]


def nanmean(values) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def nanstd(values) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size < 2 or np.isinf(v).any():
        return math.nan
    return float(v.std(ddof=1))


def metric_keys(rows: Iterable[dict]) -> List[str]:
    """Metric columns of per-slice rows, in first-seen order."""
    keys: List[str] = []
    for row in rows:
        for key in row:
            if key not in ("patient", "slice", "method") and key not in keys:
                keys.append(key)
    return keys


def aggregate_patients(rows: Sequence[dict]) -> Dict[str, Dict[str, dict]]:
    """Per-slice rows ``{"patient", "method", "slice", metric...}`` -> ``{patient: {method:
    {metric: mean over slices, "n_slices": count}}}`` (NaN ignored, inf kept), in input order."""
    keys = metric_keys(rows)
    groups: Dict[str, Dict[str, List[dict]]] = {}
    for row in rows:
        groups.setdefault(str(row["patient"]), {}).setdefault(row["method"], []).append(row)
    return {
        pid: {
            method: {**{k: nanmean(r.get(k, math.nan) for r in rs) for k in keys}, "n_slices": len(rs)}
            for method, rs in by_method.items()
        }
        for pid, by_method in groups.items()
    }


def summarize(per_patient: Dict[str, Dict[str, dict]]) -> Dict[str, Dict[str, dict]]:
    """``{method: {metric: {"mean", "std", "n"}}}`` over patients: mean and sample std (n - 1)."""
    out: Dict[str, Dict[str, dict]] = {}
    for by_method in per_patient.values():
        for method, values in by_method.items():
            for key, value in values.items():
                if key != "n_slices":
                    out.setdefault(method, {}).setdefault(key, []).append(value)
    return {
        method: {
            key: {"mean": nanmean(v), "std": nanstd(v), "n": int(np.sum(~np.isnan(v)))} for key, v in metrics.items()
        }
        for method, metrics in out.items()
    }


def mean_over_patients_nps(per_patient_nps: Dict[str, dict]) -> dict:
    """Mean radial NPS over patients on a common grid: from 0 in steps of the coarsest patient's
    frequency step up to the lowest patient maximum (linear interpolation)."""
    curves = [c for c in per_patient_nps.values() if c.get("freq") is not None and len(c["freq"]) > 1]
    if not curves:
        return {"freq": None}
    step = max(float(np.median(np.diff(c["freq"]))) for c in curves)
    fmax = min(float(c["freq"][-1]) for c in curves)
    grid = np.arange(0.0, fmax + 1e-9 * step, step)
    methods = [m for m in curves[0] if m != "freq"]
    return {
        "freq": grid,
        **{m: np.mean([np.interp(grid, c["freq"], c[m]) for c in curves if m in c], axis=0) for m in methods},
    }
