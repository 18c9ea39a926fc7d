"""Where a needle may be looked for: the field mask on the working grid."""
from __future__ import annotations

import numpy as np
import pytest

from sifluoro.model import Device, Run, Shutter, Technique
from sifluoro.track.needle_field import _pool, valid_region


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(64, 64), (67, 61)])
def test_pool_matches_numpy(factor, shape):
    rng = np.random.default_rng(factor)
    for density in (0.02, 0.5, 0.98):
        mask = rng.random(shape) < density
        rows, cols = shape[0] // factor, shape[1] // factor
        cells = mask[:rows * factor, :cols * factor].reshape(rows, factor, cols, factor)
        assert np.array_equal(_pool(mask, factor, any_=True), cells.any(axis=(1, 3)))
        assert np.array_equal(_pool(mask, factor, any_=False), cells.all(axis=(1, 3)))


def _run(rect) -> Run:
    tech = Technique(imager_pixel_spacing_xy_mm=(0.25, 0.25), shutter=Shutter(rect_xyxy=rect))
    return Run(path="synthetic", sop_instance_uid="1.2.3", sop_class_uid="",
               series_instance_uid="", study_instance_uid="", modality="XA",
               transfer_syntax_uid="", rows=256, columns=256, bits_stored=12,
               photometric="MONOCHROME2", start_s=0.0, frame_offsets_s=(0.0,),
               frame_intervals_ms=(66.7,), technique=tech, device=Device())


def test_valid_region_on_the_working_grid_matches_full_resolution():
    """The mask built on a grid of ``factor`` pixels per cell is the full-resolution mask's
    cells that are wholly valid, to within a cell along the edges."""
    rng = np.random.default_rng(5)
    att = (0.4 + 0.05 * rng.random((256, 256))).astype(np.float32)
    att[:, 200:] = 1.0  # not exposed: stored at maximal attenuation
    att[100:110, 80:90] = 1.0  # saturated steel inside the field is not an edge
    run = _run((20, 30, 239, 229))
    full = valid_region(run, att, margin_px=6)
    assert full[105, 85] and not full[:, 196:].any() and not full[:30].any()
    for factor in (2, 3):
        work = valid_region(run, att, margin_px=6, factor=factor)
        rows, cols = 256 // factor, 256 // factor
        assert work.shape == (rows, cols)
        ref = _pool(full, factor, any_=False)
        # differs only within a cell or two of the field edge
        differ = np.argwhere(work != ref)
        edge = _pool(~full, factor, any_=True)
        near = np.zeros_like(edge)
        for dy in (-2, -1, 0, 1, 2):
            for dx in (-2, -1, 0, 1, 2):
                near |= np.roll(np.roll(edge, dy, 0), dx, 1)
        assert all(near[y, x] for y, x in differ)
        assert abs(int(work.sum()) - int(ref.sum())) < 0.05 * ref.sum()


@pytest.mark.parametrize("factor", [1, 2, 3])
@pytest.mark.parametrize("shape", [(64, 64), (67, 61)])
def test_field_cells_match_the_pooled_full_resolution_shutter(factor, shape):
    from sifluoro.imaging import exposed_mask
    from sifluoro.track.needle_field import _field_cells

    rng = np.random.default_rng(factor + shape[1])
    for _ in range(20):
        x0, y0 = (int(v) for v in rng.integers(-5, 20, 2))
        x1, y1 = x0 + int(rng.integers(10, 60)), y0 + int(rng.integers(10, 60))
        circle = (tuple(float(v) for v in rng.uniform(20, 45, 2)) + (float(rng.uniform(10, 40)),)
                  if rng.random() < 0.6 else None)
        tech = Technique(imager_pixel_spacing_xy_mm=(0.25, 0.25),
                         shutter=Shutter(rect_xyxy=(x0, y0, x1, y1) if rng.random() < 0.8
                                         else None, circle_xyr=circle))
        run = _run((0, 0, 1, 1))
        run = Run(**{**run.__dict__, "technique": tech})
        ref = _pool(exposed_mask(run, shape), factor, any_=False)
        assert np.array_equal(_field_cells(run, shape, factor), ref)


