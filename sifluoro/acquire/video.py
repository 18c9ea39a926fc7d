"""Frames from OpenCV ``VideoCapture``: a video file, or a frame grabber on the C-arm's video out.

Video carries no DICOM header, so what the pipeline needs is given by the user: pixel spacing at
the detector (calibrate on a known length), the technique (for estimated dose), and the pulse
rate if the capture runs faster than the fluoroscopy: one frame is then taken per pulse and the
capture's repeats between pulses are dropped, and so is a frame identical to the one before at
a pulse (the monitor's last-image hold after the pedal is released, on a digital capture), so
that neither counts as exposure (both counted in ``VideoStats``). A pulse rate above the
capture's makes each captured frame count for pulse/capture pulses. Without a pulse rate every
captured frame is a pulse: time is counted on the capture's clock, and a repeat of the frame
before is beam-on time between pulses slower than the capture (dropping it understated the
fluoroscopy time by capture/pulse rate), unless it lasts longer than :data:`HOLD_S`: from there
on it is the monitor's last-image hold, dropped and counted as held. So each hold still counts
:data:`HOLD_S` of fluoroscopy, a pulse rate below 1/:data:`HOLD_S` needs ``--pulse-rate``, and
an analogue capture, whose noise keeps a held image from repeating exactly, counts its hold
(both said when the capture starts without a pulse rate).
"""
from __future__ import annotations

import itertools
import logging
import math
import queue
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
from pydicom.uid import generate_uid

from sifluoro.errors import ConfigError, InputError
from sifluoro.model import Device, Frame, Run, Technique
from sifluoro.pipeline import put_unless_stopped

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoSourceSettings:
    """What a video source cannot tell by itself.

    Attributes
    ----------
    pixel_spacing_mm : float
        Size of one video pixel at the detector plane, mm.
    technique : Technique
        Technique of the fluoroscopy behind the video (for estimated dose).
    frame_rate_per_s : float, optional
        The fluoroscopy's pulse rate (``--pulse-rate``); defaults to the capture's own rate.
        Below the capture's, one frame is taken per pulse; above it (30 p/s on a 25 frame/s
        video output), each frame taken carries pulse/capture pulses of tube load.
    max_frames : int, optional
        Stop after this many frames (live capture otherwise runs until the device ends).
    capture_rate_per_s : float, optional
        The capture's frames per second (``--capture-rate``), when its backend reports a
        wrong one (FFmpeg reports 25/s for raw MJPEG whatever the grabber sends): frame times,
        and so the fluoroscopy time and the pulses taken, follow it.
    bone_bright : bool
        Whether the video shows bone bright (as a radiograph); by default it shows what a
        fluoroscopy monitor shows, bone dark and needle and contrast black.
    """

    pixel_spacing_mm: float
    technique: Technique = Technique()
    frame_rate_per_s: float | None = None
    max_frames: int | None = None
    bone_bright: bool = False
    capture_rate_per_s: float | None = None

    def __post_init__(self):
        if not self.pixel_spacing_mm > 0:
            raise ConfigError(f"--pixel-spacing-mm must be > 0, got {self.pixel_spacing_mm}")
        if self.frame_rate_per_s is not None and not self.frame_rate_per_s > 0:
            raise ConfigError(f"--pulse-rate must be > 0, got {self.frame_rate_per_s}")
        if self.capture_rate_per_s is not None and not (
                0 < self.capture_rate_per_s <= MAX_CAPTURE_RATE_PER_S):
            raise ConfigError(f"--capture-rate must be in (0, {MAX_CAPTURE_RATE_PER_S:g}] frames/s, "
                              f"got {self.capture_rate_per_s}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--max-frames must be >= 1, got {self.max_frames}")


#: a capture reporting more frames per second reports something else (an RTSP time base)
MAX_CAPTURE_RATE_PER_S = 1000.0

#: a live source that delivers no frame for this long, s, has stalled: said and counted
STALL_S = 2.0

#: a live source's frame rate is measured over windows of this many seconds of reads without
#: a stall, taken from the first window within RATE_STABLE of the one before it (the frames
#: queued while the source opened or the first frame was prepared come at read speed, and
#: only in the first window), and said when it is off the rate in use by more than
#: RATE_TOLERANCE
RATE_CHECK_S = 3.0
RATE_STABLE = 0.10  # 5 %: on a busy machine two 3 s windows of a steady 15/s differed more
RATE_TOLERANCE = 0.15

