"""Where a needle may be looked for: the exposed field minus its edge band and burned-in text."""
from __future__ import annotations

import math

import cv2
import numpy as np

from sifluoro.imaging import exposed_mask
from sifluoro.model import Run

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
    field = _pool(exposed_mask(run, shape), factor, any_=False)
    # a cell with an exposed pixel is exposed; saturated steel or bone inside the field is
    # not a field edge
    exposed = _pool(attenuation_image < _BLANK, factor, any_=True)
    r = max(1, round(7 / factor))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    exposed = cv2.morphologyEx(exposed.astype(np.uint8), cv2.MORPH_CLOSE, k).astype(bool)
    invalid = (~(field & exposed)).astype(np.uint8) | _text_mask(attenuation_image, factor)
    m = int(math.ceil(margin_px / factor))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * m + 1, 2 * m + 1))
    return ~cv2.dilate(invalid, k).astype(bool)


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
    rows = attenuation_image.shape[0]
    band = int(rows * _BAND)
    k3 = np.ones((3, 3), np.uint8)
    seeds = np.zeros(attenuation_image.shape, bool)
    for lo, hi in ((0, band), (rows - band, rows)):
        part = attenuation_image[max(0, lo - 1):min(rows, hi + 1)]
        high = cv2.dilate(part, k3)
        found = (high >= _GLYPH_TOP) & (high - cv2.erode(part, k3) > _GLYPH_JUMP)
        seeds[lo:hi] = found[lo - max(0, lo - 1):lo - max(0, lo - 1) + hi - lo]
    r = max(6, rows // 40)
    r = max(1, int(math.ceil(r / factor)))
    # a square (separable, so fast) covers each glyph at least as well
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(_pool(seeds, factor, any_=True).astype(np.uint8), k)
