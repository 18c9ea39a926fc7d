"""Dose the image headers report: Enhanced XA/XRF attributes and functional groups, and the
Exposure Dose Sequence items (datasets built in code)."""
from __future__ import annotations

import logging
import re

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from sifluoro.acquire.dicom_reader import read_study
from sifluoro.acquire.header import parse
from sifluoro.config import DoseSettings
from sifluoro.dose import physics
from sifluoro.dose.accumulate import accumulate_study
from sifluoro.dose.exposure_dose import read_exposure_doses
from sifluoro.errors import InputError
from sifluoro.io.dicom_writer import StudyIdentity, build_run_dataset, save_dataset
from tests.dicom_fixtures import DEVICE, PATIENT_ID, PATIENT_NAME, STUDY_START, RunSpec, frames_for, technique


def _dataset(storage: str = "xa", n_frames: int = 3, **tech_changes) -> Dataset:
    spec = RunSpec(0.0, n_frames=n_frames, storage=storage, size=16, tech=technique(**tech_changes))
    study = StudyIdentity(generate_uid(), STUDY_START, patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    return build_run_dataset(frames_for(spec, 0), storage=storage, study=study,
                             series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(),
                             acquisition_datetime=STUDY_START, technique=spec.tech, device=DEVICE,
                             bits_stored=12, frame_time_ms=spec.frame_time_ms)


def _exposure(kvp, current_ua, time_ms, mode="PULSED") -> Dataset:
    item = Dataset()
    item.RadiationMode = mode
    item.KVP = kvp
    item.XRayTubeCurrentInuA = current_ua
    item.ExposureTime = time_ms
    item.FilterType = "STRIP"
    item.FilterMaterial = ["COPPER", "ALUMINUM"]
    return item


def _study_dose(ds: Dataset, folder):
    save_dataset(ds, folder / "run.dcm", transfer_syntax="explicit")
    return accumulate_study(read_study([folder]), DoseSettings())


def test_acquired_image_area_dose_product_is_the_reported_dap(tmp_path):
    ds = _dataset("enhanced_xa", reported_dap_gycm2=1.25)
    del ds.ImageAndFluoroscopyAreaDoseProduct  # Enhanced XA/XRF defines only (0018,9473)
    assert float(ds.AcquiredImageAreaDoseProduct) == pytest.approx(12.5)  # dGy·cm²
    assert parse(ds, "x.dcm").technique.reported_dap_gycm2 == pytest.approx(1.25)
    dose = _study_dose(ds, tmp_path)
    assert dose.source == "reported"
    assert dose.totals.dap_gycm2 == pytest.approx(1.25, rel=1e-6)
    assert dose.events()[0].dose_source == "reported"


def test_per_frame_entrance_dose_is_reported_frame_by_frame(tmp_path):
    ds = _dataset("enhanced_xa")
    for group, mgy in zip(ds.PerFrameFunctionalGroupsSequence, (0.1, 0.2, 0.4)):
        item = Dataset()
        item.EntranceDoseInmGy = f"{mgy}"
        group.XRayAcquisitionDoseSequence = Sequence([item])
    tech = parse(ds, "x.dcm").technique
    assert tech.reported_air_kerma_mgy_per_frame == pytest.approx((0.1, 0.2, 0.4))
    dose = _study_dose(ds, tmp_path)
    assert dose.source == "reported"
    assert dose.totals.air_kerma_mgy == pytest.approx(0.7)


def test_per_frame_kvp_and_current_make_the_run_technique():
    ds = _dataset("enhanced_xa", kvp=70.0, tube_current_ma=10.0)
    for group, (kv, ma) in zip(ds.PerFrameFunctionalGroupsSequence, ((70, 10.0), (80, 10.0), (90, 20.0))):
        item = Dataset()
        item.KVP = kv
        item.XRayTubeCurrentInmA = ma
        group.FrameAcquisitionSequence = Sequence([item])
    tech = parse(ds, "x.dcm").technique
    assert tech.tube_current_ma == pytest.approx(40.0 / 3)
    assert tech.kvp == pytest.approx((700 + 800 + 1800) / 40.0)  # weighted by current


def test_a_per_frame_value_out_of_bounds_is_said_and_the_run_value_used(caplog):
    """Review s18: a per-frame kVp of 2000 or a negative entrance dose was dropped silently (the
    run-level value used instead, no word of the file's fault)."""
    ds = _dataset("enhanced_xa", kvp=70.0, tube_current_ma=10.0)
    for group, kv in zip(ds.PerFrameFunctionalGroupsSequence, (70, 2000, 90)):
        item = Dataset()
        item.KVP = kv
        item.XRayTubeCurrentInmA = 10.0
        group.FrameAcquisitionSequence = Sequence([item])
        dose = Dataset()
        dose.EntranceDoseInmGy = "-0.5"
        group.XRayAcquisitionDoseSequence = Sequence([dose])
    with caplog.at_level(logging.WARNING, logger="sifluoro"):
        tech = parse(ds, "x.dcm").technique
    assert tech.kvp == pytest.approx(70.0) and tech.reported_air_kerma_mgy_per_frame is None
    said = [r.getMessage() for r in caplog.records]
    assert sum("x.dcm: ignoring per-frame (0018,0060) KVP = 2000" in m for m in said) == 1
    assert sum("EntranceDoseInmGy = -0.5" in m and "negative" in m for m in said) == 1


def test_one_exposure_dose_item_gives_the_run_technique_and_an_estimate(tmp_path):
    ds = _dataset("xa", n_frames=1, kvp=None, tube_current_ma=None, pulse_width_ms=None,
                  exposure_time_ms=None, exposure_mas=None)
    for keyword in ("KVP", "XRayTubeCurrent", "ExposureTime", "Exposure", "AveragePulseWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.ExposureDoseSequence = Sequence([_exposure("81", "250000", "40")])  # 250 mA, 40 ms
    tech = parse(ds, "x.dcm").technique
    assert (tech.kvp, tech.exposure_mas, tech.exposure_time_ms) == (81.0, pytest.approx(10.0), 40.0)
    assert tech.tube_current_ma == pytest.approx(250.0)
    dose = _study_dose(ds, tmp_path)
    assert dose.source == "estimated"
    s = DoseSettings()
    output = physics.tube_output_mgy_per_mas_at_1m(
        81.0, filter_al_mm=s.inherent_filtration_al_mm + tech.filter_al_mm,
        filter_cu_mm=tech.filter_cu_mm, anode_angle_deg=s.anode_angle_deg)
    d_ref_mm = tech.source_to_isocenter_mm - s.reference_point_offset_mm
    assert dose.totals.air_kerma_mgy == pytest.approx(output * 10.0 * (1000.0 / d_ref_mm) ** 2, rel=1e-9)


def test_one_exposure_item_per_frame_sums_the_tube_load():
    ds = _dataset("xa", n_frames=3)
    ds.ExposureDoseSequence = Sequence([_exposure("70", "10000", "10"), _exposure("80", "10000", "10"),
                                        _exposure("90", "20000", "10")])
    tech = parse(ds, "x.dcm").technique
    assert tech.exposure_mas == pytest.approx(0.4)
    assert tech.exposure_time_ms == pytest.approx(30.0)
    assert tech.kvp == pytest.approx((70 * 0.1 + 80 * 0.1 + 90 * 0.2) / 0.4)
    assert tech.tube_current_ma == pytest.approx(0.4 / 0.030)


def test_exposure_items_of_the_whole_procedure_step_are_not_charged_to_one_run(caplog):
    ds = _dataset("xa", n_frames=3, kvp=78.0)
    ds.ExposureDoseSequence = Sequence([_exposure("120", "500000", "100")] * 5)
    with caplog.at_level(logging.INFO):
        tech = parse(ds, "x.dcm").technique
    assert tech.kvp == 78.0 and tech.exposure_mas is None
    assert "procedure step" in caplog.text


def test_a_bad_exposure_item_is_a_typed_error_naming_item_and_attribute(caplog):
    ds = _dataset("xa", n_frames=1, kvp=78.0)
    ds.ExposureDoseSequence = Sequence([_exposure("80", "1000", "10"), _exposure("80", "-5", "10")])
    with pytest.raises(InputError) as err:
        read_exposure_doses(ds, "bad.dcm")
    assert err.value.path == "bad.dcm" and err.value.tag == "(0040,030E) ExposureDoseSequence"
    assert "item 2: (0018,8151) XRayTubeCurrentInuA" in str(err.value)
    with caplog.at_level(logging.INFO):
        tech = parse(ds, "bad.dcm").technique  # the header ignores the items, with a warning
    assert tech.kvp == 78.0
    assert "XRayTubeCurrentInuA" in caplog.text
    assert PATIENT_NAME not in caplog.text and PATIENT_ID not in caplog.text


@pytest.mark.parametrize("kv, current_ua, time_ms, attribute", [
    ("1e5", "1000", "10", "(0018,0060) KVP"),
    ("80", "1e30", "10", "(0018,8151) XRayTubeCurrentInuA"),
    ("80", "1000", "1e12", "(0018,1150) ExposureTime"),
])
def test_an_exposure_item_beyond_what_x_ray_can_give_is_a_typed_error(kv, current_ua, time_ms,
                                                                      attribute):
    """1e5 kV, 1e30 µA, 1e12 ms were taken as an exposure's technique (finite, not negative)
    and the run's dose estimated from them; refused now as a negative one is."""
    ds = _dataset("xa", n_frames=1, kvp=78.0)
    ds.ExposureDoseSequence = Sequence([_exposure(kv, current_ua, time_ms)])
    with pytest.raises(InputError, match=r"item 1: " + re.escape(attribute) + r".*not a possible"):
        read_exposure_doses(ds, "bad.dcm")
    assert parse(ds, "bad.dcm").technique.kvp == 78.0
