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


def _pulsed_video(tmp_path, *, pulses: int, repeats: int, held: int):
    """A 30 fps capture of ``pulses`` fluoroscopy pulses, each shown ``repeats`` times, then
    the last image held for ``held`` captures (the pedal released)."""
    rng = np.random.default_rng(0)
    shown = []
    for k in range(pulses):
        image = rng.integers(40, 200, (48, 64)).astype(np.uint8)  # noise: every pulse differs
        shown += [image] * repeats
    shown += [shown[-1]] * held
    return write_test_video(tmp_path / "pulsed.avi", np.stack(shown), fps=30)


def test_one_frame_per_pulse_and_no_exposure_for_a_held_image(tmp_path):
    """30 fps capture of 7.5 p/s fluoroscopy: 60 captures are 15 pulses (every capture had
    counted as a pulse: 4x the fluoroscopy time and dose); the held last image is no pulse."""
    from sifluoro.acquire.video import VideoStats

    path = _pulsed_video(tmp_path, pulses=15, repeats=4, held=12)
    settings = VideoSourceSettings(pixel_spacing_mm=0.3, frame_rate_per_s=7.5, technique=Technique(
        kvp=75, tube_current_ma=5, pulse_width_ms=6, sid_mm=1000, source_to_isocenter_mm=700))
    stats = VideoStats()
    got = list(video_frames(str(path), settings, stats))
    assert len(got) == 15
    assert [f.t_s for f in got] == pytest.approx([k / 7.5 for k in range(15)])
    assert (stats.captured, stats.between_pulses, stats.held) == (72, 45, 12)
    pipeline = Pipeline()
    state = pipeline.start_study("video")
    events = [pipeline.process(f, state) for f in got]
    assert events[-1]["dose"]["fluoro_time_s"] == pytest.approx(15 / 7.5)
    # without a pulse rate every capture is a pulse, on the capture's clock (repeats dropped
    # as held gave 15 frames of 1/30 s: a quarter of the fluoroscopy time)
    stats = VideoStats()
    got = list(video_frames(str(path), VideoSourceSettings(pixel_spacing_mm=0.3), stats))
    assert (len(got), stats.held, stats.between_pulses) == (72, 0, 0)
    state = pipeline.start_study("video")
    events = [pipeline.process(f, state) for f in got]
    assert events[-1]["dose"]["fluoro_time_s"] == pytest.approx(72 / 30)


def test_without_a_pulse_rate_a_held_image_counts_only_its_first_second(tmp_path):
    """25 frame/s capture of 25 p/s fluoroscopy, then the last image held 10 s (the pedal
    released): without --pulse-rate the hold counted as 10 s of fluoroscopy; repeats beyond
    HOLD_S are dropped as held, shorter ones (between pulses slower than the capture, the
    test above) still count."""
    from sifluoro.acquire.video import HOLD_S, VideoStats

    rng = np.random.default_rng(2)
    pulses = list(rng.integers(40, 200, (50, 48, 64)).astype(np.uint8))  # 2 s, all differ
    path = write_test_video(tmp_path / "hold.avi", np.stack(pulses + [pulses[-1]] * 250), fps=25)
    technique = Technique(kvp=80, tube_current_ma=5, pulse_width_ms=8, sid_mm=1000,
                          source_to_isocenter_mm=750)
    stats = VideoStats()
    got = list(video_frames(str(path), VideoSourceSettings(pixel_spacing_mm=0.3,
                                                           technique=technique), stats))
    kept = int(HOLD_S * 25)
    assert (len(got), stats.captured, stats.held) == (50 + kept, 300, 250 - kept)
    pipeline = Pipeline()
    state = pipeline.start_study("video")
    events = [pipeline.process(f, state) for f in got]
    assert events[-1]["dose"]["fluoro_time_s"] == pytest.approx(2.0 + HOLD_S)


@pytest.mark.parametrize("field, value", [("pixel_spacing_mm", 0.0), ("pixel_spacing_mm", -1.0),
                                          ("frame_rate_per_s", 0.0), ("max_frames", 0)])
