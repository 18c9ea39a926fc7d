"""Result records of the simulator (public API, see ``sifluoro.sim``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SimTechnique:
    """Technique and geometry of one run (units in the names; angles as in DICOM XA)."""

    kvp: float
    tube_current_ma: float
    pulse_width_ms: float
    pulse_rate_per_s: float
    frame_time_ms: float
    sid_mm: float
    source_to_isocenter_mm: float
    source_to_patient_mm: float
    filter_cu_mm: float
    filter_al_mm: float
    inherent_filtration_al_mm: float
    anode_angle_deg: float
    field_of_view_mm: float
    imager_pixel_spacing_mm: float
    collimation_xyxy: tuple[int, int, int, int]
    circular_field: bool
    detector: str
    primary_angle_deg: float
    secondary_angle_deg: float
    kind: str
    # added fields
    detector_air_kerma_per_pulse_ngy: float = 0.0   # mean in the central field, incl. scatter
    air_kerma_per_pulse_at_isocenter_ugy: float = 0.0  # free in air, no backscatter
    scatter_to_primary_before_grid: float = 0.0
    scatter_to_primary_after_grid: float = 0.0


@dataclass(frozen=True)
class FrameTruth:
    """Ground truth of one frame; pixel coordinates (x=col, y=row), 0-based."""

    tip_xy: tuple[float, float] | None
    needle_visible: bool
    end_on: bool
    shaft_xy: tuple[tuple[float, float], ...] | None
    joint_polyline_xy: tuple[tuple[float, float], ...] | None
    joint_doubled: bool
    target_xy: tuple[float, float] | None
    contrast_state: str
    contrast_visible: bool
    contrast_area_mm2: float
    # added fields
    t_s: float = 0.0                                  # time since study start
    tip_to_target_mm: float | None = None             # at the detector plane
    # ideal-observer SNR in the stored pixels (sifluoro.sim.visibility); None: no tip / no
    # visible contrast. Below 3 the object is in the field but not in the image.
    tip_snr: float | None = None
    contrast_snr: float | None = None
    # the same for the vessels' iodine alone (None: no visible vessel); in a joint + vessel
    # study contrast_snr is the joint fill's
    vessel_snr: float | None = None
    # where the tip projects when the needle is in the field and its tip is not (beyond a
    # blade or the frame's edge; may lie off the frame); None otherwise, and then left out of
    # truth.json (the studies made before it stay byte for byte the same)
    tip_beyond_field_xy: tuple[float, float] | None = None


@dataclass(frozen=True)
class SimRun:
    """One run (pedal press): stored frames, their truth and the technique."""

    frames: np.ndarray
    bits_stored: int
    photometric: str
    technique: SimTechnique
    start_s: float
    truth: tuple[FrameTruth, ...]
    burned_in_text: bool
    # added fields
    image_processing: str = "log"          # "log" | "gamma"
    exposed_mask: np.ndarray | None = None  # (size, size) bool, True inside the exposed field
    # (0028,1041): -1 stored values rise with attenuation (bone bright as stored), +1 they
    # rise with X-ray intensity (bone dark as stored; MONOCHROME1, or MONOCHROME2 bone-dark)
    pixel_intensity_sign: int = -1
    wrong_level: bool = False  # a scout of the wrong level put before the study (no joint)

    @property
    def attenuation_rises_with_value(self) -> bool:
        return self.pixel_intensity_sign == -1


@dataclass(frozen=True)
class SimStudy:
    """A whole simulated SI-joint injection study."""

    seed: int
    case: int
    size: int
    side: str
    outcome: str
    modality: str
    storage: str
    compression: str | None
    damaged: bool
    reports_dose: bool
    distractors: tuple[str, ...]
    runs: tuple[SimRun, ...]
    # added fields
    patient_thickness_mm: float = 0.0
    joint_obliquity_deg: float = 0.0
    needle_gauge: int = 22
    contrast_components: tuple[str, ...] = ()
