"""The replay output contract (docs/contract.md §3), checked: integrators and tests use the
same rules."""
from __future__ import annotations

import json
import math
from pathlib import Path

CONTRAST_STATES = {"none", "intra_articular", "extravasation", "vascular"}
DOSE_KEYS = ("air_kerma_mgy", "dap_gycm2", "fluoro_time_s")
SUMMARY_KEYS = ("study_instance_uid", "frames", "fluoro_time_s", "air_kerma_mgy", "dap_gycm2",
                "contrast_state", "rejected_files", "latency_ms", "alerts")


DOSE_DIGITS = 9  # significant digits of a dose written out: more is float noise (0.17423200000000003)


def dose_value(v: float) -> float:
    """A dose (mGy, Gy·cm²) as written out: to :data:`DOSE_DIGITS` significant digits. Rounding
    never reverses an order, so a cumulative dose written this way never goes down, and a total
    and the last event, rounded alike, stay equal."""
    return float(f"{v:.{DOSE_DIGITS}g}")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _xy(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_num(c) for c in v)


def event_violations(e: dict) -> list[str]:
    """What is wrong with one event, as readable strings (empty when it follows the contract)."""
    bad = []
    if not (isinstance(e.get("sop_instance_uid"), str) and e["sop_instance_uid"]):
        bad.append("sop_instance_uid must be a non-empty string")
    if not (isinstance(e.get("frame"), int) and e["frame"] >= 1):
        bad.append("frame must be an int >= 1")
    if not (isinstance(e.get("index"), int) and e["index"] >= 0):
        bad.append("index must be an int >= 0")
    for key in ("t_s", "latency_ms"):
        if not _num(e.get(key)):
            bad.append(f"{key} must be a finite number")
    for key in ("needle", "joint", "target", "tip_to_target_mm"):
        if key not in e:
            bad.append(f"{key} must be present (null when unknown)")
    needle = e.get("needle")
    if needle is not None and not (isinstance(needle, dict) and _xy(needle.get("tip_xy"))
                                   and _num(needle.get("confidence"))):
        bad.append("needle must be null or {tip_xy: [x, y], confidence}")
    joint = e.get("joint")
    if joint is not None and not (isinstance(joint, dict) and isinstance(joint.get("polyline_xy"), list)
                                  and len(joint["polyline_xy"]) >= 2
                                  and all(_xy(p) for p in joint["polyline_xy"])):
        bad.append("joint must be null or {polyline_xy: [[x, y], ...]}")
    target = e.get("target")
    if target is not None and not (isinstance(target, dict) and _xy(target.get("xy"))):
        bad.append("target must be null or {xy: [x, y]}")
    if e.get("tip_to_target_mm") is not None and not _num(e["tip_to_target_mm"]):
        bad.append("tip_to_target_mm must be null or a number")
    contrast = e.get("contrast")
    if not (isinstance(contrast, dict) and contrast.get("state") in CONTRAST_STATES
            and _num(contrast.get("confidence"))):
        bad.append("contrast must be {state in the four states, confidence}")
    dose = e.get("dose")
    if not (isinstance(dose, dict) and all(_num(dose.get(k)) for k in DOSE_KEYS)):
        bad.append(f"dose must hold numbers {DOSE_KEYS}")
    return bad


def _t_s_violations(events: list[dict]) -> list[str]:
    """``t_s`` never goes down, but for the live receiver's one exception: a run acquired
    before the first one received keeps its true, earlier ``t_s``, marked ``out_of_order``
    (it rises within its run, its instance; the events after it go on from those before it)."""
    errors, last, last_of_run = [], None, {}
    for e in events:
        t = e.get("t_s")
        if not _num(t):
            continue
        marked = e.get("out_of_order") is True
        before = last_of_run.get(e.get("sop_instance_uid")) if marked else last
        if before is not None and t < before:
            errors.append(f"t_s goes backwards at index {e.get('index')}")
        if marked:
            last_of_run[e.get("sop_instance_uid")] = max(t, before if before is not None else t)
        else:
            last = max(t, last if last is not None else t)
    return errors


def replay_output_violations(events_path: str | Path, summary_path: str | Path) -> list[str]:
    """Every way the replay output breaks the contract (empty list when it follows it)."""
    errors, events = [], []
    with open(events_path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"line {n}: not JSON ({exc})")
                continue
            errors += [f"line {n}: {msg}" for msg in event_violations(e)]
            events.append(e)
    if [e.get("index") for e in events] != list(range(len(events))):
        errors.append("events must be in acquisition order with index 0, 1, 2, ...")
    keys = [(e.get("sop_instance_uid"), e.get("frame")) for e in events]
    if len(set(keys)) != len(keys):
        errors.append("a (sop_instance_uid, frame) pair appears twice")
    errors += _t_s_violations(events)
    for a, b in zip(events, events[1:]):
        da, db = a.get("dose") or {}, b.get("dose") or {}
        if any(_num(da.get(k)) and _num(db.get(k)) and db[k] < da[k] - 1e-12 for k in DOSE_KEYS):
            errors.append(f"cumulative dose decreases at index {b.get('index')}")
    with open(summary_path, encoding="utf-8") as fh:
        s = json.load(fh)
    for key in SUMMARY_KEYS:
        if key not in s:
            errors.append(f"summary.{key} is missing")
    if any(e.get("study_instance_uid", s.get("study_instance_uid")) != s.get("study_instance_uid")
           for e in events):
        errors.append("an event names another study than the summary's study_instance_uid")
    if s.get("frames") != len(events):
        errors.append(f"summary.frames ({s.get('frames')}) != events ({len(events)})")
    if s.get("contrast_state") not in CONTRAST_STATES:
        errors.append("summary.contrast_state must be a contrast state")
    if not (isinstance(s.get("rejected_files"), list)
            and all(isinstance(r, dict) and {"file", "reason"} <= set(r) for r in s["rejected_files"])):
        errors.append("summary.rejected_files must be a list of {file, reason}")
    lat = s.get("latency_ms")
    if not (isinstance(lat, dict) and all(_num(lat.get(k)) for k in ("p50", "p95", "p99", "max"))):
        errors.append("summary.latency_ms must hold p50, p95, p99, max")
    if events:
        for k in DOSE_KEYS:
            if not _num(s.get(k)) or abs(s[k] - events[-1]["dose"][k]) > 1e-6 * max(1.0, abs(s[k])):
                errors.append(f"summary.{k} differs from the last event's cumulative dose")
    return errors
