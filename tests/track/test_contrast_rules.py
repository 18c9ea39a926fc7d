"""The contrast stage's rules one at a time: a new run's reference, washout, continued opacity."""
import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage

from sifluoro.track import _contrast_kernels as K
from sifluoro.track.contrast import WASHOUT_AGE, ContrastStage, _Buffers, _RunMemory
from sifluoro.track.contrast_classify import SHAPE_FRAMES, Classifier, Opacity
from sifluoro.track.contrast_reference import ReferenceBank

SHAPE = (96, 96)


# smooth, non-periodic anatomy (a periodic one would confuse the phase correlation)
ANATOMY = 0.45 + 2.0 * ndimage.gaussian_filter(np.random.default_rng(0).normal(0, 1, SHAPE), 6)


def _scene(rng, noise: float, *, offset: float = 0.0) -> np.ndarray:
    return (ANATOMY + offset + rng.normal(0.0, noise, SHAPE)).astype(np.float32)


def _bank_of_fluoroscopy(rng, noise: float) -> ReferenceBank:
    bank = ReferenceBank(SHAPE, slots=8, pose_key=("p",))
    for _ in range(8):
        bank.push(_scene(rng, noise), np.zeros(SHAPE, bool))
    return bank


def test_a_quieter_run_the_kept_frames_do_not_predict_starts_its_own_reference():
    rng = np.random.default_rng(1)
    bank = _bank_of_fluoroscopy(rng, 0.02)
    # an acquisition run: a sixth of the noise, and other processing (a structured difference)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    first = _scene(rng, 0.004) + (0.06 * np.sin(xx / 5.0 + yy / 7.0)).astype(np.float32)
    bank.adopt_run(first, np.ones(SHAPE, bool))
    assert bank.count == 1
    np.testing.assert_array_equal(bank.current_envelope(), first)


@pytest.mark.parametrize("noise, structured", [(0.02, False), (0.004, False), (0.02, True)])
def test_a_run_like_the_kept_frames_keeps_them(noise, structured):
    """Same noise (fluoroscopy after fluoroscopy), or quieter but predicted by the kept
    frames, or mismatched but as noisy: the kept frames (breathing phases) stay."""
    rng = np.random.default_rng(2)
    bank = _bank_of_fluoroscopy(rng, 0.02)
    first = _scene(rng, noise, offset=0.01)
    if structured:
        yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
        first += (0.06 * np.sin(xx / 5.0 + yy / 7.0)).astype(np.float32)
    bank.adopt_run(first, np.ones(SHAPE, bool))
    assert bank.count == 8


@pytest.mark.parametrize("structure, restarts", [(0.0, False), (0.1, True)])
def test_a_run_its_own_first_frame_predicts_far_better_restarts_the_reference(structure,
                                                                             restarts):
    """As noisy as the kept frames (so adopted), but of other processing: on the run's second
    frame its first frame alone leaves a residual several times smaller than the envelope's,
    and the bank restarts from the first frame; a run like the kept frames keeps them."""
    rng = np.random.default_rng(3)
    bank = _bank_of_fluoroscopy(rng, 0.01)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    processing = (structure * np.sin(xx / 5.0 + yy / 7.0)).astype(np.float32)
    first = _scene(rng, 0.01) + processing
    bank.adopt_run(first, np.ones(SHAPE, bool))
    bank.push(first, np.zeros(SHAPE, bool))
    assert bank.count == 8
    second = _scene(rng, 0.01) + processing
    valid = np.ones(SHAPE, bool)
    residual = second - bank.current_envelope()
    spread = 1.2533 * np.abs(residual - np.median(residual)).mean()
    work, usable = np.empty(SHAPE, np.float32), np.empty(SHAPE, bool)
    assert bank.restart_if_own_run_better(second, valid, spread, work, usable) is restarts
    if restarts:
        assert bank.count == 1
        np.testing.assert_array_equal(bank.current_envelope(), first)
    else:
        assert bank.count == 8


def _memory_with_opacity(z: float, age: int) -> tuple[_Buffers, _RunMemory]:
    b = _Buffers(SHAPE)
    b.valid[...] = True
    rm = _RunMemory(None, SHAPE)
    rm.opaque[40:44, 10:80] = True            # a vessel-like band accepted on the last frame
    rm.opaque_z, rm.opaque_mm2, rm.opacity_age = z, 300.0, age
    b.score[...] = 0.0
    return b, rm


