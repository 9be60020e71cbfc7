"""End-to-end check of the MONAI Deploy app (integrations/deploy_app) in the deploy venv; run by run.sh.

    python check_deploy.py --work <empty temp folder>

Makes a simulated low-dose CT series (256 x 256 at 1.5 mm, like the training data; and a non-CT and a
6x6 one), copies the bundle with its shipped weights (bundle/models/model.pt) into the work folder,
exports it as a TorchScript archive, runs the app on each (one process per run, as a user would), and
checks: the derived series (pydicom-readable, new Series/SOP UIDs, the input's geometry, HU within 1 of
the bundle's own ``scripts.tasks.inference`` output) is less noisy than its input (flat-ROI std against the
full dose), the NIfTI option; the SDK's stock MonaiBundleInferenceOperator (stock_operator_app.py) on the
archive's ``deploy`` config: uint8 in the model's window (the SDK's cast), equal to the bundle's pipeline
windowed alike, less noisy; and a clear logged error + non-zero exit + empty output folder for each
bad input.  Ends with "deploy: N passed, M failed"; exit status 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
BUNDLE = REPO / "bundle"
APP = REPO / "integrations" / "deploy_app" / "app.py"
STOCK_APP = Path(__file__).resolve().parent / "stock_operator_app.py"  # the SDK's operators only
sys.path.insert(0, str(BUNDLE))

import nibabel as nib  # noqa: E402
import pydicom  # noqa: E402

from scripts.volumes.dicom_io import scan_series  # noqa: E402
from scripts.volumes.dicom_pixels import read_series_hu  # noqa: E402
from scripts.volumes.dicom_write import write_ct_series  # noqa: E402
from scripts.tasks.inference import denoise_path, denoise_volume, load_denoiser  # noqa: E402
from scripts.tasks.pipeline import make_pipeline  # noqa: E402
from scripts.volumes.volume_io import read_volume  # noqa: E402
from scripts.core.metrics import find_flat_roi, flat_roi_stats  # noqa: E402
from scripts.datasets.simulate import simulated_patient  # noqa: E402

APP_TIMEOUT_S = 600  # a hang fails the check instead of blocking CI
HU_TOLERANCE = 1.0


class CheckFailed(AssertionError):
    pass


def expect(condition, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# ------------------------------------------------------------------------------------------- inputs
def make_inputs(work: Path) -> dict:
    """A low-dose CT series (256x256 at 1.5 mm, 2 slices, offset geometry) with its full dose, an MR
    one and a 6x6 CT one."""
    full, low = simulated_patient("test", 0, n_slices=2, size=256)
    hu = low  # (S, H, W)
    geometry = dict(pixel_spacing=(1.5, 1.5), slice_spacing=2.5, origin=(-190.0, -192.0, 40.0))
    series = {"ct": work / "in" / "ct", "mr": work / "in" / "mr", "tiny": work / "in" / "tiny",
              "ct_full_dose": full}
    write_ct_series(hu, series["ct"], patient_id="SIM-LD-0", series_description="simulated low dose", **geometry)
    write_ct_series(hu, series["mr"], patient_id="SIM-MR-0", series_description="not CT",
                    extra_tags={"Modality": "MR"}, **geometry)
    write_ct_series(hu[:, :6, :6], series["tiny"], patient_id="SIM-TINY-0", series_description="6x6", **geometry)
    return series


def copy_bundle(work: Path) -> Path:
    """The bundle's configs, scripts and shipped weights (models/model.pt and its facts), nothing else."""
    bundle = work / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("cache", "runs", "models", "__pycache__"))
    (bundle / "models").mkdir()
    for name in ("model.pt", "model.pt.json"):  # the weights and their facts (window, gamma)
        shutil.copy2(BUNDLE / "models" / name, bundle / "models" / name)
    return bundle


def export_torchscript(work: Path, bundle: Path) -> Path:
    """The bundle as the SDK loads it: a TorchScript archive with metadata.json, deploy.json (the stock
    operator's config: MONAI transforms only) and inference.json inside (last, so the export resolves
    network_def with inference.json's imports)."""
    from monai.bundle import ckpt_export

    model_ts = work / "model" / "model.ts"
    model_ts.parent.mkdir(parents=True)
    ckpt_export(net_id="network_def", filepath=str(model_ts), ckpt_file=str(bundle / "models" / "model.pt"),
                meta_file=str(bundle / "configs" / "metadata.json"),
                config_file=[str(bundle / "configs" / name) for name in ("deploy.json", "inference.json")],
                bundle_root=str(bundle))
    expect(model_ts.is_file(), f"{model_ts}: ckpt_export wrote nothing")
    return model_ts


