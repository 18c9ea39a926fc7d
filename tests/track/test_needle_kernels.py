"""Needle kernels against NumPy / scikit-image references on random and edge-case inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit
from scipy import ndimage
from skimage.feature import hessian_matrix_eigvals

from sifluoro.track import _needle_kernels as K


def _ref_ridge(s, mask, edge_gain):
    """3-point second differences in NumPy, eigenvalues by scikit-image."""
    s = s.astype(np.float64)
    dxx = np.zeros_like(s, np.float64)
    dyy = np.zeros_like(s, np.float64)
    dxy = np.zeros_like(s, np.float64)
    dxx[:, 1:-1] = s[:, 2:] - 2 * s[:, 1:-1] + s[:, :-2]
    dyy[1:-1] = s[2:] - 2 * s[1:-1] + s[:-2]
    dxy[1:-1, 1:-1] = 0.25 * (s[2:, 2:] - s[2:, :-2] - s[:-2, 2:] + s[:-2, :-2])
    l2, l1 = hessian_matrix_eigvals([dyy, dxy, dxx])  # descending order
    gx = np.zeros_like(dxx)
    gy = np.zeros_like(dxx)
    gx[:, 1:-1] = 0.5 * (s[:, 2:] - s[:, :-2])
    gy[1:-1] = 0.5 * (s[2:] - s[:-2])
    out = -l1 - np.abs(l2) - edge_gain * np.hypot(gx, gy)
    out[~mask] = 0
    out[[0, -1]] = 0
    out[:, [0, -1]] = 0
    return out


@pytest.mark.parametrize("shape", [(3, 3), (7, 5), (40, 33)])
def test_ridge_map_matches_reference(shape):
    rng = np.random.default_rng(1)
    s = rng.normal(size=shape).astype(np.float32)
    mask = rng.random(shape) > 0.2
    out = np.empty(shape, np.float32)
    K.ridge_map(s, mask, np.float32(0.5), out)
    np.testing.assert_allclose(out, _ref_ridge(s, mask, 0.5), atol=1e-5)


def test_ridge_map_prefers_lines_to_edges_and_dots():
    y, x = np.mgrid[:41, :41].astype(np.float32)
    line = np.exp(-((x - 20) ** 2) / 2.0)
    edge = ndimage.gaussian_filter((x > 20).astype(np.float32), 1.0)
    dot = np.exp(-((x - 20) ** 2 + (y - 20) ** 2) / 2.0)
    mask = np.ones((41, 41), bool)
    out = np.empty((41, 41), np.float32)
    peaks = []
    for img in (line, edge, dot):
        K.ridge_map(img.astype(np.float32), mask, np.float32(0.5), out)
        peaks.append(out[5:-5, 5:-5].max())
    assert peaks[0] > 3 * max(peaks[1], peaks[2], 1e-6)


@pytest.mark.parametrize("angle_deg", [0.0, 30.0, 90.0, 135.0, 179.0])
def test_line_angle(angle_deg):
    y, x = np.mgrid[:31, :31].astype(np.float64)
    a = math.radians(angle_deg)
    dist = -(x - 15) * math.sin(a) + (y - 15) * math.cos(a)
    img = np.exp(-dist ** 2 / 4.0).astype(np.float32)
    got = K.line_angle(img, 15, 15)
    diff = abs((got - a + math.pi / 2) % math.pi - math.pi / 2)
    assert diff < math.radians(2.0)  # 3-point differences are slightly anisotropic


def _ref_hough(smooth, score, z_min, z_cap, lo, hi, hw, shape, rho_offset):
    acc = np.zeros(shape, np.float32)
    n_theta = shape[0]
    for yy in range(1, score.shape[0] - 1):
        for xx in range(1, score.shape[1] - 1):
            z = score[yy, xx]
            if z <= z_min:
                continue
            b = int(K.line_angle(smooth, xx, yy) / (math.pi / n_theta) + 0.5)
            for k in range(b - hw, b + hw + 1):
                kb = k % n_theta
                inside = lo <= kb <= hi if lo <= hi else (kb >= lo or kb <= hi)
                if not inside:
                    continue
                phi = kb * math.pi / n_theta + math.pi / 2
                j = int(math.floor(xx * math.cos(phi) + yy * math.sin(phi) + rho_offset + 0.5))
                if 0 <= j < shape[1]:
                    acc[kb, j] += min(z, z_cap) - z_min
    return acc


@pytest.mark.parametrize("lo,hi", [(0, 179), (170, 10), (40, 60)])
def test_hough_vote_matches_reference(lo, hi):
    rng = np.random.default_rng(2)
    smooth = rng.normal(size=(24, 30)).astype(np.float32)
    score = rng.normal(size=(24, 30)).astype(np.float32) * 2
    rho_offset = 40.0
    acc = np.full((180, 83), 7.0, np.float32)
    n = K.hough_vote(smooth, score, np.float32(1.0), np.float32(3.0), lo, hi, 2, acc, rho_offset)
    ref = _ref_hough(smooth, score, 1.0, 3.0, lo, hi, 2, acc.shape, rho_offset)
    np.testing.assert_allclose(acc, ref, atol=1e-4)
    assert n == int((score[1:-1, 1:-1] > 1.0).sum())


@njit
def _hough_vote_scan(smooth, score, z_min, z_cap, angle_lo, angle_hi, half_window, acc,
                     rho_offset):
    """hough_vote as it was: each vote's normal from cos and sin of its angle."""
    n_theta, n_rho = acc.shape
    acc[:] = 0.0
    bin_rad = math.pi / n_theta
    for y in range(1, score.shape[0] - 1):
        for x in range(1, score.shape[1] - 1):
            z = score[y, x]
            if z <= z_min:
                continue
            w = min(z, z_cap) - z_min
            b = int(K.line_angle(smooth, x, y) / bin_rad + 0.5)
            for k in range(b - half_window, b + half_window + 1):
                kb = k % n_theta
                if angle_lo <= angle_hi:
                    if kb < angle_lo or kb > angle_hi:
                        continue
                elif kb < angle_lo and kb > angle_hi:
                    continue
                phi = kb * bin_rad + 0.5 * math.pi
                j = int(math.floor(x * math.cos(phi) + y * math.sin(phi) + rho_offset + 0.5))
                if 0 <= j < n_rho:
                    acc[kb, j] += w


