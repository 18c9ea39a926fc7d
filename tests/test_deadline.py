"""The deadline policy: plan each frame's image work from the stages' recent costs, degrade in
the stated order (contrast skipped, needle in its ROI, joint reused), never skip dose.

Most tests run on a simulated clock that only the fake stages advance, so every cost, every
plan and every latency is exact; the last ones run the real stages on a simulated study.
"""
from __future__ import annotations

import numpy as np
import pytest

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import Settings
from sifluoro.pipeline import DEGRADATION_ORDER, Pipeline, StageCosts
from tests.dicom_fixtures import RunSpec, technique, write_study

ORDER = [d.step for d in DEGRADATION_ORDER]


class Clock:
    """Simulated time: only the fake stages move it."""

    def __init__(self):
        self.t_s = 0.0

    def __call__(self) -> float:
        return self.t_s

    def spend(self, ms: float) -> None:
        self.t_s += ms / 1000.0


class FakeStage:
    """A stage of known cost; ``cheap`` names its degraded method (``process_roi`` /
    ``process_reuse``) and ``cheap_ms`` that method's cost."""

    def __init__(self, name: str, clock: Clock, cost_ms: float, *, cheap: str | None = None,
                 cheap_ms: float = 0.0, fields: dict | None = None):
        self.name, self.clock, self.cost_ms, self.cheap_ms = name, clock, cost_ms, cheap_ms
        self.fields = fields or {}
        self.calls: list[tuple[str, int]] = []
        if cheap is not None:
            setattr(self, cheap, lambda frame, state: self._run(cheap, frame, self.cheap_ms))

    def process(self, frame, state):
        return self._run("process", frame, self.cost_ms)

    def _run(self, method: str, frame, cost_ms: float) -> dict:
        self.calls.append((method, frame.index))
        self.clock.spend(cost_ms)
        return {k: dict(v) if isinstance(v, dict) else v for k, v in self.fields.items()}


def _stages(clock, register_ms=4.0, needle_ms=4.0, contrast_ms=4.0):
    return [FakeStage("register", clock, register_ms, cheap="process_reuse", cheap_ms=0.1,
                      fields={"joint": {"polyline_xy": [[0, 0], [1, 1]]}}),
            FakeStage("needle", clock, needle_ms, cheap="process_roi", cheap_ms=0.5,
                      fields={"needle": {"tip_xy": [1.0, 1.0], "confidence": 0.9}}),
            FakeStage("contrast", clock, contrast_ms,
                      fields={"contrast": {"state": "intra_articular", "confidence": 0.8}})]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """24 frames of two runs with reported dose (0.05 Gy·cm², 0.5 mGy per frame)."""
    folder = tmp_path_factory.mktemp("study")
    tech = technique(reported_dap_gycm2=0.6, reported_air_kerma_mgy=6.0)
    write_study(folder, [RunSpec(0.0, n_frames=12, tech=tech), RunSpec(20.0, n_frames=12, tech=tech)])
    return list(iter_frames(read_study([folder]), []))


def _run(stages, clock, frames, budget_ms, *, prepare=True, run_start_frames=0,
         max_skipped_frames=10**6):
    """Fake stages cost the same on every frame: by default no frame is a costly run start, and
    a stage may be skipped on any number of frames in a row (the order alone is tested)."""
    pipeline = Pipeline(stages, Settings(latency_budget_ms=budget_ms, run_start_frames=run_start_frames,
                                         max_skipped_frames=max_skipped_frames), clock=clock)
    state = pipeline.start_study("1.2.3")
    if prepare:  # frame shapes never prepared are not planned
        for run in {f.run.sop_instance_uid: f.run for f in frames}.values():
            pipeline.prepare_run(run, state)
    return pipeline, state, [pipeline.process(f, state) for f in frames]


def test_a_frame_that_misses_the_deadline_is_degraded_and_its_dose_counted(frames):
    clock = Clock()
    _, state, events = _run([FakeStage("slow", clock, 15.0)], clock, frames[:12], 10.0)
    assert [e["latency_ms"] for e in events] == [15.0] * 12
    assert all(e["degraded"] for e in events)
    assert all("degraded_steps" not in e for e in events)  # a stage without steps runs whole
    assert events[-1]["dose"]["dap_gycm2"] == pytest.approx(0.6)
    assert events[-1]["dose"]["air_kerma_mgy"] == pytest.approx(6.0)
    assert [e["dose"]["air_kerma_mgy"] for e in events] == pytest.approx([0.5 * (i + 1) for i in range(12)])
    assert state.degraded_frames == 12


