"""``sifluoro video SOURCE``: run the engine on a video file or a frame grabber.

A frame grabber on the C-arm's video output cannot wait for the engine, so a capture device
(an integer index or ``/dev/video*``) is fed as a live source (``Engine.submit``: dose counted on
arrival, the oldest waiting image work dropped when frames back up, drops counted); a file is
fed frame by frame (nothing dropped) unless ``--live``, which plays it at its frame rate as a
grabber would deliver it. What video does not carry is given on
the command line: pixel spacing at the detector and the technique for the dose estimate.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from sifluoro.argtypes import budget_ms, number
from sifluoro.config import DoseSettings
from sifluoro.dose.units import MAX_PLAUSIBLE, MAX_PULSE_WIDTH_MS
from sifluoro.errors import ConfigError
from sifluoro.stages import REPLAY_STAGES, add_stages_argument, make_stages
from sifluoro.stopping import stop_on_signals


STOPPED = "stopped by a signal"


class _EventsFile:
    """The events, a line per frame. A disk that fills stops the writing, not the capture: the
    session's dose still reaches its summary (``events_not_written`` names what failed)."""

    def __init__(self, path: Path):
        self.path, self.error = path, None
        self._fh = open(path, "w", encoding="utf-8")

    def write(self, event: dict) -> None:
        if self._fh is not None:
            try:
                self._fh.write(json.dumps(event, separators=(",", ":")) + "\n")
                self._fh.flush()  # a live session's events are read as they come
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
                self._fh = None
            except OSError as exc:  # the last buffer could not be flushed
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = f"{self.path}: {exc.strerror or exc}"
        print(f"sifluoro: events can no longer be written ({self.error}); the capture goes on",
              file=sys.stderr)
        fh, self._fh = self._fh, None
        try:
            fh.close()
        except OSError:
            pass  # already said


# a technique the dose model cannot use gave no dose and exit 0: refused when parsed instead
_DOSE = DoseSettings()
_LENGTH_MM = MAX_PLAUSIBLE["length_mm"]


def _kvp(text: str) -> float:
    from sifluoro.dose.output_table import load_table

    low, high = load_table().kvp_range
    return number(least=low, most=high, unit="kV", why="the tube output table's range")(text)


#: the highest frame or pulse rate taken (video.MAX_CAPTURE_RATE_PER_S; not imported: OpenCV)
MAX_RATE_PER_S = 1000.0
#: the largest video pixel at the detector taken, mm (a 300 mm field on 30 lines)
MAX_VIDEO_PIXEL_MM = 10.0
# infinity gave an OverflowError traceback (a rate) or "Infinity" in the summary (a spacing)
_rate = number(above=0.0, most=MAX_RATE_PER_S, unit="/s")


def _check_geometry(args) -> None:
    """The reference point between source and detector (what one option cannot tell alone)."""
    if args.sid_mm and args.source_to_isocenter_mm and not args.source_to_isocenter_mm < args.sid_mm:
        raise ConfigError(f"--source-to-isocenter-mm {args.source_to_isocenter_mm:g} must be less "
                          f"than --sid-mm {args.sid_mm:g} (the isocenter lies between source and "
                          "detector)")


