"""The benchmark's reference networks, in plain torch: no field package installs beside torch 2.13 /
monai 1.6.1 without replacing them (checked with ``pip install --dry-run``, 2026-12: careamics 0.3.5
pulls torch 2.11 with CUDA wheels; ldct-benchmark 0.0.15 pulls torch 2.14.1, CUDA wheels and wandb,
and downgrades pydicom).

``DnCNN`` (Zhang et al. 2017, the paper's supervised baseline): 17 3x3 conv layers of 64 features,
batch norm in the middle ones, predicting the noise; ``forward`` returns the denoised image
``x - noise(x)``.  ``REDCNN`` (Chen et al. 2017, the LDCT field's classic): five 5x5 convs without
padding and five transposed convs back, 96 features, residual shortcuts every two layers and from
the input.  Both map ``(N, 1, H, W)`` to the same shape, any H and W (RED-CNN needs > 20 pixels).
The blind-spot methods (Noise2Void, Noise2Self) use MONAI's ``BasicUNet``, declared in
``benchmark.json``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DnCNN", "REDCNN"]


class DnCNN(nn.Module):
    def __init__(self, depth: int = 17, features: int = 64, channels: int = 1):
        super().__init__()
        layers = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, channels, 3, padding=1))
        self.noise = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.noise(x)


class REDCNN(nn.Module):
    """The final ReLU of the original (data in [0, 1]) is left out: here images span [-1, 1]."""

    def __init__(self, features: int = 96, channels: int = 1):
        super().__init__()
        self.encoder = nn.ModuleList(
            [nn.Conv2d(channels if i == 0 else features, features, 5) for i in range(5)])
        self.decoder = nn.ModuleList(
            [nn.ConvTranspose2d(features, channels if i == 4 else features, 5) for i in range(5)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcuts, out = [x], x
        for i, conv in enumerate(self.encoder):
            out = torch.relu(conv(out))
            if i in (1, 3):  # outputs of the 2nd and 4th convs feed the decoder's 4th and 2nd layers
                shortcuts.append(out)
        for i, deconv in enumerate(self.decoder):
            out = deconv(out)
            if i in (0, 2, 4):
                out = out + shortcuts.pop()
            if i < 4:
                out = torch.relu(out)
        return out
