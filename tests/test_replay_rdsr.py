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


def _device_report(tmp_path, study_dir, *, reported: bool = False):
    """The study's dose report as its device would send it: sifluoro's report with another
    program in Software Versions; with ``reported``, each run's header reports its dose."""
    import pydicom

    out = tmp_path / "made"
    assert main(["replay", str(study_dir), "--events", str(out / "e.jsonl"), "--summary",
                 str(out / "s.json"), "--rdsr", str(out / "device.dcm"), "-q"]) == 0
    ds = pydicom.dcmread(out / "device.dcm")
    ds.SoftwareVersions = "VC21C"
    ds.save_as(out / "device.dcm")
    return out / "device.dcm", json.loads((out / "s.json").read_text())


def _replay(tmp_path, study_dir, name):
    out = tmp_path / name
    assert main(["replay", str(study_dir), "--events", str(out / "e.jsonl"),
                 "--summary", str(out / "s.json"), "-q"]) == 0
    return json.loads((out / "s.json").read_text())


def test_an_rdsr_in_the_input_supplies_the_dose_of_its_runs(tmp_path):
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(15.0, n_frames=3)])
    device, estimated = _device_report(tmp_path, tmp_path / "study")
    assert estimated["dose_source"] == "estimated"
    shutil.copy(device, tmp_path / "study" / "zz.dcm")
    reported = _replay(tmp_path, tmp_path / "study", "second")
    assert reported["dose_source"] == "rdsr"
    assert reported["dap_gycm2"] == pytest.approx(estimated["dap_gycm2"], rel=1e-6)
    assert reported["rejected_files"] == []


def test_two_copies_or_a_partial_and_a_final_report_count_each_run_once(tmp_path):
    """The device's report twice (a PACS export and a copy beside it), or a report sent
    mid-procedure beside the final one: each used alone counted the runs they both name
    twice (review s10 B#1)."""
    import pydicom
    from pydicom.uid import generate_uid

    tech = [technique(reported_dap_gycm2=2.0, reported_air_kerma_mgy=20.0),
            technique(reported_dap_gycm2=3.0, reported_air_kerma_mgy=30.0)]
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=4, tech=tech[0]),
                                     RunSpec(60.0, n_frames=4, tech=tech[1])])
    device, _ = _device_report(tmp_path, tmp_path / "study")
    shutil.copy(device, tmp_path / "study" / "rdsr-final.dcm")
    shutil.copy(device, tmp_path / "study" / "rdsr-copy.dcm")
    twice = _replay(tmp_path, tmp_path / "study", "twice")
    partial = pydicom.dcmread(device)
    partial.SOPInstanceUID = partial.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    events = [i for i in partial.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "113706"]
    partial.ContentSequence = [i for i in partial.ContentSequence if i is not events[1]]
    (tmp_path / "study" / "rdsr-copy.dcm").unlink()
    partial.save_as(tmp_path / "study" / "rdsr-partial.dcm")
    with_partial = _replay(tmp_path, tmp_path / "study", "partial")
    for summary in (twice, with_partial):
        assert summary["dose_source"] == "rdsr"
        assert summary["air_kerma_mgy"] == pytest.approx(50.0)
        assert summary["dap_gycm2"] == pytest.approx(5.0)


