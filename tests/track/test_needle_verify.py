"""A new needle track on a study's scout (sifluoro.track.needle_verify)."""
from __future__ import annotations

import numpy as np

from sifluoro.pipeline import Pipeline
from sifluoro.track.needle import NeedleStage
from sifluoro.track.needle_verify import ScoutGate, ScoutSettings, same_line
from tests.track.test_needle_stage import (_background, _draw_polyline, _frame, _needle_points,
                                          _run)

U = np.array([1.0, 0.0])
TARGET = np.array([500.0, 500.0])
SAME_VIEW = lambda run: True  # noqa: E731


def test_same_line_needs_direction_offset_and_reach():
    tip = np.array([100.0, 100.0])
    assert same_line(tip + [4.0, 2.0], U, tip, U, 1.0, 8.0, 3.0, 6.0)
    assert not same_line(tip + [4.0, 4.0], U, tip, U, 1.0, 8.0, 3.0, 6.0)  # beside it
    assert not same_line(tip + [7.0, 0.0], U, tip, U, 1.0, 8.0, 3.0, 6.0)  # further along
    assert not same_line(tip, np.array([np.cos(0.2), np.sin(0.2)]), tip, U, 1.0, 8.0, 3.0, 6.0)
    assert not same_line(tip + [4.0, 2.0], U, tip, U, 2.0, 8.0, 3.0, 6.0)  # in mm


def test_on_the_scout_only_a_tip_near_the_target_starts_a_track():
    gate = ScoutGate(ScoutSettings(scout_target_mm=20.0))
    scout = object()
    gate.enter(scout)
    assert gate.on_scout
    assert gate.allows(TARGET + [19.0, 0.0], U, 1.0, TARGET, SAME_VIEW)
    assert not gate.allows(TARGET + [21.0, 0.0], U, 1.0, TARGET, SAME_VIEW)
    assert not gate.allows(TARGET + [11.0, 0.0], U, 2.0, TARGET, SAME_VIEW)  # 22 mm
    off = ScoutGate(ScoutSettings(scout_runs=0))
    off.enter(scout)
    assert not off.on_scout and off.allows(TARGET + [90.0, 0.0], U, 1.0, TARGET, SAME_VIEW)


def test_after_the_scout_a_line_the_scout_refused_is_not_a_new_needle():
    gate = ScoutGate(ScoutSettings(scout_target_mm=20.0, static_min_prob=0.5))
    scout, needle_run = object(), object()
    marker, weak, near = TARGET + [60.0, 0.0], TARGET + [0.0, 60.0], TARGET + [5.0, 0.0]
    gate.enter(scout)
    gate.searched([(marker, U, 0.9), (weak, U, 0.3), (near, U, 0.9)], 1.0, TARGET)
    gate.enter(needle_run)
    assert not gate.on_scout
    assert not gate.allows(marker + [3.0, 1.0], U, 1.0, TARGET, SAME_VIEW)
    assert gate.allows(marker + [10.0, 0.0], U, 1.0, TARGET, SAME_VIEW)  # advanced along it
    assert gate.allows(weak, U, 1.0, TARGET, SAME_VIEW)  # too weak to be remembered
    assert gate.allows(near, U, 1.0, TARGET, SAME_VIEW)  # the scout may have taken it
    assert gate.allows(marker, U, 1.0, TARGET, lambda run: run is not scout)  # another view
    # a run seen again later is not a scout again
    gate.enter(scout)
    assert gate.on_scout
    gate.enter(needle_run)
    assert not gate.on_scout


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


def test_a_needle_like_line_far_from_the_joint_on_the_scout_is_never_taken():
    far = np.array([180.0, 380.0])  # about 75 mm from the field centre
    outs = _line_study(NeedleStage(), far)
    assert all(o["needle"] is None for o in outs)
    # without the scout checks the same line is a needle from the run's second frame on
    plain = _line_study(NeedleStage(scout=ScoutSettings(scout_runs=0)), far)
    assert plain[1]["needle"] is not None and plain[-1]["needle"] is not None


def test_a_needle_near_the_joint_on_the_first_run_is_taken():
    outs = _line_study(NeedleStage(), np.array([262.3, 251.6]), runs=1)
    assert outs[0]["needle"] is None and outs[-1]["needle"] is not None
