"""Write an X-Ray Radiation Dose SR (TID 10001 Projection X-Ray Radiation Dose) for a study.

The document holds one TID 10002 Accumulated X-Ray Dose container per plane (single plane;
plane A beside a biplane device's report) and one TID 10003 Irradiation Event X-Ray Data
container per run, except runs whose dose is a device report's: that report holds those
events, and the ones that cover no run, and a Comment says they are left out; built from
highdicom's SR content items. Patient and study attributes are copied from the study's first
image header, never invented; the irradiating device's identity comes from the image headers
too. Doses are written in DICOM units (Gy, Gy·m², s). What ``dciodvfy`` checks, tests check.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    XRayRadiationDoseSRStorage,
    generate_uid,
)

from sifluoro.config import DoseSettings
from sifluoro.dicom_time import wall
from sifluoro.dose import sr_codes as C
from sifluoro.dose.accumulate import DoseAccumulator
from sifluoro.dose.records import (ACQUISITION, IrradiationEvent, PlaneTotals, StudyDose,
                                   events_dose_unknown, events_time_unknown, unknown_totals)
from sifluoro.errors import MissingAttributeError
from sifluoro.model import Device, Study
from sifluoro.outfiles import replaced

log = logging.getLogger(__name__)

SOFTWARE_VERSION = "sifluoro 0.1.0"
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientAge", "PatientSize", "PatientWeight", "OtherPatientIDsSequence",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    # a de-identified input's outputs say so too (a research PACS keys on them; review s20 X6)
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
)
TYPE2_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                  "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def write_rdsr(study: Study, dose: DoseAccumulator | StudyDose, path: str | Path, *,
               settings: DoseSettings | None = None, sop_instance_uid: str | None = None,
               series_instance_uid: str | None = None, content_datetime: datetime | None = None
               ) -> Path | None:
    """Write the study's dose as an X-Ray Radiation Dose SR and return its path.

    From a :class:`DoseAccumulator`, the report holds the events sifluoro observed
    (:meth:`DoseAccumulator.own_events`): the device's own report's events stay in that report
    (a Comment says how many are left out). When the device's report gives the dose of every
    run, there is nothing to add to it: nothing is written and None is returned.

    Parameters
    ----------
    study : Study
        The runs (their headers are read again for patient/study identity and start times).
    dose : DoseAccumulator or StudyDose
        The accumulated dose (``source="images"``), one event per run.
    path : str or Path
        Where to write; the file appears complete or not at all (temp file + rename).
    settings : DoseSettings, optional
        Unused for now beyond validation of the reference point; kept for the signature's
        stability.
    sop_instance_uid, series_instance_uid : str, optional
        New UIDs are generated when not given.
    content_datetime : datetime, optional
        Content date/time of the report (default: now).

    Returns
    -------
    Path or None

    Raises
    ------
    MissingAttributeError
        The study has no run, or its first image cannot be read again.
    """
    settings = settings or DoseSettings()
    if not study.runs:
        raise MissingAttributeError("the study has no run to report", tag="(0020,000D) StudyInstanceUID")
    comment = None
    if isinstance(dose, DoseAccumulator):
        record = dose.report_dose(study.study_instance_uid, study.device)
        if dose.device_events:
            if not record.events:
                log.info("the device's dose report gives the dose of every run: no RDSR of "
                         "sifluoro's to add to it")
                return None
            # TID 10001 row 15: the report is not the study's whole dose
            comment = (f"This report holds the irradiation events of the runs that the "
                       f"device's own X-Ray Radiation Dose SR of this study does not give. Its "
                       f"{dose.device_events} irradiation event(s) are in that report and are "
                       "left out here: the accumulated totals are those of the events below.")
    else:
        record = dose
    # force: a run read from a dataset without the Part 10 header (the reader took it)
    headers = [pydicom.dcmread(run.path, stop_before_pixels=True, force=True) for run in study.runs]
    own = [_own_start(h) for h in headers]
    # a run whose header gives no start is placed after the first run's (the reader's start_s)
    starts = {run.sop_instance_uid: start if start is not None else
              (own[0] + timedelta(seconds=run.start_s) if own[0] is not None else None)
              for run, start in zip(study.runs, own)}
    placed = sum(1 for run, start in zip(study.runs, own)
                 if start is None and starts[run.sop_instance_uid] is not None)
    if placed:  # a start the header does not give is not to be taken for the run's own
        comment = _joined(comment, (
            f"{placed} irradiation event(s) are of runs stored without acquisition or content "
            "time: their DateTime Started is the end of the runs before them, not their own "
            "(unknown)."))
    ds = build_rdsr_dataset(record, headers[0], study, starts, comment=comment,
                            sop_instance_uid=sop_instance_uid or generate_uid(),
                            series_instance_uid=series_instance_uid or generate_uid(),
                            content_datetime=content_datetime or datetime.now())
    path = Path(path)
    with replaced(path, "wb") as out:
        ds.save_as(out, enforce_file_format=True)
    return path


def _own_start(header: Dataset) -> datetime | None:
    from sifluoro.acquire.header import _Lookup, run_start

    return run_start(_Lookup(header))


def _joined(*comments: str | None) -> str:
    """The comments given, in one (TID 10001 row 15 takes one Comment)."""
    return " ".join(c for c in comments if c)


def build_rdsr_dataset(record: StudyDose, first_image: Dataset, study: Study,
                       starts: dict[str, datetime | None], *, sop_instance_uid: str,
                       comment: str | None = None,
                       series_instance_uid: str, content_datetime: datetime) -> Dataset:
    """The RDSR as a pydicom Dataset (with file meta), from a StudyDose and an image header."""
    device = record.device
    ds = Dataset()
    ds.SpecificCharacterSet = first_image.get("SpecificCharacterSet", "ISO_IR 192")
    ds.SOPClassUID = XRayRadiationDoseSRStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = content_datetime.strftime("%Y%m%d")
    ds.InstanceCreationTime = content_datetime.strftime("%H%M%S")
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in first_image and first_image[keyword].value not in (None, ""):
            ds[keyword] = first_image[keyword]
        elif keyword in TYPE2_KEYWORDS:
            setattr(ds, keyword, "")
    ds.StudyInstanceUID = record.study_instance_uid
    # SR Document Series
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = 999
    ds.SeriesDescription = "Radiation Dose Report"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    # Enhanced General Equipment: the irradiating device, as its images name it
    ds.Manufacturer = device.manufacturer or _missing("Manufacturer")
    ds.ManufacturerModelName = device.model or _missing("ManufacturerModelName")
    ds.DeviceSerialNumber = device.serial_number or _missing("DeviceSerialNumber")
    if device.station_name:
        ds.StationName = device.station_name
    ds.SoftwareVersions = [str(v) for v in _as_list(first_image.get("SoftwareVersions"))] + [SOFTWARE_VERSION]
    # SR Document General and Content
    ds.InstanceNumber = 1
    ds.ContentDate = content_datetime.strftime("%Y%m%d")
    ds.ContentTime = content_datetime.strftime("%H%M%S")
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(study)
    root = content_tree(record, starts, study, comment)
    for element in root:
        ds[element.tag] = element
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "SIFLUORO_010"
    return ds


def _missing(keyword: str) -> str:
    log.warning("the images carry no %s; the dose report says UNKNOWN", keyword)
    return "UNKNOWN"


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def _evidence(study: Study) -> Sequence:
    series: dict[str, list] = {}
    for run in study.runs:
        series.setdefault(run.series_instance_uid, []).append(run)
    study_item = Dataset()
    study_item.StudyInstanceUID = study.study_instance_uid
    study_item.ReferencedSeriesSequence = Sequence()
    for uid, runs in series.items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        item.ReferencedSOPSequence = Sequence()
        for run in runs:
            ref = Dataset()
            ref.ReferencedSOPClassUID = run.sop_class_uid
            ref.ReferencedSOPInstanceUID = run.sop_instance_uid
            item.ReferencedSOPSequence.append(ref)
        study_item.ReferencedSeriesSequence.append(item)
    return Sequence([study_item])


def content_tree(record: StudyDose, starts: dict[str, datetime | None], study: Study,
                 comment: str | None = None) -> Dataset:
    """The root CONTAINER (TID 10001) with its content, as a highdicom content item; ``comment``
    (TID 10001 row 15, one at most) says what the report leaves out."""
    CONTAINS, CONCEPT_MOD, OBS_CONTEXT, PROPERTIES = (
        "CONTAINS", "HAS CONCEPT MOD", "HAS OBS CONTEXT", "HAS PROPERTIES")
    root = hd.sr.ContainerContentItem(C.DCM.XRayRadiationDoseReport, template_id="10001")
    procedure = hd.sr.CodeContentItem(C.DCM.ProcedureReported, C.DCM.ProjectionXRay, CONCEPT_MOD)
    # TID 10001: Has Intent, required for a projection X-ray procedure (every vendor report
    # carries it); an SI-joint injection both confirms (anaesthetic) and treats (steroid)
    procedure.ContentSequence = hd.sr.ContentSequence([
        hd.sr.CodeContentItem(C.HAS_INTENT, C.COMBINED_INTENT, CONCEPT_MOD)])
    items: list = [procedure]
    items += _device_observer(record.device, OBS_CONTEXT)
    scope = hd.sr.CodeContentItem(C.DCM.ScopeOfAccumulation, C.DCM.Study, OBS_CONTEXT)
    scope.ContentSequence = hd.sr.ContentSequence([
        hd.sr.UIDRefContentItem(C.DCM.StudyInstanceUID, record.study_instance_uid, PROPERTIES)])
    items.append(scope)
    sop_class = {run.sop_instance_uid: run.sop_class_uid for run in study.runs}
    timed = []
    for event in record.events:
        start = next((starts.get(uid) for uid in event.sop_instance_uids if starts.get(uid)),
                     event.start)  # a device report's event that names no image: its own
        timed.append((event, start))
    known = [(s, e) for e, s in timed if s is not None]
    if known:
        # as instants when every one carries a UTC offset, else on the wall clock
        key = (lambda t: t) if all(s.tzinfo for s, _ in known) else wall
        first = min((s for s, _ in known), key=key)
        last = max((s + timedelta(seconds=e.irradiation_duration_s or 0.0) for s, e in known),
                   key=key)
        items.append(hd.sr.DateTimeContentItem(C.DCM.StartOfXRayIrradiation, first, CONTAINS))
        items.append(hd.sr.DateTimeContentItem(C.DCM.EndOfXRayIrradiation, last, CONTAINS))
    for plane in record.planes:
        items.append(_accumulated(plane, record.events))
    for event, start in timed:
        items.append(_event(event, start, sop_class))
    partial = events_dose_unknown(record.events)
    if partial and not unknown_totals(record.events, record.planes) >= {"dap_gycm2", "air_kerma_mgy"}:
        # TID 10001 row 15 (Comment, VM 1): CID 42 has no qualifier for a partial sum, and the
        # events themselves say "Value unknown"
        comment = _joined(comment, (
            f"The accumulated dose totals leave out {partial} irradiation event(s) whose Dose "
            "(RP) or Dose Area Product is unknown (Value unknown): the totals are lower "
            "bounds."))
    untimed = events_time_unknown(record.events)
    if untimed:
        comment = _joined(comment, (
            f"The accumulated fluoroscopy and acquisition times leave out {untimed} irradiation "
            "event(s) whose beam-on time is unknown (no usable frame timing): they are lower "
            "bounds."))
    if comment:
        items.append(hd.sr.TextContentItem(codes.DCM.Comment, comment, CONTAINS))
    used = set().union(*(_sources(e) for e in record.events)) if record.events else set()
    # TID 10001 requires one: a study whose dose is wholly unknown keeps the image path's code
    for code in _source_codes(used) or [C.DCM.ComputedFromImageAttributes]:
        items.append(hd.sr.CodeContentItem(C.DCM.SourceOfDoseInformation, code, CONTAINS))
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def _device_observer(device: Device, rel: str) -> list:
    uid = generate_uid(entropy_srcs=["sifluoro device", device.manufacturer, device.model,
                                     device.serial_number, device.station_name])
    out = [hd.sr.CodeContentItem(C.DCM.ObserverType, C.DCM.Device, rel),
           hd.sr.UIDRefContentItem(C.DCM.DeviceObserverUID, uid, rel)]
    for concept, value in ((C.DCM.DeviceObserverName, device.station_name),
                           (C.DCM.DeviceObserverManufacturer, device.manufacturer),
                           (C.DCM.DeviceObserverModelName, device.model),
                           (C.DCM.DeviceObserverSerialNumber, device.serial_number)):
        if value:
            out.append(hd.sr.TextContentItem(concept, value, rel))
    return out


def _num(concept, value: float | None, unit, scale: float = 1.0):
    if value is None:
        return None
    return hd.sr.NumContentItem(concept, float(value) * scale, unit, relationship_type="CONTAINS")


def _unknown_num(concept, unit):
    """A NUM the template requires whose value is not known: no measured value, qualified
    "Value unknown" (CID 42), so no reader takes it for a measured zero."""
    item = hd.sr.NumContentItem(concept, 0.0, unit, relationship_type="CONTAINS")
    item.MeasuredValueSequence = []
    item.NumericValueQualifierCodeSequence = [hd.sr.CodedConcept.from_code(codes.DCM.ValueUnknown)]
    return item


def _reference_point(text: str):
    return C.RP_30CM_FROM_IMAGE_INPUT if "30cm" in text.replace(" ", "") else C.RP_15CM_FROM_ISOCENTER


def _accumulated(plane: PlaneTotals, events: tuple[IrradiationEvent, ...]):
    container = hd.sr.ContainerContentItem(C.DCM.AccumulatedXRayDoseData, template_id="10002",
                                           relationship_type="CONTAINS")
    items = [hd.sr.CodeContentItem(C.DCM.AcquisitionPlane, C.PLANE_BY_NAME.get(plane.plane, C.DCM.SinglePlane),
                                   "HAS CONCEPT MOD")]
    unknown = _unknown_totals(plane, events)
    # Gy·cm² → Gy·m²: × 1e-4; mGy → Gy: × 1e-3
    for concept, value, unit, scale in (
            (C.DCM.FluoroDoseAreaProductTotal, plane.fluoro_dap_gycm2, C.GY_M2, 1e-4),
            (C.DCM.FluoroDoseRPTotal, plane.fluoro_air_kerma_mgy, C.GY, 1e-3),
            (C.DCM.TotalFluoroTime, plane.fluoro_time_s, C.SECOND, 1.0),
            (C.DCM.AcquisitionDoseAreaProductTotal, plane.acquisition_dap_gycm2, C.GY_M2, 1e-4),
            (C.DCM.AcquisitionDoseRPTotal, plane.acquisition_air_kerma_mgy, C.GY, 1e-3),
            (C.DCM.TotalAcquisitionTime, plane.acquisition_time_s, C.SECOND, 1.0),
            (C.DCM.DoseAreaProductTotal, plane.dap_gycm2, C.GY_M2, 1e-4),
            (C.DCM.DoseRPTotal, plane.air_kerma_mgy, C.GY, 1e-3),
            (C.DCM.TotalNumberOfRadiographicFrames, plane.n_radiographic_frames, C.NO_UNITS, 1.0)):
        if concept in unknown:  # no event of the plane knows it: never a measured 0
            items.append(_unknown_num(concept, unit))
            continue
        item = _num(concept, value if value is not None else 0.0, unit, scale)
        items.append(item)
    reference = plane.reference_point or next((e.reference_point for e in events if e.reference_point), "")
    items.append(hd.sr.CodeContentItem(C.DCM.ReferencePointDefinition, _reference_point(reference), "CONTAINS"))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _sources(event: IrradiationEvent) -> set[str]:
    """Where the event's air kerma and DAP come from ("none": unknown)."""
    return {event.air_kerma_source or event.dose_source, event.dap_source or event.dose_source}


