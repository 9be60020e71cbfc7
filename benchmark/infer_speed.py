"""Inference-speed benchmark: slices/s and seconds per 512 x 512 x N volume, full-slice and tiled.

    python -m benchmark.infer_speed [--slices 16] [--size 512] [--tile-size 256] [--overlap 0.25]
                                             [--batch-size 1] [--devices cpu,cuda] [--modes slice,tiled] [--amp]
                                             [--compile]

Runs ``inference.denoise_volume`` with the exported ``ISCLDenoiser`` (gamma 0.5: F and H both run;
random weights unless ``--model-path``: the speed does not depend on them) on a simulated CT volume,
after one warm-up slice (timed apart: with ``--compile`` it is the compilation), and prints one line per
(device, mode) with the device named and the
peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the peak resident set size
(``ru_maxrss``) of a fresh child process that runs just that setting (so each line is its own peak,
Python + torch + data included). CUDA is skipped when not present. A benchmark, not a test: it
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from scripts.core.device import describe_device
from scripts.tasks.inference import denoise_volume, load_denoiser
from scripts.model.networks import ENSEMBLE_GAMMA, ISCLDenoiser


def make_volume(slices: int, size: int) -> np.ndarray:
    """A simulated abdomen slice plus Gaussian noise (30 HU), repeated with fresh noise per slice."""
    from scripts.datasets.phantom import phantom

    rng = np.random.default_rng(0)
    clean = phantom(size, seed=0)
    return np.stack([clean + rng.normal(0.0, 30.0, clean.shape) for _ in range(slices)]).astype(np.float32)


def measure(args) -> dict:
    """One (device, mode) setting in this process."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.model_path:
        network = load_denoiser(args.model_path, gamma=ENSEMBLE_GAMMA, device=device)
    else:
        network = ISCLDenoiser(gamma=ENSEMBLE_GAMMA).to(device).eval()
    volume = make_volume(args.slices, args.size)
    options = dict(device=device, mode=args.mode, tile_size=args.tile_size, overlap=args.overlap, amp=args.amp,
                   progress=False, batch_size=args.batch_size)
    network = torch.compile(network) if args.compile else network
    start = time.perf_counter()
    denoise_volume(volume[:1], network, **options)  # warm-up (allocator, cuDNN autotuning, compilation)
    warmup = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    denoise_volume(volume, network, **options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB GPU (max_memory_allocated)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB RSS (ru_maxrss, whole process)"
    return {"device": describe_device(device), "mode": args.mode, "seconds": seconds, "slices": args.slices,
            "size": args.size, "peak": peak, "warmup": warmup}


def describe(result: dict, args) -> str:
    mode = result["mode"] if result["mode"] == "slice" else f"tiled {args.tile_size}/{args.overlap:g}"
    return (f"{result['device']:<48} {mode:<14} {result['slices'] / result['seconds']:8.2f} slices/s "
            f"{result['seconds']:9.2f} s per {result['size']}x{result['size']}x{result['slices']} volume   "
            f"(first slice {result['warmup']:.1f} s)   peak {result['peak']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=16, help="N, slices per volume")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=1, help="slices per forward pass")
    parser.add_argument("--devices", default="cpu,cuda", help="comma-separated; cuda is skipped when absent")
    parser.add_argument("--modes", default="slice,tiled")
    parser.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (first slice compiles)")
    parser.add_argument("--model-path", default=None)
    parser.add_argument("--device", help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.device:
        print(json.dumps(measure(args)))
        return
    devices = [d for d in args.devices.split(",") if d and (d != "cuda" or torch.cuda.is_available())]
    print(f"ISCLDenoiser (gamma {ENSEMBLE_GAMMA:g}, F + H) on {args.size}x{args.size}x{args.slices} HU volumes, "
          f"batch {args.batch_size} slice(s), amp={args.amp}, compile={args.compile}; torch {torch.__version__}")
    for device in devices:
        for mode in args.modes.split(","):
            child = [sys.executable, os.path.abspath(__file__), "--device", device, "--mode", mode,
                     "--slices", str(args.slices), "--size", str(args.size), "--tile-size", str(args.tile_size),
                     "--overlap", str(args.overlap), "--batch-size", str(args.batch_size)]
            child += ["--amp"] if args.amp else []
            child += ["--compile"] if args.compile else []
            child += ["--model-path", args.model_path] if args.model_path else []
            done = subprocess.run(child, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{device} {mode}: failed\n{done.stderr[-2000:]}")
                continue
            print(describe(json.loads(done.stdout.strip().splitlines()[-1]), args), flush=True)


if __name__ == "__main__":
    main()
