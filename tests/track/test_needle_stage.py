"""The needle stage on synthetic frames: null without a needle, straight and bent needles."""
from __future__ import annotations

import copy
import math

import cv2
import numpy as np
import pytest

from sifluoro.model import Device, Frame, Run, Shutter, Technique
from sifluoro.pipeline import Pipeline
from sifluoro.sim.detector import burn_in
from sifluoro.track.needle import NeedleStage

SIZE = 512
SPACING_MM = 0.5
BITS = 12


def _run(uid: str = "1.2.3.4") -> Run:
    tech = Technique(imager_pixel_spacing_xy_mm=(SPACING_MM, SPACING_MM),
                     shutter=Shutter(rect_xyxy=(0, 0, SIZE - 1, SIZE - 1)))
    return Run(path="synthetic", sop_instance_uid=uid, sop_class_uid="", series_instance_uid="",
               study_instance_uid="", modality="XA", transfer_syntax_uid="", rows=SIZE,
               columns=SIZE, bits_stored=BITS, photometric="MONOCHROME2", start_s=0.0,
               frame_offsets_s=(0.0,), frame_intervals_ms=(66.7,), technique=tech,
               device=Device())


def _background(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    img = 0.45 + 0.1 * np.sin(x / 90.0) * np.cos(y / 70.0)
    # a bony blob with a soft cortical edge: edges must not become needles
    img += 0.12 * (((x - 330) ** 2 + (y - 200) ** 2) < 90 ** 2)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.5)
    return img + rng.normal(0, 0.012, img.shape).astype(np.float32)


