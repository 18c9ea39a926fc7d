"""Needle stage speed: p50/p99 ms per frame on 512^2 and 1024^2 simulated frames, against a
stock detector (Canny + ``cv2.HoughLinesP``, tip = the segment end nearer the field centre) on
the same frames, with both detectors' tip accuracy beside the times. The stock detector runs on
the full frame and, as ``stock_on_working_grid``, on the frame reduced to the stage's working
grid (0.5 mm: a 1024² frame halved, the downsampling timed with it), the input the stage itself
works on: the first ratio compares with what stock code would be given, the second like with
like.

    python benchmarks/bench_needle.py [--quick] [--out results.json]

``needle_stage`` is the stage as it runs without a deadline: the full search of the field (on
the run's running mean), and, once a needle is followed, its box between full searches;
"run_start" is the first frame of each run, which also builds the run's field mask.
``roi_tracking`` is the cheaper mode the deadline policy uses (``process_roi``: the last tip
followed along its axis in a small region), timed on every frame after the first two of a run
(which get the full search, as a live study would), with its accuracy on those frames. The
first call (numba compilation) is excluded by ``warm_up``.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import cv2
import numpy as np

from sifluoro.imaging import attenuation, downsample, working_grid
from sifluoro.pipeline import Pipeline
from sifluoro.sim import simulate_case
from sifluoro.track.needle import NeedleStage
from sifluoro.track.needle_sim import sim_frames


def _stock_tip(att: np.ndarray, spacing_mm: float):
    """Canny on the 8-bit attenuation image, probabilistic Hough, longest segment; its end
    nearer the image centre is the tip."""
    img8 = cv2.GaussianBlur((att * 255).astype(np.uint8), (0, 0), 1.0)
    edges = cv2.Canny(img8, 20, 60)
    min_len = int(12.0 / spacing_mm)
    lines = cv2.HoughLinesP(edges, 1, np.pi / 180, 40, minLineLength=min_len, maxLineGap=5)
    if lines is None:
        return None
    x0, y0, x1, y1 = max(lines.reshape(-1, 4), key=lambda l: math.hypot(l[2] - l[0], l[3] - l[1]))
    c = np.array(att.shape[::-1], float) / 2.0
    a, b = np.array([x0, y0], float), np.array([x1, y1], float)
    return a if np.linalg.norm(a - c) < np.linalg.norm(b - c) else b


def _percentiles(values_ms: list[float]) -> dict:
    p50, p99 = np.percentile(values_ms, [50, 99])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3), "frames": len(values_ms)}


def _accuracy(errors_mm: list[float | None]) -> dict:
    got = [e for e in errors_mm if e is not None]
    return {"tip_frames": len(errors_mm),
            "detected_3mm": round(sum(e <= 3.0 for e in got) / max(len(errors_mm), 1), 3),
            "median_error_mm": round(float(np.median(got)), 3) if got else None}


def _roi_tracking(stage: NeedleStage, frames: list, case: int) -> tuple[list, list]:
    """Times and tip errors (mm) of ``process_roi`` on the frames after the first two of each
    run, the first two getting the full search (as do frames where the step declines: no
    needle to follow; not timed)."""
    state = Pipeline([stage]).start_study(f"bench-roi-{case}")
    times, errors = [], []
    for frame, truth in frames:
        state.stage_state.pop("attenuation", None)
        if frame.frame_number <= 2:
            stage.process(frame, state)
            continue
        t0 = time.perf_counter()
        fields = stage.process_roi(frame, state)
        if fields is None:  # declined (nothing to follow): the pipeline searches the field
            fields = stage.process(frame, state)
        else:
            times.append((time.perf_counter() - t0) * 1000.0)
        out = fields["needle"]
        if truth.tip_xy is not None and not truth.end_on:
            errors.append(math.dist(out["tip_xy"], truth.tip_xy) * frame.pixel_spacing_xy_mm[0]
                          if out else None)
    return times, errors


def bench_size(size: int, cases: tuple[int, ...], seed: int = 99) -> dict:
    stage = NeedleStage()
    t_ours, t_stock, t_start, t_roi, t_grid = [], [], [], [], []
    e_ours, e_stock, e_roi = [], [], []
    for case in cases:
        study = simulate_case(seed, case, size=size)
        frames = list(sim_frames(study))
        stage.warm_up(frames[0][0])
        pipeline = Pipeline([stage])
        state = pipeline.start_study(f"bench-{case}")
        for frame, truth in frames:
            state.stage_state.pop("attenuation", None)
            t0 = time.perf_counter()
            out = stage.process(frame, state)["needle"]
            t_ours.append((time.perf_counter() - t0) * 1000.0)
            if frame.frame_number == 1:
                t_start.append(t_ours[-1])
            spacing = frame.pixel_spacing_xy_mm[0]
            att = attenuation(frame)
            t0 = time.perf_counter()
            stock = _stock_tip(att, spacing)
            t_stock.append((time.perf_counter() - t0) * 1000.0)
            factor = working_grid(spacing, target_mm=stage.settings.grid_mm).factor
            t0 = time.perf_counter()
            _stock_tip(downsample(att, factor), spacing * factor)
            t_grid.append((time.perf_counter() - t0) * 1000.0)
            if truth.tip_xy is None or truth.end_on:
                continue
            e_ours.append(math.dist(out["tip_xy"], truth.tip_xy) * spacing if out else None)
            e_stock.append(math.dist(stock, truth.tip_xy) * spacing if stock is not None else None)
        times, errors = _roi_tracking(stage, frames, case)
        t_roi += times
        e_roi += errors
    ours, stock = _percentiles(t_ours), _percentiles(t_stock)
    return {"needle_stage": {**ours, **_accuracy(e_ours),
                             "run_start_p50_ms": round(float(np.median(t_start)), 3)},
            "roi_tracking": {**(_percentiles(t_roi) if t_roi else {}), **_accuracy(e_roi)},
            "stock_canny_houghlinesp": {**stock, **_accuracy(e_stock)},
            "speed_ratio_stock_over_ours_p50": round(stock["p50_ms"] / ours["p50_ms"], 3),
            "stock_on_working_grid": _percentiles(t_grid),
            "speed_ratio_stock_on_working_grid_over_ours_p50": round(
                float(np.median(t_grid)) / ours["p50_ms"], 3)}


def run(quick: bool) -> dict:
    """Timings and accuracy of the needle stage and the stock detector on simulated studies."""
    return {"512": bench_size(512, (2,) if quick else (2, 3, 5)),
            "1024": bench_size(1024, (2,))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    result = run(args.quick)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
