"""The one inference pipeline of the bundle: ``make_pipeline`` builds it, every caller runs it.

One volume: HU ``(S, H, W)`` -> keep the input HU (``CopyItemsd``) -> window to [-1, 1]
(``ScaleIntensityRanged``, clipped to ``hu_range`` as in training) -> pad each slice at its bottom/right
edge to a multiple of 4 by repeating the edge pixels (``DivisiblePadd``: the ISCL generator downsamples
twice) -> the network on every slice through a MONAI ``SliceInferer`` -> the padding cropped off
(``CropToSourced``: the output grid is the input grid exactly) -> back to HU -> the input HU restored where it
lies well outside ``hu_range`` (``RestoreOutsideWindowd``, a continuous blend at the window's edges).

``inference.json`` declares ``pipeline`` with this factory as its ``_target_`` and hands its
``preprocessing`` / ``inferer`` / ``postprocessing`` to MONAI Label and Deploy; ``cli.py denoise``,
evaluation and the benchmark call :meth:`DenoisePipeline.denoise` (arrays) or the pipeline itself
(files), which run the same three objects on chunks of ``batch_size`` slices with a tqdm bar.  In eval
mode the ISCL network normalises each slice by its own statistics, so chunking does not change the
result.  ``mode="tiled"``: ``tile_size`` tiles with ``overlap``, Gaussian blending (lower peak memory
for very large slices; not bit-equal to full slices, BIN normalises by each tile's statistics).  Every
step after the network is continuous in its output, so an output that leaves [-1, 1] is extrapolated,
not clipped.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import Compose, CopyItemsd, DivisiblePadd, MapTransform, ScaleIntensityRanged
from torch import nn

from ..core.ct import HU_RANGE, OUTSIDE_WINDOW_MARGIN_HU, restore_outside_window
from ..core.settings import flag
from ..volumes.volume_io import MIN_SIZE, Volume, index_affine, read_volume

__all__ = [
    "make_pipeline",
    "make_inferer",
    "network_device",
    "DenoisePipeline",
    "LoadVolumed",
    "CropToSourced",
    "RestoreOutsideWindowd",
    "DIVISOR",
]

DIVISOR = 4  # the generator downsamples twice
MAX_TILE = 2048  # a larger tile only pads (a 100,000-pixel tile would allocate 40 GB)


def make_inferer(mode: str = "slice", tile_size: int = 256, overlap: float = 0.25, batch_size: int = 1) -> SliceInferer:
    """The MONAI inferer for a ``(N, 1, S, H, W)`` volume of slices (``spatial_dim=0``).

    "slice": each full slice at once (``roi_size=(-1, -1)``: the whole padded slice).  "tiled":
    ``tile_size`` tiles (a multiple of 4), ``overlap`` in [0, 1), Gaussian blending; slices smaller
    than a tile are padded by edge replication inside the inferer and cropped back.
    ``batch_size``: slices (or tiles) per forward pass.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1.")
    common = {"spatial_dim": 0, "sw_batch_size": int(batch_size), "progress": False}
    if mode == "slice":
        return SliceInferer(roi_size=(-1, -1), overlap=0.0, **common)
    if mode == "tiled":
        if int(tile_size) != tile_size or not MIN_SIZE <= tile_size <= MAX_TILE or tile_size % DIVISOR:
            raise ValueError(
                f"tile_size={tile_size!r}: expected an integer from {MIN_SIZE} to {MAX_TILE}, a multiple of "
                f"{DIVISOR}."
            )
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap={overlap!r}: expected a value in [0, 1).")
        return SliceInferer(
            roi_size=(int(tile_size), int(tile_size)),
            overlap=float(overlap),
            mode="gaussian",
            padding_mode="replicate",
            **common,
        )
    raise ValueError(f"mode={mode!r}: expected 'slice' or 'tiled'.")


def make_pipeline(
    hu_range=HU_RANGE,
    mode: str = "slice",
    tile_size: int = 256,
    overlap: float = 0.25,
    batch_size: int = 1,
    amp: bool = False,
    force: bool = False,
    progress: bool = False,
    outside_margin: float | None = OUTSIDE_WINDOW_MARGIN_HU,
) -> "DenoisePipeline":
    """The inference pipeline of the bundle (see the module doc).  ``hu_range``: the model's training window;
    ``mode``/``tile_size``/``overlap``/``batch_size``: see :func:`make_inferer`; ``amp``: float16 autocast,
    CUDA only; ``force``: read volumes that fail the HU sanity check; ``outside_margin``: see
    ``ct.restore_outside_window`` (None: the network's output in ``hu_range`` alone)."""
    low, high = (float(v) for v in hu_range)
    window = Compose(
        [
            CopyItemsd("image", names="image_hu"),
            ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=-1.0, b_max=1.0, clip=True),
            DivisiblePadd("image", k=(1, DIVISOR, DIVISOR), mode="edge", method="end"),
        ]
    )
    back = [
        CropToSourced("pred", source_key="image_hu"),
        ScaleIntensityRanged("pred", a_min=-1.0, a_max=1.0, b_min=low, b_max=high, clip=False),
    ]
    if outside_margin is not None:
        back.append(RestoreOutsideWindowd("pred", source_key="image_hu", hu_range=(low, high), margin=outside_margin))
    return DenoisePipeline(
        LoadVolumed("image", force=force),
        window,
        make_inferer(mode, tile_size, overlap, batch_size),
        Compose(back),
        amp=amp,
        batch_size=batch_size,
        progress=progress,
    )