#: a video file that ends this share of its header's frame count early was cut short (some
#: containers' counts are estimates from their duration)
CUT_SHORT_SHARE = 0.02

#: the frames a live source's run holds (times kept per frame): 2^16 is 73 min at 15/s; the
#: capture then goes on in a new run
RUN_FRAMES = 1 << 16

#: how long the end of a live capture waits for a read under way, s
READER_JOIN_S = 2.0

#: a live source whose reads fail for this long, s, is opened again
REOPEN_AFTER_S = 1.0

#: mean |difference| (grey levels) below which a frame repeats the one before (a held image)
HELD_FRAME_LEVELS = 0.1

#: without a pulse rate, how long a frame may repeat before the repeats are taken as the
#: last-image hold, s: longer than the gap between pulses at 1 pulse/s, shorter than a hold
#: (seconds to minutes after each pedal release)
HOLD_S = 1.0


@dataclass
class VideoStats:
    """What the capture delivered beyond the frames taken."""

    captured: int = 0
    between_pulses: int = 0  # capture repeats between two pulses (--pulse-rate)
    held: int = 0            # frames identical to the one before (last-image hold)
    size_changes: int = 0    # new runs started because the picture size changed
    stalls: int = 0          # gaps over STALL_S in a live source's frames
    longest_stall_s: float = 0.0
    capture_rate_per_s: float | None = None           # the rate frames are timed by
    measured_capture_rate_per_s: float | None = None  # a live source's, on its reads' clock


def is_image_sequence(source: str | int) -> bool:
    """A printf pattern of numbered pictures (``f_%03d.png``), as OpenCV reads them."""
    return isinstance(source, str) and re.search(r"%0?\d*d", source) is not None


def open_capture(source: str | int) -> cv2.VideoCapture:
    """Open a video file, an image sequence or a capture device index; a clear error when
    that fails. An image sequence goes to OpenCV's own image backend, which reports no frame
    rate, so the pulse rate times it: FFmpeg's, tried first otherwise, makes up 25/s, and a
    --pulse-rate of 10 then dropped most pictures as "between pulses" (review s23)."""
    capture = (cv2.VideoCapture(source, cv2.CAP_IMAGES) if is_image_sequence(source)
               else cv2.VideoCapture(source))
    if not capture.isOpened():
        raise InputError("cannot be opened as video (file missing, unsupported codec, or no "
                         "such capture device)", path=str(source))
    return capture


