"""Score replay outputs against simulator ground truth (``truth.json``).

Frames are matched by ``(sop_instance_uid, frame)``; distances are in mm at the detector,
converted with each frame's imager pixel spacing.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sifluoro.sim.visibility import DETECTABLE_SNR, distance_to_polyline_px

DANGER = {"none": 0, "intra_articular": 1, "extravasation": 2, "vascular": 3}
STAGES = ("register", "needle", "contrast")  # scored when a study's summary lists them


def _polyline_points(polyline, step_px: float = 1.0) -> np.ndarray:
    """Resample a polyline to points about ``step_px`` apart."""
    pts = np.asarray(polyline, float)
    if len(pts) < 2:
        return pts.reshape(-1, 2)
    out = [pts[0]]
    for a, b in zip(pts[:-1], pts[1:]):
        n = max(1, int(math.ceil(np.hypot(*(b - a)) / step_px)))
        t = np.arange(1, n + 1)[:, None] / n
        out.extend(a + (b - a) * t)
    return np.asarray(out)


@dataclass
class Tally:
    tip_errors_mm: list[float] = field(default_factory=list)
    tip_frames: int = 0
    tip_detected: int = 0
    # of tip_frames, those whose truth gives the tip's SNR in the pixels and it is >= 3
    detectable_tip_frames: int = 0
    detectable_tip_detected: int = 0
    detectable_tip_errors_mm: list[float] = field(default_factory=list)  # of tips reported
    detectable_within_mm: dict[float, int] = field(default_factory=lambda: {0.5: 0, 1.5: 0})
    end_on_errors_mm: list[float] = field(default_factory=list)
    end_on_frames: int = 0
    end_on_reported: int = 0  # frames with a tip reported within 3 mm, of the end_on frames
    no_needle_frames: int = 0
    false_tips: int = 0
    # the shaft in the field, its tip outside it (beyond a blade or the field's edge): in
    # neither count above; a tip reported there is on the shaft or elsewhere, never the tip
    tip_outside_frames: int = 0
    tip_outside_reported: int = 0
    # of those, the reported tip's distance to the real tip behind the blade (truth
    # tip_beyond_field_xy, in sets made with --tight-collimation) and its confidence
    tip_outside_errors_mm: list[float] = field(default_factory=list)
    tip_outside_confidences: list[float] = field(default_factory=list)
    joint_frames: int = 0
    joint_reported: int = 0
    joint_distances_mm: list[float] = field(default_factory=list)
    joint_coverages: list[float] = field(default_factory=list)
    no_joint_frames: int = 0
    false_joints: int = 0
    doubled_case_rates: list[float] = field(default_factory=list)  # advice right, per doubled case
    single_frames_with_line: int = 0
    single_called_doubled: int = 0
    doubled_frames_with_line: int = 0
    doubled_frames_advised: int = 0
    target_errors_mm: list[float] = field(default_factory=list)
    contrast_frames: int = 0
    contrast_correct: int = 0
    pre_injection_frames: int = 0
    pre_injection_none: int = 0
    delays: list[int] = field(default_factory=list)
    missed_detections: int = 0
    studies: list[dict] = field(default_factory=list)
    missing_frames: int = 0
    missing_damaged: int = 0  # of those, frames of a damaged file (lost by design: no event)


def score_study(truth: dict, events: list[dict], summary: dict | None, tally: Tally) -> dict:
    """Add one study's frames to ``tally``; return its study-level record."""
    by_key = {(e["sop_instance_uid"], e["frame"]): e for e in events}
    ran = set(summary["stages"]) if summary and "stages" in summary else set(STAGES)
    injection_started = None
    # what the procedure showed, lost frames included: a vessel seen only in a damaged file's
    # frames is still a vascular study (the user was not shown it either)
    truth_final = "none"
    for ft in truth["frames"]:
        if DANGER[ft["contrast_state"]] > DANGER[truth_final]:
            truth_final = ft["contrast_state"]
    first_truth_state_index: dict[str, int] = {}
    output_states: list[tuple[int, str]] = []  # (truth index, output state), frames in order
    doubled_right: list[bool] = []  # on the frames whose truth line is doubled and a line is out
    doubled_truth = False
    for ft in truth["frames"]:
        e = by_key.get((ft["sop_instance_uid"], ft["frame"]))
        if e is None:
            tally.missing_frames += 1
            if ft.get("damaged"):
                tally.missing_damaged += 1
                continue
            # any other frame without an event is scored as an output that shows nothing
            # (no tip, no line, a contrast state that is never right): else dropping the
            # events of hard frames would raise every rate
            e = {"needle": None, "joint": None, "contrast": {"state": "missing"}}
        spacing = ft["pixel_spacing_mm"]
        needle = e.get("needle")
        if "needle" not in ran:
            pass
        elif ft["tip_xy"] is not None:
            err = (math.hypot(needle["tip_xy"][0] - ft["tip_xy"][0], needle["tip_xy"][1] - ft["tip_xy"][1])
                   * spacing) if needle else None
            if ft.get("end_on"):
                tally.end_on_frames += 1
                if err is not None:
                    tally.end_on_errors_mm.append(err)
                    tally.end_on_reported += err <= 3.0
            else:
                tally.tip_frames += 1
                found = err is not None and err <= 3.0
                if err is not None:
                    tally.tip_errors_mm.append(err)
                    tally.tip_detected += found
                if (ft.get("tip_snr") or 0.0) >= DETECTABLE_SNR:
                    tally.detectable_tip_frames += 1
                    tally.detectable_tip_detected += found
                    if err is not None:
                        tally.detectable_tip_errors_mm.append(err)
                        for within in tally.detectable_within_mm:
                            tally.detectable_within_mm[within] += err <= within
        elif not ft.get("needle_visible"):
            tally.no_needle_frames += 1
            tally.false_tips += needle is not None
        else:
            tally.tip_outside_frames += 1
            tally.tip_outside_reported += needle is not None
            beyond = ft.get("tip_beyond_field_xy")
            if needle is not None and beyond is not None:
                tally.tip_outside_errors_mm.append(math.hypot(
                    needle["tip_xy"][0] - beyond[0], needle["tip_xy"][1] - beyond[1]) * spacing)
                tally.tip_outside_confidences.append(float(needle.get("confidence") or 0.0))
        joint = e.get("joint")
        if "register" not in ran:
            pass
        elif ft["joint_polyline_xy"] is not None:
            tally.joint_frames += 1
            if joint:
                tally.joint_reported += 1
                out = _polyline_points(joint["polyline_xy"])
                ref = _polyline_points(ft["joint_polyline_xy"])
                tally.joint_distances_mm.append(float(distance_to_polyline_px(out, np.asarray(
                    ft["joint_polyline_xy"], float)).mean() * spacing))
                tally.joint_coverages.append(float((distance_to_polyline_px(ref, np.asarray(
                    joint["polyline_xy"], float)) * spacing <= 2.0).mean()))
                if ft.get("joint_doubled"):
                    doubled_right.append(bool(joint.get("doubled")))
                    tally.doubled_frames_with_line += 1
                    tally.doubled_frames_advised += bool(joint.get("doubled"))
                else:
                    tally.single_frames_with_line += 1
                    tally.single_called_doubled += bool(joint.get("doubled"))
            doubled_truth = doubled_truth or bool(ft.get("joint_doubled"))
            target = e.get("target")
            if target is not None and ft.get("target_xy") is not None:
                tally.target_errors_mm.append(math.hypot(target["xy"][0] - ft["target_xy"][0],
                                                         target["xy"][1] - ft["target_xy"][1]) * spacing)
        else:
            tally.no_joint_frames += 1
            tally.false_joints += joint is not None
        if "contrast" not in ran:
            continue
        state_truth = ft["contrast_state"]
        state_out = e["contrast"]["state"]
        if state_truth != "none" and injection_started is None:
            injection_started = ft["index"]
        if injection_started is None:
            tally.pre_injection_frames += 1
            tally.pre_injection_none += state_out == "none"
        else:
            tally.contrast_frames += 1
            tally.contrast_correct += state_out == state_truth
        first_truth_state_index.setdefault(state_truth, ft["index"])
        output_states.append((ft["index"], state_out))
    if doubled_truth:  # a doubled case without any line out was never advised
        tally.doubled_case_rates.append(float(np.mean(doubled_right)) if doubled_right else 0.0)
    if "contrast" not in ran:
        output_final = None
    elif not events:
        output_final = "missing"  # no results: wrong whatever the truth
    else:
        output_final = summary["contrast_state"] if summary else events[-1]["contrast"]["state"]
        if truth_final != "none":
            # from the truth's first frame of the final state to the first output frame AT OR
            # AFTER it that shows it: a state called before the truth's (a false state on a
            # needle run, dropped since) is no detection, else it read as a delay of 0
            start = first_truth_state_index.get(truth_final)  # None: only in lost frames
            shown = [i for i, s in output_states
                     if s == truth_final and start is not None and i >= start]
            if shown:
                tally.delays.append(shown[0] - start)
            else:
                tally.missed_detections += 1
    contrast_snrs = [ft["contrast_snr"] for ft in truth["frames"] if ft.get("contrast_snr") is not None]
    vessel_snrs = [ft["vessel_snr"] for ft in truth["frames"] if ft.get("vessel_snr") is not None]
    record = {"case": truth["case"], "truth": truth_final, "output": output_final,
              "correct": truth_final == output_final if output_final is not None else None,
              "results": bool(events), "stages": sorted(ran),
              # the opacification's best SNR in the pixels (None: truth without it, or none)
              "contrast_snr_max": max(contrast_snrs) if contrast_snrs else None,
              # the vessels' own best SNR (None: no vessel in the pixels, or an older truth)
              "vessel_snr_max": max(vessel_snrs) if vessel_snrs else None}
    if summary:
        # the study's whole dose (frames lost in damaged files included, as in the truth); a
        # dose copied from the device's report is scored apart from an estimate (dose_source)
        whole = summary.get("study_dose") or summary
        record["dose_source"] = summary.get("dose_source")
        for key in ("air_kerma_mgy", "dap_gycm2", "fluoro_time_s"):
            ref = truth["dose"][key] if not truth.get("reported_dose") or key == "fluoro_time_s" \
                else truth["reported_dose"][key]
            record[f"{key}_rel_error"] = (whole[key] - ref) / ref if ref else None
    tally.studies.append(record)
    return record