def test_new_opacity_that_empties_from_one_frame_to_the_next_has_washed_out():
    b, rm = _memory_with_opacity(9.0, 2)
    b.score[40:44, 10:80] = 1.5               # down to a sixth
    assert ContrastStage._washed_out(b, rm)


def test_opacity_that_stays_or_is_old_or_went_out_of_the_field_has_not_washed_out():
    b, rm = _memory_with_opacity(9.0, 2)
    b.score[40:44, 10:80] = 7.0               # joint fill and clouds stay
    assert not ContrastStage._washed_out(b, rm)
    b, rm = _memory_with_opacity(9.0, WASHOUT_AGE + 1)
    assert not ContrastStage._washed_out(b, rm)   # long-standing opacity: not a vessel's timing
    b, rm = _memory_with_opacity(9.0, 2)
    b.valid[:, :60] = False                   # collimated away: no evidence either way
    assert not ContrastStage._washed_out(b, rm)


def test_washout_raises_vascular_and_its_alert():
    c = Classifier()
    c.update(0, (), 0.0, None, washed_out=True)
    assert c.state == "vascular" and c.take_alert() is not None


def _opacity(new_fraction: float, negative_ratio: float) -> Opacity:
    return Opacity(kind="line", area_mm2=300.0, length_mm=40.0, width_mm=4.0, elongation=8.0,
                   edge_fraction=0.8, peak_z=14.0, mean_z=6.0, new_fraction=new_fraction,
                   core_area_mm2=120.0, core_mass_fraction=0.6, negative_ratio=negative_ratio,
                   iodine_au=2.0, centroid_xy=(50.0, 50.0), bbox_xyxy=(10, 40, 80, 44))


def test_gas_like_opacity_is_refused_unless_it_continues_accepted_opacity():
    c = Classifier()
    assert c.accept([_opacity(0.9, 0.1)]) == [True]     # clean new opacity
    assert c.accept([_opacity(0.9, 0.8)]) == [False]    # a dark lobe beside it: moving gas
    assert c.accept([_opacity(0.2, 0.8)]) == [True]     # where contrast was last frame


def _gas_like(kind: str, elongation: float) -> Opacity:
    """Refused as gas: new, modest, with dark residual in its box (training seed 5301 case 17:
    a joint fill of 44-77 mm beside bowel gas, negative ratio 3.4-4.6, peak 12-18 z)."""
    return Opacity(kind=kind, area_mm2=600.0, length_mm=75.0, width_mm=5.5, elongation=elongation,
                   edge_fraction=0.34, peak_z=15.0, mean_z=6.0, new_fraction=1.0,
                   core_area_mm2=400.0, core_mass_fraction=0.8, negative_ratio=3.5,
                   iodine_au=20.0, centroid_xy=(50.0, 50.0), bbox_xyxy=(10, 20, 60, 90))


def test_a_long_straight_line_refused_as_gas_frame_after_frame_is_contrast():
    """A joint fill beside bowel gas takes the gas's dark caps into its box; a gas rim is a
    crescent bent around its bubble."""
    c = Classifier()
    line, crescent = _gas_like("line", 9.3), _gas_like("line", 4.0)
    assert c.accept([line]) == [False]                         # once: as likely gas
    assert c.accept([line], persists=[True]) == [True]         # frame after frame: contrast
    assert c.accept([crescent], persists=[True]) == [False]    # a rim stays as long
    assert c.accept([_gas_like("cloud", 9.3)], persists=[True]) == [False]
    edge = dataclasses.replace(line, elongation=250.0, edge_fraction=1.0)  # a collimator edge
    assert c.accept([edge], persists=[True]) == [False]


