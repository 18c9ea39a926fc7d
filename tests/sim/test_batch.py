"""Writing a set on a process pool from a process that has already simulated."""
import numpy as np
from numba import njit, prange

from sifluoro.sim.batch import simulate_set


@njit(parallel=True)
def _parallel_sum(values):
    total = 0.0
    for i in prange(values.size):
        total += values[i]
    return total


def test_a_pool_started_after_the_parallel_kernels_ran_writes_the_set(tmp_path):
    """The parallel kernels start GNU OpenMP threads; a pool forked after them had each child
    killed at once ("fork() called from a process already using GNU OpenMP"): the Dask test's
    set broke whenever xdist ran a simulating test before it on the same worker."""
    assert _parallel_sum(np.ones(1000)) == 1000.0  # this process now has OpenMP threads
    lines = list(simulate_set(tmp_path, cases=2, seed=2026, size="512", workers=2, quick=True))
    assert [line.split(":")[0] for line in lines] == ["case000", "case001"]
    assert all((tmp_path / f"case00{k}" / "truth.json").exists() for k in (0, 1))
