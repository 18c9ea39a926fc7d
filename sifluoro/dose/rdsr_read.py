"""Read X-Ray Radiation Dose SRs (TID 10001) from real devices into a :class:`StudyDose`.

Content is found by concept code, not by position or template identifier, so that the quirks
of vendors' files are read rather than rejected:

- units: ``Gy.m2``, ``Gym2`` (Siemens), ``dGy.cm2``, ``mGy.cm2``, ``uGy.m2``... (:mod:`units`);
- no ``ContentTemplateSequence``, items nested one level deeper than TID 10003 says, the
  retired Exposure Time code, ``SRT`` or ``SCT`` codes for the same concept;
- no Accumulated X-Ray Dose container, or one without an overall total (summed from its
  fluoroscopy and acquisition parts), or none at all (summed from the events), or none for
  one of the planes its events name (that plane's summed from its events);
- several planes (one accumulated container per plane; biplane A/B);
- events without kVp, tube current or distances (left as None);
- Philips' private collimation (shutters, detector field) when the standard Collimated Field
  Area is absent, and its private final SID when Distance Source to Detector is absent.

Errors are typed (:mod:`sifluoro.errors`) and name the file and the content item's concept.
"""
from __future__ import annotations

import logging
import math
import os
import struct
import traceback
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from sifluoro.dicom_time import parse_dt, utc_offset
from sifluoro.dose import sr_codes as C
from sifluoro.dose.records import (
    ACQUISITION,
    FLUOROSCOPY,
    SINGLE_PLANE,
    IrradiationEvent,
    PlaneTotals,
    StudyDose,
    event_duration_s,
    events_dose_unknown,
    events_time_unknown,
    is_timed,
    totals_from_events,
)
from sifluoro.dose.units import DOSE_QUANTITIES, MAX_PLAUSIBLE, MAX_PULSE_WIDTH_MS, factor, plausible
from sifluoro.errors import (
    DamagedFileError,
    InputError,
    MissingAttributeError,
    NotDicomError,
    UnsupportedDicomError,
    shown_uid,
)
from sifluoro.model import Device

log = logging.getLogger(__name__)

SR_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR: older devices send dose reports so
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
}
CT_PROCEDURE = ("DCM", "P5-08000")

# (scheme, value) of the concepts the reader compares with, computed once: looking a code up in
# pydicom's code dictionary costs as much as reading a content item
_K = SimpleNamespace(**{name: C.key(getattr(C.DCM, name)) for name in (
    "AccumulatedXRayDoseData",
    "AcquiredImage",
    "AcquisitionPlane",
    "AcquisitionProtocol",
    "DatetimeStarted",
    "DeviceObserverManufacturer",
    "DeviceObserverModelName",
    "DeviceObserverName",
    "DeviceObserverSerialNumber",
    "FluoroMode",
    "IrradiationEventType",
    "IrradiationEventUID",
    "IrradiationEventXRayData",
    "ProcedureReported",
    "ReferencePointDefinition",
    "ScopeOfAccumulation",
    "SourceOfDoseInformation",
    "StudyInstanceUID",
    "XRayFilterMaterial",
    "XRayFilterThicknessMaximum",
    "XRayFilterThicknessMinimum",
    "XRayFilters",
    "XRayRadiationDoseReport",)})


def _predecessors(ds) -> tuple[str, ...]:
    """The SOP Instance UIDs in (0040,A360) Predecessor Documents Sequence: the reports this one
    replaces (a correction names the report it corrects, PS3.3 C.17.2)."""
    out = []
    for study in ds.get("PredecessorDocumentsSequence", None) or ():
        for series in study.get("ReferencedSeriesSequence", None) or ():
            for sop in series.get("ReferencedSOPSequence", None) or ():
                uid = str(sop.get("ReferencedSOPInstanceUID", "") or "")
                if uid:
                    out.append(uid)
    return tuple(out)


def _created(ds) -> datetime | None:
    """When the report was made: Instance Creation, else Content date and time (naive)."""
    for date_kw, time_kw in (("InstanceCreationDate", "InstanceCreationTime"),
                             ("ContentDate", "ContentTime")):
        text = str(ds.get(date_kw, "") or "").strip()
        if not text:
            continue
        clock = str(ds.get(time_kw, "") or "").strip().split(".")[0].ljust(6, "0")[:6]
        try:
            return datetime.strptime(text[:8] + clock, "%Y%m%d%H%M%S")
        except ValueError:
            continue
    return None


