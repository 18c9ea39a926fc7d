"""Without a deadline, replay overlaps consecutive frames (Pipeline.process_frames): the last
stage of frame n runs beside the earlier stages of frame n+1, sees its own frame's results and
keeps its own memory; the events are those of one frame at a time."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from sifluoro.config import Settings
from sifluoro.contract import dose_value, replay_output_violations
from sifluoro.pipeline import Pipeline
from sifluoro.replay import replay
from sifluoro.stages import STAGE_NAMES, make_stages

NO_DEADLINE = Settings(latency_budget_ms=math.inf, stage_threads=2)


class Register:
    """Publishes its frame's index as its result, like the register stage."""

    name, reads = "register", ()

    def __init__(self, after=None):
        self.after = after  # called with the frame index once the result is published

    def process(self, frame, state):
        state.stage_state["register"] = frame.index
        if self.after is not None:
            self.after(frame.index)
        return {}


class Last:
    """Reports the register result it sees and counts its frames in its own memory."""

    name, reads = "contrast", ("register",)

    def __init__(self, before=None, fail_on=()):
        self.before, self.fail_on = before, set(fail_on)

    def process(self, frame, state):
        if self.before is not None:
            self.before(frame.index)
        seen = state.stage_state["register"]
        state.stage_state["contrast"] = state.stage_state.get("contrast", 0) + 1
        if frame.index in self.fail_on:
            raise RuntimeError("defect")
        return {"contrast": {"state": "none", "confidence": float(seen)}}


def _events(pipeline, frames, state=None):
    state = state or pipeline.start_study("1.2")
    pairs = list(pipeline.process_frames(frames, state))
    assert [f.index for f, _ in pairs] == [f.index for f in frames]
    return [e for _, e in pairs], state


def test_the_last_stage_of_a_frame_runs_beside_the_next_frame(frames_512):
    """contrast(n) waits until register(n+1) has published: only overlap lets it go on, and it
    still sees register(n)'s result."""
    published = {i: threading.Event() for i in range(len(frames_512) + 1)}
    last = len(frames_512) - 1
    timed_out = []  # fail at the first wait that times out, not after one per frame

    def wait_next(i):
        if i < last and not timed_out and not published[i + 1].wait(60):
            timed_out.append(i)

    pipeline = Pipeline([Register(lambda i: published[i].set()), Last(wait_next)], NO_DEADLINE)
    events, state = _events(pipeline, frames_512)
    assert not timed_out, "the next frame's first stage did not run meanwhile"
    assert [e["contrast"]["confidence"] for e in events] == [float(f.index) for f in frames_512]
    assert state.stage_state["contrast"] == len(frames_512)  # its memory is the study's
    assert not any(e["degraded"] for e in events)


def test_the_last_stage_reads_its_own_frames_attenuation(frames_512):
    """The next frame's stages fill the other attenuation buffer (needle last, as with
    ``--stages register,needle``)."""
    from sifluoro.imaging import attenuation_reference, frame_attenuation

    published = {i: threading.Event() for i in range(len(frames_512) + 1)}
    last = len(frames_512) - 1

    class Attenuating(Register):
        def process(self, frame, state):
            frame_attenuation(frame, state.stage_state)
            return super().process(frame, state)

    class Reader(Last):
        def process(self, frame, state):
            if frame.index < last:
                assert published[frame.index + 1].wait(60)
            image = frame_attenuation(frame, state.stage_state)
            same = bool(np.array_equal(image, attenuation_reference(frame)))
            return {"contrast": {"state": "none", "confidence": float(same)}}

    pipeline = Pipeline([Attenuating(lambda i: published[i].set()), Reader()], NO_DEADLINE)
    events, _ = _events(pipeline, frames_512)
    assert [e["contrast"]["confidence"] for e in events] == [1.0] * len(frames_512)


@pytest.mark.parametrize("settings", [Settings(latency_budget_ms=1e9, stage_threads=2),
                                      Settings(latency_budget_ms=math.inf, stage_threads=1)])
def test_frames_do_not_overlap_under_a_deadline_or_on_one_thread(frames_512, settings):
    """The last stage then runs on the caller's thread (a wave of one stage)."""
    on_caller = []
    pipeline = Pipeline([Register(), Last(lambda i: on_caller.append(
        threading.current_thread() is threading.main_thread()))], settings)
    events, _ = _events(pipeline, frames_512)
    assert len(events) == len(frames_512) and all(on_caller) and len(on_caller) == len(events)


def test_a_stage_read_by_an_earlier_one_is_not_run_behind(frames_512):
    class Reader(Register):
        reads = ("contrast",)

    pipeline = Pipeline([Reader(), Last()], NO_DEADLINE)
    assert not pipeline._overlappable()
    events, _ = _events(pipeline, frames_512)
    assert [e["contrast"]["confidence"] for e in events] == [float(f.index) for f in frames_512]


