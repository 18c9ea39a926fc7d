"""Shared, cached simulations (the simulator is deterministic, so one render per session)."""
import numpy as np
import pytest

from sifluoro.sim import anatomy as anat
from sifluoro.sim import simulate_case
from sifluoro.sim.geometry import make_camera


@pytest.fixture(scope="session")
def study():
    return simulate_case(7, 2)


@pytest.fixture(scope="session")
def scene():
    """One anatomy with an aligned (joint-opening) camera and its static line integrals."""
    rng = np.random.default_rng(11)
    an = anat.sample_anatomy(rng, "R")
    target = an.joint_point(0.0, 0.0)

    def mk(p, s):
        return make_camera(target, p, s, 1100.0, 720.0, 300.0, 512)

    alpha = anat.opening_angle_deg(an, target, 5.0, mk)
    cam = mk(alpha, 5.0)
    grid, origin = anat.density_grid(an, [cam])
    static = anat.cast(an, grid, origin, cam)
    return an, cam, static, mk, alpha
