"""Train a benchmark baseline network on random patches with MONAI's ``SupervisedTrainer``.

Supervised (DnCNN, RED-CNN): pairs (low dose, full dose) of the same slices, MSE.  Blind-spot
(Noise2Void, Noise2Self): noisy slices only; ``BlindSpotBatch`` masks each batch as it is prepared
and the loss is taken on the masked pixels.  Images are in the training window's [-1, 1] units, like
ISCL's, so every network sees the same scaling.  Adam, cosine-decayed learning rate, one seed for
the weights and the patches.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler

from .blind_spot import masked_mse

__all__ = ["PatchPairs", "BlindSpotBatch", "train_baseline"]


class PatchPairs(torch.utils.data.IterableDataset):
    """Endless random ``patch_size`` crops (same place in input and target) of ``(input, target)``
    2D float32 pairs, in batches of ``batch_size``, with random flips and 90-degree rotations."""

    def __init__(self, pairs: Sequence[Tuple[np.ndarray, np.ndarray]], patch_size: int, batch_size: int,
                 seed: int = 0):
        small = [i for i, (x, _) in enumerate(pairs) if min(x.shape) < patch_size]
        if not pairs or small:
            raise ValueError(f"PatchPairs needs slices of at least {patch_size} pixels; got {len(pairs)} slices, "
                             f"too small: {small[:5]}")
        self.pairs = [(np.asarray(x, np.float32), np.asarray(y, np.float32)) for x, y in pairs]
        self.patch_size, self.batch_size, self.seed = int(patch_size), int(batch_size), seed

    def _crop(self, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        x, y = self.pairs[rng.integers(len(self.pairs))]
        top = rng.integers(x.shape[0] - self.patch_size + 1)
        left = rng.integers(x.shape[1] - self.patch_size + 1)
        window = (slice(top, top + self.patch_size), slice(left, left + self.patch_size))
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        out = []
        for image in (x[window], y[window]):
            image = np.rot90(image, turns)
            out.append(np.ascontiguousarray(image[:, ::-1] if flip else image))
        return out[0], out[1]

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        while True:
            crops = [self._crop(rng) for _ in range(self.batch_size)]
            yield {"image": torch.from_numpy(np.stack([c[0] for c in crops])[:, None]),
                   "label": torch.from_numpy(np.stack([c[1] for c in crops])[:, None])}


class BlindSpotBatch:
    """``prepare_batch`` for blind-spot training: input = the masked noisy batch, target = the noisy
    batch and the mask as a second channel (``blind_spot_loss`` reads both)."""

    def __init__(self, mask_function: Callable, seed: int = 0):
        self.mask_function = mask_function
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, batchdata: dict, device, non_blocking: bool = False, **kwargs):
        noisy = batchdata["image"]
        masked, mask = self.mask_function(noisy, generator=self.generator)
        target = torch.cat([noisy, mask.to(noisy.dtype)], dim=1)
        return masked.to(device, non_blocking=non_blocking), target.to(device, non_blocking=non_blocking)


def blind_spot_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return masked_mse(prediction, target[:, :1], target[:, 1:] > 0.5)


def _supervised_batch(batchdata: dict, device, non_blocking: bool = False, **kwargs):
    return (batchdata["image"].to(device, non_blocking=non_blocking),
            batchdata["label"].to(device, non_blocking=non_blocking))


def train_baseline(network: torch.nn.Module, pairs: Sequence[Tuple[np.ndarray, np.ndarray]], iterations: int,
                   batch_size: int, patch_size: int = 64, learning_rate: float = 1e-3,
                   masking: Optional[Callable] = None, device="cpu", seed: int = 0,
                   progress: bool = True) -> torch.nn.Module:
    """Train ``network`` for ``iterations`` batches; ``masking`` (a ``blind_spot`` function) makes it
    blind-spot training on the inputs alone, else supervised on the pairs.  Returns it in eval mode."""
    torch.manual_seed(seed)
    device = torch.device(device)
    network.to(device).train()
    loader = torch.utils.data.DataLoader(PatchPairs(pairs, patch_size, batch_size, seed), batch_size=None)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    trainer = SupervisedTrainer(
        device=device, max_epochs=1, epoch_length=int(iterations), train_data_loader=loader, network=network,
        optimizer=optimizer, decollate=False, loss_function=blind_spot_loss if masking else torch.nn.MSELoss(),
        prepare_batch=BlindSpotBatch(masking, seed) if masking else _supervised_batch,
        train_handlers=[LrScheduleHandler(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, int(iterations)),
                                          epoch_level=False, print_lr=False)],
    )
    if progress:
        ProgressBar(persist=False).attach(trainer, output_transform=_loss_value)
    stop_on_nan(trainer, "baseline", _loss_value)
    trainer.run()
    return network.eval()


def _loss_value(output: dict) -> dict:
    return {"loss": output["loss"].item()}


def stop_on_nan(trainer, what: str, losses: Callable) -> None:
    """Stop ``trainer`` with FloatingPointError at the first iteration whose ``losses(output)`` (a name -> float
    mapping) are not all finite."""

    def check(engine) -> None:
        values = losses(engine.state.output)
        if not all(np.isfinite(v) for v in values.values()):
            raise FloatingPointError(f"{what} training diverged at iteration {engine.state.iteration} ({values}).")

    trainer.add_event_handler(Events.ITERATION_COMPLETED, check)
