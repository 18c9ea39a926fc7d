"""The needle search's kernels against the NumPy / OpenCV code they replace: equal exactly
(booleans, indices, float32 medians), on random inputs with ties and values at the thresholds."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sifluoro.track import _needle_kernels as K
from sifluoro.track.needle_detect import laplacian_noise


def _pool_any(mask: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = mask.shape[0] // factor, mask.shape[1] // factor
    return mask[:rows * factor, :cols * factor].reshape(rows, factor, cols, factor).any(axis=(1, 3))


def _image_at_thresholds(shape, seed, levels):
    """float32 image of random values and of the given levels and their float32 neighbours."""
    rng = np.random.default_rng(seed)
    img = rng.random(shape).astype(np.float32)
    pick = rng.random(shape)
    for k, level in enumerate(levels):
        near = np.array([np.nextafter(np.float32(level), np.float32(-1)), np.float32(level),
                         np.nextafter(np.float32(level), np.float32(2))], np.float32)
        sel = (pick > 0.5 + 0.1 * k) & (pick <= 0.6 + 0.1 * k)
        img[sel] = near[rng.integers(0, 3, int(sel.sum()))]
    return img


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(40, 40), (37, 53), (9, 3)])
def test_cells_any_below_matches_the_pooled_compare(factor, shape):
    if shape[0] < factor or shape[1] < factor:
        pytest.skip("no whole cell")
    img = _image_at_thresholds(shape, factor, [0.9995])
    for density in (0.02, 0.5, 0.98):
        # mostly at the threshold or above, some below
        att = np.where(np.random.default_rng(3).random(shape) < density, img,
                       np.float32(1.0)).astype(np.float32)
        out = np.empty((shape[0] // factor, shape[1] // factor), bool)
        K.cells_any_below(att, np.float32(0.9995), factor, out)
        assert np.array_equal(out, _pool_any(att < 0.9995, factor))


def _glyph_reference(att, lo, hi, factor, top, jump):
    k3 = np.ones((3, 3), np.uint8)
    seeds = np.zeros(att.shape, bool)
    found = (cv2.dilate(att, k3) >= top) & (cv2.dilate(att, k3) - cv2.erode(att, k3) > jump)
    seeds[lo:hi] = found[lo:hi]
    return _pool_any(seeds, factor).astype(np.uint8)


@pytest.mark.parametrize("factor", [1, 2, 3])
@pytest.mark.parametrize("shape", [(30, 41), (16, 16), (5, 2)])
def test_glyph_cells_match_dilate_erode_and_pooling(factor, shape):
    if shape[0] < factor or shape[1] < factor:
        pytest.skip("no whole cell")
    att = _image_at_thresholds(shape, 11 * factor, [0.995])
    # jumps of exactly 0.5 (float32) beside the maximum
    att[::4, ::3] = np.float32(0.995) - np.float32(0.5)
    att[1::5, 1::4] = 0.1
    rows = shape[0]
    for lo, hi in ((0, rows // 3), (rows - rows // 3, rows), (0, rows), (2, 3)):
        out = np.zeros((rows // factor, shape[1] // factor), np.uint8)
        K.glyph_cells(att, lo, hi, factor, np.float32(0.995), np.float32(0.5), out)
        ref = _glyph_reference(att, lo, hi, factor, 0.995, 0.5)
        assert np.array_equal(out, ref)
    assert ref.any() or rows < 6


@pytest.mark.parametrize("shape", [(31, 47), (1, 9), (12, 1)])
def test_mask_moments_equal_opencv(shape):
    rng = np.random.default_rng(shape[0])
    for density in (0.0, 0.3, 1.0):
        mask = rng.random(shape) < density
        m = cv2.moments(mask.view(np.uint8), binaryImage=True)
        assert K.mask_moments(mask) == (m["m00"], m["m10"], m["m01"])


def _edge_points_reference(bounded):
    near = cv2.dilate(bounded, np.ones((3, 3), np.uint8))
    pts = cv2.findNonZero(near - bounded)
    return np.zeros((0, 2)) if pts is None else pts.reshape(-1, 2).astype(np.float64)


@pytest.mark.parametrize("shape", [(33, 45), (2, 7), (6, 1)])
def test_edge_points_equal_the_dilation_difference_in_order(shape):
    rng = np.random.default_rng(shape[1])
    for density in (0.0, 0.1, 0.7, 1.0):
        bounded = (rng.random(shape) < density).astype(np.uint8)
        pts = K.edge_points(bounded)
        assert pts.dtype == np.float64
        assert np.array_equal(pts, _edge_points_reference(bounded))


def test_chamfer_min_equals_the_numpy_expression():
    rng = np.random.default_rng(4)
    pts = rng.integers(0, 60, (500, 2)).astype(np.float64)
    for x, y in rng.integers(0, 60, (20, 2)):
        d = np.abs(pts - np.array([x, y], np.float64))
        lo, hi = d.min(1), d.max(1)
        ref = float((0.955 * (hi - lo) + 1.3693 * lo).min())
        assert K.chamfer_min(pts, float(x), float(y), 0.955, 1.3693) == ref


@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 1000, 1001])
def test_median_f32_equals_numpy(n):
    rng = np.random.default_rng(n)
    for values in (rng.normal(size=n), np.round(rng.normal(size=n) * 2) / 2,  # ties
                   np.full(n, 0.25), np.arange(n)[::-1] * 1e-3, rng.normal(size=n) * 1e-30):
        v = values.astype(np.float32)
        ref = np.median(v)
        got = K.median_f32(v.copy(), n)
        assert type(got) in (float, np.float32)
        assert np.float32(got) == ref and np.float32(got).dtype == ref.dtype


def _laplacian_noise_reference(smooth, valid, stride=3):
    """laplacian_noise as NumPy computes it."""
    s = smooth
    lap = (s[1:-1:stride, 2::stride] + s[1:-1:stride, :-2:stride] + s[2::stride, 1:-1:stride]
           + s[:-2:stride, 1:-1:stride] - 4.0 * s[1:-1:stride, 1:-1:stride])
    v = lap[valid[1:-1:stride, 1:-1:stride]]
    if v.size < 16:
        return 1.0
    mad = float(np.median(np.abs(v - np.median(v))))
    return max(1.4826 * mad, 1e-6)


@pytest.mark.parametrize("shape", [(64, 64), (61, 50), (14, 14), (3, 3)])
@pytest.mark.parametrize("stride", [1, 3])
def test_laplacian_noise_equals_numpy_exactly(shape, stride):
    rng = np.random.default_rng(shape[1] + stride)
    for kind in range(3):
        smooth = rng.normal(size=shape).astype(np.float32)
        if kind == 1:
            smooth = np.round(smooth * 8).astype(np.float32) / 8  # many equal values
        valid = rng.random(shape) < (0.8 if kind < 2 else 0.05)
        ref = _laplacian_noise_reference(smooth, valid, stride)
        assert laplacian_noise(smooth, valid, stride) == ref
        buf = np.empty(smooth.size, np.float32)
        assert laplacian_noise(smooth, valid, stride, buf=buf) == ref
    flat = np.zeros(shape, np.float32)
    assert laplacian_noise(flat, np.ones(shape, bool), stride) == (1e-6 if shape[0] > 9 else 1.0)


def test_laplacian_noise_of_a_field_search_equals_numpy_exactly():
    """At a field search's size (512² working grid, ~29k sampled cells), where the medians
    are binned; also a sample whose median and deviations are zero (flat regions)."""
    rng = np.random.default_rng(11)
    for kind in range(3):
        smooth = cv2.GaussianBlur(rng.normal(size=(512, 512)).astype(np.float32), (0, 0), 1.5)
        if kind == 1:
            smooth[:400] = 0.0  # most Laplacians are zero: median and MAD are 0
        if kind == 2:
            smooth = np.round(smooth * 64).astype(np.float32) / 64  # ties
        valid = rng.random(smooth.shape) < 0.9
        assert laplacian_noise(smooth, valid) == _laplacian_noise_reference(smooth, valid)


def _peaks_reference(acc, n_peaks, rho_offset):
    """LineFinder.lines' peak picking as it was: np.argmax and slice suppression."""
    acc = acc.copy()
    n_theta = acc.shape[0]
    out = []
    for _ in range(n_peaks):
        k = int(np.argmax(acc))
        i, j = divmod(k, acc.shape[1])
        if acc[i, j] <= 0.0:
            break
        out.append((i, j))
        for di in range(-6, 7):
            ii = (i + di) % n_theta
            jj = j if 0 <= i + di < n_theta else 2 * rho_offset - j
            acc[ii, max(0, jj - 10):jj + 11] = 0.0
    return out, acc


