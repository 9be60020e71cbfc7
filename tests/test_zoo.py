"""The MONAI model zoo's gates, run offline on a copy of the bundle laid out as the zoo's CI has it
(``models/<name>/``), with the bundle on ``sys.path`` as ``ci/verify_bundle.py`` puts it: the required and
preferred files, version and changelog, the network's input/output against metadata.json
(``verify_net_in_out``), the TorchScript export (``ckpt_export``), the property checks of the train and
infer workflows, ``monai.bundle.load``, and the bare ``monai.bundle run`` of inference.json on the
bundle's own sample.  (The zoo also validates metadata.json against a schema file it downloads; that
file is not reachable offline.)"""

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BUNDLE_ROOT

from scripts.core.metrics import windowed_psnr
from scripts.datasets.simulate import simulated_patient
from scripts.tasks.demo import BUNDLE_SAMPLE, write_bundle_sample

NAME = "iscl_ct_denoising"
# what the shipped bundle holds; the rest of the bundle folder (cache/, runs/, eval/) is local work
SHIPPED = ("LICENSE", "configs", "docs", "models", "sample", "scripts")
TINY_SIMULATION = {"n_clean": 1, "n_noisy": 1, "n_validation": 1, "n_test": 1, "size": 64, "slices_per_patient": 2,
                   "n_angles": 32, "progress": False}


@pytest.fixture(scope="module")
def zoo_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo") / "models" / NAME
    root.mkdir(parents=True)
    for name in SHIPPED:
        source = os.path.join(BUNDLE_ROOT, name)
        copy = shutil.copytree if os.path.isdir(source) else shutil.copy
        copy(source, root / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if os.path.isdir(source) else {}))
    return root


def _without_pythonpath() -> dict:
    """The environment minus PYTHONPATH: only what the zoo's scripts or monai.bundle run put on sys.path."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _meta(bundle):
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def test_the_zoo_finds_its_required_files_and_the_version_in_the_changelog(zoo_bundle):
    for required in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
        assert (zoo_bundle / required).is_file(), required
    meta = _meta(zoo_bundle)
    assert meta["version"] in meta["changelog"]
    assert "Apache" in (zoo_bundle / "LICENSE").read_text()


def test_network_input_output_and_torchscript_export_as_the_zoo_verifies(zoo_bundle):
    from monai.bundle import ckpt_export, verify_net_in_out

    args = {"net_id": "network_def", "meta_file": str(zoo_bundle / "configs" / "metadata.json"),
            "config_file": str(zoo_bundle / "configs" / "inference.json"), "bundle_root": str(zoo_bundle)}
    verify_net_in_out(**args)  # raises on a shape or dtype other than metadata.json's network_data_format
    exported = zoo_bundle / "models" / "verify_model.ts"
    ckpt_export(filepath=str(exported), ckpt_file=str(zoo_bundle / "models" / "model.pt"), **args)
    scripted = torch.jit.load(str(exported))
    from scripts.tasks.inference import load_denoiser

    eager = load_denoiser(zoo_bundle / "models" / "model.pt")
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=1e-5)


def _zoo_python(bundle, code: str, cwd) -> dict:
    """Run ``code`` in a fresh interpreter with the bundle first on ``sys.path`` (as the zoo's verify_bundle.py
    sets it; this test process imported the repository's bundle already); it prints one JSON line."""
    prelude = f"import json, sys; sys.path.insert(0, {str(bundle)!r})\n"
    done = subprocess.run([sys.executable, "-c", prelude + code], cwd=cwd, env=_without_pythonpath(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("workflow_type, config", [("infer", "inference.json"), ("train", "train.json")])
def test_the_zoo_property_check_finds_every_property(zoo_bundle, tmp_path, workflow_type, config):
    overrides = ({"dataset_dir": str(tmp_path / "simulated"), "simulation": TINY_SIMULATION,
                  "output_dir": str(tmp_path / "run")} if workflow_type == "train" else {})
    result = _zoo_python(zoo_bundle, f"""
from monai.bundle import ConfigWorkflow
workflow = ConfigWorkflow(config_file={str(zoo_bundle / "configs" / config)!r}, workflow_type={workflow_type!r},
                          logging_file=False, **{overrides!r})
workflow.initialize()
print(json.dumps({{"missing": workflow.check_properties(), "bundle_root": workflow.bundle_root,
                  "dataset_dir": workflow.dataset_dir}}))
""", tmp_path)
    assert result["missing"] == [] and result["bundle_root"] == str(zoo_bundle)
    assert os.path.isdir(result["dataset_dir"])


def test_monai_bundle_load_returns_the_network_with_the_shipped_weights(zoo_bundle, tmp_path):
    result = _zoo_python(zoo_bundle, f"""
import torch
from monai.bundle import load
network = load({NAME!r}, bundle_dir={str(zoo_bundle.parent)!r}, source="github", device="cpu")
expected = torch.load({str(zoo_bundle / "models" / "model.pt")!r}, map_location="cpu", weights_only=True)
print(json.dumps({{"type": type(network).__name__, "keys": sorted(network.state_dict()),
                  "equal": all(torch.equal(v, expected[k]) for k, v in network.state_dict().items())}}))
""", tmp_path)  # from another working directory
    expected = torch.load(zoo_bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert result["type"] == "ISCLDenoiser" and result["keys"] == sorted(expected) and result["equal"]


def test_the_shipped_sample_is_the_first_simulated_test_patient(tmp_path):
    shipped = nib.load(os.path.join(BUNDLE_ROOT, BUNDLE_SAMPLE))
    again = nib.load(write_bundle_sample(str(tmp_path / "sample.nii.gz")))
    np.testing.assert_allclose(shipped.get_fdata(), again.get_fdata(), atol=1e-3)
    np.testing.assert_allclose(shipped.affine, again.affine)


def test_a_bare_run_of_inference_json_denoises_the_bundle_sample(zoo_bundle, tmp_path):
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(zoo_bundle / "configs" / "inference.json")], cwd=tmp_path, env=_without_pythonpath(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (written,) = (zoo_bundle / "eval").iterdir()
    assert written.name == os.path.basename(BUNDLE_SAMPLE)
    full, _ = simulated_patient("test", 0, n_slices=2, size=256, low_dose=False)
    low = np.moveaxis(nib.load(zoo_bundle / BUNDLE_SAMPLE).get_fdata(), -1, 0)
    denoised = np.moveaxis(nib.load(written).get_fdata(), -1, 0)
    for k in range(2):
        assert windowed_psnr(denoised[k], full[k], "abdomen") > windowed_psnr(low[k], full[k], "abdomen") + 1.0
