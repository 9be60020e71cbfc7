"""CT intensity conventions: HU <-> network scale, display windows.

Everything here works on numpy arrays and torch tensors alike (and on Python floats).

Network scale
-------------
Training tensors are HU clipped to ``HU_RANGE = (-1024, 3072)`` and mapped linearly to
[-1, 1] (``hu_to_unit``); ``unit_to_hu`` is the exact inverse, so a denoised output goes
back to HU without any further rescaling.  The range is a parameter everywhere, so a
config may choose another one (e.g. (-1024, 1024) for soft-tissue only work).

Display windows
---------------
``WINDOWS`` maps a name to (low_HU, high_HU).  Metrics (see ``metrics.py``) clip both
images to a window and scale it to [0, 1]:

=============  ===================  =========================================
name           (low, high) HU       source
=============  ===================  =========================================
abdomen        (-160, 240)          ISCL paper
chest          (-400, 1000)         ISCL paper
abdomen_ldct   (-150, 250)          LDCT benchmark (Eulig et al.), C 50 / W 400
chest_ldct     (-1350, 150)         LDCT benchmark, C -600 / W 1500
head_ldct      (0, 80)              LDCT benchmark, C 40 / W 80
=============  ===================  =========================================
"""

from __future__ import annotations

from typing import Tuple, Union

import sys

import numpy as np

__all__ = [
    "HU_RANGE",
    "WINDOWS",
    "hu_to_unit",
    "unit_to_hu",
    "window_from_center_width",
    "resolve_window",
    "apply_window",
]

#: documented training range in HU, mapped to [-1, 1]
HU_RANGE: Tuple[float, float] = (-1024.0, 3072.0)

Window = Union[str, Tuple[float, float]]


def window_from_center_width(center: float, width: float) -> Tuple[float, float]:
    """DICOM-style window (center C, width W) -> (C - W/2, C + W/2) in HU."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return (float(center) - float(width) / 2.0, float(center) + float(width) / 2.0)


WINDOWS = {
    "abdomen": (-160.0, 240.0),
    "chest": (-400.0, 1000.0),
    "abdomen_ldct": window_from_center_width(50, 400),
    "chest_ldct": window_from_center_width(-600, 1500),
    "head_ldct": window_from_center_width(40, 80),
}


def resolve_window(window: Window) -> Tuple[float, float]:
    """A window name from ``WINDOWS`` or a (low, high) pair -> (low, high) floats."""
    if isinstance(window, str):
        try:
            return WINDOWS[window]
        except KeyError:
            raise KeyError(f"unknown window {window!r}; known: {sorted(WINDOWS)}") from None
    low, high = (float(v) for v in window)
    if not high > low:
        raise ValueError(f"window needs low < high, got ({low}, {high})")
    return low, high


def _clip(x, low: float, high: float):
    torch = sys.modules.get("torch")  # a tensor implies torch is imported; never import it here
    if torch is not None and isinstance(x, torch.Tensor):
        return torch.clamp(x, low, high)
    return np.clip(x, low, high)


def _check_range(hu_range) -> Tuple[float, float]:
    low, high = (float(v) for v in hu_range)
    if not high > low:
        raise ValueError(f"hu_range needs low < high, got ({low}, {high})")
    return low, high


def hu_to_unit(hu, hu_range=HU_RANGE):
    """Clip HU to ``hu_range`` and map linearly to [-1, 1] (low -> -1, high -> +1)."""
    low, high = _check_range(hu_range)
    return (_clip(hu, low, high) - low) * (2.0 / (high - low)) - 1.0


def unit_to_hu(u, hu_range=HU_RANGE):
    """Exact inverse of ``hu_to_unit`` on [-1, 1]; values outside are extrapolated, not clipped."""
    low, high = _check_range(hu_range)
    return (u + 1.0) * ((high - low) / 2.0) + low


def apply_window(hu, window: Window):
    """Clip HU to the window and scale it to [0, 1] (low -> 0, high -> 1)."""
    low, high = resolve_window(window)
    return (_clip(hu, low, high) - low) / (high - low)