def _source_codes(sources: set[str]) -> list:
    """CID 10021 codes for the ways the values were obtained: a device's own dose report is
    collected automatically from the equipment, an image header's value is copied, the
    technique model's is computed."""
    return [code for source, code in (("rdsr", codes.DCM.AutomatedDataCollection),
                                      ("reported", C.DCM.CopiedFromImageAttributes),
                                      ("estimated", C.DCM.ComputedFromImageAttributes))
            if source in sources]


#: the accumulated totals' concepts by :data:`DOSE_TOTALS` field
_TOTAL_CONCEPT = {"dap_gycm2": C.DCM.DoseAreaProductTotal, "air_kerma_mgy": C.DCM.DoseRPTotal,
                  "fluoro_dap_gycm2": C.DCM.FluoroDoseAreaProductTotal,
                  "fluoro_air_kerma_mgy": C.DCM.FluoroDoseRPTotal,
                  "acquisition_dap_gycm2": C.DCM.AcquisitionDoseAreaProductTotal,
                  "acquisition_air_kerma_mgy": C.DCM.AcquisitionDoseRPTotal}


def _unknown_totals(plane: PlaneTotals, events: tuple[IrradiationEvent, ...]) -> set:
    """The concepts of the dose totals of ``plane`` that none of its events knows (a study
    whose runs carry no dose and no technique): written as unknown, not as the 0 their sum gives."""
    fields = unknown_totals([e for e in events if e.plane == plane.plane], [plane])
    return {_TOTAL_CONCEPT[f] for f in fields}