@pytest.mark.parametrize("factor", [1, 2, 3])
@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_field_cells_kernel_matches_its_numpy_reference(factor):
    """The kernel's outer products against NumPy's, on circles of float, integer and absurd
    (NaN, infinite, huge) geometry, rectangles or none, and frames down to no cell."""
    from sifluoro.track.needle_field import _field_cells, _field_cells_reference

    rng = np.random.default_rng(factor)
    odd = [float("nan"), float("inf"), -float("inf"), 1e300, -3.5, 0.0]
    for k in range(200):
        shape = tuple(int(v) for v in rng.integers(0, 90, 2))
        if rng.random() < 0.2:
            circle = tuple(rng.choice(odd) if rng.random() < 0.5 else float(v)
                           for v in rng.uniform(-10, 90, 3))
        elif rng.random() < 0.5:
            circle = tuple(int(v) for v in rng.integers(-5, 80, 3))
        else:
            circle = tuple(float(v) for v in rng.uniform(-5, 80, 3)) if rng.random() < 0.8 else None
        x0, y0 = (int(v) for v in rng.integers(-5, 40, 2))
        rect = (x0, y0, x0 + int(rng.integers(-3, 60)), y0 + int(rng.integers(-3, 60)))
        tech = Technique(imager_pixel_spacing_xy_mm=(0.25, 0.25),
                         shutter=Shutter(rect_xyxy=rect if rng.random() < 0.7 else None,
                                         circle_xyr=circle))
        run = Run(**{**_run((0, 0, 1, 1)).__dict__, "technique": tech})
        got = _field_cells(run, shape, factor)
        ref = _field_cells_reference(run, shape, factor)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        assert np.array_equal(got, ref), (shape, rect, circle)


def _text_mask_reference(att: np.ndarray, factor: int) -> np.ndarray:
    """The glyph mask pooled from a full-resolution seed image (the implementation pools only
    the bands)."""
    import math

    import cv2

    from sifluoro.track import needle_field as F

    rows = att.shape[0]
    band = int(rows * F._BAND)
    k3 = np.ones((3, 3), np.uint8)
    seeds = np.zeros(att.shape, bool)
    for lo, hi in ((0, band), (rows - band, rows)):
        part = att[max(0, lo - 1):min(rows, hi + 1)]
        high = cv2.dilate(part, k3)
        found = (high >= F._GLYPH_TOP) & (high - cv2.erode(part, k3) > F._GLYPH_JUMP)
        seeds[lo:hi] = found[lo - max(0, lo - 1):lo - max(0, lo - 1) + hi - lo]
    r = max(1, int(math.ceil(max(6, rows // 40) / factor)))
    k = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(_pool(seeds, factor, any_=True).astype(np.uint8), k)


@pytest.mark.parametrize("factor", [1, 2, 3])
@pytest.mark.parametrize("shape", [(128, 128), (131, 97)])
def test_text_mask_matches_its_full_resolution_reference(factor, shape):
    from sifluoro.track.needle_field import _text_mask

    rng = np.random.default_rng(7 * factor)
    att = (0.3 + 0.1 * rng.random(shape)).astype(np.float32)
    # glyphs: white fill on a dark outline, at the top, bottom and band edges, and steel
    # saturated in the middle (not text)
    for y, x in ((2, 5), (20, 40), (shape[0] - 4, 10), (shape[0] - 27, 60), (shape[0] - 1, 80),
                 (60, 50)):
        att[max(0, y - 2):y + 3, x - 3:x + 4] = 0.0
        att[max(0, y - 1):y + 2, x - 2:x + 3] = 1.0
    got = _text_mask(att, factor)
    ref = _text_mask_reference(att, factor)
    assert got.any() and np.array_equal(got, ref)


def test_edge_distance_matches_the_distance_transform():
    import cv2

    from sifluoro.track.needle_field import EdgeDistance

    rng = np.random.default_rng(3)
    for density in (0.0, 0.002, 0.05):
        valid = np.ones((41, 53), bool)
        valid[rng.random(valid.shape) < density] = False
        valid[30:, :12] = False
        bounded = valid.astype(np.uint8)
        bounded[[0, -1], :] = 0
        bounded[:, [0, -1]] = 0
        ref = cv2.distanceTransform(bounded, cv2.DIST_L2, 3)
        dist = EdgeDistance(valid)
        for y in range(valid.shape[0]):
            for x in range(valid.shape[1]):
                assert abs(dist(x, y) - ref[y, x]) < 1e-3
