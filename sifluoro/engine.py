"""The Engine API for a workstation plug-in: feed frames, get typed events through handlers.

    engine = Engine()
    engine.on("dose", lambda e: show_counters(e.air_kerma_mgy, e.dap_gycm2, e.fluoro_time_s))
    engine.on("alert", lambda e: banner(e.message))
    summary = engine.run("study/")          # or engine.feed(frame) per frame, then engine.close()

Frames fed one by one: announce their runs first (``engine.prepare(study)``, a
:class:`~sifluoro.model.Study` of their headers) so that the stages warm up before the first live
frame; a run not announced warms up on its first frame, which pays for it in its ``latency_ms``
(logged once per frame shape).

Thread safety: ``feed`` may be called from any thread; calls are serialised (one frame at a
time, in call order). Handlers run in the thread that fed the frame, after the frame's event is
complete; a handler that raises is logged and the engine goes on. ``on`` may be called at any
time; a handler that calls ``feed``, ``prepare`` or ``close`` gets a RuntimeError (it runs
inside ``feed``). One Engine follows one study.

Live sources (a receiver or capture thread that must not wait) call ``submit`` instead: the
frame's dose is counted at once and its image work queued behind at most
``settings.live_queue_frames`` frames; when more arrive, the oldest waiting frame's image work
is dropped (its event still comes, with its dose and ``dropped: true``) and counted in the
summary's ``dropped_image_frames``. Handlers then run on the engine's worker thread, in
arrival order; a recount that ``prepare`` causes (the device's report) is announced after the
event of the last frame counted before it. One engine is fed by ``feed`` or by ``submit``, not
both.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import Settings
from sifluoro.dose.accumulate import DoseAccumulator
from sifluoro.dose.summary import device_report
from sifluoro.errors import InputError
from sifluoro.model import Frame, Rejection, Run, Study
from sifluoro.pipeline import LiveFeeder, Pipeline, Stage, StudyState, read_ahead, stored_pixels
from sifluoro.stages import as_stages

log = logging.getLogger(__name__)

KINDS = ("frame", "needle", "joint", "contrast", "dose", "alert")


def _check_frame(frame, method: str) -> None:
    """A clear error for what is not a frame (a bare array, None) rather than an AttributeError
    deep inside (user review s20 A2)."""
    if not isinstance(frame, Frame):
        raise TypeError(f"Engine.{method} takes a sifluoro.model.Frame (Engine.frames(read_study"
                        f"(...)) gives them, or build one around the pixels), not "
                        f"{type(frame).__name__}")


def _warn_if_above_bits_stored(frame: Frame) -> None:
    """Say when a run's first frame holds values above its BitsStored (a frame built by the
    caller: the DICOM readers clear the bits above): the stages scale the values to BitsStored,
    so such frames gave no tip, target or contrast on any frame without a word (review s25
    r2). Once per run: the maximum is a pass over the frame."""
    run = frame.run
    top = int(frame.pixels.max()) if frame.pixels.size else 0
    if top > (1 << run.bits_stored) - 1:
        log.warning("%s: pixel values up to %d, above the run's BitsStored %d: the image stages "
                    "read the values as %d-bit and their guidance is wrong; give the Run the "
                    "bits the values use (bits_stored=%d)", run.path, top, run.bits_stored,
                    run.bits_stored, top.bit_length())


def frame_analysis(event: Mapping[str, Any]) -> dict[str, Any]:
    """How fully a frame was analysed, for live outputs that must not pass a carried-over
    result for a fresh one: ``degraded``, ``degraded_steps`` (the deadline policy's, e.g.
    ``joint_reused``), ``skipped_stages``, ``failed_stages``, ``dropped`` (image work dropped
    from a full live queue) and ``no_picture`` (a flat or saturated frame)."""
    return {"degraded": bool(event.get("degraded")),
            "degraded_steps": list(event.get("degraded_steps", ())),
            "skipped_stages": list(event.get("skipped_stages", ())),
            "failed_stages": list(event.get("failed_stages", ())),
            "dropped": bool(event.get("dropped")), "no_picture": bool(event.get("no_picture"))}


@dataclass(frozen=True)
class FrameEvent:
    """Every frame: where it is in the study and its whole event (docs/contract.md §3). The
    event is the engine's, written to the events file as it is after the handlers: a handler
    must not modify it (the typed events are made before any handler runs)."""

    index: int
    sop_instance_uid: str
    frame: int
    t_s: float
    latency_ms: float
    degraded: bool
    event: Mapping[str, Any]
    stages: tuple[str, ...] = ()  # the image stages that assess the study

    @property
    def analysis(self) -> dict[str, Any]:
        """:func:`frame_analysis` of the event."""
        return frame_analysis(self.event)

    @property
    def contrast_state(self) -> str:
        """``event["contrast"]["state"]``, or ``"not_assessed"`` when no contrast stage runs
        (the event's ``none`` then does not mean that no contrast was seen)."""
        return self.event["contrast"]["state"] if "contrast" in self.stages else "not_assessed"


@dataclass(frozen=True)
class NeedleEvent:
    """A frame on which a needle tip is seen; pixel coordinates (x=column, y=row)."""

    index: int
    t_s: float
    tip_xy: tuple[float, float]
    confidence: float
    tip_to_target_mm: float | None


@dataclass(frozen=True)
class JointEvent:
    """A frame on which the joint line is known, with the target when placed."""

    index: int
    t_s: float
    polyline_xy: tuple[tuple[float, float], ...]
    confidence: float
    doubled: bool
    target_xy: tuple[float, float] | None


@dataclass(frozen=True)
class ContrastEvent:
    """The contrast state changed. It moves toward the more dangerous, except that early on
    an extravasation may be taken back for a joint fill as the opacity outlines the joint;
    ``vascular`` stays."""

    index: int
    t_s: float
    state: str
    confidence: float


@dataclass(frozen=True)
class DoseEvent:
    """Cumulative dose after every frame."""

    index: int
    t_s: float
    air_kerma_mgy: float
    dap_gycm2: float
    fluoro_time_s: float
    #: the study's whole dose: with the frames lost and the exposures the device's report
    #: gives outside the stored images (the alert levels count them); the frames' otherwise
    study_air_kerma_mgy: float | None = None
    study_dap_gycm2: float | None = None
    study_fluoro_time_s: float | None = None


@dataclass(frozen=True)
class AlertEvent:
    """A dose level crossed, or any other alert a stage raises."""

    index: int
    t_s: float
    kind: str
    message: str


def _dose_event(index: int, t_s: float, dose: dict) -> DoseEvent:
    """A frame event's ``dose`` (:meth:`DoseAccumulator.shown`) as a DoseEvent."""
    keys = ("air_kerma_mgy", "dap_gycm2", "fluoro_time_s")
    return DoseEvent(index, t_s, *(dose[k] for k in keys),
                     *(dose.get(f"study_{k}", dose[k]) for k in keys))


class Engine:
    """Runs the pipeline over one study's frames and calls the handlers registered with :meth:`on`.

    Parameters
    ----------
    settings : Settings, optional
    stages : list of Stage or of str, optional
        Image stages, or their names (``["register", "needle", "contrast"]``); the replay
        defaults (register) when omitted.
    """

    def __init__(self, settings: Settings | None = None, *,
                 stages: list[Stage] | list[str] | None = None):
        from sifluoro.replay import default_stages

        self.settings = settings or Settings()
        self.pipeline = Pipeline(default_stages(self.settings) if stages is None
                                 else as_stages(stages, self.settings), self.settings)
        self._handlers: dict[str, list[Callable]] = {kind: [] for kind in KINDS}
        self._handler_failures: dict[tuple[str, int], int] = {}  # (kind, handler id): calls
        self._lock = threading.Lock()
        self._owner: int | None = None  # the thread holding _lock
        self._state: StudyState | None = None
        self._runs: dict[str, Run] = {}
        self._bits_checked: set[str] = set()  # runs whose first frame's values were checked
        self._rejected: list[Rejection] = []
        self._dose_reports: list[str] = []  # the device's dose reports among the inputs
        self._contrast = "none"
        self._live: LiveFeeder | None = None
        self._fed = False   # feed() was used (then submit() may not be)
        # frames fed so far, per instance: one fed again (a re-delivery) is no new exposure
        self._frames_fed: dict[str, set[int]] = {}
        self._duplicate_frames = 0
        self._latest_t_s: float | None = None  # the latest acquisition time fed
        self._late_indices: set[int] = set()   # frames fed after a later-acquired one
        self._said_out_of_order = False
        self._next_index = 0  # the index the next new frame's events carry
        self._closed = False  # close() was called: no more frames (one Engine, one study)
        self._recounts_seen = 0  # the dose's recounts already announced
        # submit(): a recount is announced after the event of the last frame counted before it,
        # so that no frame event still queued shows the totals from before it
        self._order_lock = threading.Lock()
        self._last_emitted = -1
        self._after: dict[int, list[tuple[str, Any]]] = {}  # frame index -> calls after it

    @contextlib.contextmanager
    def _serialised(self) -> Iterator[None]:
        """The engine's lock; a handler that calls back into the engine from ``feed`` (the lock
        is its own thread's) gets an error instead of waiting for ever."""
        live = self._live
        if self._owner == threading.get_ident() or (
                live is not None and threading.current_thread() is live._worker):
            raise RuntimeError("an Engine handler called feed, submit, prepare, count_lost or "
                               "close while the engine was calling it; hand the work to "
                               "another thread or do it after the call returns")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None

    def on(self, kind: str, handler: Callable[[Any], None]) -> None:
        """Call ``handler(event)`` for every event of ``kind`` (one of :data:`KINDS`)."""
        if kind not in self._handlers:
            raise ValueError(f"unknown event kind {kind!r}; one of {', '.join(KINDS)}")
        self._refuse_if_closed()  # no event will come (user review s20 A2)
        stage = {"needle": "needle", "joint": "register", "contrast": "contrast"}.get(kind)
        names = [s.name for s in self.pipeline.stages]
        if stage and stage not in names:
            # its handler would never be called: say so rather than wait in silence
            log.warning("Engine.on(%r): the %s stage is not among this engine's stages (%s); "
                        "no %s event will come", kind, stage, ", ".join(names) or "none", kind)
        self._handlers[kind].append(handler)

    def feed(self, frame: Frame) -> FrameEvent | None:
        """Process one frame (frames of one study, in acquisition order) and emit its events.

        A frame fed before (the same SOP Instance UID and frame number: a source that delivers
        it again after a reconnect) is ignored, counted in the summary's ``duplicate_frames``,
        and gives None: its exposure is counted once."""
        _check_frame(frame, "feed")
        frame = stored_pixels(frame, "Engine.feed")
        with self._serialised():
            self._refuse_if_closed()  # first: the reason a closed engine refuses
            if self._live is not None:
                raise RuntimeError("this engine is fed by submit(); use one of feed or submit")
            self._fed = True
            if self._fed_before(frame):
                return None
            run = self._admit(frame)
            frame = self._numbered(frame)  # once admitted: a refused frame takes no number
            if run is not None:
                self._state.dose.prepare(run)
            arrival = self.pipeline.account(frame, self._state)  # the latency counts from here
            if run is not None:  # not announced by prepare(): its first frame pays, and says so
                self.pipeline.prepare_stages_on_live_frame(run)
            event = self.pipeline.process_arrived(frame, self._state, arrival)
            emitted = self._emit(event)
            self._announce_recount()  # a run that shares a report event with earlier ones
            return emitted

    def submit(self, frame: Frame) -> None:
        """Live sources: count the frame's dose now and queue its image work without waiting
        for it; events come on the engine's worker thread (see the module docstring)."""
        _check_frame(frame, "submit")
        frame = stored_pixels(frame, "Engine.submit")
        with self._serialised():
            self._refuse_if_closed()
            if self._live is None and self._fed:
                raise RuntimeError("this engine is fed by feed(); use one of feed or submit")
            if self._fed_before(frame):
                return
            self._admit(frame)
            frame = self._numbered(frame)
            if self._live is None:
                self._live = LiveFeeder(self.pipeline, self._state, on_event=self._emit)
            self._live.submit(frame)

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise RuntimeError("this engine was closed (its summary is final); one Engine "
                               "follows one study: make a new one")

    def _fed_before(self, frame: Frame) -> bool:
        """Whether this frame was fed already (then counted as a duplicate, and logged)."""
        numbers = self._frames_fed.setdefault(frame.sop_instance_uid, set())
        if frame.frame_number not in numbers:
            numbers.add(frame.frame_number)
            return False
        self._duplicate_frames += 1
        log.warning("frame %d of instance %s was fed before: ignored (its dose counted once)",
                    frame.frame_number, frame.sop_instance_uid)
        return True

    def _numbered(self, frame: Frame) -> Frame:
        """The frame with its place among the frames this engine took (0, 1, 2, ...): events
        are numbered by the engine, whatever index a caller building its own frames gave."""
        if frame.index != self._next_index:
            frame = replace(frame, index=self._next_index)
        self._next_index += 1
        # fed before a frame acquired earlier: its event says so, as the receiver's do (its
        # t_s goes back; user review s20 A1: out-of-order feeding passed without a word)
        if self._latest_t_s is not None and frame.t_s < self._latest_t_s - 1e-9:
            with self._order_lock:
                self._late_indices.add(frame.index)
            if not self._said_out_of_order:
                self._said_out_of_order = True
                log.warning("frames fed out of acquisition order (frame %d of %s at t=%.3f s "
                            "after t=%.3f s): their events say out_of_order", frame.frame_number,
                            frame.run.sop_instance_uid, frame.t_s, self._latest_t_s)
        self._latest_t_s = frame.t_s if self._latest_t_s is None else max(frame.t_s, self._latest_t_s)
        return frame

    def _admit(self, frame: Frame) -> Run | None:
        """Check the frame's study and note its run; return the run when it is new."""
        run = frame.run
        if self._state is None:
            self._state = self.pipeline.start_study(run.study_instance_uid)
        elif run.study_instance_uid != self._state.study_instance_uid:
            raise InputError(f"frame of study {run.study_instance_uid} fed to the engine of "
                             f"study {self._state.study_instance_uid}; use one Engine per study",
                             path=run.path, tag="(0020,000D) StudyInstanceUID")
        if run.sop_instance_uid not in self._bits_checked:
            self._bits_checked.add(run.sop_instance_uid)
            _warn_if_above_bits_stored(frame)
        if run.sop_instance_uid in self._runs:
            return None
        self._runs[run.sop_instance_uid] = run
        return run

    def prepare(self, study: Study) -> None:
        """Announce a study read by the caller (:func:`sifluoro.acquire.dicom_reader.read_study`)
        before feeding its frames one by one: every run is prepared now (dose model, stage
        warm-up for its frame shape), so no live frame pays for it, and the files the reader
        rejected appear in the summary. Call it again as more of the study arrives (new runs,
        the device's RDSR at the end of the procedure, read with ``study_uid``): runs the
        device's report names are recounted with its dose, frames already fed included."""
        with self._serialised():
            self._refuse_if_closed()
            if self._state is None:
                self._state = self.pipeline.start_study(study.study_instance_uid)
            elif study.study_instance_uid != self._state.study_instance_uid:
                raise InputError(f"study {study.study_instance_uid} announced to the engine of "
                                 f"study {self._state.study_instance_uid}; use one Engine per study",
                                 tag="(0020,000D) StudyInstanceUID")
            # announced again as more arrives: its reader's rejections once
            self._rejected.extend(r for r in study.rejected if r not in self._rejected)
            # the device's report gives the dose of the runs it names (as in replay); read
            # before the runs are prepared, which fixes their per-frame dose
            # every report announced so far, merged: a correction replaces the report it names
            self._dose_reports.extend(p for p in study.dose_reports if p not in self._dose_reports)
            rejected: list[Rejection] = []
            report = (device_report(replace(study, dose_reports=tuple(self._dose_reports)), rejected)
                      if study.dose_reports else None)
            self._rejected.extend(r for r in rejected if r not in self._rejected)
            if report is not None:  # runs announced earlier and counted are recounted
                known = {r.sop_instance_uid: r for r in (*self._runs.values(), *study.runs)}
                self._state.dose.use_report(report, known.values())
            for run in study.runs:
                self._runs.setdefault(run.sop_instance_uid, run)
                self.pipeline.prepare_run(run, self._state)
            self._announce_recount()

    def _announce_recount(self) -> None:
        """Frames already counted were recounted (a late report, or a run sharing one of its
        events): the levels that reached are alerts now, and a dose event gives the new totals."""
        dose = self._state.dose
        if dose.recounts == self._recounts_seen:
            return
        self._recounts_seen = dose.recounts
        alerts, dose.recount_alerts = dose.recount_alerts, []
        self._state.alerts.extend(a.as_dict() for a in alerts)
        self._announce_dose(alerts)

    def _announce_dose(self, alerts) -> None:
        """A dose event with the totals now, and ``alerts``, after the event of the last frame
        counted (on the worker with submit(): no queued frame event shows older totals)."""
        dose = self._state.dose
        index, t_s = dose.last_frame
        calls = [("dose", _dose_event(index, t_s, dose.shown())),
                 *(("alert", AlertEvent(a.index, a.t_s, a.kind, a.message)) for a in alerts)]
        with self._order_lock:
            if self._live is not None:  # handlers run on the worker only
                if self._last_emitted < index:
                    self._after.setdefault(index, []).extend(calls)  # after that frame's event
                    return
                if self._live.call_soon(lambda: self._call_all(calls)):
                    return
        self._call_all(calls)  # feed(), or the worker has stopped (close)

    def _call_all(self, calls: list[tuple[str, Any]]) -> None:
        for kind, payload in calls:
            self._call(kind, payload)

    @property
    def dose(self) -> DoseAccumulator | None:
        """The study's dose so far (read it, e.g. to write an RDSR at study end with
        :func:`sifluoro.dose.rdsr_write.write_rdsr`); None before the first frame."""
        return None if self._state is None else self._state.dose

    def run(self, source: str | Path | Iterable[str | Path] | Iterable[Frame], *,
            study_uid: str | None = None) -> dict:
        """Feed a whole study (DICOM files/folders, or frames) and return :meth:`close`'s summary.

        ``study_uid`` chooses the study when the files hold several (a unique end of its UID
        will do); frames given are one study's already (it is refused with them). Paths of which not one exists raise :class:`~sifluoro.errors.ConfigError`
        (a blank study of zero dose would read as a result)."""
        from sifluoro.outfiles import check_some_input_exists

        if isinstance(source, (str, Path)):
            source = [source]
        source = iter(source)
        first = next(source, None)
        items = itertools.chain(() if first is None else (first,), source)  # frames stream
        if isinstance(first, Frame) and study_uid is not None:
            raise ValueError("study_uid chooses among the studies of files, not of frames")
        if first is not None and not isinstance(first, Frame):
            paths = list(items)
            check_some_input_exists(tuple(paths))
            items = self.frames(read_study(paths, study_uid=study_uid))
        for frame in items:
            self.feed(frame)
        return self.close()

    def frames(self, study: Study) -> Iterator[Frame]:
        """The frames of a study the caller read (:func:`read_study`), to ``feed`` or
        ``submit``, decoded one at a time ahead of use. The study is announced first
        (:meth:`prepare`); the reader's rejections go into the summary, and the frames a
        damaged file lost are counted into the study's dose as soon as the frames have passed
        their run (a caller that iterates ``iter_frames`` itself loses them)."""
        from sifluoro.replay import LostFrames

        self.prepare(study)  # announce every run before the first frame
        lost: list = []
        lost_frames = LostFrames(study, lost, self.count_lost)
        yield from lost_frames.passing(read_ahead(iter_frames(study, self._rejected, lost),
                                                  self.settings.queue_frames, study.runs))
        lost_frames.rest()

    def count_lost(self, run: Run, first_frame_number: int) -> None:
        """Frames of ``run`` from ``first_frame_number`` on that a damaged file lost (the
        reader's ``lost``; :class:`~sifluoro.replay.LostFrames` hands them over once the frames
        have passed that run): their exposure is counted now, into the study's dose (the
        ``study_*`` of the following events and of a dose event now, the RDSR's events and
        ``summary.lost_frames``), with the SRDL alerts it makes the study reach."""
        from sifluoro.replay import count_lost

        with self._serialised():
            self._refuse_if_closed()  # its dose would be in no summary
            if self._state is None:
                self._state = self.pipeline.start_study(run.study_instance_uid)
            elif run.study_instance_uid != self._state.study_instance_uid:
                raise InputError(f"lost frames of study {run.study_instance_uid} counted by the "
                                 f"engine of study {self._state.study_instance_uid}; use one "
                                 "Engine per study", path=run.path)
            self._announce_dose(count_lost(self._state, run, first_frame_number))

    def close(self) -> dict:
        """The study summary (docs/contract.md §3) of everything fed so far. Frames submitted by
        :meth:`submit` are finished first, and the summary then also has
        ``dropped_image_frames``."""
        from sifluoro.replay import build_summary

        with self._serialised():
            if self._live is not None:
                try:
                    self._live.close()
                finally:  # a worker that failed left its frames' recounts unannounced
                    with self._order_lock:
                        pending, self._after = sorted(self._after.items()), {}
                    for _, calls in pending:
                        self._call_all(calls)
            if not self._closed:  # said once, not again by a second close()
                for (kind, _), n in sorted(self._handler_failures.items()):
                    if n > 1:
                        log.warning("a %s handler failed on %d frames (the first one's "
                                    "traceback above)", kind, n)
            self._closed = True
            self.pipeline.close()
            state = self._state or self.pipeline.start_study("")
            unfed = state.dose.forget_unfed_runs()
            if unfed:  # their share of the device's report is the study's still
                log.warning("%d run(s) announced were never fed: not in the frames' dose%s",
                            len(unfed), "; the device report's dose given to them counts as "
                            "not stored" if self._dose_reports else "")
                self._announce_recount()
            runs = tuple(sorted(self._runs.values(), key=lambda r: r.start_s))
            summary = build_summary(Study(state.study_instance_uid, runs,
                                          dose_reports=tuple(self._dose_reports)),
                                    state, self._rejected)
            if unfed:  # the runs shown: a stream stopped early did not show those announced
                summary["runs"] = len(runs) - len(unfed)
                summary["runs_announced_not_shown"] = len(unfed)
            if self._live is not None:
                summary["dropped_image_frames"] = state.dropped_image_frames
            if self._duplicate_frames:  # else as replay's summary
                summary["duplicate_frames"] = self._duplicate_frames
            return summary

    def _emit(self, event: dict) -> FrameEvent:
        index, t_s = event["index"], event["t_s"]
        with self._order_lock:  # calls after earlier frames whose event never came (failed)
            late = [call for k in sorted(k for k in self._after if k < index)
                    for call in self._after.pop(k)]
            if index in self._late_indices:
                self._late_indices.discard(index)
                event["out_of_order"] = True
        self._call_all(late)
        frame_event = FrameEvent(index, event["sop_instance_uid"], event["frame"], t_s,
                                 event["latency_ms"], event["degraded"], dict(event),
                                 tuple(stage.name for stage in self.pipeline.stages))
        # every typed event is made before any handler runs: a "frame" handler that edits the
        # event's dicts changed what the later handlers got (review s23 #11)
        calls: list[tuple[str, Any]] = [("frame", frame_event)]
        needle = event.get("needle")
        if needle:
            calls.append(("needle", NeedleEvent(index, t_s, tuple(needle["tip_xy"]),
                                                needle["confidence"],
                                                event.get("tip_to_target_mm"))))
        joint = event.get("joint")
        if joint:
            target = event.get("target")
            calls.append(("joint", JointEvent(index, t_s, tuple(map(tuple, joint["polyline_xy"])),
                                              joint.get("confidence", 0.0),
                                              joint.get("doubled", False),
                                              tuple(target["xy"]) if target else None)))
        contrast = event["contrast"]
        if contrast["state"] != self._contrast:
            self._contrast = contrast["state"]
            calls.append(("contrast", ContrastEvent(index, t_s, contrast["state"],
                                                    contrast["confidence"])))
        calls.append(("dose", _dose_event(index, t_s, event["dose"])))
        calls += [("alert", AlertEvent(index, t_s, alert["kind"], alert["message"]))
                  for alert in event.get("alerts", [])]
        for kind, payload in calls:
            self._call(kind, payload)
        with self._order_lock:
            self._last_emitted = index
            after = self._after.pop(index, [])
        self._call_all(after)
        return frame_event

    def _call(self, kind: str, payload) -> None:
        for handler in self._handlers[kind]:
            try:
                handler(payload)
            except Exception as exc:  # a plug-in's handler must not stop the engine
                key = (kind, id(handler))
                failed = self._handler_failures.get(key, 0)
                self._handler_failures[key] = failed + 1
                if not failed:  # its traceback once, not on every frame
                    log.exception("%s handler failed on frame %d", kind, payload.index)
                else:
                    log.debug("%s handler failed again on frame %d (%s)", kind, payload.index,
                              type(exc).__name__)
