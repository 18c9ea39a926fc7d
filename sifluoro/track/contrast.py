"""track/: confirm where injected contrast went — joint, soft tissue or a vessel.

Each frame is reduced to a working grid (about 256 px across), compared with the upper
envelope of recent clean frames of the same pose (:mod:`sifluoro.track.contrast_reference`),
and the significant new opacity is cut into components whose shape and timing are classified
(:mod:`sifluoro.track.contrast_classify`). The study state is the most dangerous spread seen so
far; vascular uptake raises an alert on the frame it is first seen.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from sifluoro.model import Frame
from sifluoro.track import _contrast_kernels as K
from sifluoro.track import contrast_motion as M
from sifluoro.track.contrast_beside import cloud_beside_z, crop_box
from sifluoro.track.contrast_beside import warm_up as beside_warm_up
from sifluoro.track.contrast_classify import (CLOUD_BESIDE_Z, CONTINUED_NEW_FRACTION, DANGER,
                                               LATE_LINE_MM, MIN_AREA_MM2, PERSIST_FRAMES,
                                               RECENT_LINE_MM, VASCULAR_LINE_MM,
                                               VESSEL_NEW_FRACTION, Classifier, Opacity,
                                               describe_components)
from sifluoro.track.contrast_reference import ReferenceBank
from sifluoro.track.contrast_reference import warm_up as reference_warm_up
from sifluoro.track.contrast_transient import FRAMES as TRANSIENT_FRAMES, TransientLines, new_stamp

log = logging.getLogger(__name__)

_MAX_COMPONENTS = 64
_BORDER_PX = 3
# opacity that appeared at most this many frames ago, at least this large, and that falls to
# this share of its mean z from one frame to the next has washed out: a vessel
WASHOUT_AGE = 4
WASHOUT_MIN_MM2 = 150.0
WASHOUT_FRACTION = 0.35
# ... and so has one accepted component that was new on its frame (VESSEL_NEW_FRACTION of its
# pixels) and whose own mean z falls to WASHOUT_FRACTION within FRESH_FRAMES frames, whatever
# else stays accepted beside it: a vessel beside a joint fill that grows (training quick seed
# 2324 case 5: the vessel's branches a component of their own for one frame, the joint fill
# holding the whole opacity's mean). On 13 quick training sets and full t4101/t4102 (360 studies)
# every such component of a non-vascular study kept 0.47 or more of its mean z two frames on
# (0.76 one frame on); those of 24 vessels 0.34 or less two frames on
FRESH_FRAMES = 2
# a vessel test's washout inside opacity accepted on the current frame counts only where the
# opacity lost at least this many residual noise sigmas since its arrival frame
KEPT_OPACITY_LOSS_Z = 1.0
# ... except along a line from this long that the rule cut below its test's floor and that
# came in under new opacity (contrast_transient.KEPT_LINE_ELONGATION, KEPT_LINE_GAIN): a vessel
# washing out into a cloud growing over it (guard phantoms 14-20 mm; the one such line without a
# vessel on 17 training sets, seed 9202 case 14, 7 mm)
KEPT_LINE_MM = 12.0
# burned-in text has its outline (or fill) at the window's end: a block it crosses has many
# pixels there. Noise clipped at the window's dark end in dark anatomy (gas) leaves one or two
# scattered ones a block, in clusters that K.text_blocks keeps as text; grown by the text
# margin (and the vessel test's filter reach), and learnt by the reference as unusable, those
# holes cut the vessels crossing the gas (training 2212 case 18: a vessel of SNR 29 never seen,
# its blocks 1-3 of 16 pixels at 0). Text is the blocks with at least this share of them there
TEXT_BLOCK_SHARE = 0.25
# the frame moved against the reference by this many working pixels since the run's first
# classified frame (contrast_motion.misalignment, residuals within MOTION_CLIP_Z noise sigmas):
# patient or table motion within the run, every edge of the moved anatomy new opacity against
# the reference (review s25 r9: a 1 px shift at 512², half a working pixel, read vascular for
# the rest of the run). The reference is then aligned again at that frame, as at a run's start
# (the frame is not classified, the state kept). Training q2321 (356 frames, no anatomical
# motion): at most 0.18; a 1 px shift at 512² measures 0.31 (the fit's first order is short)
MOTION_RESTART_PX = 0.25
MOTION_CLIP_Z = 4.0
# a block this close to the window's end (attenuation 1) that joins the unexposed field or the
# border is unexposed too: a collimator blade closing in mid-run (its shadow at the window's
# end but noisy, as legacy XA and video give it) is a field change, not opacity (review s25 r8)
UNEXPOSED_LEVEL = 0.99


@dataclass(frozen=True)
class ContrastSettings:
    """Tuning of the contrast stage.

    Attributes
    ----------
    grid_px : int
        Working-grid size across the frame (the frame is block-averaged down to about this).
    reference_slots : int
        Clean frames kept per pose for the reference envelope.
    seed_z, grow_z : float
        Hysteresis thresholds of new opacity, in noise standard deviations of the residual.
    late_vessel_test : bool
        Also run the late vessel test (``TransientLines.score_late``, from ``LATE_LINE_MM``):
        it finds faint vessels the other two miss (2 of the 9 missed on quick training sets,
        2 to 3 of 5 vascular studies on held-out seed 31337), but needle runs before the
        injection reached 18 (full training set, seed 920) and 22 (published set: a false
        alert, specificity 0.94 -> 0.88): off until those are understood.
    """

    grid_px: int = 256
    reference_slots: int = 8
    seed_z: float = 5.0
    grow_z: float = 2.5
    late_vessel_test: bool = False


# line evidence (z x mm) from which the classifier's vascular evidence is full
# (Classifier.update: min(1, vessel_mm / (2 VASCULAR_LINE_MM)))
FULL_EVIDENCE_MM = 2.0 * VASCULAR_LINE_MM


class _Buffers:
    """Working arrays of one grid shape (and reduction factor), allocated once and reused for
    every frame."""

    def __init__(self, shape: tuple[int, int], factor: int = 1):
        rows, cols = shape
        self.shape = shape
        self.factor = factor
        self.row_sum = np.empty(cols * factor, np.int32)
        self.row_min = np.empty(cols * factor, np.uint16)
        self.row_max = np.empty(cols * factor, np.uint16)
        self.image = np.empty(shape, np.float32)
        self.tmp = np.empty(shape, np.float32)
        # the smoothed frame: a run's next history slot (_RunMemory.next_slot) when the run
        # memory is the frame's, else ``own_current``
        self.own_current = np.empty(shape, np.float32)
        self.current = self.own_current
        self.residual = np.empty(shape, np.float32)
        self.score = np.empty(shape, np.float32)
        self.zero = np.empty(shape, np.bool_)   # a pixel at attenuation 0 (text outline)
        self.one = np.empty(shape, np.bool_)    # every pixel at attenuation 1 (saturated)
        self.seed = np.empty(shape, np.bool_)
        # the frame's own text mask, and the masks it and the unexposed field were dilated
        # from: text and collimation rarely change, so a repeated mask is not dilated again
        self.own_text = np.empty(shape, np.bool_)
        # text is the blocks of zero K.text_blocks keeps (lone clipped noise is not), which
        # needs the last frame's zero
        self.zero_prev = np.zeros(shape, np.bool_)
        self.text_blocks = np.empty(shape, np.bool_)
        self.text_seen = np.empty(shape, np.bool_)
        self.flood = np.empty(shape, np.bool_)
        self.flood_seen = np.empty(shape, np.bool_)
        self.text_known = False
        self.flood_known = False
        self.unexposed = np.empty(shape, np.bool_)
        self.unusable = np.empty(shape, np.bool_)
        self.valid = np.empty(shape, np.bool_)
        self.btmp = np.empty(shape, np.bool_)
        self.bout = np.empty(shape, np.bool_)
        self.on = np.empty(shape, np.bool_)
        self.labels = np.empty(shape, np.int32)
        self.stack = np.empty(rows * cols * 9 + 1, np.int64)
        self.stats = np.zeros((_MAX_COMPONENTS + 1, K.N_STATS), np.float64)
        self.keep = np.zeros(_MAX_COMPONENTS + 1, np.bool_)


class _RunMemory:
    """Per-run memory: the last few working frames and the previous frame's opacity."""

    def __init__(self, run, shape: tuple[int, int]):
        self.run = run
        self.opaque = np.zeros(shape, np.bool_)
        # the accepted opacity of the previous frame: its mean z, area (mm²) and how many
        # frames ago opacity first appeared in this run
        self.opaque_z = 0.0
        self.opaque_mm2 = 0.0
        self.opacity_age = 0
        self.opacity_seen = False
        # components accepted as new on a recent frame (_remember_fresh): [mask, mean z on
        # its frame, frames since]
        self.fresh: list[list] = []
        # per pixel: on how many frames in a row up to the previous one it lay in opacity
        # refused only as gas (Classifier.accept's ``persists``); any_aside: some pixel > 0
        self.aside_run = np.zeros(shape, np.uint8)
        self.any_aside = False
        # the run's last working frames for the vessel (transient line) test: a ring of slots,
        # history_order[:history_count] names them oldest first; one more than the test takes,
        # for the test a frame only remembered (deadline) did not run
        self.history = np.zeros((TRANSIENT_FRAMES + 1,) + shape, np.float32)
        self.history_order = np.arange(TRANSIENT_FRAMES + 1, dtype=np.int64)
        # which frame each slot holds (new_stamp): the vessel test keeps its line averages
        self.history_stamp = np.full(TRANSIENT_FRAMES + 1, -1, np.int64)
        self.history_count = 0
        self.test_owed = False  # the previous frame was only remembered
        # frames of earlier runs were adopted: the run's second frame checks they predict it
        # (ReferenceBank.restart_if_own_run_better)
        self.check_reference = False
        # contrast_motion.misalignment of the run's first classified frame (working px)
        self.misalignment_xy: tuple[float, float] | None = None
        self._next: np.ndarray | None = None   # the view next_slot gave out

    def next_slot(self) -> np.ndarray:
        """The history slot :meth:`remember` writes next (the oldest frame's when the ring is
        full: no frame reads it before then, and a frame that is not remembered leaves it to the
        next one). The frame smoothed straight into it is not copied again (a quarter MB, cold)."""
        order = self.history_order
        k = order[0] if self.history_count == len(order) else order[self.history_count]
        self._next = self.history[k]
        return self._next

    def remember(self, image: np.ndarray) -> None:
        order = self.history_order
        if self.history_count == len(order):
            oldest = order[0]
            order[:-1] = order[1:]
            order[-1] = oldest
            self.history_count -= 1
        if image is not self._next:
            self.history[order[self.history_count]] = image
        self._next = None
        self.history_stamp[order[self.history_count]] = new_stamp()
        self.history_count += 1


