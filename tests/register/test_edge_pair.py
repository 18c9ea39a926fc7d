"""The near-AP band search (register/edge_pair.py): references and synthetic bands."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from sifluoro.imaging import WorkingGrid
from sifluoro.register import edge_pair
from sifluoro.register.edge_pair import along_course, band_line, band_response

GRID = WorkingGrid(factor=2, spacing_mm=0.6)
SIZE = 300  # working pixels: a 180 mm field


def _band_image(side: str, *, slope: float = 0.3, width_mm: float = 10.0, contrast: float = 0.05,
                medial_x_mm: float = 0.0, noise: float = 0.01, seed: int = 0,
                extra: list[tuple[float, float, float]] = ()) -> tuple[np.ndarray, np.ndarray]:
    """A bright band whose medial edge runs ``slope`` columns per row the side's way through
    ``medial_x_mm`` from the central column at the central row; returns (image, medial edge x
    per row). ``extra``: more bands as (medial_x_mm, contrast, slope)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    cy = cx = 0.5 * (SIZE - 1)
    towards = -1.0 if side == "L" else 1.0  # inferiorly towards the midline
    lateral = -towards
    image = np.full((SIZE, SIZE), 0.5)
    edge = None
    for mx_mm, c, sl in [(medial_x_mm, contrast, slope)] + list(extra):
        medial = cx + mx_mm / GRID.spacing_mm + towards * sl * (ys - cy)
        if edge is None:
            edge = medial[:, 0]
        # the band lies lateral of its medial edge
        inside = (lateral * (xs - medial) >= 0) & (lateral * (xs - medial) <= width_mm / GRID.spacing_mm)
        image += c * inside
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0 / GRID.spacing_mm)
    image += rng.normal(0.0, noise, image.shape).astype(np.float32)
    return image, edge


def _distance_mm(line, edge_x: np.ndarray) -> float:
    work = GRID.to_work(line.polyline_xy)
    rows = np.clip(np.round(work[:, 1]).astype(int), 0, SIZE - 1)
    return float(np.mean(np.abs(work[:, 0] - edge_x[rows])) * GRID.spacing_mm)


@pytest.mark.parametrize("side", ["L", "R"])
def test_the_line_is_the_medial_edge_of_the_band(side):
    image, edge = _band_image(side)
    line = band_line(image, grid=GRID, usable=np.ones(image.shape, bool), side=side)
    assert line is not None
    assert line.doubled
    # the medial shift is a bias of the real images' edges: about that far from the sharp one
    assert _distance_mm(line, edge) < edge_pair.MEDIAL_SHIFT_MM + 0.6
    # only where a centred view shows the joint: from 40 mm above the centre to the centre
    rows_mm = (GRID.to_work(line.polyline_xy)[:, 1] - 0.5 * (SIZE - 1)) * GRID.spacing_mm
    assert rows_mm.min() >= -edge_pair.ABOVE_CENTRE_MM - 1.5 and rows_mm.max() <= 1.5
    assert 0.0 < line.confidence <= edge_pair.CONFIDENCE_SCALE


@pytest.mark.parametrize("side", ["L", "R"])
def test_a_band_too_straight_or_running_the_other_way_is_not_a_joint(side):
    for slope in (0.0, -0.3):  # a column of foramina rims; the other side's course
        image, _ = _band_image(side, slope=slope)
        assert band_line(image, grid=GRID, usable=np.ones(image.shape, bool), side=side) is None


def test_nothing_on_noise_or_without_a_side():
    rng = np.random.default_rng(3)
    noise = (0.5 + rng.normal(0.0, 0.01, (SIZE, SIZE))).astype(np.float32)
    assert band_line(noise, grid=GRID, usable=np.ones(noise.shape, bool), side="L") is None
    image, _ = _band_image("L")
    assert band_line(image, grid=GRID, usable=np.ones(image.shape, bool), side=None) is None