def _by_sifluoro(ds) -> bool:
    """Whether sifluoro wrote the report (its name in Software Versions, as ``write_rdsr``
    puts it): such a report repeats the device's exposures under event UIDs of its own."""
    versions = ds.get("SoftwareVersions") or []
    versions = [versions] if isinstance(versions, (str, bytes)) else list(versions)
    return any(str(v).startswith("sifluoro ") for v in versions)


#: the SR storage SOP classes' common root, looked for in the file meta (MediaStorageSOPClassUID)
SR_CLASS_PREFIX = b"1.2.840.10008.5.1.4.1.1.88."
META_BYTES = 1024


def names_an_sr_class(path: str | Path) -> bool:
    """Whether a file's first KiB (its meta) names a Structured Report SOP class: a report
    pydicom cannot read (cut short) is still told from an image."""
    with open(path, "rb") as fh:
        return SR_CLASS_PREFIX in fh.read(META_BYTES)


def is_dose_report(ds: Dataset) -> bool:
    """True for an SR whose root concept is X-Ray Radiation Dose Report (113701)."""
    if str(ds.get("SOPClassUID", "")) not in SR_SOP_CLASSES:
        return False
    name = ds.get("ConceptNameCodeSequence")
    return bool(name) and C.key(name[0]) == _K.XRayRadiationDoseReport


def read_rdsr(path: str | Path, ds: Dataset | None = None) -> StudyDose:
    """Read one projection X-ray dose report.

    Parameters
    ----------
    path : str or Path
        The RDSR file (named in errors).
    ds : Dataset, optional
        The already-read dataset, to avoid reading the file twice.

    Returns
    -------
    StudyDose
        ``source="rdsr"``; doses in Gy·cm² and mGy, times in s.

    Raises
    ------
    NotDicomError, UnsupportedDicomError, MissingAttributeError, InputError
        Naming the file and the content item (concept) at fault.
    """
    path = str(path)
    if ds is None:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError as exc:  # pydicom's text advises force=True: not for a user
            raise NotDicomError("not a DICOM file (no DICOM Part 10 'DICM' header)",
                                path=path) from exc
        except Exception as exc:  # the file boundary: any parse failure is this file's fault
            raise NotDicomError(f"cannot be parsed ({type(exc).__name__}: {exc})", path=path) from exc
    try:
        if not is_dose_report(ds):
            sop = UID(str(ds.get("SOPClassUID", "")))
            if sop in SR_SOP_CLASSES and "ConceptNameCodeSequence" not in ds \
                    and "ContentSequence" not in ds:  # an SR that ends before its content
                raise DamagedFileError("the report ends before its content (no root concept, no "
                                       "content sequence): a copy cut short, or damaged",
                                       path=path, tag="(0040,A043) ConceptNameCodeSequence")
            raise UnsupportedDicomError(
                f"not an X-Ray Radiation Dose Report (SOP class {sop.name if sop.is_valid else shown_uid(sop) if sop else 'missing'}, "
                "root concept must be (DCM,113701))", path=path, tag="(0040,A043) ConceptNameCodeSequence")
        return _Reader(path).read(ds)
    except InputError:
        raise
    except Exception as exc:
        if not _from_content(exc):
            raise  # a bug in sifluoro, not a damaged file
        # The type only: pydicom's message may quote the bytes around the damage
        raise DamagedFileError(f"the report's content cannot be parsed ({type(exc).__name__}): "
                               "a length or value in it is damaged; copy it again",
                               path=path) from exc


#: what damaged report content raises while it is read (fuzzing: tests/dose/test_rdsr_fuzz.py,
#: tests/test_reader_fuzz.py): pydicom parses a sequence when it is first walked, i.e. inside
#: the reader, so a damaged length or VR in a content item raises here (OSError, struct.error,
#: NotImplementedError for an unknown VR, BytesLengthException, ValueError for a value, KeyError
#: or IndexError for a broken structure); content nested too deep, RecursionError
_CONTENT_ERRORS = (ValueError, LookupError, OSError, struct.error, NotImplementedError,
                   OverflowError, EOFError, RecursionError, BytesLengthException,
                   InvalidDicomError)
_PYDICOM_DIR = os.path.dirname(pydicom.__file__) + os.sep