class _StudyMemory:
    """What the stage carries from frame to frame of one study, and its working arrays: one
    stage object may serve several studies at once (the receiver's study threads)."""

    def __init__(self):
        self.banks: dict[tuple, ReferenceBank] = {}
        self.run: _RunMemory | None = None
        self.classifier = Classifier()
        self.buffers: _Buffers | None = None
        self.transient: TransientLines | None = None
        self.last_opacities: tuple[Opacity, ...] = ()  # accepted on the last frame (tracing)
        # a bilateral study: the joint last seen ("L", "R"), and what the other side's
        # injection showed (the study's state keeps the most dangerous of them)
        self.side: str | None = None
        self.other_sides: list[str] = []
        # a run's first frame's reference work (bank, run memory, frame, unusable), done on
        # the study's next frame: that frame's event does not read the bank (see _adopt_later)
        self.pending: tuple | None = None

    def new_side(self) -> None:
        """The C-arm moved to the other joint: its injection starts from ``none`` (the first
        side's opacity is no evidence about it), with its own references."""
        self.other_sides.append(self.classifier.state)
        self.classifier = Classifier()
        self.banks.clear()
        self.run = None
        self.transient = None

    @property
    def study_state(self) -> str:
        """The most dangerous state any side's injection has shown."""
        return max([self.classifier.state, *self.other_sides], key=DANGER.__getitem__)

    def buffers_for(self, shape: tuple[int, int], factor: int) -> _Buffers:
        if self.buffers is None or (self.buffers.shape, self.buffers.factor) != (shape, factor):
            self.buffers = _Buffers(shape, factor)
        return self.buffers