def test_sifluoros_own_earlier_report_is_not_taken_for_the_devices(tmp_path):
    """Replaying a study beside the RDSR an earlier replay wrote: those doses are sifluoro's
    estimates, made again from the images (labelled ``rdsr`` they passed for the device's, and
    new dose settings were ignored) (review s10 B#5)."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])
    first = _replay(tmp_path, tmp_path / "study", "first")
    assert main(["replay", str(tmp_path / "study"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json"), "--rdsr", str(tmp_path / "study" / "own.dcm"),
                 "-q"]) == 0
    again = _replay(tmp_path, tmp_path / "study", "again")
    assert again["dose_source"] == first["dose_source"] == "estimated"
    assert again["dap_gycm2"] == pytest.approx(first["dap_gycm2"])
    assert again["rejected_files"] == []


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


def test_an_unknown_dose_is_written_as_unknown_never_as_zero(tmp_path):
    """A run with no dose information, and a run whose header reports only its DAP with no
    technique to estimate its air kerma: the RDSR said 0 Gy "Computed/Copied From Image
    Attributes", which a dose registry takes as a measured zero (review s10 B#3, B#16)."""
    import pydicom

    write_study(tmp_path / "study", [
        RunSpec(0.0, n_frames=3),
        RunSpec(10.0, n_frames=3, tech=technique(kvp=None)),
        RunSpec(20.0, n_frames=3, tech=technique(kvp=None, reported_dap_gycm2=2.0)),
        RunSpec(30.0, n_frames=3, tech=technique(reported_dap_gycm2=3.0))])
    assert main(["replay", str(tmp_path / "study"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json"), "--rdsr", str(tmp_path / "dose.dcm"),
                 "-q"]) == 0
    events = read_rdsr(tmp_path / "dose.dcm").events
    assert [e.air_kerma_mgy is None for e in events] == [False, True, True, False]
    assert [e.dap_gycm2 is None for e in events] == [False, True, False, False]
    assert events[2].dap_gycm2 == pytest.approx(2.0) and events[3].dap_gycm2 == pytest.approx(3.0)
    ds = pydicom.dcmread(tmp_path / "dose.dcm")
    sources = []
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "113706":
            sources.append(sorted(str(i.ConceptCodeSequence[0].CodeMeaning) for i in item.ContentSequence
                                  if i.ConceptNameCodeSequence[0].CodeValue == "113854"))
    assert sources == [["Computed From Image Attributes"], [], ["Copied From Image Attributes"],
                       ["Computed From Image Attributes", "Copied From Image Attributes"]]
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(tmp_path / "dose.dcm")], capture_output=True, text=True)
        assert [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Error")] == []


def test_a_device_report_cut_short_is_rejected_as_dose_summary_rejects_it(tmp_path):
    """replay used a cut copy of the device's report as far as it went, short of events, and
    rejected nothing (review s10 C#7)."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(15.0, n_frames=3)])
    device, estimated = _device_report(tmp_path, tmp_path / "study")
    data = device.read_bytes()
    (tmp_path / "study" / "cut.dcm").write_bytes(data[:int(len(data) * 0.8)])
    summary = _replay(tmp_path, tmp_path / "study", "cut")
    assert [r["file"] for r in summary["rejected_files"]] == [str(tmp_path / "study" / "cut.dcm")]
    assert "cut short" in summary["rejected_files"][0]["reason"]
    assert summary["dose_source"] == "estimated"
    assert summary["dap_gycm2"] == pytest.approx(estimated["dap_gycm2"])


def test_a_device_report_without_dose_rp_gives_an_unknown_not_a_zero(tmp_path):
    """The device's events give DAP but no Dose (RP): sifluoro's report said 0 Gy 'Copied From
    Image Attributes' (review s10 C#2). Its events are no longer copied into sifluoro's report
    (review s12 #5): here it covers the only run, so none is written; the summary says unknown."""
    import pydicom

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])
    device, _ = _device_report(tmp_path, tmp_path / "study")
    ds = pydicom.dcmread(device)
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue in ("113706", "113702"):
            item.ContentSequence = [i for i in item.ContentSequence
                                    if i.ConceptNameCodeSequence[0].CodeValue not in ("113738", "113725",
                                                                                      "113728", "113729")]
    ds.save_as(tmp_path / "study" / "device.dcm")
    assert main(["replay", str(tmp_path / "study"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json"), "--rdsr", str(tmp_path / "own.dcm"), "-q"]) == 0
    assert not (tmp_path / "own.dcm").exists()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["runs_dose_unknown"] == 1 and summary["dap_gycm2"] > 0


def test_a_study_whose_dose_is_wholly_unknown_has_unknown_totals_in_its_rdsr(tmp_path):
    """The events said 'Value unknown' but the Accumulated X-Ray Dose container said Dose (RP)
    Total 0 Gy, which a registry reads as a measured 0 (review s10 C#1)."""
    import pydicom

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3, tech=technique(kvp=None)),
                                     RunSpec(10.0, n_frames=3, tech=technique(kvp=None, reported_dap_gycm2=2.0))])
    assert main(["replay", str(tmp_path / "study"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json"), "--rdsr", str(tmp_path / "dose.dcm"),
                 "-q"]) == 0
    ds = pydicom.dcmread(tmp_path / "dose.dcm")
    (accumulated,) = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "113702"]
    totals = {}
    for item in accumulated.ContentSequence:
        for sub in item.get("ContentSequence") or [item]:
            if sub.ValueType == "NUM":
                values = sub.MeasuredValueSequence
                name = str(sub.ConceptNameCodeSequence[0].CodeMeaning)
                totals[name] = float(values[0].NumericValue) if values else "unknown"
    assert totals["Dose (RP) Total"] == totals["Fluoro Dose (RP) Total"] == "unknown"
    assert totals["Dose Area Product Total"] == pytest.approx(2e-4)  # the one run that reports it
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(tmp_path / "dose.dcm")], capture_output=True, text=True)
        assert [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Error")] == []


def test_dose_reports_of_other_studies_are_said_and_the_outputs_listed(tmp_path, capsys):
    """User review s19 U18: `replay` of an archive folder took its one image study and passed
    over the other studies' dose reports without a word, and printed no outputs (demo and
    video do)."""
    from tests.dose.rdsr_fixtures import Ev, build_rdsr, save

    write_study(tmp_path / "arch" / "study", [RunSpec(0.0, n_frames=4)])
    other = save(build_rdsr([Ev(uid="1.1", dap_gycm2=1.0)], study_uid="9.9.9"),
                 tmp_path / "arch" / "other.dcm")
    assert main(["replay", str(tmp_path / "arch"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert f"not read   1 dose report of other studies ({other}): read them with" in out
    assert out.endswith(f"outputs    {tmp_path / 'e.jsonl'}\n           {tmp_path / 's.json'}\n")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["other_studies_dose_reports"] == [str(other)]
    assert summary["dose_source"] != "reported"  # not its dose


def test_a_dose_report_alone_is_not_called_a_study_of_unknown_dose(tmp_path, capsys):
    """User review s20 P8: `replay` of a vendor RDSR alone said "dose unknown (no dose in the
    headers or a report ...)" and then "study dose 1.36 mGy ... (its dose report)"."""
    from tests.dose.rdsr_fixtures import Ev, build_rdsr, save

    report = save(build_rdsr([Ev(uid="1.1", dap_gycm2=1.0)], study_uid="9.9.9"), tmp_path / "r.dcm")
    assert main(["replay", str(report), "--events", str(tmp_path / "e.jsonl"), "--summary",
                 str(tmp_path / "s.json")]) == 2
    out = capsys.readouterr().out
    assert "dose       no image frames (the device's dose report below)" in out
    assert "unknown (no dose" not in out and "study dose" in out
    # the device is the report's (user review s20 I6: blank)
    from sifluoro.dose.rdsr_read import read_rdsr as read

    device = read(report).device
    assert json.loads((tmp_path / "s.json").read_text())["device"] == {
        "manufacturer": device.manufacturer, "model": device.model} and device.manufacturer


def test_the_rdsr_of_a_de_identified_study_says_so(tmp_path):
    """User review s20 X6: a de-identified input gave an RDSR without PatientIdentityRemoved /
    DeidentificationMethod (a research PACS or a de-identification gateway keys on them)."""
    import pydicom

    paths = write_study(tmp_path / "s", [RunSpec(0.0, n_frames=3)])
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientIdentityRemoved, ds.DeidentificationMethod = "YES", "gateway profile 1"
        ds.save_as(path)
    assert main(["replay", str(tmp_path / "s"), "--events", str(tmp_path / "e.jsonl"), "--summary",
                 str(tmp_path / "s.json"), "--rdsr", str(tmp_path / "r.dcm"), "-q"]) == 0
    report = pydicom.dcmread(tmp_path / "r.dcm")
    assert (report.PatientIdentityRemoved, report.DeidentificationMethod) == ("YES", "gateway profile 1")
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", str(tmp_path / "r.dcm")], capture_output=True, text=True)
        assert [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Error")] == []


def test_sifluoros_own_report_alone_is_not_called_the_devices(tmp_path, capsys):
    """Review s20 #8: "no image frames (the device's dose report below)" was printed for
    sifluoro's own earlier report alone, which is not read as the device's: nothing below."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])
    assert main(["replay", str(tmp_path / "study"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json"), "--rdsr", str(tmp_path / "own.dcm"),
                 "-q"]) == 0
    main(["replay", str(tmp_path / "own.dcm"), "--events", str(tmp_path / "e2.jsonl"),
          "--summary", str(tmp_path / "s2.json")])
    out = capsys.readouterr().out
    assert "dose       no image frames, and no device dose report of this study" in out
