"""Enhanced XA specifics: functional groups and the modules the legacy XA IOD does not have."""
from __future__ import annotations

from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from sifluoro.io.dicom_writer import _dt, collimator_attributes, filter_layers
from sifluoro.model import Technique


def _item(**attrs) -> Dataset:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def add_enhanced_xa(ds: Dataset, n: int, tech: Technique, when: datetime,
                    frame_time_ms: float | None, frame_time_vector_ms: list[float] | None,
                    pir: str, sign: int | None = None) -> None:
    """Add the Enhanced XA modules and functional groups to a dataset being built.

    Frame timing is written per frame (Frame Content: FrameReferenceDateTime and
    FrameAcquisitionDateTime) and, for readers that use it, as FrameTime/FrameTimeVector.
    """
    if frame_time_vector_ms is not None:
        offsets_ms, acc = [], 0.0
        for k, inc in enumerate(frame_time_vector_ms):
            acc += inc if k else 0.0
            offsets_ms.append(acc)
    else:
        offsets_ms = [k * (frame_time_ms or 0.0) for k in range(n)]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "SINGLE A", "NONE"]
    pir = "OTHER" if pir == "DISP" else pir
    ds.AcquisitionDateTime = _dt(when)
    ds.AcquisitionDuration = (offsets_ms[-1] + (frame_time_ms or 0.0)) / 1000.0
    ds.PixelIntensityRelationship = pir
    # by default values rise with attenuation when bone is displayed bright (MONOCHROME2), so
    # the relationship to X-ray intensity is negative; MONOCHROME1 stores the inverse
    if sign is None:
        sign = -1 if ds.PhotometricInterpretation == "MONOCHROME2" else 1
    ds.PixelIntensityRelationshipSign = sign
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.ContentQualification = "PRODUCT"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY" if ds.PhotometricInterpretation == "MONOCHROME2" else "INVERSE"
    ds.AcquisitionContextSequence = Sequence()
    # an intensifier run has the X-Ray Image Intensifier module, a flat panel the X-Ray Detector
    # module (C.8.19.3: either one by X-Ray Receptor Type)
    intensifier = tech.intensifier_size_mm is not None
    ds.XRayReceptorType = "IMG_INTENSIFIER" if intensifier else "DIGITAL_DETECTOR"
    ds.PositionerType = "CARM"
    ds.CArmPositionerTabletopRelationship = "NO"
    ds.PatientPosition = "" if False else None
    del ds.PatientPosition
    # XA/XRF Acquisition module
    ds.KVP = f"{tech.kvp:.6g}" if tech.kvp is not None else ""
    ds.RadiationSetting = tech.radiation_setting or "SC"
    ds.RadiationMode = "PULSED" if tech.pulse_width_ms else "CONTINUOUS"
    # either current and time, or tube load: dciodvfy rejects all three together
    ds.XRayTubeCurrentInmA = float(tech.tube_current_ma or 0.0)
    ds.ExposureTimeInms = float(tech.exposure_time_ms or (tech.pulse_width_ms or 0.0) * n)
    ds.DistanceReceptorPlaneToDetectorHousing = None
    ds.AcquiredImageAreaDoseProduct = (tech.reported_dap_gycm2 * 10.0
                                       if tech.reported_dap_gycm2 is not None else None)
    ds.PlanesInAcquisition = "SINGLE PLANE"
    ds.PlaneIdentification = "MONOPLANE"
    ds.AveragePulseWidth = f"{tech.pulse_width_ms or frame_time_ms or 1.0:.6g}"
    if tech.reported_dap_gycm2 is not None:
        ds.ImageAndFluoroscopyAreaDoseProduct = f"{tech.reported_dap_gycm2 * 10.0:.6g}"
    if tech.reported_air_kerma_mgy is not None:
        ds.EntranceDoseInmGy = f"{tech.reported_air_kerma_mgy:.6g}"
    if intensifier:
        # X-Ray Image Intensifier module: a round input screen of the intensifier's size
        ds.IntensifierSize = f"{tech.intensifier_size_mm:.6g}"
        ds.IntensifierActiveShape = "ROUND"
        ds.IntensifierActiveDimensions = [float(tech.intensifier_size_mm)]
    else:
        _add_detector_module(ds, tech)

    shared = Dataset()
    if tech.imager_pixel_spacing_xy_mm is not None:
        sx, sy = tech.imager_pixel_spacing_xy_mm
        shared.FramePixelDataPropertiesSequence = [_item(
            FrameType=["ORIGINAL", "PRIMARY", "SINGLE A", "NONE"],
            PixelIntensityRelationship=pir, PixelIntensityRelationshipSign=sign,
            ImagerPixelSpacing=[f"{sy:.6g}", f"{sx:.6g}"], GeometricalProperties="UNIFORM",
            ImageProcessingApplied="NONE")]
        if not intensifier:
            # the Frame Detector Parameters macro is for digital detectors only
            shared.FrameDetectorParametersSequence = [_item(
                DetectorActiveTime=f"{tech.pulse_width_ms or 0.0:.6g}",
                DetectorActivationOffsetFromExposure="0")]
        shared.FieldOfViewSequence = [_field_of_view_item(tech, ds.Rows * sy, ds.Columns * sx)]
    shared.PositionerPositionSequence = [_item(
        PositionerPrimaryAngle=f"{tech.primary_angle_deg or 0.0:.6g}",
        PositionerSecondaryAngle=f"{tech.secondary_angle_deg or 0.0:.6g}")]
    shared.TablePositionSequence = [_item(
        TableTopVerticalPosition=0.0, TableTopLongitudinalPosition=0.0, TableTopLateralPosition=0.0,
        TableHorizontalRotationAngle=0.0, TableHeadTiltAngle=0.0, TableCradleTiltAngle=0.0)]
    top = (1 << ds.BitsStored) - 1
    shared.FrameVOILUTSequence = [_item(WindowCenter=f"{top / 2:.6g}", WindowWidth=f"{top:.6g}")]
    dose = _item(KVP=f"{tech.kvp or 0.0:.6g}", XRayTubeCurrentInmA=float(tech.tube_current_ma or 0.0))
    shared.XRayAcquisitionDoseSequence = [dose]
    shared.XRayGeometrySequence = [_item(
        DistanceSourceToIsocenter=float(tech.source_to_isocenter_mm or 0.0),
        DistanceSourceToDetector=f"{tech.sid_mm or 0.0:.6g}")]
    shared.IrradiationEventIdentificationSequence = [_item(IrradiationEventUID=generate_uid(entropy_srcs=[ds.SOPInstanceUID, "irradiation"]))]
    shared.FrameAnatomySequence = [_item(
        FrameLaterality="U",
        AnatomicRegionSequence=[_item(CodeValue="39723000", CodingSchemeDesignator="SCT",
                                      CodeMeaning="Sacroiliac joint")])]
    materials, thickness = filter_layers(tech)
    shared.XRayFilterSequence = [_item(
        FilterType="STRIP" if len(materials) == 1 else ("MULTIPLE" if materials else "NONE"),
        **({"FilterMaterial": materials, "FilterThicknessMinimum": [f"{t:.6g}" for t in thickness],
            "FilterThicknessMaximum": [f"{t:.6g}" for t in thickness]} if materials else {}))]
    aperture = tech.collimator if tech.collimator is not None else tech.shutter
    if aperture is not None:
        shared.CollimatorShapeSequence = [_item(**collimator_attributes(aperture))]
    ds.SharedFunctionalGroupsSequence = [shared]

    per_frame = []
    for k, offset in enumerate(offsets_ms):
        t = when + timedelta(milliseconds=offset)
        content = _item(FrameAcquisitionDateTime=_dt(t), FrameReferenceDateTime=_dt(t),
                        FrameAcquisitionDuration=float(tech.pulse_width_ms or frame_time_ms or 0.0),
                        FrameAcquisitionNumber=k + 1)
        per_frame.append(_item(FrameContentSequence=[content]))
    ds.PerFrameFunctionalGroupsSequence = per_frame
    if n > 1:
        if frame_time_vector_ms is not None:
            ds.FrameTimeVector = [f"{v:.6g}" for v in frame_time_vector_ms]
            ds.FrameIncrementPointer = 0x00181065
        else:
            ds.FrameTime = f"{frame_time_ms:.6g}"
            ds.FrameIncrementPointer = 0x00181063