def _event(event: IrradiationEvent, start: datetime | None, sop_class: dict[str, str]):
    container = hd.sr.ContainerContentItem(C.DCM.IrradiationEventXRayData, template_id="10003",
                                           relationship_type="CONTAINS")
    acquisition = event.kind == ACQUISITION
    items = [hd.sr.CodeContentItem(C.DCM.AcquisitionPlane, C.PLANE_BY_NAME.get(event.plane, C.DCM.SinglePlane),
                                   "HAS CONCEPT MOD")]
    if start is not None:
        items.append(hd.sr.DateTimeContentItem(C.DCM.DatetimeStarted, start, "CONTAINS"))
    items.append(hd.sr.CodeContentItem(C.DCM.IrradiationEventType,
                                       C.DCM.StationaryAcquisition if acquisition else C.FLUOROSCOPY,
                                       "CONTAINS"))
    if event.protocol:
        items.append(hd.sr.TextContentItem(C.DCM.AcquisitionProtocol, event.protocol, "CONTAINS"))
    items.append(hd.sr.CodeContentItem(C.DCM.ReferencePointDefinition,
                                       _reference_point(event.reference_point), "CONTAINS"))
    items.append(hd.sr.UIDRefContentItem(C.DCM.IrradiationEventUID, event.event_uid, "CONTAINS"))
    for uid in event.sop_instance_uids:
        if uid in sop_class:
            items.append(hd.sr.ImageContentItem(C.DCM.AcquiredImage, sop_class[uid], uid, relationship_type="CONTAINS"))
    for concept, value, unit, scale, required in (
            (C.DCM.DoseAreaProduct, event.dap_gycm2, C.GY_M2, 1e-4, True),
            (C.DCM.DoseRP, event.air_kerma_mgy, C.GY, 1e-3, True),
            (C.DCM.PositionerPrimaryAngle, event.primary_angle_deg, C.DEGREE, 1.0, False),
            (C.DCM.PositionerSecondaryAngle, event.secondary_angle_deg, C.DEGREE, 1.0, False),
            (C.DCM.CollimatedFieldArea, event.collimated_field_area_cm2, C.SQUARE_METER, 1e-4, False)):
        item = _num(concept, value, unit, scale)
        if item is None and required:  # required by TID 10003; never written as 0
            item = _unknown_num(concept, unit)
        if item is not None:
            items.append(item)
    filters = [(C.COPPER, event.filter_cu_mm), (C.ALUMINUM, event.filter_al_mm)]
    if any(mm for _, mm in filters):
        for material, mm in filters:
            if mm:
                box = hd.sr.ContainerContentItem(C.DCM.XRayFilters, relationship_type="CONTAINS")
                box.ContentSequence = hd.sr.ContentSequence([
                    hd.sr.CodeContentItem(C.DCM.XRayFilterType, C.DCM.StripFilter, "CONTAINS"),
                    hd.sr.CodeContentItem(C.DCM.XRayFilterMaterial, material, "CONTAINS"),
                    _num(C.DCM.XRayFilterThicknessMinimum, mm, C.MILLIMETER),
                    _num(C.DCM.XRayFilterThicknessMaximum, mm, C.MILLIMETER)])
                items.append(box)
    else:
        box = hd.sr.ContainerContentItem(C.DCM.XRayFilters, relationship_type="CONTAINS")
        box.ContentSequence = hd.sr.ContentSequence([
            hd.sr.CodeContentItem(C.DCM.XRayFilterType, C.DCM.NoFilter, "CONTAINS")])
        items.append(box)
    if not acquisition:
        pulsed = event.pulsed if event.pulsed is not None else bool(event.pulse_width_ms)
        items.append(hd.sr.CodeContentItem(C.DCM.FluoroMode,
                                           C.DCM.Pulsed if pulsed else C.DCM.Continuous,
                                           "CONTAINS"))
    exposure_uas = event.exposure_mas * 1000.0 if event.exposure_mas is not None else None
    for concept, value, unit in (
            (C.DCM.PulseRate, event.pulse_rate_per_s, C.PULSE_PER_SECOND),
            (C.DCM.NumberOfPulses, event.n_pulses, C.NO_UNITS),
            (C.DCM.IrradiationDuration, event.irradiation_duration_s, C.SECOND),
            (C.DCM.KVP, event.kvp, C.KILOVOLT),
            (C.DCM.XRayTubeCurrent, event.tube_current_ma, C.MILLIAMPERE),
            (C.DCM.PulseWidth, event.pulse_width_ms, C.MILLISECOND),
            (C.DCM.ExposureTime, event.exposure_time_ms, C.MILLISECOND),
            (C.DCM.Exposure, exposure_uas, C.MICROAMPERE_SECOND),
            (C.DCM.DistanceSourceToDetector, event.sid_mm, C.MILLIMETER),
            (C.DCM.DistanceSourceToIsocenter, event.source_to_isocenter_mm, C.MILLIMETER)):
        item = _num(concept, value, unit)
        if item is not None:
            items.append(item)
    # one code per way the dose values were obtained (a header's DAP copied, its air kerma
    # computed); none for a dose that is unknown
    for code in _source_codes(_sources(event)):
        items.append(hd.sr.CodeContentItem(C.DCM.SourceOfDoseInformation, code, "CONTAINS"))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container
