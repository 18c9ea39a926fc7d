"""Where a needle may be looked for: the exposed field minus its edge band and burned-in text."""
from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from sifluoro.model import Run
from sifluoro.track import _needle_kernels as K

# no exposure is stored as maximal attenuation; glyphs are drawn at the stored extremes
_BLANK = 0.9995
_GLYPH_TOP = 0.995
_GLYPH_JUMP = 0.5
_BAND = 0.2  # annotation bands: top and bottom fifth of the rows


def valid_region(run: Run, attenuation_image: np.ndarray, *, margin_px: int,
                 factor: int = 1) -> np.ndarray:
    """True where a needle may be detected on this run's frames, on a grid of ``factor``
    full-resolution pixels per cell (a cell is valid when all its pixels are).

    The exposed field is the stored shutter geometry intersected with the exposed pixels
    (blank pixels are stored at maximal attenuation; the stored shutter can be a little larger
    than the real field), shrunk by ``margin_px`` so that the field edge is never a line.
    Burned-in text (bright glyphs with a dark outline) is removed with a margin around it.
    The morphology runs on the coarse grid (a run's first frame pays for it: at full
    resolution it cost more than the frame's search).

    Parameters
    ----------
    run : Run
    attenuation_image : ndarray
        A frame of the run as :func:`sifluoro.imaging.attenuation` returns it.
    margin_px : int
        Full-resolution pixels removed along the field edge and around text.
    factor : int
        Full-resolution pixels per cell of the returned grid (the trailing remainder of the
        rows and columns is left out, as :func:`sifluoro.imaging.downsample` does).
    """
    shape = attenuation_image.shape
    field = _field_cells(run, shape, factor)
    # a cell with an exposed pixel is exposed; saturated steel or bone inside the field is
    # not a field edge
    exposed = np.empty((shape[0] // factor, shape[1] // factor), bool)
    K.cells_any_below(attenuation_image, np.float32(_BLANK), factor, exposed)
    r = max(1, round(7 / factor))
    exposed = _close_ellipse(exposed, r).astype(bool)
    invalid = (~(field & exposed)).astype(np.uint8) | _text_mask(attenuation_image, factor)
    m = int(math.ceil(margin_px / factor))
    return _dilate_ellipse(invalid, m) == 0


# The field's morphology on bit rows, 64 cells a word (_needle_kernels.close_bits,
# dilate_bits): exactly OpenCV's by its ellipse, at a third to a quarter of its cost (a run's
# first frame: the closing 0.27 -> 0.14 ms at 1024², r = 4, and 0.69 -> 0.20 ms at 512², r = 7)


def _close_ellipse(mask: np.ndarray, r: int) -> np.ndarray:
    """``cv2.morphologyEx(mask, MORPH_CLOSE, ellipse of radius r)`` of a 2-D mask (set:
    non-zero), as uint8 0/1."""
    bits, cols = _bit_rows(mask)
    out = np.empty_like(bits)
    K.close_bits(bits, _ellipse_half_widths(r), cols, out)
    return _unpack(out, cols)


def _dilate_ellipse(mask: np.ndarray, r: int) -> np.ndarray:
    """``cv2.dilate(mask, ellipse of radius r)`` of a 2-D mask (set: non-zero), as uint8 0/1."""
    bits, cols = _bit_rows(mask)
    out = np.empty_like(bits)
    K.dilate_bits(bits, _ellipse_half_widths(r), cols, out)
    return _unpack(out, cols)


def _bit_rows(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(the mask packed along its rows into uint64 words, little-endian: bit ``x % 64`` of word
    ``x // 64`` is column ``x``, the bits past the last column clear; its columns)."""
    rows, cols = mask.shape
    words = -(-cols // 64)
    packed = np.zeros((rows, 8 * words), np.uint8)
    packed[:, :-(-cols // 8)] = np.packbits(mask if mask.dtype == np.bool_ else mask != 0,
                                            axis=1, bitorder="little")
    return packed.view(np.uint64), cols


def _unpack(bits: np.ndarray, cols: int) -> np.ndarray:
    return np.unpackbits(bits.view(np.uint8), axis=1, count=cols, bitorder="little")


@functools.lru_cache(maxsize=None)
def _ellipse_half_widths(r: int) -> np.ndarray:
    """OpenCV's ellipse of radius ``r`` (``getStructuringElement(MORPH_ELLIPSE)``) as the
    half-widths of its rows, top to bottom (its rows are centred; -1: an empty row)."""
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    widths = []
    for row in k:
        cols = np.flatnonzero(row)
        if cols.size and cols[-1] - r != r - cols[0]:
            raise ValueError(f"OpenCV's ellipse of radius {r} has a row off centre")
        widths.append(int(cols[-1] - r) if cols.size else -1)
    out = np.array(widths, np.int64)
    out.flags.writeable = False
    return out


def _field_cells(run: Run, shape: tuple[int, int], factor: int) -> np.ndarray:
    """The cells of ``factor`` pixels wholly inside the stored shutter geometry: what
    ``_pool(exposed_mask(run, shape), factor, any_=False)`` gives, from the geometry (a
    run's first frame paid ~0.4 ms for the full-resolution mask and its pooling). The rows'
    and columns' tests here, their outer products in one kernel
    (:func:`_needle_kernels.field_cells_into`; :func:`_field_cells_reference` with NumPy)."""
    rows, cols = shape[0] // factor, shape[1] // factor
    shutter = run.technique.shutter
    if shutter is None:
        return np.ones((rows, cols), bool)
    in_y, in_x, d2 = _field_tests(shutter, rows, cols, factor)
    if d2 is None:
        dy2 = dx2 = np.zeros(max(rows, cols))
        r2 = 0.0
    else:
        dy2, dx2, r2 = d2
        if not (dy2.dtype == dx2.dtype == np.float64 and isinstance(r2, float)):
            return _field_cells_reference(run, shape, factor)  # integer geometry: as NumPy does it
    out = np.empty((rows, cols), bool)
    K.field_cells_into(in_y, in_x, dy2, dx2, r2, out)
    return out


def _field_tests(shutter, rows: int, cols: int, factor: int):
    """(in_y, in_x, (dy2, dx2, r²) or None): which rows and columns of cells lie inside the
    stored rectangle, and the squared distances from the circle's centre of each row's and
    column's pixel furthest from it, with the squared radius (None without a circle)."""
    first_y = np.arange(rows) * factor  # each cell's first and last pixel
    first_x = np.arange(cols) * factor
    in_y, in_x = np.ones(rows, bool), np.ones(cols, bool)
    if shutter.rect_xyxy is not None:
        x0, y0, x1, y1 = shutter.rect_xyxy
        # as exposed_mask slices it: pixels max(0, a) .. max(0, b + 1) - 1
        in_y = (first_y >= max(0, y0)) & (first_y + factor - 1 < max(0, y1 + 1))
        in_x = (first_x >= max(0, x0)) & (first_x + factor - 1 < max(0, x1 + 1))
    if shutter.circle_xyr is None:
        return in_y, in_x, None
    cx, cy, r = shutter.circle_xyr
    # a cell is inside when its pixel furthest from the centre is (per axis: the farther end)
    dx2 = np.maximum((first_x - cx) ** 2, (first_x + factor - 1 - cx) ** 2)
    dy2 = np.maximum((first_y - cy) ** 2, (first_y + factor - 1 - cy) ** 2)
    return in_y, in_x, (dy2, dx2, r ** 2)


def _field_cells_reference(run: Run, shape: tuple[int, int], factor: int) -> np.ndarray:
    """:func:`_field_cells` with NumPy's outer products (the kernel's reference)."""
    rows, cols = shape[0] // factor, shape[1] // factor
    out = np.ones((rows, cols), bool)
    shutter = run.technique.shutter
    if shutter is None:
        return out
    in_y, in_x, d2 = _field_tests(shutter, rows, cols, factor)
    out &= in_y[:, None] & in_x[None, :]
    if d2 is not None:
        dy2, dx2, r2 = d2
        out &= dy2[:, None] + dx2[None, :] <= r2
    return out


def _pool(mask: np.ndarray, factor: int, *, any_: bool) -> np.ndarray:
    """A boolean mask on the grid of ``factor`` pixels per cell: any (or all) of a cell's
    pixels set."""
    if factor == 1:
        return mask.astype(bool)
    rows, cols = mask.shape[0] // factor, mask.shape[1] // factor
    m = mask[:rows * factor, :cols * factor].astype(np.uint8) * np.uint8(255)
    # area mean of 0/255 cells: exactly 255 when all are set, at least 1 when any is (the
    # rounding keeps both for factors up to 15)
    mean = cv2.resize(m, (cols, rows), interpolation=cv2.INTER_AREA)
    return mean > 0 if any_ else mean == 255


def _text_mask(attenuation_image: np.ndarray, factor: int = 1) -> np.ndarray:
    """Burned-in glyphs: a jump of more than half the stored range within a pixel or two, up to
    the stored maximum (the white fill), in the annotation bands at the top and bottom of the
    frame. Inside the field only saturated steel has such jumps, so the bands keep a needle
    crossing the centre from being masked. Those pixels, dilated to cover whole glyphs, on the
    grid of ``factor`` pixels per cell (uint8)."""
    rows, cols = attenuation_image.shape
    band = int(rows * _BAND)
    pooled = np.zeros((rows // factor, cols // factor), np.uint8)
    # seeds and their pooling in one pass over each band (float32 thresholds: NumPy compares
    # the float32 image with them in float32)
    for lo, hi in ((0, band), (rows - band, rows)):
        K.glyph_cells(attenuation_image, lo, hi, factor, np.float32(_GLYPH_TOP),
                      np.float32(_GLYPH_JUMP), pooled)
    r = max(6, rows // 40)
    r = max(1, int(math.ceil(r / factor)))
    # a square (separable, so fast) covers each glyph at least as well
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(pooled, k)


# OpenCV's 3x3 chamfer weights of DIST_L2 (axial, diagonal step)
_CHAMFER_A, _CHAMFER_B = 0.955, 1.3693


class EdgeDistance:
    """Distance of a working-grid cell from the field edge: the value
    ``cv2.distanceTransform(valid, DIST_L2, 3)`` gives there (its 3x3 chamfer metric), with the
    frame's border counted invalid (a field filling the frame is bounded by it). Measured to
    the invalid cells next to a valid one, for the few cells read: a run's first frame paid
    ~1 ms for the whole map."""

    def __init__(self, valid: np.ndarray):
        bounded = valid.astype(np.uint8)
        bounded[[0, -1], :] = 0
        bounded[:, [0, -1]] = 0
        self.bounded = bounded
        self.points = K.edge_points(bounded)  # (x, y), row-major

    def __call__(self, x: int, y: int) -> float:
        if not self.bounded[y, x] or self.points.shape[0] == 0:
            return 0.0
        return float(K.chamfer_min(self.points, float(x), float(y), _CHAMFER_A, _CHAMFER_B))
