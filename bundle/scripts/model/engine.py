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

from ..core.device import usable_amp, usable_compile
from ..core.errors import QuietUserErrors
from ..core.settings import flag
from .losses import (
    bypass_consistency,
    cycle_consistency,
    generator_adversarial_loss,
    identity_consistency,
    lowpass_consistency,
)
from .objective import ISCLLosses

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
    wanted = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, requires_grad in zip(params, wanted):
            p.requires_grad_(requires_grad)


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
    return {
        name: torch.amp.GradScaler(torch.device(device).type) if needed else None
        for name in ("generators", "discriminators", "extractor")
    }


def unpaired_batch(batchdata: dict, device, non_blocking: bool = False, **kwargs):
    """Default ``prepare_batch``: the noisy patches x and the clean patches y of one unpaired batch."""
    return (
        batchdata["noisy"].to(device=device, non_blocking=non_blocking, **kwargs),
        batchdata["clean"].to(device=device, non_blocking=non_blocking, **kwargs),
    )


def check_schedule(discriminator_batch: str, discriminator_steps) -> None:
    """Fail when the trainer is built, not at the first iteration, on a schedule it cannot run."""
    if discriminator_batch not in DISCRIMINATOR_BATCHES:
        raise ValueError(f"discriminator_batch must be one of {DISCRIMINATOR_BATCHES}, got {discriminator_batch!r}")
    if int(discriminator_steps) != discriminator_steps or discriminator_steps < 1:
        raise ValueError(f"discriminator_steps must be an integer >= 1, got {discriminator_steps!r}")


def check_compile_layout(compile: bool, to_kwargs: dict | None, device) -> None:
    """Refuse ``compile`` with channels-last networks on a CPU: torch 2.13's compiled CPU kernels corrupt memory
    on the ISCL networks in that layout (each of F/G, H and D aborts with a double free or a corrupted heap
    within three steps, reproduced with AVX-512; plain conv stacks do not). Compile alone is as fast."""
    channels_last = (to_kwargs or {}).get("memory_format") == torch.channels_last
    if flag(compile, "compile") and channels_last and torch.device(device).type == "cpu":
        raise ValueError(
            "--compile true with --channels_last true on a CPU: torch 2.13's compiled CPU kernels "
            "corrupt memory on these networks in channels-last layout (a crash within 3 iterations); "
            "use --compile true alone (as fast)."
        )


