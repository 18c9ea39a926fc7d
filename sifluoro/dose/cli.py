"""The ``sifluoro dose`` command: ``sifluoro dose summary PATH... [--json]`` and
``sifluoro dose psd RDSR... [--pyskindose]``.

``add_dose_parser(subparsers)`` plugs it into the main CLI (``sifluoro/cli.py``).
"""
from __future__ import annotations

import argparse
import os
import sys



def _summary(args) -> int:
    from sifluoro.config import DoseSettings
    from sifluoro.dose.summary import json_lines, summarize, table

    studies, rejected = summarize(args.paths, settings=DoseSettings())
    if args.json:
        sys.stdout.write(json_lines(studies))
        for r in rejected:
            print(f"sifluoro: rejected {r.file}: {r.reason}", file=sys.stderr)
    else:
        print(table(studies, rejected))
    if not studies:
        print("sifluoro: no dose report nor X-ray image found", file=sys.stderr)
        return 2
    return 0


def _psd(args) -> int:
    from sifluoro.acquire.dicom_reader import iter_input_files
    from sifluoro.dose.rdsr_read import read_rdsr
    from sifluoro.dose.skin import estimate_peak_skin_dose, pyskindose_peak_skin_dose
    from sifluoro.errors import InputError
    from sifluoro.model import counted

    status = 0
    print("peak skin dose ESTIMATES (mGy); not a measurement")
    paths = []
    for given in args.rdsrs:  # a folder: the dose reports in it (as dose summary walks one)
        if not os.path.isdir(given):
            paths.append(given)
            continue
        found = [str(p) for p in iter_input_files([given]) if _is_report(p)]
        if not found:
            print(f"sifluoro: {given}: no dose report in the folder", file=sys.stderr)
            status = 2
        paths.extend(found)
    for path in paths:
        try:
            report = read_rdsr(path)
        except InputError as exc:
            print(f"sifluoro: {exc}", file=sys.stderr)
            status = 2
            continue
        est = estimate_peak_skin_dose(report.events)
        kerma = sum(e.air_kerma_mgy or 0.0 for e in report.events)
        # the report's own total (what dose summary and the registry show), and the events'
        # sum the estimate is made of: they differ by the device's rounding of each event
        total = ("unknown" if "air_kerma_mgy" in report.unknown_totals()
                 else f"{report.air_kerma_mgy:.2f} mGy")
        if not est.events:  # no number: 0.00 would be copied into a follow-up list
            print(f"{path}: unknown (none of its {len(report.events)} events gives Ka,r; "
                  f"Ka,r total {total})")
            continue
        n = est.events_without_kerma
        lower = (f"; {counted(n, 'event')} without Ka,r left out: a lower bound"
                 if est.events_without_kerma else "")
        line = (f"{path}: {est.psd_mgy:.2f} (Ka,r total {total}; events' Ka,r {kerma:.2f} mGy, "
                f"{est.events} events in {len(est.patches)} projection(s){lower})")
        if args.pyskindose:
            try:
                line += f"; pyskindose {pyskindose_peak_skin_dose(path):.2f}"
            except ImportError:
                line += "; pyskindose not installed (pip install pyskindose==25.1.1)"
            except Exception as exc:  # pyskindose's own limits (geometry it cannot handle)
                why = " ".join(str(exc).split())[:160]
                line += f"; pyskindose failed ({type(exc).__name__}{': ' + why if why else ''})"
        print(line)
    return status


def _is_report(path) -> bool:
    from sifluoro.acquire.dicom_reader import read_header
    from sifluoro.dose.rdsr_read import is_dose_report

    try:
        return is_dose_report(read_header(path))
    except Exception:  # not DICOM, damaged: not a report to estimate from
        return False


def add_dose_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``dose`` (with its ``summary`` subcommand) to an argparse subparsers object."""
    dose = subparsers.add_parser("dose", help="radiation dose: summaries of RDSRs and image studies")
    sub = dose.add_subparsers(dest="dose_command", required=True)
    p = sub.add_parser("summary", help="dose of each study under PATH (RDSRs and/or images)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="RDSR/image files or folders")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per study per line (docs/contract.md §4)")
    p.set_defaults(func=_summary)
    p = sub.add_parser("psd", help="peak skin dose ESTIMATE per RDSR (see sifluoro/dose/skin.py)")
    p.add_argument("rdsrs", nargs="+", metavar="RDSR", help="X-Ray Radiation Dose SR files, or folders holding them")
    p.add_argument("--pyskindose", action="store_true",
                   help="also pyskindose's estimate (optional dependency)")
    p.set_defaults(func=_psd)
    return dose

