"""Simulated CT data for tests and the default demo (no downloads needed).

Three parts, all deterministic given their seeds:

``phantom``
    A procedural axial abdomen/pelvis slice in HU: air (-1000) outside an irregular
    elliptical body outline, subcutaneous fat (~ -100), abdominal wall and paraspinal
    muscle (~ 50), visceral soft tissue (~ 40) with visceral-fat blobs, liver (55..70),
    spleen (45..55), kidneys (25..35), aorta/IVC (contrast phase per patient, 40..200),
    bowel loops with air / fluid / air-fluid levels, a vertebra (cortical shell
    700..1000, cancellous 150..300, canal, processes), ribs (upper-abdomen patients)
    or iliac wings + bladder (pelvis patients, ~1/3 of seeds), 1..4 low-contrast
    lesions (+-10..30 HU against their host organ) and a smooth correlated texture of
    a few HU.  Edges carry partial-volume blur (2x2 supersampling).  The seed is the
    "patient": it fixes body size/shape/pose, organ layout, HU levels, lesions;
    ``z_mm`` moves through the patient (organs are ellipsoids, so their cross-sections
    and lesions change from slice to slice).
    The field of view is ``DEFAULT_FOV_MM = 384`` mm whatever the matrix size, i.e. the
    default pixel size is 384 / size mm: **1.5 mm at 256 x 256** (0.75 mm at 512).

``simulate_low_dose``
    Projection-domain low-dose simulation (parallel beam):
    HU -> mu = mu_water * (1 + HU/1000) (mu_water = 0.0192 / mm, ~70 keV effective),
    line integrals p by ``skimage.transform.radon`` (circle=False, so the whole
    square fits), counts N ~ Poisson(I0 * exp(-p)), p' = -log((N + 0.5) / I0) (the
    +0.5 also cancels the first-order Jensen bias of the log; zero counts are *not*
    clamped to 1), noise = FBP_hann(p' - p) (FBP is linear, so this equals
    FBP(p') - FBP(p)), converted to HU and added to the clean slice.  The noise is
    streaky and spatially correlated like real LDCT.

    Default I0 = ``DEFAULT_I0`` = 2.5e4 photons per ray per view, with
    ``DEFAULT_N_ANGLES`` = 360 views over 180 degrees, 256 x 256 at 1.5 mm pixels.
    Measured (noise = simulated - clean, in the flat ROI of ``soft_tissue_roi``: liver,
    or visceral soft tissue for pelvis patients, eroded by 6 px, 1350..4400 px), phantom
    seeds 0-7 with rng = seed: **soft-tissue noise std 25.7..36.3 HU (mean 30.8;
    seed 0: 26.4 HU), mean bias -0.6..+1.0 HU** -- the Mayo quarter-dose level
    (~25-40 HU in the abdomen with a standard kernel).  Adjacent-pixel noise
    correlation ~0.75 (horizontal) / ~0.47 (vertical) on a flat body, vs ~0 for
    pixel-independent noise.  Noise std scales as 1 / sqrt(I0) (4x dose -> half the
    std) and, at fixed I0, also depends on pixel size (64 x 64 at 6 mm is much quieter),
    number of views and patient size (larger patients -> fewer counts -> more noise),
    as on a real scanner: I0 is the dose knob to match a scanner.  At very low dose the
    "+0.5" log keeps the mean HU (I0 = 1e3: bias ~1 HU) where clamping zero counts to 1
    shifts it by ~+25 HU.
    Runtime of one 256 x 256 slice on the 2-core development machine: ~0.75 s idle
    (radon ~0.6 s, FBP ~0.15 s), 1.0..1.3 s with the other core busy.

``make_simulated_dataset``
    The embedded default data set, written as float32 NIfTI volumes in HU with an
    unpaired split exactly like the real protocol (see ``make_simulated_dataset``).

Extra option (never the only one): ``add_gaussian_noise`` (pixel-independent noise).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from scipy import ndimage

from .atomic import atomic_path, staging_dir, write_json
from .metrics import flat_roi_stats

__all__ = [
    "DEFAULT_FOV_MM",
    "DEFAULT_I0",
    "DEFAULT_N_ANGLES",
    "MU_WATER_PER_MM",
    "LABELS",
    "DATASET_FORMAT_VERSION",
    "default_pixel_size",
    "phantom",
    "uniform_phantom",
    "simulate_low_dose",
    "counts_to_line_integrals",
    "add_gaussian_noise",
    "noise_std_in_roi",
    "soft_tissue_roi",
    "patient_seed",
    "nifti_affine",
    "write_nifti",
    "simulated_patient",
    "make_simulated_dataset",
]

DEFAULT_FOV_MM = 384.0
DEFAULT_I0 = 2.5e4
DEFAULT_N_ANGLES = 360
MU_WATER_PER_MM = 0.0192  # linear attenuation of water at ~70 keV effective energy
DATASET_FORMAT_VERSION = 1

#: tissue labels of ``phantom(..., return_labels=True)``
LABELS = {
    "air": 0,
    "fat": 1,
    "soft_tissue": 2,
    "muscle": 3,
    "liver": 4,
    "spleen": 5,
    "kidney": 6,
    "vessel": 7,
    "bone": 8,
    "marrow": 9,
    "bowel_air": 10,
    "fluid": 11,
    "lesion": 12,
}

RngLike = Union[None, int, np.random.Generator, np.random.SeedSequence]


def default_pixel_size(size: int) -> float:
    """Default pixel size in mm: the 384 mm field of view over ``size`` pixels (1.5 mm at 256)."""
    return DEFAULT_FOV_MM / float(size)


# ----------------------------------------------------------------------------- phantom
class _Canvas:
    """HU + label image on a supersampled grid in mm (x to the right = patient left,
    y downwards = posterior), painted in order (later shapes overwrite earlier ones)."""

    def __init__(self, size: int, pixel_size_mm: float, ss: int = 2):
        self.size, self.ss = size, ss
        n = size * ss
        step = pixel_size_mm / ss
        coords = (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * step
        self.coords = coords
        self.X, self.Y = np.meshgrid(coords, coords)  # X varies along columns, Y along rows
        self.hu = np.full((n, n), -1000.0)
        self.lab = np.zeros((n, n), dtype=np.uint8)

    def ellipse(self, cx, cy, ax, ay, angle_deg=0.0, within=None):
        """Boolean mask of a rotated ellipse (centre, semi-axes in mm), evaluated on its bounding box only."""
        t = math.radians(angle_deg)
        c, s = math.cos(t), math.sin(t)
        hx, hy = math.hypot(ax * c, ay * s), math.hypot(ax * s, ay * c)  # half-extents of the bounding box
        n = self.X.shape[0]
        c0, c1 = np.searchsorted(self.coords, [cx - hx, cx + hx])
        r0, r1 = np.searchsorted(self.coords, [cy - hy, cy + hy])
        m = np.zeros((n, n), dtype=bool)
        if c1 <= c0 or r1 <= r0:
            return m
        dx = self.coords[None, c0:c1] - cx
        dy = self.coords[r0:r1, None] - cy
        xr = c * dx + s * dy
        yr = -s * dx + c * dy
        m[r0:r1, c0:c1] = (xr / ax) ** 2 + (yr / ay) ** 2 <= 1.0
        return m if within is None else (m & within)

    def paint(self, mask, hu, label):
        self.hu[mask] = hu
        self.lab[mask] = LABELS[label]

    def shell(self, cx, cy, ax, ay, angle_deg, thick, hu_shell, hu_core, lab_shell, lab_core, within=None):
        """Bone-like ellipse: cortical shell of thickness ``thick`` mm around a core."""
        outer = self.ellipse(cx, cy, ax, ay, angle_deg, within)
        inner = self.ellipse(cx, cy, max(ax - thick, 0.5), max(ay - thick, 0.5), angle_deg, within)
        self.paint(outer, hu_shell, lab_shell)
        self.paint(inner, hu_core, lab_core)
        return outer

    def result(self):
        ss = self.ss
        n = self.size
        hu = self.hu.reshape(n, ss, n, ss).mean(axis=(1, 3))  # partial-volume average
        lab = self.lab[ss // 2 :: ss, ss // 2 :: ss]
        return hu, lab


def _draw_patient(seed: int) -> dict:
    """All per-patient random parameters (sizes in mm, HU levels), from the seed only."""
    r = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    u = r.uniform
    P: dict = {}
    P["kind"] = "pelvis" if u() < 0.35 else "abdomen"
    a, b = u(135, 175), u(95, 128)
    P["body"] = dict(
        a=a, b=b, angle=u(-6, 6), cx=u(-10, 10), cy=u(-8, 8),
        harm=[(k, u(0, 0.035) / (k - 1), u(0, 2 * np.pi)) for k in (2, 3, 4, 5)],
    )
    P["fat_t"] = u(7, 32)  # subcutaneous fat thickness
    P["fat_hu"] = u(-120, -85)
    P["wall_t"] = u(6, 14)  # abdominal-wall muscle
    P["muscle_hu"] = u(45, 60)
    P["tissue_hu"] = u(30, 45)
    P["texture_hu"] = u(3, 6)
    P["texture_mm"] = u(1.0, 2.5)
    P["vessel_hu"] = u(40, 200)  # contrast phase
    P["vfat"] = [(u(-0.55, 0.55), u(-0.6, 0.5), u(10, 28), u(8, 20), u(0, 180), u(-115, -80))
                 for _ in range(r.integers(3, 9))]
    P["bowel"] = [dict(x=u(-0.55, 0.55), y=u(-0.65, 0.15), rx=u(8, 22), ry=u(7, 18), ang=u(0, 180),
                       content=r.choice(["air", "fluid", "level", "feces"]), fluid_hu=u(0, 25),
                       zc=u(-30, 30), cz=u(25, 80))
                  for _ in range(r.integers(4, 10) + (4 if P["kind"] == "pelvis" else 0))]
    # vertebra (position relative to the posterior body surface)
    P["vert"] = dict(x=u(-4, 4), r=u(16, 22) * (1.2 if P["kind"] == "pelvis" else 1.0), depth=u(48, 62),
                     cort=u(700, 1000), canc=u(150, 300), arch=u(500, 800))
    if P["kind"] == "abdomen":
        P["liver"] = dict(x=u(-0.48, -0.36), y=u(-0.12, 0.02), ax=u(0.36, 0.46), ay=u(0.5, 0.66), ang=u(-25, 25),
                          hu=u(55, 70), zc=u(-30, 30), cz=u(70, 110))
        P["spleen"] = dict(x=u(0.5, 0.62), y=u(0.15, 0.32), ax=u(0.12, 0.18), ay=u(0.22, 0.32), ang=u(20, 55),
                           hu=u(45, 55), zc=u(-25, 25), cz=u(35, 60))
        P["kidneys"] = [dict(x=sgn * u(0.27, 0.36), y=u(0.38, 0.5), ax=u(0.09, 0.12), ay=u(0.14, 0.19),
                             ang=sgn * u(10, 35), hu=u(25, 35), zc=u(-25, 25), cz=u(35, 55)) for sgn in (-1, 1)]
        P["stomach"] = (dict(x=u(0.2, 0.4), y=u(-0.45, -0.25), ax=u(0.14, 0.22), ay=u(0.14, 0.22), ang=u(0, 180),
                             zc=u(-20, 20), cz=u(40, 70), level=u(-0.3, 0.4)) if u() < 0.6 else None)
        n_ribs = int(r.integers(5, 11))
        ang = np.concatenate([u(-160, -25, n_ribs // 2), u(25, 155, n_ribs - n_ribs // 2)])
        P["ribs"] = [dict(theta=t, rx=u(5, 8), ry=u(3.5, 5), cort=u(600, 1000), canc=u(150, 300)) for t in ang]
    else:
        P["iliac"] = [dict(sgn=sgn, x=u(0.5, 0.62), y=u(0.22, 0.42), len=u(34, 46), thick=u(6, 10), ang=u(25, 45),
                           cort=u(700, 1000), canc=u(150, 300)) for sgn in (-1, 1)]
        P["bladder"] = (dict(x=u(-0.08, 0.08), y=u(-0.45, -0.2), ax=u(0.18, 0.3), ay=u(0.18, 0.3), hu=u(0, 15),
                             zc=u(-20, 20), cz=u(30, 60)) if u() < 0.7 else None)
    hosts = ["liver", "liver", "spleen", "kidney"] if P["kind"] == "abdomen" else ["soft_tissue"]
    P["lesions"] = [dict(host=str(r.choice(hosts)), fx=u(-0.55, 0.55), fy=u(-0.55, 0.55), rad=u(4, 15),
                         dhu=float(r.choice([-1, 1]) * u(10, 30)), zc=u(-8, 8))
                    for _ in range(r.integers(1, 5))]
    return P


def _zscale(z, zc, cz):
    """Cross-section scale of an ellipsoid (centre zc, half-length cz) cut at height z."""
    q = 1.0 - ((z - zc) / cz) ** 2
    return math.sqrt(q) if q > 0.05 else 0.0


def phantom(size: int = 256, seed: int = 0, pixel_size_mm: Optional[float] = None, z_mm: float = 0.0,
            return_labels: bool = False):
    """Procedural abdomen/pelvis CT slice in HU, float32 (size, size).

    ``seed`` is the patient, ``z_mm`` the table position within that patient.
    ``pixel_size_mm`` defaults to 384 mm / size (1.5 mm at 256), so any matrix size
    shows the same anatomy.  With ``return_labels`` also returns a uint8 label map
    (values in ``LABELS``), e.g. to pick flat soft-tissue ROIs.
    """
    px = default_pixel_size(size) if pixel_size_mm is None else float(pixel_size_mm)
    P = _draw_patient(seed)
    z = float(z_mm)
    cv = _Canvas(size, px)
    B = P["body"]
    a, b = B["a"], B["b"]

    # body outline: ellipse with a few low-order harmonics, rotated and shifted
    t = math.radians(B["angle"])
    dx, dy = cv.X - B["cx"], cv.Y - B["cy"]
    xr = math.cos(t) * dx + math.sin(t) * dy
    yr = -math.sin(t) * dx + math.cos(t) * dy
    theta = np.arctan2(yr / b, xr / a)
    rmod = 1.0 + sum(amp * np.cos(k * theta + ph) for k, amp, ph in B["harm"])

    def inside(shrink_mm):
        return np.hypot(xr / max(a - shrink_mm, 1), yr / max(b - shrink_mm, 1)) <= rmod

    body = inside(0.0)
    wall = inside(P["fat_t"])
    cavity = inside(P["fat_t"] + P["wall_t"])
    cv.paint(body, P["fat_hu"], "fat")
    cv.paint(wall, P["muscle_hu"], "muscle")
    cv.paint(cavity, P["tissue_hu"], "soft_tissue")

    # body-frame helpers: normalised (fx, fy) in [-1, 1] of the body -> image mm
    def to_img(fx, fy):
        x, y = fx * a, fy * b
        return (B["cx"] + math.cos(t) * x - math.sin(t) * y, B["cy"] + math.sin(t) * x + math.cos(t) * y)

    for fx, fy, rx, ry, ang, hu in P["vfat"]:
        cx, cy = to_img(fx, fy)
        cv.paint(cv.ellipse(cx, cy, rx, ry, ang + B["angle"], within=cavity), hu, "fat")

    # bowel loops: 3 mm wall, content air / fluid / air-fluid level / feces (mottled)
    for bw in P["bowel"]:
        s = _zscale(z, bw["zc"], bw["cz"])
        if s == 0.0:
            continue
        cx, cy = to_img(bw["x"], bw["y"])
        rx, ry = bw["rx"] * s, bw["ry"] * s
        outer = cv.ellipse(cx, cy, rx, ry, bw["ang"], within=cavity)
        cv.paint(outer, P["tissue_hu"] + 5, "soft_tissue")
        lumen = cv.ellipse(cx, cy, max(rx - 3, 1), max(ry - 3, 1), bw["ang"], within=cavity)
        if bw["content"] == "air":
            cv.paint(lumen, -1000.0, "bowel_air")
        elif bw["content"] == "fluid":
            cv.paint(lumen, bw["fluid_hu"], "fluid")
        elif bw["content"] == "level":  # air anterior (up), fluid posterior
            cv.paint(lumen & (cv.Y < cy), -1000.0, "bowel_air")
            cv.paint(lumen & (cv.Y >= cy), bw["fluid_hu"], "fluid")
        else:  # feces: mottled gas in soft material
            cv.paint(lumen, -80.0, "fluid")
            g = np.random.default_rng(np.random.SeedSequence([int(seed), 77, int(round(z * 10)) % 2**31]))
            for _ in range(4):
                gx, gy = cx + g.uniform(-0.5, 0.5) * rx, cy + g.uniform(-0.5, 0.5) * ry
                cv.paint(cv.ellipse(gx, gy, g.uniform(1.5, 4), g.uniform(1.5, 4), within=lumen), -900.0, "bowel_air")

    organ_masks: Dict[str, np.ndarray] = {}

    def organ(name, o, label, hu=None):
        s = _zscale(z, o["zc"], o["cz"])
        if s == 0.0:
            return None
        cx, cy = to_img(o["x"], o["y"])
        m = cv.ellipse(cx, cy, o["ax"] * a * s, o["ay"] * b * s, o.get("ang", 0.0) + B["angle"], within=cavity)
        cv.paint(m, o["hu"] if hu is None else hu, label)
        organ_masks[name] = m | organ_masks.get(name, np.zeros_like(m))
        return m

    if P["kind"] == "abdomen":
        organ("liver", P["liver"], "liver")
        organ("spleen", P["spleen"], "spleen")
        for k in P["kidneys"]:
            organ("kidney", k, "kidney")
        st = P["stomach"]
        if st is not None:
            m = organ("stomach", st, "soft_tissue", hu=P["tissue_hu"] + 5)
            if m is not None:
                cx, cy = to_img(st["x"], st["y"])
                s = _zscale(z, st["zc"], st["cz"])
                lum = cv.ellipse(cx, cy, max(st["ax"] * a * s - 4, 1), max(st["ay"] * b * s - 4, 1),
                                 st["ang"] + B["angle"], within=cavity)
                lvl = cy + st["level"] * st["ay"] * b * s
                cv.paint(lum & (cv.Y < lvl), -1000.0, "bowel_air")
                cv.paint(lum & (cv.Y >= lvl), 15.0, "fluid")
    else:
        if P["bladder"] is not None:
            organ("bladder", P["bladder"], "fluid")

    # spine: vertebral body, canal, neural arch, processes; paraspinal muscles first
    V = P["vert"]
    post = to_img(V["x"] / a, 1.0)  # posterior body surface below the spine
    vx, vy = post[0], post[1] - P["fat_t"] - V["depth"]
    rv = V["r"]
    canal_y = vy + rv + 9.0
    for sgn in (-1, 1):
        cv.paint(cv.ellipse(vx + sgn * 30, canal_y + 12, 22, 17, sgn * 10, within=wall), P["muscle_hu"], "muscle")
    if P["kind"] == "abdomen":  # psoas muscles beside the vertebral body
        for sgn in (-1, 1):
            cv.paint(cv.ellipse(vx + sgn * (rv + 12), vy, 11, 14, within=cavity), P["muscle_hu"], "muscle")
    cv.shell(vx, vy, rv, rv * 0.9, 0.0, 2.5, V["cort"], V["canc"], "bone", "marrow", within=body)
    cv.paint(cv.ellipse(vx, canal_y, 12.0, 11.0, within=body), V["arch"], "bone")
    cv.paint(cv.ellipse(vx, canal_y + 17, 4.0, 12.0, within=body), V["arch"], "bone")  # spinous process
    for sgn in (-1, 1):
        cv.paint(cv.ellipse(vx + sgn * 20, canal_y - 2, 13.0, 4.0, sgn * 10, within=body), V["arch"], "bone")
    cv.paint(cv.ellipse(vx, canal_y, 7.5, 7.0, within=body), 20.0, "fluid")  # canal: CSF / cord

    # great vessels in front of the spine
    cv.paint(cv.ellipse(vx + 10, vy - rv - 13, 11, 11, within=cavity), P["vessel_hu"], "vessel")
    cv.paint(cv.ellipse(vx - 24, vy - rv - 10, 12, 9, 20, within=cavity), 0.8 * P["vessel_hu"] + 8, "vessel")

    if P["kind"] == "abdomen":  # ribs in the abdominal wall / fat layer; oblique -> drift with z
        ra, rb = a - P["fat_t"] * 0.5 - 6, b - P["fat_t"] * 0.5 - 6
        for rib in P["ribs"]:
            th = math.radians(rib["theta"] + 0.4 * z)
            cx, cy = to_img(ra / a * math.cos(th), rb / b * math.sin(th))
            tang = math.degrees(math.atan2(rb * math.cos(th), -ra * math.sin(th))) + B["angle"]
            cv.shell(cx, cy, rib["rx"], rib["ry"], tang, 1.5, rib["cort"], rib["canc"], "bone", "marrow", within=body)
    else:  # iliac wings
        for il in P["iliac"]:
            cx, cy = to_img(il["sgn"] * il["x"], il["y"])
            cv.paint(cv.ellipse(cx - il["sgn"] * 6, cy - 12, il["len"] * 0.8, 9, -il["sgn"] * il["ang"], within=cavity),
                     P["muscle_hu"], "muscle")  # iliacus
            cv.shell(cx, cy, il["len"], il["thick"], -il["sgn"] * il["ang"] + B["angle"], 2.5, il["cort"], il["canc"],
                     "bone", "marrow", within=body)

    # low-contrast lesions (spheres), confined to their host organ
    for le in P["lesions"]:
        s = _zscale(z, le["zc"], le["rad"])
        if s == 0.0:
            continue
        if le["host"] == "soft_tissue":
            host = cv.lab == LABELS["soft_tissue"]
            cx, cy = to_img(0.5 * le["fx"], 0.5 * le["fy"] - 0.2)
            base = P["tissue_hu"]
        else:
            host = organ_masks.get(le["host"])
            if host is None or not host.any():
                continue
            host = host & (cv.lab == LABELS[le["host"]])
            iy, ix = np.nonzero(host)
            if len(ix) == 0:
                continue
            # a point inside the host: its centroid pulled towards a random offset within its extent
            cx = cv.X[0, ix].mean() + 0.4 * le["fx"] * (cv.X[0, ix].max() - cv.X[0, ix].min()) / 2
            cy = cv.Y[iy, 0].mean() + 0.4 * le["fy"] * (cv.Y[iy, 0].max() - cv.Y[iy, 0].min()) / 2
            base = float(np.median(cv.hu[host]))
        m = cv.ellipse(cx, cy, le["rad"] * s, le["rad"] * s * 0.9, within=host)
        cv.paint(m, base + le["dhu"], "lesion")

    hu, lab = cv.result()

    # smooth correlated texture (a few HU) in tissue, not in air
    g = np.random.default_rng(np.random.SeedSequence([int(seed), 1234, int(round(z * 100)) % 2**31]))
    tex = ndimage.gaussian_filter(g.standard_normal((size, size)), P["texture_mm"] / px, mode="wrap")
    tex *= P["texture_hu"] / max(tex.std(), 1e-12)
    tissue = hu > -800.0
    hu = np.where(tissue, hu + tex, hu)
    hu = hu.astype(np.float32)
    return (hu, lab) if return_labels else hu


def uniform_phantom(size: int = 256, pixel_size_mm: Optional[float] = None, semi_axes_mm=(150.0, 110.0),
                    hu: float = 40.0) -> np.ndarray:
    """A flat elliptical soft-tissue body (``hu`` inside, -1000 outside): a noise-calibration phantom."""
    px = default_pixel_size(size) if pixel_size_mm is None else float(pixel_size_mm)
    cv = _Canvas(size, px)
    cv.paint(cv.ellipse(0.0, 0.0, semi_axes_mm[0], semi_axes_mm[1]), hu, "soft_tissue")
    return cv.result()[0].astype(np.float32)


# ----------------------------------------------------------------------- low-dose sim
def counts_to_line_integrals(counts, i0: float, zero_counts: str = "half") -> np.ndarray:
    """Photon counts -> line integrals.

    ``"half"`` (default): p = -log((N + 0.5) / I0); defined for N = 0 and unbiased to
    first order (E log(N + 1/2) = log(lambda) + O(1/lambda^2)).
    ``"clamp"``: p = -log(max(N, 1) / I0), the common shortcut; biased at low counts
    (kept only to demonstrate that bias).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if zero_counts == "half":
        return -np.log((counts + 0.5) / i0)
    if zero_counts == "clamp":
        return -np.log(np.maximum(counts, 1.0) / i0)
    raise ValueError(f"zero_counts must be 'half' or 'clamp', got {zero_counts!r}")


