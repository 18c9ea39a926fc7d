"""numba kernels of register/: valley depth (thin dark line), the joint-line path search,
the phase-correlation steps between the FFTs (cross-power spectrum, peak and centroid), and the
running average's shifted accumulation and the run start's masks (text, blank areas).

Arrays in, arrays out; references in tests/register/test_kernels.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def valley_depth(smooth, offsets_px, out):
    """How far a pixel lies below BOTH of its horizontal neighbours ``d`` pixels away, for the
    best ``d`` in ``offsets_px``: ``max_d min(s[x-d], s[x+d]) - s[x]`` (0 when negative).

    A thin lucent line between two bones is darker than both sides; a plain bone edge is not
    (one side is as dark as the edge), so edges score about zero. The joint runs within ~45° of
    the image columns, so horizontal neighbours straddle it.

    One pass per offset over the columns it reaches, through row views with an unsigned index
    (the loop vectorises); the largest of strictly greater depths is the same in any order.
    """
    rows, cols = smooth.shape
    for y in range(rows):
        s, o = smooth[y], out[y]
        for x in range(cols):
            o[x] = np.float32(0.0)
        for d in offsets_px:
            n = cols - 2 * d
            if n <= 0:
                continue
            left, mid, right, od = s[:n], s[d:d + n], s[2 * d:2 * d + n], o[d:d + n]
            for i in range(np.uint64(n)):
                v = min(left[i], right[i]) - mid[i]
                od[i] = v if v > od[i] else od[i]


@njit(cache=True, nogil=True)
def valley_depth_columns(smooth, offsets_px, x0, x1, out):
    """:func:`valley_depth` in columns ``x0:x1`` of ``out`` alone (the same floats; the other
    columns are left as they were): the path search looks at the central columns only."""
    rows, cols = smooth.shape
    lo = max(0, x0)
    hi = max(lo, min(cols, x1))
    for y in range(rows):
        s, o = smooth[y], out[y]
        o[lo:hi] = np.float32(0.0)
        for d in offsets_px:
            a, b = max(lo, d), min(hi, cols - d)
            n = b - a
            if n <= 0:
                continue
            # slices of one length and an unsigned index: the loop vectorises
            left, mid, right, od = s[a - d:a - d + n], s[a:a + n], s[a + d:a + d + n], o[a:a + n]
            for i in range(np.uint64(n)):
                v = min(left[i], right[i]) - mid[i]
                od[i] = v if v > od[i] else od[i]


@njit(cache=True, nogil=True)
def best_path(score, step_penalty, max_step, path_x, acc, came):
    """Best top-to-bottom path of local alignment: each row one column, moving at most
    ``max_step`` columns per row; a path may start and stop at any row (its running score is
    floored at 0).

    Parameters
    ----------
    score : float32 (rows, cols)
        Gain of visiting each pixel (negative where a line is unlikely).
    step_penalty : float
        Cost per column of a sideways step.
    max_step : int
        Largest sideways step per row (2 follows a line up to about 63 degrees from vertical).
    path_x : int32 (rows,)
        Filled with the path's column per row, -1 outside the path.
    acc : float32 (rows, cols), came : int8 (rows, cols)
        Work buffers (running score; step from the row above, or 127 for a path start).

    Returns
    -------
    (best, y_start, y_end) : (float, int, int)

    Each row is done a step at a time across all its columns (row views, unsigned indices: the
    loops vectorise); every column still compares its steps in the order -1, +1, -2, +2, ...
    in float64, as one column at a time did.
    """
    rows, cols = score.shape
    best, best_y, best_x = 0.0, -1, -1
    for x in range(cols):
        v = score[0, x]
        acc[0, x] = v if v > 0 else 0.0
        came[0, x] = 127
        if acc[0, x] > best:
            best, best_y, best_x = acc[0, x], 0, x
    prev = np.empty(cols, np.float64)
    step = np.empty(cols, np.int8)
    ucols = np.uint64(cols)
    for y in range(1, rows):
        above, sc, ar, cr = acc[y - 1], score[y], acc[y], came[y]
        for x in range(ucols):
            prev[x] = above[x]
            step[x] = 0
        for d in range(1, max_step + 1):
            if d >= cols:
                break
            n = np.uint64(cols - d)
            pen = d * step_penalty
            # from the left: column x + d reads x; from the right: column x reads x + d
            pl, sl, al = prev[d:], step[d:], above[:cols - d]
            for i in range(n):
                c = al[i] - pen
                if c > pl[i]:
                    pl[i] = c
                    sl[i] = -d
            ar_ = above[d:]
            for i in range(n):
                c = ar_[i] - pen
                if c > prev[i]:
                    prev[i] = c
                    step[i] = d
        for x in range(ucols):
            p = prev[x]
            s = sc[x]
            total = p + s
            if total > 0 and p > 0:
                ar[x] = total
                cr[x] = step[x]
            elif s > 0:
                ar[x] = s
                cr[x] = 127
            else:
                ar[x] = 0.0
                cr[x] = 127
        for x in range(cols):
            if ar[x] > best:
                best, best_y, best_x = ar[x], y, x
    path_x[:] = -1
    if best_y < 0:
        return 0.0, -1, -1
    y, x = best_y, best_x
    while True:
        path_x[y] = x
        c = came[y, x]
        if c == 127 or y == 0:
            break
        x += c
        y -= 1
    return best, y, best_y


@njit(cache=True, nogil=True)
def all_in_blocks2(mask, out):
    """``out[y, x]``: all of ``mask``'s (C-contiguous bool) block of 2 x 2 pixels at
    ``(y, x)`` set; ``out``'s shape is the whole blocks (a remainder is cropped). A block's row
    is read as one uint16 (both set: 0x0101), which vectorises: 0.03 ms at 1024², where the
    four strided NumPy ANDs took 0.26 ms."""
    cols = out.shape[1]
    for y in range(out.shape[0]):
        a = mask[2 * y].view(np.uint8)[:2 * cols].view(np.uint16)
        b = mask[2 * y + 1].view(np.uint8)[:2 * cols].view(np.uint16)
        o = out[y].view(np.uint8)
        for x in range(cols):
            o[x] = (a[x] & b[x]) == 0x0101
    return out


@njit(cache=True, nogil=True)
def any_in_blocks(mask, factor, out):
    """``out[by, bx]``: 1 where any pixel of ``mask``'s (uint8, C-contiguous) block of
    ``factor`` x ``factor`` (2 or 4) at ``(by, bx)`` is nonzero, else 0; ``out``'s shape counts
    the partial blocks of a remainder too. A block row's rows are ORed, and its blocks read as
    one uint16 / uint32 each (the loops vectorise)."""
    rows, cols = mask.shape
    whole = cols // factor
    acc = np.empty(cols, np.uint8)
    for by in range(out.shape[0]):
        y0 = by * factor
        first = mask[y0]
        for x in range(cols):
            acc[x] = first[x]
        for y in range(y0 + 1, min(y0 + factor, rows)):
            r = mask[y]
            for x in range(cols):
                acc[x] |= r[x]
        o = out[by]
        if factor == 2:
            v2 = acc[:2 * whole].view(np.uint16)
            for bx in range(whole):
                o[bx] = v2[bx] != 0
        else:
            v4 = acc[:4 * whole].view(np.uint32)
            for bx in range(whole):
                o[bx] = v4[bx] != 0
        if out.shape[1] > whole:  # the partial block
            v = np.uint8(0)
            for x in range(whole * factor, cols):
                v |= acc[x]
            o[whole] = v != 0
    return out


@njit(cache=True, nogil=True)
def clear_text_blocks(image, low, high, factor, max_low, done, out):
    """Set False the working pixels (blocks of ``factor`` x ``factor`` of ``image``, ``out``
    their grid: a remainder cropped) that hold text: pixels within 4 (chessboard distance) of
    a pixel that has both a pixel ``<= low`` and one ``>= high`` within 2, i.e. where
    ``dilate9(dilate5(image <= low) & dilate5(image >= high))`` is set.

    The test starts from the dark pixels, which are few (markers' outlines, clipped noise),
    instead of three morphology passes over the frame. Returns the number of dark pixels, or -1
    when there are more than ``max_low`` (``out`` is then untouched: they are counted first,
    row by row, before any is followed). ``done``: False, of ``image``'s shape (work buffer;
    its pages are touched only around text).
    """
    rows, cols = image.shape
    ymax, xmax = out.shape[0] * factor, out.shape[1] * factor
    bright = np.zeros((9, 9), np.bool_)  # around a dark pixel (outside the image: not bright)
    rowwise = np.zeros((9, 5), np.bool_)  # bright within 2 columns of the 5 centre columns
    dark_in_row = np.empty(rows, np.int64)
    n = 0
    for ly in range(rows):
        row = image[ly]
        dark = 0
        for lx in range(cols):  # branch-free: most rows have no dark pixel
            dark += row[lx] <= low
        dark_in_row[ly] = dark
        n += dark
    if n > max_low:
        return -1
    for ly in range(rows):
        if dark_in_row[ly] == 0:
            continue
        row = image[ly]
        for lx in range(cols):
            if not row[lx] <= low:
                continue
            seen = False
            if 4 <= ly < rows - 4 and 4 <= lx < cols - 4:  # the window inside: no checks
                for i in range(9):
                    r = image[ly - 4 + i]
                    for j in range(9):
                        b = r[lx - 4 + j] >= high
                        bright[i, j] = b
                        seen |= b
            else:
                for i in range(9):
                    y = ly - 4 + i
                    for j in range(9):
                        x = lx - 4 + j
                        b = 0 <= y < rows and 0 <= x < cols and image[y, x] >= high
                        bright[i, j] = b
                        seen |= b
            if not seen:
                continue
            for i in range(9):
                for j in range(5):
                    b = False
                    for k in range(j, j + 5):
                        b |= bright[i, k]
                    rowwise[i, j] = b
            # the pixels within 2 of this dark one with a bright one within 2: text around them
            for a in range(5):
                py = ly - 2 + a
                if py < 0 or py >= rows:
                    continue
                for c in range(5):
                    px = lx - 2 + c
                    if px < 0 or px >= cols:
                        continue
                    if done[py, px]:
                        continue
                    b = False
                    for i in range(a, a + 5):
                        b |= rowwise[i, c]
                    if not b:
                        continue
                    done[py, px] = True  # its text is marked; other dark pixels share it
                    y0, y1 = max(0, py - 4), min(ymax, py + 5) - 1
                    x0, x1 = max(0, px - 4), min(xmax, px + 5) - 1
                    if y0 > y1 or x0 > x1:
                        continue
                    for by in range(y0 // factor, y1 // factor + 1):
                        for bx in range(x0 // factor, x1 // factor + 1):
                            out[by, bx] = False
    return n


@njit(cache=True, nogil=True, fastmath=True)
def phase_cross_power(ref_spectrum, spectrum, out):
    """Normalised cross-power spectrum ``R conj(S) / |R conj(S)|`` of two (half) spectra, as
    OpenCV's phase correlation forms it (``|P|^2 + FLT_EPSILON`` in the denominator, so that a
    frequency without energy stays at zero)."""
    rows, cols = ref_spectrum.shape
    eps = np.float32(1.1920929e-07)
    for y in range(rows):
        for x in range(cols):
            a = ref_spectrum[y, x]
            b = spectrum[y, x]
            re = a.real * b.real + a.imag * b.imag
            im = a.imag * b.real - a.real * b.imag
            m2 = re * re + im * im
            scale = np.sqrt(m2) / (m2 + eps)
            out[y, x] = complex(re * scale, im * scale)


@njit(cache=True, nogil=True)
def peak_centroid(corr, py, px, half):
    """Weighted centroid of the ``(2 half + 1)²`` box of a circular correlation surface around
    its peak at ``(py, px)`` (found with ``np.argmax``, several times faster than a loop), in
    signed (wrapped) offsets.

    Returns
    -------
    (dy, dx, response) : (float, float, float)
        Centroid offsets from the origin (``k`` and ``k - n`` are the same offset) and the sum
        of the box's values.
    """
    rows, cols = corr.shape
    # signed offset of the peak: the box around it must not straddle the wrap
    sy = py - rows if py >= rows // 2 else py
    sx = px - cols if px >= cols // 2 else px
    total = 0.0
    cy = 0.0
    cx = 0.0
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            v = float(corr[(py + dy) % rows, (px + dx) % cols])
            total += v
            cy += (sy + dy) * v
            cx += (sx + dx) * v
    denom = total + 2.220446049250313e-16
    return cy / denom, cx / denom, total

@njit(cache=True, nogil=True)
def accumulate_shifted(work, mask, shift_x, shift_y, total, count):
    """Add ``work`` and its 0/1 ``mask``, each moved back by (``shift_x``, ``shift_y``) pixels
    with bilinear interpolation, to a running average: ``total += w(work) * w(mask)``,
    ``count += w(mask)``, where ``w(a)[y, x] = a(x + shift_x, y + shift_y)`` and taps outside
    the image read 0 (``cv2.warpAffine`` with ``WARP_INVERSE_MAP`` and a zero constant
    border, twice, then three whole-array passes: here one pass, nothing allocated).
    """
    rows, cols = work.shape
    fx, fy = np.floor(shift_x), np.floor(shift_y)
    ix, iy = int(fx), int(fy)
    ax, ay = np.float32(shift_x - fx), np.float32(shift_y - fy)
    one = np.float32(1.0)
    w00, w01 = (one - ay) * (one - ax), (one - ay) * ax
    w10, w11 = ay * (one - ax), ay * ax
    zero = np.float32(0.0)
    for y in range(rows):
        y0 = y + iy
        y1 = y0 + 1
        in0 = 0 <= y0 < rows
        in1 = 0 <= y1 < rows
        if not in0 and not in1:
            continue
        for x in range(cols):
            x0 = x + ix
            x1 = x0 + 1
            a00 = a01 = a10 = a11 = zero
            m00 = m01 = m10 = m11 = zero
            if in0:
                if 0 <= x0 < cols:
                    a00, m00 = work[y0, x0], mask[y0, x0]
                if 0 <= x1 < cols:
                    a01, m01 = work[y0, x1], mask[y0, x1]
            if in1:
                if 0 <= x0 < cols:
                    a10, m10 = work[y1, x0], mask[y1, x0]
                if 0 <= x1 < cols:
                    a11, m11 = work[y1, x1], mask[y1, x1]
            m = m00 * w00 + m01 * w01 + m10 * w10 + m11 * w11
            total[y, x] += (a00 * w00 + a01 * w01 + a10 * w10 + a11 * w11) * m
            count[y, x] += m


@njit(cache=True, nogil=True)
def open_dilate_bits(blank, cols, dilated):
    """The solid blank areas of :func:`sifluoro.register.joint.exposed_field` on bit rows:
    ``dilated`` = ``dilate13(erode7(blank))`` (square windows, OpenCV's borders: the erosion
    reads outside the image as set, the dilation as clear), 64 columns a word.

    Parameters
    ----------
    blank : uint64 (rows, words)
        The blank mask packed little-endian along each row (bit ``x % 64`` of word ``x // 64``
        is column ``x``; ``np.packbits(..., bitorder="little")`` viewed as uint64); bits past
        ``cols`` are overwritten.
    cols : int
        Columns of the image (``64 (words - 1) < cols <= 64 words``).
    dilated : uint64 (rows, words)
        Output, in the same packing (bits past ``cols`` clear); untouched when the erosion
        leaves nothing.

    Returns
    -------
    bool
        Whether any pixel survived the erosion (else nothing is blank: ``dilated`` unset).
    """
    rows, words = blank.shape
    ones = np.uint64(0xFFFFFFFFFFFFFFFF)
    zero = np.uint64(0)
    tail = cols - 64 * (words - 1)  # columns in the last word
    pad = zero if tail == 64 else ~((np.uint64(1) << np.uint64(tail)) - np.uint64(1))
    across = np.empty((rows, words), np.uint64)
    for y in range(rows):  # erosion along the rows, 3 either side
        b = blank[y]
        b[words - 1] |= pad
        for j in range(words):
            w = b[j]
            before = b[j - 1] if j > 0 else ones
            after = b[j + 1] if j + 1 < words else ones
            acc = w
            for k in range(1, 4):
                uk, ck = np.uint64(k), np.uint64(64 - k)
                acc &= ((w >> uk) | (after << ck)) & ((w << uk) | (before >> ck))
            across[y, j] = acc
    eroded = np.empty((rows, words), np.uint64)
    found = False
    for y in range(rows):  # down the columns
        y0, y1 = max(0, y - 3), min(rows, y + 4)
        for j in range(words):
            acc = ones
            for yy in range(y0, y1):
                acc &= across[yy, j]
            if j == words - 1:
                acc &= ~pad
            eroded[y, j] = acc
            found |= acc != zero
    if not found:
        return False
    for y in range(rows):  # dilation along the rows, 6 either side
        e = eroded[y]
        for j in range(words):
            w = e[j]
            before = e[j - 1] if j > 0 else zero
            after = e[j + 1] if j + 1 < words else zero
            acc = w
            for k in range(1, 7):
                uk, ck = np.uint64(k), np.uint64(64 - k)
                acc |= (w >> uk) | (after << ck) | (w << uk) | (before >> ck)
            across[y, j] = acc
    for y in range(rows):  # down the columns
        y0, y1 = max(0, y - 6), min(rows, y + 7)
        for j in range(words):
            acc = zero
            for yy in range(y0, y1):
                acc |= across[yy, j]
            dilated[y, j] = acc
    return True


@njit(cache=True, nogil=True)
def clear_bits(mask, bits, cols, out):
    """``out = mask & ~bits`` for a bool ``mask`` (rows, cols) and its bits packed as in
    :func:`open_dilate_bits` (a word's 64 bits a fixed loop: it vectorises)."""
    rows, words = bits.shape
    one = np.uint64(1)
    for y in range(rows):
        m = mask[y].view(np.uint8)
        o = out[y].view(np.uint8)
        b = bits[y]
        for j in range(words):
            w = b[j]
            base = 64 * j
            if base + 64 <= cols:
                for i in range(64):
                    o[base + i] = m[base + i] & np.uint8(((w >> np.uint64(i)) & one) ^ one)
            else:
                for i in range(cols - base):
                    o[base + i] = m[base + i] & np.uint8(((w >> np.uint64(i)) & one) ^ one)
    return out


@njit(cache=True, nogil=True)
def _dilate_row_bits(src, radius, dst):
    """``dst`` = ``src`` (one bit row) dilated along the row by ``radius`` (outside: clear)."""
    zero = np.uint64(0)
    words = src.shape[0]
    for j in range(words):
        w = src[j]
        before = src[j - 1] if j > 0 else zero
        after = src[j + 1] if j + 1 < words else zero
        acc = w
        for k in range(1, radius + 1):
            uk, ck = np.uint64(k), np.uint64(64 - k)
            acc |= (w >> uk) | (after << ck) | (w << uk) | (before >> ck)
        dst[j] = acc


@njit(cache=True, nogil=True)
def clear_text_bits(low, high, factor, out):
    """:func:`clear_text_blocks` on bit rows (packed as in :func:`open_dilate_bits`, bits past
    the image's columns clear), whatever the number of dark pixels: set False the blocks of
    ``factor`` x ``factor`` (``out``: their grid, a remainder cropped) that hold a pixel of
    ``dilate9(dilate5(low) & dilate5(high))``. ``low`` and ``high`` are overwritten."""
    rows, words = low.shape
    row = np.empty(words, np.uint64)
    for y in range(rows):  # along the rows first (in place: each row read before written)
        _dilate_row_bits(low[y], 2, row)
        low[y, :] = row
        _dilate_row_bits(high[y], 2, row)
        high[y, :] = row
    near = np.empty((rows, words), np.uint64)
    for y in range(rows):  # down the columns, both within 2: near both extremes
        y0, y1 = max(0, y - 2), min(rows, y + 3)
        for j in range(words):
            a = np.uint64(0)
            b = np.uint64(0)
            for yy in range(y0, y1):
                a |= low[yy, j]
                b |= high[yy, j]
            near[y, j] = a & b
    for y in range(rows):
        _dilate_row_bits(near[y], 4, row)
        near[y, :] = row
    mask = np.uint64((1 << factor) - 1)
    for by in range(out.shape[0]):
        # the text rows of the block row: the dilation down the columns by 4 joined to it
        y0, y1 = max(0, by * factor - 4), min(rows, by * factor + factor + 4)
        for j in range(words):
            acc = np.uint64(0)
            for yy in range(y0, y1):
                acc |= near[yy, j]
            row[j] = acc
        o = out[by].view(np.uint8)
        blocks = out.shape[1]
        if 64 % factor == 0:  # whole blocks a word: a fixed loop, which vectorises
            per = 64 // factor
            for j in range(words):
                w = row[j]
                b0 = j * per
                if b0 + per <= blocks:
                    for i in range(per):
                        o[b0 + i] &= np.uint8((w >> np.uint64(i * factor)) & mask == 0)
                else:
                    for i in range(blocks - b0):
                        o[b0 + i] &= np.uint8((w >> np.uint64(i * factor)) & mask == 0)
            continue
        for bx in range(blocks):
            s = bx * factor
            j, b = s >> 6, s & 63
            bits = row[j] >> np.uint64(b)
            if b + factor > 64:
                bits |= row[j + 1] << np.uint64(64 - b)
            o[bx] &= np.uint8(bits & mask == 0)
    return out


@njit(cache=True, nogil=True)
def average_and_reference(total, count, min_count, mean, reference, usable):
    """A view's running average for its segmentation, in one pass: ``usable = count >=
    min_count``, ``mean = total / max(count, 1)`` and ``reference`` the mean where usable, 0
    elsewhere (float32, as NumPy's four passes gave them; a NaN count stays NaN as in
    ``np.maximum``)."""
    rows, cols = total.shape
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for y in range(rows):
        t, c, m, r, u = total[y], count[y], mean[y], reference[y], usable[y]
        for x in range(cols):
            n = c[x]
            v = t[x] / (one if n < one else n)
            ok = n >= min_count
            m[x] = v
            r[x] = v if ok else zero
            u[x] = ok


@njit(cache=True, nogil=True)
def inside_stretch(polyline_xy, mask):
    """(lo, hi): the longest stretch ``lo:hi`` of consecutive vertices of ``polyline_xy`` (n x
    2, float64 (x, y)) whose pixel, the vertex rounded half to even (``np.rint``), lies in
    ``mask`` (the first of equally long ones; (0, 0) when no vertex does). In one pass,
    without NumPy's dozen temporaries for a polyline of tens of points on every frame
    (``stage._inside_part``; its NumPy reference is in the kernel tests). A vertex that is not
    finite or far outside compares outside, as its NumPy cast to an integer does."""
    rows, cols = mask.shape
    n = polyline_xy.shape[0]
    best_lo = 0
    best_len = 0
    start = 0
    for i in range(n + 1):
        ok = False
        if i < n:
            x = np.rint(polyline_xy[i, 0])
            y = np.rint(polyline_xy[i, 1])
            if 0.0 <= x < cols and 0.0 <= y < rows:
                ok = mask[int(y), int(x)]
        if not ok:
            if i - start > best_len:
                best_lo = start
                best_len = i - start
            start = i + 1
    return best_lo, best_lo + best_len


@njit(cache=True, nogil=True)
def fill_gain(depth, mask, noise, contrast, c0, c1, gain):
    """The path search's score: ``depth / noise - contrast`` where ``mask`` within columns
    ``c0:c1``, the floor -10 elsewhere; float32 throughout (``noise`` and ``contrast``
    float32), as NumPy computes ``np.where(mask, depth / noise - contrast, -10.0)`` of a
    float32 ``depth`` and Python floats."""
    rows, cols = depth.shape
    floor = np.float32(-10.0)
    n = max(0, c1 - c0)
    for y in range(rows):
        g = gain[y]
        g[:c0] = floor
        g[c0 + n:] = floor
        # slices of one length, an unsigned index and a select: the loop vectorises
        gc, dc, mc = g[c0:c0 + n], depth[y, c0:c0 + n], mask[y, c0:c0 + n]
        for i in range(np.uint64(n)):
            v = dc[i] / noise - contrast
            gc[i] = v if mc[i] else floor


@njit(cache=True, nogil=True)
def clear_near_path(gain, path_x, y0, y1, clear):
    """Rows ``y0..y1`` of ``gain`` set to the floor, -10, within ``clear`` columns of
    ``path_x`` (a rejected path is not searched again)."""
    cols = gain.shape[1]
    floor = np.float32(-10.0)
    for y in range(y0, y1 + 1):
        p = path_x[y]
        for x in range(max(0, p - clear), min(cols, p + clear + 1)):
            gain[y, x] = floor


@njit(cache=True, nogil=True)
def even_residual(smooth, blurred, mask, out):
    """``smooth - blurred`` at the even rows and columns where ``mask`` holds, row by row
    into ``out``; returns how many (NumPy's ``smooth[::2, ::2][inside] -
    blurred[::2, ::2][inside]`` with ``inside = mask[::2, ::2]``)."""
    rows, cols = smooth.shape
    n = 0
    for y in range(0, rows, 2):
        for x in range(0, cols, 2):
            if mask[y, x]:
                out[n] = smooth[y, x] - blurred[y, x]
                n += 1
    return n


@njit(cache=True, nogil=True)
def running_median(values, size, out):
    """``scipy.ndimage.median_filter(values, size, mode="nearest")`` of a 1-D float64 array,
    ``size`` odd: the middle of each window's sorted values, the ends repeated (a selection:
    the same floats)."""
    n = len(values)
    half = size // 2
    window = np.empty(size, np.float64)
    for i in range(n):
        for k in range(size):
            j = min(max(i - half + k, 0), n - 1)
            window[k] = values[j]
        window.sort()
        out[i] = window[half]


@njit(cache=True, nogil=True)
def gather_strip(image, path_x, y0, reach, out):
    """Rows ``y0..y0 + len(out) - 1`` of ``image`` across the path: ``out[i, j] = image[y0 + i,
    path_x[y0 + i] - reach + j]``, the column clipped to the image (NumPy's
    ``image[ys[:, None], np.clip(path_x[ys][:, None] + offsets, 0, cols - 1)]``)."""
    cols = image.shape[1]
    for i in range(out.shape[0]):
        y = y0 + i
        for j in range(out.shape[1]):
            out[i, j] = image[y, min(max(path_x[y] - reach + j, 0), cols - 1)]


@njit(cache=True, nogil=True)
def _first_extreme(row, lo, hi, largest):
    """``lo + np.argmax(row[lo:hi])`` (``largest``) or ``np.argmin``'s: the first extreme,
    the first NaN if any; 0 when empty (np.argmax of a row masked with -inf everywhere)."""
    idx = -1
    best = row[lo] if hi > lo else 0.0
    for k in range(lo, hi):
        v = row[k]
        if v != v:
            return k
        if idx < 0 or (v > best if largest else v < best):
            best, idx = v, k
    return idx if idx >= 0 else 0


@njit(cache=True, nogil=True)
def darkest_near(strip, lo, hi, out):
    """Per row of ``strip``, the column of its smallest value within ``lo:hi`` (the first,
    as ``lo + np.argmin(strip[:, lo:hi], axis=1)``)."""
    for i in range(strip.shape[0]):
        out[i] = _first_extreme(strip[i], lo, hi, False)


@njit(cache=True, nogil=True)
def rims_beside(strip, centre, left, right):
    """Per row of ``strip``, the column of its largest value left of ``centre[i]`` and right
    of it (the first; 0 where there is none), as ``np.argmax(np.where(k < centre, strip,
    -inf), axis=1)`` and ``k > centre``."""
    n = strip.shape[1]
    for i in range(strip.shape[0]):
        left[i] = _first_extreme(strip[i], 0, centre[i], True)
        right[i] = _first_extreme(strip[i], centre[i] + 1, n, True)


def warm_up() -> None:
    """Compile the kernels on tiny inputs so that no live frame pays for it."""
    z = np.zeros((8, 8), np.float32)
    best_path(z, 0.1, 2, np.zeros(8, np.int32), z.copy(), np.zeros((8, 8), np.int8))
    valley_depth(z, np.array([1, 2], np.int64), z.copy())
    valley_depth_columns(z, np.array([1, 2], np.int64), 1, 7, z.copy())
    c = np.zeros((8, 5), np.complex64)
    phase_cross_power(c, c, c.copy())
    peak_centroid(z, 0, 0, 2)
    accumulate_shifted(z, z, 0.5, -0.5, z.copy(), z.copy())
    all_in_blocks2(np.zeros((8, 8), np.bool_), np.zeros((4, 4), np.bool_))
    any_in_blocks(np.zeros((8, 8), np.uint8), 2, np.zeros((4, 4), np.uint8))
    clear_text_blocks(z, np.float32(0.002), np.float32(0.998), 2, 64, np.zeros((8, 8), np.bool_),
                      np.zeros((4, 4), np.bool_))
    bits = np.zeros((8, 1), np.uint64)
    open_dilate_bits(bits, 8, bits.copy())
    clear_bits(np.zeros((8, 8), np.bool_), bits, 8, np.zeros((8, 8), np.bool_))
    clear_text_bits(bits, bits.copy(), 2, np.ones((4, 4), np.bool_))
    average_and_reference(z, z, np.float32(1.0), z.copy(), z.copy(), np.zeros((8, 8), np.bool_))
    inside_stretch(np.zeros((3, 2), np.float64), np.ones((8, 8), np.bool_))
    # the types of joint.segment_joint's calls (Python ints for columns and rows)
    fill_gain(z, np.ones((8, 8), np.bool_), np.float32(0.5), np.float32(3.0), 1, 7, z.copy())
    clear_near_path(z.copy(), np.zeros(8, np.int32), 0, 7, 2)
    even_residual(z, z, np.ones((8, 8), np.bool_), np.empty(16, np.float32))
    running_median(np.zeros(8), 3, np.empty(8))
    i8 = np.zeros(8, np.int64)
    for strip in (np.zeros((8, 5), np.float32), np.zeros((8, 5), np.float64)):
        gather_strip(z, np.zeros(8, np.int32), 0, 2, strip)
        darkest_near(strip, 1, 4, i8)
        rims_beside(strip, i8, i8.copy(), i8.copy())