def _pct(values, q):
    return round(float(np.percentile(values, q)), 3) if values else None


def _pct_of_frames(errors: list[float], frames: int, q: float) -> float | None:
    """Percentile ``q`` of the tip error over ``frames`` frames of which ``errors`` are those
    with a tip reported: a frame without a tip is an infinite error (issue 7 names the error
    "on frames where the tip is visible", not on the tips reported: leaving the misses out
    flatters). As ``np.percentile`` (linear) on the finite values; None when the percentile
    touches a frame without a tip (unreached)."""
    if not frames:
        return None
    v = np.sort(np.asarray(errors, float))
    pos = q / 100.0 * (frames - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    if hi >= v.size:
        return None
    return round(float(v[lo] + (v[hi] - v[lo]) * (pos - lo)), 3)


def _ratio(a, b):
    return round(a / b, 4) if b else None


def _dose_errors(studies: list[dict], key: str) -> dict:
    """Median and max |relative error| of ``key``, over all studies and per dose source."""
    def stats(rows):
        errors = [abs(s[f"{key}_rel_error"]) for s in rows if s.get(f"{key}_rel_error") is not None]
        return {"median_abs_rel_error": _pct(errors, 50),
                "max_abs_rel_error": round(max(errors), 4) if errors else None,
                "studies": len(errors)}
    sources = sorted({s.get("dose_source") or "unknown" for s in studies
                      if s.get(f"{key}_rel_error") is not None})
    return {**stats(studies), "by_source": {
        src: stats([s for s in studies if (s.get("dose_source") or "unknown") == src])
        for src in sources}}


def report(tally: Tally) -> dict:
    studies = [s for s in tally.studies if s["correct"] is not None]  # contrast assessed
    vascular_truth = [s for s in studies if s["truth"] == "vascular"]
    visible_vessels = [s for s in vascular_truth
                       if s["vessel_snr_max"] is not None and s["vessel_snr_max"] >= DETECTABLE_SNR]
    non_vascular = [s for s in studies if s["truth"] != "vascular" and s["results"]]
    # the stages that ran: a case without results (scored as wrong) says nothing of them
    with_results = [s for s in tally.studies if s["results"]] or tally.studies
    ran = set().union(*(s["stages"] for s in with_results)) if with_results else set()
    return {
        "studies": len(tally.studies),
        "assessed": [name for name in STAGES if name in ran],
        "studies_without_results": [s["case"] for s in tally.studies if not s["results"]],
        "missing_frames": tally.missing_frames,
        "missing_frames_of_damaged_files": tally.missing_damaged,
        "needle": {
            "tip_error_mm_median": _pct(tally.tip_errors_mm, 50),
            "tip_error_mm_p95": _pct(tally.tip_errors_mm, 95),
            "tip_frames": tally.tip_frames,
            "detection_rate_3mm": _ratio(tally.tip_detected, tally.tip_frames),
            # the same on the frames whose tip is in the pixels (truth tip_snr >= 3)
            "detectable_tip_frames": tally.detectable_tip_frames,
            "detectable_detection_rate_3mm": _ratio(tally.detectable_tip_detected,
                                                    tally.detectable_tip_frames),
            "detectable_tip_error_mm_median": _pct(tally.detectable_tip_errors_mm, 50),
            "detectable_tip_error_mm_p95": _pct(tally.detectable_tip_errors_mm, 95),
            # the median / p95 "on frames where the tip is visible": over ALL those
            # frames, a frame without a tip an infinite error (None: the percentile is
            # unreached); the two above are of the tips reported only
            "detectable_tips_not_reported": tally.detectable_tip_frames
            - len(tally.detectable_tip_errors_mm),
            "detectable_tip_error_mm_median_of_frames": _pct_of_frames(
                tally.detectable_tip_errors_mm, tally.detectable_tip_frames, 50),
            "detectable_tip_error_mm_p95_of_frames": _pct_of_frames(
                tally.detectable_tip_errors_mm, tally.detectable_tip_frames, 95),
            "tip_error_mm_median_of_frames": _pct_of_frames(tally.tip_errors_mm,
                                                            tally.tip_frames, 50),
            "tip_error_mm_p95_of_frames": _pct_of_frames(tally.tip_errors_mm, tally.tip_frames, 95),
            # of ALL those frames (a tip not reported counts as outside): what the issue's
            # median 0.5 / p95 1.5 mm mean when misses count
            **{f"detectable_within_{str(mm).replace('.', '_')}mm_rate": _ratio(
                count, tally.detectable_tip_frames)
               for mm, count in tally.detectable_within_mm.items()},
            "false_tip_rate": _ratio(tally.false_tips, tally.no_needle_frames),
            "no_needle_frames": tally.no_needle_frames,
            # frames whose shaft is in the field and tip outside it, and those with a tip out
            "tip_outside_field_frames": tally.tip_outside_frames,
            "tip_outside_field_tips_reported": tally.tip_outside_reported,
            # how far those tips are from the real one behind the blade (None: no tip reported
            # or a truth without tip_beyond_field_xy), and their highest confidence
            "tip_outside_field_error_mm_median": _pct(tally.tip_outside_errors_mm, 50),
            "tip_outside_field_error_mm_max": round(max(tally.tip_outside_errors_mm), 3)
            if tally.tip_outside_errors_mm else None,
            "tip_outside_field_confidence_max": round(max(tally.tip_outside_confidences), 4)
            if tally.tip_outside_confidences else None,
            "end_on_frames": tally.end_on_frames,
            "end_on_error_mm_median": _pct(tally.end_on_errors_mm, 50),
            "end_on_detection_rate_3mm": _ratio(tally.end_on_reported, tally.end_on_frames),
        },
        "joint": {
            "mean_distance_mm": round(float(np.mean(tally.joint_distances_mm)), 3) if tally.joint_distances_mm else None,
            "coverage_2mm": round(float(np.mean(tally.joint_coverages)), 4) if tally.joint_coverages else None,
            "reported_rate": _ratio(tally.joint_reported, tally.joint_frames),
            "false_joint_rate": _ratio(tally.false_joints, tally.no_joint_frames),
            # a doubled case counts as advised when the advice is on >= 90 % of its frames
            # that show the doubled line and have a line out (none out: not advised)
            "doubled_cases": len(tally.doubled_case_rates),
            "single_frames_called_doubled_rate": _ratio(tally.single_called_doubled,
                                                        tally.single_frames_with_line),
            "doubled_cases_advice_right_90pct": _ratio(
                sum(r >= 0.9 for r in tally.doubled_case_rates), len(tally.doubled_case_rates)),
            # per frame with a line out: an output that always advises scores 1.0 on the
            # cases above (every case has a doubled view) but not here
            "doubled_frame_sensitivity": _ratio(tally.doubled_frames_advised,
                                                tally.doubled_frames_with_line),
            "doubled_frame_agreement": _ratio(
                tally.doubled_frames_advised + tally.single_frames_with_line
                - tally.single_called_doubled,
                tally.doubled_frames_with_line + tally.single_frames_with_line),
            "target_error_mm_median": _pct(tally.target_errors_mm, 50),
        },
        "contrast": {
            "frame_accuracy_from_injection": _ratio(tally.contrast_correct, tally.contrast_frames),
            "study_accuracy": _ratio(sum(s["correct"] for s in studies), len(studies)),
            "vascular_sensitivity": _ratio(sum(s["output"] == "vascular" for s in vascular_truth), len(vascular_truth)),
            # on the studies whose vessel is in the pixels (truth vessel_snr >= 3)
            "visible_vessels": len(visible_vessels),
            "visible_vessel_sensitivity": _ratio(sum(s["output"] == "vascular" for s in visible_vessels),
                                                 len(visible_vessels)),
            "vascular_specificity": _ratio(sum(s["output"] != "vascular" for s in non_vascular), len(non_vascular)),
            "detection_delay_frames_median": _pct(tally.delays, 50),
            "detection_delay_frames_max": max(tally.delays) if tally.delays else None,
            "missed_injections": tally.missed_detections,
            # the "detection delay <= 3 frames", per injection: never shown is a miss
            "detected_within_3_frames_rate": _ratio(sum(d <= 3 for d in tally.delays),
                                                    len(tally.delays) + tally.missed_detections),
            "none_before_injection_rate": _ratio(tally.pre_injection_none, tally.pre_injection_frames),
            "studies_contrast_below_snr3": [
                s["case"] for s in studies if s["truth"] != "none"
                and s["contrast_snr_max"] is not None and s["contrast_snr_max"] < DETECTABLE_SNR],
        },
        "dose": {
            # every study with a summary: dose is counted whichever image stages ran
            key: _dose_errors(tally.studies, key)
            for key in ("air_kerma_mgy", "dap_gycm2", "fluoro_time_s")
        },
        "per_study": tally.studies,
    }


def evaluate(cases_dir: str | Path, results_dir: str | Path) -> dict:
    """Score every case folder (with ``truth.json``) against ``results_dir/<case>/events.jsonl``
    and ``summary.json``."""
    tally = Tally()
    for truth_path in sorted(Path(cases_dir).glob("*/truth.json")):
        name = truth_path.parent.name
        events_path = Path(results_dir) / name / "events.jsonl"
        summary_path = Path(results_dir) / name / "summary.json"
        truth = json.loads(truth_path.read_text())
        events = ([json.loads(line) for line in events_path.read_text().splitlines() if line.strip()]
                  if events_path.exists() else [])
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        score_study(truth, events, summary, tally)
    return report(tally)


def _na(value) -> str:
    return "n/a" if value is None else str(value)


def _unreached(mm) -> str:
    return "unreached" if mm is None else f"{mm} mm"


def _of(rate: float | None, total: int, what: str = "") -> str:
    """A rate as the count it stands for: ``3 of 4 frames (0.75)``."""
    what = f" {what}" if what else ""
    if rate is None or not total:
        return f"n/a (of {total}{what})"
    return f"{round(rate * total)} of {total}{what} ({rate})"


def _case_name(case) -> str:
    return f"case{case:03d}" if isinstance(case, int) else str(case)


def format_report(r: dict) -> str:
    n, j, c, d = r["needle"], r["joint"], r["contrast"], r["dose"]
    if r["studies"] and len(r["studies_without_results"]) == r["studies"]:  # n/a only
        return ("no results for: " + ", ".join(_case_name(c) for c in r["studies_without_results"])
                + " (replay the cases first: sifluoro batch-replay CASES --out RESULTS)")
    missing = r["missing_frames"] - r.get("missing_frames_of_damaged_files", 0)
    lines = [
        f"studies {r['studies']}  (frames missing from the outputs: {r['missing_frames']}, of which "
        f"{r.get('missing_frames_of_damaged_files', 0)} in damaged files: lost, no event by design"
        + (f"; {missing} others, scored as showing nothing" if missing else "") + ")",
        f"needle   tip error (of tips reported) median {n['tip_error_mm_median']} mm, p95 "
        f"{n['tip_error_mm_p95']} mm; "
        f"detected {_of(n['detection_rate_3mm'], n['tip_frames'], 'frames')}; false tips "
        f"{_of(n['false_tip_rate'], n['no_needle_frames'], 'frames without a needle')}; end-on "
        f"frames: within 3 mm {_of(n['end_on_detection_rate_3mm'], n['end_on_frames'])}"
        + (f"; tip outside the field (its shaft in): a tip reported on "
           f"{n['tip_outside_field_tips_reported']} of {n['tip_outside_field_frames']} frames"
           + (f", {n['tip_outside_field_error_mm_median']} mm (max "
              f"{n['tip_outside_field_error_mm_max']} mm) from the real tip, confidence up to "
              f"{n['tip_outside_field_confidence_max']}"
              if n.get("tip_outside_field_error_mm_median") is not None else "")
           if n.get("tip_outside_field_frames") else "")
        + (f"; tips in the pixels (SNR >= 3): detected "
           f"{_of(n['detectable_detection_rate_3mm'], n['detectable_tip_frames'], 'frames')}, error median "
           f"{n['detectable_tip_error_mm_median']} mm, p95 {n['detectable_tip_error_mm_p95']} mm "
           f"(of the tips reported; over all {n['detectable_tip_frames']} frames, a frame without a "
           f"tip a miss: median {_unreached(n['detectable_tip_error_mm_median_of_frames'])}, p95 "
           f"{_unreached(n['detectable_tip_error_mm_p95_of_frames'])}: no tip on "
           f"{n['detectable_tips_not_reported']} frames); "
           f"a tip within 0.5 mm on {_of(n['detectable_within_0_5mm_rate'], n['detectable_tip_frames'])}, "
           f"within 1.5 mm on {_of(n['detectable_within_1_5mm_rate'], n['detectable_tip_frames'])}"
           if n["detectable_tip_frames"] else ""),
        f"joint    mean distance {j['mean_distance_mm']} mm, coverage {j['coverage_2mm']}, reported "
        f"{j['reported_rate']}, false {_na(j['false_joint_rate'])}; doubled advice right on "
        f"{_of(j['doubled_cases_advice_right_90pct'], j['doubled_cases'], 'doubled cases')} (single lines "
        f"called doubled {j['single_frames_called_doubled_rate']}; per frame: doubled advised "
        f"{j['doubled_frame_sensitivity']}, advice agrees with the truth "
        f"{j['doubled_frame_agreement']}); target "
        f"error median {j['target_error_mm_median']} mm",
        f"contrast study accuracy {c['study_accuracy']}, per-frame {c['frame_accuracy_from_injection']}, "
        f"vascular sens {c['vascular_sensitivity']} spec {c['vascular_specificity']}, delay median "
        f"{c['detection_delay_frames_median']} max {c['detection_delay_frames_max']} frames, "
        f"within 3 frames {_na(c['detected_within_3_frames_rate'])} of injections "
        f"({c['missed_injections']} never shown), none before injection "
        f"{c['none_before_injection_rate']}"
        + (f"; visible vessels (SNR >= 3) found {_of(c['visible_vessel_sensitivity'], c['visible_vessels'])}"
           if c["visible_vessels"] else "")
        + (f"; contrast never above SNR 3 in cases {c['studies_contrast_below_snr3']}"
           if c["studies_contrast_below_snr3"] else ""),
        "dose     |rel. error| of the study's whole dose, median (max) " + ", ".join(
            f"{k} {v['median_abs_rel_error']} ({v['max_abs_rel_error']})" for k, v in d.items())
        + "; by source: " + "; ".join(
            f"{src} ({v['studies']} {'study' if v['studies'] == 1 else 'studies'}) air kerma "
            f"{v['median_abs_rel_error']} "
            f"({v['max_abs_rel_error']})"
            for src, v in d["air_kerma_mgy"]["by_source"].items()),
    ]
    for i, stage in ((1, "needle"), (2, "register"), (3, "contrast")):
        if stage not in r["assessed"]:
            lines[i] = f"{lines[i].split()[0]:8} not assessed (the {stage} stage did not run)"
    if r["studies_without_results"]:
        lines.append("no results for: " + ", ".join(_case_name(c) for c in r["studies_without_results"]))
    return "\n".join(re.sub(r"\bNone\b", "n/a", line) for line in lines)
