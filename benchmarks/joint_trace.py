"""Per-frame trace of the register stage against simulator truth, with overlays of failures.

    python -m benchmarks.joint_trace CASES_DIR [--cases N] [--case NAME ...] [--png DIR]
                                     [--worst K] [--out trace.json]

One row per frame: run, C-arm angles, truth doubled / output doubled, output-to-truth mean
distance (mm), coverage of the truth within 2 mm, whether a line was reported, the target
error and the signed offsets of the output's superior and inferior ends along the truth
(mm; positive = the output runs on beyond the truth's end), and the distance per tenth of the
output line. A run summary follows, then the distance profile along the line (per tenth,
superior first) for all frames and by run kind (scout or later run, single or doubled truth). With
``--png`` an overlay (truth thin, output thick) is written for the first frame of every run
and for the last frame of each view's averaging whose line is more than 2 mm off, is missing, or
has the wrong doubled-line advice; ``--worst K`` limits that to the K worst runs. Meant for
development on training seeds, not for tuning on the evaluation sets.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.overlay import draw_overlay
from sifluoro.pipeline import Pipeline
from sifluoro.register.stage import JointStage
from sifluoro.sim.evaluate import _polyline_points
from sifluoro.sim.visibility import distance_to_polyline_px


def _arc(poly: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(poly, axis=0).T))])


def _project_on(poly: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Arc-length position of each point's nearest point on ``poly`` (px), extrapolated past
    the ends along the end segments (negative before the start, beyond the length after)."""
    a, b = poly[:-1], poly[1:]
    ab = b - a
    len2 = np.maximum((ab ** 2).sum(1), 1e-12)
    ap = points[:, None, :] - a[None]
    t = (ap * ab[None]).sum(2) / len2[None]
    tc = np.clip(t, 0.0, 1.0)
    d = np.hypot(*(points[:, None, :] - (a[None] + tc[..., None] * ab[None])).transpose(2, 0, 1))
    k = d.argmin(1)
    s = _arc(poly)
    seg = np.sqrt(len2)
    tk = t[np.arange(len(points)), k]
    # only the end segments extrapolate
    tk = np.where((k == 0) & (tk < 0), tk, np.where((k == len(seg) - 1) & (tk > 1), tk,
                                                     np.clip(tk, 0, 1)))
    return s[k] + tk * seg[k]


TENTHS = 10


def frame_row(ft: dict, event: dict) -> dict:
    spacing = ft["pixel_spacing_mm"]
    truth = ft["joint_polyline_xy"]
    joint = event.get("joint")
    row = {"index": ft["index"], "truth_joint": truth is not None,
           "truth_doubled": bool(ft["joint_doubled"]), "reported": joint is not None,
           "out_doubled": bool(joint["doubled"]) if joint else None,
           "view_changed": bool(joint["view_changed"]) if joint else None,
           "confidence": joint["confidence"] if joint else None}
    if truth is not None and joint is not None:
        t = np.asarray(truth, float)
        o = np.asarray(joint["polyline_xy"], float)
        row["distance_mm"] = float(distance_to_polyline_px(_polyline_points(o), t).mean() * spacing)
        row["coverage"] = float((distance_to_polyline_px(_polyline_points(t), o) * spacing <= 2.0).mean())
        s = _project_on(t, o[[0, -1]])
        row["sup_overrun_mm"] = float(-s[0] * spacing)
        row["inf_overrun_mm"] = float((s[1] - _arc(t)[-1]) * spacing)
        row["truth_length_mm"] = float(_arc(t)[-1] * spacing)
        # where along the output the distance is: mean per tenth of its length, superior first
        points = _polyline_points(o)
        d = distance_to_polyline_px(points, t) * spacing
        tenth = np.minimum((_arc(points) / max(_arc(points)[-1], 1e-9) * TENTHS).astype(int),
                           TENTHS - 1)
        row["distance_by_tenth_mm"] = [float(d[tenth == k].mean()) if (tenth == k).any() else None
                                       for k in range(TENTHS)]
        row["out_length_mm"] = float(_arc(o)[-1] * spacing)
    if event.get("target") and ft["target_xy"] is not None:
        row["target_error_mm"] = float(np.hypot(event["target"]["xy"][0] - ft["target_xy"][0],
                                                event["target"]["xy"][1] - ft["target_xy"][1]) * spacing)
    return row


def bad(row: dict) -> bool:
    if not row["truth_joint"]:
        return row["reported"]
    if not row["reported"]:
        return True
    return row["distance_mm"] > 2.0 or row["coverage"] < 0.8 or row["out_doubled"] != row["truth_doubled"]


