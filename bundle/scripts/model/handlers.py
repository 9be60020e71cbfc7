"""Ignite handlers used by the ISCL configs (checkpoints: ``checkpoints``). None of them knows ISCL's losses."""

from __future__ import annotations

import sys
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from torch.optim.swa_utils import AveragedModel

from ..core.ct import unit_to_hu


class SWAHandler:
    """Stochastic weight averaging of some networks, from ``start_iteration`` on, every iteration.

    The averages live in ``self.averaged`` (checkpointable: ``state_dict``/``load_state_dict``).
    When training completes they are copied into the live networks, so everything saved or
    evaluated afterwards (the exported model) uses the averaged weights. The networks here have
    no running statistics (BIN), so no BN-update pass is needed after averaging.
    """

    def __init__(self, networks: Mapping[str, torch.nn.Module], start_iteration: int, enabled: bool = True):
        self.networks = dict(networks)
        self.start_iteration = int(start_iteration)
        self.enabled = enabled
        self.averaged = {name: AveragedModel(net) for name, net in self.networks.items()}

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
            engine.add_event_handler(Events.COMPLETED, self.copy_to_networks)

    def update(self, engine: Engine) -> None:
        if engine.state.iteration >= self.start_iteration:
            for name, net in self.networks.items():
                self.averaged[name].update_parameters(net)

    def copy_to_networks(self, engine: Engine | None = None) -> None:
        for name, net in self.networks.items():
            if self.averaged[name].n_averaged.item() > 0:
                net.load_state_dict(self.averaged[name].module.state_dict())

    def state_dict(self) -> dict:
        return {name: avg.state_dict() for name, avg in self.averaged.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, avg in self.averaged.items():
            avg.load_state_dict(state_dict[name])


class ClampParameters:
    """Clamp every parameter called ``name`` in ``networks`` to [low, high] after the given events.

    ISCL clips the BIN mixing weight rho to [0, 1] after every optimizer step. Only parameters out of range
    are written: one that a step did not touch may sit in a graph still to be backpropagated (F and G after
    the D step), and an in-place write, even of the same values, would invalidate it.
    """

    def __init__(
        self,
        networks: Sequence[torch.nn.Module],
        event_names: Sequence,
        name: str = "rho",
        low: float = 0.0,
        high: float = 1.0,
    ):
        self.params = [p for net in networks for n, p in net.named_parameters() if n.split(".")[-1] == name]
        self.event_names = list(event_names)
        self.low, self.high = low, high

    def attach(self, engine: Engine) -> None:
        for event in self.event_names:
            engine.add_event_handler(event, self)

    @torch.no_grad()
    def __call__(self, engine: Engine | None = None) -> None:
        for p in self.params:
            if bool((p < self.low).any() or (p > self.high).any()):
                p.clamp_(self.low, self.high)


class StopOnNonFiniteLoss:
    """Stop training with one error line at the first iteration whose losses are not all finite, before
    any further checkpoint or model file is written (Ignite's TerminateOnNan would end the run normally,
    and the model would then be exported)."""

    def __init__(self, output_transform: Callable = lambda output: output):
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        losses = self.output_transform(engine.state.output)
        bad = {name: value for name, value in losses.items() if not np.isfinite(value)}
        if bad:
            name, value = next(iter(bad.items()))
            raise ValueError(
                f"training diverged at iteration {engine.state.iteration}: {name} is {value} "
                f"({len(bad)} of {len(losses)} losses not finite); stopped, no model written, the "
                "last checkpoint kept (try a lower --learning_rate)."
            )


class SetEpoch:
    """Tell a dataset (or sampler) the epoch at each epoch start, like DistributedSampler.set_epoch."""

    def __init__(self, target):
        self.target = target

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.target.set_epoch(engine.state.epoch)


class LearningRateLogger:
    """Write each optimizer's first-group learning rate to TensorBoard every ``interval`` iterations."""

    def __init__(self, summary_writer, optimizers: Mapping[str, torch.optim.Optimizer], interval: int = 1):
        self.writer = summary_writer
        self.optimizers = dict(optimizers)
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        for name, optimizer in self.optimizers.items():
            self.writer.add_scalar(f"lr/{name}", optimizer.param_groups[0]["lr"], engine.state.iteration)


class RunProgressBar:
    """One tqdm bar over the whole run (Ignite's ProgressBar restarts every epoch, so its ETA is the
    epoch's): iterations done of ``max_epochs * epoch_length``, the run's ETA, on stdout beside the log
    lines rather than on a second stream. A resumed run starts the bar where it left off."""

    def __init__(self, description: str = "training"):
        self.description, self.bar = description, None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.open)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.advance)
        engine.add_event_handler(Events.COMPLETED, self.close)

    def open(self, engine: Engine) -> None:
        from tqdm.auto import tqdm

        total = engine.state.max_epochs * engine.state.epoch_length
        self.bar = tqdm(
            total=total,
            initial=engine.state.iteration,
            desc=self.description,
            unit="it",
            file=sys.stdout,
            dynamic_ncols=True,
        )

    def advance(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self, engine: Engine) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def every(interval: int) -> Callable[[Engine, int], bool]:
    """An Ignite event filter: every ``interval``-th iteration (e.g. StatsHandler's iteration_log)."""
    return lambda engine, iteration: iteration % int(interval) == 0


