"""Which runs a device report's events cover (second review s12, #1 and #3): an event naming
only instances sifluoro never received, and events naming no image, are counted once, in the
study's dose, as ``dose summary`` counts them."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from datetime import timedelta

import pydicom
import pytest
from pydicom.uid import generate_uid

from sifluoro.acquire.dicom_reader import read_study
from sifluoro.config import DoseSettings
from sifluoro.dose.accumulate import DoseAccumulator, accumulate_study
from sifluoro.dose.rdsr_read import read_rdsr
from sifluoro.dose.summary import summarize
from sifluoro.replay import format_summary, replay
from tests.dicom_fixtures import STUDY_START, RunSpec, technique, write_study
from tests.dose.rdsr_fixtures import Ev, _item, acquired, build_rdsr, save


def started(seconds: float):
    """A DateTime Started item (an event's ``extra``), ``seconds`` after the study start."""
    item = _item("CONTAINS", "DATETIME", ("111526", "DCM", "DateTime Started"))
    item.DateTime = (STUDY_START + timedelta(seconds=seconds)).strftime("%Y%m%d%H%M%S")
    return item


def three_sources(folder, *, timed=True):
    """Run 1 (named by an acquisition, 10 mGy), run 2 a stored loop at t = 60 s (header 3000
    mGy) inside a fluoroscopy event that names no image (5-65 s, 3000 mGy), and an acquisition
    of 4000 mGy naming an instance sifluoro never received. The study: 7010 mGy."""
    paths = write_study(folder, [RunSpec(0.0, n_frames=3), RunSpec(60.0, n_frames=3, tech=technique(
        reported_air_kerma_mgy=3000.0, reported_dap_gycm2=100.0))])
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    when = (lambda s: [started(s)]) if timed else (lambda s: [])
    events = [Ev(fluoro=False, dap_gycm2=1.0, rp_mgy=10.0, pulses=3,
                 extra=when(0) + [acquired(first.SOPInstanceUID, first.SOPClassUID)]),
              Ev(dap_gycm2=100.0, rp_mgy=3000.0, pulses=450, extra=when(5)),
              Ev(fluoro=False, dap_gycm2=150.0, rp_mgy=4000.0, pulses=3,
                 extra=when(90) + [acquired(generate_uid(), first.SOPClassUID)])]
    save(build_rdsr(events, study_uid=first.StudyInstanceUID), folder / "rdsr.dcm")
    return folder


def test_an_event_naming_only_images_not_received_is_in_the_study_dose(tmp_path):
    """It was counted nowhere: replay 3010 mGy (no SRDL), dose summary 7010."""
    folder = three_sources(tmp_path / "study")
    summary = replay([folder], events_path=tmp_path / "e.jsonl", summary_path=tmp_path / "s.json",
                     rdsr_path=tmp_path / "out.dcm", stages=[]).summary
    assert summary["study_dose"]["air_kerma_mgy"] == pytest.approx(7010.0)
    assert summary["srdl_exceeded"] == ["air_kerma"]
    # the acquisition sent elsewhere, and the fluoroscopy beyond its stored loop
    assert summary["unstored"]["events"] == 2
    assert not (tmp_path / "out.dcm").exists()  # every run is the device report's
    studies, _ = summarize([folder])
    assert studies[0].air_kerma_mgy == pytest.approx(7010.0)  # the same as dose summary


@pytest.mark.parametrize("timed", [True, False])
def test_a_stored_loop_takes_the_fluoroscopy_event_whose_time_holds_it(tmp_path, timed):
    """Without times, the runs no event names share the events that name no image."""
    study = read_study([three_sources(tmp_path / "study", timed=timed)])
    report = read_rdsr(tmp_path / "study" / "rdsr.dcm")
    dose = accumulate_study(study, DoseSettings(), report=report)
    loop = [e for e in dose.events() if e.air_kerma_mgy == pytest.approx(3000.0)]
    assert len(loop) == 1 and loop[0].event_uid == report.events[1].event_uid  # once, the device's
    # the loop's 0.4 s of the event's 60 s are in its frames, the rest is unstored
    assert dose.totals.air_kerma_mgy == pytest.approx(10.0 + 3000.0 * 0.4 / 60.0, rel=1e-4)
    assert dose.study_totals.air_kerma_mgy == pytest.approx(7010.0)
    assert dose.unstored.fluoro_time_s == pytest.approx(60.0 - 0.4, rel=1e-4)


def test_a_run_outside_every_event_keeps_its_own_dose_beside_them(tmp_path):
    """A loop made after the report's events (t = 60 s; the fluoroscopy event at 200 s)."""
    folder = three_sources(tmp_path / "study")
    report = read_rdsr(folder / "rdsr.dcm")
    moved = replace(report, events=tuple(
        replace(e, start=e.start + timedelta(seconds=195)) if i == 1 else e
        for i, e in enumerate(report.events)))
    dose = accumulate_study(read_study([folder]), DoseSettings(), report=moved)
    assert dose.unstored.air_kerma_mgy == pytest.approx(7000.0)
    assert dose.totals.air_kerma_mgy == pytest.approx(3010.0)  # the loop's header


def test_an_event_not_received_leaves_the_unstored_dose_when_its_run_arrives(tmp_path):
    """The receiver and the Engine: the report first, then the run it names."""
    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(30.0, n_frames=3)])
    ds = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    events = [Ev(fluoro=False, rp_mgy=10.0, extra=[acquired(d.SOPInstanceUID, d.SOPClassUID)])
              for d in ds]
    save(build_rdsr(events, study_uid=ds[0].StudyInstanceUID), tmp_path / "study" / "rdsr.dcm")
    study = read_study([tmp_path / "study"])
    dose = DoseAccumulator(DoseSettings())
    dose.use_report(read_rdsr(tmp_path / "study" / "rdsr.dcm"), study.runs[:1])
    assert dose.unstored.air_kerma_mgy == pytest.approx(10.0)
    assert dose.prepare(study.runs[1]).source == "rdsr"
    assert dose.unstored.air_kerma_mgy == 0.0 and dose.unstored_events == ()


