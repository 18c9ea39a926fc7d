"""The RDSR reader on vendor quirks, each built in code (tests/dose/rdsr_fixtures.py)."""
from __future__ import annotations

import pytest

from sifluoro.dose.rdsr_read import read_rdsr
from sifluoro.dose.units import factor
from sifluoro.errors import InputError, MissingAttributeError, NotDicomError, UnsupportedDicomError
from tests.dose.rdsr_fixtures import ACQ, N, Ev, build_rdsr, code, container, coded, num, save, text

EVENTS = [Ev(dap_gycm2=1.5, rp_mgy=3.0), Ev(fluoro=False, dap_gycm2=4.0, rp_mgy=20.0, pulses=6, rate=2.0),
          Ev(dap_gycm2=0.25, rp_mgy=0.5, pulses=30, rate=15.0)]


@pytest.mark.parametrize("dap_unit", ["Gy.m2", "Gym2", "dGy.cm2", "mGy.cm2", "uGy.m2", "Gy.cm2"])
@pytest.mark.parametrize("dose_unit", ["Gy", "mGy", "uGy"])
def test_units_of_every_vendor_give_the_same_totals(tmp_path, dap_unit, dose_unit):
    path = save(build_rdsr(EVENTS, dap_unit=dap_unit, dose_unit=dose_unit), tmp_path / "r.dcm")
    dose = read_rdsr(path)
    s = dose.summary()
    assert s["dap_gycm2"] == pytest.approx(5.75, rel=1e-9)
    assert s["air_kerma_mgy"] == pytest.approx(23.5, rel=1e-9)
    assert s["fluoro_dap_gycm2"] == pytest.approx(1.75, rel=1e-9)
    assert s["acquisition_air_kerma_mgy"] == pytest.approx(20.0, rel=1e-9)
    assert s["fluoro_time_s"] == pytest.approx(10 / 7.5 + 2.0, rel=1e-6)
    assert [e.dap_gycm2 for e in dose.events] == pytest.approx([1.5, 4.0, 0.25], rel=1e-9)
    assert [e.air_kerma_mgy for e in dose.events] == pytest.approx([3.0, 20.0, 0.5], rel=1e-9)
    assert [e.kind for e in dose.events] == ["fluoroscopy", "acquisition", "fluoroscopy"]


def test_unit_factors():
    assert factor("Gy.m2", "dap_gycm2") == pytest.approx(1e4)
    assert factor("dGy.cm2", "dap_gycm2") == pytest.approx(0.1)
    assert factor("uGy.m2", "dap_gycm2") == pytest.approx(0.01)
    assert factor("uAs", "charge_mas") == pytest.approx(1e-3)
    assert factor("Gy", "dap_gycm2") is None
    assert factor("furlong", "length_mm") is None


def test_a_total_the_accumulated_container_leaves_out_comes_from_the_events(tmp_path):
    """No Dose (RP) totals or no fluoroscopy time in the container: the study read 0 mGy or
    0 s although its events carry them (review s10 B#8); what it gives is kept."""
    totals = {"dap_total": 99.0, "fl_dap": 1.75, "acq_dap": 4.0, "acq_time": 3.0}  # no Ka,r, no fluoro time
    dose = read_rdsr(save(build_rdsr(EVENTS, accumulated={"single": totals}), tmp_path / "r.dcm"))
    s = dose.summary()
    assert s["dap_gycm2"] == pytest.approx(99.0)  # the device's own total stays
    assert s["air_kerma_mgy"] == pytest.approx(23.5) and s["acquisition_air_kerma_mgy"] == pytest.approx(20.0)
    assert s["fluoro_time_s"] == pytest.approx(10 / 7.5 + 2.0, rel=1e-6)
    assert s["acquisition_time_s"] == pytest.approx(3.0)


def test_missing_template_identifier_is_read(tmp_path):
    dose = read_rdsr(save(build_rdsr(EVENTS, template=False), tmp_path / "r.dcm"))
    assert dose.summary()["dap_gycm2"] == pytest.approx(5.75)


