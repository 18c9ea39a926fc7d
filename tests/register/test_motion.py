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


@pytest.mark.parametrize("shift_xy", [(2.2, -1.4), (-12.6, 9.1)])
def test_matches_opencv_phase_correlation(sim_runs, shift_xy):
    """The kept-spectrum phase correlation is cv2.phaseCorrelate on the same prepared frames."""
    run, frames, _ = sim_runs[1]
    grid = working_grid(run.pixel_spacing_xy_mm[0], target_mm=0.6)
    a0 = downsample(attenuation(frames[0]), grid.factor)
    m = np.float32([[1, 0, shift_xy[0]], [0, 1, shift_xy[1]]])
    a1 = cv2.warpAffine(a0, m, a0.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    reg = Registrar(a0.shape, grid.factor, grid.spacing_mm, np.ones(a0.shape, bool))
    reg.set_reference(a0)
    motion = reg.measure(a1)
    (dx, dy), peak = cv2.phaseCorrelate(reg.prepare(a0), reg.prepare(a1), reg.window)
    scale = reg.coarse_factor * reg.factor
    np.testing.assert_allclose(motion.shift_xy, (dx * scale, dy * scale), atol=0.01)
    assert motion.peak == pytest.approx(peak, abs=1e-3)


@pytest.mark.parametrize("shift_xy", [(0.0, 0.0), (4.6, -3.1), (-15.2, 8.3)])
def test_coarse_grid_high_pass_measures_as_a_full_gaussian(sim_runs, shift_xy):
    """The slow gradients blurred on a coarser grid: the motion is the one measured after a
    full-size Gaussian high-pass (cv2.phaseCorrelate), to within 0.1 px, on a noisy frame."""
    run, frames, _ = sim_runs[1]
    grid = working_grid(run.pixel_spacing_xy_mm[0], target_mm=0.6)
    image0, image1 = attenuation(frames[0]), attenuation(frames[1])
    m = np.float32([[1, 0, shift_xy[0]], [0, 1, shift_xy[1]]])
    image1 = cv2.warpAffine(image1, m, image1.shape[::-1], flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
    a0, a1 = downsample(image0, grid.factor), downsample(image1, grid.factor)
    reg = Registrar(a0.shape, grid.factor, grid.spacing_mm, np.ones(a0.shape, bool))
    reg.set_reference(a0)
    motion = reg.measure(a1)
    rows, cols = reg.coarse_shape
    f = reg.coarse_factor

    def full_gaussian_high_pass(a):
        coarse = cv2.resize(a[:rows * f, :cols * f], (cols, rows), interpolation=cv2.INTER_AREA)
        return coarse - cv2.GaussianBlur(coarse, (0, 0), reg.sigma_px)

    (dx, dy), peak = cv2.phaseCorrelate(full_gaussian_high_pass(a0), full_gaussian_high_pass(a1),
                                        reg.window)
    scale = reg.coarse_factor * reg.factor
    assert np.hypot(motion.shift_xy[0] - dx * scale, motion.shift_xy[1] - dy * scale) < 0.1
    assert motion.peak == pytest.approx(peak, rel=0.05)


@pytest.mark.parametrize("spacing_mm", [0.6, 0.33, 0.3])
def test_prepared_image_is_opencvs(sim_runs, spacing_mm):
    """The coarse high-passed image is that of OpenCV's area resize (by halves, then by the odd
    factor left: 3 by a numba pass of OpenCV's sums, 6 halved then 3, 7) and blur, bit for
    bit."""
    run, frames, _ = sim_runs[1]
    work = attenuation(frames[0])
    reg = Registrar(work.shape, 1, spacing_mm, np.ones(work.shape, bool))
    rows, cols = reg.coarse_shape
    f = reg.coarse_factor
    assert f == {0.6: 3, 0.33: 6, 0.3: 7}[spacing_mm]
    coarse = work[:rows * f, :cols * f]
    while f % 2 == 0 and f > 2:
        coarse = cv2.resize(coarse, (coarse.shape[1] // 2, coarse.shape[0] // 2),
                            interpolation=cv2.INTER_AREA)
        f //= 2
    coarse = cv2.resize(coarse, (cols, rows), interpolation=cv2.INTER_AREA)
    c = 4  # motion.LOWPASS_CELL
    cells = cv2.resize(coarse[:rows // c * c, :cols // c * c], (cols // c, rows // c),
                       interpolation=cv2.INTER_AREA)
    cells = cv2.GaussianBlur(cells, (0, 0), reg.sigma_px / c, borderType=cv2.BORDER_REFLECT)
    low = cv2.resize(cells, (cols, rows), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(reg.prepare(work), coarse - low)


@pytest.mark.parametrize("spacing_mm", [0.6, 0.3])
def test_window_is_opencvs_taper_of_the_field(spacing_mm):
    """The taper of a view's field is OpenCV's area resize of the field (by 3: the numba pass
    of its sums), eroded, blurred and times a Hanning window, bit for bit."""
    usable = np.zeros((512, 500), bool)
    cv2.circle(usable.view(np.uint8), (240, 260), 230, 1, -1)
    reg = Registrar(usable.shape, 1, spacing_mm, usable)
    rows, cols = reg.coarse_shape
    f = reg.coarse_factor
    inside = cv2.resize(usable[:rows * f, :cols * f].astype(np.float32), (cols, rows),
                        interpolation=cv2.INTER_AREA)
    inside = cv2.erode((inside > 0.999).astype(np.uint8), np.ones((5, 5), np.uint8))
    taper = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 2.0)
    np.testing.assert_array_equal(reg.window, taper * cv2.createHanningWindow((cols, rows), cv2.CV_32F))