def _adopt_later(memory: _StudyMemory, bank: ReferenceBank, b: _Buffers) -> None:
    """Keep a run's first frame's reference work (:meth:`ReferenceBank.adopt_run` when the
    bank holds frames, then the push) for the study's next frame: the first frame's event
    reports nothing and reads no reference, and a run's first frame is the dearest of all
    (register's and needle's run work meet there: the pipeline's p99). The frame is the run
    memory's first history slot and ``unusable`` the study's buffer, neither written again
    before :func:`_adopt_pending`, which each entry of the stage runs first."""
    rm = memory.run
    memory.pending = (bank, rm, rm.history[rm.history_order[0]], b.unusable)


def _adopt_pending(memory: _StudyMemory) -> None:
    """The reference work a run's first frame left (:func:`_adopt_later`), as that frame
    would have done it."""
    if memory.pending is None:
        return
    bank, rm, first, unusable = memory.pending
    memory.pending = None
    if not bank.empty:
        bank.adopt_run(first, ~unusable)
        rm.check_reference = True
    bank.push(first, unusable)


def _select(b: _Buffers, any_kept: bool) -> None:
    """``b.on``: the pixels of the components ``b.keep`` marks (none kept: no label pass)."""
    if any_kept:
        K.select_labels(b.labels, b.keep, b.on)
    else:
        b.on.fill(False)


def _emptied(b: _Buffers, mask: np.ndarray, z: float) -> bool:
    """Whether the opacity once at ``mask``, of mean z ``z`` then, has lost it on this frame
    (its mean z down to ``WASHOUT_FRACTION`` of that); False without evidence either way (no
    z, or the field moved or closed over half of it)."""
    still = mask & b.valid
    if z <= 0.0 or np.count_nonzero(still) < 0.5 * np.count_nonzero(mask):
        return False
    return float(b.score[still].mean()) <= WASHOUT_FRACTION * z


def _large_components(stats: np.ndarray, n: int, px_mm2: float) -> list[int]:
    """Labels (1..n) of the components of at least ``MIN_AREA_MM2`` (their area as
    describe_components reckons it: pixels x ``px_mm2``)."""
    if n == 0:
        return []
    area_mm2 = stats[1:n + 1, K.C_AREA] * px_mm2
    return (np.flatnonzero(area_mm2 >= MIN_AREA_MM2) + 1).tolist()


