"""Parametric posterior pelvis around one sacroiliac joint, its ray casting and joint truth."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sifluoro.sim import _kernels as K
from sifluoro.sim.geometry import Camera

VOXEL_MM = 1.25
STEP_MM = 1.25
# the quick case's coarser bone grid and ray step (the joint band is sampled finely either way)
QUICK_VOXEL_MM = 2.0
QUICK_STEP_MM = 1.75
# y-range of all bone in canonical coordinates (mm)
_BONE_Y_MM = (-95.0, 70.0)


@dataclass(frozen=True)
class Anatomy:
    """One patient: kernel parameter vector, texture tiles and soft-tissue envelope.

    ``body`` = [centre_x, centre_y, semi_x, semi_y] (mm) of the elliptic-cylinder soft tissue;
    ``thickness_mm`` its antero-posterior size.
    """

    params: np.ndarray
    tex_fine: np.ndarray
    tex_coarse: np.ndarray
    body: np.ndarray
    side: str

    @property
    def sign(self) -> float:
        return float(self.params[K.A_SIGN])

    @property
    def thickness_mm(self) -> float:
        return 2.0 * float(self.body[3])

    @property
    def joint_obliquity_deg(self) -> float:
        return float(np.degrees(np.arctan(self.params[K.A_TAN])))

    def joint_point(self, y_mm: float, z_mm: float) -> np.ndarray:
        """Patient point on the joint mid-surface at depth y and height z."""
        jx, _, _ = K.joint_x(y_mm, z_mm, self.params)
        return np.array([self.sign * jx, y_mm, z_mm])


def _band_limited_noise(rng: np.random.Generator, n: int, low_mm: float,
                        high_mm: float) -> np.ndarray:
    """Periodic 3-D noise (1 mm cells) with wavelengths in [low_mm, high_mm], unit std."""
    white = rng.standard_normal((n, n, n))
    f = np.fft.fftfreq(n)
    fr = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    band = (fr >= 1.0 / high_mm) & (fr <= 1.0 / low_mm)
    out = np.real(np.fft.ifftn(np.fft.fftn(white) * band))
    # trabeculae are plate/rod-like: sharpen the noise into a sponge-like pattern
    out = np.tanh(2.0 * out / out.std())
    return ((out - out.mean()) / out.std()).astype(np.float32)


def sample_anatomy(rng: np.random.Generator, side: str) -> Anatomy:
    """Draw one patient's pelvis."""
    a = np.zeros(K.N_ANAT)
    a[K.A_SIGN] = 1.0 if side == "L" else -1.0
    a[K.A_TAN] = np.tan(np.radians(rng.uniform(20.0, 30.0)))
    depth_half = rng.uniform(9.0, 13.0)
    a[K.A_DH] = depth_half
    # the slope range over the depth spans about +-4 degrees around the obliquity
    a[K.A_KAPPA] = rng.uniform(0.07, 0.09) / depth_half
    a[K.A_TILT] = np.tan(np.radians(rng.uniform(12.0, 24.0)))
    a[K.A_AMP_C] = rng.uniform(-2.0, 4.0)
    a[K.A_AMP_S] = rng.uniform(-2.5, 2.5)
    length = rng.uniform(32.0, 48.0)
    a[K.A_ZINF] = -length / 6.0
    a[K.A_ZSUP] = 5.0 * length / 6.0
    a[K.A_W0] = rng.uniform(1.0, 3.0)
    a[K.A_XM] = -rng.uniform(36.0, 48.0)
    a[K.A_SHELL] = rng.uniform(1.0, 2.0)
    a[K.A_TRAB] = rng.uniform(0.22, 0.38)
    a[K.A_TEXAMP] = rng.uniform(0.25, 0.45)
    a[K.A_SAC_ANT] = rng.uniform(8.0, 16.0)
    a[K.A_SAC_POST] = rng.uniform(4.0, 10.0)
    a[K.A_ALA_TOP] = rng.uniform(8.0, 18.0)
    a[K.A_IL_TJ] = depth_half + rng.uniform(12.0, 20.0)
    a[K.A_CREST_H] = rng.uniform(45.0, 65.0)
    a[K.A_NOTCH_R] = rng.uniform(18.0, 28.0)
    a[K.A_FOR_X] = rng.uniform(22.0, 28.0)
    a[K.A_WAVE] = rng.uniform(0.3, 1.2)
    a[K.A_WAVE_K] = 2.0 * np.pi / rng.uniform(12.0, 25.0)
    a[K.A_L5] = 1.0
    zz = np.linspace(a[K.A_ZINF] - 20.0, a[K.A_ZSUP] + 20.0, 200)
    jx = [K.joint_x(y, z, a)[0] for z in zz for y in (-a[K.A_DH] - 12.0, a[K.A_DH] + 12.0)]
    band = a[K.A_W0] + 6.0
    a[K.A_JX_LO] = min(jx) - band
    a[K.A_JX_HI] = max(jx) + band
    thickness_mm = rng.uniform(180.0, 300.0)
    semi_y = thickness_mm / 2.0
    skin_post = depth_half + a[K.A_SAC_POST] + rng.uniform(35.0, 75.0)
    body = np.array([a[K.A_SIGN] * a[K.A_XM], skin_post - semi_y,
                     rng.uniform(165.0, 215.0), semi_y])
    return Anatomy(params=a, tex_fine=_band_limited_noise(rng, 64, 1.6, 5.0),
                   tex_coarse=_band_limited_noise(rng, 32, 3.0, 12.0), body=body, side=side)


