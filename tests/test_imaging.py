"""Frame preparation shared by the image stages: the attenuation kernel against its NumPy
reference, and the per-study buffer that frame_attenuation reuses."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sifluoro.imaging import (attenuation, attenuation_reference, frame_attenuation, picture_steps,
                              picture_steps_reference)
from sifluoro.model import Device, Frame, Run, Technique


def _run(bits: int, photometric: str, rows: int = 6, cols: int = 5) -> Run:
    return Run(path="synthetic", sop_instance_uid="1.2.3", sop_class_uid="", series_instance_uid="",
               study_instance_uid="", modality="XA", transfer_syntax_uid="", rows=rows,
               columns=cols, bits_stored=bits, photometric=photometric, start_s=0.0,
               frame_offsets_s=(0.0,), frame_intervals_ms=(66.7,), technique=Technique(),
               device=Device())


def _frame(pixels: np.ndarray, run: Run) -> Frame:
    return Frame(pixels=pixels, index=0, frame_number=1, t_s=0.0, run=run)


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([8, 10, 12, 14, 16]),
       photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2"]),
       rows=st.integers(1, 9), cols=st.integers(1, 9), seed=st.integers(0, 2 ** 16),
       strided=st.booleans())
def test_kernel_matches_numpy_reference(bits, photometric, rows, cols, seed, strided):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 1 << bits, size=(rows, 2 * cols if strided else cols), dtype=np.uint16)
    if strided:
        pixels = pixels[:, ::2]  # a view of every other column: not C-contiguous
    frame = _frame(pixels, _run(bits, photometric, rows, cols))
    got = attenuation(frame)
    assert got.dtype == np.float32 and got.shape == (rows, cols)
    np.testing.assert_array_equal(got, attenuation_reference(frame))  # same float32 arithmetic


def test_polarity_bone_bright_in_both_photometrics():
    pixels = np.array([[0, 4095]], np.uint16)
    m2 = attenuation(_frame(pixels, _run(12, "MONOCHROME2", 1, 2)))
    m1 = attenuation(_frame(pixels, _run(12, "MONOCHROME1", 1, 2)))
    assert m2.tolist() == [[0.0, 1.0]]  # MONOCHROME2 stored bone-bright: value rises with attenuation
    assert m1.tolist() == [[1.0, 0.0]]


def test_frame_attenuation_reuses_one_buffer_per_shape_and_computes_once_per_frame():
    run = _run(12, "MONOCHROME2", 4, 4)
    state: dict = {}
    a = _frame(np.full((4, 4), 4095, np.uint16), run)
    b = _frame(np.zeros((4, 4), np.uint16), run)
    first = frame_attenuation(a, state)
    assert first.min() == 1.0
    assert frame_attenuation(a, state) is first  # the same frame: not computed again
    second = frame_attenuation(b, state)
    assert second is first  # the next frame reuses the buffer (no per-frame allocation)
    assert second.max() == 0.0
    c = _frame(np.zeros((3, 5), np.uint16), _run(12, "MONOCHROME2", 3, 5))
    assert frame_attenuation(c, state).shape == (3, 5)  # a new shape gets its own buffer


def test_out_of_wrong_shape_is_refused():
    frame = _frame(np.zeros((4, 4), np.uint16), _run(12, "MONOCHROME2", 4, 4))
    with pytest.raises(ValueError):
        attenuation(frame, out=np.empty((3, 3), np.float32))


@settings(max_examples=80, deadline=None)
@given(bits=st.sampled_from([8, 10, 12, 14, 16]), rows=st.integers(1, 40),
       cols=st.integers(1, 90), step=st.sampled_from([1, 2, 3, 4, 8, 64]),
       seed=st.integers(0, 2 ** 16), strided=st.booleans())
def test_picture_steps_kernel_matches_opencv_reference(bits, rows, cols, step, seed, strided):
    """The same count as OpenCV's area means (rounded half to even): coarse grey steps make
    many means fall on a half, and steps right at the threshold."""
    rng = np.random.default_rng(seed)
    pixels = (rng.integers(0, (1 << bits) // step, size=(rows, 2 * cols if strided else cols))
              * step).astype(np.uint16)
    if strided:
        pixels = pixels[:, ::2]
    assert picture_steps(pixels, bits) == picture_steps_reference(pixels, bits)


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([8, 12, 16]), rows=st.integers(1, 80), cols=st.integers(1, 90),
       at_least=st.integers(0, 40), seed=st.integers(0, 2 ** 16), flat_rows=st.integers(0, 80))
def test_picture_steps_at_least_decides_as_the_whole_count(bits, rows, cols, at_least, seed,
                                                           flat_rows):
    """Counting stops at ``at_least`` steps: the same answer to "at least so many?" as the
    whole frame's count, which it equals when it falls short (a flat band above the picture,
    as a collimated frame has, makes the count start late)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 1 << bits, size=(rows, cols), dtype=np.uint16)
    pixels[:flat_rows] = 7
    whole = picture_steps(pixels, bits)
    got = picture_steps(pixels, bits, at_least=at_least)
    if at_least == 0 or whole < at_least:
        assert got == whole
    else:
        assert at_least <= got <= whole


