"""Drive one study through an :class:`~sifluoro.engine.Engine` as if it were live.

Frames are decoded ahead on a reader thread, fed to the engine at the C-arm's pace (its own
frame times, or a fixed rate), drawn with their overlay, and handed to *sinks*: the OpenIGTLink
server, the web view, the key-frame exporter. A sink is any object with

``start(study)``
    before the first frame (the runs' headers are known);
``frame(frame, event, overlay_bgr)``
    after each frame's event is complete (``event`` is the engine's :class:`FrameEvent`;
    ``overlay_bgr`` the annotated frame, BGR ``uint8``, or None when no sink has
    ``wants_overlay = True``);
``end(study, summary, dose)``
    after the last frame, with the replay summary (docs/contract.md §3) and the study's
    :class:`~sifluoro.dose.accumulate.DoseAccumulator` (None when no frame was processed).

A sink that raises is logged and the study goes on, as the Engine does for handlers.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.dose.accumulate import DoseAccumulator
from sifluoro.engine import Engine, FrameEvent
from sifluoro.errors import ConfigError
from sifluoro.model import Frame, Study
from sifluoro.overlay import draw_overlay
from sifluoro.pipeline import read_ahead
from sifluoro.replay import LostFrames, write_json

log = logging.getLogger(__name__)


class Sink(Protocol):
    def start(self, study: Study) -> None: ...

    def frame(self, frame: Frame, event: FrameEvent, overlay_bgr: np.ndarray) -> None: ...

    def end(self, study: Study, summary: dict, dose: DoseAccumulator | None) -> None: ...

    # optional: ``alert(AlertEvent)`` for every alert as the engine raises it, also those
    # raised between frames (frames lost in a damaged run, a late report's recount)


def simulated_inputs(folder: str | Path, *, case: int, seed: int = 2026, size: int = 512) -> list[Path]:
    """Simulate study ``(seed, case)`` as DICOM under ``folder``; return the input list."""
    from sifluoro.sim import simulate_case
    from sifluoro.sim.export import export_study

    exported = export_study(simulate_case(seed, case, size=size), Path(folder) / f"sim-{seed}-{case}")
    return [exported.dicom_dir]


def engine_dose(engine: Engine) -> DoseAccumulator:
    """The study's dose accumulator, for the RDSR at study end."""
    if engine.dose is None:
        raise ConfigError("the engine has not been fed a frame; there is no dose to report")
    return engine.dose


