"""Batch replay of the 24 published simulated studies on Dask equals the serial replay.

Replays every case of CASES (default ``/work/evalset``, written by
``sifluoro simulate /work/evalset --cases 24 --seed 2026``) twice: serially with
:func:`sifluoro.sim.batch.replay_set`, and on Dask as ``sifluoro batch-replay --dask`` does
(a local cluster of 2 worker processes, or ``--scheduler tcp://host:port``). Compares every
event and summary exactly, without ``latency_ms`` (wall clock); ``degraded`` /
``degraded_frames`` (over the latency budget, also wall clock) are compared and reported
separately, with the number of events whose image stages were skipped for the deadline
(load dependent: ``--budget-ms 1e9`` removes that). Without CASES on disk, ``--simulate`` writes the set first (slow: minutes).

``python -m benchmarks.dask_replay_24 [CASES] [--scheduler tcp://...] [--quick]``
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from sifluoro.audit.distributed import batch_replay, case_dirs, dask_client
from sifluoro.sim.batch import replay_set, simulate_set

DEFAULT_CASES = Path("/work/evalset")
LATENCY = {"latency_ms"}
TIMING = {"latency_ms", "degraded", "degraded_frames"}


def load_results(results: Path, drop: set[str]) -> dict:
    """Every case's events and summary, without the keys in ``drop``."""
    out = {}
    for case in sorted(p for p in results.iterdir() if p.is_dir()):
        events = [{k: v for k, v in json.loads(line).items() if k not in drop}
                  for line in (case / "events.jsonl").read_text().splitlines()]
        summary = {k: v for k, v in json.loads((case / "summary.json").read_text()).items()
                   if k not in drop}
        out[case.name] = (events, summary)
    return out


def _differences(a: dict, b: dict) -> list[str]:
    diffs = []
    for case in sorted(set(a) | set(b)):
        if case not in a or case not in b:
            diffs.append(f"{case}: only in one run")
            continue
        (ea, sa), (eb, sb) = a[case], b[case]
        if len(ea) != len(eb):
            diffs.append(f"{case}: {len(ea)} vs {len(eb)} events")
        diffs += [f"{case}: event {i} differs" for i, (x, y) in enumerate(zip(ea, eb)) if x != y][:3]
        diffs += [f"{case}: summary[{k!r}] differs" for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
    return diffs


def _skipped(results: Path) -> int:
    """Events whose image stages were partly skipped for the deadline (load dependent)."""
    return sum("skipped_stages" in e for events, _ in load_results(results, set()).values() for e in events)


def run(quick: bool = False, *, cases_dir: Path = DEFAULT_CASES, scheduler: str | None = None,
        simulate: bool = False, budget_ms: float | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="sifluoro-dask-replay-") as tmp:
        tmp = Path(tmp)
        if not (case_dirs(cases_dir) if cases_dir.is_dir() else []):
            if not simulate:
                return {"skipped": f"no simulated cases in {cases_dir}; run `sifluoro simulate "
                                   f"{cases_dir} --cases 24 --seed 2026` or pass --simulate"}
            cases_dir = tmp / "cases"
            list(simulate_set(cases_dir, cases=4 if quick else 24, seed=2026))
        if quick:
            subset = tmp / "subset"
            subset.mkdir()
            for case in case_dirs(cases_dir)[:4]:
                (subset / case.name).symlink_to(case.resolve(), target_is_directory=True)
            cases_dir = subset
        n_cases = len(case_dirs(cases_dir))
        t0 = time.perf_counter()
        if budget_ms is None:
            serial_codes = [r.exit_code for _, r in replay_set(cases_dir, tmp / "serial")]
        else:
            serial_codes = [c for _, _, c in batch_replay(cases_dir, tmp / "serial", budget_ms=budget_ms)]
        serial_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with dask_client(scheduler) as client:
            workers = len(client.scheduler_info()["workers"])
            t1 = time.perf_counter()
            dask_codes = [code for _, _, code in batch_replay(cases_dir, tmp / "dask", client=client,
                                                           budget_ms=budget_ms)]
            dask_s = time.perf_counter() - t1
        dask_total_s = time.perf_counter() - t0
        strict = _differences(load_results(tmp / "serial", LATENCY), load_results(tmp / "dask", LATENCY))
        loose = _differences(load_results(tmp / "serial", TIMING), load_results(tmp / "dask", TIMING))
        frames = sum(len(e) for e, _ in load_results(tmp / "serial", TIMING).values())
        skipped = {"serial": _skipped(tmp / "serial"), "dask": _skipped(tmp / "dask")}
    return {
        "cases_dir": str(cases_dir if not quick else f"{cases_dir} (first 4)"),
        "cases": n_cases,
        "frames": frames,
        "dask_workers": workers,
        "scheduler": scheduler or "LocalCluster(2 processes)",
        "serial_s": round(serial_s, 2),
        "dask_s": round(dask_s, 2),
        "dask_including_cluster_start_s": round(dask_total_s, 2),
        # JSON has no infinity: "inf" (no deadline)
        "latency_budget_ms": ("default" if budget_ms is None
                              else "inf" if math.isinf(budget_ms) else budget_ms),
        "events_with_skipped_stages": skipped,
        "exit_codes_equal": serial_codes == dask_codes,
        "equal_without_latency_ms": not strict,
        "equal_without_timing_fields": not loose,
        "differences": (strict or loose)[:20],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases_dir", nargs="?", type=Path, default=DEFAULT_CASES, metavar="CASES")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT")
    parser.add_argument("--quick", action="store_true", help="only the first 4 cases")
    parser.add_argument("--simulate", action="store_true", help="write the cases first if CASES is empty")
    parser.add_argument("--budget-ms", type=float, help="per-frame budget for both runs (default: "
                        "replay's; a large one removes load-dependent stage skipping)")
    args = parser.parse_args(argv)
    result = run(args.quick, cases_dir=args.cases_dir, scheduler=args.scheduler, simulate=args.simulate,
                 budget_ms=args.budget_ms)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
