"""The painting of one phantom slice: a ``Canvas`` (HU and tissue labels on a supersampled grid in mm) and a
``Slice`` (the canvas, the patient's parameters of ``phantom_patient``, the table position, the body frame);
``paint_anatomy`` paints body, bowel, organs, spine and vessels, ribs or pelvis and lesions, in that order
(later shapes overwrite earlier ones). Organs are ellipsoids cut at the table position. ``LABELS``: the
tissue labels of the label map."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict

import numpy as np

__all__ = ["LABELS", "Canvas", "Slice", "paint_anatomy"]

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


class Canvas:
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


def _zscale(z, zc, cz):
    """Cross-section scale of an ellipsoid (centre zc, half-length cz) cut at height z."""
    q = 1.0 - ((z - zc) / cz) ** 2
    return math.sqrt(q) if q > 0.05 else 0.0


@dataclass
class Slice:
    """One slice being painted: the canvas, the patient's parameters, the table position and the body frame."""

    cv: Canvas
    patient: dict
    z: float
    seed: int
    organ_masks: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        body = self.patient["body"]
        self.a, self.b, self.angle = body["a"], body["b"], body["angle"]
        self.cx, self.cy = body["cx"], body["cy"]
        self.t = math.radians(self.angle)
        dx, dy = self.cv.X - self.cx, self.cv.Y - self.cy
        self.xr = math.cos(self.t) * dx + math.sin(self.t) * dy
        self.yr = -math.sin(self.t) * dx + math.cos(self.t) * dy
        theta = np.arctan2(self.yr / self.b, self.xr / self.a)
        self.rmod = 1.0 + sum(amp * np.cos(k * theta + ph) for k, amp, ph in body["harm"])

    def inside(self, shrink_mm: float) -> np.ndarray:
        """The body outline shrunk by ``shrink_mm``."""
        return np.hypot(self.xr / max(self.a - shrink_mm, 1), self.yr / max(self.b - shrink_mm, 1)) <= self.rmod

    def to_img(self, fx: float, fy: float):
        """Body-frame (fx, fy) in [-1, 1] -> image mm."""
        x, y = fx * self.a, fy * self.b
        return (
            self.cx + math.cos(self.t) * x - math.sin(self.t) * y,
            self.cy + math.sin(self.t) * x + math.cos(self.t) * y,
        )

    def organ(self, name: str, o: dict, label: str, hu=None):
        """Paint an ellipsoidal organ's cross-section at this z (None when the slice misses it)."""
        s = _zscale(self.z, o["zc"], o["cz"])
        if s == 0.0:
            return None
        cx, cy = self.to_img(o["x"], o["y"])
        m = self.cv.ellipse(
            cx, cy, o["ax"] * self.a * s, o["ay"] * self.b * s, o.get("ang", 0.0) + self.angle, within=self.cavity
        )
        self.cv.paint(m, o["hu"] if hu is None else hu, label)
        self.organ_masks[name] = m | self.organ_masks.get(name, np.zeros_like(m))
        return m


def _paint_body(sl: Slice) -> None:
    """Fat, abdominal wall, cavity; visceral fat blobs in the cavity."""
    params, cv = sl.patient, sl.cv
    sl.body, sl.wall, sl.cavity = (
        sl.inside(0.0),
        sl.inside(params["fat_t"]),
        sl.inside(params["fat_t"] + params["wall_t"]),
    )
    cv.paint(sl.body, params["fat_hu"], "fat")
    cv.paint(sl.wall, params["muscle_hu"], "muscle")
    cv.paint(sl.cavity, params["tissue_hu"], "soft_tissue")
    for fx, fy, rx, ry, ang, hu in params["vfat"]:
        cx, cy = sl.to_img(fx, fy)
        cv.paint(cv.ellipse(cx, cy, rx, ry, ang + sl.angle, within=sl.cavity), hu, "fat")