def simulate_low_dose(hu, i0: float = DEFAULT_I0, pixel_size_mm: Optional[float] = None, rng: RngLike = None,
                      n_angles: int = DEFAULT_N_ANGLES, mu_water: float = MU_WATER_PER_MM,
                      filter_name: str = "hann", zero_counts: str = "half", return_noise: bool = False):
    """Low-dose version of a clean 2D HU slice by projection-domain Poisson noise (see module doc).

    hu: 2D array in HU (non-square images are padded with air internally).
    i0: incident photons per ray per view (the dose; noise std ~ 1/sqrt(i0)).
    pixel_size_mm: default 384 / max(shape) mm (the phantom default).
    rng: seed or ``numpy.random.Generator`` for the Poisson draw.
    Returns float32 HU of the same shape (and the added noise if ``return_noise``).
    """
    from skimage.transform import iradon, radon

    hu = np.asarray(hu, dtype=np.float64)
    if hu.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {hu.shape}")
    if i0 <= 0:
        raise ValueError("i0 must be positive")
    h, w = hu.shape
    n = max(h, w)
    px = default_pixel_size(n) if pixel_size_mm is None else float(pixel_size_mm)
    rng = np.random.default_rng(rng)

    sq = np.full((n, n), -1000.0)
    r0, c0 = (n - h) // 2, (n - w) // 2
    sq[r0:r0 + h, c0:c0 + w] = hu
    mu = np.clip(mu_water * (1.0 + sq / 1000.0), 0.0, None)  # 1/mm

    theta = np.linspace(0.0, 180.0, int(n_angles), endpoint=False)
    p = radon(mu * px, theta=theta, circle=False)  # dimensionless line integrals
    counts = rng.poisson(i0 * np.exp(-p))
    dp = counts_to_line_integrals(counts, i0, zero_counts) - p
    dmu = iradon(dp, theta=theta, output_size=n, filter_name=filter_name, circle=False) / px  # 1/mm
    noise = (1000.0 / mu_water) * dmu[r0:r0 + h, c0:c0 + w]
    out = (hu + noise).astype(np.float32)
    return (out, noise.astype(np.float32)) if return_noise else out


