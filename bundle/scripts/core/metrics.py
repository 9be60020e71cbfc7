"""Image-quality metrics for CT denoising, always tied to a stated display window.

PSNR / SSIM
    Both images (HU) are clipped to a window (low, high) and the window is scaled to
    [0, 1] (``ct.apply_window``); PSNR and SSIM are then computed with **data range 1**.
    PSNR = 10 log10(1 / MSE).  SSIM is scikit-image's ``structural_similarity`` with
    the Wang et al. 2004 settings: Gaussian window 11 x 11 (sigma 1.5), k1 = 0.01,
    k2 = 0.03, population covariances, averaged over the valid window positions --
    the same definition as ``monai.metrics.SSIMMetric`` with its defaults (the two
    agree to ~1e-6; scikit-image avoids importing MONAI just to evaluate).
    Scaling the window to 0..255 instead gives identical numbers.  Use
    ``describe(window)`` as the caption of any printed figure.

Flat-ROI noise and bias
    ``flat_roi_stats``: noise = std of the image in a flat region (HU), bias = mean of
    (image - reference) there (HU).  A denoiser that shifts HU is wrong even if PSNR rises.
    ``find_flat_roi`` picks the flattest soft-tissue disc in a reference image.

Noise power spectrum
    ``nps_2d`` / ``radial_nps``: NPS(f) = < |DFT(r - mean r)|^2 > * dx * dy / (Nx * Ny)
    in HU^2 mm^2, so that the integral of the 2D NPS over frequency equals the variance.
"""

from __future__ import annotations

import math
import sys
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .ct import apply_window, resolve_window

__all__ = [
    "windowed_psnr",
    "windowed_ssim",
    "windowed_metrics",
    "describe",
    "roi_mask",
    "flat_roi_stats",
    "find_flat_roi",
    "nps_2d",
    "radial_nps",
]

Roi = Union[np.ndarray, Tuple[float, float, float]]


def _as_numpy(x) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor implies torch is imported; never import it here
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _windowed_pair(pred_hu, ref_hu, window):
    """Both images clipped to the window and scaled to [0, 1], as float64 (H, W) arrays."""
    p = np.squeeze(_as_numpy(pred_hu)).astype(np.float64)
    r = np.squeeze(_as_numpy(ref_hu)).astype(np.float64)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {r.shape}")
    if p.ndim != 2:
        raise ValueError(f"expected 2D slices, got shape {p.shape}")
    return apply_window(p, window), apply_window(r, window)


def windowed_psnr(pred_hu, ref_hu, window="abdomen") -> float:
    """PSNR (dB) of two 2D HU slices after clipping to ``window`` and scaling it to [0, 1]
    (data range 1): 10 log10(1 / MSE).  Identical slices give ``inf``."""
    p, r = _windowed_pair(pred_hu, ref_hu, window)
    mse = float(np.mean((p - r) ** 2))
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def windowed_ssim(pred_hu, ref_hu, window="abdomen") -> float:
    """SSIM of two 2D HU slices after clipping to ``window`` and scaling it to [0, 1]
    (data range 1; Gaussian 11 x 11, sigma 1.5, k1 0.01, k2 0.03, valid region)."""
    from skimage.metrics import structural_similarity

    p, r = _windowed_pair(pred_hu, ref_hu, window)
    return float(
        structural_similarity(p, r, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    )


def describe(window="abdomen") -> str:
    """Caption for a figure/table computed in ``window``, e.g.
    'abdomen window [-160, 240] HU, data range 1 (window scaled to [0,1])'."""
    low, high = resolve_window(window)
    name = f"{window} window" if isinstance(window, str) else "window"
    return f"{name} [{low:g}, {high:g}] HU, data range 1 (window scaled to [0,1])"


def windowed_metrics(pred_hu, ref_hu, windows: Sequence = ("abdomen",), roi: Optional[Roi] = None) -> dict:
    """PSNR/SSIM per window (keys ``psnr[<name>]``, ``ssim[<name>]``) and, with ``roi``,
    the flat-ROI ``noise_std_hu`` and ``bias_hu``."""
    out = {}
    for w in windows:
        name = w if isinstance(w, str) else "[{:g},{:g}]".format(*resolve_window(w))
        out[f"psnr[{name}]"] = windowed_psnr(pred_hu, ref_hu, w)
        out[f"ssim[{name}]"] = windowed_ssim(pred_hu, ref_hu, w)
    if roi is not None:
        out["noise_std_hu"], out["bias_hu"] = flat_roi_stats(pred_hu, ref_hu, roi)
    return out


# ------------------------------------------------------------------------------- ROIs
def roi_mask(shape: Tuple[int, int], roi: Roi) -> np.ndarray:
    """Boolean mask from a boolean array, or from a disc (row, col, radius) in pixels."""
    if isinstance(roi, np.ndarray) and roi.dtype == bool:
        if roi.shape != tuple(shape):
            raise ValueError(f"ROI mask shape {roi.shape} != image shape {tuple(shape)}")
        return roi
    row, col, radius = (float(v) for v in roi)
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - row) ** 2 + (cc - col) ** 2 <= radius**2