def test_a_stage_whose_turn_comes_after_the_deadline_is_skipped(frames):
    """Two stages without steps, each dearer than the budget: the first runs whole, the
    second finds the budget spent and is skipped; the dose is counted all the same."""
    clock = Clock()
    first, second = FakeStage("first", clock, 4.0), FakeStage("second", clock, 4.0)
    _, state, events = _run([first, second], clock, frames[:4], 2.0)
    assert [e["skipped_stages"] for e in events] == [["second"]] * 4
    assert [e["latency_ms"] for e in events] == [4.0] * 4
    assert all(e["degraded"] for e in events) and state.degraded_frames == 4
    assert [c[1] for c in first.calls] == [0, 1, 2, 3] and second.calls == []
    assert [e["dose"]["air_kerma_mgy"] for e in events] == pytest.approx([0.5, 1.0, 1.5, 2.0])


@pytest.mark.parametrize("budget_ms, steps", [
    (13.0, []),                                            # 12 ms fits
    (10.0, ORDER[:1]),                                     # 8 ms without contrast
    (6.0, ORDER[:2]),                                      # 4.5 ms: needle in its ROI
    (2.0, ORDER),                                          # 0.6 ms: joint reused as well
])
def test_degradation_follows_the_stated_order(frames, budget_ms, steps):
    clock = Clock()
    stages = _stages(clock)
    frames = frames[:16]  # before the estimates grow stale (see test_a_stale_estimate_...)
    _, _, events = _run(stages, clock, frames, budget_ms)
    # the first frames measure the stages: a stage of unknown cost is not degraded (skipping it
    # would save nothing known) but runs and is measured, three frames each; the plan then holds
    first = 9
    planned = events[first:]
    assert all(e.get("degraded_steps", []) == steps for e in planned)
    assert all(e["degraded"] == bool(steps) for e in planned)
    assert all(e["latency_ms"] <= budget_ms for e in planned)
    register, needle, contrast = stages
    later = set(range(first, len(frames)))
    assert {i for m, i in register.calls if i >= first and m == "process_reuse"} == (
        later if "joint_reused" in steps else set())
    assert {i for m, i in needle.calls if i >= first and m == "process_roi"} == (
        later if "needle_roi" in steps else set())
    assert {i for m, i in contrast.calls if i >= first} == (set() if "contrast_skipped" in steps
                                                            else later)
    if "contrast_skipped" in steps:
        assert all(e["skipped_stages"] == ["contrast"] for e in planned)
    # dose is never skipped
    assert events[-1]["dose"]["dap_gycm2"] == pytest.approx(0.8)


@pytest.mark.parametrize("max_skipped", [0, 1, 2])
def test_contrast_is_not_skipped_more_than_the_allowed_frames_in_a_row(frames, max_skipped):
    """10 ms of budget, 12 ms of work: contrast would be skipped on every planned frame; it
    runs after ``max_skipped`` skips instead, with the needle in its ROI to make room."""
    clock = Clock()
    stages = _stages(clock)
    _, state, events = _run(stages, clock, frames[:16], 10.0, max_skipped_frames=max_skipped)
    planned = events[3:]  # three frames measure the stages
    ran = ["contrast" not in e.get("skipped_stages", ()) for e in planned]
    expected = [(i + 1) % (max_skipped + 1) == 0 for i in range(len(planned))]
    assert ran == expected
    for e, contrast_ran in zip(planned, ran):
        assert e["degraded_steps"] == (["needle_roi"] if contrast_ran else ["contrast_skipped"])
        assert e["latency_ms"] == pytest.approx(8.5 if contrast_ran else 8.0)
    assert state.skipped_in_a_row["contrast"] == len(planned) - 1 - max(i for i, r in enumerate(ran) if r)
    assert events[-1]["dose"]["dap_gycm2"] == pytest.approx(0.8)


