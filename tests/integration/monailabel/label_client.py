"""Data and REST checks for the MONAI Label integration test (run.sh runs this in the Label venv).

    label_client.py prepare WORK   simulated datastore, upload inputs and in-process reference outputs
    label_client.py check WORK URL infer / bad-input / train requests against a running server
    label_client.py check_stock WORK URL   infer through monailabel's own sample app (monaibundle)

PYTHONPATH must hold the bundle copy (its ``scripts`` package): references come from the bundle's
own ``scripts.tasks.inference`` on the same model file the server uses.  Not named test_*.py: the unit
test run (``pytest tests``) must not collect it.
"""

import hashlib
import json
import os
import shutil
import sys
import time
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import requests

MODEL = "iscl_ct_denoising"
UNTRAINED = "iscl_ct_denoising_untrained"  # a bundle copy without models/model.pt
SIZE, SLICES, PIXEL_MM, SLICE_MM = 64, 4, 4.0, 3.0  # 64 px: the training patch size
N_PATIENTS = 4  # low-dose images with full-dose labels; val_split 0.25 holds one out
INFER_TIMEOUT_S, TRAIN_TIMEOUT_S = 300, 900
STOCK_IMAGE = "validation_256"  # 256² at 1.5 mm, like the training data: the stock app's denoising is checked on it


def fail(message: str) -> None:
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def check(condition: bool, message: str) -> None:
    if not condition:
        fail(message)
    print(f"ok: {message}", flush=True)


# ----------------------------------------------------------------------------------- prepare
def zip_folder(folder: str, zip_path: str) -> str:
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name in sorted(os.listdir(folder)):
            archive.write(os.path.join(folder, name), name)
    return zip_path


def prepare(work: str) -> None:
    from scripts.volumes.dicom_write import write_ct_series
    from scripts.tasks.inference import denoise_volume, load_denoiser
    from scripts.volumes.volume_io import read_volume
    from scripts.datasets.simulate import nifti_affine, simulated_patient
    from scripts.volumes.volume_io import write_hu_nifti

    studies, uploads, expected = (os.path.join(work, d) for d in ("studies", "uploads", "expected"))
    labels = os.path.join(studies, "labels", "final")  # MONAI Label local datastore: final labels
    for d in (labels, uploads, expected):
        os.makedirs(d, exist_ok=True)

    for i in range(N_PATIENTS):  # image = low dose (noisy), label = full dose (clean target), same name
        full, low = simulated_patient("test", i, n_slices=SLICES, size=SIZE, slice_spacing_mm=SLICE_MM,
                                      pixel_size_mm=PIXEL_MM)
        write_hu_nifti(low, os.path.join(studies, f"low_dose_{i:02d}.nii"), nifti_affine(PIXEL_MM, SLICE_MM))
        write_hu_nifti(full, os.path.join(labels, f"low_dose_{i:02d}.nii"), nifti_affine(PIXEL_MM, SLICE_MM))

    # the uploaded series is like the training data (256 x 256 at 1.5 mm): the denoising itself is checked on it
    full, low = simulated_patient("validation", 0, n_slices=2, size=256, slice_spacing_mm=SLICE_MM)
    np.save(os.path.join(expected, "ct_series_full_dose.npy"), full)
    series = os.path.join(work, "ct_series")
    write_ct_series(low, series, pixel_spacing=(1.5, 1.5), slice_spacing=SLICE_MM,
                    series_description="simulated low dose")
    zip_folder(series, os.path.join(uploads, "ct_series.zip"))

    mr = os.path.join(work, "mr_series")  # the same pixels labelled as MR: must be refused
    shutil.copytree(series, mr)
    for name in os.listdir(mr):
        ds = pydicom.dcmread(os.path.join(mr, name))
        ds.Modality = "MR"
        ds.save_as(os.path.join(mr, name))
    zip_folder(mr, os.path.join(uploads, "mr_series.zip"))

    write_hu_nifti(low[:2, :6, :6], os.path.join(uploads, "tiny_6x6.nii"), nifti_affine(PIXEL_MM, SLICE_MM))
    # the same slices as a datastore image without a label (training ignores it) for the stock app's check
    write_hu_nifti(low, os.path.join(studies, f"{STOCK_IMAGE}.nii"), nifti_affine(1.5, SLICE_MM))

    # references: the bundle's own inference on the same inputs and model file, in this process
    net = load_denoiser(os.path.join(work, "app", "model", MODEL, "models", "model.pt"), device="cpu")
    for name, path in (("low_dose_00", os.path.join(studies, "low_dose_00.nii")), ("ct_series", series),
                       (STOCK_IMAGE, os.path.join(studies, f"{STOCK_IMAGE}.nii"))):
        hu = denoise_volume(read_volume(path).hu, net, progress=False)  # (S, H, W)
        np.save(os.path.join(expected, f"{name}.npy"), hu)
    print(f"prepared {N_PATIENTS} image/label pairs, uploads and references in {work}")


