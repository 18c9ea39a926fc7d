"""The needle stage on an end-on needle (aimed along the beam: a dense dot near the target) and
on dot-like things that are not a needle (a clip, a bone island, burned-in text)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sifluoro.model import Frame
from sifluoro.pipeline import Pipeline
from sifluoro.register import RegisterResult
from sifluoro.sim.detector import burn_in
from sifluoro.track.needle import NeedleStage
from sifluoro.track.needle_verify import ScoutSettings

from .test_needle_stage import BITS, SPACING_MM, _background, _draw_polyline, _frame, _run

TARGET = (300.0, 200.0)


def _process_run(frames: list[Frame], target=TARGET, scout: ScoutSettings | None = None
                 ) -> list[dict]:
    stage = NeedleStage(scout=scout)
    state = Pipeline([stage]).start_study("1.2")
    out = []
    for frame in frames:
        state.stage_state["register"] = RegisterResult(None, 0.0, False, target, 5.0,
                                                       (0.0, 0.0), False)
        out.append(stage.process(frame, state))
    return out


def _frames(draw, seed: int, n: int = 3) -> list[Frame]:
    run = _run(f"1.2.7.{seed}")
    frames = []
    for i in range(n):
        img = _background(seed * 10 + i)
        draw(img)
        frames.append(_frame(img, run, i))
    return frames


def _dot(img: np.ndarray) -> None:
    # a 20 G needle along the beam, 2 mm off its line of sight at the ends: a dense streak
    _draw_polyline(img, np.array([[291.0, 207.0], [294.0, 209.0]]), 0.3, 1.8)


def test_end_on_dot_is_reported_at_the_dot_with_the_flag_and_lower_confidence():
    outs = _process_run(_frames(_dot, 1))
    assert outs[0]["needle"] is None  # one frame is not enough
    for out in outs[1:]:
        needle = out["needle"]
        assert needle is not None and needle["end_on"] is True
        assert needle["direction_xy"] is None and needle["advance_mm"] is None
        assert 0.0 < needle["confidence"] < 0.5
        assert math.dist(needle["tip_xy"], (292.5, 208.0)) * SPACING_MM < 1.5
        assert needle["length_mm"] < 6.0
        assert out["tip_to_target_mm"] == pytest.approx(
            math.dist(needle["tip_xy"], TARGET) * SPACING_MM, abs=0.01)


def test_end_on_dot_far_from_the_target_or_without_one_is_not_reported():
    far = _process_run(_frames(lambda img: _draw_polyline(
        img, np.array([[291.0, 247.0], [294.0, 249.0]]), 0.3, 1.8), 2))  # 24 mm from the target
    assert all(o["needle"] is None for o in far)
    none = _process_run(_frames(_dot, 3), target=None)
    assert all(o["needle"] is None for o in none)


def _clip(img: np.ndarray) -> None:
    # a surgical clip (legs 8 mm at the detector) with its apex 5 mm from the target
    apex = np.array([308.0, 205.0])
    for ang in (0.9, 1.5):
        _draw_polyline(img, np.array([apex, apex + 16.0 * np.array([math.cos(ang), math.sin(ang)])]),
                       0.25, 2.0)


def _island(img: np.ndarray) -> None:
    # a round bone island, 6 mm across, beside the target
    disc = np.zeros(img.shape, np.float32)
    cv2.circle(disc, (290, 196), 6, 1.0, -1)
    img += 0.1 * cv2.GaussianBlur(disc, (0, 0), 1.5)


def test_a_clip_or_a_bone_island_near_the_target_is_not_a_needle():
    for k, draw in enumerate((_clip, _island)):
        outs = _process_run(_frames(draw, 4 + k, n=4))
        assert all(o["needle"] is None for o in outs), draw.__name__


def test_burned_in_text_near_the_target_is_not_a_needle():
    run = _run("1.2.7.9")
    frames = []
    for i in range(3):
        frame = _frame(_background(90 + i), run, i)
        pixels = frame.pixels.copy()
        burn_in(pixels, ["2024-03-11 14:17:07", "87 kV  14.3 mA  7.5 p/s"], "R", BITS,
                "MONOCHROME2")
        frames.append(Frame(pixels=pixels, index=i, frame_number=1, t_s=0.0, run=run))
    # the target beside the text (its dots: the 'p/s', the decimal points)
    rows, cols = np.nonzero(frames[0].pixels > 0.95 * ((1 << BITS) - 1))
    near = (float(np.median(cols)), float(rows.min()) - 10.0)
    outs = _process_run(frames, target=near)
    assert all(o["needle"] is None for o in outs)


def test_no_dot_while_a_line_needle_is_followed():
    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    run = _run("1.2.7.11")
    frames = []
    for i in range(6):
        img = _background(110 + i)
        if i < 4:
            _draw_polyline(img, np.array([base, tip]), 0.05, 1.8)
        _dot(img)
        frames.append(_frame(img, run, i))
    # a needle run (its tip 32 mm from the target), not a scout
    outs = _process_run(frames, scout=ScoutSettings(scout_runs=0))
    assert all(o["needle"] is not None and o["needle"]["end_on"] is False for o in outs[1:4])
    # the line gone (out of the search), the dot is still not taken for the needle
    assert all(o["needle"] is None or o["needle"]["end_on"] is False for o in outs[4:])


def test_a_dot_on_a_probable_line_candidate_reports_the_candidate_tip():
    from types import SimpleNamespace

    from sifluoro.imaging import WorkingGrid
    from sifluoro.track.needle_dot import Dot

    grid = WorkingGrid(2, 0.5)  # 0.5 mm per working pixel
    stage = NeedleStage()

    def cand(tip, base, prob):
        return {"tip": np.array(tip, float), "base": np.array(base, float), "prob": prob}

    def tip_for(dot_xy, feats):
        st = SimpleNamespace(last_features=feats)
        ctx = SimpleNamespace(grid=grid)
        return stage._dot_on_line(st, ctx, Dot(np.array(dot_xy, float), 12.0, 2.0, 1.0, 4))

    line = cand((100.0, 50.0), (40.0, 50.0), 0.5)  # along +x, tip at x = 100
    got = tip_for((94.0, 50.5), [line])  # 3 mm behind the tip, 0.25 mm off the axis
    assert got is not None and np.allclose(got, grid.to_full(np.array([100.0, 50.0])))
    assert tip_for((94.0, 50.5), [cand((100.0, 50.0), (40.0, 50.0), 0.2)]) is None  # weak
    assert tip_for((94.0, 53.0), [line]) is None  # 1.5 mm beside the axis
    assert tip_for((82.0, 50.0), [line]) is None  # 9 mm behind the tip
    assert tip_for((104.0, 50.0), [line]) is None  # 2 mm past the tip
    assert tip_for((101.0, 50.0), [line]) is not None  # 0.5 mm past: the tip's own blur
    other = cand((97.0, 50.2), (20.0, 50.2), 0.8)  # a more probable candidate through it
    assert np.allclose(tip_for((94.0, 50.5), [line, other]),
                       grid.to_full(np.array([97.0, 50.2])))
