"""Replay writes the study's RDSR, and an RDSR among the inputs supplies the dose it reports."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from sifluoro.cli import main
from sifluoro.dose.rdsr_read import read_rdsr
from tests.dicom_fixtures import RunSpec, technique, write_study


def test_replay_writes_an_rdsr_that_reads_back_to_the_summary(tmp_path):
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=5), RunSpec(20.0, n_frames=4,
                                     tech=technique(kvp=85.0, radiation_setting="GR"))])
    code = main(["replay", str(tmp_path / "study"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json"), "--rdsr", str(tmp_path / "dose.dcm"), "-q"])
    assert code == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["rdsr"] == str(tmp_path / "dose.dcm")
    report = read_rdsr(tmp_path / "dose.dcm")
    assert report.study_instance_uid == summary["study_instance_uid"]
    assert len(report.events) == 2
    assert sum(e.dap_gycm2 for e in report.events) == pytest.approx(summary["dap_gycm2"], rel=1e-6)
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(tmp_path / "dose.dcm")], capture_output=True, text=True)
        assert [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Error")] == []


def test_an_rdsr_in_the_input_supplies_the_dose_of_its_runs(tmp_path):
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(15.0, n_frames=3)])
    first = tmp_path / "first"
    assert main(["replay", str(tmp_path / "study"), "--events", str(first / "e.jsonl"),
                 "--summary", str(first / "s.json"), "--rdsr", str(tmp_path / "study" / "zz.dcm"),
                 "-q"]) == 0
    estimated = json.loads((first / "s.json").read_text())
    assert estimated["dose_source"] == "estimated"
    second = tmp_path / "second"
    assert main(["replay", str(tmp_path / "study"), "--events", str(second / "e.jsonl"),
                 "--summary", str(second / "s.json"), "-q"]) == 0
    reported = json.loads((second / "s.json").read_text())
    assert reported["dose_source"] == "rdsr"
    assert reported["dap_gycm2"] == pytest.approx(estimated["dap_gycm2"], rel=1e-6)
    assert reported["rejected_files"] == []


def test_a_dose_report_sent_as_comprehensive_sr_is_read_as_a_dose_report(tmp_path):
    import pydicom
    from pydicom.uid import ComprehensiveSRStorage

    from sifluoro.acquire.dicom_reader import read_study

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])
    assert main(["replay", str(tmp_path / "study"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json"), "--rdsr", str(tmp_path / "sr.dcm"),
                 "-q"]) == 0
    ds = pydicom.dcmread(tmp_path / "sr.dcm")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    ds.save_as(tmp_path / "study" / "old-device-sr.dcm")
    study = read_study([tmp_path / "study"])
    assert study.dose_reports == (str(tmp_path / "study" / "old-device-sr.dcm"),)
    assert study.rejected == ()