def _paint_bowel(sl: Slice) -> None:
    """Bowel loops: 3 mm wall, content air / fluid / air-fluid level / feces (mottled)."""
    cv = sl.cv
    for bw in sl.patient["bowel"]:
        s = _zscale(sl.z, bw["zc"], bw["cz"])
        if s == 0.0:
            continue
        cx, cy = sl.to_img(bw["x"], bw["y"])
        rx, ry = bw["rx"] * s, bw["ry"] * s
        cv.paint(cv.ellipse(cx, cy, rx, ry, bw["ang"], within=sl.cavity), sl.patient["tissue_hu"] + 5, "soft_tissue")
        lumen = cv.ellipse(cx, cy, max(rx - 3, 1), max(ry - 3, 1), bw["ang"], within=sl.cavity)
        if bw["content"] == "air":
            cv.paint(lumen, -1000.0, "bowel_air")
        elif bw["content"] == "fluid":
            cv.paint(lumen, bw["fluid_hu"], "fluid")
        elif bw["content"] == "level":  # air anterior (up), fluid posterior
            cv.paint(lumen & (cv.Y < cy), -1000.0, "bowel_air")
            cv.paint(lumen & (cv.Y >= cy), bw["fluid_hu"], "fluid")
        else:  # feces: mottled gas in soft material
            cv.paint(lumen, -80.0, "fluid")
            g = np.random.default_rng(np.random.SeedSequence([int(sl.seed), 77, int(round(sl.z * 10)) % 2**31]))
            for _ in range(4):
                gx, gy = cx + g.uniform(-0.5, 0.5) * rx, cy + g.uniform(-0.5, 0.5) * ry
                cv.paint(cv.ellipse(gx, gy, g.uniform(1.5, 4), g.uniform(1.5, 4), within=lumen), -900.0, "bowel_air")


def _paint_organs(sl: Slice) -> None:
    """Liver, spleen, kidneys and stomach (air-fluid level) in the abdomen; the bladder in the pelvis."""
    params, cv = sl.patient, sl.cv
    if params["kind"] != "abdomen":
        if params["bladder"] is not None:
            sl.organ("bladder", params["bladder"], "fluid")
        return
    sl.organ("liver", params["liver"], "liver")
    sl.organ("spleen", params["spleen"], "spleen")
    for k in params["kidneys"]:
        sl.organ("kidney", k, "kidney")
    st = params["stomach"]
    if st is None or sl.organ("stomach", st, "soft_tissue", hu=params["tissue_hu"] + 5) is None:
        return
    cx, cy = sl.to_img(st["x"], st["y"])
    s = _zscale(sl.z, st["zc"], st["cz"])
    lum = cv.ellipse(
        cx, cy, max(st["ax"] * sl.a * s - 4, 1), max(st["ay"] * sl.b * s - 4, 1), st["ang"] + sl.angle, within=sl.cavity
    )
    lvl = cy + st["level"] * st["ay"] * sl.b * s
    cv.paint(lum & (cv.Y < lvl), -1000.0, "bowel_air")
    cv.paint(lum & (cv.Y >= lvl), 15.0, "fluid")


def _paint_spine_and_vessels(sl: Slice) -> None:
    """Paraspinal (and psoas) muscles, vertebral body, canal, neural arch, processes; aorta and IVC."""
    params, cv, body = sl.patient, sl.cv, sl.body
    vertebra = params["vert"]
    post = sl.to_img(vertebra["x"] / sl.a, 1.0)  # posterior body surface below the spine
    vx, vy = post[0], post[1] - params["fat_t"] - vertebra["depth"]
    rv = vertebra["r"]
    canal_y = vy + rv + 9.0
    for sgn in (-1, 1):
        cv.paint(
            cv.ellipse(vx + sgn * 30, canal_y + 12, 22, 17, sgn * 10, within=sl.wall), params["muscle_hu"], "muscle"
        )
    if params["kind"] == "abdomen":  # psoas muscles beside the vertebral body
        for sgn in (-1, 1):
            cv.paint(cv.ellipse(vx + sgn * (rv + 12), vy, 11, 14, within=sl.cavity), params["muscle_hu"], "muscle")
    cv.shell(vx, vy, rv, rv * 0.9, 0.0, 2.5, vertebra["cort"], vertebra["canc"], "bone", "marrow", within=body)
    cv.paint(cv.ellipse(vx, canal_y, 12.0, 11.0, within=body), vertebra["arch"], "bone")
    cv.paint(cv.ellipse(vx, canal_y + 17, 4.0, 12.0, within=body), vertebra["arch"], "bone")  # spinous process
    for sgn in (-1, 1):
        cv.paint(cv.ellipse(vx + sgn * 20, canal_y - 2, 13.0, 4.0, sgn * 10, within=body), vertebra["arch"], "bone")
    cv.paint(cv.ellipse(vx, canal_y, 7.5, 7.0, within=body), 20.0, "fluid")  # canal: CSF / cord
    cv.paint(cv.ellipse(vx + 10, vy - rv - 13, 11, 11, within=sl.cavity), params["vessel_hu"], "vessel")
    cv.paint(cv.ellipse(vx - 24, vy - rv - 10, 12, 9, 20, within=sl.cavity), 0.8 * params["vessel_hu"] + 8, "vessel")


