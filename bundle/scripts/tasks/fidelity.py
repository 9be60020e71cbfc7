"""Does a denoiser leave clean input alone? A denoiser must not invent structure: given an image
with no noise to remove (a full-dose slice, a noise-free phantom, a flat disc with a little white
noise) its output should be no rougher than its input and stay close to it.

Measured on any ``denoise(hu (S, H, W)) -> hu`` callable, so the shipped model, an ablation and
BM3D are judged alike:
- ``full_dose_fidelity``: per slice, the std of input and output in the ``FLAT_ROIS_PER_SLICE``
  flattest soft-tissue discs of the input (every ROI must not rise), and the 99th percentile of
  |out - in| inside the body and in the band around its edges;
- ``noise_free_fidelity``: the same on the two synthetic inputs of ``noise_free_inputs``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy as np
from scipy import ndimage

from ..core.metrics import flat_roi_stats, local_variance, roi_mask
from ..datasets.phantom import phantom

FLAT_ROIS_PER_SLICE = 3
SOFT_TISSUE_HU = (-50.0, 150.0)
BODY_HU = -500.0  # above this: inside the body (air and lung below)
EDGE_GRADIENT_HU_PER_PX = 60.0  # a step this steep between neighbours is an edge of anatomy
EDGE_BAND_PX = 2
DISC = {"inside_hu": 44.0, "outside_hu": -60.0, "noise_hu": 4.0, "size": 128, "radius": 40}

Denoise = Callable[[np.ndarray], np.ndarray]


def flat_rois(hu: np.ndarray, radius: int, count: int = FLAT_ROIS_PER_SLICE) -> List[tuple]:
    """The ``count`` flattest discs (row, col, radius) lying wholly in soft tissue, not overlapping
    (``metrics.find_flat_roi`` repeated on what is left)."""
    var = local_variance(hu, radius, SOFT_TISSUE_HU)
    k = 2 * radius + 1
    rois = []
    while len(rois) < count and np.isfinite(var).any():
        row, col = np.unravel_index(int(np.argmin(var)), var.shape)
        rois.append((int(row), int(col), radius))
        var[max(row - k, 0) : row + k + 1, max(col - k, 0) : col + k + 1] = np.inf  # the next disc elsewhere
    return rois


def body_and_edges(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The body (filled, above ``BODY_HU``) and the band of ``EDGE_BAND_PX`` around steep edges inside it."""
    body = ndimage.binary_fill_holes(hu > BODY_HU)
    gradient = np.hypot(*np.gradient(hu.astype(np.float64)))
    edges = ndimage.binary_dilation(gradient > EDGE_GRADIENT_HU_PER_PX, iterations=EDGE_BAND_PX) & body
    return body, edges


def _p99(values: np.ndarray) -> float:
    return float(np.percentile(values, 99)) if values.size else float("nan")


def slice_fidelity(input_hu: np.ndarray, output_hu: np.ndarray, radius: int) -> dict:
    """One slice: flat-ROI std in and out (lists), p99 |out - in| in the body and near its edges."""
    rois = flat_rois(input_hu, radius)
    std_in = [flat_roi_stats(input_hu, input_hu, roi)[0] for roi in rois]
    std_out = [flat_roi_stats(output_hu, input_hu, roi)[0] for roi in rois]
    body, edges = body_and_edges(input_hu)
    change = np.abs(output_hu.astype(np.float64) - input_hu)
    return {
        "roi_std_in_hu": std_in,
        "roi_std_out_hu": std_out,
        "p99_change_body_hu": _p99(change[body]),
        "p99_change_edges_hu": _p99(change[edges]),
    }


def summarise(slices: Sequence[dict]) -> dict:
    """Over slices: ROI count, ROIs whose std rose, the largest rise, mean std in/out, worst p99s."""
    std_in = np.array([v for s in slices for v in s["roi_std_in_hu"]])
    std_out = np.array([v for s in slices for v in s["roi_std_out_hu"]])
    rise = std_out - std_in
    return {
        "n_rois": int(std_in.size),
        "rois_rising": int((rise > 0).sum()),
        "max_std_rise_hu": float(rise.max()) if rise.size else float("nan"),
        "mean_std_in_hu": float(std_in.mean()) if std_in.size else float("nan"),
        "mean_std_out_hu": float(std_out.mean()) if std_out.size else float("nan"),
        "p99_change_body_hu": float(np.nanmax([s["p99_change_body_hu"] for s in slices])),
        "p99_change_edges_hu": float(np.nanmax([s["p99_change_edges_hu"] for s in slices])),
    }


def full_dose_fidelity(full_hu: np.ndarray, denoise: Denoise, radius: int) -> dict:
    """A full-dose (S, H, W) volume through ``denoise``: ``summarise`` of its slices."""
    output = np.asarray(denoise(full_hu), dtype=np.float64)
    return summarise([slice_fidelity(full_hu[k].astype(np.float64), output[k], radius) for k in range(len(full_hu))])


def noise_free_inputs(seed: int = 0) -> Dict[str, tuple]:
    """name -> ((1, H, W) HU input, flat-region mask): a noise-free phantom slice (256², 1.5 mm; its
    liver as the flat region) and a disc of 44 HU in -60 HU with 4 HU white noise (the disc's inside)."""
    from ..datasets.low_dose import soft_tissue_roi

    slice_hu, labels = phantom(256, seed, 1.5, return_labels=True)
    n, r = DISC["size"], DISC["radius"]
    disc = roi_mask((n, n), (n / 2, n / 2, r))
    flat = np.where(disc, DISC["inside_hu"], DISC["outside_hu"])
    noisy = flat + np.random.default_rng(seed).normal(0.0, DISC["noise_hu"], flat.shape)
    inner = roi_mask((n, n), (n / 2, n / 2, r - 4))
    return {
        "noise-free phantom": (slice_hu[None].astype(np.float32), soft_tissue_roi(labels)),
        "disc, 4 HU white noise": (noisy[None].astype(np.float32), inner),
    }


def noise_free_fidelity(denoise: Denoise, seed: int = 0) -> Dict[str, dict]:
    """Per synthetic input: std of the flat region in and out, p99 |out - in| over the image and at edges."""
    results = {}
    for name, (image, flat) in noise_free_inputs(seed).items():
        output = np.asarray(denoise(image), dtype=np.float64)[0]
        source = image[0].astype(np.float64)
        change = np.abs(output - source)
        _, edges = body_and_edges(source)
        results[name] = {
            "flat_std_in_hu": float(source[flat].std(ddof=1)),
            "flat_std_out_hu": float(output[flat].std(ddof=1)),
            "p99_change_hu": _p99(change.ravel()),
            "p99_change_edges_hu": _p99(change[edges]),
        }
    return results
