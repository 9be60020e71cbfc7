"""A simulated patient's random parameters, from its seed alone (``draw_patient``): body size, shape and
pose, fat and muscle layers, HU levels, bowel loops, the vertebra, the abdominal organs and ribs or the
pelvis, and the lesions; sizes in mm (or in fractions of the body's semi-axes), HU levels in HU. The
painting of a slice from them is ``phantom_anatomy``'s."""

from __future__ import annotations

import numpy as np

__all__ = ["draw_patient"]


def draw_patient(seed: int) -> dict:
    """All per-patient random parameters (sizes in mm, HU levels), from the seed only."""
    r = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    params: dict = {}
    params["kind"] = "pelvis" if r.uniform() < 0.35 else "abdomen"
    params.update(_body(r))
    params["bowel"] = _bowel(r, params["kind"])
    params["vert"] = _vertebra(r, params["kind"])
    params.update(_abdomen(r) if params["kind"] == "abdomen" else _pelvis(r))
    params["lesions"] = _lesions(r, params["kind"])
    return params


def _body(r: np.random.Generator) -> dict:
    """The body outline, its fat and muscle layers, the tissue HU levels, the texture, the contrast phase and
    the visceral-fat blobs."""
    u = r.uniform
    params: dict = {}
    a, b = u(135, 175), u(95, 128)
    params["body"] = dict(
        a=a,
        b=b,
        angle=u(-6, 6),
        cx=u(-10, 10),
        cy=u(-8, 8),
        harm=[(k, u(0, 0.035) / (k - 1), u(0, 2 * np.pi)) for k in (2, 3, 4, 5)],
    )
    params["fat_t"] = u(7, 32)  # subcutaneous fat thickness
    params["fat_hu"] = u(-120, -85)
    params["wall_t"] = u(6, 14)  # abdominal-wall muscle
    params["muscle_hu"] = u(45, 60)
    params["tissue_hu"] = u(30, 45)
    params["texture_hu"] = u(3, 6)
    params["texture_mm"] = u(1.0, 2.5)
    params["vessel_hu"] = u(40, 200)  # contrast phase
    params["vfat"] = [
        (u(-0.55, 0.55), u(-0.6, 0.5), u(10, 28), u(8, 20), u(0, 180), u(-115, -80)) for _ in range(r.integers(3, 9))
    ]
    return params


def _bowel(r: np.random.Generator, kind: str) -> list:
    """The bowel loops (more of them in a pelvis patient): position, size, content and z extent."""
    u = r.uniform
    return [
        dict(
            x=u(-0.55, 0.55),
            y=u(-0.65, 0.15),
            rx=u(8, 22),
            ry=u(7, 18),
            ang=u(0, 180),
            content=r.choice(["air", "fluid", "level", "feces"]),
            fluid_hu=u(0, 25),
            zc=u(-30, 30),
            cz=u(25, 80),
        )
        for _ in range(r.integers(4, 10) + (4 if kind == "pelvis" else 0))
    ]


def _vertebra(r: np.random.Generator, kind: str) -> dict:
    """The vertebra: position relative to the posterior body surface, radius, bone HU levels."""
    u = r.uniform
    return dict(
        x=u(-4, 4),
        r=u(16, 22) * (1.2 if kind == "pelvis" else 1.0),
        depth=u(48, 62),
        cort=u(700, 1000),
        canc=u(150, 300),
        arch=u(500, 800),
    )


def _abdomen(r: np.random.Generator) -> dict:
    """An upper-abdomen patient's liver, spleen, kidneys, stomach (60 %) and ribs."""
    u = r.uniform
    params: dict = {}
    params["liver"] = dict(
        x=u(-0.48, -0.36),
        y=u(-0.12, 0.02),
        ax=u(0.36, 0.46),
        ay=u(0.5, 0.66),
        ang=u(-25, 25),
        hu=u(55, 70),
        zc=u(-30, 30),
        cz=u(70, 110),
    )
    params["spleen"] = dict(
        x=u(0.5, 0.62),
        y=u(0.15, 0.32),
        ax=u(0.12, 0.18),
        ay=u(0.22, 0.32),
        ang=u(20, 55),
        hu=u(45, 55),
        zc=u(-25, 25),
        cz=u(35, 60),
    )
    params["kidneys"] = [
        dict(
            x=sgn * u(0.27, 0.36),
            y=u(0.38, 0.5),
            ax=u(0.09, 0.12),
            ay=u(0.14, 0.19),
            ang=sgn * u(10, 35),
            hu=u(25, 35),
            zc=u(-25, 25),
            cz=u(35, 55),
        )
        for sgn in (-1, 1)
    ]
    params["stomach"] = (
        dict(
            x=u(0.2, 0.4),
            y=u(-0.45, -0.25),
            ax=u(0.14, 0.22),
            ay=u(0.14, 0.22),
            ang=u(0, 180),
            zc=u(-20, 20),
            cz=u(40, 70),
            level=u(-0.3, 0.4),
        )
        if u() < 0.6
        else None
    )
    params["ribs"] = _ribs(r)
    return params


def _ribs(r: np.random.Generator) -> list:
    """5..10 ribs, split between the patient's right and left side: angle, size, bone HU levels."""
    u = r.uniform
    n_ribs = int(r.integers(5, 11))
    ang = np.concatenate([u(-160, -25, n_ribs // 2), u(25, 155, n_ribs - n_ribs // 2)])
    return [dict(theta=t, rx=u(5, 8), ry=u(3.5, 5), cort=u(600, 1000), canc=u(150, 300)) for t in ang]


def _pelvis(r: np.random.Generator) -> dict:
    """A pelvis patient's iliac wings and bladder (70 %)."""
    u = r.uniform
    params: dict = {}
    params["iliac"] = [
        dict(
            sgn=sgn,
            x=u(0.5, 0.62),
            y=u(0.22, 0.42),
            len=u(34, 46),
            thick=u(6, 10),
            ang=u(25, 45),
            cort=u(700, 1000),
            canc=u(150, 300),
        )
        for sgn in (-1, 1)
    ]
    params["bladder"] = (
        dict(
            x=u(-0.08, 0.08),
            y=u(-0.45, -0.2),
            ax=u(0.18, 0.3),
            ay=u(0.18, 0.3),
            hu=u(0, 15),
            zc=u(-20, 20),
            cz=u(30, 60),
        )
        if u() < 0.7
        else None
    )
    return params


def _lesions(r: np.random.Generator, kind: str) -> list:
    """1..4 low-contrast lesions (+-10..30 HU) in the liver, spleen or kidneys, or in a pelvis patient's
    soft tissue."""
    u = r.uniform
    hosts = ["liver", "liver", "spleen", "kidney"] if kind == "abdomen" else ["soft_tissue"]
    return [
        dict(
            host=str(r.choice(hosts)),
            fx=u(-0.55, 0.55),
            fy=u(-0.55, 0.55),
            rad=u(4, 15),
            dhu=float(r.choice([-1, 1]) * u(10, 30)),
            zc=u(-8, 8),
        )
        for _ in range(r.integers(1, 5))
    ]
