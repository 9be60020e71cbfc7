"""ISCL networks (Lee & Jeong, IEEE TMI 2021): generators F and G, noise extractor H,
discriminators D_X and D_Y, and the exported denoising ensemble.

Layer for layer as in the paper's Fig. 3 and the authors' TF2 code (leekanggeun/ISCL);
tensors are NCHW, single-channel images in [-1, 1]. Every module here is TorchScript-scriptable.
"""

from typing import List, Optional, Tuple

import torch
from torch import nn

from .losses import gaussian_blur

LEAKY_SLOPE = 0.2
INIT_STD = 0.05


def non_finite_values(state: dict) -> Tuple[int, int]:
    """(NaN or infinite values, all values) over the floating-point tensors of a (nested) state dict."""
    bad = total = 0
    for value in state.values():
        if isinstance(value, dict):
            sub_bad, sub_total = non_finite_values(value)
            bad, total = bad + sub_bad, total + sub_total
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            bad, total = bad + int((~torch.isfinite(value)).sum()), total + value.numel()
    return bad, total


def init_weights_(module: nn.Module) -> None:
    """Initialise every conv / transposed conv in ``module`` like the authors' Keras
    'truncated_normal' initializer: normal(0, 0.05) redrawn outside ±2 std; biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class BatchInstanceNorm2d(nn.Module):
    """Batch-instance normalization: ``(rho*BN(x) + (1-rho)*IN(x))*gamma + beta``.

    Biased moments (as ``tf.nn.moments``), no running statistics. Training: BN statistics
    over (N, H, W) of the current batch. Eval: BN statistics of each image alone, so BN
    equals IN and an image's output does not depend on the rest of the batch.
    ``rho`` is meant to stay in [0, 1]: call :func:`clamp_rho_` after each optimizer step.
    ``replica_mean``: None (the batch is this process's batch), or a function averaging a tensor over
    data-parallel processes with autograd (``distributed.synchronise_batch_statistics`` sets it), so
    the batch moments are those of all processes' batches together, as SyncBatchNorm's.
    """

    def __init__(self, num_features: int, eps: float = 1e-7) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.rho = nn.Parameter(torch.ones(num_features))
        self.replica_mean = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and x.shape[-2] * x.shape[-1] > 1:
            # Eval: both halves are the instance norm, whatever rho is; ATen's fused kernel is about
            # twice as fast as the moments + addcmul below (a quarter of a 512 x 512 slice's time).
            return nn.functional.instance_norm(x, weight=self.gamma, bias=self.beta, eps=self.eps)
        # Instance moments computed directly: F.instance_norm refuses 1x1 maps, which the
        # discriminator's last normed layer produces; there x - inst_mean is exactly 0.
        inst_var, inst_mean = torch.var_mean(x, dim=[2, 3], unbiased=False, keepdim=True)
        if self.training:
            # Batch moments from the instance moments (all images have H*W pixels), which
            # saves two passes over x: mean of means, and total variance = mean within +
            # spread of the means.
            batch_mean = self._batch_average(inst_mean)
            batch_var = self._batch_average(inst_var + (inst_mean - batch_mean).square())
        else:
            batch_mean, batch_var = inst_mean, inst_var
        inst_rstd = torch.rsqrt(inst_var + self.eps)
        batch_rstd = torch.rsqrt(batch_var + self.eps)
        rho = self.rho.view(1, -1, 1, 1)
        gamma = self.gamma.view(1, -1, 1, 1)
        beta = self.beta.view(1, -1, 1, 1)
        # With c = x - inst_mean:  BN = (c + inst_mean - batch_mean)*batch_rstd,  IN = c*inst_rstd,
        # so the whole layer is c*scale + shift with per-(image, channel) scale and shift.
        # One elementwise pass over the centred map keeps training cheap and avoids the
        # cancellation of a form like x*scale - mean*scale.
        scale = gamma * (rho * batch_rstd + (1.0 - rho) * inst_rstd)
        shift = gamma * rho * batch_rstd * (inst_mean - batch_mean) + beta
        return torch.addcmul(shift, x - inst_mean, scale)

    def _batch_average(self, per_image: torch.Tensor) -> torch.Tensor:
        """Mean over the batch (every process's batch, all of one size, when synchronised)."""
        mean = per_image.mean(dim=0, keepdim=True)
        return mean if self.replica_mean is None else self.replica_mean(mean)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


@torch.no_grad()
def clamp_rho_(module: nn.Module) -> None:
    """Clip ``rho`` of every BatchInstanceNorm2d inside ``module`` to [0, 1], in place."""
    for m in module.modules():
        if isinstance(m, BatchInstanceNorm2d):
            m.rho.clamp_(0.0, 1.0)


class SymmetricPad2d(nn.Module):
    """Pad H and W by ``padding`` mirroring with the edge pixel repeated: TF "SYMMETRIC",
    numpy ``mode='symmetric'`` (PyTorch's 'reflect' skips the edge pixel)."""

    def __init__(self, padding: int) -> None:
        super().__init__()
        if padding < 1:
            raise ValueError(f"SymmetricPad2d needs padding >= 1, got {padding}")
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        if x.shape[-2] < p or x.shape[-1] < p:
            # TF refuses this too; slicing would silently give a wrong size.
            raise ValueError(f"SymmetricPad2d({p}) needs H, W >= {p}, got {x.shape[-2]}x{x.shape[-1]}")
        x = torch.cat([x[..., :p].flip(-1), x, x[..., -p:].flip(-1)], dim=-1)
        return torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], dim=-2)


