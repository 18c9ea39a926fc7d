"""The RDSR reader on damaged content items (session 17's fuzzing): each fault gives a typed
error naming the concept, or a read whose doses are the file's, never NaN or an untyped error."""
from __future__ import annotations

import copy
import math

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sifluoro.dose.rdsr_read import read_rdsr
from sifluoro.errors import DamagedFileError, InputError
from tests.dose.rdsr_fixtures import N, Ev, build_rdsr, num, save

EVENTS = [Ev(dap_gycm2=1.5, rp_mgy=3.0), Ev(fluoro=False, dap_gycm2=4.0, rp_mgy=20.0)]
TOTALS = {"dap_total": 5.5, "rp_total": 23.0, "fl_time": 1.0, "acq_time": 2.0}


def _items(ds):
    for item in ds.get("ContentSequence") or []:
        yield item
        yield from _items(item)


def _named(ds, concept: str):
    return next(item for item in _items(ds) if item.ConceptNameCodeSequence[0].CodeValue == concept)


@pytest.mark.parametrize("value", ["NaN", "inf", "-2"])
@pytest.mark.parametrize("concept", [N["dap_total"][0], N["rp"][0], N["fl_time"][0]])
def test_an_impossible_dose_or_time_is_refused_naming_its_concept(tmp_path, value, concept):
    """A NaN, infinite or negative dose or time was read as it is: the study's DAP NaN or
    negative, with no word (fuzzing s17)."""
    ds = build_rdsr(EVENTS, accumulated={"single": TOTALS})
    _named(ds, concept).MeasuredValueSequence[0].NumericValue = value
    with pytest.raises(InputError, match=rf"r\.dcm: \(DCM,{concept}\)"):
        read_rdsr(save(ds, tmp_path / "r.dcm"))


def test_an_impossible_floating_point_value_is_refused(tmp_path):
    ds = build_rdsr(EVENTS, accumulated={"single": TOTALS})
    _named(ds, N["rp_total"][0]).MeasuredValueSequence[0].FloatingPointValue = math.nan
    with pytest.raises(InputError, match=r"\(DCM,113725\) Dose \(RP\) Total"):
        read_rdsr(save(ds, tmp_path / "r.dcm"))


@pytest.mark.parametrize("value", ["NaN", "inf", "-3"])
def test_an_impossible_technique_value_is_left_out_with_a_warning(tmp_path, caplog, value):
    """A NaN or infinite frame count raised ValueError / OverflowError from int(round(...))."""
    frames = num(("113857", "DCM", "Total Number of Radiographic Frames"), 1, "1")
    ds = build_rdsr(EVENTS, accumulated={"single": TOTALS})
    _named(ds, N["accum"][0]).ContentSequence.append(frames)
    _named(ds, N["kvp"][0]).MeasuredValueSequence[0].NumericValue = value
    frames.MeasuredValueSequence[0].NumericValue = value
    dose = read_rdsr(save(ds, tmp_path / "r.dcm"))
    assert dose.events[0].kvp is None and dose.planes[0].n_radiographic_frames is None
    assert dose.summary()["dap_gycm2"] == pytest.approx(5.5)
    assert "is not a possible" in caplog.text


@pytest.mark.parametrize("concept, unit", [(N["area"], "m2"), (N["duration"], "s")])
def test_a_damaged_field_area_or_duration_of_one_event_keeps_the_report(tmp_path, caplog,
                                                                         concept, unit):
    """Review s17 M2: a negative Collimated Field Area or Irradiation Duration in one event
    refused the whole report, and the study's correct dose with it; the event's dose does not
    depend on them: left out with a warning, as a damaged SID is."""
    ds = build_rdsr(EVENTS, accumulated={"single": TOTALS})
    event = next(item for item in _items(ds)
                 if item.ConceptNameCodeSequence[0].CodeValue == N["event"][0])
    event.ContentSequence.append(num(concept, -1, unit))
    dose = read_rdsr(save(ds, tmp_path / "r.dcm"))
    assert dose.summary()["dap_gycm2"] == pytest.approx(5.5)
    assert dose.events[0].collimated_field_area_cm2 is None
    assert dose.events[0].irradiation_duration_s is None
    assert f"({concept[1]},{concept[0]})" in caplog.text and "is not a possible" in caplog.text


def test_content_items_without_value_type_or_code_meaning_are_read(tmp_path):
    """Missing ValueType / CodeMeaning raised AttributeError (untyped: dose summary stopped)."""
    ds = build_rdsr(EVENTS, accumulated={"single": TOTALS})
    del _named(ds, N["kvp"][0]).ValueType
    for item in _items(ds):
        if "ConceptCodeSequence" in item:
            del item.ConceptCodeSequence[0].CodeMeaning
    dose = read_rdsr(save(ds, tmp_path / "r.dcm"))
    assert dose.summary()["dap_gycm2"] == pytest.approx(5.5)
    assert [e.kind for e in dose.events] == ["fluoroscopy", "acquisition"]