# ----------------------------------------------------------------------------------- check
def infer(url: str, model: str, image: str | None = None, upload: str | None = None, params: dict | None = None):
    query = {"output": "image"}
    if image:
        query["image"] = image
    files = {"file": open(upload, "rb")} if upload else None
    try:
        return requests.post(f"{url}/infer/{model}", params=query, files=files,
                             data={"params": json.dumps(params or {})}, timeout=INFER_TIMEOUT_S)
    finally:
        if files:
            files["file"].close()


def result_image(response, work: str, name: str) -> nib.Nifti1Image:
    if response.status_code != 200:
        fail(f"infer {name}: HTTP {response.status_code}: {response.text[:500]}")
    gzipped = response.content[:2] == b"\x1f\x8b"  # the project's app answers .nii.gz; the stock app the input's .nii
    path = os.path.join(work, "results", f"{name}.nii.gz" if gzipped else f"{name}.nii")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(response.content)
    try:
        return nib.load(path)
    except Exception as e:
        fail(f"infer {name}: the returned file is not NIfTI ({e}); first bytes {response.content[:40]!r}")


def check_denoised(image: nib.Nifti1Image, input_hu: np.ndarray, reference_shw: np.ndarray, what: str) -> np.ndarray:
    """``input_hu``: (H, W, S) as the NIfTI input is laid out; ``reference_shw``: (S, H, W) from the bundle."""
    out = np.asarray(image.dataobj)
    check(image.get_data_dtype() == np.float32 and out.dtype == np.float32, f"{what}: float32 voxels")
    check(out.shape == input_hu.shape, f"{what}: shape {out.shape} equals the input's {input_hu.shape}")
    check(bool(np.isfinite(out).all()) and -1100 <= out.min() and out.max() <= 3200,
          f"{what}: HU range [{out.min():.0f}, {out.max():.0f}] plausible")
    change = float(np.abs(out - input_hu).mean())
    check(change > 1.0, f"{what}: differs from the low-dose input (mean |change| {change:.1f} HU)")
    deviation = float(np.abs(out - np.moveaxis(reference_shw, 0, -1)).max())
    check(deviation <= 1.0, f"{what}: equals the bundle's in-process denoise_volume within 1 HU (max {deviation:.4f})")
    return out