def test_a_report_that_names_no_image_gives_its_dose_to_the_runs(tmp_path):
    """No image named and no times: the runs share the events (counted once, as dose summary
    does); it was none of it (0.03 mGy beside 6020, no SRDL)."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(30.0, n_frames=3)])
    study = read_study([tmp_path / "study"])
    events = [Ev(dap_gycm2=1.0, rp_mgy=10.0), Ev(dap_gycm2=1.0, rp_mgy=10.0),
              Ev(dap_gycm2=400.0, rp_mgy=6000.0, pulses=9000)]
    save(build_rdsr(events, study_uid=study.study_instance_uid), tmp_path / "study" / "rdsr.dcm")
    summary = replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl",
                     summary_path=tmp_path / "s.json", stages=[]).summary
    assert summary["study_dose"]["air_kerma_mgy"] == pytest.approx(6020.0)
    assert summary["srdl_exceeded"] == ["air_kerma"]
    assert summary["dose_source"] == "rdsr"
    studies, _ = summarize([tmp_path / "study"])
    assert studies[0].air_kerma_mgy == pytest.approx(6020.0)


def test_the_vendor_report_with_stored_loops_counts_every_event_once(tmp_path, vendor_dir):
    """Siemens' example: its acquisitions name images not received, 3 fluoroscopy events were
    stored as loops (at their start times). Replay gave 1.55 mGy (5.36 before the previous fix);
    the report's events sum to 14.01, its accumulated total (the study's dose in dose summary
    and the registry) is 14.06: the study's dose is the device's total (review s15 H1)."""
    import tests.dicom_fixtures as F

    src = vendor_dir / "siemens_axiom_example_procedure.dcm"
    report = read_rdsr(src)
    loops = sorted((e for e in report.events if e.kind == "fluoroscopy" and e.air_kerma_mgy),
                   key=lambda e: -e.air_kerma_mgy)[:3]
    t0 = min(e.start for e in loops)
    specs = [RunSpec((e.start - t0).total_seconds() + 0.5, n_frames=4, tech=technique(
        reported_air_kerma_mgy=e.air_kerma_mgy, reported_dap_gycm2=e.dap_gycm2)) for e in loops]
    original = F.STUDY_START
    F.STUDY_START = t0
    try:
        F.write_study(tmp_path / "study", specs, study_uid=report.study_instance_uid)
    finally:
        F.STUDY_START = original
    shutil.copy(src, tmp_path / "study" / "rdsr.dcm")
    summary = replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl",
                     summary_path=tmp_path / "s.json", rdsr_path=tmp_path / "out.dcm",
                     stages=[]).summary
    every = report.air_kerma_mgy
    assert every == pytest.approx(14.06)
    assert summary["study_dose"]["air_kerma_mgy"] == pytest.approx(every)
    assert summary["unstored"]["events"] == len(report.events)  # 3 of them in part
    assert not (tmp_path / "out.dcm").exists()  # the device's report covers every loop
    assert json.loads((tmp_path / "s.json").read_text())["study_dose"]["air_kerma_mgy"] == pytest.approx(every)


def test_a_run_in_the_spring_forward_hour_stays_inside_the_report(tmp_path, monkeypatch):
    """A run at 02:30 on the night clocks go forward (Europe/Berlin, 29 March 2026) came back
    from its timestamp at 03:30: outside the report's span, so ``dose summary`` added its dose
    to the report's that holds it (second review s12 S3)."""
    import time
    from datetime import datetime

    import tests.dicom_fixtures as F

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    monkeypatch.setattr(F, "STUDY_START", datetime(2026, 3, 29, 2, 29, 0))
    try:
        paths = F.write_study(tmp_path / "study", [RunSpec(30.0, n_frames=3, tech=technique(
            reported_air_kerma_mgy=50.0, reported_dap_gycm2=5.0))])
        first = pydicom.dcmread(paths[0], stop_before_pixels=True)
        item = _item("CONTAINS", "DATETIME", ("111526", "DCM", "DateTime Started"))
        item.DateTime = "20260329022900"
        save(build_rdsr([Ev(dap_gycm2=5.0, rp_mgy=50.0, pulses=450, extra=[item])],
                        study_uid=first.StudyInstanceUID), tmp_path / "study" / "rdsr.dcm")
        studies, _ = summarize([tmp_path / "study"])
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert studies[0].air_kerma_mgy == pytest.approx(50.0)  # the loop once, in the report


