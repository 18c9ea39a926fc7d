"""The image reader on damaged files found by fuzzing (session 17): each gives a typed error
naming the file and tag, the rest of the study goes on, and no dose is NaN."""
from __future__ import annotations

import json
import math
import logging
import os
import signal
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydicom.encaps import encapsulate, generate_frames

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import DoseSettings
from sifluoro.dose.accumulate import MAX_ALERTS_AT_ONCE, accumulate_study
from sifluoro.dose.rdsr_read import read_rdsr
from sifluoro.errors import InputError
from tests.dicom_fixtures import PATIENT_ID, RunSpec, technique, write_study
from tests.dose.rdsr_fixtures import Ev, build_rdsr, save


def test_an_rle_frame_whose_decoder_panics_is_damaged_pixel_data_and_the_study_goes_on(tmp_path):
    """pylibjpeg-rle (Rust) panics on an RLE header whose second segment offset is one byte
    off: PanicException is no Exception, passed ``except Exception`` and stopped the study."""
    good, bad = write_study(tmp_path, [RunSpec(0.0, filename="good.dcm"),
                                       RunSpec(5.0, filename="bad.dcm", transfer_syntax="rle",
                                               size=32, n_frames=2)])
    ds = pydicom.dcmread(bad)
    frames = [bytearray(f) for f in generate_frames(ds.PixelData, number_of_frames=2)]
    second_segment = struct.unpack_from("<L", frames[1], 8)[0]
    struct.pack_into("<L", frames[1], 8, second_segment + 1)
    ds.PixelData = encapsulate([bytes(f) for f in frames])
    ds.save_as(bad)
    study = read_study([tmp_path])
    rejected = list(study.rejected)
    lost = []
    shown = [f.run.path for f in iter_frames(study, rejected, lost)]
    assert shown == [str(good)] * 3 + [str(bad)]  # the bad run's first frame, then the next run
    assert [(r.file, r.error, r.tag) for r in rejected] == [
        (str(bad), "DamagedPixelDataError", "(7FE0,0010) PixelData")]
    assert "frame 2 fails to decode" in rejected[0].reason
    assert [(run.path, first) for run, first in lost] == [(str(bad), 2)]


_READ_AND_LIST = """
import json, sys
from sifluoro.acquire.dicom_reader import iter_frames, read_study
study = read_study([sys.argv[1]])
rejected = list(study.rejected)
shown = [f.run.path for f in iter_frames(study, rejected)]
print(json.dumps({"shown": shown, "rejected": [[r.file, r.error, r.reason] for r in rejected]}))
"""


