"""The exported bundle run by MONAI Deploy's own operators only, as a user of the SDK would wire them:

    python stock_operator_app.py -i <DICOM folder> -o <output folder> -m <model.ts>

DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator (a CT rule) -> DICOMSeriesToVolumeOperator
-> MonaiBundleInferenceOperator (stock, unchanged; the archive's ``deploy`` config: MONAI transforms only)
-> a sink that saves what the stock operator emits, ``pred.npy`` (its array, as the SDK's Image holds it)
and ``pred.json`` (dtype, shape), for check_deploy.py to compare with the bundle's own inference.

The stock operator casts an ``image`` output to uint8 (``_send_output``), so the ``deploy`` config emits the
denoised slices in the model's window, [-160, 240] HU -> [0, 255]; HU output needs the project's
HUBundleInferenceOperator (integrations/deploy_app).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image, IOType, Operator, OperatorSpec
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)

CT_RULES = '{"selections": [{"name": "CT series", "conditions": {"Modality": "(?i)^CT$"}}]}'


class SaveArrayOperator(Operator):
    """Saves the received ``Image`` as ``pred.npy`` and its dtype/shape as ``pred.json`` in ``output_folder``."""

    def __init__(self, fragment, *args, output_folder: Path, **kwargs):
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec):
        spec.input("image")

    def compute(self, op_input, op_output, context):
        array = np.asarray(op_input.receive("image").asnumpy())
        self.output_folder.mkdir(parents=True, exist_ok=True)
        np.save(self.output_folder / "pred.npy", array)
        facts = {"dtype": str(array.dtype), "shape": list(array.shape)}
        (self.output_folder / "pred.json").write_text(json.dumps(facts))


class StockOperatorApp(Application):
    def compose(self):
        app_context: AppContext = Application.init_app_context(self.argv)
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=Path(app_context.input_path))
        selector = DICOMSeriesSelectorOperator(self, rules=CT_RULES)
        to_volume = DICOMSeriesToVolumeOperator(self)
        denoiser = MonaiBundleInferenceOperator(
            self,
            app_context=app_context,
            bundle_path=Path(app_context.model_path),
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            bundle_config_names=BundleConfigNames(config_names=["deploy"]),
        )
        sink = SaveArrayOperator(self, output_folder=Path(app_context.output_path))
        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, denoiser, {("image", "image")})
        self.add_flow(denoiser, sink, {("pred", "image")})


if __name__ == "__main__":
    StockOperatorApp([sys.executable, *sys.argv]).run()
