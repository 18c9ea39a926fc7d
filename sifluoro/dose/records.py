"""Typed dose records shared by the accumulator, the RDSR writer and reader, and the summary.

Units (docs/contract.md §2): DAP in Gy·cm², air kerma at the reference point in mGy, times in s,
distances in mm. RDSR files use Gy, Gy·m² and s; conversion happens at the file edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sifluoro.model import Device

FLUOROSCOPY = "fluoroscopy"
ACQUISITION = "acquisition"
SINGLE_PLANE = "single"


@dataclass(frozen=True)
class IrradiationEvent:
    """One irradiation event (TID 10003): a run, with its technique, geometry and dose.

    Every technique field is optional: devices and images differ in what they carry.
    ``dose_source`` says where the dose numbers come from: ``"rdsr"`` (a dose report),
    ``"reported"`` (image headers), ``"estimated"`` (technique model) or ``"none"``.
    """

    event_uid: str
    kind: str  # FLUOROSCOPY | ACQUISITION
    plane: str = SINGLE_PLANE  # "single" | "A" | "B"
    start: datetime | None = None
    dap_gycm2: float | None = None
    air_kerma_mgy: float | None = None
    dose_source: str = "none"
    kvp: float | None = None
    tube_current_ma: float | None = None
    pulse_width_ms: float | None = None
    pulse_rate_per_s: float | None = None
    n_pulses: int | None = None
    irradiation_duration_s: float | None = None
    exposure_time_ms: float | None = None
    exposure_mas: float | None = None
    filter_al_mm: float | None = None
    filter_cu_mm: float | None = None
    primary_angle_deg: float | None = None
    secondary_angle_deg: float | None = None
    sid_mm: float | None = None
    source_to_isocenter_mm: float | None = None
    source_to_reference_point_mm: float | None = None
    collimated_field_area_cm2: float | None = None
    reference_point: str = ""
    protocol: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    #: where each of (air kerma, DAP) comes from when they differ from ``dose_source`` (a
    #: header that reports DAP only: its air kerma is estimated, or unknown)
    air_kerma_source: str | None = None
    dap_source: str | None = None
    #: a pulsed beam (RadiationMode PULSED, a pulse width, a report's Fluoro Mode); False
    #: continuous; None not known
    pulsed: bool | None = None

    @property
    def is_acquisition(self) -> bool:
        return self.kind == ACQUISITION


@dataclass(frozen=True)
class PlaneTotals:
    """Accumulated dose of one plane (TID 10002). None where a report leaves a value out."""

    plane: str
    dap_gycm2: float | None = None
    air_kerma_mgy: float | None = None
    fluoro_dap_gycm2: float | None = None
    fluoro_air_kerma_mgy: float | None = None
    acquisition_dap_gycm2: float | None = None
    acquisition_air_kerma_mgy: float | None = None
    fluoro_time_s: float | None = None
    acquisition_time_s: float | None = None
    n_radiographic_frames: int | None = None
    reference_point: str = ""


#: the dose totals of a study or plane: (summary field, event attribute, event kind or None)
DOSE_TOTALS = (("dap_gycm2", "dap_gycm2", None), ("air_kerma_mgy", "air_kerma_mgy", None),
               ("fluoro_dap_gycm2", "dap_gycm2", FLUOROSCOPY),
               ("fluoro_air_kerma_mgy", "air_kerma_mgy", FLUOROSCOPY),
               ("acquisition_dap_gycm2", "dap_gycm2", ACQUISITION),
               ("acquisition_air_kerma_mgy", "air_kerma_mgy", ACQUISITION))

#: pulse rates below this (per s) are nominal placeholders, not a run's rate
PLAUSIBLE_PULSE_RATE = 0.5


def event_duration_s(e: IrradiationEvent) -> float:
    """How long the beam was on in one event (0 when nothing says)."""
    if e.irradiation_duration_s is not None:
        return e.irradiation_duration_s
    if e.n_pulses and e.pulse_rate_per_s and e.pulse_rate_per_s >= PLAUSIBLE_PULSE_RATE:
        return e.n_pulses / e.pulse_rate_per_s
    # no usable rate (Siemens gives single shots 1 pulse at 0.01/s: 100 s each): the
    # beam-on time instead
    if e.exposure_time_ms is not None:  # the event's whole exposure (113824)
        return e.exposure_time_ms / 1000.0
    if e.pulse_width_ms is not None:
        return e.pulse_width_ms / 1000.0 * (e.n_pulses or 1)
    return 0.0


def totals_from_events(plane: str, events: list[IrradiationEvent] | tuple[IrradiationEvent, ...],
                       *, reference_point: str = "") -> PlaneTotals:
    """Accumulated totals of one plane computed from its events (missing values count as 0)."""
    mine = [e for e in events if e.plane == plane]

    def total(attr: str, kind: str | None = None) -> float:
        return sum(getattr(e, attr) or 0.0 for e in mine if kind is None or e.kind == kind)

    return PlaneTotals(
        plane=plane,
        dap_gycm2=total("dap_gycm2"),
        air_kerma_mgy=total("air_kerma_mgy"),
        fluoro_dap_gycm2=total("dap_gycm2", FLUOROSCOPY),
        fluoro_air_kerma_mgy=total("air_kerma_mgy", FLUOROSCOPY),
        acquisition_dap_gycm2=total("dap_gycm2", ACQUISITION),
        acquisition_air_kerma_mgy=total("air_kerma_mgy", ACQUISITION),
        fluoro_time_s=sum(event_duration_s(e) for e in mine if e.kind == FLUOROSCOPY),
        acquisition_time_s=sum(event_duration_s(e) for e in mine if e.kind == ACQUISITION),
        n_radiographic_frames=sum(e.n_pulses or 0 for e in mine if e.kind == ACQUISITION),
        reference_point=reference_point or next((e.reference_point for e in mine if e.reference_point), ""),
    )


def unknown_totals(events, planes) -> frozenset[str]:
    """The dose totals (:data:`DOSE_TOTALS` field names) that nothing gives: there are
    ``events`` of the total's kind, none of them gives the quantity (a header reporting DAP
    only, a run without dose or technique) and no total of ``planes`` does. Their sum is 0 by
    arithmetic, but the dose is unknown, not 0."""
    out = set()
    for field, attr, kind in DOSE_TOTALS:
        of_kind = [e for e in events if kind is None or e.kind == kind]
        if (of_kind and all(getattr(e, attr) is None for e in of_kind)
                and not any(getattr(p, field) for p in planes)):
            out.add(field)
    return frozenset(out)


def events_dose_unknown(events) -> int:
    """How many ``events`` leave out their air kerma or DAP (a run without dose or technique,
    a header reporting one of the two): a total summed over them is a lower bound."""
    return sum(1 for e in events if e.air_kerma_mgy is None or e.dap_gycm2 is None)


def events_time_unknown(events) -> int:
    """How many ``events`` do not say how long their beam was on (a run without usable frame
    timing): a time total summed over the others is a lower bound."""
    return sum(1 for e in events if not is_timed(e))


def is_timed(e: IrradiationEvent) -> bool:
    """Whether an event says how long its beam was on (:func:`event_duration_s` has a source)."""
    return (e.irradiation_duration_s is not None or e.exposure_time_ms is not None
            or e.pulse_width_ms is not None
            or bool(e.n_pulses and e.pulse_rate_per_s and e.pulse_rate_per_s >= PLAUSIBLE_PULSE_RATE))


#: the time totals: (field, event kind, the plane dose fields that show the kind was used)
TIME_TOTALS = (("fluoro_time_s", FLUOROSCOPY, ("fluoro_dap_gycm2", "fluoro_air_kerma_mgy")),
               ("acquisition_time_s", ACQUISITION, ("acquisition_dap_gycm2", "acquisition_air_kerma_mgy")))


def unknown_times(events, planes) -> frozenset[str]:
    """The time totals that nothing gives: no plane gives the time, and there are events of
    its kind none of which is timed (no duration, exposure time, pulse width or pulses at a
    rate), or no events but a plane dose of that kind. Their sum is 0 by arithmetic, but
    the time is unknown, not 0."""
    out = set()
    for field, kind, doses in TIME_TOTALS:
        if not planes or any(getattr(p, field) for p in planes):
            continue
        of_kind = [e for e in events if e.kind == kind]
        if (of_kind and not any(is_timed(e) for e in of_kind)) or (
                not events and all(getattr(p, field) is None for p in planes)
                and any(getattr(p, d) for p in planes for d in doses)):
            out.add(field)
    return frozenset(out)


@dataclass(frozen=True)
class StudyDose:
    """The dose of one study: its events and per-plane accumulated totals.

    ``source`` is ``"rdsr"`` when read from a dose report, ``"images"`` when accumulated from
    image headers; ``dose_source`` refines the latter (``"reported"``, ``"estimated"``,
    ``"mixed"``, ``"none"``). ``planes_from_report`` is False when a report had no accumulated
    container and the totals were summed from its events.
    """

    study_instance_uid: str
    source: str
    device: Device
    events: tuple[IrradiationEvent, ...]
    planes: tuple[PlaneTotals, ...]
    path: str | None = None
    dose_source: str = ""
    planes_from_report: bool = True
    scope_study_instance_uid: str | None = None
    srdl_exceeded: tuple[str, ...] = ()
    #: a report sifluoro wrote (from the images, or copied from a device report): the
    #: device's own report of the same study, when there is one, supersedes it
    by_sifluoro: bool = False
    #: when the report was made (Instance Creation, else Content date and time; naive): of
    #: two reports of the same exposures, a correction is the later one
    created: datetime | None = None
    #: the report's Scope of Accumulation: "study", "pps", "series", "event" or "" (not said)
    scope: str = ""
    #: its SOP Instance UID, and those of the reports it replaces (Predecessor Documents
    #: Sequence: a corrected report names the one it corrects)
    sop_instance_uid: str = ""
    predecessors: tuple[str, ...] = ()

    def _sum(self, attr: str) -> float:
        return float(sum(getattr(p, attr) or 0.0 for p in self.planes))

    @property
    def dap_gycm2(self) -> float:
        return self._sum("dap_gycm2")

    @property
    def air_kerma_mgy(self) -> float:
        return self._sum("air_kerma_mgy")

    @property
    def fluoro_time_s(self) -> float:
        return self._sum("fluoro_time_s")

    def unknown_totals(self, plane: str | None = None) -> frozenset[str]:
        """:func:`unknown_totals` of the study, or of one of its planes."""
        return unknown_totals([e for e in self.events if plane is None or e.plane == plane],
                              [p for p in self.planes if plane is None or p.plane == plane])

    def summary(self) -> dict:
        """The ``sifluoro dose summary --json`` object (docs/contract.md §4), plus per-plane
        detail.

        ``events`` and ``planes`` are counts; ``per_plane`` lists each plane's totals. Times
        and doses of several planes are summed (tube-on time and dose of each tube). A dose
        total that nothing gives (:meth:`unknown_totals`) is None (JSON null), not 0; one that
        some events leave out counts them in ``events_dose_unknown``. So is a fluoroscopy or
        acquisition time that nothing gives (:func:`unknown_times`).
        """
        unknown = self.unknown_totals()
        unknown_in = {p.plane: self.unknown_totals(p.plane) for p in self.planes}
        out = {
            "study_instance_uid": self.study_instance_uid,
            "source": self.source,
            "device": {"manufacturer": self.device.manufacturer, "model": self.device.model},
            "events": len(self.events),
            "planes": len(self.planes),
            "fluoro_time_s": round(self.fluoro_time_s, 6),
            "dap_gycm2": self.dap_gycm2,
            "air_kerma_mgy": self.air_kerma_mgy,
            "fluoro_dap_gycm2": self._sum("fluoro_dap_gycm2"),
            "fluoro_air_kerma_mgy": self._sum("fluoro_air_kerma_mgy"),
            "acquisition_dap_gycm2": self._sum("acquisition_dap_gycm2"),
            "acquisition_air_kerma_mgy": self._sum("acquisition_air_kerma_mgy"),
            "acquisition_time_s": round(self._sum("acquisition_time_s"), 6),
            "dose_source": self.dose_source or self.source,
            # events whose air kerma or DAP is unknown: left out of the totals, which are then
            # lower bounds (unless null: nothing gives them); a report's own accumulated totals
            # are the device's whole count, whatever its events leave out
            "events_dose_unknown": 0 if self.planes_from_report else events_dose_unknown(self.events),
            # events of unknown beam-on time: the time totals are lower bounds (as above)
            "events_time_unknown": 0 if self.planes_from_report else events_time_unknown(self.events),
            "srdl_exceeded": list(self.srdl_exceeded),
            "per_plane": [
                {"plane": p.plane,
                 "dap_gycm2": None if "dap_gycm2" in unknown_in[p.plane] else p.dap_gycm2,
                 "air_kerma_mgy": None if "air_kerma_mgy" in unknown_in[p.plane] else p.air_kerma_mgy,
                 # rounded as the totals (no float noise)
                 "fluoro_time_s": _round_or_none(p.fluoro_time_s),
                 "acquisition_time_s": _round_or_none(p.acquisition_time_s),
                 "events": sum(1 for e in self.events if e.plane == p.plane)}
                for p in self.planes],
            "path": self.path,
        }
        out.update({field: None for field in unknown})
        # a time total nothing gives is None too (the SRDL check and alerts take it as 0)
        out.update({field: None for field in unknown_times(self.events, self.planes)})
        return out


def _round_or_none(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)