@dataclass(frozen=True)
class StaticMaps:
    """Per-pose line integrals of the static anatomy (all (size, size) float32)."""

    bone_mm: np.ndarray
    body_mm: np.ndarray
    gap_mm: np.ndarray
    gap_z_mm: np.ndarray
    gap_y_mm: np.ndarray


def density_grid(anatomy: Anatomy, cameras: list[Camera], voxel_mm: float = VOXEL_MM
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Voxelise the bones over the region every camera sees; returns (grid, origin_mm)."""
    lo = np.array([np.inf, _BONE_Y_MM[0], np.inf])
    hi = np.array([-np.inf, _BONE_Y_MM[1], -np.inf])
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], float)
    for cam in cameras:
        rays = cam.ray(corners * (cam.size - 1))
        for ymm in _BONE_Y_MM:
            # where the corner rays cross the bone slab's planes
            t = (ymm - cam.source_mm[1]) / rays[:, 1]
            pts = cam.source_mm + t[:, None] * rays
            lo = np.minimum(lo, pts.min(axis=0))
            hi = np.maximum(hi, pts.max(axis=0))
    lo[1] = _BONE_Y_MM[0]
    hi[1] = _BONE_Y_MM[1]
    lo -= 2.0
    hi += 2.0
    shape = np.ceil((hi - lo) / voxel_mm).astype(int) + 1
    grid = np.empty((shape[0], shape[2], shape[1]), np.float32)
    K.build_density_grid(grid, lo, voxel_mm, anatomy.params, anatomy.tex_fine,
                         anatomy.tex_coarse)
    return grid, lo


def cast(anatomy: Anatomy, grid: np.ndarray, origin_mm: np.ndarray, cam: Camera, *,
         voxel_mm: float = VOXEL_MM, step_mm: float = STEP_MM) -> StaticMaps:
    """Ray-cast bone, soft-tissue envelope and joint space for one pose."""
    maps = [np.empty((cam.size, cam.size), np.float32) for _ in range(5)]
    K.cast_static(cam.vector, cam.size, grid, origin_mm, voxel_mm, anatomy.params,
                  anatomy.tex_fine, anatomy.tex_coarse, anatomy.body, step_mm, *maps)
    return StaticMaps(*maps)


@dataclass(frozen=True)
class JointProjection:
    """Projected joint line of one pose (full length, not clipped to the exposed field)."""

    polyline_xy: np.ndarray      # (n, 2), superior -> inferior, ~1 px steps
    doubled: bool
    points_mm: np.ndarray        # 3-D points on the mid-surface behind the polyline


def _tangent_residual(anatomy: Anatomy, cam: Camera, y: np.ndarray, z: float) -> np.ndarray:
    a = anatomy.params
    out = np.empty_like(y)
    for i, yy in enumerate(y):
        jx, jy, jz = K.joint_x(yy, z, a)
        p = np.array([anatomy.sign * jx, yy, z])
        r = p - cam.source_mm
        r /= np.linalg.norm(r)
        n = np.array([anatomy.sign, -jy, -jz])
        out[i] = (n @ r) / np.linalg.norm(n)
    return out


def resolution_mm(pixel_spacing_mm: float, blur_mm: float) -> float:
    """Smallest detail the detector shows (detector plane, mm): the FWHM of its Gaussian blur,
    and no less than two pixels (the sampling limit)."""
    return max(2.0 * pixel_spacing_mm, 2.0 * math.sqrt(2.0 * math.log(2.0)) * blur_mm)


def project_joint(anatomy: Anatomy, cam: Camera, *, resolution_mm: float) -> JointProjection:
    """Project the locus where the beam runs tangent to the joint mid-surface.

    Where no tangent exists within the synovial depth (C-arm obliquity off the joint's own
    obliquity) the anterior and posterior margins project apart; the primary line is then the
    margin nearest to tangency. A height shows two lines only when, besides, its margins lie
    further apart across the line than one margin's lucent line is wide (the gap, W0, times
    the magnification) plus ``resolution_mm`` (detector plane): closer, the two lines merge
    into one, or the bone between them is too thin for the detector to show. The view is
    ``doubled`` when more than half of the heights show two lines.
    """
    a = anatomy.params
    zs = np.linspace(a[K.A_ZSUP], a[K.A_ZINF], 161)
    ys = np.linspace(-a[K.A_DH], a[K.A_DH], 41)
    pts = []
    missing = np.zeros(len(zs), bool)
    for k, z in enumerate(zs):
        g = _tangent_residual(anatomy, cam, ys, z)
        sign_change = np.nonzero(np.sign(g[:-1]) != np.sign(g[1:]))[0]
        if sign_change.size:
            i = sign_change[0]
            y = ys[i] - g[i] * (ys[i + 1] - ys[i]) / (g[i + 1] - g[i])
            for _ in range(3):   # refine by secant on the exact residual
                y0, y1 = y - 0.05, y + 0.05
                g0, g1 = _tangent_residual(anatomy, cam, np.array([y0, y1]), z)
                if g1 == g0:
                    break
                y = y0 - g0 * (y1 - y0) / (g1 - g0)
            y = float(np.clip(y, -a[K.A_DH], a[K.A_DH]))
        else:
            missing[k] = True
            y = float(ys[np.argmin(np.abs(g))])
        pts.append(anatomy.joint_point(y, float(z)))
    pts = np.array(pts)
    xy = cam.project(pts)
    apart = missing & (_margin_separation_mm(anatomy, cam, zs)
                       > a[K.A_W0] * cam.magnification(pts) + resolution_mm)
    # resample to ~1 px steps
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(int(np.ceil(s[-1])) + 1, 2)
    si = np.linspace(0.0, s[-1], n)
    xy_r = np.stack([np.interp(si, s, xy[:, 0]), np.interp(si, s, xy[:, 1])], axis=1)
    p_r = np.stack([np.interp(si, s, pts[:, k]) for k in range(3)], axis=1)
    return JointProjection(polyline_xy=xy_r, doubled=int(apart.sum()) > len(zs) // 2,
                           points_mm=p_r)


def _margin_separation_mm(anatomy: Anatomy, cam: Camera, zs: np.ndarray) -> np.ndarray:
    """Per height, how far apart the anterior (y = -DH) and posterior (y = +DH) margins
    project across the joint line (detector plane, mm)."""
    dh = anatomy.params[K.A_DH]
    ant = cam.project(np.array([anatomy.joint_point(-dh, float(z)) for z in zs]))
    post = cam.project(np.array([anatomy.joint_point(dh, float(z)) for z in zs]))
    along = np.gradient(0.5 * (ant + post), axis=0)
    along /= np.linalg.norm(along, axis=1, keepdims=True)
    d = post - ant
    return np.abs(d[:, 0] * along[:, 1] - d[:, 1] * along[:, 0]) * cam.pixel_spacing_mm


def opening_angle_deg(anatomy: Anatomy, target_mm: np.ndarray, secondary_angle_deg: float,
                      make_cam) -> float:
    """Primary angle at which the central ray is tangent to the joint at the target."""
    a = anatomy.params
    _, jy, jz = K.joint_x(target_mm[1], target_mm[2], a)
    n = np.array([anatomy.sign, -jy, -jz])
    angles = np.linspace(-60.0, 60.0, 241)
    res = []
    for ang in angles:
        cam = make_cam(ang, secondary_angle_deg)
        r = target_mm - cam.source_mm
        res.append(n @ (r / np.linalg.norm(r)))
    res = np.array(res)
    k = np.nonzero(np.sign(res[:-1]) != np.sign(res[1:]))[0]
    i = k[np.argmin(np.abs(angles[k]))]
    return float(angles[i] - res[i] * (angles[i + 1] - angles[i]) / (res[i + 1] - res[i]))
