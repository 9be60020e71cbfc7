"""ISCL losses as pure functions (torch only). Every distance is the mean absolute error.

Notation: x noisy, y clean (unpaired), F: X->Y denoiser, G: Y->X noise generator,
H: X->N noise extractor, D_X / D_Y discriminator scores. The caller applies the weight
lambda and decides what is detached (see the spec's "Losses" section).
"""

import math
from typing import Sequence

import torch
import torch.nn.functional as F

HINGE_FAKE_FORMS = ("code", "paper")


def _check_hinge_form(form: str) -> None:
    if form not in HINGE_FAKE_FORMS:
        raise ValueError(f"hinge fake-term form must be one of {HINGE_FAKE_FORMS}, got {form!r}")


def hinge_real(score: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(real)))"""
    return torch.relu(1.0 - score).mean()


def hinge_fake(score: torch.Tensor, form: str = "code") -> torch.Tensor:
    """Fake term of the discriminator hinge loss.

    form "code"  (the authors' TF code): mean(relu(D(fake)))
    form "paper" (the paper's equation): mean(relu(1 + D(fake)))
    """
    _check_hinge_form(form)
    if form == "code":
        return torch.relu(score).mean()
    return torch.relu(1.0 + score).mean()


def discriminator_loss(
    real_score: torch.Tensor, fake_scores: Sequence[torch.Tensor], form: str = "code"
) -> torch.Tensor:
    """hinge_real(D(real)) + sum_i hinge_fake(D(fake_i), form)

    For D_X the fakes are G(y) and, with discriminator boosting, y + H(x);
    for D_Y they are F(x) and, with boosting, x - H(x).
    """
    _check_hinge_form(form)
    loss = hinge_real(real_score)
    for score in fake_scores:
        loss = loss + hinge_fake(score, form)
    return loss


def generator_adversarial_loss(*fake_scores: torch.Tensor) -> torch.Tensor:
    """sum_i -mean(D(fake_i)), e.g. -D_X(G(y)) - D_Y(F(x))"""
    if not fake_scores:
        raise ValueError("generator_adversarial_loss needs at least one discriminator score")
    loss = -fake_scores[0].mean()
    for score in fake_scores[1:]:
        loss = loss - score.mean()
    return loss


def cycle_consistency(
    x: torch.Tensor, x_cycled: torch.Tensor, y: torch.Tensor, y_cycled: torch.Tensor, noisy_weight: float = 1.0
) -> torch.Tensor:
    """noisy_weight * |x - G(F(x))| + |y - F(G(y))|, with x_cycled = G(F(x)) and y_cycled = F(G(y))

    ``noisy_weight`` = 1 is the paper; below 1 (not in the paper) it eases the one term that asks G to
    reproduce the exact noise realisation that F removed from x.
    """
    return noisy_weight * F.l1_loss(x_cycled, x) + F.l1_loss(y_cycled, y)


def bypass_consistency(
    denoised_x: torch.Tensor,
    x: torch.Tensor,
    noise_x: torch.Tensor,
    y: torch.Tensor,
    denoised_y_plus_noise: torch.Tensor,
) -> torch.Tensor:
    """|F(x) - (x - H(x))| + |y - F(y + H(x))|

    denoised_x = F(x), noise_x = H(x), denoised_y_plus_noise = F(y + H(x)).
    """
    return F.l1_loss(denoised_x, x - noise_x) + F.l1_loss(denoised_y_plus_noise, y)


def noise_consistency(
    noise_x: torch.Tensor,
    x: torch.Tensor,
    denoised_x: torch.Tensor,
    noised_y: torch.Tensor,
    y: torch.Tensor,
    noise_of_noised_y: torch.Tensor,
    noisy_weight: float = 1.0,
) -> torch.Tensor:
    """noisy_weight * |H(x) - (x - F(x))| + |G(y) - y - H(G(y))|

    noise_x = H(x), denoised_x = F(x), noised_y = G(y), noise_of_noised_y = H(G(y)).
    ``noisy_weight`` = 1 is the paper; below 1 (not in the paper) H learns mostly from the pseudo pairs
    (G(y), G(y) - y), whose noise is known, rather than from x - F(x) while F is still the identity.
    """
    return noisy_weight * F.l1_loss(noise_x, x - denoised_x) + F.l1_loss(noise_of_noised_y, noised_y - y)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an NCHW batch, radius ceil(3 sigma), mirrored edges."""
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    channels = image.shape[1]
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    blurred = F.conv2d(F.pad(image, (radius, radius, 0, 0), mode="reflect"), kernel, groups=channels)
    return F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="reflect"), kernel.transpose(2, 3), groups=channels)


def lowpass_consistency(
    x: torch.Tensor, denoised_x: torch.Tensor, y: torch.Tensor, noised_y: torch.Tensor, sigma: float
) -> torch.Tensor:
    """|blur(F(x)) - blur(x)| + |blur(G(y)) - blur(y)| (not in the paper).

    Noise lives in the high frequencies, so denoising or adding noise should leave the blurred image
    alone. Every paper loss is blind to a common offset (F = x - c, G = y + c, H = c satisfy them all)
    and to slow contrast drifts; this term pins both, so the adversarial term shapes only the noise.
    """
    return F.l1_loss(gaussian_blur(denoised_x, sigma), gaussian_blur(x, sigma)) + F.l1_loss(
        gaussian_blur(noised_y, sigma), gaussian_blur(y, sigma)
    )


def identity_consistency(y: torch.Tensor, denoised_y: torch.Tensor) -> torch.Tensor:
    """|F(y) - y|, with denoised_y = F(y): CycleGAN's identity term for the denoiser (not in the paper).

    A clean image is a fixed point of a denoiser; without this term nothing stops F from adding
    texture to, or taking anatomy out of, an image that has no noise to remove.
    """
    return F.l1_loss(denoised_y, y)
