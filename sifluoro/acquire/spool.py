"""The receiver's spool: paths from validated UIDs, atomic durable writes, a byte quota, and
a small state file per study.

Layout::

    SPOOL/<StudyInstanceUID>/<SOPInstanceUID>.dcm      one file per accepted instance
    SPOOL/<StudyInstanceUID>/<SOPInstanceUID>.whole.dcm  its whole copy, when the first was cut
                                                       short (kept beside it; replay uses it)
    SPOOL/<StudyInstanceUID>/.<SOPInstanceUID>.*.part  an instance being written (temporary)
    SPOOL/<StudyInstanceUID>/state.json                arrival order, how many were processed

An instance is written under a temporary name in its study folder, fsynced, renamed into place
and the folder fsynced, so a file with the final name is always complete. Temporary files left
by a crash are removed when the spool is opened. Nothing here knows about DICOM networking.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sifluoro.errors import ConfigError, InputError, SifluoroError

log = logging.getLogger(__name__)

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UID_MAX_CHARS = 64
STATE_NAME = "state.json"
PART_SUFFIX = ".part"
WHOLE_COPY_SUFFIX = ".whole.dcm"
COPY_CHUNK_BYTES = 1 << 20
#: at most this often, a refusal for the quota first counts the spool's files again
REMEASURE_S = 5.0
LOCK_NAME = ".lock"
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class InvalidUIDError(InputError):
    """A UID that is not a valid DICOM UID; it is never used to build a path."""


class SpoolFullError(SifluoroError):
    """The spool cannot take an instance: quota reached, disk full, or instance too large."""


class SpoolInUseError(ConfigError):
    """Another receiver works on this spool (two would process the same studies twice)."""


def check_uid(value: object, *, tag: str) -> str:
    """Return ``value`` as a UID string if it is a valid DICOM UID, else raise.

    Parameters
    ----------
    value : object
        The element value as received.
    tag : str
        Tag and keyword for the message, e.g. ``"(0008,0018) SOPInstanceUID"``.

    Raises
    ------
    InvalidUIDError
        Empty, longer than 64 characters, or not digits separated by single dots. Such a
        value could escape the spool folder (``../``) and is refused.
    """
    text = str(value or "")
    if not text or len(text) > UID_MAX_CHARS or not UID_PATTERN.match(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InvalidUIDError(f"{shown!r} is not a valid UID (digits and dots, at most "
                              f"{UID_MAX_CHARS} characters); fix the sender", tag=tag)
    return text


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name, fsync, rename, fsync the folder."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PART_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(Path(tmp))
        raise
    fsync_dir(path.parent)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@dataclass
class StudyState:
    """What the spool remembers of one study between runs of the receiver.

    ``received`` lists SOP Instance UIDs in arrival order (the processing order);
    ``processed`` counts how many of them the pipeline has finished, events and summary
    included. The study is finished when every received instance is processed.
    """

    study_instance_uid: str
    received: list[str] = field(default_factory=list)
    processed: int = 0
    duplicates: int = 0
    whole_copies: int = 0  # whole copies stored beside an instance stored cut short

    @property
    def finished(self) -> bool:
        return self.processed >= len(self.received)

    def as_dict(self) -> dict:
        return {"study_instance_uid": self.study_instance_uid, "received": list(self.received),
                "processed": self.processed, "duplicates": self.duplicates,
                "whole_copies": self.whole_copies,
                "finished": self.finished}


class Spool:
    """A folder of received instances, one sub-folder per study.

    Parameters
    ----------
    root : Path
        The spool folder (created if missing).
    quota_bytes : int, optional
        Most bytes of instance files the spool may hold (events, summaries and state files
        are not counted). None for no quota beyond the disk itself.
    lock : bool
        Take the spool (:meth:`lock`) before anything in it is touched (the temporary files
        of interrupted writes are removed on opening: another process's would be in flight).

    Raises
    ------
    SpoolInUseError
        With ``lock``, when another process holds the spool.
    """

    def __init__(self, root: str | Path, *, quota_bytes: int | None = None, lock: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.quota_bytes = quota_bytes
        self._lock = threading.Lock()
        self._lock_fd: int | None = None  # the spool's flock (lock)
        self._durable_dirs: set[str] = set()  # study folders whose root entry was fsynced
        self._reserved_bytes = 0
        self._unsettled_bytes = 0  # committed to their final names, not yet settled
        if lock:
            self.lock()
        self._remove_parts()
        self.used_bytes = self._measure()
        self._measured_at = time.monotonic()

    def _remove_parts(self) -> None:
        for study_dir in self.study_dirs():
            for entry in study_dir.iterdir():
                if entry.name.startswith(".") and entry.name.endswith(PART_SUFFIX):
                    log.info("removing %s left by an interrupted write", entry)
                    _unlink_quietly(entry)

    def _measure(self) -> int:
        """Bytes of the complete instances in the spool (what the quota counts)."""
        used = 0
        for study_dir in self.study_dirs():
            try:
                entries = list(study_dir.iterdir())
            except OSError:
                continue  # removed meanwhile
            for entry in entries:
                if entry.suffix == ".dcm" and not entry.name.startswith("."):
                    try:
                        used += entry.stat().st_size
                    except OSError:
                        pass
        return used

    def lock(self) -> None:
        """Take the spool for this process (an exclusive ``flock`` on ``ROOT/.lock``, let go
        by :meth:`unlock` or when the process ends, however it ends).

        Raises
        ------
        SpoolInUseError
            Another process holds it.
        """
        fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolInUseError(f"the spool {self.root} is in use by another receiver; give "
                                  f"each receiver its own --spool") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing lets the flock go
            self._lock_fd = None

    def study_dirs(self) -> list[Path]:
        """Study folders whose names are valid UIDs (anything else in the spool is ignored)."""
        return sorted(p for p in self.root.iterdir() if p.is_dir() and UID_PATTERN.match(p.name))

    def study_dir(self, study_uid: str) -> Path:
        return self.root / check_uid(study_uid, tag="(0020,000D) StudyInstanceUID")

    def instance_path(self, study_uid: str, sop_uid: str) -> Path:
        return self.study_dir(study_uid) / (check_uid(sop_uid, tag="(0008,0018) SOPInstanceUID")
                                            + ".dcm")

    def whole_copy_path(self, study_uid: str, sop_uid: str) -> Path:
        """Where the whole copy of an instance stored cut short is kept: beside it, under a name
        whose stem is no UID, so the live study (its restarts included) goes on with the copy
        it processed, and a replay of the folder takes the whole one (copy_rank)."""
        return self.instance_path(study_uid, sop_uid).with_suffix(WHOLE_COPY_SUFFIX)

    def stored_instances(self, study_uid: str) -> list[str]:
        """SOP Instance UIDs with a complete file in the study folder."""
        folder = self.study_dir(study_uid)
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.dcm") if UID_PATTERN.match(p.stem))

    # Quota ---------------------------------------------------------------------------------
    def reserve(self, nbytes: int) -> None:
        """Claim room for an instance before writing it; raise ``SpoolFullError`` if none."""
        with self._lock:
            if (self.quota_bytes is not None
                    and self.used_bytes + self._reserved_bytes + nbytes > self.quota_bytes
                    and time.monotonic() - self._measured_at >= REMEASURE_S):
                # files may have been removed since (a study sent on and deleted, as the
                # refusal asks): count what is there before refusing, less the files committed
                # but not yet settled (settle adds them)
                self.used_bytes = self._measure() - self._unsettled_bytes
                self._measured_at = time.monotonic()
            if (self.quota_bytes is not None
                    and self.used_bytes + self._reserved_bytes + nbytes > self.quota_bytes):
                raise SpoolFullError(
                    f"spool quota reached: {self.used_bytes + self._reserved_bytes} of "
                    f"{self.quota_bytes} bytes used, instance needs {nbytes}; free space or "
                    "raise --spool-quota-mb")
            self._reserved_bytes += nbytes

    def settle(self, nbytes: int, *, stored: bool) -> None:
        """End a reservation: the bytes now count as used, or are given back."""
        with self._lock:
            self._reserved_bytes -= nbytes
            if stored:
                self.used_bytes += nbytes
                self._unsettled_bytes = max(self._unsettled_bytes - nbytes, 0)

    # Instances -----------------------------------------------------------------------------
    def write_temp(self, study_uid: str, sop_uid: str, data: bytes | Path) -> Path:
        """Write an instance (its bytes, or a file's, copied in chunks) under a temporary name
        in its study folder, durably.

        Raises ``SpoolFullError`` when the disk is full (the partial file is removed).
        """
        folder = self.study_dir(study_uid)
        if folder.name not in self._durable_dirs or not folder.is_dir():  # deleted meanwhile
            # the folder may exist already (the events log makes it) without its entry in the
            # root being on disk yet: once per study and process, make it durable
            folder.mkdir(exist_ok=True)
            fsync_dir(self.root)
            self._durable_dirs.add(folder.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{check_uid(sop_uid, tag='(0008,0018) SOPInstanceUID')}.",
                                   suffix=PART_SUFFIX, dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                if isinstance(data, Path):
                    with open(data, "rb") as source:
                        shutil.copyfileobj(source, fh, COPY_CHUNK_BYTES)
                else:
                    fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            _unlink_quietly(Path(tmp))
            if exc.errno in _FULL_ERRNOS:
                raise SpoolFullError(f"disk full while writing to {folder} ({exc.strerror}); "
                                     "free space in the spool") from exc
            raise
        return Path(tmp)

    def commit(self, tmp: Path, study_uid: str, sop_uid: str, *, whole_copy: bool = False) -> Path:
        """Rename a complete temporary file to its final name (:meth:`whole_copy_path` with
        ``whole_copy``) and make the rename durable."""
        final = (self.whole_copy_path if whole_copy else self.instance_path)(study_uid, sop_uid)
        size = tmp.stat().st_size
        with self._lock:  # a quota re-measure sees the file and knows it is not settled yet
            os.replace(tmp, final)
            self._unsettled_bytes += size
        fsync_dir(final.parent)
        return final

    def uncommit(self, final: Path) -> None:
        """Take back a committed file whose recording failed: removed, and its bytes no longer
        waiting to be settled (they made every later quota re-measure count short; review s22
        F8)."""
        try:
            size = final.stat().st_size
        except OSError:
            size = 0
        with self._lock:
            _unlink_quietly(final)
            self._unsettled_bytes = max(self._unsettled_bytes - size, 0)

    @staticmethod
    def discard(tmp: Path) -> None:
        _unlink_quietly(tmp)

    # Study state ---------------------------------------------------------------------------
    def load_state(self, study_uid: str) -> StudyState:
        """The study's state file, or a fresh state when there is none (or it is unreadable)."""
        path = self.study_dir(study_uid) / STATE_NAME
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return StudyState(study_uid, [check_uid(u, tag="(0008,0018) SOPInstanceUID")
                                          for u in raw.get("received", [])],
                              int(raw.get("processed", 0)), int(raw.get("duplicates", 0)),
                              int(raw.get("whole_copies", 0)))
        except FileNotFoundError:
            return StudyState(study_uid)
        except (ValueError, TypeError, InputError) as exc:
            log.warning("%s is unreadable (%s); the study is processed again from its files",
                        path, exc)
            return StudyState(study_uid)

    def save_state(self, state: StudyState) -> None:
        folder = self.study_dir(state.study_instance_uid)
        folder.mkdir(exist_ok=True)
        atomic_write_bytes(folder / STATE_NAME,
                           (json.dumps(state.as_dict(), indent=1) + "\n").encode("utf-8"))
