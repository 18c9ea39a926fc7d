"""Build and save X-ray image runs as DICOM: XA, RF, Enhanced XA and multi-frame SC.

Used by the simulator's export and by test fixtures. What is written follows the IODs closely
enough that ``dciodvfy`` reports no errors; tests check that.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    EnhancedXAImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)

from sifluoro.model import Device, Shutter, Technique

TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,
    "jpeg_lossless": JPEGLosslessSV1,
}
STORAGE_SOP_CLASSES = {
    "xa": XRayAngiographicImageStorage,
    "rf": XRayRadiofluoroscopicImageStorage,
    "enhanced_xa": EnhancedXAImageStorage,
    "sc": MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
}
# 011: (0018,1111) holds the source-isocentre distance, as the XA/XRF Positioner modules define
# it (010 and before wrote the simulator's source-skin distance there; the reader knows)
IMPLEMENTATION_VERSION = "SIFLUORO_011"


@dataclass(frozen=True)
class StudyIdentity:
    """Study-level attributes shared by every run of a study (test/simulated identities)."""

    study_instance_uid: str
    study_datetime: datetime
    patient_name: str = "SIMULATED^PATIENT"
    patient_id: str = "SIM-0000"
    patient_sex: str = "O"
    accession_number: str = ""
    study_id: str = "1"
    study_description: str = "SI joint injection"


def _da(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")


def _dt(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f")


def _ds(value: float) -> str:
    """A DS string of at most 16 characters."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"[:16]


def build_run_dataset(
    frames: np.ndarray,
    *,
    storage: str,
    study: StudyIdentity,
    series_instance_uid: str,
    sop_instance_uid: str,
    acquisition_datetime: datetime,
    technique: Technique,
    device: Device,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    series_number: int = 1,
    instance_number: int = 1,
    frame_time_ms: float | None = None,
    frame_time_vector_ms: list[float] | None = None,
    laterality: str | None = None,
    burned_in_annotation: bool = False,
    pixel_intensity_relationship: str = "DISP",
    pixel_intensity_sign: int | None = None,
) -> Dataset:
    """Build one run (one instance) as a DICOM dataset.

    Parameters
    ----------
    frames : ndarray, shape (n, rows, columns), uint8 or uint16
        Stored pixel values.
    storage : {"xa", "rf", "enhanced_xa", "sc"}
        The IOD to write.
    frame_time_ms, frame_time_vector_ms
        Exactly one for multi-frame runs. ``frame_time_vector_ms`` holds the increments from the
        previous frame (its first value is 0), as DICOM defines it.
    pixel_intensity_sign : {-1, 1}, optional
        (0028,1041): -1 when stored values rise with attenuation (bone bright as stored), +1
        when they rise with X-ray intensity (bone dark). Enhanced XA always carries it
        (default: -1 for MONOCHROME2, +1 for MONOCHROME1); XA and RF only when given.

    Returns
    -------
    Dataset
        With ``file_meta`` for Explicit VR Little Endian; :func:`save_dataset` re-encodes.
    """
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if storage not in STORAGE_SOP_CLASSES:
        raise ValueError(f"storage must be one of {sorted(STORAGE_SOP_CLASSES)}, got {storage!r}")
    n, rows, cols = frames.shape
    bits_allocated = 8 if frames.dtype == np.uint8 else 16
    sop_class = STORAGE_SOP_CLASSES[storage]
    if storage == "sc" and bits_allocated == 8:
        sop_class = MultiFrameGrayscaleByteSecondaryCaptureImageStorage
    if n > 1 and storage != "enhanced_xa" and frame_time_ms is None and frame_time_vector_ms is None:
        raise ValueError("a multi-frame run needs frame_time_ms or frame_time_vector_ms")

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = _da(acquisition_datetime)
    ds.InstanceCreationTime = _tm(acquisition_datetime)
    # Patient, study, series, equipment
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = study.patient_sex
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = _da(study.study_datetime)
    ds.StudyTime = _tm(study.study_datetime)
    ds.ReferringPhysicianName = ""
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = study.study_description
    ds.Modality = {"xa": "XA", "enhanced_xa": "XA", "rf": "RF", "sc": "OT"}[storage]
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = _da(acquisition_datetime)
    ds.SeriesTime = _tm(acquisition_datetime)
    ds.Manufacturer = device.manufacturer
    ds.ManufacturerModelName = device.model
    ds.DeviceSerialNumber = device.serial_number
    ds.StationName = device.station_name
    ds.SoftwareVersions = IMPLEMENTATION_VERSION
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["L", "F"] if storage != "enhanced_xa" else None
    if ds.PatientOrientation is None:
        del ds.PatientOrientation
    ds.ContentDate = _da(acquisition_datetime)
    ds.ContentTime = _tm(acquisition_datetime)
    if burned_in_annotation and storage == "enhanced_xa":
        raise ValueError("Enhanced XA admits BurnedInAnnotation NO only (C.8.19.2): store a run "
                         "with identifying text burned in as XA or RF")
    ds.BurnedInAnnotation = "YES" if burned_in_annotation else "NO"
    if laterality:
        ds.ImageLaterality = laterality if storage == "enhanced_xa" else None
        if storage != "enhanced_xa":
            del ds.ImageLaterality
            ds.Laterality = laterality
    # Image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = n
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8 if bits_allocated == 8 else "<u2").tobytes()
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"

    if storage in ("xa", "rf"):
        _add_legacy_xray(ds, storage, n, technique, acquisition_datetime,
                         frame_time_ms, frame_time_vector_ms, pixel_intensity_relationship)
        if pixel_intensity_sign is not None:
            ds.PixelIntensityRelationshipSign = pixel_intensity_sign
    elif storage == "enhanced_xa":
        from sifluoro.io.enhanced_xa import add_enhanced_xa

        add_enhanced_xa(ds, n, technique, acquisition_datetime, frame_time_ms,
                        frame_time_vector_ms, pixel_intensity_relationship, pixel_intensity_sign)
    else:
        _add_secondary_capture(ds, n, acquisition_datetime, frame_time_ms, frame_time_vector_ms)

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return ds


