"""Spinal needle and metal distractors as chains of (hollow) steel cylinders."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# outer / inner diameter (mm) of regular-wall spinal needles (the usual gauge chart values)
GAUGE_DIAMETERS_MM = {20: (0.908, 0.603), 22: (0.718, 0.413), 25: (0.514, 0.260)}
_N_SEGMENTS = 16


@dataclass(frozen=True)
class NeedlePlan:
    """Needle track: tip at ``final_tip_mm`` when inserted ``final_depth_mm`` deep.

    ``direction`` points from the tip toward the hub; the track bends by ``bend_mm`` over
    80 mm toward ``bend_dir``.
    """

    final_tip_mm: np.ndarray
    direction: np.ndarray
    bend_dir: np.ndarray
    bend_mm: float
    length_mm: float
    final_depth_mm: float
    gauge: int

    @property
    def radii_mm(self) -> tuple[float, float]:
        od, id_ = GAUGE_DIAMETERS_MM[self.gauge]
        return od / 2.0, id_ / 2.0

    def point(self, s_mm: np.ndarray) -> np.ndarray:
        """Track point at distance s from the final tip toward the hub."""
        s = np.asarray(s_mm, float)[..., None]
        return (self.final_tip_mm + s * self.direction
                + self.bend_mm * (s / 80.0) ** 2 * self.bend_dir)

    def polyline(self, depth_mm: float) -> np.ndarray:
        """Needle axis from hub to tip when inserted depth_mm, shape (n+1, 3)."""
        s_tip = self.final_depth_mm - depth_mm
        s = np.linspace(s_tip + self.length_mm, s_tip, _N_SEGMENTS + 1)
        return self.point(s)


def skin_depth_mm(tip_mm: np.ndarray, direction: np.ndarray, body: np.ndarray) -> float:
    """Distance from a point inside the body to the skin along ``direction`` (elliptic body)."""
    o = np.array([(tip_mm[0] - body[0]) / body[2], (tip_mm[1] - body[1]) / body[3]])
    d = np.array([direction[0] / body[2], direction[1] / body[3]])
    qa = d @ d
    qb = 2.0 * o @ d
    qc = o @ o - 1.0
    return float((-qb + np.sqrt(qb * qb - 4.0 * qa * qc)) / (2.0 * qa))


def tube_arrays(polylines: list[np.ndarray], r_out: list[float], r_in: list[float],
                weight: list[float]) -> tuple[np.ndarray, ...]:
    """Flatten polylines into the segment arrays of ``render_tubes``."""
    a, b, ro, ri, w = [], [], [], [], []
    for pl, o, i, wt in zip(polylines, r_out, r_in, weight):
        a.append(pl[:-1])
        b.append(pl[1:])
        n = len(pl) - 1
        ro.append(np.full(n, o))
        ri.append(np.full(n, i))
        w.append(np.full(n, wt))
    if not a:
        z = np.zeros((0, 3))
        return z, z, np.zeros(0), np.zeros(0), np.zeros(0)
    return (np.concatenate(a), np.concatenate(b), np.concatenate(ro), np.concatenate(ri),
            np.concatenate(w))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def sample_distractors(rng: np.random.Generator, centre_mm: np.ndarray, body: np.ndarray,
                       kinds: tuple[str, ...]) -> list[tuple[np.ndarray, float]]:
    """Steel distractors as (polyline, radius_mm): surgical clips, a wire, a skin marker."""
    out = []
    skin_y = body[1] + body[3]
    for kind in kinds:
        if kind == "clip":
            for _ in range(int(rng.integers(1, 4))):
                apex = centre_mm + rng.uniform([-70, -60, -70], [70, -10, 70])
                axis = _unit(rng.standard_normal(3))
                perp = _unit(np.cross(axis, rng.standard_normal(3)))
                half = np.radians(rng.uniform(10.0, 20.0))
                leg = rng.uniform(5.0, 9.0)
                ends = [apex + leg * (np.cos(half) * axis + sgn * np.sin(half) * perp)
                        for sgn in (-1.0, 1.0)]
                out.append((np.array([ends[0], apex, ends[1]]), rng.uniform(0.35, 0.55)))
        elif kind == "wire":
            p = centre_mm + rng.uniform([-90, 0, -90], [90, 0, 90])
            p[1] = skin_y + 3.0
            d = _unit(np.array([rng.standard_normal(), 0.05 * rng.standard_normal(),
                                rng.standard_normal()]))
            t = np.linspace(-250.0, 250.0, 9)[:, None]
            sag = 4.0 * np.sin(np.linspace(0, np.pi, 9))[:, None] * np.array([0, 0, 1.0])
            out.append((p + t * d + sag, rng.uniform(0.2, 0.4)))
        elif kind == "skin_marker":
            p = centre_mm + rng.uniform([-60, 0, -60], [60, 0, 60])
            p[1] = skin_y + 1.0
            d = _unit(np.array([rng.standard_normal(), 0.0, rng.standard_normal()]))
            ln = rng.uniform(15.0, 40.0)
            out.append((np.array([p - 0.5 * ln * d, p + 0.5 * ln * d]), rng.uniform(0.5, 1.0)))
    return out
