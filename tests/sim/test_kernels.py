"""Numba kernels against small NumPy references (random and edge cases)."""
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from sifluoro.sim import _kernels as K
from sifluoro.sim.geometry import make_camera


def _sampled_length(inside, s, r, t_max=400.0, n=400001):
    t = np.linspace(0.0, t_max, n)
    p = s[None] + t[:, None] * r[None]
    return inside(p).sum() * (t[1] - t[0])


def _unit(v):
    return v / np.linalg.norm(v)


@pytest.mark.parametrize("k", range(6))
def test_tube_chord_matches_sampling(k):
    rng = np.random.default_rng(k)
    a = rng.uniform(-5, 5, 3) + np.array([0, 200, 0])
    b = a + rng.uniform(-20, 20, 3)
    radius = rng.uniform(0.3, 3.0)
    s = np.zeros(3)
    # aim near the segment so the ray hits it in most draws
    target = a + rng.uniform(0, 1) * (b - a) + rng.normal(0, radius, 3)
    r = _unit(target - s)
    ax = _unit(b - a)
    ln = np.linalg.norm(b - a)

    def inside(p):
        w = p - a
        along = w @ ax
        perp = np.linalg.norm(w - along[:, None] * ax, axis=1)
        return (along >= 0) & (along <= ln) & (perp <= radius)

    got = K.tube_chord(*s, *r, *a, *b, radius)
    assert got == pytest.approx(_sampled_length(inside, s, r), abs=2e-3)


def test_tube_chord_parallel_and_miss():
    # ray exactly along the axis: chord = tube length
    assert K.tube_chord(0, 0, 0, 0, 1, 0, 0, 100, 0, 0, 130, 0, 0.4) == pytest.approx(30.0)
    # parallel but outside the radius
    assert K.tube_chord(0, 0, 0, 0, 1, 0, 1, 100, 0, 1, 130, 0, 0.4) == 0.0
    # perpendicular through the axis: chord = diameter
    assert K.tube_chord(0, 0, 0, 0, 1, 0, -5, 100, 0, 5, 100, 0, 0.4) == pytest.approx(0.8)


@pytest.mark.parametrize("k", range(4))
def test_ellipsoid_chord_matches_sampling(k):
    rng = np.random.default_rng(10 + k)
    c = np.array([0.0, 150.0, 0.0]) + rng.normal(0, 3, 3)
    semi = rng.uniform(4, 15, 3)
    rot = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    s = np.zeros(3)
    r = _unit(c + rng.normal(0, 4, 3))

    def inside(p):
        q = (p - c) @ rot.T / semi
        return (q ** 2).sum(axis=1) <= 1.0

    got = K.ellipsoid_chord(*s, *r, c, semi, rot)
    assert got == pytest.approx(_sampled_length(inside, s, r), abs=2e-3)


def test_ellipse_chord_matches_sampling():
    s = np.array([10.0, -600.0, 0.0])
    for k in range(4):
        r = _unit(np.array([0.1 * k - 0.1, 1.0, 0.2]))
        got = K.ellipse_chord(s[0], s[1], r[0], r[1], -40.0, 0.0, 180.0, 120.0)
        ref = _sampled_length(lambda p: ((p[:, 0] + 40) / 180) ** 2 + (p[:, 1] / 120) ** 2 <= 1,
                              s, r, t_max=1200.0, n=1200001)
        assert got == pytest.approx(ref, abs=3e-3)


def test_grid_sample_matches_map_coordinates():
    rng = np.random.default_rng(3)
    grid = rng.random((7, 9, 8)).astype(np.float32)   # layout (x, z, y)
    origin = np.array([1.0, -2.0, 3.0])
    for _ in range(50):
        p = origin + rng.uniform(0, 5.9, 3) * 1.5
        f = (p - origin) / 1.5
        ref = map_coordinates(grid, [[f[0]], [f[2]], [f[1]]], order=1)[0]
        assert K._grid_sample(grid, origin, 1 / 1.5, *p) == pytest.approx(ref, rel=1e-5)
    # outside the box -> 0
    assert K._grid_sample(grid, origin, 1 / 1.5, -100.0, 0.0, 0.0) == 0.0


def test_polychromatic_matches_numpy():
    rng = np.random.default_rng(4)
    maps = [rng.uniform(0, m, (5, 6)).astype(np.float32) for m in (200, 30, 0.5, 2)]
    w = rng.random(7)
    w /= w.sum()
    mus = [rng.uniform(0.01, 0.1, 7), rng.uniform(0.05, 0.3, 7), rng.uniform(0.5, 3, 7),
           rng.uniform(1, 5, 7)]
    out = np.empty((5, 6), np.float32)
    K.polychromatic(out, *maps, w, *mus)
    ref = sum(w[k] * np.exp(-sum(mus[m][k] * maps[m] for m in range(4))) for k in range(7))
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_project_point_matches_camera():
    cam = make_camera(np.array([5.0, 0.0, -3.0]), -22.0, 8.0, 1100.0, 720.0, 300.0, 512)
    pts = np.random.default_rng(5).uniform(-80, 80, (20, 3))
    ref = cam.project(pts)
    for p, q in zip(pts, ref):
        c, r, _ = K.project_point(cam.vector, *p)
        assert (c, r) == pytest.approx(tuple(q), abs=1e-9)
    # a projected point's ray passes through it
    xy = cam.project(pts[:1])[0]
    rd = np.array(K.pixel_ray(cam.vector, *xy))
    v = pts[0] - cam.source_mm
    assert np.linalg.norm(np.cross(rd, v / np.linalg.norm(v))) < 1e-9


def test_render_tubes_antialiased_total():
    """The image integral of a tube's chord map equals its volume times magnification^2."""
    cam = make_camera(np.zeros(3), 0.0, 0.0, 1000.0, 700.0, 200.0, 256)
    out = np.zeros((256, 256), np.float32)
    a = np.array([[-20.0, 0.0, 0.0]])
    b = np.array([[20.0, 0.0, 0.0]])
    K.render_tubes(out, cam.vector, a, b, np.array([0.5]), np.array([0.25]), np.array([1.0]), 4)
    mag = 1000.0 / 700.0
    vol = np.pi * (0.5 ** 2 - 0.25 ** 2) * 40.0
    got = out.sum() * (cam.pixel_spacing_mm / mag) ** 2
    assert got == pytest.approx(vol, rel=0.03)


def test_warm_up_runs():
    K.warm_up()
