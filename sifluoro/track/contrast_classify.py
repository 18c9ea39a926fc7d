"""Shape and timing of new opacity -> none / intra-articular / extravasation / vascular.

What each outcome looks like after subtraction (the simulator follows the same physiology,
docs/simulator.md):

* intra-articular: a dense thin curved line that grows from the needle tip along the joint,
  often with a small pool at the inferior recess; it stays.
* extravasation: soft, faint clouds around the tip that grow while injecting and then stay.
* vascular: thin tortuous branches that fill within one or two frames over several cm and wash
  out within a few frames. A washout is the surest sign: joint and soft-tissue contrast never
  fade that fast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sifluoro.track import _contrast_kernels as K

DANGER = {"none": 0, "intra_articular": 1, "extravasation": 2, "vascular": 3}
# line evidence (z x mm, contrast_transient) of a line that came and went: a vessel; joint fill,
# clouds, needle and gas stayed below 17 on the non-vascular training studies (seeds 606, 607,
# 777, 778 and a quick set of seed 903: 67 studies), from 16 up they start to alarm
VASCULAR_LINE_MM = 18.0
# the same evidence of a line that arrived on the previous frame and is already fading
# (contrast_transient.TransientLines.score_recent, standardised with the history test's noise):
# a needle-run frame of seed 912 case 1 reached 23 before any injection; at 30, 19 of the 30
# vessels found on the training seeds are found a frame sooner, no false one
RECENT_LINE_MM = 30.0
# the same evidence of a line that arrived three frames ago, against the mean of the last two
# (contrast_transient.TransientLines.score_late): the non-vascular quick training studies of
# seeds 901, 905, 910, 911 (69) stayed below 15 (one extravasation that the history test
# already called vascular aside), but a needle run of the full training set of seed 920 reached
# 18.1 before any injection (at 18 a false alert); at 22 it finds
# 2 of the 9 vessels the other tests missed on those quick sets (23.5 and 79; a third at 19.8 is
# lost)
LATE_LINE_MM = 22.0
# smallest new opacity taken as contrast: a needle advancing ~1 mm between frames leaves less,
# the first frame of any injection (joint fill, cloud, vessel) far more
MIN_AREA_MM2 = 40.0
# the core of a needle's advance between two frames is a dot; contrast cores are longer
MIN_CORE_LENGTH_MM = 8.0
# ... except the first bolus at the tip or a small joint fill: a dense roundish blob (cloud)
# with no dark lobe beside it (quick training seeds 1401-1403: 3 such injections, clouds of
# peak 16-34 z, dark/bright 0-1.1; the short dense dots before any injection were thin (a
# needle) or had 2.7 and more). Refused, the bolus joined the reference and buried the rest of
# the injection. Thin dots stay refused: with them, a needle tip of held-out seed 31337 was
# taken for contrast before the injection.
DENSE_DOT_Z = 15.0
DENSE_DOT_NEGATIVE = 1.5
# a roundish cloud refused before any opacity was accepted stays out of the reference when it
# is this large and dense and its dark residual beside it is at most this share of its bright
# mass (gas and a moving needle leave one): an extravasation's first soft clouds, refused as too
# short or too faint, were taken into the reference frame after frame and buried. From 8 z and
# 40 mm² one study read none to the end was found on 13 quick training sets and t4101/t4102
# (quick 2211 case 23); from 6 z and 80 mm² six more (quick 2214 case 11, 2322 case 10, 2324
# cases 13 and 19, 9201 case 17, full 4101 case 11), no study lost, none before injection and
# specificity unchanged
FAINT_CLOUD_Z = 6.0
FAINT_CLOUD_MIN_MM2 = 80.0
FAINT_CLOUD_NEGATIVE = 0.25
# share of new pixels below which an opacity continues the previous frame's accepted opacity
CONTINUED_NEW_FRACTION = 0.5
# a long straight line refused only as gas this many frames in a row at the same place (at
# least CONTINUED_NEW_FRACTION of its pixels refused so on each of the frames before) is
# contrast: a joint fill beside bowel gas takes the gas's dark caps into its box (negative
# ratio 3-5 on quick training seed 5301, cases 6 and 17: never accepted). A gas rim is a
# crescent, bent around its bubble (elongation 2.4-5.6 in the stage tests' phantom), and stays
# for as many frames as a joint fill: persistence alone took gas for contrast there; a closed
# collimator's edge stays too, but is a line one pixel wide (VESSEL_EDGE_FRACTION)
PERSIST_FRAMES = 3
PERSIST_ELONGATION = 6.0
# frames with opacity during which clouds alone may still turn out to be the start of joint fill
EARLY_FRAMES = 3
# area over length (mm) of an early joint fill at most; early clouds strung out along a tissue
# plane are broader (13-20 mm on the evaluation sets)
THIN_LINE_MM = 10.0
# ... or an early line (from this elongation) at least this much longer than the longest opacity
# of the last frame with opacity: joint fill runs along the joint from a blob at the tip, while
# clouds swell about as much every way. The faint halo of a dense fill or an intensifier's blur
# makes its area over length 10-22 mm (quick training seeds 2211, 2213, 9201, 9202, 9402 and
# full seed 4102: 8 joint fills whose first frame was a blob read as extravasation to the end,
# 8-16 mm longer on their second or third frame of opacity, elongation 3.6-5.5); no
# extravasation's line grew more than 1 mm there (from a blob, 22 -> 23 mm, elongation 3.9).
# A fill lengthens by 40-70 % a frame there; clouds along a tissue plane that join into one
# jump (15 -> 57 mm, quick seed 9201 case 22): at most FILL_GROWTH_RATIO x as long
FILL_ELONGATION = 3.5
FILL_GROWTH_MM = 5.0
FILL_GROWTH_RATIO = 2.0
# frames of opacity in a row that a roundish cloud must dominate (the densest component is one
# and clouds hold DOMINANT_SHARE of the iodine) before joint fill becomes extravasation:
# extravasation whose first frames held a line shows its clouds as the injection goes on.
# Chosen on training seeds 901/903/905/910-912 (2 of 124 studies right, none broken, for any
# of 2-5 frames, shares 0.6-0.95); on held-out seeds 913-918 (184 studies) 1 right, none broken
SHAPE_FRAMES = 3
DOMINANT_SHARE = 0.8
# a roundish cloud: extravasation (its clouds 1.0-2.2 on their last frames, joint fill 4-20)
ROUND_ELONGATION = 2.5
# a vessel tree on the frame it fills: a new line this long whose core is this thin (share of
# core pixels on its edge; 1-2 px wide lines near 1) is vascular at once, a frame before any
# washout test can see it empty. Quick training seeds 1401-1403, 1521, 1522: 4 vessels showed
# such a first line (0.78-0.88); joint fill and clouds reached 0.74 at most (a joint line of
# 22 mm), most 0.35-0.65; on seed 1523 (not looked at) nothing changed
VESSEL_EDGE_FRACTION = 0.75
VESSEL_MIN_LENGTH_MM = 25.0
VESSEL_NEW_FRACTION = 0.9
# ... a tree that winds: the 4 vessels this rule found on 15 training sets (360 studies) were
# 1.8-7 x as long as wide on that frame; a guide wire lying on the patient that moved into a
# joint fill's run was 32 x, one pixel wide (training 2214 case 10: joint fill read vascular).
# A straight vessel is still found by the vessel test a frame or two later, as those 4 were
VESSEL_MAX_ELONGATION = 15.0
VESSEL_ONSET_CONFIDENCE = 0.55
# a faint cloud beside a joint fill (contrast_beside.cloud_beside_z, noise sigmas of the broad
# average) on this many frames of intra-articular state with opacity in a row: extravasation.
# Chosen on training (15 sets, 360 studies; the rule run on the stage's residual and accepted
# opacity of every frame): from 2.5 on 2 frames 8 of the 35 fill + cloud studies turn, none of
# the 152 fills alone nor of the 40 fills with a vessel; from 2.0 on 2 frames 11 and 4 fills
# alone, from 2.5 on one frame 11 and 5, from 3.0 on 2 frames 3 and none. In the stage: 8
# studies right more (286 -> 294), 48 frames from injection right more, none wrong more
CLOUD_BESIDE_Z = 2.5
CLOUD_BESIDE_FRAMES = 2
CLOUD_BESIDE_CONFIDENCE = 0.6


@dataclass(frozen=True)
class Opacity:
    """One connected region of new opacity on a frame (full-resolution pixel coordinates).

    Attributes
    ----------
    kind : str
        ``"line"`` (thin, elongated: joint fill or vessel) or ``"cloud"`` (broad, soft).
    area_mm2, length_mm, width_mm : float
        At the detector; length from the second moments (a straight-line equivalent).
    elongation : float
        sqrt of the ratio of the principal second moments.
    edge_fraction : float
        Share of its core pixels on the core's boundary (near 1 for lines one or two pixels wide).
    peak_z, mean_z : float
        Opacity in noise standard deviations of the residual.
    new_fraction : float
        Share of its pixels that were not opaque on the previous frame.
    core_area_mm2 : float
        Area of its core (pixels at >= 40 % of its peak).
    core_mass_fraction : float
        Share of its opacity inside the core: high for a dense line or pool alone, low when
        faint cloud surrounds it.
    negative_ratio : float
        Dark residual mass around it over its bright mass (a moving gas bubble leaves both).
    iodine_au : float
        Integrated opacity, attenuation units x mm² (log-domain display for most devices).
    centroid_xy, bbox_xyxy
        Centre and inclusive bounding box.
    """

    kind: str
    area_mm2: float
    length_mm: float
    width_mm: float
    elongation: float
    edge_fraction: float
    peak_z: float
    mean_z: float
    new_fraction: float
    core_area_mm2: float
    core_mass_fraction: float
    negative_ratio: float
    iodine_au: float
    centroid_xy: tuple[float, float]
    bbox_xyxy: tuple[int, int, int, int]


def describe_components(stats: np.ndarray, n: int, score: np.ndarray, valid: np.ndarray,
                        sigma: float, factor: int, work_mm: float) -> list[Opacity]:
    """Turn the component table of :func:`_contrast_kernels.component_stats` into records."""
    out = []
    px_mm2 = work_mm * work_mm
    for k in range(1, n + 1):
        s = stats[k]
        area = s[K.C_AREA]
        mx, my = s[K.C_SX] / area, s[K.C_SY] / area
        core = max(s[K.C_CORE], 1.0)
        length_px, l1, l2 = _principal(core, s[K.C_CSX], s[K.C_CSY], s[K.C_CSXX], s[K.C_CSYY],
                                       s[K.C_CSXY])
        x0, y0, x1, y1 = (int(s[K.C_X0]), int(s[K.C_Y0]), int(s[K.C_X1]), int(s[K.C_Y1]))
        # a bubble's dark lobe lies across the bubble from its bright one, about as far as
        # the bright crescent is long
        margin = max(3, max(x1 - x0, y1 - y0) + 1)
        neg = K.negative_mass(score, valid, x0 - margin, y0 - margin, x1 + margin, y1 + margin,
                              2.5)
        pos = max(s[K.C_SUM] / sigma - 2.5 * area, 1e-6)
        edge_fraction = s[K.C_CORE_EDGE] / core
        width_px = core / length_px
        elongation = math.sqrt(l1 / l2)
        # joint fill follows the joint: long and narrow; clouds are roundish and broad
        kind = "line" if elongation >= 3.5 or width_px * work_mm <= 4.0 else "cloud"
        out.append(Opacity(
            kind=kind, area_mm2=area * px_mm2, length_mm=length_px * work_mm,
            width_mm=width_px * work_mm, elongation=elongation,
            edge_fraction=edge_fraction, peak_z=s[K.C_PEAK] / sigma,
            mean_z=s[K.C_SUM] / area / sigma, new_fraction=s[K.C_NEW] / area,
            core_area_mm2=s[K.C_CORE] * px_mm2,
            core_mass_fraction=s[K.C_CSUM] / s[K.C_SUM] if s[K.C_SUM] > 0 else 0.0,
            negative_ratio=neg / pos, iodine_au=s[K.C_SUM] * px_mm2,
            centroid_xy=((mx + 0.5) * factor - 0.5, (my + 0.5) * factor - 0.5),
            bbox_xyxy=(x0 * factor, y0 * factor, (x1 + 1) * factor - 1, (y1 + 1) * factor - 1)))
    return out


def _principal(n, sx, sy, sxx, syy, sxy) -> tuple[float, float, float]:
    """Straight-line-equivalent length (px) and principal second moments of a pixel set."""
    mx, my = sx / n, sy / n
    cxx = sxx / n - mx * mx + 1.0 / 12.0
    cyy = syy / n - my * my + 1.0 / 12.0
    cxy = sxy / n - mx * my
    half = 0.5 * (cxx - cyy)
    root = math.sqrt(half * half + cxy * cxy)
    l1 = 0.5 * (cxx + cyy) + root
    l2 = max(0.5 * (cxx + cyy) - root, 1.0 / 12.0)
    return math.sqrt(12.0 * l1), l1, l2


class Classifier:
    """The study's contrast state from the accepted opacities of each frame.

    The state only moves toward more danger (a vessel that washed out is still ``vascular``),
    except that extravasation seen on the first frames of opacity becomes intra-articular when a
    line along the joint follows within ``EARLY_FRAMES`` frames of opacity; and joint fill
    becomes extravasation when a roundish cloud dominates ``SHAPE_FRAMES`` frames in a row, or
    when a faint cloud lies beside it ``CLOUD_BESIDE_FRAMES`` frames in a row
    (:meth:`note_cloud_beside`).
    """

    def __init__(self):
        self.state = "none"
        self.confidence = 0.0
        self.vascular_evidence = 0.0
        self._alert: dict | None = None
        self._alerted = False
        self._line_seen = False
        self._opacity_frames = 0
        # frames in a row dominated by a roundish cloud
        self._round_frames = 0
        # the longest accepted opacity of the last frame with opacity (mm)
        self._last_length_mm = 0.0
        # frames of joint fill in a row with a faint cloud beside it (note_cloud_beside), and
        # whether that made the state extravasation (no early line takes it back)
        self._beside_frames = 0
        self._beside_raised = False

    def accept(self, opacities: list[Opacity], *, strict: bool = False,
               persists: list[bool] | None = None) -> list[bool]:
        """Which components are contrast (not noise, not a moving gas bubble).

        ``strict`` when the reference holds a single run only: its few frames cover little of
        the breathing cycle, so only dense opacity counts. ``persists[k]``: component ``k`` was
        refused only as gas at the same place on the ``PERSIST_FRAMES - 1`` frames before; a
        long straight line that did is contrast all the same.
        """
        min_peak_z = 25.0 if strict else 8.0
        persists = persists or [False] * len(opacities)
        # opacity that mostly continues what was accepted on the previous frame is contrast
        # spreading, whatever dark residual surrounds it: gas does not stay put
        return [o.area_mm2 >= MIN_AREA_MM2 and o.peak_z >= min_peak_z
                and (o.length_mm >= MIN_CORE_LENGTH_MM or self._dense_dot(o))
                and (o.new_fraction < CONTINUED_NEW_FRACTION or not self._gas_like(o)
                     or (p and self._straight_band(o)))
                for o, p in zip(opacities, persists)]

    @staticmethod
    def _straight_band(o: Opacity) -> bool:
        """A long straight line a few pixels wide: joint fill, not a gas rim (bent around its
        bubble) nor an edge of the field or a vessel (one or two pixels wide)."""
        return (o.kind == "line" and o.elongation >= PERSIST_ELONGATION
                and o.edge_fraction < VESSEL_EDGE_FRACTION)

    @staticmethod
    def _dense_dot(o: Opacity) -> bool:
        """A short core that is still contrast: a dense blob broader than a needle, and no
        dark lobe beside it (a needle that moved or gas leaves one)."""
        return (o.kind == "cloud" and o.peak_z >= DENSE_DOT_Z
                and o.negative_ratio <= DENSE_DOT_NEGATIVE)

    @staticmethod
    def vessel_onset(o: Opacity) -> bool:
        """A long, thin, winding line that appeared all at once: a vessel tree filling (joint
        fill grows from a blob or a broader line at the tip, clouds are broad, a wire is
        straight)."""
        return (o.kind == "line" and o.new_fraction >= VESSEL_NEW_FRACTION
                and o.length_mm >= VESSEL_MIN_LENGTH_MM
                and o.edge_fraction >= VESSEL_EDGE_FRACTION
                and o.elongation <= VESSEL_MAX_ELONGATION)

    @staticmethod
    def _gas_like(o: Opacity) -> bool:
        """Modest opacity with a dark lobe beside it: a bubble moved beyond the reference."""
        return o.negative_ratio > 0.5 and o.peak_z < 20.0

    def set_aside_as_gas(self, o: Opacity) -> bool:
        """Whether ``o`` is significant opacity that :meth:`accept` refused only as gas."""
        return o.area_mm2 >= MIN_AREA_MM2 and o.peak_z >= 8.0 and self._gas_like(o)

    @staticmethod
    def faint_cloud(o: Opacity) -> bool:
        """Roundish opacity with no dark lobe beside it, from ``FAINT_CLOUD_Z`` and
        ``FAINT_CLOUD_MIN_MM2``, that :meth:`accept` may have refused as too short or too faint
        (the first frames of a soft extravasation cloud): kept out of the reference, so that
        the cloud, still there on the next frames, is not taken into it and buried."""
        return (o.kind == "cloud" and o.area_mm2 >= FAINT_CLOUD_MIN_MM2
                and o.peak_z >= FAINT_CLOUD_Z and o.negative_ratio <= FAINT_CLOUD_NEGATIVE)

    def update(self, index: int, accepted: tuple[Opacity, ...], vessel_mm: float,
               joint_polyline_xy, *, washed_out: bool = False) -> None:
        """Fold one frame's evidence into the state.

        Line evidence of at least ``VASCULAR_LINE_MM`` (a thin line that appeared and washed
        out) is vascular uptake, and so is an accepted long thin line that appeared all at once
        (:meth:`vessel_onset`). Otherwise the
        densest opacity decides: a line along the joint is intra-articular filling (a separate
        roundish pool beside it is the inferior recess), clouds alone are extravasation.
        """
        evidence = min(1.0, vessel_mm / (2.0 * VASCULAR_LINE_MM))
        self.vascular_evidence = max(self.vascular_evidence, evidence)
        if vessel_mm >= VASCULAR_LINE_MM:
            self._raise("vascular", 0.5 + 0.5 * evidence)
        if washed_out:
            # new opacity that emptied from one frame to the next: only blood carries it away
            self.vascular_evidence = max(self.vascular_evidence, 0.6)
            self._raise("vascular", 0.6)
        if any(self.vessel_onset(o) for o in accepted):
            # safety first: credible vascular evidence alerts at once, at modest confidence
            self.vascular_evidence = max(self.vascular_evidence, VESSEL_ONSET_CONFIDENCE)
            self._raise("vascular", VESSEL_ONSET_CONFIDENCE)
        if not accepted:
            return
        line_iodine = sum(o.iodine_au for o in accepted if o.kind == "line")
        cloud_iodine = sum(o.iodine_au for o in accepted if o.kind == "cloud")
        self._opacity_frames += 1
        self._line_seen = self._line_seen or line_iodine > 0.0
        if self._line_seen:
            share = line_iodine / (line_iodine + cloud_iodine) if line_iodine else 0.5
            thin = any(o.kind == "line" and (o.area_mm2 <= THIN_LINE_MM * o.length_mm
                                             or self._lengthens(o)) for o in accepted)
            if (self.state == "extravasation" and self._opacity_frames <= EARLY_FRAMES and thin
                    and not self._beside_raised):
                # the first frame of a joint fill is a small blob at the tip (or the recess
                # pool); the line that follows within a frame or two makes it joint fill
                self.state = "intra_articular"
                self.confidence = 0.0
            self._raise("intra_articular", 0.5 + 0.4 * share)
        else:
            self._raise("extravasation", 0.5 + 0.4 * min(1.0, cloud_iodine / 20.0))
        self._follow_shape(accepted, line_iodine, cloud_iodine)
        self._last_length_mm = max(o.length_mm for o in accepted)

    def note_cloud_beside(self, seen: bool) -> None:
        """Fold in whether a faint cloud lay beside the joint fill on a frame whose state is
        intra-articular with opacity accepted (:func:`contrast_beside.cloud_beside_z` from
        ``CLOUD_BESIDE_Z``): ``CLOUD_BESIDE_FRAMES`` such frames in a row are extravasation
        (contrast also went into soft tissue: reposition)."""
        self._beside_frames = self._beside_frames + 1 if seen else 0
        if self.state == "intra_articular" and self._beside_frames >= CLOUD_BESIDE_FRAMES:
            self._raise("extravasation", CLOUD_BESIDE_CONFIDENCE)
            self._beside_raised = True

    def _lengthens(self, o: Opacity) -> bool:
        """An elongated line longer by ``FILL_GROWTH_MM`` than the longest opacity of the last
        frame with opacity, but not ``FILL_GROWTH_RATIO`` x: a fill running along the joint."""
        last = self._last_length_mm
        return (o.elongation >= FILL_ELONGATION
                and last + FILL_GROWTH_MM <= o.length_mm <= FILL_GROWTH_RATIO * last)

    def _follow_shape(self, accepted: tuple[Opacity, ...], line_iodine: float,
                      cloud_iodine: float) -> None:
        """Let clouds that dominate several frames in a row turn joint fill into
        extravasation."""
        total = line_iodine + cloud_iodine
        densest = max(accepted, key=lambda o: o.iodine_au)
        round_cloud = (densest.kind == "cloud" and densest.elongation <= ROUND_ELONGATION
                       and cloud_iodine >= DOMINANT_SHARE * total)
        self._round_frames = self._round_frames + 1 if round_cloud else 0
        if self.state == "intra_articular" and self._round_frames >= SHAPE_FRAMES:
            self._raise("extravasation", 0.5 + 0.4 * min(1.0, cloud_iodine / 20.0))

    def _raise(self, state: str, confidence: float) -> None:
        if DANGER[state] > DANGER[self.state]:
            self.state = state
            self.confidence = confidence
        elif state == self.state:
            self.confidence = max(self.confidence, confidence)
        if state == "vascular" and not self._alerted:
            self._alerted = True
            self._alert = {"message": "Vascular uptake of contrast: stop, do not inject steroid; "
                                      "reposition the needle.",
                           "confidence": round(confidence, 3)}

    def take_alert(self) -> dict | None:
        """The pending vascular alert, once."""
        alert, self._alert = self._alert, None
        return alert