def _draw_polyline(img: np.ndarray, pts: np.ndarray, amplitude: float, width_px: float) -> None:
    """Add a bright tube with flat ends along a polyline: drawn 4x supersampled, area-averaged
    and blurred like a detector, so the half-maximum along the axis is at the true ends."""
    ss = 4
    y, x = (np.mgrid[:SIZE * ss, :SIZE * ss].astype(np.float32) + 0.5) / ss - 0.5
    inside = np.zeros(x.shape, bool)
    for a, b in zip(pts[:-1], pts[1:]):
        ab = b - a
        t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / float(ab @ ab)
        d = np.abs((x - a[0]) * ab[1] - (y - a[1]) * ab[0]) / np.linalg.norm(ab)
        inside |= (t >= 0) & (t <= 1) & (d <= width_px / 2)
    tube = cv2.resize(inside.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    img += amplitude * cv2.GaussianBlur(tube, (0, 0), 0.7)


def _frame(img: np.ndarray, run: Run | None = None, index: int = 0) -> Frame:
    pixels = np.rint(np.clip(img, 0, 1) * ((1 << BITS) - 1)).astype(np.uint16)
    return Frame(pixels=pixels, index=index, frame_number=1, t_s=0.0, run=run or _run())


def _needle_points(tip, base, bend_px=0.0, n=8) -> np.ndarray:
    tip, base = np.asarray(tip, float), np.asarray(base, float)
    t = np.linspace(0, 1, n)[:, None]
    pts = base + t * (tip - base)
    u = (tip - base) / np.linalg.norm(tip - base)
    # as the simulator bends a needle: offset growing with the square of the distance from the tip
    return pts + bend_px * (1 - t) ** 2 * np.array([-u[1], u[0]])


def _process(frame: Frame) -> dict:
    stage = NeedleStage()
    state = Pipeline([stage]).start_study("1.2")
    return stage.process(frame, state)


def _process_run(frames: list[Frame]) -> list[dict]:
    stage = NeedleStage()
    state = Pipeline([stage]).start_study("1.2")
    return [stage.process(frame, state) for frame in frames]


def test_no_needle_is_null():
    assert _process(_frame(_background(0)))["needle"] is None


def test_clips_only_is_null():
    img = _background(1)
    for apex, ang in (((150, 300), 0.3), ((380, 380), 2.0), ((250, 120), 4.0)):
        apex = np.array(apex, float)
        for da in (-0.3, 0.3):
            end = apex + 16 * np.array([math.cos(ang + da), math.sin(ang + da)])
            _draw_polyline(img, np.array([apex, end]), 0.25, 2.0)
    assert _process(_frame(img))["needle"] is None


def test_burned_in_text_only_is_null():
    frame = _frame(_background(2))
    pixels = frame.pixels.copy()
    burn_in(pixels, ["2024-03-11 14:17:07", "87 kV  14.3 mA  7.5 p/s"], "R", BITS, "MONOCHROME2")
    text_frame = Frame(pixels=pixels, index=0, frame_number=1, t_s=0.0, run=frame.run)
    assert _process(text_frame)["needle"] is None


def test_wire_across_the_field_is_null():
    img = _background(3)
    _draw_polyline(img, _needle_points((511, 30), (0, 480)), 0.06, 1.6)
    assert _process(_frame(img))["needle"] is None


@pytest.mark.parametrize("bend_px", [0.0, 4.0])
def test_needle_tip_from_the_field_edge(bend_px):
    tip = np.array([262.3, 251.6])
    base = np.array([120.0, 511.0])
    run = _run()
    frames = []
    for i in range(2):
        img = _background(4 + 100 * i)
        _draw_polyline(img, _needle_points(tip, base, bend_px), 0.05, 1.8)
        frames.append(_frame(img, run, i))
    # on the second frame of the run (a needle seen on one frame only needs a higher
    # probability)
    out = _process_run(frames)[-1]
    needle = out["needle"]
    assert needle is not None
    err_mm = math.dist(needle["tip_xy"], tip) * SPACING_MM
    # a pixel (0.5 mm) plus noise: the bony blob's edge crosses the shaft 2.5 mm short of the
    # tip, and over 20 noise draws the tip's error along the shaft has an SD of 0.3-0.4 mm
    assert err_mm < 0.6
    u = (tip - base) / np.linalg.norm(tip - base)
    assert float(np.dot(needle["direction_xy"], u)) > 0.98
    assert needle["end_on"] is False
    assert out["tip_to_target_mm"] is None


def test_tip_to_target_and_advance_between_runs():
    from sifluoro.register import RegisterResult
    from sifluoro.track.needle_verify import ScoutSettings

    # both runs are needle runs, the first one's tip 54 mm from the target: no scout here
    stage = NeedleStage(scout=ScoutSettings(scout_runs=0))
    state = Pipeline([stage]).start_study("1.2")
    target = (300.0, 200.0)
    state.stage_state["register"] = RegisterResult(None, 0.0, False, target, 5.0, (0.0, 0.0),
                                                   False)
    base = np.array([120.0, 511.0])
    tips = [np.array([240.0, 290.0]), np.array([262.0, 251.0])]
    outs = []
    for i, tip in enumerate(tips):
        run = _run(f"1.2.3.{i}")
        for k in range(2):
            img = _background(10 + i + 100 * k)
            _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
            outs.append(stage.process(_frame(img, run, 2 * i + k), state))
    # the second run's first frame continues the track
    assert outs[2]["needle"] is not None
    outs = [outs[1], outs[3]]
    assert outs[0]["needle"]["advance_mm"] == 0.0
    assert outs[1]["tip_to_target_mm"] == pytest.approx(math.dist(tips[1], target) * SPACING_MM,
                                                        abs=1.0)
    toward = (np.array(target) - tips[0]) / np.linalg.norm(np.array(target) - tips[0])
    expected = float((tips[1] - tips[0]) @ toward) * SPACING_MM
    assert outs[1]["needle"]["advance_mm"] == pytest.approx(expected, abs=1.0)


def _study_frames(seed: int, tip) -> list[Frame]:
    base = np.array([120.0, 511.0])
    run = _run(f"1.2.9.{seed}")
    frames = []
    for i in range(3):
        img = _background(seed * 10 + i)
        _draw_polyline(img, _needle_points(np.asarray(tip, float), base), 0.05, 1.8)
        frames.append(_frame(img, run, i))
    return frames


def test_studies_interleaved_through_one_stage_do_not_mix():
    """All per-study state lives in ``state.stage_state``: one stage object serves several
    studies (as the receiver does) with the results of separate stages."""
    a, b = _study_frames(1, (262.3, 251.6)), _study_frames(2, (230.0, 300.0))
    alone = []
    for frames in (a, b):
        stage = NeedleStage()
        state = Pipeline([stage]).start_study("1.2")
        alone.append([stage.process(f, state) for f in frames])
    stage = NeedleStage()
    states = [Pipeline([stage]).start_study(uid) for uid in ("1.2.a", "1.2.b")]
    mixed = [[], []]
    for fa, fb in zip(a, b):
        mixed[0].append(stage.process(fa, states[0]))
        mixed[1].append(stage.process(fb, states[1]))
    assert mixed == alone
    assert vars(stage).keys() == {"settings", "scout"}  # settings only


def _angled_run(uid: str, primary_deg: float) -> Run:
    tech = Technique(imager_pixel_spacing_xy_mm=(SPACING_MM, SPACING_MM),
                     shutter=Shutter(rect_xyxy=(0, 0, SIZE - 1, SIZE - 1)),
                     primary_angle_deg=primary_deg, secondary_angle_deg=0.0)
    return Run(path="synthetic", sop_instance_uid=uid, sop_class_uid="", series_instance_uid="",
               study_instance_uid="", modality="XA", transfer_syntax_uid="", rows=SIZE,
               columns=SIZE, bits_stored=BITS, photometric="MONOCHROME2", start_s=0.0,
               frame_offsets_s=(0.0,), frame_intervals_ms=(66.7,), technique=tech,
               device=Device())


@pytest.mark.parametrize("second_view_deg, kept", [(0.5, True), (20.0, False)])
def test_a_new_view_starts_a_new_track(second_view_deg, kept):
    """The needle of one view is not a reference in another: advance and no-retreat start
    again after the C-arm moved; in the same view the last run's tip is the reference."""
    stage = NeedleStage()
    state = Pipeline([stage]).start_study("1.2")
    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    runs = [_angled_run("1.2.7.1", 0.0), _angled_run("1.2.7.2", second_view_deg)]
    for r, run in enumerate(runs):
        for k in range(2):
            img = _background(40 + 10 * r + k)
            _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
            out = stage.process(_frame(img, run, 2 * r + k), state)
    assert out["needle"] is not None
    assert (state.stage_state["needle"].track.reference_tip is not None) == kept


def test_a_return_to_a_view_resumes_its_track():
    """After a check in another view, the needle of the working view is followed again from
    where that view left it: its last tip is the reference of the next run there."""
    stage = NeedleStage()
    state = Pipeline([stage]).start_study("1.2")
    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    runs = [_angled_run("1.2.8.1", 0.0), _angled_run("1.2.8.2", 20.0),
            _angled_run("1.2.8.3", 0.0)]
    outs = []
    for r, run in enumerate(runs):
        for k in range(2):
            img = _background(60 + 10 * r + k)
            if r != 1:
                _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
            outs.append(stage.process(_frame(img, run, 2 * r + k), state))
    assert outs[2]["needle"] is None and outs[3]["needle"] is None
    track = state.stage_state["needle"].track
    assert track.reference_tip is not None
    assert math.dist(track.reference_tip, outs[1]["needle"]["tip_xy"]) < 0.01
    assert outs[5]["needle"] is not None



def _needle_tracked_over_four_frames(tip, base, run_uid):
    """(stage, state, last frame, its output) after four frames of one needle."""
    stage = NeedleStage()
    state = Pipeline([stage]).start_study("1.2")
    run = _run(run_uid)
    for k in range(4):
        img = _background(80 + k)
        _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
        frame = _frame(img, run, k)
        out = stage.process(frame, state)
    return stage, state, frame, out


def test_a_line_taken_on_few_frames_is_not_followed():
    """A needle is looked for where it was (when the line search takes nothing) only once the
    line search has found it on ``follow_min_hits`` frames: a line taken on a frame or two of a
    scout is not followed."""
    from sifluoro.imaging import frame_attenuation

    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    stage, state, frame, out = _needle_tracked_over_four_frames(tip, base, "1.2.6.1")
    assert out["needle"] is not None
    st = state.stage_state["needle"]
    assert st.track.hits >= stage.settings.follow_min_hits
    att = frame_attenuation(frame, state.stage_state)
    followed = stage._follow(st, att, st.ctx)
    assert followed is not None and math.dist(followed[0], tip) * SPACING_MM < 1.0
    st.track.hits = stage.settings.follow_min_hits - 1
    assert stage._follow(st, att, st.ctx) is None


def test_tip_distance_from_the_field_edge_is_bounded_by_the_frame():
    # the synthetic field fills the frame: the frame's border is then the field's edge
    stage = NeedleStage()
    state = Pipeline([stage]).start_study("1.2")
    stage.process(_frame(_background(3)), state)
    edge = state.stage_state["needle"].ctx.edge_dist_work
    rows, cols = edge.bounded.shape
    dist = np.array([[edge(x, y) for x in range(0, cols, 4)] for y in range(0, rows, 4)])
    assert np.isfinite(dist).all()
    assert 0.0 < dist.max() <= 0.5 * max(rows, cols)


def _needle_run(stage: NeedleStage, n: int, uid: str = "1.2.7.1"):
    """``n`` frames of one run with a still needle (independent noise): the stage's outputs
    and its study state."""
    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    state = Pipeline([stage]).start_study("1.2")
    run = _run(uid)
    outs, modes = [], []
    for k in range(n):
        img = _background(90 + k)
        _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
        outs.append(stage.process(_frame(img, run, k), state))
        modes.append("box" if state.stage_state["needle"].since_full else "field")
    return tip, outs, modes, state


def test_a_followed_needle_is_tracked_in_a_box_between_full_searches():
    """Once a needle is followed, the field is searched only on every
    ``full_search_every``-th frame; in between the needle is found in a box around it, as
    accurately."""
    from sifluoro.track.needle_detect import NeedleSettings

    stage = NeedleStage(needle=NeedleSettings(full_search_every=4))
    tip, outs, modes, _ = _needle_run(stage, 12)
    first = modes.index("box")
    # after two full searches in a row agreeing on the tip
    assert first >= 2 and modes[first - 2:first] == ["field", "field"]
    assert first <= stage.settings.follow_min_hits + 1
    assert modes[first:first + 4] == ["box", "box", "box", "field"]
    assert all(o["needle"] is not None for o in outs[first:])
    assert max(math.dist(o["needle"]["tip_xy"], tip) for o in outs[first:]) * SPACING_MM < 0.6
    every = NeedleStage(needle=NeedleSettings(full_search_every=1))
    assert set(_needle_run(every, 8)[2]) == {"field"}


def test_a_tip_far_from_the_last_one_is_left_to_the_full_search():
    """The box does not take a tip further than ``roi_step_mm`` from the tip of the run's
    last full search (within a run the needle moves little; further is a line taken on into
    bone, or errors adding up from frame to frame)."""
    stage = NeedleStage()
    tip, outs, modes, state = _needle_run(stage, 6)
    assert modes[-1] == "box"
    st = state.stage_state["needle"]
    img = _background(200)
    _draw_polyline(img, _needle_points(tip, np.array([120.0, 511.0])), 0.05, 1.8)
    frame = _frame(img, st.ctx.run, 6)
    near = copy.deepcopy(st)
    assert stage._track_roi(near, frame, state) is not None
    far = copy.deepcopy(st)
    anchor, u = far.anchor
    far.anchor = (anchor - u * ((stage.settings.roi_step_mm + 1.0) / SPACING_MM), u)
    mean, n = far.mean_work.copy(), far.n_mean
    assert stage._track_roi(far, frame, state) is None
    # the full search then adds the frame to the run's mean: the box leaves it as it was
    assert np.array_equal(far.mean_work, mean) and far.n_mean == n


def test_a_tip_start_outside_the_image_is_not_refined():
    """The box's start can be carried past its crop's edge along the line: no tip there
    (the empty crop used to raise inside OpenCV and fail the stage on that frame)."""
    stage = NeedleStage()
    _, _, _, state = _needle_run(stage, 2)
    st = state.stage_state["needle"]
    att = np.zeros((40, 40), np.float32)
    u = np.array([1.0, 0.0])
    reach_px = (stage.settings.fit_mm + stage.settings.tip_window_mm + 3.0) / SPACING_MM
    assert stage._refine(st, att, np.array([60.0 + reach_px, 20.0]), u, st.ctx) is None
    assert stage._refine(st, att, np.array([-10.0 - reach_px, 20.0]), u, st.ctx) is None


def test_a_tip_jumping_far_from_the_anchor_is_taken_when_seen_again():
    """Late in a run (full mean image, agreed anchor) a tracked tip further than
    ``max_jump_mm`` from the anchor is not taken on its first frame (a line carried on into
    bone, then held by the no-retreat rule for the rest of the view): the tip is looked for at
    the anchor, and the next frame is searched in full; found there again, it is taken."""
    stage = NeedleStage()
    s = stage.settings
    tip, outs, modes, state = _needle_run(stage, s.avg_frames + 2)
    st = state.stage_state["needle"]
    assert st.anchor_agreed and st.n_mean == s.avg_frames
    # as if the run had followed the needle 10 mm short of its tip
    u = st.anchor[1]
    back = tip - u * ((s.max_jump_mm + 4.0) / SPACING_MM)
    st.anchor = (back, u)
    st.track.tip_xy = st.track.last_tip_of_run = back
    st.track.run_tips = [back]
    st.since_full = s.full_search_every  # the next frame is a full search
    out = []
    for k in range(2):
        # the tip refined at the anchor, on a shaft that goes on, falls anywhere in the tip
        # window: within roi_step_mm of the anchor (the premise here) on about half the noise
        # draws; this one is such a draw
        img = _background(1050 + k)
        _draw_polyline(img, _needle_points(tip, np.array([120.0, 511.0])), 0.05, 1.8)
        out.append(stage.process(_frame(img, st.ctx.run, 20 + k), state))
    first = out[0]["needle"]
    assert first is None or math.dist(first["tip_xy"], tip) * SPACING_MM > s.max_jump_mm
    assert st.since_full == 0  # the second frame was searched in full
    assert math.dist(out[1]["needle"]["tip_xy"], tip) * SPACING_MM < 1.0

def _needle_among_ten_wires(seed: int, tip, base) -> np.ndarray:
    """A frame whose ten strongest lines are wires across the field, with a fainter needle."""
    img = _background(seed)
    for k in range(10):
        ang = math.radians(7.5 + 18.0 * k)
        d = np.array([math.cos(ang), math.sin(ang)])
        centre = np.array([256.0, 256.0]) + 150.0 * np.array([-d[1], d[0]])
        _draw_polyline(img, np.array([centre - 800 * d, centre + 800 * d]), 0.08, 2.0)
    _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
    return img



@pytest.mark.parametrize("n_lines, found", [(10, False), (16, True)])
def test_a_needle_weaker_than_ten_other_lines_is_found(n_lines, found):
    """The needle's line is looked for among the ``n_lines`` strongest Hough lines: with
    stronger lines in the field (here wires across it, which are no needle) it is not
    among the ten strongest (ten wires here)."""
    from sifluoro.track.needle_detect import NeedleSettings

    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    run = _run()
    frames = []
    for i in range(2):
        img = _needle_among_ten_wires(7 + 100 * i, tip, base)
        frames.append(_frame(img, run, i))
    stage = NeedleStage(needle=NeedleSettings(n_lines=n_lines))
    state = Pipeline([stage]).start_study("1.2")
    needle = [stage.process(f, state) for f in frames][-1]["needle"]
    assert (needle is not None and math.dist(needle["tip_xy"], tip) * SPACING_MM < 1.0) == found


@pytest.mark.parametrize("persist_frames", [0, 4])
def test_a_needle_rated_below_min_prob_is_taken_when_it_stays(persist_frames):
    """With no needle followed, a candidate under ``min_prob`` (here every candidate: the
    two-frame and one-frame rules are out of reach) is taken once it has been seen at the same
    place on ``persist_frames`` full searches of the view in a row, across runs, and not
    before; ``persist_frames`` 0 never takes it."""
    from sifluoro.track.needle_detect import NeedleSettings

    settings = NeedleSettings(min_prob=1.01, single_min_prob=1.01, persist_min_prob=0.5,
                              persist_frames=persist_frames)
    stage = NeedleStage(needle=settings)
    state = Pipeline([stage]).start_study("1.2")
    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    outs = []
    for k, run in enumerate([_run("1.2.9.1")] * 2 + [_run("1.2.9.2")] * 3):
        img = _background(500 + k)
        _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
        outs.append(stage.process(_frame(img, run, k), state)["needle"])
    if persist_frames == 0:
        assert all(o is None for o in outs)
    else:
        assert all(o is None for o in outs[:3])
        assert all(math.dist(o["tip_xy"], tip) * SPACING_MM < 1.0 for o in outs[3:])


@pytest.mark.parametrize("confirm_min_prob", [0.5, 0.7])
def test_a_needle_rated_at_min_prob_then_under_it_is_taken(confirm_min_prob):
    """With no needle followed, a candidate rated ``confirm_min_prob`` or more is taken when
    the previous frame had it at ``min_prob`` or more (seen twice, the probable sighting
    first); not when both sightings are under ``min_prob``, and not with ``confirm_min_prob``
    at ``min_prob`` (the default: the second sighting must reach ``min_prob``)."""
    from dataclasses import replace

    s = NeedleStage().settings
    stage = NeedleStage(needle=replace(s, confirm_min_prob=confirm_min_prob))
    assert s.min_prob == 0.7
    probs = iter([0.8, 0.6, 0.6])
    real = stage._candidates

    def rated(*args):
        p = next(probs)
        return [(t, b, p, e, f) for t, b, _, e, f in real(*args)]

    stage._candidates = rated
    state = Pipeline([stage]).start_study("1.2")
    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    run, outs = _run("1.2.9.5"), []
    for k in range(2):
        img = _background(600 + k)
        _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
        outs.append(stage.process(_frame(img, run, k), state)["needle"])
    assert outs[0] is None
    if confirm_min_prob < s.min_prob:
        assert math.dist(outs[1]["tip_xy"], tip) * SPACING_MM < 1.0
    else:
        assert outs[1] is None
    # both sightings under min_prob: not taken
    probs = iter([0.6, 0.6])
    state = Pipeline([stage]).start_study("1.3")
    outs = []
    for k in range(2):
        img = _background(610 + k)
        _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
        outs.append(stage.process(_frame(img, run, k), state)["needle"])
    assert outs == [None, None]


def test_a_tip_taken_short_on_a_longer_segment_goes_to_its_end():
    """A tip taken on a line while a candidate segment of the same search goes on along it
    (a needle crossing a bone edge, followed where it stopped) is moved to that segment's
    end; not onto a one-sided edge, not past a stretch that is no line, not from beside it,
    and not with ``further_min_mm`` 0."""
    from dataclasses import replace

    stage = NeedleStage()
    tip, _, modes, state = _needle_run(stage, 2)
    assert modes[-1] == "field"
    st = state.stage_state["needle"]
    att = state.stage_state["attenuation"][1]
    ctx = st.ctx
    (cand,) = [f for f in st.last_features if f["prob"] > 0.5]
    u = (cand["tip"] - cand["base"]) / np.linalg.norm(cand["tip"] - cand["base"])
    short = tip - u * (15.0 / SPACING_MM)
    moved, v = stage._further_on_line(st, att, ctx, short, u)
    assert math.dist(moved, tip) * SPACING_MM < 0.5 and float(v @ u) > 0.99
    beside = short + np.array([-u[1], u[0]]) * (3.0 / SPACING_MM)
    assert stage._further_on_line(st, att, ctx, beside, u)[0] is beside
    off = NeedleStage(needle=replace(stage.settings, further_min_mm=0.0))
    assert off._further_on_line(st, att, ctx, short, u)[0] is short
    edge = copy.deepcopy(st)
    for f in edge.last_features:
        f["sym"] = 0.0
    assert stage._further_on_line(edge, att, ctx, short, u)[0] is short
    # a segment reaching 15 mm past the needle's tip: from the tip on there is no line
    past = copy.deepcopy(st)
    for f in past.last_features:
        f["tip"] = f["tip"] + u * (15.0 / ctx.grid.spacing_mm)
    assert stage._further_on_line(past, att, ctx, tip, u)[0] is tip


def test_a_tip_taken_short_at_a_bend_goes_to_the_end_of_the_bent_part():
    """A needle bent by more than ``track_angle_deg`` (16 deg) and taken short at the bend
    (on the shaft's axis behind it) goes to the end of the bent part's segment, refined along
    that segment's axis; not with ``further_angle_deg`` at ``track_angle_deg``, not onto a
    segment bent by more than ``further_angle_deg``, and not onto a bent segment the model
    rates under ``track_min_prob`` (a cortical margin crossing the tip)."""
    from dataclasses import replace

    base, bend = np.array([120.0, 511.0]), np.array([215.0, 340.0])
    u0 = (bend - base) / np.linalg.norm(bend - base)

    def run(bend_deg: float, stage: NeedleStage):
        c, s = math.cos(math.radians(bend_deg)), math.sin(math.radians(bend_deg))
        u1 = np.array([c * u0[0] - s * u0[1], s * u0[0] + c * u0[1]])
        tip = bend + u1 * (25.0 / SPACING_MM)
        state = Pipeline([stage]).start_study("1.2")
        r = _run("1.2.7.9")
        for k in range(2):
            img = _background(90 + k)
            _draw_polyline(img, np.array([base, bend, tip]), 0.05, 1.8)
            stage.process(_frame(img, r, k), state)
        st = state.stage_state["needle"]
        return tip, st, state.stage_state["attenuation"][1]

    stage = NeedleStage()
    assert stage.settings.track_angle_deg < 16.0 < stage.settings.further_angle_deg
    tip, st, att = run(16.0, stage)
    moved, v = stage._further_on_line(st, att, st.ctx, bend, u0)
    assert math.dist(moved, tip) * SPACING_MM < 0.5
    assert float(v @ (tip - bend)) / np.linalg.norm(tip - bend) > 0.99
    straight = NeedleStage(needle=replace(stage.settings,
                                          further_angle_deg=stage.settings.track_angle_deg))
    assert straight._further_on_line(st, att, st.ctx, bend, u0)[0] is bend
    narrow = NeedleStage(needle=replace(stage.settings, further_angle_deg=12.0))
    assert narrow._further_on_line(st, att, st.ctx, bend, u0)[0] is bend
    unlikely = copy.deepcopy(st)
    for f in unlikely.last_features:
        f["prob"] = 0.5 * stage.settings.track_min_prob
    assert stage._further_on_line(unlikely, att, st.ctx, bend, u0)[0] is bend


@pytest.mark.parametrize("bend_deg, bent_mm, step_mm", [(16.0, 25.0, 0.0), (12.0, 15.0, 0.7)])
def test_a_bent_needle_is_followed_at_its_bent_end_over_runs(bend_deg, bent_mm, step_mm):
    """A needle bent by more than ``track_angle_deg`` followed over two runs of a view (full
    searches and box frames; still, or advancing along its bent part): from the first frame
    on, the tip is at the bent part's end and the direction is the bent part's, without
    drifting back to the shaft's. On a run's first frame the shaft's line is taken a few mm
    past the bend, beside the bent part: the evidence beyond it is looked for along the bent
    part's axis (from the old tip it cut across the needle and the tip stayed 10-20 mm short)."""
    base, bend = np.array([120.0, 511.0]), np.array([215.0, 340.0])
    u0 = (bend - base) / np.linalg.norm(bend - base)
    c, s = math.cos(math.radians(bend_deg)), math.sin(math.radians(bend_deg))
    u1 = np.array([c * u0[0] - s * u0[1], s * u0[0] + c * u0[1]])
    stage = NeedleStage()
    state = Pipeline([stage]).start_study("1.2")
    stage.process(_frame(_background(7), _run("1.2.7.0"), 0), state)  # the scout: no needle
    runs, modes = [_run("1.2.7.1"), _run("1.2.7.2")], set()
    for k in range(16):
        run = runs[k // 8]
        tip = bend + u1 * ((bent_mm + step_mm * k) / SPACING_MM)
        img = _background(90 + k)
        _draw_polyline(img, np.array([base, bend, tip]), 0.05, 1.8)
        out = stage.process(_frame(img, run, k % 8), state)["needle"]
        st = state.stage_state["needle"]
        modes.add("box" if st.since_full else "field")
        assert out is not None, k
        assert math.dist(out["tip_xy"], tip) * SPACING_MM < 1.0, k
        assert float(np.asarray(out["direction_xy"]) @ u1) > math.cos(math.radians(3.0)), k
    assert modes == {"box", "field"}


def test_a_single_tip_beyond_the_needle_does_not_hold_the_run():
    """With ``floor_tips`` 2 (off by default) a run's tips are held at the furthest tip reached
    by two of them, not by one: a tip placed once 8 mm beyond the needle's (a line continuing
    it) does not hold the rest of the run there (by default it does); a tip reached twice
    holds the later ones that fall short (a shaft fading over bone); before there are two
    tips, the last tip of the run before holds them; a new line (not tracked) starts
    afresh."""
    from dataclasses import replace

    old = NeedleStage()
    assert old.settings.floor_tips == 1
    stage = NeedleStage(needle=replace(old.settings, floor_tips=2))
    tip, _, _, state = _needle_run(stage, 2)
    st = state.stage_state["needle"]
    ctx, u = st.ctx, st.track.dir_xy
    ahead = 8.0 / SPACING_MM

    def run(stage, tips, reference=None, tracked=True):
        st.track.enter_run("run-%d" % id(tips))
        st.track.reference_tip = reference
        return [stage._no_retreat(st, ctx, t, u, tracked) for t in tips]

    over = [tip + u * ahead, tip, tip, tip]
    assert all(np.allclose(t, tip) for t in run(stage, over)[1:])
    assert all(np.allclose(t, tip + u * ahead) for t in run(old, over)[1:])
    fading = [tip + u * ahead, tip + u * ahead, tip, tip]
    assert all(np.allclose(t, tip + u * ahead) for t in run(stage, fading)[2:])
    assert np.allclose(run(stage, [tip], reference=tip + u * ahead)[0], tip + u * ahead)
    assert np.allclose(run(stage, [tip], reference=tip + u * ahead, tracked=False)[0], tip)
    st.track.enter_run("another")
    stage._no_retreat(st, ctx, tip - u * ahead, u, False)  # a new line, placed short
    assert np.allclose(stage._no_retreat(st, ctx, tip - u * ahead, u, True), tip - u * ahead)


def test_a_last_tip_beyond_the_run_does_not_hold_the_next_run():
    """With ``reference_tips`` 3 (off by default) the tip a run ended at (which holds the next
    run's tips) is the median along the axis of its last three tips when the last is more than
    ``retreat_mm`` beyond it: a run's last tip placed 4 mm beyond the needle (a box frame
    refined onto a line continuing it) no longer holds the next run there (by default it
    does). A last tip behind the others, or a little ahead (advancing), is kept; with fewer
    than three tips, or on a new line, the last tip is the reference."""
    from dataclasses import replace

    old = NeedleStage()
    assert old.settings.reference_tips == 1
    stage = NeedleStage(needle=replace(old.settings, reference_tips=3))
    tip, _, _, state = _needle_run(stage, 2)
    st = state.stage_state["needle"]
    ctx, u = st.ctx, st.track.dir_xy
    mm = 1.0 / SPACING_MM

    def next_run(stage, ends, new_line_at=None):
        s = stage.settings
        st.track.enter_run("a-%d" % id(ends), s.reference_tips, s.retreat_mm / ctx.spacing_mm)
        for k, t in enumerate(ends):
            stage._no_retreat(st, ctx, t, u, k != new_line_at)
            st.track.found(t, u, 100.0)
        st.track.enter_run("b-%d" % id(ends), s.reference_tips, s.retreat_mm / ctx.spacing_mm)
        return st.track.reference_tip, stage._no_retreat(st, ctx, tip, u, True)

    over = [tip, tip, tip + 4 * mm * u]
    assert np.allclose(next_run(stage, over)[1], tip)
    assert np.allclose(next_run(old, over)[1], tip + 4 * mm * u)
    for ends in ([tip + 4 * mm * u, tip + 4 * mm * u, tip],  # the last behind
                 [tip - 2 * mm * u, tip, tip + 1.2 * mm * u],  # advancing
                 [tip, tip + 4 * mm * u]):  # two tips only
        assert np.allclose(next_run(stage, ends)[0], ends[-1])
    # a new line taken on the run's last frame: the old line's tips do not count
    ends = [tip - 3 * mm * u, tip - 3 * mm * u, tip + 4 * mm * u]
    assert np.allclose(next_run(stage, ends, new_line_at=2)[0], ends[-1])


def _needle_features(stage: NeedleStage, run: Run) -> dict:
    """The features of the needle's candidate on one frame of ``run``."""
    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    img = _background(90)
    _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
    state = Pipeline([stage]).start_study("1.2")
    stage.process(_frame(img, run, 0), state)
    st = state.stage_state["needle"]
    near = [f for f in st.last_features
            if math.dist(st.ctx.grid.to_full(f["tip"]), tip) * SPACING_MM <= 3.0]
    assert near
    return max(near, key=lambda f: f["prob"])


@pytest.mark.parametrize("shape,size_mm,intensifier", [
    ("ROUND", 230.0, True), ("ROUND", None, True), (None, 300.0, True),
    ("RECTANGLE", None, False)])
def test_an_intensifier_needle_is_rated_on_its_blur(shape, size_mm, intensifier):
    """On a run whose header says image intensifier (a round field, an intensifier size) the
    needle's width ratio is ``intensifier_thin_gain`` (1.3 by default) times what it is on a
    flat panel (or with the gain 1), and its probability higher; on a flat panel it does not
    change."""
    from dataclasses import replace

    def run(shape, size_mm):
        base = _run()
        tech = replace(base.technique, field_of_view_shape=shape, intensifier_size_mm=size_mm)
        return replace(base, technique=tech)

    stage = NeedleStage()
    assert stage.settings.intensifier_thin_gain == 1.3
    old = NeedleStage(needle=replace(stage.settings, intensifier_thin_gain=1.0))
    flat = _needle_features(stage, run("RECTANGLE", None))
    got = _needle_features(stage, run(shape, size_mm))
    assert _needle_features(old, run(shape, size_mm))["thin"] == pytest.approx(flat["thin"])
    if intensifier:
        assert got["thin"] == pytest.approx(1.3 * flat["thin"])
        assert got["prob"] > flat["prob"]
    else:
        assert got["thin"] == pytest.approx(flat["thin"])


def test_a_line_past_the_strongest_continues_only_a_track_found_on_such_a_line():
    """A candidate from a line past the ``n_lines`` strongest (``target_lines``, near the
    register target) does not continue a needle followed on the strong lines (it would carry
    it onto a cortical margin by the joint); it continues a track last found on such a line,
    and a candidate of the strong lines continues either."""
    stage = NeedleStage()
    tip, outs, _, state = _needle_run(stage, 3)
    st = state.stage_state["needle"]
    assert outs[-1]["needle"] is not None and not st.track.extra
    u = st.track.dir_xy
    base = tip - u * (40.0 / SPACING_MM)
    assert stage._tracks(st, st.ctx, tip, u, base, False)
    assert not stage._tracks(st, st.ctx, tip, u, base, True)
    st.track.extra = True
    assert stage._tracks(st, st.ctx, tip, u, base, True)
    assert stage._tracks(st, st.ctx, tip, u, base, False)


def test_a_segment_through_the_last_tip_continues_the_track_however_far_on():
    """A candidate whose segment runs through the last tip continues the track even with its
    tip further on than ``track_reach_mm`` (the needle advanced further, or the last tip was
    placed short on a run's first frame); not a segment starting past the last tip, not a
    parallel one beside it, and not with ``track_through`` off."""
    from dataclasses import replace

    stage = NeedleStage()
    s = stage.settings
    tip, _, _, state = _needle_run(stage, 2)
    st = state.stage_state["needle"]
    base = np.array([120.0, 511.0])
    u = (tip - base) / np.linalg.norm(tip - base)
    st.track.tip_xy = tip - u * ((s.track_reach_mm + 5.0) / SPACING_MM)
    assert not stage._consistent(st, st.ctx, tip, u)
    assert stage._consistent(st, st.ctx, tip, u, base)
    later = st.track.tip_xy + u * (2.0 / SPACING_MM)
    assert not stage._consistent(st, st.ctx, tip, u, later)
    side = np.array([-u[1], u[0]]) * ((s.track_margin_mm + 2.0) / SPACING_MM)
    assert not stage._consistent(st, st.ctx, tip + side, u, base + side)
    off = NeedleStage(needle=replace(s, track_through=False))
    assert not off._consistent(st, st.ctx, tip, u, base)



def test_a_needle_left_in_place_is_followed_on_a_run_s_first_frame():
    """On a run's first frame the mean is that one noisy frame: a followed needle found again
    where it was needs only ``follow_start_score`` of line evidence there (the needle left in
    place between runs was missed on that frame with the full ``follow_min_score``)."""
    from dataclasses import replace

    from sifluoro.imaging import frame_attenuation

    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    stage, state, _, _ = _needle_tracked_over_four_frames(tip, base, "1.2.7.1")
    img = _background(90)
    _draw_polyline(img, _needle_points(tip, base), 0.035, 1.8)  # fainter on the next run
    frame = _frame(img, _run("1.2.7.2"), 4)
    stage.process(frame, state)
    st = state.stage_state["needle"]
    assert st.n_mean == 1
    s = stage.settings
    g = st.ctx.grid
    u = (tip - base) / np.linalg.norm(tip - base)
    score = st.finder.interval_score(g.to_work(tip - u * 2.0 * s.fit_mm / SPACING_MM),
                                     g.to_work(tip))
    assert s.follow_start_score <= score < s.follow_min_score
    att = frame_attenuation(frame, state.stage_state)
    followed = stage._follow(st, att, st.ctx)
    assert followed is not None and math.dist(followed[0], tip) * SPACING_MM < 1.0
    full_bar = NeedleStage(needle=replace(s, follow_start_score=s.follow_min_score))
    assert full_bar._follow(st, att, st.ctx) is None
    st.n_mean = 2  # the run's later frames keep the full bar
    assert stage._follow(st, att, st.ctx) is None


def test_a_followed_needle_is_asked_evidence_growing_with_the_frames_averaged():
    """With ``follow_scaled`` the evidence asked of a followed shaft on a run's second to
    last-but-one frames grows with the square root of the frames in the mean (as a needle's
    noise-normalised evidence does), from ``follow_start_score`` to ``follow_min_score``: a
    faint needle whose shaft scores between the two on a two-frame mean is followed there.
    Off (the default) the full bar is asked from the second frame on."""
    from dataclasses import replace

    from sifluoro.imaging import frame_attenuation

    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    stage, state, _, _ = _needle_tracked_over_four_frames(tip, base, "1.2.7.1")
    s = stage.settings
    scaled = NeedleStage(needle=replace(s, follow_scaled=True))
    img = _background(90)
    _draw_polyline(img, _needle_points(tip, base), 0.035, 1.8)
    frame = _frame(img, _run("1.2.7.2"), 4)
    stage.process(frame, state)
    st = state.stage_state["needle"]
    att = frame_attenuation(frame, state.stage_state)
    needs = []
    for n in range(1, s.avg_frames + 2):
        st.n_mean = n
        needs.append(scaled._follow_need(st))
    assert needs[0] == s.follow_start_score and needs[-2] == needs[-1] == s.follow_min_score
    assert all(a <= b for a, b in zip(needs, needs[1:]))
    assert needs[1] == max(s.follow_start_score, s.follow_min_score * math.sqrt(2 / s.avg_frames))
    g = st.ctx.grid
    u = (tip - base) / np.linalg.norm(tip - base)
    score = st.finder.interval_score(g.to_work(tip - u * 2.0 * s.fit_mm / SPACING_MM),
                                     g.to_work(tip))
    st.n_mean = 2
    assert needs[1] <= score < s.follow_min_score
    followed = scaled._follow(st, att, st.ctx)
    assert followed is not None and math.dist(followed[0], tip) * SPACING_MM < 1.0
    unscaled = NeedleStage(needle=replace(s, follow_scaled=False))
    assert unscaled._follow_need(st) == s.follow_min_score
    assert unscaled._follow(st, att, st.ctx) is None


@pytest.mark.parametrize("target, found", [((270.0, 245.0), True), ((60.0, 60.0), False),
                                           (None, False)])
def test_a_needle_weaker_than_ten_other_lines_is_found_near_the_target(target, found):
    """Past the ``n_lines`` strongest Hough lines, ``target_lines`` more (off by default) are
    looked at when they pass near the register target and their tip is near it
    (``target_lines_mm``): the
    needle under ten stronger wires is found with its tip 5 mm from the target, not with the
    target 140 mm away nor without one."""
    from sifluoro.register import RegisterResult
    from sifluoro.track.needle_verify import ScoutSettings

    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    run = _run()
    from sifluoro.track.needle_detect import NeedleSettings

    stage = NeedleStage(needle=NeedleSettings(target_lines=20),
                        scout=ScoutSettings(scout_runs=0))
    state = Pipeline([stage]).start_study("1.2")
    if target is not None:
        state.stage_state["register"] = RegisterResult(None, 0.0, False, target, 5.0,
                                                       (0.0, 0.0), False)
    outs = []
    for i in range(2):
        img = _needle_among_ten_wires(7 + 100 * i, tip, base)
        outs.append(stage.process(_frame(img, run, i), state)["needle"])
    needle = outs[-1]
    assert (needle is not None and math.dist(needle["tip_xy"], tip) * SPACING_MM < 1.0) == found


@pytest.mark.parametrize("second_tip, taken", [((283.0, 213.0), True), ((262.3, 251.6), False),
                                               ((300.0, 180.0), False)])
def test_a_needle_rated_below_min_prob_is_taken_when_pushed_in_between_runs(second_tip, taken):
    """With no needle followed, a candidate under ``min_prob`` (here every candidate: the
    two-frame and one-frame rules are out of reach) seen twice in a run is taken when its tip
    moved on along its line by ``advance_min_mm`` to ``track_reach_mm`` since the view's last
    run (22 mm here), not when it stayed (a bone edge, a clip) nor when it jumped further
    (41 mm)."""
    from sifluoro.track.needle_detect import NeedleSettings

    settings = NeedleSettings(min_prob=1.01, single_min_prob=1.01, advance_min_prob=0.3)
    stage = NeedleStage(needle=settings)
    state = Pipeline([stage]).start_study("1.2")
    base = np.array([120.0, 511.0])
    first_tip = np.array([262.3, 251.6])
    u = (first_tip - base) / np.linalg.norm(first_tip - base)
    # the second tip on the same line (as far along it as drawn)
    second = base + u * float((np.array(second_tip) - base) @ u)
    outs = []
    for k, (run, tip) in enumerate([(_run("1.2.9.1"), first_tip)] * 2
                                   + [(_run("1.2.9.2"), second)] * 2):
        img = _background(600 + k)
        _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
        outs.append(stage.process(_frame(img, run, k), state)["needle"])
    assert all(o is None for o in outs[:3])
    if taken:
        assert math.dist(outs[3]["tip_xy"], second) * SPACING_MM < 1.0
    else:
        assert outs[3] is None
    off = NeedleStage(needle=NeedleSettings(min_prob=1.01, single_min_prob=1.01,
                                            advance_min_mm=0.0))
    state = Pipeline([off]).start_study("1.2")
    for k, (run, tip) in enumerate([(_run("1.2.9.1"), first_tip)] * 2
                                   + [(_run("1.2.9.2"), second)] * 2):
        img = _background(600 + k)
        _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
        assert off.process(_frame(img, run, k), state)["needle"] is None


@pytest.mark.parametrize("provisional", [True, False])
def test_a_track_begun_on_the_scout_does_not_keep_the_next_run_s_needle_out(provisional):
    """A line taken near the target on the study's scout (a skin marker) and not found again
    after it is not a needle followed in the view: on the next run another line is taken on
    the cold-start rules (seen twice at ``min_prob``), not held to the bar of a line replacing
    a followed needle (here out of reach: ``single_min_prob`` above 1). With
    ``scout_track_provisional`` off the scout's line keeps it out."""
    from sifluoro.track.needle_detect import NeedleSettings

    settings = NeedleSettings(single_min_prob=1.01, scout_track_provisional=provisional)
    stage = NeedleStage(needle=settings)
    state = Pipeline([stage]).start_study("1.2")
    marker_tip, marker_base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    needle_tip, needle_base = np.array([330.0, 330.0]), np.array([500.0, 470.0])
    scout, nxt = _run("1.2.11.1"), _run("1.2.11.2")
    outs = []
    for k in range(3):  # the scout: the marker near the field centre (no register target)
        img = _background(700 + k)
        _draw_polyline(img, _needle_points(marker_tip, marker_base), 0.05, 1.8)
        outs.append(stage.process(_frame(img, scout, k), state)["needle"])
    assert outs[-1] is not None and math.dist(outs[-1]["tip_xy"], marker_tip) * SPACING_MM < 1.0
    assert state.stage_state["needle"].track.scout_only
    outs = []
    for k in range(3):  # the next run: the marker gone, a needle elsewhere
        img = _background(710 + k)
        _draw_polyline(img, _needle_points(needle_tip, needle_base), 0.05, 1.8)
        outs.append(stage.process(_frame(img, nxt, 3 + k), state)["needle"])
    assert outs[0] is None
    if provisional:
        assert all(math.dist(o["tip_xy"], needle_tip) * SPACING_MM < 1.0 for o in outs[1:])
        assert not state.stage_state["needle"].track.scout_only
    else:
        assert all(o is None for o in outs)


def test_a_candidate_off_the_track_s_axis_continues_it_when_its_refined_axis_does():
    """A candidate's axis is its chord over ``2 * fit_mm`` before the tip, the track's the
    refined axis of the shaft's last ``fit_mm`` when it was last found: the two may differ by
    more than ``track_angle_deg`` (a bent needle, one turned a little since) where the refined
    axes do not. Here the track's axis is 5 degrees to one side of the needle's, the
    candidate's chord 4.5 degrees to the other: the candidate continues the track once its
    tip is refined on the frame; not past ``track_refined_deg``, not a line 10 mm beside the
    tip, and not with ``track_refined_deg`` at ``track_angle_deg`` (the chord alone, as
    before)."""
    from dataclasses import replace

    from sifluoro.imaging import frame_attenuation

    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    stage, state, frame, out = _needle_tracked_over_four_frames(tip, base, "1.2.8.1")
    assert out["needle"] is not None
    st = state.stage_state["needle"]
    s = stage.settings
    att = frame_attenuation(frame, state.stage_state)
    length = float(np.linalg.norm(tip - base))
    axis = (tip - base) / length

    def turned(deg: float) -> np.ndarray:
        c, si = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        return np.array([c * axis[0] - si * axis[1], si * axis[0] + c * axis[1]])

    assert float(st.track.dir_xy @ axis) > math.cos(math.radians(1.0))
    st.track.dir_xy = turned(5.0)
    u = turned(-4.5)
    assert s.track_angle_deg < 9.5 < s.track_refined_deg
    assert not stage._tracks(st, st.ctx, tip, u, tip - u * length, False)
    assert stage._tracks_refined(st, att, st.ctx, tip, u, tip - u * length, False)
    far = turned(-s.track_refined_deg)
    assert not stage._tracks_refined(st, att, st.ctx, tip, far, tip - far * length, False)
    side = np.array([-u[1], u[0]]) * (10.0 / SPACING_MM)
    assert not stage._tracks_refined(st, att, st.ctx, tip + side, u, tip + side - u * length,
                                     False)
    chord = NeedleStage(needle=replace(s, track_refined_deg=s.track_angle_deg))
    assert not chord._tracks_refined(st, att, st.ctx, tip, u, tip - u * length, False)


def test_a_tip_found_where_the_needle_was_does_not_hold_the_run():
    """A tip found again where the followed needle was (:meth:`NeedleStage._follow`: no
    candidate taken, the tip extended along the last axis on a run's one-frame mean) is held
    like a tracked tip (here to the last run's end) but is not kept among the run's tips that
    hold the later ones: one placed a few mm beyond the needle held the rest of the run there
    (training seed 4102: 16 frames 3.3 mm beyond, their candidates 0.2-1.9 mm off)."""
    from sifluoro.imaging import frame_attenuation

    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    stage, state, _, _ = _needle_tracked_over_four_frames(tip, base, "1.2.9.1")
    img = _background(90)
    _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
    frame = _frame(img, _run("1.2.9.2"), 4)
    stage.process(frame, state)  # the next run's first frame
    st = state.stage_state["needle"]
    ctx, u = st.ctx, st.track.dir_xy
    att = frame_attenuation(frame, state.stage_state)
    mm = 1.0 / SPACING_MM
    st.track.run_tips = []
    st.track.reference_tip, st.track.reference_holds = tip + 3.0 * mm * u, True
    followed = stage._follow(st, att, ctx)
    assert followed is not None
    # held to where the last run ended (on the refined axis)
    assert math.dist(followed[0], tip + 3.0 * mm * u) * SPACING_MM < 0.25
    assert st.track.run_tips == []
    # the next frame's tip, 2 mm behind it on the line, is not held there
    st.track.reference_tip = None
    later = followed[0] - 2.0 * mm * u
    assert np.allclose(stage._no_retreat(st, ctx, later, u, True), later)


@pytest.mark.parametrize("target_mm, scout_runs, target_single_mm, taken",
                         [(5.0, 0, 20.0, True), (40.0, 0, 20.0, False), (5.0, 1, 20.0, False),
                          (5.0, 0, 0.0, False)])
def test_a_needle_at_the_target_is_taken_on_a_run_s_first_frame(target_mm, scout_runs,
                                                                 target_single_mm, taken):
    """With no needle followed, off the study's scout, a candidate at ``min_prob`` or more
    whose tip is within ``target_single_mm`` of the register target is taken on its first
    frame, without being seen twice (a needle's first frame was missed on 19 training
    studies, rated 0.73-0.94); not with the target 40 mm off, not on the scout (its lines by
    the joint are cortical margins), not with the rule off. ``single_min_prob`` above 1 here:
    only this rule can take a line on one frame."""
    from sifluoro.register import RegisterResult
    from sifluoro.track.needle_detect import NeedleSettings
    from sifluoro.track.needle_verify import ScoutSettings

    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    u = (tip - base) / np.linalg.norm(tip - base)
    stage = NeedleStage(needle=NeedleSettings(single_min_prob=1.01,
                                              target_single_mm=target_single_mm),
                        scout=ScoutSettings(scout_runs=scout_runs))
    state = Pipeline([stage]).start_study("1.2")
    target = tip + np.array([-u[1], u[0]]) * (target_mm / SPACING_MM)
    state.stage_state["register"] = RegisterResult(None, 0.0, False, target, 5.0, (0.0, 0.0),
                                                   False)
    img = _background(120)
    _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
    needle = stage.process(_frame(img, _run("1.2.12.1"), 0), state)["needle"]
    assert (needle is not None and math.dist(needle["tip_xy"], tip) * SPACING_MM < 1.0) == taken


def test_a_tip_held_beyond_the_needle_is_let_go_where_the_frame_shows_no_line():
    """A tracked tip is held at the run's furthest tip (``retreat_mm``) unless this frame's
    ridge between the two is evidence against a line (``hold_min_score``): a furthest tip
    placed 4 mm beyond the needle, over a dark groove continuing it (a joint space), does not
    hold the later tips there (with ``hold_min_score`` -inf it does); the far tip still holds
    the run for the later frames (each must show the groove again); a tip short on the
    needle's own shaft is held as before, and so is one more than ``hold_release_max_mm``
    behind."""
    from dataclasses import replace

    stage = NeedleStage()
    assert math.isfinite(stage.settings.hold_min_score)
    old = NeedleStage(needle=replace(stage.settings, hold_min_score=-math.inf))
    tip, _, _, state = _needle_run(stage, 2)
    st = state.stage_state["needle"]
    ctx, u = st.ctx, st.track.dir_xy
    mm = 1.0 / SPACING_MM
    # the frame's working image with a dark groove from the tip 12 mm on along the axis
    work = st.mean_work.copy()
    groove = np.zeros(work.shape, np.float32)
    a, b = ctx.grid.to_work(tip + u), ctx.grid.to_work(tip + 12 * mm * u)
    cv2.line(groove, tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b), 1.0, 2)
    work -= 0.05 * cv2.GaussianBlur(groove, (0, 0), 0.7)
    st.finder.score_map(np.ascontiguousarray(work), ctx.valid_work)

    def run(stage, tips):
        st.track.enter_run("run-%d" % id(tips))
        st.track.reference_tip = None
        return [stage._no_retreat(st, ctx, t, u, True, st.finder) for t in tips]

    over = [tip + 4 * mm * u, tip, tip]
    assert all(np.allclose(t, tip) for t in run(stage, over)[1:])
    assert np.allclose(st.track.run_tips[-1], tip + 4 * mm * u)  # still the run's furthest
    assert all(np.allclose(t, tip + 4 * mm * u) for t in run(old, over)[1:])
    short = [tip, tip - 4 * mm * u]  # behind the tip, on the shaft
    assert np.allclose(run(stage, short)[1], tip)
    far = [tip + 10 * mm * u, tip]  # further than hold_release_max_mm
    assert stage.settings.hold_release_max_mm < 10.0
    assert np.allclose(run(stage, far)[1], tip + 10 * mm * u)


@pytest.mark.parametrize("target_near, reported", [("edge", None), ("free", "free"),
                                                   (None, "free")])
def test_a_needle_whose_tip_is_beyond_the_field_edge_is_not_tipped_at_its_free_end(
        target_near, reported):
    """A needle whose tip lies 10 px under the collimator's lower edge (a tight field) runs out
    of the field at one end and ends free inside it, at its hub side: one frame cannot tell it
    from a needle coming in from beyond the edge, but the needle is aimed at the register
    target. With the target by the end at the edge, the free end (before: reported at
    confidence 0.99, 130 mm off; 65 mm on session 25's review r6) is not reported; with the
    target by the free end it is the tip of a needle coming in; without a target the free end
    stays the tip (``edge_tip_ratio``)."""
    from dataclasses import replace as dc_replace

    from sifluoro.register import RegisterResult
    from sifluoro.track.needle_verify import ScoutSettings

    tip, hub = np.array([137.0, 480.0]), np.array([262.3, 251.6])
    edge_y = 470  # the collimator's lower edge: the tip 10 px under it
    run = _run("1.2.13.1")
    run = dc_replace(run, technique=dc_replace(
        run.technique, shutter=Shutter(rect_xyxy=(0, 0, SIZE - 1, edge_y))))
    stage = NeedleStage(scout=ScoutSettings(scout_runs=0))
    state = Pipeline([stage]).start_study("1.2")
    if target_near is not None:
        near = {"edge": np.array([165.0, 440.0]), "free": hub + np.array([20.0, -30.0])}
        state.stage_state["register"] = RegisterResult(None, 0.0, False, tuple(near[target_near]),
                                                       5.0, (0.0, 0.0), False)
    outs = []
    for i in range(3):
        img = _background(130 + 100 * i)
        _draw_polyline(img, _needle_points(tip, hub), 0.05, 1.8)
        img[edge_y + 1:, :] = 1.0  # collimated: no exposure, stored at maximal attenuation
        outs.append(stage.process(_frame(img, run, i), state)["needle"])
    needle = outs[-1]
    if reported is None:
        assert all(n is None for n in outs)
    else:
        assert needle is not None and math.dist(needle["tip_xy"], hub) * SPACING_MM < 1.5


def _run_with_motion(shifts, stage: NeedleStage, moved_needle=True):
    """A 10-frame run of the needle of ``test_needle_tip_from_the_field_edge`` with the
    register stage's image motion ``shifts[i]`` (whole px) on frame i; the picture moved by it
    (``moved_needle``) or where it was. The tip errors (mm) from where it is drawn."""
    from sifluoro.register import RegisterResult

    tip, base = np.array([262.3, 251.6]), np.array([120.0, 511.0])
    state = Pipeline([stage]).start_study("1.2")
    target = np.array([300.0, 200.0])
    run = _run("1.2.14.1")
    errors = []
    for i, shift in enumerate(shifts):
        shift = np.asarray(shift, float)
        state.stage_state["register"] = RegisterResult(None, 0.0, False, tuple(target + shift),
                                                       5.0, tuple(shift), i == 0)
        drawn = shift if moved_needle else np.zeros(2)
        img = _background(140 + i)
        _draw_polyline(img, _needle_points(tip, base), 0.05, 1.8)
        # the patient moved: the whole picture (whole pixels)
        img = np.roll(img, (int(drawn[1]), int(drawn[0])), axis=(0, 1))
        needle = stage.process(_frame(img, run, i), state)["needle"]
        errors.append(None if needle is None
                      else math.dist(needle["tip_xy"], tip + drawn) * SPACING_MM)
    return errors


@pytest.mark.parametrize("motion_min_mm, followed", [(1.2, True), (0.0, False)])
def test_a_needle_moved_with_the_anatomy_is_followed_with_the_register_s_motion(
        motion_min_mm, followed):
    """The patient (or the table) moves 4.5 px (2.2 mm) across the needle on the run's sixth
    frame and the register stage measures it: the run's mean and the track move with it, and
    the tip is found again on the next frame (the register's median of three frames has moved
    then, and the frame matches the run's mean moved better than not). Not followed
    (``motion_min_mm`` 0: off), the needle was lost on four frames, as a 3 px shift lost it on
    6 of 7 (session 25's review r9)."""
    from sifluoro.track.needle_detect import NeedleSettings
    from sifluoro.track.needle_verify import ScoutSettings

    stage = NeedleStage(needle=NeedleSettings(motion_min_mm=motion_min_mm),
                        scout=ScoutSettings(scout_runs=0))
    errors = _run_with_motion([(0, 0)] * 5 + [(4, 2)] * 5, stage)
    assert all(e is not None and e < 1.0 for e in errors[:5])
    later = errors[6:9]
    assert all(e is not None and e < 1.0 for e in later) == followed


@pytest.mark.parametrize("outlier_frames", [1, 4])
def test_a_registration_error_does_not_move_the_needle(outlier_frames):
    """The register's motion 5 px off while the picture stays: on one frame (a weak
    registration; seen 2.2 mm off on training seed 4102) the median of three frames does not
    move; on four (seen 1.6 mm off on three frames of held-out seed 31337, the needle then
    lost on six) the frame matches the run's mean better as it is."""
    from sifluoro.track.needle_verify import ScoutSettings

    stage = NeedleStage(scout=ScoutSettings(scout_runs=0))
    shifts = [(0, 0)] * 5 + [(5, -2)] * outlier_frames + [(0, 0)] * (5 - outlier_frames)
    errors = _run_with_motion(shifts, stage, moved_needle=False)
    assert all(e is not None and e < 1.0 for e in errors)
