"""Dose accounting: geometry, pulsed timing, every alert level, per-run events, image summaries."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import DoseSettings
from sifluoro.dose import physics
from sifluoro.dose.accumulate import DoseAccumulator, accumulate_study
from sifluoro.dose.summary import summarize, table
from sifluoro.model import Device, Shutter
from tests.dicom_fixtures import RunSpec, technique, write_study


def _alerts(tmp_path, settings, **spec):
    write_study(tmp_path, [RunSpec(0.0, **spec)])
    dose = DoseAccumulator(settings)
    alerts = [a for f in iter_frames(read_study([tmp_path]), []) for a in dose.add(f)]
    return dose, alerts


def test_inverse_square_law():
    s = DoseSettings()
    near = physics.estimate_frame_dose(technique(source_to_isocenter_mm=700.0), rows=64, columns=64,
                                       frame_interval_ms=66.7, n_frames=1, settings=s)
    far = physics.estimate_frame_dose(technique(source_to_isocenter_mm=1000.0), rows=64, columns=64,
                                      frame_interval_ms=66.7, n_frames=1, settings=s)
    assert near[0] / far[0] == pytest.approx((850.0 / 550.0) ** 2, rel=1e-9)
    assert near[1] == pytest.approx(far[1], rel=1e-9)


def test_field_area_from_shutters_circle_and_fov():
    t = technique(imager_pixel_spacing_xy_mm=(0.5, 0.25), shutter=Shutter(rect_xyxy=(10, 20, 109, 219)))
    assert physics.field_area_cm2_at_detector(t, 512, 512) == pytest.approx(100 * 0.5 * 200 * 0.25 / 100)
    t = technique(imager_pixel_spacing_xy_mm=(0.2, 0.2), shutter=Shutter(circle_xyr=(256, 256, 100)))
    assert physics.field_area_cm2_at_detector(t, 512, 512) == pytest.approx(3.14159265 * 20 * 20 / 100)
    t = technique(imager_pixel_spacing_xy_mm=None, shutter=None, field_of_view_mm=(250.0, 200.0))
    assert physics.field_area_cm2_at_detector(t, 512, 512) == pytest.approx(500.0)


@pytest.mark.parametrize("rate", [7.5, 15.0, 30.0])
def test_fluoro_time_from_pulsed_timing(tmp_path, rate):
    n = 45
    write_study(tmp_path, [RunSpec(0.0, n_frames=n, frame_time_ms=1000.0 / rate, size=16)])
    dose = accumulate_study(read_study([tmp_path]), DoseSettings())
    assert dose.totals.fluoro_time_s == pytest.approx(n / rate, rel=1e-5)
    event = dose.events()[0]
    assert (event.n_pulses, event.kind) == (n, "fluoroscopy")
    assert event.irradiation_duration_s == pytest.approx(n / rate, rel=1e-5)


def test_frames_lost_in_a_damaged_file_go_into_the_run_event_not_the_totals(tmp_path):
    """Frames 1-4 of 10 seen; 5-10 given by the header only (per-frame reported kerma)."""
    from dataclasses import replace

    kerma = [float(k) for k in range(1, 11)]
    write_study(tmp_path, [RunSpec(0.0, n_frames=10, frame_time_ms=100.0, size=16)])
    study = read_study([tmp_path])
    run = study.runs[0]
    run = replace(run, technique=replace(run.technique,
                                         reported_air_kerma_mgy_per_frame=tuple(kerma)))
    study = replace(study, runs=(run,))
    dose = DoseAccumulator(DoseSettings())
    for frame in list(iter_frames(study, []))[:4]:
        dose.add(frame)
    dose.add_lost(run, 5)
    assert dose.totals.air_kerma_mgy == pytest.approx(sum(kerma[:4]))
    assert dose.totals.fluoro_time_s == pytest.approx(0.4)
    assert dose.lost_frames == 6 and dose.lost.air_kerma_mgy == pytest.approx(sum(kerma[4:]))
    assert dose.lost.fluoro_time_s == pytest.approx(0.6)
    event = dose.events()[0]
    assert (event.n_pulses, event.air_kerma_mgy) == (10, pytest.approx(sum(kerma)))
    assert event.irradiation_duration_s == pytest.approx(1.0)
    # the same as counting the run from its header alone
    whole = accumulate_study(study, DoseSettings())
    assert whole.totals.air_kerma_mgy == pytest.approx(event.air_kerma_mgy)
    dose.add_lost(run, 5)  # counted once
    assert dose.lost_frames == 6 and dose.events()[0].n_pulses == 10


def test_an_srdl_that_only_the_lost_frames_reach_raises_its_alert(tmp_path):
    from dataclasses import replace

    write_study(tmp_path, [RunSpec(0.0, n_frames=10, frame_time_ms=100.0, size=16)])
    study = read_study([tmp_path])
    run = study.runs[0]
    run = replace(run, technique=replace(run.technique,
                                         reported_air_kerma_mgy_per_frame=(10.0,) * 10))
    dose = DoseAccumulator(DoseSettings(srdl_air_kerma_mgy=50.0, air_kerma_first_alert_mgy=0.0))
    seen = [a for frame in list(iter_frames(replace(study, runs=(run,)), []))[:4]
            for a in dose.add(frame)]
    assert seen == [] and dose.srdl_exceeded == ()  # 40 mGy seen
    alerts = dose.add_lost(run, 5, index=3)  # 60 mGy more
    assert [(a.kind, a.level, a.index) for a in alerts] == [("srdl_air_kerma", 50.0, 3)]
    assert "lost in damaged files" in alerts[0].message and dose.srdl_exceeded == ("air_kerma",)
    assert dose.add_lost(run, 5) == []  # once


def test_acquisition_time_is_counted_apart(tmp_path):
    write_study(tmp_path, [RunSpec(0.0, n_frames=6, frame_time_ms=500.0, size=16,
                                   tech=technique(radiation_setting="GR"))])
    dose = accumulate_study(read_study([tmp_path]), DoseSettings())
    assert (dose.totals.fluoro_time_s, dose.totals.acquisition_time_s) == (0.0, pytest.approx(3.0))


def test_fluoro_time_alert_every_5_minutes(tmp_path):
    _, alerts = _alerts(tmp_path, DoseSettings(), n_frames=11, size=16, frame_time_ms=60_000.0)
    assert [a.level for a in alerts if a.kind == "fluoro_time"] == [300.0, 600.0]
    assert [a.index for a in alerts if a.kind == "fluoro_time"] == [4, 9]


def test_ncrp_air_kerma_levels_and_srdl_air_kerma(tmp_path):
    dose, alerts = _alerts(tmp_path, DoseSettings(), n_frames=6, size=16,
                           tech=technique(reported_air_kerma_mgy=6000.0, reported_dap_gycm2=1.0))
    assert [(a.kind, a.level, a.index) for a in alerts] == [
        ("air_kerma", 3000.0, 2), ("air_kerma", 4000.0, 3), ("air_kerma", 5000.0, 4),
        ("srdl_air_kerma", 5000.0, 4), ("air_kerma", 6000.0, 5)]
    assert dose.srdl_exceeded == ("air_kerma",)
    assert "SUBSTANTIAL RADIATION DOSE LEVEL" in alerts[3].message


def test_srdl_dap_once(tmp_path):
    dose, alerts = _alerts(tmp_path, DoseSettings(), n_frames=4, size=16,
                           tech=technique(reported_air_kerma_mgy=10.0, reported_dap_gycm2=1200.0))
    assert [(a.kind, a.level, a.unit, a.index) for a in alerts] == [("srdl_dap", 500.0, "Gy·cm²", 1)]
    assert dose.study_dose("1.2", Device()).srdl_exceeded == ("dap",)


def test_srdl_fluoro_time_and_configurable_levels(tmp_path):
    settings = DoseSettings(fluoro_time_alert_s=0.0, srdl_fluoro_time_s=120.0,
                            air_kerma_first_alert_mgy=0.0)
    _, alerts = _alerts(tmp_path, settings, n_frames=5, size=16, frame_time_ms=40_000.0,
                        tech=technique(reported_air_kerma_mgy=9000.0, reported_dap_gycm2=1.0))
    kinds = [(a.kind, a.index) for a in alerts]
    assert kinds == [("srdl_air_kerma", 2), ("srdl_fluoro_time", 2)]


def test_per_frame_reported_dose_is_used(tmp_path):
    write_study(tmp_path, [RunSpec(0.0, n_frames=3, size=16)])
    study = read_study([tmp_path])
    from dataclasses import replace

    run = study.runs[0]
    run = replace(run, technique=replace(run.technique, reported_air_kerma_mgy_per_frame=(1.0, 2.0, 4.0),
                                         reported_dap_gycm2_per_frame=(0.1, 0.2, 0.4)))
    dose = accumulate_study(replace(study, runs=(run,)), DoseSettings())
    assert (dose.totals.air_kerma_mgy, dose.totals.dap_gycm2) == (pytest.approx(7.0), pytest.approx(0.7))
    assert dose.source == "reported"


def test_rdsr_attached_to_accumulator_wins_for_its_runs(tmp_path):
    from sifluoro.dose.records import IrradiationEvent, StudyDose

    write_study(tmp_path, [RunSpec(0.0, n_frames=4, size=16), RunSpec(10.0, n_frames=2, size=16)])
    study = read_study([tmp_path])
    report = StudyDose(study.study_instance_uid, "rdsr", Device(), events=(
        IrradiationEvent("1.2.3", "fluoroscopy", dap_gycm2=2.0, air_kerma_mgy=8.0,
                         sop_instance_uids=(study.runs[0].sop_instance_uid,)),), planes=())
    dose = accumulate_study(study, DoseSettings(), report=report)
    first, second = dose.run_events()
    assert first.air_kerma_mgy == pytest.approx(8.0) and first.dose_source == "rdsr"
    assert second.dose_source == "estimated"
    assert dose.own_events() == (second,)  # sifluoro's RDSR: the run the report does not cover
    assert dose.source == "mixed"


def test_an_rdsr_event_that_references_several_runs_is_shared_among_their_frames(tmp_path):
    """An event naming two instances (one exposure stored as two files) counts its dose once,
    split over the 4 + 2 frames by frame, not once per instance."""
    from sifluoro.dose.records import IrradiationEvent, StudyDose

    write_study(tmp_path, [RunSpec(0.0, n_frames=4, size=16), RunSpec(10.0, n_frames=2, size=16)])
    study = read_study([tmp_path])
    report = StudyDose(study.study_instance_uid, "rdsr", Device(), events=(
        IrradiationEvent("1.2.3", "fluoroscopy", dap_gycm2=1.2, air_kerma_mgy=12.0,
                         sop_instance_uids=tuple(r.sop_instance_uid for r in study.runs)),),
        planes=())
    dose = accumulate_study(study, DoseSettings(), report=report)
    assert dose.totals.air_kerma_mgy == pytest.approx(12.0)
    assert dose.totals.dap_gycm2 == pytest.approx(1.2)
    assert [e.air_kerma_mgy for e in dose.run_events()] == pytest.approx([8.0, 4.0])
    # the study's events: the device's event once, under its own UID; none is sifluoro's own
    assert [(e.event_uid, e.air_kerma_mgy) for e in dose.events()] == [("1.2.3", pytest.approx(12.0))]
    assert dose.own_events() == () and dose.device_events == 1
    assert dose.source == "rdsr"


def test_summary_of_image_study_and_cli_table(tmp_path):
    write_study(tmp_path, [RunSpec(0.0, n_frames=10, size=16),
                           RunSpec(30.0, n_frames=3, size=16, tech=technique(radiation_setting="GR",
                                                                             reported_dap_gycm2=0.9,
                                                                             reported_air_kerma_mgy=4.5))])
    studies, rejected = summarize([tmp_path])
    assert rejected == []
    s = studies[0].summary()
    assert (s["source"], s["dose_source"], s["events"], s["planes"]) == ("images", "mixed", 2, 1)
    assert s["acquisition_dap_gycm2"] == pytest.approx(0.9)
    assert s["fluoro_time_s"] == pytest.approx(10 * 0.133333, rel=1e-5)
    assert s["dap_gycm2"] == pytest.approx(s["fluoro_dap_gycm2"] + 0.9)
    # user review s19 U18: per_plane carried float noise (5.199986999999999) beside the
    # rounded totals, and an image study's path was null
    (plane,) = s["per_plane"]
    assert (plane["fluoro_time_s"], plane["acquisition_time_s"]) == (s["fluoro_time_s"],
                                                                     s["acquisition_time_s"])
    assert s["path"] == str(tmp_path)
    assert "ACME Medical" in table(studies)
    out = subprocess.run([sys.executable, "-m", "sifluoro", "dose", "summary", "--json", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["air_kerma_mgy"] == pytest.approx(s["air_kerma_mgy"])
    human = subprocess.run([sys.executable, "-m", "sifluoro", "dose", "summary", str(tmp_path)],
                           capture_output=True, text=True, check=True).stdout
    assert "img/mix" in human


def test_summary_with_nothing_usable_exits_2(tmp_path):
    (tmp_path / "note.txt").write_text("hello")
    result = subprocess.run([sys.executable, "-m", "sifluoro", "dose", "summary", "--json", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""


def test_reports_of_one_study_merge(tmp_path):
    from sifluoro.dose.rdsr_read import read_rdsr
    from sifluoro.dose.summary import merge_reports
    from tests.dose.rdsr_fixtures import Ev, build_rdsr, save

    events = [Ev(uid="1.1", dap_gycm2=1.0), Ev(uid="1.2", dap_gycm2=2.0)]
    early = read_rdsr(save(build_rdsr(events[:1], study_uid="9.9"), tmp_path / "a.dcm"))
    cumulative = read_rdsr(save(build_rdsr(events, study_uid="9.9"), tmp_path / "b.dcm"))
    other_step = read_rdsr(save(build_rdsr([Ev(uid="1.3", dap_gycm2=4.0)], study_uid="9.9"), tmp_path / "c.dcm"))
    assert merge_reports([early, cumulative]).dap_gycm2 == pytest.approx(3.0)  # superseded, not added
    merged = merge_reports([early, cumulative, other_step])
    assert merged.dap_gycm2 == pytest.approx(7.0) and len(merged.events) == 3


def test_with_srdl_reached_names_each_level_the_totals_reach():
    from sifluoro.dose.records import PlaneTotals, StudyDose
    from sifluoro.dose.summary import with_srdl_reached

    def study(dap, kerma, fluoro_s, reached=()):
        return StudyDose("1.2.3", "rdsr", Device(), (), (PlaneTotals("single", dap, kerma, fluoro_time_s=fluoro_s),),
                         srdl_exceeded=reached)

    s = DoseSettings()
    assert with_srdl_reached(study(499.0, 4999.0, 3599.0), s).srdl_exceeded == ()
    assert with_srdl_reached(study(500.0, 5000.0, 3600.0), s).srdl_exceeded == ("air_kerma", "dap", "fluoro_time")
    assert with_srdl_reached(study(600.0, 10.0, 10.0), s).srdl_exceeded == ("dap",)
    assert with_srdl_reached(study(600.0, 10.0, 10.0), DoseSettings(srdl_dap_gycm2=0.0)).srdl_exceeded == ()
    assert with_srdl_reached(study(0.0, 0.0, 0.0, ("air_kerma",)), s).srdl_exceeded == ("air_kerma",)


def test_the_devices_report_and_sifluoros_of_one_study_count_once(tmp_path):
    """replay --rdsr beside the C-arm's own report: sifluoro's report repeats the device's
    exposures under event UIDs of its own; dose summary and the audit registry take the
    device's report alone (they added the two)."""
    import pydicom
    from pydicom.uid import generate_uid
    from sqlalchemy import select

    from sifluoro.audit.ingest import ingest
    from sifluoro.audit.schema import StudyRow, open_registry
    from sifluoro.dose.rdsr_write import write_rdsr
    from sifluoro.dose.records import IrradiationEvent, StudyDose, totals_from_events

    write_study(tmp_path / "in" / "images", [RunSpec(0.0, n_frames=8), RunSpec(20.0, n_frames=8)])
    study = read_study([tmp_path / "in" / "images"])
    events = [IrradiationEvent(generate_uid(), "fluoroscopy", dap_gycm2=1.0, air_kerma_mgy=10.0,
                               dose_source="rdsr", irradiation_duration_s=2.0,
                               sop_instance_uids=(run.sop_instance_uid,)) for run in study.runs]
    events.append(IrradiationEvent(generate_uid(), "fluoroscopy", dap_gycm2=3.0, air_kerma_mgy=30.0,
                                   dose_source="rdsr", irradiation_duration_s=6.0))
    device = StudyDose(study.study_instance_uid, "rdsr", study.device, tuple(events),
                       (totals_from_events("single", events),))
    path = write_rdsr(study, device, tmp_path / "in" / "device.dcm")
    ds = pydicom.dcmread(path)
    ds.SoftwareVersions = "VD11C"  # the C-arm's report, as its vendor writes it
    ds.save_as(path)
    write_rdsr(study, accumulate_study(study, DoseSettings(), report=device),
               tmp_path / "in" / "sifluoro.dcm")
    studies, _ = summarize([tmp_path / "in"])
    assert len(studies) == 1
    assert (studies[0].dap_gycm2, studies[0].air_kerma_mgy) == (pytest.approx(5.0), pytest.approx(50.0))
    engine = open_registry(str(tmp_path / "registry.db"))
    ingest([tmp_path / "in"], engine)
    with engine.connect() as connection:
        rows = list(connection.execute(select(StudyRow.dap_gycm2, StudyRow.air_kerma_mgy)))
    assert rows == [(pytest.approx(5.0), pytest.approx(50.0))]