def test_without_accumulated_container_totals_come_from_events(tmp_path):
    dose = read_rdsr(save(build_rdsr(EVENTS, accumulated=None), tmp_path / "r.dcm"))
    assert not dose.planes_from_report
    s = dose.summary()
    assert (s["events"], s["planes"]) == (3, 1)
    assert s["dap_gycm2"] == pytest.approx(5.75)
    assert s["acquisition_dap_gycm2"] == pytest.approx(4.0)
    assert s["fluoro_time_s"] == pytest.approx(10 / 7.5 + 2.0)


def test_fluoro_and_acquisition_totals_without_overall_total_are_added(tmp_path):
    totals = {"single": {"fl_dap": 1.0, "fl_rp": 2.0, "acq_dap": 3.0, "acq_rp": 4.0, "fl_time": 60.0}}
    dose = read_rdsr(save(build_rdsr(EVENTS, accumulated=totals), tmp_path / "r.dcm"))
    s = dose.summary()
    assert s["dap_gycm2"] == pytest.approx(4.0)
    assert s["air_kerma_mgy"] == pytest.approx(6.0)
    assert s["fluoro_time_s"] == pytest.approx(60.0)


def test_dual_plane_has_one_accumulated_container_per_plane(tmp_path):
    events = [Ev(plane="A", dap_gycm2=2.0, rp_mgy=10.0), Ev(plane="B", dap_gycm2=1.0, rp_mgy=4.0),
              Ev(plane="A", fluoro=False, dap_gycm2=5.0, rp_mgy=30.0)]
    dose = read_rdsr(save(build_rdsr(events), tmp_path / "r.dcm"))
    planes = {p.plane: p for p in dose.planes}
    assert set(planes) == {"A", "B"}
    assert planes["A"].dap_gycm2 == pytest.approx(7.0)
    assert planes["B"].air_kerma_mgy == pytest.approx(4.0)
    s = dose.summary()
    assert (s["planes"], s["events"]) == (2, 3)
    assert s["dap_gycm2"] == pytest.approx(8.0)
    assert [p["events"] for p in s["per_plane"]] == [2, 1]


def test_events_without_kvp_and_without_type(tmp_path):
    events = [Ev(kvp=None), Ev(has_type=False, extra=[coded(("113732", "DCM", "Fluoro Mode"),
                                                            ("113631", "DCM", "Pulsed"))]),
              Ev(has_type=False)]
    dose = read_rdsr(save(build_rdsr(events), tmp_path / "r.dcm"))
    assert dose.events[0].kvp is None
    assert dose.events[1].kind == "fluoroscopy"  # inferred from Fluoro Mode
    assert dose.events[2].kind == "acquisition"


def test_philips_private_collimation_and_sid(tmp_path):
    ph = "99PHI-IXR-XPER"
    shutters = container(("005", ph, "Wedges and Shutters"), [
        num(("006", ph, "Bottom Shutter"), 100.0, "mm"), num(("007", ph, "Left Shutter"), 80.0, "mm"),
        num(("008", ph, "Right Shutter"), 90.0, "mm"), num(("009", ph, "Top Shutter"), 120.0, "mm")])
    field = container(("023", ph, "Detector Field Size"), [
        num(("024", ph, "X side"), 300.0, "mm"), num(("025", ph, "Y side"), 200.0, "mm")])
    events = [Ev(extra=[shutters, field, num(("018", ph, "Final Distance Source to Detector"), 1195.0, "mm")])]
    event = read_rdsr(save(build_rdsr(events), tmp_path / "r.dcm")).events[0]
    # edges in the plane at 1 m, projected to the detector at 1195 mm, clipped to the detector:
    # 170 x 1.195 = 203.15 mm wide, min(220 x 1.195, 200) = 200 mm high (review s10 B#6)
    assert event.collimated_field_area_cm2 == pytest.approx(20.315 * 20.0)
    assert event.sid_mm == 1195.0
    without_sid = read_rdsr(save(build_rdsr([Ev(extra=[shutters, field])]), tmp_path / "s.dcm")).events[0]
    assert without_sid.collimated_field_area_cm2 is None  # no plane to project the edges to