# ------------------------------------------------------------------------------------------- runs
def run_app(work: Path, name: str, inputs: Path, model: Path, *extra: str, app: Path = APP) -> tuple[int, str, Path, float]:
    """Run ``app`` (app.py) in its own process; (exit status, log text, output folder, seconds)."""
    out = work / "out" / name
    log = work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLOSCAN_")}
    env["ISCL_BUNDLE_DIR"] = str(BUNDLE)
    cmd = [sys.executable, str(app), "-i", str(inputs), "-o", str(out), "-m", str(model), *extra]
    start = time.monotonic()
    try:
        with open(log, "w") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(work),
                                timeout=APP_TIMEOUT_S).returncode
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{name}: the app did not finish within {APP_TIMEOUT_S} s (hang?); log: {log}")
    return rc, log.read_text(errors="replace"), out, time.monotonic() - start


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def check_less_noisy(input_hu: np.ndarray, output_hu: np.ndarray, full_dose_hu: np.ndarray) -> None:
    """The shipped weights denoise: flat-ROI std of every output slice below its input's."""
    for k in range(full_dose_hu.shape[0]):
        roi = find_flat_roi(full_dose_hu[k])
        (noise_in, _), (noise_out, bias_out) = (flat_roi_stats(hu[k], full_dose_hu[k], roi) for hu in (input_hu, output_hu))
        expect(noise_out < 0.9 * noise_in, f"slice {k}: flat-ROI std {noise_out:.1f} HU not below 0.9 x input's {noise_in:.1f}")
        print(f"  slice {k}: flat-ROI std {noise_in:.1f} -> {noise_out:.1f} HU, bias {bias_out:+.1f} HU")


