"""What the benchmark costs at the ``paper`` budget, per trained method, before a GPU is lent.

    python -m benchmark.paper_budget [--gpu_tflops 30] [--methods uidnet,dncnn,...] [--iterations 3]

For every trained method of ``benchmark.json`` at the paper budget's schedule (ISCL: train.json +
train_paper.json, 8,000 iterations x 64 patches; a baseline: the same unless its entry fixes its own),
it prints: the FLOPs of one training iteration at the paper's batch (torch's FLOP formulas, float32,
forward and backward of every network the iteration updates), the seconds of one iteration measured on
this machine at the cpu budget's batch, the machine's achieved FLOP/s for that method, and from them
the paper schedule's time here (total FLOPs / achieved rate) and on a GPU at ``--gpu_tflops`` sustained
(an assumption until ``python -m benchmark.train_speed --device cuda`` measures it on the lent GPU).
Training only: scoring the test sets is seconds per method on a GPU, BM3D runs on the CPU cores.
A benchmark, not a test: it asserts nothing and takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from scripts.core.device import describe_device
from .methods import BASELINE_SETTINGS, TRAINED_BASELINES
from .run import load_config, resolve_budget
from .train_speed import build_trainer, random_batch, time_iterations
from .uidnet import UIDNetStep

__all__ = ["baseline_step", "step_flops", "method_costs", "main"]


def _random(batch_size: int, patch_size: int) -> torch.Tensor:
    return torch.rand(batch_size, 1, patch_size, patch_size) * 2 - 1


def baseline_step(spec: dict, batch_size: int, patch_size: int) -> Callable[[], None]:
    """One training iteration of a config-declared baseline on random patches: Adam on the MSE (supervised,
    blind spot: the mask costs nothing) or UIDNet's critic, generator and denoiser steps."""
    network = spec["network"]()
    clean, noisy = _random(batch_size, patch_size), _random(batch_size, patch_size)
    if spec["kind"] == "unpaired":
        step = UIDNetStep(spec["noise_generator"](), spec["critic"](patch_size=patch_size), network)
        return lambda: step(clean, noisy)
    optimizer = torch.optim.Adam(network.parameters())

    def run():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(network(noisy), clean).backward()
        optimizer.step()

    return run


class _FlopCount(TorchDispatchMode):
    """torch's FLOP formulas without FlopCounterMode's module tracker, which refuses ``autograd.grad``
    (UIDNet's gradient penalty)."""

    total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **(kwargs or {}), out_val=out)
        return out


def step_flops(step: Callable[[], None]) -> int:
    with _FlopCount() as counter:
        step()
    return counter.total


def _iscl_step(batch_size: int, patch_size: int) -> Callable[[], None]:
    """One ISCL iteration: train_speed's trainer (the paper's networks and optimizers) on random patches."""
    return build_trainer(random_batch(batch_size, patch_size), 1, torch.device("cpu")).run


def _seconds(step: Callable[[], None], iterations: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - start) / iterations


def _schedule(spec: dict, budget: dict) -> dict:
    if spec["kind"] == "iscl":
        return {"iterations": budget["iscl"]["num_iterations"], "batch_size": budget["iscl"]["batch_size"],
                "patch_size": budget["baselines"]["patch_size"]}
    return {**budget["baselines"], **{k: spec[k] for k in BASELINE_SETTINGS if k in spec}}


def method_costs(spec: dict, paper: dict, cpu: dict, iterations: int) -> dict:
    """FLOPs per iteration at the paper's and the cpu budget's schedule, and CPU seconds per cpu-budget iteration."""
    on_paper, on_cpu = _schedule(spec, paper), _schedule(spec, cpu)
    if spec["kind"] == "iscl":
        seconds = time_iterations(on_cpu["batch_size"], on_cpu["patch_size"], iterations, 1, torch.device("cpu"))
        return {"paper": on_paper, "flops": step_flops(_iscl_step(on_paper["batch_size"], on_paper["patch_size"])),
                "cpu_flops": step_flops(_iscl_step(on_cpu["batch_size"], on_cpu["patch_size"])), "cpu_seconds": seconds}
    small = baseline_step(spec, on_cpu["batch_size"], on_cpu["patch_size"])
    return {"paper": on_paper, "flops": step_flops(baseline_step(spec, on_paper["batch_size"], on_paper["patch_size"])),
            "cpu_flops": step_flops(small), "cpu_seconds": _seconds(small, iterations)}


def _line(name: str, costs: dict, gpu_tflops: float) -> str:
    schedule = costs["paper"]
    total = costs["flops"] * schedule["iterations"]
    cpu_rate = costs["cpu_flops"] / costs["cpu_seconds"]
    return (f"{name:<22} {schedule['iterations']:>6} x {schedule['batch_size']:<3} {costs['flops'] / 1e9:>10.1f} "
            f"{costs['cpu_seconds']:>9.3f} {cpu_rate / 1e9:>8.1f} {total / cpu_rate / 3600:>9.1f} "
            f"{total / (gpu_tflops * 1e12) / 60:>8.1f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu_tflops", type=float, default=30.0, help="assumed sustained TFLOP/s of the GPU")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every trained method)")
    parser.add_argument("--iterations", type=int, default=3, help="timed CPU iterations per method")
    args = parser.parse_args(argv)
    config = load_config()
    budgets = config.get_parsed_content("budgets")
    paper, cpu = resolve_budget(budgets["paper"]), resolve_budget(budgets["cpu"])
    methods = config.get_parsed_content("methods")
    trained = [m for m, s in methods.items() if s["kind"] in TRAINED_BASELINES + ("iscl",)]
    chosen = args.methods.split(",") if args.methods else trained
    unknown = sorted(set(chosen) - set(trained))
    if unknown:
        parser.error(f"not trained methods of benchmark.json: {unknown}; choose from {trained}")
    print(f"Paper-budget cost of the benchmark's training, measured on {describe_device(torch.device('cpu'))} "
          f"(load average {os.getloadavg()[0]:.2f}), torch {torch.__version__}, float32; CPU times at the cpu budget's "
          f"batch ({cpu['baselines']['batch_size']}); GPU minutes at an assumed {args.gpu_tflops:g} TFLOP/s sustained")
    print(f"{'method':<22} {'paper schedule':>14} {'GFLOP/iter':>10} {'CPU s/it':>9} {'CPU GF/s':>8} "
          f"{'CPU hours':>9} {'GPU min':>8}")
    for name in chosen:
        print(_line(name, method_costs(methods[name], paper, cpu, args.iterations), args.gpu_tflops), flush=True)
    print("CPU hours = paper-schedule FLOPs / the FLOP rate this CPU achieved for that method; GPU min = the same FLOPs "
          "at --gpu_tflops (measure it with python -m benchmark.train_speed --device cuda when a GPU is lent).")


if __name__ == "__main__":
    main()
