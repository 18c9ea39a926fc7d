"""Simulator timing: a 40-frame 1024^2 run and a whole 512^2 study.

    python benchmarks/bench_sim.py [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sifluoro.sim import _kernels as K
from sifluoro.sim import anatomy as anat
from sifluoro.sim import detector as det
from sifluoro.sim.geometry import make_camera
from sifluoro.sim.needle import NeedlePlan, tube_arrays
from sifluoro.sim.spectra import beam_model
from sifluoro.sim.study import simulate_case


def bench_run_1024(n_frames: int = 40) -> dict:
    """One pose: voxelise + cast once, then render n_frames with needle, gas, noise."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    an = anat.sample_anatomy(rng, "L")
    target = an.joint_point(0.0, 0.0)
    cam = make_camera(target, -22.0, 5.0, 1100.0, 720.0, 300.0, 1024)
    grid, origin = anat.density_grid(an, [cam])
    static = anat.cast(an, grid, origin, cam)
    beam = beam_model(80, 12.0, 3.0, 0.1)
    model = det.DetectorModel("flat_panel", 0.4, 4.0, 0.15, "log", 0.3, 0.5, 0.0, 0.0)
    mask = det.exposed_mask(1024, (40, 40, 983, 983), False, 0)
    t_static = time.perf_counter() - t0
    needle = NeedlePlan(final_tip_mm=target, direction=cam.beam + np.array([0.3, 0.0, 0.2]),
                        bend_dir=np.array([0.0, 0.0, 1.0]), bend_mm=1.0, length_mm=89.0,
                        final_depth_mm=70.0, gauge=22)
    water = static.body_mm - static.bone_mm
    zero = np.zeros_like(water)
    primary = np.empty_like(water)
    steel = np.empty_like(water)
    K.polychromatic(primary, water, static.bone_mm, zero, zero, beam.weights, beam.mu_water,
                    beam.mu_bone, beam.mu_iodine, beam.mu_steel)
    scatter = det.scatter_map(primary, mask, 3.0, cam.pixel_spacing_mm)
    per_frame = []
    for f in range(n_frames):
        t = time.perf_counter()
        steel[...] = 0.0
        pl = needle.polyline(40.0 + 0.5 * f)
        K.render_tubes(steel, cam.vector, *tube_arrays([pl], [0.36], [0.2], [1.0]), 3)
        K.polychromatic(primary, water, static.bone_mm, zero, steel, beam.weights,
                        beam.mu_water, beam.mu_bone, beam.mu_iodine, beam.mu_steel)
        sig = det.detect(primary, scatter, 200.0, rng, model, cam.pixel_spacing_mm, mask)
        disp = det.to_display(sig, model)
        det.to_stored(disp, det.window(disp, mask), 12, -1, mask)
        per_frame.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    return {"name": "run_1024_40_frames", "static_s": t_static,
            "frame_p50_ms": 1000 * float(np.median(per_frame)), "total_s": total,
            "goal_total_s": 10.0}


def bench_study_512(cases=(0, 1, 2)) -> dict:
    times, frames = [], []
    for c in cases:
        t = time.perf_counter()
        st = simulate_case(2024, c, size=512)
        times.append(time.perf_counter() - t)
        frames.append(sum(len(r.frames) for r in st.runs))
    return {"name": "study_512", "cases": list(cases), "study_s": times,
            "study_p50_s": float(np.median(times)),
            "frame_p50_ms": 1000 * float(np.median(np.array(times) / np.array(frames))),
            "frames": frames}


def bench_quick_512(cases=(0, 1, 2, 3, 4)) -> dict:
    """The 512² quick case (final needle run + contrast run, one pose): goal about 1 s."""
    times, frames = [], []
    for c in cases:
        t = time.perf_counter()
        st = simulate_case(2024, c, size=512, quick=True)
        times.append(time.perf_counter() - t)
        frames.append(sum(len(r.frames) for r in st.runs))
    return {"name": "quick_case_512", "cases": list(cases), "case_s": times,
            "case_p50_s": float(np.median(times)), "frames": frames, "goal_s": 1.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", help="write the JSON results here")
    args = ap.parse_args()
    K.warm_up()
    simulate_case(2024, 99)      # first call also pays SpekPy start-up
    res = {"results": [bench_run_1024(), bench_study_512(), bench_quick_512()]}
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
