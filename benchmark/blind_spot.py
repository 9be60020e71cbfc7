"""Blind-spot masking for the self-supervised baselines: a network trained to predict masked pixels of a
noisy image from their neighbours cannot copy pixel-independent noise, so it learns the signal.

``noise2void_mask`` (Krull et al. 2019): one pixel in every ``box`` x ``box`` cell (stratified), each
replaced by a random other pixel of its 5 x 5 neighbourhood.  ``noise2self_mask`` (Batson & Royer
2019): one phase of a ``grid`` x ``grid`` lattice, each masked pixel replaced by the mean of its four
direct neighbours (a J-invariant interpolation).  Both return ``(masked_input, mask)`` for an
``(N, 1, H, W)`` batch; the loss is taken on the mask only (``masked_mse``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["noise2void_mask", "noise2self_mask", "masked_mse"]


def _stratified_positions(shape, box: int, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask with one random pixel in each ``box`` x ``box`` cell of every image."""
    n, _, h, w = shape
    rows, cols = -(-h // box), -(-w // box)
    offset_y = torch.randint(0, box, (n, 1, rows, cols), generator=generator)
    offset_x = torch.randint(0, box, (n, 1, rows, cols), generator=generator)
    mask = torch.zeros((n, 1, rows * box, cols * box), dtype=torch.bool)
    ys = torch.arange(rows).view(1, 1, rows, 1) * box + offset_y
    xs = torch.arange(cols).view(1, 1, 1, cols) * box + offset_x
    batch = torch.arange(n).view(n, 1, 1, 1).expand_as(ys)
    mask[batch, 0, ys, xs] = True
    return mask[..., :h, :w]


def noise2void_mask(x: torch.Tensor, box: int = 8, radius: int = 2, generator: torch.Generator | None = None):
    """Masked pixels take the value of a random neighbour (offset in [-radius, radius]^2, not 0, 0)."""
    generator = generator or torch.Generator().manual_seed(0)
    mask = _stratified_positions(x.shape, box, generator).to(x.device)
    n, _, h, w = x.shape
    dy = torch.randint(-radius, radius + 1, (n, 1, h, w), generator=generator)
    dx = torch.randint(-radius, radius + 1, (n, 1, h, w), generator=generator)
    centre = (dy == 0) & (dx == 0)
    dx = torch.where(centre, torch.where(torch.rand(dx.shape, generator=generator) < 0.5, -1, 1), dx)
    ys = (torch.arange(h).view(1, 1, h, 1) + dy).clamp(0, h - 1)
    xs = (torch.arange(w).view(1, 1, 1, w) + dx).clamp(0, w - 1)
    neighbours = x[torch.arange(n).view(n, 1, 1, 1), 0, ys.to(x.device), xs.to(x.device)].unsqueeze(1)
    neighbours = neighbours.view_as(x)
    return torch.where(mask, neighbours, x), mask


def noise2self_mask(x: torch.Tensor, grid: int = 4, generator: torch.Generator | None = None):
    """Mask one random phase of a ``grid`` lattice; masked pixels take the mean of their 4 neighbours."""
    generator = generator or torch.Generator().manual_seed(0)
    phase_y, phase_x = (int(v) for v in torch.randint(0, grid, (2,), generator=generator))
    h, w = x.shape[-2:]
    mask = torch.zeros((1, 1, h, w), dtype=torch.bool, device=x.device)
    mask[..., phase_y::grid, phase_x::grid] = True
    kernel = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]], device=x.device, dtype=x.dtype)
    interpolated = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel.view(1, 1, 3, 3))
    mask = mask.expand_as(x)
    return torch.where(mask, interpolated, x), mask


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked pixels only."""
    return (prediction - target).square()[mask].mean()
