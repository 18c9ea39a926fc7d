"""The lean SR parser gives read_rdsr exactly what pydicom gives it; procedure labels."""
from __future__ import annotations

import pydicom
import pytest

from sifluoro.audit._fastsr import FastPathUnsupported, parse_sr_bytes
from sifluoro.audit.parse import parse_file, procedure_label
from sifluoro.audit.synthetic import write_synthetic_rdsrs
from sifluoro.dose.rdsr_read import read_rdsr
from tests.audit.corpus import write_corpus
from tests.dose.conftest import VENDOR_DIR, VENDOR_FILES


def _same(path):
    fast = read_rdsr(path, parse_sr_bytes(path.read_bytes()))
    slow = read_rdsr(path, pydicom.dcmread(path))
    assert fast == slow
    return fast


def test_fast_parser_equals_pydicom_on_our_reports(tmp_path):
    corpus = write_corpus(tmp_path)
    for path in [*corpus["rdsrs"], corpus["both_rdsr"]]:
        _same(path)
    for path in write_synthetic_rdsrs(tmp_path / "more", 20, seed=3, templates=20):
        assert len(_same(path).events) >= 1


@pytest.mark.parametrize("name", VENDOR_FILES)
def test_fast_parser_equals_pydicom_on_vendor_reports(name):
    path = VENDOR_DIR / name
    if not path.is_file():
        pytest.skip(f"vendor RDSRs are not cached in {VENDOR_DIR}: run tests/dose/fetch_vendor_rdsr.sh")
    report = _same(path)
    assert parse_file(path).report == report


def test_fast_parser_leaves_what_it_does_not_cover_to_pydicom(tmp_path):
    corpus = write_corpus(tmp_path)
    with pytest.raises(FastPathUnsupported):
        parse_sr_bytes(b"not dicom at all" * 20)
    image = parse_file(corpus["images"][0])  # pixel data: the pydicom path
    assert image.kind == "image" and image.run is not None
    rejected = parse_file(corpus["junk"])
    assert rejected.kind == "rejected" and "not a DICOM file" in rejected.reason


