"""A frame that shows no picture (a grabber's "no signal" black, a frame stuck at one value,
a saturated one) is counted for dose and analysed by no image stage: to the contrast stage
every edge of the run washed out on it, a false vascular alert that stayed for the study."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from sifluoro.config import Settings
from sifluoro.imaging import picture_spread
from sifluoro.pipeline import Pipeline
from sifluoro.stages import make_stages


@pytest.fixture(scope="module")
def joint_fill_frames():
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    study = simulate_case(2026, 3, quick=True)
    assert study.outcome == "intra_articular"
    return [f for f, _ in sim_frames(study)]


def _flat(frame, value=None):
    px = np.full_like(frame.pixels, int(np.median(frame.pixels)) if value is None else value)
    px.flags.writeable = False
    return replace(frame, pixels=px)


def _replay(frames, *, flat_at=(), value=None, threads=1):
    settings = Settings(latency_budget_ms=math.inf, stage_threads=threads)
    pipeline = Pipeline(make_stages(("register", "needle", "contrast"), settings), settings)
    state = pipeline.start_study("1.2.3")
    frames = [_flat(f, value) if f.index in flat_at else f for f in frames]
    events = [e for _, e in pipeline.process_frames(frames, state)]
    return events, state


@pytest.mark.parametrize("threads", [1, 2])  # one frame at a time; frames overlapped
def test_a_flat_frame_in_a_contrast_run_raises_no_alert_and_keeps_its_dose(joint_fill_frames,
                                                                           threads):
    n = len(joint_fill_frames)
    base, base_state = _replay(joint_fill_frames, threads=threads)
    assert base_state.contrast_state == "intra_articular"
    flat_at = (n - 8, n - 4)
    events, state = _replay(joint_fill_frames, flat_at=flat_at, threads=threads)
    assert [e["index"] for e in events] == list(range(n))
    assert not [a for e in events for a in e.get("alerts", []) if a["kind"] == "vascular"]
    assert state.contrast_state == "intra_articular"
    for k in flat_at:
        e = events[k]
        assert e["no_picture"] and e["degraded"] and e["needle"] is None and e["joint"] is None
        assert e["skipped_stages"] == ["register", "needle", "contrast"]
        assert e["contrast"]["state"] == events[k - 1]["contrast"]["state"]
    assert [e["dose"] for e in events] == [e["dose"] for e in base]
    assert state.no_picture_frames == 2 and state.frames == n
    assert not any(e.get("no_picture") for e in base)


@pytest.mark.parametrize("value", [0, 16, 4095])  # black, video black, saturated (12 bits)
def test_flat_frames_of_any_value_show_no_picture(joint_fill_frames, value):
    events, _ = _replay(joint_fill_frames[:4], flat_at=(0, 2), value=value)
    assert [bool(e.get("no_picture")) for e in events] == [True, False, True, False]


def test_picture_spread():
    assert picture_spread(np.full((64, 64), 700, np.uint16)) == 0.0
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 3, (64, 1))
    assert picture_spread(ramp) == pytest.approx(24.0)  # 8 px apart, 3 levels each
    assert picture_spread(ramp[:, :1]) == 0.0
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 4096, (128, 128)).astype(np.uint16)
    sample = noisy[::8, ::8].astype(float)
    assert picture_spread(noisy) == pytest.approx(np.abs(np.diff(sample, axis=1)).mean())