@pytest.mark.parametrize("lo,hi", [(0, 179), (170, 10)])
def test_hough_vote_equals_the_scan_with_cos_and_sin_per_vote_exactly(lo, hi):
    rng = np.random.default_rng(lo)
    smooth = np.round(rng.normal(size=(37, 64)) * 4).astype(np.float32) / 4
    score = rng.normal(size=smooth.shape).astype(np.float32) * 2
    acc, ref = np.empty((180, 160), np.float32), np.empty((180, 160), np.float32)
    K.hough_vote(smooth, score, np.float32(0.5), np.float32(3.0), lo, hi, 3, acc, 70.0)
    _hough_vote_scan(smooth, score, np.float32(0.5), np.float32(3.0), lo, hi, 3, ref, 70.0)
    np.testing.assert_array_equal(acc, ref)
    assert ref.max() > 0.0


def test_hough_vote_peak_on_a_line():
    img = np.zeros((64, 64), np.float32)
    img[:, 30] = 1.0
    smooth = ndimage.gaussian_filter(img, 1.0).astype(np.float32)
    acc = np.empty((180, 2 * 91 + 3), np.float32)
    K.hough_vote(smooth, smooth * 10, np.float32(1.0), np.float32(6.0), 0, 179, 3, acc, 92.0)
    i, j = np.unravel_index(np.argmax(acc), acc.shape)
    assert i == 90 and abs(abs(j - 92) - 30) <= 1  # vertical line x = 30


def test_bilinear_matches_scipy_map_coordinates():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(9, 13))
    pts = rng.uniform(-2, 14, (200, 2))
    got = np.array([K.bilinear(img, x, y) for x, y in pts])
    clipped = np.stack([np.clip(pts[:, 1], 0, 8), np.clip(pts[:, 0], 0, 12)])
    ref = ndimage.map_coordinates(img, clipped, order=1, mode="nearest")
    np.testing.assert_allclose(got, ref, atol=1e-9)


def test_line_support_and_contrast_match_reference():
    rng = np.random.default_rng(4)
    img = rng.normal(size=(20, 25)).astype(np.float32)
    ux, uy = math.cos(0.4), math.sin(0.4)
    out = np.empty(15, np.float32)
    K.line_support(img, 2.0, 3.0, ux, uy, 1, out)
    for i in range(15):
        cx, cy = 2.0 + i * ux, 3.0 + i * uy
        vals = [img[int(math.floor(cy + k * ux + 0.5)), int(math.floor(cx - k * uy + 0.5))]
                for k in (-1, 0, 1)]
        assert out[i] == pytest.approx(max(vals))
    prof = np.empty(10, np.float64)
    K.line_contrast(img, 5.0, 5.0, ux, uy, 0.5, 2.0, prof)
    for i in range(10):
        px, py = 5.0 + 0.5 * i * ux, 5.0 + 0.5 * i * uy
        ref = K.bilinear(img, px, py) - 0.5 * (K.bilinear(img, px - 2 * uy, py + 2 * ux)
                                               + K.bilinear(img, px + 2 * uy, py - 2 * ux))
        assert prof[i] == pytest.approx(ref)


def test_cross_peaks_finds_subpixel_offset():
    y, x = np.mgrid[:30, :40].astype(np.float64)
    img = np.exp(-((y - 15.3) ** 2) / 3.0)
    out = np.empty(20, np.float64)
    K.cross_peaks(img, 10.0, 15.0, 1.0, 0.0, 1.0, 3, out)
    np.testing.assert_allclose(out, 0.3, atol=0.05)
    flat = np.zeros((30, 40))
    flat[:, :] = np.arange(30)[:, None]  # brightest at the window border -> NaN
    K.cross_peaks(flat, 10.0, 15.0, 1.0, 0.0, 1.0, 3, out)
    assert np.isnan(out).all()


