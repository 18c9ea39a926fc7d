"""The kernels of ReferenceBank.adopt_run against the NumPy expressions they replace (bit for
bit), and adopt_run against the NumPy steps it took before them."""
from __future__ import annotations

import numpy as np
import pytest

from sifluoro.track import _reference_kernels as R


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _grid(rng, shape=(37, 53)):
    img = rng.random(shape).astype(np.float32)
    img[rng.random(shape) < 0.1] = np.float32(0.02)     # the bounds themselves
    img[rng.random(shape) < 0.1] = np.float32(0.98)
    img[rng.random(shape) < 0.1] = -1.0
    return img


def test_overlap_is_the_numpy_mask(rng):
    usable = rng.random((37, 53)) > 0.2
    latest, first = _grid(rng), _grid(rng)
    out = np.empty((37, 53), bool)
    n = R.overlap(usable, latest, first, out)
    want = usable & (latest > 0.02) & (latest < 0.98) & (first > 0.02) & (first < 0.98)
    np.testing.assert_array_equal(out, want)
    assert n == np.count_nonzero(want)


def test_filled_is_np_where(rng):
    src, usable = _grid(rng), rng.random((37, 53)) > 0.5
    out = np.empty_like(src)
    fill = float(src[usable].mean())
    R.filled(src, usable, fill, out)
    assert out.tobytes() == np.where(usable, src, fill).astype(np.float32).tobytes()


def test_pairs_steps_and_residual_are_numpys(rng):
    latest, first = _grid(rng), _grid(rng)
    mask = rng.random((37, 53)) > 0.3
    a, b, out = (np.empty(latest.size) for _ in range(3))
    n = R.masked_pairs(latest, first, mask, a, b)
    want_a, want_b = latest[mask].astype(np.float64), first[mask].astype(np.float64)
    assert n == want_a.size
    assert a[:n].tobytes() == want_a.tobytes() and b[:n].tobytes() == want_b.tobytes()
    R.abs_steps(a[:n], b[:n], out)
    assert out[:n - 1].tobytes() == np.abs(np.diff(want_b - want_a)).tobytes()
    gain, offset = 1.2345678901, -0.0123456789
    R.affine_residual(a[:n], b[:n], gain, offset, out)
    assert out[:n].tobytes() == (want_b - gain * want_a - offset).tobytes()


def test_horizontal_steps_and_masked_difference_are_numpys(rng):
    image, other = _grid(rng), _grid(rng)
    usable = rng.random((37, 53)) > 0.2
    out = np.empty(image.size, np.float32)
    n = R.horizontal_steps(image, usable, out)
    want = (image[:, 1:] - image[:, :-1])[usable[:, 1:] & usable[:, :-1]]
    assert out[:n].tobytes() == want.tobytes()
    n = R.masked_difference(image, other, usable, out)
    assert out[:n].tobytes() == (image - other)[usable].tobytes()


def test_rescale_kept_is_the_numpy_update(rng):
    slots = np.stack([_grid(rng) for _ in range(4)])
    slots[1, 3, 4] = np.nan
    first, usable = _grid(rng), rng.random((37, 53)) > 0.3
    first[5, 6] = np.nan
    usable[5, 6] = True
    gain, offset, lift = np.float32(1.37), np.float32(-0.051), np.float32(0.0123)
    want = slots.copy()
    used = want[:3]
    with np.errstate(invalid="ignore"):
        keep = used >= 0
    used *= gain
    used += offset
    used[~keep] = -1.0
    np.maximum(used, np.where(usable, first + lift, np.float32(-1.0)), out=used)
    R.rescale_kept(slots, 3, gain, offset, first, usable, lift)
    assert slots.tobytes() == want.tobytes()


# --- adopt_run against its NumPy steps ------------------------------------------------------

def _sigma(v):
    return float(np.median(np.abs(v - np.median(v)))) * 1.4826 if v.size else 0.0


