"""``sifluoro audit ingest|report`` and ``sifluoro batch-replay``.

``add_audit_parser(subparsers)`` plugs both commands into the main CLI (``sifluoro/cli.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from datetime import date
from pathlib import Path

from sifluoro.argtypes import budget_ms, number
from sifluoro.errors import ConfigError

DEFAULT_DB = "sqlite:///sifluoro-dose.db"


def _settings(args):
    from sifluoro.audit.settings import AuditSettings, read_link_key

    key = read_link_key(args.link_key_file) if getattr(args, "link_key_file", None) else None
    wait_s = getattr(args, "lock_wait_s", None)
    return AuditSettings(patient_link_key=key,
                         outlier_factor=getattr(args, "outlier_factor", None) or AuditSettings.outlier_factor,
                         lock_wait_s=AuditSettings.lock_wait_s if wait_s is None else wait_s)


@contextlib.contextmanager
def _client(args):
    if not (args.dask or args.scheduler):
        yield None
        return
    if not getattr(args, "verbose", False):  # Dask's INFO lines are progress, not results
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    from sifluoro.audit.distributed import dask_client

    with dask_client(args.scheduler) as client:
        from sifluoro.audit._dask_quiet import QuietPydicom

        client.register_plugin(QuietPydicom())  # as this process does (sifluoro/quiet.py)
        yield client


def _ingest(args) -> int:
    from sifluoro.audit.distributed import DaskMapper
    from sqlalchemy.exc import OperationalError

    from sifluoro.audit.ingest import ProcessMapper, db_reason, ingest, serial_mapper
    from sifluoro.model import counted, first_few
    from sifluoro.outfiles import check_some_input_exists
    from sifluoro.quiet import quiet_pydicom_warnings

    check_some_input_exists(tuple(args.paths))  # before the registry file is made
    settings = _settings(args)
    with _client(args) as client:
        if client is not None:
            mapper = DaskMapper(client)
        else:
            mapper = (ProcessMapper(args.workers, initializer=quiet_pydicom_warnings)
                      if args.workers > 1 else serial_mapper)
        try:
            result = ingest(args.paths, args.db, settings=settings, mapper=mapper,
                            progress=not args.quiet and sys.stderr.isatty())
        except OperationalError as exc:  # locked, gone away: the batches written so far stay
            print(f"sifluoro: the registry could not be written ({db_reason(exc)}); the studies "
                  "written before stay; run the ingest again", file=sys.stderr)
            return 1
    # an archive holds notes, exports and thumbnails beside its studies: those are counted,
    # not listed one by one as faults to fix (--json lists every file)
    not_dicom = [r for r in result.rejected if r.not_dicom]
    older = [r for r in result.rejected if r.error == "DuplicateInstanceError"]
    for r in result.rejected:
        if not r.not_dicom and r.error != "DuplicateInstanceError":
            print(f"sifluoro: not taken {r.file}: {r.reason}", file=sys.stderr)
    if not_dicom:
        print(f"sifluoro: {len(not_dicom)} file(s) passed over, not DICOM: "
              f"{first_few(r.file for r in not_dicom)}", file=sys.stderr)
    if older:
        print(f"sifluoro: {len(older)} file(s) passed over, another copy of an instance being "
              f"used (a whole one before one cut short, then the newer): "
              f"{first_few(r.file for r in older)}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict()))
    elif not args.quiet:
        rate = result.parsed / result.elapsed_s if result.elapsed_s else 0.0
        dupes = f"{counted(result.duplicates, 'older copy', 'older copies')} of an instance, " \
            if result.duplicates else ""
        print(f"{counted(result.files, 'file')}: {counted(result.reports, 'dose report')}, "
              f"{counted(result.images, 'image run')}, {result.unchanged} unchanged, {dupes}"
              f"{result.not_taken} not taken; {counted(result.studies_new, 'study', 'studies')} "
              f"new, {result.studies_updated} updated in {result.elapsed_s:.1f} s "
              f"({rate:.0f} files/s)")
    return 0 if result.files and len(result.rejected) < result.files else 2


def _report(args) -> int:
    from sqlalchemy.engine import make_url

    from sifluoro.audit.report import write_report
    from sifluoro.audit.schema import registry_url
    from sifluoro.model import counted
    from sifluoro.outfiles import check_folder_writable

    if args.start and args.end and args.start > args.end:
        raise ConfigError(f"--from {args.start} is after --to {args.end}: no study can be in "
                          "that range")
    url = make_url(registry_url(args.db))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not Path(url.database).is_file():  # a typo made an empty registry
        raise ConfigError(f"--db {args.db}: no registry there (make it with `sifluoro audit "
                          "ingest`)")
    made = not args.out.exists()
    check_folder_writable(out=args.out)  # before the work, not after it
    written = write_report(args.db, args.out, start=args.start, end=args.end,
                           procedure=args.procedure, settings=_settings(args))
    if not written.studies:
        if made:
            args.out.rmdir()  # made empty by the check above
        print(f"sifluoro: no study in the registry matches{_selection(args)}: no report written",
              file=sys.stderr)
    elif not args.quiet:
        print(f"{counted(written.studies, 'study', 'studies')}"
              + (f" ({written.unknown_dose} of unknown dose: fluoroscopy time only)"
                 if written.unknown_dose else "") + ", "
              f"{counted(written.groups, 'procedure/device group')}, "
              f"{counted(written.outliers, 'outlier')} -> {written.html}")
    if args.procedure and not written.procedures:
        from sifluoro.audit.report import procedure_counts
        from sifluoro.audit.schema import open_registry

        engine = open_registry(args.db)
        try:
            present = procedure_counts(engine)
        finally:
            engine.dispose()
        listed = "; ".join(f"{label} ({n})" for label, n in sorted(present.items())) or "none"
        print(f"sifluoro: no study has procedure {args.procedure!r}; the registry's procedure "
              f"labels (studies): {listed}", file=sys.stderr)
    return 0 if written.studies else 2


def _selection(args) -> str:
    """The report's selection as the command line gave it (" --from 2030-01-01"), or ""."""
    parts = [f"--from {args.start}" if args.start else "", f"--to {args.end}" if args.end else "",
             f"--procedure {args.procedure!r}" if args.procedure else ""]
    return "".join(f" {p}" for p in parts if p)


