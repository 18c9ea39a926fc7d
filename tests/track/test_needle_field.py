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