def network_device(network: nn.Module) -> torch.device:
    """Where ``network``'s parameters are (CPU for a network without any)."""
    return next((p.device for p in network.parameters()), torch.device("cpu"))


class DenoisePipeline:
    """``preprocessing`` (read, window, pad) -> ``inferer`` -> ``postprocessing`` (unpad, HU, outside-window
    restore); built by :func:`make_pipeline`."""

    def __init__(
        self, reader, window, inferer, postprocessing, amp: bool = False, batch_size: int = 1, progress: bool = False
    ):
        self.reader, self.window, self.inferer, self.postprocessing = reader, window, inferer, postprocessing
        # flat, so consumers see map transforms first (MONAI Deploy drops the reader and checks that)
        self.preprocessing = Compose([reader, *window.transforms])
        self.amp, self.progress = flag(amp, "amp"), flag(progress, "progress")
        self.batch_size = max(int(batch_size), 1)

    def __call__(self, item, network: nn.Module, device=None) -> tuple[Volume, np.ndarray]:
        """Read ``item`` (a NIfTI file or a one-series DICOM folder) and denoise it: ``(Volume, HU array)``."""
        volume = self.reader({"image": item})["image_volume"]
        return volume, self.denoise(volume.hu, network, device)

    def denoise(self, hu, network: nn.Module, device=None) -> np.ndarray:
        """Denoise ``hu`` ``(S, H, W)`` (or one ``(H, W)`` slice); float32 HU of the same shape.  ``network``:
        any module mapping ``(N, 1, H, W)`` in [-1, 1] to the same shape, run in eval mode on ``device``
        (default: where its parameters are)."""
        hu = np.asarray(hu, dtype=np.float32)
        if hu.ndim not in (2, 3) or hu.shape[-1] < 1 or hu.shape[-2] < 1:
            raise ValueError(f"denoising expects (S, H, W) or (H, W) HU, got shape {hu.shape}.")
        volume = hu[None] if hu.ndim == 2 else hu
        device = network_device(network) if device is None else torch.device(device)
        if self.amp and device.type != "cuda":
            warnings.warn(f"amp=True is CUDA-only; running in float32 on {device}.", UserWarning, stacklevel=2)
        from tqdm.auto import tqdm

        out, was_training = np.empty(volume.shape, dtype=np.float32), network.training
        network.to(device).eval()
        try:
            with torch.inference_mode(), tqdm(
                total=len(volume), unit="slice", desc="denoising", disable=not self.progress
            ) as bar:
                for k in range(0, len(volume), self.batch_size):
                    out[k : k + self.batch_size] = self._slices(volume[k : k + self.batch_size], network, device)
                    bar.update(len(out[k : k + self.batch_size]))
        finally:
            network.train(was_training)
        return out[0] if hu.ndim == 2 else out

    def _slices(self, hu: np.ndarray, network: nn.Module, device: torch.device) -> np.ndarray:
        """A chunk of slices ``(n, H, W)`` HU through window, inferer and postprocessing."""
        data = self.window({"image": MetaTensor(torch.from_numpy(hu)[None])})

        def run_network(x):  # accumulate in float32 even under autocast
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp and device.type == "cuda"):
                return network(x).float()

        data["pred"] = self.inferer(data["image"].as_tensor()[None].to(device), run_network)[0].float().cpu()
        return self.postprocessing(data)["pred"][0].numpy()


class LoadVolumed(MapTransform):
    """``{key: path}`` -> ``{key: MetaTensor (1, S, H, W) HU, key + "_volume": Volume}`` via ``read_volume``.

    The reader of the pipeline's ``preprocessing`` (NIfTI or a one-series DICOM folder); the tensor's
    affine maps its ``(s, h, w)`` index to RAS+ mm (MONAI's convention).
    """

    def __init__(self, keys, force: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.force = flag(force, "force")  # "false" from the command line is False, not a truthy string

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            volume = read_volume(d[key], force=self.force)
            d[key] = MetaTensor(
                torch.from_numpy(volume.hu)[None],
                affine=torch.as_tensor(index_affine(volume)),
                meta={"filename_or_obj": volume.path},
            )
            d[key + "_volume"] = volume
        return d


class CropToSourced(MapTransform):
    """``d[key]`` cropped at its bottom/right to the spatial size of ``d[source_key]`` (the input before
    ``DivisiblePadd`` padded it at the end of each axis): the output on the input's grid, padded or not."""

    def __init__(self, keys, source_key: str, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key

    def __call__(self, data):
        d = dict(data)
        size = tuple(d[self.source_key].shape[1:])
        for key in self.key_iterator(d):
            d[key] = d[key][(slice(None),) + tuple(slice(0, n) for n in size)]
        return d


class RestoreOutsideWindowd(MapTransform):
    """``ct.restore_outside_window`` as the last step of ``postprocessing``: ``d[key]`` (denoised HU) blended
    back into the input HU ``d[source_key]`` (kept by ``CopyItemsd`` before the window is applied) where the
    input lies outside ``hu_range``."""

    def __init__(
        self,
        keys,
        source_key: str,
        hu_range,
        margin: float = OUTSIDE_WINDOW_MARGIN_HU,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.source_key = source_key
        self.hu_range = tuple(float(v) for v in hu_range)
        self.margin = float(margin)

    def __call__(self, data):
        d = dict(data)
        source = torch.as_tensor(d[self.source_key])
        for key in self.key_iterator(d):
            pred = d[key]
            d[key] = restore_outside_window(
                pred, source.to(device=pred.device, dtype=pred.dtype), self.hu_range, self.margin
            )
        return d
