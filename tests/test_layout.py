"""The import rule of bundle/docs/README.md ("How the code is laid out"): every module of
bundle/scripts sits on one layer and imports only modules on lower layers (lazy imports inside
functions included), so the graph has no cycles and a newcomer can read it bottom-up."""

import ast
import os

from conftest import BUNDLE_ROOT

SCRIPTS = os.path.join(BUNDLE_ROOT, "scripts")
DOCS = os.path.join(BUNDLE_ROOT, "docs", "README.md")

LAYERS = {
    # 0: foundations, no project imports
    "errors": 0, "summary": 0, "atomic": 0, "ct": 0, "networks": 0, "losses": 0, "optim": 0, "dicom_header": 0, "settings": 0,
    "baseline_networks": 0, "blind_spot": 0,
    # 1: file formats, metrics, devices, training machinery
    "dicom_io": 1, "phantom": 1, "metrics": 1, "device": 1, "handlers": 1, "baseline_training": 1,
    "benchmark_report": 1, "real_ct_sources": 1, "model_facts": 1,
    # 2: the training engine, writing DICOM, simulated data, validation metrics, reports
    "engine": 2, "dicom_pixels": 2, "dicom_write": 2, "distributed": 2, "simulate": 2, "validation": 2, "report": 2,
    # 3-6: volumes, BM3D, training data, inputs of a run, the benchmark's data, the Mayo split and layouts
    "volume_io": 3, "bm3d_baseline": 3, "fidelity": 3, "data": 4, "benchmark_data": 6, "inputs": 5, "mayo_split": 5, "real_ct": 5,
    "mayo": 6,
    # 6-8: the verbs
    "inference": 6, "demo": 6, "evaluate": 7, "benchmark_methods": 7, "benchmark": 8,
    # 8-9: entry points nothing imports
    "benchmark_infer": 8, "benchmark_train": 8, "cli": 9,
}


def is_module(name):
    return os.path.isfile(os.path.join(SCRIPTS, name + ".py"))


def project_imports(path):
    """Names of the bundle's script modules that ``path`` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1 and module:
                names.add(module.split(".")[0])
            elif node.level == 1:  # from . import x (a module, or a name of the package)
                names.update(alias.name for alias in node.names if is_module(alias.name))
            elif module.startswith("scripts."):
                names.add(module.split(".")[1])
            elif module == "scripts":
                names.update(alias.name for alias in node.names if is_module(alias.name))
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("scripts."))
    return names


def modules():
    return sorted(f[:-3] for f in os.listdir(SCRIPTS) if f.endswith(".py") and f != "__init__.py")


def test_every_module_has_a_layer_and_a_line_in_the_docs():
    docs = open(DOCS).read()
    section = docs[docs.index("## How the code is laid out"):]
    assert set(modules()) == set(LAYERS), "add the new module to LAYERS and to the docs' module map"
    missing = [m for m in modules() if f"`{m}.py`" not in section]
    assert not missing, f"not in the docs' module map: {missing}"


def test_no_module_imports_one_on_its_own_or_a_higher_layer():
    upward = []
    for name in modules():
        for imported in project_imports(os.path.join(SCRIPTS, name + ".py")):
            assert imported in LAYERS, f"{name} imports unknown module {imported}"
            if LAYERS[imported] >= LAYERS[name]:
                upward.append(f"{name} (layer {LAYERS[name]}) imports {imported} (layer {LAYERS[imported]})")
    assert not upward, upward


def test_the_rule_catches_an_upward_import(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from .evaluate import evaluate\n    from scripts import cli\n")
    assert project_imports(str(module)) == {"evaluate", "cli"}
