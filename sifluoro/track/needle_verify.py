"""Checks on a new needle track that the scout of a study makes necessary.

A study starts with a scout: the C-arm is set on the joint before the needle goes in. Whatever
line the search finds there is a surgical clip, a skin marker, a wire or a cortical edge, and
the needle probability does not tell them from a needle: on the training seeds the false tips
were lines on a study's first run (or a second scout), taken at 0.59-0.98 (needles are first
taken at 0.71-0.996), their tips 28-141 mm from the joint target. A false needle on a scout is
worse than a missed one, so:

* on the study's first ``scout_runs`` runs a new line track (a candidate not continuing a
  followed needle) needs its tip within ``scout_target_mm`` of the register target (of the
  field centre without one: a scout is centred on the joint). A study recorded from a later
  run on, the needle already in, still has it taken: on a final needle run the tip is within
  10.4 mm of the target (training seeds, truth);
* from then on, a new track is refused when it lies where a line the scout refused already was
  in the same view (``static_min_prob``; same line, tip within ``static_reach_mm``): a needle
  is new, a clip or a marker stays where it was. A needle followed keeps its own rules.

End-on dots are left as they are (none was reported on a scout of the training seeds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["ScoutSettings", "ScoutGate"]


@dataclass(frozen=True)
class ScoutSettings:
    """Parameters of :class:`ScoutGate` (lengths in mm at the detector).

    Attributes
    ----------
    scout_runs : int
        The study's first runs treated as scouts (0: off).
    scout_target_mm : float
        Largest distance of a new track's tip from the target on a scout.
    static_min_prob : float
        Candidates of a scout at least this probable and too far from the target are
        remembered as lines that were there before the needle (more than 1: none).
    static_angle_deg, static_margin_mm, static_reach_mm : float
        A candidate is such a line when its direction is within ``static_angle_deg`` of it,
        its tip within ``static_margin_mm`` across and ``static_reach_mm`` along (a needle
        advanced further along a remembered line is new again).
    """

    scout_runs: int = 1
    scout_target_mm: float = 20.0
    static_min_prob: float = 0.5
    static_angle_deg: float = 8.0
    static_margin_mm: float = 3.0
    static_reach_mm: float = 6.0


Line = tuple[np.ndarray, np.ndarray, float]  # full-resolution tip, unit direction, probability


def same_line(tip: np.ndarray, u: np.ndarray, other_tip: np.ndarray, other_u: np.ndarray,
              spacing_mm: float, angle_deg: float, margin_mm: float, reach_mm: float) -> bool:
    """Is (``tip``, ``u``) on the line of (``other_tip``, ``other_u``): direction within
    ``angle_deg``, tip within ``margin_mm`` across it and ``reach_mm`` along it?"""
    if float(u @ other_u) < math.cos(math.radians(angle_deg)):
        return False
    d = tip - other_tip
    across = abs(float(d[0] * other_u[1] - d[1] * other_u[0])) * spacing_mm
    along = abs(float(d @ other_u)) * spacing_mm
    return across <= margin_mm and along <= reach_mm


class ScoutGate:
    """The scout checks of one study (kept in the needle stage's per-study state).

    Call :meth:`enter` with each full search's run, :meth:`allows` for each new-track
    candidate, then :meth:`searched` with all the search's candidates."""

    def __init__(self, settings: ScoutSettings | None = None):
        self.settings = settings or ScoutSettings()
        self.runs: list[Any] = []  # the study's runs, in order of their first full search
        self.run: Any = None
        self.static: list[tuple[Any, Line]] = []  # (scout run, line) seen before the needle

    def enter(self, run: Any) -> None:
        """A full search of a frame of ``run``."""
        if run is not self.run:
            self.run = run
            if all(r is not run for r in self.runs):
                self.runs.append(run)

    @property
    def on_scout(self) -> bool:
        """Is the current run one of the study's first ``scout_runs``?"""
        s = self.settings.scout_runs
        return s > 0 and any(r is self.run for r in self.runs[:s])

    def allows(self, tip: np.ndarray, u: np.ndarray, spacing_mm: float, target: np.ndarray,
               same_view: Callable[[Any], bool]) -> bool:
        """May a candidate (full-resolution tip, direction) not continuing a followed needle
        start a track? On a scout: when its tip is within ``scout_target_mm`` of ``target``.
        Later: when it is not a line remembered from a scout of the same view
        (``same_view(scout_run)``)."""
        s = self.settings
        if self.on_scout:
            return float(np.linalg.norm(tip - target)) * spacing_mm <= s.scout_target_mm
        return not any(same_view(run) and same_line(tip, u, t, v, spacing_mm,
                                                    s.static_angle_deg, s.static_margin_mm,
                                                    s.static_reach_mm)
                       for run, (t, v, _) in self.static)

    def searched(self, lines: list[Line], spacing_mm: float, target: np.ndarray) -> None:
        """All candidates of this full search (full-resolution tip, direction, probability)
        and the target :meth:`allows` was given."""
        s = self.settings
        if self.on_scout:
            self.static.extend((self.run, c) for c in lines if c[2] >= s.static_min_prob and float(
                np.linalg.norm(c[0] - target)) * spacing_mm > s.scout_target_mm)