def _add_cine(ds: Dataset, n: int, frame_time_ms, frame_time_vector_ms) -> None:
    if frame_time_vector_ms is not None:
        if len(frame_time_vector_ms) != n:
            raise ValueError(f"frame_time_vector_ms has {len(frame_time_vector_ms)} values for {n} frames")
        ds.FrameTimeVector = [_ds(v) for v in frame_time_vector_ms]
        ds.FrameIncrementPointer = 0x00181065
    elif frame_time_ms is not None:
        ds.FrameTime = _ds(frame_time_ms)
        ds.FrameIncrementPointer = 0x00181063
    if frame_time_ms:
        ds.CineRate = max(1, round(1000.0 / frame_time_ms))


def _add_legacy_xray(ds, storage, n, tech: Technique, when, frame_time_ms, ftv_ms, pir) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE PLANE"]
    ds.AcquisitionDate = _da(when)
    ds.AcquisitionTime = _tm(when)
    ds.AcquisitionDateTime = _dt(when)
    ds.PixelIntensityRelationship = pir
    ds.LossyImageCompression = "00"
    if storage == "xa":
        ds.PositionerMotion = "STATIC"
        ds.PositionerPrimaryAngle = _ds(tech.primary_angle_deg or 0.0)
        ds.PositionerSecondaryAngle = _ds(tech.secondary_angle_deg or 0.0)
    _add_cine(ds, n, frame_time_ms, ftv_ms)
    if tech.frame_time_ms is not None and frame_time_ms is None and ftv_ms is None:
        ds.FrameTime = _ds(tech.frame_time_ms)
    _add_technique(ds, tech)
    if storage == "rf":
        ds.PatientPosition = ""
    if tech.shutter is not None:
        _add_shutter(ds, tech)
    if tech.collimator is not None:
        for keyword, value in collimator_attributes(tech.collimator).items():
            setattr(ds, keyword, value)