def test_a_jpeg_lossless_frame_that_aborts_gdcm_is_damaged_pixel_data(tmp_path):
    """A JPEG Lossless frame without its DHT marker (one flipped bit): python-gdcm, pydicom's
    first decoder, aborts the process (std::terminate), the whole study lost; pylibjpeg says
    it fails. Read in a child process, as on the old code the abort takes pytest with it."""
    folder = tmp_path / "study"
    good, bad = write_study(folder, [RunSpec(0.0, filename="good.dcm"),
                                     RunSpec(5.0, filename="bad.dcm", size=32,
                                             transfer_syntax="jpeg_lossless")])
    ds = pydicom.dcmread(bad)
    frames = list(generate_frames(ds.PixelData, number_of_frames=3))
    frames[1] = frames[1].replace(b"\xff\xc4", b"\xf7\xc4", 1)  # the Huffman table's marker
    ds.PixelData = encapsulate(frames)
    ds.save_as(bad)
    done = subprocess.run([sys.executable, "-c", _READ_AND_LIST, str(folder)], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 0, done.stderr[-500:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["shown"] == [str(good)] * 3 + [str(bad)]
    assert [(f, e) for f, e, _ in out["rejected"]] == [(str(bad), "DamagedPixelDataError")]
    assert "frame 2 fails to decode" in out["rejected"][0][2]



def test_a_sop_class_whose_length_swallows_the_patient_is_not_echoed(tmp_path, caplog):
    """A damaged length of (0008,0016) SOPClassUID makes it swallow the elements after it: the
    rejection and its log line showed the value as read, patient name and ID with it."""
    good, bad = write_study(tmp_path, [RunSpec(0.0, filename="good.dcm"),
                                       RunSpec(5.0, filename="bad.dcm")])
    data = bad.read_bytes()
    at = data.index(b"\x08\x00\x16\x00UI")
    end = data.index(PATIENT_ID.encode()) + len(PATIENT_ID)
    bad.write_bytes(data[:at + 6] + struct.pack("<H", end - at - 8) + data[at + 8:])
    caplog.set_level(logging.DEBUG)
    study = read_study([tmp_path])
    assert [r.path for r in study.runs] == [str(good)]
    [rejection] = study.rejected
    assert (rejection.file, rejection.error) == (str(bad), "UnsupportedDicomError")
    assert "not a valid UID" in rejection.reason
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("sifluoro")]
    for text in [rejection.reason] + ours:
        assert PATIENT_ID not in text and "DOE" not in text and "JANE" not in text


def test_a_header_element_pydicom_cannot_parse_is_a_typed_rejection(tmp_path):
    """A bit flipped in a VR ('UI' -> 'QI'): pydicom raises NotImplementedError when the element
    is read, which scan listed without an error class (an untyped rejection)."""
    good, bad = write_study(tmp_path, [RunSpec(0.0, filename="good.dcm"),
                                       RunSpec(5.0, filename="bad.dcm")])
    data = bad.read_bytes()
    at = data.index(b"\x08\x00\x16\x00UI")
    bad.write_bytes(data[:at + 4] + b"QI" + data[at + 6:])
    study = read_study([tmp_path])
    assert [r.path for r in study.runs] == [str(good)]
    assert [(r.file, r.error) for r in study.rejected] == [(str(bad), "NotDicomError")]
    assert "(0008,0016)" in study.rejected[0].reason


@pytest.mark.parametrize("keyword", ["XRayTubeCurrent", "KVP", "ExposureTime",
                                     "ImageAndFluoroscopyAreaDoseProduct", "EntranceDoseInmGy"])
def test_a_negative_technique_or_dose_value_is_ignored_not_a_negative_dose(tmp_path, keyword):
    """A sign flipped ('9' read as '-9' mA): the run's estimated DAP and air kerma came out
    negative and the study's total was lowered, with no word."""
    [path] = write_study(tmp_path, [RunSpec(0.0, tech=technique(reported_dap_gycm2=0.5,
                                                                reported_air_kerma_mgy=2.0,
                                                                exposure_time_ms=7.0))])
    ds = pydicom.dcmread(path)
    for name in (keyword, keyword + "InmA", keyword + "Inms"):  # and its sibling, read first
        if name in ds:
            ds[name].value = -9.0 if ds[name].VR in ("FD", "FL") else "-9"
    ds.save_as(path)
    study = read_study([path])
    tech = study.runs[0].technique
    field = {"XRayTubeCurrent": "tube_current_ma", "KVP": "kvp", "ExposureTime": "exposure_time_ms",
             "ImageAndFluoroscopyAreaDoseProduct": "reported_dap_gycm2",
             "EntranceDoseInmGy": "reported_air_kerma_mgy"}[keyword]
    assert getattr(tech, field) is None
    dose = accumulate_study(study, DoseSettings()).study_dose(study.study_instance_uid, study.device)
    assert all(v >= 0 for v in dose.summary().values() if isinstance(v, float))


@pytest.fixture
def within_10_s():
    """Fails a test that runs longer (a pure-Python loop is interrupted by the alarm)."""
    def expired(*_):
        raise TimeoutError("took more than 10 s: a hang")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("keyword", ["AveragePulseWidth", "XRayTubeCurrent"])
def test_an_absurdly_large_technique_value_does_not_hang_the_dose(tmp_path, within_10_s, keyword):
    """AveragePulseWidth or tube current 1e30: the estimated air kerma is so large that listing
    its notification levels (every 1 Gy) never ended; the replay hung on one file."""
    [path] = write_study(tmp_path, [RunSpec(0.0, size=32)])
    ds = pydicom.dcmread(path)
    for name in (keyword, keyword + "InmA"):
        if name in ds:
            ds[name].value = 1e30 if ds[name].VR in ("FD", "FL") else "1e30"
    ds.save_as(path)
    study = read_study([path])
    dose = accumulate_study(study, DoseSettings())
    assert len(dose.alerts) <= 2 * MAX_ALERTS_AT_ONCE


@pytest.mark.parametrize("keyword, absurd, possible, field", [
    ("AveragePulseWidth", "1e6", "900", "pulse_width_ms"),
    ("XRayTubeCurrent", "1e30", "1250", "tube_current_ma"),
    ("DistanceSourceToDetector", "1e9", "1500", "sid_mm"),
    ("KVP", "1e5", "150", "kvp"),
    ("ImageAndFluoroscopyAreaDoseProduct", "1e200", "1e6", "reported_dap_gycm2"),
    ("EntranceDoseInmGy", "1e200", "6e4", "reported_air_kerma_mgy"),
])
def test_a_header_value_beyond_what_x_ray_can_give_is_ignored_naming_file_and_attribute(
        tmp_path, caplog, keyword, absurd, possible, field):
    """A 1e6 ms pulse, 1e30 mA, an SID of 1e9 mm, 1e200 mGy were read as given (finite, not
    negative) and the run's dose estimated or reported with them. Ignored now with a warning
    naming the file and the attribute; the largest real values (a big tube, a long
    interventional procedure: 1e5 Gy.cm2 is 1e6 dGy.cm2) are read as given."""
    def technique_with(value: str):
        [path] = write_study(tmp_path / value, [RunSpec(0.0, size=32)])
        ds = pydicom.dcmread(path)
        for name in (keyword, keyword + "InmA"):
            if name in ds or name == keyword:
                setattr(ds, name, float(value) if name.endswith("InmA") else value)
        ds.save_as(path)
        return path, read_study([path]).runs[0].technique

    caplog.set_level(logging.WARNING)
    path, tech = technique_with(absurd)
    assert getattr(tech, field) is None
    assert str(path) in caplog.text and keyword in caplog.text
    assert "not a possible value" in caplog.text
    caplog.clear()
    _, tech = technique_with(possible)
    expected = float(possible) / (10.0 if field == "reported_dap_gycm2" else 1.0)
    assert getattr(tech, field) == pytest.approx(expected) and "not a possible" not in caplog.text


def test_a_device_report_with_an_absurd_dose_does_not_hang_the_replay(tmp_path, within_10_s):
    [path] = write_study(tmp_path / "img", [RunSpec(0.0, size=32)])
    study = read_study([path])
    with pytest.raises(InputError, match="not a possible"):  # refused since session 18
        read_rdsr(save(build_rdsr([Ev(dap_gycm2=1e200, rp_mgy=1e200)],
                                  study_uid=study.study_instance_uid), tmp_path / "r.dcm"))
    # the most a report may hold still crosses hundreds of levels at once
    report = read_rdsr(save(build_rdsr([Ev(dap_gycm2=9e5, rp_mgy=9e5)],
                                       study_uid=study.study_instance_uid), tmp_path / "r.dcm"))
    dose = accumulate_study(study, DoseSettings(), report=report)
    assert dose.study_dose(study.study_instance_uid, study.device).summary()["air_kerma_mgy"] \
        == pytest.approx(9e5)


def test_the_registry_s_alerts_of_an_absurd_dose_are_counted_not_stepped(tmp_path, within_10_s):
    """Review s17 H1: `audit ingest` listed a study's alert levels one by one (1e9 mGy: a
    million rows; 1e200: the memory filled); now counted as the accumulator counts them, the
    first and the highest when more than MAX_ALERTS_AT_ONCE, and a plain dose's levels kept."""
    from sifluoro.audit.ingest import alert_rows
    from sifluoro.dose.accumulate import alert_steps

    def kerma_levels(kerma_mgy):
        [path] = write_study(tmp_path / f"{kerma_mgy:g}", [RunSpec(0.0, size=32)])
        study = read_study([path])
        report = read_rdsr(save(build_rdsr([Ev(rp_mgy=kerma_mgy)],
                                           study_uid=study.study_instance_uid),
                                tmp_path / f"{kerma_mgy:g}.dcm"))
        dose = accumulate_study(study, DoseSettings(), report=report)
        rows = alert_rows(dose.study_dose(study.study_instance_uid, study.device), DoseSettings())
        return [r["level"] for r in rows if r["kind"] == "air_kerma"]

    assert kerma_levels(5500.0) == [3000.0, 4000.0, 5000.0]  # first 3 Gy, then every 1 Gy
    absurd = kerma_levels(9e5)  # the most a report may hold (1e200 is refused since s18)
    assert absurd == [3000.0, 9e5]
    assert list(alert_steps(1, 4)) == [1, 2, 3]
    assert list(alert_steps(1, 10**9)) == [1, 10**9 - 1]


def test_a_negative_filter_thickness_is_ignored(tmp_path):
    """FilterThicknessMinimum -1: the tube output model raised ValueError (untyped) while the
    study's dose was counted."""
    [path] = write_study(tmp_path, [RunSpec(0.0, size=32)])
    ds = pydicom.dcmread(path)
    ds.FilterThicknessMinimum = ["-1"] * len(ds.FilterMaterial.split("\\")) \
        if isinstance(ds.FilterMaterial, str) else ["-1"] * len(ds.FilterMaterial)
    ds.save_as(path)
    study = read_study([path])
    tech = study.runs[0].technique
    assert tech.filter_cu_mm is None and tech.filter_al_mm is None
    summary = accumulate_study(study, DoseSettings()).study_dose(
        study.study_instance_uid, study.device).summary()
    assert summary["air_kerma_mgy"] > 0


def test_a_study_uid_damaged_into_no_uid_rejects_its_file_not_the_study(tmp_path):
    """A bit flipped in one file's StudyInstanceUID ('.' -> '\\x0e'): the input was refused as
    two studies (MultipleStudiesError), the whole study not replayed for one damaged file."""
    good, bad = write_study(tmp_path, [RunSpec(0.0, filename="good.dcm"),
                                       RunSpec(5.0, filename="bad.dcm")])
    data = bad.read_bytes()
    at = data.index(b"\x20\x00\x0d\x00UI") + 8 + 3
    bad.write_bytes(data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:])  # '.' -> '\x0e'
    study = read_study([tmp_path])
    assert [r.path for r in study.runs] == [str(good)]
    assert [(r.file, r.error, r.tag) for r in study.rejected] == [
        (str(bad), "InputError", "(0020,000D) StudyInstanceUID")]
    assert "not a valid UID" in study.rejected[0].reason


