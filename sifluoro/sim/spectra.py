"""X-ray spectra (SpekPy) and attenuation coefficients (xraydb) reduced to a few energy bins."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import spekpy
import xraydb

# ICRU-44 cortical bone, mass fractions
_CORTICAL_BONE_MASS_FRACTIONS = {"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001,
                                 "Mg": 0.002, "P": 0.103, "S": 0.003, "Ca": 0.225}
CORTICAL_BONE_DENSITY_G_CM3 = 1.92
STEEL_DENSITY_G_CM3 = 7.9
CSI_DENSITY_G_CM3 = 4.51
N_BINS = 10


def _bone_formula() -> str:
    moles = {el: w / xraydb.atomic_mass(el) for el, w in _CORTICAL_BONE_MASS_FRACTIONS.items()}
    scale = 1.0 / min(moles.values())
    return "".join(f"{el}{n * scale:.4f}" for el, n in moles.items())


def spectrum_cache_dir() -> Path:
    """Where SpekPy spectra are kept between processes ($SIFLUORO_CACHE, else the XDG cache)."""
    base = os.environ.get("SIFLUORO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sifluoro")
    return Path(base) / f"spekpy-{spekpy.__version__}"


@lru_cache(maxsize=64)
def _raw_spectrum(kvp: int, anode_angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Unfiltered SpekPy spectrum: energies (keV) and fluence per keV per mAs at 1 m (1/cm^2).

    SpekPy takes ~0.3 s per spectrum, as long as rendering a short study, so each spectrum is
    also kept on disk (keyed by SpekPy's version); an unwritable cache only costs the time.
    """
    path = spectrum_cache_dir() / f"kvp{kvp}_th{anode_angle_deg:g}.npz"
    try:
        with np.load(path) as z:
            return z["energy_kev"], z["fluence"]
    except (OSError, KeyError, ValueError):
        pass
    spek = spekpy.Spek(kvp=float(kvp), th=float(anode_angle_deg))
    energy_kev, fluence = spek.get_spectrum()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as fh:
            tmp = fh.name
            np.savez(fh, energy_kev=energy_kev, fluence=fluence)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:   # a half-written file must not stay behind
            Path(tmp).unlink(missing_ok=True)
    return energy_kev, fluence


def _mu_per_mm(material: str, energy_kev: np.ndarray, density: float) -> np.ndarray:
    return np.asarray(xraydb.material_mu(material, energy_kev * 1000.0, density=density)) / 10.0


@dataclass(frozen=True)
class BeamModel:
    """Energy-binned beam as seen by the detector.

    ``weights`` are the shares of the detected (energy-weighted, absorbed) signal per bin;
    ``mu_*`` attenuation per bin in 1/mm (iodine in mm^2/mg, i.e. per areal density).
    ``quanta_per_mm2_per_mas_1m`` is the incident photon fluence at 1 m per mAs, and
    ``noise_quanta_fraction`` the factor turning incident photons into noise-equivalent quanta
    (absorption efficiency times the Swank factor of an energy-integrating detector).
    """

    energy_kev: np.ndarray
    weights: np.ndarray
    mu_water: np.ndarray
    mu_bone: np.ndarray
    mu_iodine: np.ndarray
    mu_steel: np.ndarray
    quanta_per_mm2_per_mas_1m: float
    noise_quanta_fraction: float
    kerma_ugy_per_mas_1m: float


@lru_cache(maxsize=64)
def beam_model(kvp: int, anode_angle_deg: float, filter_al_mm: float, filter_cu_mm: float,
               csi_mm: float = 0.6) -> BeamModel:
    """Polychromatic beam after Al+Cu filtration, binned for a CsI detector.

    Parameters
    ----------
    kvp : int
        Tube voltage (kV).
    anode_angle_deg : float
        Anode angle (degrees).
    filter_al_mm, filter_cu_mm : float
        Total aluminium (inherent + added) and copper filtration (mm).
    csi_mm : float
        CsI scintillator thickness (mm) of the detector (image intensifier input phosphor or
        flat panel).

    Returns
    -------
    BeamModel
    """
    energy_kev, fluence = _raw_spectrum(int(kvp), float(anode_angle_deg))
    keep = (fluence > 0) & (energy_kev >= 10.0)
    energy_kev = energy_kev[keep]
    fluence = fluence[keep]
    de = float(np.median(np.diff(energy_kev)))
    fluence = fluence * np.exp(-_mu_per_mm("Al", energy_kev, 2.699) * filter_al_mm
                               - _mu_per_mm("Cu", energy_kev, 8.96) * filter_cu_mm)
    # air kerma at 1 m: fluence * E * (mu_en/rho)_air
    # mu_en/rho of air ~ photoelectric + the energy-transfer share of Compton (about 10 %
    # at 30-90 keV)
    mu_en_air = (np.asarray(xraydb.material_mu("air", energy_kev * 1000.0, density=1.0,
                                               kind="photo"))
                 + 0.1 * np.asarray(xraydb.material_mu("air", energy_kev * 1000.0, density=1.0,
                                                       kind="incoh")))
    kerma_gy = np.sum(fluence * de * energy_kev * 1.602e-16 * mu_en_air * 1000.0)
    absorbed = 1.0 - np.exp(-_mu_per_mm("CsI", energy_kev, CSI_DENSITY_G_CM3) * csi_mm)
    signal = fluence * de * energy_kev * absorbed
    edges = np.linspace(energy_kev[0], energy_kev[-1] + 1e-6, N_BINS + 1)
    idx = np.clip(np.digitize(energy_kev, edges) - 1, 0, N_BINS - 1)
    w = np.bincount(idx, weights=signal, minlength=N_BINS)
    e_bin = np.bincount(idx, weights=signal * energy_kev, minlength=N_BINS) / np.maximum(w, 1e-30)
    used = w > 1e-3 * w.sum()
    e_bin = e_bin[used]
    w = w[used] / w[used].sum()
    bone = _bone_formula()
    mu_iodine = np.asarray(xraydb.mu_elam("I", e_bin * 1000.0)) * 0.1   # cm^2/g -> mm^2/mg
    n_incident = float(np.sum(fluence * de)) / 100.0                    # per mm^2
    n_abs = np.sum(fluence * de * absorbed)
    swank = np.sum(fluence * absorbed * energy_kev) ** 2 / (
        np.sum(fluence * absorbed * energy_kev ** 2) * n_abs / de)
    return BeamModel(
        energy_kev=e_bin, weights=w,
        mu_water=_mu_per_mm("water", e_bin, 1.0),
        mu_bone=_mu_per_mm(bone, e_bin, CORTICAL_BONE_DENSITY_G_CM3),
        mu_iodine=mu_iodine,
        mu_steel=_mu_per_mm("Fe", e_bin, STEEL_DENSITY_G_CM3),
        quanta_per_mm2_per_mas_1m=n_incident,
        noise_quanta_fraction=float(n_abs / np.sum(fluence * de) * swank),
        kerma_ugy_per_mas_1m=float(kerma_gy * 1e6),
    )