def add_gaussian_noise(hu, sigma_hu: float, rng: RngLike = None) -> np.ndarray:
    """Pixel-independent Gaussian noise (an extra option only; real LDCT noise is correlated)."""
    hu = np.asarray(hu)
    rng = np.random.default_rng(rng)
    return (hu + rng.normal(0.0, sigma_hu, size=hu.shape)).astype(np.float32)


def noise_std_in_roi(hu, center: Tuple[int, int], radius: float, reference=None) -> float:
    """Std (HU) inside a disc ROI (row, col, radius in px); of ``hu - reference`` when a
    reference is given (pure noise), else of ``hu`` itself."""
    img = np.asarray(hu, dtype=np.float64)
    if reference is not None:
        img = img - np.asarray(reference, dtype=np.float64)
    std, _ = flat_roi_stats(img, np.zeros_like(img), (center[0], center[1], radius))
    return std


def soft_tissue_roi(labels, erode_px: int = 6) -> np.ndarray:
    """Flat soft-tissue ROI of a phantom's label map: the liver (abdomen patients) or the
    visceral soft tissue (pelvis patients), eroded by ``erode_px`` pixels."""
    labels = np.asarray(labels)
    for name in ("liver", "soft_tissue"):
        m = ndimage.binary_erosion(labels == LABELS[name], iterations=int(erode_px))
        if m.sum() >= 50:
            return m
    raise ValueError("no soft-tissue region large enough for an ROI")