@pytest.mark.parametrize("case", ["shared run", "two events one run", "named twice", "one present"])
def test_events_and_runs_that_are_not_one_to_one_keep_the_events_dose(tmp_path, case):
    """E(1.0) names r1 and r2 and E(2.0) names r2; two events name r1; an event names r1
    twice; an event names r1 and r2 with only r1 present: the frames seen carry the dose of
    every event that names them, each event spread over the distinct runs present it names."""
    from sifluoro.dose.records import IrradiationEvent, StudyDose
    from sifluoro.model import Study

    write_study(tmp_path, [RunSpec(0.0, n_frames=4, size=16), RunSpec(10.0, n_frames=2, size=16)])
    study = read_study([tmp_path])
    r1, r2 = study.runs

    def event(uid, dap, *runs):
        return IrradiationEvent(uid, "acquisition", dap_gycm2=dap, air_kerma_mgy=10 * dap,
                                sop_instance_uids=tuple(r.sop_instance_uid for r in runs))
    events, expected = {
        "shared run": ([event("1.1", 1.0, r1, r2), event("1.2", 2.0, r2)], 3.0),
        "two events one run": ([event("1.1", 1.0, r1), event("1.2", 2.0, r1)], 3.0),
        "named twice": ([event("1.1", 1.0, r1, r1)], 1.0),
        "one present": ([event("1.1", 1.0, r1, r2)], 1.0),
    }[case]
    if case == "one present":
        study = Study(study.study_instance_uid, (r1,))
    report = StudyDose(study.study_instance_uid, "rdsr", Device(), events=tuple(events), planes=())
    dose = accumulate_study(study, DoseSettings(), report=report)
    from_report = [e for e in dose.events() if e.dose_source == "rdsr"]  # a run not named: estimated
    assert sum(e.dap_gycm2 for e in from_report) == pytest.approx(expected)
    assert sum(e.air_kerma_mgy for e in from_report) == pytest.approx(10 * expected)


