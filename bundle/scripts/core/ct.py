"""CT intensity conventions: HU <-> network scale, display windows.

Everything here works on numpy arrays and torch tensors alike (and on Python floats).

Network scale
-------------
Training tensors are HU clipped to ``HU_RANGE`` and mapped linearly to [-1, 1]
(``hu_to_unit``); ``unit_to_hu`` is the exact inverse inside the range.  The default is the
abdomen display window (-160, 240) HU, as the authors trained (ISCL_SPEC, "Intensity
scaling"); the range is a parameter everywhere (``hu_range`` in the configs; the chest
config uses (-400, 1000)).  A wide range such as (-1024, 3072) shrinks 30 HU of noise to
0.015 network units and measurably slows training.

Training in the display window, full HU out
--------------------------------------------
As the authors did, the networks see the region's display window stretched over [-1, 1]
(``hu_range`` = abdomen (-160, 240) by default), everything outside clipped. A clinical output
must not lose bone and air, so ``restore_outside_window`` hands back the input HU wherever the
low-dose input lies more than ``margin`` HU outside the window, and blends linearly between the
network's output and the input over the first ``margin`` HU outside it: the output is a
continuous function of the input, with no step at the window edges. The default margin,
``OUTSIDE_WINDOW_MARGIN_HU = 100``, is about three noise standard deviations of quarter-dose
soft tissue (26-36 HU in the simulated default).

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

import sys
from typing import Tuple, Union

import numpy as np

__all__ = [
    "HU_RANGE",
    "WINDOWS",
    "hu_to_unit",
    "unit_to_hu",
    "window_from_center_width",
    "resolve_window",
    "apply_window",
    "OUTSIDE_WINDOW_MARGIN_HU",
    "restore_outside_window",
]

#: default training range in HU, mapped to [-1, 1]: the abdomen display window
HU_RANGE: Tuple[float, float] = (-160.0, 240.0)

#: HU beyond the network's window over which the output blends back into the input HU
OUTSIDE_WINDOW_MARGIN_HU: float = 100.0

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


def restore_outside_window(denoised_hu, input_hu, hu_range, margin: float = OUTSIDE_WINDOW_MARGIN_HU):
    """Full-range HU from a denoised image made in the window ``hu_range``.

    ``w = clip(d / margin, 0, 1)`` with ``d`` how far the *input* lies outside the window (0
    inside); returns ``denoised + w * (input - denoised)``: the denoised value inside the window,
    the input HU exactly from ``margin`` HU outside it on, a linear blend in between. Arrays or
    tensors of one shape.
    """
    low, high = _check_range(hu_range)
    if not margin > 0:
        raise ValueError(f"margin must be positive, got {margin}")
    outside = _clip(input_hu - high, 0.0, None) + _clip(low - input_hu, 0.0, None)
    weight = _clip(outside / float(margin), 0.0, 1.0)
    return denoised_hu + weight * (input_hu - denoised_hu)


def display_range(window: Window, hu_range=HU_RANGE) -> Tuple[float, float]:
    """A display window in HU as network units of ``hu_range`` (for image grids of network outputs)."""
    low, high = resolve_window(window)
    return float(hu_to_unit(low, hu_range)), float(hu_to_unit(high, hu_range))


def noise_display_range(hu_range=HU_RANGE, half_width_hu: float = 100.0) -> Tuple[float, float]:
    """+-``half_width_hu`` of noise (a difference image such as H(x)) in network units of ``hu_range``."""
    low, high = _check_range(hu_range)
    scale = half_width_hu * 2.0 / (high - low)
    return -scale, scale
