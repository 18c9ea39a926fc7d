"""numba kernels of register/ against plain NumPy references."""
import cv2
import numpy as np
import pytest
from numba import njit

from sifluoro.register import _kernels


def valley_depth_reference(smooth, offsets):
    rows, cols = smooth.shape
    out = np.zeros_like(smooth)
    for d in offsets:
        side = np.full_like(smooth, -np.inf)
        side[:, d:cols - d] = np.minimum(smooth[:, :cols - 2 * d], smooth[:, 2 * d:])
        out = np.maximum(out, side - smooth)
    return out


def best_path_reference(score, penalty, max_step):
    """Row-by-row local-alignment score of the best path, in plain Python."""
    rows, cols = score.shape
    best = 0.0
    # acc[x] = best score of a path ending at (y, x), started anywhere above
    acc = np.maximum(score[0], 0.0)
    best = acc.max()
    for y in range(1, rows):
        new = np.empty(cols)
        for x in range(cols):
            cands = [acc[x]] + [acc[x + d] - abs(d) * penalty for d in range(-max_step, max_step + 1)
                                if d != 0 and 0 <= x + d < cols]
            prev = max(cands)
            new[x] = max(prev + score[y, x] if prev > 0 else -np.inf, score[y, x], 0.0)
        acc = new
        best = max(best, acc.max())
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_valley_depth_matches_reference(seed):
    rng = np.random.default_rng(seed)
    smooth = rng.random((23, 31)).astype(np.float32)
    offsets = np.array([1, 3, 5], np.int64)
    out = np.empty_like(smooth)
    _kernels.valley_depth(smooth, offsets, out)
    np.testing.assert_allclose(out, valley_depth_reference(smooth, offsets), atol=1e-6)


def test_valley_depth_finds_a_dark_line_not_an_edge():
    image = np.ones((10, 40), np.float32)
    image[:, 25:] = 0.5          # a step edge: no valley
    image[:, 10] = 0.7           # a thin dark line
    out = np.empty_like(image)
    _kernels.valley_depth(image, np.array([2], np.int64), out)
    assert out[:, 10].min() == pytest.approx(0.3)
    assert out[:, 20:].max() == 0.0


def run_best_path(score, penalty, max_step):
    path = np.empty(score.shape[0], np.int32)
    out = _kernels.best_path(score, np.float32(penalty), max_step, path, np.empty_like(score),
                             np.empty(score.shape, np.int8))
    return (*out, path)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_step", [1, 2])
def test_best_path_score_and_path_are_consistent(seed, max_step):
    rng = np.random.default_rng(seed)
    score = (rng.random((12, 9)) - 0.6).astype(np.float32)
    score[3:9, 4] = 2.0
    best, y0, y1, path = run_best_path(score, 0.3, max_step)
    assert best == pytest.approx(best_path_reference(score.astype(np.float64), 0.3, max_step), rel=1e-5)
    # the returned path realises the score
    xs = path[y0:y1 + 1]
    assert (path[:y0] == -1).all() and (path[y1 + 1:] == -1).all()
    assert np.all(np.abs(np.diff(xs)) <= max_step)
    total = score[np.arange(y0, y1 + 1), xs].sum() - 0.3 * np.abs(np.diff(xs)).sum()
    assert total == pytest.approx(best, rel=1e-5)


def test_best_path_on_all_negative_score_is_empty():
    best, y0, y1, path = run_best_path(-np.ones((6, 5), np.float32), 0.5, 2)
    assert (best, y0, y1) == (0.0, -1, -1)
    assert (path == -1).all()


@njit
def _valley_depth_scan(smooth, offsets_px, out):
    """The kernel as it was, a pixel at a time (valley_depth must give its floats exactly)."""
    rows, cols = smooth.shape
    for y in range(rows):
        for x in range(cols):
            best = 0.0
            for d in offsets_px:
                if x - d < 0 or x + d >= cols:
                    continue
                v = min(smooth[y, x - d], smooth[y, x + d]) - smooth[y, x]
                if v > best:
                    best = v
            out[y, x] = best


