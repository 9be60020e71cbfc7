"""The inference as a MONAI engine: the model zoo's ``evaluator`` of ``inference.json``.

One iteration denoises one input volume -- an ``(output name, NIfTI path | DICOM series)`` pair as
``inputs.collect_inputs`` finds it -- with the one pipeline of ``pipeline.make_pipeline`` and writes
it in the input's format (``volume_io.write_volume``) under the folder given to ``denoise_into``.
``inference.denoise_path`` runs it into a staging folder that is merged into place when every volume
is done, so handlers attached to the engine (progress, logging) see one event per volume.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from monai.engines import Workflow

from ..volumes.volume_io import write_volume

__all__ = ["VolumeDenoiser"]


class VolumeDenoiser(Workflow):
    """``volumes``: ``(name, source)`` pairs (a MONAI ``Dataset`` of them in ``inference.json``);
    ``network``: the loaded denoiser; ``pipeline``: a ``pipeline.DenoisePipeline``; ``suffix``: appended to a
    derived DICOM series' description; ``val_handlers``: Ignite handlers, as MONAI's evaluators take."""

    def __init__(
        self,
        device: torch.device | str,
        volumes: Sequence,
        network: torch.nn.Module,
        pipeline,
        suffix: str = " ISCL denoised",
        val_handlers: Sequence | None = None,
    ):
        self.volumes = list(volumes)
        super().__init__(
            device=device,
            max_epochs=1,
            data_loader=self.volumes,
            epoch_length=len(self.volumes),
            handlers=val_handlers,
            decollate=False,
        )
        self.network, self.pipeline, self.suffix = network, pipeline, suffix
        self.output_dir: str | None = None

    def set_volumes(self, volumes: Sequence) -> None:
        """Replace the volumes to denoise (e.g. one volume renamed to an output file name)."""
        self.volumes = self.data_loader = list(volumes)
        self.state.epoch_length = len(self.volumes)

    def denoise_into(self, output_dir: str) -> None:
        """Denoise every volume into ``output_dir`` (which must exist)."""
        self.output_dir = os.fspath(output_dir)
        self.run()

    def _iteration(self, engine: Any, volume: tuple) -> dict:
        name, source = volume
        image, hu = self.pipeline(source, self.network, self.state.device)
        path = os.path.join(self.output_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_volume(image, hu, path, suffix=self.suffix)
        return {"name": name, "output": path}