def video_frames(source: str | int, settings: VideoSourceSettings,
                 stats: VideoStats | None = None,
                 stop: threading.Event | None = None,
                 capture: cv2.VideoCapture | None = None,
                 warm: Callable[[Run], object] | None = None) -> Iterator[Frame]:
    """Grey uint16 frames from a video, as one run starting at t = 0 (and a new run of the same
    study each time the picture size changes).

    Colour video is converted to grey (BT.601 luma); 8-bit video becomes ``uint16`` values
    0-255 with ``bits_stored = 8``, MONOCHROME2 as displayed, with PixelIntensityRelationshipSign
    +1 (bone dark) or -1 (``bone_bright``). The run gets a study UID of its own. With a pulse
    rate below the capture's, one frame is taken per pulse and a frame that repeats the one
    before is dropped; without one, only repeats beyond :data:`HOLD_S` are (module notes);
    ``stats`` counts both. A live source (:func:`is_live_source`) is read on a thread of its
    own (:func:`_live_reads`): it ends when ``stop`` is set, not when a read fails.
    ``capture``: ``source`` opened already (:func:`open_capture`), released here. ``warm``:
    called with a run of the size a live source reports before its reader starts (the stages'
    warm-up; on the first frame it stopped the main loop 0.16-0.57 s while the reader's queue
    filled and the grabber's frames were lost, uncounted).
    """
    stats = stats if stats is not None else VideoStats()
    capture = capture if capture is not None else open_capture(source)
    live = is_live_source(source)
    try:
        capture_rate, rate_from = ((settings.capture_rate_per_s, "--capture-rate")
                                   if settings.capture_rate_per_s else
                                   _capture_rate(capture, source, settings.frame_rate_per_s))
        stats.capture_rate_per_s = capture_rate
        pulse_rate = settings.frame_rate_per_s or capture_rate
        rate = min(pulse_rate, capture_rate)  # frames taken per second
        frame_time_ms = 1000.0 / rate
        # the container's count: a header may undercount (a recorder that crashed), so it is
        # no limit; a file that ends well short of it was cut (review s23 #4, #5)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else 0
        n = settings.max_frames or 1 << 30
        # pulses faster than the capture: each frame taken shows (and costs) several
        tech = replace(settings.technique, frame_time_ms=frame_time_ms, pulse_rate_per_s=pulse_rate,
                       pulses_per_frame=pulse_rate / rate,
                       imager_pixel_spacing_xy_mm=(settings.pixel_spacing_mm,) * 2)
        # a run holds its frames' times: a file's count (a container may claim any), at most
        # RUN_FRAMES, and the capture goes on in a new run (2^20 times each held 50 MB a run;
        # review s23 #6)
        study_uid = generate_uid()
        frames_max = min(n, count if 0 < count <= RUN_FRAMES else RUN_FRAMES)

        def new_run(shape: tuple[int, ...], start_s: float, frames_max: int = frames_max) -> Run:
            return Run(path=str(source), sop_instance_uid=generate_uid(), sop_class_uid="",
                       series_instance_uid="", study_instance_uid=study_uid, modality="XA",
                       transfer_syntax_uid="", rows=shape[0], columns=shape[1], bits_stored=8,
                       photometric="MONOCHROME2",
                       pixel_intensity_sign=-1 if settings.bone_bright else 1, start_s=start_s,
                       frame_offsets_s=tuple((np.arange(frames_max) / rate).tolist()),
                       frame_intervals_ms=(frame_time_ms,) * frames_max, technique=tech,
                       device=Device(station_name="video"), bits_allocated=8)

        shape = reported_shape(capture) if live else None
        if warm is not None and shape is not None:
            warm(new_run(shape, 0.0))
        reads = (_live_reads(capture, source, stop, stats, capture_rate, rate_from) if live
                 else _read_all(capture))
        first = next(reads, None)
        if first is None:
            if live:
                return  # stopped before the source gave a frame
            raise InputError("holds no frame", path=str(source))
        run = new_run(first.shape, 0.0)
        taken, in_run, last_pulse, previous, changed_at = 0, 0, -1, None, 0
        for k, image in enumerate(itertools.chain([first], reads)):
            if taken >= n:
                break
            stats.captured += 1
            pulse = int(k * rate / capture_rate + 1e-9)  # the pulse this capture shows
            if pulse == last_pulse:
                stats.between_pulses += 1
                continue
            if image.shape[:2] != (run.rows, run.columns):
                # the grabber renegotiated its format: the pictures go on as a new run (the
                # image stages start again on it); the study and its dose go on
                log.warning("%s: frame %d is %dx%d, the capture was %dx%d: a new run starts",
                            source, k + 1, image.shape[1], image.shape[0], run.columns, run.rows)
                run, in_run, previous, changed_at = (new_run(image.shape, pulse / rate,
                                                             RUN_FRAMES), 0, None, k)
                stats.size_changes += 1
            elif in_run == run.n_frames:  # a run full (a long capture, or a file longer
                # than its header says)
                log.info("%s: frame %d goes on in a new run of %d frames", source, k + 1,
                         RUN_FRAMES)
                run, in_run = new_run(image.shape, pulse / rate, RUN_FRAMES), 0
            grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
            repeat = (previous is not None
                      and cv2.norm(grey, previous, cv2.NORM_L1) < HELD_FRAME_LEVELS * grey.size)
            if not repeat:
                changed_at = k
            elif settings.frame_rate_per_s is not None or (k - changed_at) / capture_rate > HOLD_S:
                stats.held += 1
                continue
            last_pulse, previous = pulse, grey
            pixels = grey.astype(np.uint16)
            pixels.flags.writeable = False
            taken += 1
            in_run += 1
            yield Frame(pixels=pixels, index=taken - 1, frame_number=in_run, t_s=pulse / rate,
                        run=run)
        else:
            if count > 0 and stats.captured < count - max(1, CUT_SHORT_SHARE * count):
                raise InputError(f"ends after {stats.captured} of the {count} frames its "
                                 "header gives: cut short (an interrupted copy or recording); "
                                 "the frames read are counted", path=str(source))
    finally:
        if not live:
            capture.release()  # a live source's reader releases it (it may be inside a read)


