"""Image motion between frames of one view: phase correlation of coarse, high-passed frames.

Breathing and table shifts move the anatomy as a whole at the detector; a translation is what
is estimated (C-arm re-angulation changes the projection itself and is handled as a view
change). Frames are reduced to about 2 mm per pixel first: the joint, needle and contrast are
too small to bias the estimate there, and a 128-pixel FFT keeps it well under a millisecond.

The phase correlation is OpenCV's (``cv2.phaseCorrelate``: windowed frames zero-padded to a
fast DFT size, normalised cross-power spectrum, 5x5 weighted centroid of the peak), but the
reference's spectrum is kept between frames, so a frame costs one forward and one inverse FFT.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import scipy.fft

from sifluoro.imaging import area_into
from sifluoro.register import _kernels

COARSE_MM = 2.0  # bone outlines survive at this scale, quantum noise averages out
HIGHPASS_MM = 12.0  # removes the slow soft-tissue and scatter gradients that do not move
LOWPASS_CELL = 4  # coarse pixels per cell of the grid the slow gradients are estimated on


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
        inside = np.empty(self.coarse_shape, np.float32)  # each view's: 0.1 ms less by 3
        area_into(usable.astype(np.float32), self.coarse_factor, inside)
        inside = cv2.erode((inside > 0.999).astype(np.uint8), np.ones((5, 5), np.uint8))
        taper = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 2.0)
        self.window = (taper * cv2.createHanningWindow((cols, rows), cv2.CV_32F)).astype(np.float32)
        self._coarse = np.empty(self.coarse_shape, np.float32)
        self._low = np.empty(self.coarse_shape, np.float32)
        self._cells = (cols // LOWPASS_CELL, rows // LOWPASS_CELL)
        self.dft_shape = (cv2.getOptimalDFTSize(rows), cv2.getOptimalDFTSize(cols))
        self._padded = np.zeros(self.dft_shape, np.float32)  # zero beyond the coarse image
        self._cross = np.empty((self.dft_shape[0], self.dft_shape[1] // 2 + 1), np.complex64)
        self.reference: np.ndarray | None = None
        self._reference_spectrum: np.ndarray | None = None

    def prepare(self, work: np.ndarray) -> np.ndarray:
        """Coarse, high-passed copy of a working-resolution image (a new array)."""
        rows, cols = self.coarse_shape
        f = self.coarse_factor
        image = work
        # OpenCV's area resize is several times faster by exact halves than by other factors
        while f % 2 == 0 and f > 2:
            image = cv2.resize(image[:rows * f, :cols * f], (cols * f // 2, rows * f // 2),
                               interpolation=cv2.INTER_AREA)
            f //= 2
        area_into(image, f, self._coarse)  # by 3: a numba pass of OpenCV's sums
        # the slow gradients, blurred on a 4x coarser grid and interpolated back: a tenth of
        # the cost of the full-size blur; the difference is smooth, and the measured motion the
        # same to a few hundredths of a pixel
        c = LOWPASS_CELL
        cells = cv2.resize(self._coarse[:self._cells[1] * c, :self._cells[0] * c], self._cells,
                           interpolation=cv2.INTER_AREA)
        cells = cv2.GaussianBlur(cells, (0, 0), self.sigma_px / c, borderType=cv2.BORDER_REFLECT)
        cv2.resize(cells, (cols, rows), dst=self._low, interpolation=cv2.INTER_LINEAR)
        return cv2.subtract(self._coarse, self._low)

    def _spectrum(self, prepared: np.ndarray) -> np.ndarray:
        rows, cols = self.coarse_shape
        np.multiply(prepared, self.window, out=self._padded[:rows, :cols])
        return scipy.fft.rfft2(self._padded, workers=1)

    def set_reference(self, work: np.ndarray) -> None:
        self.reference = self.prepare(work)
        self._reference_spectrum = self._spectrum(self.reference)

    def measure(self, work: np.ndarray) -> Motion:
        """Motion of ``work`` (working resolution) relative to the reference."""
        if self._reference_spectrum is None:
            raise RuntimeError("Registrar.measure called before set_reference")
        _kernels.phase_cross_power(self._reference_spectrum, self._spectrum(self.prepare(work)),
                                   self._cross)
        corr = scipy.fft.irfft2(self._cross, s=self.dft_shape, workers=1)
        py, px = divmod(int(np.argmax(corr)), corr.shape[1])
        dy, dx, peak = _kernels.peak_centroid(corr, py, px, 2)
        # the correlation peaks at minus the shift of the frame against the reference
        scale = self.coarse_factor * self.factor
        return Motion((-dx * scale, -dy * scale), float(peak))