def _batch_replay(args) -> int:
    from sifluoro.audit.distributed import batch_replay
    from sifluoro.outfiles import check_folder_writable

    check_folder_writable(out=args.out)
    failures = 0
    with _client(args) as client:
        for name, summary, code in batch_replay(args.cases_dir, args.out, client=client,
                                                budget_ms=args.budget_ms, stages=args.stages):
            failures += code != 0
            contrast = (summary["contrast_state"] if "contrast" in summary.get("stages", ())
                        else "not assessed")  # a stage that did not run says nothing
            print(f"{name}: {summary['frames']} frames, contrast {contrast}, "
                  f"{len(summary['rejected_files'])} rejected")
    return 1 if failures else 0


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _dask_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dask", action="store_true", help="run on Dask (a local cluster of 2 worker "
                   "processes unless --scheduler is given)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="Dask scheduler to use (implies --dask)")


def add_audit_parser(subparsers) -> argparse.ArgumentParser:
    from sifluoro.stages import REPLAY_STAGES, add_stages_argument

    """Add ``audit`` (subcommands ``ingest``, ``report``) and ``batch-replay`` to ``subparsers``."""
    audit = subparsers.add_parser("audit", help="dose registry: ingest RDSRs and image studies, "
                                  "DRL-style reports")
    sub = audit.add_subparsers(dest="audit_command", required=True)

    p = sub.add_parser("ingest", help="take every RDSR and X-ray image study under PATH into the registry")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL",
                   help="SQLAlchemy URL or SQLite file (default %(default)s); "
                        "PostgreSQL: postgresql+psycopg://user@host/db")
    p.add_argument("--workers", type=int, default=2, help="parsing processes without Dask "
                   "(default %(default)s)")
    p.add_argument("--link-key-file", metavar="FILE", help="secret key (a text line, e.g. "
                   "secrets.token_hex(32), or raw bytes, e.g. head -c 32 /dev/urandom): store "
                   "HMAC-SHA256 of the Patient ID to link a patient's studies (nothing is stored "
                   "without it)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--lock-wait-s", type=number(least=0.0), metavar="S",
                   help="how long to wait for another ingest's batch to commit (SQLite; "
                        "default 600)")
    p.add_argument("-q", "--quiet", action="store_true")
    _dask_options(p)
    p.set_defaults(func=_ingest)

    p = sub.add_parser("report", help="per procedure and device: median, 75th percentile, outliers, "
                       "monthly trend (HTML, CSV, PNG)")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL",
                   help="the registry ingest wrote (default %(default)s)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--from", dest="start", type=_iso_date, metavar="YYYY-MM-DD")
    p.add_argument("--to", dest="end", type=_iso_date, metavar="YYYY-MM-DD")
    p.add_argument("--procedure", metavar="P", help="only this procedure: its label or the "
                   "study description as the device writes it (case and punctuation ignored)")
    p.add_argument("--outlier-factor", type=number(above=0.0), metavar="F",
                   help="outlier above F x the group's 75th percentile (default 1.5)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_report)

    p = subparsers.add_parser("batch-replay", help="replay every case under CASES into RESULTS/<case>/ "
                              "(serially, or on Dask)")
    p.add_argument("cases_dir", type=Path, metavar="CASES")
    p.add_argument("--out", type=Path, required=True, metavar="RESULTS")
    p.add_argument("--budget-ms", type=budget_ms, metavar="MS", help="per-frame latency budget for "
                   "image work (default: as sifluoro replay); inf (no deadline) makes results "
                   "independent of machine load and, with two or more stages, overlaps "
                   "consecutive frames")
    add_stages_argument(p, REPLAY_STAGES)
    _dask_options(p)
    p.set_defaults(func=_batch_replay)
    return audit

