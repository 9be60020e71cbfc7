"""Which device a run uses, checked before any input is read, and the device in words for reports."""

from __future__ import annotations

import platform

import torch

from .errors import InferenceError

__all__ = ["resolve_device", "describe_device"]


def resolve_device(device=None) -> torch.device:
    """``device`` as a torch.device; None (or "") means CUDA when available, else CPU. A device this
    machine's torch cannot use is refused here, before any input is read."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise InferenceError(f"device {device!r}: not a torch device ({error}).") from None
    if resolved.type not in ("cpu", "cuda"):
        raise InferenceError(f"device {device!r}: this bundle runs on cpu or cuda.")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device {device!r}: this torch has no usable CUDA device "
                             f"(torch {torch.__version__}); use --device cpu or install a CUDA build.")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InferenceError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here.")
    return resolved


def describe_device(device: torch.device) -> str:
    """The device in words, for reports and benchmarks: the GPU model, or the CPU model and torch threads."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {model}, {torch.get_num_threads()} torch threads"
