"""numba kernels of :meth:`sifluoro.track.contrast_reference.ReferenceBank.adopt_run` (a run's
first frame: map the kept frames to its scale).

Each replaces a chain of NumPy expressions over the working grid (a temporary per step) by
one pass, with the same float operations in the same order, so the results are NumPy's bit
for bit; the NumPy expression each one stands for is in its docstring (references in
tests/track/test_reference_kernels.py). NumPy's pairwise sums (means, variances) stay NumPy's.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_LO = np.float32(0.02)
_HI = np.float32(0.98)
_UNUSABLE = np.float32(-1.0)


@njit(cache=True, nogil=True)
def overlap(usable, latest, first, out):
    """``out = usable & (latest > 0.02) & (latest < 0.98) & (first > 0.02) & (first < 0.98)``
    (float32 compares, as NumPy makes them); returns its count."""
    rows, cols = out.shape
    n = 0
    for y in range(rows):
        u, a, b, o = usable[y], latest[y], first[y], out[y]
        for x in range(cols):
            ok = u[x] and a[x] > _LO and a[x] < _HI and b[x] > _LO and b[x] < _HI
            o[x] = ok
            n += ok
    return n


@njit(cache=True, nogil=True)
def filled(src, usable, fill, out):
    """``out = np.where(usable, src, fill)`` (float32: ``fill`` rounded to float32 as NumPy
    casts a Python float beside a float32 array)."""
    rows, cols = out.shape
    f = np.float32(fill)
    for y in range(rows):
        s, u, o = src[y], usable[y], out[y]
        for x in range(cols):
            o[x] = s[x] if u[x] else f


@njit(cache=True, nogil=True)
def masked_pairs(latest, first, mask, a, b):
    """``a[:n] = latest[mask]``, ``b[:n] = first[mask]`` as float64 (storage order); returns n."""
    rows, cols = mask.shape
    n = 0
    for y in range(rows):
        m, p, q = mask[y], latest[y], first[y]
        for x in range(cols):
            if m[x]:
                a[n] = np.float64(p[x])
                b[n] = np.float64(q[x])
                n += 1
    return n


@njit(cache=True, nogil=True)
def abs_steps(a, b, out):
    """``out[:n - 1] = np.abs(np.diff(b - a))`` of the first ``n = a.size`` values."""
    for i in range(a.size - 1):
        out[i] = abs((b[i + 1] - a[i + 1]) - (b[i] - a[i]))


@njit(cache=True, nogil=True)
def affine_residual(a, b, gain, offset, out):
    """``out = b - gain * a - offset`` (float64)."""
    for i in range(a.size):
        out[i] = b[i] - gain * a[i] - offset


@njit(cache=True, nogil=True)
def horizontal_steps(image, usable, out):
    """``(image[:, 1:] - image[:, :-1])[usable[:, 1:] & usable[:, :-1]]`` into ``out``
    (float32, storage order); returns the count."""
    rows, cols = image.shape
    n = 0
    for y in range(rows):
        p, u = image[y], usable[y]
        for x in range(cols - 1):
            if u[x + 1] and u[x]:
                out[n] = p[x + 1] - p[x]
                n += 1
    return n


@njit(cache=True, nogil=True)
def masked_difference(a, b, mask, out):
    """``(a - b)[mask]`` into ``out`` (float32, storage order); returns the count."""
    rows, cols = mask.shape
    n = 0
    for y in range(rows):
        m, p, q = mask[y], a[y], b[y]
        for x in range(cols):
            if m[x]:
                out[n] = p[x] - q[x]
                n += 1
    return n


@njit(cache=True, nogil=True)
def rescale_kept(slots, count, gain, offset, first, usable, lift):
    """For the first ``count`` slots, in place::

        keep = used >= 0; used *= gain; used += offset; used[~keep] = -1
        np.maximum(used, np.where(usable, first + lift, -1), out=used)

    (``gain``, ``offset``, ``lift`` float32; NumPy's maximum: NaN wins, else the larger)."""
    rows, cols = first.shape
    for k in range(count):
        for y in range(rows):
            s, f, u = slots[k, y], first[y], usable[y]
            for x in range(cols):
                v = s[x]
                v = (v * gain + offset) if v >= 0 else _UNUSABLE
                lifted = (f[x] + lift) if u[x] else _UNUSABLE
                s[x] = v if (v >= lifted or v != v) else lifted


def warm_up(rows: int = 256, cols: int = 256) -> None:
    """Compile every kernel for the working grid's types."""
    img = np.zeros((rows, cols), np.float32)
    mask = np.zeros((rows, cols), np.bool_)
    overlap(mask, img, img, mask)
    filled(img, mask, 0.5, img)
    a = np.zeros(rows * cols, np.float64)
    masked_pairs(img, img, mask, a, a)
    abs_steps(a[:4], a[:4], a[4:8])
    affine_residual(a[:4], a[:4], 1.0, 0.0, a[4:8])
    flat = np.zeros(rows * cols, np.float32)
    horizontal_steps(img, mask, flat)
    masked_difference(img, img, mask, flat)
    rescale_kept(np.zeros((1, rows, cols), np.float32), 1, np.float32(1.0), np.float32(0.0),
                 img, mask, np.float32(0.0))
