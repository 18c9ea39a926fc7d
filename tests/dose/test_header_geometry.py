"""Header geometry that the dose estimate uses: collimator, detector pixel spacing, source
distances, field of view (datasets built in code, read as a replay reads them)."""
from __future__ import annotations

import logging
import math

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from sifluoro.acquire.dicom_reader import read_study
from sifluoro.acquire.header import parse
from sifluoro.config import DoseSettings
from sifluoro.dose import physics
from sifluoro.dose.accumulate import accumulate_study
from sifluoro.io.dicom_writer import StudyIdentity, build_run_dataset, save_dataset
from sifluoro.model import Shutter
from tests.dicom_fixtures import DEVICE, PATIENT_ID, PATIENT_NAME, STUDY_START, RunSpec, frames_for, technique

SIZE = 64
CENTRE = Shutter(rect_xyxy=(16, 16, 47, 47))  # the central 32x32 of 64x64


def _dataset(storage: str = "xa", **tech_changes) -> Dataset:
    spec = RunSpec(0.0, n_frames=3, storage=storage, size=SIZE, tech=technique(**tech_changes))
    study = StudyIdentity(generate_uid(), STUDY_START, patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    return build_run_dataset(frames_for(spec, 0), storage=storage, study=study,
                             series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(),
                             acquisition_datetime=STUDY_START, technique=spec.tech, device=DEVICE,
                             bits_stored=12, frame_time_ms=spec.frame_time_ms)


def _dose(ds: Dataset, folder):
    folder.mkdir(parents=True, exist_ok=True)
    save_dataset(ds, folder / "run.dcm", transfer_syntax="explicit")
    study = read_study([folder])
    return study.runs[0].technique, accumulate_study(study, DoseSettings()).totals


def _drop(ds: Dataset, *keywords: str) -> None:
    for keyword in keywords:
        if keyword in ds:
            delattr(ds, keyword)


DISPLAY_SHUTTER = ("ShutterShape", "ShutterLeftVerticalEdge", "ShutterRightVerticalEdge",
                   "ShutterUpperHorizontalEdge", "ShutterLowerHorizontalEdge")


# --- collimator (review s8 #4) ---------------------------------------------------------------

def test_legacy_collimator_limits_the_estimated_dap_like_the_display_shutter(tmp_path):
    shuttered = _dataset(shutter=CENTRE)
    _, by_shutter = _dose(shuttered, tmp_path / "a")
    ds = _dataset(shutter=CENTRE)
    _drop(ds, *DISPLAY_SHUTTER)
    ds.CollimatorShape = "RECTANGULAR"  # the X-Ray Collimator module, as C-arms store it
    ds.CollimatorLeftVerticalEdge, ds.CollimatorRightVerticalEdge = 17, 48
    ds.CollimatorUpperHorizontalEdge, ds.CollimatorLowerHorizontalEdge = 17, 48
    tech, by_collimator = _dose(ds, tmp_path / "b")
    assert tech.collimator == CENTRE and tech.shutter == CENTRE
    assert by_collimator.dap_gycm2 == pytest.approx(by_shutter.dap_gycm2, rel=1e-9)
    whole_cm2 = (SIZE * 0.4) ** 2 / 100.0
    assert physics.field_area_cm2_at_detector(tech, SIZE, SIZE) == pytest.approx(whole_cm2 / 4)


def test_enhanced_xa_collimator_shape_sequence_gives_the_same_dap_as_xa(tmp_path):
    _, xa = _dose(_dataset("xa", shutter=CENTRE), tmp_path / "xa")
    enhanced = _dataset("enhanced_xa", shutter=CENTRE)
    assert "CollimatorShapeSequence" in enhanced.SharedFunctionalGroupsSequence[0]
    tech, exa = _dose(enhanced, tmp_path / "exa")
    assert tech.collimator == CENTRE and tech.shutter == CENTRE
    assert exa.dap_gycm2 == pytest.approx(xa.dap_gycm2, rel=1e-6)  # was 4x


def test_circular_collimator_round_trips_in_both_storages(tmp_path):
    aperture = Shutter(rect_xyxy=(4, 4, 59, 59), circle_xyr=(31.0, 31.0, 20.0))
    for storage in ("xa", "enhanced_xa"):
        ds = _dataset(storage, shutter=None, collimator=aperture)
        tech = parse(ds, "x.dcm").technique
        assert tech.collimator == aperture and tech.shutter == aperture
        area = physics.field_area_cm2_at_detector(tech, SIZE, SIZE)
        assert area == pytest.approx(math.pi * (20 * 0.4) ** 2 / 100.0)


def test_dose_uses_the_collimator_and_the_image_stages_the_intersection():
    """A display shutter narrower than the collimator hides part of the exposed field: the
    beam (dose) is the collimator's, what the image shows is inside both."""
    ds = _dataset(shutter=Shutter(rect_xyxy=(20, 8, 43, 55)),
                  collimator=Shutter(rect_xyxy=(8, 20, 55, 43)))
    tech = parse(ds, "x.dcm").technique
    assert tech.collimator.rect_xyxy == (8, 20, 55, 43)
    assert tech.shutter.rect_xyxy == (20, 20, 43, 43)
    assert physics.field_area_cm2_at_detector(tech, SIZE, SIZE) == pytest.approx(48 * 24 * 0.16 / 100)


def test_crossed_collimator_edges_are_ignored(caplog):
    ds = _dataset(shutter=None)
    ds.CollimatorShape = "RECTANGULAR"
    ds.CollimatorLeftVerticalEdge, ds.CollimatorRightVerticalEdge = 48, 17
    ds.CollimatorUpperHorizontalEdge, ds.CollimatorLowerHorizontalEdge = 17, 48
    with caplog.at_level(logging.INFO):
        tech = parse(ds, "run7.dcm").technique
    assert tech.collimator is None and tech.shutter is None
    assert "run7.dcm: ignoring the rectangle of (0018,1700) CollimatorShape" in caplog.text


# --- detector pixel spacing (review s8 #5) ---------------------------------------------------

M = 1100.0 / 785.0


def _pixel_spacing_only(**changes) -> Dataset:
    ds = _dataset(shutter=None)
    del ds.ImagerPixelSpacing
    ds.PixelSpacing = [f"{0.4 / M:.8f}"] * 2  # the same pixels, calibrated at the isocentre
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def test_pixel_spacing_is_scaled_to_the_detector_by_the_magnification_factor(tmp_path):
    _, imager = _dose(_dataset(shutter=None), tmp_path / "a")
    ds = _pixel_spacing_only(EstimatedRadiographicMagnificationFactor=f"{M:.6f}")
    tech, pixel = _dose(ds, tmp_path / "b")
    assert tech.imager_pixel_spacing_xy_mm == pytest.approx((0.4, 0.4), rel=1e-5)
    assert pixel.dap_gycm2 == pytest.approx(imager.dap_gycm2, rel=1e-5)  # was / M² (-49 %)


def test_pixel_spacing_is_scaled_by_sid_over_sod_without_a_magnification_factor():
    tech = parse(_pixel_spacing_only(), "x.dcm").technique  # SID 1100, source-isocentre 785
    assert tech.imager_pixel_spacing_xy_mm == pytest.approx((0.4, 0.4), rel=1e-5)


def test_pixel_spacing_without_magnification_or_distances_is_unknown(caplog):
    ds = _pixel_spacing_only()
    _drop(ds, "DistanceSourceToPatient", "DistanceSourceToIsocenter")
    with caplog.at_level(logging.WARNING):
        tech = parse(ds, "x.dcm").technique
    assert tech.imager_pixel_spacing_xy_mm is None
    assert caplog.text.count("(0028,0030) PixelSpacing") == 1


def test_imager_pixel_spacing_with_one_value_is_logged_and_pixel_spacing_used(caplog):
    ds = _pixel_spacing_only(EstimatedRadiographicMagnificationFactor=f"{M:.6f}")
    ds.ImagerPixelSpacing = "0.4"
    with caplog.at_level(logging.WARNING):
        tech = parse(ds, "x.dcm").technique
    assert "(0018,1164) ImagerPixelSpacing" in caplog.text
    assert tech.imager_pixel_spacing_xy_mm == pytest.approx((0.4, 0.4), rel=1e-5)


# --- source-isocentre distance of legacy XA/RF (review s8 #6) ------------------------------

@pytest.mark.parametrize("storage", ["xa", "rf"])
def test_distance_source_to_patient_is_the_isocentre_distance_in_xa_and_rf(tmp_path, storage):
    _, enhanced = _dose(_dataset("enhanced_xa"), tmp_path / "e")  # (0018,9402) 785 mm
    ds = _dataset(storage)
    assert float(ds.DistanceSourceToPatient) == 785.0 and "DistanceSourceToIsocenter" not in ds
    ds.SoftwareVersions = "VC21C"  # as a C-arm writes it
    tech, legacy = _dose(ds, tmp_path / storage)
    assert tech.source_to_isocenter_mm == 785.0
    # the IEC reference point 15 cm before the isocentre, not 30 cm before the receptor (-37 %)
    assert legacy.air_kerma_mgy == pytest.approx(enhanced.air_kerma_mgy, rel=1e-6)


def test_an_explicit_source_isocentre_distance_wins():
    ds = _dataset()
    ds.DistanceSourceToIsocenter = 800.0
    assert parse(ds, "x.dcm").technique.source_to_isocenter_mm == 800.0


def test_files_of_sifluoro_010_keep_their_source_skin_distance_out_of_the_isocentre():
    """sifluoro's simulator wrote the source-skin distance in (0018,1111) up to SIFLUORO_010
    (the published evaluation sets): it is not an isocentre."""
    ds = _dataset(source_to_isocenter_mm=None)
    ds.DistanceSourceToPatient = "474.5"
    ds.SoftwareVersions = "SIFLUORO_010"
    tech = parse(ds, "x.dcm").technique
    assert tech.source_to_isocenter_mm is None and tech.source_to_patient_mm == 474.5
    ds.SoftwareVersions = "SIFLUORO_011"
    assert parse(ds, "x.dcm").technique.source_to_isocenter_mm == 474.5


@pytest.mark.parametrize("storage", ["xa", "rf", "enhanced_xa"])
@pytest.mark.parametrize("source_to_isocenter_mm", [None, 785.0])
def test_written_technique_is_estimated_as_the_technique_itself(storage, source_to_isocenter_mm):
    """What the simulator's truth uses (its technique) and what a replay reads from the file
    give the same dose: a mobile C-arm (no isocentre, a source-skin distance) and an
    isocentric one, with the intensifier's circle."""
    tech = technique(source_to_isocenter_mm=source_to_isocenter_mm, source_to_patient_mm=474.5,
                     shutter=None, collimator=Shutter((4, 4, 59, 59), (31.5, 31.5, 25.0)))
    read = parse(_dataset(storage, **{f: getattr(tech, f) for f in (
        "source_to_isocenter_mm", "source_to_patient_mm", "shutter", "collimator")}), "x.dcm").technique
    kwargs = dict(rows=SIZE, columns=SIZE, frame_interval_ms=133.333, n_frames=3, settings=DoseSettings())
    assert physics.estimate_frame_dose(read, **kwargs) == pytest.approx(
        physics.estimate_frame_dose(tech, **kwargs), rel=1e-6)


# --- field of view (review s8 #9) ------------------------------------------------------------

def test_round_field_of_view_is_a_circle(tmp_path):
    ds = _dataset(shutter=None, imager_pixel_spacing_xy_mm=None)
    ds.FieldOfViewShape, ds.FieldOfViewDimensions = "ROUND", ["230"]
    tech, _ = _dose(ds, tmp_path)
    assert tech.field_of_view_shape == "ROUND"
    area = physics.field_area_cm2_at_detector(tech, SIZE, SIZE)
    assert area == pytest.approx(math.pi / 4 * 23.0 ** 2)  # 415.5 cm², was 529


def test_rectangle_and_float_field_of_view():
    ds = _dataset(shutter=None, imager_pixel_spacing_xy_mm=None, field_of_view_mm=(250.0, 200.0))
    tech = parse(ds, "x.dcm").technique
    assert physics.field_area_cm2_at_detector(tech, SIZE, SIZE) == pytest.approx(500.0)
    ds.FieldOfViewDimensionsInFloat = [250.5, 200.5]  # Enhanced XA's, more precise
    tech = parse(ds, "x.dcm").technique
    assert tech.field_of_view_mm == (250.5, 200.5)


def test_without_pixel_spacing_the_collimation_scales_by_the_field_of_view(tmp_path):
    """Without ImagerPixelSpacing the estimate took the whole field of view and ignored the
    collimator (+58 % DAP on a published case, review s16 M4): its edges are in pixels of a
    matrix that spans the field of view."""
    spaced = _dataset(shutter=CENTRE, imager_pixel_spacing_xy_mm=(0.5, 0.5),
                      field_of_view_mm=(SIZE * 0.5, SIZE * 0.5))
    _, with_spacing = _dose(spaced, tmp_path / "a")
    ds = _dataset(shutter=CENTRE, imager_pixel_spacing_xy_mm=(0.5, 0.5),
                  field_of_view_mm=(SIZE * 0.5, SIZE * 0.5))
    _drop(ds, "ImagerPixelSpacing", "PixelSpacing")
    tech, without = _dose(ds, tmp_path / "b")
    assert tech.imager_pixel_spacing_xy_mm is None and tech.shutter == CENTRE
    assert without.dap_gycm2 == pytest.approx(with_spacing.dap_gycm2, rel=1e-9)  # was 4x
    rect = parse(_dataset(shutter=CENTRE, imager_pixel_spacing_xy_mm=None,
                          field_of_view_mm=(250.0, 200.0)), "x.dcm").technique
    assert physics.field_area_cm2_at_detector(rect, SIZE, SIZE) == pytest.approx(500.0 / 4)
    # blades wider than a round field: no more than the field itself
    wide = Shutter(rect_xyxy=(0, 0, SIZE - 1, SIZE - 1))
    round_ = parse(_dataset(shutter=wide, imager_pixel_spacing_xy_mm=None,
                            field_of_view_mm=(230.0, 230.0), field_of_view_shape="ROUND"),
                   "x.dcm").technique
    assert physics.field_area_cm2_at_detector(round_, SIZE, SIZE) == pytest.approx(math.pi / 4 * 23.0 ** 2)


def test_round_field_of_view_round_trips_through_the_writer():
    ds = _dataset(shutter=None, imager_pixel_spacing_xy_mm=None, field_of_view_mm=(230.0, 230.0),
                  field_of_view_shape="ROUND")
    assert ds.FieldOfViewShape == "ROUND" and ds["FieldOfViewDimensions"].VM == 1
    tech = parse(ds, "x.dcm").technique
    assert (tech.field_of_view_mm, tech.field_of_view_shape) == ((230.0, 230.0), "ROUND")


@pytest.mark.parametrize("size, collimation, margin", [
    (512, (0, 0, 511, 511), 4), (512, (100, 0, 411, 511), 4), (512, (0, 0, 255, 255), 6),
    (1024, (300, 120, 1023, 900), 8), (1024, (0, 0, 1023, 1023), 2), (512, (250, 250, 260, 300), 3),
])
def test_blades_across_a_round_field_expose_their_intersection(size, collimation, margin):
    """The area of blades cutting an intensifier's circle is that of the pixels both let
    through (the simulator's own exposed field), not the smaller of the two (+6 % median DAP,
    up to +28 % for one quadrant)."""
    from sifluoro.dose.physics import aperture_area_px
    from sifluoro.sim.detector import exposed_mask

    mask = exposed_mask(size, collimation, True, margin)
    centre = (size - 1) / 2.0
    area = aperture_area_px(collimation, (centre, centre, size / 2.0 - margin))
    assert area == pytest.approx(mask.sum(), rel=0.01, abs=20)
    assert aperture_area_px(collimation, None) == pytest.approx(exposed_mask(size, collimation, False, 0).sum())
    assert aperture_area_px((0, 0, size - 1, size - 1), (centre, centre, 50.0)) == pytest.approx(
        math.pi * 50.0 ** 2, rel=1e-3)
    assert aperture_area_px((0, 0, 10, 10), (400.0, 400.0, 20.0)) == 0.0


# --- a field that is not the frame's (review s25 r3) -------------------------------------------

@pytest.mark.parametrize("shutter, kept", [
    (Shutter(rect_xyxy=(16, 16, 47, 47)), True),
    (Shutter(rect_xyxy=(-3, -3, 66, 66)), True),              # a few pixels over: clipped
    (Shutter(rect_xyxy=(100, 120, 400, 380)), False),         # wholly outside
    (Shutter(rect_xyxy=(32, 40, 220, 200)), False),           # edges of a 4x larger matrix
    (Shutter(circle_xyr=(32.0, 32.0, 40.0)), True),           # a round field cut by the matrix
    (Shutter(circle_xyr=(300.0, 300.0, 50.0)), False)])
def test_a_field_not_in_the_frame_is_ignored_and_said(tmp_path, caplog, shutter, kept):
    """A display shutter given in another matrix (the detector's full one, for an image stored
    smaller) left the image stages an empty or partial field: no joint line, target or tip on
    any frame of the study, and no word. It is ignored now, with a warning naming the tags."""
    ds = _dataset(shutter=shutter)
    with caplog.at_level(logging.WARNING):
        tech, _ = _dose(ds, tmp_path)
    said = [r.getMessage() for r in caplog.records if "not in the 64x64 frame" in r.getMessage()]
    assert (tech.shutter == shutter, len(said)) == ((True, 0) if kept else (False, 1))
    if not kept:
        assert tech.shutter is None and "(0018,1600) ShutterShape" in said[0]
