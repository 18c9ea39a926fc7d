"""End-on needle dots (sifluoro.track.needle_dot): against a brute-force NumPy reference, and
what is a dot (a dense short streak) and what is not (a line, an edge, a bone island, a clip)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sifluoro.track.needle_dot import find_dot, ring_offsets

RING = 12  # 6 mm on the 0.5 mm working grid


def _reference_z(img, valid, centre, radius, ring, noise):
    """(centre - max over the ring) / noise by loops; -inf where the ring or the pixel leaves
    the field or the image, or the pixel is further than ``radius`` from ``centre``."""
    rows, cols = img.shape
    offs = ring_offsets(ring)
    z = np.full(img.shape, -np.inf)
    for y in range(rows):
        for x in range(cols):
            if (x - centre[0]) ** 2 + (y - centre[1]) ** 2 > radius ** 2 or not valid[y, x]:
                continue
            xs, ys = x + offs[:, 0], y + offs[:, 1]
            if xs.min() < 0 or ys.min() < 0 or xs.max() >= cols or ys.max() >= rows:
                continue
            if not valid[ys, xs].all():
                continue
            z[y, x] = (img[y, x] - img[ys, xs].max()) / noise
    return z


@pytest.mark.parametrize("seed", range(6))
def test_find_dot_matches_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    rows, cols = 70 + seed * 3, 64 + seed * 5
    img = cv2.GaussianBlur(rng.normal(0.0, 1.0, (rows, cols)).astype(np.float32), (0, 0), 1.0)
    for _ in range(3):
        x, y = rng.integers(0, cols), rng.integers(0, rows)
        img[max(0, y - 1):y + 2, max(0, x - 1):x + 2] += rng.uniform(1.0, 4.0)
    valid = np.ones((rows, cols), bool)
    cv2.circle(valid.view(np.uint8), (int(rng.integers(0, cols)), int(rng.integers(0, rows))),
               10, 0, -1)
    # centres inside, near and beyond the image edge
    centre = np.array([rng.uniform(-5, cols + 5), rng.uniform(-5, rows + 5)])
    radius = rng.uniform(15, 40)
    ref = _reference_z(img, valid, centre, radius, RING, 0.5)
    dot = find_dot(img, valid, centre, radius, RING, 0.5)
    if not (ref > 0).any():  # no pixel brighter than its whole ring
        assert dot is None
        return
    y, x = np.unravel_index(np.argmax(ref), ref.shape)
    assert dot is not None
    assert dot.z == pytest.approx(ref[y, x], rel=1e-5)
    assert np.all(np.abs(dot.xy - [x, y]) <= 1.0)  # sub-pixel within its 3x3 neighbourhood


def _scene(seed: int = 0, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size].astype(np.float32)
    img = 0.4 + 0.05 * np.sin(x / 15.0) + rng.normal(0, 0.01, (size, size)).astype(np.float32)
    return img


def _bar(img, pts, amp, width=1.6):
    """A bent wire through ``pts`` (one piece of steel: not denser where its pieces meet)."""
    canvas = np.zeros(img.shape, np.float32)
    pts = (np.asarray(pts, float) * 16).astype(np.int32)
    cv2.polylines(canvas, [pts], False, 1.0, max(1, int(round(width))), cv2.LINE_AA, shift=4)
    img += amp * cv2.GaussianBlur(canvas, (0, 0), 0.7)


def _find(img):
    smooth = cv2.GaussianBlur(img, (0, 0), 1.0)
    valid = np.ones(img.shape, bool)
    return find_dot(smooth, valid, np.array([48.0, 48.0]), 20.0, RING, 0.01 / 4)


def test_a_short_dense_streak_is_a_dot():
    img = _scene()
    _bar(img, [(50.0, 44.0), (54.0, 47.0)], 0.4)  # 2.5 mm on the 0.5 mm grid
    dot = _find(img)
    assert dot is not None and dot.z > 20
    assert math.dist(dot.xy, (52.0, 45.5)) < 2.0
    assert dot.length_px * 0.5 < 4.0 and dot.width_px * 0.5 < 2.0


def test_a_line_or_an_edge_is_no_dot():
    line = _scene(1)
    _bar(line, [(10.0, 20.0), (90.0, 80.0)], 0.4)
    edge = _scene(2)
    edge[:, 50:] += 0.3
    for img in (line, edge):
        dot = _find(img)
        assert dot is None or dot.z < 3.0


def test_a_bone_island_is_wide_and_a_clip_long():
    island = _scene(3)
    disc = np.zeros(island.shape, np.float32)
    cv2.circle(disc, (48, 48), 5, 1.0, -1)
    island += 0.2 * cv2.GaussianBlur(disc, (0, 0), 1.0)
    dot = _find(island)
    assert dot is not None and dot.width_px * 0.5 > 3.0  # a needle's dot: ~1 mm
    clip = _scene(4)
    apex = np.array([46.0, 50.0])
    legs = [apex + 16.0 * np.array([math.cos(a), math.sin(a)]) for a in (0.9, 1.5)]
    _bar(clip, [legs[0], apex, legs[1]], 0.4)  # a V, legs 8 mm at the detector (16 px)
    dot = _find(clip)
    assert dot is not None and dot.length_px * 0.5 > 6.0


def test_a_flat_patch_or_a_tie_with_the_ring_is_no_dot():
    """Best z == 0 (a clipped, flat patch; a one-pixel ridge whose pixels tie the ring samples
    crossing it): no dot, not a division by the blob's zero weight or a ring-sized blob."""
    valid = np.ones((64, 64), bool)
    flat = np.full((64, 64), 7.0, np.float32)
    assert find_dot(flat, valid, np.array([32.0, 32.0]), 8.0, 6, 1.0) is None
    ridge = np.zeros((64, 64), np.float32)
    ridge[:, 30] = 1.0
    for centre in ([30.0, 32.0], [40.0, 32.0], [20.0, 32.0]):
        assert find_dot(ridge, valid, np.array(centre), 8.0, 6, 1.0) is None
    # the reviewer's case: flat around the target, a brighter ramp to its right, no dot
    smooth = np.full((128, 128), 50.0, np.float32)
    smooth[:, 90:] += np.arange(1, 39, dtype=np.float32) * 2.0
    assert find_dot(smooth, np.ones((128, 128), bool), np.array([60.0, 64.0]), 20.0, 12,
                    1.0) is None
    # one pixel above the flat patch is a dot again
    flat[32, 33] += 0.5
    dot = find_dot(flat, valid, np.array([32.0, 32.0]), 8.0, 6, 1.0)
    assert dot is not None and dot.z == pytest.approx(0.5) and dot.area_px == 1