def test_picture_steps_at_least_stops_reading_rows():
    # every row read has 63 steps: the count stops with the row that reaches 16
    pixels = np.repeat(np.tile(np.array([0, 4000], np.uint16), 32), 8)[None, :].repeat(512, 0)
    assert picture_steps(pixels, 12) == 64 * 63
    assert picture_steps(pixels, 12, at_least=16) == 63
    assert picture_steps(pixels, 12, at_least=100) == 2 * 63


def test_picture_steps_rounds_half_means_to_even():
    # means 0.5, 1.5, 2.5, 3.5 round to 0, 2, 2, 4: steps of 2, 0, 2 (threshold 2 at 8 bits: none)
    # and with a mean of 6.5 (-> 6) after 3.5 (-> 4): 2, not 3
    row = np.repeat(np.array([0, 1, 1, 2, 2, 3, 3, 4, 6, 7], np.uint16), 4)
    pixels = np.zeros((5, row.size), np.uint16)
    pixels[4] = row
    assert picture_steps(pixels, 8) == picture_steps_reference(pixels, 8) == 0
    pixels[4, 32:40] = 9  # mean 9 after 3.5 -> 4: a step of 5
    assert picture_steps(pixels, 8) == picture_steps_reference(pixels, 8) == 1


# -- exact medians (sifluoro.imaging.median / robust_sigma against np.median) -----------------

_SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-40, 3e38, -3e38, np.inf, -np.inf]


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2 ** 16),
       dtype=st.sampled_from([np.float32, np.float64]),
       kind=st.sampled_from(["normal", "ties", "outliers", "special", "constant"]))
def test_median_and_robust_sigma_equal_numpy_exactly(n, seed, dtype, kind):
    from sifluoro.imaging import median, robust_sigma

    rng = np.random.default_rng(seed)
    v = rng.standard_normal(n) * 0.01
    if kind == "ties":
        v = np.round(v * 300.0) / 300.0
    elif kind == "outliers":
        v[rng.random(n) < 0.05] *= 1e6
    elif kind == "special":
        some = rng.random(n) < 0.2
        v[some] = rng.choice(_SPECIAL, size=int(some.sum()))
    elif kind == "constant":
        v[:] = 0.25
    v = v.astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        want = np.median(v)
        want_mad = np.median(np.abs(v - np.median(v)))
        got, got_mad = median(v), robust_sigma(v)
    assert type(got) is float and type(got_mad) is float
    np.testing.assert_array_equal(got, float(want))
    np.testing.assert_array_equal(got_mad, float(want_mad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_median_range_by_integer_keys_equals_numpy(dtype):
    """The extremes the median bins between (taken on the floats' bits as integer keys,
    which vectorises) are NumPy's, negative values, zeros of both signs and infinities
    included."""
    from sifluoro import _imaging_kernels as k

    rng = np.random.default_rng(3)
    for n in (1, 2, 15, 16, 17, 1000):
        for _ in range(20):
            v = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30)).astype(dtype)
            some = rng.random(n) < 0.2
            v[some] = rng.choice(_SPECIAL, size=int(some.sum()))
            with np.errstate(over="ignore"):
                v = v.astype(dtype)
            lo, hi = k._range(v)
            assert lo == v.min() and hi == v.max()
            assert dtype(lo) == lo and dtype(hi) == hi