class ISCLTrainer(QuietUserErrors, Trainer):
    """Interdependent self-cooperative training of F, G, H, D_X, D_Y (three optimizers per iteration).

    Args:
        denoiser, noise_generator, noise_extractor, noisy_discriminator, clean_discriminator: the five networks.
        generators_optimizer: optimizer over F and G. discriminators_optimizer: over D_X and D_Y.
        extractor_optimizer: over H (unused when the noise extractor is switched off).
        components: ablation switches, see ``COMPONENTS``; missing names default to on.
        losses: the losses' weights and forms, an ``objective.ISCLLosses`` (default: the paper's).
        discriminator_batch: "separate" (authors' code) or "joint", see ``DISCRIMINATOR_BATCHES``.
        discriminator_steps: D updates per iteration, on the same batch and fakes (1 in the paper).
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
        losses: ISCLLosses | None = None,
        discriminator_batch: str = "separate",
        discriminator_steps: int = 1,
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
        compile = usable_compile(flag(compile, "compile"), device)
        check_compile_layout(compile, kwargs.get("to_kwargs"), device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            handlers=train_handlers,
            amp=usable_amp(flag(amp, "amp"), amp_dtype, device),
            event_names=[ISCLEvents],
            decollate=False,
            **kwargs,
        )
        self._set_objective(components, losses, discriminator_batch, discriminator_steps, denoiser_warmup)
        self.optim_set_to_none = optim_set_to_none
        networks = dict(
            denoiser=denoiser,
            noise_generator=noise_generator,
            noise_extractor=noise_extractor,
            noisy_discriminator=noisy_discriminator,
            clean_discriminator=clean_discriminator,
        )
        self._hold_networks(networks, compile)
        self.state.generators_optimizer = generators_optimizer
        self.state.discriminators_optimizer = discriminators_optimizer
        self.state.extractor_optimizer = extractor_optimizer
        self.amp_dtype = getattr(torch, amp_dtype)
        self.state.scalers = gradient_scalers(self.amp, self.amp_dtype, device)

    def _set_objective(self, components, losses, discriminator_batch: str, discriminator_steps, denoiser_warmup):
        """The loss components and weights, and the discriminators' and the denoiser's schedule (checked)."""
        self.components = check_components(components or {})
        self.losses = losses if losses is not None else ISCLLosses()
        check_schedule(discriminator_batch, discriminator_steps)
        self.joint_batch = discriminator_batch == "joint"
        self.discriminator_steps = int(discriminator_steps)
        self.denoiser_warmup = int(denoiser_warmup)

    def _hold_networks(self, networks: dict, compile: bool) -> None:
        """Each network on the engine's state, compiled with ``compile``. Networks and optimizers are
        checkpointed as separate entries of the config's save_dict (not as Ignite _state_dict_user_keys, which
        would pickle the objects and swap them out on resume)."""
        for name, network in networks.items():
            setattr(self.state, name, torch.compile(network) if compile else network)

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

        # F and G are unchanged until their own step: one F(x), G(y) serves the D and F/G steps.
        denoised_x, noised_y = engine._translations(x, y)
        noisy_fakes, clean_fakes = engine._discriminator_fakes(denoised_x, noised_y, x, y, noise_x)
        for _ in range(engine.discriminator_steps):
            losses = engine._discriminator_step(x, y, noisy_fakes, clean_fakes)
            engine.fire_event(ISCLEvents.DISCRIMINATOR_STEP_COMPLETED)
        generator_losses, images = engine._generators_step(x, y, noise_x, denoised_x, noised_y)
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
        """lambda at this iteration."""
        return self.losses.cycle_lambda(self.state.iteration)

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

    def _held_networks(self) -> tuple:
        """The networks the F/G step must not train now: F during ``denoiser_warmup``."""
        return (plain(self.state.denoiser),) if self.state.iteration <= self.denoiser_warmup else ()

    def _translations(self, x, y) -> tuple:
        """F(x) and G(y) with their graphs kept for the F/G step (no running statistics anywhere, so the
        D step's fakes are the same values; computing them once saves two generator passes)."""
        with self._autocast(), frozen(*self._held_networks()):
            return self.state.denoiser(x), self.state.noise_generator(y)

    @torch.no_grad()
    def _discriminator_fakes(self, denoised_x, noised_y, x, y, noise_x) -> tuple[list, list]:
        """What D_X and D_Y learn to reject: G(y) and F(x), plus the boosting fakes y + H(x) and x - H(x)."""
        noisy_fakes, clean_fakes = [noised_y.detach()], [denoised_x.detach()]
        if self.components["boosting"]:
            noisy_fakes.append(y + noise_x)
            clean_fakes.append(x - noise_x)
        return noisy_fakes, clean_fakes

    def _discriminator_step(self, x, y, noisy_fakes, clean_fakes) -> dict:
        """1. D_X, D_Y (F, G, H frozen): hinge loss on the real batches and the fakes."""
        s = self.state
        D_X, D_Y = s.noisy_discriminator, s.clean_discriminator  # noqa: N806 (the paper's names)
        with self._autocast():
            loss_noisy = self.losses.discriminator(*self._judge(D_X, x, noisy_fakes))
            loss_clean = self.losses.discriminator(*self._judge(D_Y, y, clean_fakes))
        self._optimize(loss_noisy + loss_clean, s.discriminators_optimizer, "discriminators")
        return {"loss_d_noisy": loss_noisy.item(), "loss_d_clean": loss_clean.item()}

    def _generators_step(self, x, y, noise_x, denoised_x, noised_y) -> tuple[dict, dict]:
        """2. F, G (H and the just-updated D frozen): adversarial + lambda * (cycle + bypass [+ low-pass])."""
        s = self.state
        F, G = s.denoiser, s.noise_generator  # noqa: N806 (the paper's names)
        D_X, D_Y = plain(s.noisy_discriminator), plain(s.clean_discriminator)  # noqa: N806
        with self._autocast(), frozen(D_X, D_Y, *self._held_networks()):
            terms = {
                "loss_adversarial": generator_adversarial_loss(
                    self._fake_scores(D_X, x, noised_y), self._fake_scores(D_Y, y, denoised_x)
                ),
                "loss_cycle": cycle_consistency(x, G(denoised_x), y, F(noised_y), self.losses.noisy_cycle_weight),
            }
            if self.components["bypass"]:
                terms["loss_bypass"] = bypass_consistency(denoised_x, x, noise_x, y, F(y + noise_x))
            if self.losses.uses("loss_lowpass"):
                terms["loss_lowpass"] = lowpass_consistency(x, denoised_x, y, noised_y, self.losses.lowpass_sigma)
            if self.losses.uses("loss_identity"):
                terms["loss_identity"] = identity_consistency(y, F(y))
            total = self.losses.generators_total(terms, s.iteration)
        self._optimize(total, s.generators_optimizer, "generators")
        losses = {name: value.item() for name, value in terms.items()}
        losses["loss_generators"] = total.item()
        return losses, {"x": x, "F(x)": denoised_x, "G(y)": noised_y, "y": y}

    def _extractor_step(self, x, y) -> dict:
        """3. H (the just-updated F, G frozen): noise consistency against x - F(x) and G(y) - y."""
        s = self.state
        F, G, H = plain(s.denoiser), plain(s.noise_generator), s.noise_extractor  # noqa: N806 (the paper's names)
        with self._autocast():
            with torch.no_grad():
                denoised_x, noised_y = F(x), G(y)
            loss = self.losses.noise(H(x), x, denoised_x, noised_y, y, H(noised_y))
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