LABEL_WIDTH = 48  # pixels of the name strip left of an image grid


class ImageGridHandler:
    """Log a grid of images (rows: names, columns: samples) to TensorBoard, each row labelled with its
    name in a strip on the left, on the trainer's iteration axis (as the scalars).

    ``output_transform`` maps the engine to ``{name: tensor (N, 1, H, W)}``. Each row is shown in
    ``value_ranges[name]`` if given, else in ``value_range`` (e.g. a CT window in the network's
    scale); values outside are clipped. ``global_epoch_transform`` (as in MONAI's
    TensorBoardStatsHandler) maps an evaluator's epoch to the trainer's iteration; without it the
    step is the engine's own iteration.
    """

    def __init__(
        self,
        summary_writer,
        output_transform: Callable,
        tag: str = "images",
        interval: int = 1,
        epoch_level: bool = True,
        value_range: Sequence[float] = (-1.0, 1.0),
        value_ranges: Mapping[str, Sequence[float]] | None = None,
        max_columns: int = 4,
        global_epoch_transform: Callable[[int], int] | None = None,
    ):
        self.global_epoch_transform = global_epoch_transform
        self.writer = summary_writer
        self.output_transform = output_transform
        self.tag = tag
        self.interval = interval
        self.epoch_level = epoch_level
        self.value_range = tuple(value_range)
        self.value_ranges = dict(value_ranges or {})
        self.max_columns = max_columns

    def attach(self, engine: Engine) -> None:
        event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
        engine.add_event_handler(event(every=self.interval), self)

    def grid(self, images: Mapping[str, torch.Tensor]) -> np.ndarray:
        columns = min(self.max_columns, *(len(batch) for batch in images.values()))
        rows = []
        for name, batch in images.items():
            low, high = self.value_ranges.get(name, self.value_range)
            tiles = ((batch[:columns, 0].float().cpu() - low) / (high - low)).clamp(0, 1)
            rows.append(torch.cat(list(tiles), dim=1))
        return torch.cat(rows, dim=0).numpy()

    def labelled(self, images: Mapping[str, torch.Tensor]) -> np.ndarray:
        """``grid`` with a strip on its left naming each row (PIL's built-in font, white on black)."""
        from PIL import Image, ImageDraw

        grid = self.grid(images)
        row_height = grid.shape[0] // len(images)
        strip = Image.new("L", (LABEL_WIDTH, grid.shape[0]), 0)
        draw = ImageDraw.Draw(strip)
        for k, name in enumerate(images):
            draw.text((2, k * row_height + 2), name, fill=255)
        return np.concatenate([np.asarray(strip, np.float32) / 255.0, grid], axis=1)

    def __call__(self, engine: Engine) -> None:
        step = (
            self.global_epoch_transform(engine.state.epoch)
            if self.global_epoch_transform is not None
            else engine.state.iteration
        )
        self.writer.add_image(self.tag, self.labelled(self.output_transform(engine)), step, dataformats="HW")
        self.writer.flush()


class WindowedMetric(Metric):
    """Mean of ``metric_fn(pred_hu, ref_hu, window)`` over images, for tensors scaled to [-1, 1].

    ``output_transform`` yields (prediction, reference) batches in the training scale; both are
    mapped back to HU with ``hu_range`` and compared in ``window`` (low, high) HU.
    """

    def __init__(
        self,
        metric_fn: Callable,
        window: Sequence[float],
        hu_range: Sequence[float],
        output_transform: Callable = lambda x: x,
        device="cpu",
    ):
        self.metric_fn = metric_fn
        self.window = tuple(window)
        self.hu_range = tuple(hu_range)
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._values: list[float] = []

    def update(self, output) -> None:
        pred, ref = output
        pred_hu = unit_to_hu(pred.detach().float().cpu(), self.hu_range)
        ref_hu = unit_to_hu(ref.detach().float().cpu(), self.hu_range)
        for p, r in zip(pred_hu, ref_hu):
            self._values.append(float(self.metric_fn(p[0].numpy(), r[0].numpy(), self.window)))

    def compute(self) -> float:
        if not self._values:
            raise RuntimeError("WindowedMetric needs at least one image before compute().")
        return float(np.mean(self._values))


def epoch_to_iteration(epoch_length: int):
    """TensorBoard's x axis for epoch-level (validation) values: the trainer's iteration."""
    return lambda epoch: epoch * int(epoch_length)
