"""numba kernels of the contrast stage: frame reduction, smoothing, reference envelope,
residual statistics, field flood fill, hysteresis labelling, per-component moments, and the
vessel test's oriented ridge filter, local noise and line components.

Arrays in, arrays out, no allocation: the caller owns every buffer and reuses it across frames.
NumPy/scikit-image/OpenCV references are in tests/track/test_contrast_kernels.py and
tests/track/test_contrast_transient.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from sifluoro._imaging_kernels import gather_in_bins, select_kth

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
def reduce_frame(pixels, factor, top, invert, out_img, out_zero, out_one, row_sum, row_min,
                 row_max):
    """Block-average stored (unsigned) pixels into an attenuation-like working image.

    ``out_img[y, x]`` = mean over the ``factor`` x ``factor`` block of ``v / top`` (``1 - v / top``
    when ``invert``), so bone is bright. ``out_zero`` marks blocks with a pixel at attenuation 0
    (burned-in text outline), ``out_one`` blocks whose every pixel is at attenuation 1 (no
    exposure, text, or saturation): both follow from the block's smallest and largest value.
    The ``factor`` rows of a block are summed (int32), and their minimum and maximum taken
    (buffers of the pixels' dtype), column by column into ``row_*`` (at least
    ``out_img.shape[1] * factor`` long), in storage order, then folded; for the usual factors
    4 (1024²) and 2 (512²) the fold is spelt out (its strided reads then vectorise).
    """
    rows, cols = out_img.shape
    scale = 1.0 / (top * factor * factor)
    n = cols * factor
    if (factor == 4 or factor == 2) and top * factor * factor <= 65535:
        # a block's sum fits 16 bits (12-bit pixels and less): summed as uint16, 16 a vector;
        # a value above ``top`` (a caller's frame: the readers clear the bits above
        # BitsStored) could overflow them, and the frame is then summed as int32 below
        if _reduce_narrow(pixels, factor, top, invert, out_img, out_zero, out_one,
                          row_sum.view(np.uint16), row_min, row_max):
            return
    for y in range(rows):
        # factors 4 and 2: only the extreme the fold reads (the pass is bound by its
        # arithmetic once the rows are in cache), and one stored row per loop: a loop over
        # all the block's rows at once cost 1.6x as much on a frame not in cache (0.26 against
        # 0.16 ms at 1024²), as every new frame is (int32 sums and extremes: any order is exact)
        if factor == 4 or factor == 2:
            first = pixels[y * factor]
            if invert:
                for i in range(n):
                    v = first[i]
                    row_sum[i] = np.int32(v)
                    row_max[i] = v
                for dy in range(1, factor):
                    row = pixels[y * factor + dy]
                    for i in range(n):
                        v = row[i]
                        row_sum[i] += np.int32(v)
                        row_max[i] = max(row_max[i], v)
            else:
                for i in range(n):
                    v = first[i]
                    row_sum[i] = np.int32(v)
                    row_min[i] = v
                for dy in range(1, factor):
                    row = pixels[y * factor + dy]
                    for i in range(n):
                        v = row[i]
                        row_sum[i] += np.int32(v)
                        row_min[i] = min(row_min[i], v)
        else:
            first = pixels[y * factor]
            for i in range(n):
                v = first[i]
                row_sum[i] = np.int32(v)
                row_min[i] = v
                row_max[i] = v
            for dy in range(1, factor):
                row = pixels[y * factor + dy]
                for i in range(n):
                    v = row[i]
                    row_sum[i] += np.int32(v)
                    row_min[i] = min(row_min[i], v)
                    row_max[i] = max(row_max[i], v)
        img = out_img[y]
        zero = out_zero[y]
        one = out_one[y]
        # the fold, one loop per usual factor and polarity: only the extreme the flags need
        if factor == 4 and invert:
            for x in range(cols):
                b = 4 * x
                acc = (row_sum[b] + row_sum[b + 1]) + (row_sum[b + 2] + row_sum[b + 3])
                hi = max(max(row_max[b], row_max[b + 1]), max(row_max[b + 2], row_max[b + 3]))
                img[x] = np.float32(1.0 - acc * scale)
                zero[x] = hi >= top
                one[x] = hi == 0
        elif factor == 4:
            for x in range(cols):
                b = 4 * x
                acc = (row_sum[b] + row_sum[b + 1]) + (row_sum[b + 2] + row_sum[b + 3])
                lo = min(min(row_min[b], row_min[b + 1]), min(row_min[b + 2], row_min[b + 3]))
                img[x] = np.float32(acc * scale)
                zero[x] = lo == 0
                one[x] = lo >= top
        elif factor == 2 and invert:
            for x in range(cols):
                b = 2 * x
                acc = row_sum[b] + row_sum[b + 1]
                hi = max(row_max[b], row_max[b + 1])
                img[x] = np.float32(1.0 - acc * scale)
                zero[x] = hi >= top
                one[x] = hi == 0
        elif factor == 2:
            for x in range(cols):
                b = 2 * x
                acc = row_sum[b] + row_sum[b + 1]
                lo = min(row_min[b], row_min[b + 1])
                img[x] = np.float32(acc * scale)
                zero[x] = lo == 0
                one[x] = lo >= top
        else:
            for x in range(cols):
                b = factor * x
                acc = row_sum[b]
                lo = row_min[b]
                hi = row_max[b]
                for dx in range(1, factor):
                    acc += row_sum[b + dx]
                    lo = min(lo, row_min[b + dx])
                    hi = max(hi, row_max[b + dx])
                if invert:
                    img[x] = np.float32(1.0 - acc * scale)
                    zero[x] = hi >= top
                    one[x] = hi == 0
                else:
                    img[x] = np.float32(acc * scale)
                    zero[x] = lo == 0
                    one[x] = lo >= top


@njit(cache=True, nogil=True)
def _reduce_narrow(pixels, factor, top, invert, out_img, out_zero, out_one, sums, row_min,
                   row_max):
    """:func:`reduce_frame` for factors 4 and 2 when a block's sum of stored values (at most
    ``top``: the readers clear the bits above BitsStored) fits 16 bits: the rows' sums in
    ``sums`` (uint16, 16 lanes a vector against 8 for int32: the row pass 0.09 -> 0.06 ms at
    1024²), the same integers, the same image and flags bit for bit. Returns False, the
    frame unfinished, at the first block row holding a value above ``top``."""
    rows, cols = out_img.shape
    scale = 1.0 / (top * factor * factor)
    n = cols * factor
    for y in range(rows):
        first = pixels[y * factor]
        seen = np.uint16(0)     # every value of the block row OR'ed: above top or not
        if invert:
            for i in range(n):
                v = first[i]
                sums[i] = v
                row_max[i] = v
                seen |= v
            for dy in range(1, factor):
                row = pixels[y * factor + dy]
                for i in range(n):
                    v = row[i]
                    sums[i] += v
                    row_max[i] = max(row_max[i], v)
                    seen |= v
        else:
            for i in range(n):
                v = first[i]
                sums[i] = v
                row_min[i] = v
                seen |= v
            for dy in range(1, factor):
                row = pixels[y * factor + dy]
                for i in range(n):
                    v = row[i]
                    sums[i] += v
                    row_min[i] = min(row_min[i], v)
                    seen |= v
        if seen > top:
            return False
        img = out_img[y]
        zero = out_zero[y]
        one = out_one[y]
        if factor == 4 and invert:
            for x in range(cols):
                b = 4 * x
                acc = (np.int32(sums[b]) + np.int32(sums[b + 1])) + (
                    np.int32(sums[b + 2]) + np.int32(sums[b + 3]))
                hi = max(max(row_max[b], row_max[b + 1]), max(row_max[b + 2], row_max[b + 3]))
                img[x] = np.float32(1.0 - acc * scale)
                zero[x] = hi >= top
                one[x] = hi == 0
        elif factor == 4:
            for x in range(cols):
                b = 4 * x
                acc = (np.int32(sums[b]) + np.int32(sums[b + 1])) + (
                    np.int32(sums[b + 2]) + np.int32(sums[b + 3]))
                lo = min(min(row_min[b], row_min[b + 1]), min(row_min[b + 2], row_min[b + 3]))
                img[x] = np.float32(acc * scale)
                zero[x] = lo == 0
                one[x] = lo >= top
        elif invert:
            for x in range(cols):
                b = 2 * x
                acc = np.int32(sums[b]) + np.int32(sums[b + 1])
                hi = max(row_max[b], row_max[b + 1])
                img[x] = np.float32(1.0 - acc * scale)
                zero[x] = hi >= top
                one[x] = hi == 0
        else:
            for x in range(cols):
                b = 2 * x
                acc = np.int32(sums[b]) + np.int32(sums[b + 1])
                lo = min(row_min[b], row_min[b + 1])
                img[x] = np.float32(acc * scale)
                zero[x] = lo == 0
                one[x] = lo >= top
    return True


@njit(cache=True, nogil=True)
def smooth_binomial(src, tmp, dst):
    """Separable [1, 4, 6, 4, 1] / 16 filter (Gaussian, sigma 1 px), borders replicated."""
    rows, cols = src.shape
    for y in range(rows):
        s = src[y]
        t = tmp[y]
        for x in range(min(2, cols)):
            t[x] = (s[max(x - 2, 0)] + s[min(x + 2, cols - 1)]
                    + 4.0 * (s[max(x - 1, 0)] + s[min(x + 1, cols - 1)]) + 6.0 * s[x]) * 0.0625
        for x in range(np.uint64(2), np.uint64(max(cols - 2, 2))):
            t[x] = (s[x - np.uint64(2)] + s[x + np.uint64(2)]
                    + 4.0 * (s[x - np.uint64(1)] + s[x + np.uint64(1)]) + 6.0 * s[x]) * 0.0625
        for x in range(max(cols - 2, 2), cols):
            t[x] = (s[max(x - 2, 0)] + s[min(x + 2, cols - 1)]
                    + 4.0 * (s[max(x - 1, 0)] + s[min(x + 1, cols - 1)]) + 6.0 * s[x]) * 0.0625
    for y in range(rows):
        a = tmp[max(y - 2, 0)]
        b = tmp[max(y - 1, 0)]
        c = tmp[y]
        d = tmp[min(y + 1, rows - 1)]
        e = tmp[min(y + 2, rows - 1)]
        o = dst[y]
        for x in range(np.uint64(cols)):
            o[x] = (a[x] + e[x] + 4.0 * (b[x] + d[x]) + 6.0 * c[x]) * 0.0625


@njit(cache=True, nogil=True)
def envelope_max(slots, n, out):
    """Per-pixel maximum over the first ``n`` reference slots (-1 marks an unusable pixel);
    slot by slot along each row, so that the row loop vectorises."""
    rows, cols = out.shape
    for y in range(rows):
        o = out[y]
        for x in range(cols):
            o[x] = np.float32(-1.0)
        for k in range(n):
            s = slots[k, y]
            for x in range(cols):
                v = s[x]
                o[x] = v if v > o[x] else o[x]


@njit(cache=True, nogil=True)
def masked_residual(cur, ref, valid, dx, dy, out):
    """``out = cur - ref(x - dx, y - dy)`` where both are usable, 0 elsewhere; ``valid`` is
    updated in place (False where the shifted reference is missing). Returns the usable count."""
    rows, cols = cur.shape
    n = 0
    if dx == 0 and dy == 0:
        # the stage's case: no shift, no bounds to test; rows vectorise
        for y in range(rows):
            c = cur[y]
            r = ref[y]
            v = valid[y]
            o = out[y]
            for x in range(cols):
                ok = v[x] and r[x] >= 0.0
                o[x] = c[x] - r[x] if ok else np.float32(0.0)
                v[x] = ok
                n += ok
        return n
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


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def robust_centre_spread(values, valid, clip):
    """Centre and Gaussian-equivalent spread of ``values`` over ``valid``, re-clipped once at
    ``clip`` spreads so that contrast, gas and needle hardly move them.

    Returns (centre, sigma); sigma is 1.2533 x the mean absolute deviation of the kept values.
    The sums may be reassociated (vectorised): the last bits differ from a sequential sum.
    """
    rows, cols = values.shape
    centre = 0.0
    half_width = 1e30
    sigma = 0.0
    zero = np.float32(0.0)
    for _ in range(2):
        # selects instead of branches, row views and an unsigned index: the passes vectorise
        s = 0.0
        n = 0
        for y in range(rows):
            vr = values[y]
            kr = valid[y].view(np.uint8)
            for x in range(np.uint64(cols)):
                v = vr[x]
                ok = (kr[x] != 0) & (abs(v - centre) <= half_width)
                s += v if ok else zero
                n += ok
        if n == 0:
            return 0.0, 0.0
        new_centre = s / n
        a = 0.0
        for y in range(rows):
            vr = values[y]
            kr = valid[y].view(np.uint8)
            for x in range(np.uint64(cols)):
                v = vr[x]
                ok = (kr[x] != 0) & (abs(v - centre) <= half_width)
                a += abs(v - new_centre) if ok else 0.0
        centre = new_centre
        sigma = 1.2533 * a / n
        half_width = clip * sigma
    return centre, sigma


@njit(cache=True, nogil=True)
def unexposed_seeds(envelope, seed):
    """``seed = envelope < 0``: unusable in the reference."""
    rows, cols = seed.shape
    for y in range(rows):
        for x in range(cols):
            seed[y, x] = envelope[y, x] < 0.0


@njit(cache=True, nogil=True)
def usable_field(unexposed, text, border_px, unusable, valid):
    """``unusable = unexposed | text``; ``valid`` its complement without the outermost
    ``border_px`` rows and columns."""
    rows, cols = valid.shape
    for y in range(rows):
        inside_y = border_px <= y < rows - border_px
        for x in range(cols):
            u = unexposed[y, x] or text[y, x]
            unusable[y, x] = u
            valid[y, x] = not u and inside_y and border_px <= x < cols - border_px


@njit(cache=True, nogil=True)
def standardise(residual, valid, centre, sigma, score):
    """``residual -= centre`` and ``score = residual / sigma`` where valid, 0 elsewhere (float32,
    as ``np.subtract``/``np.multiply`` by ``float32(1 / sigma)``)."""
    rows, cols = residual.shape
    c = np.float32(centre)
    inv = np.float32(1.0 / sigma)
    zero = np.float32(0.0)
    for y in range(rows):   # row views, an unsigned index: the row loop vectorises
        rr, sr, vr = residual[y], score[y], valid[y]
        for x in range(np.uint64(cols)):
            r = rr[x] - c
            rr[x] = r
            sr[x] = r * inv if vr[x] else zero


@njit(cache=True, nogil=True)
def flood_unexposed(seed, full, out, stack):
    """Unexposed field of the current frame: ``seed`` pixels (unexposed before) and every
    ``full`` pixel (fully saturated block) 4-connected to them or to the image border.

    A collimator closing mid-run makes a saturated area that grows from the old field edge or
    the border; dense contrast saturates inside the field and is not reached. Returns the count.
    Only ``full`` pixels outside ``seed`` are ever pushed: usually there are none (the
    unexposed field is both), and the fill costs two passes.
    """
    rows, cols = full.shape
    ucols = np.uint64(cols)
    count = 0
    for y in range(rows):
        sr = seed[y].view(np.uint8)
        orow = out[y].view(np.uint8)
        c = 0
        for x in range(ucols):
            v = sr[x]
            orow[x] = v
            c += v
        count += c
    top = 0
    for y in range(rows):
        # a row without a full pixel outside the field so far adds nothing: one vectorised
        # test instead of the pixel loop
        fr = full[y].view(np.uint8)
        orow = out[y].view(np.uint8)
        todo = 0
        for x in range(ucols):
            todo |= fr[x] & (orow[x] ^ 1)
        if todo == 0:
            continue
        for x in range(cols):
            if not full[y, x] or out[y, x]:
                continue
            if (y == 0 or x == 0 or y == rows - 1 or x == cols - 1 or out[y - 1, x]
                    or out[y + 1, x] or out[y, x - 1] or out[y, x + 1]):
                out[y, x] = True
                stack[top] = y * cols + x
                top += 1
                count += 1
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
def text_blocks(zero, prev, out):
    """``out``: the blocks of ``zero`` (a pixel at attenuation 0) that are burned-in text:
    another such block among the 8 neighbours, or the block was one on the previous frame too
    (``prev``; then overwritten with ``zero``). A lone block new on this frame is noise clipped
    at the window's end: at 1024² (16 pixels a block) hundreds a frame, and each, grown into a
    hole of the field, cut the vessels it lay on."""
    rows, cols = zero.shape
    ucols = np.uint64(cols)
    for y in range(rows):
        # most rows hold no zero block: out is then False there, found by one vectorised OR
        # (the pixel loop with its neighbour tests cost 0.08 ms a 256² frame)
        zr = zero[y].view(np.uint8)
        anyz = np.uint8(0)
        for x in range(ucols):
            anyz |= zr[x]
        if anyz == 0:
            orow = out[y].view(np.uint8)
            for x in range(ucols):
                orow[x] = 0
            continue
        # a block seen on the previous frame too (a pass that vectorises), then the lone
        # candidates' 8 neighbours (row views: at 1024² clipped noise leaves zero blocks in
        # most rows)
        orow, prow = out[y].view(np.uint8), prev[y].view(np.uint8)
        for x in range(ucols):
            orow[x] = zr[x] & prow[x]
        up = zero[max(y - 1, 0)].view(np.uint8)
        down = zero[min(y + 1, rows - 1)].view(np.uint8)
        has_up, has_down = y > 0, y < rows - 1
        for x in range(cols):
            if zr[x] == 0 or orow[x] != 0:
                continue
            hit = False
            for xx in range(max(x - 1, 0), min(x + 2, cols)):
                if (xx != x and zr[xx] != 0) or (has_up and up[xx] != 0) or (
                        has_down and down[xx] != 0):
                    hit = True
            orow[x] = hit
    for y in range(rows):
        pr, zr = prev[y].view(np.uint8), zero[y].view(np.uint8)
        for x in range(ucols):
            pr[x] = zr[x]


@njit(cache=True, nogil=True)
def dilate_square(src, radius, tmp, out):
    """Binary dilation by a (2 radius + 1)² square (outside the image counts as unset)."""
    _square_filter(src, radius, False, tmp, out)


@njit(cache=True, nogil=True)
def _square_filter(src, radius, erode, tmp, out):
    """OR (``erode``: AND) of each pixel's (2 radius + 1)² square, the image's outside left
    out: separable, rows in storage order. Each shifted pass reads one array and writes
    another (``src`` -> ``tmp``, ``tmp`` -> ``out``), so that it vectorises; ``out`` may be
    ``src``."""
    rows, cols = src.shape
    for y in range(rows):
        s = src[y]
        t = tmp[y]
        for x in range(cols):
            t[x] = s[x]
        for k in range(1, radius + 1):
            uk = np.uint64(k)
            n = np.uint64(max(cols - k, 0))
            if erode:
                for x in range(n):
                    t[x] &= s[x + uk]
                for x in range(n):
                    t[x + uk] &= s[x]
            else:
                for x in range(n):
                    t[x] |= s[x + uk]
                for x in range(n):
                    t[x + uk] |= s[x]
    for y in range(rows):
        o = out[y]
        t = tmp[y]
        for x in range(cols):
            o[x] = t[x]
        for yy in range(max(y - radius, 0), min(y + radius + 1, rows)):
            if yy == y:
                continue
            t = tmp[yy]
            if erode:
                for x in range(np.uint64(cols)):
                    o[x] &= t[x]
            else:
                for x in range(np.uint64(cols)):
                    o[x] |= t[x]


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
        # seeds are rare: a row without one is passed over after a test that vectorises
        sr, vr = score[y0], valid[y0]
        seeded = False
        for x in range(cols):
            seeded |= vr[x] & (sr[x] > high)
        if not seeded:
            continue
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


@njit(cache=True, nogil=True, inline="always")
def _row_labelled(labels, y):
    """Whether row ``y`` holds a labelled pixel (one test that vectorises: components cover
    few rows, and rows without one are passed over)."""
    lr = labels[y]
    any_ = np.int32(0)
    for x in range(np.uint64(labels.shape[1])):
        any_ |= lr[x]
    return any_ != 0


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
        if not _row_labelled(labels, y):
            continue
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
        if not _row_labelled(labels, y):
            continue
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
        if not _row_labelled(labels, y):
            o = out[y]
            for x in range(np.uint64(cols)):
                o[x] = False
            continue
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
    xa, xb = max(x0, 0), min(x1 + 1, cols)
    for y in range(max(y0, 0), min(y1 + 1, rows)):
        # row views and an unsigned index: no 2-D index arithmetic per pixel (a component's
        # box grown by its size is often most of the grid)
        sr, vr = score[y, xa:xb], valid[y, xa:xb]
        for x in range(np.uint64(max(xb - xa, 0))):
            v = -sr[x] - threshold
            if v > 0.0 and vr[x]:
                total += v
    return total


# --- the vessel (transient line) test, contrast_transient.py ------------------------------------

LINE_TAPS = 11        # taps per orientation of the line filter (unused ones have weight 0)
_F32_HALF = np.float32(0.5)


@njit(cache=True, nogil=True)
def onset_ridge(history, a, p1, p2, tap_dy, tap_dx, tap_w, flank_dx, flank_dy, pad, cpad, out,
                spans):
    """:func:`line_ridge` of the onset around the arrival frame ``x_a = history[a]``: ``x_a -
    history[p1]`` or, with ``p2 >= 0``, ``(x_a - history[p1] + x_a - history[p2]) / 2``
    (float32, in the NumPy order of operations), written straight into ``pad``: the onset map
    itself is never stored. Exact only within ``spans`` (:func:`ridge_spans`)."""
    rows, cols = out.shape
    h = (pad.shape[0] - rows) // 2
    x_a = history[a]
    x_p1 = history[p1]
    x_p2 = history[max(p2, 0)]
    for y in range(rows):
        ra, r1, r2 = x_a[y], x_p1[y], x_p2[y]
        prow = pad[y + h]
        if p2 >= 0:
            for x in range(cols):
                v = ra[x]
                prow[x + h] = ((v - r1[x]) + v - r2[x]) * _F32_HALF
        else:
            for x in range(cols):
                prow[x + h] = ra[x] - r1[x]
        for x in range(h):
            prow[x] = prow[h]
            prow[cols + h + x] = prow[cols + h - 1]
    for y in range(h):
        pad[y] = pad[h]
        pad[rows + h + y] = pad[rows + h - 1]
    _ridge_of_padded(rows, cols, tap_dy, tap_dx, tap_w, flank_dx, flank_dy, pad, cpad, out,
                     spans)


@njit(cache=True, nogil=True)
def line_ridge(src, tap_dy, tap_dx, tap_w, flank_dx, flank_dy, pad, cpad, out):
    """Oriented ridge: per orientation ``o`` the line average ``c = sum_t w[o,t] src(x + dx[o,t],
    y + dy[o,t])`` (borders replicated), then ``min(c - c(p + f), c - c(p - f))`` with the flank
    offset ``f = (flank_dx[o], flank_dy[o])`` (c's borders replicated); ``out`` is the best over
    orientations. ``pad`` is ``src`` plus ``(pad.shape[0] - rows) // 2`` px each side, ``cpad``
    ``c`` plus ``(cpad.shape[0] - rows) // 2``. Taps must fit in ``pad``'s margin and flanks in
    ``cpad``'s. The tap loop is spelt out (``LINE_TAPS``) so the row loop vectorises.
    """
    rows, cols = src.shape
    h = (pad.shape[0] - rows) // 2
    for y in range(rows + 2 * h):
        sy = min(max(y - h, 0), rows - 1)
        for x in range(cols + 2 * h):
            pad[y, x] = src[sy, min(max(x - h, 0), cols - 1)]
    spans = np.empty((4, rows), np.int64)
    full_spans(spans, cols)
    _ridge_of_padded(rows, cols, tap_dy, tap_dx, tap_w, flank_dx, flank_dy, pad, cpad, out,
                     spans)


@njit(cache=True, nogil=True)
def washout_ridge(history, a, now, tap_dy, tap_dx, tap_w, flank_dx, flank_dy, pad, cpad, out,
                  spans):
    """:func:`line_ridge` of ``history[a] - history[now]`` (float32), the difference written
    straight into ``pad``: the washout map itself is never stored. Exact only within ``spans``
    (:func:`ridge_spans`)."""
    rows, cols = out.shape
    h = (pad.shape[0] - rows) // 2
    x_a = history[a]
    x_now = history[now]
    for y in range(rows + 2 * h):
        sy = min(max(y - h, 0), rows - 1)
        ra = x_a[sy]
        rn = x_now[sy]
        prow = pad[y]
        for x in range(h):
            prow[x] = ra[0] - rn[0]
            prow[cols + h + x] = ra[cols - 1] - rn[cols - 1]
        for x in range(cols):
            prow[x + h] = ra[x] - rn[x]
    _ridge_of_padded(rows, cols, tap_dy, tap_dx, tap_w, flank_dx, flank_dy, pad, cpad, out,
                     spans)


@njit(cache=True, nogil=True)
def full_spans(spans, cols):
    """``spans`` (int64, 4 x rows) covering every pixel: :func:`line_ridge` everywhere."""
    for y in range(spans.shape[1]):
        spans[0, y] = 0
        spans[1, y] = cols
        spans[2, y] = 0
        spans[3, y] = cols


@njit(cache=True, nogil=True)
def ridge_spans(mask, reach, spans):
    """Where a ridge map is read when only ``mask`` pixels of it are (the vessel test reads
    its ridges on the eroded field alone): per row ``y``, ``spans[0, y]:spans[1, y]`` the
    columns from the first to the last set pixel (empty: 0:0), and ``spans[2, y]:spans[3, y]``
    those of the line averages the flanks of those pixels read, ``reach`` (>= the flank
    offsets) rows and columns around, within the image."""
    rows, cols = mask.shape
    for y in range(rows):
        m = mask[y]
        lo = 0
        while lo < cols and not m[lo]:
            lo += 1
        hi = cols
        while hi > lo and not m[hi - 1]:
            hi -= 1
        if lo == cols:
            lo = hi = 0
        spans[0, y] = lo
        spans[1, y] = hi
    for y in range(rows):
        lo = cols
        hi = 0
        for yy in range(max(y - reach, 0), min(y + reach + 1, rows)):
            if spans[1, yy] > spans[0, yy]:
                lo = min(lo, spans[0, yy] - reach)
                hi = max(hi, spans[1, yy] + reach)
        lo = max(lo, 0)
        hi = min(hi, cols)
        if hi <= lo:
            lo = hi = 0
        spans[2, y] = lo
        spans[3, y] = hi


@njit(cache=True, nogil=True)
def spans_cover(had, need):
    """Whether a ridge made on ``had`` (:func:`ridge_spans`) holds every pixel ``need`` reads."""
    for y in range(need.shape[1]):
        if need[1, y] > need[0, y] and not (had[0, y] <= need[0, y] and need[1, y] <= had[1, y]):
            return False
    return True


@njit(cache=True, nogil=True)
def _ridge_of_padded(rows, cols, tap_dy, tap_dx, tap_w, flank_dx, flank_dy, pad, cpad, out,
                     spans):
    """:func:`line_ridge` once ``pad`` holds the padded source, exact on the columns
    ``spans[0, y]:spans[1, y]`` of each row (the line averages are taken on
    ``spans[2]:spans[3]`` only); elsewhere ``out`` is -1e9."""
    h = (pad.shape[0] - rows) // 2
    f = (cpad.shape[0] - rows) // 2
    pcols = pad.shape[1]
    for y in range(rows):
        for x in range(cols):
            out[y, x] = np.float32(-1e9)
    flat = pad.ravel()
    for o in range(tap_dy.shape[0]):
        w = tap_w[o]
        # taps after the last weighted one add exactly nothing: 7, 9 or 11 are summed
        used = 0
        for t in range(LINE_TAPS):
            if w[t] != 0.0:
                used = t + 1
        w0, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10 = (w[0], w[1], w[2], w[3], w[4], w[5],
                                                      w[6], w[7], w[8], w[9], w[10])
        for y in range(rows):
            crow = cpad[y + f]
            c0 = spans[2, y]
            n = np.uint64(max(spans[3, y] - c0, 0))
            r = (y + h) * pcols + h + c0
            b0 = np.uint64(r + tap_dy[o, 0] * pcols + tap_dx[o, 0])
            b1 = np.uint64(r + tap_dy[o, 1] * pcols + tap_dx[o, 1])
            b2 = np.uint64(r + tap_dy[o, 2] * pcols + tap_dx[o, 2])
            b3 = np.uint64(r + tap_dy[o, 3] * pcols + tap_dx[o, 3])
            b4 = np.uint64(r + tap_dy[o, 4] * pcols + tap_dx[o, 4])
            b5 = np.uint64(r + tap_dy[o, 5] * pcols + tap_dx[o, 5])
            b6 = np.uint64(r + tap_dy[o, 6] * pcols + tap_dx[o, 6])
            b7 = np.uint64(r + tap_dy[o, 7] * pcols + tap_dx[o, 7])
            b8 = np.uint64(r + tap_dy[o, 8] * pcols + tap_dx[o, 8])
            b9 = np.uint64(r + tap_dy[o, 9] * pcols + tap_dx[o, 9])
            b10 = np.uint64(r + tap_dy[o, 10] * pcols + tap_dx[o, 10])
            uc = np.uint64(f + c0)
            if used <= 7:
                for x in range(n):
                    crow[x + uc] = (w0 * flat[b0 + x] + w1 * flat[b1 + x] + w2 * flat[b2 + x]
                                    + w3 * flat[b3 + x] + w4 * flat[b4 + x] + w5 * flat[b5 + x]
                                    + w6 * flat[b6 + x])
            elif used <= 9:
                for x in range(n):
                    crow[x + uc] = (w0 * flat[b0 + x] + w1 * flat[b1 + x] + w2 * flat[b2 + x]
                                    + w3 * flat[b3 + x] + w4 * flat[b4 + x] + w5 * flat[b5 + x]
                                    + w6 * flat[b6 + x] + w7 * flat[b7 + x] + w8 * flat[b8 + x])
            else:
                for x in range(n):
                    crow[x + uc] = (w0 * flat[b0 + x] + w1 * flat[b1 + x] + w2 * flat[b2 + x]
                                    + w3 * flat[b3 + x] + w4 * flat[b4 + x] + w5 * flat[b5 + x]
                                    + w6 * flat[b6 + x] + w7 * flat[b7 + x] + w8 * flat[b8 + x]
                                    + w9 * flat[b9 + x] + w10 * flat[b10 + x])
            # c's replicated border (read only when the span reaches the image's edge)
            for x in range(f):
                crow[x] = crow[f]
                crow[cols + f + x] = crow[cols + f - 1]
            # the flanks of row y - f lie within f rows of it: done while its rows are fresh
            if y == 0:
                for yy in range(f):
                    for x in range(cols + 2 * f):
                        cpad[yy, x] = crow[x]
            if y >= f:
                _flank_row(cpad, out, y - f, f, flank_dx[o], flank_dy[o], spans)
        for yy in range(f):
            for x in range(cols + 2 * f):
                cpad[rows + f + yy, x] = cpad[rows + f - 1, x]
        for yy in range(max(rows - f, 0), rows):
            _flank_row(cpad, out, yy, f, flank_dx[o], flank_dy[o], spans)


@njit(cache=True, nogil=True, inline="always")
def _flank_row(cpad, out, y, f, dx, dy, spans):
    """``out[y] = max(out[y], min(c - c(p + d), c - c(p - d)))`` for one row of ``c`` (in
    ``cpad``, ``f`` px of margin) and the flank offset ``d = (dx, dy)``, on the row's span."""
    x0 = spans[0, y]
    n = np.uint64(max(spans[1, y] - x0, 0))
    uc = np.uint64(f + x0)
    ul = np.uint64(f + dx + x0)
    ur = np.uint64(f - dx + x0)
    ux = np.uint64(x0)
    cr = cpad[y + f]
    lr = cpad[y + f + dy]
    rr = cpad[y + f - dy]
    orow = out[y]
    for x in range(n):
        c = cr[x + uc]
        orow[x + ux] = max(orow[x + ux], min(c - lr[x + ul], c - rr[x + ur]))


@njit(cache=True, nogil=True)
def box_sum(src, window, rowsum, colsum, out):
    """Unnormalised ``window`` x ``window`` box sum, zeros outside (``cv2.boxFilter(...,
    normalize=False, borderType=BORDER_CONSTANT)``); running sums in float64 (``rowsum`` a
    float64 buffer of ``src``'s shape, ``colsum`` one of its width). ``out`` may be ``src``."""
    rows, cols = src.shape
    r = window // 2
    # four rows at a time: each row's running sum is a chain of dependent additions, four
    # chains side by side keep the adder busy (every row's own order of additions is kept)
    y = 0
    while y + 4 <= rows:
        s0, s1, s2, s3 = src[y], src[y + 1], src[y + 2], src[y + 3]
        o0, o1, o2, o3 = rowsum[y], rowsum[y + 1], rowsum[y + 2], rowsum[y + 3]
        a0 = a1 = a2 = a3 = 0.0
        for x in range(min(r, cols)):
            a0 += s0[x]
            a1 += s1[x]
            a2 += s2[x]
            a3 += s3[x]
        for x in range(cols):
            if x + r < cols:
                a0 += s0[x + r]
                a1 += s1[x + r]
                a2 += s2[x + r]
                a3 += s3[x + r]
            if x - r - 1 >= 0:
                a0 -= s0[x - r - 1]
                a1 -= s1[x - r - 1]
                a2 -= s2[x - r - 1]
                a3 -= s3[x - r - 1]
            o0[x] = a0
            o1[x] = a1
            o2[x] = a2
            o3[x] = a3
        y += 4
    for y in range(y, rows):
        acc = 0.0
        for x in range(min(r, cols)):
            acc += src[y, x]
        for x in range(cols):
            if x + r < cols:
                acc += src[y, x + r]
            if x - r - 1 >= 0:
                acc -= src[y, x - r - 1]
            rowsum[y, x] = acc
    col = colsum
    for x in range(cols):
        col[x] = 0.0
    for y in range(min(r, rows)):
        for x in range(cols):
            col[x] += rowsum[y, x]
    for y in range(rows):
        if y + r < rows:
            for x in range(cols):
                col[x] += rowsum[y + r, x]
        if y - r - 1 >= 0:
            for x in range(cols):
                col[x] -= rowsum[y - r - 1, x]
        for x in range(cols):
            out[y, x] = col[x]


@njit(cache=True, nogil=True)
def erode_square(src, radius, tmp, out):
    """Binary erosion by a (2 radius + 1)² square; outside the image counts as set (OpenCV's
    default erosion border). ``tmp`` is scratch."""
    _square_filter(src, radius, True, tmp, out)


@njit(cache=True, nogil=True)
def same_mask(a, b):
    """Whether two boolean images are equal (no temporary; rows without an early exit, so
    they vectorise)."""
    rows, cols = a.shape
    for y in range(rows):
        differ = False
        for x in range(cols):
            differ |= a[y, x] != b[y, x]
        if differ:
            return False
    return True


@njit(cache=True, nogil=True)
def _bin_of_rank(hist, k):
    """The histogram bin holding the ``k``-th smallest value, and how many values lie below it."""
    below = 0
    b = 0
    while below + hist[b] <= k:
        below += hist[b]
        b += 1
    return b, below


_I32_MAX = np.int32(2147483647)
_I32_MIN = np.int32(-2147483648)
_LOW31 = np.int32(0x7FFFFFFF)


@njit(cache=True, nogil=True)
def _masked_range(m, mask, scratch):
    """Count, smallest and largest of ``m[mask]`` (float32, no NaN), as a scan that keeps the
    first of equal extremes finds them. The extremes are taken on integer keys (the float's
    bits, the negatives' magnitude bits flipped: ordered as the floats, -0 below +0), whose
    min/max vectorise where float selects do not; a zero extreme is then read back from the
    first masked zero, so that its sign is the scan's. ``scratch``: 2 float32 or more."""
    rows, cols = m.shape
    n = 0
    klo = _I32_MAX
    khi = _I32_MIN
    for y in range(rows):
        bits = m[y].view(np.int32)
        ok = mask[y].view(np.uint8)
        count = np.int32(0)
        for x in range(np.uint64(cols)):
            b = bits[x]
            key = b ^ ((b >> 31) & _LOW31)
            inside = ok[x] != 0
            count += np.int32(ok[x])
            klo = min(klo, key if inside else _I32_MAX)
            khi = max(khi, key if inside else _I32_MIN)
        n += count
    if n == 0:
        return 0, np.float32(np.inf), np.float32(-np.inf)
    keys = scratch[:2].view(np.int32)  # back to floats (the key map is its own inverse)
    keys[0] = klo ^ ((klo >> 31) & _LOW31)
    keys[1] = khi ^ ((khi >> 31) & _LOW31)
    lo = scratch[0]
    hi = scratch[1]
    if lo == 0.0 or hi == 0.0:
        first_zero = _first_masked_zero(m, mask)
        if lo == 0.0:
            lo = first_zero
        if hi == 0.0:
            hi = first_zero
    return n, lo, hi


@njit(cache=True, nogil=True)
def _first_masked_zero(m, mask):
    """The first of ``m[mask]`` equal to 0 in storage order (+0 or -0)."""
    rows, cols = m.shape
    for y in range(rows):
        for x in range(cols):
            if mask[y, x] and m[y, x] == 0.0:
                return m[y, x]
    return np.float32(0.0)


@njit(cache=True, nogil=True)
def masked_median(m, mask, cand, hist, bins):
    """``np.median(m[mask])`` in float32, exactly. Values are binned into a histogram of
    ``hist.size // 4`` bins between their extremes (``bins``, int32 of ``m``'s shape, holds each
    pixel's bin, -1 outside ``mask``); only the values of the median's bin (a few dozen) are
    gathered into ``cand`` (float32, ``m.size`` long) and selected. Two interleaved
    histograms keep neighbouring values from waiting on each other's count.
    Returns (median, count); (0, 0) when the mask is empty.
    """
    rows, cols = m.shape
    n, lo, hi = _masked_range(m, mask, cand)
    if n == 0:
        return np.float32(0.0), 0
    if hi == lo:
        return lo, n
    nb = hist.size // 4
    scale = np.float32(nb / (np.float64(hi) - np.float64(lo)))
    top = np.int32(nb - 1)
    if not scale < np.float32(1e30):
        # a range too narrow for float32 bins (denormal differences): one bin for all
        scale = np.float32(0.0)
    for y in range(rows):
        mr, kr, br = m[y], mask[y], bins[y]
        for x in range(np.uint64(cols)):
            b = min(np.int32((mr[x] - lo) * scale), top)
            br[x] = b if kr[x] else np.int32(-1)
    # two interleaved int32 histograms in the upper part of ``hist`` (32 KB at 4096 bins, in
    # L1; four int64 ones, 128 KB, cost a fifth more), folded into ``hist[:nb]`` below them
    h32 = hist.view(np.int32)
    off = 2 * nb
    for i in range(off, off + 2 * nb):
        h32[i] = 0
    uoff = np.uint64(off)
    for y in range(rows):
        br = bins[y]
        for x in range(np.uint64(cols)):
            b = br[x]
            if b >= 0:
                h32[uoff + np.uint64(2) * np.uint64(b) + (x & np.uint64(1))] += 1
    for b in range(nb):
        hist[b] = np.int64(h32[off + 2 * b]) + np.int64(h32[off + 2 * b + 1])
    counts = hist[:nb]
    k = n // 2
    k0 = k if n % 2 == 1 else k - 1
    b0, below = _bin_of_rank(counts, k0)
    b1, _ = _bin_of_rank(counts, k)
    # the values of the bins from rank k0's to rank k's (one bin, or two adjacent ones); the
    # binning is monotonic, so their order among all values is known
    c = 0
    for y in range(rows):
        c = gather_in_bins(bins[y], m[y], np.int32(b0), np.int32(b1), cand, c)
    upper = select_kth(cand, c, k - below)
    if n % 2 == 1:
        return upper, n
    # rank k - 1: the largest of the candidates below rank k's position
    lower = cand[0]
    for i in range(1, k - below):
        lower = max(lower, cand[i])
    return np.float32((lower + upper) / np.float32(2.0)), n


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _masked_mean_abs_deviation(m, mask, n, centre):
    """Mean of ``|m - centre|`` over ``mask`` (``n`` pixels; the sum may be reassociated)."""
    g = 0.0
    for y in range(m.shape[0]):
        for x in range(m.shape[1]):
            g += abs(m[y, x] - centre) if mask[y, x] else np.float32(0.0)
    return g / n


@njit(cache=True, nogil=True, error_model="numpy")
def local_z(m, inner, validf, den_scale, window, scratch, hist, bins, rowsum, colsum, tmp,
            near, clip):
    """``m`` in place: minus its median over ``inner``, over 1.2533 x its local mean absolute
    value (``window``² box over ``validf``; ``den_scale`` is 1.2533 / max(1, box sum of
    ``validf``), see :func:`box_scale`), at least 5 % of the global mean absolute deviation:
    the noise of ridge maps varies several-fold between soft tissue and bone. Returns the
    median; ``tmp`` is left holding the divisor (:func:`z_like` applies both to another map
    of the same noise).

    With ``clip > 0``, where ``near`` (bool, ``m``'s shape) the absolute values enter the
    local mean at most ``clip`` x the global mean absolute deviation: there they are contrast
    that changed, not noise, and would hide a faint line beside it."""
    rows, cols = m.shape
    med, n = masked_median(m, inner, scratch, hist, bins)
    if n == 0:
        for y in range(rows):
            for x in range(cols):
                m[y, x] = 0.0
                tmp[y, x] = np.float32(np.inf)
        return med
    g = _masked_mean_abs_deviation(m, inner, n, med)
    ucols = np.uint64(cols)  # row views and unsigned indices: the row loops vectorise
    for y in range(rows):
        mr, tr, vr = m[y], tmp[y], validf[y]
        for x in range(ucols):
            v = mr[x] - med
            mr[x] = v
            tr[x] = abs(v) * vr[x]
    if clip > 0.0:
        cap = np.float32(clip * g)
        for y in range(rows):
            tr, nr = tmp[y], near[y]
            for x in range(ucols):
                if nr[x] and tr[x] > cap:
                    tr[x] = cap
    box_sum(tmp, window, rowsum, colsum, tmp)
    floor = np.float32(0.05 * g + 1e-9)
    for y in range(rows):
        mr, tr, sr = m[y], tmp[y], den_scale[y]
        for x in range(ucols):
            d = max(tr[x] * sr[x], floor)
            tr[x] = d
            mr[x] = mr[x] / d
    return med


@njit(cache=True, nogil=True, error_model="numpy")
def z_like(m, med, divisor):
    """``m`` in place: ``(m - med) / divisor``, the median and divisor :func:`local_z` found
    for another map of the same noise."""
    rows, cols = m.shape
    for y in range(rows):
        mr, dr = m[y], divisor[y]
        for x in range(np.uint64(cols)):
            mr[x] = (mr[x] - med) / dr[x]


@njit(cache=True, nogil=True)
def drop_kept_opacity(zw, arrival, newest, mask, y0, y1, x0, x1, margin):
    """In the box ``y0:y1, x0:x1``: ``zw = 0`` where ``mask`` and ``arrival - newest <
    margin`` (float32, the margin rounded to float32 as NumPy compares a float32 array with a
    Python float): the NumPy steps of ``contrast_transient._drop_kept_opacity`` in one pass."""
    rows, cols = zw.shape
    m = np.float32(margin)
    for y in range(max(y0, 0), min(y1, rows)):
        zr, ar, nr, kr = zw[y], arrival[y], newest[y], mask[y]
        for x in range(max(x0, 0), min(x1, cols)):
            if kr[x] and ar[x] - nr[x] < m:
                zr[x] = np.float32(0.0)


@njit(cache=True, nogil=True, error_model="numpy")
def box_scale(mask, window, counts, out):
    """``out = 1.2533 / max(1, pixels of mask in the window² box)``, zeros outside: turns a box
    sum of absolute values over the mask into a Gaussian-equivalent standard deviation
    (:func:`local_z`). Counted in integers (``counts``: int32 of the mask's shape), column
    counts first (a pass that vectorises along the row): the same counts a float box sum of
    the 0/1 mask gives, exactly."""
    rows, cols = mask.shape
    r = window // 2
    prefix = np.empty(cols + 1, np.int32)
    c0 = counts[0]
    for x in range(cols):
        c0[x] = 0
    for y in range(min(r + 1, rows)):
        my = mask[y]
        for x in range(cols):
            c0[x] += my[x]
    for y in range(1, rows):
        prev, cy = counts[y - 1], counts[y]
        for x in range(cols):
            cy[x] = prev[x]
        if y + r < rows:
            add = mask[y + r]
            for x in range(cols):
                cy[x] += add[x]
        if y - r - 1 >= 0:
            sub = mask[y - r - 1]
            for x in range(cols):
                cy[x] -= sub[x]
    # along each row: prefix sums (prefix[x] = counts of columns < x), then each box is the
    # difference of two, in a loop free of branches where the box lies inside the row
    k = np.float32(1.2533)
    one = np.float32(1.0)
    lo_end = min(r, cols)                # boxes cut by the left edge: x < r
    hi_start = max(cols - r - 1, lo_end)  # boxes cut by the right edge
    for y in range(rows):
        cy, oy = counts[y], out[y]
        acc = 0
        prefix[0] = 0
        for x in range(cols):
            acc += cy[x]
            prefix[x + 1] = acc
        for x in range(lo_end):
            oy[x] = k / max(np.float32(prefix[min(x + r + 1, cols)]), one)
        # views and an unsigned index: no wraparound test, the loop vectorises
        hi, lo, mid = prefix[lo_end + r + 1:], prefix[max(lo_end - r, 0):], oy[lo_end:hi_start]
        for i in range(np.uint64(hi_start - lo_end)):
            mid[i] = k / max(np.float32(hi[i] - lo[i]), one)
        for x in range(hi_start, cols):
            oy[x] = k / max(np.float32(prefix[cols] - prefix[max(x - r, 0)]), one)


@njit(cache=True, nogil=True)
def best_line(zo, zw, validf, low, high, seen, stack):
    """Largest sum of ``z - low`` over an 8-connected component of ``z > low`` that reaches
    ``high`` (0 when none), with ``z = min(zo, zw) * validf``. Pixels not above ``low`` are
    marked seen up front (a pass that vectorises): the scan and the fill then test one flag."""
    rows, cols = zo.shape
    for y in range(rows):
        so = zo[y]
        sw = zw[y]
        vf = validf[y]
        sr = seen[y]
        for x in range(cols):
            sr[x] = not (min(so[x], sw[x]) * vf[x] > low)
    best = 0.0
    # the scan skips 8 seen pixels at a time (a word of 8 set flags): the fill only ever
    # marks pixels seen, and each pixel of a word not all seen is tested as it comes
    words = cols // 8
    all_seen = np.uint64(0x0101010101010101)
    for y0 in range(rows):
        sr0 = seen[y0]
        w0 = sr0[:words * 8].view(np.uint64)
        for i in range(words + (cols % 8 != 0)):
            if i < words and w0[i] == all_seen:
                continue
            for x0 in range(8 * i, min(8 * i + 8, cols)):
                if sr0[x0]:
                    continue
                sr0[x0] = True
                stack[0] = y0 * cols + x0
                top = 1
                total = 0.0
                peak = -1e30
                while top > 0:
                    top -= 1
                    p = stack[top]
                    y = p // cols
                    x = p - y * cols
                    z = min(zo[y, x], zw[y, x]) * validf[y, x]
                    total += np.float64(z - np.float32(low))
                    peak = max(peak, np.float64(z))
                    for ny in range(max(y - 1, 0), min(y + 2, rows)):
                        for nx in range(max(x - 1, 0), min(x + 2, cols)):
                            if not seen[ny, nx]:
                                seen[ny, nx] = True
                                stack[top] = ny * cols + nx
                                top += 1
                if peak > high and total > best:
                    best = total
    return best


@njit(cache=True, nogil=True)
def clear_sparse_blocks(pixels, factor, top, invert, min_count, blocks):
    """Clear the flagged cells of ``blocks`` (``factor`` x ``factor`` pixel blocks) with fewer
    than ``min_count`` pixels at attenuation 0: stored 0, or ``top`` and above when ``invert``
    (as :func:`reduce_frame` flags them). Its NumPy reference is in the kernel tests."""
    rows, cols = blocks.shape
    need = np.int64(np.ceil(min_count))
    for by in range(rows):
        br = blocks[by]
        for bx in range(cols):
            if not br[bx]:
                continue
            # counted row by row, done once the block holds enough: text blocks (most of
            # those flagged at 1024²) are full of them
            n = 0
            for y in range(by * factor, (by + 1) * factor):
                pr = pixels[y, bx * factor:(bx + 1) * factor]
                if invert:
                    for x in range(factor):
                        n += pr[x] >= top
                else:
                    for x in range(factor):
                        n += pr[x] == 0
                if n >= need:
                    break
            if n < min_count:
                br[bx] = False


def warm_up(rows: int = 1024, cols: int = 1024, factor: int = 4) -> None:
    """Compile every kernel on arrays of the real frame size and dtype (uint16 stored pixels)."""
    shape = (rows // factor, cols // factor)
    pixels = np.zeros((rows, cols), np.uint16)
    img = np.zeros(shape, np.float32)
    tmp = np.zeros(shape, np.float32)
    zero = np.zeros(shape, np.bool_)
    one = np.zeros(shape, np.bool_)
    row_sum = np.zeros(cols, np.int32)
    row_min = np.zeros(cols, np.uint16)
    row_max = np.zeros(cols, np.uint16)
    reduce_frame(pixels, factor, 4095, False, img, zero, one, row_sum, row_min, row_max)
    pixels.flags.writeable = False  # a DICOM file's decoded frames: a type of their own
    reduce_frame(pixels, factor, 4095, False, img, zero, one, row_sum, row_min, row_max)
    clear_sparse_blocks(pixels, factor, 4095, False, 4.0, zero)  # read-only pixels
    clear_sparse_blocks(np.zeros((rows, cols), np.uint16), factor, 4095, False, 4.0, zero)
    smooth_binomial(img, tmp, img)
    slots = np.zeros((2,) + shape, np.float32)
    envelope_max(slots, 2, tmp)
    flags = np.zeros(shape, np.bool_)
    flags2 = np.zeros(shape, np.bool_)
    flags3 = np.zeros(shape, np.bool_)
    masked_residual(img, tmp, flags, 0, 0, img)
    robust_centre_spread(img, flags, 3.0)
    stack = np.zeros(shape[0] * shape[1] * 9 + 1, np.int64)
    unexposed_seeds(img, flags)
    flood_unexposed(flags, flags2, flags3, stack)
    usable_field(flags, flags2, 3, flags3, flags)
    standardise(img, flags, 0.0, 1.0, tmp)
    dilate_square(flags, 1, flags2, flags3)
    text_blocks(flags, flags2, flags3)
    labels = np.zeros(shape, np.int32)
    n = hysteresis_label(img, flags, 5.0, 2.5, labels, stack, 8)
    stats = np.zeros((9, N_STATS), np.float64)
    component_stats(labels, n, img, flags, stats)
    core_stats(labels, img, 0.4, stats)
    keep = np.zeros(9, np.bool_)
    select_labels(labels, keep, flags)
    shifted_copy(img, 0, 0, flags, np.float32(-1.0), tmp)
    negative_mass(img, flags, 0, 0, 3, 3, 2.5)
    # the vessel test (contrast_transient.TransientLines)
    history = np.zeros((5,) + shape, np.float32)
    onset = np.zeros(shape, np.float32)
    washout = np.zeros(shape, np.float32)
    taps_i = np.zeros((2, LINE_TAPS), np.int64)
    taps_w = np.zeros((2, LINE_TAPS), np.float32)
    flank = np.zeros(2, np.int64)
    pad = np.zeros((shape[0] + 8, shape[1] + 8), np.float32)
    cpad = np.zeros((shape[0] + 6, shape[1] + 6), np.float32)
    line_ridge(onset, taps_i, taps_i, taps_w, flank, flank, pad, cpad, washout)
    spans = np.zeros((4, shape[0]), np.int64)
    ridge_spans(flags, 3, spans)
    full_spans(spans, shape[1])
    spans_cover(spans, spans)
    washout_ridge(history, 2, 4, taps_i, taps_i, taps_w, flank, flank, pad, cpad, washout, spans)
    onset_ridge(history, 2, 1, 0, taps_i, taps_i, taps_w, flank, flank, pad, cpad, washout,
                spans)
    erode_square(flags, 4, flags2, flags3)
    same_mask(flags, flags2)
    rowsum = np.zeros(shape, np.float64)
    colsum = np.zeros(shape[1], np.float64)
    box_sum(img, 31, rowsum, colsum, tmp)
    scratch = np.zeros(2 * shape[0] * shape[1], np.float32)
    hist = np.zeros(4 * 4096, np.int64)
    bins = np.zeros(shape, np.int32)
    masked_median(img, flags, scratch, hist, bins)
    box_scale(flags, 31, bins, washout)
    med = local_z(onset, flags, tmp, washout, 31, scratch, hist, bins, rowsum, colsum, img,
                  flags2, 3.0)
    z_like(onset, med, img)
    drop_kept_opacity(onset, img, tmp, flags, 0, 2, 0, 2, 0.5)
    best_line(onset, washout, tmp, 1.5, 3.0, flags2, stack)
