"""Imaging chain after the patient: scatter, quantum and electronic noise, detector blur,
image-intensifier effects, log/gamma processing, windowing to the stored bit depth, polarity
and burned-in annotations."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

GRID_PRIMARY_TRANSMISSION = 0.7


@dataclass(frozen=True)
class DetectorModel:
    """Per-study detector and processing settings."""

    kind: str                    # "flat_panel" | "image_intensifier"
    blur_mm: float               # Gaussian sigma of the detector MTF at the detector plane
    electronic_noise_quanta: float
    grid_scatter_transmission: float
    processing: str              # "log" | "gamma"
    edge_enhance: float          # unsharp-mask gain
    range_compression: float     # share of the large-scale display variation removed
    vignetting: float            # II brightness loss at the field edge (fraction)
    glare: float                 # II veiling glare (fraction of mean signal)


def exposed_mask(size: int, collimation_xyxy: tuple[int, int, int, int],
                 circular: bool, circle_margin_px: int) -> np.ndarray:
    """Boolean (size, size) mask of the exposed field (shutter rectangle, II circle)."""
    x0, y0, x1, y1 = collimation_xyxy
    m = np.zeros((size, size), bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    if circular:
        c = (size - 1) / 2.0
        yy, xx = np.mgrid[0:size, 0:size]
        m &= (xx - c) ** 2 + (yy - c) ** 2 <= (size / 2.0 - circle_margin_px) ** 2
    return m


def scatter_to_primary(thickness_mm: float, field_area_cm2: float) -> float:
    """Scatter-to-primary ratio without grid for a water-like patient.

    Grows with thickness and field area (as Boone & Seibert, Med Phys 1988 describe); the
    formula and its 4-5 for 25 cm and a 20x20 cm field are an engineering choice (see
    docs/simulator.md), clipped to 1-6.
    """
    spr = 4.5 * (thickness_mm / 250.0) ** 1.3 * (field_area_cm2 / 400.0) ** 0.3
    return float(np.clip(spr, 1.0, 6.0))


def scatter_map(primary: np.ndarray, mask: np.ndarray, spr: float, spacing_mm: float) -> np.ndarray:
    """Broad low-pass of the exposed primary, scaled to mean scatter/primary = ``spr``."""
    size = primary.shape[0]
    small = max(size // 8, 16)
    p = cv2.resize((primary * mask).astype(np.float32), (small, small),
                   interpolation=cv2.INTER_AREA)
    sigma_px = 40.0 / (spacing_mm * size / small)
    b = cv2.GaussianBlur(p, (0, 0), sigma_px, borderType=cv2.BORDER_CONSTANT)
    b = cv2.resize(b, (size, size), interpolation=cv2.INTER_LINEAR)
    scale = spr * float(primary[mask].sum()) / max(float(b[mask].sum()), 1e-12)
    return (b * scale).astype(np.float32)


def detect(primary: np.ndarray, scatter: np.ndarray, quanta_per_px: float, rng: np.random.Generator,
           det: DetectorModel, spacing_mm: float, mask: np.ndarray) -> np.ndarray:
    """Noisy detected signal relative to the unattenuated, ungridded beam.

    Quantum noise is Gaussian with variance signal/quanta (quanta = noise-equivalent photons per
    pixel of the open beam), then blurred by the detector MTF (so it is correlated like real
    noise), then electronic noise is added.
    """
    s = _at_input(primary, scatter, det, mask)
    noise = rng.standard_normal(s.shape, dtype=np.float32)
    s = s + np.sqrt(np.maximum(s, 0.0) / quanta_per_px) * noise
    s = cv2.GaussianBlur(s.astype(np.float32), (0, 0), det.blur_mm / spacing_mm)
    s = s + (det.electronic_noise_quanta / quanta_per_px) * rng.standard_normal(
        s.shape, dtype=np.float32)
    return _vignetted(s, det)


def detect_mean(primary: np.ndarray, scatter: np.ndarray, det: DetectorModel, spacing_mm: float,
                mask: np.ndarray) -> np.ndarray:
    """:func:`detect` without noise (its expected value): the ground truth's noise-free frame."""
    s = _at_input(primary, scatter, det, mask)
    return _vignetted(cv2.GaussianBlur(s.astype(np.float32), (0, 0), det.blur_mm / spacing_mm),
                      det)


def _at_input(primary: np.ndarray, scatter: np.ndarray, det: DetectorModel, mask: np.ndarray
              ) -> np.ndarray:
    s = GRID_PRIMARY_TRANSMISSION * primary + det.grid_scatter_transmission * scatter
    if det.kind == "image_intensifier" and det.glare > 0:
        s = s + det.glare * float(s[mask].mean())
    return s


