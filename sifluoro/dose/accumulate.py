"""Per-frame dose accounting for a study: never skipped, cheap per frame.

Run-level work (reading what the device reported, the SpekPy tube output) happens once per run
in :meth:`DoseAccumulator.prepare`, so a frame only adds numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sifluoro.config import DoseSettings
from sifluoro.dose.physics import estimate_frame_dose
from sifluoro.model import Frame, Run


@dataclass(frozen=True)
class RunDose:
    """What one frame of a run adds, and where the numbers come from."""

    air_kerma_mgy_per_frame: float
    dap_gycm2_per_frame: float
    source: str  # "reported" | "estimated" | "none"


@dataclass(frozen=True)
class DoseAlert:
    """A dose notification: which level was crossed, at which frame."""

    kind: str  # "fluoro_time" | "air_kerma" | "dap"
    level: float
    unit: str
    index: int
    t_s: float
    message: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "level": self.level, "unit": self.unit, "index": self.index,
                "t_s": round(self.t_s, 3), "message": self.message}


@dataclass
class DoseTotals:
    air_kerma_mgy: float = 0.0
    dap_gycm2: float = 0.0
    fluoro_time_s: float = 0.0
    acquisition_time_s: float = 0.0
    sources: set[str] = field(default_factory=set)


class DoseAccumulator:
    """Cumulative fluoroscopy time, reference air kerma and DAP of one study, with alerts."""

    def __init__(self, settings: DoseSettings):
        self.settings = settings
        self.totals = DoseTotals()
        self.alerts: list[DoseAlert] = []
        self._runs: dict[str, RunDose] = {}

    def prepare(self, run: Run) -> RunDose:
        """Work out a run's per-frame dose once (called before its first frame is needed)."""
        found = self._runs.get(run.sop_instance_uid)
        if found is not None:
            return found
        tech, n = run.technique, max(1, run.n_frames)
        if tech.reported_dap_gycm2 is not None or tech.reported_air_kerma_mgy is not None:
            estimate = None
            if tech.reported_dap_gycm2 is None or tech.reported_air_kerma_mgy is None:
                estimate = self._estimate(run)
            kerma = (tech.reported_air_kerma_mgy / n if tech.reported_air_kerma_mgy is not None
                     else (estimate[0] if estimate else 0.0))
            dap = (tech.reported_dap_gycm2 / n if tech.reported_dap_gycm2 is not None
                   else (estimate[1] if estimate else 0.0))
            dose = RunDose(kerma, dap, "reported")
        else:
            estimate = self._estimate(run)
            dose = RunDose(*estimate, "estimated") if estimate else RunDose(0.0, 0.0, "none")
        self._runs[run.sop_instance_uid] = dose
        return dose

    def _estimate(self, run: Run) -> tuple[float, float] | None:
        interval = run.frame_intervals_ms[0] if run.frame_intervals_ms else 0.0
        return estimate_frame_dose(run.technique, rows=run.rows, columns=run.columns,
                                   frame_interval_ms=interval, n_frames=max(1, run.n_frames),
                                   settings=self.settings)

    def add(self, frame: Frame) -> list[DoseAlert]:
        """Count one frame; return the alerts it raised."""
        dose = self.prepare(frame.run)
        before = (self.totals.fluoro_time_s, self.totals.air_kerma_mgy)
        interval_s = frame.frame_interval_ms / 1000.0
        if frame.technique.is_acquisition:
            self.totals.acquisition_time_s += interval_s
        else:
            self.totals.fluoro_time_s += interval_s
        self.totals.air_kerma_mgy += dose.air_kerma_mgy_per_frame
        self.totals.dap_gycm2 += dose.dap_gycm2_per_frame
        self.totals.sources.add(dose.source)
        new = self._crossed(before, frame)
        self.alerts.extend(new)
        return new

    def _crossed(self, before: tuple[float, float], frame: Frame) -> list[DoseAlert]:
        s, out = self.settings, []
        step = s.fluoro_time_alert_s
        if step > 0:
            for k in range(int(before[0] // step) + 1, int(self.totals.fluoro_time_s // step) + 1):
                out.append(DoseAlert("fluoro_time", k * step, "s", frame.index, frame.t_s,
                                     f"fluoroscopy time has reached {k * step / 60:g} min"))
        for level in _kerma_levels(before[1], self.totals.air_kerma_mgy, s):
            out.append(DoseAlert("air_kerma", level, "mGy", frame.index, frame.t_s,
                                 f"reference air kerma has reached {level / 1000:g} Gy"))
        return out

    @property
    def source(self) -> str:
        """"reported", "estimated", "mixed" or "none" for the study so far."""
        used = self.totals.sources - {"none"} or self.totals.sources
        return "mixed" if len(used) > 1 else (next(iter(used)) if used else "none")


def _kerma_levels(before: float, after: float, s: DoseSettings) -> list[float]:
    """Notification levels in (before, after]: the first level, then every step above it."""
    first, step = s.air_kerma_first_alert_mgy, s.air_kerma_alert_step_mgy
    if first <= 0 or after < first:
        return []
    levels, level = [], first
    while level <= after:
        if level > before:
            levels.append(level)
        if step <= 0:
            break
        level += step
    return levels
