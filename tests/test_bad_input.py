"""Bad input: each kind is listed with a reason naming the tag, and the rest of the study goes on."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.cli import main
from sifluoro.errors import MultipleStudiesError
from sifluoro.contract import replay_output_violations
from tests.dicom_fixtures import PATIENT_ID, PATIENT_NAME, RunSpec, technique, write_study


def _edit(path, fn, *, raw=False):
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path, enforce_file_format=not raw)


@pytest.fixture
def damaged_study(tmp_path):
    """Two good runs and one of every bad kind, in one study folder."""
    specs = [RunSpec(0.0, filename="good1.dcm"), RunSpec(30.0, filename="good2.dcm"),
             RunSpec(10.0, filename="truncated.dcm"), RunSpec(11.0, filename="no_rows.dcm"),
             RunSpec(12.0, filename="unknown_ts.dcm"), RunSpec(13.0, filename="wrong_size.dcm"),
             RunSpec(14.0, filename="no_frame_time.dcm"),
             RunSpec(15.0, filename="broken_rle.dcm", transfer_syntax="rle", n_frames=4),
             RunSpec(16.0, filename="no_time.dcm"),
             RunSpec(17.0, filename="truncated_rle.dcm", transfer_syntax="rle")]
    paths = {p.name: p for p in write_study(tmp_path, specs)}
    (tmp_path / "notes.txt").write_text("not a dicom file\n")
    data = paths["truncated.dcm"].read_bytes()
    paths["truncated.dcm"].write_bytes(data[: len(data) - 5000])
    _edit(paths["no_rows.dcm"], lambda ds: delattr(ds, "Rows"))
    data = paths["truncated_rle.dcm"].read_bytes()
    paths["truncated_rle.dcm"].write_bytes(data[: len(data) // 2])

    def unknown_ts(ds):
        ds.file_meta.TransferSyntaxUID = "1.2.840.99999.1"
    _edit(paths["unknown_ts.dcm"], unknown_ts)
    _edit(paths["wrong_size.dcm"], lambda ds: setattr(ds, "Rows", 60))

    def no_frame_time(ds):
        del ds.FrameTime
        ds.FrameIncrementPointer = 0x00181063
    _edit(paths["no_frame_time.dcm"], no_frame_time)
    # corrupt the third RLE frame's segment header: frames 1-2 decode, frame 3 fails
    raw = bytearray(paths["broken_rle.dcm"].read_bytes())
    ds = pydicom.dcmread(paths["broken_rle.dcm"])
    from pydicom.encaps import generate_frames

    frames = list(generate_frames(ds.PixelData, number_of_frames=4))
    at = bytes(raw).index(frames[2][:64])
    raw[at:at + 64] = b"\xff" * 64
    paths["broken_rle.dcm"].write_bytes(bytes(raw))

    def no_time(ds):
        for kw in ("AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "ContentDate",
                   "ContentTime"):
            delattr(ds, kw)
    _edit(paths["no_time.dcm"], no_time)
    return tmp_path


EXPECTED_REASONS = {
    "notes.txt": "not a DICOM file",
    "truncated.dcm": "(7FE0,0010) PixelData: pixel data is truncated",
    "no_rows.dcm": "(0028,0010) Rows: Rows is missing",
    "unknown_ts.dcm": "(0002,0010) TransferSyntaxUID: unknown transfer syntax",
    "wrong_size.dcm": "(7FE0,0010) PixelData: pixel data has",
    "no_frame_time.dcm": "(0018,1063) FrameTime: 3 frames but no usable frame timing",
    "broken_rle.dcm": "(7FE0,0010) PixelData: frame 3 fails to decode",
    "no_time.dcm": "(0008,002A) AcquisitionDateTime: no acquisition or content time",
    # cut in half: pydicom reads nothing of it, its header is read again up to the pixel data
    "truncated_rle.dcm": "(7FE0,0010) PixelData: pixel data is truncated: the file ends in frame 2 of 3",
}


def test_every_bad_kind_is_listed_and_the_study_goes_on(damaged_study):
    study = read_study([damaged_study])
    rejected = list(study.rejected)
    frames = list(iter_frames(study, rejected))
    by_name = {r.file.rsplit("/", 1)[-1]: r.reason for r in rejected}
    assert set(by_name) == set(EXPECTED_REASONS)
    for name, reason in EXPECTED_REASONS.items():
        assert by_name[name].startswith(reason), (name, by_name[name])
    assert "(frames 1-2 of 4 used)" in by_name["broken_rle.dcm"]
    assert by_name["truncated_rle.dcm"].endswith("(frames 1-1 of 3 used)")
    # cut 5000 bytes short: the file ends in its third frame, the two whole ones are used
    assert by_name["truncated.dcm"].endswith("the file ends in frame 3 of 3; re-export the run "
                                             "(frames 1-2 of 3 used)")
    # good1 (3 frames), the whole frames of truncated and of truncated_rle and the decodable
    # frames of broken_rle, good2 (3 frames), in time order
    assert [(f.run.path.rsplit("/", 1)[-1], f.frame_number) for f in frames] == [
        ("good1.dcm", 1), ("good1.dcm", 2), ("good1.dcm", 3), ("truncated.dcm", 1),
        ("truncated.dcm", 2), ("broken_rle.dcm", 1), ("broken_rle.dcm", 2),
        ("truncated_rle.dcm", 1), ("good2.dcm", 1), ("good2.dcm", 2), ("good2.dcm", 3)]


def test_replay_of_a_damaged_study_follows_the_contract(damaged_study, tmp_path, capsys, caplog):
    events, summary = tmp_path / "out" / "events.jsonl", tmp_path / "out" / "summary.json"
    code = main(["replay", str(damaged_study), "--events", str(events), "--summary", str(summary)])
    assert code == 0
    assert replay_output_violations(events, summary) == []
    s = json.loads(summary.read_text())
    assert s["frames"] == 11
    # frame 3 of truncated.dcm, frames 3-4 of broken_rle.dcm, 2-3 of truncated_rle.dcm, the
    # 3 of no_frame_time.dcm (no timing: its frames are not shown) and the 3 of unknown_ts.dcm
    # (pixels not decodable, its header whole): counted from their headers
    # wrong_size.dcm's 3 too since review s16 H1 (its frames cannot be cut; its dose counted),
    # and no_rows.dcm's 3 since user review s18 F9 (its size unknown; its dose counted), and
    # no_time.dcm's 3 since review s21 #3 (it cannot be placed in time; its dose counted)
    assert s["lost_frames"]["frames"] == 20 and s["lost_frames"]["fluoro_time_s"] > 0
    assert sorted(r["file"].rsplit("/", 1)[-1] for r in s["rejected_files"]) == sorted(EXPECTED_REASONS)
    printed = capsys.readouterr()
    everything = events.read_text() + summary.read_text() + printed.out + printed.err + caplog.text
    assert PATIENT_NAME.split("^")[0] not in everything and PATIENT_ID not in everything


def test_the_engine_counts_the_frames_a_damaged_file_lost(damaged_study):
    from sifluoro import Engine, Settings

    summary = Engine(Settings(latency_budget_ms=1e9), stages=[]).run(damaged_study)
    assert summary["frames"] == 11 and summary["lost_frames"]["frames"] == 20


def test_a_study_whose_every_frame_was_lost_still_has_its_dose_reported(tmp_path):
    """One RLE run whose first frame fails to decode: no event, exit 2, and its exposure,
    from the header, in summary.lost_frames and in the RDSR."""
    from pydicom.encaps import generate_frames

    from sifluoro.dose.rdsr_read import read_rdsr

    (path,) = write_study(tmp_path / "in", [RunSpec(0.0, filename="rle.dcm", transfer_syntax="rle",
                                                     n_frames=4)])
    raw = bytearray(path.read_bytes())
    first = next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=4))
    at = bytes(raw).index(first[:64])
    raw[at:at + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))
    out = tmp_path / "out"
    code = main(["replay", str(tmp_path / "in"), "--events", str(out / "e.jsonl"), "--summary",
                 str(out / "s.json"), "--rdsr", str(out / "dose.dcm"), "-q"])
    s = json.loads((out / "s.json").read_text())
    assert code == 2 and s["frames"] == 0 and s["lost_frames"]["frames"] == 4
    rdsr = read_rdsr(out / "dose.dcm")
    assert sum(e.n_pulses for e in rdsr.events) == 4
    assert rdsr.planes[0].air_kerma_mgy == pytest.approx(s["lost_frames"]["air_kerma_mgy"])


def test_nothing_usable_exits_2(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    code = main(["replay", str(tmp_path), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json")])
    assert code == 2
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames"] == 0 and s["rejected_files"][0]["file"].endswith("a.txt")


def test_several_studies_exit_2_with_their_uids(tmp_path, capsys):
    write_study(tmp_path / "a", [RunSpec(0.0)], study_uid="1.2.3.1")
    write_study(tmp_path / "b", [RunSpec(0.0)], study_uid="1.2.3.2")
    code = main(["replay", str(tmp_path), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json")])
    assert code == 2
    assert "1.2.3.1, 1.2.3.2" in capsys.readouterr().err
    code = main(["replay", str(tmp_path), "--study", "1.2.3.2", "--events",
                 str(tmp_path / "e.jsonl"), "--summary", str(tmp_path / "s.json"), "-q"])
    assert code == 0


@pytest.mark.parametrize("cut_bytes, used", [(100, 2), (8192 + 100, 1), (2 * 8192 + 100, 0)])
def test_a_file_cut_short_gives_its_whole_frames(tmp_path, cut_bytes, used):
    """An interrupted transfer of a 3-frame run (64x64, 16 bits: 8192 bytes a frame): its whole
    frames are used and the rest rejected with the reason and listed as lost (their dose comes
    from the header), even with no whole frame. The other run is unaffected."""
    paths = write_study(tmp_path, [RunSpec(0.0, filename="cut.dcm"), RunSpec(30.0, filename="good.dcm")])
    cut = next(p for p in paths if p.name == "cut.dcm")
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) - cut_bytes])
    study = read_study([tmp_path])
    rejected, lost = list(study.rejected), []
    frames = list(iter_frames(study, rejected, lost))
    assert [(f.run.path.rsplit("/", 1)[-1], f.frame_number) for f in frames] == (
        [("cut.dcm", k + 1) for k in range(used)] + [("good.dcm", k + 1) for k in range(3)])
    assert [(run.path.rsplit("/", 1)[-1], first) for run, first in lost] == [("cut.dcm", used + 1)]
    [reason] = [r.reason for r in rejected]
    assert reason.startswith("(7FE0,0010) PixelData: pixel data is truncated")
    assert (f"(frames 1-{used} of 3 used)" in reason) == (used > 0)


def _frame_ends(path, n_frames):
    """File offsets at which each frame's pixel data ends, and that of the (7FE0,0010) tag."""
    from pydicom.encaps import generate_frames

    data = path.read_bytes()
    ds = pydicom.dcmread(path)
    tag_at = data.rindex(b"\xe0\x7f\x10\x00")
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        frame_bytes = len(ds.PixelData) // n_frames
        start = data.rindex(ds.PixelData[:64])
        return [start + frame_bytes * (k + 1) for k in range(n_frames)], tag_at
    ends = []
    for frame in generate_frames(ds.PixelData, number_of_frames=n_frames):
        ends.append(data.index(frame[-64:], ends[-1] if ends else 0) + 64)
    return ends, tag_at


