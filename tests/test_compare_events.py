"""benchmarks.compare_events: equal replays but for their timing pass; any other change, a
missing frame or study, fails, in both results layouts."""
from __future__ import annotations

import io
import json

from benchmarks.compare_events import compare, main


def _write(folder, case, events, summary, batch):
    if batch:
        (folder / case).mkdir(parents=True)
        events_path, summary_path = folder / case / "events.jsonl", folder / case / "summary.json"
    else:
        folder.mkdir(parents=True, exist_ok=True)
        events_path, summary_path = folder / f"{case}.jsonl", folder / f"{case}.summary.json"
    events_path.write_text("".join(json.dumps(e) + "\n" for e in events))
    summary_path.write_text(json.dumps(summary))


def _events(latency):
    return [{"index": i, "joint": {"polyline_xy": [[1.0, 2.0 + i]]}, "latency_ms": latency + i,
             "degraded": False} for i in range(3)]


def test_timing_aside_equal_replays_pass_and_changes_fail(tmp_path):
    summary = {"frames": 3, "latency_ms": {"p50": 1.0}}
    _write(tmp_path / "base", "case000", _events(1.0), summary, batch=True)
    _write(tmp_path / "new", "case000", _events(7.0), {**summary, "latency_ms": {"p50": 9.0}},
           batch=False)
    assert main([str(tmp_path / "base"), str(tmp_path / "new")]) == 0

    changed = _events(1.0)
    changed[1]["joint"]["polyline_xy"][0][0] += 0.01
    _write(tmp_path / "moved", "case000", changed, summary, batch=False)
    out = io.StringIO()
    got = compare(tmp_path / "base", tmp_path / "moved", out)
    assert got["differing"] == 1 and "case000 event 1 (frame index 1): joint" in out.getvalue()

    _write(tmp_path / "short", "case000", _events(1.0)[:2], summary, batch=False)
    _write(tmp_path / "short", "case001", _events(1.0), summary, batch=False)
    got = compare(tmp_path / "base", tmp_path / "short", io.StringIO())
    assert got["differing"] == 1 and got["missing"] == ["case001"]
    assert main([str(tmp_path / "base"), str(tmp_path / "short")]) == 1
