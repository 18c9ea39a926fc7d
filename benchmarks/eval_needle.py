"""Needle tip accuracy on the published evaluation set (or any folder of simulated cases).

    .venv/bin/python -m benchmarks.eval_needle CASES [--out needle_eval.json]
        [--register]

Runs ``Pipeline([NeedleStage()])`` (``--register``: ``Pipeline([JointStage(), NeedleStage()])``,
as ``sifluoro batch-replay --stages register,needle`` runs it: the needle stage then has the
register target, which the end-on dot search and the scout check use; without it no end-on
needle is reported and the scout check measures from the field centre) without a deadline (``latency_budget_ms=1e9``: no frame is
degraded, as accuracy is measured here, not the policy) over every frame of each
``caseNNN/dicom/`` and scores the
events with :mod:`sifluoro.sim.evaluate` (tip error in mm at the detector on frames where the
tip is visible, detection within 3 mm, false tips on frames without a needle, end-on frames
apart).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import Settings
from sifluoro.pipeline import Pipeline
from sifluoro.register.stage import JointStage
from sifluoro.sim.evaluate import Tally, report, score_study
from sifluoro.track.needle import NeedleStage


def evaluate_needle(cases_dir: str | Path, *, register: bool = False) -> dict:
    """Score the needle stage on every ``<case>/truth.json`` + ``<case>/dicom/`` under
    ``cases_dir`` (after the register stage with ``register``); returns the ``needle``
    section of :func:`sifluoro.sim.evaluate.report` with the per-case detection counts
    beside it."""
    tally = Tally()
    stage = NeedleStage()
    per_case = {}
    for truth_path in sorted(Path(cases_dir).glob("*/truth.json")):
        truth = json.loads(truth_path.read_text())
        study = read_study([truth_path.parent / "dicom"])
        stages = ([JointStage()] if register else []) + [stage]
        pipeline = Pipeline(stages, Settings(latency_budget_ms=1e9))
        state = pipeline.start_study(study.study_instance_uid)
        events = [pipeline.process(frame, state) for frame in iter_frames(study, [])]
        before = (tally.tip_detected, tally.tip_frames, tally.false_tips, tally.no_needle_frames)
        score_study(truth, events, None, tally)
        per_case[truth_path.parent.name] = {
            "detected": tally.tip_detected - before[0], "tip_frames": tally.tip_frames - before[1],
            "false_tips": tally.false_tips - before[2],
            "no_needle_frames": tally.no_needle_frames - before[3]}
    return {"needle": report(tally)["needle"], "missing_frames": tally.missing_frames,
            "stages": [st.name for st in stages] if per_case else [], "per_case": per_case}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", help="simulated set (sifluoro simulate), one folder per case")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--register", action="store_true",
                        help="run the register stage before the needle stage (its target)")
    args = parser.parse_args()
    result = evaluate_needle(args.cases, register=args.register)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