def test_median_of_nan_empty_and_read_only_values():
    from sifluoro.imaging import median, robust_sigma

    assert np.isnan(median(np.array([1.0, np.nan, 2.0])))
    assert np.isnan(robust_sigma(np.array([1.0, np.nan, 2.0], np.float32)))
    assert np.isnan(median(np.zeros(0)))
    v = np.arange(10, dtype=np.float32)[::-1]
    v.flags.writeable = False
    assert median(v) == 4.5 and robust_sigma(v) == 2.5
    # a view with a stride is read in order, as np.median reads it
    w = np.arange(20.0)[::3]
    assert median(w) == float(np.median(w))


def _circle_run(rect, circle) -> Run:
    from sifluoro.model import Shutter
    run = _run(12, "MONOCHROME2", 1, 1)
    return dataclasses.replace(run, technique=Technique(shutter=Shutter(rect_xyxy=rect, circle_xyr=circle)))


def test_exposed_mask_circle_kernel_equals_numpy():
    """The circular field's row-interval kernel against the broadcast float64 test it replaces:
    integer, half-integer and arbitrary centres (inside, on and outside the frame), radii from
    none to past the corners, with margins and a rectangle, and shapes of odd sizes."""
    from sifluoro.imaging import _circle_reference, exposed_mask
    rng = np.random.default_rng(7)
    cases = [((5, 7), (3, 2, 0)), ((9, 9), (4.5, 4.5, 4.5)), ((64, 48), (31.5, 23.5, 24.0)),
             ((33, 40), (-5, 50, 30)), ((20, 20), (10, 10, 100)), ((20, 20), (10.0, 10.0, 2.0))]
    for _ in range(300):
        shape = (int(rng.integers(1, 80)), int(rng.integers(1, 80)))
        cx = rng.choice([int(rng.integers(-20, 100)), int(rng.integers(-20, 100)) + 0.5, rng.uniform(-20, 100)])
        cy = rng.choice([int(rng.integers(-20, 100)), int(rng.integers(-20, 100)) + 0.5, rng.uniform(-20, 100)])
        r = rng.choice([int(rng.integers(0, 90)), rng.uniform(0, 90), rng.uniform(0, 3)])
        cases.append((shape, (cx, cy, r)))
    for shape, circle in cases:
        for margin in (0, 2):
            for rect in (None, (1, 2, shape[1] - 3, shape[0] - 1)):
                cx, cy, r = circle
                got = exposed_mask(_circle_run(rect, circle), shape, margin_px=margin)
                ref = exposed_mask(_circle_run(rect, None), shape, margin_px=margin)
                ref &= _circle_reference(shape, cx, cy, (r - margin) ** 2)
                assert got.tolist() == ref.tolist(), (shape, circle, margin, rect)
    # the 1024² image intensifier's field (the simulator's circle), against the NumPy test
    circle = (511.5, 511.5, 510.0)
    got = exposed_mask(_circle_run((99, 145, 968, 938), circle), (1024, 1024), margin_px=2)
    ref = exposed_mask(_circle_run((99, 145, 968, 938), None), (1024, 1024), margin_px=2)
    np.testing.assert_array_equal(got, ref & _circle_reference((1024, 1024), *circle[:2], 508.0 ** 2))