@njit
def _best_path_scan(score, step_penalty, max_step, acc, came):
    """best_path's table as it was, a pixel at a time."""
    rows, cols = score.shape
    best, best_y, best_x = 0.0, -1, -1
    for x in range(cols):
        v = score[0, x]
        acc[0, x] = v if v > 0 else 0.0
        came[0, x] = 127
        if acc[0, x] > best:
            best, best_y, best_x = acc[0, x], 0, x
    for y in range(1, rows):
        for x in range(cols):
            prev = acc[y - 1, x]
            step = 0
            for d in range(1, max_step + 1):
                if x - d >= 0 and acc[y - 1, x - d] - d * step_penalty > prev:
                    prev = acc[y - 1, x - d] - d * step_penalty
                    step = -d
                if x + d < cols and acc[y - 1, x + d] - d * step_penalty > prev:
                    prev = acc[y - 1, x + d] - d * step_penalty
                    step = d
            total = prev + score[y, x]
            if total > 0 and prev > 0:
                acc[y, x] = total
                came[y, x] = step
            elif score[y, x] > 0:
                acc[y, x] = score[y, x]
                came[y, x] = 127
            else:
                acc[y, x] = 0.0
                came[y, x] = 127
            if acc[y, x] > best:
                best, best_y, best_x = acc[y, x], y, x
    return best, best_y, best_x


@pytest.mark.parametrize("shape, offsets", [((23, 31), [1, 3, 5]), ((9, 7), [1, 2, 3, 4]),
                                            ((40, 64), [2, 3, 6])])
def test_valley_depth_equals_the_pixel_scan_exactly(shape, offsets):
    rng = np.random.default_rng(len(offsets))
    smooth = np.round(rng.random(shape) * 8).astype(np.float32) / 8   # ties and zero depths
    offsets = np.array(offsets, np.int64)
    got, ref = np.empty_like(smooth), np.empty_like(smooth)
    _kernels.valley_depth(smooth, offsets, got)
    _valley_depth_scan(smooth, offsets, ref)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_step, penalty, cols", [(1, 0.5, 9), (2, 1.5, 40), (2, 0.3, 2),
                                                     (3, 0.25, 17)])
