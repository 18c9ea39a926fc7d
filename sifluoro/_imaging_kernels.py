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
def picture_steps(pixels, threshold):
    """On rows 4, 12, 20, ...: the number of places where the rounded means of 8 neighbouring
    pixels (columns 8j .. 8j + 7; a remainder is left out) step by more than ``threshold``.
    The means are rounded half to even, as OpenCV's area resize rounds them; read in place (no
    copy of the rows), about a fifth of the reference's cost."""
    rows, cols = pixels.shape
    blocks = cols // 8
    count = 0
    for y in range(4, rows, 8):
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


@njit(cache=True, nogil=True, inline="always")
def _bin(x, lo, scale, top):
    return 0 if top == 0 else min(np.int64((np.float64(x) - np.float64(lo)) * scale), top)


@njit(cache=True, nogil=True)
def median_into(v, cand, hist):
    """``np.median(v)`` of a 1-D float array, exactly as NumPy gives it (the mean of the two
    middle values in ``v``'s dtype when the size is even; NaN when any value is NaN). Values
    are binned into ``hist.size`` bins between their extremes (monotonic binning keeps their
    order); only the values of the middle values' bins are gathered into ``cand`` (``v``'s
    dtype and size) and selected: three passes over ``v`` instead of NumPy's introselect over
    a copy, which is several times dearer for tens of thousands of values."""
    n = v.size
    if n == 0:
        return v.dtype.type(np.nan)
    lo = v[0]
    hi = v[0]
    for i in range(n):
        x = v[i]
        if x != x:
            return x
        if x < lo:
            lo = x
        elif x > hi:
            hi = x
    k = n // 2
    if hi == lo:
        return lo if n % 2 == 1 else (lo + lo) / v.dtype.type(2.0)
    nb = hist.size
    top = nb - 1
    scale = nb / (np.float64(hi) - np.float64(lo))
    if not (np.isfinite(lo) and np.isfinite(hi) and scale < 1e300):
        # an infinite or denormal-narrow range: one bin for all
        scale = 0.0
        top = 0
    for b in range(nb):
        hist[b] = 0
    for i in range(n):
        hist[_bin(v[i], lo, scale, top)] += 1
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
    c = 0
    for i in range(n):
        b = _bin(v[i], lo, scale, top)
        if b0 <= b <= b1:
            cand[c] = v[i]
            c += 1
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
def robust_sigma_into(v, dev, cand, hist):
    """``np.median(np.abs(v - np.median(v)))`` of a 1-D float array, exactly (``dev`` and
    ``cand``: scratch of ``v``'s dtype and size)."""
    m = median_into(v, cand, hist)
    for i in range(v.size):
        dev[i] = abs(v[i] - m)
    return median_into(dev, cand, hist)


def warm_up() -> None:
    """Compile for the stored frames' type (2-D uint16, C or any layout, writable or not: a
    DICOM file's decoded frames are read-only, a video capture's writable) before a live frame."""
    out = np.zeros((4, 4), np.float32)
    for writable in (True, False):
        p = np.zeros((4, 4), np.uint16)
        p.flags.writeable = writable
        attenuation_into(p, np.float32(1.0), True, out)
        attenuation_into(p[:, ::2], np.float32(1.0), False, out[:, :2])
        picture_steps(p, 2.0)
        picture_steps(p[:, ::2], 2.0)
    hist = np.empty(16, np.int64)
    for dtype in (np.float32, np.float64):
        for writable in (True, False):
            v = np.arange(3, dtype=dtype)
            v.flags.writeable = writable
            median_into(v, np.empty_like(v), hist)
            robust_sigma_into(v, np.empty_like(v), np.empty_like(v), hist)
