"""Contrast kernels against NumPy / SciPy / scikit-image references (random and edge cases)."""
import numpy as np
import pytest
from scipy import ndimage
from skimage import filters, measure

from sifluoro.track import _contrast_kernels as K


@pytest.fixture
def rng():
    return np.random.default_rng(20260105)


@pytest.mark.parametrize("factor,invert", [(1, False), (2, False), (4, True), (3, True)])
def test_reduce_frame_is_block_mean_of_attenuation(rng, factor, invert):
    top = 4095
    pixels = rng.integers(0, top + 1, (48, 60)).astype(np.uint16)
    pixels[:5, :7] = 0
    pixels[-6:, -4:] = top
    shape = (48 // factor, 60 // factor)
    img, zero, one = np.empty(shape, np.float32), np.empty(shape, bool), np.empty(shape, bool)
    # stale content must not matter
    rows_buf = [np.full(60, -7, np.int32), np.full(60, 7, np.uint16), np.full(60, 7, np.uint16)]
    K.reduce_frame(pixels, factor, top, invert, img, zero, one, *rows_buf)
    a = pixels[:shape[0] * factor, :shape[1] * factor].astype(np.float64) / top
    if invert:
        a = 1.0 - a
    blocks = a.reshape(shape[0], factor, shape[1], factor)
    np.testing.assert_allclose(img, blocks.mean(axis=(1, 3)), atol=1e-6)
    np.testing.assert_array_equal(zero, (blocks == 0.0).any(axis=(1, 3)))
    np.testing.assert_array_equal(one, (blocks == 1.0).all(axis=(1, 3)))
    assert zero.any() and one.any() and not zero.all()


def _reduced_as_blocks(pixels, factor, top, invert):
    """K.reduce_frame of 64x72 ``pixels`` checked against the blocks' integer sums (the image,
    bit for bit) and extremes (the flags); returns the flags."""
    shape = (64 // factor, 72 // factor)
    img, zero, one = np.empty(shape, np.float32), np.empty(shape, bool), np.empty(shape, bool)
    rows_buf = [np.full(72, -7, np.int32), np.full(72, 7, np.uint16), np.full(72, 7, np.uint16)]
    K.reduce_frame(pixels, factor, top, invert, img, zero, one, *rows_buf)
    blocks = pixels.astype(np.int64).reshape(shape[0], factor, shape[1], factor)
    acc = blocks.sum(axis=(1, 3)).astype(np.float64)
    scale = 1.0 / (top * factor * factor)
    expected = (1.0 - acc * scale) if invert else acc * scale
    np.testing.assert_array_equal(img, expected.astype(np.float32))
    a = blocks.max(axis=(1, 3)) if invert else blocks.min(axis=(1, 3))
    np.testing.assert_array_equal(zero, a >= top if invert else a == 0)
    np.testing.assert_array_equal(one, a == 0 if invert else a >= top)
    return zero, one


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("top", [4095, 16383, 255])
def test_reduce_frame_is_bit_exact_for_the_usual_factors(rng, factor, invert, top):
    """The usual factors (512² and 1024²) read a block's stored rows one loop each: the image
    is the block's integer sum times the scale in float64, bit for bit (as with the rows read
    together), and the flags those of the block's extreme. Up to 12 bits a block's sum fits
    16 bits (summed as uint16; a block all at 4095 sums to 65520), from 13 bits as int32."""
    pixels = rng.integers(0, top + 1, (64, 72)).astype(np.uint16)
    pixels[:8, :8] = 0
    pixels[-8:, -8:] = top
    pixels[9, 9] = top     # one pixel at the end in a block
    pixels[17, 17] = 0
    zero, one = _reduced_as_blocks(pixels, factor, top, invert)
    assert zero.any() and one.any()


def test_smooth_binomial_matches_scipy(rng):
    src = rng.normal(size=(37, 41)).astype(np.float32)
    tmp, dst = np.empty_like(src), np.empty_like(src)
    K.smooth_binomial(src, tmp, dst)
    k = np.array([1, 4, 6, 4, 1], np.float64) / 16.0
    ref = ndimage.convolve(src.astype(np.float64), np.outer(k, k), mode="nearest")
    np.testing.assert_allclose(dst, ref, atol=1e-5)


def test_envelope_max_and_shifted_copy(rng):
    slots = rng.normal(size=(5, 20, 30)).astype(np.float32)
    out = np.empty((20, 30), np.float32)
    K.envelope_max(slots, 3, out)
    np.testing.assert_array_equal(out, np.maximum(slots[:3].max(0), -1.0))
    K.envelope_max(slots, 0, out)
    assert np.all(out == -1.0)
    unusable = rng.random((20, 30)) < 0.1
    dst = np.empty_like(out)
    K.shifted_copy(slots[0], 2, -3, unusable, np.float32(-1), dst)
    ref = np.full_like(out, -1.0)
    src = np.where(unusable, -1.0, slots[0])
    ref[3:, :-2] = src[:-3, 2:]
    np.testing.assert_array_equal(dst, ref)


def test_masked_residual_and_robust_spread(rng):
    cur = rng.normal(0.5, 0.01, (64, 64)).astype(np.float32)
    ref = np.full((64, 64), 0.5, np.float32)
    ref[:4] = -1.0  # unusable reference rows
    cur[30:34, 30:34] += 1.0  # outliers must not move the estimate
    valid = np.ones((64, 64), bool)
    valid[:, :2] = False
    out = np.empty_like(cur)
    n = K.masked_residual(cur, ref, valid, 0, 0, out)
    expect_valid = np.ones((64, 64), bool)
    expect_valid[:4] = False
    expect_valid[:, :2] = False
    np.testing.assert_array_equal(valid, expect_valid)
    assert n == expect_valid.sum()
    np.testing.assert_allclose(out[valid], (cur - ref)[valid], atol=1e-7)
    assert np.all(out[~valid] == 0)
    centre, sigma = K.robust_centre_spread(out, valid, 3.0)
    assert abs(centre) < 0.001 and sigma == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_robust_centre_spread_matches_numpy(seed):
    """Mean and 1.2533 x mean absolute deviation, then once more on the values within 3
    spreads of the first centre (float64 sums; only their order may differ)."""
    rng = np.random.default_rng(seed)
    v = (rng.standard_normal((50, 70)) * 0.02).astype(np.float32)
    v[rng.random(v.shape) < 0.02] += 0.5       # outliers the second pass leaves out
    valid = rng.random(v.shape) > 0.3
    x = v[valid].astype(np.float64)
    centre, sigma = 0.0, 0.0
    keep = np.ones(x.size, bool)
    for _ in range(2):
        c = x[keep].mean()
        sigma = 1.2533 * np.abs(x[keep] - c).mean()
        keep = np.abs(x - c) <= 3.0 * sigma
        centre = c
    got = K.robust_centre_spread(v, valid, 3.0)
    assert got[0] == pytest.approx(centre, rel=1e-12, abs=1e-15)
    assert got[1] == pytest.approx(sigma, rel=1e-12)
    assert K.robust_centre_spread(v, np.zeros_like(valid), 3.0) == (0.0, 0.0)


@pytest.mark.parametrize("seed_n", [0, 1, 2, 3])
def test_flood_unexposed_matches_scipy_components(seed_n):
    """``seed`` plus every 4-connected component of ``full`` that touches the border, holds
    a seed pixel or lies beside one; rows with nothing to add are passed over."""
    from scipy import ndimage

    rng = np.random.default_rng(seed_n)
    yy, xx = np.mgrid[:48, :64]
    seed = (yy - 24) ** 2 + (xx - 30) ** 2 > 20 ** 2
    full = seed.copy() if seed_n % 2 else rng.random(seed.shape) > 0.6
    full[rng.random(seed.shape) > 0.93] = True
    full[20:24, 25:33] = True                   # inside the field: reached only if joined
    lab, n = ndimage.label(full, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    near = ndimage.binary_dilation(seed, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    border = np.zeros_like(seed)
    border[[0, -1], :] = border[:, [0, -1]] = True
    hit = np.unique(lab[(near | border) & full])
    ref = seed | np.isin(lab, hit[hit > 0])
    out, stack = np.empty_like(seed), np.empty(seed.size * 9 + 1, np.int64)
    assert K.flood_unexposed(seed, full, out, stack) == ref.sum()
    np.testing.assert_array_equal(out, ref)


def test_flood_unexposed_reaches_border_and_old_field_only():
    full = np.zeros((30, 30), bool)
    full[:5, :] = True          # collimator leaf closing from the top
    full[12:16, 12:16] = True   # dense contrast inside the field
    full[25:, 20:] = True       # grows from the old unexposed corner
    seed = np.zeros_like(full)
    seed[29, 29] = True
    out, stack = np.empty_like(full), np.empty(30 * 30 * 9 + 1, np.int64)
    K.flood_unexposed(seed, full, out, stack)
    border = np.zeros_like(full)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    labels = measure.label(full | seed, connectivity=1)
    keep = np.unique(labels[(border & full) | seed])
    ref = np.isin(labels, keep[keep > 0])
    np.testing.assert_array_equal(out, ref)
    assert not out[13, 13]


@pytest.mark.parametrize("radius", [1, 2, 4])
def test_dilate_square_matches_scipy(rng, radius):
    src = rng.random((33, 47)) < 0.03
    tmp, out = np.empty_like(src), np.empty_like(src)
    K.dilate_square(src, radius, tmp, out)
    ref = ndimage.binary_dilation(src, np.ones((2 * radius + 1,) * 2, bool))
    np.testing.assert_array_equal(out, ref)


def test_hysteresis_label_matches_skimage(rng):
    score = ndimage.gaussian_filter(rng.normal(size=(80, 90)), 1.5) * 8
    valid = rng.random(score.shape) > 0.02
    labels = np.empty(score.shape, np.int32)
    stack = np.empty(score.size * 9 + 1, np.int64)
    n = K.hysteresis_label(score.astype(np.float32), valid, 2.0, 0.8, labels, stack, 1000)
    masked = np.where(valid, score, -np.inf)
    grown = measure.label(masked > 0.8, connectivity=2)
    seeded = np.unique(grown[masked > 2.0])
    ref = np.isin(grown, seeded[seeded > 0])
    np.testing.assert_array_equal(labels > 0, ref)
    # 4-connected scikit-image hysteresis is contained in the 8-connected one
    assert np.all(ref[filters.apply_hysteresis_threshold(masked, 0.8, 2.0)])
    ref_labels = measure.label(ref, connectivity=2)
    assert n == ref_labels.max()
    # same partition: every reference component maps to exactly one label
    for r in measure.regionprops(ref_labels):
        assert len(np.unique(labels[tuple(r.coords.T)])) == 1


def test_component_and_core_stats_match_regionprops(rng):
    score = ndimage.gaussian_filter(rng.normal(size=(60, 70)), 2.0) * 10
    score = score.astype(np.float32)
    valid = np.ones(score.shape, bool)
    labels = np.empty(score.shape, np.int32)
    stack = np.empty(score.size * 9 + 1, np.int64)
    n = K.hysteresis_label(score, valid, 1.5, 0.5, labels, stack, 64)
    stats = np.zeros((65, K.N_STATS))
    previous = rng.random(score.shape) < 0.5
    K.component_stats(labels, n, score, previous, stats)
    K.core_stats(labels, score, 0.4, stats)
    assert n >= 2
    for r in measure.regionprops(labels, intensity_image=score):
        s = stats[r.label]
        rr, cc = r.coords.T
        assert s[K.C_AREA] == r.area
        assert s[K.C_SUM] == pytest.approx(score[rr, cc].sum(), rel=1e-5)
        assert s[K.C_PEAK] == pytest.approx(score[rr, cc].max())
        assert (s[K.C_SY] / r.area, s[K.C_SX] / r.area) == pytest.approx(r.centroid)
        y0, x0, y1, x1 = r.bbox
        assert (s[K.C_X0], s[K.C_Y0], s[K.C_X1], s[K.C_Y1]) == (x0, y0, x1 - 1, y1 - 1)
        mask = labels == r.label
        inner = ndimage.binary_erosion(mask, border_value=0)
        assert s[K.C_EDGE] == (mask & ~inner).sum()
        assert s[K.C_NEW] == (~previous[rr, cc]).sum()
        core = mask & (score >= 0.4 * s[K.C_PEAK])
        assert s[K.C_CORE] == core.sum()
        assert s[K.C_CSUM] == pytest.approx(score[core].sum(), rel=1e-5)
        assert s[K.C_CORE_EDGE] == (core & ~ndimage.binary_erosion(core, border_value=0)).sum()


def test_select_labels_and_negative_mass(rng):
    labels = rng.integers(0, 5, (10, 12)).astype(np.int32)
    keep = np.array([True, False, True, False, True])
    out = np.empty(labels.shape, bool)
    K.select_labels(labels, keep, out)
    np.testing.assert_array_equal(out, (labels != 0) & keep[labels])
    score = rng.normal(size=(10, 12)).astype(np.float32) * 4
    valid = rng.random((10, 12)) > 0.2
    got = K.negative_mass(score, valid, -3, 2, 8, 20, 2.5)
    box = np.clip(-score - 2.5, 0, None) * valid
    assert got == pytest.approx(box[2:, 0:9].sum(), rel=1e-5)


def test_warm_up_compiles_on_real_size():
    K.warm_up(512, 512, 2)


@pytest.mark.parametrize("n_valid", [0, 1, 2, 7, 1000, 1001])
def test_masked_median_is_numpy_median(rng, n_valid):
    m = rng.normal(size=(40, 50)).astype(np.float32)
    m[5:9] = 0.25                               # ties across the median
    mask = np.zeros(m.shape, bool)
    mask.ravel()[rng.permutation(m.size)[:n_valid]] = True
    med, n = K.masked_median(m, mask, np.empty(2 * m.size, np.float32), np.empty(64, np.int64),
                             np.empty(m.shape, np.int32))
    assert n == n_valid
    if n_valid:
        assert np.float32(med) == np.float32(np.median(m[mask]))
    tiny = np.float32(1e-44) * np.arange(m.size, dtype=np.float32).reshape(m.shape)
    mask[:] = True                              # a denormal range: too narrow for bins
    med, n = K.masked_median(tiny, mask, np.empty(2 * m.size, np.float32), np.empty(64, np.int64),
                             np.empty(m.shape, np.int32))
    assert np.float32(med) == np.float32(np.median(tiny))
    m[:] = 3.0                                  # constant
    mask[:] = True
    assert K.masked_median(m, mask, np.empty(2 * m.size, np.float32), np.empty(64, np.int64),
                           np.empty(m.shape, np.int32))[0] == 3.0


def _scan_range(m, mask):
    """The masked range as a scan keeping the first of equal extremes (the reference)."""
    lo, hi, n = np.float32(np.inf), np.float32(-np.inf), 0
    for v, ok in zip(m.ravel(), mask.ravel()):
        if ok:
            n += 1
            lo = v if v < lo else lo
            hi = v if v > hi else hi
    return n, lo, hi


@pytest.mark.parametrize("case", ["normal", "negative", "zeros", "neg_zero_first", "empty",
                                  "infinite"])
def test_masked_range_is_the_first_extreme_of_a_scan(rng, case):
    m = rng.normal(size=(23, 37)).astype(np.float32)
    mask = rng.random(m.shape) < 0.6
    if case == "negative":
        m = -np.abs(m) - 1.0
    elif case in ("zeros", "neg_zero_first"):
        m = np.abs(m)                           # the smallest is 0: which sign comes first
        m[3, 4:9] = 0.0
        m[3, 6] = -0.0
        mask[3, 4:9] = True
        if case == "neg_zero_first":
            m[3, 4] = -0.0
        m2 = -m                                 # and the largest 0
    elif case == "empty":
        mask[:] = False
    elif case == "infinite":
        m[2, 2], m[5, 5] = np.inf, -np.inf
        mask[2, 2] = mask[5, 5] = True
    scratch = np.empty(2, np.float32)
    for values in ([m, m2] if case in ("zeros", "neg_zero_first") else [m]):
        n, lo, hi = K._masked_range(values, mask, scratch)
        want = _scan_range(values, mask)
        assert n == want[0]
        assert np.array([lo, hi], np.float32).tobytes() == np.array(want[1:], np.float32).tobytes()


@pytest.mark.parametrize("window", [1, 5, 31])
def test_box_sum_matches_opencv(rng, window):
    import cv2
    src = rng.random((37, 45)).astype(np.float32)
    out = np.empty_like(src)
    K.box_sum(src, window, np.empty(src.shape), np.empty(src.shape[1]), out)
    ref = cv2.boxFilter(src, -1, (window, window), normalize=False, borderType=cv2.BORDER_CONSTANT)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    K.box_sum(src, window, np.empty(src.shape), np.empty(src.shape[1]), src)   # in place
    np.testing.assert_allclose(src, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("radius", [1, 4])
def test_erode_square_matches_opencv(rng, radius):
    import cv2
    src = rng.random((33, 47)) > 0.02
    src[:, :3] = False
    tmp, out = np.empty_like(src), np.empty_like(src)
    K.erode_square(src, radius, tmp, out)
    ref = cv2.erode(src.astype(np.uint8), np.ones((2 * radius + 1,) * 2, np.uint8)).astype(bool)
    np.testing.assert_array_equal(out, ref)
    assert K.same_mask(out, ref) and not K.same_mask(out, ~ref)


@pytest.mark.parametrize("n", [4, 5])
def test_onset_ridge_is_the_ridge_of_the_numpy_onset(rng, n):
    from sifluoro.track.contrast_transient import tap_tables

    history = rng.random((5, 20, 30)).astype(np.float32)
    order = np.array([3, 0, 4, 1, 2])           # a ring: slot order[j] holds frame j
    x = history[order[:n]]
    a = x[-3]
    onset = a - x[-4] if n == 4 else ((a - x[-4]) + a - x[-5]) * np.float32(0.5)
    pad, cpad = np.empty((28, 38), np.float32), np.empty((26, 36), np.float32)
    ref, got = np.empty((20, 30), np.float32), np.empty((20, 30), np.float32)
    K.line_ridge(onset, *tap_tables(), pad, cpad, ref)
    spans = np.empty((4, 20), np.int64)
    K.full_spans(spans, 30)
    K.onset_ridge(history, order[n - 3], order[n - 4], order[n - 5] if n == 5 else -1,
                  *tap_tables(), pad, cpad, got, spans)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("shape, window", [((60, 70), 31), ((37, 45), 5), ((20, 9), 31),
                                           ((1, 40), 3)])
def test_box_scale_counts_as_the_float_box_sum(rng, shape, window):
    """Integer counts give exactly the float box sum of the 0/1 mask (the kernel it replaced)."""
    mask = rng.random(shape) > 0.3
    mask[:, : shape[1] // 3] = False
    validf = mask.astype(np.float32)
    box = np.empty(shape, np.float32)
    K.box_sum(validf, window, np.empty(shape), np.empty(shape[1]), box)
    got = np.empty(shape, np.float32)
    K.box_scale(mask, window, np.empty(shape, np.int32), got)
    np.testing.assert_array_equal(got, np.float32(1.2533) / np.maximum(box, np.float32(1.0)))


@pytest.mark.parametrize("clip", [0.0, 3.0])
def test_local_z_matches_numpy(rng, clip):
    """With ``clip``, a strong blob inside ``near`` enters the local noise clipped (``clip`` x
    the global mean absolute deviation), elsewhere as it is."""
    import cv2
    m = (rng.normal(size=(60, 70)) * np.linspace(0.5, 3.0, 70)).astype(np.float32)
    m[20:26, 10:16] += 40.0      # contrast inside near
    m[40:44, 50:54] += 40.0      # and outside it
    near = np.zeros(m.shape, bool)
    near[15:30, 5:20] = True
    inner = rng.random(m.shape) > 0.1
    validf = inner.astype(np.float32)
    den = cv2.boxFilter(validf, -1, (31, 31), normalize=False, borderType=cv2.BORDER_CONSTANT)
    got = m.copy()
    scale = np.empty_like(m)
    K.box_scale(inner, 31, np.empty(m.shape, np.int32), scale)
    np.testing.assert_allclose(scale, np.float32(1.2533) / np.maximum(den, 1.0), rtol=1e-6)
    divisor = np.empty_like(m)
    got_med = K.local_z(got, inner, validf, scale, 31, np.empty(2 * m.size, np.float32),
                        np.empty(256, np.int64), np.empty(m.shape, np.int32), np.empty(m.shape),
                        np.empty(m.shape[1]), divisor, near, clip)
    med = np.float32(np.median(m[inner]))
    g = float(np.mean(np.abs(m[inner] - med)))
    a = np.abs(m - med) * validf
    if clip > 0:
        a = np.where(near, np.minimum(a, np.float32(clip * g)), a)
    local = cv2.boxFilter(a, -1, (31, 31), normalize=False, borderType=cv2.BORDER_CONSTANT)
    local = local / np.maximum(den, 1.0) * np.float32(1.2533)
    ref = (m - med) / np.maximum(local, np.float32(0.05 * g + 1e-9))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # its median and divisor, applied to another map (z_like), standardise it the same way
    assert got_med == med
    np.testing.assert_allclose(divisor, np.maximum(local, np.float32(0.05 * g + 1e-9)),
                               rtol=1e-4)
    other = m[::-1].copy()
    K.z_like(other, got_med, divisor)
    np.testing.assert_allclose(other, (m[::-1] - med) / divisor, rtol=1e-6)


def test_field_masks_and_standardise_match_numpy(rng):
    envelope = rng.normal(size=(20, 30)).astype(np.float32)
    seed = np.empty((20, 30), bool)
    K.unexposed_seeds(envelope, seed)
    np.testing.assert_array_equal(seed, envelope < 0)
    unexposed, text = rng.random((20, 30)) < 0.1, rng.random((20, 30)) < 0.1
    unusable, valid = np.empty_like(seed), np.empty_like(seed)
    K.usable_field(unexposed, text, 3, unusable, valid)
    np.testing.assert_array_equal(unusable, unexposed | text)
    ref = ~(unexposed | text)
    ref[:3], ref[-3:], ref[:, :3], ref[:, -3:] = False, False, False, False
    np.testing.assert_array_equal(valid, ref)
    residual = envelope.copy()
    score = np.empty_like(residual)
    K.standardise(residual, valid, 0.123, 0.456, score)
    r = envelope - np.float32(0.123)
    np.testing.assert_array_equal(residual, r)
    np.testing.assert_array_equal(score, np.where(valid, r * np.float32(1.0 / 0.456), 0.0))


@pytest.mark.parametrize("density", [0.02, 0.3])
def test_text_blocks_matches_scipy(rng, density):
    zero = rng.random((40, 50)) < density
    prev = rng.random((40, 50)) < density
    neighbours = ndimage.convolve(zero.astype(int), np.ones((3, 3), int), mode="constant") - zero
    want = zero & ((neighbours > 0) | prev)
    out = np.zeros_like(zero)
    p = prev.copy()
    K.text_blocks(zero, p, out)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(p, zero)   # the next frame's previous


def _box_sum_in_order(src, window):
    """box_sum's float64 running sums in its order of operations, in NumPy: along each row the
    first ``r`` values, then per x the entering value and the leaving one; the same down the
    columns (every row at once, every column at once)."""
    rows, cols = src.shape
    r = window // 2
    rowsum = np.empty(src.shape)
    acc = np.zeros(rows)
    for x in range(min(r, cols)):
        acc = acc + src[:, x].astype(np.float64)
    for x in range(cols):
        if x + r < cols:
            acc = acc + src[:, x + r].astype(np.float64)
        if x - r - 1 >= 0:
            acc = acc - src[:, x - r - 1].astype(np.float64)
        rowsum[:, x] = acc
    out = np.empty(src.shape, np.float32)
    col = np.zeros(cols)
    for y in range(min(r, rows)):
        col = col + rowsum[y]
    for y in range(rows):
        if y + r < rows:
            col = col + rowsum[y + r]
        if y - r - 1 >= 0:
            col = col - rowsum[y - r - 1]
        out[y] = col
    return out


@pytest.mark.parametrize("shape, window", [((37, 45), 31), ((61, 70), 31), ((20, 9), 5),
                                           ((17, 64), 3), ((3, 32), 31), ((26, 64), 31)])
def test_box_sum_keeps_its_order_of_additions(rng, shape, window):
    """Bit for bit the sequential running sums (eight rows side by side, the column pass fused:
    the order of each row's and column's additions is kept), wide and narrow rows alike."""
    src = (rng.random(shape) * rng.random(shape) ** 3).astype(np.float32)
    got = np.empty_like(src)
    K.box_sum(src, window, np.empty(shape), np.empty(shape[1]), got)
    assert got.tobytes() == _box_sum_in_order(src, window).tobytes()


@pytest.mark.parametrize("box", [(-3, 2, 8, 20), (0, 0, 59, 47), (5, 7, 5, 7), (9, 3, 4, 30)])
def test_negative_mass_is_the_sequential_sum(rng, box):
    """Bit for bit the row-major float64 sum of the dark excess, with rows holding no dark
    pixel skipped (most rows of a large box)."""
    score = rng.normal(size=(48, 60)).astype(np.float32)
    score[rng.random(score.shape) < 0.01] = -9.0        # a few dark pixels, many empty rows
    score[20, 30] = np.float32(-2.5)                    # at the threshold: not counted
    valid = rng.random(score.shape) > 0.2
    x0, y0, x1, y1 = box
    ys, xs = slice(max(y0, 0), y1 + 1), slice(max(x0, 0), x1 + 1)
    want = 0.0
    for v, ok in zip((-score[ys, xs].astype(np.float64) - 2.5).ravel(), valid[ys, xs].ravel()):
        if v > 0.0 and ok:
            want += float(v)
    assert K.negative_mass(score, valid, x0, y0, x1, y1, 2.5) == want


def dense_text_blocks(pixels, factor, top, invert, min_count, blocks):
    """NumPy reference of K.clear_sparse_blocks, counted on the flagged blocks only (the
    contrast stage's first version of the rule)."""
    if not blocks.any():
        return
    ys, xs = np.nonzero(blocks)
    rows, cols = blocks.shape
    tiles = pixels[:rows * factor, :cols * factor].reshape(rows, factor, cols, factor)
    picked = tiles[ys, :, xs, :]
    counts = np.count_nonzero(picked >= top if invert else picked == 0, axis=(1, 2))
    sparse = counts < min_count
    blocks[ys[sparse], xs[sparse]] = False


@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize("factor, width", [(4, 64), (4, 66), (3, 61), (2, 40)])
def test_clear_sparse_blocks_matches_its_numpy_reference(invert, factor, width):
    """The text mask's share rule (contrast._dense_text_blocks) against the NumPy version it
    replaced, on frames whose width is not a multiple of the block."""
    rng = np.random.default_rng(factor * 100 + width + invert)
    top = 4095
    cleared = kept = 0
    for _ in range(20):
        pixels = rng.integers(0, top + 1, (48, width)).astype(np.uint16)
        hits = rng.random(pixels.shape) < rng.uniform(0.05, 0.6)
        pixels[hits] = top if invert else 0
        blocks = rng.random((48 // factor, width // factor)) < 0.5
        expected = blocks.copy()
        dense_text_blocks(pixels, factor, top, invert, 0.25 * factor * factor, expected)
        got = blocks.copy()
        pixels.flags.writeable = False
        K.clear_sparse_blocks(pixels, factor, top, invert, 0.25 * factor * factor, got)
        assert np.array_equal(got, expected)
        cleared += int((blocks & ~got).sum())
        kept += int(got.sum())
    assert cleared and kept  # both outcomes were exercised


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("invert", [False, True])
def test_reduce_frame_sums_values_above_top_exactly(rng, factor, invert):
    """A caller's frame may hold values above its BitsStored (the readers clear those bits;
    the engine only says so): 16-bit values in a 12-bit run overflow a uint16 block sum, and
    such a frame is summed as int32, as before the narrow sums."""
    top = 4095
    pixels = rng.integers(0, top + 1, (64, 72)).astype(np.uint16)
    pixels[40:, 50:] = 65535          # far above top: a block sums to 16 x 65535
    pixels[:8, :8] = 0
    _reduced_as_blocks(pixels, factor, top, invert)
