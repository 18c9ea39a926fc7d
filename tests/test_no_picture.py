"""A frame that shows no picture (a grabber's "no signal" black, a frame stuck at one value,
a saturated one) is counted for dose and analysed by no image stage: to the contrast stage
every edge of the run washed out on it, a false vascular alert that stayed for the study."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from sifluoro.config import Settings
from sifluoro.imaging import picture_steps
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


def _video(frame, window=1.0, first_snow=False):
    """``frame`` as an 8-bit monitor video shows it (display-smoothed), collimated to a central
    window ``window`` of the field wide."""
    import cv2

    px = np.clip(cv2.GaussianBlur(frame.pixels.astype(np.float32), (0, 0), 3) / 16.0, 0, 255)
    h, w = px.shape
    y0, x0 = int(h * (1 - window) / 2), int(w * (1 - window) / 2)
    out = np.zeros((h, w), np.uint16)
    out[y0:h - y0, x0:w - x0] = px[y0:h - y0, x0:w - x0]
    if first_snow:
        out = np.random.default_rng(0).integers(0, 256, (h, w)).astype(np.uint16)
    out.flags.writeable = False
    return replace(frame, pixels=out, run=replace(frame.run, bits_stored=8))


@pytest.mark.parametrize("window", [1.0, 0.15, 0.08])
def test_collimated_8_bit_video_shows_a_picture_after_a_snowy_first_frame(joint_fill_frames,
                                                                          window):
    """A slit of picture in a blacked-out field is a picture (averaged over the frame it read
    as flat: the whole study unanalysed); so is every frame after a grabber's snow (a rule
    relative to the run's first frame locked the run out)."""
    frames = [_video(f, window, first_snow=k == 0) for k, f in enumerate(joint_fill_frames[:8])]
    events, state = _replay(frames)
    assert state.no_picture_frames == 0
    assert not any(e.get("skipped_stages") for e in events)


def test_picture_steps():
    assert picture_steps(np.full((64, 64), 700, np.uint16), 12) == 0
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 3, (64, 1))  # 8 px apart: 24 levels
    assert picture_steps(ramp, 8) == 8 * 7 and picture_steps(ramp, 12) == 0  # 32 levels at 12
    assert picture_steps(ramp[:, :8], 8) == 0
    rng = np.random.default_rng(0)
    noise = np.clip(16 + rng.normal(0, 1.0, (576, 720)), 0, 255).astype(np.uint16)
    assert picture_steps(noise, 8) == 0  # video black: noise of a grey level is no picture
    image = rng.integers(0, 4096, (128, 128)).astype(np.uint16)
    means = image[4::8].reshape(16, 16, 8).mean(axis=2)
    expected = np.count_nonzero(np.abs(np.diff(np.rint(means), axis=1)) > 32)
    assert abs(picture_steps(image, 12) - expected) <= 2  # the same count, up to rounding


@pytest.mark.parametrize("significant_bits", [9, 10])
def test_a_picture_of_fewer_significant_bits_than_stored_is_analysed(joint_fill_frames,
                                                                     significant_bits):
    """Review s25 r7: a run stored with BitsStored 16 whose values use 10 or 11 bits was "no
    picture" on 13 or 7 of 13 frames of the review's study (steps measured on the 16-bit
    scale): no guidance, the contrast never assessed; here 9 or 10 bits of a brighter study.
    Noise alone, a flat frame, at such values stays no picture."""
    frames, runs = [], {}
    for f in joint_fill_frames:
        # inside the collimation (its edges are steps even at the stored bits' scale)
        px = f.pixels[20:460, 90:480].astype(np.uint32) >> (12 - significant_bits)
        px = np.ascontiguousarray(px.astype(np.uint16))
        px.flags.writeable = False
        run = runs.setdefault(id(f.run), replace(
            f.run, bits_stored=16, rows=px.shape[0], columns=px.shape[1],
            technique=replace(f.run.technique, shutter=None, collimator=None)))
        frames.append(replace(f, pixels=px, run=run))
    events, state = _replay(frames)
    assert state.no_picture_frames == 0
    assert all(e["target"] is not None for e in events)
    assert all(e["needle"] is not None for e in events[1:])  # the scout frame has none
    rng = np.random.default_rng(1)
    for k, (mean, sd) in enumerate(((300.0, 20.0), (1500.0, 40.0), (600.0, 0.0))):
        noise = np.clip(rng.normal(mean, sd, frames[0].pixels.shape), 0, 65535).astype(np.uint16)
        frames[2 * k + 1] = replace(frames[2 * k + 1], pixels=noise)
    events, state = _replay(frames[:7])
    assert [bool(e.get("no_picture")) for e in events] == [False, True] * 3 + [False]


def test_picture_steps_over_noise():
    from sifluoro.imaging import picture_steps_over_noise

    rng = np.random.default_rng(2)
    noise = np.clip(rng.normal(400.0, 25.0, (256, 256)), 0, None).astype(np.uint16)
    assert picture_steps_over_noise(noise, 9) == 0
    edges = noise.copy()
    edges[:, 128:] += 300  # one step of 12 noise levels a row: 32 rows read
    assert picture_steps_over_noise(edges, 10) == 32
    assert picture_steps_over_noise(edges, 10, sigmas=100.0) == 0


def test_a_run_without_picture_is_logged_once_and_counted(joint_fill_frames, caplog):
    """A grabber without signal sends 30 black frames a second: one warning per run, all of
    them counted (each was a warning)."""
    frames = joint_fill_frames[:6]
    with caplog.at_level("WARNING", logger="sifluoro.pipeline"):
        _, state = _replay(frames, flat_at=range(6))
    warnings = [r for r in caplog.records if "shows no picture" in r.getMessage()]
    assert len(warnings) == 1 and state.no_picture_frames == 6


@pytest.mark.parametrize("shape", [(2, 1024), (1024, 1), (31, 512), (32, 1024)])
def test_a_frame_too_small_to_show_anything_is_counted_not_analysed(tmp_path, shape):
    """Review s25 r5: a run of 2x1024 frames (valid DICOM) gave the contrast kernels a working
    grid of no rows: heap corruption aborted the whole replay. Fewer than 32 pixels a side is no
    picture (its dose counted); 32 is analysed."""
    import numpy as np

    from sifluoro.config import Settings
    from sifluoro.model import Frame
    from sifluoro.pipeline import MIN_IMAGE_PX, Pipeline
    from sifluoro.stages import make_stages
    from sifluoro.acquire.dicom_reader import read_study
    from tests.dicom_fixtures import RunSpec, write_study

    settings = Settings(latency_budget_ms=1e9)
    written = read_study(write_study(tmp_path, [RunSpec(0.0, n_frames=3)])).runs[0]
    run = replace(written, rows=shape[0], columns=shape[1])
    pixels = np.random.default_rng(0).integers(1000, 3000, shape).astype(np.uint16)
    pipeline = Pipeline(make_stages(["register", "needle", "contrast"], settings), settings)
    state = pipeline.start_study(run.study_instance_uid)
    pipeline.prepare_run(run, state)
    events = [pipeline.process(Frame(pixels=pixels, index=k, frame_number=k + 1, t_s=0.1 * k,
                                     run=run), state) for k in range(3)]
    small = min(shape) < MIN_IMAGE_PX
    assert [bool(e.get("no_picture")) for e in events] == [small] * 3
    assert events[-1]["dose"]["fluoro_time_s"] > 0
    assert not any(e.get("failed_stages") for e in events)