def test_best_path_equals_the_pixel_scan_exactly(seed, max_step, penalty, cols):
    """The same table (running scores, steps) and the same best end, ties included."""
    rng = np.random.default_rng(seed)
    score = (np.round(rng.random((30, cols)) * 4) / 4 - 0.5).astype(np.float32)
    score[5:20, cols // 2] = 1.5
    acc, came = np.empty_like(score), np.empty(score.shape, np.int8)
    path = np.empty(score.shape[0], np.int32)
    best, y0, y1 = _kernels.best_path(score, np.float32(penalty), max_step, path, acc, came)
    ref_acc, ref_came = np.empty_like(score), np.empty(score.shape, np.int8)
    ref_best, ref_y, ref_x = _best_path_scan(score, np.float32(penalty), max_step, ref_acc,
                                             ref_came)
    np.testing.assert_array_equal(acc, ref_acc)
    np.testing.assert_array_equal(came, ref_came)
    assert (best, y1) == (ref_best, ref_y) and path[y1] == ref_x


def phase_cross_power_reference(ref, cur):
    p = ref.astype(np.complex128) * np.conj(cur.astype(np.complex128))
    m = np.abs(p)
    return p * m / (m ** 2 + np.finfo(np.float32).eps)


@pytest.mark.parametrize("seed", [0, 1])
def test_phase_cross_power_matches_reference(seed):
    rng = np.random.default_rng(seed)
    ref = np.fft.rfft2(rng.random((12, 10))).astype(np.complex64)
    cur = np.fft.rfft2(rng.random((12, 10))).astype(np.complex64)
    cur[3, 2] = 0  # a frequency without energy stays zero
    out = np.empty_like(ref)
    _kernels.phase_cross_power(ref, cur, out)
    np.testing.assert_allclose(out, phase_cross_power_reference(ref, cur), atol=1e-5)
    assert out[3, 2] == 0


def peak_centroid_reference(corr, half):
    """np.fft.fftshift, argmax, weighted centroid of the box (as cv2.phaseCorrelate does)."""
    rows, cols = corr.shape
    shifted = np.fft.fftshift(corr)
    py, px = np.unravel_index(np.argmax(shifted), shifted.shape)
    box = shifted[py - half:py + half + 1, px - half:px + half + 1].astype(np.float64)
    ys, xs = np.mgrid[py - half:py + half + 1, px - half:px + half + 1]
    total = box.sum()
    return ((ys * box).sum() / total - rows // 2, (xs * box).sum() / total - cols // 2, total)


@pytest.mark.parametrize("peak_yx", [(0, 0), (3, -5), (-7, 2), (10, 11)])
def test_peak_centroid_matches_reference(peak_yx):
    rng = np.random.default_rng(sum(peak_yx) + 20)
    corr = (0.01 * rng.random((36, 40))).astype(np.float32)
    y, x = peak_yx
    corr[y % 36, x % 40] = 0.6
    corr[(y + 1) % 36, x % 40] = 0.2
    corr[y % 36, (x - 1) % 40] = 0.1
    py, px = np.unravel_index(np.argmax(corr), corr.shape)
    got = _kernels.peak_centroid(corr, int(py), int(px), 2)
    np.testing.assert_allclose(got, peak_centroid_reference(corr, 2), atol=1e-6)


def accumulate_shifted_reference(work, mask, shift_x, shift_y, total, count):
    """Two cv2.warpAffine calls (inverse map, zero border) and the array arithmetic."""
    m = np.float32([[1, 0, shift_x], [0, 1, shift_y]])
    size = (work.shape[1], work.shape[0])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    moved = cv2.warpAffine(work, m, size, flags=flags)
    moved_mask = cv2.warpAffine(mask, m, size, flags=flags)
    total += moved * moved_mask
    count += moved_mask


@pytest.mark.parametrize("shift_xy", [(0.0, 0.0), (0.6, -1.3), (-3.25, 2.7), (7.5, 0.0),
                                      (-40.2, 3.1), (70.0, -70.0)])
def test_accumulate_shifted_matches_warp_affine(shift_xy):
    rng = np.random.default_rng(7)
    work = rng.random((48, 56), dtype=np.float32)
    mask = np.ones(work.shape, np.float32)
    mask[:5] = 0  # an unusable band: its edge is interpolated like the image
    mask[20:23, 30:34] = 0
    total = rng.random(work.shape, dtype=np.float32)
    count = rng.random(work.shape, dtype=np.float32)
    want_total, want_count = total.copy(), count.copy()
    accumulate_shifted_reference(work, mask, *shift_xy, want_total, want_count)
    _kernels.accumulate_shifted(work, mask, *shift_xy, total, count)
    # OpenCV places taps in float32 (x + shift loses ~1e-5 px at x ~ 50): a few 1e-6
    np.testing.assert_allclose(total, want_total, atol=2e-5)
    np.testing.assert_allclose(count, want_count, atol=2e-5)


def test_a_frame_with_a_non_finite_motion_is_not_added_to_the_average():
    """Review s18 F5: a NaN shift made every pixel of the view's running sum NaN (the two
    cv2.warpAffine calls it replaced added zeros)."""
    from sifluoro.register.stage import _Geometry, _View

    rng = np.random.default_rng(3)
    work = rng.random((64, 64), dtype=np.float32)
    usable = np.ones(work.shape, bool)
    view = _View(_Geometry(128, 128, 0.3), None, usable, work)
    view.add(work, usable, (0.0, 0.0))
    for shift in ((float("nan"), 0.0), (0.0, float("inf"))):
        view.add(work, usable, shift)
    assert view.frames == 1 and np.isfinite(view.sum).all() and np.isfinite(view.count).all()


@pytest.mark.parametrize("seed", range(5))
def test_average_and_reference_are_numpy_s_four_passes(seed):
    """A view's average, usable mask and reference in one pass against the NumPy it replaces
    (counts below, at and above the threshold, zero counts, a NaN count)."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 60)), int(rng.integers(1, 60)))
    count = rng.choice(np.float32([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.75, 4.0, 8.0]),
                       size=shape).astype(np.float32)
    count.flat[0] = np.nan
    total = (rng.random(shape) * 8).astype(np.float32)
    frames = int(rng.choice([1, 2, 4, 8, 16]))
    usable = count >= max(1.0, 0.5 * frames)
    mean = np.empty_like(total)
    np.divide(total, np.maximum(count, 1.0, out=mean), out=mean)
    reference = np.zeros_like(total)
    np.copyto(reference, mean, where=usable)
    got = [np.empty_like(total), np.empty_like(total), np.empty(shape, np.bool_)]
    _kernels.average_and_reference(total, count, np.float32(max(1.0, 0.5 * frames)), *got)
    np.testing.assert_array_equal(got[0], mean)
    np.testing.assert_array_equal(got[1], reference)
    np.testing.assert_array_equal(got[2], usable)


def _inside_part_reference(polyline, mask):
    """register.stage._inside_part as NumPy wrote it (session 23): the longest stretch of
    vertices (rounded half to even) in the mask; the polyline itself when all are."""
    with np.errstate(invalid="ignore"):  # not finite: some integer outside
        xy = np.rint(polyline).astype(np.intp)
    rows, cols = mask.shape
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < cols) & (xy[:, 1] >= 0) & (xy[:, 1] < rows)
    ok[ok] = mask[xy[ok, 1], xy[ok, 0]]
    if ok.all():
        return polyline
    edges = np.diff(np.concatenate([[False], ok, [False]]).astype(np.int8))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    if len(starts) == 0:
        return None
    k = int(np.argmax(ends - starts))
    lo, hi = int(starts[k]), int(ends[k])
    return polyline[lo:hi] if hi - lo >= 2 else None


def test_inside_part_matches_its_numpy_reference():
    """The exposed part of the joint line (register.stage._inside_part, one kernel pass) is
    the NumPy version's on random polylines over random fields: vertices out of the frame, on
    half pixels (rounded to even), not finite, none or one inside, equal stretches (the first
    wins), all inside (the same array back)."""
    from sifluoro.register.stage import _inside_part

    rng = np.random.default_rng(2411)
    mask = rng.random((40, 50)) < 0.8
    mask[10:20, 10:30] = True
    cases = [np.zeros((0, 2)), np.array([[15.0, 12.0]]), np.array([[15.0, 12.0], [16.0, 13.0]]),
             np.array([[9.5, 10.5], [10.5, 11.5], [29.5, 19.5], [30.5, 19.5]]),
             np.array([[np.nan, 12.0], [15.0, 12.0], [16.0, np.inf], [17.0, 12.0],
                       [18.0, 12.0], [-np.inf, 3.0], [1e30, -1e30], [20.0, 15.0], [21.0, 15.0]]),
             np.array([[12.0, 12.0], [13.0, 12.0], [-1.0, 5.0], [14.0, 12.0], [15.0, 12.0]])]
    for _ in range(300):
        n = int(rng.integers(2, 60))
        start = rng.uniform(-10, 60, 2)
        step = rng.normal(0, 1.5, (n, 2))
        p = start + np.cumsum(step, axis=0)
        half = rng.random(n) < 0.2
        p[half] = np.floor(p[half]) + 0.5  # exactly on half pixels
        cases.append(p)
    for p in cases:
        want = _inside_part_reference(p, mask)
        got = _inside_part(p, mask)
        if want is None:
            assert got is None
        else:
            assert got is not None and np.array_equal(got, want)
            assert (got is p) == (want is p)
    full = np.array([[12.0, 12.0], [13.0, 13.0], [14.0, 14.0]])
    assert _inside_part(full, mask) is full


@pytest.mark.parametrize("seed", range(12))
def test_fill_gain_is_numpy_s_where(seed):
    """The path search's score in one pass: -10 outside the central columns and the mask,
    ``depth / noise - contrast`` (float32, as NumPy computes it with Python floats) inside."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 50)), int(rng.integers(1, 50)))
    depth = (rng.random(shape) * rng.choice([1e-3, 0.05, 1.0])).astype(np.float32)
    mask = rng.random(shape) < 0.7
    noise, contrast = float(rng.uniform(1e-4, 0.02)), float(rng.choice([1.5, 2.0, 3.0]))
    c0 = int(rng.integers(0, shape[1])); c1 = int(rng.integers(c0, shape[1] + 1))
    want = np.full(shape, -10.0, np.float32)
    want[:, c0:c1] = np.where(mask[:, c0:c1], depth[:, c0:c1] / noise - contrast, -10.0)
    got = np.full(shape, np.nan, np.float32)
    _kernels.fill_gain(depth, mask, np.float32(noise), np.float32(contrast), c0, c1, got)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(12))
def test_clear_near_path_is_numpy_s_band(seed):
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(2, 40)), int(rng.integers(1, 40))
    gain = rng.random((rows, cols)).astype(np.float32)
    path = rng.integers(0, cols, rows).astype(np.int32)
    y0 = int(rng.integers(0, rows)); y1 = int(rng.integers(y0, rows))
    clear = int(rng.integers(1, 6))
    want = gain.copy()
    near = np.abs(np.arange(cols)[None, :] - path[y0:y1 + 1, None]) <= clear
    want[y0:y1 + 1][near] = -10.0
    _kernels.clear_near_path(gain, path, y0, y1, clear)
    np.testing.assert_array_equal(gain, want)


