"""Registration recovers known image motion."""
import cv2
import numpy as np
import pytest

from sifluoro.imaging import attenuation, downsample, exposed_mask, working_grid
from sifluoro.register.motion import Registrar


@pytest.mark.parametrize("shift_xy", [(0.0, 0.0), (3.3, -2.7), (-10.6, 7.2), (21.4, 0.4)])
def test_known_shift_within_half_a_pixel(sim_runs, shift_xy):
    run, frames, _ = sim_runs[1]
    image = attenuation(frames[0])
    exposed = exposed_mask(run, image.shape, margin_px=3)
    grid = working_grid(run.pixel_spacing_xy_mm[0], target_mm=0.6)
    usable = downsample(exposed.astype(np.float32), grid.factor) > 0.999
    # the anatomy moves, the collimated field stays where it is
    m = np.float32([[1, 0, shift_xy[0]], [0, 1, shift_xy[1]]])
    moved = cv2.warpAffine(image, m, image.shape[::-1], flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    moved = np.where(exposed, moved, image)
    reg = Registrar(usable.shape, grid.factor, grid.spacing_mm, usable)
    reg.set_reference(downsample(image, grid.factor))
    motion = reg.measure(downsample(moved, grid.factor))
    assert np.hypot(motion.shift_xy[0] - shift_xy[0], motion.shift_xy[1] - shift_xy[1]) <= 0.5
    assert motion.peak > 0.3


def test_next_frame_of_a_still_view_has_no_motion(sim_runs):
    """Independent quantum noise between frames must not read as motion."""
    run, frames, _ = sim_runs[2]
    grid = working_grid(run.pixel_spacing_xy_mm[0], target_mm=0.6)
    a0, a1 = (downsample(attenuation(f), grid.factor) for f in frames[:2])
    usable = downsample(exposed_mask(run, frames[0].pixels.shape, margin_px=3).astype(np.float32),
                        grid.factor) > 0.999
    reg = Registrar(usable.shape, grid.factor, grid.spacing_mm, usable)
    reg.set_reference(a0)
    motion = reg.measure(a1)
    assert np.hypot(*motion.shift_xy) <= 0.5


def test_unrelated_image_has_a_low_peak(sim_runs):
    run, frames, _ = sim_runs[1]
    grid = working_grid(run.pixel_spacing_xy_mm[0], target_mm=0.6)
    a0 = downsample(attenuation(frames[0]), grid.factor)
    usable = np.ones(a0.shape, bool)
    reg = Registrar(a0.shape, grid.factor, grid.spacing_mm, usable)
    reg.set_reference(a0)
    noise = np.random.default_rng(0).random(a0.shape, dtype=np.float32)
    assert reg.measure(noise).peak < 0.1
