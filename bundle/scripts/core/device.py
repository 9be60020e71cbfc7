"""Which device a run uses, checked before any input is read, and the device in words for reports."""

from __future__ import annotations

import os
import platform
import warnings

import torch

from .errors import InferenceError

__all__ = ["resolve_device", "describe_device", "cpu_isa", "cpu_has_native_bf16", "usable_amp", "describe_isa"]

#: ``ONEDNN_MAX_CPU_ISA`` values that keep oneDNN from the bfloat16 instructions
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


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
        raise InferenceError(
            f"device {device!r}: this torch has no usable CUDA device "
            f"(torch {torch.__version__}); use --device cpu or install a CUDA build."
        )
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


def cpu_isa() -> dict:
    """The CPU features that decide the training switches, as torch reports them: the ATen kernel level
    (``ATEN_CPU_CAPABILITY`` lowers it), AVX2, AVX-512, avx512_bf16 and AMX tiles."""
    return {
        "aten": torch.backends.cpu.get_cpu_capability(),
        "avx2": torch.cpu._is_avx2_supported(),
        "avx512f": torch.cpu._is_avx512_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "amx": torch.cpu._is_amx_tile_supported(),
        "amx_fp16": torch.cpu._is_amx_fp16_supported(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
    }


def cpu_has_native_bf16(isa: dict | None = None) -> bool:
    """Whether this CPU computes bfloat16 in hardware (avx512_bf16 or AMX, with the AVX-512 kernels on and
    oneDNN not held below AVX-512). Elsewhere bfloat16 is emulated and runs many times slower than float32."""
    isa = cpu_isa() if isa is None else isa
    held_below = isa["onednn_max_isa"].upper() in ONEDNN_ISAS_WITHOUT_BF16
    return isa["aten"].startswith("AVX512") and (isa["avx512_bf16"] or isa["amx"]) and not held_below


def usable_amp(amp: bool, amp_dtype: str, device) -> bool:
    """``amp`` where it pays: on CUDA, and on a CPU only for a dtype it computes natively (bfloat16:
    avx512_bf16 or AMX; float16: AMX-FP16); elsewhere one warning and float32 (emulated bfloat16 made an
    AVX2 CPU's training step 3-5x slower than float32)."""
    if not amp or torch.device(device).type != "cpu":
        return bool(amp)
    isa = cpu_isa()
    native = cpu_has_native_bf16(isa) if amp_dtype == "bfloat16" else isa["amx_fp16"]
    if native:
        return True
    warnings.warn(
        f"amp with {amp_dtype} needs a CPU that computes it natively (bfloat16: avx512_bf16 or AMX; "
        f"float16: AMX-FP16); this one reports {describe_isa(isa)}: training in float32 instead.",
        UserWarning,
        stacklevel=2,
    )
    return False


def compiler_vector_isa() -> str:
    """The vector ISA torch.compile's CPU code generator (inductor) targets here, e.g. "avx512", "avx2"."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return str(pick_vec_isa())


def usable_compile(compile: bool, device) -> bool:
    """``compile`` where its kernels are right: on CUDA, and on a CPU whose inductor code is AVX-512. With
    AVX2 kernels torch 2.13 miscompiles the ISCL generator and noise extractor (outputs of 1e37 and NaN
    against eager; found with the CPU held to AVX2, the discriminator unaffected): one warning and eager."""
    if not compile or torch.device(device).type != "cpu":
        return bool(compile)
    isa = compiler_vector_isa()
    if isa.startswith("avx512"):
        return True
    warnings.warn(
        f"compile: torch 2.13's compiled CPU kernels for {isa or 'this CPU'} return wrong values (NaN) "
        "for the ISCL networks; running eager instead.",
        UserWarning,
        stacklevel=2,
    )
    return False


def describe_isa(isa: dict | None = None) -> str:
    """The ISA line of reports and the training benchmark, e.g. ``ATen AVX512; avx2 yes, avx512f yes, ...``."""
    isa = cpu_isa() if isa is None else isa
    flags = ", ".join(f"{name} {'yes' if isa[name] else 'no'}" for name in ("avx2", "avx512f", "avx512_bf16", "amx"))
    held = f"; ONEDNN_MAX_CPU_ISA={isa['onednn_max_isa']}" if isa["onednn_max_isa"] else ""
    return f"ATen {isa['aten']}; {flags}{held}"
