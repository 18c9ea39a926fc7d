"""An end-on needle: aimed along the beam, it projects to a dense dot (1-10 mm), not a line.

On the working grid's smoothed running mean (:class:`~sifluoro.track.needle_detect.LineFinder`'s
``smooth``), a dot is a pixel brighter than every sample of a ring around it
(``(centre - ring max) / noise``): a line through the pixel, a cortical edge or a bone
margin reach the ring and score about 0 or less; a clip or a skin marker longer than the
ring's radius too. What passes is then measured as a blob (the pixels above half its contrast
over the ring's brightest sample, connected to the peak): a round bone island is wider, a clip
or a dot on a bone margin longer than an end-on needle's dot (a streak of the needle's width).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Dot:
    """A dot on the working grid: ``xy`` its peak (sub-pixel), ``z`` its contrast over the
    brightest ring sample in noise units, ``length_px``, ``width_px`` and ``area_px`` its
    blob's extent along its long and short axes (a uniform bar's: 2 sqrt(3 var)) and area."""

    xy: np.ndarray
    z: float
    length_px: float
    width_px: float
    area_px: int


_RINGS: dict[int, np.ndarray] = {}


def ring_offsets(radius_px: int) -> np.ndarray:
    """Integer (dx, dy) offsets of a one-pixel ring of ``radius_px`` (unique, sorted)."""
    n = max(16, int(2.0 * math.pi * radius_px))
    a = np.arange(n) * (2.0 * math.pi / n)
    xy = np.stack([np.rint(radius_px * np.cos(a)), np.rint(radius_px * np.sin(a))], 1)
    return np.unique(xy.astype(np.intp), axis=0)


def _ring_kernel(radius_px: int) -> np.ndarray:
    """The ring as a (2r+1)² uint8 structuring element."""
    if radius_px not in _RINGS:
        offs = ring_offsets(radius_px)
        k = np.zeros((2 * radius_px + 1, 2 * radius_px + 1), np.uint8)
        k[offs[:, 1] + radius_px, offs[:, 0] + radius_px] = 1
        _RINGS[radius_px] = k
    return _RINGS[radius_px]


def find_dot(smooth: np.ndarray, valid: np.ndarray, centre_xy: np.ndarray, radius_px: float,
             ring_px: int, noise: float) -> Dot | None:
    """The most dot-like pixel of ``smooth`` within ``radius_px`` of ``centre_xy`` (working
    grid), whose ring of ``ring_px`` lies inside ``valid`` and the image; None when there is
    none or it is not brighter than its whole ring (z <= 0: a flat patch, a ridge)."""
    rows, cols = smooth.shape
    cx, cy = float(centre_xy[0]), float(centre_xy[1])
    r = int(math.ceil(radius_px))
    x0, x1 = max(0, int(cx) - r), min(cols, int(cx) + r + 2)
    y0, y1 = max(0, int(cy) - r), min(rows, int(cy) + r + 2)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    kernel = _ring_kernel(ring_px)
    # the window and its ring margin; outside the image counts as outside the field
    pad = ring_px
    X0, X1, Y0, Y1 = x0 - pad, x1 + pad, y0 - pad, y1 + pad
    cx0, cx1, cy0, cy1 = max(0, X0), min(cols, X1), max(0, Y0), min(rows, Y1)
    border = (cy0 - Y0, Y1 - cy1, cx0 - X0, X1 - cx1)
    img = cv2.copyMakeBorder(np.ascontiguousarray(smooth[cy0:cy1, cx0:cx1]), *border,
                             cv2.BORDER_REPLICATE)
    out = cv2.copyMakeBorder(np.ascontiguousarray(~valid[cy0:cy1, cx0:cx1]).view(np.uint8),
                             *border, cv2.BORDER_CONSTANT, value=1)
    ring_max = cv2.dilate(img, kernel, borderType=cv2.BORDER_REPLICATE)
    ring_out = cv2.dilate(out, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1)
    win = (slice(pad, pad + y1 - y0), slice(pad, pad + x1 - x0))
    z = (img[win] - ring_max[win]) * np.float32(1.0 / noise)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    bad = (ring_out[win] > 0) | (out[win] > 0) | ((xx - cx) ** 2 + (yy - cy) ** 2 > radius_px ** 2)
    z[bad] = -np.inf
    k = int(np.argmax(z))
    i, j = divmod(k, z.shape[1])
    if not z[i, j] > 0.0:  # a dot is brighter than its ring; also -inf (no admissible pixel)
        return None
    py, px = i + pad, j + pad  # the peak in ``img``
    peak, rmax = float(img[py, px]), float(ring_max[py, px])
    # the blob: above half the peak's contrast over its ring, connected to the peak (over the
    # ring mean, a dot on a bright margin would take part of the margin in)
    sub = img[py - ring_px:py + ring_px + 1, px - ring_px:px + ring_px + 1]
    above = (sub > rmax + 0.5 * (peak - rmax)).astype(np.uint8)
    above[ring_px, ring_px] = 1  # the peak is in its blob even where float rounding says not
    _, labels = cv2.connectedComponents(above, connectivity=8)
    comp = labels == labels[ring_px, ring_px]
    ys, xs = np.nonzero(comp)
    w = (sub[ys, xs] - rmax).astype(np.float64)
    sw = float(w.sum())
    if not sw > 0.0:
        return None
    mx, my = float(xs @ w) / sw, float(ys @ w) / sw
    if xs.size > 2:
        dx, dy = xs - mx, ys - my
        cxx, cyy, cxy = float(w @ (dx * dx)) / sw, float(w @ (dy * dy)) / sw, float(w @ (dx * dy)) / sw
        half = math.sqrt(0.25 * (cxx - cyy) ** 2 + cxy * cxy)
        l1, l0 = 0.5 * (cxx + cyy) + half, max(0.0, 0.5 * (cxx + cyy) - half)
    else:
        l1 = l0 = 0.0
    # the peak, sub-pixel: its 3x3 neighbourhood's centroid of contrast over the ring
    nb = np.clip(img[py - 1:py + 2, px - 1:px + 2] - rmax, 0.0, None).astype(np.float64)
    s = float(nb.sum())
    off = (np.array([nb.sum(0) @ [-1.0, 0.0, 1.0], nb.sum(1) @ [-1.0, 0.0, 1.0]]) / s
           if s > 0 else np.zeros(2))
    return Dot(xy=np.array([x0 + j, y0 + i], float) + off, z=float(z[i, j]),
               length_px=2.0 * math.sqrt(3.0 * l1), width_px=2.0 * math.sqrt(3.0 * l0),
               area_px=int(xs.size))
