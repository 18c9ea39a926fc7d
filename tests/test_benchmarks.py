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
    # the stock detector also on the stage's own working grid (like with like)
    assert got["stock_on_working_grid"]["p50_ms"] > 0
    assert got["speed_ratio_stock_on_working_grid_over_ours_p50"] > 0


def test_bench_joint_times_a_stock_registration_beside_the_stock_segmentation():
    from benchmarks.bench_joint import bench_size

    got = bench_size(512, 3)
    assert got["skimage_phase_cross_correlation_ms"]["p50"] > 0
    assert got["speedup_register_vs_skimage"] > 0 and got["speedup_segment_vs_skimage"] > 0


def test_bench_pipeline_allocations_are_measured_per_stage():
    from benchmarks.bench_pipeline import _allocations
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    frames = [f for f, _ in sim_frames(simulate_case(2026, 1, quick=True))]
    got = _allocations([frames])
    assert set(got) == {"register", "needle", "contrast"}
    assert all(0.0 <= a["p50_mb"] <= a["max_mb"] for a in got.values())



def test_bench_pipeline_reports_its_own_time_frame_by_frame():
    """With one thread the pipeline's own time is its latency less its stages', per frame
    (not a difference of p50s), and below the latency; with two threads it is not reported."""
    from benchmarks.bench_pipeline import _in_process
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    frames = [f for f, _ in sim_frames(simulate_case(2026, 1, quick=True))][:5]
    got = _in_process([frames], "default", 1)
    assert got["own"]["n"] == got["pipeline_cpu"]["n"] == 5
    assert 0.0 < got["own"]["p50_ms"] < got["pipeline"]["p50_ms"]
    assert got["pipeline_cpu"]["p50_ms"] > 0.0
    assert "own" not in _in_process([frames], "joint+needle+contrast x2", 1)


def test_bench_pipeline_tables_each_study_frame_s_stages():
    """One row per study frame: each stage's thread CPU and the whole frame's (medians over the
    passes), and the pipeline's own time, pass by pass the whole less the stages (one thread:
    the whole frame's CPU holds its stages')."""
    from benchmarks.bench_pipeline import _in_process
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    frames = [f for f, _ in sim_frames(simulate_case(2026, 1, quick=True))][:6]
    rows = _in_process([frames], "joint+needle+contrast", 3)["per_frame_cpu"]
    assert [r["frame"] for r in rows] == list(range(6))
    assert [r["frame_of_run"] for r in rows] == [f.frame_number for f in frames]
    assert [r["run"] for r in rows] == [f.run.index for f in frames]
    assert {r["case"] for r in rows} == {1}
    for r in rows:
        assert r["whole"] >= max(r["register"], r["needle"], r["contrast"]) > 0.0
        assert 0.0 <= r["own"] < r["whole"]
    assert "per_frame_cpu" not in _in_process([frames], "joint+needle+contrast x2", 1)


def _untimed(events):
    return [{k: v for k, v in e.items() if k != "latency_ms"} for e in events]


def test_bench_pipeline_passes_each_see_a_real_study():
    """Every pass runs each study on a fresh pipeline: the second pass's events (dose, joint,
    needle, contrast) are the first's, not a replay into the first pass's warm stages and dose;
    and a second study starts afresh too (its events are those of the study timed alone)."""
    from benchmarks.bench_pipeline import _Timed, _timed_pass
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    frames = [f for f, _ in sim_frames(simulate_case(2026, 1, quick=True))][:5]
    other = [f for f, _ in sim_frames(simulate_case(2026, 2, quick=True))][:4]
    both = _timed_pass([frames, other], "joint+needle+contrast", 2, _Timed)
    assert len(both.events) == 2 and len(both.events[0]) == 9
    assert _untimed(both.events[1]) == _untimed(both.events[0])
    alone = _timed_pass([other], "joint+needle+contrast", 1, _Timed)
    assert _untimed(both.events[0][5:]) == _untimed(alone.events[0])
    assert len(both.latencies_ms) == len(both.cpu_ms) == 18
    assert all(len(ms) == 18 for ms in both.stage_ms.values())


def test_bench_contrast_stock_step_runs_the_vessel_test_too():
    """The stock step is the stage's whole step: a thin line that appears on one frame and
    is gone two frames later scores far above the same frames without it."""
    import numpy as np

    from benchmarks.bench_contrast import _stock_step

    rng = np.random.default_rng(3)
    size, factor = 512, 2
    base = rng.normal(0.4, 0.002, (size, size)).astype(np.float32)
    reference = base.reshape(256, 2, 256, 2).mean(axis=(1, 3))

    def vessel_score(with_line: bool) -> float:
        history: list = []
        score = 0.0
        for k in range(5):
            a = base + rng.normal(0, 0.01, base.shape).astype(np.float32)
            if with_line and k == 2:
                a[100:400, 250:256] += 0.05
            score = _stock_step(np.rint(a * 4095).astype(np.uint16), reference, factor,
                                history)[1]
        return score

    assert vessel_score(True) > 5 * max(vessel_score(False), 1.0)


def test_eval_needle_runs_the_register_stage_first_when_asked(tmp_path):
    """``--register`` scores the needle stage as batch-replay runs it (with the register
    target); without it the needle stage runs alone."""
    from benchmarks.eval_needle import evaluate_needle
    from sifluoro.sim.batch import simulate_set

    list(simulate_set(tmp_path, cases=1, seed=2026, size="512", workers=1, quick=True))
    alone = evaluate_needle(tmp_path)
    both = evaluate_needle(tmp_path, register=True)
    assert alone["stages"] == ["needle"] and both["stages"] == ["register", "needle"]
    assert both["needle"]["tip_frames"] == alone["needle"]["tip_frames"] > 0


def test_bench_contrast_times_the_stage_on_the_pipeline_bench_study():
    """On the simulated study the vessel test runs from a run's 4th frame and its field
    changes from frame to frame (what the synthetic frames never do); the steps of those
    frames are reported."""
    from benchmarks.bench_contrast import bench_study

    got = bench_study(512, 1)
    assert got["frames"] == 13
    assert 0 < got["vessel_test_frames"] < got["frames"]
    assert 0 < got["field_changed"] <= got["vessel_test_frames"]
    assert got["onset_filtered"] <= got["vessel_test_frames"]
    steps = got["vessel_test_frames_steps_p50_ms"]
    assert steps["washout_ridge"] > 0.0 and steps["vessel_test (all)"] > 0.0
    assert got["vessel_test_frames_p50_ms"] > steps["vessel_test (all)"]
