"""Where a needle may be looked for: the exposed field minus its edge band and burned-in text."""
from __future__ import annotations

import cv2
import numpy as np

from sifluoro.imaging import exposed_mask
from sifluoro.model import Run

# no exposure is stored as maximal attenuation; glyphs are drawn at the stored extremes
_BLANK = 0.9995
_GLYPH_TOP = 0.995
_GLYPH_JUMP = 0.5
_BAND = 0.2  # annotation bands: top and bottom fifth of the rows


def valid_region(run: Run, attenuation_image: np.ndarray, *, margin_px: int) -> np.ndarray:
    """True where a needle may be detected on this run's frames.

    The exposed field is the stored shutter geometry intersected with the exposed pixels
    (blank pixels are stored at maximal attenuation; the stored shutter can be a little larger
    than the real field), shrunk by ``margin_px`` so that the field edge is never a line.
    Burned-in text (bright glyphs with a dark outline) is removed with a margin around it.

    Parameters
    ----------
    run : Run
    attenuation_image : ndarray
        A frame of the run as :func:`sifluoro.imaging.attenuation` returns it.
    margin_px : int
        Full-resolution pixels removed along the field edge and around text.
    """
    shape = attenuation_image.shape
    field = exposed_mask(run, shape)
    exposed = (attenuation_image < _BLANK).astype(np.uint8)
    # saturated steel or bone inside the field is not a field edge
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))
    exposed = cv2.morphologyEx(exposed, cv2.MORPH_CLOSE, k)
    field &= exposed.astype(bool)
    invalid = (~field).astype(np.uint8) | _text_mask(attenuation_image)
    size = 2 * margin_px + 1
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    return ~cv2.dilate(invalid, k).astype(bool)


def _text_mask(attenuation_image: np.ndarray) -> np.ndarray:
    """Burned-in glyphs: a jump of more than half the stored range within a pixel or two, up to
    the stored maximum (the white fill), in the annotation bands at the top and bottom of the
    frame. Inside the field only saturated steel has such jumps, so the bands keep a needle
    crossing the centre from being masked. Those pixels, dilated to cover whole glyphs."""
    rows = attenuation_image.shape[0]
    k3 = np.ones((3, 3), np.uint8)
    high = cv2.dilate(attenuation_image, k3)
    seeds = (high >= _GLYPH_TOP) & (high - cv2.erode(attenuation_image, k3) > _GLYPH_JUMP)
    band = int(rows * _BAND)
    seeds[band:rows - band] = False
    r = max(6, rows // 40)
    # a square (separable, so fast at full resolution) covers each glyph at least as well
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(seeds.astype(np.uint8), k)
