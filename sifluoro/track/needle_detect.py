"""Find a spinal needle on one frame: a thin bright straight line that ends in a tip.

Ridge map at the needle's width on a working grid (Hessian, numba), an oriented Hough transform
of the ridge pixels, segments along the strongest lines, rejection of what is not a needle
(too short: clips; from field edge to field edge: a wire on the skin; dot-like or edge-like:
cortex, text), then the tip at full resolution: the shaft axis refitted near the tip and the
point where the line contrast falls to half (maximum-likelihood step along the axis), the
contrast taken against flanks sheared along the axis to follow a background edge or band that
crosses the shaft obliquely (a joint line, a cortex), which would otherwise end the shaft there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from sifluoro.track import _needle_kernels as K


@dataclass(frozen=True)
class NeedleSettings:
    """Needle detection and tracking parameters (lengths in mm at the detector).

    Attributes
    ----------
    grid_mm : float
        Target pixel size of the working grid for line finding.
    sigma_px : float
        Gaussian scale of the ridge filter on the working grid (needle 0.7-1.4 mm wide).
    edge_gain : float
        Weight of the gradient magnitude subtracted from the ridge strength (suppresses edges).
    vote_z : float
        Ridge pixels with a noise-normalised strength above this vote in the Hough transform.
    z_cap : float
        Votes and segment support are capped here, so one bright object cannot dominate.
    support_bias : float
        Subtracted from the support (noise-normalised ridge strength along a line) before the
        best interval is taken: random lines average about 0, needles 1-3.
    gap_mm : float
        Longest gap bridged inside one segment (the needle fades over dense bone).
    min_length_mm : float
        Shorter segments are not a needle (surgical clip legs are 5-9 mm).
    min_score : float
        Cold-start acceptance of a segment's evidence (see :meth:`LineFinder.segment`).
    track_min_score : float
        Lower acceptance while tracking a needle seen on the previous frame.
    edge_margin_mm : float
        A segment end this close to the field edge leaves the field (no tip there).
    extend_mm : float
        How far beyond (and before) the supported segment's end the tip is looked for.
    fit_mm : float
        Length of shaft near the tip used to refit the axis (handles bending).
    tip_window_mm : float
        Half-length of the window along the axis searched for the tip.
    tip_shear_mm : float
        Largest shift along the axis of the tip profile's flanks (a background edge crossing
        the shaft obliquely, down to about 30 degrees to it at the 1.6 mm flanks).
    tip_shear_gain : float
        The flanks are sheared only when that aligns them this much better (mismatch ratio).
    track_margin_mm : float
        Margin of the tracking region around the predicted needle.
    avg_frames : int
        Line finding runs on the mean of up to this many frames of the run.
    flank_mm : float
        Distance across the axis at which the flanks of a line are sampled.
    retreat_mm : float
        Within a run a tracked tip is not placed further than this behind the furthest tip.
    confirm_min_prob : float
        With no needle followed in the view, a candidate of needle probability
        ``confirm_min_prob`` or more is also taken when the previous frame of the run had it
        (same line, tip within ``track_margin_mm``) at ``min_prob`` or more: seen twice, once
        at ``min_prob``, as a candidate at ``min_prob`` seen before at ``track_min_prob`` is.
        ``inf`` (the default): off. At 0.5: training seeds 5145, 5146, 5203,
        7301, 7302 +11 -1 frames within 3 mm (0.6: +8 -1), no false tip added; held-out 31337
        unchanged, v2 0.7701 -> 0.7688 and p95 4.28 -> 4.61 mm (one study, a bent needle
        taken a few frames earlier, off). Not on.
    floor_tips : int
        The furthest tip of a run that holds the later ones (``retreat_mm``) is the furthest
        reached by this many of the run's tips. 1 (the default): each tip is held to the one
        before (the furthest so far). 2 keeps a single tip placed beyond the needle's (on a
        line continuing it) from holding the rest of the run there (training seeds 5145,
        5146, 5203, 7301: +34 -13 frames within 3 mm), but a tip seen once and then short for
        a few frames (a shaft fading over bone) is no longer held: held-out 31337 detection
        0.807 -> 0.784 (median 0.63 -> 0.54 mm, p95 10.7 -> 9.4 mm), v2 0.770 -> 0.758. Not on.
    hold_min_score : float
        A tracked tip is not held forward (``retreat_mm``) when the ridge of this frame's
        score map from it to the held place is evidence against a line (units of
        :meth:`LineFinder.segment`) below this: the furthest tip was placed beyond the needle,
        not on a shaft fading over bone (weak evidence there, not negative). ``-inf``: off.
    hold_release_max_mm : float
        Only a hold of at most this many mm is let go so (a tip further behind is one found
        short on a fading shaft: the evidence over a long stretch of dim shaft can be negative).
    reference_tips : int
        The tip where a run ended (the next run's tips in the view are held to it) is its last
        tip, or the median along the axis of its last ``reference_tips`` tips when the last is
        more than ``retreat_mm`` beyond that median. 1 (the default): the last tip always, so a
        single last tip placed beyond the needle (a box frame refined onto a line continuing
        it) holds the whole next run there. 3: training seed 8201 +19 frames within 3 mm (one
        study), seeds 8202, 8203, 5145, 5146, 5203 unchanged; held-out v2, v2w unchanged,
        31337 16 frames of one study 0.5 mm further off (a needle advancing at the end of a
        run). Not on.
    near_mm, far_mm : float
        Offsets across the axis of the two line contrasts whose ratio measures the width.
    intensifier_thin_gain : float
        That ratio is multiplied by this on a run whose header says it is from an image
        intensifier (FieldOfViewShape ROUND or an IntensifierSize): its blur (wider than a
        flat panel's) widens the needle's profile, and the model, fitted mostly on flat-panel
        studies, rated intensifier needles low (training seeds 8201, 5145, 5146, 5203: the
        needle's candidate has a median ratio of 0.44 on intensifiers, 0.58 on flat panels;
        1.3 is their quotient; other lines' median is 0.20). Training (those seeds, 8202 and
        fresh 8203, 8204): +82 -0 frames within 3 mm (1.15: +25 -0; 1.45: +83 -2, five new
        errors over 10 mm), false tips unchanged; held-out v2 0.770 ->
        0.783 and 31337 0.807 -> 0.816 (p95 4.28 -> 4.22, 10.65 -> 10.09 mm), false tips
        unchanged (v2w too), but on v2 a nearly end-on needle is taken as a short line on 21
        end-on frames the dot reported within 3 mm before. Not read from the image: the
        intensifier's round field is mostly collimated away. 1: off.
    min_prob : float
        Cold-start acceptance of a candidate's needle probability when it continues a
        candidate seen on the previous frame of the run.
    single_min_prob : float
        Cold-start acceptance of a candidate seen on one frame only (the first of a run: a
        wire whose continuation over bone is not seen yet on one noisy frame).
    track_min_prob : float
        Acceptance of a candidate that continues the needle seen last.
    follow_min_hits : int
        A needle is looked for where it was only once the line search has found it on this
        many frames (a line taken on a frame or two of a scout is not followed).
    dim_fraction : float
        The tip is looked for past a fall of the line contrast along the shaft (where it passes
        over bone) while the part beyond keeps at least this fraction of it.
    max_ext_score : float
        A candidate whose line goes on past its tip with more evidence than this (units of
        :meth:`LineFinder.segment`) is not a needle.
    follow_min_score : float
        Line evidence (units of :meth:`LineFinder.segment`) of the shaft behind a tip found
        again where the followed needle was, when the line search took no candidate.
    follow_start_score : float
        The same on a run's first frame: its mean is that one frame, whose noise-normalised
        evidence is about ``1/sqrt(avg_frames)`` of a full mean's (a needle left in place
        between runs scored 3.7-5.8 there on training seed 4103 and was missed on that frame).
    follow_scaled : bool
        On the run's later frames, while its mean holds fewer than ``avg_frames`` frames, the
        evidence asked grows with the square root of the frames averaged, from
        ``follow_start_score`` to ``follow_min_score`` (``follow_min_score * sqrt(n /
        avg_frames)``, at least ``follow_start_score``), as the noise-normalised evidence of a
        needle does, instead of jumping to the full bar on the second frame: a low-contrast
        needle followed over runs was dropped on the second to fourth frames of a run and found
        again once the mean had built up. Training seeds 4101, 4102 (48 studies): +9 -1 frames
        within 3 mm (detection 0.629 -> 0.633, p95 7.09 -> 7.03 mm), false tips unchanged;
        held-out (register, needle, contrast) v2 and v2w 0.7831 -> 0.7844 (p95 4.22 -> 4.21 mm),
        but 31337 0.8164 -> 0.8155 and p95 10.09 -> 11.69 mm: a tip followed on a run's early
        frame a few mm beyond the needle's then held the run there (:meth:`NeedleStage.
        _no_retreat`; 6 frames 0.1-0.8 -> 3-4.7 mm), and a needle followed two frames
        earlier 12-18 mm off. Not on (False: the full bar from the second frame on).
    full_search_every : int
        While a needle is followed, it is looked for in a box around it (far cheaper than the
        whole field) and the field is searched only on every ``full_search_every``-th frame
        of a run (or when the needle is not found in its box); 1 searches every frame.
    roi_step_mm : float
        A tip found in the box further than this from the tip of the run's last full search
        is not taken (the full search then runs on the frame); the box is used only once two
        full searches in a row agree within this.
    max_jump_mm : float
        Once two full searches of a run agree on the tip (the box's anchor), a tracked tip
        further than this from the anchor is taken only when the full search of the next
        frame finds it again (within ``roi_step_mm``); until then the tip is looked for at
        the anchor. A tip carried on along its line into bone jumps 15-20 mm in one frame
        and is then held there by :meth:`NeedleStage._no_retreat`; a needle caught up with
        (placed short on the run's first frames) is found again.
    search_when_unfollowed : bool
        Under the deadline (the pipeline's ``needle_roi`` step), with no needle to follow the
        step declines and the field is searched as usual (a cold start over budget) instead of
        reporting nothing: otherwise a tight budget never finds a needle at all. False keeps
        every ``needle_roi`` frame cheap.
    max_deferred_searches : int
        Under the deadline (``needle_roi``), a due full search (a new run's first frames, the
        ``full_search_every``-th frame, a jump to confirm) may be put off, the needle followed
        as the step follows it, on at most this many frames in a row; then the step declines
        and the field is searched, over budget if need be (a budget a search never fits would
        otherwise follow a needle in its box forever and never look for it afresh). 0 (the
        default): never put off; the planner makes room by skipping the contrast update, and
        putting a search off would only add a degraded frame before the same search.
    persist_frames, persist_min_prob : int, float
        With no needle followed in the view, a candidate of needle probability
        ``persist_min_prob`` or more is also taken when a candidate as probable was on the same
        line, tip within ``track_margin_mm``, on each of the ``persist_frames - 1`` full searches
        of this view before (across runs): the model often rates a needle over bone, short
        when first inserted, between 0.5 and ``min_prob`` on each frame, but it stays where
        it is (training seeds 777-780: +18 of 2573 frames within 3 mm; held-out seed 782 +1
        of 447, seed 781 and a wrong-level set unchanged; no false tip added). Off (0, the
        default): a wrong seed becomes the view's track, which the looser tracked rule then
        carries onto other lines (frames > 10 mm off on 777-780: 87 -> 114 with n_lines 16;
        seed 780 p95 6.4 -> 15.4 mm; stationary edges and clips persist too). Before turning
        it on: report a persistence-only detection with low confidence, do not let it seed the
        track until a regular detection agrees, persist within a run only, and count the
        frames > 10 mm off on a seed not used for the choice. 0 or 1: off.
    advance_min_prob, advance_min_mm, advance_side_mm : float
        With no needle followed in the view, a candidate of needle probability
        ``advance_min_prob`` or more, seen on the previous full search of its run, is also
        taken when its tip has moved on along its own line (within ``advance_side_mm`` of it)
        by ``advance_min_mm`` to ``track_reach_mm`` since the last run of the view, from where
        such a candidate (seen twice in that run) last was: a needle is pushed in between
        runs, a bone edge, clip or wire stays where it is (training seeds 5144-5146,
        5201-5204: 5145 +80 frames within 3 mm, 5203 -1, the others unchanged; the model
        rates many needles 0.2-0.7 over whole studies). 0 (``advance_min_mm``): off.
    target_lines, target_lines_mm : int, float
        With a register target, off the study's scout (:mod:`.needle_verify`), up to
        ``target_lines`` further Hough lines (after the ``n_lines`` strongest) are looked at
        when they pass within ``target_lines_mm`` of the target, and their candidates kept
        when the tip is that near it: a short or bent needle at the joint collects fewer
        votes than the long cortical margins around it and is often not among the strongest
        lines. Off (0, the default): on training seeds 5144-5146, 5201, 5202 it took 51 more
        frames within 3 mm (5146 case009, a bent needle whose line is the 27th Hough peak:
        21) and lost 9: its lines near the joint also carried a followed tip onto a cortical
        margin (5144 case009: 9 frames 0.5 -> 25 mm; tip p95 7.5 -> 10.2 mm on 5144,
        7.6 -> 13.7 on 5201); held out, 31337 lost 7 frames (detection 0.7991 -> 0.7927, p95
        11.35 -> 12.56 mm) and v2 gained 3 (p95 4.59 -> 4.90 mm). Its lines now continue
        only a track last found on such a line (:meth:`NeedleStage._tracks`); with that, 20
        took 5146 case009's needle (+21 of 84 frames), 5145 +3, 6004 +1, 5203 unchanged, but
        fresh seed 6005 lost 6 (a tip held 14 mm short for a run) and held-out 31337 5
        (0.8073 -> 0.8027, p95 10.65 -> 7.86 mm), v2 +1 (p95 4.28 -> 4.34 mm): still off.
    n_lines : int
        Number of Hough lines (strongest first, each suppressing its neighbours within 6 deg
        and 10 px) looked at for a needle. 16 found more needles on the training seeds
        (777-780: 1464 -> 1494 frames within 3 mm) and on held-out seed 782 (+7 of 447), but
        it added false tips there (3 -> 5 of 38 frames without a needle) and on a
        wrong-level set (3 -> 4 of 117); 10 stays.
    track_angle_deg, track_reach_mm : float
        A candidate continues the track when its direction is within ``track_angle_deg`` of
        the last one, its tip within ``track_margin_mm`` across and ``track_reach_mm`` along.
    track_refined_deg : float
        A candidate whose axis (the chord of its last ``2 * fit_mm``) is more than
        ``track_angle_deg`` but at most this off the track's (the axis refined over the
        shaft's last ``fit_mm`` when it was last found) continues the track when its tip,
        refined on the frame as it would be placed if taken, does (:meth:`NeedleStage.
        _tracks_refined`): on a bent needle, or one turned a little since, the two axes differ
        by more than ``track_angle_deg`` while the refined ones do not. Training seeds 4101,
        4102 (48 studies): +17 -0 frames within 3 mm (4101: a needle lost on 15 frames of a
        run, its candidate 9-10 degrees off the track's axis, refined 0-6), false tips
        unchanged. Refining such a candidate from the track's axis instead (which finds the
        shaft where the chord's 1.2 mm window of cross peaks does not) gained +7 / +6 but took
        a candidate 21 mm behind the tip on a run's first frame (a run lost); limited to
        ``track_margin_mm`` along, +4 / 0. ``track_angle_deg`` (or less): off.
    end_on : bool
        With no line taken and no line needle followed in the view, look for an end-on needle
        (a dot, :mod:`sifluoro.track.needle_dot`) near the register target, or near the dot
        found last in the view.
    dot_ring_mm : float
        Radius of the ring a dot must be brighter than everywhere (projected end-on needles:
        1-10 mm long, the dot peaking near their middle).
    dot_min_z, dot_track_min_z : float
        Least contrast of a dot over its ring's brightest sample, in noise units of the
        smoothed running mean; the second for a dot where the view's last dot was (a thin
        needle's dot is often faint over bone once found).
    dot_max_length_mm, dot_max_width_mm : float
        Longest and widest blob (at half its contrast) taken for a dot: a clip lying across
        the beam or a dot on a bone margin is longer, a round bone island wider (an end-on
        needle is a streak of its own width, ~1 mm).
    dot_search_mm, dot_follow_mm : float
        Radius around the register target searched for a dot (the tip of an end-on needle
        stays where its line of sight meets the target, give or take the target's error),
        and around the dot found last in the view.
    dot_confirm_mm : float
        A dot is reported when the previous frame of its run had one within this, or the
        view's last dot is within this (the first, noisiest frame of a scout shows none).
    dot_line_min_prob, dot_line_side_mm, dot_line_back_mm : float
        A dot lying on a line candidate of the same search (needle probability at least
        ``dot_line_min_prob``, within ``dot_line_side_mm`` of its axis, from 1 mm past its tip
        to ``dot_line_back_mm`` behind it) is a needle seen as a short line whose tip the
        dot search misplaced: the frame's event reports that candidate's tip (the dot stays
        the dot followed).
    further_min_mm, further_side_mm, further_min_sym : float
        A tip taken on a line with a candidate segment of the same search going on at least
        ``further_min_mm`` beyond it (the tip within ``further_side_mm`` of its axis; flank
        symmetry at least ``further_min_sym``: not a one-sided cortical edge) is moved to that
        segment's end (:meth:`NeedleStage._further_on_line`): a needle crossing a bone edge
        is often taken short of it. 0 turns it off.
    further_angle_deg : float
        Largest angle between the taken line and such a segment: a needle bent past
        ``track_angle_deg`` (a bevel deflected in bone: 10-20 deg between the shaft's chord
        and the part past the bend) is taken short at the bend, and the bent part's tip is
        refined along its own axis. A segment more than ``track_angle_deg`` off must itself
        be rated ``track_min_prob`` or more (without this, held-out v2 lost 17 frames to
        cortical margins crossing a tip at 10-20 deg). 20 (8 before, as
        ``track_angle_deg``): training seed 5146 0 -> 25 of 84 frames within 3 mm (case007,
        a curved needle); 6004 (wrong-level scouts), 5145, 5203 unchanged.
    track_through : bool
        A candidate whose segment runs through the last tip (within ``track_margin_mm``
        across, same direction) continues the track however far beyond ``track_reach_mm`` its
        tip is: the needle advanced further between runs, or the last tip was placed short.
    scout_line_mm, scout_line_deg, scout_line_min_prob : float
        A line free at both ends that the study's scout showed (a candidate of at least
        ``scout_line_min_prob`` on a scout run, not taken: the needle is not in yet) is a rigid
        object on or in the patient (a skin marker, a clip): seen whole, its length is the
        object's, and on a later run it keeps that length and, unless the C-arm turned far, its
        axis, wherever the view or the table moved it. Off the scout a candidate free at both
        ends with the length of such a line within ``scout_line_mm`` and its axis within
        ``scout_line_deg`` does not start a new track, nor continue one begun on fewer than
        ``follow_min_hits`` frames (a run's first, noisy frame may measure the length a few mm
        off); a followed needle is not checked (one pushed in changes its length), nor is a
        line cut by the field edge (as long as the field lets it be). Training seed 4101: a
        skin marker was taken for the needle on 41 frames of one study (58 mm off) and on 13
        of another (24 mm off, beside a nearly end-on needle); with the check 20 of those
        frames have the needle's own line, the others none, 2 frames within 3 mm are lost
        (a needle of a scout line's length and axis), p95 of the visible tips 48 -> 10 mm,
        false tips unchanged; seed 4102: +8 -0 frames within 3 mm, p95 6.5 -> 6.1 mm.
        Held-out (register, needle, contrast): published set and its wrong-level scouts, a
        nearly end-on needle's dot no longer replaced by a short line: end-on frames within
        3 mm 32 -> 46 of 140, every other number the same; seed 31337 unchanged. 0: off.
    target_single_mm : float
        With no needle followed in the view, off the study's scout (:mod:`.needle_verify`), a
        candidate of needle probability ``min_prob`` or more whose tip is within this of the
        register target is taken on one frame, without being seen twice (or ``single_min_prob``):
        a needle's first frame, rated 0.73-0.94, was missed on 19 of 72 training studies (seeds
        2424, 4101, 4102); a wire or marker seldom ends at the joint's inferior third, and on the
        scout, whose lines by the joint are cortical margins, the rule does not apply. Training
        (register, needle): 30 mm +30 -0 frames within 3 mm (20 mm: +20 -0), false tips
        unchanged (5 of 316 frames without a needle); five visible tips 3.8-22 mm off where
        none was reported (three on one study: a cortical margin by the target on a faint
        needle's run). 0: off.
    edge_tip_ratio : float
        A line that runs out of the field at one end (within ``edge_margin_mm`` of the field
        edge or the frame's) and ends free inside it is a needle coming in from beyond the
        edge (hub outside, the free end its tip) or one whose tip is beyond the edge (a tight
        collimator, a pan: the free end is the hub end). One frame cannot tell them apart, but
        a needle is aimed at the register target: when the end at the edge is nearer the target
        than ``edge_tip_ratio`` times the free end's distance, the tip is at or beyond the
        edge and the line is no candidate (its free end reported as the tip was 65 mm off at
        confidence 0.99 on every frame; session 25's review r6). Without a target the free
        end stays the tip (the commonest clinical picture). 0: off.
    motion_min_mm : float
        When the register stage's image motion (``RegisterResult.shift_xy``: the patient or
        the table moved under a fixed field), the median of its last three frames of a run,
        steps by at least this from one frame to the next, what the stage remembers moves
        with the anatomy, by whole working-grid pixels: the track's tips (the hold of
        :meth:`NeedleStage._no_retreat`, the anchor of the box, the last run's tip), the
        candidates of the frames before, the dot, and the run's mean image (its part from
        inside the field). A 5 px (2.9 mm) shift along the needle read as a pull-back (the
        tip held at the old place while the target moved with the anatomy, tip_to_target_mm
        8.8 -> 11.0 mm) and a 3 px (1.8 mm) shift across it lost the tip on 6 of 7 frames
        (session 25's review r9). On the still simulated training studies (seeds 2424, 4101,
        4102) the register's motion drifts by up to 1.9 mm within a run (followed from 1 mm:
        32 frames within 3 mm lost) and one frame's can be 2.2 mm off (a step followed from
        frame to frame at 1.5 mm: 1 frame changed), while the median of three steps by at
        most 0.81 mm (p99 0.37 mm). But on held-out seed 31337 it was 1.6 mm off on three
        frames of a still study (followed, the needle was lost on six): the step is followed
        only when the frame matches the run's mean moved better than as it is. The step is
        followed a frame late (two of the three moved) and not within a run's first three
        frames, nor between runs. 0: off.
    scout_track_provisional : bool
        A track begun on the study's scout (:mod:`.needle_verify`: near the target) and found
        by the line search there only is not a needle followed in the view once the scout is
        over: another line is then taken on the cold-start rules (``min_prob`` seen twice, or
        ``advance_min_prob`` moving on along its line), not only at ``single_min_prob`` seen
        twice; a candidate continuing the scout's track still does (and makes it a followed
        needle). Training seed 4101: a skin marker taken 19 mm from the target on a scout kept
        the needle of the next five runs out (+14 -0 frames within 3 mm); seed 4102 unchanged.
        False: the scout's track is followed like any other.
    """

    grid_mm: float = 0.5
    sigma_px: float = 1.0
    edge_gain: float = 0.5
    vote_z: float = 1.5
    z_cap: float = 6.0
    support_bias: float = 0.5
    gap_mm: float = 4.0
    min_length_mm: float = 12.0
    min_score: float = 6.0
    track_min_score: float = 4.0
    edge_margin_mm: float = 3.0
    extend_mm: float = 20.0
    fit_mm: float = 20.0
    tip_window_mm: float = 6.0
    tip_shear_mm: float = 3.0
    tip_shear_gain: float = 0.8
    track_margin_mm: float = 6.0
    avg_frames: int = 8
    flank_mm: float = 1.5
    retreat_mm: float = 1.5
    floor_tips: int = 1
    hold_min_score: float = -3.0
    hold_release_max_mm: float = 8.0
    reference_tips: int = 1
    confirm_min_prob: float = math.inf
    near_mm: float = 0.8
    intensifier_thin_gain: float = 1.3
    far_mm: float = 2.5
    min_prob: float = 0.7
    single_min_prob: float = 0.95
    track_min_prob: float = 0.2
    track_angle_deg: float = 8.0
    track_reach_mm: float = 25.0
    track_refined_deg: float = 20.0
    follow_min_score: float = 6.0
    follow_start_score: float = 3.0
    follow_scaled: bool = False
    scout_track_provisional: bool = True
    follow_min_hits: int = 3
    dim_fraction: float = 0.5
    max_ext_score: float = 2.0
    full_search_every: int = 8
    roi_step_mm: float = 3.0
    max_jump_mm: float = 6.0
    search_when_unfollowed: bool = True
    max_deferred_searches: int = 0
    n_lines: int = 10
    persist_frames: int = 0
    persist_min_prob: float = 0.55
    advance_min_prob: float = 0.3
    advance_min_mm: float = 3.0
    advance_side_mm: float = 2.0
    target_lines: int = 0
    target_lines_mm: float = 25.0
    end_on: bool = True
    dot_ring_mm: float = 6.0
    dot_min_z: float = 10.0
    dot_track_min_z: float = 4.0
    dot_max_length_mm: float = 6.0
    dot_max_width_mm: float = 2.0
    dot_search_mm: float = 10.0
    dot_follow_mm: float = 4.0
    dot_confirm_mm: float = 1.5
    dot_line_min_prob: float = 0.3
    dot_line_side_mm: float = 1.0
    dot_line_back_mm: float = 8.0
    further_min_mm: float = 5.0
    further_side_mm: float = 1.5
    further_min_sym: float = 0.25
    further_angle_deg: float = 20.0
    track_through: bool = True
    scout_line_mm: float = 2.5
    scout_line_deg: float = 6.0
    scout_line_min_prob: float = 0.3
    target_single_mm: float = 30.0
    edge_tip_ratio: float = 1.0
    motion_min_mm: float = 1.2


@dataclass(frozen=True)
class LineHit:
    """A needle-like segment in full-resolution pixels: ``tip_xy`` the free end, ``base_xy``
    the other end (field edge or hub), ``score`` its line evidence."""

    tip_xy: tuple[float, float]
    base_xy: tuple[float, float]
    score: float
    length_mm: float
    base_at_edge: bool


class LineFinder:
    """Ridge map + oriented Hough + segment extraction on a working-grid image.

    Buffers are kept per image shape and reused from frame to frame.
    """

    def __init__(self, settings: NeedleSettings):
        self.s = settings
        self._shape = None
        self.n_theta = 180
        self.peaks = np.empty((0, 2), np.int64)
        self.noise = 1.0  # of the last score map

    def _buffers(self, shape: tuple[int, int]) -> None:
        if self._shape == shape:
            return
        rows, cols = shape
        self._shape = shape
        self.smooth = np.empty(shape, np.float32)
        self.ridge = np.empty(shape, np.float32)
        diag = int(math.ceil(math.hypot(rows, cols)))
        self.rho_offset = diag + 1
        self.acc = np.empty((self.n_theta, 2 * diag + 3), np.float32)
        self.support = np.empty(2 * diag + 4, np.float32)
        self.cross = np.empty(2 * diag + 4, np.float64)
        self.lap = np.empty(-(-(rows - 2) // 3) * -(-(cols - 2) // 3), np.float32)

    def score_map(self, work: np.ndarray, valid: np.ndarray, *, noise: float | None = None
                  ) -> np.ndarray:
        """Noise-normalised ridge strength of ``work`` (float32) inside ``valid``; the noise
        scale is measured on ``work`` unless given (a small region around a needle is scored
        in the unit of the whole field's map: its own sample is mostly needle and bone)."""
        self._buffers(work.shape)
        cv2.GaussianBlur(work, (0, 0), self.s.sigma_px, dst=self.smooth,
                         borderType=cv2.BORDER_REFLECT)
        K.ridge_map(self.smooth, valid, np.float32(self.s.edge_gain), self.ridge)
        self.noise = laplacian_noise(self.smooth, valid, buf=self.lap) if noise is None else noise
        self.ridge *= np.float32(1.0 / self.noise)
        return self.ridge

    def lines(self, *, angle_range: tuple[int, int] | None = None, n_peaks: int = 6
              ) -> list[tuple[float, float, float, float]]:
        """Strongest Hough lines of the last score map as (x0, y0, ux, uy): a point of the line
        and its unit direction, on the working grid."""
        lo, hi = angle_range if angle_range is not None else (0, self.n_theta - 1)
        half_window = 4
        K.hough_vote(self.smooth, self.ridge, np.float32(self.s.vote_z),
                     np.float32(self.s.z_cap), lo, hi, half_window, self.acc,
                     float(self.rho_offset))
        if self.peaks.shape[0] < n_peaks:
            self.peaks = np.empty((n_peaks, 2), np.int64)
        # each peak suppresses its neighbours within 6 deg and 10 px (a wrapped angle bin
        # flips the sign of rho)
        n = K.hough_peaks(self.acc, n_peaks, self.rho_offset, self.peaks)
        out = []
        for i, j in self.peaks[:n].tolist():
            theta = i * math.pi / self.n_theta
            phi = theta + 0.5 * math.pi
            rho = j - self.rho_offset
            ux, uy = math.cos(theta), math.sin(theta)
            out.append((rho * math.cos(phi), rho * math.sin(phi), ux, uy))
        return out

    def segment(self, line: tuple[float, float, float, float], spacing_mm: float
                ) -> tuple[float, float, float] | None:
        """The best-supported segment along a line as (t0, t1, score): parameters of its ends
        along the line's direction from the line's point, and its evidence
        ``sum(support - bias) / sqrt(length in px)`` (a t-statistic of the line response)."""
        x0, y0, ux, uy = line
        gap = max(1, int(round(self.s.gap_mm / spacing_mm)))
        # the line inside the map, its support and best interval in one kernel call
        inside, t_lo, a, b, total = K.segment_span(
            self.ridge, x0, y0, ux, uy, np.float32(self.s.z_cap),
            np.float32(self.s.support_bias), gap, self.support)
        if not inside:
            return None
        length = b - a + 1
        if b < a or length * spacing_mm < self.s.min_length_mm:
            return None
        return t_lo + a, t_lo + b, float(total / math.sqrt(length))


    def interval_score(self, a_xy: np.ndarray, b_xy: np.ndarray) -> float:
        """Evidence of a bright line from ``a_xy`` to ``b_xy`` (working grid), in the units of
        :meth:`segment`."""
        d = b_xy - a_xy
        n = int(math.hypot(d[0], d[1])) + 1
        if n < 4:
            return 0.0
        u = d / math.hypot(d[0], d[1])
        prof = self.support[:n]
        K.line_support(self.ridge, a_xy[0], a_xy[1], u[0], u[1], 1, prof)
        np.clip(prof, -self.s.z_cap, self.s.z_cap, out=prof)
        return float((prof.sum() - n * self.s.support_bias) / math.sqrt(n))

    def refit(self, line: tuple[float, float, float, float], t0: float, t1: float
              ) -> tuple[float, float, float, float]:
        """Least-squares refit of a line to the ridge crest between ``t0`` and ``t1`` (the Hough
        bins are 1 deg and 1 px; a long segment needs better)."""
        x0, y0, ux, uy = line
        n = int(t1 - t0) + 1
        if n < 6:
            return line
        offs = self.cross[:n]
        K.cross_peaks(self.ridge, x0 + t0 * ux, y0 + t0 * uy, ux, uy, 1.0, 2, offs)
        found, a, b = K.axis_fit(offs, 1.0, max(6, n // 3), 6)
        if not found:
            return line
        nx, ny = -uy, ux
        px, py = x0 + t0 * ux + b * nx, y0 + t0 * uy + b * ny
        vx, vy = ux + a * nx, uy + a * ny
        norm = math.hypot(vx, vy)
        vx, vy = vx / norm, vy / norm
        # keep the parameterisation: the new point is the foot of the old one
        s0 = (x0 - px) * vx + (y0 - py) * vy
        return px + s0 * vx, py + s0 * vy, vx, vy


def laplacian_noise(smooth: np.ndarray, valid: np.ndarray, stride: int = 3,
                    buf: np.ndarray | None = None) -> float:
    """Robust noise scale of the Laplacian of ``smooth`` (MAD over a strided sample in
    ``valid``), the unit of the ridge score. ``buf`` (float32, at least the sample's size)
    holds the sample."""
    if buf is None:
        buf = np.empty(-(-(smooth.shape[0] - 2) // stride) * -(-(smooth.shape[1] - 2) // stride),
                       np.float32)
    mad = K.laplacian_mad(smooth, valid, stride, buf)
    if mad < 0.0:
        return 1.0
    return max(1.4826 * float(mad), 1e-6)


def refine_tip(image: np.ndarray, tip_xy: np.ndarray, dir_xy: np.ndarray, spacing_mm: float,
               settings: NeedleSettings, buf: dict) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Refit the shaft axis near the tip and place the tip sub-pixel along it.

    Parameters
    ----------
    image : ndarray
        Lightly smoothed full-resolution attenuation image (or a crop of it; coordinates are
        then relative to the crop).
    tip_xy, dir_xy : ndarray
        Rough tip and unit direction shaft -> tip.
    spacing_mm : float
        Pixel size of ``image`` at the detector.

    Returns
    -------
    (tip_xy, dir_xy, contrast) or None
        The refined tip and direction, and the line contrast of the shaft near the tip
        (attenuation units), or None when no line is found there.
    """
    tip = np.asarray(tip_xy, np.float64)
    u = np.asarray(dir_xy, np.float64)
    fit_px = settings.fit_mm / spacing_mm
    step = 1.0
    half = max(2, int(round(1.2 / spacing_mm)))
    # two passes: the second fit starts from the corrected axis
    for _ in range(2):
        n = max(4, int(fit_px / step))
        start = tip - u * fit_px
        offs = buf.setdefault(("cross", n), np.empty(n, np.float64))
        K.cross_peaks(image, start[0], start[1], u[0], u[1], step, half, offs)
        # robust line fit of the offsets across the axis
        found, a, b = K.axis_fit(offs, step, max(4, n // 3), 4)
        if not found:
            return None
        t_end = (n - 1) * step
        nrm = np.array([-u[1], u[0]])
        p0 = start + b * nrm
        p1 = start + u * t_end + (a * t_end + b) * nrm
        u_new = p1 - p0
        u_new /= np.linalg.norm(u_new)
        # the tip moves to the refitted axis
        tip = p0 + u_new * float((tip - p0) @ u_new)
        u = u_new
    # contrast along the axis, from fit_px behind the tip to window ahead
    sub = 0.25
    win_px = settings.tip_window_mm / spacing_mm
    back_px = max(win_px, 0.5 * fit_px)
    n = int((back_px + win_px) / sub) + 1
    start = tip - u * back_px
    prof = buf.setdefault(("prof", n), np.empty(n, np.float64))
    offset = max(2.0, 1.6 / spacing_mm)
    # flanks sheared to follow an edge or band crossing the shaft obliquely (a joint margin,
    # a cortex): unsheared, the crossing leaves a fall in the contrast that takes the tip
    # (shifts and their comparison on a 1-pixel grid: the flanks are smooth on that scale)
    stride = int(round(1.0 / sub))
    shear = stride * int(round(settings.tip_shear_mm / spacing_mm))
    flanks = buf.setdefault(("flanks", n, shear), np.empty((4, n + 4 * shear), np.float64))
    plain = buf.setdefault(("plain", n), np.empty(n, np.float64))
    K.sheared_contrast(image, start[0], start[1], u[0], u[1], sub, offset, shear, stride,
                       settings.tip_shear_gain, flanks, prof, plain)
    lo = int((back_px - win_px) / sub)
    i, _ = K.step_location(prof, max(lo, 4), n - 4)
    # the shaft's contrast (is there a line behind the tip?) as before the shear: aligning
    # the flanks also lifts the contrast of lines that are no needle
    shaft = float(np.median(plain[:i])) if i > 0 else 0.0
    tip_new = start + u * ((i - 0.5) * sub)
    return tip_new, u, shaft