def test_the_stage_counts_the_frames_in_a_row_opacity_was_refused_as_gas():
    b = _Buffers(SHAPE)
    rm = _RunMemory(None, SHAPE)
    b.labels[...] = 0
    b.labels[40:44, 10:80] = 1                # the line
    b.labels[60:64, 10:30] = 2                # a rim, somewhere else each frame
    b.stats[1, K.C_AREA], b.stats[2, K.C_AREA] = 4 * 70, 4 * 20
    persisted = []
    for frame in range(4):
        b.labels[60:64, :] = 0
        b.labels[60:64, 10 + 25 * frame:30 + 25 * frame] = 2
        persisted.append(ContrastStage._persisting(b, rm, [True, True]))
        ContrastStage._remember_aside(b, rm, [True, True])
    assert persisted[:2] == [[False, False], [False, False]]
    assert persisted[2:] == [[True, False], [True, False]]    # a third frame at the same place
    ContrastStage._remember_aside(b, rm, [False, False])       # accepted or gone: count anew
    assert not rm.any_aside and not rm.aside_run.any()
    assert ContrastStage._persisting(b, rm, [True, True]) == [False, False]


def _dot(peak_z: float, negative_ratio: float, kind: str = "cloud") -> Opacity:
    """A first bolus at the tip: 90 mm2 but a core under MIN_CORE_LENGTH_MM long (training seed
    1401 case 14's first injection frame)."""
    return Opacity(kind=kind, area_mm2=90.0, length_mm=4.8, width_mm=4.2, elongation=1.1,
                   edge_fraction=0.6, peak_z=peak_z, mean_z=8.0, new_fraction=1.0,
                   core_area_mm2=20.0, core_mass_fraction=0.5, negative_ratio=negative_ratio,
                   iodine_au=1.0, centroid_xy=(50.0, 50.0), bbox_xyxy=(45, 45, 55, 55))


def test_a_dense_dot_without_a_dark_lobe_is_contrast_and_a_faint_or_lobed_one_is_not():
    """Refused, the bolus joined the reference and the injection after it was never seen."""
    c = Classifier()
    assert c.accept([_dot(34.0, 0.0)]) == [True]
    assert c.accept([_dot(10.0, 0.0)]) == [False]        # a needle's advance: faint dot
    assert c.accept([_dot(34.0, 2.7)]) == [False]        # a dark lobe beside it: moved
    assert c.accept([_dot(34.0, 0.0, "line")]) == [False]  # thin: a needle's tip
    assert c.accept([_dot(34.0, 0.0)], strict=True) == [True]
    assert c.accept([_dot(20.0, 0.0)], strict=True) == [False]  # a single run: dense only


def test_run_memory_keeps_the_last_frames_oldest_first():
    """Six frames: the vessel test's five, and one more for the test a frame that was only
    remembered (deadline) owes."""
    rm = _RunMemory(None, (4, 4))
    frames = [np.full((4, 4), k, np.float32) for k in range(8)]
    for k, f in enumerate(frames):
        rm.remember(f)
        kept = [int(rm.history[rm.history_order[j]][0, 0]) for j in range(rm.history_count)]
        assert kept == list(range(max(0, k - 5), k + 1))


def test_run_memory_takes_a_frame_written_into_its_next_slot_without_a_copy():
    """The stage smooths each frame of a run straight into the history slot it is remembered
    in (_RunMemory.next_slot): the same ring as remembering a copy, through a full ring and
    frames that were not remembered (their slot is the next frame's)."""
    rm, ref = _RunMemory(None, (4, 4)), _RunMemory(None, (4, 4))
    for k in range(12):
        slot = rm.next_slot()
        slot[...] = k
        if k % 5 == 3:
            continue        # not remembered (an early return): the next frame takes the slot
        rm.remember(slot)
        ref.remember(np.full((4, 4), k, np.float32))
        assert rm.history_count == ref.history_count
        for j in range(rm.history_count):
            assert np.array_equal(rm.history[rm.history_order[j]], ref.history[ref.history_order[j]])
    image = np.full((4, 4), 99.0, np.float32)
    rm.next_slot()
    rm.remember(image)      # another array than the slot given out is copied
    assert rm.history[rm.history_order[rm.history_count - 1]][0, 0] == 99.0


def test_reference_bank_envelope_is_the_maximum_of_its_frames():
    rng = np.random.default_rng(4)
    bank = ReferenceBank(SHAPE, slots=3, pose_key=("p",))
    for k in range(7):
        bank.push(_scene(rng, 0.02), rng.random(SHAPE) < 0.05, (k % 3 - 1, 0))
        if k == 3:
            bank.adopt_run(_scene(rng, 0.02), np.ones(SHAPE, bool))
        np.testing.assert_array_equal(bank.current_envelope(),
                                      np.maximum(bank.slots[:bank.count].max(0), -1.0))


