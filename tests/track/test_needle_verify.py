"""A new needle track on a study's scout (sifluoro.track.needle_verify)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from sifluoro.pipeline import Pipeline
from sifluoro.track.needle import NeedleStage
from sifluoro.track.needle_verify import ScoutGate, ScoutSettings
from tests.track.test_needle_stage import (_background, _draw_polyline, _frame, _needle_points,
                                          _run)

TARGET = np.array([500.0, 500.0])
CENTRE = np.array([200.0, 200.0])


def test_on_the_scout_only_a_tip_near_the_target_starts_a_track():
    gate = ScoutGate(ScoutSettings(scout_target_mm=20.0))
    scout, needle_run = object(), object()
    gate.enter(scout)
    assert gate.on_scout
    assert gate.allows(TARGET + [19.0, 0.0], 1.0, TARGET, CENTRE)
    assert not gate.allows(TARGET + [21.0, 0.0], 1.0, TARGET, CENTRE)
    assert not gate.allows(TARGET + [11.0, 0.0], 2.0, TARGET, CENTRE)  # 22 mm
    # without a register target, the field centre
    assert gate.allows(CENTRE + [0.0, 19.0], 1.0, None, CENTRE)
    assert not gate.allows(TARGET, 1.0, None, CENTRE)
    # the next run is not a scout, nor is the scout's run once another was seen
    gate.enter(needle_run)
    assert not gate.on_scout and gate.allows(TARGET + [90.0, 0.0], 1.0, TARGET, CENTRE)
    gate.enter(scout)
    assert gate.on_scout
    two = ScoutGate(ScoutSettings(scout_runs=2))
    for run in (scout, needle_run):
        two.enter(run)
        assert two.on_scout
    off = ScoutGate(ScoutSettings(scout_runs=0))
    off.enter(scout)
    assert not off.on_scout and off.allows(TARGET + [90.0, 0.0], 1.0, TARGET, CENTRE)


def _line_study(stage: NeedleStage, tip, frames_per_run=3, runs=2) -> list[dict]:
    """``runs`` runs of a study showing the same needle-like line (a skin marker's shape)."""
    state = Pipeline([stage]).start_study("1.2")
    outs = []
    for r in range(runs):
        run = _run(f"1.2.5.{r}")
        for k in range(frames_per_run):
            img = _background(7 + 10 * r + k)
            _draw_polyline(img, _needle_points(tip, np.array([120.0, 511.0])), 0.05, 1.8)
            outs.append(stage.process(_frame(img, run, frames_per_run * r + k), state))
    return outs


def test_a_needle_like_line_far_from_the_joint_is_not_taken_on_the_scout():
    far = np.array([180.0, 380.0])  # about 75 mm from the field centre
    outs = _line_study(NeedleStage(), far)
    assert all(o["needle"] is None for o in outs[:3])  # the scout
    assert outs[-1]["needle"] is not None  # the next run: a needle may be in now
    # without the scout check the same line is a needle from the scout's second frame on
    plain = _line_study(NeedleStage(scout=ScoutSettings(scout_runs=0)), far)
    assert plain[1]["needle"] is not None and plain[-1]["needle"] is not None


def test_a_needle_near_the_joint_on_the_first_run_is_taken():
    outs = _line_study(NeedleStage(), np.array([262.3, 251.6]), runs=1)
    assert all(o["needle"] is not None for o in outs[1:])


def test_a_scout_without_a_joint_makes_the_next_run_a_scout_too():
    gate = ScoutGate(ScoutSettings(scout_runs=1, jointless_scouts=1))
    wrong, scout, needle_run, later = object(), object(), object(), object()
    gate.enter(wrong, False)  # a wrong-level scout: the register stage finds no joint
    assert gate.on_scout
    gate.enter(scout, True)
    assert gate.on_scout and not gate.allows(TARGET + [30.0, 0.0], 1.0, TARGET, CENTRE)
    gate.enter(needle_run, True)
    assert not gate.on_scout
    # a first run showing the joint on any of its searches: the next run is no scout
    seen = ScoutGate(ScoutSettings(scout_runs=1))
    seen.enter(scout, False)
    seen.enter(scout, True)
    seen.enter(needle_run, False)
    assert not seen.on_scout
    # at most jointless_scouts such runs are added
    capped = ScoutGate(ScoutSettings(scout_runs=1, jointless_scouts=1))
    for run in (wrong, scout):
        capped.enter(run, False)
        assert capped.on_scout
    capped.enter(needle_run, False)
    assert not capped.on_scout


def test_a_line_far_from_the_joint_on_the_scout_after_a_wrong_level_scout_is_not_taken():
    far = np.array([180.0, 380.0])  # about 75 mm from the field centre
    stage = NeedleStage()
    state = Pipeline([stage]).start_study("1.3")
    outs = []
    for r in range(3):
        run = _run(f"1.3.5.{r}")
        # run 0 shows no joint (no register target); the others show it at the field centre
        register = SimpleNamespace(target_xy=None if r == 0 else [256.0, 256.0])
        for k in range(3):
            img = _background(7 + 10 * r + k)
            if r > 0:
                _draw_polyline(img, _needle_points(far, np.array([120.0, 511.0])), 0.05, 1.8)
            state.stage_state["register"] = register
            outs.append(stage.process(_frame(img, run, 3 * r + k), state))
    assert all(o["needle"] is None for o in outs[:6])  # the two scouts
    assert outs[-1]["needle"] is not None  # the next run: a needle may be in now


def _free_line_study(stage: NeedleStage, shifts, length_px=(100.0, 100.0), frames_per_run=3):
    """A study whose runs show one line free at both ends (a skin marker's shape: 50 mm,
    needle-thin), moved by ``shifts[r]`` on run ``r`` (the view or the table moved), its length
    ``length_px[r]``; the first run is the scout (no register: its check measures from the
    field centre, 75 mm away)."""
    state = Pipeline([stage]).start_study("1.2")
    outs = []
    u = np.array([0.6, -0.8])
    for r, (shift, n_px) in enumerate(zip(shifts, length_px)):
        run = _run(f"1.2.6.{r}")
        base = np.array([140.0, 470.0]) + np.asarray(shift, float)
        for k in range(frames_per_run):
            img = _background(17 + 10 * r + k)
            _draw_polyline(img, _needle_points(base + u * n_px, base), 0.05, 1.8)
            outs.append(stage.process(_frame(img, run, frames_per_run * r + k), state))
    return outs, state


def test_a_line_the_scout_showed_does_not_start_a_track_later():
    """A line free at both ends that the scout showed (and did not take) is a rigid object:
    on a later run, moved with the view, with its length and axis it does not start a track
    (``scout_line_mm``); with the rule off it is taken, and a line of another length (a needle
    pushed in since) is taken too."""
    from dataclasses import replace

    from sifluoro.track.needle_detect import NeedleSettings

    stage = NeedleStage()
    assert stage.settings.scout_line_mm == 2.5
    outs, state = _free_line_study(stage, [(0, 0), (40, -15)])
    assert all(o["needle"] is None for o in outs[:3])  # the scout
    assert state.stage_state["needle"].scout_lines
    # its first frame (one noisy frame: the length 4.5 mm off) may start a track, not hold it
    assert all(o["needle"] is None for o in outs[4:])
    off = NeedleStage(needle=replace(NeedleSettings(), scout_line_mm=0.0))
    outs_off, _ = _free_line_study(off, [(0, 0), (40, -15)])
    assert all(o["needle"] is None for o in outs_off[:3])
    assert outs_off[-1]["needle"] is not None
    # 8 mm longer on the next run: not the scout's line
    longer, _ = _free_line_study(NeedleStage(), [(0, 0), (40, -15)], length_px=(100.0, 116.0))
    assert longer[-1]["needle"] is not None
