"""contrast_motion.misalignment: the kernel against its NumPy reference, and known shifts."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from sifluoro.track.contrast_motion import misalignment, misalignment_numpy


def _scene(shape=(96, 128), seed=1):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0.2, 0.8, shape).astype(np.float32), (0, 0), 3.0)
    img[30:60, 40:90] += 0.2   # a bone-like block: strong edges both ways
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def _moved(img, dx, dy):
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, img.shape[::-1], flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.parametrize("dx, dy", [(0.0, 0.0), (0.3, 0.0), (0.0, -0.4), (0.25, 0.2)])
def test_a_small_shift_is_measured(dx, dy):
    ref = _scene()
    cur = _moved(ref, dx, dy)
    valid = np.ones(ref.shape, bool)
    valid[:4], valid[-4:], valid[:, :4], valid[:, -4:] = False, False, False, False
    mx, my, n = misalignment(ref, cur - ref, valid, 0.0, 1.0)
    assert n > 0.8 * valid.sum()
    assert abs(mx - dx) < 0.06 and abs(my - dy) < 0.06


def test_the_kernel_matches_numpy_with_unusable_pixels_and_clipping():
    rng = np.random.default_rng(5)
    ref = _scene(seed=2)
    ref[:10, :20] = -1.0                      # unusable in the reference
    cur = _moved(_scene(seed=2), 0.4, -0.3) + rng.normal(0, 0.003, ref.shape).astype(np.float32)
    residual = (cur - ref).astype(np.float32)
    residual[50:55, 60:70] += 0.5             # opacity: beyond the clip, left out
    valid = rng.random(ref.shape) > 0.1
    got = misalignment(ref, residual, valid, 0.001, 0.05)
    want = misalignment_numpy(ref, residual, valid, 0.001, 0.05)
    assert got[2] == want[2] > 0
    assert got[0] == pytest.approx(want[0], rel=1e-4, abs=1e-5)
    assert got[1] == pytest.approx(want[1], rel=1e-4, abs=1e-5)


def test_no_usable_pixel_gives_no_fit():
    z = np.zeros((16, 16), np.float32)
    assert misalignment(z, z, np.zeros((16, 16), bool), 0.0, 1.0) == (0.0, 0.0, 0)
    assert misalignment(z, z, np.ones((16, 16), bool), 0.0, 1.0)[2] == 0   # flat: no gradient
