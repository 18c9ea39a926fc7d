"""The shipped tube output table against SpekPy (the reference, used only here)."""
from __future__ import annotations

import numpy as np
import pytest

from sifluoro.dose import output_table
from sifluoro.dose.output_table import load_table, output_ugy_per_mas_at_1m

spekpy = pytest.importorskip("spekpy")


def _spekpy_output(kvp, al_mm, cu_mm, angle_deg):
    spek = spekpy.Spek(kvp=kvp, th=angle_deg, dk=0.5)
    spek.multi_filter([("Al", al_mm)] + ([("Cu", cu_mm)] if cu_mm > 0 else []))
    return spek.get_kerma(norm=True)


def test_table_agrees_with_spekpy_within_1_percent_at_random_points():
    rng = np.random.default_rng(9)
    errors = []
    for _ in range(12):
        kvp = float(rng.uniform(40.0, 150.0))
        al = float(rng.uniform(2.5, 6.0))
        cu = float(rng.choice([0.0, rng.uniform(0.05, 1.0)]))
        angle = float(rng.choice([10.0, 12.0, rng.uniform(8.0, 16.0)]))
        ours = output_ugy_per_mas_at_1m(kvp, filter_al_mm=al, filter_cu_mm=cu, anode_angle_deg=angle)
        errors.append(ours / _spekpy_output(kvp, al, cu, angle) - 1.0)
    assert np.max(np.abs(errors)) < 0.01, errors


def test_table_is_small_and_loads_without_spekpy(monkeypatch):
    import sys

    assert output_table.TABLE_PATH.stat().st_size < 1_000_000
    load_table.cache_clear()
    output_ugy_per_mas_at_1m.cache_clear()
    monkeypatch.setitem(sys.modules, "spekpy", None)  # any import of spekpy would now fail
    value = output_ugy_per_mas_at_1m(80.0, filter_al_mm=3.0, filter_cu_mm=0.1, anode_angle_deg=12.0)
    assert 20.0 < value < 60.0
    table = load_table()
    assert table.kvp_range == (40.0, 150.0)


def test_table_attenuation_agrees_with_xraydb():
    """The μ in the table (SpekPy's NIST data) and xraydb's Elam tables agree to 1.5 %."""
    xraydb = pytest.importorskip("xraydb")
    table = load_table()
    usable = (table.energy_kev >= 15.0) & (table.energy_kev <= 150.0)
    energy_ev = table.energy_kev[usable] * 1000.0
    for name, mu, density in (("Al", table.mu_al_per_mm, 2.699), ("Cu", table.mu_cu_per_mm, 8.96)):
        elam = xraydb.material_mu(name, energy_ev, density=density) / 10.0
        assert np.max(np.abs(elam / mu[usable] - 1.0)) < 0.015, name


def test_outside_the_table_is_refused():
    with pytest.raises(ValueError, match="outside"):
        output_ugy_per_mas_at_1m(30.0, filter_al_mm=3.0, filter_cu_mm=0.0, anode_angle_deg=12.0)
    with pytest.raises(ValueError, match="filtration"):
        output_ugy_per_mas_at_1m(80.0, filter_al_mm=-1.0, filter_cu_mm=0.0, anode_angle_deg=12.0)
