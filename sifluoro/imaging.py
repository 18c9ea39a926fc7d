"""Frame preparation shared by the image stages: attenuation-like float image, exposed field,
working resolution. Pure array code; no DICOM parsing."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sifluoro.model import Frame, Run


def frame_attenuation(frame: Frame, stage_state: dict) -> np.ndarray:
    """:func:`attenuation` of ``frame``, computed once per frame and shared by the stages."""
    cached = stage_state.get("attenuation")
    if cached is not None and cached[0] is frame:
        return cached[1]
    image = attenuation(frame)
    stage_state["attenuation"] = (frame, image)
    return image


def attenuation(frame: Frame) -> np.ndarray:
    """float32 image in [0, 1] that rises with attenuation (bone bright, gas dark)."""
    top = float((1 << frame.run.bits_stored) - 1)
    a = frame.pixels.astype(np.float32) * np.float32(1.0 / top)
    if not frame.run.attenuation_rises_with_value:
        np.subtract(np.float32(1.0), a, out=a)
    return a


def exposed_mask(run: Run, shape: tuple[int, int], *, margin_px: int = 0) -> np.ndarray:
    """True inside the exposed field (collimator shutters and circular field, if stored)."""
    rows, cols = shape
    mask = np.ones(shape, bool)
    shutter = run.technique.shutter
    if shutter is not None and shutter.rect_xyxy is not None:
        x0, y0, x1, y1 = shutter.rect_xyxy
        mask[:] = False
        mask[max(0, y0 + margin_px):max(0, y1 + 1 - margin_px), max(0, x0 + margin_px):max(0, x1 + 1 - margin_px)] = True
    if shutter is not None and shutter.circle_xyr is not None:
        cx, cy, r = shutter.circle_xyr
        yy, xx = np.ogrid[:rows, :cols]
        mask &= (xx - cx) ** 2 + (yy - cy) ** 2 <= (r - margin_px) ** 2
    return mask


@dataclass(frozen=True)
class WorkingGrid:
    """A downsampled grid for image work: ``factor`` full-resolution pixels per working pixel."""

    factor: int
    spacing_mm: float  # of a working pixel, at the detector

    def to_full(self, xy: np.ndarray) -> np.ndarray:
        """Working-grid (x, y) to full-resolution pixel coordinates (pixel centres at integers)."""
        return (np.asarray(xy, np.float64) + 0.5) * self.factor - 0.5

    def to_work(self, xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy, np.float64) + 0.5) / self.factor - 0.5


def working_grid(spacing_mm: float, *, target_mm: float) -> WorkingGrid:
    factor = max(1, int(round(target_mm / spacing_mm)))
    return WorkingGrid(factor, spacing_mm * factor)


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Area-average by an integer factor (cropping any remainder)."""
    if factor == 1:
        return image
    rows, cols = image.shape[0] // factor, image.shape[1] // factor
    return cv2.resize(image[:rows * factor, :cols * factor], (cols, rows), interpolation=cv2.INTER_AREA)