@pytest.mark.parametrize("uid", ["1." + "2" * 71, "1.2.ABC.4"])
def test_a_real_study_with_an_ill_formed_uid_beside_another_is_not_dropped(tmp_path, uid):
    """Review s17 M1: a study of several files whose UID is too long or not digits, beside
    another study, was rejected file by file as damaged, and replay went on with the other
    study alone. It is a study: the input holds two, and the caller must choose, as before."""
    from sifluoro.errors import MultipleStudiesError

    write_study(tmp_path / "a", [RunSpec(0.0, filename="a1.dcm"), RunSpec(5.0, filename="a2.dcm")])
    for path in write_study(tmp_path / "b", [RunSpec(0.0, filename="b1.dcm"),
                                             RunSpec(5.0, filename="b2.dcm")]):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = uid
        ds.save_as(path)
    with pytest.raises(MultipleStudiesError):
        read_study([tmp_path])


def test_pydicom_does_not_log_the_swallowed_patient_either(tmp_path, caplog):
    """pydicom's own warning quoted the damaged SOP class ("Invalid value for VR UI: '...'"),
    patient ID and name included; the CLI prints pydicom's logger."""
    from sifluoro.quiet import _VALUE_NOT_SHOWN, quiet_pydicom_warnings

    [bad] = write_study(tmp_path, [RunSpec(0.0, filename="bad.dcm")])
    data = bad.read_bytes()
    at = data.index(b"\x08\x00\x16\x00UI")
    end = data.index(PATIENT_ID.encode()) + len(PATIENT_ID)
    bad.write_bytes(data[:at + 6] + struct.pack("<H", end - at - 8) + data[at + 8:])
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        quiet_pydicom_warnings()
        try:
            read_study([tmp_path])
        finally:
            logging.getLogger("pydicom").removeFilter(_VALUE_NOT_SHOWN)
    assert "Invalid value for VR UI (the value is not shown" in caplog.text
    assert PATIENT_ID not in caplog.text and "DOE" not in caplog.text