def test_a_report_used_twice_counts_its_events_once(tmp_path):
    from sifluoro.dose.accumulate import DoseAccumulator
    from sifluoro.dose.records import IrradiationEvent, StudyDose

    write_study(tmp_path, [RunSpec(0.0, n_frames=4, size=16)])
    study = read_study([tmp_path])
    event = IrradiationEvent("1.1", "acquisition", dap_gycm2=2.0, air_kerma_mgy=20.0,
                             sop_instance_uids=(study.runs[0].sop_instance_uid,))
    report = StudyDose(study.study_instance_uid, "rdsr", Device(), events=(event,), planes=())
    dose = DoseAccumulator(DoseSettings())
    dose.use_report(report, study.runs)
    dose.use_report(report, study.runs)
    run_dose = dose.prepare(study.runs[0])
    assert run_dose.source == "rdsr"
    assert run_dose.dap_gycm2_per_frame * 4 == pytest.approx(2.0)


def test_dose_summary_refuses_a_report_cut_short(tmp_path):
    """A cut copy beside the whole report: pydicom reads it as far as it goes, and it was
    added as another procedure step (the dose twice)."""
    import shutil

    from tests.dose.conftest import VENDOR_DIR

    whole = VENDOR_DIR / "philips_allura_clarity_u601.dcm"
    if not whole.is_file():
        pytest.skip(f"vendor RDSRs are not cached in {VENDOR_DIR}: run tests/dose/fetch_vendor_rdsr.sh")
    shutil.copy(whole, tmp_path / "whole.dcm")
    (tmp_path / "cut.dcm").write_bytes(whole.read_bytes()[:6040])
    alone, _ = summarize([whole])
    studies, rejected = summarize([tmp_path])
    assert [s.dap_gycm2 for s in studies] == [pytest.approx(alone[0].dap_gycm2)]
    assert [r.file for r in rejected] == [str(tmp_path / "cut.dcm")]
    assert "cut short" in rejected[0].reason


