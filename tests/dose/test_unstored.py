"""A device report's events that name no stored image (fluoroscopy not stored): the study's
dose outside the frames (review s12 #1)."""
from __future__ import annotations

import json

import pydicom
import pytest

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import DoseSettings
from sifluoro.dose.accumulate import DoseAccumulator, accumulate_study
from sifluoro.dose.rdsr_read import read_rdsr
from sifluoro.replay import replay
from tests.dicom_fixtures import RunSpec, write_study
from tests.dose.rdsr_fixtures import Ev, acquired, build_rdsr, save


def unstored_study(folder):
    """2 runs; a device report with one event naming both runs (10 mGy) and 20 min of
    fluoroscopy not stored (6000 mGy, 400 Gy·cm²)."""
    paths = write_study(folder / "study", [RunSpec(0.0, n_frames=3), RunSpec(30.0, n_frames=3)])
    first, second = (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)
    events = [Ev(dap_gycm2=1.0, rp_mgy=10.0, extra=[acquired(first.SOPInstanceUID, first.SOPClassUID),
                                                    acquired(second.SOPInstanceUID, second.SOPClassUID)]),
              Ev(dap_gycm2=400.0, rp_mgy=6000.0, pulses=9000, rate=7.5)]
    report = save(build_rdsr(events, study_uid=first.StudyInstanceUID), folder / "study" / "rdsr.dcm")
    return folder / "study", report


def test_the_unstored_exposures_count_outside_the_frames(tmp_path):
    folder, path = unstored_study(tmp_path)
    study, report = read_study([folder]), read_rdsr(path)
    dose = DoseAccumulator(DoseSettings())
    raised = dose.use_report(report, study.runs)
    assert dose.use_report(report, study.runs) == []  # the same report again: counted once
    assert dose.unstored.air_kerma_mgy == pytest.approx(6000.0)
    assert dose.unstored.dap_gycm2 == pytest.approx(400.0)
    assert dose.unstored.fluoro_time_s == pytest.approx(1200.0)
    assert "srdl_air_kerma" in [a.kind for a in raised] and dose.srdl_exceeded == ("air_kerma",)
    for frame in iter_frames(study, []):
        dose.add(frame)
    assert dose.totals.air_kerma_mgy < 11.0  # the frames' counters stay the frames'
    unstored = report.events[1]
    assert dose.events()[-1] == unstored  # in the study's events with the device's event UID
    whole = dose.study_dose(study.study_instance_uid, study.device)
    assert whole.air_kerma_mgy == pytest.approx(6000.0 + dose.totals.air_kerma_mgy)
    assert whole.dose_source == "rdsr"  # every dose is the device report's


def test_the_alert_levels_count_the_unstored_exposures_when_frames_follow(tmp_path):
    """A report read first (replay): the frames' crossings start from the unstored dose, and
    no level is raised twice."""
    folder, path = unstored_study(tmp_path)
    study = read_study([folder])
    dose = accumulate_study(study, DoseSettings(), report=read_rdsr(path))
    kinds = [a.kind for a in dose.alerts]
    assert kinds.count("srdl_air_kerma") == 1 and kinds.count("fluoro_time") == 4


def test_replay_summary_alerts_and_rdsr_hold_the_unstored_exposures(tmp_path):
    folder, path = unstored_study(tmp_path)
    summary = replay([folder], events_path=tmp_path / "e.jsonl", summary_path=tmp_path / "s.json",
                     rdsr_path=tmp_path / "out.dcm", stages=[]).summary
    assert summary["srdl_exceeded"] == ["air_kerma"]
    assert summary["unstored"]["events"] == 1
    assert summary["unstored"]["air_kerma_mgy"] == pytest.approx(6000.0)
    assert summary["study_dose"]["air_kerma_mgy"] == pytest.approx(6000.0 + summary["air_kerma_mgy"])
    # = the last event's cumulative dose (docs/contract.md §3)
    assert summary["air_kerma_mgy"] < 11.0
    assert any(a["kind"] == "srdl_air_kerma" for a in summary["alerts"])
    assert json.loads((tmp_path / "s.json").read_text())["unstored"]["events"] == 1
    # both runs are the device report's: sifluoro's RDSR would add nothing to it
    assert "rdsr" not in summary and not (tmp_path / "out.dcm").exists()


