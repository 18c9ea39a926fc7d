"""numba kernel of the frame preparation shared by the image stages (sifluoro.imaging).

Reference: ``sifluoro.imaging.attenuation_reference``; tests in tests/test_imaging.py.
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


def warm_up() -> None:
    """Compile for the stored frames' type (2-D uint16, C or any layout) before a live frame."""
    p = np.zeros((4, 4), np.uint16)
    out = np.zeros((4, 4), np.float32)
    attenuation_into(p, np.float32(1.0), True, out)
    attenuation_into(p[:, ::2], np.float32(1.0), False, out[:, :2])
