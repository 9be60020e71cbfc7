"""ISCLLosses: the weights and forms of ISCL's losses as one object, built from ``train.json``'s ``losses``
block and handed to ``ISCLTrainer`` (as MONAI hands a loss function to its trainers).

The engine decides *what* each step computes and which networks are frozen; this object says *how
much* each term counts: lambda (``cycle_weight``, optionally ramped in over ``cycle_weight_warmup``
iterations) on the consistency terms, ``adversarial_weight`` on the generators' adversarial term, and the
relative weights inside lambda of the cycle's noisy half, H's noisy half and the terms not in the paper
(low-pass, identity; a term with weight 0 is not computed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.settings import number
from .losses import discriminator_loss, hinge_fake, noise_consistency

__all__ = ["ISCLLosses"]


@dataclass(frozen=True)
class ISCLLosses:
    """Args:
    cycle_weight: lambda, the weight of cycle and bypass consistency (30 in the paper).
    cycle_weight_warmup: iterations over which lambda ramps linearly from 0 to ``cycle_weight``
        (0 in the paper: lambda from the first iteration).
    noisy_cycle_weight: relative weight of |x - G(F(x))| in the cycle term (1 in the paper).
    extractor_noisy_weight: relative weight of |H(x) - (x - F(x))| in noise consistency (1 in the paper).
    fake_hinge: "code" (authors' code: relu(D(fake))) or "paper" (relu(1 + D(fake))).
    adversarial_weight: weight of the generators' adversarial term (1 in the paper).
    lowpass_weight: relative weight (inside lambda) of low-pass consistency, see
        ``losses.lowpass_consistency`` (0 in the paper). lowpass_sigma: its Gaussian blur, in pixels.
    identity_weight: relative weight (inside lambda) of |F(y) - y|, see ``losses.identity_consistency``
        (0 in the paper).
    """

    cycle_weight: float = 30.0
    cycle_weight_warmup: int = 0
    noisy_cycle_weight: float = 1.0
    extractor_noisy_weight: float = 1.0
    fake_hinge: str = "code"
    adversarial_weight: float = 1.0
    lowpass_weight: float = 0.0
    lowpass_sigma: float = 2.0
    identity_weight: float = 0.0

    def __post_init__(self):
        """Fail when the config is read, not at the first iteration, on a setting training cannot use."""
        hinge_fake(torch.zeros(1), self.fake_hinge)
        for name in (
            "cycle_weight",
            "noisy_cycle_weight",
            "extractor_noisy_weight",
            "adversarial_weight",
            "lowpass_weight",
            "identity_weight",
        ):
            object.__setattr__(self, name, number(getattr(self, name), f"losses#{name}", low=0))
        object.__setattr__(
            self, "cycle_weight_warmup", number(self.cycle_weight_warmup, "losses#cycle_weight_warmup", int, low=0)
        )
        object.__setattr__(self, "lowpass_sigma", number(self.lowpass_sigma, "losses#lowpass_sigma", low=1e-3))

    def cycle_lambda(self, iteration: int) -> float:
        """lambda at ``iteration`` (Ignite counts iterations from 1)."""
        if self.cycle_weight_warmup <= 0:
            return self.cycle_weight
        return self.cycle_weight * min(1.0, (iteration - 1) / self.cycle_weight_warmup)

    def _optional_weights(self) -> dict:
        """The relative weights (inside lambda) of the generator terms not in the paper."""
        return {"loss_lowpass": self.lowpass_weight, "loss_identity": self.identity_weight}

    def uses(self, term: str) -> bool:
        """Whether an optional generator term (``loss_lowpass``, ``loss_identity``) is computed at all."""
        return self._optional_weights()[term] > 0

    def weight(self, term: str, iteration: int) -> float:
        """The weight of a generator term: the adversarial weight, or lambda (times its own for low-pass, identity)."""
        if term == "loss_adversarial":
            return self.adversarial_weight
        relative = self._optional_weights().get(term, 1.0)
        return self.cycle_lambda(iteration) * relative

    def generators_total(self, terms: dict, iteration: int) -> torch.Tensor:
        """The generators' loss: every term times its weight."""
        return sum(self.weight(name, iteration) * value for name, value in terms.items())

    def discriminator(self, real_score: torch.Tensor, fake_scores: list) -> torch.Tensor:
        """A discriminator's hinge loss in this object's form."""
        return discriminator_loss(real_score, fake_scores, self.fake_hinge)

    def noise(self, noise_x, x, denoised_x, noised_y, y, noise_of_noised_y) -> torch.Tensor:
        """H's noise consistency with this object's weight of its noisy half."""
        return noise_consistency(noise_x, x, denoised_x, noised_y, y, noise_of_noised_y, self.extractor_noisy_weight)