def _engine_fed_before_its_late_report(tmp_path, event, handler):
    """(folder, engine, study): the unstored study's frames fed, its report kept back in
    ``tmp_path/late.dcm``."""
    from sifluoro import Engine, Settings

    folder, _ = unstored_study(tmp_path)
    (folder / "rdsr.dcm").rename(tmp_path / "late.dcm")
    engine = Engine(Settings(latency_budget_ms=1e9), stages=[])
    engine.on(event, handler)
    study = read_study([folder])
    engine.prepare(study)
    for frame in iter_frames(study, []):
        engine.feed(frame)
    return folder, engine, study


def test_the_engine_raises_the_srdl_of_a_late_report_of_unstored_fluoroscopy(tmp_path):
    alerts = []
    folder, engine, study = _engine_fed_before_its_late_report(tmp_path, "alert", alerts.append)
    engine.prepare(read_study([tmp_path / "late.dcm"], study_uid=study.study_instance_uid))
    summary = engine.close()
    assert summary["srdl_exceeded"] == ["air_kerma"]
    assert summary["unstored"]["air_kerma_mgy"] == pytest.approx(6000.0)
    assert any(a["kind"] == "srdl_air_kerma" for a in summary["alerts"])
    assert "srdl_air_kerma" in [a.kind for a in alerts]  # announced to the plug-in


def test_a_report_that_names_no_image_gives_its_events_to_the_runs(tmp_path, caplog):
    """Its events may be the stored runs' own: counted from the headers and again as unstored,
    the study's dose would be double; with no times, the runs share them (test_report_cover),
    each for the part of the event's time their frames stand for: the 20 min of fluoroscopy
    beyond them are unstored, in the alert levels."""
    folder, _ = unstored_study(tmp_path)
    study = read_study([folder])
    report = read_rdsr(folder / "rdsr.dcm")
    from dataclasses import replace
    blind = replace(report, events=tuple(replace(e, sop_instance_uids=()) for e in report.events))
    dose = DoseAccumulator(DoseSettings())
    kinds = [a.kind for a in dose.use_report(blind, study.runs)]
    assert kinds.count("fluoro_time") == 3 and "srdl_air_kerma" in kinds
    assert "names no image" in caplog.text
    assert dose.prepare(study.runs[0]).source == "rdsr"
    whole = accumulate_study(study, DoseSettings(), report=blind).study_totals
    assert whole.air_kerma_mgy == pytest.approx(6010.0)
    assert whole.fluoro_time_s == pytest.approx(1200.0 + 10 / 7.5, abs=1.0)


def test_a_stored_loop_the_report_does_not_name_is_not_counted_twice(tmp_path):
    """Devices name no stored fluoroscopy loop in their events: a run that no event names may be
    the event that names no image, so that event is not added beside it (it was: 3000 mGy
    twice); the loop's frames (0.4 s) stand for their part of its 60 s, the rest is unstored."""
    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(60.0, n_frames=3)])
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    events = [Ev(fluoro=False, dap_gycm2=1.0, rp_mgy=10.0,
                 extra=[acquired(first.SOPInstanceUID, first.SOPClassUID)]),
              Ev(dap_gycm2=100.0, rp_mgy=3000.0, pulses=450, rate=7.5)]  # run 2, the loop
    save(build_rdsr(events, study_uid=first.StudyInstanceUID), tmp_path / "study" / "rdsr.dcm")
    study = read_study([tmp_path / "study"])
    beyond_loop = 3000.0 * (1 - 0.4 / 60.0)
    dose = accumulate_study(study, DoseSettings(), report=read_rdsr(tmp_path / "study" / "rdsr.dcm"))
    assert dose.unstored.air_kerma_mgy == pytest.approx(beyond_loop, rel=1e-4)
    assert dose.study_totals.air_kerma_mgy == pytest.approx(3010.0)
    # the same when the loop arrives after the report (the receiver, the Engine)
    late = DoseAccumulator(DoseSettings())
    late.use_report(read_rdsr(tmp_path / "study" / "rdsr.dcm"), study.runs[:1])
    assert late.unstored.air_kerma_mgy == pytest.approx(3000.0)
    late.prepare(study.runs[1])
    assert late.unstored.air_kerma_mgy == pytest.approx(beyond_loop, rel=1e-4)