@pytest.mark.parametrize("split", [5, 17, 30])
def test_step_location_matches_brute_force(split):
    rng = np.random.default_rng(split)
    prof = np.concatenate([np.ones(split), np.zeros(40 - split)]) + 0.2 * rng.normal(size=40)
    i, best = K.step_location(prof, 2, 38)
    n = len(prof)
    ref = [(prof[:k].mean() - prof[k:].mean()) * math.sqrt(k * (n - k) / n) for k in range(2, 38)]
    assert i == 2 + int(np.argmax(ref))
    assert best == pytest.approx(max(ref))
    assert abs(i - split) <= 1


def test_best_interval_matches_brute_force():
    rng = np.random.default_rng(5)
    for _ in range(30):
        v = rng.normal(size=40)
        a, b, s = K.best_interval(v, 0.0, 1000)
        sums = [(v[i:j + 1].sum(), i, j) for i in range(40) for j in range(i, 40)]
        best = max(sums)
        assert s == pytest.approx(max(best[0], 0.0))
        if best[0] > 0:
            assert v[a:b + 1].sum() == pytest.approx(best[0])
    a, b, s = K.best_interval(np.full(5, -1.0), 0.0, 3)
    assert s == 0.0 and b < a
    v = np.array([3.0, -1, -1, -1, 3.0])
    assert K.best_interval(v, 0.0, 2)[2] == pytest.approx(3.0)  # gap of 3 not bridged
    assert K.best_interval(v, 0.0, 3)[2] == pytest.approx(3.0)  # bridged: 3 - 3 + 3



def test_warm_up_runs_on_small_and_odd_shapes():
    K.warm_up((3, 5))
    K.warm_up((64, 48))


def test_line_flanks_matches_reference():
    rng = np.random.default_rng(5)
    img = rng.normal(size=(30, 40)).astype(np.float32)
    ux, uy = math.cos(0.4), math.sin(0.4)
    lo = np.empty(12)
    mean = np.empty(12)
    K.line_flanks(img, 6.0, 5.0, ux, uy, 0.75, 2.5, lo, mean)
    for i in range(12):
        px, py = 6.0 + i * 0.75 * ux, 5.0 + i * 0.75 * uy
        c = K.bilinear(img, px, py)
        left = c - K.bilinear(img, px - 2.5 * uy, py + 2.5 * ux)
        right = c - K.bilinear(img, px + 2.5 * uy, py - 2.5 * ux)
        assert lo[i] == pytest.approx(min(left, right), abs=1e-6)
        assert mean[i] == pytest.approx(0.5 * (left + right), abs=1e-6)


def test_line_flanks_tells_a_line_from_an_edge():
    y, x = np.mgrid[:41, :41].astype(np.float32)
    line = np.exp(-((x - 20) ** 2) / 2.0).astype(np.float32)
    edge = ndimage.gaussian_filter((x > 20).astype(np.float32), 1.0)
    lo = np.empty(20)
    mean = np.empty(20)
    K.line_flanks(line, 20.0, 10.0, 0.0, 1.0, 1.0, 3.0, lo, mean)
    assert lo.min() > 0.5 * mean.max() > 0.0
    K.line_flanks(edge, 20.0, 10.0, 0.0, 1.0, 1.0, 3.0, lo, mean)
    assert lo.max() <= 1e-6



def _ref_axis_fit(offs, step, min_ok, min_keep):
    """The robust fit as NumPy: least squares, then again without the outliers."""
    t = np.arange(len(offs)) * step
    ok = np.isfinite(offs)
    if ok.sum() < min_ok:
        return False, 0.0, 0.0
    a, b = np.polyfit(t[ok], offs[ok], 1)
    res = np.abs(offs[ok] - (a * t[ok] + b))
    keep = res < max(0.75, 2.5 * np.median(res))
    if keep.sum() >= min_keep:
        a, b = np.polyfit(t[ok][keep], offs[ok][keep], 1)
    return True, a, b


@pytest.mark.parametrize("seed", range(6))
def test_axis_fit_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 80))
    step = [1.0, 0.5][seed % 2]
    offs = 0.03 * np.arange(n) * step - 0.4 + 0.2 * rng.normal(size=n)
    offs[rng.random(n) < 0.2] = np.nan  # cross_peaks' border stations
    offs[rng.random(n) < 0.1] += 3.0  # a crossing edge pulls a few stations off the axis
    found, a, b = K.axis_fit(offs, step, max(4, n // 3), 4)
    ref = _ref_axis_fit(offs, step, max(4, n // 3), 4)
    assert found == ref[0]
    if found:
        assert a == pytest.approx(ref[1], abs=1e-9) and b == pytest.approx(ref[2], abs=1e-9)


def test_axis_fit_drops_outliers_and_refuses_too_few():
    offs = 0.1 * np.arange(20.0) + 1.0
    offs[[3, 11]] = 9.0
    found, a, b = K.axis_fit(offs, 1.0, 6, 6)
    assert found and a == pytest.approx(0.1) and b == pytest.approx(1.0)
    offs[:15] = np.nan  # 5 finite stations of 20
    assert K.axis_fit(offs, 1.0, 6, 6)[0] is False