def test_a_due_contrast_runs_even_when_the_budget_is_spent(frames):
    clock = Clock()
    register, needle, contrast = _stages(clock, register_ms=12.0)
    _, _, events = _run([register, needle, contrast], clock, frames[:2], 10.0, max_skipped_frames=1)
    assert [e["skipped_stages"] if "skipped_stages" in e else [] for e in events] == [["contrast"], []]
    assert events[1]["degraded_steps"] == ["needle_roi"] and events[1]["degraded"]
    assert events[1]["contrast"]["state"] == "intra_articular"


def test_skipped_contrast_carries_its_state_over(frames):
    clock = Clock()
    _, state, events = _run(_stages(clock), clock, frames[:8], 10.0)
    assert [e["contrast"] for e in events[3:]] == [{"state": "intra_articular", "confidence": 0.8}] * 5
    assert state.contrast_state == "intra_articular"


def test_steps_of_absent_stages_are_absent_from_the_plan(frames):
    clock = Clock()
    register, needle, _ = _stages(clock, register_ms=3.0, needle_ms=3.0)
    # needle before register in the pipeline: the steps still come in the stated order
    _, _, events = _run([needle, register], clock, frames[:9], 3.2)
    # frames 3-5 measure the ROI mode (3.5 ms: over); from then on the joint is reused too
    assert [e["degraded_steps"] for e in events[3:]] == [["needle_roi"]] * 3 + [ORDER[1:]] * 3
    assert [e["latency_ms"] for e in events[3:]] == pytest.approx([3.5] * 3 + [0.6] * 3)
    register = _stages(clock, register_ms=6.0)[0]
    _, _, events = _run([register], clock, frames[:8], 5.0)
    assert all(e["degraded_steps"] == ["joint_reused"] for e in events[3:])


def test_a_spent_budget_degrades_the_remaining_stages_at_once(frames):
    """No estimate yet (first frame): the joint costs the whole budget; the needle then runs in
    its ROI, the contrast and a stage without a step are skipped."""
    clock = Clock()
    register, needle, contrast = _stages(clock, register_ms=12.0)
    extra = FakeStage("overlay", clock, 1.0)
    _, _, events = _run([register, needle, contrast, extra], clock, frames[:1], 10.0)
    event = events[0]
    assert event["degraded_steps"] == ["contrast_skipped", "needle_roi"]
    assert event["skipped_stages"] == ["contrast", "overlay"]
    assert event["needle"] == {"tip_xy": [1.0, 1.0], "confidence": 0.9}
    assert event["latency_ms"] == pytest.approx(12.5)
    assert event["dose"]["dap_gycm2"] == pytest.approx(0.05)


def test_a_stale_estimate_is_measured_again(frames):
    """Skipped since its 3rd frame, the contrast runs again once its estimate is 16 frames old
    (the machine may be less busy now), and is then skipped again."""
    clock = Clock()
    contrast = FakeStage("contrast", clock, 12.0)
    _run([contrast], clock, frames, 10.0)
    assert [i for _, i in contrast.calls] == [0, 1, 2, 19]


def test_a_failing_stage_is_listed_and_its_cost_counted(frames):
    clock = Clock()

    class Broken(FakeStage):
        def process(self, frame, state):
            self.clock.spend(3.0)
            raise IndexError("defect")

    pipeline, state, events = _run([Broken("needle", clock, 3.0)], clock, frames[:4], 10.0)
    assert all(e["failed_stages"] == ["needle"] and e["degraded"] for e in events)
    assert pipeline.stage_costs()["needle/process/64x64"]["p50_ms"] == pytest.approx(3.0)
    assert events[-1]["dose"]["dap_gycm2"] == pytest.approx(0.2)


def test_stage_costs_quantiles_and_staleness():
    costs = StageCosts(window=4, min_samples=3, stale_frames=2)
    shape = (8, 8)
    for ms in (1.0, 2.0):
        costs.new_frame(shape)
        costs.add("s", "process", shape, ms)
    assert costs.estimate_ms("s", "process", shape) is None  # too few costs
    for ms in (3.0, 4.0, 100.0):  # the window keeps the last 4: 2, 3, 4, 100
        costs.new_frame(shape)
        costs.add("s", "process", shape, ms)
    assert costs.estimate_ms("s", "process", shape) == 3.0  # the median, not the outlier
    assert costs.snapshot()["s/process/8x8"] == {"p50_ms": 3.0, "p75_ms": 4.0, "p90_ms": 100.0, "n": 4}
    for _ in range(3):
        costs.new_frame(shape)
    assert costs.estimate_ms("s", "process", shape) is None  # not measured for 3 frames



