"""Score the contrast stage on a simulated evaluation set (DICOM + truth.json per case).

    .venv/bin/python -m benchmarks.eval_contrast /work/evalset [--out DIR] [--json]

Each case is replayed through the pipeline with the contrast stage only (dose runs as always)
into ``OUT/<case>/events.jsonl`` and ``summary.json``, then scored with
:mod:`sifluoro.sim.evaluate`; the contrast section, the per-study outcomes and where the
per-frame errors from injection start lie (:func:`frame_confusion`) are printed, and the
vascular sensitivity on the studies whose vessel is in the pixels (:func:`vascular_visibility`),
and the studies right by the parts of their injection (:func:`outcome_parts`: a joint fill with
a cloud beside it is an extravasation, a cloud alone too).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
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


_SHORT = {"none": "none", "intra_articular": "I", "extravasation": "E", "vascular": "V"}


def _frame_key(f: dict):
    """A frame by its file and frame number, as :mod:`sifluoro.sim.evaluate` matches them: the
    replay numbers the frames it received, so after a damaged file its ``index`` runs behind
    the truth's (records without those keys: ``index``)."""
    return (f["sop_instance_uid"], f["frame"]) if "sop_instance_uid" in f else f["index"]


def _output_states(truth: dict, events_path: Path) -> dict[int, str]:
    """Output state per truth ``index`` (frames without an event left out)."""
    index = {_frame_key(f): f["index"] for f in truth["frames"]}
    out = {}
    if events_path.exists():
        for line in events_path.read_text().splitlines():
            if line.strip():
                e = json.loads(line)
                if _frame_key(e) in index:
                    out[index[_frame_key(e)]] = e["contrast"]["state"]
    return out


def frame_confusion(cases_dir: str | Path, results_dir: str | Path) -> dict:
    """Frames from injection start (the first frame whose truth is not ``none``, as in
    :mod:`sifluoro.sim.evaluate`) by truth and output state, ``"I->E"``-style keys (``"V->none"``:
    not seen yet), and the studies each wrong pair comes from. Frames without an event are
    left out."""
    pairs: Counter = Counter()
    studies: dict[str, set] = {}
    for truth_path in sorted(Path(cases_dir).glob("*/truth.json")):
        truth = json.loads(truth_path.read_text())
        out = _output_states(truth, Path(results_dir) / truth_path.parent.name / "events.jsonl")
        started = False
        for f in truth["frames"]:
            started = started or f["contrast_state"] != "none"
            if not started or f["index"] not in out:
                continue
            key = f"{_SHORT[f['contrast_state']]}->{_SHORT[out[f['index']]]}"
            pairs[key] += 1
            if f["contrast_state"] != out[f["index"]]:
                studies.setdefault(key, set()).add(truth_path.parent.name)
    return {"frames": sum(pairs.values()), "pairs": dict(sorted(pairs.items())),
            "wrong_studies": {k: sorted(v) for k, v in sorted(studies.items())}}


# truth SNR from which opacity is in the pixels (sifluoro.sim.evaluate.DETECTABLE_SNR)
VISIBLE_SNR = 3.0


def vascular_visibility(cases_dir: str | Path, results_dir: str | Path) -> list[dict]:
    """Per vascular study (truth reaches ``vascular``): the vessels' best truth SNR,
    ``vessel_snr`` (truths made before it existed: ``contrast_snr`` on the frames of truth
    state ``vascular``, which in a joint + vessel study may be the joint fill's; ``source``
    says which), whether that is visible (>= ``VISIBLE_SNR``), the output's
    final state (summary's, else the last event's) and the delay in frames from the first truth
    ``vascular`` frame to the first output one at or after it (None: never)."""
    out = []
    for truth_path in sorted(Path(cases_dir).glob("*/truth.json")):
        truth = json.loads(truth_path.read_text())
        frames = [f for f in truth["frames"] if f["contrast_state"] == "vascular"]
        if not frames:
            continue
        res = Path(results_dir) / truth_path.parent.name
        states = _output_states(truth, res / "events.jsonl")
        final = _final_state(res, states)
        source = "vessel_snr" if any("vessel_snr" in f for f in truth["frames"]) \
            else "contrast_snr"
        snrs = [f[source] for f in frames if f.get(source) is not None]
        best = max(snrs) if snrs else None
        # the first output vascular frame at or after the truth's first: one called before it
        # (a false state, dropped since) is no detection (review s26 F2)
        first_out = min((i for i, s in states.items()
                         if s == "vascular" and i >= frames[0]["index"]), default=None)
        out.append({"case": truth_path.parent.name, "snr_max": best, "source": source,
                    "visible": best is not None and best >= VISIBLE_SNR, "output": final,
                    "delay": None if first_out is None
                    else max(0, first_out - frames[0]["index"])})
    return out


