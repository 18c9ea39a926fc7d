"""The register stage on simulated studies and on frames that show no joint."""
import numpy as np
import pytest

from sifluoro.model import Shutter
from sifluoro.pipeline import Pipeline
from sifluoro.register import RegisterResult
from sifluoro.register.stage import JointStage
from sifluoro.sim.evaluate import _polyline_points
from sifluoro.sim.visibility import distance_to_polyline_px

from .conftest import frames_of, make_run


@pytest.fixture(scope="module")
def stage():
    return JointStage()


def run_frames(stage, frames):
    state = Pipeline().start_study("1.2.3")
    events = []
    for f in frames:
        events.append(stage.process(f, state))
        assert isinstance(state.stage_state["register"], RegisterResult)
    return events, state


def mean_distance_mm(polyline, truth, spacing_mm):
    return float(distance_to_polyline_px(_polyline_points(polyline), np.asarray(truth)).mean() * spacing_mm)


def test_event_fields_and_result_on_every_frame(stage, sim_runs):
    frames = [f for _, fr, _ in sim_runs[:3] for f in fr]
    events, state = run_frames(stage, frames)
    for e in events:
        assert set(e) == {"joint", "target"}
        if e["joint"] is not None:
            j = e["joint"]
            assert set(j) == {"polyline_xy", "confidence", "doubled", "advice", "view_changed"}
            assert 0.0 <= j["confidence"] <= 1.0
            assert (j["advice"] is not None) == j["doubled"]
            assert len(j["polyline_xy"]) >= 2
    # the first frame and the first frame of the working pose are view changes
    result = state.stage_state["register"]
    assert result.view_changed is False


def test_opened_view_is_found_within_2_mm(stage, sim_runs):
    """The view-change run of case (7, 2) opens the joint (single line)."""
    frames = [f for _, fr, _ in sim_runs[:4] for f in fr]
    events, _ = run_frames(stage, frames)
    run, fr, truth = sim_runs[3]
    assert not truth[0].joint_doubled
    spacing = run.pixel_spacing_xy_mm[0]
    last = events[-1]["joint"]
    assert last is not None and last["view_changed"] is False
    assert mean_distance_mm(last["polyline_xy"], truth[-1].joint_polyline_xy, spacing) < 5.0
    assert events[-1]["target"] is not None


def _flat_run(pixels, **kw):
    return make_run(pixels[None] if pixels.ndim == 2 else pixels, **kw)


NO_JOINT_CASES = {
    "pure noise": lambda rng: _flat_run(rng.integers(0, 4096, (512, 512)).astype(np.uint16)),
    "soft tissue and noise": lambda rng: _flat_run(np.clip(
        1800 + 300 * np.linspace(-1, 1, 512)[None, :] + rng.normal(0, 60, (512, 512)), 0, 4095)
        .astype(np.uint16)),
    "saturated": lambda rng: _flat_run(np.full((512, 512), 4095, np.uint16)),
    "black": lambda rng: _flat_run(np.zeros((512, 512), np.uint16)),
    "8-bit noise": lambda rng: _flat_run(rng.integers(0, 256, (512, 512)).astype(np.uint16),
                                         bits_stored=8),
    "8-bit smooth": lambda rng: _flat_run(np.clip(128 + rng.normal(0, 4, (512, 512)), 0, 255)
                                          .astype(np.uint16), bits_stored=8),
    "collimated to nothing": lambda rng: _flat_run(rng.integers(0, 4096, (512, 512)).astype(np.uint16),
                                                   shutter=Shutter(rect_xyxy=(250, 250, 260, 260))),
}


@pytest.mark.parametrize("name", sorted(NO_JOINT_CASES))
def test_no_line_without_a_joint(stage, name):
    rng = np.random.default_rng(3)
    run = NO_JOINT_CASES[name](rng)
    frames = frames_of(run) * 3
    events, state = run_frames(stage, frames)
    assert all(e["joint"] is None and e["target"] is None for e in events)
    assert state.stage_state["register"].joint_polyline_xy is None


def test_no_line_on_a_view_away_from_the_joint(stage, sim_runs):
    """A scout of the wrong region: the frame cropped to a corner the joint does not reach."""
    run, frames, truth = sim_runs[3]
    joint = np.asarray(truth[0].joint_polyline_xy)
    size = 200
    corners = [(0, 0), (512 - size, 0), (0, 512 - size), (512 - size, 512 - size)]
    far = max(corners, key=lambda c: np.hypot(*(joint.mean(0) - np.add(c, size / 2))))
    x0, y0 = far
    assert not ((joint[:, 0] > x0 - 20) & (joint[:, 0] < x0 + size + 20)
                & (joint[:, 1] > y0 - 20) & (joint[:, 1] < y0 + size + 20)).any()
    crop = np.stack([f.pixels[y0:y0 + size, x0:x0 + size] for f in frames])
    cropped = make_run(crop, bits_stored=run.bits_stored, photometric=run.photometric,
                       pixel_intensity_sign=run.pixel_intensity_sign, spacing_mm=run.pixel_spacing_xy_mm[0])
    events, _ = run_frames(stage, frames_of(cropped))
    assert all(e["joint"] is None for e in events)


@pytest.mark.parametrize("photometric, sign", [("MONOCHROME2", -1), ("MONOCHROME1", None),
                                               ("MONOCHROME2", 1)])