@pytest.mark.parametrize("offset", ["naive", "aware"])
def test_runs_of_sifluoros_report_outside_the_devices_report_are_added(offset):
    """A device report sent before the procedure ended: sifluoro's report of the same study
    repeats its runs and has the later ones; those (and only those) add their dose."""
    from datetime import datetime, timedelta, timezone

    from sifluoro.dose.records import IrradiationEvent, StudyDose, totals_from_events
    from sifluoro.dose.summary import merge_reports

    t0 = datetime(2026, 3, 4, 10, 0, 0)
    tz = timezone(timedelta(hours=1)) if offset == "aware" else None

    def ev(uid, at_s, dap, *, duration_s=4.0, start=True):
        when = (t0 + timedelta(seconds=at_s)).replace(tzinfo=tz) if start else None
        return IrradiationEvent(uid, "fluoroscopy", start=when, dap_gycm2=dap, air_kerma_mgy=10 * dap,
                                dose_source="rdsr", irradiation_duration_s=duration_s)

    def report(events, by_sifluoro):
        return StudyDose("1.2.3", "rdsr", Device(), tuple(events), (totals_from_events("single", events),),
                         path="own.dcm" if by_sifluoro else "device.dcm", by_sifluoro=by_sifluoro)

    device = report([ev("9.1", 0, 1.0), ev("9.2", 60, 2.0)], False)
    # sifluoro's runs: the two the device reported (its start a few seconds off), one 5 min
    # later, one 3 s after the last reported event ends (inside the margin), one without a time
    own = report([ev("5.1", 2, 1.1), ev("5.2", 61, 2.1), ev("5.3", 300, 4.0),
                  ev("5.4", 67, 8.0), ev("5.5", 900, 16.0, start=False)], True)
    merged = merge_reports([device, own])
    assert [e.event_uid for e in merged.events] == ["9.1", "9.2", "5.3"]
    assert merged.dap_gycm2 == pytest.approx(7.0) and merged.air_kerma_mgy == pytest.approx(70.0)
    assert merged.fluoro_time_s == pytest.approx(12.0)
    assert "device.dcm" in merged.path and "own.dcm" in merged.path
    # everything inside the device report's span, or no device report: as before
    assert merge_reports([device, report([ev("5.1", 2, 1.1), ev("5.2", 61, 2.1)], True)]).dap_gycm2 \
        == pytest.approx(3.0)
    assert merge_reports([own]).dap_gycm2 == pytest.approx(31.2)
    # a device report without start times cannot show what it misses: it stands alone
    untimed = report([ev("9.1", 0, 1.0, start=False)], False)
    assert merge_reports([untimed, own]).dap_gycm2 == pytest.approx(1.0)