def test_the_dose_shown_holds_the_unstored_exposures_the_alerts_count(tmp_path):
    """Beside a 6 Gy SRDL alert, the dose handler and each frame's event said 10 mGy (second
    review s12 #8): they give the study's whole dose too (``study_*``)."""
    shown = []
    folder, engine, study = _engine_fed_before_its_late_report(tmp_path, "dose", shown.append)
    assert shown[-1].study_air_kerma_mgy == shown[-1].air_kerma_mgy < 11.0
    counted = shown[-1].air_kerma_mgy
    engine.prepare(read_study([tmp_path / "late.dcm"], study_uid=study.study_instance_uid))
    # the frames' counter stays as counted (never down, review s16 H5); the study's dose is
    # the report's: its 10 mGy for the stored run and the 6 Gy beyond it
    assert shown[-1].air_kerma_mgy == counted
    assert shown[-1].study_air_kerma_mgy == pytest.approx(6010.0)
    assert shown[-1].study_fluoro_time_s == pytest.approx(1200.0 + shown[-1].fluoro_time_s)
    engine.close()
    # replay reads the report first: every frame's event gives the study's dose
    (tmp_path / "late.dcm").rename(folder / "rdsr.dcm")
    replay([folder], events_path=tmp_path / "e.jsonl", summary_path=tmp_path / "s.json", stages=[])
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert all(e["dose"]["study_air_kerma_mgy"] == pytest.approx(6000.0 + e["dose"]["air_kerma_mgy"])
               for e in events)


def _corrected(folder, report_path, out_path, rp_mgy: float):
    """A correction of ``report_path``: its unstored event reissued under a new UID with
    ``rp_mgy``, naming the original in (0040,A360) Predecessor Documents Sequence."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import generate_uid

    old = pydicom.dcmread(report_path)
    paths = sorted(folder.glob("*_run.dcm"))
    first = pydicom.dcmread(paths[-1], stop_before_pixels=True)
    second = pydicom.dcmread(paths[0], stop_before_pixels=True)
    events = [Ev(dap_gycm2=1.0, rp_mgy=10.0, extra=[acquired(first.SOPInstanceUID, first.SOPClassUID),
                                                    acquired(second.SOPInstanceUID, second.SOPClassUID)]),
              Ev(dap_gycm2=300.0, rp_mgy=rp_mgy, pulses=9000, rate=7.5, uid=generate_uid())]
    ds = build_rdsr(events, study_uid=old.StudyInstanceUID)
    sop, series, study = Dataset(), Dataset(), Dataset()
    sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = old.SOPClassUID, old.SOPInstanceUID
    series.SeriesInstanceUID, series.ReferencedSOPSequence = old.SeriesInstanceUID, Sequence([sop])
    study.StudyInstanceUID, study.ReferencedSeriesSequence = old.StudyInstanceUID, Sequence([series])
    ds.PredecessorDocumentsSequence = Sequence([study])
    return save(ds, out_path)


def test_a_corrected_report_replaces_the_unstored_events_it_reissues(tmp_path):
    """A correction that reissues the unstored fluoroscopy (6000 -> 5000 mGy) under a new event
    UID was added to the original: 11 Gy (second review s12 S4). It names the original as its
    predecessor: the original is left out, in the Engine as in ``dose summary``."""
    from sifluoro import Engine, Settings
    from sifluoro.dose.summary import summarize

    folder, path = unstored_study(tmp_path)
    (folder / "rdsr.dcm").rename(tmp_path / "first.dcm")
    _corrected(folder, tmp_path / "first.dcm", tmp_path / "fix" / "corrected.dcm", 5000.0)
    engine = Engine(Settings(latency_budget_ms=1e9), stages=[])
    study = read_study([folder])
    engine.prepare(study)
    engine.prepare(read_study([tmp_path / "first.dcm"], study_uid=study.study_instance_uid))
    assert engine.dose.unstored.air_kerma_mgy == pytest.approx(6000.0)
    engine.prepare(read_study([tmp_path / "fix"], study_uid=study.study_instance_uid))
    assert engine.dose.unstored.air_kerma_mgy == pytest.approx(5000.0)
    engine.close()
    (tmp_path / "first.dcm").rename(folder / "first.dcm")
    (tmp_path / "fix" / "corrected.dcm").rename(folder / "corrected.dcm")
    studies, _ = summarize([folder])
    assert studies[0].air_kerma_mgy == pytest.approx(5010.0)
