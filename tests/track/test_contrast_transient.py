"""The vessel test of the contrast stage: a thin line that came and went, against lines that
stay (joint fill), broad clouds and noise; and its ridge filter against a direct NumPy version."""
from __future__ import annotations

import numpy as np
import pytest

from sifluoro.track.contrast_transient import TransientLines, best_component, line_kernels

SHAPE = (128, 128)


def _frames(profile, *, seed=0, noise=0.01, shape="line", amp=0.02):
    """Five working frames: noise plus an object whose strength per frame is ``profile``."""
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


def test_line_that_washes_out_scores_high():
    assert _score(_frames([0, 0, 1, 1, 0.2])) > 30.0


@pytest.mark.parametrize("profile", [[0, 0, 1, 1, 1], [0, 0.5, 1, 1.3, 1.6], [0, 0, 0, 0, 0],
                                     [1, 1, 1, 1, 0]])
def test_lines_that_stay_or_were_there_before_score_low(profile):
    assert _score(_frames(profile)) < 20.0


def test_cloud_that_comes_and_goes_scores_low():
    assert _score(_frames([0, 0, 1, 1, 0.2], shape="cloud", amp=0.05)) < 20.0


def test_noise_only_scores_low_for_many_seeds():
    assert max(_score(_frames([0] * 5, seed=s)) for s in range(5)) < 25.0


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


def test_best_component_reference():
    z = np.zeros((10, 10), np.float32)
    z[1, 1:4] = [2.0, 4.0, 2.0]     # reaches the high threshold: sum of (z - 1.5)
    z[6, 6:9] = [2.0, 2.5, 2.0]     # never reaches it
    assert best_component(z, 1.5, 3.0) == pytest.approx(0.5 + 2.5 + 0.5)
    assert best_component(np.zeros((5, 5), np.float32), 1.5, 3.0) == 0.0