def _add_technique(ds: Dataset, tech: Technique) -> None:
    """Attributes of the X-Ray Acquisition module (legacy XA/RF)."""
    ds.KVP = _ds(tech.kvp) if tech.kvp is not None else ""
    ds.RadiationSetting = tech.radiation_setting or "SC"
    ds.RadiationMode = "PULSED" if tech.pulse_width_ms else "CONTINUOUS"
    if tech.tube_current_ma is not None:
        ds.XRayTubeCurrent = int(round(tech.tube_current_ma))
        ds.XRayTubeCurrentInmA = float(tech.tube_current_ma)
    ds.ExposureTime = int(round(tech.exposure_time_ms)) if tech.exposure_time_ms is not None else None
    if tech.exposure_time_ms is not None:
        ds.ExposureTimeInms = float(tech.exposure_time_ms)
    if tech.exposure_mas is not None:
        ds.Exposure = int(round(tech.exposure_mas))
        ds.ExposureInmAs = float(tech.exposure_mas)
    if tech.pulse_width_ms is not None:
        ds.AveragePulseWidth = _ds(tech.pulse_width_ms)
    if tech.sid_mm is not None:
        ds.DistanceSourceToDetector = _ds(tech.sid_mm)
    if tech.source_to_isocenter_mm is not None:
        # XA/XRF Positioner modules: (0018,1111) is the source-isocentre distance (SOD); the
        # source-skin distance has no place in these IODs
        ds.DistanceSourceToPatient = _ds(tech.source_to_isocenter_mm)
    if tech.imager_pixel_spacing_xy_mm is not None:
        sx, sy = tech.imager_pixel_spacing_xy_mm
        ds.ImagerPixelSpacing = [_ds(sy), _ds(sx)]
    if tech.field_of_view_mm is not None:
        shape = tech.field_of_view_shape or "RECTANGLE"
        ds.FieldOfViewShape = shape
        dims = tech.field_of_view_mm[:1] if shape in ("ROUND", "HEXAGONAL") else tech.field_of_view_mm
        ds.FieldOfViewDimensions = [int(round(v)) for v in dims]
    if tech.intensifier_size_mm is not None:
        ds.IntensifierSize = _ds(tech.intensifier_size_mm)
    materials, thickness = filter_layers(tech)
    if materials:
        ds.FilterType = "STRIP" if len(materials) == 1 else "MULTIPLE"
        ds.FilterMaterial = materials
        ds.FilterThicknessMinimum = [_ds(t) for t in thickness]
        ds.FilterThicknessMaximum = [_ds(t) for t in thickness]
    if tech.reported_dap_gycm2 is not None:
        # (0018,115E) is in dGy·cm²
        ds.ImageAndFluoroscopyAreaDoseProduct = _ds(tech.reported_dap_gycm2 * 10.0)
    if tech.reported_air_kerma_mgy is not None:
        ds.EntranceDoseInmGy = _ds(tech.reported_air_kerma_mgy)


def filter_layers(tech: Technique) -> tuple[list[str], list[float]]:
    """Added filtration as DICOM FilterMaterial terms and thicknesses (mm)."""
    layers = [("COPPER", tech.filter_cu_mm), ("ALUMINUM", tech.filter_al_mm)]
    present = [(m, t) for m, t in layers if t]
    return [m for m, _ in present], [t for _, t in present]


def _add_shutter(ds: Dataset, tech: Technique) -> None:
    shapes = []
    if tech.shutter.rect_xyxy is not None:
        x0, y0, x1, y1 = tech.shutter.rect_xyxy
        shapes.append("RECTANGULAR")
        # DICOM shutter edges are 1-based column/row numbers
        ds.ShutterLeftVerticalEdge = x0 + 1
        ds.ShutterRightVerticalEdge = x1 + 1
        ds.ShutterUpperHorizontalEdge = y0 + 1
        ds.ShutterLowerHorizontalEdge = y1 + 1
    if tech.shutter.circle_xyr is not None:
        cx, cy, r = tech.shutter.circle_xyr
        shapes.append("CIRCULAR")
        ds.CenterOfCircularShutter = [int(round(cy)) + 1, int(round(cx)) + 1]
        ds.RadiusOfCircularShutter = int(round(r))
    ds.ShutterShape = shapes


