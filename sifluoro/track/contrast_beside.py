"""Faint soft-tissue cloud beside a joint fill: the broad opacity the hysteresis never took.

A joint fill with an extravasation cloud beside it (truth: extravasation, "reposition") was the
largest error class on training (s25: 28 of the 74 wrong studies of 15 sets, 6 of 35 such
studies right): the cloud is a few mm to cm broad and 1-5 noise sigmas per pixel, under the
5-sigma seed, or merged into the fill's component. Here the residual around the accepted
opacity is averaged over a broad Gaussian (a matched filter for a cloud), the fill itself and
its unsharp-mask halo left out (normalised convolution), and compared with the same average far
from the fill: a cloud lifts the band beside the fill, away from the fill's ends (the recess
pool lies at the fill's inferior end).

Everything runs on a crop around the accepted opacity (``CROP_PX``), on frames whose state is
intra-articular only.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# the crop around the accepted opacity's box (working px): the far band that measures the
# smoothed residual's noise lies in it
CROP_PX = 24
# the fill and its halo (the unsharp mask's dark ring) left out of the average
EXCLUDE_MM = 3.0
# the Gaussian of the average (a cloud's lumps are 3-6 mm, sigma, in the simulator)
SIGMA_MM = 3.0
# the band beside the fill looked at (to this distance from it), away from its two ends
NEAR_MM = 11.0
END_MM = 8.0
# the far band (the noise of the average), and the share of the average's weight a pixel needs
FAR_MM = 18.0
MIN_WEIGHT = 0.3
# the distance to the opacity is a chamfer distance: steps of 1 and sqrt 2 (up to 8 % over
# the Euclidean one, two passes)
SQRT2 = 1.4142135


@njit(cache=True, nogil=True)
def _chamfer(on, dist):
    """``dist``: each pixel's distance (px) to the nearest ``on`` pixel, steps of 1 and sqrt 2
    (two passes; 1e9 where no pixel is on). Works in a copy padded by one pixel of 1e9: no
    branch at the border, the row loops vectorise where they can."""
    rows, cols = on.shape
    big = np.float32(1e9)
    one = np.float32(1.0)
    diag = np.float32(SQRT2)
    pad = np.full((rows + 2, cols + 2), big, np.float32)
    for y in range(rows):
        src = on[y]
        dst = pad[y + 1]
        for x in range(cols):
            dst[x + 1] = np.float32(0.0) if src[x] else big
    for y in range(1, rows + 1):
        up = pad[y - 1]
        row = pad[y]
        for x in range(1, cols + 1):
            row[x] = min(row[x], min(up[x] + one, min(up[x - 1], up[x + 1]) + diag))
        for x in range(1, cols + 1):
            row[x] = min(row[x], row[x - 1] + one)
    for y in range(rows, 0, -1):
        down = pad[y + 1]
        row = pad[y]
        for x in range(1, cols + 1):
            row[x] = min(row[x], min(down[x] + one, min(down[x - 1], down[x + 1]) + diag))
        for x in range(cols, 0, -1):
            row[x] = min(row[x], row[x + 1] + one)
    for y in range(rows):
        dist[y] = pad[y + 1, 1:cols + 1]


def _kernel_taps(sigma_px: float) -> np.ndarray:
    r = max(1, int(math.ceil(3.0 * sigma_px)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_px) ** 2)
    return (k / k.sum()).astype(np.float32)


@njit(cache=True, nogil=True)
def _blur(image, taps, tmp, out):
    """Separable blur of ``image`` by ``taps`` (odd length), zero outside the image; ``tmp``
    holds ``image`` padded by the taps' reach on every side. The taps are the outer loop, the
    row the inner one: it vectorises."""
    rows, cols = image.shape
    r = (taps.size - 1) // 2
    tmp[:] = 0.0
    tmp[r:r + rows, r:r + cols] = image
    vert = np.zeros((rows, cols + 2 * r), np.float32)
    for y in range(rows):
        dst = vert[y]
        for i in range(taps.size):
            src = tmp[y + i]
            t = taps[i]
            for x in range(cols + 2 * r):
                dst[x] += t * src[x]
    out[:] = 0.0
    for y in range(rows):
        dst = out[y]
        src = vert[y]
        for i in range(taps.size):
            t = taps[i]
            for x in range(cols):
                dst[x] += t * src[x + i]


@njit(cache=True, nogil=True)
def _beside(score, on, valid, ex_px, near_px, far_px, end_px, taps, min_weight):
    """The kernel of :func:`cloud_beside_z` (distances in working px, ``taps`` the Gaussian)."""
    rows, cols = score.shape
    dist = np.empty((rows, cols), np.float32)
    _chamfer(on, dist)
    kept = np.zeros((rows, cols), np.float32)
    keep = np.zeros((rows, cols), np.float32)
    n_on = 0
    sx = sy = 0.0
    for y in range(rows):
        for x in range(cols):
            if valid[y, x] and dist[y, x] > ex_px:
                keep[y, x] = 1.0
                kept[y, x] = score[y, x]
            if on[y, x]:
                n_on += 1
                sx += x
                sy += y
    if n_on == 0:
        return 0.0
    r = (taps.size - 1) // 2
    tmp = np.empty((rows + 2 * r, cols + 2 * r), np.float32)
    num = np.empty((rows, cols), np.float32)
    den = np.empty((rows, cols), np.float32)
    _blur(kept, taps, tmp, num)
    _blur(keep, taps, tmp, den)
    # the ends of the opacity: its extreme pixels along its principal axis
    mx, my = sx / n_on, sy / n_on
    cxx = cyy = cxy = 0.0
    for y in range(rows):
        for x in range(cols):
            if on[y, x]:
                cxx += (x - mx) * (x - mx)
                cyy += (y - my) * (y - my)
                cxy += (x - mx) * (y - my)
    angle = 0.5 * math.atan2(2.0 * cxy, cxx - cyy)
    ca, sa = math.cos(angle), math.sin(angle)
    umin, umax = 1e30, -1e30
    x0 = y0 = x1 = y1 = 0
    for y in range(rows):
        for x in range(cols):
            if on[y, x]:
                u = (x - mx) * ca + (y - my) * sa
                if u < umin:
                    umin, x0, y0 = u, x, y
                if u > umax:
                    umax, x1, y1 = u, x, y
    far = np.empty(rows * cols, np.float32)
    band = np.empty(rows * cols, np.float32)
    n_far = n_band = 0
    end2 = end_px * end_px
    for y in range(rows):
        for x in range(cols):
            if keep[y, x] == 0.0 or den[y, x] <= min_weight:
                continue
            m = num[y, x] / den[y, x]
            d = dist[y, x]
            if d > far_px:
                far[n_far] = m
                n_far += 1
            elif (d <= near_px and (x - x0) ** 2 + (y - y0) ** 2 > end2
                  and (x - x1) ** 2 + (y - y1) ** 2 > end2):
                band[n_band] = m
                n_band += 1
    if n_far < 50 or n_band <= 10:
        return 0.0
    centre = np.median(far[:n_far])
    spread = 1.4826 * np.median(np.abs(far[:n_far] - centre))
    if spread <= 0.0:
        return 0.0
    return (np.percentile(band[:n_band], 90.0) - centre) / spread


def crop_box(on: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1): the accepted opacity's box grown by ``CROP_PX`` (None: no opacity)."""
    ys = np.flatnonzero(on.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(on.any(axis=0))
    return (max(int(ys[0]) - CROP_PX, 0), int(ys[-1]) + CROP_PX + 1,
            max(int(xs[0]) - CROP_PX, 0), int(xs[-1]) + CROP_PX + 1)


def _pixels(work_mm: float):
    return tuple(d / work_mm for d in (EXCLUDE_MM, NEAR_MM, FAR_MM, END_MM))


def cloud_beside_z(score: np.ndarray, on: np.ndarray, valid: np.ndarray,
                   work_mm: float) -> float:
    """The 90th percentile, over the band beside the accepted opacity ``on`` (from
    ``EXCLUDE_MM`` to ``NEAR_MM`` from it, ``END_MM`` from its ends), of the residual ``score``
    (noise sigmas) averaged over a ``SIGMA_MM`` Gaussian without the opacity and its halo, in
    noise sigmas of that average far from it (robust: median and MAD beyond ``FAR_MM``).
    Arrays are the crop (:func:`crop_box`); 0.0 without enough band or far band."""
    ex_px, near_px, far_px, end_px = _pixels(work_mm)
    return float(_beside(score, on, valid, ex_px, near_px, far_px, end_px,
                         _kernel_taps(SIGMA_MM / work_mm), MIN_WEIGHT))


def cloud_beside_z_numpy(score: np.ndarray, on: np.ndarray, valid: np.ndarray,
                         work_mm: float) -> float:
    """NumPy reference of :func:`cloud_beside_z`."""
    if not on.any():
        return 0.0
    ex_px, near_px, far_px, end_px = _pixels(work_mm)
    rows, cols = on.shape
    yy, xx = np.mgrid[:rows, :cols]
    oy, ox = np.nonzero(on)
    dist = _chamfer_numpy(on)
    keep = valid & (dist > ex_px)
    taps = _kernel_taps(SIGMA_MM / work_mm).astype(np.float64)

    def blur(image):
        r = (taps.size - 1) // 2
        pad = np.pad(image.astype(np.float64), r)
        out = np.zeros((rows, cols))
        for i, wy in enumerate(taps):
            for j, wx in enumerate(taps):
                out += wy * wx * pad[i:i + rows, j:j + cols]
        return out

    num, den = blur(np.where(keep, score, 0.0)), blur(keep.astype(np.float64))
    weighted = keep & (den > MIN_WEIGHT)
    mean = np.where(weighted, num / np.maximum(den, 1e-12), 0.0)
    x, y = ox - ox.mean(), oy - oy.mean()
    angle = 0.5 * math.atan2(2.0 * float(x @ y), float(x @ x) - float(y @ y))
    u = x * math.cos(angle) + y * math.sin(angle)
    ends = [(ox[int(np.argmin(u))], oy[int(np.argmin(u))]),
            (ox[int(np.argmax(u))], oy[int(np.argmax(u))])]
    off_ends = np.ones((rows, cols), bool)
    for ex, ey in ends:
        off_ends &= (xx - ex) ** 2 + (yy - ey) ** 2 > end_px * end_px
    far = weighted & (dist > far_px)
    band = weighted & (dist <= near_px) & ~(dist > far_px) & off_ends
    if np.count_nonzero(far) < 50 or np.count_nonzero(band) <= 10:
        return 0.0
    centre = float(np.median(mean[far]))
    spread = 1.4826 * float(np.median(np.abs(mean[far] - centre)))
    if spread <= 0.0:
        return 0.0
    return (float(np.percentile(mean[band], 90.0)) - centre) / spread


def _chamfer_numpy(on: np.ndarray) -> np.ndarray:
    """NumPy reference of :func:`_chamfer`: a row at a time, the steps along the row as a
    running minimum (min over k of d[x - k] + k)."""
    rows, cols = on.shape
    d = np.where(on, 0.0, 1e9).astype(np.float32)
    idx = np.arange(cols, dtype=np.float32)
    inf = np.float32(1e9)
    one, diag = np.float32(1.0), np.float32(SQRT2)
    for order in (range(rows), range(rows - 1, -1, -1)):
        prev = None
        for y in order:
            row = d[y].copy()
            if prev is not None:
                up = prev + one
                left = np.concatenate([[inf], prev[:-1]]) + diag
                right = np.concatenate([prev[1:], [inf]]) + diag
                row = np.minimum(row, np.minimum(up, np.minimum(left, right)))
            if order.step == 1:
                row = np.minimum.accumulate(row - idx) + idx
            else:
                row = np.minimum.accumulate((row + idx)[::-1])[::-1] - idx
            d[y] = row
            prev = row
    return d


def warm_up() -> None:
    """Compile the kernels for the stage's crops (views into its working arrays)."""
    score = np.zeros((80, 80), np.float32)
    on = np.zeros((80, 80), np.bool_)
    on[30:50, 38:42] = True
    valid = np.ones((80, 80), np.bool_)
    crop = (slice(10, 70), slice(10, 70))
    cloud_beside_z(score[crop], on[crop], valid[crop], 1.0)
    # a crop of whole rows is contiguous: another specialisation
    cloud_beside_z(score, on, valid, 1.0)
