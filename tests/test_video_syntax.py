"""DICOM runs stored as video (MPEG-2 here; H.264 and HEVC take the same path): some C-arms
send their loops only this way. They were refused (their frames lost); they are decoded now
through OpenCV's FFmpeg, frame for frame, with their dose."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_fragments

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.cli import main
from sifluoro.contract import replay_output_violations
from tests.dicom_fixtures import video_frames, write_mpeg2_run


def test_an_mpeg2_run_is_read_frame_for_frame(tmp_path):
    originals = video_frames(6)
    write_mpeg2_run(tmp_path, originals)
    rejected, lost = [], []
    frames = list(iter_frames(read_study([tmp_path]), rejected, lost))
    assert (rejected, lost) == ([], [])
    assert [f.frame_number for f in frames] == [1, 2, 3, 4, 5, 6]
    for k, frame in enumerate(frames):
        assert frame.pixels.dtype == np.uint16 and frame.pixels.shape == (256, 256)
        errors = [np.abs(frame.pixels.astype(int) - o).mean() for o in originals]
        assert errors[k] < 2.0 and int(np.argmin(errors)) == k  # its own frame, in order


def test_an_mpeg2_study_replays_with_its_dose(tmp_path):
    write_mpeg2_run(tmp_path / "s", video_frames(6), frame_time_ms=66.7)
    out = tmp_path / "out"
    assert main(["replay", str(tmp_path / "s"), "--events", str(out / "e.jsonl"), "--summary",
                 str(out / "s.json"), "-q"]) == 0
    assert replay_output_violations(out / "e.jsonl", out / "s.json") == []
    summary = json.loads((out / "s.json").read_text())
    assert (summary["frames"], summary["rejected_files"]) == (6, [])
    assert summary["fluoro_time_s"] == pytest.approx(6 * 0.0667)
    assert summary["air_kerma_mgy"] > 0 and summary["lost_frames"]["frames"] == 0


def test_a_video_stream_cut_short_gives_its_frames_and_counts_the_rest(tmp_path):
    path = write_mpeg2_run(tmp_path, video_frames(12))
    ds = pydicom.dcmread(path)
    stream = b"".join(generate_fragments(ds.PixelData))
    ds.PixelData = encapsulate([stream[:len(stream) // 2 // 2 * 2]])  # an interrupted export
    ds.save_as(path, enforce_file_format=True)
    rejected, lost = [], []
    frames = list(iter_frames(read_study([tmp_path]), rejected, lost))
    assert 1 <= len(frames) < 12
    [rejection] = rejected
    assert rejection.reason.startswith("(7FE0,0010) PixelData: the video stream gives")
    assert rejection.error == "DamagedPixelDataError"
    assert [(run.sop_instance_uid, first) for run, first in lost] == [
        (ds.SOPInstanceUID, len(frames) + 1)]


def test_a_video_longer_than_its_numberofframes_says_so(tmp_path, caplog):
    """Second review s16 M4: a NumberOfFrames below what the stream holds (or none: one frame)
    was believed silently; the frames it counts are read, and the log says more were there."""
    path = write_mpeg2_run(tmp_path, video_frames(8))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.save_as(path, enforce_file_format=True)
    frames = list(iter_frames(read_study([tmp_path]), []))
    assert len(frames) == 3
    assert "holds more frames than (0028,0008) NumberOfFrames = 3" in caplog.text


def test_a_video_read_stopped_half_way_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Review s16: the stream's temporary file lived as long as the reading generator, so a
    reader stopped half-way (an interpreter exit does not close generators) left it behind."""
    import tempfile

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    write_mpeg2_run(tmp_path / "s", video_frames(6))
    frames = iter_frames(read_study([tmp_path / "s"]), [])
    first, second = next(frames), next(frames)
    assert (first.frame_number, second.frame_number) == (1, 2)
    assert list(temp.iterdir()) == []  # while the reader is suspended mid-stream
    assert [f.frame_number for f in frames] == [3, 4, 5, 6]
