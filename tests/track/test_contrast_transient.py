"""The vessel test of the contrast stage: a thin line that came and went, against lines that
stay (joint fill), broad clouds and noise; its ridge filter against a direct NumPy version, and
the whole test against the OpenCV/NumPy version it replaced."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import measure

from sifluoro.track import _contrast_kernels as K
from sifluoro.track.contrast_transient import (EDGE_PX, FLANK_PX, HIGH_Z, LOW_Z, NEAR_CLIP,
                                               NEAR_GROW_PX, NOISE_WINDOW_PX, TransientLines,
                                               _best_component, line_kernels, tap_tables)

SHAPE = (128, 128)


def _frames(profile, *, seed=0, noise=0.01, shape="line", amp=0.04):
    """Five working frames: noise plus an object whose strength per frame is ``profile`` (the
    line 4 noise standard deviations at full strength)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]].astype(np.float32)
    if shape == "line":
        obj = np.exp(-0.5 * ((xx - 0.4 * yy - 40.0) / 1.0) ** 2) * ((yy > 20) & (yy < 100))
    else:
        obj = np.exp(-0.5 * ((xx - 64.0) ** 2 + (yy - 64.0) ** 2) / 12.0 ** 2)
    return [(0.5 + amp * p * obj + noise * rng.standard_normal(SHAPE)).astype(np.float32)
            for p in profile]


def _score(frames):
    valid = np.ones(SHAPE, bool)
    return TransientLines(SHAPE).score(frames, valid)


@pytest.mark.parametrize("profile", [[0, 0, 1, 1, 0.2], [0, 0, 1, 0.4, 0.1]])
def test_line_that_washes_out_scores_high(profile):
    """Full strength on two frames, or on one and half gone on the next."""
    assert _score(_frames(profile)) > 30.0


@pytest.mark.parametrize("profile", [[0, 0, 1, 1, 1], [0, 0.5, 1, 1.3, 1.6], [0, 0, 0, 0, 0],
                                     [1, 1, 1, 1, 0]])
def test_lines_that_stay_or_were_there_before_score_low(profile):
    assert _score(_frames(profile)) < 20.0


def test_cloud_that_comes_and_goes_scores_low():
    assert _score(_frames([0, 0, 1, 1, 0.2], shape="cloud", amp=0.05)) < 20.0


def test_noise_only_scores_low_for_many_seeds():
    assert max(_score(_frames([0] * 5, seed=s)) for s in range(10)) < 10.0


def test_four_frames_are_enough():
    # one frame before the arrival only: noisier, still well above noise alone
    assert _score(_frames([0, 1, 1, 0.2])) > 2.0 * _score(_frames([0, 0, 0, 0]))


def test_ridge_matches_direct_numpy():
    rng = np.random.default_rng(1)
    img = rng.standard_normal((40, 40)).astype(np.float32)
    t = TransientLines(img.shape)
    out = np.empty_like(img)
    t._ridge(img, out)
    pad = np.pad(img, 20, mode="edge")
    ref = np.full(img.shape, -np.inf)
    for kc, (dx, dy) in line_kernels():
        h = kc.shape[0] // 2
        c = np.zeros(img.shape)
        for ky in range(-h, h + 1):
            for kx in range(-h, h + 1):
                c += kc[ky + h, kx + h] * pad[20 + ky:60 + ky, 20 + kx:60 + kx]
        cp = np.pad(c, 5, mode="edge")
        left = cp[5 + dy:45 + dy, 5 + dx:45 + dx]
        right = cp[5 - dy:45 - dy, 5 - dx:45 - dx]
        ref = np.maximum(ref, np.minimum(c - left, c - right))
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_washout_ridge_is_the_ridge_of_the_difference():
    rng = np.random.default_rng(2)
    history = rng.standard_normal((5, 37, 45)).astype(np.float32)
    t = TransientLines((37, 45))
    ref, out = np.empty((37, 45), np.float32), np.empty((37, 45), np.float32)
    for a, now in [(2, 4), (3, 1), (0, 0)]:
        t._ridge(history[a] - history[now], ref)
        t.pad[...] = np.nan     # stale content must not matter
        K.washout_ridge(history, a, now, *tap_tables(), t.pad, t.cpad, out, t.all_spans)
        np.testing.assert_array_equal(out, ref)
    assert np.all(out == 0.0)   # a frame against itself: no ridge