def test_every_storage_convention_gives_the_same_line(stage, sim_runs, photometric, sign):
    """Bone bright as stored (MONOCHROME2, sign -1), MONOCHROME1, and MONOCHROME2 bone-dark
    (PixelIntensityRelationshipSign +1, the fluoroscopy monitor's convention)."""
    run, frames, truth = sim_runs[3]
    top = (1 << run.bits_stored) - 1
    variant = make_run(np.stack([f.pixels for f in frames]), bits_stored=run.bits_stored,
                       photometric=photometric, pixel_intensity_sign=sign, technique=run.technique)
    if variant.attenuation_rises_with_value != run.attenuation_rises_with_value:
        pixels = np.stack([top - f.pixels for f in frames]).astype(np.uint16)
        variant = make_run(pixels, bits_stored=run.bits_stored, photometric=photometric,
                           pixel_intensity_sign=sign, technique=run.technique)
    a, _ = run_frames(stage, frames)
    b, _ = run_frames(stage, frames_of(variant))
    assert a[-1]["joint"] is not None
    assert b[-1]["joint"] is not None
    np.testing.assert_allclose(a[-1]["joint"]["polyline_xy"], b[-1]["joint"]["polyline_xy"], atol=0.01)


def test_line_follows_a_table_shift(stage, sim_runs):
    """The same frames moved by a known shift: the line moves with them, no re-segmentation."""
    run, frames, truth = sim_runs[3]
    shift = np.array([6, -4])
    moved = np.stack([np.roll(f.pixels, shift[::-1], axis=(0, 1)) for f in frames])
    later = make_run(moved, bits_stored=run.bits_stored, photometric=run.photometric,
                     pixel_intensity_sign=run.pixel_intensity_sign, technique=run.technique, index=1)
    events, state = run_frames(stage, frames + frames_of(later, len(frames)))
    before, after = events[len(frames) - 1]["joint"], events[-1]["joint"]
    assert before is not None and after is not None
    assert after["view_changed"] is False
    result = state.stage_state["register"]
    np.testing.assert_allclose(result.shift_xy, shift, atol=1.0)  # the field edge moved too
    d = mean_distance_mm(np.asarray(after["polyline_xy"]) - shift, before["polyline_xy"], 1.0)
    assert d < 1.0


def test_new_angle_is_a_view_change(stage, sim_runs):
    events, _ = run_frames(stage, [f for _, fr, _ in sim_runs[2:4] for f in fr])
    n = len(sim_runs[2][1])
    changed = [e["joint"]["view_changed"] for e in events if e["joint"] is not None]
    assert events[n]["joint"] is None or events[n]["joint"]["view_changed"]
    assert sum(changed) <= 2