def test_stage_costs_kept_sorted_match_sorting_the_window():
    """The window's costs are kept sorted as they come and go: the quantiles are those of
    sorting the window anew (repeated costs included)."""
    import math
    from collections import deque

    rng = np.random.default_rng(5)
    costs = StageCosts(window=7, min_samples=1, stale_frames=10 ** 6)
    window: deque = deque(maxlen=7)
    for ms in np.round(rng.exponential(2.0, 300), 1):  # rounded: many equal costs
        costs.new_frame((4, 4))
        costs.add("s", "process", (4, 4), float(ms))
        window.append(float(ms))
        ordered = sorted(window)
        want = [ordered[max(0, math.ceil(q * len(ordered)) - 1)] for q in (0.5, 0.75, 0.9)]
        got = costs.snapshot()["s/process/4x4"]
        assert [got["p50_ms"], got["p75_ms"], got["p90_ms"]] == [round(v, 4) for v in want]
        assert got["n"] == len(window)

# --- the real stages on a simulated study -----------------------------------------------------

@pytest.fixture(scope="module")
def sim():
    """Seed 2026 case 1, quick (512², 13 frames, needle seen on every frame, vascular)."""
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    return list(sim_frames(simulate_case(2026, 1, quick=True)))


def _real_stages(needle_settings=None):
    from sifluoro.register.stage import JointStage
    from sifluoro.track.contrast import ContrastStage
    from sifluoro.track.needle import NeedleStage

    return [JointStage(), NeedleStage(needle=needle_settings), ContrastStage()]


def _real_run(frames, budget_ms, needle_settings=None):
    pipeline = Pipeline(_real_stages(needle_settings),
                        Settings(latency_budget_ms=budget_ms))  # contrast every other frame
    state = pipeline.start_study("sim")
    for run in {f.run.sop_instance_uid: f.run for f in frames}.values():
        pipeline.prepare_run(run, state)
    return state, [pipeline.process(f, state) for f in frames]


def test_real_stages_with_a_tiny_budget_degrade_every_frame_and_count_all_dose(sim):
    """(The needle's due searches put off without limit: the next test has the limit.)"""
    from sifluoro.track.needle_detect import NeedleSettings

    frames = [f for f, _ in sim]
    full_state, full = _real_run(frames, 1e9)
    tiny_state, tiny = _real_run(frames, 1e-3, NeedleSettings(max_deferred_searches=10**6))
    assert not any(e["degraded"] for e in full) and all(e["needle"] for e in full)
    assert all(e["degraded"] for e in tiny)
    # a run's first frame has no joint line to reuse (its exposed field is new): the joint
    # runs as usual there, and is reused on every other frame; the contrast update is skipped
    # every other frame, but not on a run's first frame (there is no run to remember the frame
    # in: the stage runs, and only seeds its reference) nor, after the study's first run, its
    # second (it checks the pose's reference against the run's own first frame); the needle
    # step declines until there is a needle to follow (the field is searched), then follows it
    skipped: list[bool] = []
    for f in frames:
        checks = f.frame_number == 2 and f.run is not frames[0].run
        skipped.append(f.frame_number != 1 and not checks and not (skipped and skipped[-1]))
    followed = [False] + [bool(e["needle"]) for e in tiny[:-1]]
    assert [e.get("degraded_steps", []) for e in tiny] == [
        [s for s in (ORDER[:2] if f.frame_number == 1 else ORDER)
         if (skip or s != "contrast_skipped") and (follow or s != "needle_roi")]
        for f, skip, follow in zip(frames, skipped, followed)]
    assert all(e["joint"] for e in tiny)
    assert sum(bool(e["needle"]) for e in tiny) >= len(frames) - 1  # found at once, then followed
    assert [e.get("skipped_stages") == ["contrast"] for e in tiny] == skipped
    assert [e["dose"] for e in tiny] == [e["dose"] for e in full]
    assert tiny_state.dose.totals == full_state.dose.totals
    assert tiny_state.degraded_frames == len(frames)


