"""joint.py's shortcuts against the plain computations they replace: same values, exactly."""
import cv2
import numpy as np
import pytest

from sifluoro.imaging import downsample
from sifluoro.register import _kernels
from sifluoro.register import joint as J


def whole_image_path(score, penalty, max_step):
    path = np.empty(score.shape[0], np.int32)
    best, y0, y1 = _kernels.best_path(score, np.float32(penalty), max_step, path,
                                      np.empty_like(score), np.empty(score.shape, np.int8))
    return best, y0, y1, path


def floored_box(rng, shape, box, levels):
    """-10 outside ``box``; inside, values drawn from ``levels`` (ties and floors included)."""
    r0, r1, c0, c1 = box
    score = np.full(shape, -10.0, np.float32)
    score[r0:r1, c0:c1] = rng.choice(np.asarray(levels, np.float32), size=(r1 - r0, c1 - c0))
    return score


@pytest.mark.parametrize("seed", range(40))
def test_best_path_within_a_box_is_the_whole_images(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(3, 40)), int(rng.integers(2, 30)))
    r0 = int(rng.integers(0, shape[0])); r1 = int(rng.integers(r0 + 1, shape[0] + 1))
    c0 = int(rng.integers(0, shape[1])); c1 = int(rng.integers(c0 + 1, shape[1] + 1))
    levels = [-10.0, -10.0, -3.0, -1.5, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 4.0, 9.0]
    score = floored_box(rng, shape, (r0, r1, c0, c1), levels)
    for penalty, max_step in ((1.5, 2), (0.5, 1), (1.0, 3), (0.25, 2)):
        best, y0, y1, path = whole_image_path(score, penalty, max_step)
        got = np.empty(shape[0], np.int32)
        assert J.best_path_within(score, r0, r1, c0, c1, penalty, max_step, got) == (best, y0, y1)
        np.testing.assert_array_equal(got, path)


def test_best_path_within_an_empty_box_finds_none():
    path = np.zeros(5, np.int32)
    assert J.best_path_within(np.full((5, 4), -10.0, np.float32), 0, 5, 2, 2, 1.5, 2, path) \
        == (0.0, -1, -1)
    assert (path == -1).all()


def has_parallel_line_reference(gain, path, y0, y1, spacing_mm, best):
    """The second-path test on the whole image, the band beside the path cut out row by row."""
    near = max(1, int(round(1.5 / spacing_mm)))
    far = max(near + 2, int(round(10.0 / spacing_mm)))
    masked = np.full_like(gain, -10.0)
    for y in range(y0, y1 + 1):
        x = path[y]
        lo, hi = max(0, x - far), min(gain.shape[1], x + far + 1)
        masked[y, lo:hi] = gain[y, lo:hi]
        masked[y, max(0, x - near):x + near + 1] = -10.0
    second = np.full(gain.shape[0], -1, np.int32)
    score, s0, s1 = _kernels.best_path(masked, np.float32(0.5), 1, second, np.empty_like(masked),
                                       np.empty(masked.shape, np.int8))
    if s0 < 0:
        return False
    overlap = (s1 - s0 + 1) / max(1, y1 - y0 + 1)
    return overlap >= 0.5 and score >= 0.35 * best