def test_standard_collimated_area_filters_and_nesting(tmp_path):
    filters = [container(N["filters"], [coded(N["material"], ("C-127F9", "SRT", "Copper or Copper compound")),
                                        num(N["thick_min"], 0.2, "mm"), num(N["thick_max"], 0.4, "mm")]),
               container(N["filters"], [coded(N["material"], ("12503006", "SCT", "Aluminum")),
                                        num(N["thick_min"], 1.0, "mm"), num(N["thick_max"], 1.0, "mm")])]
    nested = container(("113771x", "99X", "Vendor group"), [num(N["ma"], 12.0, "mA"), num(N["pw"], 8.0, "ms")])
    events = [Ev(extra=filters + [nested, num(N["area"], 0.04, "m2"), num(N["sid"], 110.0, "cm")])]
    event = read_rdsr(save(build_rdsr(events), tmp_path / "r.dcm")).events[0]
    assert (event.filter_cu_mm, event.filter_al_mm) == pytest.approx((0.3, 1.0))
    assert (event.tube_current_ma, event.pulse_width_ms) == (12.0, 8.0)
    assert event.collimated_field_area_cm2 == pytest.approx(400.0)
    assert event.sid_mm == pytest.approx(1100.0)


def test_unknown_unit_names_file_and_concept(tmp_path):
    ds = build_rdsr([Ev()])
    ds.ContentSequence[-1].ContentSequence[3].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue = "R"
    path = save(ds, tmp_path / "r.dcm")
    with pytest.raises(UnsupportedDicomError) as info:
        read_rdsr(path)
    assert info.value.path == str(path)
    assert info.value.tag == "(DCM,122130) Dose Area Product"


def test_an_unknown_technique_unit_loses_that_value_not_the_reports_dose(tmp_path, caplog):
    """A kVp item in a unit not known here refused the whole report: its dose was lost
    (review s10 B#7). 'kVp' and 'pulse/s' are read; an unknown one is left out, named."""
    import logging

    ds = build_rdsr(EVENTS)
    events = [item for item in ds.ContentSequence
              if item.ConceptNameCodeSequence[0].CodeValue == "113706"]

    def unit(event, concept):
        (item,) = [i for i in event.ContentSequence if i.ValueType == "NUM"
                   and i.ConceptNameCodeSequence[0].CodeValue == concept]
        return item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]

    unit(events[0], "113733").CodeValue = "kVp"      # KVP
    unit(events[0], "113791").CodeValue = "pulse/s"  # Pulse Rate
    unit(events[1], "113733").CodeValue = "stone"
    with caplog.at_level(logging.WARNING):
        dose = read_rdsr(save(ds, tmp_path / "r.dcm"))
    assert dose.summary()["dap_gycm2"] == pytest.approx(5.75, rel=1e-9)
    assert dose.events[0].kvp == pytest.approx(75.0) and dose.events[0].pulse_rate_per_s == pytest.approx(7.5)
    assert dose.events[1].kvp is None and dose.events[2].kvp == pytest.approx(75.0)
    assert "(DCM,113733) KVP unit 'stone'" in caplog.text


def test_bad_number_and_missing_event_uid_are_typed_errors(tmp_path):
    ds = build_rdsr([Ev(rp_mgy=7777.777)], accumulated=None)  # 7.777777 Gy, corrupted on disk
    path = save(ds, tmp_path / "a.dcm")
    path.write_bytes(path.read_bytes().replace(b"7.777777", b"lots!!!!"))
    with pytest.raises(InputError) as info:
        read_rdsr(path)
    assert info.value.tag == "(DCM,113738) Dose (RP)" and info.value.path == str(path)
    with pytest.raises(MissingAttributeError, match=r"113769"):
        read_rdsr(save(build_rdsr([Ev(uid="")]), tmp_path / "b.dcm"))