@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("shape", [(1024, 1024), (7, 17), (64, 130), (33, 2)])
def test_frame_work_by_halves_is_the_area_resize_of_the_attenuation(bits, photometric, shape):
    """At factor 2 the working image comes from the stored pixels in one pass, without the
    full-size attenuation, and equals OpenCV's area resize of it bit for bit (odd sizes
    cropped). OpenCV sums a block in another order in the scalar tail of a row (here: rows of
    blocks not a multiple of 4): such widths are found out and resized; and with the
    attenuation already computed for the frame, that is resized."""
    from sifluoro.imaging import downsample, frame_work, halving_matches_opencv

    rng = np.random.default_rng(bits + shape[1])
    frame = _frame(rng.integers(0, 1 << bits, size=shape, dtype=np.uint16),
                   _run(bits, photometric, *shape))
    expected = downsample(attenuation(frame), 2)
    one_pass = halving_matches_opencv(shape[1] // 2)
    if shape == (1024, 1024):
        assert one_pass  # the frames that matter take the one pass
    state: dict = {}
    got = frame_work(frame, state, 2)
    assert ("attenuation" not in state) == one_pass  # no full-size image
    np.testing.assert_array_equal(got, expected)
    buffer = np.empty_like(got)
    assert frame_work(frame, state, 2, buffer) is buffer
    frame_attenuation(frame, state)
    np.testing.assert_array_equal(frame_work(frame, state, 2), expected)
    np.testing.assert_array_equal(frame_work(frame, {}, 1), attenuation(frame))


@pytest.mark.parametrize("shape", [(512, 512), (510, 510), (1024, 1000), (9, 3), (40, 23)])
def test_area_by_3_is_opencvs_area_resize(shape):
    """The register's coarse motion image by 3 comes from one numba pass that sums each block
    as OpenCV's area resize does: bit for bit, a remainder of rows and columns cropped, values
    of both signs; a crop (not contiguous) and other factors go to OpenCV itself."""
    import cv2

    from sifluoro import _imaging_kernels as K
    from sifluoro.imaging import area3_matches_opencv, area_into, downsample

    rng = np.random.default_rng(shape[1])
    image = (rng.random(shape, dtype=np.float32) - np.float32(0.4)) * np.float32(3.0)
    rows, cols = shape[0] // 3, shape[1] // 3
    expected = cv2.resize(image[:3 * rows, :3 * cols], (cols, rows), interpolation=cv2.INTER_AREA)
    assert area3_matches_opencv(cols)  # this build: the kernel is used at every width
    out = np.full((rows, cols), np.nan, np.float32)
    K.area3_into(image, out)
    np.testing.assert_array_equal(out, expected)
    out[...] = np.nan
    area_into(image, 3, out)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(downsample(image, 3), expected)
    np.testing.assert_array_equal(downsample(image.astype(np.float64), 3),
                                  cv2.resize(image[:3 * rows, :3 * cols].astype(np.float64),
                                             (cols, rows), interpolation=cv2.INTER_AREA))
    buffer = np.empty_like(out)
    assert downsample(image, 3, buffer) is buffer
    crop = image[1:, 1:]
    rows_c, cols_c = crop.shape[0] // 3, crop.shape[1] // 3
    if rows_c and cols_c:
        got = np.empty((rows_c, cols_c), np.float32)
        area_into(crop, 3, got)
        np.testing.assert_array_equal(got, cv2.resize(crop[:3 * rows_c, :3 * cols_c],
                                                      (cols_c, rows_c), interpolation=cv2.INTER_AREA))
    if shape[0] >= 5 and shape[1] >= 5:
        got = np.empty((shape[0] // 5, shape[1] // 5), np.float32)
        area_into(image, 5, got)
        np.testing.assert_array_equal(got, downsample(image, 5))


@pytest.mark.parametrize("bits", [10, 16])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("shape", [(1024, 1024), (10, 17), (3, 3)])
def test_frame_work_by_3_is_the_area_resize_of_the_attenuation(bits, photometric, shape):
    """At factor 3 (1024² over a 230 mm field) the working image comes from the stored pixels
    in one pass, without the full-size attenuation, and equals OpenCV's area resize of it bit
    for bit (a remainder cropped); with the attenuation already computed, that is resized."""
    import cv2

    from sifluoro.imaging import frame_work

    rng = np.random.default_rng(bits + shape[0])
    frame = _frame(rng.integers(0, 1 << bits, size=shape, dtype=np.uint16),
                   _run(bits, photometric, *shape))
    rows, cols = shape[0] // 3, shape[1] // 3
    expected = cv2.resize(attenuation(frame)[:3 * rows, :3 * cols], (cols, rows),
                          interpolation=cv2.INTER_AREA)
    state: dict = {}
    got = frame_work(frame, state, 3)
    assert "attenuation" not in state  # no full-size image
    np.testing.assert_array_equal(got, expected)
    buffer = np.empty_like(got)
    assert frame_work(frame, state, 3, buffer) is buffer
    np.testing.assert_array_equal(buffer, expected)
    frame_attenuation(frame, state)
    np.testing.assert_array_equal(frame_work(frame, state, 3), expected)