class SymmetricPadConv2d(nn.Conv2d):
    """A conv after ``SymmetricPad2d(padding)``; at padding 1 that is ``padding_mode='replicate'``, but
    built from slices, which torch.compile (2.13) can differentiate in channels-last layout (its
    replication_pad2d backward fails there). Same parameters and state-dict keys as a Conv2d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        self.symmetric_pad = SymmetricPad2d(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.symmetric_pad(x), self.weight, self.bias)


class UpConv2d(nn.Module):
    """3x3 stride-2 transposed conv with TF 'same' output size: exactly 2x the input.

    The full transposed conv gives 2n+1; TF drops the last row and column. (PyTorch's
    padding=1, output_padding=1 would drop the first ones instead.)
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        return self.conv(x)[:, :, : 2 * h, : 2 * w]


class ResidualBlock(nn.Module):
    """x + [pad1, conv3x3, BIN, LReLU, pad1, conv3x3, BIN](x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            SymmetricPad2d(1),
            nn.Conv2d(channels, channels, 3),
            BatchInstanceNorm2d(channels),
            nn.LeakyReLU(LEAKY_SLOPE),
            SymmetricPad2d(1),
            nn.Conv2d(channels, channels, 3),
            BatchInstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _norm_act(channels: int) -> List[nn.Module]:
    return [BatchInstanceNorm2d(channels), nn.LeakyReLU(LEAKY_SLOPE)]


class Generator(nn.Module):
    """F (noisy -> clean) and G (clean -> noisy): 1,148,225 parameters.

    H and W of the input must be multiples of 4 (two stride-2 downsamplings, then two
    exact 2x upsamplings back to the input size).

    ``skip = 0`` is the paper: ``tanh(r(x))``, no global skip. ``skip > 0`` (not in the paper)
    starts the network at the identity: ``clamp(x + skip * r(x), -1, 1)`` with the last conv
    zero-initialised. Without it a few hundred RAdam steps leave F far from x, and every
    consistency term must pull it back before denoising can start; ``skip`` < 1 slows the
    output's swing per step (RAdam moves each of the last conv's 1,568 weights by about
    the learning rate per step, coherently). ``skip`` is a buffer, saved with the weights,
    so a loaded model runs the variant it was trained as.
    """

    def __init__(self, skip: float = 0.0) -> None:
        super().__init__()
        if not skip >= 0.0:
            raise ValueError(f"Generator skip must be >= 0, got {skip}")
        # Stride-2 convs pad SYMMETRIC by 1, as the authors do (the edge pixel repeated).
        self.encoder = nn.Sequential(
            SymmetricPad2d(3),
            nn.Conv2d(1, 32, 7),
            *_norm_act(32),
            SymmetricPadConv2d(32, 64, 4, stride=2, padding=1),
            *_norm_act(64),
            SymmetricPadConv2d(64, 128, 4, stride=2, padding=1),
            *_norm_act(128),
        )
        self.residual = nn.Sequential(*[ResidualBlock(128) for _ in range(3)])
        self.decoder = nn.Sequential(
            UpConv2d(128, 64), *_norm_act(64), UpConv2d(64, 32), *_norm_act(32), SymmetricPad2d(3), nn.Conv2d(32, 1, 7)
        )
        self.register_buffer("skip", torch.tensor(float(skip)))
        init_weights_(self)
        if skip > 0.0:
            nn.init.zeros_(self.decoder[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        if h % 4 != 0 or w % 4 != 0:
            raise ValueError(f"Generator input height and width must be multiples of 4, got {h}x{w}")
        r = self.decoder(self.residual(self.encoder(x)))
        if bool(self.skip > 0.0):
            return (x + self.skip * r).clamp(-1.0, 1.0)
        return torch.tanh(r)


class NoiseExtractor(nn.Module):
    """H: noisy image -> noise estimate n = H(x), 168,801 parameters, linear output.

    conv3x3 + LReLU, 18 x [conv3x3, BIN, LReLU], conv3x3; 32 channels, zero 'same' padding.
    ``zero_init=True`` (not in the paper) zero-initialises the last conv, so H(x) = 0 and
    x - H(x) = x at the start.
    """

    def __init__(self, zero_init: bool = False) -> None:
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(1, 32, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
        for _ in range(18):
            layers += [nn.Conv2d(32, 32, 3, padding=1), *_norm_act(32)]
        layers.append(nn.Conv2d(32, 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)
        init_weights_(self)
        if zero_init:
            nn.init.zeros_(self.layers[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class HighPass(nn.Module):
    """``x - blur(x)`` (Gaussian, radius ceil(3 sigma), mirrored edges): a discriminator's view of the noise
    and fine texture without the anatomy's low frequencies (not in the paper). With one patient per pool a
    full-band discriminator can tell the pools apart by anatomy and field of view alone."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - gaussian_blur(x, self.sigma)


