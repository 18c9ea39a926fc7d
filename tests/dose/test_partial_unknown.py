"""A run of unknown dose beside runs of known dose: the totals are lower bounds, and say so
(review s12 #4)."""
from __future__ import annotations

import shutil
import subprocess

import pydicom
import pytest

from sifluoro.dose.summary import summarize, table
from sifluoro.replay import format_summary, replay
from tests.dicom_fixtures import RunSpec, technique, write_study


def test_a_run_of_unknown_dose_is_counted_in_the_summaries_and_the_rdsr(tmp_path):
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(60.0, n_frames=30, tech=technique(
        kvp=None, tube_current_ma=None, pulse_width_ms=None))])
    summary = replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl",
                     summary_path=tmp_path / "s.json", rdsr_path=tmp_path / "r.dcm", stages=[]).summary
    assert summary["dose_source"] == "estimated" and summary["runs_dose_unknown"] == 1
    assert "1 run of unknown air kerma or DAP, left out of that total" in format_summary(summary)
    # the events say so too, for a display (review s20 O1): from that run's frames on
    import json

    doses = [json.loads(line)["dose"] for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [d.get("runs_dose_unknown", 0) for d in doses] == [0] * 3 + [1] * 30
    (study,), _ = summarize([tmp_path / "study"])
    assert study.summary()["events_dose_unknown"] == 1
    # the table a physicist reads marks the totals as lower bounds (review s16 M6)
    row = table([study]).splitlines()[2]
    kerma = study.summary()["air_kerma_mgy"]
    assert f"≥{kerma:.2f}" in row and "lower bound" in table([study])
    ds = pydicom.dcmread(tmp_path / "r.dcm")
    comments = [i.TextValue for i in ds.ContentSequence
                if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert len(comments) == 1 and "leave out 1 irradiation event" in comments[0]
    if shutil.which("dciodvfy"):
        out = subprocess.run(["dciodvfy", "-new", str(tmp_path / "r.dcm")], capture_output=True, text=True)
        assert [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Error")] == []


def test_only_the_total_that_events_leave_out_is_a_lower_bound_in_the_table(tmp_path):
    """A run whose header reports its DAP but no air kerma (and no technique to estimate it)
    beside a whole run: the DAP is exact, the air kerma a lower bound; the table marked both
    '≥' (session 24's note)."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(60.0, n_frames=5, tech=technique(
        kvp=None, tube_current_ma=None, pulse_width_ms=None, reported_dap_gycm2=2.0))])
    (study,), _ = summarize([tmp_path / "study"])
    s = study.summary()
    assert s["events_dose_unknown"] == 1
    row = table([study]).splitlines()[2]
    assert f"≥{s['air_kerma_mgy']:.2f}" in row
    assert f" {s['dap_gycm2']:.4f}" in row and f"≥{s['dap_gycm2']:.4f}" not in row


def test_a_study_whose_runs_all_have_a_dose_says_none_is_unknown(tmp_path):
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])
    summary = replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl",
                     summary_path=tmp_path / "s.json", rdsr_path=tmp_path / "r.dcm", stages=[]).summary
    assert summary["runs_dose_unknown"] == 0 and "unknown dose" not in format_summary(summary)
    (study,), _ = summarize([tmp_path / "study"])
    assert "≥" not in table([study])
    ds = pydicom.dcmread(tmp_path / "r.dcm")
    assert not [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121106"]


def test_a_reports_own_totals_are_not_lower_bounds_when_its_events_lack_a_dose(tmp_path):
    """Events with DAP only, the study's Dose (RP) Total in the accumulated container (some
    C-arms compute Ka,r only for the study): the totals are the device's, not lower bounds."""
    from tests.dose.rdsr_fixtures import Ev, build_rdsr, save

    ds = build_rdsr([Ev(dap_gycm2=20.0, rp_mgy=300.0), Ev(dap_gycm2=10.0, rp_mgy=150.0)])
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "113706":  # an event: drop its Dose (RP)
            item.ContentSequence = [c for c in item.ContentSequence
                                    if c.ConceptNameCodeSequence[0].CodeValue != "113738"]
    save(ds, tmp_path / "in" / "r.dcm")
    (study,), _ = summarize([tmp_path / "in"])
    s = study.summary()
    assert s["air_kerma_mgy"] == 450.0 and s["events_dose_unknown"] == 0


def test_dose_psd_of_a_report_whose_every_dose_is_unknown_gives_no_number(tmp_path, capsys):
    """User review s20 H2: `dose psd` of an RDSR whose events all say "Value unknown" printed
    a peak skin dose of 0.00 mGy ("0 events in 0 projection(s)"), which a physicist would copy
    into a skin-dose follow-up list; pyskindose then failed on it."""
    from sifluoro.cli import main

    unknown = technique(kvp=None, tube_current_ma=None, pulse_width_ms=None)
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3, tech=unknown),
                                     RunSpec(60.0, n_frames=3, tech=unknown)])
    replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl", summary_path=tmp_path / "s.json",
           rdsr_path=tmp_path / "r.dcm", stages=[])
    assert main(["dose", "psd", "--pyskindose", str(tmp_path / "r.dcm")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'r.dcm'}: unknown (none of its 2 events gives Ka,r; Ka,r total unknown)" in out
    assert "0.00" not in out and "pyskindose" not in out
    # one event of unknown dose beside a known one: the estimate is a lower bound, said so
    write_study(tmp_path / "mixed", [RunSpec(0.0, n_frames=3), RunSpec(60.0, n_frames=3, tech=unknown)])
    replay([tmp_path / "mixed"], events_path=tmp_path / "e2.jsonl", summary_path=tmp_path / "s2.json",
           rdsr_path=tmp_path / "r2.dcm", stages=[])
    assert main(["dose", "psd", str(tmp_path / "r2.dcm")]) == 0
    assert "; 1 event without Ka,r left out: a lower bound)" in capsys.readouterr().out


def test_sifluoros_own_rdsr_of_unknown_dose_reads_back_as_the_images_say(tmp_path):
    """User review s20 P0: from the images a study was `dose_source none` (or its totals lower
    bounds); from sifluoro's RDSR of it, `estimated` with `events_dose_unknown 0`, so the
    registry's statistics depended on which file was ingested."""
    unknown = technique(kvp=None, tube_current_ma=None, pulse_width_ms=None)
    for name, runs in (("unk", [RunSpec(0.0, n_frames=3, tech=unknown), RunSpec(60.0, n_frames=3, tech=unknown)]),
                       ("part", [RunSpec(0.0, n_frames=3), RunSpec(60.0, n_frames=3, tech=unknown)])):
        write_study(tmp_path / name, runs)
        replay([tmp_path / name], events_path=tmp_path / f"{name}.jsonl",
               summary_path=tmp_path / f"{name}.json", rdsr_path=tmp_path / f"{name}.dcm", stages=[])
        (from_images,), _ = summarize([tmp_path / name])
        (from_report,), _ = summarize([tmp_path / f"{name}.dcm"])
        images, report = from_images.summary(), from_report.summary()
        for key in ("dose_source", "events_dose_unknown"):
            assert report[key] == images[key], (name, key)
        for key in ("air_kerma_mgy", "dap_gycm2"):
            assert report[key] == (None if images[key] is None else pytest.approx(images[key], rel=1e-9))
    assert (images["events_dose_unknown"], report["dose_source"]) == (1, "estimated")


def test_a_device_report_of_known_totals_keeps_its_source_when_its_events_say_unknown(tmp_path):
    """Review s20 P1: a device report whose every event says "Value unknown" but whose
    accumulated totals give the dose read back as dose_source "none" beside its known totals
    (the registry then counted it both as of unknown dose and in the DAP statistics)."""
    got = _device_report_saying_unknown(tmp_path, "event", ("dap", "rp")).summary()
    assert (got["dose_source"], got["air_kerma_mgy"], got["dap_gycm2"]) == ("rdsr", 10.0, 5.0)


def test_an_estimate_without_the_source_detector_distance_has_no_dap(tmp_path):
    """Review s20 V1: without the SID the estimate's DAP was 0.0 Gy·cm² labelled estimated
    (the field at the detector cannot be scaled to the patient): unknown, not 0."""
    write_study(tmp_path / "s", [RunSpec(0.0, n_frames=3, tech=technique(sid_mm=None))])
    (study,), _ = summarize([tmp_path / "s"])
    got = study.summary()
    assert got["air_kerma_mgy"] > 0 and got["dap_gycm2"] is None
    assert (got["dose_source"], got["events_dose_unknown"]) == ("estimated", 1)


def test_a_total_said_unknown_is_the_sum_of_its_known_parts(tmp_path):
    """Review s20 #2: a device report whose DAP Total says "Value unknown" but whose fluoroscopy
    and acquisition DAP totals are given read DAP None (it was, and is again, their sum)."""
    study = _device_report_saying_unknown(tmp_path, "accum", ("dap_total",))
    assert study.summary()["dap_gycm2"] == pytest.approx(5.0)


def _device_report_saying_unknown(tmp_path, container: str, concepts: tuple[str, ...]):
    """A device report (two events; accumulated DAP 5 = 4 fluoroscopy + 1 acquisition, Dose (RP)
    10) whose ``concepts`` (rdsr_fixtures.N keys) in every ``container`` say "Value unknown",
    as summarize reads it."""
    from pydicom.sequence import Sequence

    from tests.dose import rdsr_fixtures as F

    acc = {"single": {"dap_total": 5.0, "rp_total": 10.0, "fl_dap": 4.0, "fl_rp": 8.0,
                      "fl_time": 60.0, "acq_dap": 1.0, "acq_rp": 2.0, "acq_time": 1.0}}
    ds = F.build_rdsr([F.Ev(), F.Ev(fluoro=False, pulses=3)], accumulated=acc)
    codes = {F.N[c][0] for c in concepts}
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == F.N[container][0]:
            for child in item.ContentSequence:
                if child.ConceptNameCodeSequence[0].CodeValue in codes:
                    child.MeasuredValueSequence = Sequence([])
    (study,), _ = summarize([F.save(ds, tmp_path / "r.dcm")])
    return study


def test_a_run_of_unknown_time_makes_the_fluoroscopy_time_a_lower_bound(tmp_path):
    """Review s21 #5: replay said "+ 1 run of unknown time, not counted", but `dose summary`
    printed the time of the other runs as the study's, and its JSON had no word of it."""
    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(20.0, n_frames=3)])
    ds = pydicom.dcmread(paths[1])
    for keyword in ("FrameTime", "FrameIncrementPointer", "FrameTimeVector"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(paths[1])
    (study,), _ = summarize([tmp_path / "study"])
    s = study.summary()
    assert s["events_time_unknown"] == 1 and s["events_dose_unknown"] == 0
    row = table([study]).splitlines()[2]
    assert f"≥{s['fluoro_time_s']:.1f}" in row
    assert "events of unknown dose or time" in table([study])
    write_study(tmp_path / "timed", [RunSpec(0.0)])
    (whole,), _ = summarize([tmp_path / "timed"])
    assert whole.summary()["events_time_unknown"] == 0
    assert "≥" not in table([whole])


def test_a_device_reports_own_fluoroscopy_time_is_no_lower_bound():
    """Code review s21 #4: a device report's accumulated time is its whole count, even when
    an event of it gives no duration: no '≥' (its JSON says events_time_unknown 0)."""
    from sifluoro.dose.records import FLUOROSCOPY, IrradiationEvent, PlaneTotals, StudyDose
    from sifluoro.model import Device

    event = IrradiationEvent(event_uid="1.2.3", kind=FLUOROSCOPY, dap_gycm2=0.1,
                             air_kerma_mgy=1.0, dose_source="rdsr")
    plane = PlaneTotals(plane="single", dap_gycm2=0.1, air_kerma_mgy=1.0, fluoro_dap_gycm2=0.1,
                        fluoro_air_kerma_mgy=1.0, fluoro_time_s=42.0)
    for from_report in (True, False):
        study = StudyDose(study_instance_uid="1.2.3.4", source="rdsr", device=Device(),
                          events=(event,), planes=(plane,), planes_from_report=from_report)
        assert study.summary()["events_time_unknown"] == (0 if from_report else 1)
        assert ("≥" in table([study])) is not from_report


def test_a_device_total_filled_from_events_that_leave_it_out_is_a_lower_bound(tmp_path):
    """Review s24 #9: a device report whose DAP totals say "Value unknown" and one of whose
    events' DAP is unknown: its totals were filled with the known events' sum but kept as the
    device's own (events_dose_unknown 0, no "≥" in the table, not a lower bound in the
    registry). With every event's DAP known the filled total stays the device's."""
    from pydicom.dataset import Dataset

    from tests.dose.conftest import VENDOR_DIR

    source = VENDOR_DIR / "siemens_axiom_artis.dcm"
    if not source.is_file():
        pytest.skip(f"vendor RDSRs are not cached in {VENDOR_DIR}: run tests/dose/fetch_vendor_rdsr.sh")

    def unknown(item):
        item.MeasuredValueSequence = []
        q = Dataset()
        q.CodeValue, q.CodingSchemeDesignator, q.CodeMeaning = "114010", "DCM", "Value unknown"
        item.NumericValueQualifierCodeSequence = [q]

    for event_too in (False, True):
        ds = pydicom.dcmread(source)
        first_event = True
        for item in ds.ContentSequence:
            code = item.ConceptNameCodeSequence[0].CodeValue
            if code == "113702":  # the accumulated DAP totals
                for sub in item.ContentSequence:
                    if sub.ConceptNameCodeSequence[0].CodeValue in ("113722", "113726", "113727"):
                        unknown(sub)
            if code == "113706" and first_event and event_too:  # the first event's DAP
                first_event = False
                for sub in item.ContentSequence:
                    if sub.ConceptNameCodeSequence[0].CodeValue == "122130":
                        unknown(sub)
        folder = tmp_path / str(event_too)
        folder.mkdir()
        ds.save_as(folder / "r.dcm")
        [study], _ = summarize([folder])
        assert study.summary()["events_dose_unknown"] == (1 if event_too else 0)
        assert ("≥" in table([study]).splitlines()[2]) == event_too
