"""How visible an object is in a stored frame: the ground truth's signal-to-noise ratios.

The truth's ``tip_xy`` and ``contrast_visible`` are geometric (the tip projects into the
exposed field; some iodine is above a threshold). Whether the pixels show it depends on dose,
matrix, gauge and patient: a thin needle at 9 nGy per pulse on a 1024² flat panel can sit in
the field at an SNR of 1. These ratios let an evaluation tell "missed" from "not in the
pixels". Both are the ideal observer's (non-prewhitening matched filter) SNR for a known
object at a known place:

    SNR = sum(t**2) / std(response of the frame's own noise to t)

where ``t`` is the object's noise-free signal in the stored frame (window, processing and edge
enhancement included) and the noise is the stored frame minus its noise-free rendering, so its
correlation and quantisation count. The Rose criterion puts reliable detection at SNR 3-5; a
search over the whole frame needs the upper end.
"""
from __future__ import annotations

import cv2
import numpy as np

TIP_SEGMENT_MM = 5.0     # the last 5 mm of the shaft: what locates the tip
TIP_HALF_WIDTH_MM = 1.5  # template half width around the shaft (gauge 20-25 plus blur)
CONTRAST_RADIUS_MM = 2.5  # a 5 mm disc at the iodine peak
NOISE_RADIUS_MM = 15.0   # where the noise response is sampled, around the object
DETECTABLE_SNR = 3.0     # Rose: below this an object is not reliably seen


def tip_snr(signal: np.ndarray, noise: np.ndarray, mask: np.ndarray,
            shaft_xy, spacing_mm: float) -> float | None:
    """SNR of the needle's last ``TIP_SEGMENT_MM`` before the tip (``shaft_xy[-1]``).

    ``signal``: noise-free frame with the needle minus without it; ``noise``: the stored frame
    minus its noise-free rendering (both windowed, same units); ``mask``: the exposed field.
    None when the template or the noise sample does not fit in the field.
    """
    pts = _last_segment(np.asarray(shaft_xy, float), TIP_SEGMENT_MM / spacing_mm)
    half_px = TIP_HALF_WIDTH_MM / spacing_mm
    x0, y0 = np.floor(pts.min(0) - half_px - 1).astype(int)
    x1, y1 = np.ceil(pts.max(0) + half_px + 1).astype(int)
    yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    near = distance_to_polyline_px(np.stack([xx.ravel(), yy.ravel()], 1), pts).reshape(xx.shape)
    return _npw_snr(signal, noise, mask, near <= half_px, x0, y0, spacing_mm)


def contrast_snr(signal: np.ndarray, noise: np.ndarray, mask: np.ndarray,
                 iodine_mg_mm2: np.ndarray, visible_mg_mm2: float, spacing_mm: float
                 ) -> float | None:
    """SNR of the opacified pixels in a ``CONTRAST_RADIUS_MM`` disc at the iodine peak."""
    inside = np.where(mask, iodine_mg_mm2, 0.0)
    peak = np.unravel_index(int(np.argmax(inside)), inside.shape)
    if inside[peak] <= visible_mg_mm2:
        return None
    r = int(np.ceil(CONTRAST_RADIUS_MM / spacing_mm))
    y0, x0 = peak[0] - r, peak[1] - r
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = xx ** 2 + yy ** 2 <= (CONTRAST_RADIUS_MM / spacing_mm) ** 2
    size = iodine_mg_mm2.shape[0]
    ys, xs = np.clip(np.arange(y0, y0 + 2 * r + 1), 0, size - 1), \
        np.clip(np.arange(x0, x0 + 2 * r + 1), 0, size - 1)
    disc &= inside[np.ix_(ys, xs)] > visible_mg_mm2
    return _npw_snr(signal, noise, mask, disc, x0, y0, spacing_mm)


def _npw_snr(signal, noise, mask, footprint: np.ndarray, x0: int, y0: int,
             spacing_mm: float) -> float | None:
    size = signal.shape[0]
    h, w = footprint.shape
    if x0 < 0 or y0 < 0 or x0 + w > size or y0 + h > size:
        return None
    t = np.where(footprint, signal[y0:y0 + h, x0:x0 + w], 0.0).astype(np.float32)
    energy = float((t.astype(np.float64) ** 2).sum())
    if energy <= 0.0:
        return 0.0
    # the noise response at every placement of t whose footprint is wholly in the field,
    # within NOISE_RADIUS_MM of the object
    r = int(round(NOISE_RADIUS_MM / spacing_mm))
    ry0, rx0 = max(y0 - r, 0), max(x0 - r, 0)
    ry1, rx1 = min(y0 + h + r, size), min(x0 + w + r, size)
    n = noise[ry0:ry1, rx0:rx1].astype(np.float32)
    m = mask[ry0:ry1, rx0:rx1].astype(np.float32)
    if n.shape[0] < h or n.shape[1] < w:
        return None
    response = cv2.matchTemplate(n, t, cv2.TM_CCORR)
    cover = cv2.matchTemplate(m, footprint.astype(np.float32), cv2.TM_CCORR)
    valid = response[cover >= footprint.sum() - 0.5]
    if valid.size < 16:
        return None
    # robust spread: a burned-in letter or a clipped pixel in the sample must not set it
    spread = 1.4826 * float(np.median(np.abs(valid - np.median(valid))))
    return energy / spread if spread > 0 else None


def _last_segment(pts: np.ndarray, length_px: float) -> np.ndarray:
    """The part of the polyline within ``length_px`` (along it) of its last point."""
    rev = pts[::-1]
    seg = np.linalg.norm(np.diff(rev, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    keep = s < length_px
    out = rev[keep]
    k = int(keep.sum())
    if k < len(rev) and seg[k - 1] > 0:
        a, b = rev[k - 1], rev[k]
        out = np.vstack([out, a + (b - a) * (length_px - s[k - 1]) / seg[k - 1]])
    return out[::-1] if len(out) > 1 else np.vstack([out, out])


def distance_to_polyline_px(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance of each point to the nearest segment of ``poly`` (pixels)."""
    a, b = poly[:-1], poly[1:]
    ab = b - a
    len2 = np.maximum((ab ** 2).sum(1), 1e-12)
    ap = points[:, None, :] - a[None]
    t = np.clip((ap * ab[None]).sum(2) / len2[None], 0.0, 1.0)
    nearest = a[None] + t[..., None] * ab[None]
    return np.sqrt(((points[:, None, :] - nearest) ** 2).sum(2)).min(1)