# ------------------------------------------------------------------------------ NIfTI
def nifti_affine(pixel_size_mm: float, slice_spacing_mm: float) -> np.ndarray:
    """Affine for arrays indexed [row, col, slice] of axial slices displayed the usual way
    (row -> posterior, col -> patient left, slice -> superior), in NIfTI's RAS+ world."""
    aff = np.zeros((4, 4))
    aff[1, 0] = -pixel_size_mm  # row    -> posterior  = -A
    aff[0, 1] = -pixel_size_mm  # column -> left       = -R
    aff[2, 2] = slice_spacing_mm  # slice -> superior
    aff[3, 3] = 1.0
    return aff


def write_nifti(volume_hu, path: str, pixel_size_mm: float, slice_spacing_mm: float = 1.0) -> str:
    """Write a 2D (H, W) or 3D (H, W, S) HU array as float32 uncompressed NIfTI, atomically.

    Array index [row, col, slice]; affine from ``nifti_affine``. A single slice can be read
    lazily with ``nibabel.load(path).dataobj[..., k]`` (the file is not compressed).
    """
    import nibabel as nib

    vol = np.asarray(volume_hu, dtype=np.float32)
    if vol.ndim == 2:
        vol = vol[..., None]
    if vol.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, S), got {vol.shape}")
    img = nib.Nifti1Image(vol, nifti_affine(pixel_size_mm, slice_spacing_mm))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_data_dtype(np.float32)
    img.header["descrip"] = b"HU, float32"
    path = os.fspath(path)
    with atomic_path(path, ".nii") as tmp:
        nib.save(img, tmp)
    return path