def _source(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def _video_command(args) -> int:
    """``sifluoro video``; a live source's read still blocked at the end (a stream that
    resumes as the process exits aborted it, after the summary) ends the process at once."""
    code = _video(args)
    from sifluoro.acquire.video import reader_stuck

    if reader_stuck():
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


def _video(args) -> int:
    from sifluoro.acquire.video import (HOLD_S, VideoSourceSettings, VideoStats, is_live_source,
                                        open_capture, video_frames)
    from sifluoro.config import Settings
    from sifluoro.engine import Engine
    from sifluoro.errors import InputError
    from sifluoro.replay import write_json
    from sifluoro.model import Study, Technique
    from sifluoro.outfiles import check_writable
    from sifluoro.overlay import OverlayWriter

    _check_geometry(args)
    # before the capture: OpenCV's writer fails silently, an events file with a traceback
    check_writable((args.source,), events=args.events, summary=args.summary,
                   overlay_mp4=args.overlay_mp4)
    source = _source(args.source)
    live_source = is_live_source(source)
    # a mistyped file: no session to record ("%" is OpenCV's image sequence, f_%03d.png)
    if not live_source and "%" not in source and not os.path.exists(source):
        raise ConfigError(f"{source}: no such file; nothing was captured or written")
    if not live_source and _is_dicom(source):
        raise ConfigError(f"{source}: a DICOM file, not video; replay it with `sifluoro replay "
                          f"{source} --events ... --summary ...`")
    live = args.live or live_source
    technique = Technique(kvp=args.kvp, tube_current_ma=args.ma, pulse_width_ms=args.pulse_width_ms,
                          sid_mm=args.sid_mm, source_to_isocenter_mm=args.source_to_isocenter_mm,
                          filter_cu_mm=args.cu_mm, filter_al_mm=args.al_mm)
    settings = VideoSourceSettings(pixel_spacing_mm=args.pixel_spacing_mm, technique=technique,
                                   frame_rate_per_s=args.pulse_rate, max_frames=args.max_frames,
                                   capture_rate_per_s=args.capture_rate,
                                   bone_bright=args.bone_bright)
    engine_settings = Settings(latency_budget_ms=args.budget_ms)
    stages = make_stages(args.stages, engine_settings)
    engine = Engine(engine_settings, stages=stages)
    # the compiled kernels load now, not once the source is open: a grabber is not read while
    # they load (its pulses lost); its frame size's warm-up is left (41 ms at 1024², was 327)
    engine.pipeline.load_kernels()
    # before any output is made: a device or URL that does not open leaves no empty session
    try:
        capture = open_capture(source)
    except InputError as exc:
        raise ConfigError(f"{exc}; nothing was captured or written") from None
    # the stages that ran: one that did not is drawn "not assessed", not as "found nothing"
    overlays = (OverlayWriter(mp4_path=args.overlay_mp4, stages=[s.name for s in stages])
                if args.overlay_mp4 else None)
    pending: dict[int, object] = {}      # frames waiting for their event (for the overlay)
    lock = threading.Lock()
    events = _EventsFile(args.events)

    joint_frames = [0]  # frames with a joint line: too few hints at the polarity

    def on_frame(frame_event) -> None:
        events.write(frame_event.event)
        joint_frames[0] += frame_event.event.get("joint") is not None
        with lock:
            frame = pending.pop(frame_event.index, None)
        if overlays is not None and frame is not None:
            overlays.add(frame, frame_event.event)

    engine.on("frame", on_frame)
    paced = live and not live_source   # a file played as a grabber would deliver it
    start = 0.0
    stats = VideoStats()
    missing = _missing_technique(args)
    if missing and not args.quiet:
        print(f"note: without {' '.join(missing)} there is no dose estimate; fluoroscopy time "
              "is still counted", file=sys.stderr)
    elif not args.quiet:
        if args.pulse_width_ms is None:  # the estimate's tube load (physics.mas_per_frame)
            print("note: without --pulse-width-ms the tube current counts for each frame's whole "
                  "interval (continuous fluoroscopy): pulsed fluoroscopy's dose is overstated",
                  file=sys.stderr)
        if args.sid_mm is None:  # the field at the detector scales to the patient by it
            print("note: without --sid-mm the DAP is not estimated (unknown), only the air kerma",
                  file=sys.stderr)
        else:  # a monitor shows no collimator setting
            print("note: the estimated DAP takes the whole picture as the X-ray field: an upper "
                  "bound when the beam is collimated", file=sys.stderr)
    if args.pulse_rate is None and not args.quiet:
        print(f"note: without --pulse-rate every captured frame counts as a pulse (a capture "
              f"faster than the pulses overstates the dose); the monitor's held last image "
              f"counts as fluoroscopy for its first {HOLD_S:g} s, and wholly when analogue "
              f"noise keeps it from repeating exactly", file=sys.stderr)
    # a grabber never ends by itself: Ctrl-C or a service stop ends the capture, and the
    # session's summary (its dose) is still written
    stop = stop_on_signals()
    ended, run = None, None
    try:
        # a live source's size is warmed before its reader starts: the grabber does not wait
        for frame in video_frames(source, settings, stats, stop, capture=capture,
                                  warm=engine.pipeline.prepare_stages):
            if frame.run is not run:  # kernels warmed up on the real frame size before it counts
                run = frame.run
                engine.prepare(Study(run.study_instance_uid, (run,)))
            if frame.index == 0:
                start = time.monotonic()
            if paced:
                time.sleep(max(0.0, start + frame.t_s - time.monotonic()))
            if overlays is not None:
                with lock:
                    pending[frame.index] = frame
            if live:
                engine.submit(frame)
            else:
                engine.feed(frame)
            # after the frame: captured, its pulse was given (review s18 F23); a live source's
            # reads end by themselves at a stop, with the frames already read
            if stop.is_set() and not live_source:
                break
        if stop.is_set():  # how an operator ends a capture (and a live source's only end)
            ended = STOPPED
    except InputError as exc:  # e.g. no frame rate: what came before counts
        ended = str(exc)
        print(f"sifluoro: {exc}; the capture ends here", file=sys.stderr)
    finally:
        summary = engine.close()
        events.close()
        if overlays is not None:
            overlays.close()
    summary["video"] = {"captured_frames": stats.captured,
                        "between_pulses": stats.between_pulses, "held_frames": stats.held,
                        "size_changes": stats.size_changes, "stalls": stats.stalls,
                        "longest_stall_s": round(stats.longest_stall_s, 1),
                        "capture_rate_per_s": stats.capture_rate_per_s,
                        "measured_capture_rate_per_s": stats.measured_capture_rate_per_s,
                        "ended_early": ended}
    if events.error:
        summary["events_not_written"] = events.error  # the events file is incomplete
    write_json(args.summary, summary)
    if not args.quiet:
        dropped = summary.get("dropped_image_frames")
        print(f"video      {args.source}: {summary['frames']} frames of {stats.captured} captured"
              + (f" ({stats.between_pulses} between pulses" if stats.between_pulses else "")
              + (f"{', ' if stats.between_pulses else ' ('}{stats.held} held repeats"
                 if stats.held else "")
              + (")" if stats.between_pulses or stats.held else "")
              + (f", image work dropped on {dropped}" if dropped else ""))
        dose = ("unknown (no technique to estimate it from)" if summary["dose_source"] == "none"
                else f"{summary['air_kerma_mgy']:.2f} mGy air kerma, {summary['dap_gycm2']:.3f} "
                     f"Gy·cm² DAP [{summary['dose_source']}]")
        print(f"dose       {dose}, fluoro {summary['fluoro_time_s']:.1f} s")
        if _polarity_doubtful(summary["frames"], joint_frames[0], args):
            print(f"note: a joint line on {joint_frames[0]} of {summary['frames']} frames; if the "
                  "video shows bone bright (white bone on dark soft tissue), run again with "
                  "--bone-bright", file=sys.stderr)
        print(f"outputs    {args.events}"
              + (" (incomplete: events_not_written in the summary)" if events.error else "")
              + f"\n           {args.summary}"
              + (f"\n           {args.overlay_mp4}" if args.overlay_mp4 else ""))
    if not summary["frames"]:
        return 2
    # stopped by the operator is how a capture ends; cut off by the source is not, and events
    # that could not be written leave an incomplete record
    return 1 if (ended and ended != STOPPED) or events.error else 0


def _polarity_doubtful(frames: int, joint_frames: int, args) -> bool:
    """Bone-bright video read as bone-dark finds a joint line on almost no frame (s19 U11:
    2 of 48, 24 of 24 with --bone-bright)."""
    return (not args.bone_bright and "register" in args.stages and frames >= 10
            and joint_frames < 0.2 * frames)


def _is_dicom(path: str) -> bool:
    """A DICOM Part 10 file ('DICM' after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _missing_technique(args) -> list[str]:
    """The options any dose estimate needs (kV, tube current, a distance to the source:
    :func:`~sifluoro.dose.physics.estimate_frame_dose`); the pulse width and the SID only
    refine it (review s20 V1: the note asked for them, and hid an estimate made without)."""
    return [option for option, given in (
        ("--kvp", args.kvp), ("--ma", args.ma),
        ("--sid-mm", args.sid_mm or args.source_to_isocenter_mm)) if given is None]


def add_video_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``video`` to an argparse subparsers object."""
    p = subparsers.add_parser("video", help="run the engine on a video file or a frame grabber "
                              "(C-arm video out)")
    p.add_argument("source", metavar="SOURCE",
                   help="video file, capture device (index such as 0, or /dev/videoN) or "
                   "stream URL")
    p.add_argument("--pixel-spacing-mm", required=True,
                   type=number(above=0.0, most=MAX_VIDEO_PIXEL_MM, unit="mm"),
                   help="size of one video pixel at the detector (calibrate on a known length)")
    p.add_argument("--events", type=Path, required=True, metavar="EVENTS.jsonl")
    p.add_argument("--summary", type=Path, required=True, metavar="SUMMARY.json")
    p.add_argument("--overlay-mp4", type=Path, metavar="FILE.mp4")
    p.add_argument("--bone-bright", action="store_true",
                   help="the video shows bone bright (default: bone dark, as fluoroscopy monitors)")
    p.add_argument("--pulse-rate", type=_rate, metavar="P/S",
                   help="the fluoroscopy's pulse rate when the capture runs faster: one frame "
                   "is taken per pulse and a held image is no pulse (default: every captured "
                   "frame is a pulse, but a frame repeated so long that it is the held last image)")
    p.add_argument("--capture-rate", type=_rate, metavar="F/S",
                   help="the capture's frames per second when its backend reports a wrong one "
                   "(a live source's real rate is measured and a mismatch logged; default: "
                   "what the capture reports)")
    p.add_argument("--max-frames", type=int, metavar="N")
    p.add_argument("--live", action="store_true",
                   help="treat a file like a frame grabber (drop the oldest image work when late)")
    p.add_argument("--budget-ms", type=budget_ms, default=10.0,
                   help="per-frame latency budget for image work (default %(default)s ms)")
    g = p.add_argument_group("technique (for the estimated dose; video carries none)")
    g.add_argument("--kvp", type=_kvp, help="tube voltage, kV (40-150: the tube output table)")
    g.add_argument("--ma", type=number(above=0.0, most=MAX_PLAUSIBLE["current_ma"], unit="mA"),
                   help="tube current, mA")
    g.add_argument("--pulse-width-ms", type=number(above=0.0, most=MAX_PULSE_WIDTH_MS, unit="ms"))
    g.add_argument("--sid-mm", help="source to image distance (the reference point is "
                   f"{_DOSE.reference_point_from_receptor_mm:g} mm before the detector)",
                   type=number(above=_DOSE.reference_point_from_receptor_mm, most=_LENGTH_MM,
                               unit="mm", why="the reference point lies "
                               f"{_DOSE.reference_point_from_receptor_mm:g} mm before the detector"))
    g.add_argument("--source-to-isocenter-mm",
                   type=number(above=_DOSE.reference_point_offset_mm, most=_LENGTH_MM, unit="mm",
                               why=f"the reference point lies {_DOSE.reference_point_offset_mm:g} "
                               "mm before the isocenter"))
    g.add_argument("--cu-mm", type=number(least=0.0, most=_LENGTH_MM, unit="mm"),
                   help="added copper filtration")
    g.add_argument("--al-mm", type=number(least=0.0, most=_LENGTH_MM, unit="mm"),
                   help="added aluminium filtration")
    add_stages_argument(p, REPLAY_STAGES)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_video_command)
    return p
