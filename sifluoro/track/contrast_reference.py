"""Pre-contrast reference of one pose: a ring of recent clean frames and their upper envelope.

Breathing moves bowel gas back and forth; a gas bubble that has left a pixel makes it brighter
than a single reference frame, exactly as contrast would. The per-pixel maximum over several
frames taken at different breathing phases (and over earlier runs of the same pose) already
holds the no-gas value of every pixel the gas visits, so only real new opacity exceeds it.
The needle advances between and within runs: a clean frame joins the ring as soon as it is
seen, so the envelope holds the needle where it is now.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from sifluoro.imaging import median, robust_sigma
from sifluoro.track import _contrast_kernels as K
from sifluoro.track import _reference_kernels as R

UNUSABLE = np.float32(-1.0)
# a new run whose first frame differs from the kept frames this many times more than they
# differ among themselves starts a reference of its own
MISMATCH = 2.0
# ... and whose pixel noise is this many times lower
QUIETER = 1.25
# a run's second frame that its first frame alone predicts this many times better (spread of
# the residual) than the envelope adopted from earlier runs restarts the reference from the
# first frame: those runs had other processing or window, and mapped by gain and offset they
# leave a residual that buries the run's contrast (quick training seeds 903, 915-920: 11 of
# 280 studies right, none broken; the cases it fixed lay at 2.4-10, most others at 0.8-2)
OWN_RUN_BETTER = 2.0


class ReferenceBank:
    """Recent clean working frames of one pose (working-grid float32, -1 = unusable pixel).

    Parameters
    ----------
    shape : (rows, cols)
        Working-grid shape.
    slots : int
        Frames kept; the envelope is their per-pixel maximum.
    pose_key : tuple
        What identifies the pose (C-arm angles and frame size).
    """

    def __init__(self, shape: tuple[int, int], *, slots: int, pose_key: tuple):
        self.pose_key = pose_key
        self.slots = np.full((slots,) + tuple(shape), UNUSABLE, np.float32)
        self.count = 0
        self.next_slot = 0
        self.envelope = np.full(shape, UNUSABLE, np.float32)
        self.runs_seen = 0
        self._dirty = False
        self._work: _AdoptWork | None = None

    @property
    def mature(self) -> bool:
        """Whether earlier runs of this pose contribute (their breathing phases differ)."""
        return self.runs_seen >= 1

    @property
    def empty(self) -> bool:
        return self.count == 0

    def push(self, image: np.ndarray, unusable: np.ndarray, shift_xy_px: tuple[int, int] = (0, 0)) -> None:
        """Add a clean frame; ``unusable`` pixels (text, no exposure) do not count.

        ``shift_xy_px`` is the frame's image motion against the pose's reference; the frame is
        stored moved back onto it.
        """
        K.shifted_copy(image, shift_xy_px[0], shift_xy_px[1], unusable, UNUSABLE,
                       self.slots[self.next_slot])
        self.next_slot = (self.next_slot + 1) % len(self.slots)
        self.count = min(self.count + 1, len(self.slots))
        self._dirty = True

    def restart(self, image: np.ndarray, unusable: np.ndarray) -> None:
        """Forget the kept frames: ``image`` alone is the reference."""
        self.slots[:] = UNUSABLE
        self.count = self.next_slot = 0
        self.push(image, unusable)

    def restart_if_own_run_better(self, image: np.ndarray, valid: np.ndarray, spread: float,
                                  residual: np.ndarray, usable: np.ndarray) -> bool:
        """On a run's second frame ``image``, with ``spread`` the robust spread of its residual
        against the envelope over ``valid``: whether the latest kept frame (the run's first)
        predicts it ``OWN_RUN_BETTER`` times better; the bank then restarts from that frame.
        ``residual`` and ``usable`` are work arrays of the grid's shape."""
        first = self.latest()
        np.copyto(usable, valid)
        K.masked_residual(image, first, usable, 0, 0, residual)
        if np.count_nonzero(usable) < 0.5 * np.count_nonzero(valid):
            return False
        _, own = K.robust_centre_spread(residual, usable, 3.0)
        if not 0.0 < own * OWN_RUN_BETTER < spread:
            return False
        first = first.copy()
        self.restart(first, first < 0.0)
        return True

    def latest(self) -> np.ndarray:
        return self.slots[(self.next_slot - 1) % len(self.slots)]

    def current_envelope(self) -> np.ndarray:
        """Per-pixel maximum of the kept frames (recomputed only after a change)."""
        if self._dirty:
            K.envelope_max(self.slots, self.count, self.envelope)
            self._dirty = False
        return self.envelope

    def _outclassed(self, first: np.ndarray, residual: np.ndarray, both: np.ndarray,
                    gain: float) -> bool:
        """Whether the new run is both quieter than the kept frames (``QUIETER``: more dose per
        frame, as an acquisition run after fluoroscopy) and not predicted by them: its first
        frame differs from the latest kept frame (after gain and offset) ``MISMATCH`` times
        more than two kept frames of the pose differ among themselves."""
        if self.count < 2:
            return False
        w = self._work
        latest = self.latest()
        previous = self.slots[(self.next_slot - 2) % len(self.slots)]
        same = np.logical_and(both, previous >= 0, out=w.same)
        if np.count_nonzero(same) < 0.05 * same.size:
            return False
        if _pixel_noise(latest, both, w.f32) < QUIETER * _pixel_noise(first, both, w.f32):
            return False
        n = R.masked_difference(latest, previous, same, w.f32)
        kept = gain * _robust_sigma(w.f32[:n])
        return _robust_sigma(residual) > MISMATCH * kept

    def adopt_run(self, first: np.ndarray, usable: np.ndarray) -> tuple[int, int]:
        """Bring the kept frames to a new run's display scale and find its image shift.

        Each run has its own window (and dose), so stored values differ by a gain and an
        offset; a least-squares line between the latest kept frame and the run's first frame
        maps the older frames, which then take the first frame's brighter pixels. A run the
        kept frames do not predict and that is quieter than them starts a reference of its own
        (:meth:`_outclassed`). Returns the integer shift (dx, dy) of the new run relative to
        the kept frames, from phase correlation (0, 0 when unsure).
        """
        self.runs_seen += 1
        if self._work is None or self._work.shape != first.shape:
            self._work = _AdoptWork(first.shape)
        w = self._work
        latest = self.latest()
        both = w.both
        if R.overlap(usable, latest, first, both) < 0.05 * both.size:
            return 0, 0
        shift = _phase_shift(latest, first, both, w)
        if shift != (0, 0):
            kept = self.slots[:self.count]  # a view: written in place
            kept[...] = np.roll(kept, shift[::-1], axis=(1, 2))
            # the band the shift uncovers holds the opposite edge, wrapped round: unknown
            dx, dy = shift
            if dx > 0:
                kept[:, :, :dx] = UNUSABLE
            elif dx < 0:
                kept[:, :, dx:] = UNUSABLE
            if dy > 0:
                kept[:, :dy, :] = UNUSABLE
            elif dy < 0:
                kept[:, dy:, :] = UNUSABLE
            latest = self.latest()
            R.overlap(usable, latest, first, both)
        n = R.masked_pairs(latest, first, both, w.a, w.b)
        a, b = w.a[:n], w.b[:n]
        R.abs_steps(a, b, w.f64)
        noise_diff = median(w.f64[:max(n - 1, 0)]) * 1.0484  # sigma of a difference
        var = a.var()
        mean_a, mean_b = a.mean(), b.mean()
        gain = float(((a - mean_a) * (b - mean_b)).mean() / var) if var > 0 else 1.0
        if not 0.5 < gain < 2.0:
            gain = 1.0
        offset = float(mean_b - gain * mean_a)
        R.affine_residual(a, b, gain, offset, w.f64[:n])
        if self._outclassed(first, w.f64[:n], both, gain):
            # the kept frames do not predict this run (an acquisition run after fluoroscopy:
            # other dose, noise and processing); their envelope would bury the run's contrast,
            # so the run starts its own reference from its first frame
            self.restart(first, ~usable)
            return shift
        # what the new run shows that older frames lack (the needle moved) goes into every
        # kept frame, raised by about the bias of a maximum over several noisy frames: it
        # then stands in the envelope as high as everything else does
        R.rescale_kept(self.slots, self.count, np.float32(gain), np.float32(offset), first,
                       usable, np.float32(noise_diff))
        self._dirty = True
        return shift


class _AdoptWork:
    """Working arrays of :meth:`ReferenceBank.adopt_run` for one grid shape."""

    def __init__(self, shape: tuple[int, int]):
        self.shape = tuple(shape)
        size = shape[0] * shape[1]
        self.both = np.empty(shape, np.bool_)
        self.same = np.empty(shape, np.bool_)
        self.a = np.empty(size, np.float64)
        self.b = np.empty(size, np.float64)
        self.f64 = np.empty(size, np.float64)
        self.f32 = np.empty(size, np.float32)
        self.ref = np.empty(shape, np.float32)
        self.cur = np.empty(shape, np.float32)


def _pixel_noise(image: np.ndarray, usable: np.ndarray, work: np.ndarray) -> float:
    """Per-pixel noise from horizontal neighbour differences (robust: edges are few);
    ``work``: float32 scratch of the image's size."""
    n = R.horizontal_steps(image, usable, work)
    return _robust_sigma(work[:n]) / np.sqrt(2.0)


def _robust_sigma(values: np.ndarray) -> float:
    return robust_sigma(values) * 1.4826 if values.size else 0.0


def _phase_shift(ref: np.ndarray, cur: np.ndarray, usable: np.ndarray,
                 work: _AdoptWork) -> tuple[int, int]:
    """Integer translation of ``cur`` against ``ref`` by phase correlation (0, 0 if weak)."""
    fill_r = float(ref[usable].mean())
    fill_c = float(cur[usable].mean())
    R.filled(ref, usable, fill_r, work.ref)
    R.filled(cur, usable, fill_c, work.cur)
    window = _hanning(ref.shape)
    (dx, dy), response = cv2.phaseCorrelate(work.ref, work.cur, window)
    if response < 0.1 or abs(dx) > 12 or abs(dy) > 12:
        return 0, 0
    return int(round(dx)), int(round(dy))


@functools.lru_cache(maxsize=4)
def _hanning(shape: tuple[int, int]) -> np.ndarray:
    """OpenCV's Hanning window of a grid shape, made once per shape (it cost a tenth of
    :meth:`ReferenceBank.adopt_run`); read-only."""
    window = cv2.createHanningWindow(shape[::-1], cv2.CV_32F)
    window.flags.writeable = False
    return window


def warm_up(rows: int, cols: int) -> None:
    """Compile :meth:`ReferenceBank.adopt_run`'s kernels for a working grid."""
    R.warm_up(rows, cols)