# ---------------------------------------------------------------------------- dataset
_ROLES = {"training_clean": 0, "training_noisy": 1, "validation": 2, "test": 3}
_ROLE_TAG = {"training_clean": "A", "training_noisy": "B", "validation": "C", "test": "D"}
_SEEDS_PER_ROLE = 100_000
_GENERATOR = "scripts.simulate.make_simulated_dataset"


def patient_seed(seed: int, role: str, index: int) -> int:
    """Phantom seed of patient ``index`` in ``role``; the four roles use disjoint seed ranges."""
    if not 0 <= index < _SEEDS_PER_ROLE:
        raise ValueError("too many patients")
    return (int(seed) * len(_ROLES) + _ROLES[role]) * _SEEDS_PER_ROLE + int(index)


def simulated_patient(role: str, index: int, n_slices: int = 4, size: int = 256, i0: float = DEFAULT_I0,
                      seed: int = 0, slice_spacing_mm: float = 3.0, pixel_size_mm: Optional[float] = None,
                      n_angles: int = DEFAULT_N_ANGLES, low_dose: bool = True, on_slice=None):
    """One simulated patient exactly as ``make_simulated_dataset`` makes it (e.g. to write it
    as DICOM too): ``(full_dose, low_dose)`` float32 HU volumes (H, W, n_slices), slices
    centred on z = 0 and ``slice_spacing_mm`` apart; ``low_dose`` is None unless requested.
    ``role`` in training_clean / training_noisy / validation / test selects the disjoint
    seed range (``patient_seed``); the Poisson noise of slice k is seeded by
    (seed, role, index, k).  ``on_slice()`` is called after each slice (progress bars)."""
    px = default_pixel_size(size) if pixel_size_mm is None else float(pixel_size_mm)
    pseed = patient_seed(seed, role, index)
    zs = (np.arange(n_slices) - (n_slices - 1) / 2.0) * slice_spacing_mm
    full = np.stack([phantom(size, pseed, px, z_mm=z) for z in zs], axis=-1)
    low = None
    if low_dose:
        low = np.empty_like(full)
    for k in range(n_slices):
        if low is not None:
            noise_rng = np.random.SeedSequence([int(seed), _ROLES[role], int(index), k, 0xD05E])
            low[..., k] = simulate_low_dose(full[..., k], i0=i0, pixel_size_mm=px, rng=noise_rng, n_angles=n_angles)
        if on_slice is not None:
            on_slice()
    return full, low