@pytest.mark.parametrize("seed", range(12))
def test_even_residual_is_numpy_s_strided_mask(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    smooth, blurred = rng.random(shape).astype(np.float32), rng.random(shape).astype(np.float32)
    mask = rng.random(shape) < 0.6
    inside = mask[::2, ::2]
    want = smooth[::2, ::2][inside] - blurred[::2, ::2][inside]
    out = np.full(smooth[::2, ::2].size, np.nan, np.float32)
    n = _kernels.even_residual(smooth, blurred, mask, out)
    np.testing.assert_array_equal(out[:n], want)


@pytest.mark.parametrize("seed", range(12))
def test_valley_depth_columns_are_the_whole_image_s(seed):
    """The valley depth in a band of columns: the whole image's values there, the other
    columns untouched."""
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 30)), int(rng.integers(1, 60)))
    smooth = rng.random(shape).astype(np.float32)
    offsets = np.unique(rng.integers(1, 6, int(rng.integers(1, 4)))).astype(np.int64)
    x0 = int(rng.integers(-3, shape[1])); x1 = int(rng.integers(x0, shape[1] + 4))
    whole = np.empty_like(smooth)
    _kernels.valley_depth(smooth, offsets, whole)
    got = np.full_like(smooth, np.nan)
    _kernels.valley_depth_columns(smooth, offsets, x0, x1, got)
    a = max(0, x0); b = max(a, min(shape[1], x1))
    np.testing.assert_array_equal(got[:, a:b], whole[:, a:b])
    assert np.isnan(got[:, :a]).all() and np.isnan(got[:, b:]).all()