def test_a_report_at_the_end_announces_each_alert_level_once(tmp_path):
    """The stored loop's header gives its fluoroscopy event's whole dose (3000 mGy); the report,
    arriving at the study's end, takes the loop down to its share and adds the rest as
    unstored: the study dose dipped and came back, and "3 Gy reached" was announced twice
    (review s13 F1)."""
    import numpy as np
    from sifluoro.model import Frame

    folder = three_sources(tmp_path / "study")
    study, report = read_study([folder]), read_rdsr(folder / "rdsr.dcm")
    dose, index, empty = DoseAccumulator(DoseSettings()), 0, np.zeros((0, 0), np.uint16)
    for run in sorted(study.runs, key=lambda r: r.start_s):
        for f in range(run.n_frames):
            dose.add(Frame(pixels=empty, index=index, frame_number=f + 1, t_s=run.start_s, run=run))
            index += 1
    dose.use_report(report, study.runs)
    levels = [(a.kind, a.level) for a in dose.alerts]
    assert ("air_kerma", 3000.0) in levels
    assert len(levels) == len(set(levels))


def test_a_fluoroscopy_event_naming_its_loop_counts_its_whole_time(tmp_path):
    """A 400 s fluoroscopy event naming its stored 3-frame loop: the loop had the event's dose
    but only its own 0.4 s, so the alert values missed the 5-minute notification while
    study_dose said 400 s (review s13 F2)."""
    paths = write_study(tmp_path / "s", [RunSpec(0.0, n_frames=3)])
    run = pydicom.dcmread(paths[0], stop_before_pixels=True)
    save(build_rdsr([Ev(fluoro=True, dap_gycm2=20.0, rp_mgy=200.0, pulses=3000, rate=7.5,
                        extra=[acquired(run.SOPInstanceUID, run.SOPClassUID)])],
                    study_uid=run.StudyInstanceUID), tmp_path / "rdsr.dcm")
    report = read_rdsr(tmp_path / "rdsr.dcm")
    dose = accumulate_study(read_study([tmp_path / "s"]), DoseSettings(), report=report)
    assert dose.study_totals.fluoro_time_s == pytest.approx(400.0)
    assert dose.study_totals.air_kerma_mgy == pytest.approx(200.0)  # the dose once, on the loop
    assert dose.totals.air_kerma_mgy == pytest.approx(200.0)
    assert ("fluoro_time", 300.0) in [(a.kind, a.level) for a in dose.alerts]


@pytest.mark.parametrize("order", ["AB", "BA"])
def test_a_loop_beside_simultaneous_plane_events_takes_the_frontal_planes(tmp_path, order):
    """Planes A and B fluoroscopy at once (3000 and 2000 mGy over 60 s), one stored loop: the
    loop took whichever event came first in the report, 20 or 13.3 mGy (review s13 F3)."""
    paths = write_study(tmp_path / "s", [RunSpec(60.0, n_frames=3)])
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    events = {"A": Ev(plane="A", dap_gycm2=100.0, rp_mgy=3000.0, pulses=450, extra=[started(5)]),
              "B": Ev(plane="B", dap_gycm2=60.0, rp_mgy=2000.0, pulses=450, extra=[started(5)])}
    save(build_rdsr([events[p] for p in order], study_uid=ds.StudyInstanceUID),
         tmp_path / "rdsr.dcm")
    dose = accumulate_study(read_study([tmp_path / "s"]), DoseSettings(),
                            report=read_rdsr(tmp_path / "rdsr.dcm"))
    assert dose.totals.air_kerma_mgy == pytest.approx(3000.0 * 0.4 / 60.0, rel=1e-4)
    assert dose.study_totals.air_kerma_mgy == pytest.approx(5000.0)


