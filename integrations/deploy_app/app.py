"""ISCL CT denoising as a MONAI Deploy App SDK (4.x) application.

    python integrations/deploy_app/app.py -i <DICOM folder> -o <output folder> -m <model.ts | bundle folder> [--nifti]

Pipeline: DICOMDataLoaderOperator -> CTSeriesSelectorOperator (first CT series) -> DICOMSeriesToVolumeOperator
-> HUBundleInferenceOperator (the bundle's network, slice inferer and HU scaling; float32 HU out) ->
HUSeriesWriterOperator (derived CT series in HU, new Series/SOP UIDs, source geometry; ``--nifti`` adds a
float32 NIfTI).  The SDK's conventions apply: ``-i/-o/-m`` or HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH /
HOLOSCAN_MODEL_PATH, ``-l`` log level.  ``--nifti`` (or ISCL_DEPLOY_NIFTI=1) is this app's own flag.

The model is the bundle exported as a TorchScript archive (``monai.bundle ckpt_export`` with the bundle's
metadata.json and inference.json inside) or a bundle folder (configs/ + models/model.ts or model.pt).
The bundle's ``scripts`` package must be importable: ISCL_BUNDLE_DIR, a ``scripts`` copy next to this
file (packaged app), or the repository's bundle/ folder, in that order.

Any error (non-CT input, missing model, image under 8x8 in-plane, ...) is logged as one ERROR line starting
with "ISCL denoising failed:" and the process exits with status 1; the output folder gets no partial results.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
NIFTI_FLAG = "--nifti"
logger = logging.getLogger("iscl_deploy_app")


def _bundle_dir() -> Path | None:
    """The folder holding the bundle's ``scripts`` package (see the module docstring)."""
    candidates = [os.environ.get("ISCL_BUNDLE_DIR"), APP_DIR, APP_DIR.parents[1] / "bundle"]
    return next((Path(c) for c in candidates if c and (Path(c) / "scripts" / "tasks" / "pipeline.py").is_file()), None)


for _path in (_bundle_dir(), APP_DIR):  # `scripts` (the bundle) and `operators` (next to this file)
    if _path is not None and str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from monai.deploy.conditions import CountCondition  # noqa: E402
from monai.deploy.core import AppContext, Application, Image, IOType  # noqa: E402
from monai.deploy.core.arg_parser import set_up_logging  # noqa: E402
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator  # noqa: E402
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator  # noqa: E402
from monai.deploy.operators.monai_bundle_inference_operator import BundleConfigNames, IOMapping  # noqa: E402

from operators import CTSeriesSelectorOperator, HUBundleInferenceOperator, HUSeriesWriterOperator  # noqa: E402


class ISCLDenoiseApp(Application):
    """Denoises the first CT series of the input folder into a derived CT series in HU (and NIfTI)."""

    def __init__(self, *args, write_nifti: bool = False, **kwargs):
        self.write_nifti = write_nifti
        self.writer: HUSeriesWriterOperator | None = None
        super().__init__(*args, **kwargs)

    def compose(self):
        app_context: AppContext = Application.init_app_context(self.argv)
        model_path = Path(app_context.model_path).absolute()
        problem = check_model(model_path)
        if problem:
            raise FileNotFoundError(problem)

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=Path(app_context.input_path),
                                         name="dicom_loader")
        selector = CTSeriesSelectorOperator(self, name="ct_series_selector")
        to_volume = DICOMSeriesToVolumeOperator(self, name="series_to_volume")
        denoiser = HUBundleInferenceOperator(
            self, app_context=app_context, bundle_path=model_path,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            bundle_config_names=BundleConfigNames(config_names=["inference"]), name="iscl_denoiser",
        )
        self.writer = HUSeriesWriterOperator(self, output_folder=Path(app_context.output_path),
                                             write_nifti=self.write_nifti, name="hu_series_writer")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_volume, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_volume, denoiser, {("image", "image")})
        self.add_flow(denoiser, self.writer, {("pred", "image")})
        self.add_flow(selector, self.writer, {("study_selected_series_list", "study_selected_series_list")})


def check_model(path: Path) -> str | None:
    """Why ``path`` cannot be the model (None when it looks usable): a TorchScript bundle archive or a bundle folder."""
    if path.is_file():
        import zipfile

        return None if zipfile.is_zipfile(path) else f"{path}: not a TorchScript archive (expected model.ts from ckpt_export)."
    if path.is_dir():
        has_model = any((path / "models" / n).is_file() for n in ("model.ts", "model.pt"))
        has_configs = (path / "configs" / "inference.json").is_file() and (path / "configs" / "metadata.json").is_file()
        if has_model and has_configs:
            return None
        return f"{path}: bundle folder without models/model.ts or models/model.pt and configs/{{inference,metadata}}.json."
    return f"{path}: model file not found (pass -m <model.ts> or set HOLOSCAN_MODEL_PATH)."


def _option(argv: list[str], short: str, long: str, env: str, default: str) -> str:
    """The value of ``-x VALUE`` / ``--xx VALUE`` / ``--xx=VALUE`` in argv, else the SDK's env var, else its default."""
    for k, arg in enumerate(argv):
        if arg in (short, long) and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith(long + "="):
            return arg.split("=", 1)[1]
    return os.environ.get(env, default)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    write_nifti = NIFTI_FLAG in argv or os.environ.get("ISCL_DEPLOY_NIFTI", "") not in ("", "0")
    argv = [a for a in argv if a != NIFTI_FLAG]  # the SDK's argument parser rejects unknown flags
    set_up_logging(None)

    # checked before the SDK's argument parser, whose "does not exist" goes to argparse, not the app log
    model = Path(_option(argv, "-m", "--model", "HOLOSCAN_MODEL_PATH", "models")).absolute()
    inputs = Path(_option(argv, "-i", "--input", "HOLOSCAN_INPUT_PATH", "input")).absolute()
    problem = check_model(model) or (None if inputs.is_dir() else f"{inputs}: input DICOM folder not found.")
    if problem is None and _bundle_dir() is None:
        problem = "the bundle's `scripts` package was not found: set ISCL_BUNDLE_DIR to the bundle folder."
    if problem:
        logger.error(f"ISCL denoising failed: {problem}")
        return 1

    app = ISCLDenoiseApp([sys.executable, *argv], write_nifti=write_nifti)  # Holoscan's argv starts with python
    try:
        app.run()
    except Exception as e:  # Holoscan re-raises an operator's exception after stopping the graph
        logger.error(f"ISCL denoising failed: {type(e).__name__}: {e}")
        return 1
    written = getattr(app.writer, "written", None)
    if not written:
        logger.error("ISCL denoising failed: the pipeline stopped without writing any output.")
        return 1
    logger.info(f"ISCL denoising done: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
