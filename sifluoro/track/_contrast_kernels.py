"""numba kernels of the contrast stage: frame reduction, smoothing, reference envelope,
residual statistics, field flood fill, hysteresis labelling and per-component moments.

Arrays in, arrays out, no allocation: the caller owns every buffer and reuses it across frames.
NumPy/scikit-image references are in tests/track/test_contrast_kernels.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# columns of the per-component statistics table written by component_stats
C_AREA = 0        # pixels
C_SUM = 1         # sum of the residual (attenuation units x pixels)
C_PEAK = 2        # largest residual
C_SX = 3          # sum of x, of y, of x², y², xy (moments)
C_SY = 4
C_SXX = 5
C_SYY = 6
C_SXY = 7
C_X0 = 8          # bounding box, inclusive
C_Y0 = 9
C_X1 = 10
C_Y1 = 11
C_EDGE = 12       # pixels with a 4-neighbour outside the component
C_NEW = 13        # pixels not opaque on the previous frame
C_CORE = 14       # pixels of the core (residual >= a fraction of the component's peak)
C_CORE_EDGE = 15  # core pixels with a 4-neighbour outside the core
C_CSX = 16        # core moments: sum of x, y, x², y², xy
C_CSY = 17
C_CSXX = 18
C_CSYY = 19
C_CSXY = 20
C_CSUM = 21       # residual summed over the core
N_STATS = 22


@njit(cache=True, nogil=True)
def reduce_frame(pixels, factor, top, invert, out_img, out_low, out_high):
    """Block-average stored pixels into an attenuation-like working image.

    ``out_img[y, x]`` = mean over the ``factor`` x ``factor`` block of ``v / top`` (``1 - v / top``
    when ``invert``), so bone is bright. ``out_low``/``out_high`` count the block's pixels at
    attenuation 0 (burned-in text outline) and at 1 (no exposure, text, or saturation).
    Rows are read in storage order, one block row at a time.
    """
    rows, cols = out_img.shape
    scale = 1.0 / (top * factor * factor)
    for y in range(rows):
        for x in range(cols):
            out_low[y, x] = 0
            out_high[y, x] = 0
            out_img[y, x] = 0.0
        for dy in range(factor):
            row = pixels[y * factor + dy]
            for x in range(cols):
                acc = 0
                n0 = 0
                n1 = 0
                for dx in range(factor):
                    v = np.int32(row[x * factor + dx])
                    acc += v
                    n0 += v == 0
                    n1 += v >= top
                out_img[y, x] += acc
                out_low[y, x] += n0
                out_high[y, x] += n1
        for x in range(cols):
            if invert:
                out_img[y, x] = np.float32(1.0 - out_img[y, x] * scale)
                n0 = out_low[y, x]
                out_low[y, x] = out_high[y, x]
                out_high[y, x] = n0
            else:
                out_img[y, x] = np.float32(out_img[y, x] * scale)


@njit(cache=True, nogil=True)
def smooth_binomial(src, tmp, dst):
    """Separable [1, 4, 6, 4, 1] / 16 filter (Gaussian, sigma 1 px), borders replicated."""
    rows, cols = src.shape
    for y in range(rows):
        for x in range(cols):
            xm2 = max(x - 2, 0)
            xm1 = max(x - 1, 0)
            xp1 = min(x + 1, cols - 1)
            xp2 = min(x + 2, cols - 1)
            tmp[y, x] = (src[y, xm2] + src[y, xp2] + 4.0 * (src[y, xm1] + src[y, xp1])
                         + 6.0 * src[y, x]) * 0.0625
    for y in range(rows):
        ym2 = max(y - 2, 0)
        ym1 = max(y - 1, 0)
        yp1 = min(y + 1, rows - 1)
        yp2 = min(y + 2, rows - 1)
        for x in range(cols):
            dst[y, x] = (tmp[ym2, x] + tmp[yp2, x] + 4.0 * (tmp[ym1, x] + tmp[yp1, x])
                         + 6.0 * tmp[y, x]) * 0.0625


@njit(cache=True, nogil=True)
def envelope_max(slots, n, out):
    """Per-pixel maximum over the first ``n`` reference slots (-1 marks an unusable pixel)."""
    rows, cols = out.shape
    for y in range(rows):
        for x in range(cols):
            m = np.float32(-1.0)
            for k in range(n):
                v = slots[k, y, x]
                if v > m:
                    m = v
            out[y, x] = m


@njit(cache=True, nogil=True)
def masked_residual(cur, ref, valid, dx, dy, out):
    """``out = cur - ref(x - dx, y - dy)`` where both are usable, 0 elsewhere; ``valid`` is
    updated in place (False where the shifted reference is missing). Returns the usable count."""
    rows, cols = cur.shape
    n = 0
    for y in range(rows):
        ry = y - dy
        for x in range(cols):
            rx = x - dx
            ok = valid[y, x] and 0 <= ry < rows and 0 <= rx < cols
            if ok:
                r = ref[ry, rx]
                ok = r >= 0.0
            if ok:
                out[y, x] = cur[y, x] - r
                n += 1
            else:
                out[y, x] = 0.0
                valid[y, x] = False
    return n


@njit(cache=True, nogil=True)
def robust_centre_spread(values, valid, clip):
    """Centre and Gaussian-equivalent spread of ``values`` over ``valid``, re-clipped once at
    ``clip`` spreads so that contrast, gas and needle hardly move them.

    Returns (centre, sigma); sigma is 1.2533 x the mean absolute deviation of the kept values.
    """
    rows, cols = values.shape
    centre = 0.0
    half_width = 1e30
    sigma = 0.0
    for _ in range(2):
        s = 0.0
        n = 0
        for y in range(rows):
            for x in range(cols):
                if valid[y, x]:
                    v = values[y, x]
                    if abs(v - centre) <= half_width:
                        s += v
                        n += 1
        if n == 0:
            return 0.0, 0.0
        new_centre = s / n
        a = 0.0
        for y in range(rows):
            for x in range(cols):
                if valid[y, x]:
                    v = values[y, x]
                    if abs(v - centre) <= half_width:
                        a += abs(v - new_centre)
        centre = new_centre
        sigma = 1.2533 * a / n
        half_width = clip * sigma
    return centre, sigma


@njit(cache=True, nogil=True)
def flood_unexposed(seed, full, out, stack):
    """Unexposed field of the current frame: ``seed`` pixels (unexposed before) and every
    ``full`` pixel (fully saturated block) 4-connected to them or to the image border.

    A collimator closing mid-run makes a saturated area that grows from the old field edge or
    the border; dense contrast saturates inside the field and is not reached. Returns the count.
    """
    rows, cols = full.shape
    top = 0
    for y in range(rows):
        for x in range(cols):
            border = y == 0 or x == 0 or y == rows - 1 or x == cols - 1
            if seed[y, x] or (border and full[y, x]):
                out[y, x] = True
                stack[top] = y * cols + x
                top += 1
            else:
                out[y, x] = False
    count = top
    while top > 0:
        top -= 1
        p = stack[top]
        y = p // cols
        x = p - y * cols
        for k in range(4):
            ny = y + (k == 0) - (k == 1)
            nx = x + (k == 2) - (k == 3)
            if 0 <= ny < rows and 0 <= nx < cols and full[ny, nx] and not out[ny, nx]:
                out[ny, nx] = True
                stack[top] = ny * cols + nx
                top += 1
                count += 1
    return count


@njit(cache=True, nogil=True)
def dilate_square(src, radius, tmp, out):
    """Binary dilation by a (2 radius + 1)² square, separable, rows in storage order."""
    rows, cols = src.shape
    for y in range(rows):
        for x in range(cols):
            hit = False
            for xx in range(max(x - radius, 0), min(x + radius + 1, cols)):
                if src[y, xx]:
                    hit = True
                    break
            tmp[y, x] = hit
    for y in range(rows):
        for x in range(cols):
            out[y, x] = False
        for yy in range(max(y - radius, 0), min(y + radius + 1, rows)):
            for x in range(cols):
                if tmp[yy, x]:
                    out[y, x] = True


@njit(cache=True, nogil=True)
def hysteresis_label(score, valid, high, low, labels, stack, max_components):
    """8-connected components of ``score > low`` that hold a pixel above ``high``.

    ``labels`` gets 1..n (0 elsewhere); components beyond ``max_components`` are left out.
    Returns n.
    """
    rows, cols = score.shape
    labels[:, :] = 0
    n = 0
    for y0 in range(rows):
        for x0 in range(cols):
            if labels[y0, x0] != 0 or not valid[y0, x0] or score[y0, x0] <= high:
                continue
            if n == max_components:
                return n
            n += 1
            labels[y0, x0] = n
            top = 1
            stack[0] = y0 * cols + x0
            while top > 0:
                top -= 1
                p = stack[top]
                y = p // cols
                x = p - y * cols
                for ny in range(max(y - 1, 0), min(y + 2, rows)):
                    for nx in range(max(x - 1, 0), min(x + 2, cols)):
                        if labels[ny, nx] == 0 and valid[ny, nx] and score[ny, nx] > low:
                            labels[ny, nx] = n
                            stack[top] = ny * cols + nx
                            top += 1
    return n


@njit(cache=True, nogil=True)
def component_stats(labels, n, residual, previous, stats):
    """Fill ``stats[1..n]`` (columns ``C_*``) of the labelled components.

    ``previous`` marks pixels opaque on the previous frame (for C_NEW).
    """
    rows, cols = labels.shape
    for k in range(1, n + 1):
        for c in range(N_STATS):
            stats[k, c] = 0.0
        stats[k, C_X0] = 1e9
        stats[k, C_Y0] = 1e9
        stats[k, C_X1] = -1.0
        stats[k, C_Y1] = -1.0
    for y in range(rows):
        for x in range(cols):
            k = labels[y, x]
            if k == 0:
                continue
            r = residual[y, x]
            s = stats[k]
            s[C_AREA] += 1.0
            s[C_SUM] += r
            if r > s[C_PEAK]:
                s[C_PEAK] = r
            s[C_SX] += x
            s[C_SY] += y
            s[C_SXX] += x * x
            s[C_SYY] += y * y
            s[C_SXY] += x * y
            s[C_X0] = min(s[C_X0], x)
            s[C_Y0] = min(s[C_Y0], y)
            s[C_X1] = max(s[C_X1], x)
            s[C_Y1] = max(s[C_Y1], y)
            edge = (x == 0 or y == 0 or x == cols - 1 or y == rows - 1
                    or labels[y, x - 1] != k or labels[y, x + 1] != k
                    or labels[y - 1, x] != k or labels[y + 1, x] != k)
            if edge:
                s[C_EDGE] += 1.0
            if not previous[y, x]:
                s[C_NEW] += 1.0


@njit(cache=True, nogil=True)
def core_stats(labels, residual, core_fraction, stats):
    """Shape of each component's core: its pixels at or above ``core_fraction`` of its peak.

    The hysteresis region of a dense line spreads into the blurred tails; the core keeps the
    line's own width, so thin joint fill and vessels look thin and clouds stay broad.
    """
    rows, cols = labels.shape
    for y in range(rows):
        for x in range(cols):
            k = labels[y, x]
            if k == 0:
                continue
            s = stats[k]
            cut = core_fraction * s[C_PEAK]
            if residual[y, x] < cut:
                continue
            s[C_CORE] += 1.0
            s[C_CSUM] += residual[y, x]
            s[C_CSX] += x
            s[C_CSY] += y
            s[C_CSXX] += x * x
            s[C_CSYY] += y * y
            s[C_CSXY] += x * y
            edge = False
            for k4 in range(4):
                ny = y + (k4 == 0) - (k4 == 1)
                nx = x + (k4 == 2) - (k4 == 3)
                if ny < 0 or nx < 0 or ny >= rows or nx >= cols:
                    edge = True
                elif labels[ny, nx] != k or residual[ny, nx] < cut:
                    edge = True
            if edge:
                s[C_CORE_EDGE] += 1.0


@njit(cache=True, nogil=True)
def select_labels(labels, keep, out):
    """``out = keep[labels]`` without allocating (label 0 is never kept)."""
    rows, cols = labels.shape
    for y in range(rows):
        for x in range(cols):
            k = labels[y, x]
            out[y, x] = k != 0 and keep[k]


@njit(cache=True, nogil=True)
def shifted_copy(src, dx, dy, unusable, fill, dst):
    """``dst(x, y) = src(x + dx, y + dy)``; ``fill`` where that falls outside or ``unusable``."""
    rows, cols = src.shape
    for y in range(rows):
        sy = y + dy
        for x in range(cols):
            sx = x + dx
            if 0 <= sy < rows and 0 <= sx < cols and not unusable[sy, sx]:
                dst[y, x] = src[sy, sx]
            else:
                dst[y, x] = fill


@njit(cache=True, nogil=True)
def negative_mass(score, valid, x0, y0, x1, y1, threshold):
    """Sum of ``-score - threshold`` over valid pixels below ``-threshold`` in a box (inclusive,
    clipped): the dark lobe a moving gas bubble leaves beside its bright one."""
    rows, cols = score.shape
    total = 0.0
    for y in range(max(y0, 0), min(y1 + 1, rows)):
        for x in range(max(x0, 0), min(x1 + 1, cols)):
            v = -score[y, x] - threshold
            if v > 0.0 and valid[y, x]:
                total += v
    return total


def warm_up(rows: int = 1024, cols: int = 1024, factor: int = 4) -> None:
    """Compile every kernel on arrays of the real frame size and dtype (uint16 stored pixels)."""
    shape = (rows // factor, cols // factor)
    pixels = np.zeros((rows, cols), np.uint16)
    img = np.zeros(shape, np.float32)
    tmp = np.zeros(shape, np.float32)
    low = np.zeros(shape, np.int32)
    high = np.zeros(shape, np.int32)
    reduce_frame(pixels, factor, 4095, False, img, low, high)
    smooth_binomial(img, tmp, img)
    slots = np.zeros((2,) + shape, np.float32)
    envelope_max(slots, 2, tmp)
    flags = np.zeros(shape, np.bool_)
    flags2 = np.zeros(shape, np.bool_)
    flags3 = np.zeros(shape, np.bool_)
    masked_residual(img, tmp, flags, 0, 0, img)
    robust_centre_spread(img, flags, 3.0)
    stack = np.zeros(shape[0] * shape[1] * 9 + 1, np.int64)
    flood_unexposed(flags, flags2, flags3, stack)
    dilate_square(flags, 1, flags2, flags3)
    labels = np.zeros(shape, np.int32)
    n = hysteresis_label(img, flags, 5.0, 2.5, labels, stack, 8)
    stats = np.zeros((9, N_STATS), np.float64)
    component_stats(labels, n, img, flags, stats)
    core_stats(labels, img, 0.4, stats)
    keep = np.zeros(9, np.bool_)
    select_labels(labels, keep, flags)
    shifted_copy(img, 0, 0, flags, np.float32(-1.0), tmp)
    negative_mass(img, flags, 0, 0, 3, 3, 2.5)
