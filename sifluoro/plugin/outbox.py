"""A persistent DICOM outbox: instances wait on disk until a PACS answered success for them.

Layout::

    OUTBOX/pending/<SOPInstanceUID>.dcm   waiting to be sent (complete files only)
    OUTBOX/sent/<SOPInstanceUID>.dcm      the PACS answered Success (0x0000) or a Warning (0xBxxx)
    OUTBOX/failed/<SOPInstanceUID>.dcm    the PACS refused it for good (0xA9xx, 0xCxxx, no
                                          presentation context); ``.reason.txt`` beside it says why
    OUTBOX/.lock                          held while a sender works, so two processes never
                                          send the same file twice at once

A file is written under a temporary name, fsynced and renamed into ``pending/``; it is moved to
``sent/`` only after the C-STORE response said so. Anything else — the PACS down, the
association refused or aborted, a timeout, ``0xA7xx`` out of resources — leaves it in
``pending/`` for the next attempt, in this process (retries with a doubling wait) or in the
next one: the folder is the state, so a restart loses nothing. ``failed/`` is never retried on
its own (the PACS would refuse again); :meth:`Outbox.requeue_failed` puts it back once the
cause is fixed.

Logs name SOP classes and SOP Instance UIDs, never a patient.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.status import code_to_category

from sifluoro.acquire.spool import check_uid
from sifluoro.errors import ConfigError, InputError

log = logging.getLogger(__name__)

SUFFIX = ".dcm"
PART_SUFFIX = ".part"
#: a part file older than this is a write a crash cut short (a write takes seconds at most)
STALE_PART_S = 3600.0
MAX_RETRY_WAIT_S = 60.0


@dataclass(frozen=True)
class PacsSettings:
    """Where and how to send.

    Attributes
    ----------
    ae_title, host, port : str, str, int
        The PACS's Storage SCP.
    calling_ae_title : str
        Our AE title, as the PACS knows us.
    retries : int
        Further attempts after the first, per :meth:`Outbox.send_pending` call.
    retry_wait_s : float
        Wait before the first retry; it doubles each time (at most 60 s).
    timeout_s : float
        Connection, association and DIMSE timeout.
    """

    ae_title: str
    host: str
    port: int
    calling_ae_title: str = "SIFLUORO"
    retries: int = 3
    retry_wait_s: float = 2.0
    timeout_s: float = 30.0

    def __post_init__(self):
        for name in ("ae_title", "calling_ae_title"):
            value = getattr(self, name)
            if not value.strip() or len(value) > 16 or "\\" in value or not value.isprintable():
                raise ConfigError(f"pacs.{name} must be 1-16 printable characters without '\\', "
                                  f"got {value!r}")
        if not self.host:
            raise ConfigError("pacs.host is empty; give the PACS's host name or address")
        if not 0 < self.port < 65536:
            raise ConfigError(f"pacs.port must be 1-65535, got {self.port}")
        if self.retries < 0 or self.retry_wait_s < 0 or not self.timeout_s > 0:
            raise ConfigError(f"pacs.retries and pacs.retry_wait_s must be >= 0 and pacs.timeout_s "
                              f"> 0, got {self.retries}, {self.retry_wait_s}, {self.timeout_s}")

    def retry_wait_before(self, attempt: int) -> float:
        """The wait after attempt ``attempt`` (1-based) failed, s: doubling, at most
        :data:`MAX_RETRY_WAIT_S`."""
        return min(self.retry_wait_s * 2 ** (attempt - 1), MAX_RETRY_WAIT_S)

    def patience_s(self) -> float:
        """How long every attempt and the waits between them may take, s (one file each)."""
        return (self.timeout_s * (self.retries + 1)
                + sum(self.retry_wait_before(k) for k in range(1, self.retries + 1)))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class SendReport:
    """What one :meth:`Outbox.send_pending` call did."""

    sent: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    pending: int = 0
    attempts: int = 0
    busy: bool = False  # another sender held the outbox


class Outbox:
    """The outbox folder (created when missing). Safe to share between threads and processes."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.pending_dir = self.folder / "pending"
        self.sent_dir = self.folder / "sent"
        self.failed_dir = self.folder / "failed"
        try:
            for d in (self.pending_dir, self.sent_dir, self.failed_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"outbox {self.folder}: cannot create it ({exc.strerror}); give a "
                              "writable folder") from exc
        # a write cut short by a crash; a recent part may be another process's write under
        # way (the outbox is shared), which removing it would lose
        stale = time.time() - STALE_PART_S
        for part in self.pending_dir.glob(f".*{PART_SUFFIX}"):
            try:
                if part.stat().st_mtime < stale:
                    part.unlink(missing_ok=True)
            except OSError:
                pass  # gone meanwhile: its writer finished
        self._sending: set = set()  # associations in progress, from their request (abort)
        self._cut_off: set = set()  # those of them abort cut
        self._sending_lock = threading.Lock()

    def abort(self) -> None:
        """Cut the connections of the associations this outbox has in progress (a PACS that
        never answers, or a port that drops the connect, would hold them, and the process's
        exit, for its timeout); what they did not send stays pending, and what the PACS
        confirmed before is in ``sent/``. An association that begins meanwhile is not cut:
        call again until the sender has returned (:meth:`OutboxSender.stop` does)."""
        with self._sending_lock:
            sending = list(self._sending)
            self._cut_off.update(sending)
        for assoc in sending:
            _cut(assoc)

    # -- filling ---------------------------------------------------------------------------
    def put(self, ds: Dataset) -> Path:
        """Write ``ds`` (with file meta) into ``pending/`` atomically; return its path."""
        uid = check_uid(ds.get("SOPInstanceUID"), tag="(0008,0018) SOPInstanceUID")
        final = self.pending_dir / f"{uid}{SUFFIX}"
        fd, tmp = tempfile.mkstemp(prefix=f".{uid}.", suffix=PART_SUFFIX, dir=self.pending_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                ds.save_as(fh, enforce_file_format=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.pending_dir)
        log.info("outbox: queued %s %s", _sop_name(ds.SOPClassUID), uid)
        return final

    def put_file(self, path: str | Path) -> Path:
        """Queue an existing DICOM file (e.g. an RDSR written by replay)."""
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise InputError(f"cannot be read as DICOM ({exc}); queue a DICOM Part 10 file",
                             path=path) from exc
        return self.put(ds)

    # -- state -----------------------------------------------------------------------------
    def pending(self) -> list[Path]:
        """Files waiting, oldest first."""
        return _listing(self.pending_dir)

    def sent(self) -> list[Path]:
        return _listing(self.sent_dir)

    def failed(self) -> list[Path]:
        return _listing(self.failed_dir)

    def requeue_failed(self) -> int:
        """Move every refused file back to ``pending/`` (after fixing the cause)."""
        moved = 0
        for path in self.failed():
            os.replace(path, self.pending_dir / path.name)
            (path.parent / f"{path.name}.reason.txt").unlink(missing_ok=True)
            moved += 1
        _fsync_dir(self.pending_dir)
        return moved

    # -- sending ---------------------------------------------------------------------------
    def send_pending(self, pacs: PacsSettings, *, stop: threading.Event | None = None) -> SendReport:
        """C-STORE every pending file, retrying transient failures ``pacs.retries`` times.

        Returns at once with ``busy=True`` when another sender (thread or process) holds the
        outbox. ``stop`` cuts the waits between retries short.
        """
        report = SendReport()
        stop = stop or threading.Event()
        lock_fd = os.open(self.folder / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report.busy = True
                report.pending = len(self.pending())
                return report
            while self.pending():
                report.attempts += 1
                transient = self._send_once(pacs, self.pending(), report)
                if not transient or report.attempts > pacs.retries or stop.is_set():
                    break
                wait_s = pacs.retry_wait_before(report.attempts)
                log.info("outbox: %d file(s) not delivered to %s; retrying in %.1f s",
                         transient, pacs, wait_s)
                if stop.wait(wait_s):
                    break
        finally:
            os.close(lock_fd)  # releases the lock
        report.pending = len(self.pending())
        if report.pending:
            log.warning("outbox: %d file(s) stay in %s until %s takes them", report.pending,
                        self.pending_dir, pacs)
        return report

    def send_until_stopped(self, pacs: PacsSettings, stop: threading.Event) -> SendReport:
        """:meth:`send_pending` on a worker thread, so that a set ``stop`` (Ctrl-C) cuts the
        association in progress at once instead of after the PACS timeout. Returns once the
        worker has, so that ``sent/`` holds all the PACS confirmed."""
        outcome: list = []

        def work() -> None:
            try:
                outcome.append(self.send_pending(pacs, stop=stop))
            except BaseException as exc:  # raised again on the caller's thread
                outcome.append(exc)
        worker = threading.Thread(target=work, name="sifluoro-outbox", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                if stop.is_set():  # again each round: an association may begin after a cut
                    self.abort()
                worker.join(0.1)
        finally:  # a second Ctrl-C: cut still, or pynetdicom's thread holds the exit
            give_up = time.monotonic() + 5.0
            while worker.is_alive() and time.monotonic() < give_up:
                self.abort()
                worker.join(0.1)
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _send_once(self, pacs: PacsSettings, files: list[Path], report: SendReport) -> int:
        """One association for ``files``; returns how many are still pending for a transient
        reason."""
        datasets: list[tuple[Path, Dataset]] = []  # headers only; pixels are read one by one
        for path in files:
            try:
                datasets.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
            except Exception as exc:  # a damaged file would block the queue forever
                self._refuse(path, f"unreadable: {exc}", report)
        if not datasets:
            return 0
        ae = AE(ae_title=pacs.calling_ae_title)
        ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = pacs.timeout_s
        for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                                         for _, ds in datasets}):
            syntaxes = list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
            ae.add_requested_context(sop_class, syntaxes)
        opened: list = []

        def requested(event) -> None:  # before the connect, which a black-holed port holds up
            opened.append(event.assoc)
            with self._sending_lock:
                self._sending.add(event.assoc)
        try:
            return self._send_on(ae, pacs, datasets, report, [(evt.EVT_REQUESTED, requested)])
        finally:
            with self._sending_lock:
                self._sending.difference_update(opened)
                self._cut_off.difference_update(opened)

    def _send_on(self, ae: AE, pacs: PacsSettings, datasets: list, report: SendReport,
                 handlers: list) -> int:
        assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title, evt_handlers=handlers)
        if not assoc.is_established:
            refused = {str(c.abstract_syntax) for c in assoc.rejected_contexts}
            if assoc.is_aborted and refused and not assoc.accepted_contexts:
                # it answered and takes none of these SOP classes: no retry will change that
                for path, ds in datasets:
                    if str(ds.SOPClassUID) in refused:
                        self._refuse(path, f"{pacs} accepts no presentation context for "
                                     f"{_sop_name(ds.SOPClassUID)}", report)
                return sum(str(ds.SOPClassUID) not in refused for _, ds in datasets)
            with self._sending_lock:
                cut = assoc in self._cut_off
            why = ("was cut off by a stop" if cut else
                   "rejected the association (its reason in pynetdicom's lines above; a wrong "
                   "called AE title, or a calling AE it does not know, is rejected for good: "
                   "check --pacs AE@HOST:PORT and --calling-ae)" if assoc.is_rejected
                   else "is unreachable")
            log.warning("outbox: PACS %s %s", pacs, why)
            return len(datasets)
        transient = 0
        try:
            for k, (path, ds) in enumerate(datasets):
                with self._sending_lock:
                    cut = assoc in self._cut_off
                # cut: pynetdicom may not have seen the closed socket yet, and a C-STORE sent on
                # it would wait the whole DIMSE timeout for its answer (review s18 F2)
                if cut or not assoc.is_established:
                    transient += len(datasets) - k
                    break
                name = f"{_sop_name(ds.SOPClassUID)} {ds.SOPInstanceUID}"
                try:
                    full = pydicom.dcmread(path)
                except Exception as exc:
                    self._refuse(path, f"unreadable: {exc}", report)
                    continue
                try:
                    status = assoc.send_c_store(full, msg_id=k + 1)
                except ValueError as exc:  # no accepted presentation context for this SOP class
                    self._refuse(path, f"{pacs} accepts no presentation context for it ({exc})",
                                 report)
                    continue
                except RuntimeError:  # the association ended (cut by abort) since the check
                    transient += len(datasets) - k
                    break
                code = status.get("Status") if status else None
                if code is None:
                    log.warning("outbox: no C-STORE response for %s from %s", name, pacs)
                    transient += 1
                    continue
                category = code_to_category(code)
                comment = _without_patient(str(status.get("ErrorComment", "") or ""), full)
                if category in ("Success", "Warning"):
                    if category == "Warning":
                        log.warning("outbox: %s stored by %s with warning 0x%04X %s", name, pacs,
                                    code, comment)
                    os.replace(path, self.sent_dir / path.name)
                    report.sent.append(path.name)
                    log.info("outbox: sent %s to %s", name, pacs)
                elif 0xA700 <= code <= 0xA7FF:  # out of resources: the PACS may recover
                    log.warning("outbox: %s answered 0x%04X (out of resources) %s for %s", pacs,
                                code, comment, name)
                    transient += 1
                else:
                    self._refuse(path, f"{pacs} answered 0x{code:04X} ({category}) {comment}".strip(),
                                 report)
        finally:
            if assoc.is_established:
                assoc.release()
            _fsync_dir(self.sent_dir)
        return transient

    def _refuse(self, path: Path, reason: str, report: SendReport) -> None:
        os.replace(path, self.failed_dir / path.name)
        (self.failed_dir / f"{path.name}.reason.txt").write_text(reason + "\n", encoding="utf-8")
        _fsync_dir(self.failed_dir)
        report.failed.append((path.name, reason))
        log.error("outbox: %s moved to %s: %s", path.name, self.failed_dir, reason)