def _synthetic_joint(slope: float, *, double_mm: float | None = None, size: int = 160,
                     spacing_mm: float = 0.6) -> np.ndarray:
    """A bright field with a thin lucent line through the centre, ``dx/dy = slope``, between
    two dense rims; with ``double_mm`` a second, fainter line that far beside it."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    c = (size - 1) / 2.0
    d = (xx - c - slope * (yy - c)) * spacing_mm / np.sqrt(1 + slope ** 2)
    image = 0.6 + 0.05 * np.exp(-((np.abs(d) - 1.8) / 0.8) ** 2) - 0.08 * np.exp(-(d / 0.7) ** 2)
    if double_mm is not None:
        image[:] = 0.6 + 0.02 * np.exp(-((d + 2.5) / 1.5) ** 2) - 0.04 * np.exp(-(d / 0.7) ** 2) \
            - 0.03 * np.exp(-((d - double_mm) / 0.7) ** 2)
    inside = (yy > 20) & (yy < size - 20)
    image = np.where(inside, image, 0.6)
    return (image + np.random.default_rng(0).normal(0, 0.002, image.shape)).astype(np.float32)


def test_side_prior_rejects_a_line_running_the_wrong_way():
    from sifluoro.imaging import WorkingGrid
    from sifluoro.register.joint import segment_joint
    grid = WorkingGrid(1, 0.6)
    usable = np.ones((160, 160), bool)
    left_running = _synthetic_joint(-0.3)
    assert segment_joint(left_running, grid=grid, usable=usable, side="L") is not None
    assert segment_joint(left_running, grid=grid, usable=usable, side=None) is not None
    assert segment_joint(left_running, grid=grid, usable=usable, side="R") is None


@pytest.mark.parametrize("side", ["L", "R", None])
def test_a_line_running_straight_down_is_not_a_joint(side):
    """The joint always runs obliquely (inferiorly towards the midline); a straight lucent line
    (on near-AP scouts, a strip in the sacrum) is not taken for it, whatever the side."""
    from sifluoro.imaging import WorkingGrid
    from sifluoro.register.joint import segment_joint
    grid = WorkingGrid(1, 0.6)
    usable = np.ones((160, 160), bool)
    assert segment_joint(_synthetic_joint(0.0), grid=grid, usable=usable, side=side) is None
    oblique = _synthetic_joint({"L": -0.2, "R": 0.2, None: 0.2}[side])
    assert segment_joint(oblique, grid=grid, usable=usable, side=side) is not None


def test_line_far_from_the_centre_is_not_a_joint():
    from sifluoro.imaging import WorkingGrid
    from sifluoro.register.joint import segment_joint
    grid = WorkingGrid(1, 0.6)
    image = _synthetic_joint(-0.3)
    wide = np.full((160, 480), 0.6, np.float32)
    wide[:, 320:] = image  # the line is now ~96 mm right of the centre
    assert segment_joint(wide, grid=grid, usable=np.ones(wide.shape, bool), side="L") is None


@pytest.mark.parametrize("offset_mm, plausible", [(30.0, True), (44.0, False)])
def test_a_line_whose_target_lies_far_from_the_centre_is_not_a_joint(offset_mm, plausible):
    """The C-arm is centred near the joint's inferior third: a line whose target point lies
    more than 40 mm from the image centre is another structure."""
    from sifluoro.imaging import WorkingGrid
    from sifluoro.register.joint import _plausible
    grid = WorkingGrid(2, 0.6)  # full-resolution pixels of 0.3 mm
    shape = (400, 400)  # working pixels: a 800 px full frame, centre at 399.5
    ys = np.linspace(0.0, 480.0, 41)  # the point at 5/6 of its length on the centre row
    full = np.stack([399.5 + offset_mm / 0.3 - 0.2 * (ys - 399.5), ys], axis=1)
    assert _plausible(full, shape, grid, "L") is plausible


def test_rim_balance_tells_a_tangent_line_from_doubled_margins():
    from sifluoro.register.joint import _rim_balance
    path = np.full(160, 80, np.int32)
    single = _synthetic_joint(0.0)
    doubled = _synthetic_joint(0.0, double_mm=5.0)
    assert _rim_balance(single, path, 30, 130, 0.6) > 0.8
    assert _rim_balance(doubled, path, 30, 130, 0.6) < 0.7


def test_a_line_between_unlike_rims_is_single():
    """A tangent line between two bones whose cortical rims differ (weaker over stronger
    about 0.68, as on single lines of training seeds 1501-1509) is one line; doubled margins,
    one rim washed out (about 0.62), are doubled."""
    from sifluoro.imaging import WorkingGrid
    from sifluoro.register.joint import _rim_balance, segment_joint
    size, spacing_mm = 160, 0.6
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    d = (xx - 79.5 + 0.3 * (yy - 79.5)) * spacing_mm / np.sqrt(1.09)
    rims = 0.05 * np.where(d < 0, 1.0, 0.18) * np.exp(-((np.abs(d) - 1.8) / 0.8) ** 2)
    unlike = np.where((yy > 20) & (yy < size - 20), 0.6 + rims - 0.08 * np.exp(-(d / 0.7) ** 2), 0.6)
    unlike = (unlike + np.random.default_rng(0).normal(0, 0.002, unlike.shape)).astype(np.float32)
    path = np.clip(np.round(79.5 - 0.3 * (np.arange(size) - 79.5)), 0, size - 1).astype(np.int32)
    assert 0.65 < _rim_balance(unlike, path, 30, 130, spacing_mm) < 0.7
    grid, usable = WorkingGrid(1, spacing_mm), np.ones((size, size), bool)
    line = segment_joint(unlike, grid=grid, usable=usable, side="L")
    assert line is not None and not line.doubled
    doubled = segment_joint(_synthetic_joint(-0.3, double_mm=5.0), grid=grid, usable=usable, side="L")
    assert doubled is not None and doubled.doubled


def test_a_faint_single_line_is_taken_for_non_superimposed_margins():
    """Off tangency the gap projects wide and faint: a line only a few noise levels deep is
    reported doubled (advice to rotate), the same line in full contrast is not."""
    from sifluoro.imaging import WorkingGrid
    from sifluoro.register.joint import segment_joint
    grid = WorkingGrid(1, 0.6)
    usable = np.ones((160, 160), bool)
    line_only = _synthetic_joint(-0.3) - np.random.default_rng(0).normal(0, 0.002, (160, 160))
    noise = np.random.default_rng(1).normal(0, 0.004, line_only.shape)
    results = {}
    for scale in (1.0, 0.07):
        image = (0.6 + scale * (line_only - 0.6) + noise).astype(np.float32)
        results[scale] = segment_joint(image, grid=grid, usable=usable, side="L")
    assert results[1.0] is not None and not results[1.0].doubled
    assert results[0.07] is not None and results[0.07].doubled


def test_superior_depth_ratio():
    from sifluoro.register.joint import superior_depth_ratio
    assert superior_depth_ratio(np.full(30, 5.0)) == pytest.approx(1.0)
    # fading inferiorly (the joint turns into the sciatic notch) or in the middle: not faint above
    assert superior_depth_ratio(np.r_[np.full(10, 9.0), np.full(10, 8.0), np.full(10, 3.0)]) > 1.0
    assert superior_depth_ratio(np.r_[np.full(10, 8.0), np.full(10, 2.0), np.full(10, 6.0)]) > 1.0
    assert superior_depth_ratio(np.r_[np.full(10, 2.0), np.full(10, 4.0), np.full(10, 8.0)]) == pytest.approx(0.25)
    assert superior_depth_ratio(np.array([1.0, 2.0])) == 1.0


@pytest.mark.parametrize("faint_rows, top_row", [(None, 51), ((20, 72), 70), ((70, 90), 51),
                                                 ((90, 140), 51)])
def test_a_line_faint_over_its_superior_third_loses_it(faint_rows, top_row):
    """A line that runs on past the joint's superior end along a fainter outline: its faint
    superior third is cut off; one that fades in the middle or inferiorly keeps its length."""
    from sifluoro.imaging import WorkingGrid
    from sifluoro.register.joint import segment_joint
    grid = WorkingGrid(1, 0.6)
    usable = np.ones((160, 160), bool)
    image = _synthetic_joint(-0.3)
    if faint_rows is not None:
        a, b = faint_rows
        image[a:b] = 0.6 + 0.3 * (image[a:b] - 0.6)  # the whole line found runs on rows 51-107
    line = segment_joint(image, grid=grid, usable=usable, side="L")
    assert line is not None and abs(line.polyline_xy[0, 1] - top_row) <= 1
    assert line.polyline_xy[-1, 1] == pytest.approx(107, abs=1)


def test_window_leaves_out_a_notch_outline_too_oblique_for_a_joint():
    """The path runs down a joint (near vertical) and on along the sciatic notch (45 degrees),
    as strongly: the kept window is the joint, not the more inferior notch."""
    from sifluoro.register.joint import _best_window
    rows = 200
    path = np.full(rows, 100, np.int32)
    path[100:] = 100 - np.arange(100)  # the notch: one column per row
    gain = np.full((rows, 240), -10.0, np.float32)
    gain[np.arange(rows), path + 20] = -10.0
    gain[np.arange(rows), path] = 5.0
    y0, y1, _ = _best_window(gain, path, 0, rows - 1, 80)
    assert y1 < 150  # at most 60 % of it along the notch (the last 80 rows without the rule)
    slope = abs(int(path[y1]) - int(path[y0])) / (y1 - y0)
    assert slope <= 0.6


def _widening_joint(narrow_rows=(60, 150), size=(220, 160), spacing_mm=0.6) -> np.ndarray:
    """A lucent line between two dense rims, dx/dy = -0.3, from row 20 to 200: its gap is
    2 mm wide over ``narrow_rows`` and widens linearly beyond (1 mm per 10 rows), as the space
    between sacrum and ilium does beyond the synovial joint."""
    yy, xx = np.mgrid[:size[0], :size[1]].astype(np.float64)
    c = (size[1] - 1) / 2.0
    d = (xx - c + 0.3 * (yy - size[0] / 2)) * spacing_mm / np.sqrt(1 + 0.09)
    beyond = np.maximum(0, np.maximum(narrow_rows[0] - yy, yy - narrow_rows[1]))
    half = 1.0 + 0.05 * beyond
    image = (0.6 + 0.05 * np.exp(-((np.abs(d) - half - 0.8) / 0.8) ** 2)
             - 0.08 / (1 + (d / half) ** 6))
    image = np.where((yy > 20) & (yy < 200), image, 0.6)
    return (image + np.random.default_rng(0).normal(0, 0.002, image.shape)).astype(np.float32)


def test_rim_widths_measure_the_gap_between_the_rims():
    from sifluoro.register.joint import rim_widths
    image = _widening_joint()
    c = (image.shape[1] - 1) / 2.0
    path = np.rint(c - 0.3 * (np.arange(image.shape[0]) - image.shape[0] / 2)).astype(np.int32)
    w = rim_widths(image, path, 30, 190, reach=10, half=2) * 0.6  # mm
    # rims at +-(half + 0.8) mm across the line, measured along the row (1/cos of the slope)
    expected = 2 * (1.0 + 0.8) * np.sqrt(1.09)
    assert np.median(w[60 - 30:150 - 30]) == pytest.approx(expected, abs=0.7)
    assert w[190 - 30] > expected + 1.5 and w[0] > expected + 1.5


def _fit_end_reference(width, rate, core, cap, min_rows, spacing_mm):
    """Every candidate end, the whole model evaluated."""
    d = np.arange(len(width)) * spacing_mm
    ends = np.arange(min_rows, len(width))
    past = np.clip(d[None, :] - d[ends][:, None], 0.0, None)
    model = np.minimum(core + rate * past ** 2, cap)
    return int(ends[np.argmin(np.abs(width[None, :] - model).sum(axis=1))])


def test_fit_end_matches_the_full_model_and_finds_the_end():
    from sifluoro.register.joint import fit_end
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(12, 300))
        end = int(rng.integers(0, n))
        rate = float(rng.choice([0.012, 0.05]))
        past = np.clip(np.arange(n) - end, 0, None) * 0.6
        width = 3.0 + np.minimum(rate * past ** 2, 5.0) + rng.normal(0.0, 0.4, n)
        cap, core = float(np.percentile(width, 95)), 3.0
        assert (fit_end(width, rate=rate, core=core, cap=cap, min_rows=10, spacing_mm=0.6)
                == _fit_end_reference(width, rate, core, cap, 10, 0.6))
    # noiseless: the end itself
    past = np.clip(np.arange(200) - 120, 0, None) * 0.6
    width = 3.0 + np.minimum(0.012 * past ** 2, 6.0)
    assert abs(fit_end(width, rate=0.012, core=3.0, cap=9.0, min_rows=10, spacing_mm=0.6) - 120) <= 1
    assert fit_end(width[:8], rate=0.012, core=3.0, cap=9.0, min_rows=10, spacing_mm=0.6) == 7


def test_line_is_cut_where_the_gap_widens():
    """The valley path runs on along the widening space beyond the joint; the reported line
    keeps to the stretch of constant gap (within the width tolerance's reach)."""
    from sifluoro.imaging import WorkingGrid
    from sifluoro.register.joint import segment_joint
    image = _widening_joint()
    line = segment_joint(image, grid=WorkingGrid(1, 0.6), usable=np.ones(image.shape, bool),
                         side="L")
    assert line is not None
    ys = line.polyline_xy[:, 1]
    assert ys.min() >= 60 - 30 and ys.max() <= 150 + 30
    assert ys.max() - ys.min() >= 0.8 * 90


@pytest.mark.parametrize("primary_deg", [5.0, -40.0])
def test_a_near_ap_or_far_oblique_view_is_called_doubled(stage, sim_runs, primary_deg):
    """The opened (single-line) frames of case (7, 2) under a header that says the beam is
    near AP or far more oblique than the joint: a joint 20-30 degrees oblique cannot be tangent
    to it, so the advice is given."""
    from dataclasses import replace
    run, frames, truth = sim_runs[3]
    assert not truth[0].joint_doubled
    opened, _ = run_frames(stage, frames)
    assert opened[-1]["joint"] is not None and not opened[-1]["joint"]["doubled"]
    near_ap = make_run(np.stack([f.pixels for f in frames]), bits_stored=run.bits_stored,
                       photometric=run.photometric, pixel_intensity_sign=run.pixel_intensity_sign,
                       technique=replace(run.technique, primary_angle_deg=primary_deg))
    events, _ = run_frames(stage, frames_of(near_ap))
    assert events[-1]["joint"] is not None
    assert events[-1]["joint"]["doubled"] and events[-1]["joint"]["advice"] is not None


def test_refined_line_is_midway_between_the_rims():
    """Bones of different density either side: the darkest point of the blurred profile is
    pulled towards the lighter bone, the midpoint of the two cortical rims is not."""
    import cv2
    from sifluoro.register.joint import _refine
    cols, centre = 160, 80.3
    x = np.arange(cols)[None, :].astype(np.float64)
    d = (x - centre) * 0.6
    image = (0.6 + 0.12 * (d > 0) + 0.05 * np.exp(-((np.abs(d) - 2.3) / 0.6) ** 2)
             - 0.08 / (1 + (d / 1.5) ** 6))
    image = cv2.GaussianBlur(np.repeat(image, 60, axis=0).astype(np.float32), (0, 0), 1.2)
    path = np.full(60, 80, np.int32)
    pts = _refine(image, path, 5, 54, reach=3, rim_reach=10, half=1)
    np.testing.assert_allclose(pts[:, 1], np.arange(5, 55))
    assert np.abs(pts[:, 0] - centre).max() < 0.3
    darkest = 80 - 3 + int(np.argmin(image[30, 77:84]))
    assert abs(darkest - centre) > 0.6


def _without_angles(run_item):
    """The run's frames under a header that states no C-arm angles (as many RF headers)."""
    from dataclasses import replace
    run, frames, truth = run_item
    bare = make_run(np.stack([f.pixels for f in frames]), bits_stored=run.bits_stored,
                    photometric=run.photometric, pixel_intensity_sign=run.pixel_intensity_sign,
                    technique=replace(run.technique, primary_angle_deg=None,
                                      secondary_angle_deg=None), index=run.index)
    return frames_of(bare, frames[0].index), truth


def test_a_new_pose_without_header_angles_is_a_new_view(stage, sim_runs):
    """Case (7, 2) with no angles in any header: the opened run (a new C-arm angle) matches the
    doubled working view too poorly to be the same pose, and gets its own line; the working
    runs, at one pose, stay one view."""
    items = [_without_angles(item) for item in sim_runs[:4]]
    frames = [f for fr, _ in items for f in fr]
    events, _ = run_frames(stage, frames)
    starts = np.cumsum([0] + [len(fr) for fr, _ in items])
    opened = events[starts[3]]["joint"]
    assert opened is None or opened["view_changed"]
    assert not any(e["joint"] is not None and e["joint"]["view_changed"]
                   for e in events[starts[2]:starts[2] + 1])
    last, truth = events[-1]["joint"], items[3][1][-1]
    spacing = sim_runs[3][0].pixel_spacing_xy_mm[0]
    assert last is not None and not last["doubled"]
    assert mean_distance_mm(last["polyline_xy"], truth.joint_polyline_xy, spacing) < 2.0


def test_inferior_end_is_looked_for_below_a_window_that_cut_it_off():
    """The window (rows 40-120) stops inside the stretch of constant gap (60-150): the inferior
    end is found further down the path, where the gap widens; a window that covers the end keeps
    the end found within it."""
    from sifluoro.register.joint import NARROW_TRIM_MM, _narrow_stretch
    image = _widening_joint()
    c = (image.shape[1] - 1) / 2.0
    rows = np.arange(image.shape[0])
    path = np.rint(c - 0.3 * (rows - image.shape[0] / 2)).astype(np.int32)
    gain = np.full(image.shape, -10.0, np.float32)
    gain[rows[21:200], path[21:200]] = 5.0  # the valley path follows the line where it is drawn
    trim = NARROW_TRIM_MM / 0.6
    _, b, _ = _narrow_stretch(image, gain, path, 25, 195, 40, 120, 0.6, 0.0)
    assert abs(b + trim - 150) <= 8
    _, b_covered, _ = _narrow_stretch(image, gain, path, 25, 195, 40, 185, 0.6, 0.0)
    assert abs(b_covered + trim - 150) <= 8


def test_a_table_moved_under_the_same_angles_is_a_new_view():
    """A scout of the wrong level (no joint in the field) at the scout's own C-arm angles, then
    the study (training seed 630, case 11): no line on the wrong level, and the real scout,
    whose first frame does not match the wrong level's at all, gets the lines it gets without
    the wrong level before (the old rule kept the wrong level's view: a weak peak under
    unchanged angles was taken for a noisy frame)."""
    from sifluoro.sim import simulate_case
    from sifluoro.sim.export import technique_of

    study = simulate_case(630, 11, wrong_level_scout=True)
    frames, index = [], 0
    for r, sim_run in enumerate(study.runs[:3]):
        run = make_run(sim_run.frames, bits_stored=sim_run.bits_stored,
                       photometric=sim_run.photometric,
                       pixel_intensity_sign=sim_run.pixel_intensity_sign,
                       technique=technique_of(sim_run, study.size, reported=None), index=r)
        frames.append(frames_of(run, index))
        index += len(frames[-1])
    wrong, scout = frames[0], frames[1] + frames[2]
    assert wrong[0].technique.primary_angle_deg == scout[0].technique.primary_angle_deg
    alone, _ = run_frames(JointStage(), scout)
    after, _ = run_frames(JointStage(), wrong + scout)
    assert all(e["joint"] is None for e in after[:len(wrong)])
    assert [e["joint"] for e in after[len(wrong):]] == [e["joint"] for e in alone]
    assert sum(e["joint"] is not None for e in alone) >= 3  # not a comparison of Nones
    # back to the scout's angles after the oblique run: of the two views at those angles, the
    # real scout's is re-entered (its line at once), not the wrong level's, and none is added
    again = make_run(study.runs[1].frames, bits_stored=study.runs[1].bits_stored,
                     photometric=study.runs[1].photometric,
                     pixel_intensity_sign=study.runs[1].pixel_intensity_sign,
                     technique=frames[1][0].run.technique, index=7)
    back, state = run_frames(JointStage(), wrong + scout + frames_of(again, 2000))
    assert len(state.stage_state["register_views"].views) == 3
    first_back = back[len(wrong) + len(scout)]["joint"]
    assert first_back is not None and first_back["view_changed"]


@pytest.mark.parametrize("doubled_from, expected", [(4, True), (8, True), (2, False), (None, False)])
def test_a_line_called_doubled_on_four_frames_stays_doubled(monkeypatch, doubled_from, expected):
    """Averaging lowers the noise, not the depth of non-superimposed margins: once a line on 4
    or more frames is called doubled, the deeper-looking line of 8 and 16 frames is too; a call
    made on fewer, noisier frames does not stick."""
    from sifluoro.register import stage as register_stage
    from sifluoro.register.joint import JointLine

    segmented_at = iter(register_stage.RESEGMENT_AT)

    def segment(mean, *, grid, usable, side, fallback_contrast=None, **_seed):
        frames = next(segmented_at)
        doubled = doubled_from is not None and frames <= doubled_from
        return JointLine(np.array([[30.0, 20.0], [24.0, 100.0]]), 0.9, doubled, 50.0)

    monkeypatch.setattr(register_stage, "segment_joint", segment)
    work = np.full((64, 64), 0.5, np.float32)
    view = register_stage._View(register_stage._Geometry(128, 128, 0.3), (25.0, 0.0),
                                np.ones((64, 64), bool), work)
    for _ in range(16):
        view.add(work, np.ones((64, 64), bool), (0.0, 0.0))
        if view.frames in register_stage.RESEGMENT_AT:
            view.segment()
    assert view.line.doubled == expected


def test_burned_in_text_is_not_usable():
    from sifluoro.register.joint import usable_mask
    from sifluoro.sim.detector import burn_in
    top = (1 << 12) - 1
    pixels = np.full((512, 512), top // 2, np.uint16)
    burn_in(pixels, ["2024-03-11 14:17:07", "87 kV  14.3 mA  7.5 p/s"], "R", 12, "MONOCHROME2")
    usable = usable_mask(pixels.astype(np.float32) / top, np.ones((512, 512), bool), 1)
    drawn = pixels != top // 2
    assert usable[~drawn].mean() > 0.99
    for line in (np.s_[:24, :300], np.s_[24:60, :300]):  # each text line is found
        assert (~usable[line][drawn[line]]).mean() > 0.5


def test_a_weak_peak_within_a_run_without_header_angles_is_a_noisy_frame(sim_runs, monkeypatch):
    """A low-dose frame whose registration peak is weak, in a run that matched the view at its
    start, is averaged into the view with the last motion even without header angles (before,
    every such frame started a new view, segmented alone)."""
    from sifluoro.register.motion import Motion, Registrar
    frames, _ = _without_angles(sim_runs[2])
    measure = Registrar.measure
    monkeypatch.setattr(Registrar, "measure",
                        lambda self, work: Motion(measure(self, work).shift_xy, 0.1))
    events, state = run_frames(JointStage(), frames)
    view = state.stage_state["register_views"].current
    assert len(frames) >= 3 and view.frames == min(len(frames), 16)
    assert not any(e["joint"] is not None and e["joint"]["view_changed"] for e in events[1:])


def test_a_pose_change_within_a_run_without_header_angles_is_a_new_view(sim_study):
    """The scout's frames, then those of the oblique run 3, as one run without C-arm angles in
    its header (the C-arm turned during fluoroscopy): the registration peak drops from strong
    (0.85) to weak (0.22), which is a new view, not a noisy frame; the line follows run 3."""
    from dataclasses import replace

    from sifluoro.sim.export import technique_of

    a, b = sim_study.runs[0], sim_study.runs[3]
    k = len(a.frames)
    pixels = np.concatenate([a.frames, b.frames])
    truth = list(a.truth) + list(b.truth)
    tech = replace(technique_of(a, sim_study.size, reported=None), primary_angle_deg=None,
                   secondary_angle_deg=None)
    run = make_run(pixels, bits_stored=a.bits_stored, photometric=a.photometric,
                   pixel_intensity_sign=a.pixel_intensity_sign, technique=tech)
    events, _ = run_frames(JointStage(), frames_of(run))
    assert events[k]["joint"] is not None and events[k]["joint"]["view_changed"]
    spacing = run.pixel_spacing_xy_mm[0]
    late = [mean_distance_mm(e["joint"]["polyline_xy"], t.joint_polyline_xy, spacing)
            for e, t in zip(events[k:], truth[k:]) if e["joint"] is not None]
    assert late and max(late) < 2.0


def test_a_one_point_line_has_a_point_and_is_not_a_joint():
    """A one-row stretch of the path gave a one-vertex line: point_at raised IndexError in
    the warm-up on common geometries (768² at 0.37 mm, PAL 720x576 at 0.38 mm), and the
    replay or receiver lost the whole study, dose included."""
    from sifluoro.imaging import working_grid
    from sifluoro.register.joint import JointLine, _plausible

    line = JointLine(np.array([[10.0, 20.0]]), 0.0, False, 0.0)
    assert line.point_at(5 / 6).tolist() == [10.0, 20.0]
    assert not _plausible(np.array([[100.0, 100.0]]), (200, 200), working_grid(0.6, target_mm=0.6), None)


@pytest.mark.parametrize("rows,cols,spacing_mm", [
    (768, 768, 0.37), (768, 768, 0.38), (576, 720, 0.38), (576, 720, 0.39), (768, 768, 0.8),
    (480, 640, 0.8), (256, 256, 0.8),  # the warm-up crashed on each (review helper-48)
    (96, 96, 0.15), (16, 256, 0.742), (8, 8, 0.742)])  # smaller than any joint: no line
def test_every_frame_geometry_is_warmed_up_and_processed(rows, cols, spacing_mm):
    from sifluoro.config import Settings
    from sifluoro.stages import make_stages

    rng = np.random.default_rng(3)
    pixels = rng.integers(1200, 2800, (3, rows, cols)).astype(np.uint16)
    run = make_run(pixels, spacing_mm=spacing_mm)
    settings = Settings(latency_budget_ms=float("inf"), stage_threads=1)
    pipeline = Pipeline(make_stages(("register", "needle", "contrast"), settings), settings)
    JointStage().warm_up(frames_of(run)[0])  # raised IndexError / cv2.error
    state = pipeline.start_study("1.2.3")
    pipeline.prepare_run(run, state)
    events = [pipeline.process(f, state) for f in frames_of(run)]
    assert [e.get("failed_stages", []) for e in events] == [[]] * 3
    assert state.frames == 3


def test_a_failing_warm_up_loses_no_frame_and_no_dose(monkeypatch):
    """A stage whose warm-up raises is logged; the run's frames are still processed and
    their dose counted (the exception stopped replay, receiver and Engine alike)."""
    from sifluoro.config import Settings
    from sifluoro.stages import make_stages

    def broken(self, frame):
        raise RuntimeError("warm-up broke")

    monkeypatch.setattr(JointStage, "warm_up", broken)
    pixels = np.random.default_rng(4).integers(1200, 2800, (2, 128, 128)).astype(np.uint16)
    run = make_run(pixels)
    settings = Settings(latency_budget_ms=float("inf"), stage_threads=1)
    pipeline = Pipeline(make_stages(("register",), settings), settings)
    state = pipeline.start_study("1.2.3")
    pipeline.prepare_run(run, state)
    for f in frames_of(run):
        pipeline.process(f, state)
    assert state.frames == 2


def _faint_joint(seed: int = 1, scale: float = 0.04) -> np.ndarray:
    """The synthetic joint at ``scale`` of its contrast in noise: its path stands 2-3 noise
    levels above the background (found at 2, not at 3)."""
    line_only = _synthetic_joint(-0.3) - np.random.default_rng(0).normal(0, 0.002, (160, 160))
    noise = np.random.default_rng(seed).normal(0, 0.004, line_only.shape)
    return (0.6 + scale * (line_only - 0.6) + noise).astype(np.float32)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_fainter_line_is_looked_for_only_when_none_stands_out(seed):
    from sifluoro.imaging import WorkingGrid
    from sifluoro.register.joint import segment_joint
    grid = WorkingGrid(1, 0.6)
    usable = np.ones((160, 160), bool)
    faint = _faint_joint(seed)
    assert segment_joint(faint, grid=grid, usable=usable, side="L") is None
    line = segment_joint(faint, grid=grid, usable=usable, side="L", fallback_contrast=2.0)
    truth = np.array([[79.5 - 0.3 * (21 - 79.5), 21.0], [79.5 - 0.3 * (139 - 79.5), 139.0]])
    assert line is not None
    assert distance_to_polyline_px(_polyline_points(line.polyline_xy), truth).mean() * 0.6 < 1.0
    noise = (0.6 + np.random.default_rng(seed).normal(0, 0.004, (160, 160))).astype(np.float32)
    assert segment_joint(noise, grid=grid, usable=usable, side="L", fallback_contrast=2.0) is None
    # a line that stands out is the same either way
    strong = _synthetic_joint(-0.3)
    a = segment_joint(strong, grid=grid, usable=usable, side="L")
    b = segment_joint(strong, grid=grid, usable=usable, side="L", fallback_contrast=2.0)
    np.testing.assert_array_equal(a.polyline_xy, b.polyline_xy)


@pytest.mark.parametrize("angles, frames, noise_only, found", [
    ((0.0, 5.0), 4, False, True), ((-9.0, 0.0), 8, False, True),
    ((0.0, 5.0), 4, True, False),  # noise: no line however faint the search
    ((25.0, 0.0), 4, False, False),  # a working angle: the line must stand out
    (None, 4, False, False),  # no header angles: the pose is not known to be near AP
    ((0.0, 5.0), 2, False, False)])  # too few frames averaged
def test_a_near_ap_view_is_searched_for_a_fainter_line(angles, frames, noise_only, found):
    """Near AP the margins project apart and the line is fainter: a near-AP view (header angles)
    without a line on 4 or more frames is searched again at a lower contrast; the line is
    doubled."""
    from sifluoro.register import stage as register_stage
    work = _faint_joint()
    if noise_only:
        work = (0.6 + np.random.default_rng(1).normal(0, 0.004, work.shape)).astype(np.float32)
    usable = np.ones(work.shape, bool)
    view = register_stage._View(register_stage._Geometry(160, 160, 0.6), angles, usable, work, "L")
    for _ in range(frames):
        view.add(work, usable, (0.0, 0.0))
    view.segment()
    assert (view.line is not None) == found
    if found:
        assert view.line.doubled


def _faint_view(angles, seed_xy=None, frames=2):
    from sifluoro.register import stage as register_stage
    work = _faint_joint()
    usable = np.ones(work.shape, bool)
    view = register_stage._View(register_stage._Geometry(160, 160, 0.6), angles, usable, work, "L")
    view.seed_xy = seed_xy
    for _ in range(frames):
        view.add(work, usable, (0.0, 0.0))
    view.segment()
    return view


@pytest.mark.parametrize("offset_mm, frames, found", [
    (None, 2, False),  # no seed: on 2 frames the faint line must stand out by itself
    (5.0, 2, True), (-8.0, 2, True),  # the line within the band of the previous view's line
    (25.0, 2, False),  # the band misses it: nothing else stands out there either
    (5.0, 1, False)])  # one frame is too noisy to look for a faint line
def test_a_turned_view_looks_for_its_line_near_the_previous_one(offset_mm, frames, found):
    """A view the C-arm turned to, back towards AP, from a working view with a line, that shows
    no line standing out in the whole field looks again at a lower contrast within 10 mm of the
    previous line."""
    seed = None
    truth = np.array([[79.5 - 0.3 * (21 - 79.5), 21.0], [79.5 - 0.3 * (139 - 79.5), 139.0]])
    if offset_mm is not None:
        seed = truth + np.array([offset_mm / 0.6, 0.0])
    view = _faint_view((5.0, 0.0), seed, frames)
    assert (view.line is not None) == found
    if found:
        d = distance_to_polyline_px(_polyline_points(view.line.polyline_xy), truth).mean() * 0.6
        assert d < 1.0
        assert view.line.doubled  # near AP


@pytest.mark.parametrize("previous_angles, previous_frames, angles, seeded", [
    ((22.0, 0.0), 4, (5.0, 0.0), True), ((-30.0, 0.0), 4, (-12.0, 0.0), True),
    ((22.0, 0.0), 4, (-5.0, 0.0), True),  # 27 degrees back towards AP, a little past it
    ((22.0, 0.0), 4, (40.0, 0.0), False),  # away from AP: far oblique, other outlines
    ((31.0, 0.0), 4, (-1.0, 0.0), False),  # turned too far: the line moved too much
    ((22.0, 0.0), 4, (22.0, 0.0), False),  # same angles: the table moved, not the C-arm
    ((12.0, 0.0), 8, (2.0, 0.0), False),  # from a near-AP view: its line is doubled, unsure
    ((22.0, 0.0), 2, (5.0, 0.0), False),  # a line on 2 frames is not established
    (None, 4, (5.0, 0.0), False)])  # angles unknown: the turn is not known
def test_only_a_working_view_turned_from_seeds_the_next(previous_angles, previous_frames,
                                                        angles, seeded):
    from sifluoro.register import stage as register_stage
    from sifluoro.register.joint import JointLine
    work = np.full((80, 80), 0.5, np.float32)
    usable = np.ones(work.shape, bool)
    geometry = register_stage._Geometry(160, 160, 0.3)
    previous = register_stage._View(geometry, previous_angles, usable, work)
    previous.frames = previous_frames
    previous.line = JointLine(np.array([[80.0, 20.0], [60.0, 140.0]]), 0.9, False, 40.0)
    previous.last_shift = (3.0, -2.0)
    view = register_stage._View(geometry, angles, usable, work)
    view.seed_from(previous)
    assert (view.seed_xy is not None) == seeded
    if seeded:
        np.testing.assert_allclose(view.seed_xy, [[83.0, 18.0], [63.0, 138.0]])


def test_a_line_standing_out_is_kept_whatever_the_seed_band():
    """The band of the previous view's line is looked in only when no line stands out in the
    whole field: a clear line outside it is the line."""
    from sifluoro.imaging import WorkingGrid
    from sifluoro.register.joint import segment_joint
    grid = WorkingGrid(1, 0.6)
    usable = np.ones((160, 160), bool)
    strong = _synthetic_joint(-0.3)
    band = np.zeros(usable.shape, bool)
    band[:, :20] = True  # far beside the line
    a = segment_joint(strong, grid=grid, usable=usable, side="L")
    b = segment_joint(strong, grid=grid, usable=usable, side="L", seed_mask=band, seed_contrast=1.5)
    np.testing.assert_array_equal(a.polyline_xy, b.polyline_xy)


@pytest.mark.parametrize("angles, thin, band_looked_for", [
    ((5.0, 0.0), False, True), ((-14.0, 3.0), False, True),  # near AP, no thin line
    (None, False, True),  # the header does not tell the pose
    ((25.0, 0.0), False, False), ((40.0, 0.0), False, False),  # working, far oblique views
    ((5.0, 0.0), True, False)])  # a thin line stands out: it is the line
def test_the_band_beside_the_joint_is_looked_for_near_ap_without_a_thin_line(
        monkeypatch, angles, thin, band_looked_for):
    from sifluoro.register import stage as register_stage
    from sifluoro.register.joint import JointLine
    thin_line = JointLine(np.array([[80.0, 20.0], [60.0, 140.0]]), 0.9, False, 40.0)
    band = JointLine(np.array([[70.0, 20.0], [50.0, 140.0]]), 0.2, True, 40.0)
    calls = []
    monkeypatch.setattr(register_stage, "segment_joint", lambda *a, **k: thin_line if thin else None)
    monkeypatch.setattr(register_stage, "band_line", lambda *a, **k: calls.append(k["side"]) or band)
    work = np.full((80, 80), 0.5, np.float32)
    usable = np.ones(work.shape, bool)
    view = register_stage._View(register_stage._Geometry(160, 160, 0.3), angles, usable, work, "R")
    for _ in range(4):
        view.add(work, usable, (0.0, 0.0))
    view.segment()
    assert calls == (["R"] if band_looked_for else [])
    expected = band if band_looked_for else thin_line if thin else None
    assert (view.line is None) == (expected is None)
    if expected is not None:
        np.testing.assert_array_equal(view.line.polyline_xy, expected.polyline_xy)
    if band_looked_for:
        np.testing.assert_allclose(view.target_xy, band.point_at(5.0 / 6.0))
        # a line inferred from the band is doubled, but that does not stick to the view
        assert view.line.doubled and not view.doubled_seen


def test_reused_working_arrays_give_the_events_of_fresh_ones(sim_runs, monkeypatch):
    """The study's reused segmentation arrays hold the last segmentation's values: the events
    are those of fresh arrays, filled with NaN so that a value read before it is written would
    show."""
    from sifluoro.register import joint, stage as stage_module

    frames = [f for _, fr, _ in sim_runs for f in fr]
    reused, _ = run_frames(JointStage(), frames)

    def fresh(buffers, name, shape, dtype):
        return (np.full(shape, np.nan, dtype) if np.dtype(dtype).kind == "f"
                else np.ones(shape, dtype))

    monkeypatch.setattr(joint, "work_buffer", fresh)
    monkeypatch.setattr(stage_module, "work_buffer", fresh)
    fresh_events, _ = run_frames(JointStage(), frames)
    assert sum(e["joint"] is not None for e in reused) > len(frames) // 2
    assert reused == fresh_events
