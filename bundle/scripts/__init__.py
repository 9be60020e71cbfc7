"""Python that the ISCL bundle's JSON configs cannot say (see ../configs/train.json)."""

import os

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the configs' @bundle_root
MODEL_PATH = os.path.join(BUNDLE_ROOT, "models", "model.pt")  # the shipped / trained weights
