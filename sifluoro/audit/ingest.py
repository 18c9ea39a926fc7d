"""``sifluoro audit ingest``: folders of RDSRs and image studies → the dose registry.

Files are hashed in the main process; files whose content hash the registry already holds
are skipped (so a re-run after an interruption resumes where it stopped). The others are
parsed in chunks by a mapper (in-process, a process pool, or Dask workers: the parse is the
costly part) and written by the main process alone, ``settings.batch_studies`` studies per
transaction: a study is in the registry whole, or not at all.

A study's dose is computed as ``sifluoro dose summary`` does (:mod:`sifluoro.dose.summary`):
its dose reports merged, the reports winning over its images; image-only studies accumulated
from the run headers. When a study already in the registry receives new or changed files, its
earlier files are read again from their recorded paths and the study is recomputed whole.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from sifluoro.acquire.dicom_reader import (copy_rank, iter_input_files, order_runs, read_header,
                                          without_copied_runs)
from sifluoro.audit.parse import IMAGE, RDSR, REJECTED, ParsedFile, file_sha256, parse_chunk, parse_file
from sifluoro.audit.schema import (
    AlertRow,
    DeviceRow,
    EventRow,
    InstanceRow,
    PlaneRow,
    ScopeRow,
    StudyRow,
    open_registry,
)
from sifluoro.audit.settings import AuditSettings
from sifluoro.config import DoseSettings
from sifluoro.dicom_time import wall
from sifluoro.dose.accumulate import accumulate_study, alert_steps, kerma_alert_levels
from sifluoro.dose.records import StudyDose
from sifluoro.errors import DuplicateInstanceError
from sifluoro.dose.summary import merge_reports, with_runs_outside, with_srdl_reached
from sifluoro.model import Device, Rejection, Study

log = logging.getLogger(__name__)

# mapper(function, chunks) → results in chunk order
Mapper = Callable[[Callable, Iterable[list[str]]], Iterator[list[ParsedFile]]]

STUDY_FIELDS = ("dap_gycm2", "air_kerma_mgy", "fluoro_time_s", "fluoro_dap_gycm2",
                "fluoro_air_kerma_mgy", "acquisition_dap_gycm2", "acquisition_air_kerma_mgy",
                "acquisition_time_s")
EVENT_FIELDS = ("event_uid", "kind", "plane", "start", "dap_gycm2", "air_kerma_mgy", "dose_source",
                "kvp", "tube_current_ma", "pulse_width_ms", "pulse_rate_per_s", "n_pulses",
                "irradiation_duration_s", "exposure_time_ms", "exposure_mas", "filter_al_mm",
                "filter_cu_mm", "primary_angle_deg", "secondary_angle_deg", "sid_mm",
                "source_to_isocenter_mm", "collimated_field_area_cm2", "reference_point", "protocol")
PLANE_FIELDS = ("plane", "dap_gycm2", "air_kerma_mgy", "fluoro_dap_gycm2", "fluoro_air_kerma_mgy",
                "acquisition_dap_gycm2", "acquisition_air_kerma_mgy", "fluoro_time_s",
                "acquisition_time_s", "n_radiographic_frames", "reference_point")


@dataclass
class IngestResult:
    """What an ingest did. ``rejected`` lists every file it could not take, with the reason.

    The files partition into ``reports`` and ``images`` (parsed and used), ``unchanged``
    (recorded before, not read again), ``duplicates`` (older copies of an instance another
    file holds, rejected as such) and the other rejected files (:attr:`not_taken`)."""

    files: int = 0
    unchanged: int = 0
    parsed: int = 0
    reports: int = 0
    images: int = 0
    duplicates: int = 0
    studies_new: int = 0
    studies_updated: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def not_taken(self) -> int:
        """Rejected files other than duplicates (each file once)."""
        return len({r.file for r in self.rejected}) - self.duplicates

    def as_dict(self) -> dict:
        return {"files": self.files, "unchanged": self.unchanged, "parsed": self.parsed,
                "reports": self.reports, "images": self.images, "duplicates": self.duplicates,
                "not_taken": self.not_taken, "studies_new": self.studies_new,
                "studies_updated": self.studies_updated,
                "rejected": [r.as_dict() for r in self.rejected],
                "elapsed_s": round(self.elapsed_s, 3)}


def serial_mapper(fn: Callable, chunks: Iterable) -> Iterator:
    """Parse in this process."""
    return map(fn, chunks)


class ProcessMapper:
    """Parse on a local process pool of ``workers`` processes (results in order), each
    started with ``initializer()`` when given (a spawned process does not inherit this one's
    warning filters)."""

    def __init__(self, workers: int, initializer: Callable[[], None] | None = None):
        self.workers = workers
        self.initializer = initializer

    def __call__(self, fn: Callable, chunks: Iterable) -> Iterator:
        with ProcessPoolExecutor(max_workers=self.workers, initializer=self.initializer) as pool:
            yield from pool.map(fn, chunks)


def ingest(paths: Iterable[str | Path], db: str | Engine, *, settings: AuditSettings | None = None,
           mapper: Mapper | None = None, progress: bool = False) -> IngestResult:
    """Ingest every RDSR and X-ray image under ``paths`` into the registry at ``db``.

    Parameters
    ----------
    paths : iterable of paths
        Files and folders (searched recursively, hidden entries skipped).
    db : str or Engine
        Registry URL (or SQLite file path), or an engine from :func:`open_registry`.
    settings : AuditSettings, optional
        Patient link key, transaction size, chunk size, dose levels.
    mapper : callable, optional
        How chunks of files are parsed: :func:`serial_mapper` (default),
        :class:`ProcessMapper`, or :func:`sifluoro.audit.distributed.dask_mapper`. The result
        does not depend on it.
    progress : bool
        Show a progress bar (tqdm, on stderr).

    Returns
    -------
    IngestResult
    """
    from functools import partial

    settings = settings or AuditSettings()
    engine = open_registry(db, lock_wait_s=settings.lock_wait_s) if isinstance(db, str) else db
    mapper = mapper or serial_mapper
    t0 = time.perf_counter()
    result = IngestResult()
    with engine.connect() as conn:
        known = set(conn.execute(select(InstanceRow.sha256)).scalars())
    # absolute: a later ingest from another working directory reads the recorded files
    # again (abspath, not resolve: a mount point keeps the name it was given)
    files = [os.path.abspath(p) for p in iter_input_files(paths)]
    result.files = len(files)
    bar = _progress_bar(len(files), progress)
    todo: list[str] = []
    unchanged: dict[str, str] = {}  # sha256 -> path of the files already recorded
    for path in files:
        try:
            digest = file_sha256(path)
        except OSError as exc:
            result.rejected.append(Rejection(path, f"cannot be read ({exc.strerror or exc})"))
            bar.update(1)
            continue
        if digest in known:
            result.unchanged += 1
            bar.update(1)
            unchanged[digest] = path
        else:
            todo.append(path)
    if unchanged:
        _record_new_paths(engine, unchanged)
    chunks = [todo[i:i + settings.chunk_files] for i in range(0, len(todo), settings.chunk_files)]
    writer = _Writer(engine, settings)
    pending: dict[str, list[ParsedFile]] = {}
    claimed: dict[str, ParsedFile] = {}  # SOP Instance UID -> the file of this ingest used
    kinds: dict[str, str] = {}  # path -> kind of the files parsed
    cut: list[ParsedFile] = []  # image files cut inside their header
    seen: set[str] = set()  # the Study UIDs of the other files
    for parsed in mapper(partial(parse_chunk, link_key=settings.patient_link_key), chunks):
        for item in parsed:
            result.parsed += 1
            if item.kind == REJECTED:
                result.rejected.append(item.rejection or Rejection(item.path, item.reason))
                continue
            kinds[item.path] = item.kind
            other = claimed.get(item.sop_instance_uid)
            if other is not None and other.path != item.path:
                # two copies of one instance (an export and its corrected re-export): the
                # newer file is used; the older, once written, is moved out of its study
                keep, drop = (item, other) if _preferred(item.path, other.path) else (other, item)
                result.rejected.append(_older_copy(drop.path, keep.path))
                if drop is item:
                    continue
                mine = pending.get(other.study_instance_uid, [])
                mine[:] = [f for f in mine if f is not other]
                cut = [f for f in cut if f is not other]
            claimed[item.sop_instance_uid] = item
            if item.run is not None and item.run.study_uid_cut:
                cut.append(item)  # its Study UID may be cut too: placed once all are seen
                continue
            seen.add(item.study_instance_uid)
            pending.setdefault(item.study_instance_uid, []).append(item)
        bar.update(len(parsed))
        while len(pending) >= settings.batch_studies:
            uids = list(pending)[:settings.batch_studies]
            writer.write_safely({u: pending.pop(u) for u in uids}, result)
    for item in cut:
        item = _in_its_whole_study(item, seen, engine)
        pending.setdefault(item.study_instance_uid, []).append(item)
    if pending:
        writer.write_safely(pending, result)
    bar.close()
    # a parsed file rejected later (an older copy, a run the study cannot order) is not used
    rejected = {r.file for r in result.rejected}
    result.reports = sum(k == RDSR and p not in rejected for p, k in kinds.items())
    result.images = sum(k == IMAGE and p not in rejected for p, k in kinds.items())
    result.duplicates = len({r.file for r in result.rejected if r.error == DuplicateInstanceError.__name__})
    result.elapsed_s = time.perf_counter() - t0
    return result


def _in_its_whole_study(item: ParsedFile, seen: set[str], engine: Engine) -> ParsedFile:
    """A file cut inside its header may end inside its StudyInstanceUID: when the UID read
    is the start of exactly one study's (among this ingest's other files and the registry's)
    and no whole file names it, the file is that study's, as ``replay`` and ``dose summary``
    take it (a phantom study counted the procedure twice, review s19 U1)."""
    uid = item.study_instance_uid
    if not uid or uid in seen:
        return item
    with engine.connect() as conn:
        recorded = set(conn.execute(select(StudyRow.study_instance_uid)
                                    .where(StudyRow.study_instance_uid.like(uid + "%"))).scalars())
    if uid in recorded:
        return item
    whole = {u for u in seen | recorded if u.startswith(uid) and u != uid}
    if len(whole) != 1:
        return item
    (whole_uid,) = whole
    log.warning("%s: cut inside its header, its (0020,000D) StudyInstanceUID read as the start of "
                "%s's: taken as that study's", item.path, whole_uid)
    return replace(item, study_instance_uid=whole_uid,
                   run=replace(item.run, study_instance_uid=whole_uid))


def _record_new_paths(engine: Engine, unchanged: dict[str, str], chunk: int = 5000) -> None:
    """Files already recorded (by content, ``sha256 -> path``) found at a new place while the
    recorded one is gone (an archive moved or re-mounted) are read from there from now on: a
    study is recomputed from its recorded files when a new file of it comes."""
    digests = list(unchanged)
    with Session(engine) as conn, conn.begin():
        for i in range(0, len(digests), chunk):
            rows = conn.execute(select(InstanceRow.id, InstanceRow.sha256, InstanceRow.path)
                                .where(InstanceRow.sha256.in_(digests[i:i + chunk]))).all()
            moved = [{"id": r.id, "path": unchanged[r.sha256]} for r in rows
                     if r.path != unchanged[r.sha256] and not Path(r.path).exists()]
            if moved:
                conn.execute(update(InstanceRow), moved)


def _progress_bar(total: int, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="file", disable=not show, leave=False, mininterval=0.5)


class _Writer:
    """Writes batches of studies, one transaction per batch."""

    def __init__(self, engine: Engine, settings: AuditSettings):
        self.engine = engine
        self.settings = settings
        with engine.connect() as conn:
            # keyed as new devices are (a row written before texts were capped still matches)
            self.devices = {tuple(_device_text(v) for v in (r.manufacturer, r.model,
                                                            r.serial_number, r.station_name)): r.id
                            for r in conn.execute(select(DeviceRow))}

    def write_safely(self, batch: dict[str, list[ParsedFile]], result: IngestResult) -> None:
        """:meth:`write_batch`; when the database refuses the batch (a value it cannot hold),
        each study is written alone, and a study it refuses is rejected with its files, named
        (the batch's other studies used to be lost with it, on every run again)."""
        try:
            self.write_batch(batch, result)
            return
        except DBAPIError as exc:
            if not _refused_value(exc):  # a lock, a server gone: the caller says it
                raise
            if len(batch) == 1:
                uid, files = next(iter(batch.items()))
                reason = f"the registry refused study {uid}: {db_reason(exc)}"
                log.warning("%s", reason)
                result.rejected += [Rejection(f.path, reason) for f in files]
                return
        for uid, files in batch.items():
            self.write_safely({uid: files}, result)

    def write_batch(self, batch: dict[str, list[ParsedFile]], result: IngestResult) -> None:
        """Write the studies of ``batch`` in one transaction: all of them, or none."""
        new_devices: dict[tuple, int] = {}
        counts = [0, 0]
        rejected: list[Rejection] = []
        with Session(self.engine) as conn, conn.begin():
            _lock_registry(conn)
            scopes = _scopes(conn, batch)
            batch = self._with_scope_studies(conn, batch, scopes)
            existing = dict(conn.execute(select(StudyRow.study_instance_uid, StudyRow.id)
                                         .where(StudyRow.study_instance_uid.in_(list(batch)))).all())
            # a file now in another study (its Study UID corrected) leaves its old study,
            # which is recomputed from what it has left
            left, older = self._studies_left(conn, existing, batch)
            if older:  # older copies of instances recorded from a newer file elsewhere
                rejected += [_older_copy(f.path, newer) for f, newer in older]
                dropped = {id(f) for f, _ in older}
                batch = {uid: [f for f in files if id(f) not in dropped] for uid, files in batch.items()}
                # a study that only got older copies has nothing new: it is not recomputed
                # (re-ingesting an archive with duplicates "updated" it every time)
                for uid in [u for u, files in batch.items() if not files]:
                    del batch[uid]
                    existing.pop(uid, None)
            batch = {**batch, **{uid: [] for uid in left}}
            existing.update({uid: sid for uid, (sid, _) in left.items()})
            earlier, gone, moved = self._earlier_files(conn, existing, batch, scopes)
            if moved:  # recorded files corrected in place: they join their new study now
                batch = {**batch, **{uid: batch.get(uid, []) + [f for f, _ in files]
                                     for uid, files in moved.items()}}
                joined = dict(conn.execute(
                    select(StudyRow.study_instance_uid, StudyRow.id)
                    .where(StudyRow.study_instance_uid.in_([u for u in moved if u not in existing]))).all())
                existing.update(joined)
                more, more_gone, further = self._earlier_files(conn, joined, batch, scopes)
                for uid, files in further.items():  # moved twice: one step per ingest
                    log.warning("%d file(s) recorded for a study that a corrected file joins now "
                                "name study %s; ingest them again", len(files), uid)
                earlier.update(more)
                gone.update(more_gone)
                for uid, files in moved.items():
                    if uid in gone:  # its new study is kept as it was: it stays in its old one
                        stay = {id(f) for f, _ in files}
                        batch[uid] = [f for f in batch[uid] if id(f) not in stay]
                        for f, old_uid in files:
                            earlier.setdefault(old_uid, []).append(f)
                            log.warning("%s now names study %s, which cannot be recomputed (%s): "
                                        "it stays in study %s until then", f.path, uid, gone[uid],
                                        old_uid)
            # a file moving out of a study that cannot be recomputed would count twice: it
            # waits, like the study's own new files, until the missing file is back
            held = {sop: uid for uid, (_, sops) in left.items() if uid in gone for sop in sops}
            studies, emptied = [], []
            for uid, files in batch.items():
                for f in (files if uid in gone else [f for f in files if f.sop_instance_uid in held]):
                    owner = held.get(f.sop_instance_uid, uid)  # the study that cannot be recomputed
                    rejected.append(Rejection(f.path, f"{gone[owner]}, recorded for study {owner}, "
                                              "cannot be read: that study is kept as it was; "
                                              "ingest again with that file in place"))
                if uid in gone:  # recomputed without it, the study would lose its dose
                    existing.pop(uid, None)
                    continue
                files = [f for f in files if f.sop_instance_uid not in held]
                if not files and uid not in existing:
                    continue
                files = _dedupe(files + earlier.get(uid, []))
                dose, rejections = study_dose(uid, files, self.settings.dose)
                rejected += rejections
                if dose is not None:
                    studies.append((uid, files, dose))
                elif uid in left:
                    emptied.append(existing.pop(uid))
            sops = [f.sop_instance_uid for _, files, _ in studies for f in files]
            if existing or emptied:
                ids = list(existing.values()) + emptied
                for table in (EventRow, PlaneRow, AlertRow, InstanceRow, ScopeRow):
                    conn.execute(delete(table).where(table.study_id.in_(ids)))
            if emptied:
                conn.execute(delete(StudyRow).where(StudyRow.id.in_(emptied)))
            if sops:
                conn.execute(delete(InstanceRow).where(InstanceRow.sop_instance_uid.in_(sops)))
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            new_rows, updates = [], []
            for uid, files, dose in studies:
                row = _study_row(uid, files, dose, now)
                row["device_id"] = self._device_id(conn, dose.device, new_devices)
                if uid in existing:
                    updates.append({"id": existing[uid], **row})
                else:
                    new_rows.append(row)
            if updates:
                conn.execute(update(StudyRow), updates)
            ids = dict(existing)
            if new_rows:
                for uid, sid in conn.execute(insert(StudyRow).returning(
                        StudyRow.study_instance_uid, StudyRow.id, sort_by_parameter_order=True), new_rows):
                    ids[uid] = sid
            instances, events, planes, alerts, covered = [], [], [], [], []
            for uid, files, dose in studies:
                sid = ids[uid]
                covered += [{"study_id": sid, "scope_study_instance_uid": s}
                            for s in sorted(_scopes_named(uid, files))]
                instances += [{"study_id": sid, "sop_instance_uid": f.sop_instance_uid, "kind": f.kind,
                               "path": f.path, "sha256": f.sha256, "size_bytes": f.size_bytes}
                              for f in files]
                events += _event_rows(sid, dose)
                planes += [{"study_id": sid, **{k: getattr(p, k) for k in PLANE_FIELDS},
                            **{k: None for k in dose.unknown_totals(p.plane)}}
                           for p in dose.planes]
                alerts += [{"study_id": sid, **a} for a in alert_rows(dose, self.settings.dose)]
            for table, rows in ((InstanceRow, instances), (EventRow, events), (PlaneRow, planes),
                                (AlertRow, alerts), (ScopeRow, covered)):
                if rows:
                    conn.execute(insert(table), rows)
            counts = [len(new_rows), len(updates)]
        # only now is the batch durable: take its device ids and counts
        self.devices.update(new_devices)
        result.studies_new += counts[0]
        result.studies_updated += counts[1]
        result.rejected += rejected

    @staticmethod
    def _studies_left(conn: Session, existing: dict[str, int], batch: dict[str, list[ParsedFile]]
                      ) -> tuple[dict[str, tuple[int, set[str]]], list[tuple[ParsedFile, str]]]:
        """Studies outside the batch holding instances that the batch's files now put in
        another study: study UID -> (id, those SOP Instance UIDs); and the batch's files that
        are older copies of a recorded instance (in any study), recorded from a newer file at
        another path (with that path): those are not used."""
        by_sop = {f.sop_instance_uid: f for files in batch.values() for f in files}
        sops = list(by_sop)
        in_batch = set(existing.values())
        out: dict[str, tuple[int, set[str]]] = {}
        older: list[tuple[ParsedFile, str]] = []
        for i in range(0, len(sops), 5000):
            for uid, sid, sop, path in conn.execute(
                    select(StudyRow.study_instance_uid, StudyRow.id, InstanceRow.sop_instance_uid,
                           InstanceRow.path)
                    .join(InstanceRow, InstanceRow.study_id == StudyRow.id)
                    .where(InstanceRow.sop_instance_uid.in_(sops[i:i + 5000]))):
                incoming = by_sop[sop]
                if path != incoming.path and not _preferred(incoming.path, path):
                    older.append((incoming, path))  # in its own study or another one
                elif sid not in in_batch:
                    out.setdefault(uid, (sid, set()))[1].add(sop)
        return out, older

    def _with_scope_studies(self, conn: Session, batch: dict[str, list[ParsedFile]],
                            scopes: dict[str, str]) -> dict[str, list[ParsedFile]]:
        """``batch`` with the files of each study that a report covers (``scopes``: scope
        study UID -> the report's study UID) in the report's study, as ``dose summary`` takes
        them: the batch's, and those recorded apart before the report came (their study,
        left empty, is then removed). A scope study with a recorded file that cannot be read
        stays apart (moved in part, its dose would count twice)."""
        if not scopes:
            return batch
        recorded: dict[str, list[str]] = {}
        for uid, path in conn.execute(
                select(StudyRow.study_instance_uid, InstanceRow.path)
                .join(InstanceRow, InstanceRow.study_id == StudyRow.id)
                .where(StudyRow.study_instance_uid.in_(list(scopes)))
                .order_by(InstanceRow.path)):
            recorded.setdefault(uid, []).append(path)
        out = {uid: list(files) for uid, files in batch.items()}
        for scope, owner in scopes.items():
            files = [parse_file(p, self.settings.patient_link_key) for p in recorded.get(scope, [])]
            unread = next((f.path for f in files if f.kind == REJECTED), None)
            if unread is not None:
                log.warning("%s, recorded for study %s, cannot be read: that study stays apart "
                            "from study %s, whose report covers it", unread, scope, owner)
                continue
            files += out.pop(scope, [])
            if files:
                out.setdefault(owner, [])[:0] = [_in_study(f, owner) for f in files]
        return out

    def _earlier_files(self, conn: Session, existing: dict[str, int],
                       batch: dict[str, list[ParsedFile]], scopes: dict[str, str]
                       ) -> tuple[dict[str, list[ParsedFile]], dict[str, str],
                                  dict[str, list[ParsedFile]]]:
        """Files recorded earlier for studies of this batch that the batch does not carry;
        per study, a recorded file that can no longer be read (one is enough); and recorded
        files that now name another study (corrected in place), by their new study. A file
        of a study that a report covers (``scopes``) is the report's study's.

        A file that is gone or unreadable makes its study impossible to recompute."""
        if not existing:
            return {}, {}, {}
        uid_of = {sid: uid for uid, sid in existing.items()}
        carried = {f.sop_instance_uid for files in batch.values() for f in files}
        out: dict[str, list[ParsedFile]] = {}
        gone: dict[str, str] = {}
        moved: dict[str, list[ParsedFile]] = {}
        rows = conn.execute(select(InstanceRow.study_id, InstanceRow.sop_instance_uid, InstanceRow.path)
                            .where(InstanceRow.study_id.in_(list(uid_of)))
                            .order_by(InstanceRow.path)).all()
        for sid, sop, path in rows:
            if sop in carried or uid_of[sid] in gone:
                continue
            parsed = parse_file(path, self.settings.patient_link_key)
            if parsed.kind == REJECTED:
                log.warning("%s, recorded for study %s: %s; the study is kept as it was",
                            path, uid_of[sid], parsed.reason)
                gone[uid_of[sid]] = path
            elif scopes.get(parsed.study_instance_uid) == uid_of[sid]:
                out.setdefault(uid_of[sid], []).append(_in_study(parsed, uid_of[sid]))
            elif parsed.study_instance_uid != uid_of[sid]:
                log.info("%s, recorded for study %s, now names study %s: it moves there",
                         path, uid_of[sid], parsed.study_instance_uid)
                moved.setdefault(parsed.study_instance_uid, []).append((parsed, uid_of[sid]))
            else:
                out.setdefault(uid_of[sid], []).append(parsed)
        # a study kept as it was keeps its moved files too (they would count twice)
        joining = {uid: [(f, old) for f, old in files if old not in gone] for uid, files in moved.items()}
        return out, gone, {uid: files for uid, files in joining.items() if files}

    def _device_id(self, conn: Session, device: Device, new: dict[tuple, int]) -> int:
        key = tuple(_device_text(v) for v in (device.manufacturer, device.model,
                                              device.serial_number, device.station_name))
        found = self.devices.get(key) or new.get(key)
        if found is None:  # another ingest may have written it since this one started
            found = conn.execute(select(DeviceRow.id).where(
                *(getattr(DeviceRow, name) == value for name, value in zip(
                    ("manufacturer", "model", "serial_number", "station_name"), key)))
            ).scalar()
            if found is not None:
                new[key] = found
        if found is None:
            found = conn.execute(insert(DeviceRow).returning(DeviceRow.id), [dict(zip(
                ("manufacturer", "model", "serial_number", "station_name"), key))]).scalar_one()
            new[key] = found
        return found


def _refused_value(exc: DBAPIError) -> bool:
    """Whether the database refused a value of the batch (a study it cannot hold), not the
    batch as such: a data exception, a constraint, or a value over a limit of the server's
    (PostgreSQL's SQLSTATE classes 22, 23 and 54: an index row over 2704 bytes is 54000, which
    SQLAlchemy calls an OperationalError and stopped the whole ingest, on every run; review
    s24 #4)."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    state = getattr(exc.orig, "sqlstate", None) or ""
    return state[:2] in ("22", "23", "54")


#: the characters of a device's name, model, serial number or station kept in the registry: a
#: report's Device Observer Name is free text of any length, and the four are one unique index
#: (PostgreSQL's rows of it hold 2704 bytes at most: 4 x 150 characters of 4 bytes fit)
DEVICE_TEXT_CHARS = 150


def _device_text(value: str) -> str:
    value = (value or "").replace("\x00", "")  # an image header's NUL (PostgreSQL refuses it)
    return value if len(value) <= DEVICE_TEXT_CHARS else value[:DEVICE_TEXT_CHARS - 1] + "…"


#: pg_advisory_xact_lock key of a registry batch ("SIFL")
_BATCH_LOCK_KEY = 0x5349464C


def _lock_registry(conn: Session) -> None:
    """Hold the registry for this batch's transaction, so that two ingests at the same time
    take turns per batch (each then sees the other's studies and devices) instead of one
    failing on a duplicate row: an advisory lock on PostgreSQL, the write lock on SQLite
    (another writer waits for it: the driver's busy timeout)."""
    if conn.get_bind().dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _BATCH_LOCK_KEY})
    else:  # a write, so that SQLite takes its write lock before this batch reads anything
        conn.execute(text("UPDATE schema_version SET version = version WHERE 0"))


def db_reason(exc: DBAPIError) -> str:
    """The database's own message, first line (SQLAlchemy appends its statement and a link)."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _preferred(path: str, than: str) -> bool:
    """Whether the file at ``path`` is used before the one at ``than``, two files of one
    instance: a whole one before one cut short, then the newer, then the longer, as ``replay``
    and ``dose summary`` choose (:func:`~sifluoro.acquire.dicom_reader.copy_rank`; a newer
    copy cut short replaced the whole one, unsaid: user review s20 P2). A file that cannot be
    read any more comes last."""
    return _rank(path) > _rank(than)


def _rank(path: str) -> tuple[bool, int, int]:
    try:
        return copy_rank(read_header(path), Path(path))
    except Exception:  # gone, unreadable, cut inside its header: any copy is better
        return (False, 0, 0)


def _older_copy(path: str, used: str) -> Rejection:
    return Rejection(path, f"(0008,0018) SOPInstanceUID: the same instance as {used}, which is "
                           "used (a whole copy before one cut short, then the newer)",
                     DuplicateInstanceError.__name__, "(0008,0018) SOPInstanceUID")


def _scopes_named(uid: str, files: list[ParsedFile]) -> set[str]:
    """The studies that the reports among ``files`` (of study ``uid``) cover besides it."""
    return {f.report.scope_study_instance_uid for f in files
            if f.kind == RDSR and f.report is not None
            and f.report.scope_study_instance_uid not in (None, "", uid)}


def _scopes(conn: Session, batch: dict[str, list[ParsedFile]]) -> dict[str, str]:
    """Scope study UID -> the study whose report covers it, for the studies of ``batch``: named
    by its reports, or recorded (a report of an earlier ingest covering a study of the batch,
    or covering a study the batch carries a report of). A study that covers another is not
    itself folded (one step, as ``dose summary``)."""
    named: dict[str, str] = {}
    for uid, files in sorted(batch.items()):
        for scope in sorted(_scopes_named(uid, files)):
            named.setdefault(scope, uid)
    uids = list(batch)
    for i in range(0, len(uids), 5000):
        part = uids[i:i + 5000]
        for scope, uid in conn.execute(
                select(ScopeRow.scope_study_instance_uid, StudyRow.study_instance_uid)
                .join(StudyRow, StudyRow.id == ScopeRow.study_id)
                .where(ScopeRow.scope_study_instance_uid.in_(part) | StudyRow.study_instance_uid.in_(part))
                .order_by(StudyRow.study_instance_uid)):
            named.setdefault(scope, uid)
    owners = set(named.values())
    return {scope: uid for scope, uid in named.items() if scope not in owners}


def _in_study(f: ParsedFile, uid: str) -> ParsedFile:
    """``f`` counted in study ``uid`` (a file of a study that ``uid``'s report covers)."""
    if f.study_instance_uid == uid:
        return f
    return replace(f, study_instance_uid=uid,
                   run=f.run if f.run is None else replace(f.run, study_instance_uid=uid))


def _dedupe(files: list[ParsedFile]) -> list[ParsedFile]:
    """One file per SOP Instance UID (the last seen: a changed file replaces the recorded one)."""
    by_sop: dict[str, ParsedFile] = {}
    for f in files:
        by_sop[f.sop_instance_uid] = f
    return sorted(by_sop.values(), key=lambda f: (f.path, f.sop_instance_uid))


def study_dose(uid: str, files: list[ParsedFile], settings: DoseSettings
               ) -> tuple[StudyDose | None, list[Rejection]]:
    """The study's dose from its files, as ``sifluoro dose summary`` computes it."""
    reports = [f.report for f in files if f.kind == RDSR and f.report is not None]
    runs, rejected = without_copied_runs(
        [f.run for f in files if f.kind == IMAGE and f.run is not None])
    if reports:  # with the runs made outside the reports' time (after a report was sent)
        return with_srdl_reached(with_runs_outside(merge_reports(reports), runs, settings),
                                 settings), rejected
    ordered = order_runs(runs)
    if not ordered:
        return None, rejected
    study = Study(uid, tuple(ordered))
    dose = accumulate_study(study, settings).study_dose(uid, study.device)
    return with_srdl_reached(dose, settings), rejected


def _study_row(uid: str, files: list[ParsedFile], dose: StudyDose, now: datetime) -> dict:
    summary = dose.summary()
    known = [f for f in files if f.procedure_known]
    labelled = known or [f for f in files if f.procedure != "unspecified"] or files
    dates = [f.study_date for f in files if f.study_date is not None]
    keys = [f.patient_key for f in files if f.patient_key]
    row = {"study_instance_uid": uid, "procedure": labelled[0].procedure,
           "study_date": min(dates) if dates else None, "patient_key": keys[0] if keys else None,
           "source": dose.source, "dose_source": summary["dose_source"],
           "n_events": len(dose.events), "n_planes": len(dose.planes),
           "planes_from_report": dose.planes_from_report,
           "srdl_exceeded": ",".join(dose.srdl_exceeded), "ingested_at": now}
    # an unknown total is NULL (left out of SQL aggregates), never a 0
    row.update({k: None if summary[k] is None else float(summary[k]) for k in STUDY_FIELDS})
    return row


def _event_rows(study_id: int, dose: StudyDose) -> list[dict]:
    # the device's wall clock, as before UTC offsets were kept: PostgreSQL turned an aware
    # time into the session's zone, SQLite stored its clock (review s24b #7)
    return [{"study_id": study_id, "seq": i, **{k: getattr(e, k) for k in EVENT_FIELDS},
             "start": e.start and wall(e.start)} for i, e in enumerate(dose.events)]


def alert_rows(dose: StudyDose, settings: DoseSettings) -> list[dict]:
    """The dose levels a study reached, as :class:`DoseAccumulator` would have raised them.

    NCRP Report 168 air kerma notification levels (first, then every step), each multiple of
    the fluoroscopy-time alert, and each substantial radiation dose level (SRDL) reached.
    """
    kerma, dap, fluoro_s = dose.air_kerma_mgy, dose.dap_gycm2, dose.fluoro_time_s
    # counted as the accumulator counts them: an absurd dose (1e200 mGy) stepped through the
    # levels one by one filled the memory (review s17)
    out = [{"kind": "air_kerma", "level": level, "unit": "mGy", "value": kerma}
           for level in kerma_alert_levels(0.0, kerma, settings)]
    if settings.fluoro_time_alert_s > 0:
        for k in alert_steps(1, int(fluoro_s // settings.fluoro_time_alert_s) + 1):
            out.append({"kind": "fluoro_time", "level": k * settings.fluoro_time_alert_s,
                        "unit": "s", "value": fluoro_s})
    levels = {"air_kerma": (settings.srdl_air_kerma_mgy, "mGy", kerma),
              "dap": (settings.srdl_dap_gycm2, "Gy·cm²", dap),
              "fluoro_time": (settings.srdl_fluoro_time_s, "s", fluoro_s)}
    for name in dose.srdl_exceeded:
        level, unit, value = levels[name]
        out.append({"kind": f"srdl_{name}", "level": level, "unit": unit, "value": value})
    return out
