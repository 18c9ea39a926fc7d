"""RDSRs written by sifluoro: dciodvfy-clean, read back to the same totals, readable by pyskindose."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pydicom
import pytest

from sifluoro.acquire.dicom_reader import read_study
from sifluoro.config import DoseSettings
from sifluoro.dose.accumulate import accumulate_study
from sifluoro.dose.rdsr_read import read_rdsr

pytest.importorskip("highdicom", reason="highdicom is not installed: add highdicom to setup.cfg install_requires")
from sifluoro.dose.rdsr_write import write_rdsr  # noqa: E402  (needs highdicom)
from tests.dicom_fixtures import PATIENT_ID, PATIENT_NAME, RunSpec, technique, write_study

SPECS = [RunSpec(0.0, n_frames=8),  # fluoroscopy, estimated from technique
         RunSpec(20.0, n_frames=4, tech=technique(radiation_setting="GR", tube_current_ma=120.0,
                                                  pulse_width_ms=40.0, frame_time_ms=500.0)),
         RunSpec(45.0, n_frames=5, tech=technique(reported_dap_gycm2=0.3, reported_air_kerma_mgy=1.2))]


@pytest.fixture()
def written(tmp_path):
    write_study(tmp_path / "images", SPECS)
    study = read_study([tmp_path / "images"])
    dose = accumulate_study(study, DoseSettings())
    path = write_rdsr(study, dose, tmp_path / "out" / "rdsr.dcm")
    return study, dose, path


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")
def test_written_rdsr_passes_dciodvfy(written):
    _, _, path = written
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    report = result.stdout + result.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], report
    assert "XRayRadiationDoseSR" in report


def test_written_rdsr_reads_back_to_the_same_totals(written):
    study, dose, path = written
    ours = dose.study_dose(study.study_instance_uid, study.device).summary()
    back = read_rdsr(path).summary()
    assert back["events"] == ours["events"] == 3
    for key in ("dap_gycm2", "air_kerma_mgy", "fluoro_dap_gycm2", "fluoro_air_kerma_mgy",
                "acquisition_dap_gycm2", "acquisition_air_kerma_mgy", "fluoro_time_s"):
        assert back[key] == pytest.approx(ours[key], rel=1e-6), key
    assert back["acquisition_air_kerma_mgy"] > 0 and back["fluoro_air_kerma_mgy"] > 1.2
    assert back["device"] == {"manufacturer": "ACME Medical", "model": "C-Arm 9000"}
    assert dose.totals.air_kerma_mgy == pytest.approx(back["air_kerma_mgy"], rel=1e-6)


def test_written_rdsr_identity_is_copied_not_invented(written):
    study, _, path = written
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.67"
    assert (str(ds.PatientName), ds.PatientID, ds.StudyInstanceUID) == (PATIENT_NAME, PATIENT_ID,
                                                                         study.study_instance_uid)
    assert (ds.Manufacturer, ds.ManufacturerModelName, ds.DeviceSerialNumber, ds.StationName) == (
        "ACME Medical", "C-Arm 9000", "SN123", "ANGIO1")
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "10001"
    events = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "113706"]
    assert len(events) == 3
    first = {i.ConceptNameCodeSequence[0].CodeValue: i for i in events[0].ContentSequence}
    assert first["111526"].DateTime.startswith("20260304093000")
    assert first["113733"].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "kV"
    assert first["122130"].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "Gy.m2"
    assert first["113780"].ConceptCodeSequence[0].CodeValue == "113860"
    assert first["113768"].MeasuredValueSequence[0].NumericValue == 8
    starts = {i.ConceptNameCodeSequence[0].CodeValue for i in ds.ContentSequence}
    assert {"113809", "113810", "113702"} <= starts


def test_event_uids_are_stable_and_events_link_to_runs(written, tmp_path):
    study, dose, path = written
    again = write_rdsr(study, accumulate_study(study, DoseSettings()), tmp_path / "again.dcm")
    uids = [e.event_uid for e in read_rdsr(path).events]
    assert uids == [e.event_uid for e in read_rdsr(again).events]
    assert [e.sop_instance_uids for e in read_rdsr(path).events] == [(r.sop_instance_uid,) for r in study.runs]


def test_pyskindose_reads_our_rdsr(written):
    pyskindose = pytest.importorskip("pyskindose", reason="pyskindose is a test-only extra")
    _, dose, path = written
    parsed = pyskindose.rdsr_parser(pydicom.dcmread(path))
    assert len(parsed) == 3
    assert {"KVP_kV", "DoseRP_Gy", "IrradiationEventUID", "DistanceSourcetoIsocenter_mm"} <= set(parsed.columns)
    assert parsed["DoseRP_Gy"].sum() * 1000.0 == pytest.approx(dose.totals.air_kerma_mgy, rel=1e-6)


def test_summary_prefers_the_rdsr_in_a_mixed_folder(written, tmp_path):
    study, dose, path = written
    shutil.copy(path, tmp_path / "images" / "zz_rdsr.dcm")
    out = subprocess.run([sys.executable, "-m", "sifluoro", "dose", "summary", "--json",
                          str(tmp_path / "images")], capture_output=True, text=True, check=True).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 1 and lines[0]["source"] == "rdsr"
    assert lines[0]["air_kerma_mgy"] == pytest.approx(dose.totals.air_kerma_mgy, rel=1e-6)


def test_a_pulsed_run_of_unknown_timing_is_written_pulsed(tmp_path):
    """Review s24 #10: a run whose header says RadiationMode PULSED with a pulse width, but whose
    frame times are unusable (its pulse width dropped with its time), was written Fluoro Mode
    "Continuous". The header's mode is kept, written and read back."""
    write_study(tmp_path / "in", [
        RunSpec(0.0, n_frames=5, tech=technique(radiation_mode="PULSED")),
        RunSpec(30.0, n_frames=5, frame_time_vector_ms=[0.0] * 5, frame_time_ms=None,
                tech=technique(radiation_mode="PULSED", frame_time_ms=None))])
    study = read_study([tmp_path / "in"])
    write_rdsr(study, accumulate_study(study, DoseSettings()), tmp_path / "rdsr.dcm")
    ds = pydicom.dcmread(tmp_path / "rdsr.dcm")
    modes = [s.ConceptCodeSequence[0].CodeMeaning
             for item in ds.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "113706"
             for s in item.ContentSequence if s.ConceptNameCodeSequence[0].CodeValue == "113732"]
    assert modes == ["Pulsed", "Pulsed"]
    assert [e.pulsed for e in read_rdsr(tmp_path / "rdsr.dcm").events] == [True, True]


