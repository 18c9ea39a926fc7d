"""The per-frame pipeline: dose first (never skipped), then image stages within a budget.

Stages are plain objects with ``name`` and ``process(frame, state) -> dict`` returning the
event fields they own (``{"needle": {...}}``). The pipeline owns the study state, the timing and
the deadline; stages know nothing of DICOM files or of each other's internals.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol

import numpy as np

from sifluoro.config import Settings
from sifluoro.dose.accumulate import DoseAccumulator
from sifluoro.model import Frame

log = logging.getLogger(__name__)


class Stage(Protocol):
    """An image stage. ``process`` returns the event fields it owns, and may return
    ``"alerts": [{"kind", "message", "index", "t_s", ...}]`` to raise alerts."""

    name: str

    def process(self, frame: Frame, state: "StudyState") -> dict[str, Any]: ...


@dataclass
class StudyState:
    """Everything the pipeline carries from one frame of a study to the next."""

    study_instance_uid: str
    dose: DoseAccumulator
    contrast_state: str = "none"
    stage_state: dict[str, Any] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    degraded_frames: int = 0
    frames: int = 0
    alerts: list[dict] = field(default_factory=list)


class Pipeline:
    """Runs the stages over frames of one study at a time.

    Parameters
    ----------
    stages : sequence of Stage
        Image stages in the order they run; each may be skipped when the frame's budget is
        spent (the event is then marked ``degraded``). Dose is not a stage: it always runs.
    settings : Settings
    """

    def __init__(self, stages: Iterable[Stage] = (), settings: Settings | None = None):
        self.stages = list(stages)
        self.settings = settings or Settings()
        self._warmed: set[tuple] = set()
        self._warm_lock = threading.Lock()

    def warm_up(self, run) -> None:
        """Compile and size every stage on a frame of the run's real shape, dtype and spacing
        before the first live frame (stages without ``warm_up(frame)`` need none)."""
        rng = np.random.default_rng(0)
        top = (1 << run.bits_stored) - 1
        pixels = (rng.random((run.rows, run.columns)) * 0.2 * top + 0.4 * top).astype(np.uint16)
        pixels.flags.writeable = False
        frame = Frame(pixels=pixels, index=0, frame_number=1, t_s=0.0, run=run)
        for stage in self.stages:
            warm = getattr(stage, "warm_up", None)
            if warm is not None:
                warm(frame)

    def start_study(self, study_instance_uid: str) -> StudyState:
        return StudyState(study_instance_uid, DoseAccumulator(self.settings.dose))

    def prepare_run(self, run, state: StudyState) -> None:
        """Run-level work done when a run is announced (its header is known), so that its first
        frame does not pay for it: the dose model, and the stages' warm-up for a frame shape not
        seen before. A run never announced is prepared on its first frame."""
        state.dose.prepare(run)
        key = (run.rows, run.columns, run.bits_stored, run.pixel_spacing_xy_mm)
        with self._warm_lock:
            if key not in self._warmed:
                self.warm_up(run)
                self._warmed.add(key)

    def process(self, frame: Frame, state: StudyState) -> dict[str, Any]:
        """Process one frame; return its event (DESIGN §3)."""
        t0 = time.perf_counter()
        budget_s = self.settings.latency_budget_ms / 1000.0
        alerts = [a.as_dict() for a in state.dose.add(frame)]
        event: dict[str, Any] = {
            "sop_instance_uid": frame.sop_instance_uid,
            "frame": frame.frame_number,
            "index": frame.index,
            "t_s": round(frame.t_s, 6),
            "needle": None,
            "joint": None,
            "target": None,
            "tip_to_target_mm": None,
            "contrast": {"state": state.contrast_state, "confidence": 0.0},
        }
        skipped, failed = [], []
        for stage in self.stages:
            if time.perf_counter() - t0 > budget_s:
                skipped.append(stage.name)
                continue
            try:
                fields = stage.process(frame, state)
                alerts.extend(fields.pop("alerts", ()))  # a stage's alerts join the dose alerts
                event.update(fields)
            except Exception:  # a stage's defect must not lose the frame, its dose or the study
                log.exception("stage %s failed on frame %d", stage.name, frame.index)
                failed.append(stage.name)
        state.contrast_state = event["contrast"]["state"]
        totals = state.dose.totals
        event["dose"] = {"air_kerma_mgy": totals.air_kerma_mgy, "dap_gycm2": totals.dap_gycm2,
                         "fluoro_time_s": round(totals.fluoro_time_s, 6)}
        latency_ms = (time.perf_counter() - t0) * 1000.0
        event["degraded"] = bool(skipped or failed) or latency_ms > self.settings.latency_budget_ms
        if skipped:
            event["skipped_stages"] = skipped
        if failed:
            event["failed_stages"] = failed
        if alerts:
            event["alerts"] = alerts
            state.alerts.extend(alerts)
        event["latency_ms"] = round(latency_ms, 4)
        state.latencies_ms.append(latency_ms)
        state.degraded_frames += event["degraded"]
        state.frames += 1
        return event


def latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    """p50/p95/p99/max of per-frame latencies in ms."""
    if not latencies_ms:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    values = np.asarray(latencies_ms)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 4), "p95": round(float(p95), 4), "p99": round(float(p99), 4),
            "max": round(float(values.max()), 4)}


_END = object()


def prefetch(frames: Iterator[Frame], capacity: int) -> Iterator[Frame]:
    """Decode frames on a reader thread into a bounded queue, so decoding overlaps processing.

    Offline replay blocks the reader when the queue is full (nothing is dropped). An exception
    in the reader is re-raised in the consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=capacity)
    stop = threading.Event()

    def produce():
        try:
            for item in frames:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    reader = threading.Thread(target=produce, name="sifluoro-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)