def test_the_most_lateral_of_the_strong_bands_is_the_joint():
    # a stronger band 25 mm medial (the sacral foramina's rims lie medial of the joint)
    image, edge = _band_image("R", contrast=0.04, extra=[(25.0, 0.06, 0.3)])
    line = band_line(image, grid=GRID, usable=np.ones(image.shape, bool), side="R")
    assert line is not None and _distance_mm(line, edge) < 1.5
    # a medial band that is not half as strong is not looked at, a lateral one that is not
    # half as strong as the medial one is not taken
    image, edge = _band_image("R", contrast=0.012, extra=[(25.0, 0.06, 0.3)])
    line = band_line(image, grid=GRID, usable=np.ones(image.shape, bool), side="R")
    assert line is not None and _distance_mm(line, edge) > 20.0


def test_band_response_matches_a_per_pixel_reference():
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.random((40, 50), dtype=np.float32), (0, 0), 1.5)
    mask = np.ones(image.shape, bool)
    mask[:, :6] = mask[:, -6:] = False
    spacing = 1.2
    response, half, noise = band_response(image, mask, spacing_mm=spacing, side="R")
    s = cv2.GaussianBlur(image, (0, 0), edge_pair.EDGE_SIGMA_MM / spacing)
    g = np.zeros_like(s)
    g[:, 1:-1] = 0.5 * (s[:, 2:] - s[:, :-2])
    lo = int(np.floor(edge_pair.HALF_WIDTH_MM[0] / spacing))
    hi = int(np.ceil(edge_pair.HALF_WIDTH_MM[1] / spacing))
    expected = np.zeros_like(s)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            pairs = [(min(g[y, x - a], -g[y, x + a]), a) for a in range(lo, hi + 1)
                     if x - a >= 0 and x + a < image.shape[1]]
            best = max([p for p in pairs if p[0] > 0], default=(0.0, 0))
            if mask[y, x]:
                expected[y, x] = best[0]
            if best[0] > 0:
                assert half[y, x] == best[1]
    # then averaged along the joint's course for the side
    expected = along_course(expected, edge_pair.ALONG_MM / spacing, edge_pair.ALONG_SLOPE)
    np.testing.assert_allclose(response, expected, atol=1e-7)
    assert noise == pytest.approx(np.median(np.abs(g[mask] - np.median(g[mask]))) * 1.4826, rel=1e-4)


def test_along_course_is_the_mean_over_the_segment():
    rng = np.random.default_rng(2)
    image = rng.random((30, 30)).astype(np.float32)
    out = along_course(image, 9.0, -0.5)
    h = int(round(4.5 / np.hypot(1.0, 0.5)))
    dy = np.arange(-h, h + 1)
    dx = np.rint(-0.5 * dy).astype(int)
    for y in range(30):
        for x in range(30):
            ys, xs = y + dy, x + dx
            ok = (ys >= 0) & (ys < 30) & (xs >= 0) & (xs < 30)
            expected = image[ys[ok], xs[ok]].sum() / len(dy)  # zero outside the image
            assert out[y, x] == pytest.approx(expected, abs=1e-5)


def test_a_straight_band_as_strong_lateral_of_the_line_leaves_no_line():
    """The joint may run straighter than a joint's course there, and the line found be the
    foramina's rims medial of it: no line. A straight band medial of the line does not count."""
    usable = np.ones((SIZE, SIZE), bool)
    image, _ = _band_image("R", extra=[(-25.0, 0.05, 0.0)])
    assert band_line(image, grid=GRID, usable=usable, side="R") is None
    image, edge = _band_image("R", extra=[(25.0, 0.05, 0.0)])
    line = band_line(image, grid=GRID, usable=usable, side="R")
    assert line is not None and _distance_mm(line, edge) < 1.5


@pytest.mark.parametrize("side", ["L", "R"])
def test_a_thin_straight_bright_line_is_a_wire_not_a_band(side):
    """A wire across a scout shows two edges a blur apart, on a perfectly straight course."""
    image, _ = _band_image(side, width_mm=0.6, contrast=0.3)
    assert band_line(image, grid=GRID, usable=np.ones(image.shape, bool), side=side) is None
    xs = np.array([10, 11, 12, 13, 14, 15])
    assert edge_pair._thin_straight(xs, np.arange(6), np.full(6, 2))
    assert not edge_pair._thin_straight(xs, np.arange(6), np.full(6, 3))  # a band
    assert not edge_pair._thin_straight(np.array([10, 12, 12, 13, 16, 15]), np.arange(6), np.full(6, 2))
