"""Command line: ``sifluoro replay|simulate|evaluate|demo ...``."""
from __future__ import annotations

import argparse
import logging
import sys

from sifluoro.config import Settings
from sifluoro.errors import InputError, SifluoroError


def _replay(args) -> int:
    from sifluoro.replay import format_summary, replay

    settings = Settings(latency_budget_ms=args.budget_ms)
    result = replay(args.inputs, events_path=args.events, summary_path=args.summary,
                    settings=settings, study_uid=args.study)
    if not args.quiet:
        print(format_summary(result.summary))
    if result.exit_code:
        print("sifluoro: no frame could be processed", file=sys.stderr)
    return result.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sifluoro", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="replay a recorded study: events.jsonl and summary.json")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM files or folders of one study")
    p.add_argument("--events", required=True, metavar="EVENTS.jsonl")
    p.add_argument("--summary", required=True, metavar="SUMMARY.json")
    p.add_argument("--study", metavar="UID", help="the study to replay when the input holds several")
    p.add_argument("--budget-ms", type=float, default=Settings().latency_budget_ms,
                   help="per-frame latency budget for image work (default %(default)s ms)")
    p.add_argument("-q", "--quiet", action="store_true", help="print no summary")
    p.set_defaults(func=_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except InputError as exc:
        print(f"sifluoro: {exc}", file=sys.stderr)
        return 2
    except SifluoroError as exc:
        print(f"sifluoro: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