def test_video_settings_out_of_range_are_refused(field, value):
    from sifluoro.errors import ConfigError

    kwargs = {"pixel_spacing_mm": 0.3, field: value}
    with pytest.raises(ConfigError):
        VideoSourceSettings(**kwargs)


def test_pulses_faster_than_the_capture_count_whole(tmp_path):
    """30 p/s fluoroscopy on a 25 frame/s video output: 2 s are 50 frames but 60 pulses; the
    dose is that of 60 pulses, as the same 2 s grabbed at 30 frame/s give (it was 50)."""
    technique = Technique(kvp=80, tube_current_ma=10, pulse_width_ms=8, sid_mm=1000,
                          source_to_isocenter_mm=700)
    rng = np.random.default_rng(1)
    totals = {}
    for fps in (25, 30):
        images = rng.integers(40, 200, (2 * fps, 48, 64)).astype(np.uint8)  # every frame differs
        path = write_test_video(tmp_path / f"grab{fps}.avi", images, fps=fps)
        settings = VideoSourceSettings(pixel_spacing_mm=0.3, frame_rate_per_s=30.0, technique=technique)
        got = list(video_frames(str(path), settings))
        assert len(got) == 2 * fps
        pipeline = Pipeline()
        state = pipeline.start_study("video")
        totals[fps] = [pipeline.process(f, state) for f in got][-1]["dose"]
    for key in ("air_kerma_mgy", "dap_gycm2", "fluoro_time_s"):
        assert totals[25][key] == pytest.approx(totals[30][key], rel=1e-6), key
    assert totals[30]["fluoro_time_s"] == pytest.approx(2.0)


class _FastGrabber:
    """A capture device delivering a new picture every ``period_s``, faster than the consumer."""

    def __init__(self, period_s: float):
        self.period_s, self.reads = period_s, 0

    def read(self):
        import time

        time.sleep(self.period_s)
        self.reads += 1
        return True, np.full((8, 8), self.reads % 250, np.uint8)

    def release(self):
        pass

    def open(self, source):
        return True


def test_a_live_source_stopped_gives_every_frame_it_read_and_ends_promptly():
    """Review s19: at a stop, the frames a live reader had queued (up to 8) and the one it held
    were lost, their pulses uncounted; and a source delivering on kept the drain going."""
    import threading
    import time

    from sifluoro.acquire.video import VideoStats, _live_reads

    grabber, stop = _FastGrabber(0.003), threading.Event()
    got, stopped_at = 0, None
    for _ in _live_reads(grabber, "/dev/video0", stop, VideoStats(), 1 / 0.003, "test"):
        time.sleep(0.03)  # slower than the grabber: its queue fills
        got += 1
        if got == 10:
            stop.set()
            stopped_at = time.monotonic()
    assert time.monotonic() - stopped_at < 3.0
    assert got == grabber.reads > 10


class _StallingGrabber:
    """Delivers ``n`` frames, then blocks in its read for ``block_s`` (a stream gone silent)."""

    def __init__(self, n: int, block_s: float):
        self.n, self.block_s, self.reads = n, block_s, 0

    def read(self):
        import time

        if self.reads >= self.n:
            time.sleep(self.block_s)
            return False, None
        self.reads += 1
        return True, np.full((8, 8), self.reads, np.uint8)

    def release(self):
        pass

    def open(self, source):
        return True


