"""The ``sifluoro dose`` command: ``sifluoro dose summary PATH... [--json]``.

``add_dose_parser(subparsers)`` plugs it into the main CLI (``sifluoro/cli.py``).
"""
from __future__ import annotations

import argparse
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


def add_dose_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``dose`` (with its ``summary`` subcommand) to an argparse subparsers object."""
    dose = subparsers.add_parser("dose", help="radiation dose: summaries of RDSRs and image studies")
    sub = dose.add_subparsers(dest="dose_command", required=True)
    p = sub.add_parser("summary", help="dose of each study under PATH (RDSRs and/or images)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="RDSR/image files or folders")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per study per line (DESIGN §4)")
    p.set_defaults(func=_summary)
    return dose