def test_parallel_line_test_is_that_of_the_whole_image():
    rng = np.random.default_rng(7)
    answers = []
    for _ in range(150):
        rows, cols = int(rng.integers(20, 80)), int(rng.integers(10, 70))
        gain = rng.choice(np.float32([-10.0, -3.0, -1.0, 0.0, 0.5, 1.0, 2.0]),
                          size=(rows, cols)).astype(np.float32)
        # a second line beside the first on some of them
        gain[:, int(rng.integers(0, cols))] = float(rng.choice([0.5, 3.0]))
        y0 = int(rng.integers(0, rows // 2)); y1 = int(rng.integers(y0, rows))
        path = np.full(rows, -1, np.int32)
        x = int(rng.integers(0, cols))
        for y in range(y0, y1 + 1):  # a walk that may touch either edge
            x = int(np.clip(x + rng.integers(-2, 3), 0, cols - 1))
            path[y] = x
        spacing_mm = float(rng.choice([0.6, 1.2, 2.5]))
        best = float(rng.uniform(1.0, 60.0))
        expected = has_parallel_line_reference(gain, path, y0, y1, spacing_mm, best)
        assert J._has_parallel_line(gain, path, y0, y1, spacing_mm, best) == expected
        answers.append(expected)
    assert 10 < sum(answers) < len(answers) - 10  # both answers were tested


def exposed_field_reference(image, exposed):
    blank = (image >= 0.998).astype(np.uint8)
    blank = cv2.morphologyEx(blank, cv2.MORPH_OPEN, np.ones((7, 7), np.uint8))
    return exposed & ~cv2.dilate(blank, np.ones((7, 7), np.uint8)).astype(bool)


def usable_mask_reference(image, field, factor):
    kernel = np.ones((5, 5), np.uint8)
    low = cv2.dilate((image <= 0.002).astype(np.uint8), kernel)
    high = cv2.dilate((image >= 0.998).astype(np.uint8), kernel)
    text = cv2.dilate(low & high, np.ones((9, 9), np.uint8)).astype(bool)
    return downsample((field & ~text).astype(np.float32), factor) > 0.999


def masks_scene(rng, shape, spots=0.03):
    """An attenuation image with blank (top-value) areas, text (both extremes side by side),
    isolated extreme pixels and values either side of the thresholds, and a ragged field."""
    rows, cols = shape
    image = rng.uniform(0.1, 0.9, shape).astype(np.float32)
    for _ in range(3):  # blank areas, some at the border
        y, x = rng.integers(-10, rows), rng.integers(-10, cols)
        image[max(0, y):y + int(rng.integers(3, 40)), max(0, x):x + int(rng.integers(3, 40))] = 1.0
    for _ in range(3):  # text: a bright glyph with a dark outline
        y, x = int(rng.integers(0, rows - 8)), int(rng.integers(0, cols - 8))
        image[y:y + 8, x:x + 8] = 0.0
        image[y + 2:y + 6, x + 2:x + 6] = 1.0
    edge = [np.nextafter(np.float32(t), np.float32(d)) for t in (0.002, 0.998) for d in (0, 1)]
    values = np.float32([0.0, 1.0, 0.002, 0.998, *edge])
    spots = rng.random(shape) < spots
    image[spots] = rng.choice(values, size=int(spots.sum()))
    field = rng.random(shape) < 0.98
    field[:, :int(rng.integers(0, 20))] = False
    return image, field


@pytest.mark.parametrize("seed", range(12))
def test_exposed_field_and_usable_mask_are_the_plain_morphology(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(40, 140)), int(rng.integers(40, 140)))
    image, field = masks_scene(rng, shape)
    exposed = J.exposed_field(image, field)
    np.testing.assert_array_equal(exposed, exposed_field_reference(image, field))
    for factor in (1, 2, 3, 4):
        np.testing.assert_array_equal(J.usable_mask(image, exposed, factor),
                                      usable_mask_reference(image, exposed, factor))


@pytest.mark.parametrize("seed", range(10))
def test_exposed_field_bit_rows_are_the_morphology(seed):
    """The bit-row kernel against OpenCV's morphology at widths around the word and byte
    edges (5-200 columns, 64 and 128 exactly), with blank areas at the borders, isolated
    blank pixels and values either side of the threshold."""
    rng = np.random.default_rng(500 + seed)
    widths = [5, 7, 8, 9, 63, 64, 65, 127, 128, 129, int(rng.integers(5, 200))]
    for cols in widths:
        rows = int(rng.integers(5, 60))
        image = rng.choice(np.float32([0.5, 1.0, 0.998, np.nextafter(np.float32(0.998), 0)]),
                           size=(rows, cols), p=[0.25, 0.65, 0.05, 0.05]).astype(np.float32)
        if seed % 2:
            image[:, :int(rng.integers(0, cols + 1))] = 1.0  # a blank strip at the left edge
        field = rng.random((rows, cols)) < 0.95
        expected = J._exposed_field_morphology(image, field)
        np.testing.assert_array_equal(J.exposed_field(image, field), expected)
        np.testing.assert_array_equal(expected, exposed_field_reference(image, field))


@pytest.mark.parametrize("seed", range(8))
def test_text_bit_rows_are_the_morphology(seed):
    """The text test on bit rows (the path of frames with many dark pixels) against the three
    dilations and the block average, at factors whose blocks straddle words (3, 5, 7) or not,
    at widths around the word edges, with text at the borders."""
    rng = np.random.default_rng(700 + seed)
    for cols in (9, 63, 64, 65, 128, 131, int(rng.integers(9, 200))):
        rows = int(rng.integers(9, 70))
        image, field = masks_scene(rng, (rows, cols), spots=float(rng.choice([0.01, 0.1, 0.4])))
        image[:2, :2], image[-2:, -3:] = 0.0, 1.0
        for factor in (1, 2, 3, 4, 5, 7):
            if rows < factor or cols < factor:
                continue
            out = _kernels.clear_text_bits(J._bit_rows(image <= np.float32(0.002)),
                                             J._bit_rows(image >= np.float32(0.998)), factor,
                                             J._all_in_blocks(field, factor))
            np.testing.assert_array_equal(out, usable_mask_reference(image, field, factor))


def test_exposed_field_bit_rows_on_a_frame_of_the_real_size():
    """A 1024² frame with a collimated blank border and noise clipped at the top value."""
    rng = np.random.default_rng(7)
    image = rng.uniform(0.2, 0.9, (1024, 1024)).astype(np.float32)
    image[:, :90], image[:140, :], image[930:, 700:] = 1.0, 1.0, 1.0
    image[rng.random(image.shape) < 0.01] = 1.0
    field = np.ones(image.shape, bool)
    field[:, 1000:] = False
    np.testing.assert_array_equal(J.exposed_field(image, field),
                                  J._exposed_field_morphology(image, field))


@pytest.mark.parametrize("seed", range(12))
def test_text_kernel_is_the_morphology(seed):
    """The kernel against the three dilations and the block average it replaces, at several
    factors (blocks cropped), with text at the borders and dark pixels next to bright ones."""
    rng = np.random.default_rng(100 + seed)
    shape = (int(rng.integers(20, 120)), int(rng.integers(20, 120)))
    image, field = masks_scene(rng, shape, spots=float(rng.choice([0.002, 0.02, 0.1])))
    image[:3, :3], image[-2:, -4:] = 0.0, 1.0  # text-like corners
    image[-1, -1] = 0.0
    for factor in (1, 2, 3, 5):
        out = J._all_in_blocks(field, factor)
        n = _kernels.clear_text_blocks(image, np.float32(0.002), np.float32(0.998), factor,
                                       field.size, np.zeros(shape, np.bool_), out)
        assert n == int(np.count_nonzero(image <= 0.002))
        np.testing.assert_array_equal(out, usable_mask_reference(image, field, factor))
        assert J.usable_mask(image, field, factor).tolist() == out.tolist()


def test_text_kernel_gives_up_on_many_dark_pixels():
    rng = np.random.default_rng(3)
    image, field = masks_scene(rng, (64, 64), spots=0.5)
    out = np.ones((32, 32), np.bool_)
    assert _kernels.clear_text_blocks(image, np.float32(0.002), np.float32(0.998), 2,
                                      field.size // 64, np.zeros((64, 64), np.bool_), out) == -1
    # the morphology then: still the same mask
    np.testing.assert_array_equal(J.usable_mask(image, field, 2),
                                  usable_mask_reference(image, field, 2))


@pytest.mark.parametrize("factor", [1, 2, 3, 5])
def test_all_in_blocks_is_the_strided_ands(factor):
    """The block test (at factor 2 the uint16 kernel) against the strided ANDs it replaces (a
    remainder cropped), on empty, sparse, dense and full masks and a non-contiguous one."""
    rng = np.random.default_rng(factor)
    for p_set in (0.0, 0.5, 0.97, 1.0):
        mask = rng.random((int(rng.integers(7, 70)), int(rng.integers(7, 70)))) < p_set
        for m in (mask, mask[:, ::-1]):
            rows, cols = m.shape[0] // factor, m.shape[1] // factor
            ref = np.ones((rows, cols), bool)
            for i in range(factor):
                for j in range(factor):
                    ref &= m[i:rows * factor:factor, j:cols * factor:factor]
            np.testing.assert_array_equal(J._all_in_blocks(m, factor), ref)


@pytest.mark.parametrize("seed", range(8))
def test_masks_with_many_dark_pixels_or_no_blank_area_are_the_morphology(seed):
    """exposed_field and usable_mask on images with solid blank areas or none (the dilation
    skipped), few dark pixels (the kernel) or many (the morphology, on the block grid at
    factors 2 and 4, odd sizes leaving partial blocks) against the plain morphology."""
    rng = np.random.default_rng(300 + seed)
    shape = (int(rng.integers(30, 130)), int(rng.integers(30, 130)))
    for spots in (0.5, 0.002, 0.3):
        image, field = masks_scene(rng, shape, spots=spots)
        if spots == 0.002:
            image[image >= 0.998] = 0.5  # no blank area: the field as stored
        exposed = J.exposed_field(image, field)
        np.testing.assert_array_equal(exposed, exposed_field_reference(image, field))
        for factor in (1, 2, 3, 4, 5):
            np.testing.assert_array_equal(J.usable_mask(image, exposed, factor),
                                          usable_mask_reference(image, exposed, factor))


@pytest.mark.parametrize("factor", [2, 4])
def test_any_in_blocks_is_the_reshaped_any(factor):
    rng = np.random.default_rng(factor)
    for p_set in (0.0, 0.01, 0.3, 1.0):
        mask = ((rng.random((int(rng.integers(1, 70)), int(rng.integers(1, 70)))) < p_set) * 255).astype(np.uint8)
        rows, cols = -(-mask.shape[0] // factor), -(-mask.shape[1] // factor)
        padded = np.zeros((rows * factor, cols * factor), np.uint8)
        padded[:mask.shape[0], :mask.shape[1]] = mask
        ref = padded.reshape(rows, factor, cols, factor).any(axis=(1, 3))
        out = _kernels.any_in_blocks(mask, factor, np.full((rows, cols), 7, np.uint8))
        assert out.tolist() == ref.astype(np.uint8).tolist()


@pytest.mark.parametrize("cols", [512, 500, 487, 333, 64])
def test_blur_columns_are_the_whole_image_s_gaussian(cols):
    """OpenCV's Gaussian filter on the aligned crop gives the whole image's floats in the
    columns asked for (bit for bit with opencv-python 5.0.0.93: its SIMD blocks and scalar tail
    fall alike; an unaligned crop differed in the last bit. Compared to float32 rounding here,
    so another OpenCV's loop layout does not fail the suite; held-out events are compared
    exactly by benchmarks/compare_events)."""
    rng = np.random.default_rng(cols)
    image = cv2.GaussianBlur(rng.random((90, cols)).astype(np.float32), (0, 0), 1.5)
    for sigma in (0.5, 0.6, 0.68, 0.85, 1.0, 2.0):
        whole = cv2.GaussianBlur(image, (0, 0), sigma)
        for _ in range(25):
            x0 = int(rng.integers(-5, cols)); x1 = int(rng.integers(x0 + 1, cols + 6))
            out = np.full_like(image, np.nan)
            J.blur_columns(image, sigma, x0, x1, out)
            a = max(0, x0); b = max(a, min(cols, x1))
            np.testing.assert_allclose(out[:, a:b], whole[:, a:b], rtol=1e-6, atol=1e-7,
                                       err_msg=str((sigma, x0, x1)))
            rest = np.ones(cols, bool)
            rest[a:b] = False  # left as they were, or the blur (when the crop is the whole)
            assert np.isnan(out[:, rest]).all() or np.allclose(out, whole, rtol=1e-6, atol=1e-7)


def test_segment_joint_on_the_central_columns_is_the_whole_maps_s(sim_runs, monkeypatch):
    """segment_joint computes the valley depth and the light smoothing in the central columns
    only (the gain is the floor elsewhere, and the paths keep to them): its lines are those of
    the whole maps, also when the buffers it reuses hold NaN in the other columns."""
    from sifluoro.imaging import frame_attenuation, working_grid

    run, frames, _ = sim_runs[1]
    grid = working_grid(0.58, target_mm=0.6)
    images = [frame_attenuation(f, {}).astype(np.float32) for f in frames[:6]]
    averages = [images[0], np.mean(images[:2], axis=0), np.mean(images[:4], axis=0)]
    usable = np.ones(images[0].shape, bool)
    usable[:, :12] = False
    kwargs = [dict(), dict(fallback_contrast=2.0), dict(side="L"), dict(side="R"),
              dict(min_contrast=6.0, seed_mask=np.roll(usable, 200, axis=1), seed_contrast=1.5)]
    got = []
    for work in averages:
        for kw in kwargs:
            buffers = {name: np.full(work.shape, np.nan, np.float32) for name in ("depth", "fine")}
            got.append(J.segment_joint(work, grid=grid, usable=usable, buffers=buffers, **kw))

    def whole_depth(smooth, offsets, x0, x1, out):
        _kernels.valley_depth(smooth, offsets, out)

    def whole_blur(image, sigma, x0, x1, out):
        cv2.GaussianBlur(image, (0, 0), sigma, dst=out)

    monkeypatch.setattr(J._kernels, "valley_depth_columns", whole_depth)
    monkeypatch.setattr(J, "blur_columns", whole_blur)
    want = [J.segment_joint(work, grid=grid, usable=usable, **kw) for work in averages for kw in kwargs]
    assert sum(w is not None for w in want) >= 5
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if w is not None:
            assert np.array_equal(g.polyline_xy, w.polyline_xy)
            assert (g.confidence, g.doubled, g.length_mm) == (w.confidence, w.doubled, w.length_mm)
