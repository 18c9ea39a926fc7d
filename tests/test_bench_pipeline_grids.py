"""bench_pipeline: the stages' work grids per frame size, and each stage's thread CPU time."""
from sifluoro.sim import simulate_case
from sifluoro.track.needle_sim import sim_frames


def test_work_grids_are_the_same_at_512_and_1024_over_the_same_field():
    """Why 512² costs about as much as 1024²: every stage works on the same grid at both sizes
    (register and needle in mm, contrast in pixels across)."""
    from benchmarks.bench_pipeline import _work_grids

    grids = {size: _work_grids(next(sim_frames(simulate_case(2026, 1, size=size, quick=True)))[0])
             for size in (512, 1024)}
    assert grids[512]["frame"] == "512x512" and grids[1024]["frame"] == "1024x1024"
    for stage in ("register", "register_motion_dft", "needle", "contrast"):
        assert grids[512][stage] == grids[1024][stage]
    assert grids[512]["register"] == grids[512]["needle"] == "512x512"  # the frame itself
    assert grids[1024]["contrast"] == "256x256"


def test_each_stage_reports_its_thread_cpu_time():
    from benchmarks.bench_pipeline import _in_process

    frames = [f for f, _ in sim_frames(simulate_case(2026, 1, quick=True))][:4]
    for config in ("joint+needle+contrast", "joint+needle+contrast x2"):
        got = _in_process([frames], config, 1)
        assert set(got["stages_cpu"]) == set(got["stages"]) == {"register", "needle", "contrast"}
        assert all(cpu["n"] == 4 and cpu["p50_ms"] > 0.0 for cpu in got["stages_cpu"].values())


def test_cpu_timer_counts_the_stage_s_cpu_not_its_waiting():
    import time

    from benchmarks.bench_pipeline import _CpuTimed, _Timed

    class Sleeper:
        name = "sleeper"

        def process(self, frame, state):
            time.sleep(0.02)
            return {}

    wall, cpu = _Timed(Sleeper()), _CpuTimed(Sleeper())
    for timer in (wall, cpu):
        timer.process(None, None)
    assert wall.ms[0] >= 20.0
    assert cpu.ms[0] < 5.0


def test_run_first_frames_and_later_ones_are_summed_up_apart():
    from benchmarks.bench_pipeline import _by_kind

    rows = [{"frame": i, "case": 1, "run": 0, "frame_of_run": n, "register": r, "whole": w}
            for i, (n, r, w) in enumerate([(1, 4.0, 9.0), (2, 1.0, 3.0), (3, 2.0, 4.0),
                                           (1, 6.0, 11.0)])]
    got = _by_kind(rows)
    assert got["run_first"]["frames"] == 2 and got["later"]["frames"] == 2
    assert got["run_first"]["register"] == {"mean_ms": 5.0, "p50_ms": 5.0}
    assert got["later"]["whole"] == {"mean_ms": 3.5, "p50_ms": 3.5}