def _shape(kind: str, elongation: float, area_mm2: float, iodine_au: float) -> Opacity:
    length = math.sqrt(area_mm2 * elongation)
    return Opacity(kind=kind, area_mm2=area_mm2, length_mm=length, width_mm=area_mm2 / length,
                   elongation=elongation, edge_fraction=0.5, peak_z=20.0, mean_z=8.0,
                   new_fraction=0.1, core_area_mm2=0.4 * area_mm2, core_mass_fraction=0.6,
                   negative_ratio=0.0, iodine_au=iodine_au, centroid_xy=(50.0, 50.0),
                   bbox_xyxy=(10, 10, 90, 90))


# a broad line (area / length 12 mm: too broad for the early "thin" switch) and a round cloud
BROAD_LINE = _shape("line", 6.0, 900.0, 60.0)
ROUND_CLOUD = _shape("cloud", 1.2, 800.0, 60.0)


def _states(frames) -> list[str]:
    c = Classifier()
    out = []
    for k, accepted in enumerate(frames):
        c.update(k, accepted, 0.0, None)
        out.append(c.state)
    return out


def test_extravasation_whose_first_frames_held_a_line_becomes_extravasation():
    frames = [(BROAD_LINE,)] * 2 + [(ROUND_CLOUD,)] * SHAPE_FRAMES
    states = _states(frames)
    assert states[:2 + SHAPE_FRAMES - 1] == ["intra_articular"] * (2 + SHAPE_FRAMES - 1)
    assert states[-1] == "extravasation"


def test_a_shape_must_dominate_frames_in_a_row_to_override():
    # interrupted runs of clouds; and a cloud beside a line that carries half the iodine
    frames = [(BROAD_LINE,)] + [(ROUND_CLOUD,)] * (SHAPE_FRAMES - 1) + [(BROAD_LINE,)] \
        + [(ROUND_CLOUD, _shape("line", 8.0, 400.0, 60.0))] * 6
    assert set(_states(frames)) == {"intra_articular"}


def _fill(kind: str, length_mm: float, width_mm: float, elongation: float,
          area_mm2: float) -> Opacity:
    """An opacity of the given core length and width, elongation and (halo included) area."""
    return dataclasses.replace(_shape(kind, elongation, area_mm2, 0.06 * area_mm2),
                               length_mm=length_mm, width_mm=width_mm)


# training seed 4102 case 9 (joint fill): a blob at the tip, then a line that runs along the
# joint, its faint halo making its area over length 10.3-10.5 mm (over THIN_LINE_MM)
JOINT_FILL_FROM_A_BLOB = [(_fill("cloud", 19.0, 5.6, 3.3, 150.0),),
                          (_fill("line", 32.0, 6.1, 3.8, 327.0),),
                          (_fill("line", 37.0, 6.3, 4.9, 386.0),),
                          (_fill("line", 45.0, 6.0, 5.3, 447.0),)]


def test_a_blob_that_runs_on_along_a_line_is_joint_fill():
    assert _states(JOINT_FILL_FROM_A_BLOB) == ["extravasation"] + ["intra_articular"] * 3


@pytest.mark.parametrize("frames", [
    # extravasation (seed 4102 case 13): a line of a blob that hardly lengthens
    [(_fill("cloud", 22.0, 4.9, 3.3, 201.0),), (_fill("line", 23.0, 5.3, 3.9, 346.0),),
     (_fill("cloud", 23.0, 6.1, 3.5, 604.0),)],
    # extravasation (quick seed 9201 case 22): two clouds that join into one 57 mm line
    [(_fill("cloud", 15.0, 4.4, 2.0, 350.0), _fill("cloud", 9.0, 8.4, 1.1, 188.0)),
     (_fill("line", 57.0, 3.5, 6.4, 814.0),), (_fill("line", 57.0, 4.4, 5.8, 1060.0),)],
    # a cloud that swells (broad, not elongated) along its length too
    [(_fill("cloud", 28.0, 7.1, 2.3, 493.0),), (_fill("cloud", 38.0, 7.9, 2.6, 747.0),),
     (_fill("cloud", 47.0, 8.9, 2.7, 979.0),)],
])
def test_clouds_that_swell_join_or_hardly_lengthen_stay_extravasation(frames):
    assert set(_states(frames)) == {"extravasation"}


