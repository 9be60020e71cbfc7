"""MONAI Deploy App SDK operators that run the ISCL bundle on a CT series and write the result in HU.

* ``CTSeriesSelectorOperator``: the SDK's series selector with a CT rule; no CT series is an error that
  names what was found (the stock selector emits an empty list and the next operator fails vaguely).
* ``HUBundleInferenceOperator``: the SDK's ``MonaiBundleInferenceOperator`` with three changes the
  bundle needs: the bundle's own reader transform (``scripts.tasks.pipeline.LoadVolumed``) is dropped (the
  SDK's DICOM operators read the series); the SDK's ``DHW`` volume goes in as the bundle's ``(1, S, H, W)``
  (the stock operator swaps it to ``WHD``); the output stays float32 HU ``(S, H, W)`` (the stock operator
  casts image outputs to uint8).  The network (TorchScript archive), its slice inferer and the HU
  scaling in and out all come from the bundle's ``inference.json``.
* ``HUSeriesWriterOperator``: writes a derived CT series in HU with ``scripts.volumes.dicom_write.write_ct_series``
  (patient/study tags and the geometry of the source files, new Series/SOP UIDs) and, as an option, a
  float32 NIfTI; both are staged next to the output directory (``scripts.core.atomic.staged_folder``) and
  moved into it only when complete.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np
import torch
from monai.deploy.core import ConditionType, Fragment, Image, Operator, OperatorSpec
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.monai_bundle_inference_operator import DISALLOW_LOAD_SAVE, MonaiBundleInferenceOperator

from scripts.core.atomic import merge_into_folder, staged_folder
from scripts.volumes.dicom_io import scan_series
from scripts.core.errors import InferenceError
from scripts.tasks.inference import load_weights
from scripts.volumes.volume_io import Volume, check_hu, write_nifti, write_volume

__all__ = ["CT_RULES", "CTSeriesSelectorOperator", "HUBundleInferenceOperator", "HUSeriesWriterOperator"]

CT_RULES = '{"selections": [{"name": "CT series", "conditions": {"Modality": "(?i)^CT$"}}]}'

logger = logging.getLogger(__name__)


class CTSeriesSelectorOperator(DICOMSeriesSelectorOperator):
    """Selects the first CT series of the input; raises ``InferenceError`` when there is none."""

    def __init__(self, fragment: Fragment, *args, **kwargs):
        super().__init__(fragment, *args, rules=CT_RULES, all_matched=False, **kwargs)

    def filter(self, selection_rules, dicom_study_list, all_matched=False, sort_by_sop_instance_count=False):
        selected = super().filter(selection_rules, dicom_study_list, all_matched, sort_by_sop_instance_count)
        if not selected:
            found = [f"{s.SeriesInstanceUID} (modality {s.Modality or 'missing'})"
                     for study in dicom_study_list or [] for s in study.get_all_series()]
            raise InferenceError(
                f"no CT series in the input: found {', '.join(found) or 'no DICOM series'}; "
                "the ISCL denoiser was trained on CT in HU and refuses other modalities."
            )
        return selected


class HUBundleInferenceOperator(MonaiBundleInferenceOperator):
    """The SDK's bundle inference operator, fed ``(1, S, H, W)`` HU and emitting a float32 HU ``Image`` (S, H, W)."""

    def __init__(self, fragment: Fragment, *args, bundle_path, **kwargs):
        super().__init__(fragment, *args, bundle_path=bundle_path, **kwargs)
        # the stock __init__ swallows a config parsing error and fails later with "model not loaded";
        # parse again here so the real reason (e.g. `scripts` not importable) reaches the log
        if self.bundle_path is None or not self._init_completed:
            try:
                self._bundle_path = Path(bundle_path)
                self._init_config(self._bundle_config_names.config_names)
                self._init_completed = True
            except Exception as e:
                raise InferenceError(f"{bundle_path}: cannot read the bundle configs in it ({type(e).__name__}: {e}).") from e
        if self.bundle_path.is_dir():
            self._load_folder_network()
        self._source_metadata: dict = {}

    def _load_folder_network(self) -> None:
        """A bundle folder: the SDK's model factory wraps it in a Model without a predictor (the stock
        operator then fails with "A predictor of the model is not set"), so set one, as the SDK's Model
        docs suggest: models/model.ts, else network_def with models/model.pt (the bundle's strict loader)."""
        models = self.bundle_path / "models"
        if (models / "model.ts").is_file():
            network = torch.jit.load(str(models / "model.ts"), map_location=self._device).eval()
        else:
            network = load_weights(self.parser.get_parsed_content("network_def").to(self._device), models / "model.pt")
        model = self.app_context.models.get(self._model_name) if self.app_context.models else None
        if model is not None:
            model.predictor = network

    def _get_compose(self, obj_name, disallowed_prefixes):
        # drop the bundle's file reader too: the SDK operators have read the series already
        return super()._get_compose(obj_name, list(disallowed_prefixes or DISALLOW_LOAD_SAVE) + ["LoadVolume"])

    def _convert_from_image(self, img: Image):
        hu = np.asarray(img.asnumpy(), dtype=np.float32)  # DHW = the bundle's (S, H, W)
        if hu.ndim != 3:
            raise InferenceError(f"input series: expected a (slices, rows, columns) volume, got shape {hu.shape}.")
        check_hu(hu, "input series")  # the bundle's own size and NaN/Inf checks
        self._source_metadata = dict(img.metadata() or {})
        return hu[None], {}  # channel first, as scripts.tasks.pipeline.LoadVolumed gives it

    def _send_output(self, value, name, metadata, op_output, context):
        hu = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        hu = np.ascontiguousarray(np.squeeze(hu, 0), dtype=np.float32)  # (1, S, H, W) -> (S, H, W), HU
        logger.info(f"{name}: float32 HU volume {hu.shape}, range [{hu.min():.1f}, {hu.max():.1f}]")
        op_output.emit(Image(hu, metadata=self._source_metadata), name)