def reported_shape(capture: cv2.VideoCapture) -> tuple[int, int] | None:
    """The picture size (rows, columns) a capture reports, or None when it reports none."""
    rows, columns = (capture.get(cv2.CAP_PROP_FRAME_HEIGHT), capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    if not all(math.isfinite(v) and 0 < v <= MAX_REPORTED_SIDE for v in (rows, columns)):
        return None
    return int(rows), int(columns)


#: a reported picture side above this many pixels is no picture size
MAX_REPORTED_SIDE = 16384


def _capture_rate(capture: cv2.VideoCapture, source: str | int,
                  pulse_rate_per_s: float | None) -> tuple[float, str]:
    """The capture's frames per second, and where it comes from; the pulse rate when the
    capture does not know its own.

    Backends that do not know report -1 (image sequences), 0, or an RTSP time base (90000):
    taken as is, time ran backwards and dose came out negative, or pulses were dropped as
    repeats. Without a pulse rate such a capture is refused: its frames cannot be timed.
    """
    reported = capture.get(cv2.CAP_PROP_FPS)
    if math.isfinite(reported) and 0 < reported <= MAX_CAPTURE_RATE_PER_S:
        return float(reported), "the capture's reported rate"
    if pulse_rate_per_s is not None:
        return float(pulse_rate_per_s), "--pulse-rate"  # each captured frame is one pulse
    raise InputError(f"the capture reports no usable frame rate (CAP_PROP_FPS = {reported:g}); "
                     "give the fluoroscopy's --pulse-rate", path=str(source))


def is_live_source(source: str | int) -> bool:
    """A capture device (index or /dev/video*) or a network stream: it ends when the operator
    stops it, not when a read fails."""
    return isinstance(source, int) or str(source).startswith("/dev/") or "://" in str(source)


def _live_reads(capture: cv2.VideoCapture, source: str | int, stop: threading.Event | None,
                stats: VideoStats, capture_rate_per_s: float,
                rate_from: str) -> Iterator[np.ndarray]:
    """A live source's frames, read on a thread of their own until ``stop`` is set.

    A failed read is a gap, not the end of the procedure (a grabber losing its signal for a
    few seconds, a C-arm switching its video mode): reads go on, the source is opened again
    after :data:`REOPEN_AFTER_S` of failures, and a gap over :data:`STALL_S` is said and
    counted (``stats.stalls``). A stop ends the capture at once, even while a read blocks.
    The source's own frame rate is measured on the reads' clock (:class:`_RateCheck`).
    """
    frames: queue.Queue = queue.Queue(maxsize=8)
    done = threading.Event()
    held: list[np.ndarray] = []  # read when the stop came, the queue full: it counts too

    def read() -> None:
        failing_since = None
        rate_check = _RateCheck(capture_rate_per_s, source, stats, rate_from)
        try:
            while not done.is_set():
                ok, image = capture.read()
                if ok:
                    failing_since = None
                    if stats.measured_capture_rate_per_s is None:
                        rate_check.add(time.monotonic())
                    if not put_unless_stopped(frames, image, done):
                        held.append(image)
                    continue
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > REOPEN_AFTER_S:
                    capture.release()
                    capture.open(source)
                    failing_since = now
                done.wait(0.05)
        finally:
            capture.release()

    reader = threading.Thread(target=read, name="sifluoro-video", daemon=True)
    reader.start()
    last, stalled, joined = time.monotonic(), False, False
    try:
        while stop is None or not stop.is_set():
            try:
                image = frames.get(timeout=0.1)
            except queue.Empty:
                if not stalled and time.monotonic() - last > STALL_S:
                    stalled = True
                    stats.stalls += 1
                    log.warning("the video source has delivered no frame for %.0f s; waiting for "
                                "it (Ctrl-C or SIGTERM ends the capture)", STALL_S)
                continue
            now = time.monotonic()
            gap_s, last = now - last, now
            if stalled:
                stalled = False
                stats.longest_stall_s = max(stats.longest_stall_s, gap_s)
                log.warning("the video source delivers frames again after %.1f s", gap_s)
            yield image
        if stalled:  # a stall still under way at the stop is the longest so far, maybe
            stats.longest_stall_s = max(stats.longest_stall_s, time.monotonic() - last)
        # the frames read before the stop were pulses given: their dose counts. The reader
        # stops first (a source delivering on would keep the drain going), then what it read
        done.set()
        reader.join(timeout=READER_JOIN_S)
        joined = True
        while True:
            try:
                yield frames.get_nowait()
            except queue.Empty:
                break
        yield from held
    finally:
        done.set()
        # a read that returns while the interpreter exits aborts the process (OpenCV's C++
        # frames swallow the thread's forced unwind): wait for it (once), unless the source
        # stalls; then the caller ends the process without unwinding (reader_stuck)
        if not joined:
            reader.join(timeout=READER_JOIN_S)
        if reader.is_alive():
            _STUCK_READERS.append(reader)


#: live sources' reader threads still inside a read at the end of their capture
_STUCK_READERS: list[threading.Thread] = []


def reader_stuck() -> bool:
    """Whether a live source's reader is still blocked in a read: an interpreter that exits
    normally then aborts (SIGABRT, "FATAL: exception not rethrown") when the read returns, so
    the caller should leave with ``os._exit`` once its outputs are written (review s23 #3)."""
    return any(t.is_alive() for t in _STUCK_READERS)


class _RateCheck:
    """A live source's frame rate on its reads' clock: sets ``stats.measured_capture_rate_per_s``
    and says when frames are timed at a rate off it: a backend's made-up rate (FFmpeg's 25/s
    for raw MJPEG) mis-times every frame, and with a pulse rate it drops real pulses as repeats
    between pulses (dose short by as much).

    Reads are counted over windows of :data:`RATE_CHECK_S`; the rate is a window's once it is
    within :data:`RATE_STABLE` of the window before. The first window holds the frames the
    source queued while it opened (and while the first frame was prepared), read in a burst:
    counted, a grabber sending 15/s read as 25/s, and a wrong rate in use went unsaid."""

    def __init__(self, capture_rate_per_s: float, source: str | int, stats: VideoStats,
                 rate_from: str):
        self.capture_rate_per_s, self.source, self.stats = capture_rate_per_s, source, stats
        self.rate_from = rate_from
        self.times: list[float] = []
        self.previous_per_s: float | None = None  # the last window's rate

    def add(self, now: float) -> None:
        """A read at ``now`` (monotonic seconds)."""
        if self.times and now - self.times[-1] > STALL_S:
            # a stall is not the source's rate, and frames may queue in it: start again
            self.times, self.previous_per_s = [], None
        self.times.append(now)
        span_s = now - self.times[0]
        if span_s < RATE_CHECK_S:
            return
        rate_per_s, previous = (len(self.times) - 1) / span_s, self.previous_per_s
        self.times, self.previous_per_s = [now], rate_per_s  # the next window starts here
        if previous is None or abs(rate_per_s / previous - 1.0) > RATE_STABLE:
            return
        measured = self.stats.measured_capture_rate_per_s = round(rate_per_s, 2)
        if abs(measured / self.capture_rate_per_s - 1.0) > RATE_TOLERANCE:
            log.error("%s: the source delivers %.1f frames/s but its frames are timed at "
                      "%.1f/s (%s): fluoroscopy time and dose are off by as much; give "
                      "--capture-rate %.0f", self.source, measured, self.capture_rate_per_s,
                      self.rate_from, measured)


def _read_all(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, image = capture.read()
        if not ok:
            return
        yield image


def write_test_video(path: Path, frames: np.ndarray, fps: float) -> Path:
    """Write grey uint8 frames as a lossless-enough MJPG AVI (for tests and demos)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps,
                             (frames.shape[2], frames.shape[1]))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path
