"""Vessels: thin lines that appear abruptly and wash out within two or three frames.

A vascular uptake opacifies its whole tree within 1-2 frames, holds about one frame and empties
(e-fold under one frame, docs/simulator.md); joint fill and soft-tissue clouds stay. Per pixel
the temporal profile is cut into three parts around a candidate arrival frame ``a``::

    onset   = mean(x[a], x[a+1]) - mean(x[a-2], x[a-1])     (it appeared)
    washout = mean(x[a], x[a+1]) - x[a+2]                   (and went again)

Both are passed through an oriented ridge filter (a line of 9 working pixels against the two
parallel lines 3 px either side, the smaller of the two differences, best of 8 orientations):
vessels a few pixels wide are summed along their length, while edges of moving gas, broad
clouds and noise are not. Each ridge map is divided by its *local* mean absolute value (the
noise varies several-fold between soft tissue and dense bone), and the smaller of the two
(appeared AND went) is cut into hysteresis components. The score is the largest component's
excess over the low threshold, times the working pixel size (mm): a long line that came and
went scores far above anything joint fill, clouds, the needle or gas leave.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

FRAMES = 5          # x[a-2] .. x[a+2]
LINE_HALF_PX = 4
FLANK_PX = 3
ORIENTATIONS = 8
NOISE_WINDOW_PX = 31
LOW_Z, HIGH_Z = 1.5, 3.0
EDGE_PX = 4         # the filters see this far past the field edge


@functools.lru_cache(maxsize=None)
def line_kernels(half: int = LINE_HALF_PX, flank: int = FLANK_PX,
                 n: int = ORIENTATIONS) -> tuple[tuple[np.ndarray, tuple[int, int]], ...]:
    """Per orientation: a (2 half + 1)² line-average kernel (nearest-pixel samples every half
    pixel) and the integer (dx, dy) of the flank line, ``flank`` px across it.

    The flanks are the centre line's response read at +-(dx, dy): one small filter per
    orientation instead of three large ones.
    """
    size = 2 * half + 1
    out = []
    for i in range(n):
        th = np.pi * i / n
        ux, uy = np.cos(th), np.sin(th)
        k = np.zeros((size, size), np.float32)
        for s in np.linspace(-half, half, 4 * half + 1):
            k[int(round(half + s * uy)), int(round(half + s * ux))] += 1.0
        out.append((k / k.sum(), (int(round(-flank * uy)), int(round(flank * ux)))))
    return tuple(out)


class TransientLines:
    """Working arrays of one grid shape for :meth:`score` (allocated once)."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = shape
        self.onset = np.empty(shape, np.float32)
        self.washout = np.empty(shape, np.float32)
        self.c = np.empty(shape, np.float32)
        self.l = np.empty(shape, np.float32)
        self.r = np.empty(shape, np.float32)
        self.pad = np.empty((shape[0] + 2 * FLANK_PX, shape[1] + 2 * FLANK_PX), np.float32)
        self.ridge_o = np.empty(shape, np.float32)
        self.ridge_w = np.empty(shape, np.float32)
        self.tmp = np.empty(shape, np.float32)
        self.den = np.empty(shape, np.float32)
        self.validf = np.empty(shape, np.float32)
        self.inner = np.empty(shape, np.uint8)
        self.both = np.empty(shape, np.float32)

    def _ridge(self, img: np.ndarray, out: np.ndarray) -> None:
        out.fill(-1e9)
        f = FLANK_PX
        rows, cols = img.shape
        for kc, (dx, dy) in line_kernels():
            cv2.filter2D(img, -1, kc, dst=self.c, borderType=cv2.BORDER_REPLICATE)
            cv2.copyMakeBorder(self.c, f, f, f, f, cv2.BORDER_REPLICATE, dst=self.pad)
            np.subtract(self.c, self.pad[f + dy:f + dy + rows, f + dx:f + dx + cols], out=self.l)
            np.subtract(self.c, self.pad[f - dy:f - dy + rows, f - dx:f - dx + cols], out=self.r)
            np.minimum(self.l, self.r, out=self.l)
            np.maximum(out, self.l, out=out)

    def _local_z(self, m: np.ndarray, valid: np.ndarray) -> None:
        """``m`` in place: minus its median, over its local mean absolute value."""
        v = m[valid]
        if v.size == 0:
            m.fill(0.0)
            return
        med = np.float32(np.median(v))
        g = float(np.mean(np.abs(v - med)))
        np.subtract(m, med, out=m)
        np.abs(m, out=self.tmp)
        self.tmp *= self.validf
        w = (NOISE_WINDOW_PX, NOISE_WINDOW_PX)
        cv2.boxFilter(self.tmp, -1, w, dst=self.tmp, normalize=False,
                      borderType=cv2.BORDER_CONSTANT)
        np.maximum(self.den, 1.0, out=self.c)
        np.divide(self.tmp, self.c, out=self.tmp)
        self.tmp *= np.float32(1.2533)
        np.maximum(self.tmp, np.float32(0.05 * g + 1e-9), out=self.tmp)
        np.divide(m, self.tmp, out=m)

    def score(self, frames: list[np.ndarray], valid: np.ndarray) -> float:
        """Line evidence (z x px) of a vessel that arrived on ``frames[-3]`` and emptied by
        ``frames[-1]``; ``frames`` are the run's last 4 or 5 working frames, oldest first."""
        x_now, x_a1, x_a = frames[-1], frames[-2], frames[-3]
        pre = frames[:-3]
        np.add(x_a, x_a1, out=self.tmp)
        self.tmp *= np.float32(0.5)
        np.subtract(self.tmp, x_now, out=self.washout)
        np.subtract(self.tmp, pre[-1], out=self.onset)
        if len(pre) > 1:
            np.add(self.onset, self.tmp, out=self.onset)
            np.subtract(self.onset, pre[-2], out=self.onset)
            self.onset *= np.float32(0.5)
        np.copyto(self.inner, valid)
        cv2.erode(self.inner, np.ones((2 * EDGE_PX + 1,) * 2, np.uint8), dst=self.inner)
        inner = self.inner.view(np.bool_)
        np.copyto(self.validf, inner)
        cv2.boxFilter(self.validf, -1, (NOISE_WINDOW_PX, NOISE_WINDOW_PX), dst=self.den,
                      normalize=False, borderType=cv2.BORDER_CONSTANT)
        self._ridge(self.onset, self.ridge_o)
        self._local_z(self.ridge_o, inner)
        self._ridge(self.washout, self.ridge_w)
        self._local_z(self.ridge_w, inner)
        np.minimum(self.ridge_o, self.ridge_w, out=self.both)
        self.both *= self.validf
        return best_component(self.both, LOW_Z, HIGH_Z)


def best_component(z: np.ndarray, low: float, high: float) -> float:
    """Largest sum of ``z - low`` over an 8-connected component of ``z > low`` that reaches
    ``high`` (0 when none)."""
    n, lab = cv2.connectedComponents((z > low).view(np.uint8), connectivity=8)
    if n <= 1:
        return 0.0
    flat = lab.ravel()
    zf = z.ravel()
    sums = np.bincount(flat, weights=np.maximum(zf - low, 0.0), minlength=n)
    peaks = np.zeros(n)
    on = flat > 0
    np.maximum.at(peaks, flat[on], zf[on])
    sums[0] = 0.0
    sums[peaks <= high] = 0.0
    return float(sums.max())