def check_refused(response, status: int, words: str, what: str) -> None:
    try:
        detail = str(response.json().get("detail"))
    except ValueError:
        detail = response.text
    check(response.status_code == status and words.lower() in detail.lower(),
          f"{what}: HTTP {response.status_code} (want {status}) {detail[:160]!r}")


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_train(url: str, work: str) -> None:
    model_file = os.path.join(work, "app", "model", MODEL, "models", "model.pt")
    before = sha256(model_file)
    request = {"max_epochs": 1, "epoch_length": 2, "batch_size": 2, "val_split": 0.25, "pretrained": True,
               "device": "cpu"}
    t0 = time.time()
    r = requests.post(f"{url}/train/{MODEL}", json=request, timeout=60)
    check(r.status_code == 200, f"train submitted: HTTP {r.status_code} {r.text[:200]}")
    status = {}
    while time.time() - t0 < TRAIN_TIMEOUT_S:
        status = requests.get(f"{url}/train/", timeout=30).json()
        if status.get("status") in ("DONE", "ERROR", "STOPPED"):
            break
        time.sleep(3)
    else:
        requests.delete(f"{url}/train/", timeout=30)
        fail(f"train did not finish within {TRAIN_TIMEOUT_S} s (stopped it); last status {status.get('status')}")
    details = "\n    ".join(status.get("details") or [])
    if status.get("status") != "DONE":
        fail(f"train task ended {status.get('status')}; last output:\n    {details}")
    print(f"train task output (last lines):\n    {details}")
    check(sha256(model_file) != before, "train: the bundle copy's models/model.pt was rewritten")
    print(f"TIMING train: {time.time() - t0:.1f} s")


def check_less_noisy(input_hu: np.ndarray, output_hu: np.ndarray, full_dose_hu: np.ndarray) -> None:
    """The shipped weights denoise: flat-ROI std of each output slice (S, H, W) below its input's."""
    from scripts.core.metrics import find_flat_roi, flat_roi_stats

    for k in range(full_dose_hu.shape[0]):
        roi = find_flat_roi(full_dose_hu[k])
        (noise_in, _), (noise_out, bias) = (flat_roi_stats(hu[k], full_dose_hu[k], roi) for hu in (input_hu, output_hu))
        check(noise_out < 0.9 * noise_in,
              f"slice {k}: denoised flat-ROI std {noise_out:.1f} HU < 0.9 x input's {noise_in:.1f} (bias {bias:+.1f} HU)")


def check_server(work: str, url: str) -> None:
    info = requests.get(f"{url}/info/", timeout=30).json()
    check(MODEL in info["models"] and MODEL in info["trainers"], f"/info lists {MODEL} for infer and train")
    check(UNTRAINED not in info["models"], f"/info does not offer {UNTRAINED} (no model file) for infer")

    studies, uploads, expected = (os.path.join(work, d) for d in ("studies", "uploads", "expected"))
    input_hu = nib.load(os.path.join(studies, "low_dose_00.nii")).get_fdata(dtype=np.float32)
    t0 = time.time()
    r = infer(url, MODEL, image="low_dose_00")
    print(f"TIMING infer (datastore NIfTI {input_hu.shape}): {time.time() - t0:.1f} s")
    image = result_image(r, work, "low_dose_00")
    check_denoised(image, input_hu, np.load(os.path.join(expected, "low_dose_00.npy")), "NIfTI from the datastore")
    check(np.allclose(image.affine, nib.load(os.path.join(studies, "low_dose_00.nii")).affine),
          "NIfTI result keeps the input's affine")
    full = nib.load(os.path.join(studies, "labels", "final", "low_dose_00.nii")).get_fdata(dtype=np.float32)
    denoised = np.asarray(image.dataobj)
    print(f"info: mean |HU - full dose|: low-dose input {np.abs(input_hu - full).mean():.1f}, "
          f"denoised {np.abs(denoised - full).mean():.1f} (weights quality, not checked)")

    from scripts.volumes.volume_io import read_volume

    series_hu = read_volume(os.path.join(work, "ct_series")).hu  # (S, H, W)
    t0 = time.time()
    r = infer(url, MODEL, upload=os.path.join(uploads, "ct_series.zip"))
    print(f"TIMING infer (uploaded DICOM series zip): {time.time() - t0:.1f} s")
    image = result_image(r, work, "ct_series")
    denoised = check_denoised(image, np.moveaxis(series_hu, 0, -1), np.load(os.path.join(expected, "ct_series.npy")),
                              "uploaded DICOM CT series")
    check_less_noisy(series_hu, np.moveaxis(denoised, -1, 0), np.load(os.path.join(expected, "ct_series_full_dose.npy")))

    check_refused(infer(url, MODEL, upload=os.path.join(uploads, "mr_series.zip")), 422, "modality MR is not CT",
                  "non-CT (MR) series refused")
    check_refused(infer(url, MODEL, upload=os.path.join(uploads, "tiny_6x6.nii")), 422, "at least 8x8",
                  "6x6 image refused")
    check_refused(infer(url, UNTRAINED, image="low_dose_00"), 503, "model file not found",
                  "bundle without models/model.pt refused")
    check_refused(infer(url, "no_such_model", image="low_dose_00"), 404, "no_such_model", "unknown model refused")
    check(requests.get(f"{url}/info/", timeout=30).status_code == 200, "server still serving after the errors")

    run_train(url, work)
    image = result_image(infer(url, MODEL, image="low_dose_00"), work, "low_dose_00_after_train")
    out = np.asarray(image.dataobj)
    check(out.shape == input_hu.shape and bool(np.isfinite(out).all()), "infer with the newly trained model.pt works")


