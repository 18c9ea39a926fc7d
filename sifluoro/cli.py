"""sifluoro: guidance and dose tracking for fluoroscopy-guided SI-joint injections."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from sifluoro.argtypes import budget_ms, number
from sifluoro.config import Settings
from sifluoro.errors import SifluoroError
from sifluoro.stages import REPLAY_STAGES, add_stages_argument


def _replay(args) -> int:
    from sifluoro.model import first_few
    from sifluoro.outfiles import check_folder_writable, check_some_input_exists, check_writable
    from sifluoro.replay import format_summary, replay
    from sifluoro.stages import make_stages

    check_some_input_exists(tuple(args.inputs))
    check_writable(tuple(args.inputs), events=args.events, summary=args.summary,
                   rdsr=args.rdsr, overlay_mp4=args.overlay_mp4)
    check_folder_writable(overlay_png=args.overlay_png)
    settings = Settings(latency_budget_ms=args.budget_ms)
    result = replay(args.inputs, events_path=args.events, summary_path=args.summary,
                    settings=settings, study_uid=args.study, rdsr_path=args.rdsr,
                    stages=make_stages(args.stages, settings),
                    overlay_png_dir=args.overlay_png, overlay_mp4=args.overlay_mp4)
    read_nothing = not result.summary.get("runs") and not result.summary.get("dose_reports")
    if read_nothing:  # a table of a blank study and zero dose would read as a result
        for r in result.summary.get("rejected_files", []):
            print(f"sifluoro: rejected {r['file']}: {r['reason']}", file=sys.stderr)
    elif not args.quiet:
        print(format_summary(result.summary))
        s = result.summary
        written = [f"{args.events}" + (" (incomplete: events_not_written in the summary)"
                                       if s.get("events_not_written") else ""),
                   args.summary, s.get("rdsr") or (args.rdsr and f"{args.rdsr} (not written: "
                                                   "rdsr_not_written in the summary)"),
                   args.overlay_mp4, args.overlay_png and f"{args.overlay_png}/ (a PNG per frame)"]
        print("outputs    " + "\n           ".join(str(w) for w in written if w))
    if result.exit_code == 2:
        reports = result.summary.get("dose_reports") or []
        print("sifluoro: no frame could be processed" + (
            f"; the inputs hold only dose reports ({first_few(reports)}): read them with "
            "`sifluoro dose summary`"
            if reports and not result.summary.get("runs") else ""), file=sys.stderr)
    return result.exit_code


def _demo(args) -> int:
    from sifluoro.demo import run_demo

    return run_demo(args.out, seed=args.seed, case=args.case, size=args.size, stages=args.stages)


def _simulate(args) -> int:
    from sifluoro.outfiles import check_folder_writable
    from sifluoro.sim.batch import rederive_set, simulate_set

    check_folder_writable(OUTDIR=args.outdir)  # else each worker process fails with a traceback

    if args.truth_from:
        for line in rederive_set(args.truth_from, args.outdir, quick=args.quick,
                                 wrong_level_scouts=args.wrong_level_scouts):
            print(line)
        return 0
    for line in simulate_set(args.outdir, cases=args.cases, seed=args.seed, size=args.size,
                             first_case=args.first_case, workers=args.workers,
                             quick=args.quick, wrong_level_scouts=args.wrong_level_scouts,
                             tight_collimation=args.tight_collimation):
        print(line)
    return 0


def _evaluate(args) -> int:
    from sifluoro.outfiles import check_writable
    from sifluoro.sim.evaluate import evaluate, format_report

    # not after the scoring; evaluate reads only truth.json, events.jsonl and summary.json, so
    # a report kept beside them may be written again
    check_writable(json=args.json)
    report = evaluate(args.cases_dir, args.results_dir)
    if not report["studies"]:
        print(f"sifluoro evaluate: no simulated case (*/truth.json) in {args.cases_dir}",
              file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        from sifluoro.replay import write_json

        write_json(args.json, report)
    return 1 if report["studies_without_results"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sifluoro", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="replay a recorded study: events.jsonl and summary.json")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM files or folders of one study")
    p.add_argument("--events", required=True, metavar="EVENTS.jsonl")
    p.add_argument("--summary", required=True, metavar="SUMMARY.json")
    p.add_argument("--study", metavar="UID", help="the study to replay when the input holds several: its UID, or a "
                   "unique end of it (8 characters or more, as `dose summary` shows it)")
    p.add_argument("--rdsr", metavar="RDSR.dcm", help="also write the study's dose as an X-Ray "
                   "Radiation Dose SR")
    p.add_argument("--overlay-png", type=Path, metavar="DIR",
                   help="write every frame with its overlay as DIR/<index>.png")
    p.add_argument("--overlay-mp4", type=Path, metavar="FILE.mp4",
                   help="write all frames with their overlays as one video")
    p.add_argument("--budget-ms", type=budget_ms, default=Settings().latency_budget_ms,
                   help="per-frame latency budget for image work (default %(default)s ms); "
                        "inf: no deadline, every stage in full, and with two or more stages "
                        "consecutive frames overlap (fastest offline)")
    add_stages_argument(p, REPLAY_STAGES)
    p.add_argument("-q", "--quiet", action="store_true", help="print no summary")
    p.set_defaults(func=_replay)

    p = sub.add_parser("demo", help="simulate one study, replay it, write events, summary and "
                       "annotated PNG/MP4")
    p.add_argument("--out", type=Path, default=Path("demo-output"),
                   help="output folder (default %(default)s)")
    p.add_argument("--seed", type=int, default=2026,
                   help="simulator seed (default %(default)s, the published set's)")
    p.add_argument("--case", type=int, default=10, help="case of that seed (default %(default)s)")
    p.add_argument("--size", type=int, choices=(512, 1024), default=512,
                   help="frame size (default %(default)s)")
    add_stages_argument(p, REPLAY_STAGES)
    p.set_defaults(func=_demo)

    p = sub.add_parser("simulate", help="write simulated studies (DICOM + truth.json) with ground truth")
    p.add_argument("outdir", type=Path, metavar="OUTDIR")
    p.add_argument("--cases", type=number(int, least=1), default=24)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--size", choices=("512", "1024", "mixed"), default="mixed",
                   help="frame size; 'mixed': every third case 1024², the others 512² (default)")
    p.add_argument("--first-case", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="only the end of each study (final needle run and contrast run, one view)")
    p.add_argument("--wrong-level-scouts", action="store_true",
                   help="begin each study with a scout of the wrong level (no joint in the field; "
                        "the rest of the study unchanged): measures lines reported without a joint")
    p.add_argument("--tight-collimation", action="store_true",
                   help="collimate the working view's needle and contrast runs tightly, each needle "
                        "run around the needle as last seen: the tip, advanced between runs, often "
                        "beyond a blade with its shaft in the field (the rest unchanged)")
    p.add_argument("--truth-from", type=Path, metavar="SET",
                   help="render nothing: write OUTDIR/<case>/truth.json with the joint truth of "
                        "the stored SET derived again (its DICOM linked, not copied); give the "
                        "--quick/--wrong-level-scouts SET was made with")
    p.set_defaults(func=_simulate)

    p = sub.add_parser(
        "evaluate", help="score replay results against simulator truth",
        description="Score replay results against the simulator's ground truth: needle tip "
        "error and detection, joint line distance and doubled-line advice, contrast state per "
        "study and per frame, vascular sensitivity, detection delay, and dose (the study's whole "
        "dose, by dose source). Exit status 0, 1 when a case has no results, 2 when CASES holds "
        "no case.")
    p.add_argument("cases_dir", type=Path, metavar="CASES",
                   help="simulated set: one folder per case with truth.json (sifluoro simulate)")
    p.add_argument("results_dir", type=Path, metavar="RESULTS",
                   help="results: RESULTS/<case>/events.jsonl and summary.json (sifluoro "
                   "batch-replay --out)")
    p.add_argument("--json", type=Path, metavar="REPORT.json", help="also write the report as JSON")
    p.set_defaults(func=_evaluate)

    from sifluoro.acquire.receive_cli import add_receive_parser
    from sifluoro.acquire.video_cli import add_video_parser
    from sifluoro.dose.cli import add_dose_parser

    from sifluoro.audit.cli import add_audit_parser
    from sifluoro.plugin.cli import add_plugin_parser

    add_receive_parser(sub)
    add_video_parser(sub)
    add_dose_parser(sub)
    add_audit_parser(sub)
    add_plugin_parser(sub)
    return parser


_IMAGE_COMMANDS = ("replay", "demo", "video", "receive", "batch-replay", "simulate")


def kernels_cached(package_dir: Path = Path(__file__).parent) -> bool:
    """Whether numba's cache holds the image kernels (the register stage's, which every image
    command compiles; numba writes them beside the module). A cache elsewhere
    (``NUMBA_CACHE_DIR``, or numba's user-wide one when the package cannot be written) is
    taken as present: it is not looked for."""
    cache = package_dir / "register" / "__pycache__"
    if os.environ.get("NUMBA_CACHE_DIR") or not os.access(cache if cache.is_dir() else package_dir / "register", os.W_OK):
        return True
    return any(cache.glob("_kernels.*.nbi"))


def main(argv: list[str] | None = None) -> int:
    from sifluoro.quiet import quiet_pydicom_warnings

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_pydicom_warnings()  # logged by pydicom: not printed a second time
    if args.command in _IMAGE_COMMANDS and not getattr(args, "quiet", False) and not kernels_cached():
        print("sifluoro: first run: compiling the image kernels (about 20 s, once; later runs "
              "load them in about a second)", file=sys.stderr)
    try:
        return args.func(args)
    except SifluoroError as exc:  # typed errors name the file/setting at fault: say it, exit 2
        print(f"sifluoro: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output the checks let through (a full disk): one line, not a trace
        logging.getLogger("sifluoro").debug("output failed", exc_info=True)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"sifluoro: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