@pytest.mark.parametrize("max_deferred", [0, 1])
def test_a_due_needle_search_is_put_off_on_at_most_the_allowed_frames(sim, max_deferred):
    """With a tiny budget, the needle's step follows the tip, but a due full search (a run's
    first frames, the periodic one) is put off on ``max_deferred_searches`` frames at most
    (none by default): the next frame searches."""
    from sifluoro.track.needle import NeedleStage
    from sifluoro.track.needle_detect import NeedleSettings

    frames = [f for f, _ in sim]
    searched, roi = [], []
    process, process_roi = NeedleStage.process, NeedleStage.process_roi

    def spy(self, frame, state):
        searched.append((frame.index, self.work_kind(frame, state) == "search"))
        return process(self, frame, state)

    def spy_roi(self, frame, state):
        due = self.work_kind(frame, state) == "search"
        out = process_roi(self, frame, state)
        roi.append((frame.index, due, out is None))
        return out

    NeedleStage.process, NeedleStage.process_roi = spy, spy_roi
    try:
        _, tiny = _real_run(frames, 1e-3, NeedleSettings(max_deferred_searches=max_deferred))
    finally:
        NeedleStage.process, NeedleStage.process_roi = process, process_roi
    put_off = [i for i, due, declined in roi if due and not declined]
    assert any(due for _, due, _ in roi) and any(not due for _, due, _ in roi)
    if max_deferred == 0:
        assert not put_off
        return
    assert put_off  # the step did put a search off
    searches = {i for i, search in searched if search}
    assert all(i + 1 in searches for i in put_off if i + 1 < len(frames))
    assert all("needle_roi" not in tiny[i + 1].get("degraded_steps", ())
               for i in put_off if i + 1 < len(frames))


def test_real_stages_degrade_in_order_whatever_the_timing(sim):
    """On a shared machine the plan of each frame varies; the steps taken are listed in the
    policy's order (one may be missing: the needle's step declines when there is no tip to
    follow, and the stage then runs as usual), and a due contrast (skipped on the previous
    frame) is not skipped again."""
    frames = [f for f, _ in sim]
    _, events = _real_run(frames, 6.0)
    for before, e in zip([{}] + events, events):
        steps = e.get("degraded_steps", [])
        assert steps == sorted(set(steps), key=ORDER.index)
        if "contrast_skipped" in steps:
            assert "contrast_skipped" not in before.get("degraded_steps", [])


def test_needle_roi_follows_the_tip_found_by_the_full_search(sim):
    """After 4 frames of full search, the ROI mode alone follows the tip over the rest of the
    run: within 0.5 px of where the full search puts it, and near the true tip."""
    from sifluoro.register.stage import JointStage
    from sifluoro.track.needle import NeedleStage
    from sifluoro.track.needle_detect import NeedleSettings

    def tips(roi: bool):  # (the ROI step called on every frame puts off every due search)
        joint = JointStage()
        needle = NeedleStage(needle=NeedleSettings(max_deferred_searches=10**6))
        pipeline = Pipeline([joint, needle], Settings(latency_budget_ms=1e9))
        state = pipeline.start_study("sim")
        if roi:
            assert needle.process_roi(sim[0][0], state) is None  # nothing to follow: declined
        for frame, _ in sim[:4]:
            pipeline.process(frame, state)
        out = []
        for frame, _ in sim[4:]:
            joint.process(frame, state)
            out.append((needle.process_roi if roi else needle.process)(frame, state)["needle"]["tip_xy"])
        return np.array(out)

    roi, full = tips(True), tips(False)
    assert np.hypot(*(roi - full).T).max() < 0.5
    truth = np.array([t.tip_xy for _, t in sim[4:]])
    assert np.hypot(*(roi - truth).T).max() < 4.0


