"""The faint cloud beside a joint fill (contrast_beside) and the classifier's rule on it."""
import dataclasses

import numpy as np
import pytest

from sifluoro.track import contrast_beside as B
from sifluoro.track.contrast_classify import (CLOUD_BESIDE_FRAMES, CLOUD_BESIDE_Z, Classifier,
                                               Opacity)

WORK_MM = 1.0
SHAPE = (140, 120)


def _scene(cloud_xy=None, amplitude: float = 1.0, seed: int = 0):
    """Residual (noise sigmas) of a dense vertical fill 5 px wide (rows 25-115, x = 60) in
    white noise, and a broad cloud (sigma 8 px) at ``cloud_xy``."""
    rng = np.random.default_rng(seed)
    score = rng.normal(0.0, 1.0, SHAPE).astype(np.float32)
    on = np.zeros(SHAPE, bool)
    on[25:116, 58:63] = True
    score[on] += 20.0
    if cloud_xy is not None:
        yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
        score += amplitude * np.exp(-((xx - cloud_xy[0]) ** 2 + (yy - cloud_xy[1]) ** 2)
                                    / (2 * 8.0 ** 2)).astype(np.float32)
    return score, on, np.ones(SHAPE, bool)


def test_a_fill_alone_has_no_cloud_beside_it():
    assert B.cloud_beside_z(*_scene(), WORK_MM) < CLOUD_BESIDE_Z


def test_a_faint_cloud_beside_the_fills_middle_is_seen():
    # 1 sigma a pixel at its peak: under every threshold of the hysteresis
    assert B.cloud_beside_z(*_scene((70, 70)), WORK_MM) >= CLOUD_BESIDE_Z


def test_a_pool_beyond_the_fills_end_is_no_cloud_beside_it():
    assert B.cloud_beside_z(*_scene((60, 130)), WORK_MM) < CLOUD_BESIDE_Z


def test_no_opacity_or_no_far_band_gives_zero():
    score, on, valid = _scene()
    assert B.cloud_beside_z(score, np.zeros_like(on), valid, WORK_MM) == 0.0
    assert B.cloud_beside_z(score, on, np.zeros_like(valid), WORK_MM) == 0.0


def test_crop_box_grows_the_opacitys_box():
    on = np.zeros((200, 200), bool)
    on[50:60, 100:130] = True
    y0, y1, x0, x1 = B.crop_box(on)
    assert (y0, y1, x0, x1) == (50 - B.CROP_PX, 60 + B.CROP_PX, 100 - B.CROP_PX, 130 + B.CROP_PX)
    assert B.crop_box(np.zeros((5, 5), bool)) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_kernel_matches_its_numpy_reference(seed):
    score, on, valid = _scene((70 + 10 * seed, 60), seed=seed)
    valid[:, :8 + 4 * seed] = False     # a field edge
    on[60:64, 20:40] = seed > 0         # a second, crossing opacity
    for work_mm in (0.9, 1.17, 1.56):
        want = B.cloud_beside_z_numpy(score, on, valid, work_mm)
        got = B.cloud_beside_z(score, on, valid, work_mm)
        assert got == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_chamfer_distance_matches_its_numpy_reference():
    rng = np.random.default_rng(4)
    on = rng.random((40, 50)) > 0.985
    dist = np.empty(on.shape, np.float32)
    B._chamfer(on, dist)
    assert np.allclose(dist, B._chamfer_numpy(on), atol=1e-4)
    # a lone pixel: 1 along a row or column, sqrt 2 diagonally, up to 8 % over Euclidean
    one = np.zeros((21, 21), bool)
    one[10, 10] = True
    B._chamfer(one, dist[:21, :21])
    assert dist[10, 15] == pytest.approx(5.0) and dist[15, 15] == pytest.approx(5 * B.SQRT2)


def _line() -> Opacity:
    # a broad joint fill (area / length 12 mm: not "thin")
    return Opacity(kind="line", area_mm2=900.0, length_mm=73.5, width_mm=12.2, elongation=6.0,
                   edge_fraction=0.5, peak_z=20.0, mean_z=8.0, new_fraction=0.1,
                   core_area_mm2=360.0, core_mass_fraction=0.6, negative_ratio=0.0,
                   iodine_au=60.0, centroid_xy=(50.0, 50.0), bbox_xyxy=(10, 10, 90, 90))


def _run(beside: list[bool], frames=None) -> list[str]:
    c = Classifier()
    out = []
    for k, seen in enumerate(beside):
        accepted = (frames[k] if frames else _line(),)
        c.update(k, accepted, 0.0, None)
        if c.state == "intra_articular":
            c.note_cloud_beside(seen)
        out.append(c.state)
    return out


def test_a_cloud_beside_the_fill_frames_in_a_row_is_extravasation():
    states = _run([False] + [True] * CLOUD_BESIDE_FRAMES + [False])
    assert states[:CLOUD_BESIDE_FRAMES] == ["intra_articular"] * CLOUD_BESIDE_FRAMES
    assert states[CLOUD_BESIDE_FRAMES:] == ["extravasation"] * 2


def test_a_cloud_beside_the_fill_on_frames_apart_is_not():
    assert set(_run([True, False] * 4)) == {"intra_articular"}


def test_an_early_thin_line_does_not_take_the_cloud_beside_back():
    # a thin line (area / length 5 mm) on the frame after the rule raised extravasation, still
    # within EARLY_FRAMES: the early-line switch must not lower it again
    thin = dataclasses.replace(_line(), area_mm2=360.0, width_mm=4.9)
    states = _run([True, True, False], frames=[_line(), _line(), thin])
    assert states[1:] == ["extravasation", "extravasation"]