@pytest.mark.parametrize("seed", range(4))
def test_hough_peaks_equal_argmax_and_suppression(seed):
    rng = np.random.default_rng(seed)
    rho_offset = 60
    acc = np.zeros((180, 2 * rho_offset + 1), np.float32)
    # sparse votes, integer-valued so that ties occur, peaks near both ends of the angle axis
    sel = rng.random(acc.shape) < 0.1
    acc[sel] = rng.integers(1, 6, int(sel.sum())).astype(np.float32)
    acc[[0, 2, 178], [5, 118, 7]] = 9.0
    acc[90, [3, 40]] = 9.0  # equal maxima: the first in row-major order first
    ref, ref_acc = _peaks_reference(acc, 12, rho_offset)
    out = np.empty((12, 2), np.int64)
    n = K.hough_peaks(acc, 12, rho_offset, out)
    assert [tuple(p) for p in out[:n].tolist()] == ref
    assert np.array_equal(acc, ref_acc)
    # fewer positive cells than peaks asked for
    few = np.zeros((180, 31), np.float32)
    few[10, 4] = 1.0
    assert K.hough_peaks(few, 5, 15, out) == 1 and tuple(out[0]) == (10, 4)


def _segment_reference(score, line, z_cap, bias, gap):
    """LineFinder.segment's interval as it was: the line clipped in Python, NumPy clip."""
    x0, y0, ux, uy = line
    rows, cols = score.shape
    t_lo, t_hi = -1e9, 1e9
    for p, u, hi in ((x0, ux, cols - 2), (y0, uy, rows - 2)):
        if abs(u) < 1e-9:
            if p < 1 or p > hi:
                return None
            continue
        a, b = (1 - p) / u, (hi - p) / u
        t_lo, t_hi = max(t_lo, min(a, b)), min(t_hi, max(a, b))
    t_lo, t_hi = math.ceil(t_lo), math.floor(t_hi)
    if t_hi - t_lo < 2:
        return None
    n = int(t_hi - t_lo) + 1
    prof = np.empty(n, np.float32)
    K.line_support(score, x0 + t_lo * ux, y0 + t_lo * uy, ux, uy, 1, prof)
    np.clip(prof, -z_cap, z_cap, out=prof)
    a, b, total = K.best_interval(prof, np.float32(bias), gap)
    return t_lo, a, b, total