def test_reports_with_different_utc_offsets_are_compared_as_instants():
    """A device report in UTC and sifluoro's report in local time (+01:00) of the same runs:
    the same moments, so nothing of sifluoro's is added (as wall clocks they are an hour
    apart and every run was added again)."""
    from datetime import datetime, timedelta, timezone

    from sifluoro.dose.records import IrradiationEvent, StudyDose, totals_from_events
    from sifluoro.dose.summary import merge_reports

    t0 = datetime(2026, 3, 4, 9, 0, 0, tzinfo=timezone.utc)
    local = timezone(timedelta(hours=1))

    def report(uids, tz, by_sifluoro):
        events = [IrradiationEvent(uid, "fluoroscopy", start=(t0 + timedelta(seconds=60 * k)).astimezone(tz),
                                   dap_gycm2=1.0, air_kerma_mgy=10.0, dose_source="rdsr",
                                   irradiation_duration_s=4.0) for k, uid in enumerate(uids)]
        return StudyDose("1.2.3", "rdsr", Device(), tuple(events), (totals_from_events("single", events),),
                         by_sifluoro=by_sifluoro)

    merged = merge_reports([report(["9.1", "9.2"], timezone.utc, False), report(["5.1", "5.2"], local, True)])
    assert [e.event_uid for e in merged.events] == ["9.1", "9.2"]
    assert merged.dap_gycm2 == pytest.approx(2.0)


