"""All behaviour switches in one place, loaded once and passed down (no module reads env vars)."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields, replace

from sifluoro.errors import ConfigError


@dataclass(frozen=True)
class TubeData:
    """The X-ray tube data a technique estimate needs, for the devices it matches.

    ``manufacturer`` and ``model`` are case-insensitive substrings of the device's Manufacturer
    (0008,0070) and Manufacturer's Model Name (0008,1090).
    """

    manufacturer: str
    model: str
    inherent_filtration_al_mm: float
    anode_angle_deg: float


# PySkinDose 25.1.1's tube data for the two systems whose RDSRs it ships: 3.1 mm Al inherent
# filtration (settings_example.json, dev_data.py) and the anode angles of its HVL tables
# (table_data/generate_hvl_data.py: 8° AXIOM-Artis, 11° Allura Clarity). No vendor datasheet.
PYSKINDOSE_TUBES = (
    TubeData("siemens", "axiom-artis", 3.1, 8.0),
    TubeData("philips", "allura", 3.1, 11.0),
)


@dataclass(frozen=True)
class DoseSettings:
    """How dose is accounted when the device does not report it.

    Attributes
    ----------
    reference_point_offset_mm : float
        Distance of the interventional reference point from the isocentre toward the
        source (IEC 60601-2-43: 150 mm) for isocentric C-arms.
    reference_point_from_receptor_mm : float
        For mobile C-arms without a defined isocentre: the reference point lies this far
        from the image receptor toward the source (IEC 60601-2-54 practice: 300 mm).
    inherent_filtration_al_mm : float
        Tube inherent filtration in mm Al for devices no ``tubes`` entry matches.
    anode_angle_deg : float
        Target angle of the tube anode for devices no ``tubes`` entry matches.
    tubes : tuple of TubeData
        Per-device tube data, first match wins (:meth:`tube_for`); a site adds its own.
    fluoro_time_alert_s : float
        A fluoroscopy-time alert fires at every multiple of this (5 minutes).
    air_kerma_first_alert_mgy, air_kerma_alert_step_mgy : float
        NCRP Report 168 notification levels: first at 3 Gy, then every 1 Gy.
    srdl_air_kerma_mgy, srdl_dap_gycm2, srdl_fluoro_time_s : float
        Substantial radiation dose levels (NCRP Report 168): 5 Gy reference air kerma,
        500 Gy·cm² DAP, 60 min fluoroscopy. Each fires once per study; 0 disables it.
    """

    reference_point_offset_mm: float = 150.0
    reference_point_from_receptor_mm: float = 300.0
    inherent_filtration_al_mm: float = 2.7
    anode_angle_deg: float = 12.0
    fluoro_time_alert_s: float = 300.0
    air_kerma_first_alert_mgy: float = 3000.0
    air_kerma_alert_step_mgy: float = 1000.0
    srdl_air_kerma_mgy: float = 5000.0
    srdl_dap_gycm2: float = 500.0
    srdl_fluoro_time_s: float = 3600.0
    tubes: tuple[TubeData, ...] = PYSKINDOSE_TUBES

    def tube_for(self, manufacturer: str = "", model: str = "") -> tuple[float, float]:
        """(inherent_filtration_al_mm, anode_angle_deg) for a device, by its names."""
        manufacturer, model = manufacturer.lower(), model.lower()
        for tube in self.tubes:
            if tube.manufacturer.lower() in manufacturer and tube.model.lower() in model:
                return tube.inherent_filtration_al_mm, tube.anode_angle_deg
        return self.inherent_filtration_al_mm, self.anode_angle_deg


@dataclass(frozen=True)
class Settings:
    """Engine settings with documented defaults.

    Attributes
    ----------
    latency_budget_ms : float
        Per-frame budget for image work, from the frame's arrival; the pipeline degrades a
        frame's image work to fit it (:class:`sifluoro.pipeline.Pipeline`), and frames over it
        are marked ``degraded``. ``math.inf``: no deadline (offline replay then overlaps
        consecutive frames, :meth:`sifluoro.pipeline.Pipeline.process_frames`).
    queue_frames : int
        Capacity of the bounded queue between a file reader and the pipeline (offline: the
        reader waits when it is full).
    live_queue_frames : int
        Frames of a live source waiting for image work (:class:`sifluoro.pipeline.LiveFeeder`);
        beyond it the oldest waiting frame's image work is dropped (its dose is still counted).
    run_start_frames : int
        A run's first frames, whose image work (a new field or view to segment) costs several
        times a common frame's: the deadline planner does not learn from their cost.
    max_skipped_frames : int
        The deadline may skip a stage (contrast) on at most this many frames in a row; the
        next frame runs it, and the later steps of the order make room (needle in its ROI,
        joint line reused). Vascular uptake must not go unseen under a tight budget.
    stage_threads : int
        Threads for a frame's image work. With 2 (the default) or more, stages that do not
        read each other's results on the same frame (needle and contrast both read only
        register's) run at the same time; their kernels release the GIL. Without a deadline
        the events are those of 1 thread. Under a deadline the pair is planned as one step, so
        a needle cold start does not use up the budget of the contrast update (published set,
        10 ms: contrast study accuracy 0.71 with 1 thread, 0.79 with 2). 1: one at a time.
    dose : DoseSettings
        Dose accounting settings.
    """

    latency_budget_ms: float = 10.0
    queue_frames: int = 8
    live_queue_frames: int = 2
    run_start_frames: int = 2
    max_skipped_frames: int = 1
    stage_threads: int = 2
    dose: DoseSettings = field(default_factory=DoseSettings)

    def __post_init__(self):
        for f in fields(self):  # a number given as text ("10") is a config error, not a crash
            value = getattr(self, f.name)
            if f.type in ("float", "int") and (isinstance(value, bool)
                                               or not isinstance(value, numbers.Real)):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
        if not self.latency_budget_ms > 0:
            raise ConfigError(f"latency_budget_ms must be > 0, got {self.latency_budget_ms}")
        if self.queue_frames < 1:
            raise ConfigError(f"queue_frames must be >= 1, got {self.queue_frames}")
        if self.max_skipped_frames < 0:
            raise ConfigError(f"max_skipped_frames must be >= 0, got {self.max_skipped_frames}")
        if self.run_start_frames < 0:
            raise ConfigError(f"run_start_frames must be >= 0, got {self.run_start_frames}")
        if self.stage_threads < 1:
            raise ConfigError(f"stage_threads must be >= 1, got {self.stage_threads}")
        if self.live_queue_frames < 1:
            raise ConfigError(f"live_queue_frames must be >= 1, got {self.live_queue_frames}")
        for f in fields(self.dose):
            if f.name != "tubes" and getattr(self.dose, f.name) < 0:
                raise ConfigError(f"dose.{f.name} must be >= 0, got {getattr(self.dose, f.name)}")
        for tube in self.dose.tubes:
            if tube.inherent_filtration_al_mm < 0 or not 0 < tube.anode_angle_deg < 90:
                raise ConfigError(f"dose.tubes: {tube} needs filtration >= 0 and an angle in (0, 90)°")

    def with_(self, **changes) -> "Settings":
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)