def _add_detector_module(ds: Dataset, tech: Technique) -> None:
    """X-Ray Detector module of a flat panel."""
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "SIM-FD"
    ds.DetectorActiveShape = "RECTANGLE"
    if tech.imager_pixel_spacing_xy_mm is not None:
        sx, sy = tech.imager_pixel_spacing_xy_mm
        ds.DetectorElementPhysicalSize = [sy, sx]
        ds.DetectorElementSpacing = [f"{sy:.6g}", f"{sx:.6g}"]
        ds.DetectorActiveDimensions = [f"{sy * ds.Rows:.6g}", f"{sx * ds.Columns:.6g}"]
        ds.DetectorBinning = ["1", "1"]
        ds.PhysicalDetectorSize = [sy * ds.Rows, sx * ds.Columns]


def _field_of_view_item(tech: Technique, height_mm: float, width_mm: float) -> Dataset:
    """Field of View functional group item: the technique's shape and size (one diameter for a
    round field, rows then columns for a rectangle), else the whole image as a rectangle."""
    shape = tech.field_of_view_shape or "RECTANGLE"
    if tech.field_of_view_mm is not None:
        dims = tech.field_of_view_mm[:1] if shape in ("ROUND", "HEXAGONAL") else tech.field_of_view_mm
    else:
        shape, dims = "RECTANGLE", (height_mm, width_mm)
    return _item(FieldOfViewShape=shape, FieldOfViewDimensionsInFloat=[float(v) for v in dims],
                 FieldOfViewOrigin=["0", "0"], FieldOfViewRotation="0",
                 FieldOfViewHorizontalFlip="NO")
