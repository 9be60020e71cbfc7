"""Repository contracts: README commands vs CI, pinned requirements, bundle metadata and layout."""

import json
import os
import re

from conftest import BUNDLE_ROOT, REPO_ROOT


def readme_commands():
    text = open(os.path.join(REPO_ROOT, "README.md")).read()
    section = text.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2
    train_command, test_command = commands
    assert "monai.bundle run training --config_file bundle/configs/train.json" in train_command
    assert "pytest" in test_command and "pip install -r requirements.txt" in test_command
    ci_lines = open(os.path.join(REPO_ROOT, ".ci", "run")).read().splitlines()
    assert test_command in ci_lines


def test_requirements_are_pinned():
    lines = [l.strip() for l in open(os.path.join(REPO_ROOT, "requirements.txt")) if l.strip() and not l.startswith("#")]
    pins = dict(l.split("==") for l in lines)
    assert all("==" in l for l in lines), lines
    assert pins["torch"] == "2.13.0" and pins["monai"] == "1.6.1"
    for package in ("pytorch-ignite", "nibabel", "pydicom", "itk", "fire", "tensorboard"):
        assert package in pins, package


def test_metadata_follows_the_bundle_schema_fields():
    meta = json.load(open(os.path.join(BUNDLE_ROOT, "configs", "metadata.json")))
    assert meta["schema"].endswith("meta_schema_20240725.json")
    for field in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                  "required_packages_version", "task", "description", "authors", "copyright"):
        assert meta[field], field
    assert meta["version"] in meta["changelog"]
    requirements = open(os.path.join(REPO_ROOT, "requirements.txt")).read()
    assert f"monai=={meta['monai_version']}" in requirements
    assert f"torch=={meta['pytorch_version']}" in requirements
    assert f"numpy=={meta['numpy_version']}" in requirements
    for package, version in meta["required_packages_version"].items():
        assert f"{package}=={version}" in requirements, package
    data_format = meta["network_data_format"]
    image, pred = data_format["inputs"]["image"], data_format["outputs"]["pred"]
    for spec in (image, pred):
        assert spec["num_channels"] == 1
        assert spec["spatial_shape"] == ["4*n", "4*n"]
        assert spec["value_range"] == [-1, 1]
        assert spec["dtype"] == "float32"


def test_bundle_layout():
    for path in ("configs/train.json", "configs/train_paper.json", "configs/metadata.json", "configs/logging.conf",
                 "scripts/cli.py", "docs/README.md", "docs/data_license.txt", "models"):
        assert os.path.exists(os.path.join(BUNDLE_ROOT, path)), path
    assert "Apache License" in open(os.path.join(REPO_ROOT, "LICENSE")).read()
    # the model zoo's verify_bundle requires the bundle folder to carry its own licence
    assert open(os.path.join(BUNDLE_ROOT, "LICENSE")).read() == open(os.path.join(REPO_ROOT, "LICENSE")).read()
    meta = json.load(open(os.path.join(BUNDLE_ROOT, "configs", "metadata.json")))
    assert all(isinstance(value, float) for value in meta["eval_metrics"].values())  # numbers, not a pointer


def test_ci_runs_both_integrations_after_the_unit_tests():
    ci_lines = open(os.path.join(REPO_ROOT, ".ci", "run")).read().splitlines()
    test_line = ci_lines.index(readme_commands()[1])
    for script in ("tests/integration/monailabel/run.sh", "tests/integration/deploy/run.sh"):
        assert os.path.isfile(os.path.join(REPO_ROOT, script)), script
        assert ci_lines.index(f"bash {script}") > test_line, script
    # the model zoo's gates: code format and metadata.json's pins on the zoo's Python, in the unit tests' venv
    gates = [n for n, line in enumerate(ci_lines) if line.startswith(("bash .ci/format", "bash .ci/zoo_pins"))]
    assert len(gates) == 2 and all(test_line < n < ci_lines.index("deactivate") for n in gates), gates
    # the integration checks run in their own venvs: the unit-test command must not collect them
    for _, _, files in os.walk(os.path.join(REPO_ROOT, "tests", "integration")):
        assert not [f for f in files if f.startswith("test_") and f.endswith(".py")], files


def test_no_tracked_file_over_1_mb_but_the_weights():
    """The model zoo's pre-commit limit (check-added-large-files --maxkb=1024); the weights ship apart."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    large = [path for path in tracked.split()
             if os.path.isfile(os.path.join(REPO_ROOT, path)) and os.path.getsize(os.path.join(REPO_ROOT, path)) > 1024 * 1024
             and not path.startswith("bundle/models/")]
    assert not large, large


def test_json_configs_are_in_the_model_zoos_format():
    """pre-commit's pretty-format-json as the zoo runs it (--autofix --no-sort-keys --indent=4): 4 spaces,
    keys in their written order, ASCII, a final newline."""
    import glob

    configs = glob.glob(os.path.join(BUNDLE_ROOT, "configs", "*.json")) + glob.glob(os.path.join(REPO_ROOT, "benchmark", "*.json"))
    assert len(configs) >= 10
    for path in configs:
        text = open(path).read()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", path
