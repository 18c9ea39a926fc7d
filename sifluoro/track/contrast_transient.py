"""Vessels: thin lines that appear abruptly and wash out within two or three frames.

A vascular uptake opacifies its whole tree within 1-2 frames, holds about one frame and empties
(e-fold under one frame, docs/simulator.md); joint fill and soft-tissue clouds stay. Per pixel
the temporal profile is cut into two parts around a candidate arrival frame ``a``::

    onset   = x[a] - mean(x[a-2], x[a-1])     (it appeared)
    washout = x[a] - x[a+2]                   (and went again)

``x[a+1]`` is left out: a short vessel is at full strength on one frame only and often half
gone on the next, so averaging ``x[a]`` with it halves the signal (on training seeds 606, 607,
777, 778 and a quick set of seed 903, the single arrival frame found 19 of 27 vessels within
six frames against 16 with the two-frame mean, without more false studies).

Both are passed through an oriented ridge filter (a line of 9 working pixels against the two
parallel lines 3 px either side, the smaller of the two differences, best of 8 orientations):
vessels a few pixels wide are summed along their length, while edges of moving gas, broad
clouds and noise are not. Each ridge map is divided by its *local* mean absolute value (the
noise varies several-fold between soft tissue and dense bone), and the smaller of the two
(appeared AND went) is cut into hysteresis components. The score is the largest component's
excess over the low threshold, times the working pixel size (mm): a long line that came and
went scores far above anything joint fill, clouds, the needle or gas leave.
"""
from __future__ import annotations

import functools
import itertools

import cv2
import numpy as np
from scipy import ndimage

from sifluoro.imaging import median
from sifluoro.track import _contrast_kernels as K

FRAMES = 5          # x[a-2] .. x[a+2]
LINE_HALF_PX = 4
FLANK_PX = 3
ORIENTATIONS = 8
NOISE_WINDOW_PX = 31
# at 1.5 noise percolates into long components (sums of 45-65 on training studies without
# a vessel); at 2.5 they stay below 17 while vessels keep their core
LOW_Z, HIGH_Z = 2.5, 4.0
EDGE_PX = 4         # the filters see this far past the field edge
# a line that fired whose onset has at least as much darkening beside it as brightening (each
# beyond GAS_Z noise sigmas) moved rather than arrived: a gas rim (a move conserves, an arrival
# adds; training seed 1524 case 4's rim 1.17, a vessel beside growing joint fill 0.70 and lost
# at 0.5); GAS_TRIES lines at most
GAS_Z = 2.5
GAS_DARK_RATIO = 1.0
GAS_TRIES = 3
# contrast accepted on the newest frame, grown by the filters' reach: there the onset ridge's
# absolute values enter its local noise at most NEAR_CLIP x their global mean. Contrast that
# arrived with a vessel (a joint fill growing at the tip, a cloud) answers the filters tens of
# sigmas strong; counted as noise it raised the local noise of the vessel beside it about 2-fold
# and hid it (quick training seed 6104 case 23, seed 1526 case 15: visible vessels at the tip of
# a joint fill read as joint fill). The washout keeps its own noise: a fill still growing after
# the arrival answers it as strongly (negative), and clipped there its noise read as a line on
# a joint fill alone. Frames without accepted opacity are standardised as before.
NEAR_CLIP = 3.0
NEAR_GROW_PX = LINE_HALF_PX + FLANK_PX + 1
# a washout line inside opacity that stays keeps its score when the rule for that opacity
# cut it below the floor but it is a long thin line (long axis from ``stays[3]`` px, at least
# KEPT_LINE_ELONGATION x its short axis) that gained opacity: a vessel washing out into a cloud that grows faster
# over it than it empties gains opacity on every pixel (review s20 C2: 14-20 mm long, 3-5 x
# as long as wide), a broadening bolus's centre is a dot (phantoms 9-10 mm, 1.6-1.8 x)
KEPT_LINE_ELONGATION = 2.5
# ... and whose pixels gained opacity (mean at least this many x the rule's margin): the cloud
# came in over the line. A thin line in extravasation that kept its opacity (the rule's case:
# gain -1.6 to -0.2 x on three false vascular training studies, 9312 case 20 22 mm long)
# keeps the rule; the guard phantoms' vessels gained 13-28 x
KEPT_LINE_GAIN = 3.0

# a best line below floor x this is below it for any subset of its pixels too: float64 sums of
# up to 65536 positive terms in another order differ by less than 1e-11 relative
_BOUND_BELOW = 1.0 - 1e-9

