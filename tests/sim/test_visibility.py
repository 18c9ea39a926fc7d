"""The truth's SNRs: the matched-filter formula on known noise, and a study's values."""
from __future__ import annotations

import numpy as np
import pytest

from sifluoro.sim import simulate_case
from sifluoro.sim import study as sim_study
from sifluoro.sim import visibility as vis


def _scene(sigma: float, amplitude: float, seed: int, size: int = 200):
    """A straight needle ending at (120, 100), with white noise of ``sigma``."""
    rng = np.random.default_rng(seed)
    shaft = np.array([[40.0, 100.0], [120.0, 100.0]])
    yy, xx = np.mgrid[0:size, 0:size]
    signal = np.where((np.abs(yy - 100) <= 1) & (xx <= 120), amplitude, 0.0).astype(np.float32)
    noise = rng.normal(0.0, sigma, (size, size)).astype(np.float32)
    return signal, noise, np.ones((size, size), bool), shaft


def _template_pixels(signal: np.ndarray) -> int:
    """Signal pixels within 1.5 mm (3 px) of the last 5 mm (10 px) of the shaft: the template."""
    yy, xx = np.mgrid[0:signal.shape[0], 0:signal.shape[1]]
    along = np.clip(xx, 110, 120)
    near = np.hypot(xx - along, yy - 100) <= 3.0
    return int(np.count_nonzero(near & (signal > 0)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tip_snr_is_the_matched_filter_snr_on_white_noise(seed):
    signal, noise, mask, shaft = _scene(sigma=2.0, amplitude=1.0, seed=seed)
    spacing_mm = 0.5
    snr = vis.tip_snr(signal, noise, mask, shaft, spacing_mm)
    # for white noise and a template of amplitude 1 the NPW SNR is sqrt(sum t^2) / sigma
    assert snr == pytest.approx(np.sqrt(_template_pixels(signal)) / 2.0, rel=0.15)
    # twice the noise, half the SNR; twice the signal, twice
    assert vis.tip_snr(signal, 2 * noise, mask, shaft, spacing_mm) == pytest.approx(snr / 2, rel=1e-3)
    assert vis.tip_snr(2 * signal, noise, mask, shaft, spacing_mm) == pytest.approx(2 * snr, rel=1e-3)


def test_tip_snr_counts_only_the_last_millimetres_and_the_field():
    signal, noise, mask, shaft = _scene(sigma=1.0, amplitude=1.0, seed=3)
    short = signal.copy()
    short[:, 111:] = 0.0  # the needle ends 4.5 mm before the truth's tip: little of it counts
    assert _template_pixels(short) < 0.4 * _template_pixels(signal)
    assert vis.tip_snr(short, noise, mask, shaft, 0.5) == pytest.approx(
        np.sqrt(_template_pixels(short)), rel=0.2)
    # a tip at the collimator edge: what lies outside the field is blank (no signal there)
    mask[:, 118:] = False
    signal[:, 118:] = 0.0
    assert vis.tip_snr(signal, noise, mask, shaft, 0.5) == pytest.approx(
        np.sqrt(_template_pixels(signal)), rel=0.2)
    # a field too small to sample the noise around the tip: no SNR rather than a guess
    tiny = np.zeros_like(mask)
    tiny[97:104, 100:125] = True
    assert vis.tip_snr(signal, noise, tiny, shaft, 0.5) is None


def test_contrast_snr_on_a_disc_of_iodine():
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:160, 0:160]
    r = np.hypot(xx - 80, yy - 80)
    iodine = np.where(r <= 10, 0.5 - 0.001 * r, 0.0).astype(np.float32)  # peak at (80, 80)
    signal = (iodine > 0).astype(np.float32)
    noise = rng.normal(0.0, 1.0, iodine.shape).astype(np.float32)
    mask = np.ones(iodine.shape, bool)
    snr = vis.contrast_snr(signal, noise, mask, iodine, 0.02, 0.5)
    n_disc = int(((xx - 80) ** 2 + (yy - 80) ** 2 <= 25).sum())  # 2.5 mm = 5 px
    assert snr == pytest.approx(np.sqrt(n_disc), rel=0.15)
    assert vis.contrast_snr(signal, noise, mask, np.zeros_like(iodine), 0.02, 0.5) is None


def test_a_study_carries_snrs_and_the_same_pixels_without_them(monkeypatch):
    s = simulate_case(11, 3, quick=True)
    frames = [ft for run in s.runs for ft in run.truth]
    tips = [ft for ft in frames if ft.tip_xy is not None]
    assert tips and all(ft.tip_snr is not None and ft.tip_snr > 0 for ft in tips)
    assert all(ft.tip_snr is None for ft in frames if ft.tip_xy is None)
    opacified = [ft for ft in frames if ft.contrast_visible]
    assert all(ft.contrast_snr is not None for ft in opacified)
    assert all(ft.contrast_snr is None for ft in frames if not ft.contrast_visible)
    # the SNRs are computed from noise-free renders only: the random stream, and so every
    # stored pixel, is the same without them
    monkeypatch.setattr(sim_study, "_visibility", lambda *a, **k: (None, None, None))
    bare = simulate_case(11, 3, quick=True)
    for a, b in zip(s.runs, bare.runs, strict=True):
        assert np.array_equal(a.frames, b.frames)


def test_a_joint_and_vessel_study_gives_the_vessel_its_own_snr(monkeypatch):
    # seed 905 case 22: a joint fill and a faint vessel; the opacity's peak is the fill's
    s = simulate_case(905, 22, quick=True)
    assert set(s.contrast_components) == {"intra_articular", "vascular"}
    frames = [ft for run in s.runs for ft in run.truth]
    vessel = [ft for ft in frames if ft.vessel_snr is not None]
    assert vessel and all(ft.contrast_state == "vascular" for ft in vessel)
    assert all(ft.vessel_snr is None for ft in frames if ft.contrast_state != "vascular")
    best = max(ft.vessel_snr for ft in vessel)
    assert 3.0 < best < 12.0  # faint but in the pixels
    assert all(ft.vessel_snr < ft.contrast_snr for ft in vessel)  # the fill is brighter
    monkeypatch.setattr(sim_study, "_visibility", lambda *a, **k: (None, None, None))
    bare = simulate_case(905, 22, quick=True)
    for a, b in zip(s.runs, bare.runs, strict=True):
        assert np.array_equal(a.frames, b.frames)
