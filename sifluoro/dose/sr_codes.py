"""Coded concepts of the Projection X-Ray Radiation Dose SR (TID 10001-10003), in one place.

Codes come from pydicom's ``codes.DCM``/``codes.SCT`` where it has them; the few it lacks are
spelled out once here. Readers also accept the legacy SNOMED-RT (``SRT``) codes that devices
still send.
"""
from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

DCM, SCT, UCUM = codes.DCM, codes.SCT, codes.UCUM

HAS_INTENT = SCT.HasIntent
COMBINED_INTENT = SCT.CombinedDiagnosticAndTherapeuticIntent
RP_15CM_FROM_ISOCENTER = DCM._15cmFromIsocenterTowardSource
RP_30CM_FROM_IMAGE_INPUT = DCM._30cmInFrontOfImageInputSurface
FLUOROSCOPY = SCT.Fluoroscopy
COPPER = SCT.Copper
ALUMINUM = SCT.Aluminum
EXPOSURE_TIME_LEGACY = DCM.ExposureTime_Retired

# (scheme, value) pairs that mean the same thing across code generations
FLUOROSCOPY_CODES = {("SCT", "44491008"), ("SRT", "P5-06000"), ("SNM3", "P5-06000")}
ACQUISITION_CODES = {("DCM", "113611"), ("DCM", "113612"), ("DCM", "113613")}
COPPER_CODES = {("SCT", "66925006"), ("SRT", "C-127F9"), ("SRT", "C-127F9 ")}
ALUMINUM_CODES = {("SCT", "12503006"), ("SRT", "C-120F9")}
PLANE_CODES = {("DCM", "113620"): "A", ("DCM", "113621"): "B", ("DCM", "113622"): "single"}
#: Scope of Accumulation (CID 10000): a Study report covers the whole study so far (a later
#: one supersedes it), a Performed Procedure Step report one step (reports of steps add up)
SCOPE_CODES = {("DCM", "113014"): "study", ("DCM", "113015"): "series",
               ("DCM", "113016"): "pps", ("DCM", "113852"): "event"}
#: Source of Dose Information (CID 10021) -> a dose_source: the device's own measurement or
#: calculation, a value copied from image headers, a value computed (a model's estimate)
SOURCE_CODES = {("DCM", "113856"): "rdsr", ("DCM", "113857"): "rdsr", ("DCM", "113868"): "rdsr",
                ("DCM", "113866"): "reported", ("DCM", "113867"): "estimated"}
PLANE_BY_NAME = {"A": DCM.PlaneA, "B": DCM.PlaneB, "single": DCM.SinglePlane}

# Philips' private collimation, used when the standard Collimated Field Area is absent
PHILIPS_SCHEME = "99PHI-IXR-XPER"
PHILIPS_SHUTTERS = "005"
PHILIPS_SHUTTER_EDGES = {"006": "bottom", "007": "left", "008": "right", "009": "top"}
PHILIPS_DETECTOR_FIELD = "023"
PHILIPS_DETECTOR_X, PHILIPS_DETECTOR_Y = "024", "025"
PHILIPS_FINAL_SID = "018"


def key(code) -> tuple[str, str]:
    """``(scheme, value)`` of a pydicom ``Code`` or a code sequence item."""
    if isinstance(code, Code):
        return code.scheme_designator, code.value
    value = getattr(code, "CodeValue", None) or getattr(code, "LongCodeValue", None) \
        or getattr(code, "URNCodeValue", "")
    return str(getattr(code, "CodingSchemeDesignator", "")).strip(), str(value).strip()


def label(code) -> str:
    """``"(DCM,113722) Dose Area Product Total"`` — how errors name a concept."""
    scheme, value = key(code)
    meaning = code.meaning if isinstance(code, Code) else getattr(code, "CodeMeaning", "")
    return f"({scheme},{value}) {meaning}".strip()

# measurement units: pydicom's codes.UCUM where it has them, the rest spelled as UCUM writes them
GY = UCUM.Gy
GY_M2 = Code("Gy.m2", "UCUM", "Gy.m2")
SECOND = UCUM.Second
MILLISECOND = UCUM.Millisecond
KILOVOLT = UCUM.Kilovolt
MILLIAMPERE = Code("mA", "UCUM", "mA")
MICROAMPERE_SECOND = Code("uAs", "UCUM", "uAs")
MILLIMETER = UCUM.Millimeter
DEGREE = UCUM.Degree
SQUARE_METER = Code("m2", "UCUM", "m2")
PULSE_PER_SECOND = Code("{pulse}/s", "UCUM", "pulse/s")
NO_UNITS = UCUM.NoUnits
