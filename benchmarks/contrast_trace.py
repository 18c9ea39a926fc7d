"""Frame-by-frame trace of the contrast stage on one simulated case, next to its truth.

    .venv/bin/python -m benchmarks.contrast_trace /work/evalset/case008 [--components] [--from I --to J]

For each frame with contrast in the truth or in the output: truth state/visibility/area, the
stage's state, its vascular evidence and the accepted opacities. ``--components`` also prints
every candidate component (accepted or not) with the residual's noise, and the reference
adoptions at run starts: what is needed to see why a study was missed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import sifluoro.track.contrast as C
from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import Settings
from sifluoro.pipeline import Pipeline


def _fmt(o) -> str:
    return (f"[{o.kind} a{o.area_mm2:.0f} L{o.length_mm:.0f} W{o.width_mm:.1f} pz{o.peak_z:.0f} "
            f"neg{o.negative_ratio:.2f} new{o.new_fraction:.2f}]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", type=Path)
    ap.add_argument("--components", action="store_true")
    ap.add_argument("--from", dest="lo", type=int, default=0)
    ap.add_argument("--to", dest="hi", type=int, default=10**9)
    args = ap.parse_args(argv)
    truth = json.loads((args.case / "truth.json").read_text())
    by_frame = {(f["sop_instance_uid"], f["frame"]): f for f in truth["frames"]}
    runs = {r["sop_instance_uid"]: r for r in truth["runs"]}
    current = {"index": -1}
    if args.components:
        describe, adopt = C.describe_components, C.ReferenceBank.adopt_run

        def traced_describe(stats, n, score, valid, sigma, factor, work_mm):
            ops = describe(stats, n, score, valid, sigma, factor, work_mm)
            if args.lo <= current["index"] <= args.hi:
                print(f"      n={n} sigma={sigma:.4g} valid={valid.mean():.2f} "
                      f"max_z={score.max():.1f} " + " ".join(_fmt(o) for o in ops[:6]))
            return ops

        def traced_adopt(self, first, usable):
            shift = adopt(self, first, usable)
            print(f"      reference adopted: shift {shift}, runs seen {self.runs_seen}, "
                  f"slots {self.count}")
            return shift

        C.describe_components = traced_describe
        C.ReferenceBank.adopt_run = traced_adopt
    study = read_study([args.case / "dicom"])
    stage = C.ContrastStage()
    pipe = Pipeline([stage], Settings(latency_budget_ms=1e9))
    state = pipe.start_study(study.study_instance_uid)
    print(f"outcome {truth['outcome']}")
    last_run = None
    for frame in iter_frames(study, []):
        current["index"] = frame.index
        if frame.run is not last_run:
            last_run = frame.run
            pipe.prepare_run(frame.run, state)
            r = runs[frame.run.sop_instance_uid]
            print(f"-- run {r['file']} {r['frames']} frames {r['photometric']} sign "
                  f"{r.get('pixel_intensity_sign')} {r['technique']['kind']}")
        event = pipe.process(frame, state)
        t = by_frame[(frame.sop_instance_uid, frame.frame_number)]
        c = event["contrast"]
        if not args.lo <= frame.index <= args.hi:
            continue
        if t["contrast_state"] != "none" or c["state"] != "none" or c.get("components"):
            print(f"{frame.index:4d} f{frame.frame_number:<3d} truth {t['contrast_state']:15s} "
                  f"vis {int(t['contrast_visible'])} {t['contrast_area_mm2']:6.0f} mm² | "
                  f"{c['state']:15s} vasc {c.get('vascular_evidence')} "
                  + " ".join(_fmt(o) for o in state.stage_state["contrast"].last_opacities))
    return 0


if __name__ == "__main__":
    sys.exit(main())