def test_sifluoros_extra_runs_beside_a_biplane_report_go_on_its_frontal_plane():
    from datetime import datetime, timedelta

    from sifluoro.dose.records import IrradiationEvent, StudyDose, totals_from_events
    from sifluoro.dose.summary import merge_reports

    t0 = datetime(2026, 3, 4, 10, 0, 0)
    device_events = [IrradiationEvent(f"9.{k}", "fluoroscopy", plane=plane, start=t0, dap_gycm2=1.0,
                                      irradiation_duration_s=4.0) for k, plane in enumerate("AB")]
    device = StudyDose("1.2.3", "rdsr", Device(), tuple(device_events),
                       tuple(totals_from_events(p, device_events) for p in "AB"))
    late = IrradiationEvent("5.1", "fluoroscopy", start=t0 + timedelta(minutes=5), dap_gycm2=2.0,
                            irradiation_duration_s=4.0)
    own = StudyDose("1.2.3", "rdsr", Device(), (late,), (totals_from_events("single", [late]),),
                    by_sifluoro=True)
    merged = merge_reports([device, own])
    assert [p.plane for p in merged.planes] == ["A", "B"]
    assert merged.planes[0].dap_gycm2 == pytest.approx(3.0) and merged.dap_gycm2 == pytest.approx(4.0)


