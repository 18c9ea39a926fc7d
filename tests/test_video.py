"""Video capture source: frames, timing and spacing from the user, errors that name the file."""
from __future__ import annotations

import numpy as np
import pytest

from sifluoro.acquire.video import VideoSourceSettings, video_frames, write_test_video
from sifluoro.errors import InputError
from sifluoro.model import Technique
from sifluoro.pipeline import Pipeline


def test_video_frames_flow_through_the_pipeline(tmp_path):
    frames = np.zeros((6, 64, 80), np.uint8)
    for k in range(6):
        frames[k, 10:20, 10 + 5 * k:20 + 5 * k] = 200  # a moving bright block
    path = write_test_video(tmp_path / "fluoro.avi", frames, fps=15)
    settings = VideoSourceSettings(pixel_spacing_mm=0.3, technique=Technique(
        kvp=75, tube_current_ma=5, pulse_width_ms=6, sid_mm=1000, source_to_isocenter_mm=700))
    got = list(video_frames(str(path), settings))
    assert len(got) == 6
    assert got[3].pixels.shape == (64, 80) and got[3].pixels.dtype == np.uint16
    assert got[3].t_s == pytest.approx(3 / 15)
    # the block moved 5 px per frame: its centroid follows (MJPG is lossy, so loosely)
    xs = [np.average(np.nonzero(f.pixels > 100)[1]) for f in got]
    assert np.diff(xs) == pytest.approx([5.0] * 5, abs=0.6)
    pipeline = Pipeline()
    state = pipeline.start_study("video")
    events = [pipeline.process(f, state) for f in got]
    assert events[-1]["dose"]["fluoro_time_s"] == pytest.approx(6 / 15)
    assert events[-1]["dose"]["air_kerma_mgy"] > 0  # estimated from the given technique


def test_missing_video_names_the_file(tmp_path):
    with pytest.raises(InputError, match="nothing.avi"):
        list(video_frames(str(tmp_path / "nothing.avi"), VideoSourceSettings(pixel_spacing_mm=0.3)))