def _n_patients(n_slices: int, per_patient: int) -> List[int]:
    """Slices of each patient: full patients of ``per_patient`` slices, the last one may be shorter."""
    full, rest = divmod(int(n_slices), int(per_patient))
    return [per_patient] * full + ([rest] if rest else [])


def _dataset_files(params: dict) -> Dict[str, List[dict]]:
    """Relative paths of every volume, by role (the datalist with relative paths)."""
    out: Dict[str, List[dict]] = {}
    roles = {"training_clean": params["n_clean"], "training_noisy": params["n_noisy"],
             "validation": params["n_validation"], "test": params["n_test"]}
    for role, n in roles.items():
        items = []
        for i, ns in enumerate(_n_patients(n, params["slices_per_patient"])):
            pid = f"SIM{_ROLE_TAG[role]}{i:03d}"
            if role == "training_clean":
                items.append({"patient": pid, "image": f"{role}/{pid}_full.nii", "_slices": ns, "_index": i})
            elif role == "training_noisy":
                items.append({"patient": pid, "image": f"{role}/{pid}_low.nii", "_slices": ns, "_index": i})
            else:
                items.append({"patient": pid, "image": f"{role}/{pid}_low.nii", "label": f"{role}/{pid}_full.nii",
                              "_slices": ns, "_index": i})
        out[role] = items
    return out