def _dense_text_blocks(pixels: np.ndarray, factor: int, top: int, invert: bool,
                       blocks: np.ndarray) -> None:
    """Clear the blocks of ``blocks`` (K.text_blocks) with fewer than ``TEXT_BLOCK_SHARE`` of
    their pixels at attenuation 0 (stored 0, or ``top`` when ``invert``, as K.reduce_frame
    flags them): noise clipped in dark anatomy, not burned-in text. A block of 4 pixels or
    fewer (512² and smaller) always holds enough."""
    min_count = TEXT_BLOCK_SHARE * factor * factor
    if min_count <= 1.0 or not blocks.any():
        return
    K.clear_sparse_blocks(pixels, factor, top, invert, min_count, blocks)


def pose_key(frame: Frame, shape: tuple[int, int]) -> tuple:
    """Frames with the same C-arm angles and frame size share a reference."""
    t = frame.technique
    angles = tuple(None if a is None else round(float(a) * 2.0) / 2.0
                   for a in (t.primary_angle_deg, t.secondary_angle_deg))
    return angles + (frame.run.rows, frame.run.columns) + shape


def _largest_components(labels: np.ndarray, n: int, keep: int) -> int:
    """Relabel ``labels`` (components 1..n) to its ``keep`` largest, 1..keep in label order,
    the rest 0; returns ``keep``. (Labelling stopped at the cap left out the components lower
    in the image: 64 noise specks above it hid a contrast line.)"""
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    kept = np.sort(np.argsort(sizes, kind="stable")[::-1][:keep])
    remap = np.zeros(n + 1, labels.dtype)
    remap[kept] = np.arange(1, keep + 1, dtype=labels.dtype)
    np.take(remap, labels, out=labels)
    return keep