def _from_content(exc: Exception) -> bool:
    """``exc``, raised while a report was read, comes from its content: one of
    :data:`_CONTENT_ERRORS`, or an AttributeError or TypeError that pydicom raised (an element
    missing or of the wrong kind). The same two from sifluoro's own code, a NameError, and
    anything else are bugs: they must not read as a damaged file."""
    if isinstance(exc, _CONTENT_ERRORS):
        return True
    if isinstance(exc, (AttributeError, TypeError)):
        frames = traceback.extract_tb(exc.__traceback__)
        return bool(frames) and frames[-1].filename.startswith(_PYDICOM_DIR)
    return False


#: accumulated totals a container may leave out, and what its events must carry to give them
_SUMMABLE = {"dap_gycm2": "dap", "fluoro_dap_gycm2": "dap", "acquisition_dap_gycm2": "dap",
             "air_kerma_mgy": "air_kerma", "fluoro_air_kerma_mgy": "air_kerma",
             "acquisition_air_kerma_mgy": "air_kerma", "fluoro_time_s": "time",
             "acquisition_time_s": "time"}


class _Reader:
    def __init__(self, path: str):
        self.path = path
        # concept key of each content item, by id(): the dataset keeps the items alive while
        # it is read, and walking a container asks again for the items it has just walked
        self._concepts: dict[int, tuple[str, str]] = {}

    # -- content item access -------------------------------------------------------------
    def error(self, cls, message: str, concept) -> InputError:
        return cls(message, path=self.path, tag=C.label(concept))

    def num(self, item: Dataset, quantity: str, most: float | None = None) -> float | None:
        """A NUM item's value in the quantity's target unit (None when it holds no value);
        ``most``: the largest possible, if not the quantity's (:data:`MAX_PLAUSIBLE`)."""
        concept = item.ConceptNameCodeSequence[0]
        measured = item.get("MeasuredValueSequence")
        if not measured:
            return None
        mv = measured[0]
        try:
            value = float(mv.FloatingPointValue) if "FloatingPointValue" in mv else float(mv.NumericValue)
        except (TypeError, ValueError, AttributeError):
            raise self.error(InputError, f"numeric value {_raw(mv, 0x0040A30A)!r} is not a number",
                             concept) from None
        units = mv.get("MeasurementUnitsCodeSequence")
        unit = C.key(units[0])[1] if units else ""
        scale = factor(unit, quantity)
        if scale is None:
            message = (f"unit {unit!r} is not a unit of {quantity.split('_')[0]}; expected "
                       f"e.g. {_EXAMPLE_UNITS[quantity]}")
            if quantity in DOSE_QUANTITIES:
                raise self.error(UnsupportedDicomError, message, concept)
            # a technique or geometry value: the report's dose does not depend on it
            log.warning("%s: %s %s; that value is left out", self.path, C.label(concept), message)
            return None
        value *= scale
        if plausible(value, quantity, most):
            return value
        # NaN, infinite, negative or beyond what X-ray can give: no dose, time or size is; a
        # total made with it is wrong
        message = f"numeric value {value / scale:g} {unit} is not a possible {quantity.split('_')[0]}"
        if math.isfinite(value) and value > 0:
            message += (f" (above {most if most is not None else MAX_PLAUSIBLE[quantity]:g}"
                        f"{_TARGET_UNITS[quantity]})")
        if quantity in DOSE_QUANTITIES and C.key(concept) not in _EVENT_DETAILS:
            raise self.error(InputError, message, concept)
        log.warning("%s: %s %s; that value is left out", self.path, C.label(concept), message)
        return None

    def walk(self, container: Dataset, *, stop: set[tuple[str, str]] = frozenset()) -> Iterator[Dataset]:
        """Content items below ``container``, depth first, not entering ``stop`` containers."""
        for item in container.get("ContentSequence") or []:
            yield item
            if self.concept(item) in stop:
                continue
            yield from self.walk(item, stop=stop)

    def concept(self, item: Dataset) -> tuple[str, str]:
        """``(scheme, value)`` of a content item's concept name, ``("", "")`` without one."""
        found = self._concepts.get(id(item))
        if found is None:
            name = item.get("ConceptNameCodeSequence")
            found = self._concepts[id(item)] = C.key(name[0]) if name else ("", "")
        return found

    @staticmethod
    def code_value(item: Dataset) -> Dataset | None:
        seq = item.get("ConceptCodeSequence")
        return seq[0] if seq else None

    @staticmethod
    def text(item: Dataset) -> str:
        if item.get("ValueType") == "CODE":
            code = _Reader.code_value(item)
            text = str(code.get("CodeMeaning", "") or "") if code is not None else ""
        else:
            text = str(item.get("TextValue", "") or item.get("UID", "") or "").strip()
        # a NUL is no character of a DICOM text (PostgreSQL refused the study for it)
        return text.replace("\x00", "")

    # -- document --------------------------------------------------------------------------
    def read(self, ds: Dataset) -> StudyDose:
        self.by_sifluoro = _by_sifluoro(ds)
        self.totals_partial = False  # a total filled from events that leave it out
        self.utc_offset = utc_offset(str(ds.get("TimezoneOffsetFromUTC", "") or ""))
        for item in ds.get("ContentSequence") or []:
            if self.concept(item) == _K.ProcedureReported:
                code = self.code_value(item)
                if code is not None and C.key(code) in {CT_PROCEDURE, ("SCT", "77477000"), ("SRT", "P5-08000")}:
                    raise self.error(UnsupportedDicomError, "a CT dose report; sifluoro reads "
                                     "projection X-ray dose reports", C.DCM.ProcedureReported)
        device = self.device(ds)
        scope_uid = None
        scope = ""
        sources: set[str] = set()  # the document's Source of Dose Information
        events: list[IrradiationEvent] = []
        planes: list[PlaneTotals] = []
        event_key = _K.IrradiationEventXRayData
        accumulated_key = _K.AccumulatedXRayDoseData
        for item in ds.get("ContentSequence") or []:
            concept = self.concept(item)
            if concept == _K.ScopeOfAccumulation:
                code = self.code_value(item)
                scope = C.SCOPE_CODES.get(C.key(code), "") if code is not None else ""
                for sub in self.walk(item):
                    if self.concept(sub) == _K.StudyInstanceUID:
                        scope_uid = str(sub.get("UID", "")) or None
            elif concept == _K.SourceOfDoseInformation:
                sources |= self.dose_sources([item])
            elif concept == event_key:
                events.append(self.event(item, len(events)))
            elif concept == accumulated_key:
                planes.append(self.accumulated(item))
        study_uid = str(ds.get("StudyInstanceUID", "") or scope_uid or "")
        if not study_uid:
            raise MissingAttributeError("no Study Instance UID in the header nor in the Scope of "
                                        "Accumulation", path=self.path, tag="(0020,000D) StudyInstanceUID")
        # each event's own Source of Dose Information, else the document's (CID 10021): a
        # report of estimates is not a device's measurement
        default = _one_source(sources) if sources else "rdsr"
        events = [e if e.dose_source != "none" else replace(e, dose_source=default) for e in events]
        # an event whose every dose is "Value unknown" has no source, whatever the document's
        events = [replace(e, dose_source="none") if e.air_kerma_mgy is None and e.dap_gycm2 is None
                  else e for e in events]
        from_report = bool(planes)
        totals_given = any(p.air_kerma_mgy is not None or p.dap_gycm2 is not None for p in planes)
        planes = [self.completed(p, events) for p in planes] + self.uncovered(planes, events)
        if not planes:
            if not events:
                raise self.error(MissingAttributeError, "the report holds neither an Accumulated "
                                 "X-Ray Dose container nor any Irradiation Event", C.DCM.AccumulatedXRayDoseData)
            planes = [totals_from_events(p, events) for p in sorted({e.plane for e in events})]
        event_sources = {e.dose_source for e in events}
        if totals_given:  # the accumulated totals, as the document gives them, hold a dose
            event_sources = (event_sources - {"none"}) or {default}
        return StudyDose(study_instance_uid=study_uid, source="rdsr", device=device,
                         events=tuple(events), planes=tuple(planes), path=self.path,
                         dose_source=_study_source(event_sources or {default}),
                         # sifluoro's own totals are its events' sum, which leaves out an
                         # event of unknown dose or beam-on time (a comment says so): lower
                         # bounds then, as read from the images (user review s20 P0, review
                         # s24 #8); a device's count everything
                         planes_from_report=from_report and not self.totals_partial and not (
                             self.by_sifluoro and (events_dose_unknown(events)
                                                   or events_time_unknown(events))),
                         scope_study_instance_uid=scope_uid,
                         by_sifluoro=self.by_sifluoro, created=_created(ds), scope=scope,
                         sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
                         predecessors=_predecessors(ds))

    def uncovered(self, planes: list[PlaneTotals], events: list[IrradiationEvent]) -> list[PlaneTotals]:
        """Totals summed from the events of each plane that has no accumulated container (a
        biplane report with a container for one plane only): otherwise its dose counts nowhere.
        Events that name no plane, in a report with one container, are that container's."""
        if not planes:
            return []
        missing = sorted({e.plane for e in events} - {p.plane for p in planes})
        if len(planes) == 1 and missing == [SINGLE_PLANE]:
            return []
        for plane in missing:
            log.warning("%s: plane %s has irradiation events but no accumulated dose; its "
                        "totals are summed from its events", self.path, plane)
        return [totals_from_events(p, events) for p in missing]

    def completed(self, plane: PlaneTotals, events: list[IrradiationEvent]) -> PlaneTotals:
        """A plane's accumulated totals with each total the container leaves out taken from
        the plane's events, when they carry that quantity (a missing total counted 0)."""
        mine = [e for e in events if e.plane == plane.plane]
        carried = {"dap": any(e.dap_gycm2 is not None for e in mine),
                   "air_kerma": any(e.air_kerma_mgy is not None for e in mine),
                   "time": any(event_duration_s(e) > 0 for e in mine)}
        everywhere = {"dap": all(e.dap_gycm2 is not None for e in mine),
                      "air_kerma": all(e.air_kerma_mgy is not None for e in mine),
                      "time": all(is_timed(e) for e in mine)}
        summed = totals_from_events(plane.plane, mine)
        filled = {name: getattr(summed, name) for name in _SUMMABLE
                  if getattr(plane, name) is None and carried[_SUMMABLE[name]]}
        if not filled:
            return plane
        # some events leave the quantity out: the sum filled in is a lower bound, not the
        # device's total (review s24 #9)
        self.totals_partial |= not all(everywhere[_SUMMABLE[name]] for name in filled)
        log.warning("%s: the accumulated dose of plane %s leaves out %s; taken from its "
                    "irradiation events", self.path, plane.plane, ", ".join(sorted(filled)))
        return replace(plane, **filled)

    def device(self, ds: Dataset) -> Device:
        found = {}
        wanted = {_K.DeviceObserverManufacturer: "manufacturer",
                  _K.DeviceObserverModelName: "model",
                  _K.DeviceObserverSerialNumber: "serial_number",
                  _K.DeviceObserverName: "station_name"}
        for item in ds.get("ContentSequence") or []:
            name = wanted.get(self.concept(item))
            if name and name not in found:
                found[name] = self.text(item)
        return Device(
            manufacturer=found.get("manufacturer") or str(ds.get("Manufacturer", "") or ""),
            model=found.get("model") or str(ds.get("ManufacturerModelName", "") or ""),
            serial_number=found.get("serial_number") or str(ds.get("DeviceSerialNumber", "") or ""),
            station_name=found.get("station_name") or str(ds.get("StationName", "") or ""),
        )

    def plane(self, container: Dataset) -> str:
        for item in container.get("ContentSequence") or []:
            if self.concept(item) == _K.AcquisitionPlane:
                code = self.code_value(item)
                if code is not None:
                    return C.PLANE_CODES.get(C.key(code), str(code.get("CodeMeaning", "") or ""))
        return SINGLE_PLANE

    def accumulated(self, container: Dataset) -> PlaneTotals:
        values: dict[str, float | None] = {}
        reference = ""
        for item in self.walk(container):
            concept = self.concept(item)
            spec = _ACCUMULATED.get(concept)
            if spec is not None and item.get("ValueType") == "NUM" and spec[0] not in values:
                values[spec[0]] = self.num(item, spec[1])
            elif concept == _K.ReferencePointDefinition:
                reference = self.text(item)
        for total, parts in (("dap_gycm2", ("fluoro_dap_gycm2", "acquisition_dap_gycm2")),
                             ("air_kerma_mgy", ("fluoro_air_kerma_mgy", "acquisition_air_kerma_mgy"))):
            # a total not given is its parts' sum, unless one part says "Value unknown" (then
            # it is unknown too: sifluoro's own report of runs of unknown dose read as 0.0)
            if (values.get(total) is None and any(values.get(p) is not None for p in parts)
                    and not any(p in values and values[p] is None for p in parts)):
                values[total] = sum(values.get(p) or 0.0 for p in parts)
        frames = values.pop("n_radiographic_frames", None)
        return PlaneTotals(plane=self.plane(container), reference_point=reference,
                           n_radiographic_frames=None if frames is None else int(round(frames)),
                           **values)

    def event(self, container: Dataset, index: int) -> IrradiationEvent:
        values: dict = {}
        counts: dict[str, int] = {}
        kind = None
        start = None
        pulsed = None
        uid = ""
        reference = protocol = ""
        images: list[str] = []
        filters = {"al": 0.0, "cu": 0.0}
        private: dict[str, float] = {}
        stop = {_K.XRayFilters, _K.IrradiationEventXRayData}
        sources: set[str] = set()
        for item in self.walk(container, stop=stop):
            concept = self.concept(item)
            vt = item.get("ValueType")
            if concept == _K.SourceOfDoseInformation:
                sources |= self.dose_sources([item])
            elif concept == _K.IrradiationEventType:
                code = self.code_value(item)
                if code is not None:
                    kind = _event_kind(code)
            elif concept == _K.DatetimeStarted and vt == "DATETIME":
                start = self.datetime(item, C.DCM.DatetimeStarted)
            elif concept == _K.IrradiationEventUID:
                uid = str(item.get("UID", ""))
            elif concept == _K.ReferencePointDefinition:
                reference = self.text(item)
            elif concept == _K.AcquisitionProtocol:
                protocol = self.text(item)
            elif concept == _K.AcquiredImage:
                images += [str(r.ReferencedSOPInstanceUID) for r in item.get("ReferencedSOPSequence") or []
                           if "ReferencedSOPInstanceUID" in r]
            elif concept == _K.XRayFilters:
                self.filter(item, filters)
            elif concept == _K.FluoroMode:
                kind = kind or FLUOROSCOPY
                code = self.code_value(item)
                mode = C.key(code) if code is not None else None
                pulsed = (True if mode == C.key(C.DCM.Pulsed) else
                          False if mode == C.key(C.DCM.Continuous) else pulsed)
            elif vt == "NUM" and concept in _EVENT:
                name, quantity, how = _EVENT[concept]
                value = self.num(item, quantity, MAX_PULSE_WIDTH_MS if name == "pulse_width_ms" else None)
                if value is None:
                    continue
                if how == "first":
                    values.setdefault(name, value)
                else:  # several values (per pulse, per tube): their mean
                    values[name] = values.get(name, 0.0) + value
                    counts[name] = counts.get(name, 0) + 1
            elif vt == "NUM" and concept[0] == C.PHILIPS_SCHEME:
                value = self.num_quiet(item)
                if value is not None:
                    private.setdefault(concept[1], value)
        for name, n in counts.items():
            values[name] /= n
        if kind is None:
            log.info("%s: event %d has no Irradiation Event Type; counted as acquisition", self.path, index + 1)
            kind = ACQUISITION
        if not uid:
            raise self.error(MissingAttributeError, f"event {index + 1} has no Irradiation Event UID",
                             C.DCM.IrradiationEventUID)
        if "n_pulses" in values:
            values["n_pulses"] = int(round(values["n_pulses"]))
        if filters["al"]:
            values["filter_al_mm"] = filters["al"]
        if filters["cu"]:
            values["filter_cu_mm"] = filters["cu"]
        if values.get("exposure_time_ms") is None and values.get("legacy_exposure_time_ms") is not None:
            values["exposure_time_ms"] = values["legacy_exposure_time_ms"]
        values.pop("legacy_exposure_time_ms", None)
        event = IrradiationEvent(event_uid=uid, kind=kind, plane=self.plane(container), start=start,
                                 dose_source=_one_source(sources) if sources else "none",
                                 reference_point=reference, protocol=protocol,
                                 sop_instance_uids=tuple(images), pulsed=pulsed, **values)
        return _with_philips_private(event, private)

    def dose_sources(self, items) -> set[str]:
        """The dose sources (:data:`C.SOURCE_CODES`) of Source of Dose Information items; a
        code not in CID 10021's projection X-ray meanings counts as the device's. "Computed
        From Image Attributes" is an estimate in sifluoro's report (its technique model) but
        the device's own dose in a device's (Philips computes its DAP and Dose (RP) so)."""
        out = set()
        for item in items:
            code = self.code_value(item)
            if code is not None:
                source = C.SOURCE_CODES.get(C.key(code), "rdsr")
                out.add("rdsr" if source == "estimated" and not self.by_sifluoro else source)
        return out

    def num_quiet(self, item: Dataset) -> float | None:
        """A private NUM value in mm or degrees (units as sent); None if it is not a number."""
        measured = item.get("MeasuredValueSequence")
        try:
            value = float(measured[0].NumericValue) if measured else None
        except (TypeError, ValueError, AttributeError):
            return None
        return value if value is not None and math.isfinite(value) else None

    def filter(self, container: Dataset, filters: dict[str, float]) -> None:
        material = None
        thickness: list[float] = []
        for item in self.walk(container):
            concept = self.concept(item)
            if concept == _K.XRayFilterMaterial:
                code = self.code_value(item)
                if code is not None:
                    k = C.key(code)
                    meaning = str(code.get("CodeMeaning", "")).lower()
                    if k in C.COPPER_CODES or meaning.startswith("copper"):
                        material = "cu"
                    elif k in C.ALUMINUM_CODES or meaning.startswith("alumin"):
                        material = "al"
            elif concept in (_K.XRayFilterThicknessMinimum,
                             _K.XRayFilterThicknessMaximum) and item.get("ValueType") == "NUM":
                value = self.num(item, "length_mm")
                if value is not None:
                    thickness.append(value)
        if material and thickness:
            filters[material] += sum(thickness) / len(thickness)

    def datetime(self, item: Dataset, concept) -> datetime | None:
        text = str(item.get("DateTime", "") or "").strip()
        if not text:
            return None
        try:
            return parse_dt(text, self.utc_offset)  # compared as instants where all have one
        except ValueError:
            raise self.error(InputError, f"date-time {text!r} is not a DICOM DT", concept) from None