def test_the_shape_never_lowers_a_vascular_call():
    c = Classifier()
    c.update(0, (BROAD_LINE,), 0.0, None, washed_out=True)
    for k in range(1, 6):
        c.update(k, (ROUND_CLOUD,), 0.0, None)
    assert c.state == "vascular"


@pytest.mark.parametrize("dx, dy", [(6, 4), (-5, -3)])
def test_a_run_shift_leaves_no_wrapped_edge_in_the_reference(dx, dy):
    """A new run moved by (dx, dy) working pixels: the kept frames are shifted onto it, and the
    band the shift uncovers must not hold the opposite edge wrapped round (np.roll): there the
    reference read 0.45 brighter than the scene, hiding new contrast (review helper-48 #5)."""
    import cv2

    rng = np.random.default_rng(0)
    h, w, pad = 128, 128, 20
    big = cv2.GaussianBlur(rng.random((h + 2 * pad, w + 2 * pad)).astype(np.float32), (0, 0), 2.5)
    big = (big - big.min()) / (big.max() - big.min())
    ramp = np.arange(w + 2 * pad)[None, :] / (w + 2 * pad)
    big = (0.1 + 0.3 * big + 0.6 * ramp).astype(np.float32)  # dark left, bright right

    def scene(sx, sy):  # the content moved by (sx, sy)
        return np.ascontiguousarray(big[pad - sy:pad - sy + h, pad - sx:pad - sx + w])

    bank = ReferenceBank((h, w), slots=4, pose_key=())
    for _ in range(2):
        bank.push(scene(0, 0), np.zeros((h, w), bool))
    new = scene(dx, dy)
    assert bank.adopt_run(new, np.ones((h, w), bool)) == (dx, dy)
    kept = bank.slots[0]
    band = (slice(8, -8), slice(0, dx)) if dx > 0 else (slice(8, -8), slice(w + dx, w))
    assert np.abs(kept[band] - new[band]).max() < 0.02