_STAMPS = itertools.count(1)
_EDGE_SQUARE = np.ones((2 * EDGE_PX + 1, 2 * EDGE_PX + 1), np.uint8)
_NEAR_SQUARE = np.ones((2 * NEAR_GROW_PX + 1, 2 * NEAR_GROW_PX + 1), np.uint8)


def new_stamp() -> int:
    """A number never handed out before in this process: names the frame put in a history
    slot (:meth:`TransientLines.score_recent` reuses the noise measured on that frame)."""
    return next(_STAMPS)


@functools.lru_cache(maxsize=None)
def line_kernels(half: int = LINE_HALF_PX, flank: int = FLANK_PX,
                 n: int = ORIENTATIONS) -> tuple[tuple[np.ndarray, tuple[int, int]], ...]:
    """Per orientation: a (2 half + 1)² line-average kernel (nearest-pixel samples every half
    pixel) and the integer (dx, dy) of the flank line, ``flank`` px across it.

    The flanks are the centre line's response read at +-(dx, dy): one small filter per
    orientation instead of three large ones.
    """
    size = 2 * half + 1
    out = []
    for i in range(n):
        th = np.pi * i / n
        ux, uy = np.cos(th), np.sin(th)
        k = np.zeros((size, size), np.float32)
        for s in np.linspace(-half, half, 4 * half + 1):
            k[int(round(half + s * uy)), int(round(half + s * ux))] += 1.0
        out.append((k / k.sum(), (int(round(-flank * uy)), int(round(flank * ux)))))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def tap_tables() -> tuple[np.ndarray, ...]:
    """:func:`line_kernels` as the tap tables of :func:`_contrast_kernels.line_ridge`:
    (dy, dx, weight) per orientation and tap (``K.LINE_TAPS`` taps, unused ones weight 0), and
    the flank offsets (dx, dy) per orientation."""
    kernels = line_kernels()
    n = len(kernels)
    dy = np.zeros((n, K.LINE_TAPS), np.int64)
    dx = np.zeros((n, K.LINE_TAPS), np.int64)
    w = np.zeros((n, K.LINE_TAPS), np.float32)
    flank = np.zeros((n, 2), np.int64)
    for o, (kc, f) in enumerate(kernels):
        h = kc.shape[0] // 2
        ys, xs = np.nonzero(kc)
        if len(ys) > K.LINE_TAPS:
            raise ValueError(f"a line kernel has {len(ys)} taps, line_ridge takes {K.LINE_TAPS}")
        dy[o, :len(ys)] = ys - h
        dx[o, :len(ys)] = xs - h
        w[o, :len(ys)] = kc[ys, xs]
        flank[o] = f
    return dy, dx, w, np.ascontiguousarray(flank[:, 0]), np.ascontiguousarray(flank[:, 1])


def _best_component(z: np.ndarray) -> np.ndarray | None:
    """Mask of the component :func:`K.best_line` scores (8-connected above ``LOW_Z``, one
    pixel above ``HIGH_Z``, largest summed excess), None when there is none."""
    above = z > LOW_Z
    lab, count = ndimage.label(above, structure=np.ones((3, 3), bool))
    if not count:
        return None
    values = z[above]
    excess = np.bincount(lab[above], weights=values - LOW_Z, minlength=count + 1)
    high = np.zeros(count + 1, bool)
    high[lab[z > HIGH_Z]] = True
    excess[~high] = -1.0
    excess[0] = -1.0
    best = int(np.argmax(excess))
    return None if excess[best] <= 0.0 else lab == best


