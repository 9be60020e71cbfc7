"""Command-line entry of the ISCL bundle: python bundle/scripts/cli.py COMMAND --help

Works from any working directory: the bundle root is put on sys.path so that the `scripts`
package imports the same way as from the bundle's JSON configs. Bad input ends with one
``error: ...`` line naming the file or value, exit status 2, and nothing written.
"""

import os
import sys

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if BUNDLE_ROOT not in sys.path:
    sys.path.insert(0, BUNDLE_ROOT)


def prepare_mayo(root, out, region="abdomen", thickness=None, split=None, seed=0):
    """Index a Mayo LDCT copy (TCIA or AAPM-2016 layout) and write a training datalist JSON to OUT."""
    from scripts.mayo import prepare_mayo as build_datalist

    build_datalist(root=root, out=out, region=region, thickness=thickness, split=split, seed=seed)
    return os.path.abspath(out)


def simulate(out_dir, i0=None, size=256, seed=0):
    """Build the simulated low-dose CT set (NIfTI volumes + datalist.json) in OUT_DIR; prints the datalist path."""
    from scripts.simulate import DEFAULT_I0, make_simulated_dataset

    make_simulated_dataset(out_dir, i0=DEFAULT_I0 if i0 is None else float(i0), size=int(size), seed=int(seed))
    return os.path.join(os.path.abspath(out_dir), "datalist.json")


def evaluate(datalist, out, model_path=None, region=None, split="test", device=None, mode="slice", gamma=0.5,
             max_figures=3):
    """Evaluate model.pt on the paired test split of DATALIST; writes metrics.csv, report.md, figures/ to OUT.

    Methods: low-dose input (floor), F alone, x - H(x) alone, ensemble (gamma). PSNR/SSIM in the region's
    paper and ldct-benchmark windows (data range 1), flat-ROI noise std and HU bias, residual NPS.
    --model_path defaults to bundle/models/model.pt; --region to the datalist's "region" (else abdomen);
    --device to cuda when available. Prints the path of report.md.
    """
    from scripts.evaluate import evaluate as run_evaluation

    results = run_evaluation(datalist, out, model_path=model_path, region=region, split=str(split), device=device,
                             mode=str(mode), gamma=float(gamma), max_figures=int(max_figures))
    return results["report"]


def denoise(input_path, output_dir, model_path=None, gamma=0.5, device=None, mode="slice", tile_size=256, overlap=0.25,
            amp=False, force=False, batch_size=1, overwrite=False):
    """Denoise a DICOM folder (every series in it), a NIfTI file or a datalist's test items into OUTPUT_DIR.

    Same as ``python -m monai.bundle run --config_file bundle/configs/inference.json --input_path IN
    --output_dir OUT``. MODEL_PATH defaults to the bundle's models/model.pt; mode "slice" (full slices)
    or "tiled" (TILE_SIZE tiles, OVERLAP, Gaussian blending); FORCE processes non-CT series. Prints the
    written NIfTI files / derived DICOM series folders.
    """
    from scripts.inference import denoise_path

    if model_path is None:
        model_path = os.path.join(BUNDLE_ROOT, "models", "model.pt")
    return denoise_path(
        input_path, output_dir, model_path, gamma=float(gamma), device=device, mode=mode, tile_size=int(tile_size),
        overlap=float(overlap), amp=bool(amp), force=bool(force), batch_size=int(batch_size), overwrite=bool(overwrite),
    )


def main(argv=None):
    import fire

    try:
        fire.Fire({"prepare_mayo": prepare_mayo, "simulate": simulate, "evaluate": evaluate, "denoise": denoise}, command=argv)
    except (ValueError, FileNotFoundError) as error:  # the project's data errors are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
