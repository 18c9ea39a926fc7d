"""X-ray tube output from the shipped table: air kerma per mAs at 1 m, numpy only.

The table (``data/tube_output.npz``, built by :mod:`sifluoro.dose.build_output_table` from
SpekPy) holds unfiltered spectra as per-energy-bin air kerma contributions for 40-150 kV
(1 kV steps) at a few anode angles, plus Al and Cu attenuation on the same energy grid. Loading
takes a few milliseconds and a few MB, against SpekPy's ~1 s import, ~150 MB and ~0.3 s per
spectrum.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

TABLE_PATH = Path(__file__).with_name("data") / "tube_output.npz"


@dataclass(frozen=True)
class OutputTable:
    """The loaded table; see :mod:`sifluoro.dose.build_output_table` for its contents."""

    kvp: np.ndarray
    anode_angle_deg: np.ndarray
    energy_kev: np.ndarray
    kerma_ugy_per_mas: np.ndarray
    mu_al_per_mm: np.ndarray
    mu_cu_per_mm: np.ndarray

    @property
    def kvp_range(self) -> tuple[float, float]:
        return float(self.kvp[0]), float(self.kvp[-1])


@lru_cache(maxsize=1)
def load_table(path: str | Path = TABLE_PATH) -> OutputTable:
    """Load the table once per process."""
    with np.load(path) as data:
        return OutputTable(
            kvp=data["kvp"], anode_angle_deg=data["anode_angle_deg"],
            energy_kev=data["energy_kev"],
            kerma_ugy_per_mas=data["kerma_ugy_per_mas"].astype(np.float64),
            mu_al_per_mm=data["mu_al_per_mm"], mu_cu_per_mm=data["mu_cu_per_mm"])


def _bracket(axis: np.ndarray, value: float) -> tuple[int, int, float]:
    """Neighbouring indices and the weight of the upper one (clamped to the axis)."""
    value = min(max(value, float(axis[0])), float(axis[-1]))
    hi = int(np.searchsorted(axis, value))
    if hi == 0:
        return 0, 0, 0.0
    lo = hi - 1
    return lo, hi, (value - float(axis[lo])) / float(axis[hi] - axis[lo])


@lru_cache(maxsize=1024)
def output_ugy_per_mas_at_1m(kvp: float, *, filter_al_mm: float, filter_cu_mm: float,
                             anode_angle_deg: float) -> float:
    """Air kerma per mAs at 1 m from the focal spot, free in air (µGy/mAs).

    Parameters
    ----------
    kvp : float
        Tube voltage, 40-150 kV.
    filter_al_mm, filter_cu_mm : float
        Total aluminium (inherent plus added) and copper filtration.
    anode_angle_deg : float
        Target angle; interpolated between the table's angles and clamped to their range.

    Returns
    -------
    float
        The output, as SpekPy's ``Spek(kvp, th).multi_filter(...).get_kerma(norm=True)``.

    Raises
    ------
    ValueError
        ``kvp`` outside the table, or a negative filter thickness.
    """
    table = load_table()
    low, high = table.kvp_range
    if not low <= kvp <= high:
        raise ValueError(f"kvp = {kvp} is outside the tube output table's {low:g}-{high:g} kV")
    if filter_al_mm < 0 or filter_cu_mm < 0:
        raise ValueError(f"filtration must be >= 0 (Al {filter_al_mm} mm, Cu {filter_cu_mm} mm)")
    v0, v1, wv = _bracket(table.kvp, kvp)
    a0, a1, wa = _bracket(table.anode_angle_deg, anode_angle_deg)
    k = table.kerma_ugy_per_mas
    # spectra are interpolated linearly in kV and angle; filtration is exact per energy bin
    spectrum = ((1 - wa) * ((1 - wv) * k[a0, v0] + wv * k[a0, v1])
                + wa * ((1 - wv) * k[a1, v0] + wv * k[a1, v1]))
    transmission = np.exp(-(table.mu_al_per_mm * filter_al_mm + table.mu_cu_per_mm * filter_cu_mm))
    return float(spectrum @ transmission)
