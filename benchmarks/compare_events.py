"""Whether two replays of the same studies gave the same events, timing aside: the check that a
speed change changed no result.

``python -m benchmarks.compare_events BASE NEW`` compares the events (and summaries) of every
study under BASE with those under NEW, dropping the fields that depend on the machine's speed:
``latency_ms`` and ``degraded`` (with no deadline only a frame over an infinite budget is
degraded: never) in events, ``latency_ms`` in summaries. A folder holds either
``batch-replay --out`` results (``CASE/events.jsonl``, ``CASE/summary.json``) or
``CASE.jsonl`` with ``CASE.summary.json`` beside it. Replay both with ``--budget-ms inf``: under a
deadline the degraded steps follow the machine's load. Prints each differing frame and field and
a total; exit status 1 when anything differs or a study is missing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TIMING_FIELDS = frozenset({"latency_ms", "degraded"})


def without_timing(value):
    """``value`` (an event, a summary or a part of one) without :data:`TIMING_FIELDS`."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_FIELDS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def studies(folder: Path) -> dict[str, tuple[Path, Path]]:
    """``{case: (events, summary)}`` of a results folder (either layout)."""
    found = {p.parent.name: (p, p.with_name("summary.json")) for p in folder.glob("*/events.jsonl")}
    for p in folder.glob("*.jsonl"):
        found[p.stem] = (p, p.with_name(f"{p.stem}.summary.json"))
    return found


def compare(base: Path, new: Path, out=sys.stdout) -> dict:
    """Compare the studies of two results folders; ``{"studies", "frames", "differing",
    "missing"}`` (differing: events, frame counts and summaries that differ)."""
    old, got = studies(base), studies(new)
    total = {"studies": 0, "frames": 0, "differing": 0, "missing": sorted(set(old) ^ set(got))}
    for case in total["missing"]:
        print(f"{case}: in only one of the folders", file=out)
    for case in sorted(set(old) & set(got)):
        a, b = ([without_timing(json.loads(line)) for line in paths[0].read_text().splitlines()
                 if line.strip()] for paths in (old[case], got[case]))
        total["studies"] += 1
        total["frames"] += len(a)
        if len(a) != len(b):
            print(f"{case}: {len(a)} events against {len(b)}", file=out)
            total["differing"] += 1
        for k, (x, y) in enumerate(zip(a, b)):
            if x != y:
                keys = sorted(key for key in set(x) | set(y) if x.get(key) != y.get(key))
                print(f"{case} event {k} (frame index {x.get('index')}): {', '.join(keys)}", file=out)
                total["differing"] += 1
        summaries = [without_timing(json.loads(p[1].read_text())) if p[1].exists() else None
                     for p in (old[case], got[case])]
        if summaries[0] != summaries[1]:
            keys = sorted(k for k in set(summaries[0] or {}) | set(summaries[1] or {})
                          if (summaries[0] or {}).get(k) != (summaries[1] or {}).get(k))
            print(f"{case} summary: {', '.join(keys) or 'present in one folder only'}", file=out)
            total["differing"] += 1
    print(f"{total['studies']} studies, {total['frames']} frames: {total['differing']} "
          f"differences, {len(total['missing'])} studies missing", file=out)
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    total = compare(args.base, args.new)
    return 1 if total["differing"] or total["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