@pytest.mark.parametrize("field", ["disc", "edges", "rows", "empty"])
def test_ridges_on_spans_equal_the_full_ridges_where_the_field_reads_them(field):
    """Made only where ``inner`` reads them (K.ridge_spans), the washout and onset ridges equal
    the whole-grid ones there, bit for bit, also where the field reaches the image's edge."""
    rng = np.random.default_rng(5)
    shape = (41, 53)
    history = rng.standard_normal((5,) + shape).astype(np.float32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    inner = {"disc": (yy - 22) ** 2 + (xx - 30) ** 2 < 15 ** 2,
             "edges": (xx < 4) | (yy > 37) | ((yy == 10) & (xx > 48)),
             "rows": (rng.random(shape) > 0.97) | ((yy == 0) & (xx == 0)),
             "empty": np.zeros(shape, bool)}[field]
    t = TransientLines(shape)
    spans = np.empty((4, shape[0]), np.int64)
    K.ridge_spans(inner, FLANK_PX, spans)
    full, part = np.empty(shape, np.float32), np.empty(shape, np.float32)
    K.washout_ridge(history, 2, 4, *tap_tables(), t.pad, t.cpad, full, t.all_spans)
    t.cpad[...] = np.nan    # what is not filtered must not be read
    K.washout_ridge(history, 2, 4, *tap_tables(), t.pad, t.cpad, part, spans)
    np.testing.assert_array_equal(part[inner], full[inner])
    assert np.all(part[~inner] == np.float32(-1e9)) or field != "disc"
    K.onset_ridge(history, 2, 1, 0, *tap_tables(), t.pad, t.cpad, full, t.all_spans)
    t.cpad[...] = np.nan
    K.onset_ridge(history, 2, 1, 0, *tap_tables(), t.pad, t.cpad, part, spans)
    np.testing.assert_array_equal(part[inner], full[inner])
    if field == "disc":     # each row's span: its first to its last set pixel
        rows = np.flatnonzero(inner.any(axis=1))
        assert spans[0, rows[0]] == np.flatnonzero(inner[rows[0]])[0]
        assert spans[1, rows[0]] == np.flatnonzero(inner[rows[0]])[-1] + 1
        assert spans[1, 0] == spans[0, 0] == 0
        assert K.spans_cover(t.all_spans, spans) and not K.spans_cover(spans, t.all_spans)


def _best_line(z):
    shape = z.shape
    ones = np.ones(shape, np.float32)
    return K.best_line(z, ones * np.float32(1e9), ones, 1.5, 3.0, np.empty(shape, bool),
                       np.empty(z.size, np.int64))


def test_best_line_small_cases():
    z = np.zeros((10, 10), np.float32)
    z[1, 1:4] = [2.0, 4.0, 2.0]     # reaches the high threshold: sum of (z - 1.5)
    z[6, 6:9] = [2.0, 2.5, 2.0]     # never reaches it
    assert _best_line(z) == pytest.approx(0.5 + 2.5 + 0.5)
    assert _best_line(np.zeros((5, 5), np.float32)) == 0.0


def _reference_best_component(z, low, high):
    lab = measure.label(z > low, connectivity=2)
    best = 0.0
    for r in measure.regionprops(lab):
        v = z[tuple(r.coords.T)].astype(np.float64)
        if v.max() > high:
            best = max(best, float((v - low).sum()))
    return best


def test_best_line_matches_skimage_labels():
    rng = np.random.default_rng(3)
    zo = (rng.standard_normal((70, 90)) * 2).astype(np.float32)
    zw = (rng.standard_normal((70, 90)) * 2).astype(np.float32)
    validf = (rng.random((70, 90)) > 0.1).astype(np.float32)
    got = K.best_line(zo, zw, validf, LOW_Z, HIGH_Z, np.empty(zo.shape, bool),
                      np.empty(zo.size, np.int64))
    ref = _reference_best_component(np.minimum(zo, zw) * validf, LOW_Z, HIGH_Z)
    assert got == pytest.approx(ref, rel=1e-6)


def _full_grid_score(history, order, n, valid, recent=False, late=False):
    """The vessel test with every map made on the whole grid (the kernels' full-grid calls):
    the reference of the test made on the field's spans and rows only."""
    shape = valid.shape
    if late:   # the history test's onset one frame earlier, its washout against the last two
        n -= 1
    if recent:
        order = np.array([order[n - 4], order[n - 3], order[n - 2], order[n - 2], order[n - 1]])
        n = 5
    tt = tap_tables()
    pad = np.empty((shape[0] + 8, shape[1] + 8), np.float32)
    cpad = np.empty((shape[0] + 6, shape[1] + 6), np.float32)
    spans = np.empty((4, shape[0]), np.int64)
    K.full_spans(spans, shape[1])
    inner = np.empty(shape, bool)
    K.erode_square(valid, 4, np.empty(shape, bool), inner)
    validf = inner.astype(np.float32)
    den = np.empty(shape, np.float32)
    K.box_scale(inner, NOISE_WINDOW_PX, np.empty(shape, np.int32), den)
    work = (np.empty(2 * valid.size, np.float32), np.empty(4 * 4096, np.int64),
            np.empty(shape, np.int32), np.empty(shape), np.empty(shape[1]))
    zw, zo, div = (np.empty(shape, np.float32) for _ in range(3))
    if late:
        K.onset_ridge(history, order[n - 3], order[n - 1], order[n], *tt, pad, cpad, zw, spans)
    else:
        K.washout_ridge(history, order[n - 3], order[n - 1], *tt, pad, cpad, zw, spans)
    K.local_z(zw, inner, validf, den, NOISE_WINDOW_PX, *work, div, inner, 0.0)
    K.onset_ridge(history, order[n - 3], order[n - 4], order[n - 5] if n >= 5 else -1, *tt,
                  pad, cpad, zo, spans)
    K.local_z(zo, inner, validf, den, NOISE_WINDOW_PX, *work, np.empty(shape, np.float32),
              inner, 0.0)
    seen, stack = np.empty(shape, bool), np.empty(valid.size, np.int64)
    return K.best_line(zo, zw, validf, LOW_Z, HIGH_Z, seen, stack)


@pytest.mark.parametrize("n", [4, 5])
def test_scores_on_the_fields_rows_and_spans_equal_the_full_grid_test(n):
    """Bit for bit, on a round field with empty rows above and below and a cut corner."""
    shape = (60, 72)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    valid = ((yy - 31) ** 2 + (xx - 38) ** 2 < 24 ** 2) & ~((yy < 20) & (xx > 45))
    frames = _frames([0, 0, 1, 0.4, 0.1], seed=7)
    history = np.stack([f[:shape[0], :shape[1]] for f in frames]).astype(np.float32)
    order = np.arange(5)[5 - n:]
    t = TransientLines(shape)
    want = _full_grid_score(history, order, n, valid)
    assert want > 0.0
    assert t.score_history(history, order, n, valid) == want
    if n == 5:   # on its own noise (no stamps), with the onset against x[a-2], x[a-1]
        assert t.score_recent(history, order, 5, valid) == _full_grid_score(
            history, order, 5, valid, recent=True)
    assert t.rows == slice(12, 51)      # the field's rows (8-54) less the erosion


@pytest.mark.parametrize("n", [5, 6])
def test_the_late_score_on_the_fields_rows_and_spans_equals_the_full_grid_test(n):
    shape = (60, 72)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    valid = ((yy - 31) ** 2 + (xx - 38) ** 2 < 24 ** 2) & ~((yy < 20) & (xx > 45))
    frames = _frames([0, 0, 1, 0.6, 0.35, 0.2], seed=7)
    history = np.stack([f[:shape[0], :shape[1]] for f in frames]).astype(np.float32)
    order = np.arange(6)[6 - n:]
    want = _full_grid_score(history, order, n, valid, late=True)
    assert want > 0.0
    assert TransientLines(shape).score_late(history, order, n, valid) == want
    with pytest.raises(ValueError):
        TransientLines(shape).score_late(history, order[:4], 4, valid)


class _OpenCvTransientLines:
    """The vessel test as first written with OpenCV and NumPy (filter2D per orientation,
    np.median, boxFilter, connectedComponents): the reference of the numba version."""

    def __init__(self, shape):
        self.shape = shape

    def _ridge(self, img):
        out = np.full(img.shape, -1e9, np.float32)
        f = FLANK_PX
        rows, cols = img.shape
        for kc, (dx, dy) in line_kernels():
            c = cv2.filter2D(img, -1, kc, borderType=cv2.BORDER_REPLICATE)
            pad = cv2.copyMakeBorder(c, f, f, f, f, cv2.BORDER_REPLICATE)
            left = c - pad[f + dy:f + dy + rows, f + dx:f + dx + cols]
            right = c - pad[f - dy:f - dy + rows, f - dx:f - dx + cols]
            out = np.maximum(out, np.minimum(left, right))
        return out

    def _local_z(self, m, inner, validf, den, near=None):
        v = m[inner]
        if v.size == 0:
            return np.zeros_like(m)
        med = np.float32(np.median(v))
        g = float(np.mean(np.abs(v - med)))
        m = m - med
        w = (NOISE_WINDOW_PX, NOISE_WINDOW_PX)
        a = np.abs(m) * validf
        if near is not None:     # contrast accepted there: clipped, not counted as noise
            a = np.where(near, np.minimum(a, np.float32(NEAR_CLIP * g)), a)
        local = cv2.boxFilter(a, -1, w, normalize=False, borderType=cv2.BORDER_CONSTANT)
        local = local / np.maximum(den, 1.0) * np.float32(1.2533)
        return m / np.maximum(local, np.float32(0.05 * g + 1e-9))

    def score(self, frames, valid, late=False, opacity=None):
        if late:   # arrival on the fourth-last, washout against the mean of the last two
            a, pre = frames[-4], frames[:-4]
            washout = ((a - frames[-2]) + a - frames[-1]) * np.float32(0.5)
        else:
            x_now, a = frames[-1], frames[-3]
            pre = frames[:-3]
            washout = a - x_now
        onset = a - pre[-1]
        if len(pre) > 1:
            onset = (onset + a - pre[-2]) * np.float32(0.5)
        inner = cv2.erode(valid.astype(np.uint8), np.ones((2 * EDGE_PX + 1,) * 2, np.uint8))
        inner = inner.view(bool)
        validf = inner.astype(np.float32)
        den = cv2.boxFilter(validf, -1, (NOISE_WINDOW_PX, NOISE_WINDOW_PX), normalize=False,
                            borderType=cv2.BORDER_CONSTANT)
        near = None
        if opacity is not None:
            g = 2 * NEAR_GROW_PX + 1
            near = cv2.dilate(opacity.astype(np.uint8), np.ones((g, g), np.uint8),
                              borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)
        zo = self._local_z(self._ridge(onset), inner, validf, den, near)
        zw = self._local_z(self._ridge(washout), inner, validf, den)
        return _reference_best_component(np.minimum(zo, zw) * validf, LOW_Z, HIGH_Z)


@pytest.mark.parametrize("seed, profile, cut", [(0, [0, 0, 1, 1, 0.2], False),
                                                (1, [0, 1, 1, 0.2], True),
                                                (2, [0, 0, 0, 0, 0], True),
                                                (3, [0, 0.5, 1, 1.3, 1.6], False)])
def test_score_matches_the_opencv_version(seed, profile, cut):
    frames = _frames(profile, seed=seed)
    valid = np.ones(SHAPE, bool)
    if cut:                         # a collimated field and a text block
        valid[:30] = False
        valid[90:100, 100:] = False
    got = TransientLines(SHAPE).score(frames, valid)
    ref = _OpenCvTransientLines(SHAPE).score(frames, valid)
    assert got == pytest.approx(ref, rel=1e-4, abs=1e-4)


def _line_beside_a_growing_fill(seed=0):
    """Five frames: a faint line (3.5 noise sigmas) that comes and goes on the third frame, and
    12 px beside it a dense band (joint fill, 20 sigmas) that grows along it every frame; and
    the band's accepted opacity on the newest frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]].astype(np.float32)
    across = xx - 0.3 * yy - 50.0
    line = np.exp(-0.5 * across ** 2) * ((yy > 30) & (yy < 100))
    frames = []
    for k, p in enumerate([0, 0, 1, 0.15, 0.0]):
        band = (np.abs(across + 12.0) <= 2) & (yy >= 20) & (yy < 40 + 18 * k)
        frames.append((0.5 + 0.035 * p * line + 0.2 * band
                       + 0.01 * rng.standard_normal(SHAPE)).astype(np.float32))
    return frames, band


def test_contrast_beside_a_faint_line_is_not_its_noise():
    """The growing band answers the onset's ridge filter tens of sigmas strong; counted as
    noise it hides the line beside it. Accepted as opacity (set_near) it is clipped out of the
    onset's local noise and the line scores (z x px) as a vessel does; the kernels agree with
    the OpenCV reference either way."""
    frames, band = _line_beside_a_growing_fill()
    valid = np.ones(SHAPE, bool)
    plain = TransientLines(SHAPE).score(frames, valid)
    t = TransientLines(SHAPE)
    t.set_near(band)
    near = t.score(frames, valid)
    assert plain == pytest.approx(_OpenCvTransientLines(SHAPE).score(frames, valid), rel=1e-4)
    assert near == pytest.approx(_OpenCvTransientLines(SHAPE).score(frames, valid, opacity=band),
                                 rel=1e-4)
    assert plain < 5.0 and near > 20.0
    # cleared: the next frame without accepted opacity is standardised as before
    t.set_near(None)
    assert t.score(frames, valid) == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize("seed, profile", [(0, [0, 0, 1, 0.6, 0.35, 0.2]), (1, [0, 1, 1, 0.3, 0.1]),
                                           (2, [0, 0, 0, 0, 0, 0])])
def test_late_score_matches_the_opencv_version(seed, profile):
    frames = _frames(profile, seed=seed)
    valid = np.ones(SHAPE, bool)
    valid[:30] = False
    history = np.stack(frames).astype(np.float32)
    got = TransientLines(SHAPE).score_late(history, np.arange(len(frames)), len(frames), valid)
    ref = _OpenCvTransientLines(SHAPE).score(frames, valid, late=True)
    assert got == pytest.approx(ref, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_late_score_finds_a_line_that_empties_slowly(seed):
    """A vessel holding a third of its strength two frames after its arrival: against the mean
    of the two frames after that, its line stands out far more than in the history test."""
    frames = _frames([0, 0, 1, 0.6, 0.35, 0.2], seed=seed)
    history = np.stack(frames).astype(np.float32)
    late = TransientLines(SHAPE).score_late(history, np.arange(6), 6, np.ones(SHAPE, bool))
    assert late > 40.0
    assert late > 2.0 * _score(frames[:5])


@pytest.mark.parametrize("profile", [[0, 0, 1, 1, 1, 1], [0, 0.4, 0.8, 1.0, 1.2, 1.4],
                                     [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
def test_late_score_of_lines_that_stay_grow_or_were_there_before_is_low(profile):
    for seed in range(4):
        history = np.stack(_frames(profile, seed=seed)).astype(np.float32)
        assert TransientLines(SHAPE).score_late(history, np.arange(6), 6,
                                                np.ones(SHAPE, bool)) < 10.0


def test_the_field_cache_follows_a_changed_field():
    frames = _frames([0, 0, 1, 1, 0.2])
    t = TransientLines(SHAPE)
    full = np.ones(SHAPE, bool)
    cut = full.copy()
    cut[:, 40:] = False             # the line lies mostly beyond x = 40
    assert t.score(frames, full) > 30.0
    assert t.score(frames, cut) == pytest.approx(TransientLines(SHAPE).score(frames, cut))
    assert t.score(frames, full) == pytest.approx(TransientLines(SHAPE).score(frames, full))


def test_the_washout_bound_skips_only_what_cannot_reach_the_floor():
    """At or above ``floor`` the score is the full one; below it, 0 or the full score."""
    valid = np.ones(SHAPE, bool)
    skipped = 0
    for seed, profile in [(0, [0, 0, 1, 0.4, 0.1]), (4, [0, 0, 0, 0, 0]), (5, [0, 0, 1, 1, 1]),
                          (6, [0, 1, 0.5, 0.2]), (7, [0, 0, 1, 0.3, 0.6])]:
        frames = _frames(profile, seed=seed, amp=0.03)
        full = TransientLines(SHAPE).score(frames, valid)
        for floor in (0.5 * full, full, 1.5 * full + 1.0, 40.0):
            got = TransientLines(SHAPE).score_history(np.stack(frames), np.arange(len(frames)),
                                                      len(frames), valid, floor=floor)
            if full >= floor:
                assert got == pytest.approx(full)
            else:
                assert got == 0.0 or got == pytest.approx(full)
                skipped += got == 0.0 and full > 0.0
    assert skipped > 0


def test_recent_arrival_is_seen_a_frame_sooner():
    """A vessel at full strength on the second-last frame and fading on the last: the recent
    test sees it, the test around the third-last frame cannot yet."""
    frames = _frames([0, 0, 0, 1, 0.3])
    valid = np.ones(SHAPE, bool)
    history = np.stack(frames)
    t = TransientLines(SHAPE)
    assert t.score_recent(history, np.arange(5), 5, valid) > 30.0
    assert t.score_history(history, np.arange(5), 5, valid) < 10.0


@pytest.mark.parametrize("profile", [[0, 0, 0, 1, 1], [0, 0, 0.5, 1, 1.3], [0, 0, 0, 0, 0],
                                     [1, 1, 1, 1, 0]])
def test_recent_test_leaves_lines_that_stay_low(profile):
    history = np.stack(_frames(profile))
    assert TransientLines(SHAPE).score_recent(history, np.arange(5), 5,
                                              np.ones(SHAPE, bool)) < 20.0


@pytest.mark.parametrize("n", [4, 5])
def test_recent_test_is_the_history_test_on_shifted_frames(n):
    """Arrival x[n-2], onset against x[n-4] and x[n-3], washout against x[n-1], through a ring
    buffer whose order is rotated."""
    frames = _frames([0, 0, 0, 1, 0.3][-n:], seed=8)
    valid = np.ones(SHAPE, bool)
    ring = np.stack(frames[2:] + frames[:2])          # oldest frame in slot n - 2
    order = np.array(list(range(n - 2, n)) + list(range(n - 2)), np.int64)
    got = TransientLines(SHAPE).score_recent(ring, order, n, valid)
    ref = TransientLines(SHAPE).score([frames[-4], frames[-3], frames[-2], frames[-2], frames[-1]],
                                      valid)
    assert got == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("profile, vessel", [([0, 0, 0, 1, 0.3], True), ([0, 0, 0, 1, 0.6], False),
                                             ([0, 0, 0, 0, 0], False), ([0, 0, 0, 1, 1], False)])
@pytest.mark.parametrize("seed", [0, 11])
def test_recent_test_on_the_history_tests_noise_scores_as_on_its_own(profile, vessel, seed):
    """Right after the history test of the same frames, the recent test standardises its
    washout with that test's noise (no second median and box filter). A vessel scores at
    least as high as when the test measures its own noise (its own washout's line raises its
    local noise; the history test's washout holds less of it); lines that stay, a line
    still at 60 % and noise stay low either way."""
    from sifluoro.track.contrast_transient import new_stamp

    history = np.stack(_frames(profile, seed=seed))
    valid = np.ones(SHAPE, bool)
    order = np.arange(5)
    stamps = np.array([new_stamp() for _ in range(5)], np.int64)
    own = TransientLines(SHAPE).score_recent(history, order, 5, valid)
    t = TransientLines(SHAPE)
    t.score_history(history, order, 5, valid, floor=1e6, stamps=stamps)
    shared = t.score_recent(history, order, 5, valid, stamps=stamps)
    assert t.w_of[0] == stamps[4]           # the noise came from the history test
    if vessel:
        assert own > 20.0 and shared > max(own, 40.0)
    else:
        assert own < 15.0 and shared < 15.0


def test_an_onset_seen_by_the_recent_test_is_reused_exactly_on_the_next_frame(monkeypatch):
    """Frame by frame through a ring as the stage calls it (history test, then recent test):
    one object carrying its onsets over gives the same scores, bit for bit, as a fresh object
    per frame; the recent test's onset is not filtered again by the next history test, and
    its z is kept while the field stays the same (a changed field standardises it anew)."""
    from sifluoro.track.contrast_transient import new_stamp

    frames = (_frames([0, 0, 0, 1, 0.3, 0.1, 0, 0], seed=3)
              + _frames([0, 0, 1, 0.9, 0.2, 0, 0, 0], seed=4))
    full = np.ones(SHAPE, bool)
    cut = full.copy()
    cut[:20] = False
    fields = [full] * 6 + [cut, full, full, cut, cut] + [full] * 5
    ring = np.zeros((6,) + SHAPE, np.float32)
    stamps = np.full(6, -1, np.int64)
    kept = TransientLines(SHAPE)
    filtered = []
    onset_ridge = K.onset_ridge
    monkeypatch.setattr(K, "onset_ridge", lambda *a: (filtered.append(a[-2] is kept.onset_ridge),
                                                      onset_ridge(*a))[1])
    reused, best = 0, 0.0
    for i, (frame, valid) in enumerate(zip(frames, fields)):
        ring[i % 6] = frame
        stamps[i % 6] = new_stamp()
        n = min(i + 1, 5)
        if n < 4:
            continue
        order = np.array([(i - n + 1 + j) % 6 for j in range(n)], np.int64)
        fresh = TransientLines(SHAPE)
        want = (fresh.score_history(ring, order, n, valid, stamps=stamps),
                fresh.score_recent(ring, order, n, valid, stamps=stamps))
        onsets = filtered.count(True)
        got = (kept.score_history(ring, order, n, valid, stamps=stamps),
               kept.score_recent(ring, order, n, valid, stamps=stamps))
        assert got == want
        reused += filtered.count(True) - onsets == 1
        best = max(best, *want)
    assert reused == 12 and best > 30.0       # every frame but the first test's


def _broadening_blob(widths_px, *, amp=0.3, seed=0):
    """Five frames: nothing twice, then a dense blob of the same peak that broadens (a cloud
    of extravasation while injecting), and the last blob's area (where opacity stays)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]].astype(np.float32)
    r2 = (xx - 64.0) ** 2 + (yy - 64.0) ** 2
    frames = [0.5 + noise for noise in 0.01 * rng.standard_normal((2,) + SHAPE)]
    frames += [0.5 + amp * np.exp(-0.5 * r2 / w ** 2) + 0.01 * rng.standard_normal(SHAPE)
               for w in widths_px]
    return np.stack(frames).astype(np.float32), np.exp(-0.5 * r2 / widths_px[-1] ** 2) > 0.1


@pytest.mark.parametrize("widths", [(2, 4, 6), (2, 3, 4)])
def test_a_broadening_cloud_that_keeps_its_opacity_is_no_washout(widths):
    """Its centre loses the curvature the ridge filter sees, not opacity: without the opacity
    that stays, the history test reads a vessel (training seed 1521 case 5: 47 z x mm)."""
    history, stays = _broadening_blob(widths)
    valid = np.ones(SHAPE, bool)
    assert TransientLines(SHAPE).score_history(history, np.arange(5), 5, valid) > 20.0
    kept = (stays, (0, SHAPE[0], 0, SHAPE[1]), 0.01)
    assert TransientLines(SHAPE).score_history(history, np.arange(5), 5, valid,
                                               stays=kept) < 10.0


def test_a_vessel_that_empties_over_opacity_that_stays_still_scores():
    """The loss is measured, not the place: a line that washes out across a steady cloud."""
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]].astype(np.float32)
    cloud = 0.05 * np.exp(-0.5 * ((xx - 64.0) ** 2 + (yy - 64.0) ** 2) / 20.0 ** 2)
    history = np.stack(_frames([0, 0, 1, 1, 0.2]))
    history[2:] += cloud.astype(np.float32)
    stays = ((xx - 64.0) ** 2 + (yy - 64.0) ** 2) < 30.0 ** 2
    kept = (stays, (0, SHAPE[0], 0, SHAPE[1]), 0.01)
    valid = np.ones(SHAPE, bool)
    plain = TransientLines(SHAPE).score_history(history, np.arange(5), 5, valid)
    masked = TransientLines(SHAPE).score_history(history, np.arange(5), 5, valid, stays=kept)
    assert plain > 30.0 and masked > 0.8 * plain


