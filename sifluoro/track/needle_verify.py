"""The check on a new needle track that the scout of a study makes necessary.

A study starts with a scout: the C-arm is set on the joint before the needle goes in. Whatever
line the search finds there is a surgical clip, a skin marker, a wire or a cortical edge, and
the needle probability does not tell them from a needle: on the training seeds 15 of the 19
false tips were lines on a study's first run, taken at 0.59-0.98 (needles are first taken at
0.71-0.996), their tips 30-62 mm from the joint target. A false needle on a scout is worse
than a missed one, so on the study's first ``scout_runs`` runs a new line track (a candidate
not continuing a followed needle) needs its tip within ``scout_target_mm`` of the register
target (of the field centre without one: a scout is centred on the joint). A study recorded
from a later run on, the needle already in, still has it taken when it is near its target (on
a final needle run the tip is within 10.4 mm of it, training seeds, truth).

A scout on which the register stage never found the joint (taken at the wrong level, or off
the joint) is followed by another scout, so up to ``jointless_scouts`` such runs at the start
of a study do not count toward the ``scout_runs``: with a wrong-level scout first, the study's
real scout was not checked (published set with wrong-level scouts: all 6 false tips were on
the real scout; 2 remain, a line within 20 mm of the target, as on the set without them).

Not done: the same bound on new tracks after the scout (needles are first seen up to 70 mm from
the target, and the register target may be 40 mm off); refusing a line the scout refused on
later runs of its view (it acted on no training frame). End-on dots are left as they are (none
was reported on a scout of the training seeds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ScoutSettings", "ScoutGate"]


@dataclass(frozen=True)
class ScoutSettings:
    """Parameters of :class:`ScoutGate`.

    Attributes
    ----------
    scout_runs : int
        The study's first runs treated as scouts (0: off).
    scout_target_mm : float
        Largest distance (at the detector) of a new track's tip from the target on a scout.
    jointless_scouts : int
        At most this many of the study's first runs on none of whose full searches the
        register stage had a target (no joint in the field: a wrong-level scout) are scouts
        in addition to the ``scout_runs``.
    """

    scout_runs: int = 1
    scout_target_mm: float = 20.0
    jointless_scouts: int = 1


class ScoutGate:
    """The scout check of one study (kept in the needle stage's per-study state): call
    :meth:`enter` with each full search's run, then :meth:`allows` for each candidate that
    would start a new track."""

    def __init__(self, settings: ScoutSettings | None = None):
        self.settings = settings or ScoutSettings()
        self.runs: list[Any] = []  # the study's runs, in order of their first full search
        self.joint: list[bool] = []  # of each: had any of its full searches a target?
        self.run: Any = None

    def enter(self, run: Any, target_seen: bool = True) -> None:
        """A full search of a frame of ``run`` (``target_seen``: with a register target)."""
        if run is not self.run:
            self.run = run
            if all(r is not run for r in self.runs):
                self.runs.append(run)
                self.joint.append(False)
        i = next(k for k, r in enumerate(self.runs) if r is run)
        self.joint[i] = self.joint[i] or target_seen

    @property
    def on_scout(self) -> bool:
        """Is the current run one of the study's first ``scout_runs``, counted after at most
        ``jointless_scouts`` leading runs without a joint (which are scouts too)?"""
        s = self.settings.scout_runs
        if s <= 0:
            return False
        i = next((k for k, r in enumerate(self.runs) if r is self.run), len(self.runs))
        lead = 0
        while (lead < min(i, self.settings.jointless_scouts) and not self.joint[lead]):
            lead += 1
        return i < s + lead

    def allows(self, tip: np.ndarray, spacing_mm: float, target: np.ndarray | None,
               centre: np.ndarray) -> bool:
        """May a candidate (full-resolution tip) not continuing a followed needle start a
        track? Off the scout, yes; on it, when the tip is within ``scout_target_mm`` of the
        register ``target`` (of the field ``centre`` without one)."""
        if not self.on_scout:
            return True
        aim = centre if target is None else target
        return float(np.linalg.norm(tip - aim)) * spacing_mm <= self.settings.scout_target_mm
