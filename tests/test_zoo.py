"""The MONAI model zoo's gates, run offline on a copy of the bundle laid out as the zoo's CI has it
(``models/<name>/``), with the bundle on ``sys.path`` as ``ci/verify_bundle.py`` puts it: the required and
preferred files, version and changelog, metadata.json against the zoo's schema (``verify_metadata`` with the
schema file kept in tests/data, which the zoo downloads), the network's input/output against metadata.json
(``verify_net_in_out``), the TorchScript export (``ckpt_export``), the property checks of the train and infer
workflows, ``monai.bundle.load``, the bare ``monai.bundle run`` of inference.json on the bundle's own sample,
and the archive's deploy config as MONAI Deploy's stock operator runs it."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

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


SCHEMA = os.path.join(os.path.dirname(__file__), "data", "meta_schema_20240725.json")


def _verify_metadata(bundle, meta_file) -> None:
    """``ci/verify_bundle.py``'s ``verify_metadata_format``, with the schema file in place of its download
    (``download_url`` keeps an existing file whose hash matches)."""
    import hashlib

    from monai.bundle import verify_metadata

    target = bundle / "eval" / "schema.json"
    target.parent.mkdir(exist_ok=True)
    shutil.copy(SCHEMA, target)
    md5 = hashlib.md5(target.read_bytes()).hexdigest()
    verify_metadata(meta_file=str(meta_file), filepath=str(target), hash_val=md5)


def test_metadata_passes_the_zoo_schema(zoo_bundle):
    schema = json.loads(open(SCHEMA).read())
    assert _meta(zoo_bundle)["schema"].endswith(os.path.basename(SCHEMA))
    assert "network_data_format" in schema["required"]
    _verify_metadata(zoo_bundle, zoo_bundle / "configs" / "metadata.json")


@pytest.mark.parametrize("broken", [{"drop": "copyright"}, {"set": ("references", "one string, not a list")},
                                    {"drop_input_field": "value_range"}])
def test_the_schema_check_refuses_a_broken_metadata(zoo_bundle, tmp_path, broken):
    meta = _meta(zoo_bundle)
    if "drop" in broken:
        del meta[broken["drop"]]
    elif "set" in broken:
        meta[broken["set"][0]] = broken["set"][1]
    else:
        del meta["network_data_format"]["inputs"]["image"][broken["drop_input_field"]]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="Failed validating"):
        _verify_metadata(zoo_bundle, tmp_path / "metadata.json")


def _export_args(bundle) -> dict:
    # deploy.json (the stock Deploy operator's config) rides along; inference.json last, so the export resolves
    # network_def with inference.json's imports
    configs = [str(bundle / "configs" / name) for name in ("deploy.json", "inference.json")]
    return {"net_id": "network_def", "meta_file": str(bundle / "configs" / "metadata.json"), "config_file": configs,
            "bundle_root": str(bundle)}


@pytest.fixture(scope="module")
def exported_archive(zoo_bundle):
    from monai.bundle import ckpt_export

    exported = zoo_bundle / "models" / "verify_model.ts"
    ckpt_export(filepath=str(exported), ckpt_file=str(zoo_bundle / "models" / "model.pt"), **_export_args(zoo_bundle))
    return exported


def test_network_input_output_and_torchscript_export_as_the_zoo_verifies(zoo_bundle, exported_archive):
    from monai.bundle import verify_net_in_out

    # raises on a shape or dtype other than metadata.json's network_data_format
    verify_net_in_out(**{**_export_args(zoo_bundle), "config_file": str(zoo_bundle / "configs" / "inference.json")})
    scripted = torch.jit.load(str(exported_archive))
    from scripts.tasks.inference import load_denoiser

    eager = load_denoiser(zoo_bundle / "models" / "model.pt")
    x = torch.rand(1, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-5, rtol=1e-5)


def _archive_config(archive, name: str) -> dict:
    """A config stored in the TorchScript archive, read as MONAI Deploy reads it (the zip's extra/ folder)."""
    with zipfile.ZipFile(archive) as z:
        (path,) = [n for n in z.namelist() if n.endswith(f"extra/{name}.json")]
        return json.loads(z.read(path))


def test_the_deploy_config_is_monai_only_and_uses_the_models_window(zoo_bundle, exported_archive):
    config = _archive_config(exported_archive, "deploy")
    assert config == json.loads((zoo_bundle / "configs" / "deploy.json").read_text())
    assert "scripts" not in json.dumps(config)  # the archive holds no scripts package
    facts = json.loads((zoo_bundle / "models" / "model.pt.json").read_text())
    assert config["hu_range"] == facts["hu_range"]


def _window_levels(hu, low_hu: float, high_hu: float) -> np.ndarray:
    """HU -> deploy.json's 8-bit levels: the window onto [0, 255], clipped, rounded."""
    return np.round(np.clip((hu - low_hu) / (high_hu - low_hu) * 255, 0, 255))


def test_the_deploy_config_gives_the_bundle_pipeline_in_8_bit_as_the_stock_operator_runs_it(exported_archive):
    """The steps of MONAI Deploy's MonaiBundleInferenceOperator (4.0) on a DICOM volume, without the SDK (the
    deploy integration test runs the SDK itself): the volume arrives (W, H, D) with no channel, the batch axis
    is added for the inferer and removed for the postprocessing, and the image output is swapped to (D, H, W)
    and cast to uint8."""
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor

    from scripts.tasks.inference import load_denoiser
    from scripts.tasks.pipeline import make_pipeline

    parser = ConfigParser(_archive_config(exported_archive, "deploy"))
    preprocessing, inferer, postprocessing = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer",
                                                                                      "postprocessing"))
    _, low = simulated_patient("test", 0, n_slices=2, size=70)  # 70: not a multiple of 4, padded and cropped
    whd = MetaTensor(torch.from_numpy(np.swapaxes(low, 0, 2).copy()), meta={"original_channel_dim": "no_channel"})
    inputs = preprocessing({"image": whd})
    with torch.no_grad():
        pred = inferer(inputs=inputs["image"][None], network=torch.jit.load(str(exported_archive)))[0]
    pred = postprocessing({"pred": pred, "image": inputs["image"]})["pred"]
    emitted = np.swapaxes(np.squeeze(pred.numpy(), 0), 0, 2).astype(np.uint8)

    (low_hu, high_hu) = parser.get_parsed_content("hu_range")
    network = load_denoiser(os.path.join(BUNDLE_ROOT, "models", "model.pt"), device="cpu")
    hu = make_pipeline(hu_range=(low_hu, high_hu), outside_margin=None).denoise(low, network)
    levels = _window_levels(hu, low_hu, high_hu)
    assert emitted.shape == low.shape
    assert np.abs(emitted - levels).max() <= 1.0
    assert not np.array_equal(emitted, _window_levels(low, low_hu, high_hu))


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
    # eval/ also holds the zoo's schema.json when the metadata check ran first (verify_bundle.py puts it there)
    written = zoo_bundle / "eval" / os.path.basename(BUNDLE_SAMPLE)
    assert written.is_file(), sorted(os.listdir(zoo_bundle / "eval"))
    full, _ = simulated_patient("test", 0, n_slices=2, size=256, low_dose=False)
    low = np.moveaxis(nib.load(zoo_bundle / BUNDLE_SAMPLE).get_fdata(), -1, 0)
    denoised = np.moveaxis(nib.load(written).get_fdata(), -1, 0)
    for k in range(2):
        assert windowed_psnr(denoised[k], full[k], "abdomen") > windowed_psnr(low[k], full[k], "abdomen") + 1.0
