"""Optimizer wrappers and schedules used by the ISCL configs (no ISCL-specific knowledge here)."""

from __future__ import annotations

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class Lookahead(Optimizer):
    """Lookahead (Zhang et al. 2019) around any torch optimizer.

    The wrapped ("fast") optimizer steps as usual; every ``k`` steps the slow weights move
    ``alpha`` of the way towards the fast weights and the fast weights are reset to them:
    ``slow += alpha * (fast - slow); fast = slow``.

    ``param_groups`` are shared with the wrapped optimizer, so learning-rate schedulers and
    MONAI/Ignite handlers that read or write ``lr`` act on the fast optimizer directly.
    """

    def __init__(self, optimizer: Optimizer, k: int = 6, alpha: float = 0.5):
        if k < 1:
            raise ValueError(f"Lookahead k must be >= 1, got {k}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Lookahead alpha must be in [0, 1], got {alpha}.")
        # Optimizer.__init__ installs the step hooks; the groups it builds are replaced by the shared ones.
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups
        self.k = k
        self.alpha = alpha
        self.fast_steps = 0
        self.slow_weights = [p.detach().clone() for group in self.param_groups for p in group["params"]]

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.optimizer.step(closure)
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            for fast, slow in zip(self._params(), self.slow_weights):
                slow.add_(fast - slow, alpha=self.alpha)
                fast.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "slow_weights": [w.clone() for w in self.slow_weights],
            "fast_steps": self.fast_steps,
            "k": self.k,
            "alpha": self.alpha,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.param_groups = self.optimizer.param_groups
        for slow, saved in zip(self.slow_weights, state_dict["slow_weights"]):
            slow.copy_(saved)
        self.fast_steps = int(state_dict["fast_steps"])
        self.k, self.alpha = int(state_dict["k"]), float(state_dict["alpha"])


def maybe_lookahead(optimizer: Optimizer, enabled: bool, k: int = 6, alpha: float = 0.5) -> Optimizer:
    """Wrap ``optimizer`` in Lookahead when ``enabled`` (the (E) ablation switch), else return it unchanged."""
    return Lookahead(optimizer, k=k, alpha=alpha) if enabled else optimizer


def linear_decay(optimizer: Optimizer, total_steps: int, final_lr: float) -> LambdaLR:
    """Decay every group's learning rate linearly from its initial value to ``final_lr`` over ``total_steps``.

    Step it once per iteration (e.g. with ``monai.handlers.LrScheduleHandler(epoch_level=False)``).
    """
    if total_steps < 1:
        raise ValueError(f"linear_decay needs total_steps >= 1, got {total_steps}.")
    initial_lrs = [group["lr"] for group in optimizer.param_groups]

    def factor_for(initial_lr: float):
        end = final_lr / initial_lr
        return lambda step: 1.0 - (1.0 - end) * min(step, total_steps) / total_steps

    return LambdaLR(optimizer, lr_lambda=[factor_for(lr) for lr in initial_lrs])