def check_good_run(work: Path, ct: Path, model: Path, reference_hu: np.ndarray, bundle_dicom: Path,
                   full_dose_hu: np.ndarray):
    rc, log, out, seconds = run_app(work, "ct", ct, model, "--nifti")
    print(f"  app run (model.ts, 2x256x256 CT -> DICOM + NIfTI): {seconds:.1f} s")
    expect(rc == 0, f"app exited {rc} on a valid CT series; log tail:\n{log[-3000:]}")
    expect("ISCL denoising done" in log, "the app log has no 'ISCL denoising done' line")

    source = scan_series(ct)[0]
    name = f"{source.series_uid}_denoised"
    expect(sorted(os.listdir(out)) == [name, name + ".nii.gz"], f"unexpected output folder content: {os.listdir(out)}")

    # the derived series, read file by file with plain pydicom
    files = sorted((out / name).iterdir())
    expect(len(files) == source.num_slices, f"{len(files)} output files for {source.num_slices} input slices")
    datasets = [pydicom.dcmread(f) for f in files]
    for ds in datasets:
        ds.pixel_array  # decodable
        expect(ds.Modality == "CT" and "DERIVED" in ds.ImageType, f"{ds.filename}: Modality/ImageType {ds.Modality}/{ds.ImageType}")
        expect(ds.StudyInstanceUID == source.study_uid and ds.FrameOfReferenceUID == source.frame_of_reference_uid,
               f"{ds.filename}: study / frame of reference not kept")
    series_uids = {ds.SeriesInstanceUID for ds in datasets}
    expect(len(series_uids) == 1 and source.series_uid not in series_uids, f"SeriesInstanceUID not new: {series_uids}")
    sops = {ds.SOPInstanceUID for ds in datasets}
    expect(len(sops) == len(datasets) and not sops & set(source.sop_instance_uids), "SOPInstanceUIDs not new and unique")

    derived = scan_series(out / name)[0]
    expect((derived.rows, derived.cols) == (source.rows, source.cols), f"size {derived.rows}x{derived.cols}")
    expect(np.allclose(derived.pixel_spacing, source.pixel_spacing, atol=1e-6), f"PixelSpacing {derived.pixel_spacing}")
    expect(np.allclose(derived.orientation, source.orientation, atol=1e-6), f"orientation {derived.orientation}")
    expect(np.allclose(derived.image_positions, source.image_positions, atol=1e-4), "ImagePositionPatient changed")
    expect(list(derived.positions) == sorted(derived.positions), "slices out of order")

    app_hu, _ = read_series_hu(derived)
    diff = float(np.abs(app_hu - reference_hu).max())
    expect(diff <= HU_TOLERANCE, f"DICOM HU differ from scripts.tasks.inference.denoise_volume by up to {diff:.3f} HU")
    bundle_hu, _ = read_series_hu(scan_series(bundle_dicom)[0])
    diff_bundle = float(np.abs(app_hu - bundle_hu).max())
    expect(diff_bundle <= HU_TOLERANCE, f"DICOM HU differ from scripts.tasks.inference.denoise_path by {diff_bundle:.3f} HU")
    print(f"  derived series: {len(files)} files, max |HU - bundle| = {diff:.3f} (denoise_volume), "
          f"{diff_bundle:.3f} (denoise_path DICOM)")
    check_less_noisy(read_series_hu(scan_series(ct)[0])[0], app_hu, full_dose_hu)

    # the NIfTI option: float32 HU, [row, col, slice], RAS affine placing each slice at its DICOM position
    image = nib.load(out / (name + ".nii.gz"))
    data = np.asarray(image.dataobj)
    expect(data.dtype == np.float32 and data.shape == (source.rows, source.cols, source.num_slices),
           f"NIfTI {data.dtype} {data.shape}")
    nifti_diff = float(np.abs(np.moveaxis(data, -1, 0) - reference_hu).max())
    expect(nifti_diff <= 1e-2, f"NIfTI HU differ from denoise_volume by {nifti_diff:.4f}")
    for k, ipp in enumerate(source.image_positions):
        ras = image.affine @ np.array([0.0, 0.0, k, 1.0])
        expect(np.allclose(ras[:3], np.array(ipp) * [-1, -1, 1], atol=1e-3), f"NIfTI affine misplaces slice {k}")
    expect(np.allclose(read_volume(out / (name + ".nii.gz")).hu, app_hu, atol=0.5 + 1e-3),
           "scripts.volumes.volume_io.read_volume does not read the NIfTI back as the DICOM series")
    print(f"  NIfTI: {data.shape} float32, max |HU - bundle| = {nifti_diff:.5f}")


def check_bundle_folder_run(work: Path, ct: Path, bundle: Path, reference_hu: np.ndarray) -> None:
    """``-m bundle/``: the SDK's directory-bundle mode with the bundle's models/model.pt, no export step."""
    rc, log, out, _ = run_app(work, "bundle_folder", ct, bundle)
    expect(rc == 0, f"app exited {rc} with -m {bundle}; log tail:\n{log[-3000:]}")
    (derived,) = [p for p in out.iterdir()]
    app_hu, _ = read_series_hu(scan_series(derived)[0])
    diff = float(np.abs(app_hu - reference_hu).max())
    expect(diff <= HU_TOLERANCE, f"-m bundle folder: HU differ from denoise_volume by up to {diff:.3f} HU")
    print(f"  -m {bundle}: max |HU - bundle| = {diff:.3f}")


def window_levels(hu: np.ndarray, hu_range) -> np.ndarray:
    """HU -> the deploy config's 8-bit levels: the model's window onto [0, 255], clipped, rounded."""
    low, high = hu_range
    return np.round(np.clip((hu - low) / (high - low) * 255.0, 0.0, 255.0))


def levels_to_hu(levels: np.ndarray, hu_range) -> np.ndarray:
    low, high = hu_range
    return low + levels.astype(np.float32) / 255.0 * (high - low)


