"""Training-speed benchmark: seconds per iteration, images/s, peak memory and FLOP/s of the full ISCL
iteration (all three steps), in eager mode and with each speed switch of train.json.

    python -m benchmark.train_speed [--batches 2 8 64] [--iterations 3] [--warmup 1]
                                             [--device cpu|cuda] [--switches eager,bf16,channels_last,compile,bf16+compile]

Runs the real ISCLTrainer with the paper's networks and RAdam(+Lookahead) optimizers on random
64x64 patches and prints one line per (switch, batch) with the device named. The FLOPs of one
iteration are counted once per batch size with torch's FlopCounterMode (eager, float32); on a GPU
whose peak is known the achieved fraction of that peak is printed. Peak memory: the GPU's
max_memory_allocated, or on the CPU the process's peak resident set (it only grows across lines).
A benchmark, not a test: it asserts nothing and takes minutes on a CPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
from ignite.engine import Events
from torch.utils.flop_counter import FlopCounterMode

from scripts.core.device import cpu_has_native_bf16, describe_device, describe_isa
from scripts.model.engine import ISCLTrainer
from scripts.model.networks import Discriminator, Generator, NoiseExtractor
from scripts.model.optim import Lookahead

# train.json settings per switch (each alone, on top of eager float32)
SWITCHES = {
    "eager": {},
    "bf16": {"amp": True, "amp_dtype": "bfloat16"},
    "fp16": {"amp": True, "amp_dtype": "float16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
}
# dense peak FLOP/s by GPU name fragment: (float32, bfloat16/float16 tensor cores), from the vendors' sheets
GPU_PEAKS = {"H200": (67e12, 989e12), "H100": (67e12, 989e12), "A100": (19.5e12, 312e12), "L40S": (91.6e12, 362e12)}


def build_trainer(batch, total: int, device: torch.device, amp: bool = False, amp_dtype: str = "bfloat16",
                  channels_last: bool = False, compile: bool = False) -> ISCLTrainer:
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    nets = {
        "denoiser": Generator(), "noise_generator": Generator(), "noise_extractor": NoiseExtractor(),
        "noisy_discriminator": Discriminator(), "clean_discriminator": Discriminator(),
    }
    nets = {name: net.to(device, memory_format=memory_format) for name, net in nets.items()}

    def radam(*names):
        params = [p for n in names for p in nets[n].parameters()]
        return torch.optim.RAdam(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-7, foreach=True)

    return ISCLTrainer(
        device=device, max_epochs=1, train_data_loader=[batch] * total, epoch_length=total,
        generators_optimizer=radam("denoiser", "noise_generator"),
        discriminators_optimizer=Lookahead(radam("noisy_discriminator", "clean_discriminator")),
        extractor_optimizer=Lookahead(radam("noise_extractor")), amp=amp, amp_dtype=amp_dtype, compile=compile,
        to_kwargs={"memory_format": memory_format}, **nets,
    )


def random_batch(batch_size: int, patch_size: int) -> dict:
    return {key: torch.rand(batch_size, 1, patch_size, patch_size) * 2 - 1 for key in ("noisy", "clean")}


def time_iterations(batch_size: int, patch_size: int, iterations: int, warmup: int, device: torch.device,
                    **switch) -> float:
    """Seconds per iteration, averaged over ``iterations`` after ``warmup`` untimed ones (>= 1)."""
    trainer = build_trainer(random_batch(batch_size, patch_size), warmup + iterations, device, **switch)
    stamps = []

    def stamp(engine):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    trainer.run()
    return (stamps[-1] - stamps[warmup - 1]) / iterations


def count_flops(batch_size: int, patch_size: int, device: torch.device) -> int:
    """FLOPs of one eager float32 iteration (forward and backward of all three steps)."""
    trainer = build_trainer(random_batch(batch_size, patch_size), 1, device)
    with FlopCounterMode(display=False) as counter:
        trainer.run()
    return counter.get_total_flops()


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB RSS"


def flop_rate(flops: int, seconds: float, device: torch.device, reduced_precision: bool) -> str:
    rate = flops / seconds
    text = f"{rate / 1e12:.3f} TFLOP/s"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peaks = next((p for fragment, p in GPU_PEAKS.items() if fragment in name), None)
        if peaks:
            text += f" ({100 * rate / peaks[1 if reduced_precision else 0]:.1f} % of peak)"
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 8, 64],
                        help="batch sizes to time (2: default config, 64: paper)")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--switches", default="eager",
                        help=f"comma-separated, from {','.join(SWITCHES)}; '+' combines (bf16+compile)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    switches = args.switches.split(",")
    unknown = sorted({part for name in switches for part in name.split("+")} - set(SWITCHES))
    if unknown or args.warmup < 1:
        parser.error(f"unknown switch(es) {unknown}" if unknown else "--warmup must be >= 1")
    print(f"ISCL training benchmark on {describe_device(device)}; torch {torch.__version__}; "
          f"{args.patch}x{args.patch} patches; {args.iterations} timed iterations after {args.warmup} warm-up")
    if device.type == "cpu":
        print(f"CPU ISA: {describe_isa()}; native bfloat16: {'yes' if cpu_has_native_bf16() else 'no'} "
              f"(without it --amp trains in float32); load average {os.getloadavg()[0]:.2f}")
    print(f"{'switch':<14} {'batch':>5} {'s/iteration':>12} {'images/s':>9} {'GFLOP/iter':>11} {'achieved':>28} peak")
    for batch_size in args.batches:
        flops = count_flops(batch_size, args.patch, device)
        for name in switches:
            settings = {key: value for part in name.split("+") for key, value in SWITCHES[part].items()}
            seconds = time_iterations(batch_size, args.patch, args.iterations, args.warmup, device, **settings)
            rate = flop_rate(flops, seconds, device, settings.get("amp", False))
            print(f"{name:<14} {batch_size:>5} {seconds:>12.3f} {batch_size / seconds:>9.1f} {flops / 1e9:>11.1f} "
                  f"{rate:>28} {peak_memory(device)}", flush=True)
    print("images/s counts noisy patches per second (each iteration also consumes as many clean patches).")


if __name__ == "__main__":
    main()