def _reencapsulate(path, n_frames, *, has_bot=False, fragments_per_frame=1):
    """The same encoded frames with a Basic Offset Table, or split in several fragments."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(path)
    frames = list(generate_frames(ds.PixelData, number_of_frames=n_frames))
    ds.PixelData = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=has_bot)
    ds.save_as(path)


CUT_VARIANTS = {  # name: (transfer syntax, re-encapsulation)
    "rle": ("rle", {}), "rle_bot": ("rle", {"has_bot": True}), "jpeg2000": ("jpeg2000", {}),
    "jpeg2000_2_fragments": ("jpeg2000", {"fragments_per_frame": 2}),
    "jpeg_lossless_bot_2_fragments": ("jpeg_lossless", {"has_bot": True, "fragments_per_frame": 2}),
    "explicit": ("explicit", None), "implicit": ("implicit", None)}


@pytest.mark.parametrize("variant", sorted(CUT_VARIANTS))
def test_a_file_cut_anywhere_gives_its_whole_frames_and_counts_the_rest_lost(tmp_path, variant):
    """An interrupted transfer, cut at any byte from just before the pixel data to the end
    (compressed pixel data too, and at the PixelData tag): the frames wholly in the file are
    decoded exactly, the rest listed as lost (dose from the header), with a reason."""
    from tests.dicom_fixtures import frames_for

    syntax, encaps = CUT_VARIANTS[variant]
    spec = RunSpec(0.0, filename="run.dcm", transfer_syntax=syntax, n_frames=4)
    (path,) = write_study(tmp_path / "whole", [spec])
    if encaps:
        _reencapsulate(path, 4, **encaps)
    ends, tag_at = _frame_ends(path, 4)
    truth = frames_for(spec, 0)
    data = path.read_bytes()
    cuts = [tag_at - 2, tag_at, tag_at + 4, tag_at + 14, *range(tag_at + 30, len(data), 997),
            *(e - 1 for e in ends), *ends[:-1]]
    for cut in sorted(set(cuts)):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        (folder / "run.dcm").write_bytes(data[:cut])
        study = read_study([folder])
        rejected, lost = list(study.rejected), []
        frames = list(iter_frames(study, rejected, lost))
        whole = sum(end <= cut for end in ends)
        assert len(frames) == whole, (cut, rejected)
        for k, frame in enumerate(frames):
            assert np.array_equal(frame.pixels, truth[k]), (cut, k)
        if whole == 4:  # only the sequence delimiter, or less, is missing
            continue
        assert [(run.n_frames, first) for run, first in lost] == [(4, whole + 1)], (cut, rejected)
        [reason] = [r.reason for r in rejected]
        assert reason.startswith("(7FE0,0010) PixelData: ")
        if cut <= tag_at + 4:  # no more than the tag: the file ends before the pixel data
            assert "the file ends before its pixel data" in reason, (cut, reason)
        elif cut >= tag_at + 12:  # the element's header is whole
            assert "pixel data is truncated" in reason, (cut, reason)


@pytest.mark.parametrize("syntax, cut_at", [("rle", "half"), ("jpeg2000", "half"),
                                            ("explicit", "tag"), ("rle", "tag")])
def test_replay_counts_the_dose_of_a_file_cut_short(tmp_path, syntax, cut_at):
    """Replay and the RDSR keep the dose of the frames a cut-short file lost: as much as the
    whole file gives, and the frames lost in summary.lost_frames."""
    from sifluoro.dose.rdsr_read import read_rdsr

    specs = [RunSpec(0.0, filename="a.dcm"), RunSpec(20.0, filename="cut.dcm",
                                                     transfer_syntax=syntax, n_frames=6)]
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    paths = write_study(whole_dir, specs)
    cut_dir.mkdir()
    for p in paths:
        data = p.read_bytes()
        if p.name == "cut.dcm":
            data = data[:len(data) // 2] if cut_at == "half" else data[:data.rindex(b"\xe0\x7f\x10\x00")]
        (cut_dir / p.name).write_bytes(data)
    out = {}
    for name, folder in (("whole", whole_dir), ("cut", cut_dir)):
        o = tmp_path / f"out-{name}"
        code = main(["replay", str(folder), "--events", str(o / "e.jsonl"), "--summary",
                     str(o / "s.json"), "--rdsr", str(o / "dose.dcm"), "-q"])
        assert code == 0
        assert replay_output_violations(o / "e.jsonl", o / "s.json") == []
        out[name] = (json.loads((o / "s.json").read_text()), read_rdsr(o / "dose.dcm"))
    (whole, whole_rdsr), (cut, cut_rdsr) = out["whole"], out["cut"]
    lost = cut["lost_frames"]
    assert cut["frames"] + lost["frames"] == whole["frames"] == 9
    assert 1 <= lost["frames"] <= 6 and lost["air_kerma_mgy"] > 0
    assert [r["file"].rsplit("/", 1)[-1] for r in cut["rejected_files"]] == ["cut.dcm"]
    assert sum(e.n_pulses for e in cut_rdsr.events) == 9
    assert cut_rdsr.planes[0].air_kerma_mgy == pytest.approx(whole_rdsr.planes[0].air_kerma_mgy)
    assert cut_rdsr.planes[0].dap_gycm2 == pytest.approx(whole_rdsr.planes[0].dap_gycm2)


def test_a_file_without_pixel_data_sent_to_the_receiver_is_still_refused(tmp_path):
    """Only a file read from disk that ends early is kept as cut short: a dataset read whole
    (the receiver's) without pixel data is refused as before."""
    from sifluoro.acquire.dicom_reader import run_from_dataset
    from sifluoro.errors import MissingAttributeError

    (path,) = write_study(tmp_path, [RunSpec(0.0)])
    ds = pydicom.dcmread(path)
    del ds.PixelData
    with pytest.raises(MissingAttributeError, match="no pixel data"):
        run_from_dataset(ds, path)


def _set(path, **attributes):
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


@pytest.mark.parametrize("syntax, declared, where", [
    ("explicit", 3_000_000, "but the pixel data (24576 bytes) holds 3 frame(s)"),
    ("explicit", 4, "but the pixel data (24576 bytes) holds 3 frame(s)"),
    ("rle", 3_000_000, "but the encapsulated pixel data holds 3 fragment(s)"),
    ("rle", 4, "but the encapsulated pixel data holds 3 fragment(s)"),
])
def test_a_frame_count_the_pixel_data_cannot_hold_gives_the_frames_present(tmp_path, caplog, syntax,
                                                                           declared, where):
    """NumberOfFrames above what the pixel data holds (a header error; a 30 kB file may declare
    millions, and the receiver reads network input with the same code): the frames present are
    used with their dose and a warning naming the tag, and no per-frame list is built from the
    count (the run was refused, its dose with it)."""
    import tracemalloc

    from tests.dicom_fixtures import frames_for

    spec = RunSpec(0.0, transfer_syntax=syntax)
    (path,) = write_study(tmp_path, [spec])
    _set(path, NumberOfFrames=declared)
    tracemalloc.start()
    try:
        study = read_study([tmp_path])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert study.rejected == ()
    (run,) = study.runs
    assert run.n_frames == 3
    rejected, lost = [], []
    frames = list(iter_frames(study, rejected, lost))
    assert rejected == [] and lost == []
    assert all(np.array_equal(f.pixels, t) for f, t in zip(frames, frames_for(spec, 0), strict=True))
    assert f"(0028,0008) NumberOfFrames = {declared}, {where}" in caplog.text
    assert peak < 20e6  # 3 000 000 frames took ~190 MB


def test_pixel_data_ending_inside_a_frame_is_not_said_to_give_its_whole_frames(tmp_path, caplog):
    """Review s22 F5: "the 2 frame(s) present are used" was said of a file whose pixel data ends
    inside its third frame, then none was shown (a partial frame cannot be told from a wrong
    Rows: every frame would be cut at the wrong place). It now says what it holds."""
    (path,) = write_study(tmp_path, [RunSpec(0.0)])
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:-3000]
    ds.save_as(path)
    study = read_study([tmp_path])
    rejected, lost = [], []
    assert list(iter_frames(study, rejected, lost)) == []
    assert "holds 2 frame(s) of 8192 bytes and part of another" in caplog.text
    assert "present are used" not in caplog.text