_BASE = build_rdsr(EVENTS, accumulated={"single": TOTALS})
_PATHS = [item for item in _items(_BASE)]
_VALUES = st.sampled_from(["NaN", "inf", "-1", "1e308", "abc", "", "0"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(_PATHS) - 1),
                          st.sampled_from(["del ValueType", "del name", "del units", "del value",
                                           "value", "unit", "del code", "dup", "drop"]),
                          _VALUES, st.sampled_from(["mGy", "Gy.m2", "dGy.cm2", "s", "1", "x"])),
                min_size=1, max_size=4))
def test_property_any_damaged_content_gives_a_typed_error_or_finite_doses(tmp_path, changes):
    ds = copy.deepcopy(_BASE)
    items = list(_items(ds))
    for index, how, value, unit in changes:
        item = items[index]
        mv = (item.get("MeasuredValueSequence") or [None])[0]
        if how == "del ValueType" and "ValueType" in item:
            del item.ValueType
        elif how == "del name" and "ConceptNameCodeSequence" in item:
            del item.ConceptNameCodeSequence
        elif how == "del units" and mv is not None and "MeasurementUnitsCodeSequence" in mv:
            del mv.MeasurementUnitsCodeSequence
        elif how == "del value" and mv is not None and "NumericValue" in mv:
            del mv.NumericValue
        elif how == "value" and mv is not None:
            try:
                mv.NumericValue = value
            except ValueError:  # pydicom refuses it in memory; the file case is in a test above
                pass
        elif how == "unit" and mv is not None and "MeasurementUnitsCodeSequence" in mv:
            mv.MeasurementUnitsCodeSequence[0].CodeValue = unit
        elif how == "del code" and item.get("ConceptCodeSequence") and "CodeMeaning" in item.ConceptCodeSequence[0]:
            del item.ConceptCodeSequence[0].CodeMeaning
        elif how in ("dup", "drop") and item.get("ContentSequence"):
            if how == "dup":
                item.ContentSequence.append(copy.deepcopy(item.ContentSequence[0]))
            else:
                del item.ContentSequence[0]
    try:
        dose = read_rdsr("r.dcm", ds)
    except InputError:
        return
    for value in list(dose.summary().values()):
        if isinstance(value, float):
            assert math.isfinite(value) and value >= 0


def test_a_damaged_content_item_is_a_typed_error_and_dose_summary_goes_on(tmp_path):
    """A VR damaged in a content item ('DS' -> 'WH'), or a sequence length past its end:
    pydicom parses sequences when the reader walks them, and its NotImplementedError /
    OSError / struct.error left read_rdsr untyped; dose summary and replay stopped."""
    from sifluoro.dose.summary import summarize
    from tests.dicom_fixtures import RunSpec, write_study

    [image] = write_study(tmp_path, [RunSpec(0.0, size=32)])
    study_uid = str(pydicom.dcmread(image, stop_before_pixels=True).StudyInstanceUID)
    path = save(build_rdsr(EVENTS, accumulated={"single": TOTALS}, study_uid=study_uid),
                tmp_path / "r.dcm")
    data = path.read_bytes()
    path.write_bytes(data.replace(b"\x40\x00\x0a\xa3DS", b"\x40\x00\x0a\xa3WH", 1))
    with pytest.raises(DamagedFileError, match=r"r\.dcm: the report's content cannot be parsed"):
        read_rdsr(path)
    studies, rejected = summarize([tmp_path])
    assert [s.study_instance_uid for s in studies] == [study_uid]  # from the image's header
    assert [(r.file, r.error) for r in rejected] == [(str(path), "DamagedFileError")]


@pytest.mark.parametrize("concept, value, unit, field", [
    (N["sid"], 1e9, "mm", "sid_mm"),
    (N["pw"], 1e6, "ms", "pulse_width_ms"),
    (N["ma"], 1e30, "mA", "tube_current_ma"),
    (N["area"], 1e12, "m2", "collimated_field_area_cm2"),
])
def test_an_event_value_beyond_what_x_ray_can_give_is_left_out_naming_file_and_item(
        tmp_path, caplog, concept, value, unit, field):
    """SID 1e9 mm, a 1e6 ms pulse, 1e30 mA were read as given (finite, not negative): the
    skin dose and estimates made with them were absurd. Left out with a warning now, as a
    negative one is; the report's dose stays."""
    ds = build_rdsr(EVENTS, accumulated={"single": TOTALS})
    event = next(item for item in _items(ds)
                 if item.ConceptNameCodeSequence[0].CodeValue == N["event"][0])
    event.ContentSequence.append(num(concept, value, unit))
    path = save(ds, tmp_path / "r.dcm")
    dose = read_rdsr(path)
    assert getattr(dose.events[0], field) is None
    assert dose.summary()["dap_gycm2"] == pytest.approx(5.5)
    assert str(path) in caplog.text and f"({concept[1]},{concept[0]})" in caplog.text
    assert "is not a possible" in caplog.text and "(above " in caplog.text