@pytest.fixture(scope="module")
def run_bytes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    paths = write_study(folder, [RunSpec(0.0, size=16, filename="native.dcm"),
                                 RunSpec(1.0, size=16, filename="rle.dcm", transfer_syntax="rle"),
                                 RunSpec(2.0, size=16, filename="enh.dcm", storage="enhanced_xa")])
    return [p.read_bytes() for p in paths]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 2), cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 7)), max_size=6))
def test_property_damaged_bytes_give_typed_errors_and_finite_doses(tmp_path, run_bytes, which,
                                                                  cut, flips):
    """Bit flips and truncation anywhere after the preamble: the reader lists the file with a
    typed error or reads it; frames and dose as far as it goes, nothing NaN or negative."""
    data = bytearray(run_bytes[which])
    for where, bit in flips:
        data[128 + int(where * (len(data) - 129))] ^= 1 << bit
    if cut is not None:
        data = data[:1 + int(cut * (len(data) - 1))]
    folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "run.dcm").write_bytes(bytes(data))
    study = read_study([folder])
    rejected = list(study.rejected)
    for frame in iter_frames(study, rejected):
        assert frame.pixels.dtype == np.uint16
    assert all(r.error for r in rejected)
    assert len(study.runs) + len({r.file for r in rejected}) >= 1  # stored or said why
    summary = accumulate_study(study, DoseSettings()).study_dose(
        study.study_instance_uid, study.device).summary()
    assert all(math.isfinite(v) and v >= 0 for v in summary.values() if isinstance(v, float))