class Pacer:
    """Wait until each frame is due: at ``fps`` frames per second, or at the study's own frame
    times with the pauses between runs shortened to ``max_gap_s``.

    A frame that comes late (a warm-up, a busy machine) is not made up for by a burst: the
    clock restarts from it, as frames from a C-arm would. ``clock`` is monotonic time in
    seconds; tests pass a simulated one (with a ``stop`` whose ``wait`` advances it).
    """

    def __init__(self, *, fps: float | None = None, max_gap_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        if fps is not None and not fps > 0:
            raise ConfigError(f"fps must be > 0, got {fps}")
        self.fps, self.max_gap_s, self._clock = fps, max_gap_s, clock
        self._base_wall: float | None = None
        self._base_t = self._t = 0.0
        self._last_t_s: float | None = None
        self._count = 0

    def wait(self, frame: Frame, stop: threading.Event) -> None:
        if self.fps is not None:
            self._t = self._count / self.fps
        elif self._last_t_s is not None:
            self._t += min(max(frame.t_s - self._last_t_s, 0.0), self.max_gap_s)
        self._last_t_s = frame.t_s
        self._count += 1
        now = self._clock()
        if self._base_wall is None:
            self._base_wall, self._base_t = now, self._t
            return
        delay = self._base_wall + (self._t - self._base_t) - now
        if delay > 0:
            stop.wait(delay)
        elif delay < -(1.0 / self.fps if self.fps else 0.1):
            self._base_wall, self._base_t = now, self._t


def _close_quietly(fh) -> None:
    try:
        fh.close()
    except OSError:
        pass  # what could not be flushed was already said


class LiveReplay:
    """Feed a recorded study to ``engine`` at the C-arm's pace and hand every frame to ``sinks``.

    Parameters
    ----------
    engine : Engine
        A fresh engine (one study).
    sinks : sequence of Sink
    fps : float, optional
        Fixed frame rate; default: the study's own frame times.
    paced : bool
        False feeds frames as fast as they come (offline export).
    max_gap_s : float
        Longest pause kept between runs when following the study's timing.
    stop : threading.Event, optional
        Set it to end the study early (what was fed is summarised).
    """

    def __init__(self, engine: Engine, sinks: Sequence[Sink] = (), *, fps: float | None = None,
                 max_gap_s: float = 2.0, paced: bool = True,
                 stop: threading.Event | None = None):
        self.engine = engine
        self.sinks = list(sinks)
        self.pacer = Pacer(fps=fps, max_gap_s=max_gap_s) if paced else None
        self.draw = any(getattr(sink, "wants_overlay", False) for sink in self.sinks)
        self.stop = stop or threading.Event()
        engine.on("alert", self._alert)

    def _alert(self, alert) -> None:
        for sink in self.sinks:
            if hasattr(sink, "alert"):
                try:
                    sink.alert(alert)
                except Exception:  # one output's defect must not stop the others
                    log.exception("%s.alert failed", type(sink).__name__)

    def run(self, inputs: Iterable[str | Path], *, study_uid: str | None = None,
            events_path: str | Path | None = None, summary_path: str | Path | None = None) -> dict:
        """Replay the study; return its summary (docs/contract.md §3), also written to
        ``summary_path`` (when that fails, the summary returned says so in
        ``summary_not_written``)."""
        study = read_study(list(inputs), study_uid=study_uid)
        rejected = list(study.rejected)
        # every run prepared (kernels warmed up) before the pacing starts
        self.engine.prepare(study)
        self._call("start", study)
        events = None
        if events_path is not None:
            Path(events_path).parent.mkdir(parents=True, exist_ok=True)
            events = open(events_path, "w", encoding="utf-8")
        lost: list = []  # damaged runs' frames given by the header only
        lost_frames = LostFrames(study, lost, self.engine.count_lost)
        interrupted = False
        events_error = None
        try:
            for frame in lost_frames.passing(read_ahead(iter_frames(study, rejected, lost),
                                                        self.engine.settings.queue_frames,
                                                        study.runs)):
                if self.pacer is not None:
                    self.pacer.wait(frame, self.stop)
                if self.stop.is_set():
                    interrupted = True
                    break
                event = self.engine.feed(frame)
                if event is None:  # fed before (counted as a duplicate): nothing new to show
                    continue
                if events is not None:
                    try:
                        events.write(json.dumps(event.event, separators=(",", ":")) + "\n")
                        events.flush()
                    except OSError as exc:  # a full disk: the study and its dose go on
                        events_error = f"{events_path}: {exc.strerror or exc}"
                        log.error("%s: events can no longer be written (%s); the study goes "
                                  "on without them", events_path, exc.strerror or exc)
                        _close_quietly(events)
                        events = None
                overlay = None
                if self.draw:
                    spacing = frame.pixel_spacing_xy_mm[0] if frame.pixel_spacing_xy_mm else None
                    overlay = draw_overlay(frame.pixels, frame.photometric, dict(event.event),
                                           spacing_mm=spacing,
                                           scale_unknown=bool(event.event.get("scale_unknown")),
                                           stages=[s.name for s in self.engine.pipeline.stages])
                self._call("frame", frame, event, overlay)
        finally:
            if events is not None:
                _close_quietly(events)
        if not interrupted:  # stopped: the runs not reached are not the study's so far
            lost_frames.rest()
        summary = self.engine.close()
        # with the files found damaged while their frames were read (added: the Engine's own
        # list holds the device report it could not use)
        listed = summary.setdefault("rejected_files", [])
        listed += [d for d in (r.as_dict() for r in rejected) if d not in listed]
        if interrupted:
            summary["ended_early"] = "stopped before the study's end"
        if events_error:
            summary["events_not_written"] = events_error  # the events file is incomplete
        # a study stopped part way has no dose report: one of its first runs would pass for
        # the whole procedure's; a study whose frames were all lost still has its exposure
        seen = summary["frames"] or (summary.get("lost_frames") or {}).get("frames")
        dose = engine_dose(self.engine) if seen and not interrupted else None
        # the sinks first: a summary that cannot be written (a full disk) must not keep the
        # study's RDSR and key frames from the outbox (review s23 #2)
        self._call("end", study, summary, dose)
        if summary_path is not None:
            try:
                write_json(summary_path, summary)
            except OSError as exc:
                log.error("%s: the summary cannot be written (%s)", summary_path,
                          exc.strerror or exc)
                summary["summary_not_written"] = f"{summary_path}: {exc.strerror or exc}"
        return summary

    def _call(self, method: str, *args) -> None:
        for sink in self.sinks:
            try:
                getattr(sink, method)(*args)
            except Exception:  # one output's defect must not stop the others or the study
                log.exception("%s.%s failed", type(sink).__name__, method)

