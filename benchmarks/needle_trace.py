"""Frame-by-frame trace of the needle stage on one simulated case, next to its truth.

    .venv/bin/python -m benchmarks.needle_trace /work/evalset-v2/case008 [--candidates]
        [--from I --to J] [--png DIR] [--failures] [--register]

For each frame: truth tip / visibility / end-on, the stage's tip, confidence and error in mm,
and a verdict (``ok`` within 3 mm, ``FAR`` reported more than 3 mm off, ``MISS`` nothing
reported on a visible tip, ``FALSE`` a tip on a frame without a needle). ``--candidates``
also prints every candidate segment the stage scored (tip, length, needle probability and the
features it is computed from); ``--png DIR`` writes an overlay (truth in its colour beside
the output) of every frame, or of the failures only with ``--failures``. ``--register`` runs
the register stage before the needle stage, as ``batch-replay --stages register,needle`` and
``eval_needle --register`` do: the needle stage then has the register target (the scout check,
the end-on dot search and a wrong-level scout depend on it), and the trace shows what the
held-out evaluation sees.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import Settings
from sifluoro.overlay import draw_overlay
from sifluoro.pipeline import Pipeline
from sifluoro.register.stage import JointStage
from sifluoro.track.needle import NeedleStage, needle_probability
from sifluoro.track.needle_detect import NeedleSettings


def shaft_distance_px(xy, shaft) -> float:
    """Distance of ``xy`` from the truth shaft polyline (pixels)."""
    if not shaft:
        return math.inf
    s = np.asarray(shaft, float)
    p = np.asarray(xy, float)
    if len(s) == 1:
        return float(np.linalg.norm(p - s[0]))
    a, b = s[:-1], s[1:]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
    return float(np.min(np.linalg.norm(a + t[:, None] * ab - p, axis=1)))


def _past_tip_px(xy, shaft) -> tuple[float, float]:
    """How far ``xy`` lies ahead of the true tip along the direction the truth shaft ends in
    (its last 10 points), and across that line (pixels)."""
    s = np.asarray(shaft, float)
    if len(s) < 2:
        return 0.0, math.inf
    u = s[-1] - s[max(0, len(s) - 10)]
    u = u / max(float(np.linalg.norm(u)), 1e-12)
    d = np.asarray(xy, float) - s[-1]
    return float(d @ u), abs(float(d[0] * u[1] - d[1] * u[0]))


def _short_of_tip(xy, t: dict) -> bool:
    """Is ``xy`` behind the true tip along the truth shaft (toward the hub)?"""
    s = np.asarray(t["shaft_xy"], float)
    u = s[-1] - s[0]
    return float((np.asarray(xy, float) - s[-1]) @ u) < 0.0


def _verdict(t: dict, needle: dict | None, err_mm: float | None, cands_mm: list[float]) -> str:
    """ok / FAR_SHORT, FAR_BEYOND (on the needle's line, tip placed short of the true tip or
    beyond it) / FAR (elsewhere) / MISS_CAND (a
    candidate near the true tip was not reported) / MISS / FALSE."""
    spacing = t["pixel_spacing_mm"]
    if t["tip_xy"] is not None:
        if needle is None:
            return "MISS_CAND" if any(d <= 3.0 for d in cands_mm) else "MISS"
        if err_mm <= 3.0:
            return "ok"
        if shaft_distance_px(needle["tip_xy"], t["shaft_xy"]) * spacing > 1.5:
            # more than 3 mm past the true tip a tip on the needle's line is 3 mm from the
            # shaft (its end): measured from the line the shaft ends on
            ahead, across = _past_tip_px(needle["tip_xy"], t["shaft_xy"])
            return "FAR_BEYOND" if ahead > 0.0 and across * spacing <= 1.5 else "FAR"
        return "FAR_SHORT" if _short_of_tip(needle["tip_xy"], t) else "FAR_BEYOND"
    if not t["needle_visible"]:
        return "FALSE" if needle is not None else "ok"
    return "-"


def _fmt_candidate(f: dict, grid) -> str:
    tip = grid.to_full(f["tip"])
    return (f"    cand tip ({tip[0]:.0f},{tip[1]:.0f}) L{f['length_mm']:.0f} "
            f"p{needle_probability(f):.2f} score{f['score']:.1f} sym{f['sym']:.2f} "
            f"ext{f['ext_score']:.1f}/{f['ext_mm']:.0f}mm thin{f['thin']:.2f} "
            f"edge{f['tip_edge_mm']:.0f}mm base_edge{int(f['base_at_edge'])}"
            + (" ext-veto" if f["ext_score"] > NeedleSettings().max_ext_score else "")
            + (f" {f['note']}" if f.get("note") else ""))


def trace_pipeline(*, register: bool = False) -> Pipeline:
    """The pipeline a case is traced through: the needle stage, after the register stage with
    ``register``; no deadline."""
    stages = [JointStage(), NeedleStage()] if register else [NeedleStage()]
    return Pipeline(stages, Settings(latency_budget_ms=1e9))


def trace(case: Path, *, candidates: bool = False, lo: int = 0, hi: int = 10**9,
          png: Path | None = None, failures_only: bool = False, out=sys.stdout,
          register: bool = False) -> dict:
    """Trace one case (after the register stage with ``register``); returns the verdict
    counts."""
    truth = json.loads((case / "truth.json").read_text())
    by_frame = {(f["sop_instance_uid"], f["frame"]): f for f in truth["frames"]}
    runs = {r["sop_instance_uid"]: r for r in truth["runs"]}
    study = read_study([case / "dicom"])
    pipe = trace_pipeline(register=register)
    state = pipe.start_study(study.study_instance_uid)
    counts: dict[str, int] = {}
    last_run = None
    print(f"{case.name}: outcome {truth['outcome']} distractors {truth['distractors']}",
          file=out)
    if png is not None:
        png.mkdir(parents=True, exist_ok=True)
    for frame in iter_frames(study, []):
        if frame.run is not last_run:
            last_run = frame.run
            r = runs[frame.run.sop_instance_uid]
            if lo <= frame.index <= hi:
                print(f"-- run {r['file']} {r['frames']} frames {r['technique']['kind']} "
                      f"{frame.run.rows}x{frame.run.columns} spacing "
                      f"{r['technique']['imager_pixel_spacing_mm']:.3f} mm", file=out)
        event = pipe.process(frame, state)
        t = by_frame[(frame.sop_instance_uid, frame.frame_number)]
        needle = event["needle"]
        spacing = t["pixel_spacing_mm"]
        err = (math.dist(needle["tip_xy"], t["tip_xy"]) * spacing
               if needle is not None and t["tip_xy"] is not None else None)
        st = state.stage_state.get("needle")
        feats = st.last_features if st is not None and st.ctx is not None else []
        cands_mm = ([math.dist(st.ctx.grid.to_full(f["tip"]), t["tip_xy"]) * spacing
                     for f in feats]
                    if t["tip_xy"] is not None else [])
        verdict = _verdict(t, needle, err, cands_mm)
        counts[verdict] = counts.get(verdict, 0) + 1
        if not lo <= frame.index <= hi:
            continue
        tt = (f"({t['tip_xy'][0]:6.1f},{t['tip_xy'][1]:6.1f})" if t["tip_xy"] else " " * 15)
        oo = (f"({needle['tip_xy'][0]:6.1f},{needle['tip_xy'][1]:6.1f}) "
              f"c{needle['confidence']:.2f}{' END' if needle['end_on'] else ''}"
              if needle else "null")
        vis = int(t["needle_visible"])
        print(f"{frame.index:4d} f{frame.frame_number:<3d} truth {tt} vis {vis}"
              f"{' END' if t['end_on'] else ''} | {oo:30s} "
              f"{'' if err is None else f'{err:6.1f} mm'} {verdict}", file=out)
        if candidates:
            for f in feats:
                print(_fmt_candidate(f, st.ctx.grid), file=out)
        if png is not None and (not failures_only or verdict in ("MISS", "FAR", "FALSE")):
            img = draw_overlay(frame.pixels, frame.run.photometric, event, truth=t,
                               title=f"{case.name} #{frame.index} {verdict}", spacing_mm=spacing)
            cv2.imwrite(str(png / f"{case.name}_{frame.index:04d}_{verdict}.png"), img)
    print(f"{case.name}: " + " ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=out)
    return counts


class _Quiet:
    """An output that drops everything (summary mode)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", type=Path, help="a case folder, or with --summary a set of them")
    ap.add_argument("--summary", action="store_true",
                    help="verdict counts per case of every case under CASE, frames not printed")
    ap.add_argument("--candidates", action="store_true")
    ap.add_argument("--from", dest="lo", type=int, default=0)
    ap.add_argument("--to", dest="hi", type=int, default=10**9)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--failures", action="store_true")
    ap.add_argument("--register", action="store_true",
                    help="run the register stage first (its target), as the held-out runs do")
    args = ap.parse_args(argv)
    if args.summary:
        total: dict[str, int] = {}
        for case in sorted(p.parent for p in args.case.glob("*/truth.json")):
            counts = trace(case, lo=1, hi=0, out=_Quiet(sys.stdout), register=args.register)
            print(f"{case.name}: " + " ".join(f"{k} {v}" for k, v in sorted(counts.items())))
            for k, v in counts.items():
                total[k] = total.get(k, 0) + v
        print("total: " + " ".join(f"{k} {v}" for k, v in sorted(total.items())))
        return 0
    trace(args.case, candidates=args.candidates, lo=args.lo, hi=args.hi, png=args.png,
          failures_only=args.failures, register=args.register)
    return 0


if __name__ == "__main__":
    sys.exit(main())