def test_a_long_line_washing_out_into_a_growing_cloud_keeps_its_score():
    """Review s20 C2: a cloud that grows over a vessel faster than the vessel empties leaves
    every pixel of it gaining opacity, so the kept-opacity rule alone cuts the whole line; a
    long thin line the rule cut below the floor keeps its score (``stays[3]``, its length in
    px), a broadening blob does not."""
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]].astype(np.float32)
    cloud = np.exp(-0.5 * ((xx - 64.0) ** 2 + (yy - 64.0) ** 2) / 40.0 ** 2).astype(np.float32)
    history = np.stack(_frames([0, 0, 1, 1, 0.2]))
    history[3] += 0.04 * cloud              # the cloud starts after the line arrived
    history[4] += 0.08 * cloud
    everywhere, box, valid = np.ones(SHAPE, bool), (0, SHAPE[0], 0, SHAPE[1]), np.ones(SHAPE, bool)
    floor = 15.0

    def score(h, stays):
        return TransientLines(SHAPE).score_history(h, np.arange(5), 5, valid, floor=floor,
                                                   stays=stays)

    plain = score(history, None)
    assert plain > 30.0
    assert score(history, (everywhere, box, 0.01)) == 0.0            # the rule alone
    assert score(history, (everywhere, box, 0.01, 20.0)) == plain
    assert score(history, (everywhere, box, 0.01, 200.0)) == 0.0     # not that long
    # the same line over a cloud that stays, the rule's margin above its loss: the line kept
    # its opacity (as far as the rule can tell), nothing came in over it: cut
    steady = np.stack(_frames([0, 0, 1, 1, 0.2]))
    steady[2:] += 0.05 * cloud
    assert score(steady, None) > 30.0
    assert score(steady, (everywhere, box, 0.05, 20.0)) == 0.0
    blob, stays = _broadening_blob((2, 4, 6))
    assert score(blob, None) > 20.0
    assert score(blob, (stays, box, 0.01, 20.0)) < floor