def _without_patient(text: str, ds) -> str:
    """``text`` (a PACS's ErrorComment, logged and kept in ``.reason.txt``) with the patient's
    name components and ID as sent replaced by ``[patient]``: some PACS echo them in their
    refusals, and no patient name or ID goes into logs."""
    words = {str(ds.get("PatientID", "") or "").strip()}
    for part in re.split(r"[\^=]", str(ds.get("PatientName", "") or "")):
        words.add(part.strip())
    for word in sorted((w for w in words if len(w) >= 2), key=len, reverse=True):
        text = re.sub(rf"(?<![0-9a-z]){re.escape(word)}(?![0-9a-z])", "[patient]", text,
                      flags=re.IGNORECASE)  # whole words: "Doe" is not in "does"
    return text


class OutboxSender:
    """A background thread that sends the outbox now (:meth:`kick`) and every ``interval_s``.

    Started by the live commands so that what a previous process left pending is delivered,
    and so that a PACS that comes back later still gets everything.
    """

    def __init__(self, outbox: Outbox, pacs: PacsSettings, *, interval_s: float = 30.0):
        self.outbox, self.pacs, self.interval_s = outbox, pacs, interval_s
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sifluoro-outbox", daemon=True)

    def start(self) -> "OutboxSender":
        self._kick.set()
        self._thread.start()
        return self

    def kick(self) -> None:
        """Send now (new files were queued)."""
        self._idle.clear()
        self._kick.set()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until a send round found nothing more to do; True when it did."""
        return self._idle.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0, *, abort: bool = False) -> None:
        """Stop after the current send (``abort``: cut it; its files stay pending). Returns
        once the thread has, so that ``sent/`` holds all the PACS confirmed (or after
        ``timeout_s``)."""
        self._stop.set()
        self._kick.set()
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            if abort:  # again each round: an association may begin after a cut
                self.outbox.abort()
            self._thread.join(min(0.1, max(deadline - time.monotonic(), 0.0)))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(self.interval_s)
            if self._stop.is_set():
                return
            self._kick.clear()
            if self.outbox.pending():
                try:
                    self.outbox.send_pending(self.pacs, stop=self._stop)
                except Exception:  # the next round tries again; the files stay pending
                    log.exception("outbox: sending to %s failed", self.pacs)
            if not self._kick.is_set():
                self._idle.set()


def _cut(assoc) -> None:
    """Shut the association's socket down. That wakes every wait of the thread sending on it —
    the TCP connect, the association request, a C-STORE response — each of which then reads as
    a failure; pynetdicom's ``abort`` leaves the request to the ACSE timeout and itself waits
    for a hanging connect."""
    raw = getattr(assoc.dul.socket, "socket", None)
    if raw is not None:
        with contextlib.suppress(OSError):  # not connected yet, or closed meanwhile
            raw.shutdown(socket.SHUT_RDWR)


def _listing(folder: Path) -> list[Path]:
    found = []
    for path in folder.glob(f"*{SUFFIX}"):
        try:
            found.append((path.stat().st_mtime_ns, path.name, path))
        except FileNotFoundError:  # moved by a sender meanwhile
            continue
    return [path for _, _, path in sorted(found)]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sop_name(uid) -> str:
    return UID(str(uid)).name or str(uid)