def test_a_file_cut_short_may_not_declare_more_frames_than_the_cap(tmp_path):
    """Cut short, the pixel data cannot bound NumberOfFrames: the cap still does."""
    (path,) = write_study(tmp_path, [RunSpec(0.0, transfer_syntax="rle")])
    _set(path, NumberOfFrames=500_000)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 3000])
    study = read_study([tmp_path])
    [rejection] = study.rejected
    assert rejection.reason.startswith("(0028,0008) NumberOfFrames: NumberOfFrames = 500000 is "
                                       "more than sifluoro reads"), rejection.reason


@pytest.mark.parametrize("high_bit, usable", [(15, False), (12, False), (11, True)])
def test_high_bit_must_be_bits_stored_minus_one(tmp_path, high_bit, usable):
    """12 bits stored high in the word (HighBit 15) were masked to their low 12 bits: garbage.
    Such frames are not shown, but the run's exposure happened: its dose counts, from the
    header, as lost frames (the whole run was refused, with its dose)."""
    (path,) = write_study(tmp_path, [RunSpec(0.0, bits_stored=12, n_frames=3)])
    _set(path, HighBit=high_bit)
    study = read_study([tmp_path])
    assert len(study.runs) == 1
    rejected, lost = list(study.rejected), []
    frames = list(iter_frames(study, rejected, lost))
    assert len(frames) == (3 if usable else 0)
    if not usable:
        assert [(run.n_frames, first) for run, first in lost] == [(3, 1)]
        [rejection] = rejected
        assert rejection.reason.startswith(f"(0028,0102) HighBit: HighBit = {high_bit} with "
                                           "BitsStored = 12"), rejection.reason
        assert "their dose is counted from the header" in rejection.reason


@pytest.mark.parametrize("attributes", [{"BitsStored": None}, {"BitsStored": 14, "BitsAllocated": 8}])
def test_a_bad_bits_stored_keeps_the_runs_dap(tmp_path, attributes):
    """Review s21 #6: Rows, Columns, BitsAllocated and BitsStored were read as one: a bad
    BitsStored made the image size unknown, and the run's DAP with it."""
    from sifluoro.config import DoseSettings
    from sifluoro.dose.accumulate import accumulate_study

    spec = RunSpec(0.0, n_frames=3, tech=technique(shutter=None))  # DAP from the image's area
    (good,) = write_study(tmp_path / "good", [spec])
    (path,) = write_study(tmp_path / "bad", [spec])
    _set(path, **attributes)
    study = read_study([tmp_path / "bad"])
    rejected, lost = list(study.rejected), []
    assert list(iter_frames(study, rejected, lost)) == []
    [rejection] = rejected
    assert rejection.reason.startswith("(0028,0101) BitsStored"), rejection.reason
    assert [(run.n_frames, first) for run, first in lost] == [(3, 1)]
    dose = accumulate_study(study, DoseSettings())
    whole = accumulate_study(read_study([tmp_path / "good"]), DoseSettings())
    assert dose.totals.dap_gycm2 == pytest.approx(whole.totals.dap_gycm2)
    assert dose.totals.dap_gycm2 > 0


@pytest.mark.parametrize("syntax", ["explicit", "rle"])
def test_a_file_gone_between_scan_and_decoding_loses_only_its_run(tmp_path, syntax):
    """A file deleted (or unreadable) after the header scan: its run is rejected with its
    frames counted as lost, and the replay goes on with the others (it stopped on OSError)."""
    import os

    paths = write_study(tmp_path / "in", [RunSpec(0.0, filename="a.dcm"),
                                          RunSpec(10.0, filename="b.dcm", transfer_syntax=syntax),
                                          RunSpec(20.0, filename="c.dcm")])
    study = read_study([tmp_path / "in"])
    os.remove(paths[1])
    rejected, lost = list(study.rejected), []
    frames = list(iter_frames(study, rejected, lost))
    assert [f.run.path.rsplit("/", 1)[-1] for f in frames] == ["a.dcm"] * 3 + ["c.dcm"] * 3
    assert [(run.path.rsplit("/", 1)[-1], first) for run, first in lost] == [("b.dcm", 1)]
    [rejection] = rejected
    assert rejection.file.endswith("b.dcm") and rejection.reason.startswith("(7FE0,0010) PixelData")


