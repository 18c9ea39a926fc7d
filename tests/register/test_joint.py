"""joint.py's shortcuts against the plain computations they replace: same values, exactly."""
import numpy as np
import pytest

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
