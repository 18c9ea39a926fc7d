"""Build vendor-style RDSRs in code, one quirk at a time (plain pydicom, independent of the writer)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, XRayRadiationDoseSRStorage, generate_uid


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(rel: str, vt: str, name: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.RelationshipType = rel
    item.ValueType = vt
    item.ConceptNameCodeSequence = Sequence([code(*name)])
    return item


def num(name, value, unit, rel="CONTAINS") -> Dataset:
    item = _item(rel, "NUM", name)
    mv = Dataset()
    mv.NumericValue = f"{value:.10g}"[:16]
    mv.MeasurementUnitsCodeSequence = Sequence([code(unit, "UCUM", unit)])
    item.MeasuredValueSequence = Sequence([mv])
    return item


def coded(name, value, rel="CONTAINS") -> Dataset:
    item = _item(rel, "CODE", name)
    item.ConceptCodeSequence = Sequence([code(*value)])
    return item


def text(name, value, rel="CONTAINS") -> Dataset:
    item = _item(rel, "TEXT", name)
    item.TextValue = value
    return item


def uidref(name, value, rel="CONTAINS") -> Dataset:
    item = _item(rel, "UIDREF", name)
    item.UID = value
    return item


def container(name, children, rel="CONTAINS") -> Dataset:
    item = _item(rel, "CONTAINER", name)
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = Sequence(children)
    return item


N = {  # concept names
    "dap_total": ("113722", "DCM", "Dose Area Product Total"),
    "rp_total": ("113725", "DCM", "Dose (RP) Total"),
    "fl_dap": ("113726", "DCM", "Fluoro Dose Area Product Total"),
    "fl_rp": ("113728", "DCM", "Fluoro Dose (RP) Total"),
    "acq_dap": ("113727", "DCM", "Acquisition Dose Area Product Total"),
    "acq_rp": ("113729", "DCM", "Acquisition Dose (RP) Total"),
    "fl_time": ("113730", "DCM", "Total Fluoro Time"),
    "acq_time": ("113855", "DCM", "Total Acquisition Time"),
    "plane": ("113764", "DCM", "Acquisition Plane"),
    "accum": ("113702", "DCM", "Accumulated X-Ray Dose Data"),
    "event": ("113706", "DCM", "Irradiation Event X-Ray Data"),
    "type": ("113721", "DCM", "Irradiation Event Type"),
    "uid": ("113769", "DCM", "Irradiation Event UID"),
    "dap": ("122130", "DCM", "Dose Area Product"),
    "rp": ("113738", "DCM", "Dose (RP)"),
    "kvp": ("113733", "DCM", "KVP"),
    "ma": ("113734", "DCM", "X-Ray Tube Current"),
    "pw": ("113793", "DCM", "Pulse Width"),
    "rate": ("113791", "DCM", "Pulse Rate"),
    "pulses": ("113768", "DCM", "Number of Pulses"),
    "duration": ("113742", "DCM", "Irradiation Duration"),
    "sid": ("113750", "DCM", "Distance Source to Detector"),
    "sic": ("113748", "DCM", "Distance Source to Isocenter"),
    "area": ("113790", "DCM", "Collimated Field Area"),
    "filters": ("113771", "DCM", "X-Ray Filters"),
    "material": ("113757", "DCM", "X-Ray Filter Material"),
    "thick_min": ("113758", "DCM", "X-Ray Filter Thickness Minimum"),
    "thick_max": ("113773", "DCM", "X-Ray Filter Thickness Maximum"),
}
PLANES = {"A": ("113620", "DCM", "Plane A"), "B": ("113621", "DCM", "Plane B"),
          "single": ("113622", "DCM", "Single Plane")}
FLUORO = ("P5-06000", "SRT", "Fluoroscopy")
ACQ = ("113611", "DCM", "Stationary Acquisition")


@dataclass
class Ev:
    """One event to write: plane, kind, DAP in Gy·cm², Dose (RP) in mGy, and technique."""

    plane: str = "single"
    fluoro: bool = True
    dap_gycm2: float = 1.0
    rp_mgy: float = 2.0
    kvp: float | None = 75.0
    pulses: int = 10
    rate: float = 7.5
    extra: list = field(default_factory=list)
    uid: str | None = None
    has_type: bool = True


DAP_UNITS = {"Gy.m2": 1e-4, "Gym2": 1e-4, "dGy.cm2": 10.0, "mGy.cm2": 1000.0, "uGy.m2": 100.0,
             "Gy.cm2": 1.0}
DOSE_UNITS = {"Gy": 1e-3, "mGy": 1.0, "uGy": 1000.0}


def event_item(ev: Ev, dap_unit: str, dose_unit: str) -> Dataset:
    children = [coded(N["plane"], PLANES[ev.plane], "HAS CONCEPT MOD")]
    if ev.has_type:
        children.append(coded(N["type"], FLUORO if ev.fluoro else ACQ))
    if ev.uid != "":
        children.append(uidref(N["uid"], ev.uid or generate_uid()))
    children += [num(N["dap"], ev.dap_gycm2 * DAP_UNITS[dap_unit], dap_unit),
                 num(N["rp"], ev.rp_mgy * DOSE_UNITS[dose_unit], dose_unit)]
    if ev.kvp is not None:
        children.append(num(N["kvp"], ev.kvp, "kV"))
    children += [num(N["rate"], ev.rate, "{pulse}/s"), num(N["pulses"], ev.pulses, "1")]
    children += ev.extra
    return container(N["event"], children)


def accumulated_item(plane: str, totals: dict[str, float], dap_unit: str, dose_unit: str) -> Dataset:
    children = [coded(N["plane"], PLANES[plane], "HAS CONCEPT MOD")]
    for key, value in totals.items():
        if key.endswith("time"):
            children.append(num(N[key], value, "s"))
        elif "dap" in key:
            children.append(num(N[key], value * DAP_UNITS[dap_unit], dap_unit))
        else:
            children.append(num(N[key], value * DOSE_UNITS[dose_unit], dose_unit))
    return container(N["accum"], children)


def build_rdsr(events: list[Ev], *, accumulated: dict[str, dict[str, float]] | None = "auto",
               dap_unit: str = "Gy.m2", dose_unit: str = "Gy", template: bool = True,
               study_uid: str | None = None, manufacturer: str = "Vendor", model: str = "Model X",
               procedure: tuple[str, str, str] = ("113704", "DCM", "Projection X-Ray"),
               sop_class: str = XRayRadiationDoseSRStorage) -> Dataset:
    """An RDSR with the given events; ``accumulated="auto"`` sums them per plane."""
    if accumulated == "auto":
        accumulated = {}
        for ev in events:
            t = accumulated.setdefault(ev.plane, {k: 0.0 for k in ("dap_total", "rp_total", "fl_dap", "fl_rp",
                                                                    "fl_time", "acq_dap", "acq_rp", "acq_time")})
            t["dap_total"] += ev.dap_gycm2
            t["rp_total"] += ev.rp_mgy
            prefix = "fl" if ev.fluoro else "acq"
            t[f"{prefix}_dap"] += ev.dap_gycm2
            t[f"{prefix}_rp"] += ev.rp_mgy
            t[f"{prefix}_time"] += ev.pulses / ev.rate
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.PatientName = "TEST^RDSR"
    ds.PatientID = "RDSR-1"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([code("113701", "DCM", "X-Ray Radiation Dose Report")])
    ds.ContinuityOfContent = "SEPARATE"
    if template:
        t = Dataset()
        t.MappingResource, t.TemplateIdentifier = "DCMR", "10001"
        ds.ContentTemplateSequence = Sequence([t])
    content = [coded(("121058", "DCM", "Procedure reported"), procedure, "HAS CONCEPT MOD"),
               text(("121014", "DCM", "Device Observer Manufacturer"), manufacturer, "HAS OBS CONTEXT"),
               text(("121015", "DCM", "Device Observer Model Name"), model, "HAS OBS CONTEXT")]
    for plane, totals in (accumulated or {}).items():
        content.append(accumulated_item(plane, totals, dap_unit, dose_unit))
    content += [event_item(ev, dap_unit, dose_unit) for ev in events]
    ds.ContentSequence = Sequence(content)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def acquired(sop_instance_uid: str, sop_class_uid: str) -> Dataset:
    """An Acquired Image item (an event's ``extra``) naming a stored instance."""
    item = _item("CONTAINS", "IMAGE", ("113795", "DCM", "Acquired Image"))
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class_uid, sop_instance_uid
    item.ReferencedSOPSequence = Sequence([ref])
    return item