def _gas_frames(shifts_px, *, seed=0):
    """A dark bubble (gas) that moves down and back with breathing: where it left is brighter,
    where it came darker."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]].astype(np.float32)
    out = [0.5 - 0.08 * ((((xx - 64) / 18) ** 2 + ((yy - 64 - s) / 12) ** 2) < 1)
           + 0.01 * rng.standard_normal(SHAPE) for s in shifts_px]
    return np.stack(out).astype(np.float32)


@pytest.mark.parametrize("shifts", [(0, 0, 4, 0, 0), (0, 1, 5, 1, 0)])
def test_a_gas_rim_that_moves_and_returns_is_no_vessel(shifts):
    """Its bright crescent comes and goes like a vessel, but a dark one came with it
    (training seed 1524 case 4: a false alert at 67 z x mm on an extravasation)."""
    history, valid = _gas_frames(shifts), np.ones(SHAPE, bool)
    assert TransientLines(SHAPE).score_history(history, np.arange(5), 5, valid) > 100.0
    assert TransientLines(SHAPE).score_history(history, np.arange(5), 5, valid,
                                               floor=18.0) == 0.0


def test_a_vessel_beside_a_still_bubble_still_scores():
    history = np.stack(_frames([0, 0, 1, 1, 0.2])) + _gas_frames([30] * 5)[0] - 0.5
    valid = np.ones(SHAPE, bool)
    plain = TransientLines(SHAPE).score_history(history, np.arange(5), 5, valid)
    assert plain > 30.0
    assert TransientLines(SHAPE).score_history(history, np.arange(5), 5, valid,
                                               floor=18.0) == pytest.approx(plain)


def test_the_gas_checks_component_is_the_one_best_line_scores():
    rng = np.random.default_rng(5)
    for _ in range(5):
        z = (rng.standard_normal((70, 90)) * 2).astype(np.float32)
        ref = _reference_best_component(z, LOW_Z, HIGH_Z)
        comp = _best_component(z)
        assert float((z[comp] - LOW_Z).astype(np.float64).sum()) == pytest.approx(ref, rel=1e-6)
    assert _best_component(np.zeros((8, 8), np.float32)) is None


def test_inner_is_the_field_eroded_by_the_filters_reach():
    """TransientLines' inner field (OpenCV's erosion) is K.erode_square's, fields that touch
    the grid's edge included (outside counts as set)."""
    rng = np.random.default_rng(9)
    shape = (45, 61)
    t = TransientLines(shape)
    for k in range(6):
        valid = rng.random(shape) > [0.0, 0.01, 0.05, 0.3, 0.6, 1.0][k]
        valid[:, :3] = k % 2 == 0
        t._mask(valid)
        want = np.empty(shape, bool)
        K.erode_square(valid, EDGE_PX, np.empty(shape, bool), want)
        np.testing.assert_array_equal(t.inner, want)
        assert np.array_equal(t.validf, want.astype(np.float32))