@pytest.mark.parametrize("name", ["philips_allura_clarity_u104.dcm", "philips_allura_clarity_u601.dcm",
                                  "siemens_axiom_artis.dcm", "siemens_axiom_example_procedure.dcm"])
def test_replay_gives_a_vendor_report_the_study_dose_dose_summary_gives(tmp_path, vendor_dir, name):
    """Review s15 H1: beside images its events do not cover, replay summed the report's events
    (Siemens AXIOM-Artis fluoroscopy 20.27 s, Philips DAP 12-16 % low) where ``dose summary``
    and the registry take its accumulated totals: one study, two doses. The study's dose is now
    the device's totals plus the runs outside them."""
    from sifluoro.dose.summary import summarize

    report = read_rdsr(vendor_dir / name)
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(20.0, n_frames=3)],
                study_uid=report.study_instance_uid)  # long after the report's exposures
    shutil.copy(vendor_dir / name, tmp_path / "study" / "rdsr.dcm")
    summary = replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl",
                     summary_path=tmp_path / "s.json", stages=[]).summary
    [registry] = summarize([tmp_path / "study"])[0]
    whole = summary["study_dose"]
    for quantity in ("air_kerma_mgy", "dap_gycm2", "fluoro_time_s"):
        assert whole[quantity] == pytest.approx(getattr(registry, quantity), rel=1e-6), quantity
    assert whole["air_kerma_mgy"] == pytest.approx(report.air_kerma_mgy + summary["air_kerma_mgy"])
    assert f"study dose {whole['air_kerma_mgy']:.2f} mGy" in format_summary(summary)


def test_replaying_only_a_dose_report_says_where_to_read_it(tmp_path, vendor_dir, capsys):
    """Review s15 M1: a device RDSR replayed alone gave an empty study and a zero dose,
    saying nothing of why."""
    from sifluoro.cli import main

    (tmp_path / "in").mkdir()
    shutil.copy(vendor_dir / "siemens_axiom_artis.dcm", tmp_path / "in")
    assert main(["replay", str(tmp_path / "in"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json"), "-q"]) == 2
    assert "only dose reports" in capsys.readouterr().err


def _one_run_and_its_report(folder, events, accumulated=None):
    """A 30-frame run (header dose 30 mGy) and a device report of it."""
    paths = write_study(folder, [RunSpec(0.0, n_frames=30, tech=technique(
        reported_air_kerma_mgy=30.0, reported_dap_gycm2=3.0))])
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    save(build_rdsr(events(first), accumulated=accumulated, study_uid=first.StudyInstanceUID),
         folder / "rdsr.dcm")
    return read_study([folder]), read_rdsr(folder / "rdsr.dcm")


def test_a_report_whose_events_leave_a_value_out_adds_no_difference_to_its_runs(tmp_path):
    """Review s15 (second) H1: the totals less the events' sum counted a value an event leaves
    out as 0, and put it into unstored while the run it covers counted its own: twice."""
    def naming(first, **kw):
        return [Ev(fluoro=True, dap_gycm2=3.0, rp_mgy=30.0, pulses=30, rate=7.5,
                   extra=[acquired(first.SOPInstanceUID, first.SOPClassUID)], **kw)]

    study, report = _one_run_and_its_report(tmp_path / "b", naming)
    no_dose = replace(report, events=tuple(replace(e, air_kerma_mgy=None, dap_gycm2=None)
                                           for e in report.events))
    dose = accumulate_study(study, DoseSettings(), report=no_dose)
    assert dose.study_totals.air_kerma_mgy == pytest.approx(30.0)  # 60 with the difference
    no_time = replace(report, events=tuple(replace(
        e, irradiation_duration_s=None, n_pulses=None, exposure_time_ms=None, pulse_width_ms=None)
        for e in report.events))
    dose = accumulate_study(study, DoseSettings(), report=no_time)
    assert dose.study_totals.fluoro_time_s == pytest.approx(4.0, abs=1e-3)  # was 8 s

    acc = {"single": {"dap_total": 5.0, "rp_total": 50.0, "fl_dap": 5.0, "fl_rp": 50.0,
                      "fl_time": 4.0, "acq_dap": 0.0, "acq_rp": 0.0, "acq_time": 0.0}}
    study, totals_only = _one_run_and_its_report(tmp_path / "a", lambda first: [], acc)
    dose = accumulate_study(study, DoseSettings(), report=totals_only)
    assert dose.study_totals.air_kerma_mgy == pytest.approx(30.0)  # was 80 (30 + all 50)
