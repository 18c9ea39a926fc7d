"""Sub-pixel tip placement (refine_tip) where the shaft crosses a background edge or band."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sifluoro.track import _needle_kernels as K
from sifluoro.track.needle_detect import NeedleSettings, refine_tip

SPACING_MM = 0.3
TIP_XY = (150.0, 100.0)


def _image(kind: str, cross_x: float, angle_deg: float, seed: int = 0) -> np.ndarray:
    """A bright horizontal needle (0.7 mm wide) ending at TIP_XY, over a background crossed at
    ``cross_x`` on the needle's axis by a straight dark band (a joint line) or a step (a bone
    edge) at ``angle_deg`` to the needle."""
    y, x = np.mgrid[:200, :260].astype(np.float64)
    a = math.radians(angle_deg)
    # signed distance from the crossing line through (cross_x, TIP_XY[1])
    dist = (x - cross_x) * math.sin(a) - (y - TIP_XY[1]) * math.cos(a)
    if kind == "band":
        img = 0.6 - 0.25 * np.exp(-0.5 * (dist * SPACING_MM / 1.0) ** 2)
    else:
        img = 0.5 + 0.2 / (1.0 + np.exp(-dist * SPACING_MM / 0.4))
    half_w = 0.35 / SPACING_MM
    shaft = np.clip(half_w + 0.5 - np.abs(y - TIP_XY[1]), 0.0, 1.0)
    shaft *= np.clip(TIP_XY[0] + 0.5 - x, 0.0, 1.0)
    img = img + 0.12 * shaft
    img += np.random.default_rng(seed).normal(0.0, 0.004, img.shape)
    return cv2.GaussianBlur(img.astype(np.float32), (0, 0), 0.8)


@pytest.mark.parametrize("kind,cross_mm,angle_deg", [
    ("band", 3.0, 35.0), ("band", 4.5, 50.0), ("band", 2.0, 40.0),
    ("step", 3.0, 40.0), ("step", 4.5, 35.0)])
def test_tip_just_past_an_oblique_crossing_is_found(kind, cross_mm, angle_deg):
    """The crossing is cross_mm short of the tip; the rough tip lies on it."""
    cross_x = TIP_XY[0] - cross_mm / SPACING_MM
    img = _image(kind, cross_x, angle_deg)
    out = refine_tip(img, np.array([cross_x, TIP_XY[1] + 0.5]), np.array([1.0, 0.0]),
                     SPACING_MM, NeedleSettings(), {})
    assert out is not None
    tip, _, contrast = out
    assert math.dist(tip, TIP_XY) * SPACING_MM <= 0.5
    assert contrast > 0.05


def test_tip_on_a_flat_background_is_not_moved_by_the_shear():
    img = _image("step", 20.0, 40.0)  # the step far behind the window
    args = (img, np.array([TIP_XY[0] - 8.0, TIP_XY[1]]), np.array([1.0, 0.0]), SPACING_MM)
    got = refine_tip(*args, NeedleSettings(), {})
    plain = refine_tip(*args, NeedleSettings(tip_shear_mm=0.0), {})
    # on noise alone the best shift is arbitrary: the tip may move by a sample, no more
    assert math.dist(got[0], plain[0]) * SPACING_MM <= 0.1
    assert math.dist(got[0], TIP_XY) * SPACING_MM <= 0.3


def _sheared_reference(img, x0, y0, ux, uy, step, offset, max_shift, stride, gain, n):
    """NumPy reference of K.sheared_contrast: every shift a multiple of ``stride``."""
    j = np.arange(-2 * max_shift, n + 2 * max_shift)
    px, py = x0 + j * step * ux, y0 + j * step * uy
    nx, ny = -uy, ux
    samp = lambda dx, dy: np.array([K.bilinear(img, a + dx, b + dy) for a, b in zip(px, py)])
    f = [samp(offset * nx, offset * ny), samp(-offset * nx, -offset * ny),
         samp(2 * offset * nx, 2 * offset * ny), samp(-2 * offset * nx, -2 * offset * ny)]
    m, i = 2 * max_shift, np.arange(0, n, stride)

    def mismatch(a, b, s):
        va, vb = a[i - s + m], b[i + s + m]
        return np.var(va - vb) / (np.var(va) + np.var(vb) + 1e-12)

    shifts = sorted([k * sign for k in range(0, max_shift + 1, stride) for sign in (1, -1)
                     if k or sign > 0], key=lambda s: (abs(s), -s))
    cost = [mismatch(f[0], f[1], s) + mismatch(f[2], f[3], 2 * s) for s in shifts]
    s = shifts[int(np.argmin(cost))] if min(cost) < gain * cost[0] else 0
    centre = samp(0.0, 0.0)[m:m + n]
    k = np.arange(n)
    return s, centre - 0.5 * (f[0][k - s + m] + f[1][k + s + m])


@pytest.mark.parametrize("seed,angle_deg,stride,gain", [(1, 35.0, 4, 0.8), (2, -50.0, 2, 1.0),
                                                        (3, 70.0, 1, 0.5), (4, 0.0, 4, 0.8)])
def test_sheared_contrast_matches_reference(seed, angle_deg, stride, gain):
    img = _image("band", 130.0, angle_deg, seed)
    n, max_shift = 120, 20
    out = np.empty(n, np.float64)
    flanks = np.empty((4, n + 4 * max_shift), np.float64)
    ux, uy = math.cos(0.05), math.sin(0.05)
    plain = np.empty(n, np.float64)
    s = K.sheared_contrast(img, 100.0, 98.0, ux, uy, 0.25, 5.0, max_shift, stride, gain, flanks,
                           out, plain)
    s_ref, ref = _sheared_reference(img, 100.0, 98.0, ux, uy, 0.25, 5.0, max_shift, stride, gain,
                                    n)
    assert s == s_ref
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9)
    # the unsheared contrast beside it, and no shear: both the plain line contrast
    ref_plain = np.empty(n, np.float64)
    K.line_contrast(img, 100.0, 98.0, ux, uy, 0.25, 5.0, ref_plain)
    np.testing.assert_allclose(plain, ref_plain, rtol=1e-9, atol=1e-12)
    K.sheared_contrast(img, 100.0, 98.0, ux, uy, 0.25, 5.0, 0, stride, gain, flanks, out, plain)
    np.testing.assert_allclose(out, ref_plain, rtol=1e-9, atol=1e-12)
