"""MONAI Label app serving the ISCL low-dose CT denoising bundle (infer + train), from local bundle copies only.

    monailabel start_server --app <this folder> --studies <datastore> --conf models iscl_ct_denoising

Each name in ``--conf models`` (comma-separated) is a bundle folder ``<app>/model/<name>``; nothing
is ever downloaded.  Training rewrites ``<app>/model/<name>/models/model.pt``, so the folder must be
a copy of the bundle, never the repository's own.
"""

import logging
import os
from typing import Dict

import monailabel
from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import strtobool

from lib.infer import DenoiseInferTask, InputError, ModelFileError
from lib.train import ISCLTrainTask

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "iscl_ct_denoising"


class ISCLDenoisingApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.bundles: Dict[str, str] = {}
        for name in [m.strip() for m in conf.get("models", DEFAULT_MODEL).split(",") if m.strip()]:
            path = os.path.join(app_dir, "model", name)
            if not os.path.isfile(os.path.join(path, "configs", "inference.json")):
                raise ValueError(
                    f"{path}: no bundle there (configs/inference.json missing). Copy the ISCL bundle folder to "
                    f"{path}; this app uses local bundles only (no model-zoo download)."
                )
            self.bundles[name] = path
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="ISCL low-dose CT denoising",
            description="Unpaired low-dose CT denoiser (ISCL MONAI bundle); infer returns float32 HU NIfTI",
            version=monailabel.__version__,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        return {name: DenoiseInferTask(path, self.conf) for name, path in self.bundles.items()}

    def init_trainers(self) -> Dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return {name: ISCLTrainTask(path, self.conf) for name, path in self.bundles.items()}

    def infer(self, request, datastore=None):
        """MONAI Label's infer, with failures turned into HTTP errors whose body says what is wrong.

        Without this an exception reaches the client as a bare "Internal Server Error".  Bad input
        (the bundle's InferenceError/DicomDataError/DataError, this app's InputError) -> 422; an
        unknown model -> 404; a missing or wrong model file -> 503; anything else -> 500 with the
        exception's type and message.
        """
        try:
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except MONAILabelException as e:
            raise HTTPException(status_code=404 if "no model" in e.msg.lower() else 400, detail=e.msg) from e
        except ModelFileError as e:
            logger.error(f"Infer impossible: {e}")
            raise HTTPException(status_code=503, detail=str(e)) from e
        except Exception as e:
            if isinstance(e, InputError) or type(e).__module__.startswith("scripts."):
                logger.warning(f"Infer request refused: {e}")
                raise HTTPException(status_code=422, detail=str(e)) from e
            logger.exception("Infer failed")
            raise HTTPException(status_code=500, detail=f"Inference failed: {type(e).__name__}: {e}") from e
