"""BM3D for the benchmark, as a radiologist's physicist would set it up: noise level from the image
itself, noise colour from a calibration scan or from the slice itself.

``estimate_noise_std``: the median standard deviation of the slice's flat soft-tissue squares (found
on a Gaussian-smoothed copy, so the search does not favour places where the noise happens to be
low; the minimum-std disc of the noisy slice underestimates it by a quarter on the simulated set).
``calibration_psd``: CT noise is correlated (streaks, a ramp-filtered spectrum), so BM3D's
correlated-noise mode gets a noise power spectrum measured as a scanner's would be: a water
ellipse scanned at the same dose and pixel size through the project's projection-domain simulator
(``low_dose.simulate_low_dose``), noise = low dose - water, ``|FFT|^2`` averaged over draws.  Its
level is then set to the slice's own estimated std (BM3D's convention: a PSD of mean
``sigma^2 * M * N`` for noise of variance ``sigma^2`` on an M x N image).
``slice_psd``: the same without a calibration scan: the noise autocorrelation of the slice's own flat
soft-tissue squares (Hann-tapered, lags up to half a square), transformed on the slice's grid.
``bm3d_denoise``: one HU slice; BM3D works on HU / 1000 (its profiles expect values near [0, 1]).
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np

from scripts.datasets.low_dose import DEFAULT_I0, simulate_low_dose

__all__ = ["estimate_noise_std", "calibration_psd", "slice_psd", "bm3d_denoise"]

HU_SCALE = 1000.0
WATER_HU = 0.0
AIR_HU = -1000.0


def _block(hu: np.ndarray, block: Optional[int]) -> int:
    """The square size: 17 pixels from 204-pixel slices on, fewer on smaller ones (at least 5)."""
    return max(5, min(17, min(hu.shape) // 12)) if block is None else int(block)


def _flat_squares(hu: np.ndarray, block: int, smoothing_px: float, hu_range: Tuple[float, float]):
    """The non-overlapping ``block`` x ``block`` squares of ``hu`` that lie wholly in soft tissue, judged on a
    smoothed copy so that noise does not decide; on very noisy slices (200 HU) the smoothing doubles, up
    to 4 times, until some square qualifies."""
    from scipy.ndimage import gaussian_filter

    for attempt in range(3):
        smooth = gaussian_filter(hu, smoothing_px * 2 ** attempt)
        squares = []
        for top in range(0, hu.shape[0] - block + 1, block):
            for left in range(0, hu.shape[1] - block + 1, block):
                square = (slice(top, top + block), slice(left, left + block))
                if hu_range[0] <= smooth[square].min() and smooth[square].max() <= hu_range[1]:
                    squares.append(hu[square])
        if squares:
            return squares
    raise ValueError(f"no {block}x{block} soft-tissue square ({hu_range[0]:g} to {hu_range[1]:g} HU) to "
                     "estimate the noise from")


def estimate_noise_std(hu: np.ndarray, block: Optional[int] = None, smoothing_px: float = 2.0,
                       hu_range: Tuple[float, float] = (-50.0, 150.0)) -> float:
    """Noise std (HU) of a noisy slice: the median std of its non-overlapping ``block`` x ``block``
    soft-tissue squares (``_block``)."""
    hu = np.asarray(hu, dtype=np.float64)
    block = _block(hu, block)
    return float(np.median([square.std(ddof=1) for square in _flat_squares(hu, block, smoothing_px, hu_range)]))


def slice_psd(hu: np.ndarray, noise_std_hu: float, block: Optional[int] = None, smoothing_px: float = 2.0,
              hu_range: Tuple[float, float] = (-50.0, 150.0)) -> np.ndarray:
    """BM3D ``sigma_psd`` measured on the noisy slice itself, without a calibration scan: the noise
    autocorrelation of its flat soft-tissue squares (mean ``|FFT|^2`` of each mean-free square, back
    to the pixel domain), laid out on the slice's grid and transformed to an M x N spectrum; level set
    to ``noise_std_hu`` as in ``calibration_psd``."""
    hu = np.asarray(hu, dtype=np.float64)
    block = _block(hu, block)
    squares = _flat_squares(hu, block, smoothing_px, hu_range)
    power = np.mean([np.abs(np.fft.fft2(square - square.mean())) ** 2 for square in squares], axis=0)
    autocorrelation = np.real(np.fft.ifft2(power))
    lags = np.arange(-((block - 1) // 2), (block - 1) // 2 + 1)  # beyond half a square the estimate wraps round
    grid = np.zeros(hu.shape)
    taper = 0.5 * (1.0 + np.cos(np.pi * lags / (lags[-1] + 1)))  # Hann: damps the noisy long lags
    grid[np.ix_(lags % hu.shape[0], lags % hu.shape[1])] = (autocorrelation[np.ix_(lags % block, lags % block)]
                                                            * np.outer(taper, taper))
    psd = np.clip(np.real(np.fft.fft2(grid)), 1e-6 * grid[0, 0], None)  # a spectrum is not negative
    return psd / psd.mean() * (noise_std_hu / HU_SCALE) ** 2 * hu.size


def _water_ellipse(shape: Tuple[int, int]) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    centre_r, centre_c = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    inside = ((rows - centre_r) / (0.35 * shape[0])) ** 2 + ((cols - centre_c) / (0.42 * shape[1])) ** 2 <= 1.0
    return np.where(inside, WATER_HU, AIR_HU)


@functools.lru_cache(maxsize=8)
def _normalised_psd(shape: Tuple[int, int], pixel_size_mm: float, i0: float, draws: int) -> np.ndarray:
    """Noise PSD shape of a water scan (mean 1), averaged over ``draws`` noise draws."""
    water = _water_ellipse(shape)
    inside = water == WATER_HU
    psd = np.zeros(shape)
    for seed in range(draws):
        low = simulate_low_dose(water, i0=i0, pixel_size_mm=pixel_size_mm, rng=seed)
        noise = np.where(inside, low - water, 0.0)
        noise[inside] -= noise[inside].mean()
        psd += np.abs(np.fft.fft2(noise)) ** 2
    return psd / psd.mean()


def calibration_psd(shape: Tuple[int, int], pixel_size_mm: float, noise_std_hu: float, i0: float = DEFAULT_I0,
                    draws: int = 4) -> np.ndarray:
    """BM3D ``sigma_psd`` (in HU / 1000 units) for an M x N slice with noise std ``noise_std_hu``."""
    shape = (int(shape[0]), int(shape[1]))
    scale = (noise_std_hu / HU_SCALE) ** 2 * shape[0] * shape[1]
    return _normalised_psd(shape, float(pixel_size_mm), float(i0), int(draws)) * scale


def bm3d_denoise(hu: np.ndarray, noise_std_hu: Optional[float] = None, psd: Optional[np.ndarray] = None) -> np.ndarray:
    """BM3D of one HU slice with a white-noise std (HU; estimated when None) or a PSD
    (``calibration_psd``); float32 HU out."""
    import bm3d

    hu = np.asarray(hu, dtype=np.float64)
    if psd is None:
        std = estimate_noise_std(hu) if noise_std_hu is None else float(noise_std_hu)
        sigma = std / HU_SCALE
    else:
        sigma = psd
    if not hasattr(np, "trapz"):  # bm4d 4.2.5's PSD path still calls np.trapz, gone in numpy 2.4
        np.trapz = np.trapezoid
    denoised = np.asarray(bm3d.bm3d(hu / HU_SCALE, sigma)).reshape(hu.shape)
    return (denoised * HU_SCALE).astype(np.float32)
