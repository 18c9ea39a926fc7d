"""Fixtures shared by the pipeline tests."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def sim_512():
    """Frames and truth of a quick simulated study (seed 2026, case 1: needle on every frame,
    a vascular contrast run), 512²."""
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    return list(sim_frames(simulate_case(2026, 1, quick=True)))


@pytest.fixture(scope="module")
def frames_512(sim_512):
    return [f for f, _ in sim_512]
