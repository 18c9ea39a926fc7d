"""Batch replay and batch ingest on Dask give the single-process results exactly.

A local cluster of two worker processes is started once; the CLI reaches it with
``--scheduler``. Four simulated 512² studies keep the test short; the 24-study comparison
is ``benchmarks/dask_replay_24.py``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="Dask is not installed: pip install 'dask[distributed]'")

from sifluoro.audit.distributed import batch_replay, dask_client  # noqa: E402
from sifluoro.config import Settings  # noqa: E402
from sifluoro.audit.schema import open_registry  # noqa: E402
from sifluoro.sim.batch import replay_set, simulate_set  # noqa: E402
from tests.audit.corpus import write_corpus  # noqa: E402
from tests.audit.test_ingest import _comparable  # noqa: E402

# wall-clock dependent: how long a frame took, and whether that was over budget
TIMING_KEYS = {"latency_ms", "degraded", "degraded_frames"}
NO_DEADLINE_MS = 1e9


@pytest.fixture(scope="module")
def scheduler():
    with dask_client() as client:  # the default: LocalCluster, 2 processes
        assert len(client.scheduler_info()["workers"]) == 2
        yield client.scheduler.address


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cases")
    list(simulate_set(out, cases=4, seed=2026, size="512", workers=2))
    return out


def comparable_results(results: Path) -> dict:
    """Every case's events and summary, without the wall-clock fields."""
    out = {}
    for case in sorted(p for p in results.iterdir() if p.is_dir()):
        events = [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
                  for line in (case / "events.jsonl").read_text().splitlines()]
        summary = {k: v for k, v in json.loads((case / "summary.json").read_text()).items()
                   if k not in TIMING_KEYS}
        out[case.name] = (events, summary)
    return out


def test_serial_batch_replay_is_replay_set(cases, tmp_path):
    for _ in replay_set(cases, tmp_path / "replay_set",
                        settings=Settings(latency_budget_ms=NO_DEADLINE_MS)):
        pass
    assert [code for _, _, code in batch_replay(cases, tmp_path / "ours",
                                                budget_ms=NO_DEADLINE_MS)] == [0, 0, 0, 0]
    assert comparable_results(tmp_path / "ours") == comparable_results(tmp_path / "replay_set")


def test_dask_batch_replay_equals_the_serial_replay(cases, scheduler, tmp_path):
    # a budget no frame reaches: which stages run must not depend on the machine's load
    serial = tmp_path / "serial"
    for _ in batch_replay(cases, serial, budget_ms=NO_DEADLINE_MS):
        pass
    run = subprocess.run([sys.executable, "-m", "sifluoro", "batch-replay", str(cases),
                          "--out", str(tmp_path / "dask"), "--dask", "--scheduler", scheduler,
                          "--budget-ms", str(NO_DEADLINE_MS)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 4
    expected, got = comparable_results(serial), comparable_results(tmp_path / "dask")
    assert sorted(got) == ["case000", "case001", "case002", "case003"]
    assert all(len(events) > 0 for events, _ in expected.values())
    assert not any("skipped_stages" in e for events, _ in expected.values() for e in events)
    assert got == expected


def test_dask_ingest_equals_the_serial_ingest(scheduler, tmp_path):
    write_corpus(tmp_path / "in")
    serial_db, dask_db = f"sqlite:///{tmp_path / 'serial.db'}", f"sqlite:///{tmp_path / 'dask.db'}"
    for db, extra in ((serial_db, ["--workers", "1"]), (dask_db, ["--scheduler", scheduler])):
        subprocess.run([sys.executable, "-m", "sifluoro", "audit", "ingest",
                        str(tmp_path / "in"), "--db", db, "-q", *extra], check=True, timeout=900)
    a, b = open_registry(serial_db), open_registry(dask_db)
    assert _comparable(a)["studies"] and _comparable(a) == _comparable(b)
    a.dispose()
    b.dispose()
