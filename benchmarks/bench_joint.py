"""register/ timing at 1024² and 512²: per-frame update, full re-segmentation, registration,
and the same two steps in stock scikit-image on the same working images: a ridge pipeline
(sato + Otsu threshold + skeletonize) against a segmentation, and
``skimage.registration.phase_cross_correlation`` (upsample 10: the stage's registration is
sub-pixel too) against a registration. Each ratio compares one call with one call of the same
job; the stage segments only on a view's frames 1, 2, 4, 8 and 16 and registers every frame,
so per frame it is the registration ratio that applies.

    python benchmarks/bench_joint.py [--quick] [--out results.json]

Frames come from a simulated study (``simulate_case(2026, 1, quick=True)``) at each size.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sifluoro.imaging import attenuation, downsample, exposed_mask, working_grid
from sifluoro.pipeline import Pipeline
from sifluoro.register.joint import exposed_field, segment_joint, usable_mask
from sifluoro.register.stage import RESEGMENT_AT, WORK_MM, JointStage
from sifluoro.sim import simulate_case
from sifluoro.track.needle_sim import sim_frames

SEED, CASE = 2026, 1  # simulated study with a joint on every run (same as bench_pipeline)


def _frames_of_size(size: int, n: int):
    """Up to ``n`` frames of the second run of a simulated study of ``size``² (its first run is a
    scout); simulated here so the benchmark needs nothing on disk."""
    study = simulate_case(SEED, CASE, size=size, quick=True)
    run_index = 1 if len(study.runs) > 1 else 0
    frames = [f for f, _ in sim_frames(study) if f.run.index == run_index][:n]
    if not frames:
        raise ValueError(f"simulate_case({SEED}, {CASE}) has no frames at {size}²")
    return frames


def _times_ms(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def _p(values):
    return {"p50": round(float(np.percentile(values, 50)), 3),
            "p99": round(float(np.percentile(values, 99)), 3)}


def _skimage_pipeline(work: np.ndarray, spacing_mm: float):
    from skimage.filters import sato, threshold_otsu
    from skimage.morphology import skeletonize
    sigmas = [max(0.7, s / spacing_mm) for s in (0.6, 1.2)]
    ridge = sato(work, sigmas=sigmas, black_ridges=True)
    return skeletonize(ridge > threshold_otsu(ridge))


def _skimage_register(reference: np.ndarray, work: np.ndarray):
    from skimage.registration import phase_cross_correlation
    return phase_cross_correlation(reference, work, upsample_factor=10)


def bench_size(size: int, repeats: int) -> dict:
    run_frames = _frames_of_size(size, RESEGMENT_AT[-1] + repeats + 1)
    # one run's frames, cycled: the view finishes its averaging, then only updates
    frames = [run_frames[i % len(run_frames)] for i in range(RESEGMENT_AT[-1] + repeats)]
    stage = JointStage()
    spacing = frames[0].pixel_spacing_xy_mm[0]
    stage.warm_up(frames[0])
    state = Pipeline().start_study("bench")
    cache = {id(f): attenuation(f) for f in run_frames}
    images = [cache[id(f)] for f in frames]
    # per-frame update: a view that has finished its averaging (registration + moving the line)
    update = []
    for i, (f, image) in enumerate(zip(frames, images)):
        state.stage_state["attenuation"] = (f, image)  # computed once per frame by the pipeline
        t0 = time.perf_counter()
        stage.process(f, state)
        if i >= RESEGMENT_AT[-1]:
            update.append((time.perf_counter() - t0) * 1000.0)
    grid = working_grid(spacing, target_mm=WORK_MM)
    field = exposed_field(images[0], exposed_mask(frames[0].run, images[0].shape, margin_px=2))
    usable = usable_mask(images[0], field, grid.factor)
    work = downsample(images[0], grid.factor)
    view = state.stage_state["register_views"].current
    segment = _times_ms(lambda: segment_joint(work, grid=grid, usable=usable), repeats)
    works = [downsample(a, grid.factor) for a in images[:repeats]]
    it = iter(range(10 ** 9))
    register = _times_ms(lambda: view.registrar.measure(works[next(it) % len(works)]), repeats)
    downsample_ms = _times_ms(lambda: downsample(images[0], grid.factor), repeats)
    sk = _times_ms(lambda: _skimage_pipeline(work, grid.spacing_mm), max(3, repeats // 5))
    it_sk = iter(range(10 ** 9))
    sk_register = _times_ms(lambda: _skimage_register(work, works[next(it_sk) % len(works)]),
                            max(3, repeats // 5))
    seg_p50 = float(np.percentile(segment, 50))
    return {"size": size, "working_px": list(work.shape), "update_ms": _p(update),
            "segment_ms": _p(segment), "register_ms": _p(register),
            "downsample_to_working_ms": _p(downsample_ms),
            "skimage_sato_otsu_skeletonize_ms": _p(sk),
            "speedup_segment_vs_skimage": round(float(np.percentile(sk, 50)) / seg_p50, 2),
            "skimage_phase_cross_correlation_ms": _p(sk_register),
            "speedup_register_vs_skimage": round(float(np.percentile(sk_register, 50))
                                                 / float(np.percentile(register, 50)), 2),
            "goals_ms": {"update_p50": 1.0, "segment_p50": 15.0, "register_p50": 1.0}}


def run(quick: bool = False) -> dict:
    repeats = 10 if quick else 40
    return {"name": "bench_joint", "sizes": [bench_size(1024, repeats), bench_size(512, repeats)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = run(args.quick)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
