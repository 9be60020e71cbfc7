"""The evaluation report's figures, drawn with matplotlib (Agg, no display needed): ``slice_figure`` (low
dose / denoised / full dose in a window, and the error) and ``residual_nps_figure`` (the residual NPS per method);
``window_label``, a window in words (the figures' titles and the report's headings)."""

from __future__ import annotations

import re
from typing import Dict, Sequence

import numpy as np

from ..core.ct import resolve_window

__all__ = ["window_label", "figure_name", "slice_figure", "residual_nps_figure"]


def window_label(window: str) -> str:
    """'abdomen window [-160, 240] HU (ISCL paper)' / 'abdomen_ldct window [-150, 250] HU (LDCT benchmark, C 50 / W 400)'."""
    low, high = resolve_window(window)
    if str(window).endswith("_ldct"):
        source = f"LDCT benchmark, C {(low + high) / 2:g} / W {high - low:g}"
    else:
        source = "ISCL paper"
    return f"{window} window [{low:g}, {high:g}] HU ({source})"


def figure_name(name: str) -> str:
    """``name`` (a patient ID) made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "patient"


def slice_figure(path: str, fs: dict, window: str, denoised_title: str) -> None:
    """Low dose | denoised (``fs["ensemble"]``) | full dose in ``window``, and the denoised error, as one PNG."""
    from matplotlib.figure import Figure

    low, high = resolve_window(window)
    diff = fs["ensemble"].astype(np.float64) - fs["full_dose"].astype(np.float64)
    limit = float(np.percentile(np.abs(diff), 99.5)) if diff.size else 1.0
    limit = limit if limit > 0 else 1.0
    fig = Figure(figsize=(16, 4.6), dpi=100, layout="constrained")
    axes = fig.subplots(1, 4)
    panels = [
        ("low-dose input", fs["low_dose"]),
        (denoised_title, fs["ensemble"]),
        ("full dose (reference)", fs["full_dose"]),
    ]
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(title)
    im = axes[3].imshow(diff, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    axes[3].set_title(f"denoised - full dose [-{limit:.0f}, {limit:.0f}] HU")
    fig.colorbar(im, ax=axes[3], fraction=0.046, label="HU")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{fs['patient']}, slice {fs['slice']}: {window_label(window)}")
    fig.savefig(path, format="png")


def residual_nps_figure(path: str, curve: dict, methods: Sequence[str], labels: Dict[str, str]) -> None:
    """The radial NPS of each method's residual (``curve``: ``{"freq", method: nps}``) as one PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    freq = np.asarray(curve["freq"])
    keep = freq > 0  # the zero-frequency bin is 0 by construction (each slice is mean-subtracted)
    positive = all(np.all(np.asarray(curve[m])[keep] > 0) for m in methods if m in curve)
    for method in methods:
        if method in curve:
            ax.plot(
                freq[keep],
                np.asarray(curve[method])[keep],
                label=labels[method],
                marker="." if keep.sum() < 40 else None,
            )
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("spatial frequency [1/mm]")
    ax.set_ylabel("NPS [HU$^2$ mm$^2$]")
    ax.set_title("Radial NPS of the residual (method - full dose), mean over patients")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, format="png")