def _final_state(res: Path, states: dict[int, str]) -> str | None:
    """The study's output state: its summary's, else its last event's (None: no output)."""
    if (res / "summary.json").exists():
        final = json.loads((res / "summary.json").read_text()).get("contrast_state")
        if final is not None:
            return final
    return states[max(states)] if states else None


def outcome_parts(cases_dir: str | Path, results_dir: str | Path) -> dict[str, dict]:
    """Studies by the parts of their injection (truth ``contrast_components`` joined by "+",
    ``"none"`` without an injection): how many, how many the output's final state gets right
    (the truth's ``outcome``), and the wrong ones with what they read. An outcome of
    extravasation is a cloud alone or a cloud beside a joint fill, a vascular one a vessel
    alone or beside a fill: their errors differ. Truths made before the field: left out."""
    out: dict[str, dict] = {}
    for truth_path in sorted(Path(cases_dir).glob("*/truth.json")):
        truth = json.loads(truth_path.read_text())
        if "contrast_components" not in truth:
            continue
        parts = "+".join(truth["contrast_components"]) or "none"
        res = Path(results_dir) / truth_path.parent.name
        final = _final_state(res, _output_states(truth, res / "events.jsonl"))
        row = out.setdefault(parts, {"studies": 0, "right": 0, "wrong": []})
        row["studies"] += 1
        if final == truth["outcome"]:
            row["right"] += 1
        else:
            row["wrong"].append(f"{truth_path.parent.name} -> {final}")
    return dict(sorted(out.items()))


def parts_lines(parts: dict[str, dict]) -> list[str]:
    if not parts:
        return []
    lines = ["  studies right by injection parts: " + ", ".join(
        f"{k} {v['right']} of {v['studies']}" for k, v in parts.items())]
    lines += [f"    {k}: {', '.join(v['wrong'])}" for k, v in parts.items() if v["wrong"]]
    return lines


def vascular_lines(vasc: list[dict]) -> list[str]:
    visible = [v for v in vasc if v["visible"]]
    found = [v for v in visible if v["output"] == "vascular"]
    sources = "/".join(sorted({v["source"] for v in vasc})) or "vessel_snr"
    lines = [f"  vascular sensitivity on visible vessels (truth {sources} >= {VISIBLE_SNR:g}): "
             f"{len(found)} of {len(visible)}"
             + (f"; all vascular: {sum(v['output'] == 'vascular' for v in vasc)} of {len(vasc)}"
                if vasc else "")]
    lines += [f"    {v['case']} snr {v['snr_max']} {'visible' if v['visible'] else 'not visible'} "
              f"-> {v['output']}" + ("" if v["delay"] is None else f" (delay {v['delay']})")
              for v in vasc]
    return lines


def confusion_lines(conf: dict) -> list[str]:
    wrong = {k: n for k, n in conf["pairs"].items() if k.split("->")[0] != k.split("->")[1]}
    lines = [f"  per-frame from injection: {conf['frames']} frames, wrong "
             + (", ".join(f"{k} {n}" for k, n in sorted(wrong.items(), key=lambda kv: -kv[1]))
                or "none")]
    lines += [f"    {k}: {', '.join(v)}" for k, v in conf["wrong_studies"].items()]
    return lines


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
        conf = frame_confusion(args.cases, args.out or tmp)
        vasc = vascular_visibility(args.cases, args.out or tmp)
        parts = outcome_parts(args.cases, args.out or tmp)
    if args.json:
        print(json.dumps({"contrast": rep["contrast"], "per_study": rep["per_study"],
                          "frame_confusion": conf, "vascular": vasc, "parts": parts}, indent=1))
    else:
        print("\n".join(contrast_lines(rep) + confusion_lines(conf) + parts_lines(parts)
                        + vascular_lines(vasc)))
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