def trace_case(case_dir: Path, stage: JointStage, png_dir: Path | None) -> tuple[list[dict], list[dict]]:
    truth = json.loads((case_dir / "truth.json").read_text())
    sop_run = {r["sop_instance_uid"]: i for i, r in enumerate(truth["runs"])}
    by_key = {(f["sop_instance_uid"], f["frame"]): f for f in truth["frames"]}
    study = read_study([case_dir / "dicom"])
    state = Pipeline().start_study(study.study_instance_uid)
    rows, frames_by_run = [], defaultdict(list)
    for frame in iter_frames(study, []):
        event = stage.process(frame, state)
        ft = by_key.get((frame.sop_instance_uid, frame.frame_number))
        if ft is None:
            continue
        r = sop_run[frame.sop_instance_uid]
        tech = truth["runs"][r]["technique"]
        row = {"case": case_dir.name, "size": truth["size"], "side": truth["side"], "run": r,
               "frame": frame.frame_number, "primary_deg": tech["primary_angle_deg"],
               "secondary_deg": tech["secondary_angle_deg"], **frame_row(ft, event)}
        rows.append(row)
        frames_by_run[r].append((row, frame.pixels, frame.run.photometric, event, ft))
    runs = []
    for r, items in frames_by_run.items():
        rr = [it[0] for it in items]
        d = [x["distance_mm"] for x in rr if "distance_mm" in x]
        c = [x["coverage"] for x in rr if "coverage" in x]
        runs.append({"case": case_dir.name, "run": r, "frames": len(rr),
                     "primary_deg": rr[0]["primary_deg"], "truth_doubled": rr[0]["truth_doubled"],
                     "truth_joint": sum(x["truth_joint"] for x in rr),
                     "reported": sum(x["reported"] for x in rr),
                     "doubled_right": sum(x["out_doubled"] == x["truth_doubled"] for x in rr if x["reported"]),
                     "distance_mm": round(float(np.mean(d)), 2) if d else None,
                     "coverage": round(float(np.mean(c)), 3) if c else None,
                     "sup_overrun_mm": round(float(np.mean([x["sup_overrun_mm"] for x in rr if "sup_overrun_mm" in x])), 1) if d else None,
                     "inf_overrun_mm": round(float(np.mean([x["inf_overrun_mm"] for x in rr if "inf_overrun_mm" in x])), 1) if d else None,
                     "bad_frames": sum(bad(x) for x in rr)})
        if png_dir is not None:
            for k in sorted({0, min(len(items), 16) - 1}):
                row, pixels, photometric, event, ft = items[k]
                if k == 0 or bad(row):
                    _write_png(png_dir, row, pixels, photometric, event, ft)
    return rows, runs


def _write_png(png_dir: Path, row, pixels, photometric, event, ft) -> None:
    png_dir.mkdir(parents=True, exist_ok=True)
    title = (f"{row['case']} run {row['run']} f{row['frame']} {row['side']} a={row['primary_deg']} "
             f"dbl truth {row['truth_doubled']} out {row['out_doubled']} "
             f"d={row.get('distance_mm', float('nan')):.1f}mm cov={row.get('coverage', float('nan')):.2f}")
    full = {"dose": {"fluoro_time_s": 0.0, "air_kerma_mgy": 0.0, "dap_gycm2": 0.0},
            "contrast": {"state": "none"}, **event}
    img = draw_overlay(pixels, photometric, full, truth=ft, title=title,
                       spacing_mm=ft["pixel_spacing_mm"])
    if img.shape[0] > 640:
        img = cv2.resize(img, (640, 640), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(png_dir / f"{row['case']}_r{row['run']}_f{row['frame']:03d}.png"), img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases_dir", type=Path)
    ap.add_argument("--cases", type=int, default=None)
    ap.add_argument("--case", action="append", help="only these case directories (repeatable)")
    ap.add_argument("--png", type=Path, help="write overlays of failures here")
    ap.add_argument("--out", type=Path, help="per-frame rows and run summaries as JSON")
    args = ap.parse_args()
    stage = JointStage()
    dirs = sorted(p.parent for p in args.cases_dir.glob("*/truth.json"))
    if args.case:
        dirs = [d for d in dirs if d.name in args.case]
    all_rows, all_runs = [], []
    for case_dir in dirs[:args.cases]:
        rows, runs = trace_case(case_dir, stage, args.png)
        all_rows += rows
        all_runs += runs
        for r in runs:
            print(json.dumps(r))
    d = [x["distance_mm"] for x in all_rows if "distance_mm" in x]
    n_joint = sum(x["truth_joint"] for x in all_rows)
    print(json.dumps({"frames": len(all_rows), "mean_distance_mm": round(float(np.mean(d)), 3),
                      "coverage": round(float(np.mean([x["coverage"] for x in all_rows if "coverage" in x])), 4),
                      "reported_rate": round(sum(x["reported"] for x in all_rows if x["truth_joint"]) / max(1, n_joint), 4),
                      "sup_overrun_mm_median": round(float(np.median([x["sup_overrun_mm"] for x in all_rows if "sup_overrun_mm" in x])), 2),
                      "inf_overrun_mm_median": round(float(np.median([x["inf_overrun_mm"] for x in all_rows if "inf_overrun_mm" in x])), 2)}))
    for kind, rows in split_by_kind(all_rows).items():
        print(json.dumps({"kind": kind, **distance_profile(rows)}))
    if args.out:
        args.out.write_text(json.dumps({"rows": all_rows, "runs": all_runs}) + "\n")


def split_by_kind(rows: list[dict]) -> dict[str, list[dict]]:
    """Frames with a reported line over a joint, by run kind: the first run of a study (the
    scout) or a later one, with a single or a doubled truth line."""
    out: dict[str, list[dict]] = defaultdict(list)
    for x in rows:
        if "distance_mm" in x:
            kind = ("scout" if x["run"] == 0 else "work") + ("/doubled" if x["truth_doubled"] else "/single")
            out["all"].append(x)
            out[kind].append(x)
    return dict(sorted(out.items()))


def distance_profile(rows: list[dict]) -> dict:
    """Frame mean distance and its mean per tenth of the output line (superior tenth first)."""
    tenths = np.array([[np.nan if v is None else v for v in x["distance_by_tenth_mm"]] for x in rows])
    return {"frames": len(rows), "mean_distance_mm": round(float(np.mean([x["distance_mm"] for x in rows])), 3),
            "distance_by_tenth_mm": np.round(np.nanmean(tenths, axis=0), 2).tolist()}


if __name__ == "__main__":
    main()
