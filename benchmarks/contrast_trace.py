"""Frame-by-frame trace of the contrast stage on one simulated case, next to its truth.

    .venv/bin/python -m benchmarks.contrast_trace /work/evalset/case008 [--components] [--from I --to J]
                                                   [--png DIR]

For each frame with contrast in the truth or in the output: truth state/visibility/area, the
stage's state, its vascular evidence and the accepted opacities. ``--components`` also prints
every candidate component (accepted or not) with the residual's noise, and the reference
adoptions at run starts: what is needed to see why a study was missed. ``--png DIR`` writes,
for each frame printed, ``DIR/fNNNN.png`` (:func:`frame_tiles`): what the stage saw.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

import sifluoro.track.contrast as C
from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import Settings
from sifluoro.pipeline import Pipeline
from sifluoro.track.contrast_transient import TransientLines


def _gray(m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((m - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def frame_tiles(memory, scale: int = 2) -> np.ndarray:
    """The contrast stage's view of the frame it just processed, side by side on its working
    grid (``memory``: the stage's study memory, ``state.stage_state["contrast"]``), uint8:

    1. the working frame (1st-99th percentile of the field);
    2. the subtraction: the residual against the reference, in noise sigmas (-8 black, +8
       white), 0 outside the field;
    3. the opacity accepted on the frame (white);
    4-5. the vessel (history) test's onset and washout ridges on this frame, in local noise
       units (-2 black, +8 white; 0 before the run has 4 frames): a vessel that arrived two
       frames ago is a line bright in both.
    """
    b, rm = memory.buffers, memory.run
    valid = b.valid
    field = b.current[valid]
    lo, hi = np.percentile(field, [1, 99]) if field.size else (0.0, 1.0)
    tiles = [_gray(b.current, lo, hi + 1e-9), _gray(np.where(valid, b.score, 0.0), -8.0, 8.0),
             _gray(rm.opaque.astype(np.float32), 0.0, 1.0)]
    onset = np.zeros(b.shape, np.float32)
    washout = np.zeros(b.shape, np.float32)
    end = rm.history_count
    n = min(end, 5)
    if n >= 4:
        t = TransientLines(b.shape)
        t.score_history(rm.history, rm.history_order[end - n:end], n, valid)
        r = t.rows
        onset[r], washout[r] = t.ridge_o[r], t.ridge_w[r]
    tiles += [_gray(onset, -2.0, 8.0), _gray(washout, -2.0, 8.0)]
    row = np.hstack([np.pad(tile, 2, constant_values=128) for tile in tiles])
    return cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def _fmt(o) -> str:
    return (f"[{o.kind} a{o.area_mm2:.0f} L{o.length_mm:.0f} W{o.width_mm:.1f} pz{o.peak_z:.0f} "
            f"neg{o.negative_ratio:.2f} new{o.new_fraction:.2f}]")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", type=Path)
    ap.add_argument("--components", action="store_true")
    ap.add_argument("--from", dest="lo", type=int, default=0)
    ap.add_argument("--to", dest="hi", type=int, default=10**9)
    ap.add_argument("--png", type=Path, help="write each printed frame's tiles here")
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
            memory = state.stage_state["contrast"]
            if args.png and memory.run is not None and memory.run.history_count > 1:
                args.png.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(args.png / f"f{frame.index:04d}.png"), frame_tiles(memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
