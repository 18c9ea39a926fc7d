"""Run every benchmark and write one JSON report: ``python -m benchmarks [--quick] [--out F]``."""
from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import bench_replay


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, for CI")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    args = parser.parse_args()
    results = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "processor": platform.machine()},
        "replay": bench_replay.run(40 if args.quick else 200, 512 if args.quick else 1024),
    }
    try:
        from benchmarks import bench_sim
    except ImportError:
        bench_sim = None
    if bench_sim is not None and hasattr(bench_sim, "run"):
        results["simulator"] = bench_sim.run(quick=args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
