"""Image-quality measures of simulated frames, used by the tests and quoted in the docs."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates


def _attenuation_like(run) -> np.ndarray:
    f = run.frames.astype(np.float64)
    return f if run.attenuation_rises_with_value else (2 ** run.bits_stored - 1) - f


def _noise_sd(frames: np.ndarray, mask: np.ndarray) -> float:
    """Per-frame noise from the difference of two frames of the same run."""
    return float(np.std(frames[1][mask] - frames[0][mask]) / np.sqrt(2.0))


def _profile_cnr(img: np.ndarray, line_xy: np.ndarray, offset_px: float, noise: float) -> float:
    tang = np.gradient(line_xy, axis=0)
    normal = np.stack([-tang[:, 1], tang[:, 0]], 1) / np.linalg.norm(tang, axis=1)[:, None]

    def at(o):
        p = line_xy + o * normal
        return map_coordinates(img, [p[:, 1], p[:, 0]], order=1)

    centre = at(0.0)
    sides = 0.5 * (at(-offset_px) + at(offset_px))
    return float(abs(np.mean(centre - sides)) / noise)


def line_cnr(run, frame: int, which: str, offset_mm: float = 3.0) -> float:
    """Contrast-to-noise ratio of the joint line or the needle shaft in one frame.

    Mean difference between the stored values on the truth line and ``offset_mm`` either side
    (at the detector), over the per-frame noise (from two frames of the run, so anatomy does
    not count as noise). ``which`` is "joint" or "needle".
    """
    t = run.truth[frame]
    line = t.joint_polyline_xy if which == "joint" else t.shaft_xy
    line = np.asarray(line, float)
    if which == "needle":
        seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        keep = s < s[-1] - 3.0          # leave the tip out
        line = line[keep]
    img = _attenuation_like(run)
    noise = _noise_sd(img, run.exposed_mask)
    off = offset_mm / run.technique.imager_pixel_spacing_mm
    return _profile_cnr(img[frame], line, off, noise)


def fwhm_px(img: np.ndarray, centre_xy: np.ndarray, direction_xy: np.ndarray,
            half_len_px: float = 8.0) -> float:
    """Full width at half maximum of a line profile through ``centre_xy`` along ``direction``."""
    s = np.linspace(-half_len_px, half_len_px, 801)
    p = centre_xy[None] + s[:, None] * direction_xy[None]
    prof = map_coordinates(img, [p[:, 1], p[:, 0]], order=1)
    above = np.nonzero(prof >= 0.5 * prof.max())[0]
    return float(s[above[-1]] - s[above[0]])