def _vignetted(s: np.ndarray, det: DetectorModel) -> np.ndarray:
    if det.kind == "image_intensifier" and det.vignetting > 0:
        size = s.shape[0]
        c = (size - 1) / 2.0
        yy, xx = np.mgrid[0:size, 0:size]
        r2 = ((xx - c) ** 2 + (yy - c) ** 2) / (size / 2.0) ** 2
        s = s * (1.0 - det.vignetting * r2).astype(np.float32)
    return s


def to_display(signal: np.ndarray, det: DetectorModel) -> np.ndarray:
    """Attenuation-like display value (bone high): -log(signal) or -signal**0.5."""
    s = np.maximum(signal, 1e-7)
    v = -np.log(s) if det.processing == "log" else -np.sqrt(s / 0.05)
    v = v.astype(np.float32)
    size = v.shape[0]
    if det.range_compression > 0:
        # dynamic range compression ("harmonisation") of C-arm image processing
        small = cv2.resize(v, (size // 8, size // 8), interpolation=cv2.INTER_AREA)
        low = cv2.resize(cv2.GaussianBlur(small, (0, 0), 4.0), (size, size),
                         interpolation=cv2.INTER_LINEAR)
        v = v - det.range_compression * (low - float(np.median(small)))
    if det.edge_enhance > 0:
        v = v + det.edge_enhance * (v - cv2.GaussianBlur(v, (0, 0), 3.0 * size / 512))
    return v


def window(display: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Auto-window of a run: percentiles of the central exposed field, with head room."""
    size = display.shape[0]
    centre = np.zeros_like(mask)
    q = size // 5
    centre[q:size - q, q:size - q] = True
    sel = display[mask & centre] if np.any(mask & centre) else display[mask]
    lo, hi = np.percentile(sel, [1.0, 99.0])
    span = hi - lo
    return float(lo - 0.1 * span), float(hi + 0.2 * span)


def to_stored(display: np.ndarray, win: tuple[float, float], bits_stored: int,
              pixel_intensity_sign: int, mask: np.ndarray) -> np.ndarray:
    """Window to [0, 2**bits_stored - 1]; blank (no exposure) = maximal attenuation.

    ``display`` rises with attenuation. Sign -1 stores it as is (values rise with
    attenuation); sign +1 stores the inverse (values rise with X-ray intensity), as
    MONOCHROME1 devices and bone-dark MONOCHROME2 devices do.
    """
    top = (1 << bits_stored) - 1
    out = np.rint(windowed(display, win, mask) * top).astype(np.uint16)
    if pixel_intensity_sign == 1:
        out = (top - out).astype(np.uint16)
    return out


def windowed(display: np.ndarray, win: tuple[float, float], mask: np.ndarray) -> np.ndarray:
    """``display`` windowed to [0, 1], rising with attenuation (1 outside the exposed field)."""
    v = (display - win[0]) / (win[1] - win[0])
    v = np.clip(v, 0.0, 1.0)
    v[~mask] = 1.0
    return v


def burn_in(img: np.ndarray, lines: list[str], side_marker: str | None, bits_stored: int,
            photometric: str) -> None:
    """Draw annotation text and the side marker into the pixels (white on a dark outline).

    OpenCV draws text on 8-bit images only, so the glyphs are rendered as 8-bit coverage masks
    and blended into the 16-bit frame.
    """
    top = (1 << bits_stored) - 1
    white, black = (top, 0) if photometric == "MONOCHROME2" else (0, top)
    size = img.shape[0]
    scale = size / 1024.0
    outline = np.zeros(img.shape, np.uint8)
    fill = np.zeros(img.shape, np.uint8)
    items = [(text, (int(12 * scale), int((40 + 34 * i) * scale)), cv2.FONT_HERSHEY_SIMPLEX,
              0.9 * scale, 2) for i, text in enumerate(lines)]
    if side_marker:
        items.append((side_marker, (int(size - 90 * scale), int(90 * scale)),
                      cv2.FONT_HERSHEY_DUPLEX, 2.4 * scale, 4))
    for text, org, font, fscale, thick in items:
        cv2.putText(outline, text, org, font, fscale, 255, max(int((thick + 3) * scale), 2),
                    cv2.LINE_AA)
        cv2.putText(fill, text, org, font, fscale, 255, max(int(thick * scale), 1), cv2.LINE_AA)
    a = outline.astype(np.float32) / 255.0
    b = fill.astype(np.float32) / 255.0
    v = img.astype(np.float32) * (1 - a) + black * a
    v = v * (1 - b) + white * b
    img[...] = np.rint(v).astype(np.uint16)