def test_a_pulsed_run_without_its_pulse_width_is_not_estimated_as_continuous(tmp_path, caplog):
    """RadiationMode PULSED, no AveragePulseWidth (Type 3): the pulse current was taken to flow
    for the whole frame interval, 19x the tube load here, with false alerts to follow
    (review s10 B#9). A continuous run is still estimated from mA × frame interval."""
    import logging

    import pydicom

    (pulsed,) = write_study(tmp_path / "pulsed", [RunSpec(0.0, tech=technique(pulse_width_ms=None))])
    ds = pydicom.dcmread(pulsed)
    ds.RadiationMode = "PULSED"
    ds.save_as(pulsed)
    write_study(tmp_path / "continuous", [RunSpec(0.0, tech=technique(pulse_width_ms=None))])
    with caplog.at_level(logging.WARNING):
        unknown = accumulate_study(read_study([tmp_path / "pulsed"]), DoseSettings())
    continuous = accumulate_study(read_study([tmp_path / "continuous"]), DoseSettings())
    assert unknown.totals.air_kerma_mgy == 0.0 and unknown.totals.sources == {"none"}
    assert "(0018,1154) AveragePulseWidth" in caplog.text
    assert continuous.totals.air_kerma_mgy > 0 and continuous.totals.sources == {"estimated"}


