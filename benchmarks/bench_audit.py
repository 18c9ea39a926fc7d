"""Dose registry at scale: RDSR ingest throughput on SQLite, and the audit report on many studies.

1. Writes ``n_rdsr`` synthetic RDSRs (10,000; ``--quick`` 1,000) with
   :func:`sifluoro.audit.synthetic.write_synthetic_rdsrs` (sifluoro's own RDSR writer for the
   templates), ingests them into a new SQLite registry as ``sifluoro audit ingest`` does by
   default (2 parsing processes), and reports RDSRs/s; then ingests them again (all
   unchanged) to show the resume path.
2. Inserts ``n_studies`` synthetic study rows in bulk (100,000; ``--quick`` 10,000) into
   another SQLite registry and times :func:`sifluoro.audit.report.write_report` (statistics,
   CSV, charts, HTML).

Targets: ingest >= 200 RDSRs/s on 2 cores; report on 100,000 studies <= 10 s.
``python -m benchmarks.bench_audit [--quick]``
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from sifluoro.audit.ingest import ProcessMapper, ingest
from sifluoro.audit.report import write_report
from sifluoro.audit.schema import open_registry
from sifluoro.audit.synthetic import insert_synthetic_studies, write_synthetic_rdsrs

TARGET_RDSR_PER_S = 200.0
TARGET_REPORT_S = 10.0


def run(quick: bool = False) -> dict:
    n_rdsr = 1_000 if quick else 10_000
    n_studies = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="sifluoro-bench-audit-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = write_synthetic_rdsrs(tmp / "rdsr", n_rdsr, seed=2026)
        generate_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        engine = open_registry(f"sqlite:///{tmp / 'ingest.db'}")
        first = ingest([tmp / "rdsr"], engine, mapper=ProcessMapper(2))
        again = ingest([tmp / "rdsr"], engine, mapper=ProcessMapper(2))
        engine.dispose()
        assert first.studies_new == n_rdsr and not first.rejected, first.as_dict()
        assert again.unchanged == n_rdsr

        engine = open_registry(f"sqlite:///{tmp / 'report.db'}")
        t0 = time.perf_counter()
        insert_synthetic_studies(engine, n_studies, seed=2026)
        insert_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        files = write_report(engine, tmp / "report")
        report_s = time.perf_counter() - t0
        engine.dispose()
        html_kb = files.html.stat().st_size / 1e3
    rate = n_rdsr / first.elapsed_s
    return {
        "cpus": os.cpu_count(),
        "rdsr_files": n_rdsr,
        "rdsr_total_mb": round(size_mb, 1),
        "generate_s": round(generate_s, 2),
        "ingest_s": round(first.elapsed_s, 2),
        "ingest_rdsr_per_s": round(rate, 1),
        "ingest_target_rdsr_per_s": TARGET_RDSR_PER_S,
        "ingest_ok": rate >= TARGET_RDSR_PER_S,
        "reingest_unchanged_s": round(again.elapsed_s, 2),
        "report_studies": n_studies,
        "report_groups": files.groups,
        "report_outliers": files.outliers,
        "bulk_insert_s": round(insert_s, 2),
        "report_s": round(report_s, 2),
        "report_target_s": TARGET_REPORT_S,
        "report_ok": report_s <= TARGET_REPORT_S,
        "report_html_kb": round(html_kb, 1),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 RDSRs and 10,000 studies")
    args = parser.parse_args(argv)
    result = run(args.quick)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
