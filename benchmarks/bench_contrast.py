"""Per-frame cost of the contrast stage at 512² and 1024², against a stock implementation.

    .venv/bin/python -m benchmarks.bench_contrast [--quick]

The stock step does what one frame of the stage does with scikit-image/OpenCV calls: float
attenuation, area downsampling to the same working grid, subtraction of a reference frame,
Gaussian smoothing, an Otsu threshold and ``regionprops`` of the labelled opacity. Both run
on the same synthetic frames (a bony background, noise, a growing joint fill) in this process.
"""
from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
from skimage import filters, measure

from sifluoro.model import Device, Frame, Run, Shutter, Technique
from sifluoro.pipeline import StudyState
from sifluoro.track.contrast import ContrastStage


def _frames(size: int, n: int) -> tuple[Run, list[np.ndarray]]:
    rng = np.random.default_rng(size)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    base = 0.35 + 0.2 * np.exp(-((xx - 0.55) ** 2 + (yy - 0.5) ** 2) / 0.08)
    joint = np.abs(xx - 0.5 - 0.03 * np.sin(yy * 9)) < 2.0 / size
    frames = []
    for k in range(n):
        a = base + rng.normal(0, 0.02, base.shape).astype(np.float32)
        reach = max(0.0, (k - n // 3) / n)
        a[joint & (yy > 0.45) & (yy < 0.45 + reach)] += 0.3
        frames.append(np.rint(np.clip(a, 0, 1) * 4095).astype(np.uint16))
    tech = Technique(imager_pixel_spacing_xy_mm=(300.0 / size,) * 2, primary_angle_deg=20.0,
                     secondary_angle_deg=0.0, shutter=Shutter(rect_xyxy=(0, 0, size - 1, size - 1)))
    run = Run(path="bench", sop_instance_uid="1.2", sop_class_uid="", series_instance_uid="1",
              study_instance_uid="1", modality="XA", transfer_syntax_uid="", rows=size, columns=size,
              bits_stored=12, photometric="MONOCHROME2", start_s=0.0,
              frame_offsets_s=tuple(0.1 * k for k in range(n)), frame_intervals_ms=(100.0,) * n,
              technique=tech, device=Device())
    return run, frames


def _stock_step(pixels: np.ndarray, reference: np.ndarray, factor: int) -> int:
    """The same step with stock library calls (allocates as such code does)."""
    a = pixels.astype(np.float32) / 4095.0
    rows, cols = a.shape[0] // factor, a.shape[1] // factor
    small = cv2.resize(a, (cols, rows), interpolation=cv2.INTER_AREA)
    diff = filters.gaussian(small - reference, sigma=1.0, preserve_range=True)
    mask = diff > filters.threshold_otsu(diff)
    props = measure.regionprops(measure.label(mask), intensity_image=diff)
    return len(props)


def _percentiles(ms: list[float]) -> dict:
    p50, p99 = np.percentile(ms, [50, 99])
    return {"p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4)}


def bench_size(size: int, frames_n: int) -> dict:
    run, frames = _frames(size, frames_n)
    stage = ContrastStage()
    stage.warm_up(Frame(frames[0], 0, 1, 0.0, run))
    state = StudyState("1", dose=None)
    stage_ms = []
    for k, px in enumerate(frames):
        frame = Frame(px, k, k + 1, 0.1 * k, run)
        t0 = time.perf_counter()
        stage.process(frame, state)
        stage_ms.append((time.perf_counter() - t0) * 1000.0)
    factor = stage.factor_for(size, size)
    ref_full = frames[0].astype(np.float32) / 4095.0
    reference = cv2.resize(ref_full, (size // factor, size // factor), interpolation=cv2.INTER_AREA)
    _stock_step(frames[1], reference, factor)
    stock_ms = []
    for px in frames[1:]:
        t0 = time.perf_counter()
        _stock_step(px, reference, factor)
        stock_ms.append((time.perf_counter() - t0) * 1000.0)
    ours = _percentiles(stage_ms[1:])   # the first frame of a run only seeds the reference
    stock = _percentiles(stock_ms)
    return {"size": size, "frames": frames_n, "grid": size // factor, "contrast_stage": ours,
            "stock_skimage_opencv": stock,
            "speedup_p50": round(stock["p50_ms"] / ours["p50_ms"], 2),
            "speedup_p99": round(stock["p99_ms"] / ours["p99_ms"], 2)}


def run(quick: bool = False) -> dict:
    """Benchmark both frame sizes; ``quick`` uses fewer frames."""
    n = 30 if quick else 200
    return {"bench": "contrast", "results": [bench_size(512, n), bench_size(1024, n)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick), indent=1))


if __name__ == "__main__":
    main()
