"""Score the contrast stage on a simulated evaluation set (DICOM + truth.json per case).

    .venv/bin/python -m benchmarks.eval_contrast /work/evalset [--out DIR] [--json]

Each case is replayed through the pipeline with the contrast stage only (dose runs as always)
into ``OUT/<case>/events.jsonl`` and ``summary.json``, then scored with
:mod:`sifluoro.sim.evaluate`; the contrast section and the per-study outcomes are printed.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from sifluoro.config import Settings
from sifluoro.replay import replay
from sifluoro.sim.evaluate import evaluate
from sifluoro.track.contrast import ContrastStage


def run_set(cases_dir: str | Path, out_dir: str | Path) -> dict:
    """Replay every case of ``cases_dir`` with :class:`ContrastStage`; return the score report."""
    cases_dir, out_dir = Path(cases_dir), Path(out_dir)
    for case_dir in sorted(p for p in cases_dir.iterdir() if (p / "truth.json").exists()):
        replay([case_dir / "dicom"], events_path=out_dir / case_dir.name / "events.jsonl",
               summary_path=out_dir / case_dir.name / "summary.json", stages=[ContrastStage()],
               settings=Settings(latency_budget_ms=1e9))   # accuracy independent of load
    return evaluate(cases_dir, out_dir)


def contrast_lines(rep: dict) -> list[str]:
    c = rep["contrast"]
    lines = [f"studies {rep['studies']}  (frames missing from the outputs: {rep['missing_frames']})"]
    lines += [f"  {k:32s} {v}" for k, v in c.items()]
    wrong = [s for s in rep["per_study"] if not s["correct"]]
    lines.append("  wrong studies: " + (", ".join(f"case{s['case']:03d} truth {s['truth']} -> {s['output']}"
                                                   for s in wrong) or "none"))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", help="folder of case folders (caseNNN/dicom, caseNNN/truth.json)")
    ap.add_argument("--out", help="where to write the replay outputs (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the contrast section as JSON")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eval_contrast_") as tmp:
        rep = run_set(args.cases, args.out or tmp)
    if args.json:
        print(json.dumps({"contrast": rep["contrast"], "per_study": rep["per_study"]}, indent=1))
    else:
        print("\n".join(contrast_lines(rep)))
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