def _paint_ribs_or_pelvis(sl: Slice) -> None:
    """Ribs in the abdominal wall (oblique: they drift with z), or iliac wings with the iliacus."""
    params, cv, a, b = sl.patient, sl.cv, sl.a, sl.b
    if params["kind"] == "abdomen":
        ra, rb = a - params["fat_t"] * 0.5 - 6, b - params["fat_t"] * 0.5 - 6
        for rib in params["ribs"]:
            th = math.radians(rib["theta"] + 0.4 * sl.z)
            cx, cy = sl.to_img(ra / a * math.cos(th), rb / b * math.sin(th))
            tang = math.degrees(math.atan2(rb * math.cos(th), -ra * math.sin(th))) + sl.angle
            cv.shell(
                cx, cy, rib["rx"], rib["ry"], tang, 1.5, rib["cort"], rib["canc"], "bone", "marrow", within=sl.body
            )
        return
    for il in params["iliac"]:
        cx, cy = sl.to_img(il["sgn"] * il["x"], il["y"])
        cv.paint(
            cv.ellipse(cx - il["sgn"] * 6, cy - 12, il["len"] * 0.8, 9, -il["sgn"] * il["ang"], within=sl.cavity),
            params["muscle_hu"],
            "muscle",
        )  # iliacus
        cv.shell(
            cx,
            cy,
            il["len"],
            il["thick"],
            -il["sgn"] * il["ang"] + sl.angle,
            2.5,
            il["cort"],
            il["canc"],
            "bone",
            "marrow",
            within=sl.body,
        )


def _lesion_site(sl: Slice, le: dict):
    """(host mask, centre x, centre y, host HU) of a lesion, or None when its host is not in this slice."""
    cv = sl.cv
    if le["host"] == "soft_tissue":
        cx, cy = sl.to_img(0.5 * le["fx"], 0.5 * le["fy"] - 0.2)
        return cv.lab == LABELS["soft_tissue"], cx, cy, sl.patient["tissue_hu"]
    host = sl.organ_masks.get(le["host"])
    if host is None or not host.any():
        return None
    host = host & (cv.lab == LABELS[le["host"]])
    iy, ix = np.nonzero(host)
    if len(ix) == 0:
        return None
    # a point inside the host: its centroid pulled towards a random offset within its extent
    cx = cv.X[0, ix].mean() + 0.4 * le["fx"] * (cv.X[0, ix].max() - cv.X[0, ix].min()) / 2
    cy = cv.Y[iy, 0].mean() + 0.4 * le["fy"] * (cv.Y[iy, 0].max() - cv.Y[iy, 0].min()) / 2
    return host, cx, cy, float(np.median(cv.hu[host]))


def _paint_lesions(sl: Slice) -> None:
    """Low-contrast spherical lesions, confined to their host organ."""
    for le in sl.patient["lesions"]:
        s = _zscale(sl.z, le["zc"], le["rad"])
        site = None if s == 0.0 else _lesion_site(sl, le)
        if site is None:
            continue
        host, cx, cy, base = site
        sl.cv.paint(sl.cv.ellipse(cx, cy, le["rad"] * s, le["rad"] * s * 0.9, within=host), base + le["dhu"], "lesion")


def paint_anatomy(sl: Slice) -> None:
    """Paint the patient's anatomy at the slice's table position onto its canvas."""
    _paint_body(sl)
    _paint_bowel(sl)
    _paint_organs(sl)
    _paint_spine_and_vessels(sl)
    _paint_ribs_or_pelvis(sl)
    _paint_lesions(sl)
