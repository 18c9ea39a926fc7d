"""The needle stage: where is the tip, how far from the target, is it advancing toward it.

A frame is searched over the whole exposed field (:mod:`sifluoro.track.needle_detect`) on
the running mean of the run's frames (the needle barely moves within a run; the noise is
independent): ridge map, oriented Hough, segments, tip along the shaft. Once a needle is
followed (and two full searches of the run agree on its tip), it is looked for in a box around
that tip instead, the field being searched again on every ``full_search_every``-th frame or
when the box does not find it (:meth:`NeedleStage._track_roi`). Each segment gets a
needle probability from what tells a needle from a cortical edge, a skin wire or a marker
(flank symmetry, continuation beyond the tip, distance of the tip from the field edge,
length); a segment continuing the needle seen last is accepted on weaker evidence. The tip is
then placed sub-pixel at full resolution on the current frame. All per-study state lives in
``state.stage_state["needle"]``. With no line taken and no line needle followed in the view, an
end-on needle (aimed along the beam: a dot, not a line; :mod:`sifluoro.track.needle_dot`) is
looked for near the register target or the view's last dot, and reported at the dot with
``end_on`` true, no direction and a confidence below 0.5.

Over time: a needle not followed yet must be seen on two frames in a row of a run (or be
very probable on one, or off the scout probable on one with its tip within
``target_single_mm`` of the register target; optionally, off by default, fairly probable and at the same place on
``persist_frames`` full searches of the view in a row), which keeps a wire or an edge on the
first, noisiest frames of a scout from being reported; on the study's first run (the scout;
also the next run when the first never showed the joint: a wrong-level scout) a
new track must start near the register target (:mod:`sifluoro.track.needle_verify`); once a
needle is followed in a view, another line replaces it only when
very probable and seen twice (a needle does not jump across the field; a track begun on the
scout and not found since does not count); the track is kept from run to run in the same view (C-arm angles,
spacing, frame shape); on a new view it is put aside and taken up again when the C-arm
returns to that view; on a tracked line the tip does not retreat behind the furthest tip of the
run or, at a run's start, the last tip of the previous run. When the line search takes no
candidate, a needle followed in this view (found by the line search on a few frames) is looked
for where it was (its end along the last axis) and kept if the shaft behind it is still a
line (on a run's first frame, whose mean is that one frame, on half the evidence). Along a
shaft that dims over bone, the tip is looked for past the dimming while the line goes on at half the contrast or more; a tip
taken short of where another segment of the same search goes on along its line (a needle
crossing a bone edge) goes to that segment's end, and a segment running through the last tip
continues the track however far its tip has moved on.

Event fields (docs/contract.md §3)::

    "needle": null | {"tip_xy": [x, y], "confidence": c, "direction_xy": [dx, dy],
                      "end_on": false, "advance_mm": float, "length_mm": float}
              | {"tip_xy": [x, y], "confidence": c < 0.5, "direction_xy": null,
                 "end_on": true, "advance_mm": null, "length_mm": float}  (end-on: the
                 advance along the beam is not seen; length_mm is the dot's)
    "tip_to_target_mm": null | float
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from sifluoro.config import Settings
from sifluoro.imaging import (WorkingGrid, downsample, frame_attenuation, pixel_attenuation,
                              working_grid)
from sifluoro.dose.accumulate import DoseAccumulator
from sifluoro.model import Frame, Run
from sifluoro.pipeline import StudyState
from sifluoro.track import _needle_kernels as K
from sifluoro.track.needle_detect import LineFinder, NeedleSettings, refine_tip
from sifluoro.track.needle_dot import Dot, find_dot
from sifluoro.track.needle_field import EdgeDistance, valid_region
from sifluoro.track.needle_verify import ScoutGate, ScoutSettings

__all__ = ["NeedleStage", "NeedleSettings"]


@dataclass
class _RunContext:
    """What is computed once per run: grid, valid region, field centre."""

    run: Run
    spacing_mm: float
    grid: WorkingGrid
    shape: tuple[int, int]  # of the full-resolution frames
    valid_work: np.ndarray
    centre_xy: np.ndarray
    edge_dist_work: EdgeDistance  # distance to the field edge or text, working pixels


@dataclass
class _Track:
    """The needle as last seen in this study (full-resolution pixels)."""

    tip_xy: np.ndarray | None = None
    dir_xy: np.ndarray | None = None
    length_px: float = 0.0
    run_uid: str | None = None
    last_tip_of_run: np.ndarray | None = None  # tip at the end of the run seen so far
    reference_tip: np.ndarray | None = None  # tip at the end of the previous run
    run_ends: list = field(default_factory=list)  # the run's last tips found, oldest first
    run_tips: list = field(default_factory=list)  # the tips reported in the current run
    reference_holds: bool = True  # the run's tips are on the line of reference_tip
    misses: int = 0
    score: float = 0.0  # needle probability of the last detection
    hits: int = 0  # frames on which the line search found this needle
    extra: bool = False  # last found on a line past the n_lines strongest (target_lines)
    scout_only: bool = False  # begun on the study's scout and found by the line search there only

    def enter_run(self, run_uid: str, end_tips: int = 1, jump_px: float = 0.0) -> None:
        """A frame of ``run_uid``: on a new run, its reference is where the last run ended
        (see :meth:`_run_end`)."""
        if self.run_uid != run_uid:
            self.reference_tip = (self._run_end(end_tips, jump_px) if self.run_uid is not None
                                  else None)
            self.run_uid = run_uid
            self.run_tips = []
            self.run_ends = []
            self.reference_holds = True

    def _run_end(self, end_tips: int, jump_px: float) -> np.ndarray | None:
        """The run's last tip; but a last tip more than ``jump_px`` beyond the median (along
        the axis) of the run's last ``end_tips`` tips is an outlier (a box frame refined onto a
        line continuing the needle) and the median is taken instead."""
        ends = self.run_ends[-end_tips:]
        if end_tips <= 1 or len(ends) < 3 or self.dir_xy is None:
            return self.last_tip_of_run
        u = self.dir_xy
        ends = sorted(ends, key=lambda p: float(p @ u))
        median = ends[(len(ends) - 1) // 2]
        last = self.last_tip_of_run
        return median if float((last - median) @ u) > jump_px else last

    def found(self, tip: np.ndarray, u: np.ndarray, length_px: float,
              score: float | None = None) -> None:
        """The needle seen on this frame (``score`` None: the last detection's stays)."""
        self.tip_xy, self.dir_xy, self.length_px, self.misses = tip, u, length_px, 0
        self.last_tip_of_run = tip
        self.run_ends = self.run_ends[-15:] + [tip]
        if score is not None:
            self.score = score

    def lost(self) -> None:
        """Not seen on this frame."""
        self.tip_xy = None
        self.misses += 1


def _target(state) -> np.ndarray | None:
    """The register stage's target on this frame, if any (full-resolution pixels)."""
    register = state.stage_state.get("register")
    if register is None or register.target_xy is None:
        return None
    return np.asarray(register.target_xy, float)


def _dot_fields(dot: Dot, tip: np.ndarray, spacing_w: float, spacing: float,
                target: np.ndarray | None) -> dict[str, Any]:
    """The event fields of an end-on needle's dot (full-resolution ``tip``): confidence
    below 0.5, rising with the dot's contrast; no direction, no advance (along the beam)."""
    needle = {"tip_xy": [round(float(tip[0]), 3), round(float(tip[1]), 3)],
              "confidence": round(0.5 * dot.z / (dot.z + 10.0), 4), "direction_xy": None,
              "end_on": True, "advance_mm": None,
              "length_mm": round(dot.length_px * spacing_w, 2)}
    ttt = round(float(np.linalg.norm(tip - target) * spacing), 3) if target is not None else None
    return {"needle": needle, "tip_to_target_mm": ttt}


def _fields(track: _Track, spacing: float, target: np.ndarray | None) -> dict[str, Any]:
    """The event fields of the tip just found (:meth:`_Track.found`): ``needle`` (advance
    since the last run measured toward the target, or along the shaft without one) and
    ``tip_to_target_mm``."""
    tip, u, length_px = track.tip_xy, track.dir_xy, track.length_px
    ref = track.reference_tip
    if ref is None:
        advance = 0.0
    elif target is not None and np.linalg.norm(target - ref) > 1e-6:
        advance = float((tip - ref) @ ((target - ref) / np.linalg.norm(target - ref))) * spacing
    else:
        advance = float((tip - ref) @ u) * spacing
    needle = {"tip_xy": [round(float(tip[0]), 3), round(float(tip[1]), 3)],
              "confidence": round(float(track.score), 4),
              "direction_xy": [round(float(u[0]), 5), round(float(u[1]), 5)],
              "end_on": False, "advance_mm": round(advance, 3),
              "length_mm": round(length_px * spacing, 2)}
    ttt = round(float(np.linalg.norm(tip - target) * spacing), 3) if target is not None else None
    return {"needle": needle, "tip_to_target_mm": ttt}


class _StudyNeedle:
    """Everything the stage keeps for one study (in ``state.stage_state["needle"]``): the
    line finder and its buffers, the run context, the run's mean working image and the track.
    Nothing per study lives on the stage object, so one stage can serve studies in parallel."""

    def __init__(self, settings: NeedleSettings, scout: ScoutSettings | None = None):
        self.finder = LineFinder(settings)
        self.scout = ScoutGate(scout)  # a new track on the study's scout (needle_verify)
        self.buf: dict = {}
        self.ctx: _RunContext | None = None
        self.track = _Track()
        # the track of each view left earlier (run, track): a return to a view (after a check
        # in another one) resumes its needle instead of starting cold
        self.view_tracks: list[tuple[Run, _Track]] = []
        self.mean_work: np.ndarray | None = None
        self.n_mean = 0
        self.last_features: list[dict] = []
        # needle-like candidates of the previous frame of the run (full-resolution tip,
        # direction): a cold-start detection must be seen on two frames in a row
        self.prev_candidates: list[tuple[np.ndarray, np.ndarray, float]] = []
        # the candidates (tip, direction) of at least ``persist_min_prob`` of the last full
        # searches of this view, newest last (NeedleSettings.persist_frames)
        self.persistent: list[list[tuple[np.ndarray, np.ndarray]]] = []
        # candidates (tip, direction) of at least ``advance_min_prob`` seen on two full searches
        # in a row while no needle is followed: of the last search of this run that had any,
        # and as the view's last run left them (a needle pushed in between runs moves on along
        # its line)
        self.run_lines: list[tuple[np.ndarray, np.ndarray]] = []
        self.prev_run_lines: list[tuple[np.ndarray, np.ndarray]] = []
        # while a needle is followed, a box of the working grid around it is searched instead
        # of the whole field (its own buffers: the box is much smaller than the field)
        self.roi_finder = LineFinder(settings)
        self.since_full = 0  # frames of the run since the last full search
        self.deferred = 0  # frames in a row whose due full search the deadline put off
        self.anchor: tuple[np.ndarray, np.ndarray] | None = None  # its tip and direction
        self.anchor_agreed = False  # with the full search before it in the run
        self.jump: np.ndarray | None = None  # a tip far from the anchor, to be confirmed
        self.jump_before: np.ndarray | None = None  # the previous frame's
        # end-on needle: the dot reported last in this view, and the previous full search's
        # dot candidate in this run (full-resolution), to confirm a dot on two frames
        self.dot_xy: np.ndarray | None = None
        self.dot_prev: np.ndarray | None = None
        # lines the study's scout showed and did not take, (length mm, unit axis): rigid
        # objects, not the needle (NeedleSettings.scout_line_mm)
        self.scout_lines: list[tuple[float, np.ndarray]] = []
        # the register stage's image motion (full-resolution px) on the last frames of the
        # run (up to three), and their median on the frame before (NeedleSettings.motion_min_mm)
        self.motion_run: Run | None = None
        self.motion_shifts: list[np.ndarray] = []
        self.motion_level: np.ndarray | None = None


class NeedleStage:
    """Pipeline stage ``needle``.

    Parameters
    ----------
    settings : Settings, optional
        Engine settings; its ``needle`` attribute (a :class:`NeedleSettings`) is used when
        present.
    needle : NeedleSettings, optional
        Overrides the needle settings.
    scout : ScoutSettings, optional
        The check of a new track on the study's scout (:mod:`.needle_verify`).
    """

    name = "needle"
    reads = ("register",)  # its target; not contrast's: the two may run at the same time

    def __init__(self, settings: Settings | None = None, *, needle: NeedleSettings | None = None,
                 scout: ScoutSettings | None = None):
        self.settings = needle or getattr(settings, "needle", None) or NeedleSettings()
        self.scout = scout or ScoutSettings()

    def warm_up(self, frame: Frame) -> None:
        """Compile the numba kernels (cached on disk) and size the buffers on a frame of the
        real size and dtype, so that the first live frame does not pay for it."""
        spacing = float((frame.pixel_spacing_xy_mm or (0.5, 0.5))[0])
        factor = working_grid(spacing, target_mm=self.settings.grid_mm).factor
        K.warm_up((frame.pixels.shape[0] // factor, frame.pixels.shape[1] // factor))
        state = StudyState("warm-up", DoseAccumulator(Settings().dose))
        self.process(frame, state)

    # -- per run --------------------------------------------------------------------------
    def _context(self, st: _StudyNeedle, frame: Frame, att: np.ndarray) -> _RunContext:
        run = frame.run
        if st.ctx is not None and st.ctx.run is run:
            return st.ctx
        spacing = float((frame.pixel_spacing_xy_mm or (0.5, 0.5))[0])
        grid = working_grid(spacing, target_mm=self.settings.grid_mm)
        margin = int(math.ceil(self.settings.edge_margin_mm / spacing))
        valid_work = valid_region(run, att, margin_px=max(2, margin // 2), factor=grid.factor)
        m00, m10, m01 = K.mask_moments(valid_work)  # integer sums, as cv2.moments gives them
        centre = (grid.to_full(np.array([m10 / m00, m01 / m00]))
                  if m00 > 0 else np.array([att.shape[1] / 2.0, att.shape[0] / 2.0]))
        edge_dist = EdgeDistance(valid_work)
        same = (st.ctx is not None and st.ctx.spacing_mm == spacing
                and st.ctx.shape == att.shape and _same_view(st.ctx.run, run))
        if st.ctx is not None and not same:
            # another view (C-arm angles, detector zoom): the needle seen so far is elsewhere;
            # the needle of a view seen before is where that view left it
            st.view_tracks = [(r, t) for r, t in st.view_tracks
                              if not _same_geometry(r, st.ctx.run, st.ctx.spacing_mm,
                                                    st.ctx.shape)]
            if st.track.dir_xy is not None:
                st.view_tracks.append((st.ctx.run, st.track))
            back = [t for r, t in st.view_tracks if _same_geometry(r, run, spacing, att.shape)]
            st.track = _Track() if not back else back[-1]
            st.track.tip_xy = None
            st.persistent = []
            st.dot_xy = None
        # a new run of the same view: the lines its last run left (or an earlier run's)
        st.prev_run_lines = ((st.run_lines or st.prev_run_lines)
                             if st.ctx is not None and same else [])
        st.run_lines = []
        st.ctx = _RunContext(run, spacing, grid, att.shape, valid_work, centre, edge_dist)
        st.mean_work, st.n_mean = None, 0
        st.prev_candidates = []
        st.anchor, st.anchor_agreed, st.jump = None, False, None
        st.dot_prev = None
        return st.ctx

    # -- per frame ------------------------------------------------------------------------
    def work_kind(self, frame: Frame, state) -> str:
        """What :meth:`process` would do on ``frame``: follow the needle in its ``box``
        (about 1 ms at 1024²) or ``search`` the field (several times that); the deadline
        planner learns the two costs apart (with one, the first frames' searches made every
        later frame look too dear to run)."""
        st = state.stage_state.get("needle")
        if isinstance(st, _StudyNeedle) and self._roi_due(st, frame):
            return "box"
        return "search"

    def process(self, frame: Frame, state) -> dict[str, Any]:
        st = state.stage_state.get("needle")
        if st is None:
            st = state.stage_state["needle"] = _StudyNeedle(self.settings, self.scout)
        self._follow_motion(st, frame, state)
        target = _target(state)
        hit = None
        if self._roi_due(st, frame):
            st.track.enter_run(frame.sop_instance_uid, self.settings.reference_tips,
                               self.settings.retreat_mm / st.ctx.spacing_mm)
            hit = self._track_roi(st, frame, state)
        if hit is not None:
            st.since_full += 1
            ctx = st.ctx
        else:
            att = frame_attenuation(frame, state.stage_state)
            ctx = self._context(st, frame, att)
            # after the context: a new view, a new track
            st.track.enter_run(frame.sop_instance_uid, self.settings.reference_tips,
                               self.settings.retreat_mm / ctx.spacing_mm)
            # without the register stage no run shows a joint: every run counts as showing one
            hit = self._detect(st, att, ctx, target,
                               joint_seen=target is not None or "register" not in state.stage_state)
            st.since_full = st.deferred = 0
            # the box follows a tip that two full searches of the run in a row agree on (the
            # first frames of a run often place it short, where the last run left it)
            last = st.anchor
            st.anchor = None if hit is None else (hit[0], hit[1])
            st.anchor_agreed = (hit is not None and last is not None and float(
                np.linalg.norm(hit[0] - last[0])) * ctx.spacing_mm <= self.settings.roi_step_mm)
        track = st.track
        if hit is None:
            track.lost()
            dot = self._end_on(st, ctx, target)
            if dot is not None:
                tip = self._dot_on_line(st, ctx, dot)
                return _dot_fields(dot, st.dot_xy if tip is None else tip, ctx.grid.spacing_mm,
                                   ctx.spacing_mm, target)
            return {"needle": None, "tip_to_target_mm": None}
        st.dot_prev = None
        track.found(*hit)
        return _fields(track, ctx.spacing_mm, target)

    def _end_on(self, st: _StudyNeedle, ctx: _RunContext, target: np.ndarray | None
                ) -> Dot | None:
        """An end-on needle on this full search's mean image (no line taken): the most
        dot-like point near the view's last dot, else near the register target, when it is
        compact (``dot_min_z``, or ``dot_track_min_z`` at the view's last dot;
        ``dot_max_length_mm``, ``dot_max_width_mm``) and confirmed (``dot_confirm_mm``: at the
        previous frame's dot of the run, or at the view's last dot). Not while a line
        needle is followed in the view: a needle seen as a line is not along the beam. On
        success ``st.dot_xy`` is the dot (full resolution)."""
        s = self.settings
        track = st.track
        if not s.end_on or (track.dir_xy is not None and track.hits >= s.follow_min_hits):
            st.dot_prev = None
            return None
        grid = ctx.grid
        if st.dot_xy is not None:
            centre, radius_mm = st.dot_xy, s.dot_follow_mm
        elif target is not None:
            centre, radius_mm = target, s.dot_search_mm
        else:
            st.dot_prev = None
            return None
        finder = st.finder
        dot = find_dot(finder.smooth, ctx.valid_work, grid.to_work(centre),
                       radius_mm / grid.spacing_mm,
                       max(2, int(round(s.dot_ring_mm / grid.spacing_mm))), finder.noise)
        if (dot is None or dot.z < min(s.dot_min_z, s.dot_track_min_z)
                or dot.length_px * grid.spacing_mm > s.dot_max_length_mm
                or dot.width_px * grid.spacing_mm > s.dot_max_width_mm):
            st.dot_prev = None
            return None
        xy = grid.to_full(dot.xy)

        def close(p: np.ndarray | None) -> bool:
            return p is not None and float(np.linalg.norm(p - xy)) * ctx.spacing_mm <= s.dot_confirm_mm

        at_last = close(st.dot_xy)
        if dot.z < s.dot_min_z and not at_last:
            st.dot_prev = None
            return None
        confirmed = at_last or close(st.dot_prev)
        st.dot_prev = xy
        if not confirmed:
            return None
        st.dot_xy = xy
        return dot

    def _dot_on_line(self, st: _StudyNeedle, ctx: _RunContext, dot: Dot) -> np.ndarray | None:
        """The tip (full resolution) of the most probable line candidate of this search that
        the dot lies on (``dot_line_*``), or None. A needle seen as a short line often passes
        the line search's candidates without being taken; its tip is then better placed than
        the dot, which may sit on the shaft behind it (two cues agreeing also make a false
        tip unlikely). Frame-local: the followed dot and the track are left as they are."""
        s = self.settings
        g = ctx.grid.spacing_mm
        best, best_p = None, 0.0
        for f in st.last_features:
            if f["prob"] < s.dot_line_min_prob or (best is not None and f["prob"] <= best_p):
                continue
            tip, base = f["tip"], f["base"]
            length = float(np.linalg.norm(tip - base))
            u = (tip - base) / max(length, 1e-9)
            d = dot.xy - base
            side_mm = _across(d, u) * g
            back_mm = (length - float(d @ u)) * g
            if side_mm <= s.dot_line_side_mm and -1.0 <= back_mm <= s.dot_line_back_mm:
                best, best_p = tip, f["prob"]
        return None if best is None else ctx.grid.to_full(best)

    def process_roi(self, frame: Frame, state) -> dict[str, Any] | None:
        """Cheaper mode for a frame short of time (the pipeline's ``needle_roi`` step): no
        search of the field. A needle followed in its box (:meth:`_track_roi`) is followed
        there as :meth:`process` would; otherwise the tip seen last is followed along its own
        axis in a small region around it (:meth:`_refine` on that region only, attenuation
        of that region only), and kept from retreating as in :meth:`process`.

        With no tip to follow (none seen in this study, or the frame geometry or the view
        changed, or none yet in this view) the step declines (None: the pipeline runs
        :meth:`process`) when ``search_when_unfollowed``, else reports nothing. A followed tip
        not found again is reported as nothing. The confidence is that of the last detection.
        The run's running mean is not updated. A full search that is due (see :meth:`_roi_due`)
        is put off on at most ``max_deferred_searches`` frames in a row (none by default); then
        the step declines and the field is searched, over budget if need be.
        """
        st = state.stage_state.get("needle")
        nothing = {"needle": None, "tip_to_target_mm": None}
        unfollowed = None if self.settings.search_when_unfollowed else nothing
        if not isinstance(st, _StudyNeedle) or st.ctx is None:
            return unfollowed
        self._follow_motion(st, frame, state)
        ctx, track = st.ctx, st.track
        spacing = float((frame.pixel_spacing_xy_mm or (0.5, 0.5))[0])
        if (spacing != ctx.spacing_mm or frame.pixels.shape != ctx.shape
                or not _same_view(ctx.run, frame.run)):
            return unfollowed
        if not self._roi_due(st, frame):
            if st.deferred >= self.settings.max_deferred_searches:
                return None
            st.deferred += 1
        track.enter_run(frame.sop_instance_uid, self.settings.reference_tips,
                        self.settings.retreat_mm / spacing)
        if self._box_ready(st, frame):
            # the box of a followed needle is as cheap and keeps to the full search's tip;
            # following the previous frame's tip lets per-frame errors add up
            hit = self._track_roi(st, frame, state)
            if hit is not None:
                st.since_full += 1
                track.found(*hit)
                return _fields(track, ctx.spacing_mm, _target(state))
        last = track.tip_xy if track.tip_xy is not None else track.last_tip_of_run
        if last is None or track.dir_xy is None:
            return unfollowed
        s = self.settings
        reach = int(math.ceil((s.fit_mm + s.tip_window_mm + 3.0) / spacing)) + 1
        rows, cols = frame.pixels.shape
        x0, y0 = max(0, int(last[0]) - reach), max(0, int(last[1]) - reach)
        x1, y1 = min(cols, int(last[0]) + reach + 1), min(rows, int(last[1]) + reach + 1)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return nothing
        crop = _attenuation_crop(frame, state, y0, y1, x0, x1)
        off = np.array([x0, y0], float)
        refined = self._refine(st, crop, last - off, track.dir_xy, ctx)
        if refined is None or refined[2] <= 0.0:
            track.lost()
            return nothing
        tip, u, _ = refined
        base = last - track.dir_xy * track.length_px
        tip = self._no_retreat(st, ctx, tip + off, u, True)
        length_px = max(float((tip - base) @ u), 0.0)
        track.found(tip, u, length_px)
        return _fields(track, spacing, _target(state))

    def _follow_motion(self, st: _StudyNeedle, frame: Frame, state) -> None:
        """Move what the stage remembers with the anatomy when the register stage's image
        motion (the median of its last three frames of the run: one frame's registration can
        be millimetres off) steps by at least ``motion_min_mm`` from the frame before (see
        ``NeedleSettings.motion_min_mm``), by whole working-grid pixels. Not across runs, a
        change of view or of the frame geometry (the register's motion is then measured from
        another reference, or is less sure)."""
        s = self.settings
        register = state.stage_state.get("register")
        shift = getattr(register, "shift_xy", None)
        if s.motion_min_mm <= 0.0 or shift is None:
            return
        shift = np.asarray(shift, float)
        ctx = st.ctx
        spacing = float((frame.pixel_spacing_xy_mm or (0.5, 0.5))[0])
        if (st.motion_run is not frame.run or register.view_changed or ctx is None
                or ctx.run is not frame.run or spacing != ctx.spacing_mm
                or frame.pixels.shape != ctx.shape):
            st.motion_run, st.motion_shifts, st.motion_level = frame.run, [shift], None
            return
        st.motion_shifts = st.motion_shifts[-2:] + [shift]
        if len(st.motion_shifts) < 3:
            return
        level = np.sort(np.array(st.motion_shifts), axis=0)[1]  # the median (np.median: 25 us)
        before, st.motion_level = st.motion_level, level
        if before is None:
            return
        step = level - before
        if math.hypot(step[0], step[1]) * spacing < s.motion_min_mm:
            return
        f = ctx.grid.factor
        step_w = np.rint(step / f)
        if not step_w.any():
            return
        dx, dy = int(step_w[0]), int(step_w[1])
        if st.mean_work is not None:
            # the register's motion can be as far off for a few frames (held-out seed 31337:
            # 2.2 px, 1.6 mm, on three frames of a still study): the frame itself must match
            # the run's mean better moved than not
            work = downsample(frame_attenuation(frame, state.stage_state), f)
            if not _moved_matches(work, st.mean_work, ctx.valid_work, dx, dy):
                return
            _shift_inside(st.mean_work, ctx.valid_work, dx, dy)
        _translate_memory(st, step_w * f)

    def _mean_work(self, st: _StudyNeedle, att: np.ndarray, ctx: _RunContext) -> np.ndarray:
        """Running mean of the working-grid image over the last ``avg_frames`` frames of the
        run: the needle barely moves within a run, the quantum noise is independent."""
        work = downsample(att, ctx.grid.factor, out=st.buf.get("work"))
        if work is not att:
            st.buf["work"] = work  # reused: a new 1 MB array each frame costs page faults
        if st.mean_work is None or st.mean_work.shape != work.shape:
            st.mean_work = work.astype(np.float32, copy=True)
            st.n_mean = 1
            return st.mean_work
        st.n_mean = min(st.n_mean + 1, self.settings.avg_frames)
        cv2.accumulateWeighted(work, st.mean_work, 1.0 / st.n_mean)
        return st.mean_work

    def _candidates(self, st: _StudyNeedle, att: np.ndarray, ctx: _RunContext,
                    target: np.ndarray | None
                    ) -> list[tuple[np.ndarray, np.ndarray, float, bool, bool]]:
        """Needle-like segments of the frame as (tip, base, score, extra, free) on the working
        grid, best first; ``extra``: from a line past the ``n_lines`` strongest; ``free``:
        both ends inside the field (the whole object seen, not cut by the field edge)."""
        s = self.settings
        grid = ctx.grid
        finder = st.finder
        work = self._mean_work(st, att, ctx)
        finder.score_map(work, ctx.valid_work)
        margin_w = s.edge_margin_mm / grid.spacing_mm
        out = []
        st.last_features = []
        # lines past the strongest: only near the target (where the needle is aimed), not on
        # a scout (its lines near the target are cortical margins: no needle in yet)
        extra = s.target_lines if target is not None and not st.scout.on_scout else 0
        aim = grid.to_work(target) if extra else None
        reach = s.target_lines_mm / grid.spacing_mm
        for k, line in enumerate(finder.lines(n_peaks=s.n_lines + extra)):
            if k >= s.n_lines and _across(aim - np.array(line[:2]), np.array(line[2:])) > reach:
                continue
            seg = finder.segment(line, grid.spacing_mm)
            if seg is None:
                continue
            for _ in range(2):
                line = finder.refit(line, seg[0], seg[1])
                seg = finder.segment(line, grid.spacing_mm) or seg
            t0, t1, score = seg
            if score < s.min_score:
                continue
            x0, y0, ux, uy = line
            u = np.array([ux, uy])
            e0 = np.array([x0, y0]) + t0 * u
            e1 = np.array([x0, y0]) + t1 * u
            if any(_same_segment(e0, e1, c[0], c[1]) for c in out):
                continue
            edge0 = not _inside(ctx.valid_work, e0 - u * margin_w)
            edge1 = not _inside(ctx.valid_work, e1 + u * margin_w)
            if edge0 and edge1:
                continue  # crosses the field: a wire or a cable, not a needle
            if edge0 != edge1:
                tip_is_1 = edge0
                if target is not None and s.edge_tip_ratio > 0.0:
                    # the end at the edge nearer the target: the tip is at or beyond the
                    # edge, the free end is the hub side (NeedleSettings.edge_tip_ratio)
                    ref = grid.to_work(target)
                    free_end, edge_end = (e1, e0) if edge0 else (e0, e1)
                    if _norm(edge_end - ref) < s.edge_tip_ratio * _norm(free_end - ref):
                        continue
            else:
                ref = grid.to_work(target if target is not None else ctx.centre_xy)
                tip_is_1 = _norm(e1 - ref) < _norm(e0 - ref)
            tip, base = (e1, e0) if tip_is_1 else (e0, e1)
            span_px = 2.0 * s.fit_mm / grid.spacing_mm
            for _ in range(3):
                tip = self._extend_tip(st, tip, base, ctx)
                tip, base = self._refit_segment(finder, tip, base, span_px)
            score = finder.interval_score(base, tip)
            if (score < s.min_score
                    or _norm(tip - base) * grid.spacing_mm < s.min_length_mm):
                continue  # weak, or shorter than a needle once its tip is placed (a clip)
            if k >= s.n_lines and _norm(tip - aim) > reach:
                continue
            feats = self._features(st, ctx, att, tip, base, score, edge0 or edge1)
            # a line that goes on past its "tip" as strongly as a line is a wire or an edge
            # fading over bone (no needle candidate of the training studies had ext_score > 0)
            prob = needle_probability(feats) if feats["ext_score"] <= s.max_ext_score else 0.0
            feats["prob"] = prob
            st.last_features.append(feats)
            out.append((tip, base, prob, k >= s.n_lines, not (edge0 or edge1)))
        out.sort(key=lambda c: -c[2])
        return out

    def _features(self, st: _StudyNeedle, ctx: _RunContext, att: np.ndarray, tip: np.ndarray,
                  base: np.ndarray, score: float, base_at_edge: bool) -> dict:
        """What tells a needle from a wire, a marker or a cortical edge (working grid)."""
        s = self.settings
        finder = st.finder
        grid = ctx.grid
        length = float(_norm(tip - base))
        u = (tip - base) / max(length, 1e-9)
        # a wire fading over bone goes on beyond its apparent end, to the field edge
        start = tip + u * (2.0 / grid.spacing_mm)
        rows, cols = ctx.valid_work.shape
        n_ext = _run_inside(ctx.valid_work, start, u, rows + cols)
        if n_ext >= 4:
            ext = finder.interval_score(start, start + u * (n_ext - 1))
        else:
            ext = 0.0
        # flanks: a needle is dark on both sides, a cortical edge on one
        n = max(4, int(length))
        lo = st.buf.setdefault(("flo", n), np.empty(n, np.float64))
        mean = st.buf.setdefault(("fmean", n), np.empty(n, np.float64))
        off = max(1.5, s.flank_mm / grid.spacing_mm)
        K.line_flanks(finder.smooth, base[0], base[1], u[0], u[1], length / n, off, lo, mean)
        total = float(mean.sum())
        sym = float(lo.sum()) / total if total > 0 else -1.0
        # width: a needle (0.5-0.9 mm, magnified 1.3-1.5) has most of its contrast within
        # 0.8 mm of its axis, a skin marker (1-2 mm) or a bone margin does not
        tip_f, base_f = grid.to_full(tip), grid.to_full(base)
        n_f = max(4, int(_norm(tip_f - base_f)))
        near = st.buf.setdefault(("wnear", n_f), np.empty(n_f, np.float64))
        far = st.buf.setdefault(("wfar", n_f), np.empty(n_f, np.float64))
        step = float(_norm(tip_f - base_f)) / n_f
        K.line_contrast(att, base_f[0], base_f[1], u[0], u[1], step, s.near_mm / ctx.spacing_mm, near)
        K.line_contrast(att, base_f[0], base_f[1], u[0], u[1], step, s.far_mm / ctx.spacing_mm, far)
        far_sum = float(far.sum())
        thin = float(near.sum()) / far_sum if far_sum > 0 else 0.0
        if _intensifier(ctx.run):
            # an intensifier's blur widens the needle's profile (see intensifier_thin_gain)
            thin *= s.intensifier_thin_gain
        ti = np.clip(np.rint(tip).astype(int), 0, [cols - 1, rows - 1])
        return {"score": score, "length_mm": length * grid.spacing_mm,
                "base_at_edge": bool(base_at_edge), "ext_score": ext, "ext_mm": n_ext * grid.spacing_mm,
                "sym": sym, "thin": thin,
                "tip_edge_mm": ctx.edge_dist_work(int(ti[0]), int(ti[1])) * grid.spacing_mm,
                "tip": tip.copy(), "base": base.copy()}

    def _refit_segment(self, finder: LineFinder, tip: np.ndarray, base: np.ndarray,
                       span_px: float
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Refit the line through the last ``span_px`` of a segment before its tip (a bent
        needle is straight only locally) and project the tip onto it; the base keeps its
        distance along the new direction."""
        length = float(_norm(tip - base))
        u = (tip - base) / length
        span = min(length, span_px)
        start = tip - u * span
        x0, y0, ux, uy = finder.refit((start[0], start[1], u[0], u[1]), 0.0, span)
        p, v = np.array([x0, y0]), np.array([ux, uy])
        tip = p + v * float((tip - p) @ v)
        return tip, tip - v * length

    def _extend_tip(self, st: _StudyNeedle, tip: np.ndarray, base: np.ndarray,
                    ctx: _RunContext, finder: LineFinder | None = None) -> np.ndarray:
        """Move a segment's free end to the most likely end of the bright line along its axis
        (the needle fades over dense bone, so the supported segment often stops short), on the
        last score map of ``finder`` (the field's by default)."""
        s = self.settings
        finder = finder or st.finder
        length = float(_norm(tip - base))
        u = (tip - base) / length
        ahead = s.extend_mm / ctx.grid.spacing_mm
        n = int(length + ahead) + 1
        prof = st.buf.setdefault(("ext", n), np.empty(n, np.float64))
        K.line_contrast(finder.smooth, base[0], base[1], u[0], u[1], 1.0, 2.0, prof)
        lo = max(4, int(length - s.extend_mm / ctx.grid.spacing_mm))
        i, _ = K.step_location(prof, lo, n - 2)
        # the shaft dims where it passes over bone: the strongest fall is then that change of
        # background, not the tip. Go on past it while the part beyond is still a line (ridge
        # evidence) a fair fraction as bright as the shaft before it, and ends in a fall.
        for _ in range(3):
            if n - 2 - i < 8:
                break
            rest = prof[i:n]
            j, _ = K.step_location(rest, 3, rest.shape[0] - 3)
            before = prof[max(0, i - 3 * j):i]
            seg_mean = float(rest[:j].mean())
            if (before.size < 3 or seg_mean < s.dim_fraction * float(before.mean())
                    or seg_mean <= float(rest[j:].mean())):
                break
            a, b = base + u * i, base + u * (i + j - 1)
            if finder.interval_score(a, b) < s.follow_min_score:
                break
            i += j
        return base + u * (i - 0.5)

    def _scout_line(self, st: _StudyNeedle, length_mm: float, u: np.ndarray) -> bool:
        """Has a candidate (length in mm, unit direction) the length (``scout_line_mm``) and
        axis (``scout_line_deg``, either way along it) of a line the study's scout showed and
        did not take?"""
        s = self.settings
        if s.scout_line_mm <= 0.0:
            return False
        cos = math.cos(math.radians(s.scout_line_deg))
        return any(abs(length_mm - l_mm) <= s.scout_line_mm and abs(float(u @ v)) >= cos
                   for l_mm, v in st.scout_lines)

    def _continues(self, ctx: _RunContext, tip: np.ndarray, u: np.ndarray,
                   last: np.ndarray | None, last_u: np.ndarray | None, reach_mm: float) -> bool:
        """Does a candidate (full-resolution tip and direction) continue a needle seen with
        tip ``last`` and direction ``last_u`` (same line within ``track_angle_deg`` and
        ``track_margin_mm`` across, tip within ``reach_mm`` along)?"""
        s = self.settings
        if last is None or last_u is None:
            return False
        if float(u @ last_u) < math.cos(math.radians(s.track_angle_deg)):
            return False
        d = tip - last
        across = abs(float(d @ np.array([-last_u[1], last_u[0]]))) * ctx.spacing_mm
        along = abs(float(d @ last_u)) * ctx.spacing_mm
        return across <= s.track_margin_mm and along <= reach_mm

    def _consistent(self, st: _StudyNeedle, ctx: _RunContext, tip: np.ndarray,
                    u: np.ndarray, base: np.ndarray | None = None) -> bool:
        """Does a candidate continue the needle seen last (in this run or an earlier one)?
        Also when its tip is further on than ``track_reach_mm`` but its segment (from
        ``base``) runs through the last tip (``track_margin_mm`` across): the needle advanced
        further, or the last tip was placed short of the needle's (on a run's first, noisy
        frame)."""
        s = self.settings
        last = st.track.last_tip_of_run if st.track.tip_xy is None else st.track.tip_xy
        if self._continues(ctx, tip, u, last, st.track.dir_xy, s.track_reach_mm):
            return True
        if not s.track_through or base is None or last is None or st.track.dir_xy is None:
            return False
        if float(u @ st.track.dir_xy) < math.cos(math.radians(s.track_angle_deg)):
            return False
        d = last - base
        along = float(d @ u)
        return (_across(d, u) * ctx.spacing_mm <= s.track_margin_mm
                and 0.0 <= along <= float((tip - base) @ u))

    def _tracks(self, st: _StudyNeedle, ctx: _RunContext, tip: np.ndarray, u: np.ndarray,
                base: np.ndarray, extra: bool) -> bool:
        """Does a candidate continue the track (:meth:`_consistent`)? One from a line past the
        ``n_lines`` strongest (``extra``, near the target) only a track last found on such a
        line: it must not carry a needle of the strong lines onto a cortical margin by the
        joint."""
        return (not extra or st.track.extra) and self._consistent(st, ctx, tip, u, base)

    def _tracks_refined(self, st: _StudyNeedle, att: np.ndarray, ctx: _RunContext,
                        tip: np.ndarray, u: np.ndarray, base: np.ndarray, extra: bool) -> bool:
        """Does a candidate whose axis is more than ``track_angle_deg`` (up to
        ``track_refined_deg``) off the track's continue it (:meth:`_tracks`) once its tip is
        refined on this frame (:meth:`_refine`, as the track's direction was measured, and as
        the candidate is placed when taken)? A candidate's axis is the chord of its last
        ``2 * fit_mm``, the track's the refined axis of the shaft's last ``fit_mm`` when it was
        last found: on a bent needle, or one turned a little since, the two may differ by
        more than ``track_angle_deg`` where the refined axes do not (training seed 4101: a
        needle lost on 15 frames of a run, its candidate 9-10 degrees off the track's axis,
        refined 0-6)."""
        s = self.settings
        track = st.track
        if (s.track_refined_deg <= s.track_angle_deg or track.dir_xy is None
                or float(u @ track.dir_xy) < math.cos(math.radians(s.track_refined_deg))):
            return False
        refined = self._refine(st, att, tip, u, ctx)
        if refined is None or refined[2] <= 0.0:
            return False
        r_tip, r_u, _ = refined
        return self._tracks(st, ctx, r_tip, r_u, r_tip - r_u * _norm(tip - base), extra)

    def _confirmed(self, st: _StudyNeedle, ctx: _RunContext, tip: np.ndarray,
                   u: np.ndarray, min_prob: float = 0.0) -> bool:
        """Was a candidate on the same line, tip within ``track_margin_mm``, among the
        previous frame's candidates of this run (rated ``min_prob`` or more)? A line seen once
        on the first, noisiest frames of a run (a wire whose continuation is not seen yet, a
        cortical edge) is not yet a needle."""
        return any(p_prob >= min_prob
                   and self._continues(ctx, tip, u, p_tip, p_u, self.settings.track_margin_mm)
                   for p_tip, p_u, p_prob in st.prev_candidates)

    def _persists(self, st: _StudyNeedle, ctx: _RunContext, tip: np.ndarray,
                  u: np.ndarray) -> bool:
        """Was a candidate on the same line, tip within ``track_margin_mm``, of at least
        ``persist_min_prob`` among those of each of the last ``persist_frames - 1`` full
        searches of this view?"""
        s = self.settings
        need = s.persist_frames - 1
        if need < 1 or len(st.persistent) < need:
            return False
        return all(any(self._continues(ctx, tip, u, p_tip, p_u, s.track_margin_mm)
                       for p_tip, p_u in frame) for frame in st.persistent[-need:])

    def _advanced(self, st: _StudyNeedle, ctx: _RunContext, tip: np.ndarray,
                  u: np.ndarray) -> bool:
        """Has a candidate's tip moved on along its line (``advance_side_mm`` across, same
        direction within ``track_angle_deg``) by ``advance_min_mm`` to ``track_reach_mm`` from
        a line the view's last run left (``st.prev_run_lines``)?"""
        s = self.settings
        if s.advance_min_mm <= 0.0:
            return False
        cos = math.cos(math.radians(s.track_angle_deg))
        for p_tip, p_u in st.prev_run_lines:
            d = tip - p_tip
            along_mm = float(d @ p_u) * ctx.spacing_mm
            if (float(u @ p_u) >= cos and _across(d, p_u) * ctx.spacing_mm <= s.advance_side_mm
                    and s.advance_min_mm <= along_mm <= s.track_reach_mm):
                return True
        return False

    def _detect(self, st: _StudyNeedle, att: np.ndarray, ctx: _RunContext,
                target: np.ndarray | None, joint_seen: bool = True):
        s = self.settings
        grid = ctx.grid
        ranked = []
        seen = []
        st.jump_before, st.jump = st.jump, None
        lasting = []
        moving = []
        st.scout.enter(ctx.run, joint_seen)
        # a track begun on the scout and not found since is not yet a needle followed in the
        # view: off the scout it does not keep other lines out (a skin marker taken near the
        # target on the scout held the needle of the next runs to the replacement bar)
        followed = st.track.dir_xy is not None and not (
            s.scout_track_provisional and st.track.scout_only and not st.scout.on_scout)
        for tip_w, base_w, prob, extra, free in self._candidates(st, att, ctx, target):
            tip = grid.to_full(tip_w)
            base = grid.to_full(base_w)
            u = (tip - base) / _norm(tip - base)
            tracked = self._tracks(st, ctx, tip, u, base, extra)
            if not tracked and prob >= s.track_min_prob:
                tracked = self._tracks_refined(st, att, ctx, tip, u, base, extra)
            if prob >= s.track_min_prob:
                seen.append((tip, u, prob))
            if prob >= s.persist_min_prob:
                lasting.append((tip, u))
            if tracked:
                ok = prob >= s.track_min_prob
            elif followed:
                # a needle is followed in this view: another line must be very probable (and
                # seen twice) to be taken for it; a needle does not jump across the field
                ok = prob >= s.single_min_prob and self._confirmed(st, ctx, tip, u)
            else:
                twice = (prob >= min(s.min_prob, s.advance_min_prob)
                         and self._confirmed(st, ctx, tip, u))
                if prob >= s.advance_min_prob and twice:
                    moving.append((tip, u))
                # seen twice, once at min_prob, in either order (confirm_min_prob; off by
                # default)
                # off the scout, a candidate whose tip is at the register target is taken on
                # one frame at min_prob (target_single_mm)
                at_target = (s.target_single_mm > 0.0 and target is not None
                             and not st.scout.on_scout
                             and _norm(tip - target) * ctx.spacing_mm <= s.target_single_mm)
                ok = (prob >= s.min_prob and (prob >= s.single_min_prob or twice or at_target)
                      or prob >= s.confirm_min_prob and self._confirmed(st, ctx, tip, u,
                                                                        s.min_prob)
                      or prob >= s.persist_min_prob and self._persists(st, ctx, tip, u)
                      or prob >= s.advance_min_prob and twice and self._advanced(st, ctx, tip, u))
            # a line free at both ends is seen whole: its length is the object's (one cut by
            # the field edge is as long as the field lets it be)
            # (a track begun on such a line a frame or two ago, its length then measured on
            # fewer frames, is checked too)
            length_mm = _norm(tip - base) * ctx.spacing_mm
            young = not tracked or st.track.hits < s.follow_min_hits
            if (ok and young and free and not st.scout.on_scout
                    and self._scout_line(st, length_mm, u)):
                ok = False
            if ok and not tracked:
                ok = st.scout.allows(tip, ctx.spacing_mm, target, ctx.centre_xy)
            if ok:
                ranked.append((tracked, prob, tip_w, base_w, extra))
            elif (st.scout.on_scout and free and not tracked
                    and prob >= s.scout_line_min_prob):
                st.scout_lines = st.scout_lines[-63:] + [(length_mm, u)]
        st.prev_candidates = seen
        st.persistent = (st.persistent + [lasting])[-max(1, s.persist_frames - 1):]
        st.run_lines = moving or st.run_lines
        # a candidate continuing the track goes first; then the most probable
        ranked.sort(key=lambda c: (not c[0], -c[1]))
        for tracked, score, tip_w, base_w, extra in ranked[:3]:
            tip = grid.to_full(tip_w)
            base = grid.to_full(base_w)
            u = (tip - base) / _norm(tip - base)
            refined = self._refine(st, att, tip, u, ctx)
            if refined is None or refined[2] <= 0.0:
                continue
            tip, u, _ = refined
            if tracked and self._jumped(st, ctx, tip, u):
                at_anchor = self._at_anchor(st, att, ctx)
                if at_anchor is None:
                    continue
                tip, u = at_anchor
                base = tip - u * st.track.length_px
            tip, u = self._further_on_line(st, att, ctx, tip, u)
            tip = self._no_retreat(st, ctx, tip, u, tracked, st.finder)
            st.track.hits = st.track.hits + 1 if tracked else 1
            st.track.scout_only = st.scout.on_scout and (st.track.scout_only or not tracked)
            st.track.extra = extra
            return tip, u, float(np.linalg.norm(tip - base)), score
        hit = self._follow(st, att, ctx)
        if hit is not None:
            tip, u = self._further_on_line(st, att, ctx, hit[0], hit[1])
            if tip is not hit[0]:
                tip = self._no_retreat(st, ctx, tip, u, True, st.finder)
                hit = (tip, u, hit[2] + float((tip - hit[0]) @ u), hit[3])
        return hit

    def _further_on_line(self, st: _StudyNeedle, att: np.ndarray, ctx: _RunContext,
                         tip: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tip (full resolution) moved to the end of a candidate segment of this search
        that it lies on (within ``further_side_mm`` of its axis, same direction within
        ``further_angle_deg``) and that goes on at least ``further_min_mm`` beyond it: where a
        needle crosses a bone edge or dims over bone, the taken line (often the track's, held
        by :meth:`_no_retreat`) stops there while the search's segment of the shaft beyond
        it reaches the tip. The segment must not be a one-sided edge (flank symmetry at least
        ``further_min_sym``) nor run on to the field edge (``max_ext_score``), and its part
        beyond the tip (from the tip, or from its foot on the segment's axis) must itself be a
        line (``follow_min_score``, as :meth:`_extend_tip` asks of a dimmed shaft; less on a
        run's first frames, :meth:`_follow_need`). The new tip is refined on this frame;
        kept when it is still ``further_min_mm`` / 2 ahead."""
        s = self.settings
        if s.further_min_mm <= 0.0:
            return tip, u
        g = ctx.grid.spacing_mm
        tip_w = ctx.grid.to_work(tip)
        cos = math.cos(math.radians(s.further_angle_deg))
        cos_line = math.cos(math.radians(s.track_angle_deg))
        best, best_mm = None, s.further_min_mm
        for f in st.last_features:
            if f["sym"] < s.further_min_sym or f["ext_score"] > s.max_ext_score:
                continue
            c_tip, c_base = f["tip"], f["base"]
            length = _norm(c_tip - c_base)
            v = (c_tip - c_base) / max(length, 1e-9)
            if float(v @ u) < cos:
                continue
            # off the taken line's direction, the segment must itself look like a needle (a
            # cortical margin crossing the tip at 10-20 deg does not)
            if float(v @ u) < cos_line and f["prob"] < s.track_min_prob:
                continue
            d = tip_w - c_base
            along = float(d @ v)
            beyond_mm = (length - along) * g
            if (_across(d, v) * g <= s.further_side_mm
                    and along * g >= -2.0 and beyond_mm >= best_mm):
                best, best_mm, best_v, best_from = c_tip, beyond_mm, v, c_base + v * along
        # the evidence beyond the tip, also along the segment's own axis: a tip taken a few mm
        # past a bend (on the shaft's line) lies beside the bent part, and a line from it to
        # the bent part's end cuts across the needle (on a run's first frame, whose mean is
        # that one frame, half the evidence, as in :meth:`_follow`)
        need = self._follow_need(st)
        if best is None or max(st.finder.interval_score(tip_w, best),
                               st.finder.interval_score(best_from, best)) < need:
            return tip, u
        # past a bend (more than track_angle_deg) the tip is refined along the segment's own
        # axis: along the shaft's axis behind the bend it slides off to the side
        axis = best_v if float(best_v @ u) < cos_line else u
        refined = self._refine(st, att, ctx.grid.to_full(best), axis, ctx)
        if refined is None or refined[2] <= 0.0:
            return tip, u
        new_tip, new_u, _ = refined
        if (float((new_tip - tip) @ u) * ctx.spacing_mm < 0.5 * s.further_min_mm
                or float(new_u @ axis) < cos_line):
            return tip, u
        return new_tip, new_u

    def _jumped(self, st: _StudyNeedle, ctx: _RunContext, tip: np.ndarray,
                u: np.ndarray) -> bool:
        """Is a tracked tip (held as :meth:`_no_retreat` will hold it) further than
        ``max_jump_mm`` from the run's agreed anchor, and not where the previous frame's full
        search put such a jump? A first jump is remembered (``st.jump``) and the next frame is
        searched in full (:meth:`_roi_due`) to confirm it."""
        if st.anchor is None or not st.anchor_agreed or st.n_mean < self.settings.avg_frames:
            return False
        held = self._held(st, ctx, tip, u, st.finder)
        if (float(np.linalg.norm(held - st.anchor[0])) * ctx.spacing_mm
                <= self.settings.max_jump_mm):
            return False
        pending = st.jump_before
        if (pending is not None and float(np.linalg.norm(held - pending)) * ctx.spacing_mm
                <= self.settings.roi_step_mm):
            return False
        st.jump = held
        return True

    def _at_anchor(self, st: _StudyNeedle, att: np.ndarray, ctx: _RunContext
                   ) -> tuple[np.ndarray, np.ndarray] | None:
        """The tip refined on this frame from the run's anchor along its axis (no extension
        along the line), when it stays within ``roi_step_mm`` of the anchor on its line."""
        s = self.settings
        anchor, anchor_u = st.anchor
        refined = self._refine(st, att, anchor, anchor_u, ctx)
        if refined is None or refined[2] <= 0.0:
            return None
        tip, u, _ = refined
        if (float(u @ anchor_u) < math.cos(math.radians(s.track_angle_deg))
                or np.linalg.norm(self._held(st, ctx, tip, u, st.finder) - anchor)
                * ctx.spacing_mm > s.roi_step_mm):
            return None
        return tip, u

    def _follow(self, st: _StudyNeedle, att: np.ndarray, ctx: _RunContext):
        """No candidate taken, but a needle followed in this view: look for it where it was
        (the tip refined along the last axis, as :meth:`process_roi` does) and keep it when
        the shaft behind the refined tip is still a line on the run's mean image (evidence
        ``follow_min_score``; less on a run's first frames, :meth:`_follow_need`). A needle over
        dense bone or beside a cortical edge often drops out of the line search for a few
        frames while it is still plainly there. The tip is held (:meth:`_held`) but not
        recorded among the run's tips that hold the later ones."""
        s = self.settings
        track = st.track
        last = track.tip_xy if track.tip_xy is not None else track.last_tip_of_run
        if last is None or track.dir_xy is None or track.hits < s.follow_min_hits:
            return None
        grid = ctx.grid
        span_px = min(track.length_px, 2.0 * s.fit_mm / ctx.spacing_mm)
        if span_px * ctx.spacing_mm < s.min_length_mm:
            return None
        # the needle may have advanced since: its end along the last axis first
        tip_w = self._extend_tip(st, grid.to_work(last), grid.to_work(last - track.dir_xy * span_px),
                                 ctx)
        refined = self._refine(st, att, grid.to_full(tip_w), track.dir_xy, ctx)
        if refined is None or refined[2] <= 0.0:
            return None
        tip, u, _ = refined
        if float(u @ track.dir_xy) < math.cos(math.radians(s.track_angle_deg)):
            return None
        if self._jumped(st, ctx, tip, u):
            at_anchor = self._at_anchor(st, att, ctx)
            if at_anchor is None:
                return None
            tip, u = at_anchor
        score = st.finder.interval_score(grid.to_work(tip - u * span_px), grid.to_work(tip))
        if score < self._follow_need(st):
            return None
        # held as a tracked tip is, but not kept as one that holds the run's later tips: found
        # by extension along the last axis, with no segment of the search behind it (often on
        # a run's first, one-frame mean), it is the weakest tip there is, and one placed a few
        # mm beyond the needle held the rest of the run there (training seed 4102: a run of 16
        # frames 3.3 mm beyond, its candidates 0.2-1.9 mm off)
        tip = self._held(st, ctx, tip, u, st.finder)
        base = tip - u * track.length_px
        return tip, u, float(np.linalg.norm(tip - base)), track.score

    def _follow_need(self, st: _StudyNeedle) -> float:
        """Line evidence asked of a followed shaft on the run's mean image so far
        (``follow_start_score`` on its first frame, then growing with the square root of the
        frames averaged up to ``follow_min_score``; see ``NeedleSettings.follow_scaled``)."""
        s = self.settings
        if st.n_mean == 1:
            return s.follow_start_score
        if s.follow_scaled and st.n_mean < s.avg_frames:
            return max(s.follow_start_score,
                       s.follow_min_score * math.sqrt(st.n_mean / s.avg_frames))
        return s.follow_min_score

    # -- following a needle in a box around it ---------------------------------------------
    def _roi_due(self, st: _StudyNeedle, frame: Frame) -> bool:
        """Is this frame's needle to be followed in a box around it (:meth:`_track_roi`)
        instead of searched for over the field? Only for a needle found on the previous frame
        of this run and by the line search on ``follow_min_hits`` frames, once two full
        searches of the run in a row agree on its tip within ``roi_step_mm`` (the needle may
        have moved since the last run, and the first frames of a run are noisy), and not on
        every
        ``full_search_every``-th frame (the full search also looks for another needle and
        checks the followed one's probability)."""
        return (self.settings.full_search_every > 1 and self._box_ready(st, frame)
                and st.jump is None and st.since_full < self.settings.full_search_every - 1)

    def _box_ready(self, st: _StudyNeedle, frame: Frame) -> bool:
        """Is there a followed needle of this run for :meth:`_track_roi`: found on the previous
        frame, by the line search on ``follow_min_hits`` frames, with an agreed anchor?"""
        track = st.track
        return (st.ctx is not None and st.ctx.run is frame.run
                and st.mean_work is not None and st.anchor is not None and st.anchor_agreed
                and track.tip_xy is not None
                and track.dir_xy is not None and track.hits >= self.settings.follow_min_hits)

    def _track_roi(self, st: _StudyNeedle, frame: Frame, state) -> tuple | None:
        """Follow the needle in a box of the working grid around the tip of the run's last
        full search (the anchor): the needle's segment along the anchor's line on the run's
        mean image (updated and scored in the box only), its tip placed as the full search
        places it and refined on this frame, is kept when (held as :meth:`_no_retreat` holds
        it) within ``roi_step_mm`` of the anchor, on the same line, and the shaft behind it
        is still a line. Starting from the anchor, not from the previous frame's tip, keeps
        the per-frame errors from adding up. None when not found (the full search then runs
        and the box's mean is as it was)."""
        s = self.settings
        ctx, track = st.ctx, st.track
        grid, f = ctx.grid, ctx.grid.factor
        anchor, anchor_u = st.anchor
        span_px = min(track.length_px, 2.0 * s.fit_mm / ctx.spacing_mm)
        if span_px * ctx.spacing_mm < s.min_length_mm:
            return None
        tip_w = grid.to_work(anchor)
        ends = np.array([tip_w + anchor_u * (s.extend_mm / grid.spacing_mm),
                         tip_w - anchor_u * (span_px / f)])
        pad = int(math.ceil(s.track_margin_mm / grid.spacing_mm)) + 4
        rows_w, cols_w = st.mean_work.shape
        x0, y0 = (max(0, int(v)) for v in np.floor(ends.min(0)) - pad)
        x1 = min(cols_w, int(math.ceil(ends[:, 0].max())) + pad + 1)
        y1 = min(rows_w, int(math.ceil(ends[:, 1].max())) + pad + 1)
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        crop = _attenuation_crop(frame, state, y0 * f, y1 * f, x0 * f, x1 * f)
        mean = st.mean_work[y0:y1, x0:x1]
        before, n_before = mean.copy(), st.n_mean
        st.n_mean = min(st.n_mean + 1, s.avg_frames)
        mean += (downsample(crop, f) - mean) * np.float32(1.0 / st.n_mean)
        st.roi_finder.score_map(np.ascontiguousarray(mean),
                                np.ascontiguousarray(ctx.valid_work[y0:y1, x0:x1]),
                                noise=st.finder.noise)
        hit = self._box_tip(st, crop, np.array([x0, y0], float), span_px)
        if hit is None:
            # the full search adds this frame to the mean itself
            mean[...] = before
            st.n_mean = n_before
        return hit

    def _box_tip(self, st: _StudyNeedle, crop: np.ndarray, origin_w: np.ndarray,
                 span_px: float) -> tuple | None:
        """The tip in the box whose working-grid origin is ``origin_w`` (score map in
        ``st.roi_finder``, ``crop`` its attenuation at full resolution); see
        :meth:`_track_roi`."""
        s = self.settings
        ctx, track, finder = st.ctx, st.track, st.roi_finder
        grid = ctx.grid
        anchor, anchor_u = st.anchor
        tip_w = grid.to_work(anchor) - origin_w
        origin = origin_w * grid.factor
        # the tip's start as the full search places it: the needle's segment on the anchor's
        # line, then its end along the line and the axis refitted near it, three times
        line = (tip_w[0], tip_w[1], anchor_u[0], anchor_u[1])
        seg = finder.segment(line, grid.spacing_mm)
        if seg is None:
            return None
        for _ in range(2):
            line = finder.refit(line, seg[0], seg[1])
            seg = finder.segment(line, grid.spacing_mm) or seg
        p, v = np.array(line[:2]), np.array(line[2:])
        start_w, base_w = p + seg[1] * v, p + seg[0] * v
        for _ in range(3):
            start_w = self._extend_tip(st, start_w, base_w, ctx, finder)
            start_w, base_w = self._refit_segment(finder, start_w, base_w,
                                                  2.0 * s.fit_mm / grid.spacing_mm)
        refined = self._refine(st, crop, grid.to_full(start_w), anchor_u, ctx)
        if refined is None or refined[2] <= 0.0:
            return None
        tip, u, _ = refined
        # the step is that of the tip as it will be reported (held where the shaft fades)
        if (float(u @ anchor_u) < math.cos(math.radians(s.track_angle_deg))
                or np.linalg.norm(self._held(st, ctx, tip + origin, u, finder, origin_w)
                                  - anchor)
                * ctx.spacing_mm > s.roi_step_mm):
            return None
        if finder.interval_score(grid.to_work(tip - u * span_px), grid.to_work(tip)) < s.follow_min_score:
            return None
        tip = self._no_retreat(st, ctx, tip + origin, u, True, finder, origin_w)
        return tip, u, track.length_px, track.score

    def _no_retreat(self, st: _StudyNeedle, ctx: _RunContext, tip: np.ndarray, u: np.ndarray,
                    tracked: bool, finder: LineFinder | None = None,
                    origin_w: np.ndarray | None = None) -> np.ndarray:
        """The needle is held or advanced, not withdrawn: a tip on the tracked line more than
        ``retreat_mm`` behind the furthest tip of the run reached by ``floor_tips`` of its tips
        (before there are as many: the last tip of the previous run) has stopped short where
        the shaft fades over bone, or where the first frames of a run are too noisy to show
        it, and goes to that tip's place on the current axis (unless this frame's ``finder``
        says there is no line between the two, see :meth:`_held`)."""
        if not tracked:
            # a new line: the run's earlier tips and the last run's were of another
            st.track.run_tips, st.track.reference_holds = [], False
            st.track.run_ends = []
            st.track.run_tips.append(tip)
            return tip
        # a tip let go of the hold by this frame's evidence does not lower it for the later
        # frames: each must show it again (one frame's shaft over bone can read as no line)
        held, behind_px = self._hold(st, ctx, tip, u)
        st.track.run_tips.append(held)
        return tip if self._held_against(finder, ctx, tip, held, behind_px, origin_w) else held

    def _held(self, st: _StudyNeedle, ctx: _RunContext, tip: np.ndarray, u: np.ndarray,
              finder: LineFinder | None = None, origin_w: np.ndarray | None = None
              ) -> np.ndarray:
        """Where :meth:`_no_retreat` puts a tracked tip (without recording it). With the
        ``finder`` whose score map is this frame's (working grid, its origin ``origin_w`` on
        the working grid), a tip is not held where the ridge between it and the held place is
        evidence against a line (below ``hold_min_score``): the furthest tip was placed beyond
        the needle (on a joint margin or a line continuing it), not on a shaft fading over
        bone, whose evidence there is weak but not negative."""
        held, behind_px = self._hold(st, ctx, tip, u)
        return tip if self._held_against(finder, ctx, tip, held, behind_px, origin_w) else held

    def _hold(self, st: _StudyNeedle, ctx: _RunContext, tip: np.ndarray, u: np.ndarray
              ) -> tuple[np.ndarray, float]:
        """(the tracked tip held forward, or ``tip`` itself when it is not held; how far
        forward, full-resolution pixels) by the run's furthest tips alone."""
        track = st.track
        # the furthest tip reached by floor_tips tips of this run, or before there are as
        # many the last tip of the run before (a tracked candidate is on the same line: same
        # view, needle not withdrawn)
        need = max(1, self.settings.floor_tips)
        if need == 1 and track.run_tips:
            behind_px = float((track.run_tips[-1] - tip) @ u)
        elif len(track.run_tips) >= need:
            behind = sorted((float((p - tip) @ u) for p in track.run_tips), reverse=True)
            behind_px = behind[need - 1]
        elif track.reference_tip is not None and track.reference_holds:
            behind_px = float((track.reference_tip - tip) @ u)
        else:
            return tip, 0.0
        if behind_px * ctx.spacing_mm > self.settings.retreat_mm:
            return tip + u * behind_px, behind_px
        return tip, 0.0

    def _held_against(self, finder: LineFinder | None, ctx: _RunContext, tip: np.ndarray,
                      held: np.ndarray, behind_px: float, origin_w: np.ndarray | None) -> bool:
        """Whether a tip held forward by ``behind_px`` (:meth:`_hold`) up to
        ``hold_release_max_mm`` is let go: the ridge of ``finder`` from ``tip`` to ``held``
        (full resolution) is evidence against a line (see :meth:`_held`). Not when the tip is
        not held, without a finder, or when either end is off its map."""
        floor = self.settings.hold_min_score
        if (finder is None or held is tip or not math.isfinite(floor)
                or behind_px * ctx.spacing_mm > self.settings.hold_release_max_mm):
            return False
        a, b = ctx.grid.to_work(tip), ctx.grid.to_work(held)
        if origin_w is not None:
            a, b = a - origin_w, b - origin_w
        ridge = getattr(finder, "ridge", None)
        if ridge is None:
            return False
        rows, cols = ridge.shape
        if not all(0.0 <= p[0] <= cols - 1 and 0.0 <= p[1] <= rows - 1 for p in (a, b)):
            return False
        return finder.interval_score(a, b) < floor

    def _refine(self, st: _StudyNeedle, att: np.ndarray, tip: np.ndarray, u: np.ndarray,
                ctx: _RunContext):
        s = self.settings
        reach = int(math.ceil((s.fit_mm + s.tip_window_mm + 3.0) / ctx.spacing_mm))
        rows, cols = att.shape
        x0 = max(0, int(tip[0]) - reach)
        y0 = max(0, int(tip[1]) - reach)
        x1 = min(cols, int(tip[0]) + reach + 1)
        y1 = min(rows, int(tip[1]) + reach + 1)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None  # the tip is outside the image (or the box's crop of it)
        crop = att[y0:y1, x0:x1]
        smooth = cv2.GaussianBlur(crop, (0, 0), 0.5 * ctx.grid.factor + 0.3)
        off = np.array([x0, y0], float)
        out = refine_tip(smooth, tip - off, u, ctx.spacing_mm, s, st.buf)
        if out is None:
            return None
        tip_c, u_c, contrast = out
        return tip_c + off, u_c, contrast


# Logistic model of "this candidate is the needle" on the features of
# NeedleStage._features (see candidate_vector); fitted (L2-regularised IRLS) on the candidates
# of 28 simulated studies (seeds 777 and 778, cases 0-13), not on the evaluation sets. Whether
# the base is at the field edge is left out: the simulated hubs are mostly inside the field, so
# a fit learns to penalise the commonest clinical picture, a needle entering from the edge.
# benchmarks/needle_fit.py refits it; its fits on seeds 777 (cases 0-15) + 778 (0-11) did not
# do better on those studies frame by frame (detection within 3 mm, false tips) through this
# stage, so these weights stay.
_LOGIT_WEIGHTS = np.array([0.129, 3.364, -1.895, 4.804, 1.083, -0.654, 12.236, -1.971])
_LOGIT_BIAS = -17.366


def _translate_memory(st: _StudyNeedle, d: np.ndarray) -> None:
    """Add ``d`` (full-resolution px) to every position of this view the stage remembers."""
    def move(p):
        return None if p is None else p + d

    t = st.track
    t.tip_xy, t.last_tip_of_run, t.reference_tip = (
        move(t.tip_xy), move(t.last_tip_of_run), move(t.reference_tip))
    t.run_ends = [p + d for p in t.run_ends]
    t.run_tips = [p + d for p in t.run_tips]
    st.prev_candidates = [(p + d, u, prob) for p, u, prob in st.prev_candidates]
    st.persistent = [[(p + d, u) for p, u in frame] for frame in st.persistent]
    st.run_lines = [(p + d, u) for p, u in st.run_lines]
    st.prev_run_lines = [(p + d, u) for p, u in st.prev_run_lines]
    if st.anchor is not None:
        st.anchor = (st.anchor[0] + d, st.anchor[1])
    st.jump, st.jump_before = move(st.jump), move(st.jump_before)
    st.dot_xy, st.dot_prev = move(st.dot_xy), move(st.dot_prev)


def _moved_matches(work: np.ndarray, mean: np.ndarray, valid: np.ndarray, dx: int,
                   dy: int) -> bool:
    """Does ``work`` (this frame, working grid) differ less from ``mean`` moved by whole
    pixels (dx, dy) than from ``mean`` as it is (mean absolute difference over the part of
    ``valid`` that both cover)?"""
    parts = _overlap(mean.shape, dx, dy)
    if parts is None or work.shape != mean.shape:
        return False
    src, dst = parts
    both = valid[dst] & valid[src]
    if not both.any():
        return False
    here = work[dst][both]
    return float(np.abs(here - mean[src][both]).mean()) < float(
        np.abs(here - mean[dst][both]).mean())


def _overlap(shape: tuple[int, int], dx: int, dy: int) -> tuple[tuple, tuple] | None:
    """The (source, destination) slices of an image of ``shape`` moved by whole pixels
    (dx, dy), or None when nothing of it stays in the image."""
    rows, cols = shape
    if abs(dx) >= cols or abs(dy) >= rows:
        return None
    src = (slice(max(0, -dy), rows - max(0, dy)), slice(max(0, -dx), cols - max(0, dx)))
    dst = (slice(max(0, dy), rows - max(0, -dy)), slice(max(0, dx), cols - max(0, -dx)))
    return src, dst


def _shift_inside(image: np.ndarray, valid: np.ndarray, dx: int, dy: int) -> None:
    """Shift ``image`` in place by whole pixels (dx, dy) where the source pixel is inside
    ``valid`` (the field: the collimator does not move with the anatomy); elsewhere it
    keeps its value."""
    parts = _overlap(image.shape, dx, dy)
    if parts is None:
        return
    src, dst = parts
    moved = image[src].copy()
    np.copyto(image[dst], moved, where=valid[src])


def _thinness(ratio: float) -> float:
    """Near/far contrast ratio as a feature: rising to 1 for a thin line; above 1 only when
    the far contrast is lost in noise, which is no evidence of a needle."""
    ratio = max(ratio, 0.0)
    return ratio if ratio <= 1.0 else max(0.0, 2.0 - ratio)


def candidate_vector(f: dict) -> np.ndarray:
    """The model's inputs from a candidate's features ``f``: line evidence, flank symmetry
    (not a cortical edge), continuation beyond the tip (a wire fading over bone), tip distance
    from the field edge, length, thinness, and a skin-marker term (free at both ends and more
    symmetric than a needle over bone)."""
    return np.array([math.log(max(f["score"], 1.0)), f["sym"],
                     min(max(f["ext_score"], -20.0), 20.0) / 10.0,
                     min(f["tip_edge_mm"], 60.0) / 30.0,
                     min(f["length_mm"], 150.0) / 50.0,
                     math.log(f["ext_mm"] + 1.0), _thinness(f["thin"]),
                     10.0 * max(f["sym"] - 0.9, 0.0) * (1.0 - float(f["base_at_edge"]))])


def needle_probability(f: dict) -> float:
    """Probability that a candidate with features ``f`` is the needle (logistic model on
    :func:`candidate_vector`)."""
    z = float(candidate_vector(f) @ _LOGIT_WEIGHTS) + _LOGIT_BIAS
    return 1.0 / (1.0 + math.exp(-min(max(z, -50.0), 50.0)))


def _attenuation_crop(frame: Frame, state, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """The attenuation image of ``frame`` in rows y0:y1, columns x0:x1: from the frame's
    shared attenuation when another stage computed it, else of those pixels only."""
    cached = state.stage_state.get("attenuation")
    if cached is not None and cached[0] is frame:
        return cached[1][y0:y1, x0:x1]
    return pixel_attenuation(frame.pixels[y0:y1, x0:x1], frame.run)


def _intensifier(run: Run) -> bool:
    """Does the header say the run is from an image intensifier (a round field of view, an
    intensifier size)?"""
    t = run.technique
    return t.field_of_view_shape == "ROUND" or t.intensifier_size_mm is not None


def _same_view(a: Run, b: Run) -> bool:
    """Were two runs taken in the same view (positioner angles within 1 deg; unknown angles
    count as the same)?"""
    for name in ("primary_angle_deg", "secondary_angle_deg"):
        x, y = getattr(a.technique, name, None), getattr(b.technique, name, None)
        if x is not None and y is not None and abs(x - y) > 1.0:
            return False
    return True


def _same_geometry(a: Run, b: Run, spacing_b_mm: float, shape_b: tuple[int, int]) -> bool:
    """Same view (:func:`_same_view`), pixel spacing and frame shape."""
    spacing_a = float((a.pixel_spacing_xy_mm or (0.5, 0.5))[0])
    return (_same_view(a, b) and spacing_a == spacing_b_mm
            and (a.rows, a.columns) == tuple(shape_b))


def _across(d: np.ndarray, u: np.ndarray) -> float:
    """How far ``d`` (a vector from a point on a line) lies from the line of unit direction
    ``u``, in the same units: the magnitude of their 2-D cross product."""
    return abs(float(d[0] * u[1] - d[1] * u[0]))


def _norm(v: np.ndarray) -> float:
    """``np.linalg.norm`` of a float vector: the same dot product and a correctly rounded square
    root (equal bits), without its argument handling (a search takes ~70 norms)."""
    x = v.ravel(order="K")
    return math.sqrt(x.dot(x))


def _same_segment(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> bool:
    """Two segments on nearly the same line (ends within 3 px of each other's line, < 4 deg)."""
    ua = (a1 - a0) / _norm(a1 - a0)
    ub = (b1 - b0) / _norm(b1 - b0)
    if abs(float(ua @ ub)) < math.cos(math.radians(4.0)):
        return False
    n = np.array([-ub[1], ub[0]])
    return abs(float((a0 - b0) @ n)) < 3.0 and abs(float((a1 - b0) @ n)) < 3.0


def _run_inside(mask: np.ndarray, start: np.ndarray, u: np.ndarray, n_max: int) -> int:
    """Number of unit steps from ``start`` along ``u`` that stay inside ``mask``."""
    steps = np.arange(n_max)
    x = np.rint(start[0] + steps * u[0]).astype(np.intp)
    y = np.rint(start[1] + steps * u[1]).astype(np.intp)
    ok = (x >= 0) & (x < mask.shape[1]) & (y >= 0) & (y < mask.shape[0])
    ok[ok] = mask[y[ok], x[ok]]
    out = np.flatnonzero(~ok)
    return int(out[0]) if out.size else n_max


def _inside(mask: np.ndarray, xy: np.ndarray) -> bool:
    x, y = int(round(xy[0])), int(round(xy[1]))
    return 0 <= x < mask.shape[1] and 0 <= y < mask.shape[0] and bool(mask[y, x])