def test_drop_kept_opacity_is_the_numpy_steps():
    """K.drop_kept_opacity against the NumPy steps it replaced, a margin between two float32
    values included (NumPy rounds it to float32 before comparing)."""
    rng = np.random.default_rng(4)
    shape = (40, 50)
    for margin in (0.05, 0.1 + 2.0 ** -28, 0.0):
        zw = rng.standard_normal(shape).astype(np.float32)
        arrival = rng.random(shape).astype(np.float32)
        newest = (arrival - rng.choice([0.0, 0.05, 0.1], shape)).astype(np.float32)
        newest[3, 4] = arrival[3, 4] - np.float32(0.1)
        mask = rng.random(shape) > 0.3
        bbox = (2, 31, 3, 47)
        want = zw.copy()
        box = (slice(2, 31), slice(3, 47))
        kept = mask[box] & (arrival[box] - newest[box] < margin)
        want[box][kept] = 0.0
        K.drop_kept_opacity(zw, arrival, newest, mask, *bbox, margin)
        assert zw.tobytes() == want.tobytes()


def test_set_near_grows_the_opacity_by_the_filters_reach():
    """OpenCV's dilation, as K.dilate_square's (outside the image unset), edges included."""
    rng = np.random.default_rng(1)
    t = TransientLines((64, 80))
    for _ in range(10):
        opacity = rng.random((64, 80)) > 0.995
        opacity[0, 3] = opacity[-1, -2] = True
        t.set_near(opacity)
        want = np.empty_like(opacity)
        K.dilate_square(opacity, NEAR_GROW_PX, np.empty_like(opacity), want)
        np.testing.assert_array_equal(t.near, want)
        assert t.near_clip == NEAR_CLIP
    t.set_near(None)
    assert t.near_clip == 0.0 and t.near_gen == 0


