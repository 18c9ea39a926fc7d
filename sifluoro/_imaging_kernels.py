"""numba kernels of the frame preparation shared by the image stages (sifluoro.imaging).

References: ``sifluoro.imaging.attenuation_reference`` and ``picture_steps_reference``; tests
in tests/test_imaging.py.
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