@pytest.mark.parametrize("event, totals", [
    (Ev(dap_gycm2=1.5, rp_mgy=1e200), TOTALS),
    (Ev(dap_gycm2=1e30, rp_mgy=3.0), TOTALS),
    (EVENTS[0], {**TOTALS, "rp_total": 1e200}),
    (EVENTS[0], {**TOTALS, "fl_time": 1e30}),
])
def test_a_dose_or_time_beyond_what_x_ray_can_give_refuses_the_report(tmp_path, event, totals):
    """1e200 mGy was a device's dose, its alerts 1e197 levels: refused now naming the item,
    as a negative dose is (a total made with it is wrong)."""
    ds = build_rdsr([event, EVENTS[1]], accumulated={"single": totals})
    with pytest.raises(InputError, match=r"is not a possible (dap|dose|time) \(above 1e\+06"):
        read_rdsr(save(ds, tmp_path / "r.dcm"))


def test_the_largest_real_doses_and_technique_are_read(tmp_path):
    """What a long interventional procedure can reach (60 Gy at the reference point, 1e5
    Gy.cm2, 10 h of fluoroscopy) and a big tube's technique (1250 mA, 150 kV, a 1.5 m SID)
    are read as given: the bounds keep a margin of 10x or more."""
    events = [Ev(dap_gycm2=1e5, rp_mgy=6e4, kvp=150.0,
                 extra=[num(N["ma"], 1250, "mA"), num(N["sid"], 1500, "mm"),
                        num(N["pw"], 900, "ms")]), EVENTS[1]]
    totals = {"dap_total": 1e5 + 4.0, "rp_total": 6e4 + 20.0, "fl_time": 36000.0,
              "acq_time": 2.0}
    dose = read_rdsr(save(build_rdsr(events, accumulated={"single": totals}), tmp_path / "r.dcm"))
    first = dose.events[0]
    assert (first.dap_gycm2, first.air_kerma_mgy, first.kvp) == (1e5, 6e4, 150.0)
    assert (first.tube_current_ma, first.sid_mm, first.pulse_width_ms) == (1250.0, 1500.0, 900.0)
    assert dose.summary()["fluoro_time_s"] == pytest.approx(36000.0)


def test_a_bug_in_sifluoro_is_not_read_as_a_damaged_report(tmp_path, monkeypatch):
    """Review s17 L1: read_rdsr turned any exception inside the report into DamagedFileError
    ("copy it again"), so a sifluoro bug there read as a damaged file, in every report. An
    AttributeError / TypeError from sifluoro's own code, or a NameError, propagates now; what
    damaged content raises (pydicom's errors, ValueError, KeyError...) stays DamagedFileError
    (test_a_damaged_content_item_is_a_typed_error_and_dose_summary_goes_on, the fuzz tests)."""
    import sifluoro.dose.rdsr_read as rdsr_read

    path = save(build_rdsr(EVENTS, accumulated={"single": TOTALS}), tmp_path / "r.dcm")
    with pytest.raises(AttributeError, match="'str' object has no attribute"):
        read_rdsr(path, str(path))  # a caller's slip: the path given as the dataset
    for bug in (TypeError, NameError):
        def broken(self, container, bug=bug):  # a bug in the reader's own code
            raise bug("a bug in sifluoro")
        monkeypatch.setattr(rdsr_read._Reader, "plane", broken)
        with pytest.raises(bug, match="a bug in sifluoro"):
            read_rdsr(path)


def test_an_attribute_or_type_error_raised_by_pydicom_is_the_content_s():
    """The line read_rdsr draws: pydicom's AttributeError (an element missing) or TypeError is
    the file's content; the same raised in sifluoro's code is a bug."""
    from pydicom.dataset import Dataset

    from sifluoro.dose.rdsr_read import _from_content

    def raised(call):
        try:
            call()
        except Exception as exc:
            return exc
        raise AssertionError("nothing raised")

    assert _from_content(raised(lambda: Dataset().ConceptNameCodeSequence))
    assert not _from_content(raised(lambda: None.ConceptNameCodeSequence))
    assert not _from_content(raised(lambda: len(None)))
    assert _from_content(raised(lambda: float("abc")))  # ValueError: a value, wherever raised
