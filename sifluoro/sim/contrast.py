"""Iodinated contrast: joint filling, extravasation cloud, vascular uptake.

Timing is expressed in frames of the contrast run (so the visual sequence does not depend on
the pulse rate); iodine is an areal density (mg/mm^2) along each ray.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sifluoro.sim import _kernels as K
from sifluoro.sim.anatomy import Anatomy, StaticMaps
from sifluoro.sim.geometry import Camera

VISIBLE_MG_MM2 = 0.02      # ~2-4 % attenuation at 70-90 kVp: the eye's threshold in fluoro
SEVERITY = {"none": 0, "intra_articular": 1, "extravasation": 2, "vascular": 3}


@dataclass(frozen=True)
class ContrastPlan:
    """Injection of one study; empty ``components`` means no injection."""

    components: tuple[str, ...]
    concentration_mg_ml: float
    volume_ml: float
    start_frame: int
    inject_frames: int
    entry_zy_mm: tuple[float, float]
    reach_mm: float
    pool_centre_mm: np.ndarray
    pool_sigma_mm: float
    lump_centres_mm: np.ndarray
    lump_sigmas_mm: np.ndarray
    lump_share: np.ndarray
    vessel_seg_a: np.ndarray
    vessel_seg_b: np.ndarray
    vessel_radius_mm: np.ndarray
    vessel_arrival_frame: np.ndarray
    vessel_washout_frames: float
    vessel_dilution: float


def _random_walk(rng, start, direction, length_mm, step_mm=2.0, wiggle=0.22):
    pts = [start]
    d = direction / np.linalg.norm(direction)
    for _ in range(int(length_mm / step_mm)):
        d = d + wiggle * rng.standard_normal(3)
        d /= np.linalg.norm(d)
        pts.append(pts[-1] + step_mm * d)
    return np.array(pts)


def plan_contrast(rng: np.random.Generator, components: tuple[str, ...], anatomy: Anatomy,
                  tip_mm: np.ndarray, n_frames: int) -> ContrastPlan:
    """Draw the injection for the given outcome components."""
    a = anatomy.params
    start = int(rng.integers(1, 3))
    inject = int(rng.integers(max(3, n_frames // 3), max(4, n_frames - start - 2)))
    conc = float(rng.choice([200.0, 240.0, 300.0]))
    vol = float(rng.uniform(0.5, 2.0))
    length = a[K.A_ZSUP] - a[K.A_ZINF]
    reach = float(length * rng.uniform(0.6, 1.1) * (0.6 + 0.4 * vol / 2.0))
    pool = anatomy.joint_point(rng.uniform(-3.0, 3.0), a[K.A_ZINF] - rng.uniform(1.0, 4.0))
    lumps_c = np.zeros((0, 3))
    lumps_s = np.zeros(0)
    lumps_w = np.zeros(0)
    if "extravasation" in components:
        n = int(rng.integers(3, 7))
        # spreads along tissue planes: flattened offsets, posterior and medial of the joint
        off = rng.normal(0.0, [5.0, 3.0, 7.0], size=(n, 3))
        lumps_c = tip_mm + off
        lumps_s = rng.uniform(3.0, 6.0, n)
        lumps_w = rng.dirichlet(np.ones(n))
    va = vb = np.zeros((0, 3))
    vr = varr = np.zeros(0)
    if "vascular" in components:
        v_start = start + int(rng.integers(0, 3))
        segs_a, segs_b, rad, arr = [], [], [], []
        root = tip_mm + rng.normal(0.0, 2.0, 3)
        trunk = _random_walk(rng, root, rng.standard_normal(3) + np.array([0, 0, -1.0]),
                             rng.uniform(30.0, 60.0))
        branches = [(trunk, rng.uniform(0.6, 1.0), 0.0)]
        for _ in range(int(rng.integers(2, 5))):
            k = int(rng.integers(2, len(trunk) - 1))
            br = _random_walk(rng, trunk[k], rng.standard_normal(3), rng.uniform(12.0, 35.0))
            branches.append((br, rng.uniform(0.45, 0.75), 2.0 * k))
        total = max(b[0].shape[0] for b in branches) * 2.0 + 60.0
        for pl, r, s0 in branches:
            s = s0 + 2.0 * np.arange(len(pl) - 1)
            segs_a.append(pl[:-1])
            segs_b.append(pl[1:])
            rad.append(np.full(len(pl) - 1, r))
            # the whole tree opacifies within 1-2 frames
            arr.append(v_start + 1.5 * s / total)
        va, vb = np.concatenate(segs_a), np.concatenate(segs_b)
        vr, varr = np.concatenate(rad), np.concatenate(arr)
    return ContrastPlan(
        components=components, concentration_mg_ml=conc, volume_ml=vol, start_frame=start,
        inject_frames=inject, entry_zy_mm=(float(tip_mm[2]), float(tip_mm[1])), reach_mm=reach,
        pool_centre_mm=pool, pool_sigma_mm=float(rng.uniform(2.5, 4.5)),
        lump_centres_mm=lumps_c, lump_sigmas_mm=lumps_s, lump_share=lumps_w,
        vessel_seg_a=va, vessel_seg_b=vb, vessel_radius_mm=vr, vessel_arrival_frame=varr,
        vessel_washout_frames=float(rng.uniform(0.6, 1.0)),
        vessel_dilution=float(rng.uniform(0.5, 0.8)))


def _gaussian_blob(cam: Camera, centre: np.ndarray, sigma_mm: float, mass_mg: float,
                   out: np.ndarray) -> None:
    """Add the line integral (mg/mm^2) of an isotropic 3-D Gaussian of iodine."""
    cxy = cam.project(centre)
    mag = float(cam.magnification(centre))
    s_px = sigma_mm * mag / cam.pixel_spacing_mm
    r = int(4 * s_px) + 2
    x0, x1 = max(int(cxy[0]) - r, 0), min(int(cxy[0]) + r + 1, cam.size)
    y0, y1 = max(int(cxy[1]) - r, 0), min(int(cxy[1]) + r + 1, cam.size)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    rho2 = ((xx - cxy[0]) ** 2 + (yy - cxy[1]) ** 2) / s_px ** 2
    out[y0:y1, x0:x1] += mass_mg / (2 * np.pi * sigma_mm ** 2) * np.exp(-0.5 * rho2)


def iodine_map(plan: ContrastPlan, frame: int, cam: Camera, static: StaticMaps,
               out: np.ndarray, vascular_out: np.ndarray | None = None) -> dict[str, float]:
    """Write the iodine areal density of contrast-run frame ``frame`` into ``out``, and the
    vessels' share of it into ``vascular_out`` when given (the truth's vessel SNR).

    Returns the peak areal density (mg/mm^2) of each component in this frame.
    """
    out[...] = 0.0
    if vascular_out is not None:
        vascular_out[...] = 0.0
    peaks = {}
    if not plan.components:
        return peaks
    f_inj = np.clip((frame - plan.start_frame + 1) / plan.inject_frames, 0.0, 1.0)
    mg_mm3 = plan.concentration_mg_ml / 1000.0
    n_comp = len(plan.components)
    if "intra_articular" in plan.components and f_inj > 0:
        reach = plan.reach_mm * f_inj ** 0.7
        z_e, y_e = plan.entry_zy_mm
        # spreads along the joint (z) faster than across its depth; favours inferior
        dz = static.gap_z_mm - z_e
        dz = np.where(dz < 0, dz * 0.7, dz)
        d = np.sqrt(dz ** 2 + (0.5 * (static.gap_y_mm - y_e)) ** 2)
        fill = np.clip((reach - d) / 3.0 + 0.5, 0.0, 1.0) * (static.gap_mm > 0)
        ia = 0.8 * mg_mm3 * static.gap_mm * fill
        pool_f = np.clip((reach - 0.7 * (z_e - plan.pool_centre_mm[2])) / 6.0, 0.0, 1.0)
        if pool_f > 0:
            _gaussian_blob(cam, plan.pool_centre_mm, plan.pool_sigma_mm,
                           pool_f * 0.15 * plan.volume_ml * plan.concentration_mg_ml / n_comp,
                           ia)
        out += ia
        peaks["intra_articular"] = float(ia.max())
    if "extravasation" in plan.components and f_inj > 0:
        ex = np.zeros_like(out)
        mass = f_inj * plan.volume_ml * plan.concentration_mg_ml / n_comp
        grow = 0.4 + 0.6 * f_inj
        for c, s, w in zip(plan.lump_centres_mm, plan.lump_sigmas_mm, plan.lump_share):
            _gaussian_blob(cam, c, s * grow, w * mass, ex)
        out += ex
        peaks["extravasation"] = float(ex.max())
    if "vascular" in plan.components:
        since = frame - plan.vessel_arrival_frame
        conc = np.where(since < 0, 0.0,
                        np.where(since < 1.0, 1.0,
                                 np.exp(-(since - 1.0) / plan.vessel_washout_frames)))
        conc = conc * mg_mm3 * plan.vessel_dilution
        conc[conc < 0.02 * mg_mm3] = 0.0
        va = np.zeros_like(out)
        if np.any(conc > 0):
            K.render_tubes(va, cam.vector, plan.vessel_seg_a, plan.vessel_seg_b,
                           plan.vessel_radius_mm, np.zeros_like(plan.vessel_radius_mm),
                           conc.astype(np.float64), 2)
        out += va
        if vascular_out is not None:
            vascular_out += va
        peaks["vascular"] = float(va.max())
    return peaks