def _stays_cases():
    """Histories with opacity that stays (blobs, lines over clouds, noise alone) and the stays
    of each, with and without the rescue's line length."""
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]].astype(np.float32)
    cloud = np.exp(-0.5 * ((xx - 64.0) ** 2 + (yy - 64.0) ** 2) / 40.0 ** 2).astype(np.float32)
    everywhere, box = np.ones(SHAPE, bool), (0, SHAPE[0], 0, SHAPE[1])
    growing = np.stack(_frames([0, 0, 1, 1, 0.2]))
    growing[3] += 0.04 * cloud
    growing[4] += 0.08 * cloud
    blob, blob_stays = _broadening_blob((2, 4, 6))
    for seed in range(3):
        yield np.stack(_frames([0] * 5, seed=seed)), (everywhere, box, 0.01, 20.0)
        yield np.stack(_frames([0, 0, 1, 0.6, 0.3], seed=seed, amp=0.02)), (everywhere, box,
                                                                              0.01, 20.0)
    for stays in [(everywhere, box, 0.01), (everywhere, box, 0.01, 20.0),
                  (everywhere, box, 0.01, 200.0)]:
        yield growing, stays
    yield blob, (blob_stays, box, 0.01, 20.0)
    yield blob, (blob_stays, box, 0.01)


