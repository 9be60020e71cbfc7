"""Procedural abdomen/pelvis CT slices in HU (the "patients" of the simulated data; see ``simulate``).

``phantom(size, seed, z_mm)``: air (-1000) outside an irregular elliptical body outline,
subcutaneous fat (~ -100), abdominal wall and paraspinal muscle (~ 50), visceral soft tissue
(~ 40) with visceral-fat blobs, liver (55..70), spleen (45..55), kidneys (25..35), aorta/IVC
(contrast phase per patient, 40..200), bowel loops with air / fluid / air-fluid levels, a vertebra
(cortical shell 700..1000, cancellous 150..300, canal, processes), ribs (upper-abdomen patients)
or iliac wings + bladder (pelvis patients, ~1/3 of seeds), 1..4 low-contrast lesions (+-10..30 HU
against their host organ) and a smooth correlated texture of a few HU.  Edges carry partial-volume
blur (2x2 supersampling).  The seed is the patient (body size/shape/pose, organ layout, HU levels,
lesions); ``z_mm`` moves through the patient (organs are ellipsoids).  The field of view is
``DEFAULT_FOV_MM = 384`` mm whatever the matrix size: 1.5 mm pixels at 256 x 256.  The patient's random
parameters are ``phantom_patient``'s, the painting of the anatomy ``phantom_anatomy``'s (its ``LABELS`` are
the values of the label map).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from .phantom_anatomy import Canvas, Slice, paint_anatomy
from .phantom_patient import draw_patient

__all__ = ["DEFAULT_FOV_MM", "default_pixel_size", "phantom", "uniform_phantom"]

DEFAULT_FOV_MM = 384.0


def default_pixel_size(size: int) -> float:
    """Default pixel size in mm: the 384 mm field of view over ``size`` pixels (1.5 mm at 256)."""
    return DEFAULT_FOV_MM / float(size)


def _add_texture(hu: np.ndarray, patient: dict, seed: int, z: float, px: float) -> np.ndarray:
    """A smooth correlated texture of a few HU in tissue (not in air)."""
    g = np.random.default_rng(np.random.SeedSequence([int(seed), 1234, int(round(z * 100)) % 2**31]))
    tex = ndimage.gaussian_filter(g.standard_normal(hu.shape), patient["texture_mm"] / px, mode="wrap")
    tex *= patient["texture_hu"] / max(tex.std(), 1e-12)
    return np.where(hu > -800.0, hu + tex, hu)


def phantom(
    size: int = 256,
    seed: int = 0,
    pixel_size_mm: Optional[float] = None,
    z_mm: float = 0.0,
    return_labels: bool = False,
):
    """Procedural abdomen/pelvis CT slice in HU, float32 (size, size).

    ``seed`` is the patient, ``z_mm`` the table position within that patient.
    ``pixel_size_mm`` defaults to 384 mm / size (1.5 mm at 256), so any matrix size
    shows the same anatomy.  With ``return_labels`` also returns a uint8 label map
    (values in ``LABELS``), e.g. to pick flat soft-tissue ROIs.
    """
    px = default_pixel_size(size) if pixel_size_mm is None else float(pixel_size_mm)
    sl = Slice(Canvas(size, px), draw_patient(seed), float(z_mm), int(seed))
    paint_anatomy(sl)
    hu, lab = sl.cv.result()
    hu = _add_texture(hu, sl.patient, seed, sl.z, px).astype(np.float32)
    return (hu, lab) if return_labels else hu


def uniform_phantom(
    size: int = 256, pixel_size_mm: Optional[float] = None, semi_axes_mm=(150.0, 110.0), hu: float = 40.0
) -> np.ndarray:
    """A flat elliptical soft-tissue body (``hu`` inside, -1000 outside): a noise-calibration phantom."""
    px = default_pixel_size(size) if pixel_size_mm is None else float(pixel_size_mm)
    cv = Canvas(size, px)
    cv.paint(cv.ellipse(0.0, 0.0, semi_axes_mm[0], semi_axes_mm[1]), hu, "soft_tissue")
    return cv.result()[0].astype(np.float32)