def test_many_specks_above_a_line_leave_the_line_labelled():
    """More components than the stage keeps (64): the largest are kept wherever they lie; the
    labelling stopped at the cap in raster order, so 64 specks in the upper rows hid a 100-px
    line below them (review helper-48 #4)."""
    from sifluoro.track import _contrast_kernels as K
    from sifluoro.track.contrast import _MAX_COMPONENTS, _largest_components

    score = np.zeros((128, 128), np.float32)
    for k in range(_MAX_COMPONENTS + 6):  # one-pixel specks in the upper rows
        score[2 * (k // 32), 2 + 3 * (k % 32)] = 6.0
    score[80, 10:110] = 8.0
    score[100, 20:25] = 7.0
    labels = np.empty(score.shape, np.int32)
    stack = np.empty(score.size * 9 + 1, np.int64)
    n = K.hysteresis_label(score, np.ones(score.shape, bool), 5.0, 2.5, labels, stack, labels.size)
    assert n == _MAX_COMPONENTS + 8
    n = _largest_components(labels, n, _MAX_COMPONENTS)
    assert n == _MAX_COMPONENTS and labels.max() == n
    assert len(np.unique(labels[80, 10:110])) == 1 and labels[80, 10] > 0
    assert len(np.unique(labels[100, 20:25])) == 1 and labels[100, 20] > 0
    assert len(np.unique(labels[labels > 0])) == n  # numbered 1..n without gaps


def _line(length_mm: float, edge_fraction: float, new_fraction: float = 1.0,
          width_mm: float = 2.9) -> Opacity:
    return Opacity(kind="line", area_mm2=length_mm * width_mm * 3.5, length_mm=length_mm,
                   width_mm=width_mm, elongation=6.0, edge_fraction=edge_fraction, peak_z=27.0,
                   mean_z=8.5, new_fraction=new_fraction, core_area_mm2=length_mm * width_mm,
                   core_mass_fraction=0.5, negative_ratio=0.0, iodine_au=3.0,
                   centroid_xy=(50.0, 50.0), bbox_xyxy=(30, 20, 70, 80))


def test_a_long_thin_line_that_appears_at_once_is_vascular_on_that_frame():
    """A vessel tree fills within a frame (training seed 1521 case 6: a 32 mm line, 79 % of
    its core on its edge): the alert comes at once, not a frame later when it washes out."""
    c = Classifier()
    c.update(0, (_line(32.0, 0.79),), 0.0, None)
    assert c.state == "vascular"
    alert = c.take_alert()
    assert alert is not None and 0.5 <= alert["confidence"] < 0.6


@pytest.mark.parametrize("opacity", [
    _line(32.0, 0.55, width_mm=4.8),          # joint fill's first frame: a broader line
    _line(22.5, 0.72),                        # a short thin joint line (seed 1403 case 2)
    _line(32.0, 0.79, new_fraction=0.3),      # a thin line that grew from last frame's
    # a guide wire on the patient that moved into the run, straight and a pixel wide
    # (training seed 2214 case 10: 38 mm, 32 x as long as wide, its whole core on its edge)
    dataclasses.replace(_line(38.0, 1.0, width_mm=1.2), elongation=32.0),
])
def test_broader_shorter_or_growing_lines_are_joint_fill_not_a_vessel(opacity):
    c = Classifier()
    c.update(0, (opacity,), 0.0, None)
    assert c.state == "intra_articular" and c.take_alert() is None


def test_phase_shift_window_is_opencvs_made_once_per_shape():
    import cv2

    from sifluoro.track.contrast_reference import _hanning

    w = _hanning((40, 56))
    np.testing.assert_array_equal(w, cv2.createHanningWindow((56, 40), cv2.CV_32F))
    assert _hanning((40, 56)) is w and not w.flags.writeable


def test_the_stage_describes_only_components_a_rule_can_take():
    """contrast._large_components keeps the labels of the components of MIN_AREA_MM2 and more,
    their area reckoned as describe_components does (the stage leaves the rest undescribed); and
    every rule that reads a component refuses one just under MIN_AREA_MM2, however dense, long
    and cloud- or gas-like (else leaving them out would change the stage's result)."""
    from sifluoro.track.contrast import _large_components
    from sifluoro.track.contrast_classify import MIN_AREA_MM2, describe_components

    rng = np.random.default_rng(7)
    work_mm = 1.171875
    px_mm2 = work_mm * work_mm
    stats = np.zeros((9, K.N_STATS))
    areas = [1, 29, 30, 28, 2, 300, 29.127, 31]
    for k, area in enumerate(areas, start=1):
        s = stats[k]
        s[K.C_AREA] = s[K.C_CORE] = area
        s[K.C_SUM] = s[K.C_PEAK] = 10.0
        s[K.C_SX], s[K.C_SY] = 10.0 * area, 20.0 * area
        s[K.C_CSX], s[K.C_CSY] = 10.0 * area, 20.0 * area
        s[K.C_CSXX], s[K.C_CSYY] = (100.0 + k) * area, (400.0 + 2 * k) * area
        s[K.C_CSXY] = 200.0 * area
        s[K.C_X0], s[K.C_Y0], s[K.C_X1], s[K.C_Y1] = 5, 5, 15, 25
    score = rng.normal(size=(40, 40)).astype(np.float32)
    valid = np.ones((40, 40), bool)
    every = describe_components(stats, len(areas), score, valid, 0.01, 2, work_mm)
    want = [k for k, o in enumerate(every, start=1) if o.area_mm2 >= MIN_AREA_MM2]
    assert _large_components(stats, len(areas), px_mm2) == want
    assert 0 < len(want) < len(areas) and _large_components(stats, 0, px_mm2) == []
    c = Classifier()
    for kind in ("line", "cloud"):
        small = Opacity(kind=kind, area_mm2=np.nextafter(MIN_AREA_MM2, 0.0), length_mm=60.0,
                        width_mm=3.0, elongation=20.0, edge_fraction=0.5, peak_z=100.0,
                        mean_z=40.0, new_fraction=0.0, core_area_mm2=30.0,
                        core_mass_fraction=0.9, negative_ratio=0.0, iodine_au=10.0,
                        centroid_xy=(50.0, 50.0), bbox_xyxy=(40, 40, 60, 60))
        gas = dataclasses.replace(small, negative_ratio=3.0, peak_z=12.0)
        for o in (small, gas):
            assert c.accept([o]) == [False] and c.accept([o], persists=[True]) == [False]
            assert not c.set_aside_as_gas(o) and not c.faint_cloud(o)