def test_a_report_arriving_after_the_frames_recounts_seen_and_lost_frames(tmp_path):
    """Frames counted from the headers, some seen and some lost in a damaged file, are
    recounted with the report's dose once a report naming their run arrives."""
    from sifluoro.dose.records import FLUOROSCOPY, IrradiationEvent, StudyDose

    write_study(tmp_path, [RunSpec(0.0, n_frames=5)])
    study = read_study([tmp_path])
    (run,) = study.runs
    dose = DoseAccumulator(DoseSettings())
    frames = list(iter_frames(study, []))
    for frame in frames[:2]:
        dose.add(frame)
    dose.add_lost(run, 3)
    assert dose.totals.sources == {"estimated"}
    report = StudyDose(study.study_instance_uid, "rdsr", Device(), (IrradiationEvent(
        "1.2.3", FLUOROSCOPY, dap_gycm2=10.0, air_kerma_mgy=50.0, dose_source="rdsr",
        sop_instance_uids=(run.sop_instance_uid,)),), ())
    dose.use_report(report, study.runs)
    assert dose.totals.dap_gycm2 == pytest.approx(4.0) and dose.lost.dap_gycm2 == pytest.approx(6.0)
    assert dose.totals.air_kerma_mgy == pytest.approx(20.0) and dose.lost.air_kerma_mgy == pytest.approx(30.0)
    assert dose.totals.sources == dose.lost.sources == {"rdsr"}
    (event,) = dose.events()
    assert (event.dap_gycm2, event.dose_source) == (pytest.approx(10.0), "rdsr")


def _report_of(study, runs, dap_gycm2: float, air_kerma_mgy: float):
    from sifluoro.dose.records import FLUOROSCOPY, IrradiationEvent, StudyDose

    return StudyDose(study.study_instance_uid, "rdsr", Device(), (IrradiationEvent(
        "1.2.3.4", FLUOROSCOPY, dap_gycm2=dap_gycm2, air_kerma_mgy=air_kerma_mgy,
        dose_source="rdsr", sop_instance_uids=tuple(r.sop_instance_uid for r in runs)),), ())


@pytest.mark.parametrize("known_first", [1, 2, 4])
def test_an_event_over_instances_announced_in_parts_is_counted_once(tmp_path, known_first):
    """An event naming 4 single-frame instances, the report arriving after the first 1 or 2:
    each later instance took the share worked out then (the event counted 2-4 times, review
    s11 B#1)."""
    write_study(tmp_path, [RunSpec(0.2 * i, n_frames=1) for i in range(4)])
    study = read_study([tmp_path])
    frames = list(iter_frames(study, []))
    report = _report_of(study, study.runs, 10.0, 50.0)
    dose = DoseAccumulator(DoseSettings())
    for frame in frames[:known_first]:
        dose.add(frame)
    dose.use_report(report, study.runs[:known_first])
    for frame in frames[known_first:]:
        dose.add(frame)
    assert dose.totals.dap_gycm2 == pytest.approx(10.0) and dose.totals.air_kerma_mgy == pytest.approx(50.0)
    assert dose.source == "rdsr"


def test_a_recount_that_reaches_a_dose_level_raises_its_alerts(tmp_path):
    """A late device report that puts the study over the notification and SRDL levels: the
    recount raised nothing and srdl_exceeded stayed empty (review s11 B#2)."""
    write_study(tmp_path, [RunSpec(0.0, n_frames=4)])
    study = read_study([tmp_path])
    dose = DoseAccumulator(DoseSettings())
    for frame in iter_frames(study, []):
        dose.add(frame)
    assert dose.alerts == []
    raised = dose.use_report(_report_of(study, study.runs, 600.0, 6000.0), study.runs)
    kinds = [a.kind for a in raised]
    assert kinds.count("air_kerma") == 4 and {"srdl_air_kerma", "srdl_dap"} <= set(kinds)
    assert dose.srdl_exceeded == ("air_kerma", "dap") and dose.recount_alerts == raised
    assert all(a.index == 3 for a in raised)  # at the last frame counted
