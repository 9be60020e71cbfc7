"""See it work in a minute: a real CT slice given the project's simulated low dose, denoised by the bundle.

The sample is pydicom-data's contrast-enhanced abdominal CT slice (``explicit_VR-UN.dcm``, 512 x 512,
0.86 mm pixels; installed with requirements.txt, nothing is downloaded). ``write_sample`` gives it
the project's simulated low dose (``low_dose.simulate_low_dose``, default I0) and writes the low-dose
and the full-dose slice as two DICOM series. The bundle's own inference entry (inference.json's
``denoise``) denoises the low-dose series; ``report`` measures the result against the full dose and
draws low dose | denoised | full dose in one window. demo.json wires the three steps.
"""

from __future__ import annotations

import os

import numpy as np

from ..core.atomic import atomic_path
from ..core.ct import resolve_window
from ..core.metrics import find_flat_roi, flat_roi_stats, windowed_psnr, windowed_ssim
from ..datasets.low_dose import DEFAULT_I0, simulate_low_dose
from ..datasets.phantom import default_pixel_size
from ..datasets.simulate import nifti_affine, simulated_patient
from ..volumes.dicom_io import scan_series
from ..volumes.dicom_pixels import read_series_hu
from ..volumes.dicom_write import write_ct_series
from ..volumes.volume_io import write_hu_nifti
from .report_figures import slice_figure

SAMPLE_FILE = "explicit_VR-UN.dcm"
#: the bundle's own sample (``inference.json``'s default input): two 256² slices of the first simulated
#: test patient at the default dose, made by ``write_bundle_sample`` (no data of anyone's)
BUNDLE_SAMPLE = os.path.join("sample", "simulated_low_dose.nii.gz")


def sample_path() -> str:
    """The real CT slice shipped in the pydicom-data package."""
    import data_store

    path = os.path.join(os.path.dirname(data_store.__file__), "data", SAMPLE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the demo's CT slice is missing; install pydicom-data (requirements.txt).")
    return path


def write_sample(low_dose_dir: str, full_dose_dir: str, seed: int = 0, i0: float = DEFAULT_I0) -> None:
    """Write the sample slice (full dose) and one simulated low-dose draw of it as two DICOM series."""
    source = scan_series([sample_path()])[0]
    full, _ = read_series_hu(source)
    low = simulate_low_dose(full[0], i0=i0, pixel_size_mm=source.pixel_spacing[0], rng=seed)[None]
    series = ((full_dose_dir, full, "full dose"), (low_dose_dir, low, f"simulated low dose, I0 {i0:g}, seed {seed}"))
    for folder, volume, description in series:
        write_ct_series(volume, folder, source=source, series_description=description, overwrite=True)


def write_bundle_sample(path: str, n_slices: int = 2, size: int = 256, slice_spacing_mm: float = 3.0) -> str:
    """Write the bundle's sample: the simulated test patient 0's low dose, ``n_slices`` slices."""
    _, low = simulated_patient("test", 0, n_slices=n_slices, size=size, slice_spacing_mm=slice_spacing_mm)
    return write_hu_nifti(low, path, nifti_affine(default_pixel_size(size), slice_spacing_mm))


def measure(low_dose: np.ndarray, denoised: np.ndarray, full_dose: np.ndarray, window: str = "abdomen") -> dict:
    """PSNR/SSIM of the low dose and the denoised slice against the full dose, and flat-ROI noise and bias."""
    roi = find_flat_roi(full_dose)
    figures = {}
    for name, image in (("low_dose", low_dose), ("denoised", denoised)):
        noise, bias = flat_roi_stats(image, full_dose, roi)
        figures[name] = {
            "psnr": windowed_psnr(image, full_dose, window),
            "ssim": windowed_ssim(image, full_dose, window),
            "noise_hu": noise,
            "bias_hu": bias,
        }
    return figures


def summary(figures: dict, window: str) -> str:
    low, out = figures["low_dose"], figures["denoised"]
    lo, hi = resolve_window(window)
    return (
        f"demo ({window} window [{lo:g}, {hi:g}] HU, data range 1, against the full dose): "
        f"PSNR {low['psnr']:.2f} -> {out['psnr']:.2f} dB (gain {out['psnr'] - low['psnr']:+.2f} dB), "
        f"SSIM {low['ssim']:.3f} -> {out['ssim']:.3f}; flat-ROI noise {low['noise_hu']:.1f} -> "
        f"{out['noise_hu']:.1f} HU ({100 * (out['noise_hu'] / low['noise_hu'] - 1):+.0f} %), "
        f"bias {low['bias_hu']:+.1f} -> {out['bias_hu']:+.1f} HU"
    )


def report(low_dose_dir: str, denoised_dirs, full_dose_dir: str, figure_path: str, window: str = "abdomen") -> str:
    """Measure the denoised series (the one path ``denoised_dirs`` lists), draw the side-by-side figure."""
    (denoised_dir,) = denoised_dirs
    low, out, full = (read_series_hu(folder)[0][0] for folder in (low_dose_dir, denoised_dir, full_dose_dir))
    figures = measure(low, out, full, window)
    panels = {"low_dose": low, "ensemble": out, "full_dose": full, "patient": f"pydicom-data {SAMPLE_FILE}", "slice": 0}
    with atomic_path(figure_path, ".png") as tmp:
        slice_figure(tmp, panels, window, "denoised (bundle inference)")
    return f"{summary(figures, window)}\nfigure: {os.path.abspath(figure_path)}"