def test_not_a_dose_report_and_ct_report_are_refused(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(NotDicomError) as info:
        read_rdsr(tmp_path / "x.dcm")
    assert "force=True" not in str(info.value)  # pydicom's advice to a programmer (s18 F15)
    ct = build_rdsr([Ev()], procedure=("P5-08000", "DCM", "Computed Tomography X-Ray"))
    with pytest.raises(UnsupportedDicomError, match="CT dose report"):
        read_rdsr(save(ct, tmp_path / "ct.dcm"))
    ds = build_rdsr([Ev()])
    ds.ConceptNameCodeSequence[0].CodeValue = "126000"
    with pytest.raises(UnsupportedDicomError, match="113701"):
        read_rdsr(save(ds, tmp_path / "other.dcm"))


def test_comprehensive_sr_dose_report_and_device_from_header(tmp_path):
    ds = build_rdsr(EVENTS, sop_class="1.2.840.10008.5.1.4.1.1.88.33")
    ds.ContentSequence = [i for i in ds.ContentSequence if i.ValueType != "TEXT"]
    dose = read_rdsr(save(ds, tmp_path / "r.dcm"))
    assert (dose.device.manufacturer, dose.device.model) == ("Vendor", "Model X")
    assert dose.summary()["dap_gycm2"] == pytest.approx(5.75)


def test_empty_report_is_an_error(tmp_path):
    with pytest.raises(MissingAttributeError, match="113702"):
        read_rdsr(save(build_rdsr([], accumulated=None), tmp_path / "r.dcm"))


def test_acquired_images_link_events_to_runs(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    image = Dataset()
    image.RelationshipType, image.ValueType = "CONTAINS", "IMAGE"
    image.ConceptNameCodeSequence = Sequence([code("113795", "DCM", "Acquired Image")])
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.12.1", "1.2.3.4"
    image.ReferencedSOPSequence = Sequence([ref])
    dose = read_rdsr(save(build_rdsr([Ev(fluoro=False, extra=[image, text(("125203", "DCM", "Acquisition Protocol"), "SI L")])]),
                          tmp_path / "r.dcm"))
    assert dose.events[0].sop_instance_uids == ("1.2.3.4",)
    assert dose.events[0].protocol == "SI L"
    assert ACQ[0] == "113611"


def test_a_single_shot_lasts_its_exposure_not_one_period_of_a_nominal_rate():
    """Siemens single-shot acquisitions: 1 pulse at 0.01/s, no Irradiation Duration; summed
    from events they counted 100 s each. A run of pulses lasts pulses / rate."""
    from sifluoro.dose.records import IrradiationEvent, totals_from_events

    shot = IrradiationEvent("1.1", "acquisition", n_pulses=1, pulse_rate_per_s=0.01,
                            exposure_time_ms=90.0)
    width_only = IrradiationEvent("1.2", "acquisition", n_pulses=2, pulse_width_ms=8.0)
    fluoro = IrradiationEvent("1.3", "fluoroscopy", n_pulses=100, pulse_rate_per_s=10.0)
    one_pulse = IrradiationEvent("1.4", "fluoroscopy", n_pulses=1, pulse_rate_per_s=15.0,
                                 pulse_width_ms=5.0)  # a real rate: one period
    totals = totals_from_events("single", [shot, width_only, fluoro, one_pulse])
    assert totals.acquisition_time_s == pytest.approx(0.09 + 0.016)
    assert totals.fluoro_time_s == pytest.approx(10.0 + 1 / 15)


def test_a_totals_only_report_sent_twice_counts_once():
    from sifluoro.dose.records import PlaneTotals, StudyDose
    from sifluoro.dose.summary import merge_reports
    from sifluoro.model import Device

    plane = PlaneTotals("single", dap_gycm2=0.09, air_kerma_mgy=1.4, fluoro_time_s=18.0)
    first = StudyDose("1.2.3", "rdsr", Device(), events=(), planes=(plane,), path="a.dcm")
    again = StudyDose("1.2.3", "rdsr", Device(), events=(), planes=(plane,), path="b.dcm")
    other = StudyDose("1.2.3", "rdsr", Device(), events=(),
                      planes=(PlaneTotals("single", dap_gycm2=0.5, air_kerma_mgy=2.0),), path="c.dcm")
    assert merge_reports([first, again]).dap_gycm2 == pytest.approx(0.09)
    assert merge_reports([first, again, other]).dap_gycm2 == pytest.approx(0.59)  # another step


@pytest.mark.parametrize("names", [("a-original.dcm", "b-corrected.dcm"), ("b-original.dcm", "a-corrected.dcm")])
def test_of_two_reports_of_the_same_events_the_newer_counts(tmp_path, names):
    """A correction sent again under a new SOP Instance UID (same events, halved DAP): the file
    whose name sorted first counted (review s10 B#15). The later one does, by its own
    creation date or, when it kept the original's, by its file's time."""
    import copy
    import os

    from pydicom.uid import generate_uid

    from sifluoro.dose.summary import summarize

    original = build_rdsr(EVENTS)
    corrected = copy.deepcopy(original)
    corrected.SOPInstanceUID = generate_uid()
    for item in corrected.ContentSequence:
        for sub in item.get("ContentSequence") or []:
            if sub.ValueType == "NUM" and sub.ConceptNameCodeSequence[0].CodeValue in ("122130", "113722"):
                value = sub.MeasuredValueSequence[0]
                value.NumericValue = f"{float(value.NumericValue) / 2:.10g}"
    save(original, tmp_path / names[0])
    save(corrected, tmp_path / names[1])
    os.utime(tmp_path / names[0], (1_700_000_000, 1_700_000_000))
    os.utime(tmp_path / names[1], (1_700_000_600, 1_700_000_600))
    (study,), _ = summarize([tmp_path])
    assert study.dap_gycm2 == pytest.approx(5.75 / 2)
    assert study.path == str(tmp_path / names[1])


def test_a_plane_without_accumulated_container_is_summed_from_its_events(tmp_path, caplog):
    """A biplane report whose accumulated container covers plane A only: plane B's events
    counted nowhere and the study read 100 mGy, not 6100 (review s12 #3)."""
    events = [Ev(plane="A", dap_gycm2=10.0, rp_mgy=100.0), Ev(plane="B", dap_gycm2=300.0, rp_mgy=6000.0)]
    acc = {"A": {"dap_total": 10.0, "rp_total": 100.0, "fl_dap": 10.0, "fl_rp": 100.0, "fl_time": 10 / 7.5}}
    with caplog.at_level("WARNING"):
        dose = read_rdsr(save(build_rdsr(events, accumulated=acc), tmp_path / "r.dcm"))
    s = dose.summary()
    assert [p["plane"] for p in s["per_plane"]] == ["A", "B"]
    assert s["air_kerma_mgy"] == pytest.approx(6100.0)
    assert s["dap_gycm2"] == pytest.approx(310.0)
    assert s["fluoro_time_s"] == pytest.approx(2 * 10 / 7.5)
    assert any("plane B" in r.getMessage() for r in caplog.records)


def test_events_without_a_plane_belong_to_the_only_container(tmp_path):
    """Events that name no plane in a report with one (plane A) container are not a second plane."""
    acc = {"A": {"dap_total": 1.75, "rp_total": 3.5}}
    dose = read_rdsr(save(build_rdsr([Ev(dap_gycm2=1.5, rp_mgy=3.0), Ev(dap_gycm2=0.25, rp_mgy=0.5)],
                                     accumulated=acc), tmp_path / "r.dcm"))
    assert [p.plane for p in dose.planes] == ["A"]
    assert dose.air_kerma_mgy == pytest.approx(3.5)


@pytest.mark.parametrize("scope", [("113014", "DCM", "Study"), ("113016", "DCM", "Performed Procedure Step")])
def test_totals_only_reports_of_study_scope_supersede_those_of_steps_add(tmp_path, scope):
    """A pause report (100 mGy) and the final one (250 mGy), totals only: with Study scope the
    final one is the study's (they were added: 350 mGy, review s12 #7); with Performed
    Procedure Step scope each is one step's and they add up."""
    from pydicom.uid import generate_uid

    from sifluoro.dose.summary import summarize
    from tests.dose.rdsr_fixtures import uidref

    uid = generate_uid()
    for name, kerma, dap, t, when in (("final", 250.0, 12.0, 150.0, "104500"),
                                      ("pause", 100.0, 5.0, 60.0, "101500")):
        ds = build_rdsr([], accumulated={"single": {"dap_total": dap, "rp_total": kerma, "fl_dap": dap,
                                                    "fl_rp": kerma, "fl_time": t}}, study_uid=uid)
        ds.ContentDate, ds.ContentTime = "20260304", when
        item = coded(("113705", "DCM", "Scope of Accumulation"), scope, "HAS OBS CONTEXT")
        item.ContentSequence = [uidref(("110180", "DCM", "Study Instance UID"), uid, "HAS PROPERTIES")]
        ds.ContentSequence.insert(3, item)
        save(ds, tmp_path / f"{name}.dcm")
    assert read_rdsr(tmp_path / "final.dcm").scope == ("study" if scope[0] == "113014" else "pps")
    (study,), _ = summarize([tmp_path])
    s = study.summary()
    if scope[0] == "113014":
        assert (s["air_kerma_mgy"], s["dap_gycm2"], s["fluoro_time_s"]) == pytest.approx((250.0, 12.0, 150.0))
    else:
        assert (s["air_kerma_mgy"], s["dap_gycm2"], s["fluoro_time_s"]) == pytest.approx((350.0, 17.0, 210.0))


def test_an_unknown_fluoroscopy_time_is_none_not_zero(tmp_path):
    """No Total Fluoro Time and events without duration, rate or pulses: the summary said
    0.0 s beside a per-plane None (review s12 #13)."""
    from sifluoro.dose.summary import table
    from tests.audit.test_ingest import _untimed_report

    dose = read_rdsr(_untimed_report(tmp_path))
    s = dose.summary()
    assert s["fluoro_time_s"] is None and s["per_plane"][0]["fluoro_time_s"] is None
    assert s["air_kerma_mgy"] == pytest.approx(450.0) and s["acquisition_time_s"] == 0.0
    assert "unknown" in table([dose])


def test_totals_only_reports_of_study_scope_from_two_devices_add(tmp_path):
    """Each device's newest Study-scope report stands for its earlier ones, not for another
    device's (a C-arm and a mobile unit in one study: 400 mGy were dropped, second review s12)."""
    from pydicom.uid import generate_uid

    from sifluoro.dose.summary import summarize
    from tests.dose.rdsr_fixtures import uidref

    uid = generate_uid()
    for name, kerma, when, maker in (("carm", 250.0, "104500", "ACME Medical"),
                                     ("mobile", 400.0, "101500", "Other Mobile")):
        ds = build_rdsr([], accumulated={"single": {"dap_total": 10.0, "rp_total": kerma}},
                        study_uid=uid, manufacturer=maker)
        ds.ContentDate, ds.ContentTime = "20260304", when
        item = coded(("113705", "DCM", "Scope of Accumulation"), ("113014", "DCM", "Study"),
                     "HAS OBS CONTEXT")
        item.ContentSequence = [uidref(("110180", "DCM", "Study Instance UID"), uid, "HAS PROPERTIES")]
        ds.ContentSequence.insert(3, item)
        save(ds, tmp_path / f"{name}.dcm")
    (study,), _ = summarize([tmp_path])
    assert study.summary()["air_kerma_mgy"] == pytest.approx(650.0)