def test_a_video_stream_that_does_not_decode_is_named_and_its_dose_kept(tmp_path):
    """A video syntax is read through FFmpeg now (tests/test_video_syntax.py); a stream that
    is not video gives no frame, says so, and its exposure is counted from the header."""
    from pydicom.uid import MPEG4HP41

    (path,) = write_study(tmp_path, [RunSpec(0.0)])
    ds = pydicom.dcmread(path)
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData, ds.NumberOfFrames = encapsulate([b"\x00\x00\x01\xb3" * 16]), 1
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    study = read_study([tmp_path])
    rejected, lost = [], []
    assert list(iter_frames(study, rejected, lost)) == []
    [rejection] = rejected
    assert rejection.reason.startswith("(7FE0,0010) PixelData: the video stream gives 0 of 1")
    # the loop's exposure happened: its frame is counted from the header (review s15 H2)
    assert [(run.sop_instance_uid, first) for run, first in lost] == [(ds.SOPInstanceUID, 1)]


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg2000"])
@pytest.mark.parametrize("part_sorts_first", [True, False])
def test_a_whole_file_sent_again_replaces_its_part_cut_short(tmp_path, syntax, part_sorts_first):
    """An interrupted transfer left part of a file; the whole file came again under another
    name: every frame is read from the whole one, whichever sorts first, and the part is
    rejected naming it (the part won when it sorted first: frames lost)."""
    from tests.dicom_fixtures import frames_for

    spec = RunSpec(0.0, filename="run.dcm", transfer_syntax=syntax, n_frames=4)
    (path,) = write_study(tmp_path / "src", [spec])
    data = path.read_bytes()
    folder = tmp_path / "in"
    folder.mkdir()
    part, whole = ("a_part.dcm", "b_whole.dcm") if part_sorts_first else ("b_part.dcm", "a_whole.dcm")
    (folder / part).write_bytes(data[:len(data) // 2])
    (folder / whole).write_bytes(data)
    study = read_study([folder])
    rejected, lost = list(study.rejected), []
    frames = list(iter_frames(study, rejected, lost))
    assert [f.run.path.rsplit("/", 1)[-1] for f in frames] == [whole] * 4 and lost == []
    assert all(np.array_equal(f.pixels, t) for f, t in zip(frames, frames_for(spec, 0)))
    [reason] = [r.reason for r in rejected if r.file.endswith(part)]
    assert reason.startswith("(0008,0018) SOPInstanceUID: ") and whole in reason


def test_a_whole_compressed_copy_wins_over_a_longer_native_copy_cut_short(tmp_path):
    """The first transfer went uncompressed and stopped in its last frame; the resend, JPEG 2000, is
    whole but smaller (and here even older): the whole copy is used (the longer won: frames
    lost)."""
    import os

    from tests.dicom_fixtures import frames_for

    spec = RunSpec(0.0, filename="run.dcm", n_frames=4)
    (native,) = write_study(tmp_path / "native", [spec])
    (j2k,) = write_study(tmp_path / "j2k", [replace_spec(spec, transfer_syntax="jpeg2000")])
    ds = pydicom.dcmread(j2k)
    sop = pydicom.dcmread(native, stop_before_pixels=True).SOPInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.StudyInstanceUID = pydicom.dcmread(native, stop_before_pixels=True).StudyInstanceUID
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "b_resent_whole.dcm")
    data = native.read_bytes()
    cut = folder / "a_first_transfer_cut.dcm"
    cut.write_bytes(data[:len(data) - 1500])  # inside the last frame
    assert cut.stat().st_size > (folder / "b_resent_whole.dcm").stat().st_size
    os.utime(cut, ns=(2_000_000_000_000_000_000,) * 2)
    study = read_study([folder])
    rejected, lost = list(study.rejected), []
    frames = list(iter_frames(study, rejected, lost))
    assert [f.run.path.rsplit("/", 1)[-1] for f in frames] == ["b_resent_whole.dcm"] * 4 and lost == []
    assert all(np.array_equal(f.pixels, t) for f, t in zip(frames, frames_for(spec, 0)))
    assert [r.file.rsplit("/", 1)[-1] for r in rejected] == ["a_first_transfer_cut.dcm"]


def replace_spec(spec, **changes):
    from dataclasses import replace
    return replace(spec, **changes)


@pytest.mark.parametrize("keep", [0.6, 0.999])
def test_a_deflated_file_cut_short_keeps_its_dose(tmp_path, keep):
    """A Deflated Explicit VR file cut short: its header is inflated as far as the bytes go,
    the run is kept and its frames are counted as lost with their dose from the header (it was
    refused as 'not DICOM', its dose with it)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    (path,) = write_study(tmp_path / "src", [RunSpec(0.0, n_frames=4)])
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    whole = tmp_path / "whole.dcm"
    ds.save_as(whole, enforce_file_format=True)
    (tmp_path / "in").mkdir()
    data = whole.read_bytes()
    (tmp_path / "in" / "cut.dcm").write_bytes(data[:int(len(data) * keep)])
    study = read_study([tmp_path / "in"])
    (run,) = study.runs
    rejected, lost = list(study.rejected), []
    assert list(iter_frames(study, rejected, lost)) == []
    assert [(r.n_frames, first) for r, first in lost] == [(4, 1)]
    [rejection] = rejected
    assert rejection.reason.startswith("(7FE0,0010) PixelData: ")


@pytest.mark.parametrize("n_frames, per_frame_groups, held", [
    (4, True, "4 per-frame functional groups"),
    (4, False, "pixel data of 4 frames"),
    (1, True, None),
])
def test_an_enhanced_xa_without_number_of_frames_is_said_to_lack_it(tmp_path, caplog, n_frames,
                                                                    per_frame_groups, held):
    """NumberOfFrames is Type 1 in Enhanced XA: its absence is named, not taken as 1 and then
    blamed on the pixel data's size ("NumberOfFrames gives 8192"); one frame is still read."""
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=n_frames, storage="enhanced_xa")])

    def drop(ds):
        del ds.NumberOfFrames
        if not per_frame_groups:
            del ds.PerFrameFunctionalGroupsSequence
    _edit(path, drop, raw=True)
    study = read_study([tmp_path])
    if held is None:
        (run,) = study.runs
        assert run.n_frames == 1
        assert "(0028,0008) NumberOfFrames is missing (Type 1 in Enhanced XA)" in caplog.text
        return
    [rejection] = study.rejected
    assert rejection.reason == ("(0028,0008) NumberOfFrames: NumberOfFrames is missing or empty, "
                                f"though the instance has {held}; it is Type 1 in Enhanced XA")


def test_the_dose_shown_live_has_the_lost_frames_once_their_run_is_passed(damaged_study, tmp_path):
    """Review s14 H1: frames a damaged file lost were counted only at the study's end, so no
    event, DoseEvent, OpenIGTLink State or live page ever showed them (v2 case022 ended live
    at 0.634 mGy of 0.687). Now the first frame after a damaged run shows them in study_*, and
    the Engine's last DoseEvent is the study's whole dose."""
    from sifluoro import Engine, Settings
    from sifluoro.replay import replay

    result = replay([damaged_study], events_path=tmp_path / "e.jsonl",
                    summary_path=tmp_path / "s.json", stages=[])
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    # events 3-4 are truncated.dcm's whole frames; its third was lost
    after = next(i for i, e in enumerate(events)
                 if i > 3 and e["sop_instance_uid"] != events[3]["sop_instance_uid"])
    assert "study_air_kerma_mgy" not in events[3]["dose"]
    shown = events[after]["dose"]
    assert shown["study_air_kerma_mgy"] > shown["air_kerma_mgy"]
    assert replay_output_violations(tmp_path / "e.jsonl", tmp_path / "s.json") == []
    assert result.summary["lost_frames"]["frames"] == 20

    engine = Engine(Settings(latency_budget_ms=1e9), stages=[])
    doses = []
    engine.on("dose", doses.append)
    summary = engine.run(damaged_study)
    assert doses[-1].study_air_kerma_mgy == pytest.approx(summary["study_dose"]["air_kerma_mgy"])
    assert doses[-1].study_fluoro_time_s == pytest.approx(summary["study_dose"]["fluoro_time_s"])
    kerma = [d.study_air_kerma_mgy for d in doses]
    assert kerma == sorted(kerma)  # never back down