class Discriminator(nn.Module):
    """D_X / D_Y: 2,790,177 parameters (BIN), raw scores (no activation, no spectral norm).

    A 64x64 patch gives one score, shape (N, 1, 1, 1). Zero padding 1 on the stride-2
    convs equals TF 'same' for even sizes, which is all a 64x64 patch produces.

    ``norm="bin"`` is the paper. ``norm="none"`` (not in the paper) drops the normalisation:
    BIN rescales every channel by the statistics of the batch and of each image, so a
    discriminator that sees real and fake batches in separate passes is blind to the
    *amplitude* of the noise, the very cue that separates a noisy patch from a clean one.
    ``highpass_sigma`` > 0 (not in the paper) shows it ``HighPass(sigma)`` of its input instead.
    """

    def __init__(self, norm: str = "bin", highpass_sigma: float = 0.0) -> None:
        super().__init__()
        if norm not in ("bin", "none"):
            raise ValueError(f"Discriminator norm must be 'bin' or 'none', got {norm!r}")
        if highpass_sigma < 0:
            raise ValueError(f"Discriminator highpass_sigma must be >= 0, got {highpass_sigma!r}")
        self.view = HighPass(highpass_sigma) if highpass_sigma > 0 else nn.Identity()

        def block(cin: int, cout: int, **conv) -> List[nn.Module]:
            layers: List[nn.Module] = [nn.Conv2d(cin, cout, 4, **conv)]
            if norm == "bin":
                layers.append(BatchInstanceNorm2d(cout))
            return layers + [nn.LeakyReLU(LEAKY_SLOPE)]

        self.layers = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            *block(32, 64, stride=2, padding=1),
            *block(64, 128, stride=2, padding=1),
            *block(128, 256, stride=2, padding=1),
            *block(256, 512),
            nn.Conv2d(512, 1, 1),
        )
        init_weights_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.view(x))


ENSEMBLE_GAMMA = 0.5  # the paper's ensemble weight of F (Eq. 12)


def ensemble_gamma(components: dict) -> float:
    """The exported ensemble's gamma for an ablation: F alone (1.0) when the noise extractor is off."""
    return ENSEMBLE_GAMMA if components.get("noise_extractor", True) else 1.0


class ISCLDenoiser(nn.Module):
    """The exported ensemble ``clamp(gamma*F(x) + (1-gamma)*(x - H(x)), -1, 1)``.

    gamma = 1 is F alone, gamma = 0 is H alone (the unused network is not run).
    Missing networks are built fresh (``generator_skip`` and ``zero_init_extractor`` as in
    :class:`Generator` and :class:`NoiseExtractor`: they only change the initial weights and
    the skip buffer, which loading a model.pt replaces), so a config can name just the class
    and gamma and load the weights afterwards.
    """

    def __init__(
        self,
        denoiser: Optional[nn.Module] = None,
        noise_extractor: Optional[nn.Module] = None,
        gamma: float = ENSEMBLE_GAMMA,
        generator_skip: float = 0.0,
        zero_init_extractor: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"ISCLDenoiser gamma must be in [0, 1], got {gamma}")
        self.denoiser = denoiser if denoiser is not None else Generator(generator_skip)
        self.noise_extractor = noise_extractor if noise_extractor is not None else NoiseExtractor(zero_init_extractor)
        self.gamma = float(gamma)

    def denoised(self, x: torch.Tensor) -> torch.Tensor:
        """F(x), unclipped."""
        return self.denoiser(x)

    def extracted(self, x: torch.Tensor) -> torch.Tensor:
        """x - H(x), unclipped."""
        return x - self.noise_extractor(x)

    def branches(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two unclipped estimates of the clean image: F(x) and x - H(x)."""
        return self.denoised(x), self.extracted(x)

    def combine(
        self,
        denoised: torch.Tensor,
        extracted: torch.Tensor,
        gamma: Optional[float] = None,
        bounds: Tuple[float, float] = (-1.0, 1.0),
    ) -> torch.Tensor:
        """The ensemble ``clamp(gamma*F(x) + (1-gamma)*(x - H(x)), *bounds)`` from the two branches
        (``gamma`` default: the model's).  The only place the formula is written: evaluation forms
        it in HU with ``bounds`` = the HU window, where the branches are an affine map of these."""
        gamma = self.gamma if gamma is None else float(gamma)
        return (gamma * denoised + (1.0 - gamma) * extracted).clamp(*bounds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gamma == 1.0:  # the unused network is not run
            return self.denoised(x).clamp(-1.0, 1.0)
        if self.gamma == 0.0:
            return self.extracted(x).clamp(-1.0, 1.0)
        denoised, extracted = self.branches(x)
        return self.combine(denoised, extracted)