def check_stock_operator_run(work: Path, ct: Path, model: Path, bundle: Path, full_dose_hu: np.ndarray) -> None:
    """The SDK's own MonaiBundleInferenceOperator on the archive's ``deploy`` config: it emits the model's window
    as uint8 (its cast of image outputs), equal to the bundle's pipeline windowed alike, and less noisy."""
    rc, log, out, seconds = run_app(work, "stock_operator", ct, model, app=STOCK_APP)
    expect(rc == 0, f"the stock-operator app exited {rc}; log tail:\n{log[-3000:]}")
    pred = np.load(out / "pred.npy")
    input_hu = read_volume(ct).hu
    expect(pred.dtype == np.uint8 and pred.shape == input_hu.shape, f"stock output {pred.dtype} {pred.shape}")
    network = load_denoiser(bundle / "models" / "model.pt", device="cpu")
    hu_range = tuple(json.loads((bundle / "models" / "model.pt.json").read_text())["hu_range"])
    bundle_hu = make_pipeline(hu_range=hu_range, outside_margin=None).denoise(input_hu, network)
    diff = float(np.abs(pred.astype(np.float64) - window_levels(bundle_hu, hu_range)).max())
    expect(diff <= 1.0, f"stock operator output differs from the bundle's pipeline by up to {diff} levels")
    print(f"  stock operator: {pred.dtype} {pred.shape} in {seconds:.1f} s, max |level - bundle| = {diff:.0f}")
    check_less_noisy(levels_to_hu(window_levels(input_hu, hu_range), hu_range), levels_to_hu(pred, hu_range),
                     full_dose_hu)


def check_bad_run(work: Path, name: str, inputs: Path, model: Path, expected: str) -> None:
    rc, log, out, _ = run_app(work, name, inputs, model)
    errors = [line for line in log.splitlines() if "ISCL denoising failed" in line]
    expect(rc != 0, f"{name}: the app exited 0; log tail:\n{log[-2000:]}")
    expect(errors and expected in errors[0], f"{name}: no logged error containing {expected!r}; log tail:\n{log[-2000:]}")
    expect("Traceback" not in log, f"{name}: a traceback instead of a clear error; log tail:\n{log[-2000:]}")
    expect(listing(out) == [], f"{name}: output folder not empty: {listing(out)}")
    print(f"  {name}: exit {rc}, logged: {errors[0].split('ISCL denoising failed: ', 1)[-1][:160]}")


# ------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path, help="an empty scratch folder")
    work = parser.parse_args().work.resolve()
    timings: dict[str, float] = {}
    passed, failed = [], []

    def step(name, fn, *args):
        print(f"[deploy] {name}", flush=True)
        start = time.monotonic()
        try:
            result = fn(*args)
            passed.append(name)
            return result
        except Exception as e:
            failed.append(name)
            print(f"FAILED {name}: {e}" if isinstance(e, CheckFailed) else traceback.format_exc(), flush=True)
            return None
        finally:
            timings.setdefault(name, time.monotonic() - start)

    series = step("simulated DICOM inputs", make_inputs, work)
    bundle = step("bundle copy with the shipped weights", copy_bundle, work)
    model = step("TorchScript export (ckpt_export)", export_torchscript, work, bundle) if bundle else None
    if series is None or model is None:
        print(f"deploy: {len(passed)} passed, {len(failed) or 1} failed")
        return 1

    def reference():  # the bundle's own in-process inference on the same series
        network = load_denoiser(bundle / "models" / "model.pt", device="cpu")
        hu = denoise_volume(read_volume(series["ct"]).hu, network, progress=False)
        written = denoise_path(series["ct"], work / "bundle_out", bundle / "models" / "model.pt", device="cpu",
                               progress=False)
        return hu, Path(written[0])

    ref = step("bundle reference (scripts.tasks.inference)", reference)
    if ref is not None:
        step("app (-m model.ts) on a CT series: derived DICOM + NIfTI, less noisy", check_good_run, work, series["ct"],
             model, ref[0], ref[1], series["ct_full_dose"])
        step("app (-m bundle folder) on a CT series", check_bundle_folder_run, work, series["ct"], bundle, ref[0])
    step("stock MonaiBundleInferenceOperator (-m model.ts, config deploy): 8-bit window, less noisy",
         check_stock_operator_run, work, series["ct"], model, bundle, series["ct_full_dose"])
    step("bad input: non-CT series", check_bad_run, work, "non_ct", series["mr"], model, "no CT series")
    step("bad input: missing model file", check_bad_run, work, "missing_model", series["ct"],
         work / "model" / "missing.ts", "model file not found")
    step("bad input: 6x6 in-plane", check_bad_run, work, "tiny", series["tiny"], model, "at least 8x8")

    print("[deploy] timings (s): " + "; ".join(f"{k}: {v:.1f}" for k, v in timings.items()))
    for name in failed:
        print(f"[deploy] FAILED: {name}")
    print(f"deploy: {len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