def _dark_twin(onset: np.ndarray, comp: np.ndarray, noise: float, inner: np.ndarray) -> bool:
    """Whether the onset around ``comp`` (its box grown by half its size) holds at least
    ``GAS_DARK_RATIO`` as much darkening as brightening, each counted beyond
    ``GAS_Z`` noise sigmas."""
    ys, xs = np.nonzero(comp)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    m = max(3, max(y1 - y0, x1 - x0) // 2)
    box = (slice(max(0, y0 - m), y1 + m), slice(max(0, x0 - m), x1 + m))
    z = onset[box] / noise
    use = inner[box]
    bright = float(np.maximum(z - GAS_Z, 0.0)[use].sum())
    dark = float(np.maximum(-z - GAS_Z, 0.0)[use].sum())
    return bright > 0.0 and dark >= GAS_DARK_RATIO * bright


def _drop_kept_opacity(zw: np.ndarray, arrival: np.ndarray, newest: np.ndarray,
                       mask: np.ndarray, bbox: tuple[int, int, int, int],
                       margin: float) -> None:
    """Zero the washout z ``zw`` where ``mask`` (opacity still there on ``newest``) lost
    less than ``margin`` since ``arrival``; only inside ``bbox`` (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = bbox
    K.drop_kept_opacity(zw, arrival, newest, mask, y0, y1, x0, x1, margin)


class TransientLines:
    """Working arrays of one grid shape for :meth:`score` (allocated once)."""

    def __init__(self, shape: tuple[int, int]):
        rows, cols = shape
        self.shape = shape
        self.pad = np.empty((rows + 2 * LINE_HALF_PX, cols + 2 * LINE_HALF_PX), np.float32)
        self.cpad = np.empty((rows + 2 * FLANK_PX, cols + 2 * FLANK_PX), np.float32)
        self.ridge_o = np.empty(shape, np.float32)
        self.ridge_w = np.empty(shape, np.float32)
        self.kept_w = np.empty(shape, np.float32)     # the washout before the kept-opacity rule
        self.tmp = np.empty(shape, np.float32)
        self.rowsum = np.empty(shape, np.float64)
        self.counts = np.empty(shape, np.int32)
        self.colsum = np.empty(cols, np.float64)
        self.scratch = np.empty(rows * cols, np.float32)
        self.hist = np.empty(4 * 4096, np.int64)
        self.bins = np.empty(shape, np.int32)
        self.stack = np.empty(rows * cols, np.int64)
        self.seen = np.empty(shape, np.bool_)
        # what depends on the valid mask only, kept while the mask stays the same
        self.valid_seen = np.zeros(shape, np.bool_)
        self.valid_known = False
        self.inner = np.empty(shape, np.bool_)
        self.validf = np.empty(shape, np.float32)
        self.den_scale = np.empty(shape, np.float32)
        # the columns of each row where the ridges are read (inner) and filtered
        # (K.ridge_spans): the ridge maps are made there only
        self.spans = np.zeros((4, rows), np.int64)
        self.all_spans = np.zeros((4, rows), np.int64)
        K.full_spans(self.all_spans, cols)
        # the rows from the first to the last with an inner pixel: the noise, box scale and
        # components are taken there only (rows without one add exact zeros to every sum)
        self.rows = slice(0, 0)
        self.recent = np.empty(FRAMES, np.int64)
        # the last washout's noise (median and divisor, K.local_z) and which newest frame
        # (stamp) and field it was measured on
        self.w_divisor = np.empty(shape, np.float32)
        self.w_median = 0.0
        self.w_of = (0, -1)
        self.mask_gen = 0
        # the last onset's ridge, named by the stamps of its frames (arrival, the two before):
        # the recent test's onset on one frame is the history test's on the next; and which
        # frames and field the standardised one in ridge_o is of
        self.onset_ridge = np.empty(shape, np.float32)
        self.onset_spans = np.zeros((4, rows), np.int64)  # where onset_ridge holds the ridge
        self.onset_of: tuple[int, int, int] | None = None
        self.onset_z_of: tuple[tuple[int, int, int], int, int] | None = None
        # where the local noise is clipped (set_near), and a number naming that mask (0: none)
        self.near = np.zeros(shape, np.bool_)
        self.near_clip = 0.0
        self.near_gen = 0
        self._near_count = 0

    def set_near(self, opacity: np.ndarray | None) -> None:
        """The opacity accepted on the newest frame (bool grid map), or None: the vessel tests
        that follow clip the local noise of their onset ridge there, grown by
        ``NEAR_GROW_PX`` (``NEAR_CLIP``)."""
        if opacity is None:
            self.near_clip = 0.0
            self.near_gen = 0
            return
        # OpenCV's dilation (outside the image counts as unset, as K.dilate_square's): a
        # third of its time
        cv2.dilate(opacity.view(np.uint8), _NEAR_SQUARE, dst=self.near.view(np.uint8))
        self.near_clip = NEAR_CLIP
        self._near_count += 1
        self.near_gen = self._near_count

    def _local_z(self, m: np.ndarray, r: slice, out: np.ndarray, clip: float = 0.0) -> float:
        """K.local_z of the rows ``r`` of a ridge map ``m`` (already cut to ``r``), its noise
        clipped where ``near`` when ``clip`` > 0."""
        return float(K.local_z(m, self.inner[r], self.validf[r], self.den_scale[r],
                               NOISE_WINDOW_PX, self.scratch, self.hist, self.bins[r],
                               self.rowsum[r], self.colsum, out, self.near[r], clip))

    def _ridge(self, img: np.ndarray, out: np.ndarray) -> None:
        K.line_ridge(img, *tap_tables(), self.pad, self.cpad, out)

    def _mask(self, valid: np.ndarray) -> None:
        """The field eroded by the filters' reach, and its box scale (only when it changed)."""
        if self.valid_known and K.same_mask(valid, self.valid_seen):
            return
        self.valid_seen[...] = valid
        self.valid_known = True
        self.mask_gen += 1
        # OpenCV's erosion (outside the image counts as set, as K.erode_square's): a third of
        # the kernel's time
        cv2.erode(valid.view(np.uint8), _EDGE_SQUARE, dst=self.inner.view(np.uint8))
        K.ridge_spans(self.inner, FLANK_PX, self.spans)
        live = np.flatnonzero(self.spans[1] > self.spans[0])
        r = self.rows = slice(int(live[0]), int(live[-1]) + 1) if live.size else slice(0, 0)
        np.copyto(self.validf, self.inner)
        K.box_scale(self.inner[r], NOISE_WINDOW_PX, self.counts[r], self.den_scale[r])

    def score_history(self, history: np.ndarray, order: np.ndarray, n: int,
                      valid: np.ndarray, *, floor: float = 0.0,
                      stamps: np.ndarray | None = None, stays=None) -> float:
        """Line evidence (z x px) of a vessel that arrived on the third-last of the run's last
        ``n`` (4 or 5) working frames ``history[order[0]] .. history[order[n - 1]]`` (oldest
        first) and had emptied by the last.

        The washout is computed first: its own best component bounds the score from above
        (every component of ``min(onset, washout)`` lies inside one of the washout's). When
        that bound is below ``floor`` the onset is not computed and 0 is returned, so scores
        under ``floor`` read 0. ``stamps[slot]`` (:func:`new_stamp`) names the frame each
        history slot holds: the washout's noise is then kept for :meth:`score_recent`.

        ``stays``, optional ``(mask, bbox, margin[, line_px])``: opacity still accepted on the
        newest frame (bool map, its (y0, y1, x0, x1) box on the grid) and the loss (frame
        units) that counts as washing out. Where that opacity lost less than ``margin`` since
        the arrival frame, the washout is not counted: a cloud that broadens loses the
        curvature the ridge filter sees at its centre, not its opacity (a star of "lines" on a
        growing extravasation, quick training seed 1521 case 5: 47 z x mm). With ``line_px``,
        a line this rule cuts below ``floor`` keeps its whole score when it is long and thin
        (:meth:`_kept_line`).
        """
        if n not in (4, 5):
            raise ValueError(f"the vessel test takes 4 or 5 frames, not {n}")
        return self._score(history, order, n, valid, floor, stamps, order[n - 1],
                           reuse_noise=False, stays=stays)

    def score_recent(self, history: np.ndarray, order: np.ndarray, n: int,
                     valid: np.ndarray, *, floor: float = 0.0,
                     stamps: np.ndarray | None = None, stays=None) -> float:
        """Line evidence (z x px) of a vessel that arrived on the second-last of the run's last
        ``n`` (4 or 5) frames and is fading on the last: :meth:`score_history` one frame
        earlier, with ``washout = x[a] - x[a+1]`` and the onset against ``x[a-2], x[a-1]``.

        A short vessel is often half gone one frame after its arrival, so this finds fewer
        vessels than :meth:`score_history`, but those a frame sooner.

        Called with ``stamps`` right after :meth:`score_history` of the same frames and field,
        its washout is standardised with that test's noise (median and local divisor: both
        washouts are differences of two frames ending on the same newest one) instead of
        measuring it again, which is half the cost of a test. Its own washout's line raises
        its own local noise, the other washout holds less of it: a vessel scores about twice
        as high this way, so its threshold is higher (contrast_classify.RECENT_LINE_MM).
        ``stays``: as for :meth:`score_history`.
        """
        if n not in (4, 5):
            raise ValueError(f"the vessel test takes 4 or 5 frames, not {n}")
        o = self.recent
        o[0], o[1], o[2], o[3], o[4] = (order[n - 4], order[n - 3], order[n - 2], order[n - 2],
                                        order[n - 1])
        return self._score(history, o, FRAMES, valid, floor, stamps, order[n - 1],
                           reuse_noise=True, stays=stays)

    def score_late(self, history: np.ndarray, order: np.ndarray, n: int, valid: np.ndarray, *,
                   floor: float = 0.0, stamps: np.ndarray | None = None) -> float:
        """Line evidence (z x px) of a vessel that arrived on the fourth-last of the run's last
        ``n`` (5 or 6) frames and had emptied by the last two: :meth:`score_history` one frame
        later, with ``washout = x[a] - (x[a+2] + x[a+3]) / 2``.

        A vessel is often still at a third to a half of its strength two frames after its
        arrival (it holds a frame, then empties with an e-fold of 0.6-1 frame), and a single
        frame's difference is noisier than one against the mean of two: this finds the faint
        vessels the other two tests miss, a frame later. Its washout's noise is its own (not
        kept for :meth:`score_recent`)."""
        if n not in (5, 6):
            raise ValueError(f"the late vessel test takes 5 or 6 frames, not {n}")
        return self._score(history, order[:n], n, valid, floor, stamps, order[n - 1],
                           reuse_noise=False, late=True)

    def _score(self, history, order, n, valid, floor, stamps, newest, *, reuse_noise,
               late=False, stays=None) -> float:
        self._mask(valid)
        # the washout x[a] - x[n-1] straight into the ridge filter; the onset only when the
        # washout can reach the floor
        r = self.rows       # the z maps are made (and read) on these rows only
        zw, validf = self.ridge_w[r], self.validf[r]
        if late:
            # x[a] against the mean of the last two frames; its onset is the one before
            K.onset_ridge(history, order[n - 4], order[n - 2], order[n - 1], *tap_tables(),
                          self.pad, self.cpad, self.ridge_w, self.spans)
            self._local_z(zw, r, self.tmp[r])
            if floor > 0.0 and K.best_line(zw, zw, validf, LOW_Z, HIGH_Z, self.seen[r],
                                           self.stack) < floor:
                return 0.0
            self._onset_z(history, order, n - 1, stamps, everywhere=False)
            return K.best_line(self.ridge_o[r], zw, validf, LOW_Z, HIGH_Z, self.seen[r],
                               self.stack)
        K.washout_ridge(history, order[n - 3], order[n - 1], *tap_tables(), self.pad, self.cpad,
                        self.ridge_w, self.spans)
        noise_of = (int(stamps[newest]), self.mask_gen) if stamps is not None else (0, -1)
        if reuse_noise and stamps is not None and noise_of == self.w_of:
            K.z_like(zw, self.w_median, self.w_divisor[r])
        else:
            self.w_median = self._local_z(zw, r, self.w_divisor[r])
            self.w_of = noise_of
        line_px = 0.0
        kept_best = None
        if stays is not None:
            line_px = stays[3] if len(stays) > 3 else 0.0
            if floor > 0.0:
                # the rule only zeroes pixels: each component after it lies in one before, so
                # the washout's best line before it bounds the one after (and is the rescue's
                # own test); below the floor by more than float rounding, both read 0 (the
                # usual frame: no copy, no rule, one best_line instead of two)
                kept_best = K.best_line(zw, zw, validf, LOW_Z, HIGH_Z, self.seen[r], self.stack)
                if kept_best < floor * _BOUND_BELOW:
                    return 0.0
            if line_px > 0.0 and floor > 0.0:
                np.copyto(self.kept_w[r], zw)       # the washout before the rule, for _kept_line
            _drop_kept_opacity(self.ridge_w, history[order[n - 3]], history[order[n - 1]],
                               *stays[:3])
        rescue = line_px > 0.0 and floor > 0.0
        under = floor > 0.0 and K.best_line(zw, zw, validf, LOW_Z, HIGH_Z, self.seen[r],
                                            self.stack) < floor
        # kept_best is best_line of kept_w (the same map, the same sums)
        if under and (not rescue or kept_best < floor):
            return 0.0
        self._onset_z(history, order, n, stamps, everywhere=reuse_noise)
        score = K.best_line(self.ridge_o[r], zw, validf, LOW_Z, HIGH_Z, self.seen[r], self.stack)
        if rescue and score < floor:
            score = self._kept_line(score, floor, line_px,
                                    history[order[n - 1]][r] - history[order[n - 3]][r],
                                    stays[2])
            if under and score < floor:
                return 0.0          # as without the rescue: under the floor reads 0
        if floor > 0.0 and score >= floor:
            score = self._without_gas(history, order, n, score, floor)
        return score

    def _kept_line(self, score, floor, line_px, gain, margin) -> float:
        """The score without the kept-opacity rule (its washout put back in ``ridge_w``) when
        that reaches ``floor`` and its best component is a long thin line (principal long axis
        from ``line_px``, ``KEPT_LINE_ELONGATION`` x the short one) whose pixels gained on
        average ``KEPT_LINE_GAIN`` x ``margin`` (``gain``: newest - arrival frame, the rows
        read), else ``score``. Runs only when the rule cut a test below its floor."""
        r = self.rows
        zw, zo, validf = self.kept_w[r], self.ridge_o[r], self.validf[r]
        full = K.best_line(zo, zw, validf, LOW_Z, HIGH_Z, self.seen[r], self.stack)
        if full < floor:
            return score
        comp = _best_component(np.minimum(zo, zw) * validf)
        if comp is None:
            return score
        ys, xs = np.nonzero(comp)
        if len(ys) < 3:
            return score
        # axes of the component's second moments: 4 sigma (a straight line of L px: 1.15 L)
        var = np.linalg.eigvalsh(np.cov(np.vstack([ys, xs]).astype(np.float64)))
        short, long = 4.0 * np.sqrt(np.maximum(var, 0.0))
        if long < line_px or long < KEPT_LINE_ELONGATION * short:
            return score
        if float(gain[comp].mean()) < KEPT_LINE_GAIN * margin:
            return score
        np.copyto(self.ridge_w[r], zw)
        return full

    def _without_gas(self, history, order, n, score, floor) -> float:
        """``score`` with the best lines that came with a dark twin left out (a gas rim that
        moved: its onset leaves a dark crescent beside the bright one; a vessel only adds
        opacity), each time the next best line, until one is not gas or the score falls
        below ``floor`` (0). Runs only when a test fires: Python labelling is cheap enough."""
        r = self.rows
        zw, zo, validf = self.ridge_w[r], self.ridge_o[r], self.validf[r]
        a = history[order[n - 3]][r]
        before = history[order[n - 4]][r]
        if n >= 5:
            before = 0.5 * (before + history[order[n - 5]][r])
        onset = a - before
        inner = self.inner[r]
        # the onset's pixel noise from neighbour differences, on every second row (enough)
        pairs = inner[::2, 1:] & inner[::2, :-1]
        noise = median(np.abs(np.diff(onset[::2], axis=1)[pairs])) if pairs.any() else 0.0
        noise *= 1.4826 / np.sqrt(2.0)
        if noise <= 0.0:
            return score
        for _ in range(GAS_TRIES):
            comp = _best_component(np.minimum(zo, zw) * validf)
            if comp is None or not _dark_twin(onset, comp, noise, inner):
                return score
            zw[comp] = 0.0
            score = K.best_line(zo, zw, validf, LOW_Z, HIGH_Z, self.seen[r], self.stack)
            if score < floor:
                return 0.0
        return score

    def _onset_z(self, history, order, n, stamps, *, everywhere) -> None:
        """``ridge_o``: the onset's ridge standardised on the current field (K.local_z). With
        ``stamps``, a ridge of the same three frames is not filtered again (the same float
        operations on the same frames) if it was filtered wherever the field now reads it, and
        its z is kept while the field is unchanged. The recent test's onset (``everywhere``),
        the one the next frame reuses, is filtered on the whole grid: the next field may read
        more."""
        frames = None
        if stamps is not None:
            frames = (int(stamps[order[n - 3]]), int(stamps[order[n - 4]]),
                      int(stamps[order[n - 5]]) if n >= 5 else 0)
            if self.onset_z_of == (frames, self.mask_gen, self.near_gen):
                return
        spans = self.all_spans if everywhere else self.spans
        if (frames is None or frames != self.onset_of
                or not K.spans_cover(self.onset_spans, self.spans)):
            K.onset_ridge(history, order[n - 3], order[n - 4], order[n - 5] if n >= 5 else -1,
                          *tap_tables(), self.pad, self.cpad, self.onset_ridge, spans)
            self.onset_spans[...] = spans
            self.onset_of = frames
        r = self.rows
        np.copyto(self.ridge_o[r], self.onset_ridge[r])
        self._local_z(self.ridge_o[r], r, self.tmp[r], self.near_clip)
        self.onset_z_of = None if frames is None else (frames, self.mask_gen, self.near_gen)

    def score(self, frames: list[np.ndarray], valid: np.ndarray) -> float:
        """:meth:`score_history` of a list of 4 or 5 frames, oldest first (copies them)."""
        history = np.stack(frames).astype(np.float32, copy=False)
        return self.score_history(history, np.arange(len(frames)), len(frames), valid)
