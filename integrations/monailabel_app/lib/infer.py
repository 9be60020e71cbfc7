"""MONAI Label infer task: the ISCL bundle's inference.json pipeline, returning a float32 HU NIfTI.

Not MONAI Label's ``BundleInferTask``, for three reasons: it drops a bundle without
``models/model.pt`` silently (here a request names the missing file instead), its module imports
torchvision (see README: not installable on CPU-only torch 2.13 from PyPI), and its result writer
and ``Restored`` step are made for label masks (integer types); a denoised CT is float HU.
"""

import logging
import os
import tempfile
import threading
import zipfile

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import strtobool

from .bundle_path import bundle_on_path, read_bundle_config, read_metadata

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """A request input this app cannot read (the bundle's own errors cover the image itself)."""


class ModelFileError(RuntimeError):
    """The bundle's models/model.pt is missing or not this network's weights (a server-side problem)."""


class DenoiseInferTask(BasicInferTask):
    """``image`` (NIfTI file, DICOM series folder or an uploaded .zip of one series) -> denoised HU NIfTI.

    Request options: ``force`` (true: denoise a non-CT series anyway), ``device``.
    """

    def __init__(self, bundle_path: str, conf: dict):
        self.bundle_path = bundle_path
        self.model_file = os.path.join(bundle_path, "models", "model.pt")
        metadata = read_metadata(bundle_path)
        self._pipelines: dict = {}  # (device, force) -> (preprocessing, inferer, postprocessing)
        self._lock = threading.Lock()
        super().__init__(
            path=self.model_file,
            network=None,  # built from the config's network_def in _get_network
            type=InferType.OTHERS,
            labels=[],
            dimension=3,
            description=f"{metadata.get('name', 'ISCL')}: {metadata.get('task', 'denoising')} (float32 HU NIfTI out)",
            input_key="image",
            output_label_key="pred",
            config={"force": False},
            load_strict=True,
        )
        self.version = metadata.get("version")

    def info(self):
        return {**super().info(), "version": self.version, "bundle": self.bundle_path}

    def __call__(self, request, callbacks=None):
        image = request.get("image")
        if not (isinstance(image, str) and image.lower().endswith(".zip")):
            return super().__call__(request, callbacks)
        with tempfile.TemporaryDirectory(prefix="iscl-series-") as series_dir:  # an uploaded DICOM series
            _extract_zip(image, series_dir)
            return super().__call__({**request, "image": series_dir}, callbacks)

    # ------------------------------------------------------------------ the bundle's pipeline
    def _pipeline(self, data):
        device, force = str(data.get("device", "cpu")), strtobool(str(data.get("force", False)))
        key = (device, force)
        with self._lock:
            if key not in self._pipelines:
                with bundle_on_path(self.bundle_path):
                    parser = read_bundle_config(self.bundle_path, "inference.json")
                    parser["device"] = f"$torch.device('{device}')"
                    parser["force"] = force
                    parser["progress"] = False
                    # the three come from one make_pipeline (its postprocessing crops the preprocessing's padding off)
                    self._pipelines[key] = tuple(
                        parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing")
                    )
            return self._pipelines[key]

    def pre_transforms(self, data=None):
        return list(self._pipeline(data)[0].transforms)

    def inferer(self, data=None):
        return self._pipeline(data)[1]

    def post_transforms(self, data=None):
        return list(self._pipeline(data)[2].transforms)

    def _get_network(self, device, data):
        """The config's network_def with model.pt loaded strictly by the bundle (clear error if missing/wrong);
        cached per device until the file changes (a train run rewrites it)."""
        with self._lock, bundle_on_path(self.bundle_path):
            from scripts.tasks.inference import load_weights

            mtime = os.stat(self.model_file).st_mtime if os.path.isfile(self.model_file) else None
            cached = self._networks.get(device)
            if cached and mtime is not None and cached[1] == mtime:
                return cached[0]
            parser = read_bundle_config(self.bundle_path, "inference.json")
            try:
                network = load_weights(parser.get_parsed_content("network_def").to(torch.device(device)), self.model_file)
            except ValueError as e:  # the bundle's InferenceError, naming the file and what is wrong with it
                raise ModelFileError(str(e)) from e
            self._networks[device] = (network, mtime)
            return network

    # ------------------------------------------------------------------ result
    def writer(self, data, extension=None, dtype=None):
        """Write ``pred`` (1, S, H, W) HU as float32 NIfTI: the input NIfTI's header and axis order, or
        (DICOM input) the series geometry in RAS; MONAI Label's own writer is for label masks."""
        volume = data["image_volume"]  # scripts.volumes.volume_io.Volume from LoadVolumed
        hu = data["pred"][0].detach().cpu().numpy().astype(np.float32)
        fd, out_path = tempfile.mkstemp(suffix=".nii.gz", prefix="iscl-denoised-")
        os.close(fd)
        with bundle_on_path(self.bundle_path):
            from scripts.volumes.volume_io import write_nifti

            write_nifti(volume, hu, out_path)
        result = {
            "input": volume.path,
            "input_kind": volume.kind,
            "shape_shw": list(hu.shape),
            "dtype": "float32",
            "unit": "HU",
            "hu_min": float(hu.min()),
            "hu_max": float(hu.max()),
            "model_file": self.model_file,
        }
        return out_path, result


def _extract_zip(path: str, out_dir: str) -> None:
    """Unpack an uploaded series archive; member paths may not leave ``out_dir``."""
    try:
        with zipfile.ZipFile(path) as archive:
            root = os.path.realpath(out_dir)
            for name in archive.namelist():
                target = os.path.realpath(os.path.join(out_dir, name))
                if not target.startswith(root + os.sep):
                    raise InputError(f"uploaded zip: member {name!r} points outside the archive folder.")
            archive.extractall(out_dir)
    except zipfile.BadZipFile as e:
        raise InputError(f"uploaded file is not a readable zip archive of one DICOM series ({e}).") from e