def _one_source(sources: set[str]) -> str:
    """One event's dose source from its codes: a value partly estimated is an estimate, partly
    copied from headers a header's (sifluoro writes one code per way its two doses came)."""
    return next(s for s in ("estimated", "reported", "rdsr") if s in sources)


def _study_source(sources: set[str]) -> str:
    used = sources - {"none"} or sources
    return "mixed" if len(used) > 1 else next(iter(used))


def _raw(ds: Dataset, tag: int) -> str:
    """An element's value as stored, without decoding it (for messages about bad values)."""
    try:
        elem = ds.get_item(tag)
        value = elem.value if elem is not None else None
        return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    except Exception:  # the value is what is broken; say so rather than fail again
        return "<undecodable>"


def _event_kind(code: Dataset) -> str:
    k = C.key(code)
    if k in C.FLUOROSCOPY_CODES or "fluoro" in str(code.get("CodeMeaning", "")).lower():
        return FLUOROSCOPY
    return ACQUISITION


def _with_philips_private(event: IrradiationEvent, private: dict[str, float]) -> IrradiationEvent:
    """Fill the collimated field area and SID from Philips' private items where absent."""
    changes = {}
    if (event.sid_mm is None and C.PHILIPS_FINAL_SID in private
            and plausible(private[C.PHILIPS_FINAL_SID], "length_mm")):
        changes["sid_mm"] = private[C.PHILIPS_FINAL_SID]
    edges = {name: private.get(code) for code, name in C.PHILIPS_SHUTTER_EDGES.items()}
    sid_mm = changes.get("sid_mm", event.sid_mm)
    if (event.collimated_field_area_cm2 is None and sid_mm
            and all(v is not None for v in edges.values())):
        # shutter edges are distances from the beam centre in the plane 1 m from the focus
        # (Philips' conformance statement; the devices' own DAP / Dose (RP) agrees with it,
        # not with edges at the detector): projected to the detector, then clipped to it
        scale = sid_mm / 1000.0
        width_mm = (edges["left"] + edges["right"]) * scale
        height_mm = (edges["top"] + edges["bottom"]) * scale
        if C.PHILIPS_DETECTOR_X in private and C.PHILIPS_DETECTOR_Y in private:
            width_mm = min(width_mm, private[C.PHILIPS_DETECTOR_X])
            height_mm = min(height_mm, private[C.PHILIPS_DETECTOR_Y])
        if width_mm > 0 and height_mm > 0:
            changes["collimated_field_area_cm2"] = width_mm * height_mm / 100.0
    return replace(event, **changes) if changes else event