def collimator_attributes(aperture: Shutter) -> dict:
    """The X-Ray Collimator attributes (0018,1700...) of an aperture: 1-based edges, centre as
    (row, column)."""
    out: dict = {"CollimatorShape": []}
    if aperture.rect_xyxy is not None:
        x0, y0, x1, y1 = aperture.rect_xyxy
        out["CollimatorShape"].append("RECTANGULAR")
        out.update(CollimatorLeftVerticalEdge=x0 + 1, CollimatorRightVerticalEdge=x1 + 1,
                   CollimatorUpperHorizontalEdge=y0 + 1, CollimatorLowerHorizontalEdge=y1 + 1)
    if aperture.circle_xyr is not None:
        cx, cy, r = aperture.circle_xyr
        out["CollimatorShape"].append("CIRCULAR")
        out.update(CenterOfCircularCollimator=[int(round(cy)) + 1, int(round(cx)) + 1],
                   RadiusOfCircularCollimator=int(round(r)))
    return out


def _add_secondary_capture(ds: Dataset, n, when, frame_time_ms, ftv_ms) -> None:
    ds.ConversionType = "WSD"
    ds.DateOfSecondaryCapture = _da(when)
    ds.TimeOfSecondaryCapture = _tm(when)
    ds.ImageType = ["DERIVED", "SECONDARY"]
    _add_cine(ds, n, frame_time_ms, ftv_ms)
    if ds.BitsAllocated == 16:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.PresentationLUTShape = "IDENTITY" if ds.PhotometricInterpretation == "MONOCHROME2" else "INVERSE"


def save_dataset(ds: Dataset, path: str | Path, *, transfer_syntax: str = "explicit") -> Path:
    """Encode ``ds`` in ``transfer_syntax`` and write it as a DICOM Part 10 file.

    ``transfer_syntax`` is one of ``explicit``, ``implicit``, ``rle``, ``jpeg2000`` (pydicom's
    encoders) or ``jpeg_lossless`` (JPEG Lossless SV1, transcoded with GDCM).
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}")
    path = Path(path)
    ds = _copy_for_encoding(ds)
    uid = TRANSFER_SYNTAXES[transfer_syntax]
    if transfer_syntax in ("rle", "jpeg2000"):
        # keep the instance's identity: pydicom would otherwise mint a new SOP Instance UID
        ds.compress(uid, encoding_plugin="pylibjpeg" if transfer_syntax == "jpeg2000" else "",
                    generate_instance_uid=False)
        ds.LossyImageCompression = "00"
    elif transfer_syntax == "jpeg_lossless":
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / "plain.dcm"
            ds.save_as(plain, enforce_file_format=True)
            _gdcm_transcode(plain, path, uid)
        return path
    else:
        ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(path, enforce_file_format=True, implicit_vr=uid.is_implicit_VR,
               little_endian=True)
    return path


def _copy_for_encoding(ds: Dataset) -> Dataset:
    """A copy that encoding may change without touching ``ds`` (pixel bytes are shared)."""
    head = Dataset({tag: elem for tag, elem in ds.items() if tag != 0x7FE00010})
    out = copy.deepcopy(head)
    out.file_meta = copy.deepcopy(ds.file_meta)
    if "PixelData" in ds:
        out.PixelData = ds.PixelData
        out["PixelData"].VR = ds["PixelData"].VR
    return out


def _gdcm_transcode(src: Path, dst: Path, uid: UID) -> None:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"GDCM could not read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(uid))))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM could not transcode {src} to {uid}")
    writer = gdcm.ImageWriter()
    tmp = dst.with_suffix(dst.suffix + ".part")
    writer.SetFileName(str(tmp))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM could not write {dst}")
    shutil.move(tmp, dst)


def frame_datetimes(start: datetime, offsets_s: list[float]) -> list[datetime]:
    """Absolute frame times from a start time and offsets in seconds."""
    return [start + timedelta(seconds=float(o)) for o in offsets_s]
