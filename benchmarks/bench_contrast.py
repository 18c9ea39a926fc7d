"""Per-frame cost of the contrast stage at 512² and 1024², against a stock implementation.

    .venv/bin/python -m benchmarks.bench_contrast [--quick] [--steps]

The stock step does what one frame of the stage does with scikit-image/OpenCV/SciPy calls:
float attenuation, area downsampling to the same working grid, Gaussian smoothing, subtraction
of a reference frame, a robust noise estimate (median absolute deviation), hysteresis
components and their ``regionprops`` (the opacity); and the vessel test on the last five
working frames: onset and washout maps, a bright-ridge filter (``skimage.filters.sato``, 1-2 px)
on each, their minimum over a local noise level (31 px box of absolute values), hysteresis
components and the largest summed excess. Both run on the same synthetic frames (a bony
background, noise, a growing joint fill) in this process.

``study`` also times the stage on the pipeline bench's simulated study (after the register
stage), frame by frame with its steps: there it costs about twice what it costs on the
synthetic frames (s16: 2.0 against 1.0 ms at 1024², thread CPU), because a washout line
reaches the vessel test's floor (the onset is filtered too) and the field changes by a few
pixels on every frame (the test's noise and erosion are made again); not because the other
stages push its data out of the cache (without the needle stage it costs the same).

``--steps`` adds a second pass with every kernel of the stage timed (median ms per frame of
each step; "other" is the stage's own Python and NumPy): the timing wrappers cost a few µs
per call, so the step pass's total is a little above the plain one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import defaultdict

import cv2
import numpy as np
from scipy import ndimage
from skimage import filters, measure

from sifluoro.model import Device, Frame, Run, Shutter, Technique
from sifluoro.pipeline import StudyState
from sifluoro.track import _contrast_kernels as K
from sifluoro.track import contrast_transient
from sifluoro.track.contrast import ContrastStage

# the kernels the stage calls per frame, and the vessel test as a whole
_STEPS = ("reduce_frame", "smooth_binomial", "dilate_square", "envelope_max", "flood_unexposed",
          "masked_residual", "robust_centre_spread", "hysteresis_label", "component_stats",
          "core_stats", "select_labels", "shifted_copy", "negative_mass",
          "onset_ridge", "unexposed_seeds", "usable_field", "standardise",
          "line_ridge", "washout_ridge", "local_z", "z_like", "best_line", "same_mask",
          "erode_square", "box_scale")


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


def _stock_step(pixels: np.ndarray, reference: np.ndarray, factor: int,
                history: list[np.ndarray]) -> tuple[int, float]:
    """The same step with stock library calls (allocates as such code does). ``history``:
    the previous working frames of the run, oldest first (this frame is appended)."""
    a = pixels.astype(np.float32) / 4095.0
    rows, cols = a.shape[0] // factor, a.shape[1] // factor
    small = filters.gaussian(cv2.resize(a, (cols, rows), interpolation=cv2.INTER_AREA),
                             sigma=1.0, preserve_range=True)
    diff = small - reference
    centre = np.median(diff)
    sigma = 1.4826 * np.median(np.abs(diff - centre)) + 1e-12
    opaque = filters.apply_hysteresis_threshold((diff - centre) / sigma, 2.5, 5.0)
    props = measure.regionprops(measure.label(opaque, connectivity=2), intensity_image=diff)
    history.append(small)
    del history[:-5]
    vessel = 0.0
    if len(history) == 5:
        x = history
        onset = x[2] - 0.5 * (x[0] + x[1])
        washout = x[2] - x[4]
        zs = []
        for m in (onset, washout):
            ridge = filters.sato(m, sigmas=(1, 2), black_ridges=False)
            ridge = ridge - np.median(ridge)
            noise = ndimage.uniform_filter(np.abs(ridge), 31) * 1.2533 + 1e-12
            zs.append(ridge / noise)
        z = np.minimum(*zs)
        labels = measure.label(filters.apply_hysteresis_threshold(z, 2.5, 4.0), connectivity=2)
        if labels.max():
            vessel = float(np.max(ndimage.sum_labels(z - 2.5, labels,
                                                     np.arange(1, labels.max() + 1))))
    return len(props), vessel


def _percentiles(ms: list[float]) -> dict:
    p50, p99 = np.percentile(ms, [50, 99])
    return {"p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4)}


@contextlib.contextmanager
def _timed_steps(spent_ms: dict, clock=time.perf_counter):
    """Time every call of the stage's kernels (and the vessel test) into ``spent_ms`` by
    ``clock`` (the stage's own: a step timed by the wall clock outgrew a stage timed by its
    thread's CPU on a loaded machine)."""
    originals = {name: getattr(K, name) for name in _STEPS}

    def timed(label, fn):
        def call(*args, **kwargs):
            t0 = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent_ms[label] += (clock() - t0) * 1000.0
        return call

    score = contrast_transient.TransientLines.score_history
    try:
        for name, fn in originals.items():
            setattr(K, name, timed(name, fn))
        contrast_transient.TransientLines.score_history = timed("vessel_test (all)", score)
        yield
    finally:
        for name, fn in originals.items():
            setattr(K, name, fn)
        contrast_transient.TransientLines.score_history = score


def _run_stage(run, frames, spent: list | None = None) -> list[float]:
    stage = ContrastStage()
    stage.warm_up(Frame(frames[0], 0, 1, 0.0, run))
    state = StudyState("1", dose=None)
    stage_ms = []
    for k, px in enumerate(frames):
        frame = Frame(px, k, k + 1, 0.1 * k, run)
        per_frame: dict = defaultdict(float)
        with _timed_steps(per_frame) if spent is not None else contextlib.nullcontext():
            t0 = time.perf_counter()
            stage.process(frame, state)
            stage_ms.append((time.perf_counter() - t0) * 1000.0)
        if spent is not None:
            spent.append(dict(per_frame))
    return stage_ms


def _step_breakdown(run, frames) -> dict:
    """Median ms per frame of each step (frames after the run's first)."""
    spent: list = []
    total = _run_stage(run, frames, spent)[1:]
    spent = spent[1:]
    out = {}
    for name in _STEPS + ("vessel_test (all)",):
        per = [s.get(name, 0.0) for s in spent]
        if any(per):
            out[name] = round(float(np.median(per)), 4)
    kernels = [sum(v for k, v in s.items() if k in _STEPS and k not in
                   ("onset_ridge", "line_ridge", "washout_ridge", "local_z", "z_like",
                    "best_line", "same_mask", "erode_square", "box_scale"))
               + s.get("vessel_test (all)", 0.0) for s in spent]
    out["other (Python, NumPy)"] = round(float(np.median(np.subtract(total, kernels))), 4)
    out["total (with wrappers)"] = round(float(np.median(total)), 4)
    return out


def bench_size(size: int, frames_n: int, steps: bool = False) -> dict:
    run, frames = _frames(size, frames_n)
    stage_ms = _run_stage(run, frames)
    factor = ContrastStage().factor_for(size, size)
    ref_full = frames[0].astype(np.float32) / 4095.0
    reference = cv2.resize(ref_full, (size // factor, size // factor), interpolation=cv2.INTER_AREA)
    warm: list[np.ndarray] = []
    for px in frames[:5]:   # every library call once, the vessel test's included
        _stock_step(px, reference, factor, warm)
    stock_ms = []
    history: list[np.ndarray] = []
    for px in frames:
        t0 = time.perf_counter()
        _stock_step(px, reference, factor, history)
        stock_ms.append((time.perf_counter() - t0) * 1000.0)
    # both from the sixth frame on: the stock vessel test takes five frames (the stage's
    # first takes four), and the stage's first frame of a run only seeds its reference
    ours = _percentiles(stage_ms[5:])
    stock_ms = stock_ms[5:]
    stock = _percentiles(stock_ms)
    out = {"size": size, "frames": frames_n, "grid": size // factor, "contrast_stage": ours,
           "stock_skimage_opencv": stock,
           "speedup_p50": round(stock["p50_ms"] / ours["p50_ms"], 2),
           "speedup_p99": round(stock["p99_ms"] / ours["p99_ms"], 2)}
    if steps:
        out["steps_p50_ms"] = _step_breakdown(run, frames)
    return out


def bench_study(size: int, repeats: int = 3) -> dict:
    """The stage's thread CPU per frame on the quick study of ``bench_pipeline --quick``
    (``simulate_case(2026, 1, quick=True)``), after the register stage as in the pipeline, with
    each frame's steps: on the synthetic frames above the field never changes and no washout
    line reaches the vessel test's floor, so that its onset half is skipped and every cache
    keyed on the field hits. Here the field changes by a few pixels on most frames (blocks
    with a pixel at attenuation 0 come and go): ``field_changed`` counts the frames where the
    vessel test took a new field (its noise and erosion made again), ``onset_filtered`` those
    where it filtered an onset; p50s over the frames that ran the test and over all frames."""
    from benchmarks.bench_pipeline import SEED, CASE
    from sifluoro.config import Settings
    from sifluoro.pipeline import Pipeline
    from sifluoro.sim import simulate_case
    from sifluoro.stages import make_stages
    from sifluoro.track.needle_sim import sim_frames

    frames = [f for f, _ in sim_frames(simulate_case(SEED, CASE, size=size, quick=True))]
    spent: list[dict] = []

    class Timed:
        def __init__(self, stage):
            self.stage, self.name = stage, stage.name
            self.warm_up, self.reads = stage.warm_up, stage.reads

        def process(self, frame, state):
            per: dict = defaultdict(float)
            memory = state.stage_state.get("contrast")
            gen = getattr(getattr(memory, "transient", None), "mask_gen", None)
            with _timed_steps(per, time.thread_time):
                c0 = time.thread_time()
                try:
                    return self.stage.process(frame, state)
                finally:
                    per["stage"] = (time.thread_time() - c0) * 1000.0
                    t = state.stage_state["contrast"].transient
                    per["field_changed"] = float(t is not None and gen is not None
                                                 and t.mask_gen != gen)
                    spent.append(dict(per))

    settings = Settings(latency_budget_ms=1e9, stage_threads=1)
    register, contrast = make_stages(("register", "contrast"), settings)
    for _ in range(repeats):
        pipeline = Pipeline([register, Timed(contrast)], settings)
        state = pipeline.start_study("bench")
        for run in {f.run.sop_instance_uid: f.run for f in frames}.values():
            pipeline.prepare_run(run, state)
        for f in frames:
            pipeline.process(f, state)
    tested = [s for s in spent if s.get("vessel_test (all)", 0.0) > 0.0]
    med = lambda rows, k: round(float(np.median([r.get(k, 0.0) for r in rows])), 4) if rows else 0.0
    return {"size": size, "frames": len(spent), "vessel_test_frames": len(tested),
            "field_changed": int(sum(s["field_changed"] for s in tested)),
            "onset_filtered": int(sum(s.get("onset_ridge", 0.0) > 0.0 for s in tested)),
            "contrast_stage_p50_ms": _percentiles([s["stage"] for s in spent])["p50_ms"],
            "vessel_test_frames_p50_ms": med(tested, "stage"),
            "vessel_test_frames_steps_p50_ms": {k: med(tested, k) for k in
                                                ("vessel_test (all)",) + _STEPS
                                                if med(tested, k) > 0.0}}


def run(quick: bool = False, steps: bool = False) -> dict:
    """Benchmark both frame sizes; ``quick`` uses fewer frames, ``steps`` adds the per-step
    breakdown. ``study``: the stage on the pipeline bench's simulated study (:func:`bench_study`)."""
    n = 30 if quick else 200
    return {"bench": "contrast",
            "results": [bench_size(512, n, steps), bench_size(1024, n, steps)],
            "study": [bench_study(512, 1 if quick else 3), bench_study(1024, 1 if quick else 3)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", action="store_true", help="also time each step of the stage")
    args = ap.parse_args()
    print(json.dumps(run(args.quick, args.steps), indent=1))


if __name__ == "__main__":
    main()
