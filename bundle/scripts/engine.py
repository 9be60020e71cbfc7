"""ISCLTrainer: one Ignite iteration = the paper's three interdependent steps.

Networks (paper notation): F `denoiser` X->Y, G `noise_generator` Y->X, H `noise_extractor` X->N,
D_X `noisy_discriminator`, D_Y `clean_discriminator`. Each step has its own optimizer and sees
the networks as the previous step left them (ISCL_SPEC.md, "Losses").
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch
from ignite.engine import EventEnum
from monai.engines import Trainer
from torch.nn.parallel import DistributedDataParallel

from .losses import (
    bypass_consistency,
    cycle_consistency,
    discriminator_loss,
    generator_adversarial_loss,
    hinge_fake,
    identity_consistency,
    lowpass_consistency,
    noise_consistency,
)
from .device import usable_amp
from .errors import QuietUserErrors
from .settings import flag

# (B) bypass consistency, (C) noise extractor trained by noise consistency, (D) discriminator boosting,
# (E) SWA + Lookahead (wired in the config as handler / optimizer wrappers, not in the iteration).
COMPONENTS = ("bypass", "noise_extractor", "boosting", "swa_lookahead")
# "separate": real and fake batches go through a discriminator in separate passes (authors' code);
# "joint": one pass over real and fakes together, so batch-normalised layers share their statistics.
DISCRIMINATOR_BATCHES = ("separate", "joint")


class ISCLEvents(EventEnum):
    """Fired after each sub-step, so handlers (rho clipping, logging) can hook in between them."""

    DISCRIMINATOR_STEP_COMPLETED = "discriminator_step_completed"
    GENERATORS_STEP_COMPLETED = "generators_step_completed"
    EXTRACTOR_STEP_COMPLETED = "extractor_step_completed"


def check_components(components: dict) -> dict:
    """Validate the ablation switches: known names only, boolean values."""
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"Unknown ISCL component(s) {unknown}; expected a subset of {list(COMPONENTS)}.")
    return {name: flag(components.get(name, True), f"ISCL component '{name}'") for name in COMPONENTS}


@contextmanager
def frozen(*networks: torch.nn.Module):
    """Let gradients flow *through* these networks without computing gradients *for* their weights."""
    params = [p for net in networks for p in net.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def plain(network: torch.nn.Module) -> torch.nn.Module:
    """The network without its DDP wrapper (and then without torch.compile around that): for frozen or
    no-grad use, where DDP would wait for gradients that never come (only the network a step trains
    goes through DDP). A compiled network outside DDP stays compiled."""
    inner = getattr(network, "_orig_mod", network)
    return inner.module if isinstance(inner, DistributedDataParallel) else network


AMP_DTYPES = ("bfloat16", "float16")


def gradient_scalers(amp: bool, dtype: torch.dtype, device: torch.device) -> dict:
    """One GradScaler per optimizer where float16 autocast needs it (bfloat16 has float32's range)."""
    needed = amp and dtype == torch.float16
    return {name: torch.amp.GradScaler(torch.device(device).type) if needed else None
            for name in ("generators", "discriminators", "extractor")}


def unpaired_batch(batchdata: dict, device, non_blocking: bool = False, **kwargs):
    """Default ``prepare_batch``: the noisy patches x and the clean patches y of one unpaired batch."""
    return (
        batchdata["noisy"].to(device=device, non_blocking=non_blocking, **kwargs),
        batchdata["clean"].to(device=device, non_blocking=non_blocking, **kwargs),
    )


def check_loss_settings(fake_hinge: str, discriminator_batch: str, discriminator_steps, lowpass_weight: float,
                        lowpass_sigma: float, identity_weight: float = 0.0) -> None:
    """Fail when the trainer is built, not at the first iteration, on a setting it cannot use."""
    hinge_fake(torch.zeros(1), fake_hinge)
    if discriminator_batch not in DISCRIMINATOR_BATCHES:
        raise ValueError(f"discriminator_batch must be one of {DISCRIMINATOR_BATCHES}, got {discriminator_batch!r}")
    if int(discriminator_steps) != discriminator_steps or discriminator_steps < 1:
        raise ValueError(f"discriminator_steps must be an integer >= 1, got {discriminator_steps!r}")
    if lowpass_weight < 0 or not lowpass_sigma > 0:
        raise ValueError(f"need lowpass_weight >= 0 and lowpass_sigma > 0, got {lowpass_weight}, {lowpass_sigma}")
    if identity_weight < 0:
        raise ValueError(f"identity_weight must be >= 0, got {identity_weight}")


class ISCLTrainer(QuietUserErrors, Trainer):
    """Interdependent self-cooperative training of F, G, H, D_X, D_Y (three optimizers per iteration).

    Args:
        denoiser, noise_generator, noise_extractor, noisy_discriminator, clean_discriminator: the five networks.
        generators_optimizer: optimizer over F and G. discriminators_optimizer: over D_X and D_Y.
        extractor_optimizer: over H (unused when the noise extractor is switched off).
        components: ablation switches, see ``COMPONENTS``; missing names default to on.
        cycle_weight: lambda, the weight of cycle and bypass consistency (30 in the paper).
        cycle_weight_warmup: iterations over which lambda ramps linearly from 0 to ``cycle_weight``
            (0 in the paper: lambda from the first iteration).
        noisy_cycle_weight: relative weight of |x - G(F(x))| in the cycle term (1 in the paper).
        extractor_noisy_weight: relative weight of |H(x) - (x - F(x))| in noise consistency (1 in the paper).
        fake_hinge: "code" (authors' code: relu(D(fake))) or "paper" (relu(1 + D(fake))).
        adversarial_weight: weight of the generators' adversarial term (1 in the paper).
        discriminator_batch: "separate" (authors' code) or "joint", see ``DISCRIMINATOR_BATCHES``.
        discriminator_steps: D updates per iteration, on the same batch and fakes (1 in the paper).
        lowpass_weight: relative weight (inside lambda) of low-pass consistency, see
            ``losses.lowpass_consistency`` (0 in the paper). lowpass_sigma: its Gaussian blur, in pixels.
        identity_weight: relative weight (inside lambda) of |F(y) - y|, see ``losses.identity_consistency``
            (0 in the paper).
        denoiser_warmup: iterations during which F is frozen while G, H and the discriminators learn
            (0 in the paper). Fine-tuning a trained F beside a fresh G needs it: until G adds noise, the
            clean cycle |y - F(G(y))| ~ |y - F(y)| teaches F to keep noise.
        amp: autocast the three steps to ``amp_dtype`` ("bfloat16", default, or "float16", which adds a
            GradScaler per optimizer); on a CPU only where it computes bfloat16 natively (else float32 and
            one warning, ``device.usable_amp``). compile: ``torch.compile`` the networks a step trains.
        Other arguments as ``monai.engines.Trainer``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        denoiser: torch.nn.Module,
        noise_generator: torch.nn.Module,
        noise_extractor: torch.nn.Module,
        noisy_discriminator: torch.nn.Module,
        clean_discriminator: torch.nn.Module,
        generators_optimizer: torch.optim.Optimizer,
        discriminators_optimizer: torch.optim.Optimizer,
        extractor_optimizer: torch.optim.Optimizer,
        components: dict | None = None,
        cycle_weight: float = 30.0,
        cycle_weight_warmup: int = 0,
        noisy_cycle_weight: float = 1.0,
        extractor_noisy_weight: float = 1.0,
        fake_hinge: str = "code",
        adversarial_weight: float = 1.0,
        discriminator_batch: str = "separate",
        discriminator_steps: int = 1,
        lowpass_weight: float = 0.0,
        lowpass_sigma: float = 2.0,
        identity_weight: float = 0.0,
        denoiser_warmup: int = 0,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = unpaired_batch,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        compile: bool = False,
        optim_set_to_none: bool = True,
        **kwargs,
    ):
        if amp_dtype not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {AMP_DTYPES}, got {amp_dtype!r}")
        super().__init__(device=device, max_epochs=max_epochs, data_loader=train_data_loader, epoch_length=epoch_length,
                         non_blocking=non_blocking, prepare_batch=prepare_batch, handlers=train_handlers,
                         amp=usable_amp(flag(amp, "amp"), amp_dtype, device), event_names=[ISCLEvents],
                         decollate=False, **kwargs)
        self.components = check_components(components or {})
        self._set_loss_settings(cycle_weight, cycle_weight_warmup, noisy_cycle_weight, extractor_noisy_weight,
                                fake_hinge, adversarial_weight, discriminator_batch, discriminator_steps,
                                lowpass_weight, lowpass_sigma, identity_weight)
        self.denoiser_warmup = int(denoiser_warmup)
        self.optim_set_to_none = optim_set_to_none
        networks = dict(denoiser=denoiser, noise_generator=noise_generator, noise_extractor=noise_extractor,
                        noisy_discriminator=noisy_discriminator, clean_discriminator=clean_discriminator)
        for name, network in networks.items():
            setattr(self.state, name, torch.compile(network) if flag(compile, "compile") else network)
        self.state.generators_optimizer = generators_optimizer
        self.state.discriminators_optimizer = discriminators_optimizer
        self.state.extractor_optimizer = extractor_optimizer
        self.amp_dtype = getattr(torch, amp_dtype)
        self.state.scalers = gradient_scalers(self.amp, self.amp_dtype, device)
        # Networks and optimizers are checkpointed as separate entries of the config's save_dict (not as
        # Ignite _state_dict_user_keys, which would pickle the objects and swap them out on resume).

    def _set_loss_settings(self, cycle_weight, cycle_weight_warmup, noisy_cycle_weight, extractor_noisy_weight,
                           fake_hinge, adversarial_weight, discriminator_batch, discriminator_steps, lowpass_weight,
                           lowpass_sigma, identity_weight) -> None:
        check_loss_settings(fake_hinge, discriminator_batch, discriminator_steps, lowpass_weight, lowpass_sigma,
                            identity_weight)
        self.cycle_weight = float(cycle_weight)
        self.cycle_weight_warmup = int(cycle_weight_warmup)
        self.noisy_cycle_weight = float(noisy_cycle_weight)
        self.extractor_noisy_weight = float(extractor_noisy_weight)
        self.fake_hinge = fake_hinge
        self.joint_batch = discriminator_batch == "joint"
        self.adversarial_weight = float(adversarial_weight)
        self.discriminator_steps = int(discriminator_steps)
        self.lowpass_sigma = float(lowpass_sigma)
        # weights inside lambda of the terms not in the paper; a term with weight 0 is not computed
        self.relative_weights = {"loss_lowpass": float(lowpass_weight), "loss_identity": float(identity_weight)}

    @property
    def uses_noise_extractor(self) -> bool:
        c = self.components
        return c["noise_extractor"] or c["bypass"] or c["boosting"]

    def _optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler_name: str) -> None:
        """Backpropagate ``loss`` and step one optimizer (through its GradScaler under AMP)."""
        optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        scaler = self.state.scalers[scaler_name]
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def _autocast(self):
        return torch.autocast(torch.device(self.state.device).type, dtype=self.amp_dtype, enabled=self.amp)

    def _iteration(self, engine: ISCLTrainer, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x, y = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        for net in engine.networks:
            net.train()  # BIN uses current-batch statistics in training
        # H is unchanged until its own step: one H(x) serves the D and F/G steps.
        with torch.no_grad(), engine._autocast():
            noise_x = plain(engine.state.noise_extractor)(x) if engine.uses_noise_extractor else None

        noisy_fakes, clean_fakes = engine._discriminator_fakes(x, y, noise_x)
        for _ in range(engine.discriminator_steps):
            losses = engine._discriminator_step(x, y, noisy_fakes, clean_fakes)
            engine.fire_event(ISCLEvents.DISCRIMINATOR_STEP_COMPLETED)
        generator_losses, images = engine._generators_step(x, y, noise_x)
        losses.update(generator_losses)
        engine.fire_event(ISCLEvents.GENERATORS_STEP_COMPLETED)
        if engine.components["noise_extractor"]:
            losses.update(engine._extractor_step(x, y))
            engine.fire_event(ISCLEvents.EXTRACTOR_STEP_COMPLETED)

        if noise_x is not None:
            images["H(x)"] = noise_x
        engine.state.output = {**losses, "images": {k: v[:4].detach() for k, v in images.items()}}
        return engine.state.output

    @property
    def current_cycle_weight(self) -> float:
        """lambda at this iteration (Ignite counts iterations from 1)."""
        if self.cycle_weight_warmup <= 0:
            return self.cycle_weight
        return self.cycle_weight * min(1.0, (self.state.iteration - 1) / self.cycle_weight_warmup)

    def _generator_weight(self, term: str) -> float:
        """Weight of a generator term: the adversarial weight, or lambda (times its own for low-pass, identity)."""
        if term == "loss_adversarial":
            return self.adversarial_weight
        return self.current_cycle_weight * self.relative_weights.get(term, 1.0)

    @property
    def networks(self) -> tuple:
        s = self.state
        return s.denoiser, s.noise_generator, s.noise_extractor, s.noisy_discriminator, s.clean_discriminator

    def _judge(self, discriminator, real, fakes: list) -> tuple:
        """Scores of the real batch and of each fake batch, in one pass when the batch is joint."""
        if not self.joint_batch:
            return discriminator(real), [discriminator(fake) for fake in fakes]
        scores = discriminator(torch.cat([real, *fakes])).split(real.shape[0])
        return scores[0], list(scores[1:])

    def _fake_scores(self, discriminator, real, fake) -> torch.Tensor:
        """The score of one fake batch; in a joint batch the real batch sets the statistics beside it."""
        if not self.joint_batch:
            return discriminator(fake)
        return self._judge(discriminator, real, [fake])[1][0]

    @torch.no_grad()
    def _discriminator_fakes(self, x, y, noise_x) -> tuple[list, list]:
        """What D_X and D_Y learn to reject: G(y) and F(x), plus the boosting fakes y + H(x) and x - H(x)."""
        with self._autocast():
            noisy_fakes, clean_fakes = [plain(self.state.noise_generator)(y)], [plain(self.state.denoiser)(x)]
        if self.components["boosting"]:
            noisy_fakes.append(y + noise_x)
            clean_fakes.append(x - noise_x)
        return noisy_fakes, clean_fakes

    def _discriminator_step(self, x, y, noisy_fakes, clean_fakes) -> dict:
        """1. D_X, D_Y (F, G, H frozen): hinge loss on the real batches and the fakes."""
        s = self.state
        D_X, D_Y = s.noisy_discriminator, s.clean_discriminator
        with self._autocast():
            loss_noisy = discriminator_loss(*self._judge(D_X, x, noisy_fakes), self.fake_hinge)
            loss_clean = discriminator_loss(*self._judge(D_Y, y, clean_fakes), self.fake_hinge)
        self._optimize(loss_noisy + loss_clean, s.discriminators_optimizer, "discriminators")
        return {"loss_d_noisy": loss_noisy.item(), "loss_d_clean": loss_clean.item()}

    def _generators_step(self, x, y, noise_x) -> tuple[dict, dict]:
        """2. F, G (H and the just-updated D frozen): adversarial + lambda * (cycle + bypass [+ low-pass])."""
        s = self.state
        F, G, D_X, D_Y = s.denoiser, s.noise_generator, plain(s.noisy_discriminator), plain(s.clean_discriminator)
        held = (plain(F),) if s.iteration <= self.denoiser_warmup else ()
        with self._autocast(), frozen(D_X, D_Y, *held):
            denoised_x, noised_y = F(x), G(y)
            terms = {
                "loss_adversarial": generator_adversarial_loss(
                    self._fake_scores(D_X, x, noised_y), self._fake_scores(D_Y, y, denoised_x)
                ),
                "loss_cycle": cycle_consistency(x, G(denoised_x), y, F(noised_y), self.noisy_cycle_weight),
            }
            if self.components["bypass"]:
                terms["loss_bypass"] = bypass_consistency(denoised_x, x, noise_x, y, F(y + noise_x))
            if self.relative_weights["loss_lowpass"] > 0:
                terms["loss_lowpass"] = lowpass_consistency(x, denoised_x, y, noised_y, self.lowpass_sigma)
            if self.relative_weights["loss_identity"] > 0:
                terms["loss_identity"] = identity_consistency(y, F(y))
            total = sum(self._generator_weight(name) * value for name, value in terms.items())
        self._optimize(total, s.generators_optimizer, "generators")
        losses = {name: value.item() for name, value in terms.items()}
        losses["loss_generators"] = total.item()
        return losses, {"x": x, "F(x)": denoised_x, "G(y)": noised_y, "y": y}

    def _extractor_step(self, x, y) -> dict:
        """3. H (the just-updated F, G frozen): noise consistency against x - F(x) and G(y) - y."""
        s = self.state
        F, G, H = plain(s.denoiser), plain(s.noise_generator), s.noise_extractor
        with self._autocast():
            with torch.no_grad():
                denoised_x, noised_y = F(x), G(y)
            loss = noise_consistency(H(x), x, denoised_x, noised_y, y, H(noised_y), self.extractor_noisy_weight)
        self._optimize(loss, s.extractor_optimizer, "extractor")
        return {"loss_noise": loss.item()}

def loss_values(output: dict) -> dict:
    """The scalar losses of one ISCLTrainer iteration (for StatsHandler / TensorBoardStatsHandler)."""
    return {name: value for name, value in output.items() if name.startswith("loss")}


IMAGE_ROWS = ("x", "F(x)", "H(x)", "G(y)", "y")


def output_images(engine) -> dict:
    """The image batches of the last iteration in the documented order x, F(x), H(x), G(y), y (H(x) only
    when H is used) for ImageGridHandler."""
    images = engine.state.output["images"]
    return {name: images[name] for name in IMAGE_ROWS if name in images}