def test_a_report_cut_short_is_rejected_and_ingest_goes_on(tmp_path):
    """Cut at many places (a partial copy, a transfer cut short), a report is rejected as cut
    short, never raised out of parse_file nor read as far as it goes (a report short of
    events: it had been); ingest keeps the whole one."""
    from sifluoro.audit.ingest import ingest

    corpus = write_corpus(tmp_path)
    data = corpus["rdsrs"][0].read_bytes()
    folder = tmp_path / "cut"
    folder.mkdir()
    for cut in range(200, len(data) - 1, max(1, (len(data) - 200) // 60)):
        path = folder / f"cut{cut:06d}.dcm"
        path.write_bytes(data[:cut])
        parsed = parse_file(path)
        assert parsed.kind == "rejected" and "cut short" in parsed.reason, (cut, parsed.kind)
    (folder / "whole.dcm").write_bytes(data)
    result = ingest([folder], str(tmp_path / "registry.db")).as_dict()
    assert len(result["rejected"]) == result["files"] - 1 and result["studies_new"] == 1


@pytest.mark.parametrize("study, requested, label", [
    ("SI joint injection", None, "SI joint injection"),
    ("SIJ inj. left", None, "SI joint injection"),
    ("Sacroiliac joint injection R", None, "SI joint injection"),
    ("Injection, sacro-iliac joint", None, "SI joint injection"),
    ("", "SI-JOINT INJECTION BILATERAL", "SI joint injection"),
    ("Pain clinic", "L4-5 facet injection", "Facet joint injection"),
    ("SIJ-Injection", None, "SI joint injection"),  # a hyphen is a word break (review s10 B#12)
    ("Sacro-iliac infiltration", None, "SI joint injection"),
    ("Knee-Arthrography", None, "Knee arthrography"),
    ("DSA  Body", None, "Dsa body"),
    ("Kardiologisk 7,5 b/s", None, "Kardiologisk 7,5 b/s"),  # was "Kardiologisk 7 5 b s" (s16 L5)
    ("Pain clinic 3.5 mm / L4/5 facet", None, "Facet joint injection"),
    (None, None, "unspecified"),
])
def test_procedure_labels(study, requested, label):
    ds = pydicom.Dataset()
    if study is not None:
        ds.StudyDescription = study
    if requested is not None:
        item = pydicom.Dataset()
        item.RequestedProcedureDescription = requested
        ds.RequestAttributesSequence = [item]
    assert procedure_label(ds)[0] == label


@pytest.mark.parametrize("padding", [1, 3, 7])
def test_a_whole_report_with_a_few_bytes_of_padding_is_read(tmp_path, padding):
    """Fewer than 8 bytes after the last element (no element header is that short): pydicom
    reads the file; the fast path refused it as cut short and its dose was lost (review s10
    B#14)."""
    corpus = write_corpus(tmp_path)
    data = corpus["rdsrs"][0].read_bytes()
    whole = parse_file(corpus["rdsrs"][0])
    (tmp_path / "padded.dcm").write_bytes(data + b"\0" * padding)
    padded = parse_file(tmp_path / "padded.dcm")
    assert padded.kind == "rdsr" and padded.report.dap_gycm2 == pytest.approx(whole.report.dap_gycm2)


def test_a_large_report_cut_short_is_rejected_too(tmp_path, monkeypatch):
    """Above the whole-read size the cut check did not run: a report cut between items was
    registered short of its events, which ``dose summary`` refuses (review s10 B#13). The
    size is lowered here so that the corpus report counts as large."""
    from sifluoro.audit import parse as parse_module

    corpus = write_corpus(tmp_path)
    data = corpus["rdsrs"][0].read_bytes()
    monkeypatch.setattr(parse_module, "WHOLE_READ_BYTES", 1024)
    (tmp_path / "cut.dcm").write_bytes(data[:int(len(data) * 0.9)])
    parsed = parse_file(tmp_path / "cut.dcm")
    assert parsed.kind == "rejected" and "cut short" in parsed.reason
    assert parse_file(corpus["rdsrs"][0]).kind == "rdsr"


def test_a_report_cut_or_damaged_is_worded_alike_with_its_error_class(tmp_path):
    """A report with a damaged length (size unchanged) was called "a copy cut short" (L1); one
    cut in its file meta was "(7FE0,0010) PixelData: the file ends before its dataset is
    complete" in dose summary, another wording in audit ingest (L2); ingest's rejections of
    such reports carried no error class (L3) (review s16)."""
    from sifluoro.audit.ingest import ingest
    from sifluoro.dose.summary import summarize

    corpus = write_corpus(tmp_path)
    data = corpus["rdsrs"][0].read_bytes()
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "cut300.dcm").write_bytes(data[:300])
    for at in range(len(data) // 2, len(data) - 64, 7):  # a length damaged in place
        damaged = data[:at] + bytes(b ^ 0x5A for b in data[at:at + 8]) + data[at + 8:]
        (folder / "damaged.dcm").write_bytes(damaged)
        if parse_file(folder / "damaged.dcm").kind == "rejected":
            break
    else:
        pytest.fail("no damaged copy was refused")
    _, rejected = summarize([folder])
    by_summary = {r.file.rsplit("/", 1)[-1]: r for r in rejected}
    result = ingest([folder], str(tmp_path / "r.db")).as_dict()
    by_ingest = {r["file"].rsplit("/", 1)[-1]: r for r in result["rejected"]}
    assert set(by_summary) == set(by_ingest) == {"cut300.dcm", "damaged.dcm"}
    for name, r in by_ingest.items():
        assert r["reason"] == by_summary[name].reason, name
        assert "cut short" in r["reason"] and "damaged" in r["reason"]
        assert "PixelData" not in r["reason"]
        assert r["error"] == by_summary[name].error == "DamagedFileError"