class ContrastStage:
    """Pipeline stage ``contrast``: classify the spread of injected contrast.

    Returns, per frame, ``{"contrast": {"state", "confidence", "bbox_xyxy", "area_mm2",
    "iodine_au", "components", "vascular_evidence"}}`` and, on the frame where vascular
    uptake is first seen, ``"alerts": [{"kind": "vascular", "message", "confidence", "index",
    "t_s"}]`` (the pipeline adds it to the event's and the study's alerts). Reads ``state.stage_state["register"]`` (a
    :class:`sifluoro.register.RegisterResult`) when present for a view change and the joint
    line; keeps its own memory, working arrays included, in ``state.stage_state["contrast"]``
    (so one stage may serve several studies at the same time).

    Parameters
    ----------
    settings : ContrastSettings, optional
    """

    name = "contrast"
    reads = ("register",)  # its view changes and joint line; not the needle's

    def __init__(self, settings: ContrastSettings | None = None):
        self.settings = settings or ContrastSettings()

    def warm_up(self, frame: Frame) -> None:
        """Compile the kernels on a frame of the run's real shape (the working arrays belong
        to each study: allocated on its first frame)."""
        rows, cols = frame.pixels.shape
        factor = self.factor_for(rows, cols)
        K.warm_up(rows, cols, factor)
        reference_warm_up(rows // factor, cols // factor)
        M.warm_up(rows // factor, cols // factor)
        beside_warm_up()

    def factor_for(self, rows: int, cols: int) -> int:
        return max(1, int(round(max(rows, cols) / self.settings.grid_px)))

    def process(self, frame: Frame, state) -> dict[str, Any]:
        """Classify the contrast seen on ``frame``; see the class docstring for the result."""
        memory = state.stage_state.get("contrast")
        if not isinstance(memory, _StudyMemory):
            memory = state.stage_state["contrast"] = _StudyMemory()
        _adopt_pending(memory)
        side = frame.run.side
        if side is not None:
            if memory.side is not None and side != memory.side:
                memory.new_side()
            memory.side = side
        b = self._reduce(frame, memory)
        factor, shape = b.factor, b.shape
        run = frame.run
        spacing = frame.pixel_spacing_xy_mm
        work_mm = (spacing[0] if spacing else 0.5) * factor
        register = state.stage_state.get("register")
        # register's shift is not used: it is measured against the register view's first
        # frame, not this pose's reference, and with it the study accuracy on the published
        # set fell from 0.875 to 0.58 (per-frame 0.49 -> 0.38 on training seed 606); each run
        # is aligned to the reference by the bank itself (adopt_run) until the two agree. Nor
        # is it used to see motion within a run (s25: it moves by 0.2 working px at the median
        # and up to 1.5 within the runs of training q2321, which have no anatomical motion;
        # restarting on it took v2 from 0.875 to 0.42): the stage measures that itself (_moved)

        key = pose_key(frame, shape)
        bank = memory.banks.get(key)
        view_changed = bool(register is not None and getattr(register, "view_changed", False))
        new_run = memory.run is None or memory.run.run is not run
        if bank is None or view_changed:
            bank = memory.banks[key] = ReferenceBank(shape, slots=self.settings.reference_slots,
                                                     pose_key=key)
        K.text_blocks(b.zero, b.zero_prev, b.text_blocks)
        _dense_text_blocks(frame.pixels, b.factor, (1 << run.bits_stored) - 1,
                           not run.attenuation_rises_with_value, b.text_blocks)
        if not (b.text_known and K.same_mask(b.text_blocks, b.text_seen)):
            K.dilate_square(b.text_blocks, 2, b.btmp, b.own_text)
            b.text_seen[...] = b.text_blocks
            b.text_known = True
        if new_run:
            self._restart_run(memory, bank, b, run, shape)
            return self._result(memory, frame, (), 0.0, 0.0, None)
        rm = memory.run

        envelope = bank.current_envelope()
        # unexposed: where the reference was unusable, grown through fully saturated blocks
        # and blocks within UNEXPOSED_LEVEL of the window's end
        K.unexposed_seeds(envelope, b.seed)
        np.greater_equal(b.image, UNEXPOSED_LEVEL, out=b.btmp)
        np.logical_or(b.btmp, b.one, out=b.btmp)
        K.flood_unexposed(b.seed, b.btmp, b.flood, b.stack)
        if not (b.flood_known and K.same_mask(b.flood, b.flood_seen)):
            K.dilate_square(b.flood, 1, b.bout, b.unexposed)
            # the field closed in on this frame (not yet unusable in the reference, whose
            # unusable pixels were grown once already): grown by the smoothing's reach, its
            # blurred edge is no line (a blade's edge read vascular)
            np.greater(b.flood, b.seed, out=b.btmp)
            if b.btmp.any():
                K.dilate_square(b.btmp, 2, b.bout, b.on)
                np.logical_or(b.unexposed, b.on, out=b.unexposed)
            b.flood_seen[...] = b.flood
            b.flood_known = True
        # the outermost blocks see the smoothing's replicated border and partial collimation
        # the frame's own text only: a block of the run's first frame kept out of every later
        # frame cut the vessels that crossed it (training 1526 case 0: a joint line clipping at
        # the window's end); text that changed is unusable in the reference anyway
        K.usable_field(b.unexposed, b.own_text, _BORDER_PX, b.unusable, b.valid)
        K.masked_residual(b.current, envelope, b.valid, 0, 0, b.residual)
        centre, sigma = K.robust_centre_spread(b.residual, b.valid, 3.0)
        if rm.check_reference:
            rm.check_reference = False
            if bank.restart_if_own_run_better(b.current, b.valid, sigma, b.tmp, b.btmp):
                envelope = bank.current_envelope()
                K.masked_residual(b.current, envelope, b.valid, 0, 0, b.residual)
                centre, sigma = K.robust_centre_spread(b.residual, b.valid, 3.0)
        if sigma <= 0.0:
            return self._result(memory, frame, (), 0.0, 0.0, None)
        if self._moved(rm, envelope, b, centre, sigma):
            log.info("frame %d: the image moved within the run: contrast reference aligned "
                     "again", frame.index)
            self._restart_run(memory, bank, b, run, shape)
            return self._result(memory, frame, (), 0.0, 0.0, None)
        K.standardise(b.residual, b.valid, centre, sigma, b.score)
        s = self.settings
        n = K.hysteresis_label(b.score, b.valid, s.seed_z, s.grow_z, b.labels, b.stack,
                               b.labels.size)
        if n > _MAX_COMPONENTS:
            n = _largest_components(b.labels, n, _MAX_COMPONENTS)
        fresh_out = self._fresh_washed_out(b, rm)    # ages its components: on every frame
        washed_out = self._washed_out(b, rm) or fresh_out
        if n:   # no component: nothing to measure (the usual frame before injection)
            K.component_stats(b.labels, n, b.residual, rm.opaque, b.stats)
            K.core_stats(b.labels, b.residual, 0.4, b.stats)
        # the label of each opacity described: components under MIN_AREA_MM2 are refused by
        # every rule (accept, set_aside_as_gas, faint_cloud), so they are not described (most
        # of the components are such noise specks: 6 of 7 a frame at 1024²)
        labels_of = _large_components(b.stats, n, work_mm * work_mm)
        table = b.stats if len(labels_of) == n else b.stats[[0, *labels_of]]
        opacities = describe_components(table, len(labels_of), b.score, b.valid, sigma, factor,
                                        work_mm)
        gas = [memory.classifier.set_aside_as_gas(o) for o in opacities]
        persists = (self._persisting(b, rm, gas, labels_of, n) if rm.any_aside and any(gas)
                    else None)
        keep = memory.classifier.accept(opacities, strict=not bank.mature, persists=persists)
        b.keep[:] = False
        for k, ok in zip(labels_of, keep):
            b.keep[k] = ok
        _select(b, any(keep))
        # the previous frame's opacity was read by component_stats above (C_NEW)
        rm.opaque[...] = b.on
        self._remember_fresh(b, rm, opacities, keep, labels_of)
        self._remember_aside(b, rm, [g and not ok for g, ok in zip(gas, keep)], labels_of)
        accepted = tuple(o for o, ok in zip(opacities, keep) if ok)
        rm.opaque_mm2 = float(sum(o.area_mm2 for o in accepted))
        rm.opaque_z = float(b.score[b.on].mean()) if rm.opaque_mm2 > 0.0 else 0.0
        if rm.opaque_mm2 > 0.0 or rm.opacity_age:
            rm.opacity_age += 1
        memory.last_opacities = accepted
        rm.remember(b.current)
        stays = None
        if accepted:
            y0 = min(o.bbox_xyxy[1] for o in accepted) // factor
            y1 = max(o.bbox_xyxy[3] for o in accepted) // factor + 1
            x0 = min(o.bbox_xyxy[0] for o in accepted) // factor
            x1 = max(o.bbox_xyxy[2] for o in accepted) // factor + 1
            stays = (rm.opaque, (y0, y1, x0, x1), KEPT_OPACITY_LOSS_Z * sigma,
                     KEPT_LINE_MM / work_mm)
        vessel_mm = self._vessel_mm(memory, b, work_mm, stays)
        joint = getattr(register, "joint_polyline_xy", None) if register is not None else None
        memory.classifier.update(frame.index, accepted, vessel_mm, joint, washed_out=washed_out)
        if accepted:
            rm.opacity_seen = True
            if memory.classifier.state == "intra_articular":
                # a faint soft-tissue cloud beside the fill (contrast_beside): on a crop
                y0, y1, x0, x1 = crop_box(b.on)
                z = cloud_beside_z(b.score[y0:y1, x0:x1], b.on[y0:y1, x0:x1],
                                   b.valid[y0:y1, x0:x1], work_mm)
                memory.classifier.note_cloud_beside(z >= CLOUD_BESIDE_Z)
        elif not rm.opacity_seen:
            # opacity set aside as gas stays out of the reference: a faint vessel beside gas
            # must still be there to wash out against
            gas = False
            for k, o in zip(labels_of, opacities):
                b.keep[k] = (memory.classifier.set_aside_as_gas(o)
                             or memory.classifier.faint_cloud(o))
                gas = gas or b.keep[k]
            _select(b, gas)
            np.logical_or(b.on, b.unusable, out=b.on)
            bank.push(b.current, b.on)
        area_mm2 = float(sum(o.area_mm2 for o in accepted))
        iodine = float(sum(o.iodine_au for o in accepted))
        bbox = None
        if accepted:
            bbox = [min(o.bbox_xyxy[0] for o in accepted), min(o.bbox_xyxy[1] for o in accepted),
                    max(o.bbox_xyxy[2] for o in accepted), max(o.bbox_xyxy[3] for o in accepted)]
        return self._result(memory, frame, accepted, area_mm2, iodine, bbox)

    @staticmethod
    def _restart_run(memory: _StudyMemory, bank: ReferenceBank, b: _Buffers, run, shape) -> None:
        """A run's first frame (or the first after the image moved within it): its memory
        starts afresh and the frame will align the reference (:func:`_adopt_later`)."""
        memory.run = _RunMemory(run, shape)
        memory.run.remember(b.current)
        np.logical_or(b.one, b.own_text, out=b.unusable)
        _adopt_later(memory, bank, b)

    @staticmethod
    def _moved(rm: _RunMemory, envelope: np.ndarray, b: _Buffers, centre: float,
               sigma: float) -> bool:
        """Whether the frame moved against the reference by ``MOTION_RESTART_PX`` since the
        run's first classified frame (whose own misalignment is what the run's alignment to
        the reference left: adopt_run aligns to whole pixels). The opacity accepted on the
        previous frame is left out of the fit (a joint fill along the joint's edges pulled it
        by a fifth of a pixel)."""
        np.greater(b.valid, rm.opaque, out=b.btmp)
        dx, dy, n = M.misalignment(envelope, b.residual, b.btmp, centre, MOTION_CLIP_Z * sigma)
        if n == 0:
            return False
        if rm.misalignment_xy is None:
            rm.misalignment_xy = (dx, dy)
            return False
        dx -= rm.misalignment_xy[0]
        dy -= rm.misalignment_xy[1]
        return dx * dx + dy * dy >= MOTION_RESTART_PX * MOTION_RESTART_PX

    def _reduce(self, frame: Frame, memory: _StudyMemory) -> _Buffers:
        """The frame block-averaged to the working grid (``b.image``, with its low/high
        counts) and smoothed (``b.current``), in the study's buffers of its shape."""
        pixels = frame.pixels
        rows, cols = pixels.shape
        factor = self.factor_for(rows, cols)
        b = memory.buffers_for((rows // factor, cols // factor), factor)
        run = frame.run
        K.reduce_frame(pixels, factor, (1 << run.bits_stored) - 1,
                       not run.attenuation_rises_with_value, b.image, b.zero, b.one,
                       b.row_sum, b.row_min, b.row_max)
        rm = memory.run
        b.current = (rm.next_slot() if rm is not None and rm.run is run
                     and rm.history.shape[1:] == b.shape else b.own_current)
        K.smooth_binomial(b.image, b.tmp, b.current)
        return b

    def process_remember(self, frame: Frame, state) -> dict[str, Any] | None:
        """Cheaper mode for a frame short of time (the pipeline's ``contrast_skipped`` step):
        the frame only joins the run's recent frames, so that the vessel test of the next
        frames sees a vessel that arrived or washed out on it; nothing is classified and the
        event carries the state over (``{}``).

        Returns None, and the pipeline then runs :meth:`process`, on a run's first frame and
        on its second (it checks the pose's reference against the run's own frame), on a view change, before the stage has seen the study, and right after a frame that was
        only remembered (one owed vessel test is what the run's frames can hold; a run's last
        frame remembered still loses its test, as a skipped one did).
        """
        memory = state.stage_state.get("contrast")
        if isinstance(memory, _StudyMemory):
            _adopt_pending(memory)
        register = state.stage_state.get("register")
        if (not isinstance(memory, _StudyMemory) or memory.run is None
                or memory.run.run is not frame.run or memory.run.test_owed
                # the run's second frame decides whether the run's own first frame replaces
                # the pose's reference: put off, a later frame (the needle moved on) decides
                # it, and v2 case 6 read its needle run as intra-articular under the deadline
                or memory.run.check_reference
                or (register is not None and getattr(register, "view_changed", False))):
            return None
        b = self._reduce(frame, memory)
        rm = memory.run
        if rm.opaque_mm2 > 0.0 or rm.opacity_age:
            rm.opacity_age += 1
        for item in rm.fresh:
            item[2] += 1        # the frame is not looked at: its check is lost, the next counts
        rm.remember(b.current)
        rm.test_owed = True
        return {}

    @staticmethod
    def _persisting(b: _Buffers, rm: _RunMemory, gas: list[bool], labels_of=None,
                    n: int | None = None) -> list[bool]:
        """Per component: refused only as gas (``gas``) and at least
        ``CONTINUED_NEW_FRACTION`` of its pixels lay in opacity refused so on each of the
        ``PERSIST_FRAMES - 1`` frames before. ``labels_of``: the label of each entry of
        ``gas`` (1, 2, ... when None), ``n`` the frame's component count."""
        if labels_of is None:
            labels_of, n = range(1, len(gas) + 1), len(gas)
        old = rm.aside_run >= PERSIST_FRAMES - 1
        counts = np.bincount(b.labels[old], minlength=n + 1)
        return [g and counts[k] >= CONTINUED_NEW_FRACTION * b.stats[k, K.C_AREA]
                for k, g in zip(labels_of, gas)]

    @staticmethod
    def _remember_aside(b: _Buffers, rm: _RunMemory, aside: list[bool],
                        labels_of=None) -> None:
        """Count the frames in a row each pixel lay in opacity refused only as gas
        (``aside`` per component, of label ``labels_of``: 1, 2, ... when None); nothing to do
        while there is none."""
        if not any(aside):
            if rm.any_aside:
                rm.aside_run.fill(0)
                rm.any_aside = False
            return
        b.keep[:] = False
        for k, a in zip(labels_of or range(1, len(aside) + 1), aside):
            b.keep[k] = a
        K.select_labels(b.labels, b.keep, b.btmp)
        np.minimum(rm.aside_run, 254, out=rm.aside_run)
        rm.aside_run += 1
        rm.aside_run[~b.btmp] = 0
        rm.any_aside = True

    @staticmethod
    def _washed_out(b: _Buffers, rm: _RunMemory) -> bool:
        """Whether the opacity accepted on the previous frame, new within ``WASHOUT_AGE``
        frames and at least ``WASHOUT_MIN_MM2``, has lost most of its opacity on this frame
        (mean z down to ``WASHOUT_FRACTION`` of what it was): joint fill and soft-tissue
        clouds stay for minutes, a vessel empties within a few frames."""
        if rm.opaque_mm2 < WASHOUT_MIN_MM2 or rm.opacity_age > WASHOUT_AGE:
            return False
        return _emptied(b, rm.opaque, rm.opaque_z)

    @staticmethod
    def _remember_fresh(b: _Buffers, rm: _RunMemory, opacities: list[Opacity],
                        keep: list[bool], labels_of: list[int]) -> None:
        """Keep each component accepted on this frame that is new (``VESSEL_NEW_FRACTION`` of
        its pixels) for :meth:`_fresh_washed_out` on the next ``FRESH_FRAMES`` frames (the
        usual frame: nothing new, nothing kept)."""
        for k, o, ok in zip(labels_of, opacities, keep):
            if ok and o.new_fraction >= VESSEL_NEW_FRACTION:
                mask = b.labels == k
                rm.fresh.append([mask, float(b.score[mask].mean()), 0])

    @staticmethod
    def _fresh_washed_out(b: _Buffers, rm: _RunMemory) -> bool:
        """Whether a component accepted as new at most ``FRESH_FRAMES`` frames ago has lost
        its opacity on this frame (its mean z down to ``WASHOUT_FRACTION`` of what it was on
        its frame), whatever stays accepted beside it: :meth:`_washed_out` of one component.
        Ages the kept components and forgets those checked ``FRESH_FRAMES`` times."""
        if not rm.fresh:
            return False
        for item in rm.fresh:
            item[2] += 1
        rm.fresh = [item for item in rm.fresh if item[2] <= FRESH_FRAMES]
        return any(_emptied(b, mask, z) for mask, z, _ in rm.fresh)

    def _vessel_mm(self, memory: _StudyMemory, b: _Buffers, work_mm: float,
                   stays=None) -> float:
        """Evidence (z x mm) of a thin line that appeared two frames ago and has gone again, or
        appeared on the previous frame and is going (:mod:`sifluoro.track.contrast_transient`);
        0 until the run has 4 frames, and 0 below ``VASCULAR_LINE_MM`` (the first) and
        ``RECENT_LINE_MM`` (the second; the washouts alone often show that neither can be
        reached, and the onsets are then skipped). After a frame that was only remembered, the test it owes
        (one frame earlier) runs too, and the larger evidence counts: a vessel whose test fell
        on that frame is not lost (this frame then costs a second test)."""
        if memory.transient is None or memory.transient.shape != b.shape:
            memory.transient = TransientLines(b.shape)
        rm = memory.run
        t, floor = memory.transient, VASCULAR_LINE_MM / work_mm
        # contrast accepted on this frame does not count as the noise around it
        t.set_near(stays[0] if stays is not None else None)
        floor_recent = RECENT_LINE_MM / work_mm
        floor_late = LATE_LINE_MM / work_mm
        best = 0.0
        ends = (rm.history_count, rm.history_count - 1) if rm.test_owed else (rm.history_count,)
        rm.test_owed = False
        for k, end in enumerate(ends):
            n = min(end, TRANSIENT_FRAMES)
            if n >= 4:
                order = rm.history_order[end - n:end]
                best = max(best, t.score_history(rm.history, order, n, b.valid, floor=floor,
                                                 stamps=rm.history_stamp, stays=stays))
                # the recent and late tests can only raise the evidence: not run once the
                # history test alone makes it full (same state, evidence and alert; the
                # frame a vessel washed out on no longer pays for a second test)
                if k == 0 and best * work_mm < FULL_EVIDENCE_MM:
                    # the vessel that arrived on the previous frame, a frame sooner when it
                    # already fades; it counts from RECENT_LINE_MM, and is put on the first
                    # test's scale (its own line does not raise its noise: about 2x the
                    # score), so that the evidence and confidence do not depend on which fired
                    recent = t.score_recent(rm.history, order, n, b.valid, floor=floor_recent,
                                            stamps=rm.history_stamp, stays=stays)
                    if recent >= floor_recent:
                        best = max(best, recent * (VASCULAR_LINE_MM / RECENT_LINE_MM))
                    # the faint vessel still a third to half there two frames on: a frame
                    # later against the mean of the last two (LATE_LINE_MM)
                    m = min(end, TRANSIENT_FRAMES + 1)
                    if m >= 5 and self.settings.late_vessel_test:
                        late = t.score_late(rm.history, rm.history_order[end - m:end], m,
                                            b.valid, floor=floor_late, stamps=rm.history_stamp)
                        if late >= floor_late:
                            best = max(best, late * (VASCULAR_LINE_MM / LATE_LINE_MM))
        return best * work_mm

    def _result(self, memory: _StudyMemory, frame: Frame, accepted, area_mm2: float,
                iodine_au: float, bbox) -> dict[str, Any]:
        c = memory.classifier
        out: dict[str, Any] = {"contrast": {
            "state": c.state, "confidence": round(c.confidence, 3),
            "bbox_xyxy": bbox, "area_mm2": round(area_mm2, 2), "iodine_au": round(iodine_au, 4),
            "components": [o.kind for o in accepted],
            "vascular_evidence": round(c.vascular_evidence, 3)}}
        if memory.other_sides:  # bilateral: the study keeps what the first side showed
            out["contrast"]["study_state"] = memory.study_state
        alert = c.take_alert()
        if alert is not None:
            out["alerts"] = [{"kind": "vascular", "index": frame.index,
                              "t_s": round(frame.t_s, 3), **alert}]
        return out


__all__ = ["ContrastStage", "ContrastSettings", "DANGER", "pose_key"]
