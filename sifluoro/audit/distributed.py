"""Dask for the audit's batch work: parse files for ingest, replay many studies.

Dask is optional: it is imported only when ``--dask`` is asked for. Without ``--scheduler`` a
local cluster of two worker processes (one thread each) is started and closed again; with
``--scheduler tcp://host:port`` the work goes to that cluster, whose workers must see the
same paths (a shared file system) and run the same sifluoro.

Results do not depend on where the work runs: tasks are pure functions of their inputs and
results are taken in submission order.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sifluoro.errors import ConfigError

log = logging.getLogger(__name__)

LOCAL_WORKERS = 2


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, *, n_workers: int = LOCAL_WORKERS):
    """A ``distributed.Client`` on ``scheduler``, or on a local cluster started for the block."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ConfigError("--dask needs Dask: pip install 'dask[distributed]'") from exc
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ConfigError(f"--scheduler {scheduler}: cannot connect ({exc})") from exc
        try:
            yield client
        finally:
            client.close()
        return
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.WARNING) as cluster, \
            Client(cluster) as client:
        yield client


class DaskMapper:
    """Run ``fn`` over chunks on a Dask client; results in submission order."""

    def __init__(self, client):
        self.client = client

    def __call__(self, fn: Callable, chunks: Iterable) -> Iterator:
        futures = self.client.map(fn, list(chunks), pure=False)
        for future in futures:
            yield future.result()
            future.release()


def replay_case(case_dir: str, out_dir: str, budget_ms: float | None = None,
                stages: tuple[str, ...] | None = None) -> tuple[str, dict, int]:
    """Replay one simulated case as :func:`sifluoro.sim.batch.replay_set` does, on any worker.

    ``budget_ms`` overrides the per-frame latency budget. Image stages skipped for the
    deadline depend on the wall clock (a loaded worker skips more); a budget no frame reaches
    makes a replay a pure function of its input. ``stages`` names the image stages (the
    replay's default when None).
    """
    from sifluoro.config import Settings
    from sifluoro.replay import replay
    from sifluoro.stages import REPLAY_STAGES, make_stages

    case = Path(case_dir)
    settings = Settings(latency_budget_ms=budget_ms) if budget_ms is not None else Settings()
    result = replay([case / "dicom"], events_path=Path(out_dir) / case.name / "events.jsonl",
                    summary_path=Path(out_dir) / case.name / "summary.json", settings=settings,
                    stages=make_stages(REPLAY_STAGES if stages is None else stages, settings))
    return case.name, result.summary, result.exit_code


def case_dirs(cases_dir: str | Path) -> list[Path]:
    """The case folders of a simulated set (those with a ``truth.json``), sorted."""
    return sorted(p for p in Path(cases_dir).iterdir() if (p / "truth.json").exists())


def batch_replay(cases_dir: str | Path, out: str | Path, *, client=None, budget_ms: float | None = None,
                 stages: tuple[str, ...] | None = None) -> Iterator[tuple[str, dict, int]]:
    """Replay every case of ``cases_dir`` into ``out/<case>/``: serially, or on a Dask client.

    Yields ``(case name, summary, exit code)`` in case order either way.
    """
    jobs = [str(p) for p in case_dirs(cases_dir)]
    if client is None:
        for job in jobs:
            yield replay_case(job, str(out), budget_ms, stages)
        return
    futures = client.map(replay_case, jobs, [str(out)] * len(jobs), [budget_ms] * len(jobs),
                         [stages] * len(jobs), pure=False)
    for future in futures:
        yield future.result()
        future.release()
