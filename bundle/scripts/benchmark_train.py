"""Training-speed benchmark: iterations/s and images/s of the full ISCL iteration (all three steps).

    python bundle/scripts/benchmark_train.py [--iterations 3] [--warmup 1] [--device cpu|cuda]

Runs the real ISCLTrainer with the paper's networks and RAdam(+Lookahead) optimizers on random
64x64 patches, for the default config's batch and the paper's batch 64, and prints one line per
setting with the device named. A benchmark, not a test: it asserts nothing and takes minutes on a CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from ignite.engine import Events

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.engine import ISCLTrainer  # noqa: E402
from scripts.device import describe_device  # noqa: E402
from scripts.networks import Discriminator, Generator, NoiseExtractor  # noqa: E402
from scripts.optim import Lookahead  # noqa: E402


def time_iterations(batch_size: int, patch_size: int, iterations: int, warmup: int, device: torch.device,
                    amp: bool) -> float:
    """Seconds per iteration, averaged over ``iterations`` after ``warmup`` untimed ones."""
    torch.manual_seed(0)
    nets = {
        "denoiser": Generator(), "noise_generator": Generator(), "noise_extractor": NoiseExtractor(),
        "noisy_discriminator": Discriminator(), "clean_discriminator": Discriminator(),
    }
    nets = {name: net.to(device) for name, net in nets.items()}

    def radam(*names):
        params = [p for n in names for p in nets[n].parameters()]
        return torch.optim.RAdam(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-7)

    batch = {
        "noisy": torch.rand(batch_size, 1, patch_size, patch_size) * 2 - 1,
        "clean": torch.rand(batch_size, 1, patch_size, patch_size) * 2 - 1,
    }
    total = warmup + iterations
    trainer = ISCLTrainer(
        device=device, max_epochs=1, train_data_loader=[batch] * total, epoch_length=total,
        generators_optimizer=radam("denoiser", "noise_generator"),
        discriminators_optimizer=Lookahead(radam("noisy_discriminator", "clean_discriminator")),
        extractor_optimizer=Lookahead(radam("noise_extractor")), amp=amp, **nets,
    )
    stamps = []

    def stamp(engine):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    trainer.run()
    return (stamps[-1] - stamps[warmup - 1]) / iterations if warmup else (stamps[-1] - stamps[0]) / (iterations - 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 64],
                        help="batch sizes to time (4: default config, 64: paper)")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"ISCL training benchmark on {describe_device(device)}; torch {torch.__version__}; "
          f"{args.patch}x{args.patch} patches; {args.iterations} timed iterations after {args.warmup} warm-up")
    print(f"{'batch':>6} {'s/iteration':>12} {'iterations/s':>13} {'images/s':>9}")
    seconds = {}
    for batch_size in args.batches:
        seconds[batch_size] = time_iterations(batch_size, args.patch, args.iterations, args.warmup, device, args.amp)
        s = seconds[batch_size]
        print(f"{batch_size:>6} {s:>12.3f} {1 / s:>13.3f} {batch_size / s:>9.1f}", flush=True)
    print("images/s counts noisy patches per second (each iteration also consumes as many clean patches).")
    if 64 in seconds:
        print(f"Paper budget (batch 64 x 8,000 iterations) at this rate: {8000 * seconds[64] / 3600:.1f} h")


if __name__ == "__main__":
    main()
