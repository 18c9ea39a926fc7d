"""register/: find the SI joint line, keep it registered to the moving image, place the target.

The register stage leaves a :class:`RegisterResult` in ``state.stage_state["register"]`` for the
stages after it (needle: the target; contrast: the joint line and the image motion).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RegisterResult:
    """What register/ knows about the current frame (full-resolution pixel coordinates).

    Attributes
    ----------
    joint_polyline_xy : ndarray (n, 2) or None
        The joint line on this frame, superior end first; None when no joint is seen.
    joint_confidence : float
    joint_doubled : bool
        Anterior and posterior margins do not superimpose (advice: rotate the C-arm a few degrees).
    target_xy : (float, float) or None
        Centre of the inferior third of the joint line.
    target_radius_mm : float
        Acceptance radius around the target, at the detector.
    shift_xy : (float, float)
        Image motion of this frame relative to the reference frame of the current view (px).
    view_changed : bool
        True on a frame where the view changed and the joint was segmented again.
    """

    joint_polyline_xy: np.ndarray | None
    joint_confidence: float
    joint_doubled: bool
    target_xy: tuple[float, float] | None
    target_radius_mm: float
    shift_xy: tuple[float, float]
    view_changed: bool
