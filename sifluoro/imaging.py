"""Frame preparation shared by the image stages: attenuation-like float image, exposed field,
working resolution. Pure array code; no DICOM parsing."""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from sifluoro import _imaging_kernels as _k
from sifluoro.model import Frame, Run


def frame_attenuation(frame: Frame, stage_state: dict) -> np.ndarray:
    """:func:`attenuation` of ``frame``, computed once per frame and shared by the stages.

    The array is the study's reused buffer: valid until the next frame of the study is
    prepared (until the one after for a stage running a frame behind,
    :func:`swap_attenuation_buffer`). A stage that keeps image data past its frame keeps a
    copy (downsampled work images already are). Stages running at the same time share one
    computation (a lock)."""
    cached = stage_state.get("attenuation")
    if cached is not None and cached[0] is frame:
        return cached[1]
    with stage_state.setdefault("attenuation_lock", threading.Lock()):
        cached = stage_state.get("attenuation")
        if cached is not None and cached[0] is frame:
            return cached[1]
        buffer = stage_state.get("attenuation_buffer")
        if buffer is None or buffer.shape != frame.pixels.shape:
            buffer = stage_state["attenuation_buffer"] = np.empty(frame.pixels.shape, np.float32)
        image = attenuation(frame, out=buffer)
        stage_state["attenuation"] = (frame, image)
        return image


