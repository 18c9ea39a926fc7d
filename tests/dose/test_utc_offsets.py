"""Date-times with UTC offsets (a DT's own suffix, or TimezoneOffsetFromUTC): a device report in
UTC and its images in local time are the same moments (review s24 #2: the readers dropped both
offsets, so the runs fell outside the report's time and its dose was added to theirs)."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sifluoro.acquire.dicom_reader import read_study
from sifluoro.config import DoseSettings
from sifluoro.dicom_time import parse_dt, utc_offset, wall
from sifluoro.dose.accumulate import accumulate_study
from sifluoro.dose.rdsr_read import read_rdsr
from sifluoro.dose.rdsr_write import write_rdsr
from sifluoro.dose.summary import summarize
from sifluoro.replay import replay
from tests.dicom_fixtures import RunSpec, as_device_report, technique, write_study


@given(st.integers(-12 * 60, 14 * 60))
def test_an_offset_reads_back_as_the_same_timezone(minutes):
    sign = "-" if minutes < 0 else "+"
    text = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    assert utc_offset(text) == timezone(timedelta(minutes=minutes))


@pytest.mark.parametrize("text", ["", "0100", "+1", "+2500", "+0160", "UTC", None])
def test_what_is_no_offset_is_none(text):
    assert utc_offset(text) is None


def test_a_dt_keeps_its_own_offset_else_takes_the_instances():
    plus1 = timezone(timedelta(hours=1))
    assert parse_dt("20260304093000.5+0000", plus1) == datetime(2026, 3, 4, 9, 30, 0, 500000,
                                                                timezone.utc)
    assert parse_dt("20260304093000", plus1) == datetime(2026, 3, 4, 9, 30, tzinfo=plus1)
    assert parse_dt("20260304093000").tzinfo is None
    assert wall(parse_dt("20260304093000+0100")) == datetime(2026, 3, 4, 9, 30)


def _shift(text: str, hours: int, offset: str) -> str:
    t = datetime.strptime(text[:14], "%Y%m%d%H%M%S") + timedelta(hours=hours)
    return t.strftime("%Y%m%d%H%M%S") + text[14:].split("+")[0].split("-")[0] + offset


@pytest.fixture(params=[("+0100", 0, "+0100"), ("+0100", -1, "+0000")],
                ids=["same-offsets", "report-in-utc"])
def study_with_report(request, tmp_path):
    """Two runs (DAP 2 and 3 Gy·cm² in their headers, local time +0100) and the device's report
    of the same study naming no image, its times in ``rep_off`` (shifted to the same instants)."""
    img_off, rep_hours, rep_off = request.param
    paths = write_study(tmp_path / "images", [
        RunSpec(0.0, n_frames=5, tech=technique(reported_dap_gycm2=2.0, reported_air_kerma_mgy=10.0)),
        RunSpec(30.0, n_frames=5, tech=technique(reported_dap_gycm2=3.0, reported_air_kerma_mgy=15.0))])
    study = read_study([tmp_path / "images"])
    write_rdsr(study, accumulate_study(study, DoseSettings()), tmp_path / "mine.dcm")
    ds = as_device_report(tmp_path / "mine.dcm", tmp_path / "dev.dcm", scale=1.0)
    for item in ds.ContentSequence:
        if item.get("ValueType") == "DATETIME":
            item.DateTime = _shift(item.DateTime, rep_hours, rep_off)
        if item.ConceptNameCodeSequence[0].CodeValue == "113706":  # an irradiation event
            item.ContentSequence = [i for i in item.ContentSequence if i.get("ValueType") != "IMAGE"]
            for sub in item.ContentSequence:
                if sub.get("ValueType") == "DATETIME":
                    sub.DateTime = _shift(sub.DateTime, rep_hours, rep_off)
    ds.TimezoneOffsetFromUTC = rep_off
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "device.dcm")
    for p in paths:
        im = pydicom.dcmread(p)
        im.AcquisitionDateTime = im.AcquisitionDateTime.split("+")[0] + img_off
        im.TimezoneOffsetFromUTC = img_off
        im.save_as(folder / p.name)
    return folder


def test_a_report_in_utc_covers_runs_in_local_time(study_with_report, tmp_path):
    report = read_rdsr(study_with_report / "device.dcm")
    [dose], _ = summarize([study_with_report])
    assert (dose.dap_gycm2, len(dose.events)) == pytest.approx((report.dap_gycm2, 2))
    out = replay([study_with_report], events_path=tmp_path / "e.jsonl",
                 summary_path=tmp_path / "s.json", stages=[]).summary
    assert out["study_dose"]["dap_gycm2"] == pytest.approx(report.dap_gycm2)
    assert report.dap_gycm2 == pytest.approx(5.0)


def test_a_run_without_offset_beside_them_puts_only_itself_on_the_wall_clock(tmp_path):
    """Review s24b #5: the case above plus a run 2 h later from another source whose header
    has no offset: dose summary compared every time on the wall clock then (one naive time),
    the two covered runs fell outside the UTC report and counted twice (DAP 11 against 6);
    each run is now compared with the report on the clock both carry, as replay matches."""
    paths = write_study(tmp_path / "images", [
        RunSpec(0.0, n_frames=5, tech=technique(reported_dap_gycm2=2.0, reported_air_kerma_mgy=10.0)),
        RunSpec(30.0, n_frames=5, tech=technique(reported_dap_gycm2=3.0, reported_air_kerma_mgy=15.0)),
        RunSpec(7200.0, n_frames=5, tech=technique(reported_dap_gycm2=1.0, reported_air_kerma_mgy=5.0),
                filename="late.dcm")])
    study = read_study([tmp_path / "images"])
    study = type(study)(study.study_instance_uid, study.runs[:2], (), ())
    write_rdsr(study, accumulate_study(study, DoseSettings()), tmp_path / "mine.dcm")
    ds = as_device_report(tmp_path / "mine.dcm", tmp_path / "dev.dcm", scale=1.0)
    for item in ds.ContentSequence:
        if item.get("ValueType") == "DATETIME":
            item.DateTime = _shift(item.DateTime, -1, "+0000")
        if item.ConceptNameCodeSequence[0].CodeValue == "113706":
            item.ContentSequence = [i for i in item.ContentSequence if i.get("ValueType") != "IMAGE"]
            for sub in item.ContentSequence:
                if sub.get("ValueType") == "DATETIME":
                    sub.DateTime = _shift(sub.DateTime, -1, "+0000")
    ds.TimezoneOffsetFromUTC = "+0000"
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "device.dcm")
    for p in paths:
        im = pydicom.dcmread(p)
        if p.name != "late.dcm":
            im.AcquisitionDateTime = str(im.AcquisitionDateTime).split("+")[0] + "+0100"
            im.TimezoneOffsetFromUTC = "+0100"
        im.save_as(tmp_path / "in" / p.name)
    [dose], _ = summarize([tmp_path / "in"])
    out = replay([tmp_path / "in"], events_path=tmp_path / "e.jsonl",
                 summary_path=tmp_path / "s.json", stages=[]).summary
    assert dose.dap_gycm2 == pytest.approx(6.0) and out["study_dose"]["dap_gycm2"] == pytest.approx(6.0)


def test_runs_keep_their_wall_clock_gap_whatever_the_machines_timezone(tmp_path, monkeypatch):
    """Run starts were the wall clock read in the machine's own timezone: on a machine in
    Europe/Berlin two runs either side of its spring-forward hour (01:59 and 03:01 on the
    device) came out 2 minutes apart, elsewhere 62; the same study gave other results."""
    import time

    paths = write_study(tmp_path, [RunSpec(0.0, n_frames=2), RunSpec(10.0, n_frames=2)])
    for path, text in zip(paths, ("20260329015900", "20260329030100")):
        ds = pydicom.dcmread(path)
        ds.AcquisitionDateTime = text
        for keyword in ("AcquisitionDate", "ContentDate"):
            if keyword in ds:
                ds.data_element(keyword).value = text[:8]
        for keyword in ("AcquisitionTime", "ContentTime"):
            if keyword in ds:
                ds.data_element(keyword).value = text[8:]
        ds.save_as(path)
    gaps = []
    for zone in ("UTC", "Europe/Berlin"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        gaps.append([r.start_s for r in read_study([tmp_path]).runs])
    monkeypatch.undo()
    time.tzset()
    assert gaps == [[0.0, 3720.0], [0.0, 3720.0]]


def _fall_back_night(folder, first_offset: str | None = "+0200"):
    """Two runs on the night clocks go back (2026-10-25, Europe): the first at 02:50+0200
    (00:50Z), the second 20 minutes later at 02:10+0100 (01:10Z); a run without an offset in
    its header when ``first_offset`` is None."""
    paths = write_study(folder, [RunSpec(0.0, n_frames=2, filename="first.dcm"),
                                 RunSpec(60.0, n_frames=2, filename="second.dcm")])
    for path, text in zip(paths, (f"20261025025000{first_offset or ''}", "20261025021000+0100")):
        ds = pydicom.dcmread(path)
        ds.AcquisitionDateTime = text
        ds.save_as(path)
    return paths


def test_runs_that_carry_utc_offsets_keep_their_order_across_a_dst_fall_back(tmp_path):
    """Review s24b #10: on the wall clock the run made 20 minutes later was put 40 minutes
    earlier (first in the study). Runs that all carry an offset are placed as instants; with
    one run without an offset the study stays on the wall clock, as before."""
    _fall_back_night(tmp_path / "aware")
    runs = read_study([tmp_path / "aware"]).runs
    assert [(r.path.rsplit("/", 1)[-1], r.start_s) for r in runs] == [("first.dcm", 0.0),
                                                                       ("second.dcm", 1200.0)]
    _fall_back_night(tmp_path / "mixed", first_offset=None)
    runs = read_study([tmp_path / "mixed"]).runs
    assert [(r.path.rsplit("/", 1)[-1], r.start_s) for r in runs] == [("second.dcm", 0.0),
                                                                       ("first.dcm", 2400.0)]


def test_a_live_study_places_runs_that_carry_utc_offsets_as_instants(tmp_path):
    """The receiver places runs as they come on the same clock: the second run of the fall-back
    night 1200 s after the first (was 2400 s before it, marked out of order)."""
    from types import SimpleNamespace

    from sifluoro.acquire.dicom_reader import read_header, run_from_dataset
    from sifluoro.acquire.live import _start_on_study_clock

    first, second = (run_from_dataset(read_header(p), p) for p in _fall_back_night(tmp_path))
    study = SimpleNamespace(t0_s=None, t0_offset=None)
    t0 = _start_on_study_clock(study, first)
    study.t0_s, study.t0_offset = t0, first.started_at.utcoffset()
    assert _start_on_study_clock(study, second) - t0 == 1200.0
    # a run without an offset in that study is taken at the first run's offset
    naive = replace(second, started_at=second.started_at.replace(tzinfo=None), start_s=second.start_s)
    assert _start_on_study_clock(study, naive) - t0 == 1200.0 - 3600.0
