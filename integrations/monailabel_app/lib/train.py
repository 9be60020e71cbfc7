"""MONAI Label train task: the ISCL bundle's train.json ``run`` on the datastore's volumes.

MONAI Label's datastore pairs each image with its final label.  For ISCL the images are the
low-dose (noisy) CT volumes and the labels the full-dose (clean) targets; training is unpaired,
so the training pairs are split into the two pools (images -> ``training_noisy``, labels ->
``training_clean``) and the held-out pairs become ``validation`` (PSNR/SSIM need pairs).
A request's ``max_epochs`` runs ``max_epochs * epoch_length`` iterations; the trained network
is written by the bundle's own handler to ``<bundle copy>/models/model.pt``.
"""

import logging
import os

from monailabel.tasks.train.bundle import BundleConstants, BundleTrainTask

from .bundle_path import read_bundle_config

logger = logging.getLogger(__name__)

# MONAI Label's base task puts these request-derived values into the overrides under the ids below;
# _update_overrides turns them into this bundle's ids (train.json has no train#dataset#data etc.).
TRAIN_PAIRS, VALIDATION_PAIRS, MAX_EPOCHS = "monailabel_train_pairs", "monailabel_validation_pairs", "monailabel_max_epochs"


class ISCLTrainConstants(BundleConstants):
    def key_train_trainer_max_epochs(self) -> str:
        return MAX_EPOCHS

    def key_train_dataset_data(self) -> str:
        return TRAIN_PAIRS

    def key_validate_dataset_data(self) -> str:
        return VALIDATION_PAIRS

    def key_train_handlers(self) -> str:
        return "train#handlers"


class ISCLTrainTask(BundleTrainTask):
    """Request options beyond MONAI Label's (max_epochs, val_split, pretrained, device, ...):
    ``epoch_length`` (iterations per epoch) and ``batch_size`` (unpaired patch pairs per iteration)."""

    def __init__(self, bundle_path: str, conf: dict):
        super().__init__(bundle_path, conf, const=ISCLTrainConstants())
        train = read_bundle_config(bundle_path, "train.json")
        # the bundle's own run length (num_iterations) unless a request says otherwise
        self.defaults = {
            "max_epochs": train["num_iterations"] // train["epoch_length"],
            "epoch_length": train["epoch_length"],
            "batch_size": train["batch_size"],
        }
        self._request: dict = {}

    def config(self):
        return {**super().config(), "multi_gpu": False, **self.defaults}

    def __call__(self, request, datastore):
        self._request = {**self.defaults, **request}  # _update_overrides gets only the overrides
        return super().__call__(self._request, datastore)

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        """pretrained=true: fine-tune from models/model.pt (a plain network_def state dict, loaded strictly).

        As MONAI Label's, but train.json's handler list also holds references ("@swa"), which the
        base method cannot skip (it calls .get on every entry)."""
        if not pretrained or not os.path.isfile(model_pytorch):
            return
        if any(isinstance(t, dict) and t.get("_target_") == "CheckpointLoader" for t in train_handlers):
            return
        logger.info(f"Fine-tuning from {model_pytorch}")
        train_handlers.insert(0, {"_target_": "CheckpointLoader", "load_path": model_pytorch,
                                  "load_dict": {"network": "$@network"}, "strict": True})

    def _update_overrides(self, overrides):
        train = overrides.pop(TRAIN_PAIRS)
        validation = overrides.pop(VALIDATION_PAIRS, None)
        if not train:
            raise ValueError(
                "No training volumes: the datastore needs low-dose images with a final label (the full-dose "
                "target, labels/final/<same name>); lower val_split if all labeled volumes went to validation."
            )
        if not validation:
            logger.warning("No held-out labeled volume (val_split); validating on the training pairs.")
            validation = train
        epoch_length = int(self._request["epoch_length"])
        overrides.update(
            {
                "num_iterations": int(overrides.pop(MAX_EPOCHS)) * epoch_length,
                "epoch_length": epoch_length,
                "batch_size": int(self._request["batch_size"]),
                "device": f"$torch.device('{overrides['device']}')",
                "data": {
                    "training_noisy": [{"image": d["image"]} for d in train],
                    "training_clean": [{"image": d["label"]} for d in train],
                    "validation": [{"image": d["image"], "label": d["label"]} for d in validation],
                },
            }
        )
        logger.info(
            f"ISCL training: {len(train)} noisy + {len(train)} clean volumes, {len(validation)} validation pairs, "
            f"{overrides['num_iterations']} iterations of batch {overrides['batch_size']}"
        )
        return overrides