def test_an_srdl_the_lost_frames_help_reach_after_their_run_is_passed_is_raised(damaged_study,
                                                                                 tmp_path):
    """Review s14 (second) H1: frames lost in damaged files are counted once their run is passed; the SRDL level
    (1.8 s of fluoroscopy) is reached only by later frames plus the lost ones (1.73 s when
    the last damaged run is passed, 2.13 s at the end). No alert was ever raised."""
    from dataclasses import replace

    from sifluoro import Engine, Settings
    from sifluoro.replay import replay

    base = Settings(latency_budget_ms=float("inf"))
    s = replace(base, dose=replace(base.dose, srdl_fluoro_time_s=1.8))
    r = replay([damaged_study], events_path=tmp_path / "e.jsonl", summary_path=tmp_path / "s.json",
               settings=s, stages=[]).summary
    e = Engine(s, stages=[]).run(damaged_study)
    for summary in (r, e):
        assert summary["study_dose"]["fluoro_time_s"] > 1.8
        assert [a["kind"] for a in summary["alerts"]] == ["srdl_fluoro_time"]


def test_a_live_replay_stopped_part_way_counts_only_the_lost_frames_of_runs_it_passed(
        damaged_study):
    """Review s14: a stopped study counted the lost frames of every run the reader had
    reached, also those after the stop (the summary's ``lost_frames`` of frames never shown)."""
    import threading

    from sifluoro import Engine, Settings
    from sifluoro.plugin.live import LiveReplay

    stop = threading.Event()

    class StopAfterTruncated:
        def frame(self, frame, event, overlay):
            if frame.run.path.endswith("truncated.dcm") and frame.frame_number == 2:
                stop.set()

    summary = LiveReplay(Engine(Settings(latency_budget_ms=float("inf")), stages=[]),
                         [StopAfterTruncated()], paced=False, stop=stop).run([damaged_study])
    assert summary["ended_early"] and summary["frames"] == 5
    # truncated.dcm's frame 3, no_rows.dcm's, unknown_ts.dcm's, wrong_size.dcm's and
    # no_frame_time.dcm's 3 (runs passed); not the 4 of the broken and truncated RLE runs
    # after the stop
    assert summary["lost_frames"]["frames"] == 13


def test_an_alert_the_lost_frames_raise_reaches_the_live_outputs_before_the_end(damaged_study):
    """Review s14 (second) M3: an alert raised between frames (the SRDL that frames lost in a
    damaged run reach) came to the OpenIGTLink State and the live page only at the study's
    end. It is now in the next frame's State (study_alerts) and on the page at once."""
    import json as json_module
    import time
    from dataclasses import replace

    from sifluoro import Engine, Settings
    from sifluoro.plugin.igtl import IgtlServer, IgtlSink
    from sifluoro.plugin.live import LiveReplay
    from sifluoro.plugin.view import ViewSink, ViewState
    from tests.plugin.test_igtl import _client

    base = Settings(latency_budget_ms=float("inf"))
    settings = replace(base, dose=replace(base.dose, srdl_fluoro_time_s=1.6))

    server = IgtlServer("127.0.0.1", 0)
    client, recorder = _client(server.port)
    view = ViewState()
    pages = []

    class PageAfterEachFrame(ViewSink):
        wants_overlay = False

        def frame(self, frame, event, overlay_bgr):
            super().frame(frame, event, overlay_bgr)
            pages.append(view.snapshot()["alerts"])

    try:
        assert server.wait_for_client(60)
        sinks = [IgtlSink(server, image_every=0), PageAfterEachFrame(view)]
        summary = LiveReplay(Engine(settings, stages=[]), sinks, paced=False).run([damaged_study])
        deadline = time.monotonic() + 60
        while (not any(m.device_name == "State" and '"ended"' in m.string
                       for _, m in recorder.received) and time.monotonic() < deadline):
            time.sleep(0.02)
    finally:
        server.close()
        client.stop()
    states = [json_module.loads(m.string) for _, m in recorder.received
              if m.device_name == "State"]
    message = next(a["message"] for a in summary["alerts"] if a["kind"] == "srdl_fluoro_time")
    frame_states = [s for s in states if not s.get("ended")]
    assert any(message in s["study_alerts"] for s in frame_states)  # before the end State
    assert any(message in [a["message"] for a in p] for p in pages)


def _signed(ds):
    ds.PixelRepresentation = 1


def _colour(ds):
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0


def _video(ds):
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG4HP41

    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" * 16])
    ds["PixelData"].VR = "OB"


def _short_of_one_frame(ds):
    """Review s22 F3: a file cut before its first whole frame, re-encoded by its sender."""
    ds.PixelData = ds.PixelData[:1000]


def _empty_pixel_data(ds):
    ds.PixelData = b""


def _huge(ds):
    """Review s22 F4: a header's size, whatever the pixel data holds."""
    ds.Rows = ds.Columns = 12000


@pytest.mark.parametrize("edit, tag, error", [
    (_signed, "(0028,0103) PixelRepresentation", "UnsupportedPixelDataError"),
    (_colour, "(0028,0002) SamplesPerPixel", "UnsupportedPixelDataError"),
    (_video, "(7FE0,0010) PixelData", "DamagedPixelDataError"),  # a stream that does not decode
    (_short_of_one_frame, "(0028,0008) NumberOfFrames", "DamagedPixelDataError"),
    (_empty_pixel_data, "(0028,0008) NumberOfFrames", "DamagedPixelDataError"),
    (_huge, "(0028,0010) Rows", "UnsupportedPixelDataError")])
def test_a_run_whose_pixels_cannot_be_read_keeps_its_header_dose(tmp_path, capsys, edit, tag,
                                                                 error):
    """Review s15 H2: an XA whose header reads but whose pixels sifluoro cannot use (signed,
    colour, a video syntax) was refused whole: its exposure vanished from replay, ``dose
    summary`` and the registry. Its frames are now lost frames, their dose from the header."""
    paths = write_study(tmp_path / "s", [RunSpec(0.0, filename="a.dcm"),
                                         RunSpec(5.0, filename="b.dcm")])
    ds = pydicom.dcmread(paths[1])
    edit(ds)
    ds.save_as(paths[1], enforce_file_format=True)
    out = tmp_path / "out"
    assert main(["replay", str(tmp_path / "s"), "--events", str(out / "e.jsonl"), "--summary",
                 str(out / "s.json"), "--stages", "none", "-q"]) == 0
    summary = json.loads((out / "s.json").read_text())
    assert summary["frames"] == 3 and summary["lost_frames"]["frames"] == 3
    assert summary["study_dose"]["air_kerma_mgy"] == pytest.approx(2 * summary["air_kerma_mgy"])
    [rejected] = summary["rejected_files"]
    assert rejected["file"].endswith("b.dcm") and rejected["reason"].startswith(tag)
    assert rejected["error"] == error
    capsys.readouterr()
    assert main(["dose", "summary", "--json", str(tmp_path / "s")]) == 0
    study = json.loads(capsys.readouterr().out)
    assert study["events"] == 2 and study["air_kerma_mgy"] == pytest.approx(summary["study_dose"]["air_kerma_mgy"])