def test_a_stall_under_way_at_the_stop_is_measured_and_a_stuck_read_said():
    """Review s23 #13 and #3: a stall still under way when the capture was stopped counted in
    ``stalls`` with ``longest_stall_s`` 0.0, and the end waited READER_JOIN_S twice; a reader
    still inside its read at the end made the interpreter abort at exit when it returned, so
    the command now ends with os._exit when ``reader_stuck()``."""
    import threading
    import time

    from sifluoro.acquire import video

    stats, stop, stopped_at = video.VideoStats(), threading.Event(), []

    def stop_now():
        stopped_at.append(time.monotonic())
        stop.set()

    reads = video._live_reads(_StallingGrabber(3, 8.0), "/dev/video0", stop, stats, 15.0, "test")
    for got, _ in enumerate(reads, 1):
        if got == 3:
            threading.Timer(video.STALL_S + 1.0, stop_now).start()
    assert time.monotonic() - stopped_at[0] < 1.5 * video.READER_JOIN_S  # joined once
    assert stats.stalls == 1 and stats.longest_stall_s >= video.STALL_S + 0.5
    assert video.reader_stuck()
    video._STUCK_READERS.clear()


class _CountingGrabber:
    """A live source (opened as /dev/video0) of ``n`` different pictures, then nothing."""

    def __init__(self, n: int):
        self.n, self.reads = n, 0

    def get(self, prop):
        import cv2

        return 15.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self):
        if self.reads >= self.n:
            import time

            time.sleep(0.01)
            return False, None
        self.reads += 1
        return True, np.full((8, 8), 10 * self.reads, np.uint8)

    def release(self):
        pass

    def open(self, source):
        return True

    def isOpened(self):
        return True


def test_a_live_sources_runs_hold_a_bounded_number_of_frame_times(monkeypatch):
    """Review s23 #6: each run of a live source held the times of 2^20 frames (50 MB; a grabber
    renegotiating its size 19 times cost 1 GB). A run holds RUN_FRAMES now, and the capture
    goes on in a new run when one is full, its frame times continuing."""
    import threading

    from sifluoro.acquire import video

    monkeypatch.setattr(video, "RUN_FRAMES", 4)
    stop = threading.Event()
    frames = []
    for frame in video.video_frames("/dev/video0", video.VideoSourceSettings(0.3), stop=stop,
                                    capture=_CountingGrabber(10)):
        frames.append(frame)
        if len(frames) == 10:
            stop.set()
    assert [f.run.n_frames for f in frames] == [4] * 10
    assert [f.frame_number for f in frames] == [1, 2, 3, 4] * 2 + [1, 2]
    assert len({f.run.sop_instance_uid for f in frames}) == 3
    assert [f.t_s for f in frames] == pytest.approx([k / 15 for k in range(10)])
    assert [f.run.start_s + f.run.frame_offsets_s[f.frame_number - 1] for f in frames] \
        == pytest.approx([k / 15 for k in range(10)])


class _SizedGrabber(_CountingGrabber):
    """A :class:`_CountingGrabber` that reports its picture size (8 x 8), as a device does."""

    def get(self, prop):
        import cv2

        return {cv2.CAP_PROP_FRAME_WIDTH: 8.0, cv2.CAP_PROP_FRAME_HEIGHT: 8.0}.get(
            prop, super().get(prop))


@pytest.mark.parametrize("grabber", [_SizedGrabber, _CountingGrabber])
def test_a_live_sources_size_is_warmed_before_its_reader_starts(grabber):
    """The stages' warm-up for a new size ran on the main loop at the first frame (0.16-0.9 s)
    while the reader, its queue of 8 full, stopped reading: a grabber's frames were lost,
    their pulses uncounted. ``warm`` now gets a run of the reported size before any read (and
    nothing when the device reports no size: the first frame's run is prepared as before)."""
    import threading

    from sifluoro.acquire import video

    source, stop, warmed = grabber(5), threading.Event(), []
    for frame in video.video_frames("/dev/video0", video.VideoSourceSettings(0.3), stop=stop,
                                    capture=source,
                                    warm=lambda run: warmed.append((source.reads, run))):
        stop.set()
    if grabber is _CountingGrabber:
        assert warmed == []
        return
    [(reads_before, run)] = warmed
    assert reads_before == 0 and (run.rows, run.columns, run.bits_stored) == (8, 8, 8)
    assert (run.pixel_spacing_xy_mm, run.technique) == (frame.run.pixel_spacing_xy_mm,
                                                        frame.run.technique)
