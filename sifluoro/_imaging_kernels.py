"""numba kernels of the frame preparation shared by the image stages (sifluoro.imaging).

References: ``sifluoro.imaging.attenuation_reference`` and ``picture_steps_reference``, and
``np.median`` for the medians; tests in tests/test_imaging.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def attenuation_into(pixels, scale, invert, out):
    """``out = pixels * scale`` (``1 - pixels * scale`` when ``invert``), float32, in one pass
    and without allocating: numpy's two passes and a fresh 4 MB array per 1024² frame cost
    about twice as much."""
    rows, cols = pixels.shape
    for y in range(rows):
        for x in range(cols):
            v = np.float32(pixels[y, x]) * scale
            out[y, x] = np.float32(1.0) - v if invert else v


@njit(cache=True, nogil=True)
def attenuation_halved_into(pixels, scale, invert, out):
    """:func:`attenuation_into` area-averaged over blocks of 2 x 2 (a remainder cropped;
    ``out``'s shape is the whole blocks), as OpenCV's area resize by exact halves sums a
    block: ``((a + b) + (c + d)) * 0.25`` in float32, ``a b`` the upper row (its vector loop;
    ``imaging.halving_matches_opencv`` checks the order at a width before it is used). One
    pass over the stored pixels instead of the full-size float image and its resize.

    Each input row is read by a loop of its own (the upper pairs' sums ``a + b`` into the
    output row, then ``c + d`` of the lower row added to them): the same operations on the same
    values, in the same order, but one stream of stored pixels at a time. Reading both rows in
    one loop cost twice as much on a frame not in cache (0.25 against 0.13 ms at 1024², the
    register's every frame), though it is a little faster on one that is."""
    rows, cols = out.shape
    one = np.float32(1.0)
    quarter = np.float32(0.25)
    for y in range(rows):
        upper, lower, o = pixels[2 * y], pixels[2 * y + 1], out[y]
        for x in range(cols):
            a = np.float32(upper[2 * x]) * scale
            b = np.float32(upper[2 * x + 1]) * scale
            if invert:
                a, b = one - a, one - b
            o[x] = a + b
        for x in range(cols):
            c = np.float32(lower[2 * x]) * scale
            d = np.float32(lower[2 * x + 1]) * scale
            if invert:
                c, d = one - c, one - d
            o[x] = (o[x] + (c + d)) * quarter


@njit(cache=True, nogil=True)
def attenuation_area3_into(pixels, scale, invert, out):
    """:func:`attenuation_into` area-averaged over blocks of 3 x 3 (a remainder cropped), each
    block summed as :func:`area3_into` sums it: the same values as the full-size attenuation
    and its area resize by 3, in one pass over the stored pixels (``imaging.frame_work``).

    Each input row is read by a loop of its own, as :func:`attenuation_halved_into` reads
    them (a frame is never in cache): the partial sums wait in the output row and, for the
    middle row's ``b1 + b2``, in the next output row, not written yet (the last output row
    reads its three rows in one loop). The same float32 operations in the same order."""
    rows, cols = out.shape
    ninth = np.float32(1.0 / 9.0)
    for y in range(rows):
        r0, r1, r2, o = pixels[3 * y], pixels[3 * y + 1], pixels[3 * y + 2], out[y]
        if y + 1 < rows:
            q = out[y + 1]
            for x in range(cols):
                a0, a1, a2 = _three(r0, 3 * x, scale, invert)
                o[x] = (a0 + a1) + a2
            for x in range(cols):
                b0, b1, b2 = _three(r1, 3 * x, scale, invert)
                o[x] = np.float32(0.0) + (o[x] + b0)
                q[x] = b1 + b2
            for x in range(cols):
                c0, c1, c2 = _three(r2, 3 * x, scale, invert)
                o[x] = ((o[x] + ((q[x] + c0) + c1)) + c2) * ninth
            continue
        for x in range(cols):
            a0, a1, a2 = _three(r0, 3 * x, scale, invert)
            b0, b1, b2 = _three(r1, 3 * x, scale, invert)
            c0, c1, c2 = _three(r2, 3 * x, scale, invert)
            s = np.float32(0.0)
            s += ((a0 + a1) + a2) + b0
            s += ((b1 + b2) + c0) + c1
            s += c2
            o[x] = s * ninth


@njit(cache=True, nogil=True, inline="always")
def _three(row, j, scale, invert):
    """The attenuations of ``row[j:j + 3]`` (as :func:`attenuation_into` gives them)."""
    one = np.float32(1.0)
    a, b, c = (np.float32(row[j]) * scale, np.float32(row[j + 1]) * scale,
               np.float32(row[j + 2]) * scale)
    if invert:
        return one - a, one - b, one - c
    return a, b, c


@njit(cache=True, nogil=True)
def area3_into(src, out):
    """``out`` = ``src`` area-averaged over blocks of 3 x 3 (float32; ``out``'s shape is the
    whole blocks), summed as OpenCV's area resize by an integer factor sums a block in its
    generic loop: the block's pixels in row order, four at a time (``((a + b) + c) + d``)
    added to a running float32 sum from 0, the ninth alone, times ``1 / 9``
    (``imaging.area3_matches_opencv`` checks the order at a width before it is used).
    OpenCV's loop, without a vector path but by 2, costs about six times more."""
    rows, cols = out.shape
    scale = np.float32(1.0 / 9.0)
    for y in range(rows):
        r0, r1, r2, o = src[3 * y], src[3 * y + 1], src[3 * y + 2], out[y]
        for x in range(cols):
            j = 3 * x
            s = np.float32(0.0)
            s += ((r0[j] + r0[j + 1]) + r0[j + 2]) + r1[j]
            s += ((r1[j + 1] + r1[j + 2]) + r2[j]) + r2[j + 1]
            s += r2[j + 2]
            o[x] = s * scale


@njit(cache=True, nogil=True)
def picture_steps(pixels, threshold, limit):
    """On rows 4, 12, 20, ...: the number of places where the rounded means of 8 neighbouring
    pixels (columns 8j .. 8j + 7; a remainder is left out) step by more than ``threshold``,
    counted up to ``limit`` (the rows after the one that reaches it are not read; 0: all).
    The means are rounded half to even, as OpenCV's area resize rounds them; read in place (no
    copy of the rows), about a fifth of the reference's cost."""
    rows, cols = pixels.shape
    blocks = cols // 8
    count = 0
    for y in range(4, rows, 8):
        if limit > 0 and count >= limit:
            break
        row = pixels[y]
        previous = np.int64(0)
        for j in range(blocks):
            total = np.int64(0)
            for k in range(8 * j, 8 * j + 8):
                total += np.int64(row[k])
            mean = np.int64(np.rint(total / 8.0))
            if j > 0 and abs(mean - previous) > threshold:
                count += 1
            previous = mean
    return count


@njit(cache=True, nogil=True)
def select_kth(v, n, k):
    """The ``k``-th smallest of ``v[:n]`` (0-based); reorders ``v[:n]`` in place so that
    ``v[:k]`` are no larger (Hoare partition, median-of-three pivot)."""
    lo = 0
    hi = n - 1
    while hi > lo:
        mid = (lo + hi) // 2
        a, b, c = v[lo], v[mid], v[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i = lo
        j = hi
        while i <= j:
            while v[i] < pivot:
                i += 1
            while v[j] > pivot:
                j -= 1
            if i <= j:
                t = v[i]
                v[i] = v[j]
                v[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return v[k]
    return v[k]


@njit(cache=True, nogil=True)
def _has_nan(v):
    """Whether any of ``v`` is NaN (an OR of compares: the loop vectorises)."""
    bad = False
    for i in range(np.uint64(v.size)):
        bad |= v[i] != v[i]
    return bad


@njit(cache=True, nogil=True)
def _key_range(bits, low, shift):
    """Smallest and largest of float bits ``bits`` (int32 or int64 view, no NaN) as keys
    ordered as the floats (the negatives' magnitude bits ``low`` flipped; ``shift`` the sign
    bit's position), returned as keys again (the map is its own inverse): integer min and max
    vectorise where float selects do not."""
    klo = bits[0] ^ ((bits[0] >> shift) & low)
    khi = klo
    for i in range(np.uint64(bits.size)):
        b = bits[i]
        key = b ^ ((b >> shift) & low)
        klo = min(klo, key)
        khi = max(khi, key)
    return klo ^ ((klo >> shift) & low), khi ^ ((khi >> shift) & low)


@njit(cache=True, nogil=True)
def _range32(v):
    out = np.empty(2, v.dtype)
    keys = out.view(np.int32)
    keys[0], keys[1] = _key_range(v.view(np.int32), np.int32(0x7FFFFFFF), np.int32(31))
    return out[0], out[1]


@njit(cache=True, nogil=True)
def _range64(v):
    out = np.empty(2, v.dtype)
    keys = out.view(np.int64)
    keys[0], keys[1] = _key_range(v.view(np.int64), np.int64(0x7FFFFFFFFFFFFFFF), np.int64(63))
    return out[0], out[1]


@njit(cache=True, nogil=True)
def _range(v):
    """Smallest and largest of ``v`` (float32 or float64, no NaN) by :func:`_key_range`; the
    sign of a zero extreme may differ from a scan's."""
    if v.itemsize == 4:
        return _range32(v)
    return _range64(v)


@njit(cache=True, nogil=True)
def median_into(v, cand, hist):
    """``np.median(v)`` of a 1-D float array, exactly as NumPy gives it (the mean of the two
    middle values in ``v``'s dtype when the size is even; NaN when any value is NaN), but for
    the sign of a zero result (see :func:`_range`). Values
    are binned into ``hist.size // 4`` bins between their extremes (monotonic binning keeps
    their order); only the values of the middle values' bins are gathered into ``cand``
    (``v``'s dtype and size) and selected: a few passes over ``v`` instead of NumPy's
    introselect over a copy, which is several times dearer for tens of thousands of values.
    The extremes, the bins and the gathering are loops without branches (they vectorise);
    four interleaved histograms keep neighbouring values from waiting on each other's count."""
    n = v.size
    if n == 0:
        return v.dtype.type(np.nan)
    if _has_nan(v):
        for i in range(n):
            if v[i] != v[i]:
                return v[i]
    lo, hi = _range(v)
    k = n // 2
    if hi == lo:
        # all equal: the first value is the one of the sign NumPy's selection leaves there
        lo = v[0]
        return lo if n % 2 == 1 else (lo + lo) / v.dtype.type(2.0)
    nb = max(hist.size // 4, 1)
    top = nb - 1
    scale = nb / (np.float64(hi) - np.float64(lo))
    bins = np.empty(n, np.int32)
    un = np.uint64(n)
    if not (np.isfinite(lo) and np.isfinite(hi) and scale < 1e300):
        # an infinite or denormal-narrow range: one bin for all
        for i in range(un):
            bins[i] = 0
    else:
        top32 = np.int32(top)
        flo = np.float64(lo)
        for i in range(un):
            bins[i] = min(np.int32((np.float64(v[i]) - flo) * scale), top32)
    for b in range(4 * nb):
        hist[b] = 0
    for i in range(un):
        hist[np.uint64(4) * np.uint64(bins[i]) + (i & np.uint64(3))] += 1
    for b in range(nb):
        hist[b] = hist[4 * b] + hist[4 * b + 1] + hist[4 * b + 2] + hist[4 * b + 3]
    k0 = k if n % 2 == 1 else k - 1
    below = 0
    b0 = 0
    while below + hist[b0] <= k0:
        below += hist[b0]
        b0 += 1
    b1 = b0
    upto = below + hist[b0]
    while upto <= k:
        b1 += 1
        upto += hist[b1]
    # the values of the bins b0..b1, in order
    c = gather_in_bins(bins, v, np.int32(b0), np.int32(b1), cand, 0)
    upper = select_kth(cand, c, k - below)
    if n % 2 == 1:
        return upper
    # rank k - 1: the largest of the candidates below rank k's position
    lower = cand[0]
    for i in range(1, k - below):
        if cand[i] > lower:
            lower = cand[i]
    return (lower + upper) / v.dtype.type(2.0)


@njit(cache=True, nogil=True)
def gather_in_bins(bins, values, b0, b1, cand, c):
    """Append to ``cand`` (from index ``c``) the ``values`` whose ``bins`` lie in ``b0..b1``, in
    order; returns the new count. Blocks of 16 without one are passed over after a test that
    vectorises (the candidates are a few hundred of tens of thousands)."""
    n = bins.size
    for i0 in range(0, n, 16):
        block = bins[i0:min(i0 + 16, n)]
        hit = False
        for j in range(np.uint64(block.size)):
            hit |= (block[j] >= b0) & (block[j] <= b1)
        if hit:
            for j in range(block.size):
                if b0 <= block[j] <= b1:
                    cand[c] = values[i0 + j]
                    c += 1
    return c


@njit(cache=True, nogil=True)
def robust_sigma_into(v, dev, cand, hist):
    """``np.median(np.abs(v - np.median(v)))`` of a 1-D float array, exactly (``dev`` and
    ``cand``: scratch of ``v``'s dtype and size)."""
    m = median_into(v, cand, hist)
    for i in range(v.size):
        dev[i] = abs(v[i] - m)
    return median_into(dev, cand, hist)


@njit(cache=True, nogil=True, inline="always")
def _in_circle(x, cx, e2, r2):
    d = x - cx
    return d * d + e2 <= r2


@njit(cache=True, nogil=True)
def clear_outside_circle(mask, cx, cy, r2):
    """``mask &= (x - cx)**2 + (y - cy)**2 <= r2`` (float64, as NumPy broadcasts it over
    ``np.ogrid``) without the frame-sized float64 temporary: on each row the test holds on one
    interval of columns (rounding keeps ``|x - cx|`` monotone), found from its square-root
    estimate and moved to the test's exact bounds; only the columns outside it are written."""
    rows, cols = mask.shape
    for y in range(rows):
        e = y - cy
        e2 = e * e
        row = mask[y]
        # the column with the least (x - cx)**2: one of the three around the rounded centre
        m = int(min(max(np.floor(cx + 0.5), 0.0), cols - 1.0))
        best, least = -1, np.inf
        for x in range(max(m - 1, 0), min(m + 2, cols)):
            d = x - cx
            if d * d < least:
                best, least = x, d * d
        if not least + e2 <= r2:
            for x in range(cols):
                row[x] = False
            continue
        h = np.sqrt(max(r2 - e2, 0.0))
        lo = int(max(min(np.floor(cx - h), float(best)), 0.0))
        while not _in_circle(lo, cx, e2, r2):
            lo += 1
        while lo > 0 and _in_circle(lo - 1, cx, e2, r2):
            lo -= 1
        hi = int(min(max(np.ceil(cx + h), float(best)), cols - 1.0))
        while not _in_circle(hi, cx, e2, r2):
            hi -= 1
        while hi < cols - 1 and _in_circle(hi + 1, cx, e2, r2):
            hi += 1
        for x in range(lo):
            row[x] = False
        for x in range(hi + 1, cols):
            row[x] = False


def warm_up() -> None:
    """Compile for the stored frames' type (2-D uint16, C or any layout, writable or not: a
    DICOM file's decoded frames are read-only, a video capture's writable) before a live frame."""
    out = np.zeros((4, 4), np.float32)
    for writable in (True, False):
        p = np.zeros((4, 4), np.uint16)
        p.flags.writeable = writable
        attenuation_into(p, np.float32(1.0), True, out)
        attenuation_into(p[:, ::2], np.float32(1.0), False, out[:, :2])
        # a crop of the frame into a new array (the needle's box, when no stage made the
        # whole frame's attenuation)
        attenuation_into(p[1:3, 1:3], np.float32(1.0), False, np.empty((2, 2), np.float32))
        attenuation_halved_into(p, np.float32(1.0), True, out[:2, :2])
        # into a new array: the check of a new width against OpenCV (imaging.halving_matches)
        attenuation_halved_into(p, np.float32(1.0), True, np.empty((2, 2), np.float32))
        attenuation_area3_into(p, np.float32(1.0), True, out[:1, :1])
        picture_steps(p, 2.0, 0)
        picture_steps(p[:, ::2], 2.0, 16)
    hist = np.empty(16, np.int64)
    for dtype in (np.float32, np.float64):
        for writable in (True, False):
            v = np.arange(3, dtype=dtype)
            v.flags.writeable = writable
            median_into(v, np.empty_like(v), hist)
            robust_sigma_into(v, np.empty_like(v), np.empty_like(v), hist)
    clear_outside_circle(np.ones((4, 4), np.bool_), 1.5, 1.5, 2.25)
    for writable in (True, False):  # a caller's image may be read-only
        f = np.zeros((7, 7), np.float32)
        f.flags.writeable = writable
        area3_into(f, np.empty((2, 2), np.float32))
