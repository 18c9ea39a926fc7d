"""Per-frame dose accounting for a study: never skipped, cheap per frame.

Run-level work (what the device reported, the tube output from the table) happens once per run
in :meth:`DoseAccumulator.prepare`, so a frame only adds numbers. Each run is also tallied as
one irradiation event (TID 10003) for the dose report written at study end.

Where the numbers come from, per run, first found wins:

1. a dose report (RDSR) of the study attached with :meth:`DoseAccumulator.use_report`, for
   runs that its events cover: name, or match by time (``"rdsr"``);
2. what the image header reports: per-frame values, else run totals (``"reported"``);
3. the technique estimate of :mod:`sifluoro.dose.physics` (``"estimated"``);
4. nothing (``"none"``): the run's frames add time but no dose.

A report's events that cover no run received (fluoroscopy that was not stored, the bulk of a
C-arm's dose; acquisitions sent elsewhere) are the study's dose outside the frames:
:attr:`DoseAccumulator.unstored`, in the alerts, the SRDL check and the study's irradiation
events, not in the frames' counters.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Iterable, Sequence

import numpy as np
from pydicom.uid import generate_uid

from sifluoro.config import DoseSettings
from sifluoro.contract import dose_value
from sifluoro.dose.physics import estimate_frame_dose, field_area_cm2_at_detector
from sifluoro.dose.records import (
    ACQUISITION,
    FLUOROSCOPY,
    SINGLE_PLANE,
    IrradiationEvent,
    StudyDose,
    event_duration_s,
    is_timed,
    totals_from_events,
)
from sifluoro.model import Device, Frame, Run, Study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunDose:
    """What one frame of a run adds, and where the numbers come from.

    ``*_per_frame_values`` hold a value for each frame when the device reported them so;
    otherwise every frame adds the constant ``*_per_frame``.
    """

    air_kerma_mgy_per_frame: float
    dap_gycm2_per_frame: float
    source: str  # "rdsr" | "reported" | "estimated" | "none"
    air_kerma_mgy_per_frame_values: tuple[float, ...] | None = None
    dap_gycm2_per_frame_values: tuple[float, ...] | None = None
    # per quantity, when it differs from ``source`` ("estimated", or "none": unknown, its
    # per-frame value is 0 in the counters and it is written as unknown, never as 0)
    air_kerma_source: str | None = None
    dap_source: str | None = None

    def frame(self, frame_number: int) -> tuple[float, float]:
        """(air_kerma_mgy, dap_gycm2) added by frame ``frame_number`` (1-based)."""
        k = frame_number - 1
        kerma = self.air_kerma_mgy_per_frame
        dap = self.dap_gycm2_per_frame
        if self.air_kerma_mgy_per_frame_values is not None and k < len(self.air_kerma_mgy_per_frame_values):
            kerma = self.air_kerma_mgy_per_frame_values[k]
        if self.dap_gycm2_per_frame_values is not None and k < len(self.dap_gycm2_per_frame_values):
            dap = self.dap_gycm2_per_frame_values[k]
        return kerma, dap


@dataclass(frozen=True)
class DoseAlert:
    """A dose notification: which level was crossed, at which frame.

    ``kind`` is ``"fluoro_time"`` (every 5 min), ``"air_kerma"`` (NCRP 168 notification
    levels), or a substantial radiation dose level: ``"srdl_air_kerma"``, ``"srdl_dap"``,
    ``"srdl_fluoro_time"``.
    """

    kind: str
    level: float
    unit: str
    index: int
    t_s: float
    message: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "level": self.level, "unit": self.unit, "index": self.index,
                "t_s": round(self.t_s, 3), "message": self.message}


@dataclass
class DoseTotals:
    air_kerma_mgy: float = 0.0
    dap_gycm2: float = 0.0
    fluoro_time_s: float = 0.0
    acquisition_time_s: float = 0.0
    sources: set[str] = field(default_factory=set)


@dataclass
class _RunTally:
    """What a run has added so far (mutable; frozen into an IrradiationEvent on request)."""

    run: Run
    dose: RunDose
    frames: int = 0
    air_kerma_mgy: float = 0.0
    dap_gycm2: float = 0.0
    time_s: float = 0.0
    #: (frame number, into the lost totals) of each frame counted, to recount them when a
    #: dose report of the run arrives after its frames
    counted: list[tuple[int, bool]] = field(default_factory=list)


class DoseAccumulator:
    """Cumulative fluoroscopy time, reference air kerma and DAP of one study, with alerts.

    Parameters
    ----------
    settings : DoseSettings
        Reference point, tube data and alert levels.

    Examples
    --------
    >>> dose = DoseAccumulator(DoseSettings())        # doctest: +SKIP
    >>> for frame in frames:                          # doctest: +SKIP
    ...     alerts = dose.add(frame)
    >>> dose.totals.air_kerma_mgy, dose.source        # doctest: +SKIP
    """

    def __init__(self, settings: DoseSettings):
        self.settings = settings
        self.totals = DoseTotals()
        #: the frames' dose as counted when each arrived, never recounted: what the events'
        #: cumulative ``dose`` shows (docs/contract.md §3: it never goes down). ``totals`` is
        #: recounted when a device report arrives after the frames it covers; the study's dose
        #: (``study_*``, :attr:`study_totals`) follows it
        self.live = DoseTotals()
        self._live_dose_unknown: set[str] = set()  # runs counted into it with an unknown dose
        self._lost_dose_unknown: set[str] = set()  # runs lost (damaged) with an unknown dose
        #: frames whose pixels were lost (a damaged file) but whose exposure the header gives:
        #: in the runs' irradiation events (the RDSR), not in ``totals`` (the frames seen)
        self.lost = DoseTotals()
        self.lost_frames = 0
        #: the dose report's events that name no image (fluoroscopy not stored): the study's
        #: dose outside the frames, in the alerts and the irradiation events, not in ``totals``
        self.unstored = DoseTotals()
        self._unstored: dict[str, IrradiationEvent] = {}  # by Irradiation Event UID
        # the device report's accumulated totals less the sum of its events, per quantity: in
        # unstored, so that the study's dose is the device's own total (as in dose summary)
        self._report_residual: dict[str, float] = {}
        self._residual_wanted: dict[str, float] = {}  # that of the report last given
        self.alerts: list[DoseAlert] = []
        self._runs: dict[str, RunDose] = {}
        self._tallies: dict[str, _RunTally] = {}
        self._report: dict[str, IrradiationEvent] = {}  # the device reports' events, by UID
        self.report_device: Device | None = None  # the device report's
        # run SOP Instance UID -> the report's events given to it (_spread: event UID -> the
        # known runs over whose frames its dose is spread)
        self._report_events: dict[str, list[IrradiationEvent]] = {}
        self._spread: dict[str, tuple[str, ...]] = {}
        # frames and header start of every run known (announced to use_report or prepared)
        self._frames: dict[str, int] = {}
        self._clock: dict[str, datetime | None] = {}
        self._beam_s: dict[str, float] = {}  # the time the run's frames stand for
        self._srdl_fired: set[str] = set()
        # the highest alert values announced: a study dose that dips (a report moves an event
        # between unstored and a run) and comes back must not announce a level twice
        self._announced = (0.0, 0.0, 0.0)
        self._last_frame: tuple[int, float] = (0, 0.0)  # index and time of the last frame added
        #: alerts that recounts raised (a late report): not tied to a frame being added
        self.recount_alerts: list[DoseAlert] = []
        self.recounts = 0  # how many times counted frames were recounted

    def use_report(self, report: StudyDose, runs: Iterable[Run] = ()) -> list[DoseAlert]:
        """Take run doses from the device's dose report of the study; its other events are
        :attr:`unstored`.

        ``report`` is every device report of the study known so far, merged
        (:func:`sifluoro.dose.summary.device_report`): it replaces the one given before, so a
        corrected report's events replace the corrected one's, also under new event UIDs.
        Call with the study's ``runs`` (every run known so far). Each event of the report is
        given to the known runs it covers (see :func:`_spread`): those its Acquired Image items
        name; else, for an event that names no image (vendors name no stored fluoroscopy loop),
        the runs no event names that started within its time, or, when times are missing, all
        of them. Its dose is shared among the frames of those runs; of an event that names no
        image, only the part their frames' time stands for (:meth:`_stored`), the rest of its
        dose and time is :attr:`unstored`. An event covering no known run goes into
        :attr:`unstored` (fluoroscopy not stored, an acquisition sent elsewhere),
        until a run it covers arrives (:meth:`prepare`): then the runs are recounted. Runs
        counted before the report are recounted with the report's dose (a device's report
        usually arrives at the end of the procedure); returns the alerts the recount and the
        unstored dose raised (also in :attr:`alerts`). An event is kept once per event UID.
        """
        for run in runs:
            self._know(run)
        self._report = {e.event_uid: e for e in report.events}
        self.report_device = report.device  # a study of the report alone has no run to name it
        self._residual_wanted = _report_residual(report)
        if report.events and not any(e.sop_instance_uids for e in report.events):
            log.warning("the device's dose report names no image: its events are matched with the "
                        "runs by time (all with all when times are missing)")
        return self._attribute()

    def _know(self, run: Run) -> None:
        self._frames[run.sop_instance_uid] = max(1, run.n_frames)
        self._clock[run.sop_instance_uid] = run.started_at
        self._beam_s[run.sop_instance_uid] = sum(run.frame_intervals_ms) / 1000.0

    def forget_unfed_runs(self) -> list[str]:
        """At the study's end: runs announced whose frames never came (a stream cut, an engine
        closed early) give back their share of the report's events, to the runs fed that
        share them or to :attr:`unstored`, so that the study's dose still sums the report's
        (alerts that raises are in :attr:`recount_alerts`). Returns their SOP Instance UIDs."""
        unfed = [uid for uid in self._frames if uid not in self._tallies]
        for uid in unfed:
            for known in (self._frames, self._clock, self._beam_s, self._runs):
                known.pop(uid, None)
        if unfed and self._report:
            self._attribute()
        return unfed

    def _attribute(self) -> list[DoseAlert]:
        """Give the report's events to the known runs they cover, the rest to :attr:`unstored`;
        recount the runs whose share changed. Returns the alerts raised."""
        spread = _spread(self._report.values(), self._frames, self._clock)
        before = {uid: self._share(uid) for uid in self._runs}
        self._spread = spread
        self._report_events = {}
        for e in self._report.values():
            for uid in spread.get(e.event_uid, ()):
                self._report_events.setdefault(uid, []).append(e)
        out = self._recount_all([uid for uid, share in before.items() if self._share(uid) != share])
        unstored = {}
        for uid, e in self._report.items():
            part = 1.0 - self._stored(e) if uid in spread else 1.0
            if part > 0.0:
                unstored[uid] = e if part == 1.0 else _part_of(e, part)
            elif e.sop_instance_uids and not e.is_acquisition:
                # a fluoroscopy event naming its stored loop: the loop has its dose, but its
                # frames stand for seconds of the event's minutes; the rest of the time counts
                extra_s = event_duration_s(e) - self._beam_of(e)
                if extra_s > LOOP_TIMING_SLACK_S:
                    unstored[uid] = replace(e, air_kerma_mgy=0.0, dap_gycm2=0.0,
                                            irradiation_duration_s=extra_s)
        if unstored != self._unstored or self._residual_wanted != self._report_residual:
            self._report_residual = self._residual_wanted
            out += self._use_unstored(unstored)
        return out

    def _share(self, uid: str) -> tuple:
        """What a run's report dose depends on: its events, the frames each is shared by and
        the part of each that the frames stand for."""
        return tuple((e, self._shared_frames(e), self._stored(e))
                     for e in self._report_events.get(uid, ()))

    def _stored(self, e: IrradiationEvent) -> float:
        """The part of an event's exposure that the runs it is given to stand for: all of an
        event that names them; of one that names no image (a fluoroscopy event and the loop
        stored from it, its last seconds), the time their frames stand for over its duration.
        The rest is :attr:`unstored`: its time counts towards the alert levels."""
        if e.sop_instance_uids:
            return 1.0
        duration_s = event_duration_s(e)
        return min(1.0, self._beam_of(e) / duration_s) if duration_s > 0 else 1.0

    def _beam_of(self, e: IrradiationEvent) -> float:
        """The time, s, the frames of the runs an event is given to stand for."""
        return sum(self._beam_s.get(u, 0.0) for u in self._spread.get(e.event_uid, ()))

    def _shared_frames(self, e: IrradiationEvent) -> int:
        return sum(self._frames.get(u, 0) for u in self._spread.get(e.event_uid, ()))

    def _use_unstored(self, events: dict[str, IrradiationEvent]) -> list[DoseAlert]:
        """Take ``events`` (the report's exposures outside the received frames: events or the
        parts of them no run stands for) as :attr:`unstored`; return the alerts the study's
        dose reaches with them (also in :attr:`alerts`)."""
        before = self._alert_values()
        self._unstored = events
        u = self.unstored = DoseTotals()
        for e in events.values():
            u.air_kerma_mgy += e.air_kerma_mgy or 0.0
            u.dap_gycm2 += e.dap_gycm2 or 0.0
            if e.is_acquisition:
                u.acquisition_time_s += event_duration_s(e)
            else:
                u.fluoro_time_s += event_duration_s(e)
            u.sources.add(e.dose_source)
        for name, residual in self._report_residual.items():  # floored: never below nothing
            setattr(u, name, max(0.0, getattr(u, name) + residual))
        if any(self._report_residual.values()):  # only a report with events has one
            u.sources.add(next(iter(self._report.values())).dose_source)
        index, t_s = self._last_frame
        out = self._crossed_to(before, index, t_s,
                               " (with the exposures the device's dose report gives outside the "
                               "stored images)")
        self.recounts += 1  # the study's dose changed without a frame: announced as a recount
        self.alerts.extend(out)
        self.recount_alerts.extend(out)
        return out

    @property
    def study_totals(self) -> DoseTotals:
        """The study's whole dose so far: the frames seen, the frames lost and the exposures
        the device reports outside the stored images (what the alert levels are compared with,
        and what the clinician is shown beside the frames' own)."""
        t, lost, u = self.totals, self.lost, self.unstored
        return DoseTotals(t.air_kerma_mgy + lost.air_kerma_mgy + u.air_kerma_mgy,
                          t.dap_gycm2 + lost.dap_gycm2 + u.dap_gycm2,
                          t.fluoro_time_s + lost.fluoro_time_s + u.fluoro_time_s,
                          t.acquisition_time_s + lost.acquisition_time_s + u.acquisition_time_s,
                          t.sources | lost.sources | u.sources)

    def shown(self) -> dict[str, float]:
        """The cumulative dose a frame's event gives: the frames' as counted (``air_kerma_mgy``,
        ``dap_gycm2``, ``fluoro_time_s``, :attr:`live`: never lower than an earlier event's),
        and the study's whole dose (``study_*``, :attr:`study_totals`) when frames lost,
        exposures not stored or a device report that recounted frames already shown make it
        differ: an alert raised by unstored dose must not stand beside a counter that leaves
        it out; ``dose_source`` names how the counted frames' dose was had (:attr:`live_source`)."""
        t = self.live
        out = {"air_kerma_mgy": dose_value(t.air_kerma_mgy), "dap_gycm2": dose_value(t.dap_gycm2),
               "fluoro_time_s": round(t.fluoro_time_s, 6),
               # a display marks an estimate as one (user review s20 R3)
               "dose_source": self.live_source}
        if self._live_dose_unknown:  # runs of unknown dose left out: the totals are lower bounds
            out["runs_dose_unknown"] = len(self._live_dose_unknown)
        if (self._unstored or self.lost_frames or any(self._report_residual.values())
                or self.recounts):
            whole = self.study_totals
            out.update(study_air_kerma_mgy=dose_value(whole.air_kerma_mgy),
                       study_dap_gycm2=dose_value(whole.dap_gycm2),
                       study_fluoro_time_s=round(whole.fluoro_time_s, 6))
        return out

    @property
    def unstored_events(self) -> tuple[IrradiationEvent, ...]:
        """The device report's exposures outside the received frames, events or their parts
        (their dose and time are :attr:`unstored`)."""
        return tuple(self._unstored.values())

    def _alert_values(self) -> tuple[float, float, float]:
        """(fluoro time s, air kerma mGy, DAP Gy·cm²) the alert levels are compared with: the
        frames counted and the exposures the device reports outside the stored images."""
        t, u = self.totals, self.unstored
        return (t.fluoro_time_s + u.fluoro_time_s, t.air_kerma_mgy + u.air_kerma_mgy,
                t.dap_gycm2 + u.dap_gycm2)

    def _recount_all(self, uids) -> list[DoseAlert]:
        before = self._alert_values()
        with_lost = (self.totals.air_kerma_mgy + self.lost.air_kerma_mgy,
                     self.totals.dap_gycm2 + self.lost.dap_gycm2)
        for uid in sorted(uids):
            self._recount(uid)
        if not any(uid in self._tallies for uid in uids):
            return []
        self.recounts += 1
        for totals, lost in ((self.totals, False), (self.lost, True)):  # where doses come from now
            totals.sources = {t.dose.source for t in self._tallies.values()
                              if any(was_lost == lost for _, was_lost in t.counted)}
        index, t_s = self._last_frame
        out = self._crossed_to(before, index, t_s)
        t, lost = self.totals, self.lost
        if (t.air_kerma_mgy + lost.air_kerma_mgy, t.dap_gycm2 + lost.dap_gycm2) != with_lost:
            out += self._srdl_with_lost(index, t_s)
        self.alerts.extend(out)
        self.recount_alerts.extend(out)
        return out

    def _recount(self, uid: str) -> None:
        """Derive a prepared run's dose again (a report now names it, or a run sharing one of
        its events arrived) and move what its counted frames added from the old per-frame
        dose to the new one."""
        old = self._runs.pop(uid)
        tally = self._tallies.get(uid)
        if tally is None:  # prepared, no frame counted: the next prepare derives it again
            return
        new = tally.dose = self._derive(tally.run)
        self._runs[uid] = new
        for number, lost in tally.counted:
            (old_kerma, old_dap), (kerma, dap) = old.frame(number), new.frame(number)
            totals = self.lost if lost else self.totals
            totals.air_kerma_mgy += kerma - old_kerma
            totals.dap_gycm2 += dap - old_dap
            tally.air_kerma_mgy += kerma - old_kerma
            tally.dap_gycm2 += dap - old_dap

    def prepare(self, run: Run) -> RunDose:
        """Work out a run's per-frame dose once (called before its first frame is needed).
        The report's events are given to the known runs again: runs already prepared that
        share an event with it are recounted, and an unstored event it covers is its now."""
        uid = run.sop_instance_uid
        found = self._runs.get(uid)
        if found is not None:
            return found
        newly_known = (self._frames.get(uid) != max(1, run.n_frames)
                       or self._clock.get(uid) != run.started_at)
        self._know(run)
        if newly_known and self._report:  # the report's events may cover it, or now share it
            self._attribute()
        dose = self._runs[uid] = self._derive(run)
        return dose

    def _derive(self, run: Run) -> RunDose:
        """A run's per-frame dose: from the report events that name it, else its header's
        reported dose, else the technique estimate."""
        tech, n = run.technique, max(1, run.n_frames)
        events = [e for e in self._report_events.get(run.sop_instance_uid, ())
                  if e.dap_gycm2 is not None or e.air_kerma_mgy is not None]
        kerma_values = _per_frame(tech.reported_air_kerma_mgy_per_frame, run.n_frames)
        dap_values = _per_frame(tech.reported_dap_gycm2_per_frame, run.n_frames)
        if events:
            # each event's dose over every frame it covers (all the runs it names), summed over
            # the events that name this run
            kerma = dap = 0.0
            for e in events:
                # over the frames of the named runs present (this one included); a named run
                # that arrives later takes its share then, and the others are recounted
                part = self._stored(e) / (self._shared_frames(e) or n)
                kerma += (e.air_kerma_mgy or 0.0) * part
                dap += (e.dap_gycm2 or 0.0) * part
            # a quantity none of the report's events gives is unknown, not 0
            dose = RunDose(kerma, dap, "rdsr",
                           air_kerma_source=None if any(e.air_kerma_mgy is not None for e in events)
                           else "none",
                           dap_source=None if any(e.dap_gycm2 is not None for e in events) else "none")
        elif (tech.reported_dap_gycm2 is not None or tech.reported_air_kerma_mgy is not None
              or kerma_values is not None or dap_values is not None):
            estimate = None
            has_kerma = tech.reported_air_kerma_mgy is not None or kerma_values is not None
            has_dap = tech.reported_dap_gycm2 is not None or dap_values is not None
            if not (has_kerma and has_dap):
                estimate = self._estimate(run)
            kerma = (tech.reported_air_kerma_mgy / n if tech.reported_air_kerma_mgy is not None
                     else (estimate[0] if estimate else 0.0))
            dap = (tech.reported_dap_gycm2 / n if tech.reported_dap_gycm2 is not None
                   else (estimate[1] if estimate and estimate[1] is not None else 0.0))
            filled = "estimated" if estimate else "none"
            dose = RunDose(kerma, dap, "reported", kerma_values, dap_values,
                           air_kerma_source=None if has_kerma else filled,
                           dap_source=None if has_dap else (
                               "none" if estimate and estimate[1] is None else filled))
        else:
            estimate = self._estimate(run)
            # an estimate without the field size at the detector has no DAP: unknown, not 0
            dose = (RunDose(estimate[0], estimate[1] or 0.0, "estimated",
                            dap_source="none" if estimate[1] is None else None)
                    if estimate else RunDose(0.0, 0.0, "none"))
        return dose

    def _estimate(self, run: Run) -> tuple[float, float] | None:
        # the same per-frame dose for every frame: the mean of the times they stand for, so
        # the dose follows the time counted (a run whose frame rate changes)
        intervals = run.frame_intervals_ms
        interval = (intervals[0] if len(set(intervals)) == 1
                    else sum(intervals) / len(intervals) if intervals else 0.0)
        return estimate_frame_dose(run.technique, rows=run.rows, columns=run.columns,
                                   frame_interval_ms=interval, n_frames=max(1, run.n_frames),
                                   settings=self.settings, device=run.device)

    def add(self, frame: Frame) -> list[DoseAlert]:
        """Count one frame; return the alerts it raised."""
        self._tally(frame.run)  # first: a recount its run's preparation causes alerts apart
        before = self._alert_values()
        t = self.totals
        was = (t.air_kerma_mgy, t.dap_gycm2, t.fluoro_time_s, t.acquisition_time_s)
        self._count(frame.run, frame.frame_number, t)
        live = self.live
        live.air_kerma_mgy += t.air_kerma_mgy - was[0]
        live.dap_gycm2 += t.dap_gycm2 - was[1]
        live.fluoro_time_s += t.fluoro_time_s - was[2]
        live.acquisition_time_s += t.acquisition_time_s - was[3]
        dose = self._tallies[frame.run.sop_instance_uid].dose  # the model it was counted with
        live.sources.add(dose.source)
        if _dose_unknown(dose):
            self._live_dose_unknown.add(frame.run.sop_instance_uid)
        new = self._crossed(before, frame)
        self.alerts.extend(new)
        return new

    def add_lost(self, run: Run, first_frame_number: int, *, index: int = 0
                 ) -> list[DoseAlert]:
        """Count the exposure of ``run``'s frames from ``first_frame_number`` on, whose pixels
        could not be decoded: into the run's irradiation event and :attr:`lost`, not into
        :attr:`totals` (no event shows them). Frames already counted are not counted again.

        Returns the substantial radiation dose levels (SRDL) that the frames seen and lost
        together reach and the frames seen did not (alerts at ``index``, the last frame seen):
        the follow-up of the patient depends on the whole exposure."""
        tally = self._count_lost_from(run, first_frame_number)
        offsets = run.frame_offsets_s
        t_s = run.start_s + (offsets[min(tally.frames, len(offsets)) - 1] if offsets else 0.0)
        out = self._srdl_with_lost(index, t_s)
        self.alerts.extend(out)
        return out

    def _srdl_with_lost(self, index: int, t_s: float) -> list[DoseAlert]:
        fluoro_s, kerma, dap = self._alert_values()
        lost = self.lost
        return self._srdl(kerma + lost.air_kerma_mgy, dap + lost.dap_gycm2,
                          fluoro_s + lost.fluoro_time_s, index, t_s,
                          ", with the frames lost in damaged files")

    def _count_lost_from(self, run: Run, first_frame_number: int) -> _RunTally:
        tally = self._tally(run)
        numbers = range(max(first_frame_number, tally.frames + 1), run.n_frames + 1)
        for number in numbers:
            self._count(run, number, self.lost)
            self.lost_frames += 1
        if numbers and _dose_unknown(tally.dose):
            self._lost_dose_unknown.add(run.sop_instance_uid)
        return tally

    @property
    def lost_runs_dose_unknown(self) -> int:
        """Runs of :attr:`lost` frames whose air kerma or DAP is unknown (left out of it: a
        lower bound, as :attr:`live_runs_dose_unknown` for the frames seen)."""
        return len(self._lost_dose_unknown)

    def _tally(self, run: Run) -> _RunTally:
        tally = self._tallies.get(run.sop_instance_uid)
        if tally is None:
            tally = self._tallies[run.sop_instance_uid] = _RunTally(run, self.prepare(run))
        return tally

    def _count(self, run: Run, frame_number: int, totals: DoseTotals) -> None:
        """Frame ``frame_number`` of ``run`` into ``totals`` and the run's irradiation event."""
        tally = self._tally(run)
        intervals = run.frame_intervals_ms
        interval_s = (intervals[min(frame_number, len(intervals)) - 1] / 1000.0 if intervals
                      else 0.0)
        if run.technique.is_acquisition:
            totals.acquisition_time_s += interval_s
        else:
            totals.fluoro_time_s += interval_s
        kerma, dap = tally.dose.frame(frame_number)
        totals.air_kerma_mgy += kerma
        totals.dap_gycm2 += dap
        totals.sources.add(tally.dose.source)
        tally.frames += 1
        tally.counted.append((frame_number, totals is self.lost))
        tally.air_kerma_mgy += kerma
        tally.dap_gycm2 += dap
        tally.time_s += interval_s

    def _srdl(self, air_kerma_mgy: float, dap_gycm2: float, fluoro_time_s: float, index: int,
              t_s: float, note: str = "") -> list[DoseAlert]:
        """The substantial radiation dose levels these values reach for the first time."""
        s, out = self.settings, []
        for kind, level, value, unit, what in (
                ("srdl_air_kerma", s.srdl_air_kerma_mgy, air_kerma_mgy, "mGy",
                 f"reference air kerma {s.srdl_air_kerma_mgy / 1000:g} Gy"),
                ("srdl_dap", s.srdl_dap_gycm2, dap_gycm2, "Gy·cm²", f"DAP {s.srdl_dap_gycm2:g} Gy·cm²"),
                ("srdl_fluoro_time", s.srdl_fluoro_time_s, fluoro_time_s, "s",
                 f"fluoroscopy time {s.srdl_fluoro_time_s / 60:g} min")):
            if level > 0 and value >= level and kind not in self._srdl_fired:
                self._srdl_fired.add(kind)
                out.append(DoseAlert(kind, level, unit, index, t_s,
                                     f"SUBSTANTIAL RADIATION DOSE LEVEL: {what}{note}; follow the "
                                     "facility's SRDL patient follow-up"))
        return out

    def _crossed(self, before: tuple[float, float, float], frame: Frame) -> list[DoseAlert]:
        self._last_frame = (frame.index, frame.t_s)
        return self._crossed_to(before, frame.index, frame.t_s)

    def _crossed_to(self, before: tuple[float, float, float], index: int, t_s: float,
                    note: str = "") -> list[DoseAlert]:
        """The alerts the study's dose (:meth:`_alert_values`) reached since ``before``."""
        s, out = self.settings, []
        fluoro_s, kerma, dap = self._alert_values()
        before = tuple(max(b, a) for b, a in zip(before, self._announced))
        self._announced = tuple(max(b, v) for b, v in zip(before, (fluoro_s, kerma, dap)))
        step = s.fluoro_time_alert_s
        if step > 0:
            for k in alert_steps(int(before[0] // step) + 1, int(fluoro_s // step) + 1):
                out.append(DoseAlert("fluoro_time", k * step, "s", index, t_s,
                                     f"fluoroscopy time has reached {k * step / 60:g} min{note}"))
        for level in kerma_alert_levels(before[1], kerma, s):
            out.append(DoseAlert("air_kerma", level, "mGy", index, t_s,
                                 f"reference air kerma has reached {level / 1000:g} Gy{note}"))
        out.extend(self._srdl(kerma, dap, fluoro_s, index, t_s, note))
        if self.lost_frames:  # frames lost in damaged files counted earlier in the study
            out.extend(self._srdl_with_lost(index, t_s))
        return out

    @property
    def last_frame(self) -> tuple[int, float]:
        """Index and time (s) of the last frame counted."""
        return self._last_frame

    @property
    def source(self) -> str:
        """"rdsr", "reported", "estimated", "mixed" or "none" for the frames seen so far."""
        return _source(self.totals.sources)

    @property
    def live_source(self) -> str:
        """Like :attr:`source`, for :attr:`live`: the models the frames were counted with when
        they came (a device report received later recounts ``totals``, not these)."""
        return _source(self.live.sources)

    @property
    def live_runs_dose_unknown(self) -> int:
        """Runs counted into :attr:`live` with an unknown air kerma or DAP (it leaves them
        out: a lower bound), even when a device report gave them a dose later."""
        return len(self._live_dose_unknown)

    @property
    def study_source(self) -> str:
        """Like :attr:`source`, for the study's whole dose: the frames seen, the frames lost and
        the exposures not stored."""
        return _source(self.totals.sources | self.lost.sources | self.unstored.sources)

    @property
    def runs_time_unknown(self) -> int:
        """How many runs counted so far have no usable frame timing: their fluoroscopy or
        acquisition time is unknown and left out of the times, which are then lower bounds."""
        return sum(1 for t in self._tallies.values() if t.run.timing_unknown)

    @property
    def srdl_exceeded(self) -> tuple[str, ...]:
        """Which substantial radiation dose levels the study has reached, in a fixed order."""
        return tuple(k[len("srdl_"):] for k in ("srdl_air_kerma", "srdl_dap", "srdl_fluoro_time")
                     if k in self._srdl_fired)

    def run_events(self) -> tuple[IrradiationEvent, ...]:
        """One irradiation event per run counted so far, in the order runs were first seen,
        with what the run's frames added (a run whose dose is a report's: its share).

        Event UIDs are derived from the run's SOP Instance UID, so a report written twice for
        the same study names the same events. ``start`` is left None: run times here are
        relative to the study; the RDSR writer reads absolute times from the run headers.
        """
        return tuple(_event(t, self.settings) for t in self._tallies.values())

    def events(self) -> tuple[IrradiationEvent, ...]:
        """The study's irradiation events so far (its whole dose): :meth:`own_events`, then
        the device report's events that give the dose of runs or cover none (:attr:`unstored`),
        once each and as that report gives them."""
        out = list(self.own_events())
        seen: set[str] = set()
        for tally in self._tallies.values():
            if tally.dose.source != "rdsr":
                continue
            for e in self._report_events.get(tally.run.sop_instance_uid, ()):
                if (e.dap_gycm2 is not None or e.air_kerma_mgy is not None) and e.event_uid not in seen:
                    seen.add(e.event_uid)
                    out.append(e if e.dose_source != "none" else replace(e, dose_source="rdsr"))
        return tuple(out + [e for e in self._unstored.values() if e.event_uid not in seen])

    def own_events(self) -> tuple[IrradiationEvent, ...]:
        """The irradiation events sifluoro reports itself (its RDSR): one per run counted
        whose dose the device's report does not give. The device's events stay in the
        device's report: an Irradiation Event UID names one event (PS3.3 C.7.6.1.1.7), and
        a second description under it, short of what the reader does not keep (rotation,
        fluoro mode, positioner), contradicts the first; under a new UID the exposure would
        count twice. Beside a biplane device's report the runs are the frontal plane's (A)."""
        own = [_event(t, self.settings) for t in self._tallies.values() if t.dose.source != "rdsr"]
        planes = {e.plane for e in self._report.values()} - {SINGLE_PLANE}
        if planes:
            plane = "A" if "A" in planes else min(planes)
            own = [replace(e, plane=plane) for e in own]
        return tuple(own)

    @property
    def device_events(self) -> int:
        """How many of the device report's events the study's dose holds (:meth:`events`
        beyond :meth:`own_events`): left out of sifluoro's RDSR."""
        return len(self.events()) - len(self.own_events())

    def report_dose(self, study_instance_uid: str, device: Device) -> StudyDose:
        """Like :meth:`study_dose`, with :meth:`own_events` only: what sifluoro's RDSR says."""
        own = self.own_events()
        return self._dose_of(own, _source({e.dose_source for e in own}), study_instance_uid,
                             device)

    def study_dose(self, study_instance_uid: str, device: Device) -> StudyDose:
        """The study's dose so far as a :class:`StudyDose` (``source="images"``)."""
        return self._dose_of(self.events(), self.study_source, study_instance_uid, device)

    def _dose_of(self, events: tuple[IrradiationEvent, ...], dose_source: str,
                 study_instance_uid: str, device: Device) -> StudyDose:
        return StudyDose(study_instance_uid=study_instance_uid, source="images", device=device,
                         events=events,
                         planes=tuple(totals_from_events(p, events)
                                      for p in sorted({e.plane for e in events} or {SINGLE_PLANE})),
                         dose_source=dose_source,
                         planes_from_report=False,
                         srdl_exceeded=self.srdl_exceeded)


#: a run that no event names and that started within this many seconds of an event's span
#: (start to start + duration) may be that event's stored loop: an image header's and a dose
#: report's clocks differ by a few seconds (as :data:`summary.OUTSIDE_REPORT_S`)
MATCH_S = 10.0

#: a fluoroscopy event's time beyond the frames of the loop it names, below which it is the
#: frames' timing (intervals rounded, the last frame's own interval), not beam time unstored
LOOP_TIMING_SLACK_S = 1.0


def _spread(events: Iterable[IrradiationEvent], frames: dict[str, int],
            clock: dict[str, datetime | None]) -> dict[str, tuple[str, ...]]:
    """Event UID -> the known runs (``frames``' keys) over whose frames its dose is spread.

    An event whose Acquired Image items name known runs covers those. An event that names no
    image covers the runs no event names that started within its time (:data:`MATCH_S`);
    devices name no stored fluoroscopy loop. Runs that no event names and no timed event
    covers share the events that name no image and give no time (when a run has no time
    either, all the events naming no image that no run matched): nothing tells which is
    which, and counting the runs and the events would count the runs twice. An event that
    names only instances not received covers nothing (unstored) until one arrives.
    """
    out: dict[str, tuple[str, ...]] = {}
    free = []  # events that name no image
    for e in events:
        runs = tuple(u for u in dict.fromkeys(e.sop_instance_uids) if u in frames)
        if runs:
            out[e.event_uid] = runs
        elif not e.sop_instance_uids:
            free.append(e)
    named = {u for runs in out.values() for u in runs}
    timed = [e for e in free if e.start is not None]
    untimed = [e for e in free if e.start is None]
    pool = []
    for uid in (u for u in frames if u not in named):
        at = clock.get(uid)
        hit = _covering(timed, at) if at is not None else None
        if hit is not None:
            out[hit.event_uid] = out.get(hit.event_uid, ()) + (uid,)
        elif at is None or untimed:
            pool.append(uid)
    if pool:
        any_untimed_run = any(clock.get(u) is None for u in pool)
        for e in free:
            if e.event_uid not in out and (e.start is None or any_untimed_run):
                out[e.event_uid] = tuple(pool)
    return out


def _report_residual(report: StudyDose) -> dict[str, float]:
    """The device report's accumulated totals less the sum of its events, for each quantity
    every plane of its accumulated container gives (vendors' totals are not their events'
    sums: Siemens' fluoroscopy time is 12 % below its events' pulses over pulse rate, Philips'
    DAP 12-16 % above its events'). Empty for totals summed from the events."""
    if not report.planes_from_report or not report.planes or not report.events:
        return {}  # no events: the runs count their own dose, which the totals hold
    events = report.events
    fluoro = [e for e in events if not e.is_acquisition]
    acquired = [e for e in events if e.is_acquisition]
    # only where every event gives the quantity: a run covered by an event that does not
    # counts its own value, which the totals also hold (it would be counted twice)
    sums = {}
    for name in ("air_kerma_mgy", "dap_gycm2"):
        if all(getattr(e, name) is not None for e in events):
            sums[name] = sum(getattr(e, name) for e in events)
    for name, of_kind in (("fluoro_time_s", fluoro), ("acquisition_time_s", acquired)):
        if of_kind and all(is_timed(e) for e in of_kind):
            sums[name] = sum(event_duration_s(e) for e in of_kind)
    out = {}
    for name, events_sum in sums.items():
        totals = [getattr(p, name) for p in report.planes]
        if all(t is not None for t in totals):
            out[name] = float(sum(totals)) - events_sum
    return out


def _part_of(e: IrradiationEvent, part: float) -> IrradiationEvent:
    """``part`` of an event: its dose and its duration (the rest is in stored frames)."""
    return replace(e, air_kerma_mgy=None if e.air_kerma_mgy is None else e.air_kerma_mgy * part,
                   dap_gycm2=None if e.dap_gycm2 is None else e.dap_gycm2 * part,
                   irradiation_duration_s=event_duration_s(e) * part)


def _covering(events: list[IrradiationEvent], at: datetime) -> IrradiationEvent | None:
    """The event whose span (within :data:`MATCH_S`) holds ``at``, the nearest if several; of
    a biplane's simultaneous events, the frontal plane's (A), whatever the report's order."""
    best, best_gap = None, MATCH_S
    for e in sorted(events, key=lambda e: e.plane == "B"):
        since = _seconds(at, e.start)
        gap = max(0.0, -since, since - event_duration_s(e))
        if gap <= best_gap and (best is None or gap < best_gap):
            best, best_gap = e, gap
    return best


def _seconds(a: datetime, b: datetime) -> float:
    """a - b in seconds: as instants when both carry a UTC offset, else on the wall clock."""
    if (a.tzinfo is None) != (b.tzinfo is None):
        a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
    return (a - b).total_seconds()


def _source(sources: set[str]) -> str:
    used = sources - {"none"} or sources
    return "mixed" if len(used) > 1 else (next(iter(used)) if used else "none")


def accumulate_study(study: Study, settings: DoseSettings, *, report: StudyDose | None = None
                     ) -> DoseAccumulator:
    """Count every frame of a study without decoding pixels (for audits and summaries)."""
    empty = np.zeros((0, 0), dtype=np.uint16)
    dose = DoseAccumulator(settings)
    if report is not None:
        dose.use_report(report, study.runs)
    index = 0
    for run in study.runs:
        dose.prepare(run)
        for k, offset in enumerate(run.frame_offsets_s):
            dose.add(Frame(pixels=empty, index=index, frame_number=k + 1,
                           t_s=run.start_s + offset, run=run))
            index += 1
    return dose


def event_uid(run: Run) -> str:
    """A stable Irradiation Event UID for a run (the same run always gets the same UID)."""
    return generate_uid(entropy_srcs=["sifluoro irradiation event", run.sop_instance_uid])


def _event(tally: _RunTally, settings: DoseSettings) -> IrradiationEvent:
    run, tech = tally.run, tally.run.technique
    timed = not run.timing_unknown  # else no time is given: unknown, not 0
    area_det = field_area_cm2_at_detector(tech, run.rows, run.columns)
    return IrradiationEvent(
        event_uid=event_uid(run),
        kind=ACQUISITION if tech.is_acquisition else FLUOROSCOPY,
        plane=SINGLE_PLANE,
        # unknown is not 0: left out of the event (the RDSR says "value unknown")
        dap_gycm2=None if "none" in (tally.dose.source, tally.dose.dap_source) else tally.dap_gycm2,
        air_kerma_mgy=(None if "none" in (tally.dose.source, tally.dose.air_kerma_source)
                       else tally.air_kerma_mgy),
        dose_source=tally.dose.source,
        air_kerma_source=tally.dose.air_kerma_source,
        dap_source=tally.dose.dap_source,
        kvp=tech.kvp,
        tube_current_ma=tech.tube_current_ma,
        pulse_width_ms=tech.pulse_width_ms if timed else None,
        # the header's mode stays when the pulse width goes with an unknown timing
        pulsed=(True if tech.radiation_mode == "PULSED" or tech.pulse_width_ms else
                False if tech.radiation_mode == "CONTINUOUS" else None),
        pulse_rate_per_s=tech.pulse_rate_per_s,
        n_pulses=round(tally.frames * tech.pulses_per_frame) if timed else None,
        irradiation_duration_s=tally.time_s if timed else None,
        exposure_time_ms=tech.exposure_time_ms if timed else None,
        exposure_mas=tech.exposure_mas,
        filter_al_mm=tech.filter_al_mm,
        filter_cu_mm=tech.filter_cu_mm,
        primary_angle_deg=tech.primary_angle_deg,
        secondary_angle_deg=tech.secondary_angle_deg,
        sid_mm=tech.sid_mm,
        source_to_isocenter_mm=tech.source_to_isocenter_mm,
        collimated_field_area_cm2=area_det,
        reference_point=("15cm from Isocenter toward Source" if tech.source_to_isocenter_mm
                         else "30cm in Front of Image Input Surface"),
        sop_instance_uids=(run.sop_instance_uid,),
    )


def _per_frame(values: tuple[float, ...] | None, n_frames: int) -> tuple[float, ...] | None:
    return tuple(values) if values is not None and len(values) == n_frames else None


def _dose_unknown(dose) -> bool:
    """A run's dose model leaves its air kerma or DAP unknown (out of the totals: lower bounds)."""
    return "none" in (dose.source, dose.air_kerma_source, dose.dap_source)


def kerma_alert_levels(before: float, after: float, s: DoseSettings) -> list[float]:
    """Notification levels in (before, after]: the first level, then every step above it."""
    first, step = s.air_kerma_first_alert_mgy, s.air_kerma_alert_step_mgy
    if first <= 0 or after < first:
        return []
    if step <= 0:
        return [first] if first > before else []
    # levels first + k * step for k in (k0 .. k1), counted rather than stepped through: a
    # damaged dose value (1e200 mGy in a report) made the loop run for ever
    k0 = 0 if before < first else math.floor((before - first) / step) + 1
    k1 = math.floor((after - first) / step)
    return [first + k * step for k in alert_steps(k0, k1 + 1)]


#: the most alerts of one kind one step of the dose gives; past it, the first and the highest
#: level only (a dose that crosses more at once is a damaged value, and listing them would
#: never end)
MAX_ALERTS_AT_ONCE = 100


def alert_steps(start: int, stop: int) -> Sequence[int]:
    """The multiples ``start .. stop - 1`` of an alert step a dose crossed, or their first and
    last when they are more than :data:`MAX_ALERTS_AT_ONCE`."""
    if stop - start > MAX_ALERTS_AT_ONCE:
        return (start, stop - 1)
    return range(start, stop)