def test_a_header_size_beyond_any_detector_allocates_no_frame_of_it(tmp_path):
    """Review s22 F4: the stages' warm-up drew a float64 frame of the header's Rows x Columns
    for every run, frames shown or not: a 27 kB instance claiming 20000x20000 cost 3 GB (the
    receiver lost the run's dose, replay raised MemoryError)."""
    import tracemalloc

    from sifluoro.replay import replay

    paths = write_study(tmp_path / "s", [RunSpec(0.0, filename="a.dcm"),
                                         RunSpec(5.0, filename="b.dcm")])
    ds = pydicom.dcmread(paths[1])
    _huge(ds)
    ds.save_as(paths[1])
    tracemalloc.start()
    try:
        result = replay([tmp_path / "s"], events_path=tmp_path / "e.jsonl",
                        summary_path=tmp_path / "s.json", stages=["register"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.summary["frames"] == 3 and result.summary["lost_frames"]["frames"] == 3
    assert peak < 200e6  # a 12000x12000 float64 frame is 1.15 GB


def test_a_rejection_names_its_error_class_and_tag_for_programs(damaged_study):
    """Review s15 M2: the typed errors never reached an integrator: a rejection was a file
    and a text. It now carries the error's class and tag."""
    from sifluoro import errors

    study = read_study([damaged_study])
    rejected = list(study.rejected)
    list(iter_frames(study, rejected, []))
    by_name = {r.file.rsplit("/", 1)[-1]: r for r in rejected}
    assert by_name["notes.txt"].error == "NotDicomError" and by_name["notes.txt"].tag == ""
    assert (by_name["no_rows.dcm"].error, by_name["no_rows.dcm"].tag) == (
        "DamagedPixelDataError", "(0028,0010) Rows")
    assert by_name["truncated.dcm"].as_dict()["error"] == "DamagedPixelDataError"
    assert all(issubclass(getattr(errors, r.error), errors.InputError) for r in rejected)


def test_a_file_cut_inside_its_header_says_so(tmp_path):
    """Review s15 M3: a file cut before (0028,0010) Rows was called a header without Rows,
    pointing the user at the wrong fix."""
    (path,) = write_study(tmp_path, [RunSpec(0.0)])
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"\x28\x00\x10\x00")])  # cut just before Rows
    study = read_study([tmp_path])  # its frames refused as they come, its dose kept (s18 F9)
    rejected = list(study.rejected)
    assert list(iter_frames(study, rejected, [])) == []
    [rejection] = rejected
    assert "cut short inside its header" in rejection.reason
    assert rejection.error == "DamagedPixelDataError" and rejection.tag == "(0028,0010) Rows"


def test_a_run_without_frame_timing_has_an_unknown_time_not_zero(tmp_path, capsys):
    """Review s15 H3: its rejection says the time is unknown, yet dose summary, the registry
    (and its fluoroscopy-time medians) and replay gave 0.0 s."""
    import sqlite3

    (path,) = write_study(tmp_path / "s", [RunSpec(0.0)])
    ds = pydicom.dcmread(path)
    del ds.FrameTime
    del ds.FrameIncrementPointer
    ds.save_as(path)
    assert main(["dose", "summary", "--json", str(tmp_path / "s")]) == 0
    study = json.loads(capsys.readouterr().out)
    assert study["fluoro_time_s"] is None and study["air_kerma_mgy"] > 0
    assert main(["audit", "ingest", str(tmp_path / "s"), "--db", str(tmp_path / "r.db"), "-q"]) == 0
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute("select fluoro_time_s from studies").fetchall() == [(None,)]
    main(["replay", str(tmp_path / "s"), "--events", str(tmp_path / "e.jsonl"), "--summary",
          str(tmp_path / "s.json"), "--rdsr", str(tmp_path / "r.dcm"), "-q"])
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["runs_time_unknown"] == 1 and summary["lost_frames"]["frames"] == 3


@pytest.mark.parametrize("edit", [_signed, _colour])
def test_a_secondary_capture_whose_pixels_cannot_be_read_is_no_exposure(tmp_path, edit):
    """Second review s15 M1: a colour screenshot (Secondary Capture) became a run whose frames
    were lost: an irradiation event in the RDSR, a run of unknown dose. It is refused whole."""
    paths = write_study(tmp_path / "s", [RunSpec(0.0, filename="a.dcm"),
                                         RunSpec(5.0, filename="b.dcm", storage="sc")])
    ds = pydicom.dcmread(paths[1])
    edit(ds)
    ds.save_as(paths[1], enforce_file_format=True)
    study = read_study([tmp_path / "s"])
    assert len(study.runs) == 1
    [rejection] = study.rejected
    assert rejection.file.endswith("b.dcm") and rejection.error == "UnsupportedDicomError"


def _padded(ds):
    ds.PixelData += b"\0" * 64


def _count_one_short(ds):
    ds.NumberOfFrames = 9


def _partial_last_frame(ds):
    frame = ds.Rows * ds.Columns * 2
    ds.PixelData = ds.PixelData[:int(6.5 * frame)]


def _count_left_out(ds):
    del ds.NumberOfFrames


def _half_the_count(ds):  # twice the bytes the header gives: the frames cannot be cut from it
    ds.NumberOfFrames = 5


def _rows_two_too_many(ds):  # second review s16 H1: the count bounded, frames cut wrongly
    ds.Rows = ds.Rows + 2


@pytest.mark.parametrize("edit, used, lost", [
    (_padded, 10, 0), (_count_one_short, 0, 9), (_partial_last_frame, 0, 10),
    (_count_left_out, 0, 1), (_half_the_count, 0, 5), (_rows_two_too_many, 0, 10)])
def test_native_pixel_data_longer_than_the_header_says_keeps_the_runs_dose(tmp_path, edit, used,
                                                                          lost):
    """Review s16 H1: pixel data longer than Rows x Columns x NumberOfFrames (padding, a count
    one short or left out, a partial last frame) refused the whole instance: no frame, no
    dose (replay, dose summary, the registry; the receiver answered 0xC002). Padding under a
    row is read now; anything longer cannot be told from a wrong Rows (second review: frames
    cut at the wrong places, silently), so none is shown, but the exposures the header counts
    are kept (lost frames, header dose)."""
    paths = write_study(tmp_path / "s", [RunSpec(0.0, n_frames=3, filename="a.dcm"),
                                         RunSpec(5.0, n_frames=10, filename="b.dcm")])
    ds = pydicom.dcmread(paths[1])
    edit(ds)
    ds.save_as(paths[1], enforce_file_format=True)
    rejected, lost_runs = [], []
    frames = list(iter_frames(read_study([tmp_path / "s"]), rejected, lost_runs))
    assert sum(f.run.path.endswith("b.dcm") for f in frames) == used
    assert len(frames) == 3 + used
    if lost:
        [rejection] = rejected
        assert rejection.reason.startswith("(7FE0,0010) PixelData: pixel data has")
        assert rejection.error == "DamagedPixelDataError"
        assert [(run.path.endswith("b.dcm"), run.n_frames - first + 1)
                for run, first in lost_runs] == [(True, lost)]
    else:
        assert (rejected, lost_runs) == ([], [])


@pytest.mark.parametrize("syntax, fragments_per_frame", [("rle", 1), ("jpeg2000", 1),
                                                         ("jpeg2000", 2), ("jpeg_lossless", 3)])
def test_an_encapsulated_run_without_numberofframes(tmp_path, caplog, syntax, fragments_per_frame):
    """Review s16 H6 and M3: an encapsulated run without NumberOfFrames was read as one frame,
    silently: 1/6 of its dose and time. Every frame begins a fragment (PS3.5 A.4), and RLE's
    fragments and JPEG's codestream starts tell which: its frames are counted from them, even
    when each frame is split in several fragments."""
    paths = write_study(tmp_path / "s", [RunSpec(0.0, n_frames=6, transfer_syntax=syntax,
                                                 filename="a.dcm")])
    if fragments_per_frame > 1:
        _reencapsulate(paths[0], 6, fragments_per_frame=fragments_per_frame)
    ds = pydicom.dcmread(paths[0])
    del ds.NumberOfFrames
    ds.save_as(paths[0], enforce_file_format=True)
    rejected, lost = [], []
    got = list(iter_frames(read_study([tmp_path / "s"]), rejected, lost))
    assert len(got) == 6 and rejected == []
    assert "(0028,0008) NumberOfFrames is missing, but the pixel data holds 6 frames" in caplog.text
    # every frame decoded, in order (write_study marks pixel (0, 0))
    assert [int(f.pixels[0, 0]) for f in got] == list(range(6))


