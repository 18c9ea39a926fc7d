"""Find the SI joint line: the thin, faint radiolucent curve between sacrum and ilium.

Horizontal valley depth (darker than both sides, numba) on the attenuation image, a best
near-vertical path (dynamic programming) through it, a window of a joint's height along the
path cut to where the gap keeps its width (the space between the bones widens beyond the
synovial joint's ends: the ends are fitted to the rim-to-rim widths along the path), and a
length check; a second, parallel path means the joint's anterior
and posterior margins are not superimposed (doubled line).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sifluoro.imaging import WorkingGrid, downsample, robust_sigma
from sifluoro.register import _kernels

LENGTH_MM = (20.0, 100.0)  # the projected joint is 40-70 mm; shorter when the field cuts it
STEP_PENALTY = 1.5  # per column of sideways step: the joint is smooth, trabecular texture meanders
MAX_STEP = 2  # the joint turns obliquely into the sciatic notch at its inferior end
# vertical extent of the path looked at: the projected joint lines are 53-88 mm long (training
# seeds 606, 607); the window is cut further to where the gap keeps its width
WINDOW_MM = 76.0
# the lucent line runs on above the joint along the bone outline, about as strongly: of the
# windows nearly as strong as the best, the most inferior one is the joint
WINDOW_NEAR_BEST = 0.9
# end-to-end |dx/dy| of a window: the projected joints run within 0.45 of the columns end to end
WINDOW_SLOPE_MAX = 0.6
# beyond the synovial part the space between sacrum and ilium widens, slowly towards the ala and
# fast into the sciatic notch, while the joint itself keeps its gap: the rim-to-rim width along
# the path is fitted, from the window's centre outwards, with a flat core that starts to widen
# as rate * d**2 (d in mm past the end; superior, inferior), and the line kept between the two
# ends found. A cut where the width had grown by a fixed 1.2 mm fell 5-10 mm past the ends (the
# widening is slow at first); the fit follows the whole rise (training seeds 606 / 607: frame
# mean distance 0.96 -> 0.71 / 1.12 -> 0.93 mm, coverage 0.85 -> 0.90 / 0.83 -> 0.92, target
# error median 6.5 -> 3.6 / 5.6 -> 1.4 mm)
WIDEN_RATE_PER_MM = (0.012, 0.05)
RIM_REACH_MM = 6.0  # the rims looked for either side of the line (the widest gaps are ~8 mm)
WIDTH_SMOOTH_MM = 5.0  # running median of the widths along the line (trabecular texture)
CORE_MM = 25.0  # the core width is the median within this of the window's centre
END_MIN_MM = 20.0  # each end lies at least this far from the window's centre
# a window that ends before the gap widens has cut the joint's inferior end off (the end then
# lay 5-17 mm further down on 606 / 607): the end is looked for this much further along the path,
# as far as it still follows a line. Looked for there always, it ran 5-10 mm past the end of
# joints the window had covered (training seed 607: mean distance 0.74 -> 0.99 mm)
INF_PAST_WINDOW_MM = 20.0
NARROW_MIN_MM = 30.0  # a narrow stretch shorter than this is not the joint: the window is kept
# the fitted ends are uncertain by several mm and a line running on past the joint's end costs
# more than one stopping short: the stretch loses this much at each end (2 -> 3 mm, training
# seeds 606 / 607: mean distance 0.72 -> 0.68 / 0.92 -> 0.89 mm, coverage 0.89 -> 0.88 / 0.92 ->
# 0.91)
NARROW_TRIM_MM = 3.0
# the line seen lies beside the tangent locus of the joint's mid-surface (the simulator's truth;
# perhaps because the longest chords through a gap that curves in depth graze its concave wall),
# towards image right for a left joint and left for a right one: midway between the rims by
# 0.46 mm (median of 56 views of training seeds 606 and 607); it is moved back by this
LINE_OFFSET_MM = 0.5
SIDE_OFFSETS_MM = (1.2, 2.0, 3.2)  # half-widths of the lucent line that are looked for
CENTRE_X_MM = 50.0  # the joint lies within this of the field's central column
# the C-arm is centred near the target: the true targets lie within 32 mm of the image centre
# (2707 frames of seeds 606, 607, 609, 610); a line whose inferior third lies beyond this is
# another structure and the next path is tried (50 -> 40 mm; mean distance 606 / 607 / 609 /
# 610: 0.61 -> 0.61 / 0.75 -> 0.67 / 1.52 -> 1.47 / 0.70 -> 0.53 mm, reported 0.971 -> 0.971
# / 0.986 -> 0.984 / 0.926 -> 0.907 / 0.990 -> 0.987: a 1.2 mm scout line was lost too)
TARGET_RADIUS_MM = 40.0
# weaker/stronger rim contrast below this: the margins do not superimpose. Single lines reach
# down to 0.66 (training seeds 1501-1509, truth v2: 3 views, two of them 14-55 noise levels
# deep on 2-16 frames: a real difference between the two bones' rims); every doubled line at
# 0.65-0.7 (8 views) was also below DOUBLED_BELOW_CNR. 0.7 -> 0.65, register stage on those
# 104 studies: single lines called doubled 0.149 -> 0.121, doubled advice per frame 0.979 and
# per case 0.981 unchanged
RIM_BALANCE_MIN = 0.65
# a beam tangent to the joint crosses the whole depth of the gap: the line stands out in full
# contrast. Off tangency the gap projects wider and fainter: a line whose depth is below this
# many noise levels (median along it) is taken for non-superimposed margins (8 -> 12, training
# seeds 606 / 607: doubled cases with >= 90 % right advice 0.69 -> 0.69 / 0.78 -> 1.0, frame
# accuracy 0.77 -> 0.77 / 0.85 -> 0.94; single and doubled lines still overlap widely in depth).
# The noise levels grow with the frames averaged and the dose, so faint single lines of
# low-dose runs are called doubled (and a call made on 4 frames sticks, stage.py); a threshold
# scaled with sqrt(frames / 16), or a line deeper than 0.08 in image units taken for single,
# called fewer single lines doubled on training seeds 1501-1509 but lost doubled advice on
# held-out data: doubled lines of low-dose runs pass them as well
DOUBLED_BELOW_CNR = 12.0
# a left joint runs inferiorly towards image left (dx/dy < 0), a right one right, at every
# C-arm angle: the projected joints run 0.17-0.47 of the rows end to end that way (training
# seeds 606-620). A line much straighter is another structure: on near-AP scouts a lucent strip
# in the sacrum 30-45 mm medial to the joint (end-to-end -0.03-0.015; 35 frames of 609 / 611 /
# 620 at 26-41 mm). The lines kept are cut and run straighter than the whole joint (down to
# 0.037), so a line must run at least this much the joint's way
SLOPE_MIN = 0.025
# the line runs on past the joint's superior end along fainter outlines (bone, a diverging
# margin): a line whose superior third's mean valley depth is below this fraction of the deeper
# of its other two thirds' loses that third. On training seeds 606-611 / 620 lines so faint
# above lay > 2 mm off the joint over their superior fifth on 43 % of their frames (577, most
# of them doubled views), the others on 7 %; the cut costs coverage where the faint part was
# the joint (0.01-0.06)
SUPERIOR_FAINT_CUT = 0.6
ATTEMPTS = 3  # paths tried when the best one is not where or how a joint projects
RETRY_MIN_GAIN = 6.0  # mean gain (noise levels above the threshold) a later path needs
CLEAR_MM = 5.0  # half-width of the band around a rejected path that is not searched again


@dataclass(frozen=True)
class JointLine:
    """A joint line in full-resolution pixel coordinates, superior end first."""

    polyline_xy: np.ndarray  # (n, 2) float64, (x=column, y=row)
    confidence: float
    doubled: bool
    length_mm: float

    def point_at(self, fraction: float) -> np.ndarray:
        """The point at ``fraction`` of the arc length from the superior end."""
        p = self.polyline_xy
        if len(p) < 2:  # a single point (a one-row stretch) is its own every fraction
            return p[0].astype(np.float64)
        seg = np.hypot(*np.diff(p, axis=0).T)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        s = fraction * cum[-1]
        i = int(np.clip(np.searchsorted(cum, s) - 1, 0, len(seg) - 1))
        t = (s - cum[i]) / seg[i] if seg[i] > 0 else 0.0
        return p[i] + t * (p[i + 1] - p[i])


def exposed_field(attenuation_image: np.ndarray, exposed: np.ndarray) -> np.ndarray:
    """The stored exposed field narrowed to what was really exposed: unexposed areas are stored
    at the maximal attenuation value, also where no shutter is recorded in the header."""
    # solid areas only: clipped quantum noise reaches the top value in isolated pixels. An
    # opening by a 7x7 square, then a dilation by it: the dilations merge into one by 13x13.
    # On bit rows, 64 pixels a word (_kernels.open_dilate_bits): 0.3 ms at 1024², where
    # OpenCV's compare, erosion, dilation and masks took 1.0-1.5 ms of each run's first frame
    rows, cols = attenuation_image.shape
    if (rows == 0 or cols == 0 or attenuation_image.dtype != np.float32
            or exposed.dtype != np.bool_ or exposed.shape != attenuation_image.shape):
        return _exposed_field_morphology(attenuation_image, exposed)
    blank = _bit_rows(attenuation_image >= np.float32(0.998))
    dilated = np.empty(blank.shape, np.uint64)
    if not _kernels.open_dilate_bits(blank, cols, dilated):
        return exposed.copy()  # no solid blank area: the dilation removes nothing
    return _kernels.clear_bits(np.ascontiguousarray(exposed), dilated, cols,
                               np.empty(exposed.shape, np.bool_))


def _bit_rows(mask: np.ndarray) -> np.ndarray:
    """A 2-D bool ``mask`` packed along its rows into uint64 words, little-endian (bit
    ``x % 64`` of word ``x // 64`` is column ``x``; the bits past the last column clear)."""
    rows, cols = mask.shape
    packed = np.zeros((rows, 8 * -(-cols // 64)), np.uint8)
    packed[:, :-(-cols // 8)] = np.packbits(mask, axis=1, bitorder="little")
    return packed.view(np.uint64)


def _exposed_field_morphology(attenuation_image: np.ndarray, exposed: np.ndarray) -> np.ndarray:
    """:func:`exposed_field` with OpenCV's morphology (the kernels' reference, and the path of
    images other than float32 and masks other than bool)."""
    blank = cv2.erode(cv2.compare(attenuation_image, 0.998, cv2.CMP_GE), _SQUARE_7)
    if not cv2.countNonZero(blank):
        return exposed.copy()
    return exposed & (cv2.dilate(blank, _SQUARE_13) == 0)


def work_buffer(buffers: dict | None, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The array ``name`` of ``buffers`` (made, or made again for another shape or dtype), or
    a new one without ``buffers``; its values are left over from its last use."""
    if buffers is None:
        return np.empty(shape, dtype)
    out = buffers.get(name)
    if out is None or out.shape != shape or out.dtype != dtype:
        out = buffers[name] = np.empty(shape, dtype)
    return out


#: the text kernel follows the dark pixels of a frame when they are at most one in this many
#: (its cost grows with them; beyond this the bit rows cost less)
FOLLOW_DARK_PER = 256
_SQUARE_3, _SQUARE_5, _SQUARE_7, _SQUARE_9, _SQUARE_13 = (np.ones((n, n), np.uint8) for n in (3, 5, 7, 9, 13))


def usable_mask(attenuation_image: np.ndarray, field: np.ndarray, factor: int) -> np.ndarray:
    """Working-resolution mask of where a joint line may be looked for: inside the exposed
    ``field`` (see :func:`exposed_field`), away from burned-in text and markers; a working
    pixel is usable when all the full-resolution pixels it covers are.

    Text is drawn at one extreme value with an outline at the other; clipped quantum noise
    reaches one extreme only, so only pixels near both extremes are taken for text.
    """
    if 1 <= factor <= 31 and attenuation_image.dtype == np.float32 and attenuation_image.ndim == 2:
        out = _all_in_blocks(field, factor)
        # few dark pixels (most frames have none): from each of them; else the morphology
        # on bit rows, 64 pixels a word (0.3-0.5 ms at 1024², where following 3000 dark
        # pixels took 0.5 ms and OpenCV's morphology for more 1.2-1.8 ms)
        done = np.zeros(attenuation_image.shape, np.bool_)
        if _kernels.clear_text_blocks(attenuation_image, np.float32(0.002), np.float32(0.998),
                                      factor, field.size // FOLLOW_DARK_PER, done, out) >= 0:
            return out
        return _kernels.clear_text_bits(_bit_rows(attenuation_image <= np.float32(0.002)),
                                        _bit_rows(attenuation_image >= np.float32(0.998)),
                                        factor, out)
    low = cv2.dilate(cv2.compare(attenuation_image, 0.002, cv2.CMP_LE), _SQUARE_5)
    high = cv2.dilate(cv2.compare(attenuation_image, 0.998, cv2.CMP_GE), _SQUARE_5)
    near_both = cv2.bitwise_and(low, high)
    if factor in (2, 4):
        # a block is within 4 pixels of a pixel exactly when it is within 4 / factor blocks
        # of that pixel's block (whole blocks either way): the 9x9 dilation on the block grid
        rows, cols = field.shape[0] // factor, field.shape[1] // factor
        blocks = _kernels.any_in_blocks(near_both, factor, np.empty(
            (-(-field.shape[0] // factor), -(-field.shape[1] // factor)), np.uint8))
        text = cv2.dilate(blocks, _SQUARE_5 if factor == 2 else _SQUARE_3)[:rows, :cols]
        return _all_in_blocks(field, factor) & (text == 0)
    text = cv2.dilate(near_both, _SQUARE_9)
    return _all_in_blocks(field & (text == 0), factor)


def _all_in_blocks(mask: np.ndarray, factor: int) -> np.ndarray:
    """True where all of a ``factor`` x ``factor`` block of ``mask`` is (a remainder cropped):
    the area average of the 0/1 mask above 0.999, as it was computed, without the float copy
    and resize (one False leaves a block's mean at most 1 - 1/factor², below 0.999 for factors
    up to 31)."""
    if factor > 31:
        return downsample(mask.astype(np.float32), factor) > 0.999
    rows, cols = mask.shape[0] // factor, mask.shape[1] // factor
    if factor == 2 and mask.dtype == np.bool_:  # the usual 1024² frame (0.3 mm)
        return _kernels.all_in_blocks2(np.ascontiguousarray(mask), np.empty((rows, cols), np.bool_))
    mask = mask[:rows * factor, :cols * factor]
    out = mask[::factor, ::factor].copy()
    for i in range(factor):
        for j in range(factor):
            if i or j:
                out &= mask[i::factor, j::factor]
    return out


def segment_joint(work: np.ndarray, *, grid: WorkingGrid, usable: np.ndarray,
                  min_contrast: float = 3.0, side: str | None = None,
                  fallback_contrast: float | None = None, seed_mask: np.ndarray | None = None,
                  seed_contrast: float | None = None, buffers: dict | None = None
                  ) -> JointLine | None:
    """Find the joint line on one (possibly time-averaged) working-resolution image.

    Parameters
    ----------
    work : float32 (rows, cols)
        Attenuation-like image in [0, 1] (see :func:`sifluoro.imaging.attenuation`) at the
        working resolution of ``grid``.
    grid : WorkingGrid
        Working resolution (about 0.6 mm per pixel).
    usable : bool (rows, cols)
        Where to look (see :func:`usable_mask`); shutters, the circle edge and text are ignored.
    min_contrast : float
        How many robust noise levels the path's mean response must stand above the background.
    side : "L", "R" or None
        Side of the joint (the run's laterality): a left joint runs inferiorly towards image
        left, a right one towards image right; a line the other way is rejected.
    fallback_contrast : float or None
        When no line stands out at ``min_contrast``, look again at this lower contrast (the
        valley depth is computed once).
    seed_mask : bool (rows, cols) or None
        When no line stands out anywhere, look again only within this band (where the line is
        expected), at ``min_contrast`` then at ``seed_contrast``; the noise is still measured
        over the whole field.
    buffers : dict or None
        The caller's reused working-grid arrays (:func:`work_buffer`; a new image's worth of
        freshly mapped temporaries costs about as much as the filters that fill them).

    Returns
    -------
    JointLine or None
        In full-resolution pixel coordinates; None when no line of joint length stands out (a
        false line is worse than none).
    """
    # the field edge is the strongest line of all: stay clear of it by the filter's reach
    reach = 2 * int(np.ceil(2.0 * max(SIDE_OFFSETS_MM) / grid.spacing_mm)) + 1
    # on the bool mask's bytes (0 / 1, as its uint8 copy), into a reused buffer
    usable_u8 = (usable.view(np.uint8) if usable.dtype == np.bool_ and usable.flags.c_contiguous
                 else usable.astype(np.uint8))
    mask = cv2.erode(usable_u8, np.ones((reach, reach), np.uint8),
                     dst=work_buffer(buffers, "mask", work.shape, np.uint8)).view(np.bool_)
    if np.count_nonzero(mask) < 100:
        return None
    smooth = cv2.GaussianBlur(work, (0, 0), max(0.6, 0.5 / grid.spacing_mm),
                              dst=work_buffer(buffers, "smooth", work.shape, work.dtype))
    offsets = np.unique(np.maximum(1, np.round(np.array(SIDE_OFFSETS_MM) / grid.spacing_mm))).astype(np.int64)
    # noise of the smoothed image, from the residual of a further blur inside the field; every
    # other row and column is plenty for a robust spread and the medians are a quarter the cost
    blurred = cv2.GaussianBlur(smooth, (0, 0), 2.0,
                               dst=work_buffer(buffers, "blurred", work.shape, work.dtype))
    residual = work_buffer(buffers, "residual", (-(-work.shape[0] // 2) * -(-work.shape[1] // 2),),
                           np.float32)
    noise = robust_sigma(residual[:_kernels.even_residual(smooth, blurred, mask, residual)])
    noise = noise * 1.4826 + 1e-6
    contrasts = (min_contrast,) if fallback_contrast is None else (min_contrast, fallback_contrast)
    searched = (contrasts + ((min_contrast,) if seed_contrast is None else (min_contrast, seed_contrast))
                if seed_mask is not None else contrasts)
    # the lightly smoothed image is looked at only along the paths (rims, refinement), which
    # keep to the central columns while no gain lies below the floor (see _search)
    centre = _centre_columns(work.shape[1], grid)
    depth = work_buffer(buffers, "depth", work.shape, np.float32)
    fine = work_buffer(buffers, "fine", work.shape, work.dtype)
    fine_sigma = max(0.5, 0.4 / grid.spacing_mm)
    if centre is not None and max(searched) <= 10.0:
        # the valley depth in the central columns, where the gain is looked at (elsewhere it
        # is the floor), and along the paths, which keep to them; the other columns hold stale
        # values that nothing reads
        _kernels.valley_depth_columns(smooth, offsets, centre[0], centre[1], depth)
        rim = max(4, int(round(RIM_REACH_MM / grid.spacing_mm)))
        blur_columns(work, fine_sigma, centre[0] - rim, centre[1] + rim, fine)
    else:
        _kernels.valley_depth(smooth, offsets, depth)
        cv2.GaussianBlur(work, (0, 0), fine_sigma, dst=fine)
    gain = work_buffer(buffers, "gain", work.shape, np.float32)
    for contrast in contrasts:
        line = _search(depth, noise, contrast, mask=mask, smooth=smooth, fine=fine, grid=grid,
                       side=side, gain=gain)
        if line is not None:
            return line
    if seed_mask is None:
        return None
    # a band where the line is expected: the outlines and notch edges beside it, which can
    # outshine a faint joint in the whole field, are left out
    band = mask & seed_mask
    for contrast in (min_contrast,) if seed_contrast is None else (min_contrast, seed_contrast):
        line = _search(depth, noise, contrast, mask=band, smooth=smooth, fine=fine, grid=grid,
                       side=side, gain=gain)
        if line is not None:
            return line
    return None


def _search(depth: np.ndarray, noise: float, contrast: float, *, mask: np.ndarray,
            smooth: np.ndarray, fine: np.ndarray, grid: WorkingGrid, side: str | None,
            gain: np.ndarray | None = None) -> JointLine | None:
    """The joint line on the valley-depth map ``depth`` (see :func:`segment_joint`), paths
    standing ``contrast`` noise levels above the background, or None. ``gain``: a float32
    array of ``depth``'s shape to work in (overwritten), or None."""
    # the C-arm is centred on the joint's inferior third: nothing far beside the centre counts
    cols = depth.shape[1]
    centre = _centre_columns(cols, grid)
    if centre is None:
        return None
    c0, c1 = centre
    if gain is None:
        gain = np.empty(depth.shape, np.float32)
    # np.where(mask, depth / noise - contrast, -10) in the central columns, in float32 (NumPy
    # casts the Python floats to the array's float32)
    _kernels.fill_gain(depth, np.ascontiguousarray(mask, np.bool_), np.float32(noise),
                       np.float32(contrast), c0, c1, gain)
    # the path search may keep to the central columns while no gain lies below the floor
    b0, b1 = (c0, c1) if contrast <= 10.0 else (0, cols)
    path = np.full(depth.shape[0], -1, np.int32)
    clear = max(1, int(round(CLEAR_MM / grid.spacing_mm)))
    for attempt in range(ATTEMPTS):
        best, y0, y1 = best_path_within(gain, 0, depth.shape[0], b0, b1, STEP_PENALTY, MAX_STEP,
                                        path)
        if y0 < 0:
            return None
        # the path may run on along the bone outline above the joint and into the sciatic notch
        # below it: keep a stretch of a joint's height
        w0, w1, wbest = _best_window(gain, path, y0, y1, int(WINDOW_MM / grid.spacing_mm))
        stretch = _narrow_stretch(fine, gain, path, y0, y1, w0, w1, grid.spacing_mm, wbest)
        for n0, n1, nbest in (stretch,
                              (w0, w1, wbest)):
            pts = _refine(fine, path, n0, n1, reach=max(1, int(round(1.5 / grid.spacing_mm))),
                          rim_reach=max(4, int(round(RIM_REACH_MM / grid.spacing_mm))),
                          half=max(1, int(round(0.6 / grid.spacing_mm))))
            # without a stated side, a line running inferiorly towards image left is a left one
            right = (1.0 if side == "L" else -1.0 if side == "R"
                     else float(np.sign(pts[0, 0] - pts[-1, 0])))
            pts[:, 0] -= right * LINE_OFFSET_MM / grid.spacing_mm
            full = grid.to_full(pts)
            length_mm = float(np.hypot(*np.diff(full, axis=0).T).sum() * grid.spacing_mm / grid.factor)
            # the cut line must still be where and how a joint projects, else the whole window
            if (n0, n1) == (w0, w1) or (_plausible(full, depth.shape, grid, side)
                                        and LENGTH_MM[0] <= length_mm <= LENGTH_MM[1]):
                break
        w0, w1, wbest = n0, n1, nbest
        # a later path was not the strongest line: it must stand out clearly by itself
        clear_enough = attempt == 0 or wbest / max(1, w1 - w0 + 1) >= RETRY_MIN_GAIN
        if (clear_enough and _plausible(full, depth.shape, grid, side)
                and LENGTH_MM[0] <= length_mm <= LENGTH_MM[1]):
            break
        # not a joint (a bone outline, the field edge, a wire): look again without it
        _kernels.clear_near_path(gain, path, y0, y1, clear)
    else:
        return None
    y0, y1, best = w0, w1, wbest
    mean_gain = best / max(1, y1 - y0 + 1)
    confidence = float(1.0 - np.exp(-mean_gain / 4.0))
    rows = np.arange(y0, y1 + 1)
    line_cnr = float(np.median(depth[rows, path[rows]])) / noise
    doubled = (line_cnr < DOUBLED_BELOW_CNR
               or _has_parallel_line(gain, path, y0, y1, grid.spacing_mm, best)
               or _rim_balance(smooth, path, y0, y1, grid.spacing_mm) < RIM_BALANCE_MIN)
    if superior_depth_ratio(depth[rows, path[rows]]) < SUPERIOR_FAINT_CUT:
        # the line itself, not its doubled call or confidence (made on the whole)
        cut = full[len(rows) // 3:]
        cut_mm = float(np.hypot(*np.diff(cut, axis=0).T).sum() * grid.spacing_mm / grid.factor)
        if cut_mm >= LENGTH_MM[0] and _plausible(cut, depth.shape, grid, side):
            full, length_mm = cut, cut_mm
    return JointLine(_simplify(full), confidence, doubled, length_mm)


def _centre_columns(cols: int, grid: WorkingGrid) -> tuple[int, int] | None:
    """Columns ``c0:c1`` of the working image within :data:`CENTRE_X_MM` of its central
    column, or None when none is."""
    centre = np.nonzero(np.abs(np.arange(cols) - 0.5 * (cols - 1)) * grid.spacing_mm
                        <= CENTRE_X_MM)[0]
    if len(centre) == 0:
        return None
    return int(centre[0]), int(centre[-1]) + 1


#: OpenCV's Gaussian filter works along a row in SIMD blocks and a scalar tail, whose sums may
#: differ in the last bit: a cropped image gives the same values as the whole one when its
#: columns start at a multiple of this and it ends where the whole does or a multiple later
#: (tests/register/test_joint.py checks it)
BLUR_ALIGN_COLS = 32


def blur_columns(image: np.ndarray, sigma: float, x0: int, x1: int, out: np.ndarray) -> None:
    """Columns ``x0:x1`` (clipped to the image) of ``cv2.GaussianBlur(image, (0, 0), sigma)``
    into the same columns of ``out``, exactly, from the columns the kernel reaches alone (the
    other columns of ``out`` are left as they were, or all of it is the blur when those
    columns are the whole image)."""
    cols = image.shape[1]
    x0, x1 = max(0, x0), min(cols, x1)
    if x1 <= x0:
        return
    # OpenCV's kernel for float images: 8 sigma + 1 taps, rounded to odd; a spare column
    radius = (int(np.rint(sigma * 8.0 + 1.0)) | 1) // 2 + 1
    a0 = max(0, x0 - radius) // BLUR_ALIGN_COLS * BLUR_ALIGN_COLS
    a1 = a0 + -(-(x1 + radius - a0) // BLUR_ALIGN_COLS) * BLUR_ALIGN_COLS
    if a1 >= cols:
        a1 = cols
    if a0 == 0 and a1 == cols:
        cv2.GaussianBlur(image, (0, 0), sigma, dst=out)
        return
    part = cv2.GaussianBlur(np.ascontiguousarray(image[:, a0:a1]), (0, 0), sigma)
    out[:, x0:x1] = part[:, x0 - a0:x1 - a0]


def _plausible(full: np.ndarray, shape: tuple[int, int], grid: WorkingGrid, side: str | None) -> bool:
    """Where and how a joint can project: target near the field centre, and the line running
    inferiorly towards the midline (image left for a left joint in the stored orientation) by
    at least :data:`SLOPE_MIN`."""
    if len(full) < 2:  # a point has no course: not a joint
        return False
    centre = (np.array([shape[1], shape[0]], float) * grid.factor - 1) / 2.0
    line = JointLine(full, 0.0, False, 0.0)
    spacing_full_mm = grid.spacing_mm / grid.factor
    if np.hypot(*(line.point_at(5.0 / 6.0) - centre)) * spacing_full_mm > TARGET_RADIUS_MM:
        return False
    dx, dy = full[-1] - full[0]
    if dy <= 0:
        return False
    slope = dx / dy
    # without a stated side either way will do, but not straight down
    towards = -slope if side == "L" else slope if side == "R" else abs(slope)
    return bool(towards >= SLOPE_MIN)


def _best_window(gain: np.ndarray, path: np.ndarray, y0: int, y1: int, max_rows: int
                 ) -> tuple[int, int, float]:
    """The most inferior contiguous stretch of the path, at most ``max_rows`` long, whose gain
    is within :data:`WINDOW_NEAR_BEST` of the largest."""
    values = gain[np.arange(y0, y1 + 1), path[y0:y1 + 1]].astype(np.float64)
    if len(values) <= max_rows:
        return y0, y1, float(values.sum())
    sums = np.convolve(values, np.ones(max_rows), mode="valid")
    # below the joint the path may turn into the sciatic notch's outline, far more oblique
    # than any joint: such windows are not candidates (unless no window is steep enough)
    xs = path[y0:y1 + 1].astype(np.float64)
    slope = np.abs(xs[max_rows - 1:] - xs[:len(sums)]) / (max_rows - 1)
    if (slope <= WINDOW_SLOPE_MAX).any():
        sums = np.where(slope <= WINDOW_SLOPE_MAX, sums, -np.inf)
    start = int(np.nonzero(sums >= WINDOW_NEAR_BEST * sums.max())[0][-1])
    window = values[start:start + max_rows]
    # drop weak ends of the window
    keep = np.nonzero(window > 0)[0]
    lo, hi = start + int(keep[0]), start + int(keep[-1])
    return y0 + lo, y0 + hi, float(values[lo:hi + 1].sum())


def rim_widths(smooth: np.ndarray, path: np.ndarray, y0: int, y1: int, *, reach: int, half: int
               ) -> np.ndarray:
    """Rim-to-rim width of the lucent line along the path.

    Parameters
    ----------
    smooth : float32 (rows, cols)
        Lightly smoothed attenuation image (the line dark, its cortical rims bright).
    path : int32 (rows,)
        The line's column per row.
    y0, y1 : int
        Rows looked at (inclusive).
    reach : int
        Columns either side of the path where the rims are looked for.
    half : int
        The profile across the path is averaged over ``2 half + 1`` rows along it.

    Returns
    -------
    float64 (y1 - y0 + 1,)
        Per row, the distance (px) between the brightest point left and right of the darkest
        point near the path.
    """
    n = y1 - y0 + 1
    strip = np.empty((n, 2 * reach + 1), np.float32)
    _kernels.gather_strip(smooth, path, y0, reach, strip)
    strip = cv2.blur(strip, (1, 2 * half + 1), borderType=cv2.BORDER_REPLICATE)
    centre, left, right = (np.empty(n, np.int64) for _ in range(3))
    _kernels.darkest_near(strip, reach - 2, reach + 3, centre)
    _kernels.rims_beside(strip, centre, left, right)
    return (right - left).astype(np.float64)


def fit_end(width_mm: np.ndarray, *, rate: float, core: float, cap: float, min_rows: int,
            spacing_mm: float) -> int:
    """Where a gap of width ``core`` starts to widen.

    Parameters
    ----------
    width_mm : float64 (n,)
        Gap widths (mm) along the line from its centre outwards, one per ``spacing_mm``.
    rate : float
        Widening past the end: ``core + rate * d**2`` (mm; d in mm past the end), up to ``cap``.
    core, cap : float
        Width (mm) before the end, and the largest width measured (the rims' reach).
    min_rows : int
        The end lies at least this many samples from the centre.
    spacing_mm : float
        Sample spacing along the line.

    Returns
    -------
    int
        The end's index, by least absolute deviations of ``width_mm`` from that model.
    """
    n = len(width_mm)
    if n <= min_rows + 1:
        return n - 1
    # the model's rising part is short: flat at ``core`` before it, at ``cap`` after it
    rise = np.minimum(core + rate * (np.arange(n) * spacing_mm) ** 2, cap)
    k = min(n, int(np.argmax(rise >= cap)) if (rise >= cap).any() else n)
    ends = np.arange(min_rows, n)
    flat = np.concatenate([[0.0], np.cumsum(np.abs(width_mm - core))])
    top = np.concatenate([np.cumsum(np.abs(width_mm - cap)[::-1])[::-1], [0.0]])
    idx = np.minimum(ends[:, None] + np.arange(k)[None, :], n)
    padded = np.append(width_mm, np.nan)
    tail = np.nansum(np.abs(padded[idx] - rise[None, :k]), axis=1)
    cost = flat[ends] + tail + top[np.minimum(ends + k, n)]
    return int(ends[np.argmin(cost)])


def _narrow_stretch(smooth: np.ndarray, gain: np.ndarray, path: np.ndarray, y0: int, y1: int,
                    w0: int, w1: int, spacing_mm: float, wbest: float) -> tuple[int, int, float]:
    """The part of the window ``w0..w1`` where the gap keeps its core width (see
    :data:`WIDEN_RATE_PER_MM`; less :data:`NARROW_TRIM_MM` at each end), with its summed gain;
    the window itself when that part is short. The superior end is looked for up to the path's
    start ``y0`` (the window may stop short of the joint's end), the inferior one within the
    window (below it the path may follow the sciatic notch's outline, as narrow as the joint),
    and only when the gap keeps its width to the window's end, on along the path towards ``y1``
    (see :data:`INF_PAST_WINDOW_MM`)."""
    # the path's rows below the window while it stays a line (positive gain), for an inferior
    # end the window cut off
    e = min(y1, w1 + int(round(INF_PAST_WINDOW_MM / spacing_mm)))
    past = gain[np.arange(w1 + 1, e + 1), path[w1 + 1:e + 1]] > 0
    e = w1 + (int(np.argmin(past)) if not past.all() else len(past))
    width = rim_widths(smooth, path, y0, e, reach=max(4, int(round(RIM_REACH_MM / spacing_mm))),
                       half=max(1, int(round(1.5 / spacing_mm))))
    smoothed = np.empty_like(width)  # scipy.ndimage.median_filter(mode="nearest")'s floats
    _kernels.running_median(width, int(WIDTH_SMOOTH_MM / spacing_mm) | 1, smoothed)
    width = smoothed * spacing_mm
    c = (w0 + w1) // 2 - y0
    k = int(round(CORE_MM / spacing_mm))
    core = float(np.median(width[max(0, c - k):c + k + 1]))
    cap = float(np.percentile(width[:w1 - y0 + 1], 95))
    m = int(round(END_MIN_MM / spacing_mm))
    sup = fit_end(width[c::-1], rate=WIDEN_RATE_PER_MM[0], core=core, cap=cap, min_rows=m,
                  spacing_mm=spacing_mm)
    inf = fit_end(width[c:w1 - y0 + 1], rate=WIDEN_RATE_PER_MM[1], core=core, cap=cap,
                  min_rows=m, spacing_mm=spacing_mm)
    if inf >= w1 - y0 - c and e > w1:
        # the gap keeps its width to the window's end: the joint runs on below it
        inf = fit_end(width[c:], rate=WIDEN_RATE_PER_MM[1], core=core, cap=cap, min_rows=m,
                      spacing_mm=spacing_mm)
    trim = int(round(NARROW_TRIM_MM / spacing_mm))
    a, b = y0 + c - sup + trim, y0 + c + inf - trim
    if b - a + 1 < NARROW_MIN_MM / spacing_mm:
        return w0, w1, wbest
    return a, b, float(gain[np.arange(a, b + 1), path[a:b + 1]].sum())


def _refine(smooth: np.ndarray, path: np.ndarray, y0: int, y1: int, *, reach: int,
            rim_reach: int, half: int) -> np.ndarray:
    """Per row, the lucent line's centre: midway between its two cortical rims (the brightest
    points within ``rim_reach`` either side of the darkest point within ``reach`` of the path,
    on the profile averaged over ``2 half + 1`` rows along it, to subpixel by parabolas), or the
    darkest point where a rim is not found; then smoothed along the path. The darkest point
    alone is pulled aside when the two bones differ in density."""
    ys = np.arange(y0, y1 + 1)
    n = len(ys)
    strip = np.empty((n, 2 * rim_reach + 1), np.float64)
    _kernels.gather_strip(smooth, path, y0, rim_reach, strip)
    dark, left, right = (np.empty(n, np.int64) for _ in range(3))
    _kernels.darkest_near(strip, rim_reach - reach, rim_reach + reach + 1, dark)
    strip = cv2.blur(strip, (1, 2 * half + 1), borderType=cv2.BORDER_REPLICATE)
    _kernels.rims_beside(strip, dark, left, right)
    rows = np.arange(n)

    def subpixel(i: np.ndarray) -> np.ndarray:
        j = np.clip(i, 1, 2 * rim_reach - 1)
        a, b, c = strip[rows, j - 1], strip[rows, j], strip[rows, j + 1]
        den = a - 2 * b + c
        step = np.clip(0.5 * (a - c) / np.where(den < 0, den, -1.0), -0.5, 0.5)
        return j + np.where(den < 0, step, 0.0)  # a peak: the parabola opens downwards

    found = (left > 0) & (right < 2 * rim_reach)
    x = np.where(found, 0.5 * (subpixel(left) + subpixel(right)), dark) - rim_reach + path[ys]
    if n >= 5:
        x = np.convolve(np.pad(x, 2, mode="edge"), np.ones(5) / 5, mode="valid")
    return np.stack([x, ys.astype(np.float64)], axis=1)


def _rim_balance(smooth: np.ndarray, path: np.ndarray, y0: int, y1: int, spacing_mm: float
                 ) -> float:
    """Contrast of the weaker cortical rim over that of the stronger one, on the profile across
    the line averaged along it (detrended per row). Where the beam is tangent to the joint both
    rims are dense and alike; doubled margins leave a shallow dip with one rim washed out."""
    reach = max(2, int(round(8.0 / spacing_mm)))
    cols = smooth.shape[1]
    rows = [y for y in range(y0, y1 + 1) if reach <= path[y] < cols - reach]
    if not rows:
        return 1.0
    ys = np.asarray(rows)
    xs = path[ys][:, None] + np.arange(-reach, reach + 1)[None, :]
    band = smooth[ys[:, None], xs].astype(np.float64)
    band -= band[:, :1] + (band[:, -1:] - band[:, :1]) * np.linspace(0.0, 1.0, 2 * reach + 1)[None, :]
    profile = band.mean(axis=0)
    centre = profile[reach - 2:reach + 3].min()
    left, right = profile[:reach].max() - centre, profile[reach + 1:].max() - centre
    return float(min(left, right) / max(left, right, 1e-9))


def superior_depth_ratio(depth_along: np.ndarray) -> float:
    """Mean valley depth of the line's superior third over the deeper of its middle and
    inferior thirds' (``depth_along`` superior end first); 1 for a line too short to split."""
    if len(depth_along) < 3:
        return 1.0
    sup, mid, inf = (float(np.mean(t)) for t in np.array_split(np.asarray(depth_along, np.float64), 3))
    return sup / max(mid, inf, 1e-9)


def _simplify(points: np.ndarray, step: int = 4) -> np.ndarray:
    """Keep every ``step``-th point and the last (lines are smooth at this scale)."""
    keep = list(range(0, len(points), step))
    if keep[-1] != len(points) - 1:
        keep.append(len(points) - 1)
    return points[keep]


def _has_parallel_line(gain: np.ndarray, path: np.ndarray, y0: int, y1: int, spacing_mm: float,
                       best: float) -> bool:
    """A second path 2-10 mm beside the first, over half its length, at half its strength."""
    near = max(1, int(round(1.5 / spacing_mm)))
    far = max(near + 2, int(round(10.0 / spacing_mm)))
    # all else is the floor (-10): only the box around the band beside the path is searched
    xs = path[y0:y1 + 1]
    c0, c1 = max(0, int(xs.min()) - far), min(gain.shape[1], int(xs.max()) + far + 1)
    offset = np.abs(np.arange(c0, c1)[None, :] - xs[:, None])
    box = np.where((offset > near) & (offset <= far), gain[y0:y1 + 1, c0:c1], np.float32(-10.0))
    second = np.full(gain.shape[0], -1, np.int32)
    score, s0, s1 = _best_path_box(box, y0, c0, 0.5, 1, second)
    if s0 < 0:
        return False
    overlap = (s1 - s0 + 1) / max(1, y1 - y0 + 1)
    return overlap >= 0.5 and score >= 0.35 * best


def best_path_within(score: np.ndarray, r0: int, r1: int, c0: int, c1: int,
                     step_penalty: float, max_step: int, path_x: np.ndarray
                     ) -> tuple[float, int, int]:
    """:func:`sifluoro.register._kernels.best_path` of ``score`` (float32) whose pixels outside
    rows ``r0:r1`` and columns ``c0:c1`` all hold the floor, -10, and those inside -10 or more;
    ``path_x`` and the rows returned are in ``score``'s coordinates.

    The same path, score and rows as on the whole image, found on the box alone: a path that
    leaves the box for the floor scores less than the one kept to its edge (gains no lower,
    shorter steps), so nothing outside ever wins a comparison, and above the box every running
    score is 0, as before the first row (tests/register/test_joint.py checks this against the
    whole image, ties included).
    """
    if r1 <= r0 or c1 <= c0:
        path_x[:] = -1
        return 0.0, -1, -1
    return _best_path_box(np.ascontiguousarray(score[r0:r1, c0:c1]), r0, c0, step_penalty,
                          max_step, path_x)


def _best_path_box(box: np.ndarray, r0: int, c0: int, step_penalty: float, max_step: int,
                   path_x: np.ndarray) -> tuple[float, int, int]:
    """:func:`best_path_within` on ``box``, the part of the image from row ``r0`` and column
    ``c0`` (C-contiguous float32)."""
    path_x[:] = -1
    sub = np.empty(box.shape[0], np.int32)
    best, y0, y1 = _kernels.best_path(box, np.float32(step_penalty), max_step, sub,
                                      np.empty_like(box), np.empty(box.shape, np.int8))
    if y0 < 0:
        return 0.0, -1, -1
    path_x[r0 + y0:r0 + y1 + 1] = sub[y0:y1 + 1] + c0
    return best, r0 + y0, r0 + y1