def test_a_run_of_unknown_beam_on_time_reads_back_as_a_lower_bound(tmp_path):
    """Review s24 #8: from the images, a study with a run of unusable frame timing has its
    fluoroscopy time as a lower bound (events_time_unknown 1); sifluoro's RDSR of it read back
    as an exact time (its totals taken as the device's). A Comment says so, and the reader
    takes sifluoro's own totals as the events' sum then, as for an unknown dose."""
    from sifluoro.dose.summary import summarize

    write_study(tmp_path / "images", [
        RunSpec(0.0, n_frames=5, tech=technique(reported_dap_gycm2=2.0, reported_air_kerma_mgy=10.0)),
        RunSpec(30.0, n_frames=5, frame_time_ms=None, frame_time_vector_ms=[0.0] * 5,
                tech=technique(reported_dap_gycm2=3.0, reported_air_kerma_mgy=15.0, frame_time_ms=None))])
    study = read_study([tmp_path / "images"])
    write_rdsr(study, accumulate_study(study, DoseSettings()), tmp_path / "rdsr" / "sifluoro.dcm")
    [images], _ = summarize([tmp_path / "images"])
    [report], _ = summarize([tmp_path / "rdsr"])
    for key in ("fluoro_time_s", "events_time_unknown", "dap_gycm2", "air_kerma_mgy"):
        assert report.summary()[key] == pytest.approx(images.summary()[key]), key
    assert images.summary()["events_time_unknown"] == 1
    text = " ".join(str(i.get("TextValue", "")) for i in
                    pydicom.dcmread(tmp_path / "rdsr" / "sifluoro.dcm").ContentSequence)
    assert "beam-on time is unknown" in text


def test_the_procedure_reported_says_its_intent(written):
    """TID 10001 wants Has Intent under a projection X-ray's Procedure reported, as every
    vendor report gives it (review s24: sifluoro's defined the codes and wrote none)."""
    ds = pydicom.dcmread(written[2])
    [procedure] = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121058"]
    [intent] = procedure.ContentSequence
    assert (intent.RelationshipType, intent.ConceptNameCodeSequence[0].CodeValue,
            intent.ConceptCodeSequence[0].CodeMeaning) == (
        "HAS CONCEPT MOD", "363703001", "Combined Diagnostic and Therapeutic Intent")