def check_stock_app(work: str, url: str) -> None:
    """monailabel's own monaibundle app serving the bundle unchanged: its BundleInferTask runs inference.json's
    preprocessing, inferer and postprocessing and writes the prediction with its own writer."""
    info = requests.get(f"{url}/info/", timeout=30).json()
    check(MODEL in info["models"], f"stock app: /info lists {MODEL}")
    studies, expected = os.path.join(work, "studies"), os.path.join(work, "expected")
    t0 = time.time()
    image = result_image(infer(url, MODEL, image=STOCK_IMAGE, params={"device": "cpu"}), work, "stock_" + STOCK_IMAGE)
    print(f"TIMING stock app infer (datastore NIfTI 256 x 256 x 2): {time.time() - t0:.1f} s")
    check(image.get_data_dtype() == np.float32, f"stock app: float32 output ({image.get_data_dtype()})")
    source = nib.load(os.path.join(studies, f"{STOCK_IMAGE}.nii"))

    def ras(array_shw: np.ndarray) -> np.ndarray:  # (S, H, W) as written to the source NIfTI -> RAS+ voxels
        return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(np.moveaxis(array_shw, 0, -1), source.affine)).dataobj)

    # its writer keeps the pipeline's (slice, row, column) order with a matching affine: compare in RAS+
    canonical = nib.as_closest_canonical(image)
    out = np.asarray(canonical.dataobj, dtype=np.float32)
    check(out.shape == source.shape and np.allclose(canonical.affine, nib.as_closest_canonical(source).affine, atol=1e-3),
          f"stock app: output on the input's grid (shape {out.shape} in RAS+)")
    deviation = float(np.abs(out - ras(np.load(os.path.join(expected, f"{STOCK_IMAGE}.npy")))).max())
    check(deviation <= 1.0, f"stock app: equals the bundle's in-process denoise_volume within 1 HU (max {deviation:.4f})")
    low = np.asarray(nib.as_closest_canonical(source).dataobj, dtype=np.float32)
    full = ras(np.load(os.path.join(expected, "ct_series_full_dose.npy")))
    check_less_noisy(*(np.moveaxis(a, -1, 0) for a in (low, out, full)))  # slices along the superior axis


def main(argv) -> None:
    if len(argv) == 3 and argv[1] == "prepare":
        prepare(argv[2])
    elif len(argv) == 4 and argv[1] == "check":
        check_server(argv[2], argv[3].rstrip("/"))
    elif len(argv) == 4 and argv[1] == "check_stock":
        check_stock_app(argv[2], argv[3].rstrip("/"))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
