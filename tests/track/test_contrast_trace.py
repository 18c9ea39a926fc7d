"""benchmarks.contrast_trace's pictures of what the contrast stage saw (``--png``)."""
from __future__ import annotations

import numpy as np

from benchmarks.contrast_trace import frame_tiles
from tests.track.test_contrast_stage import Phantom, _contrast_run, _needle_runs, _replay


def test_the_tiles_show_the_frame_the_subtraction_the_opacity_and_the_vessel_test():
    """Five tiles of the working grid (2 px borders, scaled 2x): the accepted joint fill is
    white in the third, and the vessel test's ridges are drawn once the run has 4 frames."""
    frames = _contrast_run(6, 1, joint_reach_px=lambda f: min(150.0, 25.0 * f))
    _, state = _replay(Phantom(), _needle_runs() + [frames])
    memory = state.stage_state["contrast"]
    rows, cols = memory.buffers.shape
    img = frame_tiles(memory, scale=2)
    assert img.dtype == np.uint8
    assert img.shape == (2 * (rows + 4), 2 * 5 * (cols + 4))
    tile_w = 2 * (cols + 4)
    opacity = img[:, 2 * tile_w:3 * tile_w]
    assert np.count_nonzero(opacity == 255) == 4 * np.count_nonzero(memory.run.opaque) > 0
    onset, washout = img[:, 3 * tile_w:4 * tile_w], img[:, 4 * tile_w:]
    assert onset.std() > 0 and washout.std() > 0