def test_segment_span_equals_the_python_clip_and_support():
    rng = np.random.default_rng(8)
    score = (rng.normal(size=(70, 90)) * 3).astype(np.float32)
    score[30, 10:80] = 9.0  # a line, above the cap
    buf = np.empty(300, np.float32)
    lines = [(0.0, 30.0, 1.0, 0.0), (45.0, -5.0, 0.0, 1.0), (100.0, 30.0, 0.0, 1.0),
             (0.5, 68.5, 1.0, 0.0)]
    for _ in range(40):
        a = rng.uniform(0, math.pi)
        lines.append((float(rng.uniform(-20, 110)), float(rng.uniform(-20, 90)),
                      math.cos(a), math.sin(a)))
    inside = 0
    for line in lines:
        ref = _segment_reference(score, line, 6.0, 0.5, 3)
        got = K.segment_span(score, *line, np.float32(6.0), np.float32(0.5), 3, buf)
        if ref is None:
            assert not got[0]
            continue
        inside += 1
        assert got[0] and tuple(got[1:4]) == ref[:3] and got[4] == ref[3]
    assert inside > 10


@pytest.mark.parametrize("r", [0, 1, 2, 3, 4, 5, 7, 9, 13])
def test_close_and_dilate_ellipse_are_opencvs(r):
    """The closing and dilation on bit rows against OpenCV's by the ellipse, on fields with
    holes, gaps and set or clear borders, widths below, at and past a word of 64 cells."""
    from sifluoro.track.needle_field import _close_ellipse, _dilate_ellipse

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    rng = np.random.default_rng(r)
    shapes = [(1, 1), (3, 64), (20, 63), (2 * r + 3, 65), (50, 128), (9, 129)]
    shapes += [(int(rng.integers(1, 140)), int(rng.integers(1, 200))) for _ in range(12)]
    for p_clear in (0.001, 0.02, 0.3, 0.8):
        for shape in shapes:
            mask = (rng.random(shape) >= p_clear).astype(np.uint8)
            mask[:, :int(rng.integers(0, 12))] = 0
            mask[-int(rng.integers(1, 12)):, :] = 0
            mask[5:9, 10:30] = 0
            closed = _close_ellipse(mask, r)
            assert closed.dtype == np.uint8
            assert np.array_equal(closed, cv2.morphologyEx(mask, cv2.MORPH_CLOSE, k)), shape
            assert np.array_equal(_close_ellipse(mask.astype(bool), r), closed)
            assert np.array_equal(_dilate_ellipse(mask * 3, r), cv2.dilate(mask, k)), shape
