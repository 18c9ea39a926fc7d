"""Run every benchmark and write one JSON report: ``python -m benchmarks [--quick] [--out F]``."""
from __future__ import annotations

import argparse
import importlib
import sys
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
    from benchmarks import bench_dose_estimate, bench_sim

    results["simulator"] = {"run_1024": bench_sim.bench_run_1024(20 if args.quick else 40),
                            "study_512": bench_sim.bench_study_512((0,) if args.quick else (0, 1, 2))}
    if bench_dose_estimate.DEFAULT_DIR.exists():
        results["dose_estimate"] = bench_dose_estimate.run()
    # stage benchmarks share one signature: run(quick) -> dict
    for name in ("bench_receiver", "bench_joint", "bench_needle", "bench_contrast", "bench_audit",
                 "bench_overlay", "bench_pipeline"):
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ImportError:
            continue
        print(f"running {name} ...", file=sys.stderr)
        results[name.removeprefix("bench_")] = module.run(quick=args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