def _jpeg_with_thumbnail(level: int) -> tuple[bytes, int]:
    """A 64x64 8-bit JPEG Baseline frame at ``level`` holding an APP1 segment with an 8x8 JPEG
    thumbnail (as EXIF thumbnails do), and the offset of the thumbnail's SOI (FF D8)."""
    import io

    from PIL import Image

    def jpeg(a):
        b = io.BytesIO()
        Image.fromarray(a).save(b, "JPEG", quality=95)
        return b.getvalue()

    payload = b"Thumb\x00" + jpeg(np.zeros((8, 8), np.uint8))
    app = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    frame = jpeg(np.full((64, 64), level, np.uint8))
    return frame[:2] + app + frame[2:], 2 + 4 + 6


def _encapsulated(frames: list[list[bytes]], bot: bool) -> bytes:
    """Encapsulated pixel data of frames given as their fragments, with or without offsets."""
    def item(value):
        value += b"\0" * (len(value) % 2)
        return b"\xfe\xff\x00\xe0" + len(value).to_bytes(4, "little") + value

    offsets, at = [], 0
    for fragments in frames:
        offsets.append(at)
        at += sum(len(item(f)) for f in fragments)
    table = b"".join(o.to_bytes(4, "little") for o in offsets) if bot else b""
    return (item(table) + b"".join(item(f) for fragments in frames for f in fragments)
            + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")


@pytest.mark.parametrize("bot", [False, True])
def test_a_fragment_starting_with_a_thumbnail_is_no_frame(tmp_path, bot):
    """Review s17 H1: counted by the fragments that begin a codestream, a JPEG run without
    NumberOfFrames whose frames were split at an embedded thumbnail's SOI read as twice the
    frames (its dose doubled, its pictures lost). A frame ends with FF D9 (as pydicom splits
    them), and a Basic Offset Table gives the frames when it is there."""
    from pydicom.uid import JPEGBaseline8Bit

    (path,) = write_study(tmp_path / "s", [RunSpec(0.0, n_frames=4, dtype=np.uint8,
                                                    bits_stored=8, filename="a.dcm")])
    ds = pydicom.dcmread(path)
    frames = []
    for k in range(4):
        encoded, at = _jpeg_with_thumbnail(40 * k + 20)
        frames.append([encoded[:at], encoded[at:]])
    ds.PixelData = _encapsulated(frames, bot)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    del ds.NumberOfFrames
    ds.save_as(path, enforce_file_format=True)
    rejected, lost = [], []
    study = read_study([tmp_path / "s"])
    got = list(iter_frames(study, rejected, lost))
    assert (study.runs[0].n_frames, rejected, lost) == (4, [], [])
    assert [round(float(f.pixels.mean())) for f in got] == [20, 60, 100, 140]


def test_a_damaged_jpeg_frame_is_a_damaged_run_not_an_aborted_process(tmp_path):
    """Review s17 H2: one stray byte in a JPEG frame aborted the interpreter inside GDCM (a
    C++ exception; pydicom tried it first): the receiver or the whole replay gone. GDCM is
    not used to decode; run in a child so that an abort fails this test, not the suite."""
    import subprocess
    import sys

    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    (path,) = write_study(tmp_path / "s", [RunSpec(0.0, n_frames=1, dtype=np.uint8,
                                                    bits_stored=8, filename="a.dcm")])
    ds = pydicom.dcmread(path)
    encoded, _ = _jpeg_with_thumbnail(90)
    ds.PixelData = encapsulate([encoded[:2] + b"\x00" + encoded[2:]])  # stray byte after SOI
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    code = ("import sys; from sifluoro.acquire.dicom_reader import read_study, iter_frames\n"
            "rejected = []\n"
            "frames = list(iter_frames(read_study([sys.argv[1]]), rejected))\n"
            "print(len(frames), len(rejected))\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() in (["1", "0"], ["0", "1"])  # decoded, or a damaged run


def test_a_cut_file_without_numberofframes_says_its_dose_may_be_short(tmp_path, caplog):
    """Review s17 M1: cut inside its pixel data, a run without NumberOfFrames cannot be
    counted (no sequence delimiter, no offset table here): one frame, said, not silently."""
    (path,) = write_study(tmp_path / "s", [RunSpec(0.0, n_frames=6, transfer_syntax="rle",
                                                    filename="a.dcm")])
    ds = pydicom.dcmread(path)
    del ds.NumberOfFrames
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * 0.8)])
    assert len(list(iter_frames(read_study([tmp_path / "s"]), []))) == 1
    assert "NumberOfFrames is missing and the file is cut short" in caplog.text


def test_one_frame_in_several_fragments_without_numberofframes_is_one_frame(tmp_path, caplog):
    """A single frame split in fragments is one frame, without a warning that frames may be
    missing: only its first fragment begins a codestream."""
    paths = write_study(tmp_path / "s", [RunSpec(0.0, n_frames=1, transfer_syntax="jpeg2000",
                                                 filename="a.dcm")])
    _reencapsulate(paths[0], 1, fragments_per_frame=3)
    ds = pydicom.dcmread(paths[0])
    del ds.NumberOfFrames
    ds.save_as(paths[0], enforce_file_format=True)
    rejected = []
    assert len(list(iter_frames(read_study([tmp_path / "s"]), rejected))) == 1 and rejected == []
    assert "NumberOfFrames" not in caplog.text


def test_a_dicomdir_is_named_for_what_it_is(tmp_path):
    """Review s16 L12: a CD export's DICOMDIR was "SOP Class UID is missing; the file is not a
    usable instance", on every export."""
    from pydicom.fileset import FileSet

    (path,) = write_study(tmp_path / "s", [RunSpec(0.0)])
    fs = FileSet()
    fs.add(pydicom.dcmread(path))
    fs.write(tmp_path / "cd")
    study = read_study([tmp_path / "cd"])
    assert len(list(iter_frames(study, []))) == 3
    [rejection] = study.rejected
    assert rejection.file.endswith("DICOMDIR")
    assert rejection.reason.startswith("(0002,0002) MediaStorageSOPClassUID: a DICOMDIR")


def test_a_receivers_spool_given_as_input_passes_by_its_own_files(tmp_path):
    """Review s16 L15: `audit ingest SPOOL` (or replay, dose summary) listed the receiver's
    state.json, summary.json and events.jsonl as "not a DICOM file; remove it from the
    input", one line each per study."""
    write_study(tmp_path / "spool" / "1.2.3", [RunSpec(0.0)])
    for name in ("state.json", "summary.json", "events.jsonl"):
        (tmp_path / "spool" / "1.2.3" / name).write_text("{}\n")
    study = read_study([tmp_path / "spool"])
    assert list(study.rejected) == []
    assert len(study.runs) == 1


def test_a_dose_report_cut_inside_its_header_is_not_said_to_lack_pixel_data(tmp_path):
    """Review s16 L2 (replay's part): an RDSR cut at byte 300 was "(7FE0,0010) PixelData: the
    file ends before its dataset is complete", a tag an SR does not have; dose summary and
    audit ingest word it as a damaged or cut file (DamagedFileError)."""
    (path,) = write_study(tmp_path / "s", [RunSpec(0.0)])
    from sifluoro.replay import replay

    replay([tmp_path / "s"], events_path=tmp_path / "e.jsonl", summary_path=tmp_path / "s.json",
           rdsr_path=tmp_path / "r.dcm", stages=[])
    (tmp_path / "s" / "r.dcm").write_bytes((tmp_path / "r.dcm").read_bytes()[:300])
    study = read_study([tmp_path / "s"])
    [rejection] = study.rejected
    assert rejection.error == "DamagedFileError" and not rejection.tag
    assert "cut short (an interrupted copy) or damaged" in rejection.reason