@pytest.mark.parametrize("seed", range(12))
def test_running_median_is_scipy_s_median_filter(seed):
    """The rim widths' running median (joint._narrow_stretch): scipy's with the ends repeated,
    on widths with ties (whole pixels times a spacing), windows longer than the values too."""
    import scipy.ndimage

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    values = rng.integers(0, 12, n) * float(rng.uniform(0.3, 0.8))
    size = int(rng.integers(0, 20)) | 1
    out = np.empty(n)
    _kernels.running_median(values, size, out)
    np.testing.assert_array_equal(out, scipy.ndimage.median_filter(values, size=size, mode="nearest"))


def _rims_reference(strip, centre):
    k = np.arange(strip.shape[1])[None, :]
    return (np.argmax(np.where(k < centre[:, None], strip, -np.inf), axis=1),
            np.argmax(np.where(k > centre[:, None], strip, -np.inf), axis=1))


@pytest.mark.parametrize("seed", range(16))
def test_strip_darkest_and_rims_are_numpy_s(seed):
    """The profile across the path (joint.rim_widths, joint._refine): the strip gathered with
    clipped columns, its darkest column near the middle and the brightest either side of a
    centre (ties: the first; a NaN: the first NaN; none on a side: 0), as NumPy's argmin and
    argmax over -inf-masked rows."""
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(3, 40)), int(rng.integers(1, 40))
    image = rng.integers(0, 4, (rows, cols)).astype(np.float32)  # ties
    if seed % 4 == 0:
        image[rng.random(image.shape) < 0.05] = np.nan
    path = rng.integers(-2, cols + 2, rows).astype(np.int32)
    reach = int(rng.integers(1, 8))
    y0 = int(rng.integers(0, rows)); y1 = int(rng.integers(y0, rows))
    ys = np.arange(y0, y1 + 1)
    xs = np.clip(path[ys][:, None] + np.arange(-reach, reach + 1)[None, :], 0, cols - 1)
    for dtype in (np.float32, np.float64):
        want = image[ys[:, None], xs].astype(dtype)
        strip = np.empty(want.shape, dtype)
        _kernels.gather_strip(image, path, y0, reach, strip)
        np.testing.assert_array_equal(strip, want)
        lo = int(rng.integers(0, 2 * reach + 1)); hi = int(rng.integers(lo + 1, 2 * reach + 2))
        dark = np.empty(len(ys), np.int64)
        _kernels.darkest_near(strip, lo, hi, dark)
        np.testing.assert_array_equal(dark, lo + np.argmin(strip[:, lo:hi], axis=1))
        centre = rng.integers(0, 2 * reach + 1, len(ys)).astype(np.int64)
        left, right = np.empty_like(centre), np.empty_like(centre)
        _kernels.rims_beside(strip, centre, left, right)
        want_left, want_right = _rims_reference(strip, centre)
        np.testing.assert_array_equal(left, want_left)
        np.testing.assert_array_equal(right, want_right)
