"""Validation during training: the ensemble and each of its branches against the low-dose input.

A stall is visible only when F alone, x - H(x), the ensemble and the input are side by side:
``BranchesInferer`` runs both branches once, ``validation_metrics`` scores each of them and the
input in the metric window, and ``GainLogger`` states the gain of each over the input.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Sequence

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from monai.inferers import Inferer

from ..core.errors import QuietUserErrors
from ..core.metrics import windowed_psnr, windowed_ssim
from .handlers import WindowedMetric

#: validated outputs: name -> how to read it from the evaluator's output
OUTPUTS = ("ensemble", "F", "x_minus_H", "low_dose_input")
METRICS: Dict[str, Callable] = {"psnr": windowed_psnr, "ssim": windowed_ssim}


class Evaluator(QuietUserErrors, SupervisedEvaluator):
    """MONAI's SupervisedEvaluator whose user errors (e.g. a validation pair of two sizes) end the run as
    one line, like the trainer's."""


class BranchesInferer(Inferer):
    """``network`` is an :class:`~scripts.model.networks.ISCLDenoiser`; returns its ensemble and both branches,
    each clipped to [-1, 1] like the exported model: ``{"ensemble", "F", "x_minus_H"}``."""

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> Dict[str, torch.Tensor]:
        denoised, extracted = network.branches(inputs)
        return {
            "ensemble": network.combine(denoised, extracted),
            "F": denoised.clamp(-1.0, 1.0),
            "x_minus_H": extracted.clamp(-1.0, 1.0),
        }


def output_pair(name: str) -> Callable[[dict], tuple]:
    """Output transform: (image ``name``, full-dose label) from a validation output."""

    def pair(output: dict) -> tuple:
        image = output["image"] if name == "low_dose_input" else output["pred"][name]
        return image, output["label"]

    return pair


def validation_metrics(
    window: Sequence[float], hu_range: Sequence[float], exclude: Sequence[str] = ()
) -> Dict[str, WindowedMetric]:
    """``{"<metric>_<output>": WindowedMetric}`` for PSNR and SSIM of every name in ``OUTPUTS``,
    except those in ``exclude`` (e.g. the evaluator's key metric, declared on its own)."""
    return {
        f"{metric}_{name}": WindowedMetric(fn, window, hu_range, output_transform=output_pair(name))
        for metric, fn in METRICS.items()
        for name in OUTPUTS
        if f"{metric}_{name}" not in exclude
    }


def validation_images(engine: Engine) -> Dict[str, torch.Tensor]:
    """Image rows for ImageGridHandler: low dose, F, x - H(x), ensemble, full dose."""
    output = engine.state.output
    pred = output["pred"]
    return {
        "low dose": output["image"],
        "F(x)": pred["F"],
        "x - H(x)": pred["x_minus_H"],
        "ensemble": pred["ensemble"],
        "full dose": output["label"],
    }


class GainLogger:
    """After each validation, log every output's PSNR/SSIM and its gain over the low-dose input, e.g.
    ``ensemble PSNR 29.40 dB (input 28.17 dB, gain +1.23 dB), SSIM 0.842 (input 0.806)``."""

    def __init__(self, window: Sequence[float], logger_name: str = "iscl") -> None:
        self.window = tuple(window)
        self.logger = logging.getLogger(logger_name)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def lines(self, metrics: dict) -> list:
        psnr_in, ssim_in = metrics["psnr_low_dose_input"], metrics["ssim_low_dose_input"]
        lines = []
        for name in OUTPUTS[:-1]:
            psnr, ssim = metrics[f"psnr_{name}"], metrics[f"ssim_{name}"]
            lines.append(
                f"{name} PSNR {psnr:.2f} dB (input {psnr_in:.2f} dB, gain {psnr - psnr_in:+.2f} dB), "
                f"SSIM {ssim:.3f} (input {ssim_in:.3f})"
            )
        return lines

    def __call__(self, engine: Engine) -> None:
        window = f"window [{self.window[0]:g}, {self.window[1]:g}] HU, data range 1"
        for line in self.lines(engine.state.metrics):
            self.logger.info(f"validation {line}; {window}")


class TrainingSummary:
    """When training completes (after the model file is written): validate the exported model once more
    and say where every artefact went, e.g.

        training finished in 0:11:02 (400 iterations)
        model:        bundle/models/model.pt (exported: SWA-averaged F and H, ensemble gamma 0.5)
        checkpoint:   bundle/runs/checkpoint.pt (resume with --resume)
        TensorBoard:  bundle/runs/tensorboard (tensorboard --logdir ...)
        exported model on validation: ensemble PSNR 30.78 dB (input 28.17 dB, gain +2.61 dB), SSIM ...
    """

    def __init__(
        self,
        evaluator: Engine,
        model_path: str,
        checkpoint_path: str,
        log_dir: str,
        window: Sequence[float],
        logger_name: str = "iscl",
    ) -> None:
        self.evaluator, self.model_path, self.checkpoint_path, self.log_dir = (
            evaluator,
            model_path,
            checkpoint_path,
            log_dir,
        )
        self.gains = GainLogger(window, logger_name)
        self.logger = logging.getLogger(logger_name)
        self.started, self.lines = time.monotonic(), []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.COMPLETED, self)

    def start(self, engine: Engine) -> None:
        self.started, self.lines = time.monotonic(), []

    def __call__(self, engine: Engine) -> None:
        """Validate the exported model (the run's last handler: the model file is written) and keep the lines."""
        self.evaluator.run()
        seconds = int(time.monotonic() - self.started)
        lines = [
            f"training finished in {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d} "
            f"({engine.state.iteration} iterations)",
            f"model:        {self.model_path} (the exported ensemble, SWA-averaged when SWA is on)",
            f"checkpoint:   {self.checkpoint_path} (continue with --resume {self.checkpoint_path})",
            f"TensorBoard:  {self.log_dir} (tensorboard --logdir {self.log_dir})",
        ]
        lines += [f"exported model on validation: {line}" for line in self.gains.lines(self.evaluator.state.metrics)]
        self.lines = lines

    def report(self) -> None:
        """Log the summary: called after the run, so that it is what a user reads last."""
        for line in self.lines:
            self.logger.info(line)