def test_joint_reuse_moves_the_line_by_registration_only(sim):
    """Reused on frame 5, the line is where the full update puts it (frame 5 neither segments
    nor changes view), and the frame is not added to the view's average."""
    from sifluoro.register.stage import JointStage

    def run(reuse: bool):
        joint = JointStage()
        state = Pipeline([joint]).start_study("sim")
        if reuse:
            assert joint.process_reuse(sim[0][0], state) is None  # nothing to reuse: declined
        for frame, _ in sim[:5]:
            joint.process(frame, state)
        event = (joint.process_reuse if reuse else joint.process)(sim[5][0], state)
        return event, state.stage_state["register_views"].current.frames

    (reused, n_reused), (full, n_full) = run(True), run(False)
    assert reused["joint"] is not None and reused["target"] is not None
    assert reused == full
    assert (n_reused, n_full) == (5, 6)


def test_a_declined_step_runs_the_stage_as_usual(frames):
    clock = Clock()
    register = FakeStage("register", clock, 6.0, fields={"joint": {"polyline_xy": [[0, 0]]}})
    register.process_reuse = lambda frame, state: None  # never anything to reuse
    pipeline, _, events = _run([register], clock, frames[:6], 5.0)
    assert all("degraded_steps" not in e and e["joint"] for e in events)
    assert [m for m, _ in register.calls] == ["process"] * 6
    # what the step costs when it declines is learnt: the plan stops counting on it
    assert pipeline.stage_costs()["register/process_reuse/64x64"]["p50_ms"] == 6.0


def test_unprepared_frame_shapes_are_not_planned(frames):
    """Without prepare_run the costs include warm-up: only the budget-spent rule applies."""
    clock = Clock()
    pipeline, _, events = _run(_stages(clock), clock, frames[:8], 10.0, prepare=False)
    assert all("degraded_steps" not in e and e["latency_ms"] == 12.0 for e in events)
    assert pipeline.stage_costs() == {}


def test_a_runs_costly_first_frames_do_not_degrade_the_rest(frames):
    """A stage that segments on a run's first two frames (25 ms) and then updates (2 ms): with
    the default ``run_start_frames`` those two frames go over the budget, the others run in
    full; if the planner learnt from them it would degrade the common frames."""
    clock = Clock()

    class Segmenting(FakeStage):
        def process(self, frame, state):
            self.clock.spend(25.0 if frame.frame_number <= 2 else 2.0)
            self.calls.append(("process", frame.index))
            return {}

        def process_reuse(self, frame, state):
            self.clock.spend(0.5)
            self.calls.append(("process_reuse", frame.index))
            return {}

    stage = Segmenting("register", clock, 0.0)
    _, _, events = _run([stage], clock, frames, 10.0, run_start_frames=2)
    assert [e["degraded"] for e in events] == [f.frame_number <= 2 for f in frames]
    assert all("degraded_steps" not in e for e in events)
    stage = Segmenting("register", clock, 0.0)
    _, _, events = _run([stage], clock, frames, 10.0, run_start_frames=0)
    assert sum("degraded_steps" in e for e in events) > len(frames) // 2


def test_needle_roi_uses_the_box_of_a_followed_needle(sim):
    """Under the deadline a needle followed in its box is followed there (from the anchor of the
    run's full searches), as the stage itself does between full searches; the tip is that of
    the full stage on the same frame. (Due searches put off without limit.)"""
    from sifluoro.register.stage import JointStage
    from sifluoro.track.needle import NeedleStage
    from sifluoro.track.needle_detect import NeedleSettings

    def run(roi_from: int):
        joint = JointStage()
        needle = NeedleStage(needle=NeedleSettings(max_deferred_searches=10**6))
        pipeline = Pipeline([joint, needle], Settings(latency_budget_ms=1e9))
        state = pipeline.start_study("sim")
        tips, boxed = [], []
        for k, (frame, _) in enumerate(sim):
            if k < roi_from:
                out = pipeline.process(frame, state)
            else:
                joint.process(frame, state)
                st = state.stage_state["needle"]
                ready, before = needle._box_ready(st, frame), st.since_full
                out = needle.process_roi(frame, state)
                boxed.append(ready and st.since_full == before + 1)
            tips.append(out["needle"]["tip_xy"])
        return np.array(tips), boxed

    full, _ = run(len(sim))
    roi, boxed = run(5)
    assert boxed and all(boxed)  # every deadline frame went through the box
    assert np.hypot(*(roi[5:] - full[5:]).T).max() < 0.5