def test_a_failing_last_stage_loses_neither_the_frame_nor_the_next(frames_512):
    pipeline = Pipeline([Register(), Last(fail_on={2})], NO_DEADLINE)
    events, state = _events(pipeline, frames_512)
    assert events[2]["failed_stages"] == ["contrast"] and events[2]["degraded"]
    assert events[2]["contrast"] == events[1]["contrast"] == {"state": "none", "confidence": 1.0}
    assert all("failed_stages" not in e for k, e in enumerate(events) if k != 2)
    assert events[3]["contrast"]["confidence"] == 3.0
    assert events[-1]["dose"] == {"air_kerma_mgy": dose_value(state.dose.totals.air_kerma_mgy),
                                  "dap_gycm2": dose_value(state.dose.totals.dap_gycm2),
                                  "fluoro_time_s": round(state.dose.totals.fluoro_time_s, 6),
                                  "dose_source": state.dose.live_source}
    assert state.frames == len(frames_512)


def test_a_frame_source_that_fails_ends_after_the_events_of_its_frames(frames_512):
    def source():
        yield from frames_512[:3]
        raise OSError("disk gone")

    pipeline = Pipeline([Register(), Last()], NO_DEADLINE)
    state = pipeline.start_study("1.2")
    got = []
    with pytest.raises(OSError, match="disk gone"):
        for frame, event in pipeline.process_frames(source(), state):
            got.append(event["index"])
    assert got == [0, 1, 2] and state.frames == 3


def test_a_stage_that_declares_nothing_keeps_the_frames_apart():
    class Opaque:  # may read anything, the last stage's memory included
        name = "register"

        def process(self, frame, state):
            return {}

    assert not Pipeline([Opaque(), Last()], NO_DEADLINE)._overlappable()
    assert Pipeline([Register(), Last()], NO_DEADLINE)._overlappable()


@pytest.mark.parametrize("names", [STAGE_NAMES, ("register", "needle")])
def test_real_stages_give_the_events_of_one_frame_at_a_time(sim_512, names):
    frames = [f for f, _ in sim_512]

    def run(settings):
        pipeline = Pipeline(make_stages(names, settings), settings)
        state = pipeline.start_study("sim")
        for r in {f.run.sop_instance_uid: f.run for f in frames}.values():
            pipeline.prepare_run(r, state)
        events, state = _events(pipeline, frames, state)
        for e in events:
            e.pop("latency_ms")
        return events, state

    (serial, s1), (overlapped, s2) = run(Settings(latency_budget_ms=1e9)), run(NO_DEADLINE)
    assert any(e["needle"] for e in serial)
    assert "contrast" not in names or any(e.get("alerts") for e in serial)
    assert overlapped == serial
    assert (s2.alerts, s2.contrast_state, s2.frames) == (s1.alerts, s1.contrast_state, s1.frames)


@pytest.mark.parametrize("names", [STAGE_NAMES, ("register", "needle")])
def test_replay_without_a_deadline_writes_the_same_outputs(tmp_path, names):
    """``--budget-ms inf`` (frames overlapped) and a budget that never binds (one frame at a
    time): the same events and summary but for the latencies, both to the contract."""
    import json

    from sifluoro.sim import simulate_case
    from sifluoro.sim.export import export_study

    dicom = export_study(simulate_case(2026, 1, quick=True), tmp_path / "study").dicom_dir
    outputs = []
    for budget_ms in (1e9, math.inf):
        settings = Settings(latency_budget_ms=budget_ms)
        events_path, summary_path = tmp_path / f"{budget_ms}.jsonl", tmp_path / f"{budget_ms}.json"
        replay([dicom], events_path=events_path, summary_path=summary_path, settings=settings,
               stages=make_stages(names, settings))
        assert replay_output_violations(events_path, summary_path) == []
        events = [json.loads(line) for line in events_path.read_text().splitlines()]
        for e in events:
            e.pop("latency_ms")
        summary = json.loads(summary_path.read_text())
        summary.pop("latency_ms")
        outputs.append((events, summary))
    assert outputs[1] == outputs[0]
    assert any(e["needle"] for e in outputs[0][0])
    assert "contrast" not in names or outputs[0][1]["alerts"]


def test_register_keeps_no_hold_on_the_shared_attenuation_buffer(frames_512):
    """At working factor 1 (a 512² frame at 0.59 mm) the working image is the shared
    attenuation buffer itself; the stage must not write a later frame (a 1024² run at 0.29
    mm, working size 512²) into it: a stage one frame behind still reads it."""
    from sifluoro import imaging
    from sifluoro.register.stage import JointStage
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    big = next(f for f, _ in sim_frames(simulate_case(2026, 1, size=1024, quick=True)))
    stage = JointStage()
    state = Pipeline([stage], NO_DEADLINE).start_study("1.2")
    stage.process(frames_512[0], state)
    held = state.stage_state["attenuation"][1]
    before = held.copy()
    imaging.swap_attenuation_buffer(state.stage_state, None)  # as process_frames does
    stage.process(big, state)
    assert np.array_equal(held, before)
