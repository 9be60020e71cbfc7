"""The import rule of docs/README.md, the project handbook ("How the code is laid out").

The bundle's ``scripts`` is a handful of packages on layers (core, then model and volumes, then data sets,
then tasks, then ``cli``); inside a package every module sits on a layer of its own. A module imports
only modules of lower packages, or of its own package on a lower layer (lazy imports inside functions
included), so the graph has no cycles and a newcomer can read it bottom-up. The benchmark lives outside
the bundle, in the repository's ``benchmark`` package: it may import the bundle, nothing in the bundle
(code or config) imports it."""

import ast
import os

from conftest import BUNDLE_ROOT, REPO_ROOT

SCRIPTS = os.path.join(BUNDLE_ROOT, "scripts")
BENCHMARK = os.path.join(REPO_ROOT, "benchmark")
DOCS = os.path.join(REPO_ROOT, "docs", "README.md")

PACKAGES = {"core": 0, "model": 1, "volumes": 1, "datasets": 2, "tasks": 3, "": 4}
MODULE_LAYERS = {
    "core": {"errors": 0, "atomic": 0, "ct": 0, "settings": 0, "summary": 0, "device": 1, "metrics": 1},
    "model": {"losses": 0, "optim": 0, "networks": 1, "objective": 1, "handlers": 2, "checkpoints": 2, "model_facts": 2,
              "engine": 2, "validation": 3, "distributed": 3},
    "volumes": {"dicom_header": 0, "dicom_series": 0, "dicom_io": 1, "dicom_pixels": 2, "dicom_write": 2,
                "volume_io": 3},
    "datasets": {"phantom_anatomy": 0, "phantom_patient": 0, "real_ct_sources": 0, "phantom": 1, "low_dose": 2,
                 "simulate": 3, "data": 4, "mayo_split": 5, "real_ct": 5, "mayo_layout": 6, "mayo": 7},
    "tasks": {"report_figures": 0, "evaluation_data": 0, "fidelity": 0, "inputs": 0, "pipeline": 0,
              "volume_denoiser": 0, "report": 1, "inference": 1, "demo": 1, "evaluate": 2},
    "": {"cli": 0},
}
BENCHMARK_LAYERS = {"baseline_networks": 0, "blind_spot": 0, "bm3d": 0, "report": 0, "data": 0,
                    "baseline_training": 1, "uidnet": 2, "methods": 3, "run": 4, "train_speed": 5, "infer_speed": 5,
                    "__main__": 5, "paper_budget": 6, "merge": 5}


def bundle_modules():
    """``package.module`` of every module under bundle/scripts (``cli`` for the top one)."""
    found = []
    for folder, _, files in os.walk(SCRIPTS):
        package = os.path.relpath(folder, SCRIPTS).replace(os.sep, ".").strip(".")
        found += [f"{package}.{f[:-3]}".strip(".") for f in files if f.endswith(".py") and f != "__init__.py"]
    return sorted(found)


def layer(module: str) -> tuple:
    package, _, name = module.rpartition(".")
    return PACKAGES[package], MODULE_LAYERS[package][name]


def _absolute(node: ast.ImportFrom, dotted: str) -> list:
    """The dotted names an import statement of the module ``dotted`` (``scripts.tasks.inference``) reaches."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = dotted.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def imported_names(path: str, dotted: str) -> set:
    """Every dotted name ``path`` (the module ``dotted``) imports, anywhere in the file, relative imports made
    absolute."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.ImportFrom):
            names.update(_absolute(node, dotted))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def project_imports(path: str, module: str) -> set:
    """The bundle modules (``package.module``) that ``path`` imports."""
    known = set(bundle_modules())
    return {name[len("scripts."):] for name in imported_names(path, "scripts." + module)
            if name.startswith("scripts.") and name[len("scripts."):] in known}


def test_every_module_has_a_layer_and_a_line_in_the_docs():
    docs = open(DOCS).read()
    section = docs[docs.index("## How the code is laid out"):]
    laid_out = {f"{p}.{m}".strip(".") for p, modules in MODULE_LAYERS.items() for m in modules}
    assert set(bundle_modules()) == laid_out, "add the new module to MODULE_LAYERS and to the docs' module map"
    missing = [m for m in bundle_modules() if f"`{m.replace('.', '/')}.py`" not in section]
    assert not missing, f"not in the docs' module map: {missing}"


def test_no_module_imports_one_on_its_own_or_a_higher_layer():
    upward = []
    for module in bundle_modules():
        path = os.path.join(SCRIPTS, module.replace(".", os.sep) + ".py")
        for imported in project_imports(path, module):
            if layer(imported) >= layer(module):
                upward.append(f"{module} {layer(module)} imports {imported} {layer(imported)}")
    assert not upward, upward


def test_the_bundle_never_imports_the_benchmark():
    offenders = []
    for module in bundle_modules():
        path = os.path.join(SCRIPTS, module.replace(".", os.sep) + ".py")
        offenders += [f"{module}: {n}" for n in imported_names(path, "scripts." + module)
                      if n.split(".")[0] == "benchmark"]
    configs = os.path.join(BUNDLE_ROOT, "configs")
    for name in os.listdir(configs):
        offenders += [name] if "benchmark." in open(os.path.join(configs, name)).read() else []
    assert not offenders, offenders


def test_benchmark_modules_import_only_lower_ones_of_their_package():
    upward = []
    for name in BENCHMARK_LAYERS:
        path = os.path.join(BENCHMARK, name + ".py")
        for imported in imported_names(path, "benchmark." + name):
            parts = imported.split(".")
            if parts[0] == "benchmark" and len(parts) > 1 and BENCHMARK_LAYERS.get(parts[1], -1) >= BENCHMARK_LAYERS[name]:
                upward.append(f"{name} imports {imported}")
    assert set(BENCHMARK_LAYERS) == {f[:-3] for f in os.listdir(BENCHMARK) if f.endswith(".py")} - {"__init__"}
    assert not upward, upward


def test_the_rule_catches_an_upward_import(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from .evaluate import evaluate\n    from scripts import cli\n"
                      "    from ..core.ct import HU_RANGE\n")
    assert project_imports(str(module), "tasks.inference") == {"tasks.evaluate", "cli", "core.ct"}
