"""Live studies: feed instances, as they are stored in the spool, through the per-frame pipeline.

One pipeline state per StudyInstanceUID; studies are processed in parallel on a small thread
pool, and the instances of one study one at a time, in the order they arrived (a run = an
instance). This module knows the spool and the pipeline, not the network: the receiver calls
:meth:`LiveStudies.store` for every instance and the rest happens here.

Choices
-------
- ``t_s`` is measured from the start of the first *run received* for the study, and ``index``
  counts frames in processing order. A run that arrives after a later-acquired run (out of
  order) is still processed when it arrives: events already written are never reordered, its
  frames get their true, earlier ``t_s`` (negative if it predates the first run received) and
  ``"out_of_order": true``. Such a stream breaks the monotonic-``t_s`` rule of
  docs/contract.md §3 on purpose: it tells the truth about what arrived when.
- Every frame is appended to the events file as soon as it is processed; after each instance
  the events are fsynced, then the summary is rewritten, then the study's state file records
  the instance as processed. A study is finished when every instance received is processed.
- Restart: events are deterministic given the instances and their order, so a study is
  rebuilt by processing its instances again in the recorded arrival order, writing only the
  events that are not already in the events file (a line cut by a crash is dropped first).
  The study then ends in the same state as if the receiver had never stopped, apart from
  latencies. Instances stored but not yet recorded (a crash between rename and state write;
  the sender got no success) are appended in file-modification order.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterator

import pydicom

from sifluoro.acquire.dicom_reader import (copied_run_rejection, copy_came_first_rejection,
                                           copy_rank, original_of, overlap_checked, read_header,
                                           run_from_dataset, untimed_run)
from sifluoro.acquire.spool import Spool, StudyState
from sifluoro.config import Settings
from sifluoro.dose.rdsr_read import is_dose_report
from sifluoro.dose.summary import device_report
from sifluoro.errors import DamagedPixelDataError, InputError, SifluoroError
from sifluoro.model import Frame, Rejection, Run, Study
from sifluoro.pipeline import Pipeline, Stage, StudyState as PipelineState, latency_summary
from sifluoro.replay import build_summary, count_lost, default_stages, write_json

log = logging.getLogger(__name__)

EVENTS_NAME = "events.jsonl"
SUMMARY_NAME = "summary.json"


class ReceiverStoppingError(SifluoroError):
    """An instance offered after :meth:`LiveStudies.close` began: not stored."""


def _whole_file(path: Path) -> bool:
    """Whether an instance's file holds its whole dataset (not cut short: copy_rank's rule)."""
    try:
        return copy_rank(read_header(path), path)[0]
    except (InputError, OSError):
        return False


#: how the engine starts every event line (EventLog.append: the contract's first two keys)
_EVENT_START = re.compile(rb'\{"sop_instance_uid":"([0-9.]+)","frame":(\d+)[,}]')


def _event_key(line: bytes) -> tuple[str, int]:
    """(sop_instance_uid, frame) of an events line: read from its start when the engine wrote
    it, else from the decoded event."""
    start = _EVENT_START.match(line)
    if start is not None:
        return start.group(1).decode("ascii"), int(start.group(2))
    event = json.loads(line)
    return event["sop_instance_uid"], int(event["frame"])


class EventLog:
    """An append-only JSONL file of frame events, shareable by several studies.

    Opening it drops a last line cut short by a crash and indexes the ``(sop_instance_uid,
    frame)`` pairs already written, so that a study processed again after a restart writes
    only what is missing. A run's frames are written in order, so the index keeps one number
    per instance (its frames 1 to N are written) and the frames written out of that order: a
    receiver's file of a month's events holds a few MiB of index, not one entry per frame.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._written_to: dict[str, int] = {}  # SOP Instance UID -> frames 1..N written
        self._written_apart: dict[str, set[int]] = {}  # frames written after a gap
        self._index_existing()
        self._fh = None  # opened on the first event, so refused instances leave no file

    def _index_existing(self) -> None:
        # a FIFO or a terminal (outfiles accepts them) is appended to, never read back: reading
        # one blocked the receiver's start for ever (review s22 F6)
        if not self.path.is_file():
            return
        # line by line, the two fields found without decoding the whole event: a month's
        # shared file of 100 MiB took 10 s and 200 MiB read whole (review s22 F7)
        end = 0
        with open(self.path, "rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    break
                end += len(line)
                try:
                    self._note(*_event_key(line))
                except (ValueError, KeyError, TypeError):
                    log.warning("%s line %d is not an event; ignored", self.path, n)
        size = self.path.stat().st_size
        if end < size:
            log.warning("%s: dropping a last line cut short (%d bytes)", self.path, size - end)
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                os.fsync(fh.fileno())

    def _note(self, sop_instance_uid: str, frame: int) -> None:
        upto = self._written_to.get(sop_instance_uid, 0)
        if frame != upto + 1:
            if frame > upto:
                self._written_apart.setdefault(sop_instance_uid, set()).add(frame)
            return
        apart = self._written_apart.get(sop_instance_uid)
        while apart and upto + 2 in apart:  # a gap filled: the frames after it join
            apart.discard(upto + 2)
            upto += 1
        if apart is not None and not apart:
            del self._written_apart[sop_instance_uid]
        self._written_to[sop_instance_uid] = upto + 1

    def has(self, sop_instance_uid: str, frame: int) -> bool:
        with self._lock:
            return (1 <= frame <= self._written_to.get(sop_instance_uid, 0)
                    or frame in self._written_apart.get(sop_instance_uid, ()))

    def append(self, event: dict) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(line)
            self._fh.flush()  # visible to readers now; fsync once per instance
            self._note(event["sop_instance_uid"], int(event["frame"]))

    def sync(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None


def _start_on_study_clock(study: "_LiveStudy", run: Run) -> float:
    """``run``'s start in seconds as its study places runs: as an instant when the study's
    first timed run carried a UTC offset (a run without one taken at that offset), else on
    the device's wall clock (``start_s``), as ``order_runs`` does for a whole study."""
    first_offset = study.t0_offset if study.t0_s is not None else (
        run.started_at.utcoffset() if run.started_at is not None else None)
    if first_offset is None or run.started_at is None:
        return run.start_s
    if run.started_at.utcoffset() is not None:
        return run.started_at.timestamp()
    return run.start_s - first_offset.total_seconds()


@dataclass(eq=False)
class _LiveStudy:
    """In-memory state of one study: what was received and how far processing got."""

    state: StudyState
    pipeline_state: PipelineState
    events: EventLog
    summary_path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    received_set: set[str] = field(default_factory=set)
    done: int = 0  # instances of state.received processed by this process
    scheduled: bool = False
    state_unsaved: bool = False  # processing progress not on disk yet (a full disk): retried
    runs: list[Run] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    dose_reports: list[str] = field(default_factory=list)
    t0_s: float | None = None
    #: the UTC offset of the study's first timed run, when it carries one (runs are then
    #: placed as instants, see :func:`_start_on_study_clock`)
    t0_offset: timedelta | None = None
    latest_start_s: float = -math.inf
    out_of_order_runs: int = 0
    received_at: dict[str, float] = field(default_factory=dict)
    receive_to_event_ms: list[float] = field(default_factory=list)
    idle_since: float | None = None  # time.monotonic() when its last turn ended
    evicted: bool = False  # forgotten (LiveStudies.idle_evict_s): rebuilt when needed again
    summary_lock: threading.Lock = field(default_factory=threading.Lock)  # its summary files

    @property
    def uid(self) -> str:
        return self.state.study_instance_uid


class LiveStudies:
    """Per-study pipelines fed from the spool.

    Parameters
    ----------
    spool : Spool
    settings : Settings, optional
    stages : list of Stage, optional
        Image stages (default: those replay uses).
    events_path : Path, optional
        One events file for every study; default ``SPOOL/<study>/events.jsonl``.
    summary_path : Path, optional
        Where a copy of each study's summary is written (the last study updated wins: meant
        for one study at a time); each study's own is always ``SPOOL/<study>/summary.json``.
    workers : int, optional
        Studies processed at the same time (default: the number of CPUs, at least 8).
    idle_evict_s : float
        A study with nothing to process for this long is forgotten (its events file closed,
        its pipeline state dropped) when another study's turn ends, so that a receiver that
        runs for weeks holds only the studies in progress. An instance that arrives for it
        later rebuilds it from the spool, as a restart does (its instances processed again,
        only the missing events written).
    """

    def __init__(self, spool: Spool, *, settings: Settings | None = None,
                 stages: list[Stage] | None = None, events_path: str | Path | None = None,
                 summary_path: str | Path | None = None, workers: int | None = None,
                 idle_evict_s: float = 600.0):
        self.spool = spool
        self.idle_evict_s = idle_evict_s
        settings = settings or Settings()
        self.pipeline = Pipeline(default_stages(settings) if stages is None else stages, settings)
        self._shared_events = EventLog(events_path) if events_path else None
        self._summary_path = Path(summary_path) if summary_path else None
        # threads mostly wait on fsync and decoders, so more than the CPU count pays off
        self._executor = ThreadPoolExecutor(max_workers=workers or max(8, os.cpu_count() or 1),
                                            thread_name_prefix="sifluoro-study")
        self._studies: dict[str, _LiveStudy] = {}
        self._studies_lock = threading.Lock()
        self._idle = threading.Condition()
        self._busy = 0
        self._admitting = 0  # store() calls under way; close() waits for them
        self._closing = False
        # events, summaries or states that could not be written (a full disk): the caller's
        # exit status says so
        self.output_errors = 0
        self._errors_lock = threading.Lock()
        self._shared_summary_lock = threading.Lock()  # the --summary copy, written by every study

    # Admission (called from the receiver's threads) ------------------------------------------
    def store(self, study_uid: str, sop_uid: str, write: Callable[[], Path]) -> bool:
        """Admit one instance: write it, and unless it is a duplicate, commit and queue it.

        ``write()`` returns a complete, validated temporary file in the study's spool folder
        (or raises to refuse the instance). It runs outside the study's lock so that
        associations do not wait on each other's disk writes.

        Returns
        -------
        bool
            True if stored, False if it was a duplicate (stored once already; counted).

        Raises
        ------
        ReceiverStoppingError
            :meth:`close` has begun: nothing is written (the sender gets a failure status).
        """
        with self._idle:
            if self._closing:
                raise ReceiverStoppingError("the receiver is stopping; send it again later")
            self._admitting += 1
        try:
            return self._admit(study_uid, sop_uid, write)
        finally:
            with self._idle:
                self._admitting -= 1
                self._idle.notify_all()

    def _admit(self, study_uid: str, sop_uid: str, write: Callable[[], Path]) -> bool:
        self._forget_if_deleted(study_uid)
        with self._locked(study_uid) as study:
            duplicate = sop_uid in study.received_set
        if duplicate:
            return self._store_again(study_uid, sop_uid, write)
        tmp = write()
        with self._locked(study_uid) as study:
            try:
                duplicate = sop_uid in study.received_set  # the same instance on another association
                if duplicate:
                    self._count_duplicate(study)
                else:
                    final = self.spool.commit(tmp, study_uid, sop_uid)
            finally:
                self.spool.discard(tmp)  # a no-op once renamed
            if not duplicate:
                self._record_locked(study, sop_uid, final)
        if duplicate:
            self._write_counts(study)
            return False
        return True

    def _store_again(self, study_uid: str, sop_uid: str, write: Callable[[], Path]) -> bool:
        """A copy of an instance stored already: a duplicate, counted; unless the stored copy
        is cut short and this one is whole. That one is kept beside it
        (:meth:`Spool.whole_copy_path`), so a replay of the study's folder shows the frames the
        live analysis lost (review s22 F2); the live study goes on with the copy it processed.
        Returns True when stored."""
        spool = self.spool
        if not spool.whole_copy_path(study_uid, sop_uid).exists() \
                and not _whole_file(spool.instance_path(study_uid, sop_uid)):
            tmp = write()  # file work outside the study's lock
            try:
                if _whole_file(tmp):
                    with self._locked(study_uid) as study:
                        if not spool.whole_copy_path(study_uid, sop_uid).exists():
                            self._record_whole_copy_locked(study, sop_uid, tmp)
                            stored = True
                        else:  # another association's copy was first
                            self._count_duplicate(study)
                            stored = False
                    self._write_counts(study)
                    return stored
            finally:
                spool.discard(tmp)  # a no-op once renamed
        with self._locked(study_uid) as study:
            self._count_duplicate(study)
        self._write_counts(study)
        return False

    def _record_whole_copy_locked(self, study: _LiveStudy, sop_uid: str, tmp: Path) -> None:
        final = self.spool.commit(tmp, study.uid, sop_uid, whole_copy=True)
        study.state.whole_copies += 1
        try:
            self.spool.save_state(study.state)
        except BaseException:  # not recorded, so not stored: the sender gets a failure
            study.state.whole_copies -= 1
            self.spool.uncommit(final)
            raise
        log.info("study %s: a whole copy of an instance stored cut short is kept as %s; the "
                 "live analysis keeps its lost frames, a replay of the folder shows them",
                 study.uid, final.name)

    def _record_locked(self, study: _LiveStudy, sop_uid: str, final: Path) -> None:
        """Record a stored instance and queue the study (study lock held)."""
        study.state.received.append(sop_uid)
        try:
            self.spool.save_state(study.state)
        except BaseException:
            # not recorded, so not stored: the sender gets a failure and sends it again
            study.state.received.pop()
            self.spool.uncommit(final)
            raise
        study.state_unsaved = False  # the save above holds the progress too
        study.received_set.add(sop_uid)
        study.received_at[sop_uid] = time.perf_counter()
        self._schedule_locked(study)

    @contextlib.contextmanager
    def _locked(self, study_uid: str) -> Iterator[_LiveStudy]:
        """The study in memory (rebuilt if it was forgotten), its lock held."""
        while True:
            study = self._study(study_uid)
            with study.lock:
                if not study.evicted:  # else forgotten just now: the next _study rebuilds it
                    yield study
                    return

    def _count_duplicate(self, study: _LiveStudy) -> None:
        study.state.duplicates += 1
        try:
            self.spool.save_state(study.state)
        except OSError as exc:  # a statistic: not worth failing the sender over
            log.warning("study %s: duplicate count not saved (%s)", study.uid, exc)

    def _summary_lock(self, study: _LiveStudy, path: Path) -> threading.Lock:
        """The study's own summary under its lock, the --summary copy (any study's) under one."""
        return study.summary_lock if path == study.summary_path else self._shared_summary_lock

    def _write_counts(self, study: _LiveStudy) -> None:
        """The duplicates and whole copies into the summaries written so far: neither is
        processed by anything, so no summary would say them until the study's next new
        instance, or never after a restart (user review s20 I1)."""
        for path in (study.summary_path, self._summary_path):
            if path is None:
                continue
            with self._summary_lock(study, path):
                if not path.is_file():  # a pipe, FIFO or terminal as --summary: never read back
                    continue
                try:
                    summary = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):  # being replaced, or damaged: the next one counts it
                    continue
                if not summary or summary.get("study_instance_uid") != study.uid:
                    continue  # the --summary copy is another study's now
                summary.update(self._counts(study))
                try:
                    write_json(path, summary)
                except OSError as exc:
                    log.warning("study %s: duplicate count not written to %s (%s)", study.uid,
                                path, exc)

    # Restart ---------------------------------------------------------------------------------
    def resume(self) -> list[str]:
        """Queue every unfinished study found in the spool; return their UIDs."""
        resumed = []
        for folder in self.spool.study_dirs():
            if not any(folder.iterdir()):
                folder.rmdir()  # made for an instance that was then refused
                continue
            state = self.spool.load_state(folder.name)
            stored = self.spool.stored_instances(folder.name)
            if state.finished and set(stored) <= set(state.received):
                continue  # done: not held in memory (an instance for it later rebuilds it)
            study = self._study(folder.name)
            with study.lock:
                missing = [u for u in stored if u not in study.received_set]
                if missing:
                    # stored, but the sender was not answered: keep the order they were written
                    missing.sort(key=lambda u: (self.spool.instance_path(study.uid, u)
                                                .stat().st_mtime_ns, u))
                    study.state.received.extend(missing)
                    study.received_set.update(missing)
                    self.spool.save_state(study.state)
                if not study.state.finished:
                    log.info("resuming study %s: %d of %d instances processed", study.uid,
                             study.state.processed, len(study.state.received))
                    self._schedule_locked(study)
                    resumed.append(study.uid)
        return resumed

    # Processing ------------------------------------------------------------------------------
    def _study(self, study_uid: str) -> _LiveStudy:
        with self._studies_lock:
            study = self._studies.get(study_uid)
            if study is None:
                state = self.spool.load_state(study_uid)
                folder = self.spool.study_dir(study_uid)
                events = self._shared_events or EventLog(folder / EVENTS_NAME)
                study = _LiveStudy(state=state,
                                   pipeline_state=self.pipeline.start_study(study_uid),
                                   events=events,
                                   summary_path=folder / SUMMARY_NAME,
                                   received_set=set(state.received),
                                   idle_since=time.monotonic())
                self._studies[study_uid] = study
            return study

    def _schedule_locked(self, study: _LiveStudy) -> None:
        """Queue the study for processing unless it is already queued (study.lock held)."""
        if study.scheduled:
            return
        study.scheduled = True
        with self._idle:
            self._busy += 1
        self._executor.submit(self._step, study)

    def _step(self, study: _LiveStudy) -> None:
        """Process the study's next instance, then queue the study again behind the others
        (one instance per turn, so that a study that keeps sending does not starve the rest)."""
        with study.lock:
            turn = study.done
            sop_uid = study.state.received[turn]
            catching_up = turn < study.state.processed
        try:
            self._process(study, sop_uid, catching_up=catching_up)
        except Exception:  # a turn that dies would leave the study scheduled for ever
            log.exception("study %s: an instance's turn failed", study.uid)
            with study.lock:
                if study.done == turn:
                    study.rejected.append(Rejection(
                        str(self.spool.instance_path(study.uid, sop_uid)),
                        "cannot be processed (an internal error; see the log)"))
                study.done = max(study.done, turn + 1)
        with study.lock:
            if study.done > study.state.processed or study.state_unsaved:
                study.state.processed = max(study.state.processed, study.done)
                self._save_progress(study, final=False)
            if study.done < len(study.state.received):
                self._executor.submit(self._step, study)
                return
            study.scheduled = False
            study.idle_since = time.monotonic()
        self._evict_idle()
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def _save_progress(self, study: _LiveStudy, *, final: bool) -> None:
        """Save how far processing got (study lock held). A failure (a full disk) is retried
        at the next instance and at close; only a failure at close is an output error, since
        the moment a spool fills is a race between the receiver's writes and this one."""
        try:
            self.spool.save_state(study.state)
        except OSError as exc:  # a restart re-derives it: processing is idempotent
            study.state_unsaved = True
            if final:
                log.error("study %s: state not saved (%s)", study.uid, exc)
                self._output_error()
            else:
                log.warning("study %s: state not saved (%s); tried again later", study.uid, exc)
            return
        study.state_unsaved = False

    def _output_error(self) -> None:
        with self._errors_lock:
            self.output_errors += 1

    def _forget_if_deleted(self, study_uid: str) -> None:
        """Forget an idle study whose spool folder was deleted (sent on, to make room) while
        it was in memory, so that what arrives next is stored and processed anew: its instances
        were taken for duplicates, answered Success and dropped, and its events went to a
        deleted file (review s22 F1)."""
        if self.spool.study_dir(study_uid).exists():
            return
        with self._studies_lock:
            study = self._studies.get(study_uid)
            if study is None:
                return
            with study.lock:
                if study.scheduled or study.done != len(study.state.received):
                    return  # still at work on it: the folder is made again as it writes
                study.evicted = True
                del self._studies[study_uid]
        log.info("study %s: its spool folder was deleted; it starts anew", study_uid)
        self._close_own_events(study)

    def _evict_idle(self) -> None:
        """Forget the studies idle for ``idle_evict_s`` (see the class docstring)."""
        now = time.monotonic()
        gone = []
        with self._studies_lock:
            for uid, study in list(self._studies.items()):
                with study.lock:
                    # nothing to process, or nothing processed here (rebuilt for a
                    # duplicate check, say): all it knows is on disk
                    if (not study.scheduled and not study.state_unsaved
                            and study.idle_since is not None
                            and now - study.idle_since >= self.idle_evict_s
                            and study.done in (0, len(study.state.received))):
                        study.evicted = True
                        del self._studies[uid]
                        gone.append(study)
        for study in gone:
            self._close_own_events(study)

    def _process(self, study: _LiveStudy, sop_uid: str, *, catching_up: bool) -> None:
        """Process one stored instance; never raises (what fails is listed as rejected)."""
        path = self.spool.instance_path(study.uid, sop_uid)
        try:
            ds = pydicom.dcmread(path, defer_size=1024)
            if is_dose_report(ds):  # an RDSR, or a dose report sent as Enhanced/Comprehensive SR
                study.dose_reports.append(str(path))
                self._use_device_report(study)
            else:
                self._feed_run(study, run_from_dataset(ds, path))
        except InputError as exc:
            log.warning("study %s: %s", study.uid, exc)
            study.rejected.append(Rejection.of(path, exc))
        except Exception as exc:  # one bad instance must not stop the study
            log.exception("study %s: %s cannot be processed", study.uid, path)
            study.rejected.append(Rejection(str(path), f"cannot be processed "
                                            f"({type(exc).__name__}: {exc})"))
        try:
            study.events.sync()
        except OSError as exc:  # e.g. a full disk: the study goes on, the events may be short
            log.error("study %s: events not synced to disk (%s)", study.uid, exc)
            self._output_error()
        received_at = study.received_at.pop(sop_uid, None)
        if received_at is not None:
            study.receive_to_event_ms.append((time.perf_counter() - received_at) * 1000.0)
        with study.lock:
            study.done += 1
        if not catching_up:
            self._write_summary(study)

    def _use_device_report(self, study: _LiveStudy) -> None:
        """The device's report of the study, as replay reads it (copies and a partial report
        once, sifluoro's own ignored, one cut short rejected): the runs it names take its dose,
        those already counted are recounted (a C-arm sends it at the end of the procedure)."""
        rejected: list[Rejection] = []
        report = device_report(Study(study.uid, tuple(study.runs),
                                     dose_reports=tuple(study.dose_reports)), rejected)
        study.rejected.extend(r for r in rejected if r not in study.rejected)
        if report is not None:
            state = study.pipeline_state
            state.alerts.extend(a.as_dict() for a in state.dose.use_report(report, study.runs))

    def _feed_run(self, study: _LiveStudy, run: Run) -> None:
        timed = run.start_s is not None and not math.isnan(run.start_s)
        if timed:
            run = replace(run, start_s=_start_on_study_clock(study, run))
        placed = (replace(run, start_s=run.start_s - study.t0_s) if timed and study.t0_s is not None
                  else replace(run, start_s=None))
        original = original_of(placed, study.runs, arrived_before=True)
        if original is not None:  # a processed copy of a run already counted: stored, unused
            log.info("study %s: %s is a copy of %s", study.uid, run.path, original.path)
            study.rejected.append(copied_run_rejection(run, original))
            return
        # the run after its DERIVED copy: the copy, shown and counted, stands for it (the dose
        # only goes up; counting both doubled the run's dose)
        copy = None if run.derived else next(
            (r for r in study.runs if r.derived and original_of(r, [placed]) is placed), None)
        if copy is not None:
            log.info("study %s: %s came after its copy %s", study.uid, run.path, copy.path)
            study.rejected.append(copy_came_first_rejection(run, copy))
            return
        if not timed:
            # not placed, not shown: its dose counted (as lost frames) when it arrives
            run = untimed_run(run, study.latest_start_s - study.t0_s
                              if study.t0_s is not None else 0.0)
        else:
            if study.t0_s is None:
                study.t0_s = run.start_s
                study.t0_offset = run.started_at.utcoffset() if run.started_at else None
            late = run.start_s < study.latest_start_s
            study.latest_start_s = max(study.latest_start_s, run.start_s)
            study.out_of_order_runs += late
            run = replace(run, start_s=run.start_s - study.t0_s)
            if not late:  # a late one is marked out of order instead
                run = overlap_checked(run, study.runs)
        run = replace(run, index=len(study.runs))
        study.runs.append(run)
        state = study.pipeline_state
        self.pipeline.prepare_run(run, state)
        used = 0
        write_failed = False
        try:
            for pixels in run.iter_pixels():
                used += 1
                frame = Frame(pixels=pixels, index=state.frames, frame_number=used,
                              t_s=run.start_s + run.frame_offsets_s[used - 1], run=run)
                event = self.pipeline.process(frame, state)
                if late:
                    event["out_of_order"] = True
                if not study.events.has(run.sop_instance_uid, used):
                    try:
                        study.events.append(event)
                    except OSError as exc:  # a full disk: the dose of the rest still counts
                        if not write_failed:
                            log.error("study %s: events not written (%s)", study.uid, exc)
                            self._output_error()
                        write_failed = True
        except DamagedPixelDataError as exc:
            log.warning("study %s: frames not shown: %s", study.uid, exc)
            note = f" (frames 1-{used} of {run.n_frames} used)" if used else ""
            study.rejected.append(Rejection.of(run.path, exc, note))
            # the frames it lost were exposed all the same: their dose, from the header
            count_lost(state, run, used + 1)

    def _write_summary(self, study: _LiveStudy) -> None:
        """The study's own summary in its spool folder, always; and the ``summary_path`` given
        (the study updated last: meant for one study at a time), as a copy of it."""
        summary = self._summary_of(study)
        for path in (study.summary_path, self._summary_path):
            if path is None:
                continue
            with self._summary_lock(study, path):
                summary.update(self._counts(study))  # as of now: one may have come
                try:
                    write_json(path, summary)
                except OSError:
                    log.exception("study %s: summary cannot be written to %s", study.uid, path)
                    self._output_error()

    def summary(self, study_uid: str) -> dict:
        """The study's summary as processed so far (docs/contract.md §3 keys plus receiver
        counts); of a study no longer held in memory, the one last written."""
        with self._studies_lock:
            study = self._studies.get(study_uid)
        if study is None or (study.done == 0 and study.state.processed):  # not rebuilt yet
            path = self.spool.study_dir(study_uid) / SUMMARY_NAME
            return json.loads(path.read_text(encoding="utf-8"))
        return self._summary_of(study)

    def _summary_of(self, study: _LiveStudy) -> dict:
        view = Study(study.uid, tuple(study.runs), tuple(study.rejected), tuple(study.dose_reports))
        summary = build_summary(view, study.pipeline_state, list(study.rejected))
        summary.update({
            "instances": study.done,
            **self._counts(study),
            "out_of_order_runs": study.out_of_order_runs,
            "receive_latency_ms": latency_summary(study.receive_to_event_ms),
        })
        return summary

    @staticmethod
    def _counts(study: _LiveStudy) -> dict:
        return {"duplicates": study.state.duplicates, "whole_copies": study.state.whole_copies}

    def receive_latencies_ms(self) -> dict[str, list[float]]:
        """Per study, instance stored → its last event written, in ms (this process only)."""
        with self._studies_lock:
            return {uid: list(s.receive_to_event_ms) for uid, s in self._studies.items()}

    # Shutdown --------------------------------------------------------------------------------
    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued instance is processed; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout=timeout_s)

    def close(self) -> None:
        """Refuse what comes from now on, let the instances being stored finish (a receiver's
        association aborted at the end of its drain may still be inside :meth:`store`; its
        study could not be queued once the pool is shut down), finish queued work, write every
        study's summary, close the events files."""
        with self._idle:
            self._closing = True
            self._idle.wait_for(lambda: self._admitting == 0)
        self.wait_idle()
        self._executor.shutdown(wait=True)
        self.pipeline.close()
        with self._studies_lock:
            studies = list(self._studies.values())
        for study in studies:
            if study.state_unsaved:
                with study.lock:
                    self._save_progress(study, final=True)
            if study.done:
                self._write_summary(study)
            self._close_own_events(study)
        if self._shared_events is not None:
            self._close_events(self._shared_events)

    def _close_own_events(self, study: _LiveStudy) -> None:
        """Close the study's events file unless it is the shared one (--events)."""
        if study.events is not self._shared_events:
            self._close_events(study.events)

    def _close_events(self, events: EventLog) -> None:
        try:
            events.close()
        except OSError as exc:
            log.error("%s: not closed cleanly (%s)", events.path, exc)
            self._output_error()