def _numpy_adopt(bank, first, usable):
    """ReferenceBank.adopt_run as NumPy steps (session 17's code, np.median for the medians)."""
    import cv2

    from sifluoro.track import contrast_reference as C

    bank.runs_seen += 1
    latest = bank.latest()
    both = usable & (latest > 0.02) & (latest < 0.98) & (first > 0.02) & (first < 0.98)
    if np.count_nonzero(both) < 0.05 * both.size:
        return 0, 0
    a = np.where(both, latest, float(latest[both].mean())).astype(np.float32)
    b = np.where(both, first, float(first[both].mean())).astype(np.float32)
    (dx, dy), response = cv2.phaseCorrelate(a, b, cv2.createHanningWindow(a.shape[::-1],
                                                                          cv2.CV_32F))
    shift = (0, 0) if response < 0.1 or abs(dx) > 12 or abs(dy) > 12 else (round(dx), round(dy))
    if shift != (0, 0):
        kept = bank.slots[:bank.count]
        kept[...] = np.roll(kept, shift[::-1], axis=(1, 2))
        dx, dy = shift
        if dx > 0:
            kept[:, :, :dx] = -1.0
        elif dx < 0:
            kept[:, :, dx:] = -1.0
        if dy > 0:
            kept[:, :dy, :] = -1.0
        elif dy < 0:
            kept[:, dy:, :] = -1.0
        latest = bank.latest()
        both = usable & (latest > 0.02) & (latest < 0.98) & (first > 0.02) & (first < 0.98)
    a = latest[both].astype(np.float64)
    b = first[both].astype(np.float64)
    noise_diff = float(np.median(np.abs(np.diff(b - a)))) * 1.0484
    var = a.var()
    gain = float(((a - a.mean()) * (b - b.mean())).mean() / var) if var > 0 else 1.0
    gain = gain if 0.5 < gain < 2.0 else 1.0
    offset = float(b.mean() - gain * a.mean())
    residual = b - gain * a - offset
    outclassed = False
    if bank.count >= 2:
        previous = bank.slots[(bank.next_slot - 2) % len(bank.slots)]
        same = both & (previous >= 0)
        if np.count_nonzero(same) >= 0.05 * same.size:
            def noise(img):
                return _sigma((img[:, 1:] - img[:, :-1])[both[:, 1:] & both[:, :-1]]) / np.sqrt(2)
            if noise(latest) >= C.QUIETER * noise(first):
                kept = gain * _sigma((latest - previous)[same])
                outclassed = _sigma(residual) > C.MISMATCH * kept
    if outclassed:
        bank.restart(first, ~usable)
        return shift
    used = bank.slots[:bank.count]
    keep = used >= 0
    used *= np.float32(gain)
    used += np.float32(offset)
    used[~keep] = -1.0
    np.maximum(used, np.where(usable, first + np.float32(noise_diff), np.float32(-1.0)),
               out=used)
    bank._dirty = True
    return shift


def test_adopt_run_equals_its_numpy_steps():
    """Shifted runs, restarted (outclassed) runs and gain-mapped ones: the same shift, kept
    frames and envelope, bit for bit."""
    import cv2

    from sifluoro.track.contrast_reference import ReferenceBank

    rng = np.random.default_rng(7)
    shape = (96, 112)
    tex = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2.0)
    tex = 0.3 + (tex - tex.min()) / (tex.max() - tex.min()) * 0.4
    seen = {"shift": 0, "restart": 0, "mapped": 0}
    for trial in range(24):
        slots = int(rng.integers(2, 6))
        mine = ReferenceBank(shape, slots=slots, pose_key=())
        noise = [0.02, 0.005][trial % 2]
        for _ in range(int(rng.integers(1, slots + 2))):
            mine.push((tex + rng.normal(0, noise, shape)).astype(np.float32),
                      rng.random(shape) < 0.05)
        ref = ReferenceBank(shape, slots=slots, pose_key=())
        ref.slots[...], ref.count, ref.next_slot = mine.slots, mine.count, mine.next_slot
        dx, dy = int(rng.integers(-4, 5)), int(rng.integers(-4, 5))
        gain = float(rng.uniform(0.6, 1.6)) if trial % 3 else 1.0
        first = (gain * np.roll(tex, (dy, dx), axis=(0, 1)) + 0.05
                 + rng.normal(0, [0.02, 0.003, 0.01][trial % 3], shape)).astype(np.float32)
        usable = rng.random(shape) > 0.1
        if trial % 5 == 0:
            first[:10] = 0.0
        want = _numpy_adopt(ref, first.copy(), usable.copy())
        assert mine.adopt_run(first.copy(), usable.copy()) == want
        assert (mine.count, mine.next_slot) == (ref.count, ref.next_slot)
        assert mine.slots.tobytes() == ref.slots.tobytes()
        assert mine.current_envelope().tobytes() == ref.current_envelope().tobytes()
        seen["shift"] += want != (0, 0)
        seen["restart"] += mine.count == 1
        seen["mapped"] += mine.count > 1
    assert min(seen.values()) >= 3, seen