class HUSeriesWriterOperator(Operator):
    """Writes the denoised HU volume as a derived CT series (and optionally NIfTI) into ``output_folder``.

    Inputs: ``image`` (float32 HU ``Image``, slices in the SDK's order) and ``study_selected_series_list``
    (the source series: its files give the geometry and the tags to copy).  Outputs:
    ``<output_folder>/<source SeriesInstanceUID>_denoised/`` (DICOM) and, with ``write_nifti``,
    ``<output_folder>/<source SeriesInstanceUID>_denoised.nii.gz``.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, write_dicom: bool = True,
                 write_nifti: bool = False, suffix: str = " ISCL denoised", **kwargs):
        self.output_folder = Path(output_folder)
        self.written: list[str] = []  # what the last compute wrote (the app checks it)
        self.write_dicom, self.write_nifti, self.suffix = bool(write_dicom), bool(write_nifti), suffix
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("image")
        spec.input("study_selected_series_list")
        spec.output("written").condition(ConditionType.NONE)  # optional downstream

    def compute(self, op_input, op_output, context):
        image = op_input.receive("image")
        selected = op_input.receive("study_selected_series_list")
        dicom_series = selected[0].selected_series[0].series
        written = self.write(np.asarray(image.asnumpy(), dtype=np.float32), dicom_series)
        op_output.emit(written, "written")

    def write(self, hu_sdk_order: np.ndarray, dicom_series) -> list[str]:
        sops = [s.get_native_sop_instance() for s in dicom_series.get_sop_instances()]
        files, uids = [str(ds.filename) for ds in sops], [str(ds.SOPInstanceUID) for ds in sops]
        source = scan_series(files, modality=None)[0]  # the same files, as the bundle's DICOM reader sees them
        if hu_sdk_order.shape != (source.num_slices, source.rows, source.cols):
            raise InferenceError(f"{source.directory}: denoised volume {hu_sdk_order.shape} does not match the series "
                                 f"({source.num_slices}, {source.rows}, {source.cols}).")
        # both order slices along the normal; map by SOP instance UID so the geometry can never be off by one
        hu = hu_sdk_order[[uids.index(uid) for uid in source.sop_instance_uids]]
        volume = Volume(hu, "dicom", source, source.directory)

        name = f"{source.series_uid}_denoised"
        targets = ([name] if self.write_dicom else []) + ([name + ".nii.gz"] if self.write_nifti else [])
        self.output_folder.mkdir(parents=True, exist_ok=True)
        for target in targets:
            if (self.output_folder / target).exists():
                raise InferenceError(f"{self.output_folder / target}: already exists; choose another output folder.")
        with staged_folder(self.output_folder, install=functools.partial(merge_into_folder, names=targets)) as staging:
            if self.write_dicom:
                write_volume(volume, hu, os.path.join(staging, name), suffix=self.suffix)
            if self.write_nifti:
                write_nifti(volume, hu, os.path.join(staging, name + ".nii.gz"))
        paths = [str(self.output_folder / t) for t in targets]
        for path in paths:
            logger.info(f"wrote {path}")
        self.written = paths
        return paths