def flat_roi_stats(pred_hu, ref_hu, roi: Roi) -> Tuple[float, float]:
    """(noise_std_hu, mean_bias_hu) in a flat ROI.

    noise_std_hu = std of ``pred_hu`` inside the ROI (ddof=1; for a flat ROI this is the
    noise plus the anatomy's own fine texture); mean_bias_hu = mean(pred - ref) inside it.
    ``roi``: boolean mask or (row, col, radius) disc in pixels.
    """
    p = np.squeeze(_as_numpy(pred_hu)).astype(np.float64)
    r = np.squeeze(_as_numpy(ref_hu)).astype(np.float64)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {r.shape}")
    m = roi_mask(p.shape, roi)
    if m.sum() < 2:
        raise ValueError("ROI holds fewer than 2 pixels")
    return float(np.std(p[m], ddof=1)), float(np.mean(p[m] - r[m]))


def local_variance(ref_hu, radius: int, hu_range: Tuple[float, float] = (-50.0, 150.0)) -> np.ndarray:
    """Per pixel, the variance of the (2 radius + 1)² square around it; ``inf`` where the square is not
    wholly within ``hu_range`` (the candidates for a flat soft-tissue ROI are the finite entries)."""
    from scipy import ndimage

    r = np.squeeze(_as_numpy(ref_hu)).astype(np.float64)
    k = 2 * int(radius) + 1
    ok = ndimage.minimum_filter(((r >= hu_range[0]) & (r <= hu_range[1])).astype(np.uint8), size=k, mode="constant")
    mean = ndimage.uniform_filter(r, size=k)
    var = ndimage.uniform_filter(r * r, size=k) - mean**2
    var[ok == 0] = np.inf
    return var


def find_flat_roi(ref_hu, radius: int = 8, hu_range: Tuple[float, float] = (-50.0, 150.0)) -> Tuple[int, int, int]:
    """The flattest (lowest local std) square-bounded disc (row, col, radius) of the
    reference whose every pixel lies in ``hu_range`` (soft tissue by default)."""
    var = local_variance(ref_hu, radius, hu_range)
    if not np.isfinite(var).any():
        k = 2 * int(radius) + 1
        raise ValueError(f"no {k}x{k} region entirely within {hu_range} HU")
    row, col = np.unravel_index(int(np.argmin(var)), var.shape)
    return int(row), int(col), int(radius)


# -------------------------------------------------------------------------------- NPS
def _pixel_sizes(pixel_size_mm) -> Tuple[float, float]:
    ps = np.atleast_1d(np.asarray(pixel_size_mm, dtype=np.float64))
    return (float(ps[0]), float(ps[0])) if ps.size == 1 else (float(ps[0]), float(ps[1]))


def nps_2d(residual_hu, pixel_size_mm) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2D noise power spectrum of a residual image (H, W) or ROI stack (N, H, W), in HU^2 mm^2.

    Each ROI is mean-subtracted; NPS = mean_n |DFT|^2 * dy * dx / (Ny * Nx).  Returns
    ``(fy, fx, nps)`` with the zero frequency centred (fftshift), frequencies in 1/mm;
    ``nps.sum() * dfy * dfx`` equals the (ddof=0) variance (Parseval).
    ``pixel_size_mm``: a float or (row spacing, column spacing).
    """
    r = _as_numpy(residual_hu).astype(np.float64)
    if r.ndim == 2:
        r = r[None]
    if r.ndim != 3:
        raise ValueError(f"expected (H, W) or (N, H, W), got {r.shape}")
    dy, dx = _pixel_sizes(pixel_size_mm)
    n, ny, nx = r.shape
    r = r - r.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(r)) ** 2
    nps = power.mean(axis=0) * dy * dx / (ny * nx)
    fy = np.fft.fftshift(np.fft.fftfreq(ny, d=dy))
    fx = np.fft.fftshift(np.fft.fftfreq(nx, d=dx))
    return fy, fx, np.fft.fftshift(nps)


def radial_nps(residual_hu, pixel_size_mm, max_freq: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Radially averaged NPS: (frequencies in 1/mm, NPS in HU^2 mm^2).

    Annuli of width df = 1 / (N * pixel size) (the coarser axis), centred at 0, df, 2 df, ...
    up to ``max_freq`` (default: the Nyquist frequency of the coarser axis); empty annuli
    are dropped.
    """
    fy, fx, nps = nps_2d(residual_hu, pixel_size_mm)
    dy, dx = _pixel_sizes(pixel_size_mm)
    df = max(1.0 / (len(fy) * dy), 1.0 / (len(fx) * dx))
    fmax = 0.5 / max(dy, dx) if max_freq is None else float(max_freq)
    fr = np.hypot(*np.meshgrid(fy, fx, indexing="ij"))
    idx = np.rint(fr / df).astype(np.int64)
    nbins = int(np.floor(fmax / df)) + 1
    keep = idx < nbins
    sums = np.bincount(idx[keep], weights=nps[keep], minlength=nbins)
    counts = np.bincount(idx[keep], minlength=nbins)
    good = counts > 0
    freqs = np.arange(nbins) * df
    return freqs[good], sums[good] / counts[good]