@pytest.mark.parametrize("keyword", ["Rows", "Columns", "BitsAllocated"])
def test_a_run_whose_header_lacks_its_size_keeps_its_dose(tmp_path, keyword):
    """User review s18 F9: a run without Rows, Columns or BitsAllocated was rejected whole, its
    dose (readable in the same header) left out of the totals, the study dose and the RDSR
    with nothing saying they were short; the receiver answered it 0xC002, which stops
    storescu before the rest of the study. Its frames are refused, its dose counted."""
    from sifluoro.dose.rdsr_read import read_rdsr

    specs = [RunSpec(0.0, filename="a.dcm"), RunSpec(30.0, filename="b.dcm", n_frames=4)]
    write_study(tmp_path / "ok", specs)
    whole = main(["replay", str(tmp_path / "ok"), "--events", str(tmp_path / "ok.e"),
                  "--summary", str(tmp_path / "ok.s"), "-q"])
    (_, damaged) = write_study(tmp_path / "in", specs)
    ds = pydicom.dcmread(damaged)
    delattr(ds, keyword)
    ds.save_as(damaged)
    code = main(["replay", str(tmp_path / "in"), "--events", str(tmp_path / "e"), "--summary",
                 str(tmp_path / "s"), "--rdsr", str(tmp_path / "r.dcm"), "-q"])
    s, ok = json.loads((tmp_path / "s").read_text()), json.loads((tmp_path / "ok.s").read_text())
    assert (whole, code) == (0, 0) and s["frames"] == 3 and s["lost_frames"]["frames"] == 4
    assert [r["reason"] for r in s["rejected_files"]][0].startswith(f"{tag_for(keyword)} {keyword}")
    for key in ("air_kerma_mgy", "dap_gycm2", "fluoro_time_s"):
        assert s["study_dose"][key] == pytest.approx(ok["study_dose"][key])
    rdsr = read_rdsr(tmp_path / "r.dcm")
    assert rdsr.planes[0].air_kerma_mgy == pytest.approx(ok["study_dose"]["air_kerma_mgy"])


def tag_for(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def test_a_file_cut_inside_its_study_uid_joins_its_study_not_a_new_one(tmp_path, capsys):
    """Review s19 U1: a file cut inside its (0020,000D) StudyInstanceUID value (an interrupted
    transfer) made a study of the UID's start: replay refused the input as two studies and
    dose summary showed two. It joins the study whose UID its own begins (its dose as that
    study's lost frames); two genuine studies are still two."""
    uid = "1.2.826.0.1.3680043.8.498.123456789012345678901234"
    paths = write_study(tmp_path / "s", [RunSpec(0.0), RunSpec(9.0)], study_uid=uid)
    data = paths[1].read_bytes()
    at = data.index(b"\x20\x00\x0d\x00") + 8  # explicit VR: tag, "UI", length, then the value
    paths[1].write_bytes(data[:at + len(uid) - 6])
    study = read_study([tmp_path / "s"])
    assert study.study_instance_uid == uid and len(study.runs) == 2
    assert [r.header_cut for r in study.runs] == [False, True]
    assert main(["dose", "summary", str(tmp_path / "s"), "--json"]) == 0
    assert [json.loads(line)["study_instance_uid"] for line in
            capsys.readouterr().out.splitlines()] == [uid]
    write_study(tmp_path / "other", [RunSpec(0.0)], study_uid=uid[:-6])  # a whole file: a study
    with pytest.raises(MultipleStudiesError):
        read_study([tmp_path / "other", paths[0]])


def test_dose_summary_of_a_folder_counts_its_non_dicom_files_on_one_line(tmp_path, capsys):
    """New-user review s19 U15: a folder's notes gave one "rejected ...; remove it from the
    input" line each (audit ingest counted them already); a damaged DICOM is still named."""
    write_study(tmp_path / "in" / "s", [RunSpec(0.0)])
    for k in range(4):
        (tmp_path / "in" / f"notes{k}.txt").write_text("not DICOM")
    assert main(["dose", "summary", str(tmp_path / "in")]) == 0
    out = capsys.readouterr().out
    assert "passed over 4 files, not DICOM:" in out and "remove it" not in out


def test_replay_of_a_folder_counts_its_non_dicom_files_on_one_line(tmp_path, capsys):
    """User review s20 P5: `replay` of a simulated case folder rejected the simulator's own
    truth.json with "remove it from the input" (dose summary and audit pass such files over)."""
    write_study(tmp_path / "case" / "dicom", [RunSpec(0.0)])
    (tmp_path / "case" / "truth.json").write_text("{}")
    assert main(["replay", str(tmp_path / "case"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert f"passed over 1 file, not DICOM: {tmp_path / 'case' / 'truth.json'}" in out
    assert "remove it" not in out and "rejected   " not in out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [r["error"] for r in summary["rejected_files"]] == ["NotDicomError"]  # still listed


def test_a_study_whose_frames_are_all_refused_says_their_dose_and_unknown_time(tmp_path, capsys):
    """User review s20 F1, F2: runs without usable frame timing (CineRate only) showed no frame,
    and the console said "dose unknown (no dose in the headers ...)" above the dose those
    headers give, and "fluoro 0.0 s" for a time that is unknown."""
    import pydicom

    paths = write_study(tmp_path / "s", [RunSpec(0.0, n_frames=3), RunSpec(20.0, n_frames=3)])
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword in ("FrameTime", "FrameIncrementPointer", "FrameTimeVector"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.CineRate = 8
        ds.save_as(path)
    main(["replay", str(tmp_path / "s"), "--events", str(tmp_path / "e.jsonl"), "--summary",
          str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert "dose       no frame shown (the dose of the frames not shown is below)" in out
    assert "unknown (no dose" not in out
    assert "fluoro     0.0 s  (+ 2 runs of unknown time, not counted)" in out


def test_a_damaged_dicom_header_is_named_not_passed_over_as_not_dicom(tmp_path, capsys):
    """Review s20 #3: a DICOM file whose header cannot be parsed (its exposure missing from the
    dose) was folded into "passed over 1 file, not DICOM" with the notes beside a study."""
    paths = write_study(tmp_path / "s", [RunSpec(0.0, n_frames=3), RunSpec(20.0, n_frames=3)])
    data = bytearray(paths[1].read_bytes())
    at = data.index(b"\x08\x00\x16\x00UI")  # (0008,0016) SOPClassUID, explicit VR
    data[at + 4:at + 6] = b"QI"  # a VR pydicom cannot read
    paths[1].write_bytes(bytes(data))
    (tmp_path / "s" / "notes.txt").write_text("not DICOM")
    main(["replay", str(tmp_path / "s"), "--events", str(tmp_path / "e.jsonl"), "--summary",
          str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert f"passed over 1 file, not DICOM: {tmp_path / 's' / 'notes.txt'}" in out
    assert f"rejected   {paths[1]}: " in out


def test_a_run_without_any_time_keeps_its_dose_in_the_dose_summary(tmp_path):
    """Review s21 #3: a run without acquisition or content time, among others, was rejected
    with its dose: `dose summary` gave the study less than was exposed, as an exact total."""
    from sifluoro.dose.summary import summarize

    specs = [RunSpec(0.0, filename="a.dcm"), RunSpec(10.0, filename="b.dcm")]
    write_study(tmp_path / "timed", specs)
    paths = write_study(tmp_path / "untimed", specs)

    def no_time(ds):
        for kw in ("AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "ContentDate",
                   "ContentTime"):
            delattr(ds, kw)
    _edit(paths[1], no_time)
    [timed], _ = summarize([tmp_path / "timed"])
    [untimed], _ = summarize([tmp_path / "untimed"])
    # its RDSR event's start is not its own, and the report says so (code review s21 #6)
    from sifluoro.replay import replay

    replay([tmp_path / "untimed"], events_path=tmp_path / "e.jsonl", stages=[],
           summary_path=tmp_path / "s.json", rdsr_path=tmp_path / "r.dcm")
    comments = [i.TextValue for i in pydicom.dcmread(tmp_path / "r.dcm").ContentSequence
                if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert comments == ["1 irradiation event(s) are of runs stored without acquisition or "
                        "content time: their DateTime Started is the end of the runs before "
                        "them, not their own (unknown)."]
    assert untimed.air_kerma_mgy == pytest.approx(timed.air_kerma_mgy)
    assert untimed.dap_gycm2 == pytest.approx(timed.dap_gycm2)
    assert untimed.fluoro_time_s == pytest.approx(timed.fluoro_time_s)
