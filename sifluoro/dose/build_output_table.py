"""Generate ``sifluoro/dose/data/tube_output.npz``, the X-ray tube output table, from SpekPy.

Run ``python -m sifluoro.dose.build_output_table`` after changing the grid below; it takes a few
minutes (SpekPy computes ~0.5 s per spectrum). The runtime (:mod:`sifluoro.dose.output_table`)
then computes the air kerma per mAs at 1 m with numpy only.

What the file holds, on one energy grid (bin centres ``energy_kev``, width ``bin_kev``):

``kerma_ugy_per_mas`` : float32, shape (angles, kVps, energies)
    Each energy bin's contribution to the air kerma at 1 m, free in air, per mAs, of the
    unfiltered SpekPy spectrum (W anode, ``physics="casim"``): fluence × E × (μen/ρ)air.
``mu_al_per_mm``, ``mu_cu_per_mm`` : float64
    Linear attenuation coefficients of aluminium and copper.
``kvp``, ``anode_angle_deg`` : the grid axes.

Notes
-----
The Al/Cu attenuation coefficients are SpekPy's own (NIST XCOM), read back as the transmission
of 1 mm of each material, so that the table reproduces ``Spek.get_kerma(norm=True)``. xraydb's
Elam tables are also computed here as an independent check: they agree to within ~1 % for Al
below 30 keV (0.3 % for Cu), which alone would move low-kV outputs by about 1 %. xraydb has no
mass energy-absorption coefficient, so (μen/ρ)air is SpekPy's NIST table as well.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

KVP = np.arange(40, 151, 1, dtype=np.float64)
ANODE_ANGLES_DEG = np.array([8.0, 10.0, 12.0, 14.0, 16.0])
BIN_KEV = 0.5
DENSITY_G_CM3 = {"Al": 2.699, "Cu": 8.96}
DEFAULT_PATH = Path(__file__).with_name("data") / "tube_output.npz"


def _spectrum(kvp: float, angle_deg: float):
    import spekpy

    spek = spekpy.Spek(kvp=float(kvp), th=float(angle_deg), dk=BIN_KEV)
    energy_kev, fluence = spek.get_spectrum()  # photons / (keV cm² mAs) at 1 m
    return spek, np.asarray(energy_kev), np.asarray(fluence)


def build(path: Path = DEFAULT_PATH) -> dict[str, float]:
    """Compute the table and write it; return the largest xraydb/SpekPy μ deviations."""
    import xraydb

    t0 = time.perf_counter()
    top, energy_kev, open_fluence = _spectrum(KVP[-1], 12.0)
    muen_air_cm2_g = np.asarray(top.muen_air_data.get_muen_over_rho_air(energy_kev))
    # µGy/mAs = Σ Φ(E) ΔE · E · (μen/ρ) · c; c from SpekPy's own total, so units match exactly
    unit = top.get_kerma(norm=True) / float(np.sum(open_fluence * BIN_KEV * energy_kev * muen_air_cm2_g))
    weights = BIN_KEV * energy_kev * muen_air_cm2_g * unit
    mu = {}
    for material in ("Al", "Cu"):
        spek, _, _ = _spectrum(KVP[-1], 12.0)
        spek.filter(material, 1.0)
        _, filtered = spek.get_spectrum()
        with np.errstate(divide="ignore", invalid="ignore"):
            mu_mm = np.where(open_fluence > 0, -np.log(filtered / open_fluence), 0.0)
        # below ~10 keV 1 mm stops everything; a large finite μ keeps 0 mm × μ at 0
        mu[material] = np.nan_to_num(mu_mm, nan=0.0, posinf=1.0e4)
    usable = (energy_kev >= 15.0) & (open_fluence > 0)
    deviation = {}
    for material in ("Al", "Cu"):
        elam = xraydb.material_mu(material, energy_kev[usable] * 1000.0,
                                  density=DENSITY_G_CM3[material]) / 10.0
        deviation[material] = float(np.max(np.abs(elam / mu[material][usable] - 1.0)))
    n_energies = len(energy_kev)
    table = np.zeros((len(ANODE_ANGLES_DEG), len(KVP), n_energies), dtype=np.float32)
    for a, angle in enumerate(ANODE_ANGLES_DEG):
        for v, kvp in enumerate(KVP):
            _, e, fluence = _spectrum(kvp, angle)
            table[a, v, : len(e)] = fluence * weights[: len(e)]
        print(f"anode angle {angle:g}°: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, kvp=KVP, anode_angle_deg=ANODE_ANGLES_DEG, energy_kev=energy_kev,
        bin_kev=np.float64(BIN_KEV), kerma_ugy_per_mas=table,
        mu_al_per_mm=mu["Al"], mu_cu_per_mm=mu["Cu"])
    return deviation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    deviation = build(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB); xraydb vs SpekPy "
          f"attenuation above 15 keV: Al {deviation['Al']:.2%}, Cu {deviation['Cu']:.2%} at most")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
