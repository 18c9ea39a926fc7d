"""Stages that do not read each other's results run at the same time (Settings.stage_threads):
needle and contrast after register. The events are those of the one-thread pipeline."""
from __future__ import annotations

import threading

import pytest

from sifluoro.config import Settings
from sifluoro.errors import ConfigError
from sifluoro.pipeline import FULL, Pipeline, _waves
from sifluoro.stages import STAGE_NAMES, make_stages


class Named:
    def __init__(self, name, reads=None, fields=None, barrier=None, fail=False):
        self.name, self.fields, self.barrier, self.fail = name, fields or {}, barrier, fail
        if reads is not None:
            self.reads = reads

    def process(self, frame, state):
        if self.barrier is not None:
            self.barrier.wait()  # returns only when the other stage of the wave is running too
        if self.fail:
            raise RuntimeError("defect")
        return dict(self.fields)


def _names(waves):
    return [[s.name for s in w] for w in waves]


def test_waves_group_stages_that_do_not_read_each_other():
    reg, needle, contrast = Named("register", ()), Named("needle", ("register",)), Named("contrast", ("register",))
    assert _names(_waves([reg, needle, contrast])) == [["register"], ["needle", "contrast"]]
    # a stage that reads one of the wave starts a new one; one that declares nothing is a barrier
    later = Named("later", ("needle",))
    assert _names(_waves([reg, needle, later, contrast])) == [["register"], ["needle"], ["later", "contrast"]]
    assert _names(_waves([reg, needle, Named("opaque"), contrast])) == [
        ["register"], ["needle"], ["opaque"], ["contrast"]]


def test_the_real_stages_declare_what_they_read():
    stages = make_stages(STAGE_NAMES)
    assert _names(_waves(stages)) == [["register"], ["needle", "contrast"]]


def test_a_wave_runs_at_the_same_time_with_two_threads(frames_512):
    barrier = threading.Barrier(2, timeout=60)  # only stops a hang
    stages = [Named("register", ()), Named("needle", ("register",), {"needle": None}, barrier),
              Named("contrast", ("register",), {"contrast": {"state": "vascular", "confidence": 0.7}},
                    barrier)]
    pipeline = Pipeline(stages, Settings(latency_budget_ms=1e9, stage_threads=2))
    event = pipeline.process(frames_512[0], pipeline.start_study("1.2"))
    assert "failed_stages" not in event  # neither waited alone at the barrier
    assert event["contrast"]["state"] == "vascular"


def test_one_thread_runs_stages_one_after_the_other(frames_512):
    barrier = threading.Barrier(2, timeout=0.2)
    stages = [Named("needle", (), {}, barrier), Named("contrast", (), {}, barrier)]
    pipeline = Pipeline(stages, Settings(latency_budget_ms=1e9, stage_threads=1))
    event = pipeline.process(frames_512[0], pipeline.start_study("1.2"))
    assert event["failed_stages"] == ["needle", "contrast"]  # each waited alone: never together


def test_a_failing_stage_of_a_wave_is_listed_and_the_other_kept(frames_512):
    stages = [Named("needle", (), {"needle": {"tip_xy": [1.0, 2.0]}}, fail=True),
              Named("contrast", (), {"contrast": {"state": "extravasation", "confidence": 0.5}})]
    pipeline = Pipeline(stages, Settings(latency_budget_ms=1e9, stage_threads=2))
    event = pipeline.process(frames_512[0], pipeline.start_study("1.2"))
    assert event["failed_stages"] == ["needle"] and event["degraded"]
    assert event["contrast"]["state"] == "extravasation" and event["needle"] is None


def test_the_plan_counts_a_wave_at_its_dearest_stage(frames_512):
    """register 2 ms, needle 6 ms, contrast 5 ms, 9 ms left: one after the other (13 ms) the
    contrast update is skipped; side by side (2 + 6 ms) nothing is."""
    shape = frames_512[0].pixels.shape
    plans = {}
    for threads in (1, 2):
        stages = [Named("register", ()), Named("needle", ("register",)), Named("contrast", ("register",))]
        pipeline = Pipeline(stages, Settings(stage_threads=threads))
        for name, ms in (("register", 2.0), ("needle", 6.0), ("contrast", 5.0), ("pipeline", 0.0)):
            for _ in range(5):
                pipeline.costs.add(name, FULL if name != "pipeline" else "overhead", shape, ms)
        plans[threads] = pipeline._plan(shape, 9.0)
    assert plans == {1: {"contrast": "skip"}, 2: {}}


def test_a_step_that_saves_nothing_in_its_wave_is_not_taken(frames_512):
    """register 2 ms, needle 8 ms (1 ms in its ROI), contrast 5 ms, 9 ms left. Side by side,
    skipping contrast saves nothing while the needle is dearer: the needle goes to its ROI and
    contrast runs. One after the other both steps are needed."""
    shape = frames_512[0].pixels.shape

    class Roi(Named):
        def process_roi(self, frame, state):
            return {}

    plans = {}
    for threads in (1, 2):
        stages = [Named("register", ()), Roi("needle", ("register",)), Named("contrast", ("register",))]
        pipeline = Pipeline(stages, Settings(stage_threads=threads))
        for name, mode, ms in (("register", FULL, 2.0), ("needle", FULL, 8.0),
                               ("needle", "process_roi", 1.0), ("contrast", FULL, 5.0),
                               ("pipeline", "overhead", 0.0)):
            for _ in range(5):
                pipeline.costs.add(name, mode, shape, ms)
        plans[threads] = pipeline._plan(shape, 9.0)
    assert plans == {1: {"contrast": "skip", "needle": "process_roi"}, 2: {"needle": "process_roi"}}


def test_stage_threads_below_one_is_refused():
    with pytest.raises(ConfigError, match="stage_threads"):
        Settings(stage_threads=0)


def test_real_stages_give_the_same_events_with_two_threads(sim_512):
    frames = [f for f, _ in sim_512]

    def events(threads):
        settings = Settings(latency_budget_ms=1e9, stage_threads=threads)
        pipeline = Pipeline(make_stages(STAGE_NAMES, settings), settings)
        state = pipeline.start_study("sim")
        for run in {f.run.sop_instance_uid: f.run for f in frames}.values():
            pipeline.prepare_run(run, state)
        out = [pipeline.process(f, state) for f in frames]
        for e in out:
            e.pop("latency_ms")
        return out

    one, two = events(1), events(2)
    assert any(e["needle"] for e in one) and any(e["contrast"]["state"] != "none" for e in one)
    assert two == one


def test_a_closed_engine_leaves_no_stage_thread(tmp_path):
    """Review s22 F12: every engine closed (one per study) kept its stage threads until it was
    garbage-collected: a workstation keeping finished studies' engines gathered them."""
    from sifluoro import Engine
    from tests.dicom_fixtures import RunSpec, write_study

    def stage_threads():
        return sum(t.name.startswith("sifluoro-stage") for t in threading.enumerate())

    paths = write_study(tmp_path, [RunSpec(0.0, n_frames=2)])
    before = stage_threads()
    kept = []
    for _ in range(2):
        engine = Engine(Settings(), stages=["register", "needle", "contrast"])
        engine.run(paths)
        kept.append(engine)
    assert stage_threads() == before
    assert kept[0].close()["frames"] == 2  # a second close still gives the summary
