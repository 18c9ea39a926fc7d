"""Immutable records of the data flow: Technique, Run, Frame, Study (docs/contract.md §1).

Coordinates are ``(x=column, y=row)``, 0-based, pixel centres at integers. Distances at the
detector plane in mm unless a name says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Iterator

import numpy as np


@dataclass(frozen=True)
class Shutter:
    """An aperture in pixels: display shutters or collimator as stored, or both at once.

    ``rect_xyxy`` is the exposed rectangle (x0, y0, x1, y1), inclusive; ``circle_xyr`` the
    exposed circle (centre x, centre y, radius). Either may be None; with both, the field is
    inside both.
    """

    rect_xyxy: tuple[int, int, int, int] | None = None
    circle_xyr: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class Technique:
    """Acquisition technique of one run, with any dose the device reported for it.

    Every field is optional: devices differ in what they store. Reported dose values are for the
    whole run (instance) unless the per-frame tuples are present.
    """

    kvp: float | None = None
    tube_current_ma: float | None = None
    pulse_width_ms: float | None = None
    pulse_rate_per_s: float | None = None
    frame_time_ms: float | None = None
    exposure_time_ms: float | None = None
    exposure_mas: float | None = None
    sid_mm: float | None = None
    source_to_patient_mm: float | None = None
    source_to_isocenter_mm: float | None = None
    field_of_view_mm: tuple[float, float] | None = None
    field_of_view_shape: str | None = None   # (0018,1147): RECTANGLE, ROUND, HEXAGONAL
    intensifier_size_mm: float | None = None
    filter_cu_mm: float | None = None
    filter_al_mm: float | None = None
    imager_pixel_spacing_xy_mm: tuple[float, float] | None = None
    primary_angle_deg: float | None = None
    secondary_angle_deg: float | None = None
    radiation_setting: str | None = None
    radiation_mode: str | None = None   # (0018,115A): PULSED or CONTINUOUS
    shutter: Shutter | None = None      # the field the image shows (collimator and shutters)
    collimator: Shutter | None = None   # the beam's aperture, when stored
    reported_dap_gycm2: float | None = None
    reported_air_kerma_mgy: float | None = None
    reported_dap_gycm2_per_frame: tuple[float, ...] | None = None
    reported_air_kerma_mgy_per_frame: tuple[float, ...] | None = None
    # pulses one frame shows: 1 for DICOM runs; more for video grabbed below the pulse rate
    # (30 p/s on a 25 frame/s video output), so that each frame carries their tube load
    pulses_per_frame: float = 1.0

    @property
    def is_acquisition(self) -> bool:
        """True for high-dose acquisition runs (RadiationSetting GR), False for fluoroscopy."""
        return self.radiation_setting == "GR"


@dataclass(frozen=True)
class Device:
    """The modality that made the images."""

    manufacturer: str = ""
    model: str = ""
    serial_number: str = ""
    station_name: str = ""


@dataclass(frozen=True, eq=False)
class Run:
    """One pedal press: usually one (multi-frame) instance. Headers only; pixels on demand.

    ``frame_offsets_s`` are the frames' times since the run start; ``frame_intervals_ms`` the
    time each frame stands for (its frame time), used for fluoroscopy time.
    """

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    transfer_syntax_uid: str
    rows: int
    columns: int
    bits_stored: int
    photometric: str
    start_s: float
    frame_offsets_s: tuple[float, ...]
    frame_intervals_ms: tuple[float, ...]
    technique: Technique
    device: Device
    index: int = 0
    laterality: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    bits_allocated: int = 16
    pixel_offset: int | None = None
    pixel_intensity_sign: int | None = None
    pixel_intensity_relationship: str | None = None   # (0028,1040): LIN, LOG, DISP, OTHER
    #: the run's start as its header gives it (wall clock; a UTC offset when given): matched
    #: with a dose report's event times, which ``start_s`` (relative to the study) cannot be
    started_at: datetime | None = None
    #: no usable frame timing: the time its frames stand for is unknown (not 0), its
    #: fluoroscopy time not counted (totals with it are lower bounds)
    timing_unknown: bool = False
    #: the Modality LUT (a negative RescaleSlope, a falling table) turns stored values round
    #: before the photometric interpretation applies (:attr:`display_photometric`)
    modality_lut_inverts: bool = False
    header_cut: bool = False  # the file ends before its pixel data (cut inside its header)
    #: the header says no frame can be shown (unreadable values, no whole frame): its frames
    #: are counted as lost, its dose from the header
    frames_refused: bool = False
    study_uid_cut: bool = False  # ... inside its StudyInstanceUID value: the UID is a stump
    #: ImageType (0008,0008), upper case: DERIVED (value 1) is made from other images (a
    #: processed or re-captured copy: beside the run it copies, no second exposure); value 3
    #: names a biplane's plane (SINGLE A, SINGLE B)
    image_type: tuple[str, ...] = ()
    #: the instances it was made from (Source Image Sequence), when it names them
    source_sop_uids: tuple[str, ...] = ()
    read_frames: Callable[["Run"], Iterator[np.ndarray]] | None = field(default=None, repr=False)

    @property
    def n_frames(self) -> int:
        return len(self.frame_offsets_s)

    @property
    def derived(self) -> bool:
        """ImageType says DERIVED: made from other images."""
        return self.image_type[:1] == ("DERIVED",)

    @property
    def pixel_spacing_xy_mm(self) -> tuple[float, float] | None:
        return self.technique.imager_pixel_spacing_xy_mm

    @property
    def side(self) -> str | None:
        """The run's laterality, "L" or "R", when the header states it."""
        side = (self.laterality or "").strip().upper()
        return side if side in ("L", "R") else None

    @property
    def polarity_stated(self) -> bool:
        """Whether the header says which way attenuation runs (a PixelIntensityRelationshipSign,
        or a LIN/LOG relationship); otherwise :attr:`attenuation_rises_with_value` assumes it."""
        return (self.pixel_intensity_sign in (-1, 1)
                or self.pixel_intensity_relationship in ("LIN", "LOG"))

    @property
    def attenuation_rises_with_value(self) -> bool:
        """Whether higher stored values mean more attenuation (bone bright as stored).

        From (0028,1041) PixelIntensityRelationshipSign when present (-1: value falls as X-ray
        intensity rises); else LIN/LOG (0028,1040) mean values proportional to X-ray intensity
        (so they fall with attenuation); otherwise (DISP, OTHER, absent) from the photometric
        interpretation, assuming bone is displayed bright, as radiographs do. A bone-dark
        MONOCHROME2 device that writes neither is indistinguishable and is read inverted.
        """
        if not self.polarity_stated:
            return self.display_photometric == "MONOCHROME2"
        return self.pixel_intensity_sign == -1  # LIN/LOG without a sign: falls with attenuation

    @property
    def display_photometric(self) -> str:
        """How the stored values themselves are displayed: the header's photometric
        interpretation, which applies after the Modality LUT, swapped when that LUT inverts
        them (:attr:`modality_lut_inverts`)."""
        if not self.modality_lut_inverts:
            return self.photometric
        return "MONOCHROME1" if self.photometric == "MONOCHROME2" else "MONOCHROME2"

    def iter_pixels(self) -> Iterator[np.ndarray]:
        """Decode frames one at a time (read-only 2-D uint16 arrays, as stored)."""
        if self.read_frames is None:
            raise RuntimeError(f"{self.path}: this run carries no pixel reader")
        return self.read_frames(self)


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame with its place in the study."""

    pixels: np.ndarray
    index: int
    frame_number: int
    t_s: float
    run: Run

    @property
    def sop_instance_uid(self) -> str:
        return self.run.sop_instance_uid

    @property
    def technique(self) -> Technique:
        return self.run.technique

    @property
    def frame_interval_ms(self) -> float:
        return self.run.frame_intervals_ms[self.frame_number - 1]

    @property
    def photometric(self) -> str:
        """How the stored pixels are displayed (:attr:`Run.display_photometric`)."""
        return self.run.display_photometric

    @property
    def pixel_spacing_xy_mm(self) -> tuple[float, float] | None:
        return self.run.pixel_spacing_xy_mm


def first_few(items, most: int = 3) -> str:
    """The first ``most`` of ``items`` (as text), comma-separated, "..." after when there are
    more: files named in one line of a message."""
    items = [str(i) for i in items]
    return ", ".join(items[:most]) + (", ..." if len(items) > most else "")


def counted(n: int, one: str, many: str | None = None) -> str:
    """``n`` things in words, the noun in the singular for one: "1 run", "3 studies"."""
    return f"{n} {one if n == 1 else many or one + 's'}"


@dataclass(frozen=True)
class Rejection:
    """A file (or part of one) that could not be used, and why: ``reason`` says it for a
    person (the tag first when there is one); ``error`` (the :mod:`sifluoro.errors` class,
    e.g. ``"UnsupportedDicomError"``) and ``tag`` (``"(0028,0103) PixelRepresentation"``) for a
    program, empty when the rejection did not come from a typed error."""

    file: str
    reason: str
    error: str = ""
    tag: str = ""

    @classmethod
    def of(cls, path, exc, note: str = "") -> "Rejection":
        """The rejection of ``path`` for the typed error ``exc`` (an ``InputError``)."""
        reason = f"{exc.tag}: {exc.reason}{note}" if exc.tag else f"{exc.reason}{note}"
        return cls(str(path), reason, type(exc).__name__, exc.tag or "")

    @property
    def not_dicom(self) -> bool:
        """A file that is no DICOM at all (notes, exports beside a study: passed over), not a
        DICOM file whose header cannot be parsed (a damaged one, its exposure missing)."""
        return is_not_dicom(self.as_dict())

    def as_dict(self) -> dict:
        out = {"file": self.file, "reason": self.reason}
        if self.error:
            out.update(error=self.error, tag=self.tag or None)
        return out


def is_not_dicom(rejection: dict) -> bool:
    """:attr:`Rejection.not_dicom` of a rejection as the summary lists it (``as_dict``)."""
    return (rejection.get("error") == "NotDicomError"
            and rejection.get("reason", "").startswith(NOT_DICOM_REASON))


#: the reason of a file without the DICOM Part 10 header (the readers say it so)
NOT_DICOM_REASON = "not a DICOM file"


@dataclass(frozen=True, eq=False)
class Study:
    """The ordered runs of one StudyInstanceUID, plus what was rejected while reading it."""

    study_instance_uid: str
    runs: tuple[Run, ...]
    rejected: tuple[Rejection, ...] = ()
    dose_reports: tuple[str, ...] = ()

    @property
    def n_frames(self) -> int:
        return sum(r.n_frames for r in self.runs)

    @property
    def device(self) -> Device:
        return self.runs[0].device if self.runs else Device()
