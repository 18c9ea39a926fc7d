"""Image motion between frames of one view: phase correlation of coarse, high-passed frames.

Breathing and table shifts move the anatomy as a whole at the detector; a translation is what
is estimated (C-arm re-angulation changes the projection itself and is handled as a view
change). Frames are reduced to about 2 mm per pixel first: the joint, needle and contrast are
too small to bias the estimate there, and a 128-pixel FFT keeps it well under a millisecond.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

COARSE_MM = 2.0  # bone outlines survive at this scale, quantum noise averages out
HIGHPASS_MM = 12.0  # removes the slow soft-tissue and scatter gradients that do not move


@dataclass(frozen=True)
class Motion:
    """Translation of a frame relative to the reference frame of its view.

    ``shift_xy`` is in full-resolution pixels (content of the reference at ``p`` is at
    ``p + shift_xy`` in the frame); ``peak`` the phase-correlation peak (0-1): how much of the
    image moved as one.
    """

    shift_xy: tuple[float, float]
    peak: float


class Registrar:
    """Phase correlation against a reference, with buffers for one frame geometry.

    Parameters
    ----------
    shape : (rows, cols)
        Shape of the working-resolution images that will be passed in.
    factor : int
        Full-resolution pixels per working pixel (to report shifts at full resolution).
    spacing_mm : float
        Working pixel spacing at the detector.
    usable : bool (rows, cols)
        Exposed field at working resolution; the estimate ignores what lies outside.
    """

    def __init__(self, shape: tuple[int, int], factor: int, spacing_mm: float, usable: np.ndarray):
        self.factor = factor
        self.coarse_factor = max(1, int(round(COARSE_MM / spacing_mm)))
        rows, cols = shape[0] // self.coarse_factor, shape[1] // self.coarse_factor
        self.coarse_shape = (rows, cols)
        coarse_mm = spacing_mm * self.coarse_factor
        self.sigma_px = HIGHPASS_MM / coarse_mm
        # taper: the field edge would otherwise pin the estimate to zero motion
        inside = cv2.resize(usable[:rows * self.coarse_factor, :cols * self.coarse_factor]
                            .astype(np.float32), (cols, rows), interpolation=cv2.INTER_AREA)
        inside = cv2.erode((inside > 0.999).astype(np.uint8), np.ones((5, 5), np.uint8))
        taper = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 2.0)
        self.window = (taper * cv2.createHanningWindow((cols, rows), cv2.CV_32F)).astype(np.float32)
        self._coarse = np.empty(self.coarse_shape, np.float32)
        self._low = np.empty(self.coarse_shape, np.float32)
        self.reference: np.ndarray | None = None

    def prepare(self, work: np.ndarray) -> np.ndarray:
        """Coarse, high-passed copy of a working-resolution image (a new array)."""
        rows, cols = self.coarse_shape
        f = self.coarse_factor
        image = work[:rows * f, :cols * f]
        # OpenCV's area resize is several times faster by exact halves than by other factors
        while f % 2 == 0 and f > 2:
            image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2),
                               interpolation=cv2.INTER_AREA)
            f //= 2
        cv2.resize(image, (cols, rows), dst=self._coarse, interpolation=cv2.INTER_AREA)
        cv2.GaussianBlur(self._coarse, (0, 0), self.sigma_px, dst=self._low)
        return cv2.subtract(self._coarse, self._low)

    def set_reference(self, work: np.ndarray) -> None:
        self.reference = self.prepare(work)

    def measure(self, work: np.ndarray) -> Motion:
        """Motion of ``work`` (working resolution) relative to the reference."""
        if self.reference is None:
            raise RuntimeError("Registrar.measure called before set_reference")
        current = self.prepare(work)
        (dx, dy), peak = cv2.phaseCorrelate(self.reference, current, self.window)
        scale = self.coarse_factor * self.factor
        return Motion((float(dx) * scale, float(dy) * scale), float(peak))