def frame_work(frame: Frame, stage_state: dict, factor: int, out: np.ndarray | None = None
               ) -> np.ndarray:
    """:func:`downsample` of :func:`frame_attenuation` by ``factor`` (into ``out`` when it fits).

    By halves (``factor`` 2, the 0.3 mm frames of a 1024² detector) or by 3 (0.2-0.23 mm: 1024²
    over a 230 mm intensifier) and with the frame's attenuation not computed yet, the same
    values straight from the stored pixels in one pass
    (:func:`_imaging_kernels.attenuation_halved_into`, ``attenuation_area3_into``, where
    OpenCV's area resize sums the blocks in the same order: :func:`halving_matches_opencv`,
    :func:`area3_matches_opencv`): a frame whose other stages need no full-size image (the
    needle followed in its box) is spared it, 0.3-0.4 ms at 1024²."""
    pixels = frame.pixels
    cached = stage_state.get("attenuation")
    shape = (pixels.shape[0] // factor, pixels.shape[1] // factor) if pixels.ndim == 2 else ()
    if (factor not in (2, 3) or (cached is not None and cached[0] is frame) or pixels.ndim != 2
            or pixels.dtype != np.uint16
            or not (halving_matches_opencv if factor == 2 else area3_matches_opencv)(shape[1])):
        return downsample(frame_attenuation(frame, stage_state), factor, out)
    if out is None or out.shape != shape or out.dtype != np.float32:
        out = np.empty(shape, np.float32)
    top = float((1 << frame.run.bits_stored) - 1)
    one_pass = _k.attenuation_halved_into if factor == 2 else _k.attenuation_area3_into
    one_pass(pixels, np.float32(1.0 / top), not frame.run.attenuation_rises_with_value, out)
    return out


_HALVING_MATCHES: dict[int, bool] = {}


def halving_matches_opencv(cols: int) -> bool:
    """Whether :func:`_imaging_kernels.attenuation_halved_into` gives what
    ``cv2.resize(..., INTER_AREA)`` by halves gives for ``cols`` output columns: OpenCV sums a
    block ``(a + b) + (c + d)`` in its vector loop but ``((a + b) + c) + d`` in a scalar tail
    whose length depends on the width and the build. Checked once per width on 64 rows of
    random values of the whole uint16 range (a different order changes about a fifth of the
    sums: a tail of one block still differs somewhere but with a chance of about 1e-6)."""
    ok = _HALVING_MATCHES.get(cols)
    if ok is None:
        if cols < 1:
            return False
        pixels = np.random.default_rng(cols).integers(0, 1 << 16, (128, 2 * cols), dtype=np.uint16)
        scale = np.float32(1.0 / 65535.0)
        ok = True
        for invert in (False, True):
            full = np.empty(pixels.shape, np.float32)
            _k.attenuation_into(pixels, scale, invert, full)
            halved = np.empty((64, cols), np.float32)
            _k.attenuation_halved_into(pixels, scale, invert, halved)
            ok = ok and bool(np.array_equal(halved, downsample(full, 2)))
        _HALVING_MATCHES[cols] = ok
    return ok


_AREA3_MATCHES: dict[int, bool] = {}


def area3_matches_opencv(cols: int) -> bool:
    """Whether :func:`_imaging_kernels.area3_into` gives what ``cv2.resize(..., INTER_AREA)``
    by 3 gives (float32) for ``cols`` output columns: checked once per width, as
    :func:`halving_matches_opencv`, on 12 rows of random values of both signs (an OpenCV
    build that summed in another order would change most of them)."""
    ok = _AREA3_MATCHES.get(cols)
    if ok is None:
        if cols < 1:
            return False
        rng = np.random.default_rng(cols)
        src = (rng.random((36, 3 * cols), dtype=np.float32) - np.float32(0.3)) * np.float32(7.0)
        got = np.empty((12, cols), np.float32)
        _k.area3_into(src, got)
        ok = _AREA3_MATCHES[cols] = bool(np.array_equal(
            got, cv2.resize(src, (cols, 12), interpolation=cv2.INTER_AREA)))
    return ok


def area_into(image: np.ndarray, factor: int, out: np.ndarray) -> None:
    """``cv2.resize`` (``INTER_AREA``) of ``image`` by an integer ``factor`` into ``out`` (the
    remainder of ``image``'s rows and columns cropped, as :func:`downsample`): by 3, from a
    C-contiguous float32 image, in one numba pass of the same sums where
    :func:`area3_matches_opencv` (about 0.02 ms instead of 0.09-0.13 for the register's
    512² → 170² motion image; a crop, not contiguous, would not vectorise)."""
    rows, cols = out.shape
    if (factor == 3 and rows >= 1 and image.dtype == np.float32 and out.dtype == np.float32
            and image.flags.c_contiguous and out.flags.c_contiguous
            and image.shape[0] >= 3 * rows and image.shape[1] >= 3 * cols
            and area3_matches_opencv(cols)):
        _k.area3_into(image, out)
    else:
        cv2.resize(image[:factor * rows, :factor * cols], (cols, rows), dst=out,
                   interpolation=cv2.INTER_AREA)


def swap_attenuation_buffer(stage_state: dict, spare: np.ndarray | None) -> np.ndarray | None:
    """Make ``spare`` (None: a new one when needed) the buffer of the study's next frame's
    :func:`frame_attenuation`, and return the current one: it keeps its frame's image for a
    stage running a frame behind (:meth:`sifluoro.pipeline.Pipeline.process_frames`)."""
    current = stage_state.get("attenuation_buffer")
    stage_state["attenuation_buffer"] = spare
    return current


def attenuation(frame: Frame, out: np.ndarray | None = None) -> np.ndarray:
    """float32 image in [0, 1] that rises with attenuation (bone bright, gas dark), written into
    ``out`` (float32, the frame's shape) when given."""
    return pixel_attenuation(frame.pixels, frame.run, out)


def pixel_attenuation(pixels: np.ndarray, run: Run, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`attenuation` of stored ``pixels`` of ``run`` (a whole frame or a region of it)."""
    if out is None:
        out = np.empty(pixels.shape, np.float32)
    elif out.shape != pixels.shape or out.dtype != np.float32:
        # the kernel does not check bounds: a wrong buffer would be written past its end
        raise ValueError(f"attenuation buffer {out.shape} {out.dtype} for a {pixels.shape} frame")
    top = float((1 << run.bits_stored) - 1)
    _k.attenuation_into(pixels, np.float32(1.0 / top), not run.attenuation_rises_with_value, out)
    return out


def attenuation_reference(frame: Frame) -> np.ndarray:
    """NumPy reference of :func:`attenuation` (tests)."""
    top = float((1 << frame.run.bits_stored) - 1)
    a = frame.pixels.astype(np.float32) * np.float32(1.0 / top)
    if not frame.run.attenuation_rises_with_value:
        np.subtract(np.float32(1.0), a, out=a)
    return a


def picture_steps(pixels: np.ndarray, bits_stored: int, *, at_least: int | None = None) -> int:
    """How much picture a frame holds: on every 8th row, the number of places where the means
    of 8 neighbouring pixels step by more than 2 grey levels (of 8 bits; scaled to the stored
    bits). 0 for a flat frame and for 8-bit black with noise of 1 level; thousands for a
    fluoroscopy frame, and tens for one collimated to a slit. About 0.03 ms at 1024² (uint16:
    the kernel; other types: :func:`picture_steps_reference`).
    Counting steps, not averaging them, keeps a blacked-out shutter area from diluting the
    picture inside it.

    With ``at_least``, the rows are read only until that many steps are counted (the count
    returned is then at least ``at_least``, not the whole frame's): a fluoroscopy frame
    reaches 16 within a few rows, where reading all of them cost 0.02-0.15 ms at 1024² (a
    frame not in cache) on every frame."""
    threshold = 2.0 * max(1.0, 2.0 ** (bits_stored - 8))
    if pixels.dtype != np.uint16 or pixels.ndim != 2:
        return picture_steps_reference(pixels, bits_stored)
    return int(_k.picture_steps(pixels, threshold, max(0, at_least or 0)))


def picture_steps_reference(pixels: np.ndarray, bits_stored: int) -> int:
    """:func:`picture_steps` with OpenCV and NumPy (the reference of the kernel, and the path
    of pixels other than uint16)."""
    rows = np.ascontiguousarray(pixels[4::8])
    cols = rows.shape[1] // 8 * 8
    if rows.shape[0] == 0 or cols < 16:
        return 0
    means = cv2.resize(rows[:, :cols], (cols // 8, rows.shape[0]), interpolation=cv2.INTER_AREA)
    steps = np.abs(np.diff(means.astype(np.int32), axis=1))
    return int(np.count_nonzero(steps > 2.0 * max(1.0, 2.0 ** (bits_stored - 8))))


def picture_steps_over_noise(pixels: np.ndarray, used_bits: int, *, sigmas: float = 5.0) -> int:
    """:func:`picture_steps` at the bits a frame's values use (``used_bits``, where a device
    stores fewer significant bits than BitsStored says), counting only steps that also stand
    ``sigmas`` noise levels above the steps' own spread (1.4826 x their median absolute
    deviation): a frame of noise alone has none, a fluoroscopy frame tens to hundreds. NumPy
    and OpenCV (a rare second look at a frame that seemed flat: no kernel)."""
    rows = np.ascontiguousarray(pixels[4::8])
    cols = rows.shape[1] // 8 * 8
    if rows.shape[0] == 0 or cols < 16:
        return 0
    means = cv2.resize(rows[:, :cols], (cols // 8, rows.shape[0]), interpolation=cv2.INTER_AREA)
    steps = np.diff(means.astype(np.int64), axis=1)
    noise = 1.4826 * float(np.median(np.abs(steps - np.median(steps))))
    threshold = max(2.0 * max(1.0, 2.0 ** (used_bits - 8)), sigmas * noise)
    return int(np.count_nonzero(np.abs(steps) > threshold))


def median(values: np.ndarray) -> float:
    """``float(np.median(values))`` of a 1-D float32 or float64 array, exactly, several times
    faster for large arrays (:func:`_imaging_kernels.median_into`)."""
    values = np.ascontiguousarray(values)
    return float(_k.median_into(values, np.empty_like(values), np.empty(_MEDIAN_BINS, np.int64)))


def robust_sigma(values: np.ndarray) -> float:
    """``float(np.median(np.abs(values - np.median(values))))`` (the median absolute
    deviation, unscaled) of a 1-D float32 or float64 array, exactly."""
    values = np.ascontiguousarray(values)
    return float(_k.robust_sigma_into(values, np.empty_like(values), np.empty_like(values),
                                      np.empty(_MEDIAN_BINS, np.int64)))


_MEDIAN_BINS = 4096


def warm_up() -> None:
    """Compile the frame preparation's kernel (the pipeline calls this before a live frame)."""
    _k.warm_up()


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
        r2 = (r - margin_px) ** 2
        if all(math.isfinite(v) and abs(v) < 1e6 for v in (cx, cy)) and 0 <= r2 < 1e12:
            # in float64 as below (exact for integer centres too): 0.03 ms at 1024², where
            # the frame-sized float64 temporary took 0.5-6 ms at a run's start
            _k.clear_outside_circle(mask, float(cx), float(cy), float(r2))
        else:
            mask &= _circle_reference(shape, cx, cy, r2)
    return mask


def _circle_reference(shape: tuple[int, int], cx, cy, r2) -> np.ndarray:
    """The circular field's test with NumPy (:func:`exposed_mask`'s reference, and its path
    for values the kernel's float64 would not hold exactly)."""
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r2


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


def downsample(image: np.ndarray, factor: int, out: np.ndarray | None = None) -> np.ndarray:
    """Area-average by an integer factor (cropping any remainder), into ``out`` when it has
    the result's shape and dtype (a new array otherwise)."""
    if factor == 1:
        return image
    rows, cols = image.shape[0] // factor, image.shape[1] // factor
    if out is None or out.shape != (rows, cols) or out.dtype != image.dtype:
        out = np.empty((rows, cols), image.dtype)
    area_into(image, factor, out)  # by 3 (a 0.15-0.2 mm detector's needle grid): numba's pass
    return out
