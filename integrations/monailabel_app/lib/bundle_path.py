"""Import a bundle's ``scripts`` package from one bundle folder at a time (as MONAI Label's bundle tasks do)."""

import contextlib
import json
import os
import sys

from monai.bundle import ConfigParser
from monailabel.utils.others.class_utils import unload_module


@contextlib.contextmanager
def bundle_on_path(bundle_path: str):
    """Put ``bundle_path`` first on ``sys.path`` with any previously imported ``scripts`` unloaded.

    Several bundle copies (e.g. a trained and an untrained one) each ship a package named
    ``scripts``; unloading it makes the configs of this bundle instantiate this bundle's code.
    """
    sys.path.insert(0, bundle_path)
    unload_module("scripts")
    try:
        yield
    finally:
        sys.path.remove(bundle_path)


def read_bundle_config(bundle_path: str, name: str) -> ConfigParser:
    """``configs/<name>`` of the bundle with ``bundle_root`` pointing at this copy."""
    parser = ConfigParser()
    parser.read_config(os.path.join(bundle_path, "configs", name))
    parser["bundle_root"] = bundle_path
    return parser


def read_metadata(bundle_path: str) -> dict:
    with open(os.path.join(bundle_path, "configs", "metadata.json")) as f:
        return json.load(f)
