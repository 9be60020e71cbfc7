"""UIDNet (Hong, Fan, Jiang, Feng, AAAI 2020, "End-to-end unpaired image denoising with conditional
adversarial networks"), the paper's unpaired competitor on Mayo (ISCL Table I).

A noise generator learns, adversarially, to turn clean images into images a critic cannot tell from the
noisy pool: ``noisy ~ clean + generator(z, clean)``, ``z`` uniform in [-1, 1] (a conditional GAN: the clean
image is the condition).  The critic is a WGAN-GP critic that sees each image beside its high-pass
``x - mean3x3(x)`` (the paper's "sharpening", which makes the critic look at the noise), gradient penalty
weight 10.  A denoiser (DnCNN) learns on the generated pairs ``(clean + generated noise, clean)``; all three
update in every iteration, as in the authors' code: critic, generator, then the denoiser on pairs drawn
from the just-updated generator without dropout (no gradient flows from the denoiser into the generator).
Adam with beta1 0.5, learning rate 1e-4 for all three (the authors' settings).

Read from the authors' TF code (zhwhong/UIDNet, ``model.py``) and written here in torch; the differences:
the gradient penalty takes the gradient norm over the whole image (their ``reduce_sum`` runs over one axis
only) and with respect to the raw interpolate (theirs: the sharpened one), and the denoiser loss is a
mean squared error (theirs: a sum over pixels / batch; Adam is indifferent to the scale).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
from ignite.contrib.handlers import ProgressBar
from ignite.engine import Engine
from torch import nn
from torch.nn import functional as nnf

from .baseline_training import PatchPairs, stop_on_nan

__all__ = ["NoiseGenerator", "SharpenedCritic", "sharpen", "gradient_penalty", "UIDNetStep", "train_uidnet"]

#: the WGAN-GP gradient penalty weight of UIDNet (and of Gulrajani et al.)
PENALTY_WEIGHT = 10.0


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


class NoiseGenerator(nn.Module):
    """UIDNet's generator: a U-Net of two poolings (32, 64, 128 features, dropout 0.5 at the bottom) on the
    random field ``z`` beside the clean image; returns the noise (tanh, window units) to add to it."""

    def __init__(self, features: Sequence[int] = (32, 64, 128), channels: int = 1):
        super().__init__()
        f1, f2, f3 = features
        self.down1, self.down2 = _double_conv(2 * channels, f1), _double_conv(f1, f2)
        self.bottom = nn.Sequential(_double_conv(f2, f3), nn.Dropout(0.5))
        self.up2, self.merge2 = nn.Conv2d(f3, f2, 2), _double_conv(2 * f2, f2)
        self.up1, self.merge1 = nn.Conv2d(f2, f1, 2), _double_conv(2 * f1, f1)
        self.head = nn.Sequential(nn.Conv2d(f1, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 1), nn.Tanh())
        for conv in self.modules():  # Keras' he_normal and zero biases, as the authors': torch's default
            if isinstance(conv, nn.Conv2d):  # biases start the one-channel head's ReLU dead on some seeds
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)

    @staticmethod
    def _up(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """Upsample 2x, then a 2x2 conv padded after the image (Keras' 'same' for an even kernel)."""
        return torch.relu(conv(nnf.pad(nnf.interpolate(x, scale_factor=2.0, mode="nearest"), (0, 1, 0, 1))))

    def forward(self, z: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        level1 = self.down1(torch.cat([z, clean], dim=1))
        level2 = self.down2(nnf.max_pool2d(level1, 2))
        bottom = self.bottom(nnf.max_pool2d(level2, 2))
        level2 = self.merge2(torch.cat([level2, self._up(self.up2, bottom)], dim=1))
        level1 = self.merge1(torch.cat([level1, self._up(self.up1, level2)], dim=1))
        return self.head(level1)


def sharpen(x: torch.Tensor) -> torch.Tensor:
    """UIDNet's sharpening: the image beside its high-pass ``x - mean3x3(x)`` (the mean over the pixels
    inside the image at the border, as TF's SAME average pooling)."""
    return torch.cat([x, x - nnf.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)], dim=1)


class SharpenedCritic(nn.Module):
    """UIDNet's WGAN critic: four 5x5 stride-2 convolutions (64 … 512 features, leaky ReLU 0.2, no norm)
    and a linear score, on ``sharpen(x)``; ``patch_size`` fixes the linear layer's input."""

    def __init__(self, patch_size: int = 64, features: Sequence[int] = (64, 128, 256, 512), channels: int = 1):
        super().__init__()
        if patch_size % 16:
            raise ValueError(f"SharpenedCritic: patch_size {patch_size} must be a multiple of 16 (four stride-2 convs)")
        layers, width = [], 2 * channels
        for out in features:
            layers += [nn.Conv2d(width, out, 5, stride=2, padding=2), nn.LeakyReLU(0.2, inplace=True)]
            width = out
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(width * (patch_size // 16) ** 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(sharpen(x)).flatten(1))


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: mean (||grad critic(mix)|| - 1)² at one random mix of the real and fake batches."""
    epsilon = torch.rand((), device=real.device)
    mix = (epsilon * real + (1 - epsilon) * fake).requires_grad_(True)
    (gradient,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return ((gradient.flatten(1).norm(dim=1) - 1) ** 2).mean()


class UIDNetStep:
    """One UIDNet iteration on ``(clean batch, noisy batch)``: the critic, the generator, then the denoiser
    on freshly generated pairs; returns the three losses."""

    def __init__(self, generator: nn.Module, critic: nn.Module, denoiser: nn.Module, learning_rate: float = 1e-4,
                 seed: int = 0):
        self.generator, self.critic, self.denoiser = generator, critic, denoiser
        self.optimizers = {name: torch.optim.Adam(net.parameters(), lr=learning_rate, betas=(0.5, 0.999))
                           for name, net in (("critic", critic), ("generator", generator), ("denoiser", denoiser))}
        self.random = torch.Generator().manual_seed(int(seed))

    def _update(self, name: str, loss: torch.Tensor) -> float:
        self.optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers[name].step()
        return loss.item()

    def __call__(self, clean: torch.Tensor, noisy: torch.Tensor) -> dict:
        z = (2 * torch.rand(clean.shape, generator=self.random) - 1).to(clean.device)
        fake = clean + self.generator(z, clean)  # the generator does not change in the critic's step
        critic_loss = (self.critic(fake.detach()).mean() - self.critic(noisy).mean()
                       + PENALTY_WEIGHT * gradient_penalty(self.critic, noisy, fake.detach()))
        losses = {"critic": self._update("critic", critic_loss)}
        losses["generator"] = self._update("generator", -self.critic(fake).mean())
        with torch.no_grad():  # the pairs: the updated generator, dropout off (as the authors' code)
            self.generator.eval()
            pseudo_noisy = clean + self.generator(z, clean)
            self.generator.train()
        losses["denoiser"] = self._update("denoiser", nnf.mse_loss(self.denoiser(pseudo_noisy), clean))
        return losses


def _patches(slices: Sequence[np.ndarray], patch_size: int, batch_size: int, seed: int):
    return iter(PatchPairs([(s, s) for s in slices], patch_size, batch_size, seed))


def train_uidnet(denoiser: nn.Module, clean_slices: Sequence[np.ndarray], noisy_slices: Sequence[np.ndarray],
                 iterations: int, batch_size: int, patch_size: int = 64, learning_rate: float = 1e-4,
                 device="cpu", seed: int = 0, progress: bool = True,
                 generator: nn.Module = None, critic: nn.Module = None) -> Tuple[nn.Module, nn.Module]:
    """Train UIDNet for ``iterations`` batches on unpaired clean and noisy slices (window units); returns
    ``(denoiser, generator)`` in eval mode."""
    torch.manual_seed(seed)
    device = torch.device(device)
    generator = (NoiseGenerator() if generator is None else generator).to(device).train()
    critic = (SharpenedCritic(patch_size) if critic is None else critic).to(device).train()
    step = UIDNetStep(generator, critic, denoiser.to(device).train(), learning_rate, seed)
    clean, noisy = _patches(clean_slices, patch_size, batch_size, seed), _patches(noisy_slices, patch_size, batch_size, seed + 1)

    def iteration(engine, _):
        return step(next(clean)["image"].to(device), next(noisy)["image"].to(device))

    trainer = Engine(iteration)
    if progress:
        ProgressBar(persist=False).attach(trainer, output_transform=lambda losses: losses)
    stop_on_nan(trainer, "UIDNet", lambda losses: losses)
    trainer.run(range(int(iterations)), max_epochs=1)
    return denoiser.eval(), generator.eval()