_ACCUMULATED = {
    C.key(C.DCM.DoseAreaProductTotal): ("dap_gycm2", "dap_gycm2"),
    C.key(C.DCM.DoseRPTotal): ("air_kerma_mgy", "dose_mgy"),
    C.key(C.DCM.FluoroDoseAreaProductTotal): ("fluoro_dap_gycm2", "dap_gycm2"),
    C.key(C.DCM.FluoroDoseRPTotal): ("fluoro_air_kerma_mgy", "dose_mgy"),
    C.key(C.DCM.AcquisitionDoseAreaProductTotal): ("acquisition_dap_gycm2", "dap_gycm2"),
    C.key(C.DCM.AcquisitionDoseRPTotal): ("acquisition_air_kerma_mgy", "dose_mgy"),
    C.key(C.DCM.TotalFluoroTime): ("fluoro_time_s", "time_s"),
    C.key(C.DCM.TotalAcquisitionTime): ("acquisition_time_s", "time_s"),
    C.key(C.DCM.TotalNumberOfRadiographicFrames): ("n_radiographic_frames", "count"),
}

_EVENT = {
    C.key(C.DCM.DoseAreaProduct): ("dap_gycm2", "dap_gycm2", "first"),
    C.key(C.DCM.DoseRP): ("air_kerma_mgy", "dose_mgy", "first"),
    C.key(C.DCM.KVP): ("kvp", "voltage_kv", "mean"),
    C.key(C.DCM.XRayTubeCurrent): ("tube_current_ma", "current_ma", "mean"),
    C.key(C.DCM.PulseWidth): ("pulse_width_ms", "time_ms", "mean"),
    C.key(C.DCM.PulseRate): ("pulse_rate_per_s", "rate_per_s", "first"),
    C.key(C.DCM.NumberOfPulses): ("n_pulses", "count", "first"),
    C.key(C.DCM.IrradiationDuration): ("irradiation_duration_s", "time_s", "first"),
    C.key(C.DCM.ExposureTime): ("exposure_time_ms", "time_ms", "first"),
    C.key(C.EXPOSURE_TIME_LEGACY): ("legacy_exposure_time_ms", "time_ms", "first"),
    C.key(C.DCM.Exposure): ("exposure_mas", "charge_mas", "first"),
    C.key(C.DCM.PositionerPrimaryAngle): ("primary_angle_deg", "angle_deg", "first"),
    C.key(C.DCM.PositionerSecondaryAngle): ("secondary_angle_deg", "angle_deg", "first"),
    C.key(C.DCM.DistanceSourceToDetector): ("sid_mm", "length_mm", "first"),
    C.key(C.DCM.DistanceSourceToIsocenter): ("source_to_isocenter_mm", "length_mm", "first"),
    C.key(C.DCM.DistanceSourceToReferencePoint): ("source_to_reference_point_mm", "length_mm", "first"),
    C.key(C.DCM.CollimatedFieldArea): ("collimated_field_area_cm2", "area_cm2", "first"),
}

#: an event's duration and field area: a damaged one is left out with a warning (the event's
#: dose does not depend on it), not the whole report refused (review s17 M2)
_EVENT_DETAILS = {C.key(C.DCM.IrradiationDuration), C.key(C.DCM.CollimatedFieldArea)}

_TARGET_UNITS = {
    "dap_gycm2": " Gy.cm2", "dose_mgy": " mGy", "time_s": " s", "time_ms": " ms",
    "length_mm": " mm", "area_cm2": " cm2", "current_ma": " mA", "charge_mas": " mAs",
    "voltage_kv": " kV", "angle_deg": " deg", "rate_per_s": "/s", "count": "",
}

_EXAMPLE_UNITS = {
    "dap_gycm2": "Gy.m2 or dGy.cm2", "dose_mgy": "Gy or mGy", "time_s": "s", "time_ms": "ms",
    "length_mm": "mm", "area_cm2": "m2", "current_ma": "mA", "charge_mas": "mA.s or uAs",
    "voltage_kv": "kV", "angle_deg": "deg", "rate_per_s": "{pulse}/s", "count": "1", "ratio": "1",
}