def _public_datalist(files: Dict[str, List[dict]], root: str) -> Dict[str, List[dict]]:
    dl = {}
    for role, items in files.items():
        dl[role] = [{k: (os.path.join(root, v) if k in ("image", "label") else v)
                     for k, v in it.items() if not k.startswith("_")} for it in items]
    return dl


def _is_complete(out_dir: str, params: dict) -> bool:
    try:
        with open(os.path.join(out_dir, "params.json")) as f:
            if json.load(f) != params:
                return False
    except (OSError, ValueError):
        return False
    files = _dataset_files(params)
    return all(os.path.isfile(os.path.join(out_dir, it[k])) for items in files.values() for it in items
               for k in ("image", "label") if k in it)


def _is_ours(out_dir: str) -> bool:
    """Whether ``out_dir`` holds a (possibly stale) data set made by ``make_simulated_dataset``."""
    try:
        with open(os.path.join(out_dir, "params.json")) as f:
            return json.load(f).get("generator") == _GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def make_simulated_dataset(out_dir: str, n_clean: int = 48, n_noisy: int = 48, n_validation: int = 8,
                           n_test: int = 8, size: int = 256, i0: float = DEFAULT_I0, seed: int = 0,
                           slices_per_patient: int = 4, slice_spacing_mm: float = 3.0,
                           pixel_size_mm: Optional[float] = None, n_angles: int = DEFAULT_N_ANGLES,
                           progress: bool = True) -> Dict[str, List[dict]]:
    """Build (or reuse) the simulated default data set in ``out_dir``; returns the datalist.

    Patients: one phantom seed = one patient = one NIfTI volume (H, W, S) of
    ``slices_per_patient`` slices ``slice_spacing_mm`` apart (the last patient of a role may
    have fewer).  ``n_*`` count *slices*.  Each role draws its patients from its own,
    disjoint seed range (``patient_seed``), exactly like the real unpaired protocol:

    - ``training_clean`` (set A): full-dose slices only, ``SIMA###_full.nii``;
    - ``training_noisy`` (set B): low-dose slices only, ``SIMB###_low.nii``;
    - ``validation`` (set C): pairs ``SIMC###_low.nii`` (image) / ``SIMC###_full.nii`` (label);
    - ``test`` (set D): pairs as validation, from a further disjoint set; with
      ``n_test=0`` the ``test`` list repeats the validation pairs.

    Datalist entries: ``{"patient", "image"}`` (training) and ``{"patient", "image",
    "label"}`` (validation/test), absolute paths; also written to ``out_dir/datalist.json``.
    Volumes are float32 HU, uncompressed ``.nii`` (lazily sliceable).

    Caching: ``out_dir/params.json`` records every parameter and the format version; a
    complete data set with equal parameters is reused as is.  Otherwise it is built in a
    temporary sibling folder and renamed into place only when complete (a stale data set
    made by this function is replaced; any other non-empty folder is refused).

    Timing (2-core dev machine, defaults: 48 + 48 + 8 + 8 slices at 256 x 256 = 64 low-dose
    simulations + 112 phantom slices, 33 MB): first build 74 s wall / 58 s CPU (machine
    otherwise busy), < 1 ms when reused.
    """
    from tqdm.auto import tqdm

    out_dir = os.path.abspath(os.fspath(out_dir))
    px = default_pixel_size(size) if pixel_size_mm is None else float(pixel_size_mm)
    params = dict(format_version=DATASET_FORMAT_VERSION, generator=_GENERATOR,
                  n_clean=int(n_clean), n_noisy=int(n_noisy), n_validation=int(n_validation), n_test=int(n_test),
                  size=int(size), i0=float(i0), seed=int(seed), slices_per_patient=int(slices_per_patient),
                  slice_spacing_mm=float(slice_spacing_mm), pixel_size_mm=px, n_angles=int(n_angles),
                  mu_water=MU_WATER_PER_MM, fov_mm=px * size)
    if slices_per_patient < 1:
        raise ValueError("slices_per_patient must be >= 1")
    files = _dataset_files(params)

    def finish(root):
        dl = _public_datalist(files, root)
        if not params["n_test"]:
            dl["test"] = [dict(it) for it in dl["validation"]]
        path = os.path.join(root, "datalist.json")
        try:
            with open(path) as f:
                same = json.load(f) == dl
        except (OSError, ValueError):
            same = False
        if not same:
            write_json(dl, path)
        return dl

    if _is_complete(out_dir, params):
        return finish(out_dir)

    if os.path.isdir(out_dir) and os.listdir(out_dir) and not _is_ours(out_dir):
        raise FileExistsError(f"{out_dir} exists, is not empty and is not a simulated data set; refusing to replace it")

    tmp = staging_dir(out_dir)
    try:
        jobs = [(role, it) for role, items in files.items() for it in items]
        total = sum(it["_slices"] for _, it in jobs)
        with tqdm(total=total, desc="simulated CT", unit="slice", disable=not progress) as bar:
            for role, it in jobs:
                full, low = simulated_patient(role, it["_index"], n_slices=it["_slices"], size=size, i0=i0,
                                              seed=seed, slice_spacing_mm=slice_spacing_mm, pixel_size_mm=px,
                                              n_angles=n_angles, low_dose=role != "training_clean",
                                              on_slice=lambda: bar.update(1))
                if low is not None:
                    write_nifti(low, os.path.join(tmp, it["image"]), px, slice_spacing_mm)
                if role == "training_clean":
                    write_nifti(full, os.path.join(tmp, it["image"]), px, slice_spacing_mm)
                elif role != "training_noisy":
                    write_nifti(full, os.path.join(tmp, it["label"]), px, slice_spacing_mm)
        write_json(params, os.path.join(tmp, "params.json"))  # written last: marks completeness

        if _is_complete(out_dir, params):  # someone else finished the same build meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return finish(out_dir)
        old = None
        if os.path.exists(out_dir):
            old = f"{out_dir}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not _is_complete(out_dir, params):  # lost a race to a concurrent build of other params
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return finish(out_dir)