def test_needle_roi_without_a_needle_declines_unless_told_to_stay_cheap(sim):
    """With no needle to follow, the needle_roi step declines (the field is searched, a cold
    start over budget); ``search_when_unfollowed=False`` reports nothing instead."""
    from sifluoro.track.needle import NeedleStage
    from sifluoro.track.needle_detect import NeedleSettings

    frame = sim[0][0]
    state = Pipeline().start_study("sim")
    assert NeedleStage().process_roi(frame, state) is None
    cheap = NeedleStage(needle=NeedleSettings(search_when_unfollowed=False))
    assert cheap.process_roi(frame, state) == {"needle": None, "tip_to_target_mm": None}


def test_the_cost_after_a_remembered_frame_is_learnt_apart(frames):
    """A contrast update skipped (the frame only remembered) leaves the next frame a second
    vessel test to run: that frame's cost is learnt under ``process@after_skip``, so the usual
    ``process`` estimate, on which every frame is planned, stays the usual cost."""
    clock = Clock()
    register, needle, contrast = _stages(clock, register_ms=1.0, needle_ms=1.0, contrast_ms=4.0)
    contrast.process_remember = lambda frame, state: (clock.spend(0.5), {})[1]
    after = {}

    def process(frame, state):  # dearer right after a remembered frame
        owed = bool(contrast.calls) and contrast.calls[-1] == ("remembered", frame.index - 1)
        contrast.calls.append(("process", frame.index))
        clock.spend(8.0 if owed else 4.0)
        after[frame.index] = owed
        return {"contrast": {"state": "none", "confidence": 0.0}}
    contrast.process = process
    remember = contrast.process_remember
    contrast.process_remember = lambda frame, state: (contrast.calls.append(("remembered", frame.index)),
                                                      remember(frame, state))[1]
    slow = register.process
    register.process = lambda frame, state: (clock.spend(9.0) if frame.index in (10, 14) else None,
                                             slow(frame, state))[1]   # spends the budget
    pipeline, state, events = _run([register, needle, contrast], clock, frames[:16], 10.0,
                                   max_skipped_frames=1)
    assert [e.get("skipped_stages") for e in events[10:12]] == [["contrast"], None]
    assert after[11] and after[15] and not any(v for k, v in after.items() if k not in (11, 15))
    costs = pipeline.stage_costs()
    shape = "x".join(map(str, frames[0].pixels.shape))
    assert costs[f"contrast/process@after_skip/{shape}"]["p50_ms"] == 8.0
    assert costs[f"contrast/process/{shape}"]["p50_ms"] == 4.0


class SearchingNeedle(FakeStage):
    """A needle stage whose usual work is a field search (8 ms) on a run's first two frames
    and on every 8th frame, else a box (1 ms), as the real one; its ROI step (1 ms) puts off
    a due search on at most one frame in a row, then declines. ``kinds``: it tells the
    planner which work a frame holds (:meth:`work_kind`)."""

    def __init__(self, clock, kinds: bool):
        super().__init__("needle", clock, 0.0, fields={"needle": {"tip_xy": [1.0, 1.0]}})
        self.since_full, self.deferred, self.searched = 0, 0, []
        if kinds:
            self.work_kind = lambda frame, state: "search" if self._search_due(frame) else "box"

    def _search_due(self, frame) -> bool:
        return frame.frame_number <= 2 or self.since_full >= 7

    def process(self, frame, state):
        search = self._search_due(frame)
        self.since_full = 0 if search else self.since_full + 1
        self.deferred = 0 if search else self.deferred
        if search:
            self.searched.append(frame.index)
        return self._run("process", frame, 8.0 if search else 1.0)

    def process_roi(self, frame, state):
        if self._search_due(frame):
            if self.deferred >= 1:
                return None
            self.deferred += 1
        self.since_full += 1
        return self._run("process_roi", frame, 1.0)