@pytest.mark.parametrize("floor", [0.0, 5.0, 15.0, 30.0, 1e4])
def test_the_best_line_before_the_kept_opacity_rule_bounds_it_exactly(monkeypatch, floor):
    """With opacity that stays, a washout whose best line is below the floor before the
    kept-opacity rule reads 0 at once (the rule only takes pixels out); the scores of both
    tests are those of the whole path (the bound switched off), bit for bit, and the usual
    frame of noise alone never runs the rule."""
    import sifluoro.track.contrast_transient as CT

    valid = np.ones(SHAPE, bool)

    def scores(cases):
        out = []
        for history, stays in cases:
            t = TransientLines(SHAPE)
            stamps = np.arange(1, 6, dtype=np.int64)
            out.append((t.score_history(history, np.arange(5), 5, valid, floor=floor,
                                        stamps=stamps, stays=stays),
                        t.score_recent(history, np.arange(5), 5, valid, floor=floor,
                                       stamps=stamps, stays=stays)))
        return out

    fast = scores(_stays_cases())
    monkeypatch.setattr(CT, "_BOUND_BELOW", -np.inf)     # never below: the whole path
    assert fast == scores(_stays_cases())
    if floor == 15.0:
        assert any(s > 0.0 for pair in fast for s in pair) and any(s == 0.0 for s in fast[0])
    monkeypatch.undo()
    ruled = []
    monkeypatch.setattr(CT.K, "drop_kept_opacity", lambda *a: ruled.append(1))
    history, stays = next(_stays_cases())
    TransientLines(SHAPE).score_history(history, np.arange(5), 5, valid, floor=15.0,
                                        stays=stays)
    assert ruled == []
