"""Smoke tests of the benchmarks' own code on one small simulated study: a stage change that
breaks a benchmark (a new return value, a renamed method) shows here, not at the next
`./run bench`. No timing is asserted."""
from __future__ import annotations


def test_bench_needle_measures_the_stage_its_box_and_the_stock_detector():
    from benchmarks.bench_needle import bench_size

    got = bench_size(512, (2,))
    assert got["needle_stage"]["detected_3mm"] >= 0.9
    assert got["roi_tracking"]["frames"] > 0 and got["roi_tracking"]["detected_3mm"] >= 0.9
    assert got["stock_canny_houghlinesp"]["frames"] == got["needle_stage"]["frames"]


def test_bench_pipeline_allocations_are_measured_per_stage():
    from benchmarks.bench_pipeline import _allocations
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    frames = [f for f, _ in sim_frames(simulate_case(2026, 1, quick=True))]
    got = _allocations(frames)
    assert set(got) == {"register", "needle", "contrast"}
    assert all(0.0 <= a["p50_mb"] <= a["max_mb"] for a in got.values())