@pytest.mark.parametrize("kinds", [True, False])
def test_the_needles_searches_and_box_frames_are_costed_apart(frames, kinds):
    """A 10 ms budget, joint 2.5 ms, contrast 4.7 ms: a box frame (8.2 ms) fits, a search
    (15.2 ms) does not. Learnt apart, box frames run as usual and a due search is put off one
    frame (needle_roi) and then runs; learnt as one cost, the run's first searches (8 ms) made
    every later frame look too dear and the needle stayed in its ROI step (the lock seen on a
    real 200-frame study), searching only when its step declined."""
    clock = Clock()
    needle = SearchingNeedle(clock, kinds)
    stages = [FakeStage("register", clock, 2.5, cheap="process_reuse", cheap_ms=0.1),
              needle, FakeStage("contrast", clock, 4.7, cheap="process_remember", cheap_ms=0.7)]
    pipeline, _, events = _run(stages, clock, frames, 10.0, max_skipped_frames=1)
    steps = [e.get("degraded_steps", []) for e in events]
    roi = [i for m, i in needle.calls if m == "process_roi"]
    if not kinds:
        assert len(roi) > len(frames) // 2
        return
    shape = "x".join(map(str, frames[0].pixels.shape))
    costs = pipeline.stage_costs()
    assert costs[f"needle/process:box/{shape}"]["p50_ms"] == 1.0
    assert costs[f"needle/process:search/{shape}"]["p50_ms"] == 8.0
    # the second run: its first search is put off one frame, the periodic one too; the box
    # frames between them run as usual
    second = [i for i, f in enumerate(frames) if f.run is frames[-1].run]
    assert roi == [second[0], second[9]]
    assert needle.searched[-2:] == [second[1], second[10]]
    box = [i for i in second if i not in (second[0], second[1], second[9], second[10])]
    assert all(steps[i] == [] for i in box) and all(not events[i]["degraded"] for i in box)


class DecliningNeedle(SearchingNeedle):
    """As the real needle by default: its ROI step declines whenever a search is due."""

    def process_roi(self, frame, state):
        if self._search_due(frame):
            return None
        self.since_full += 1
        return self._run("process_roi", frame, 1.0)


def test_a_step_that_declines_on_a_kind_of_work_is_not_counted_on(frames):
    """10 ms, joint 2.5 ms, a needle search 8 ms whose ROI step declines, contrast 4.7 ms (the
    study's frames three times over). While the declines are not yet measured, a search frame
    counts on the needle's step and misses (11.2 ms); once they are, it skips contrast and
    reuses the joint line (8.8 ms), or only reuses the joint when contrast may not be skipped
    twice in a row; box frames run in full (8.2 ms)."""
    clock = Clock()
    needle = DecliningNeedle(clock, kinds=True)
    stages = [FakeStage("register", clock, 2.5, cheap="process_reuse", cheap_ms=0.1),
              needle, FakeStage("contrast", clock, 4.7, cheap="process_remember", cheap_ms=0.7)]
    pipeline, _, events = _run(stages, clock, frames * 3, 10.0, max_skipped_frames=1)
    first = [(e["latency_ms"], tuple(e.get("degraded_steps", ()))) for e in events[:len(frames)]]
    assert (11.2, ("contrast_skipped",)) in first  # counted on the step, missed
    later = [(e["latency_ms"], tuple(e.get("degraded_steps", ()))) for e in events[len(frames):]]
    # an estimate not measured for 16 frames is measured again (StageCosts.stale_frames): the
    # step is then tried once more
    again = later.count((11.2, ("contrast_skipped",)))
    assert again <= len(later) // 16
    assert set(later) - {(11.2, ("contrast_skipped",))} == {
        (8.2, ()), (8.8, ("contrast_skipped", "joint_reused")), (12.8, ("joint_reused",))}
    assert later.count((8.8, ("contrast_skipped", "joint_reused"))) > 2 * again
    shape = "x".join(map(str, frames[0].pixels.shape))
    assert pipeline.stage_costs()[f"needle/process_roi:search/{shape}"]["p50_ms"] == 8.0


def test_a_failing_work_kind_is_logged_and_the_frame_runs(frames, caplog):
    clock = Clock()
    needle = FakeStage("needle", clock, 1.0, cheap="process_roi", cheap_ms=0.5)

    def broken(frame, state):
        raise KeyError("defect")
    needle.work_kind = broken
    pipeline, _, events = _run([needle], clock, frames[:5], 10.0)
    assert [m for m, _ in needle.calls] == ["process"] * 5
    assert not any(e["degraded"] for e in events)
    assert "work_kind failed" in caplog.text
    assert "needle/process/64x64" in pipeline.stage_costs()
