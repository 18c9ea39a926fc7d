"""The per-frame pipeline: dose first (never skipped), then image stages within a budget.

Stages are plain objects with ``name`` and ``process(frame, state) -> dict`` returning the
event fields they own (``{"needle": {...}}``). The pipeline owns the study state, the timing and
the deadline; stages know nothing of DICOM files or of each other's internals.
"""
from __future__ import annotations

import bisect
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
from pydicom.uid import UID

from sifluoro import imaging
from sifluoro.config import Settings
from sifluoro.dose.accumulate import DoseAccumulator
from sifluoro.errors import InputError
from sifluoro.model import Device, Frame, Run, Technique

log = logging.getLogger(__name__)


class Stage(Protocol):
    """An image stage. ``process`` returns the event fields it owns, and may return
    ``"alerts": [{"kind", "message", "index", "t_s", ...}]`` to raise alerts.

    A stage may declare ``reads``: the names of the stages whose results it uses (through
    ``state.stage_state``). Without it, it is taken to read every earlier stage; with it, it
    may run beside the stages it does not read (``Settings.stage_threads``), and, when last and
    read by none, one frame behind them (:meth:`Pipeline.process_frames`). A stage keeps its
    memory in ``state.stage_state[name]``, and does not change in place what it published for
    a frame (a stage one frame behind may still read it).

    A stage whose usual work differs from frame to frame in kind (the needle: followed in its
    box, or the field searched) may have ``work_kind(frame, state) -> str | None``, the kind
    ``process`` would do on this frame (called before the frame's stages run); the deadline
    planner then learns and predicts the cost of each kind apart (:class:`StageCosts` mode
    ``process:<kind>``)."""

    name: str

    def process(self, frame: Frame, state: "StudyState") -> dict[str, Any]: ...


@dataclass(frozen=True)
class Degradation:
    """One step of the deadline policy: the stage ``stage`` runs ``method`` instead of
    ``process`` (``method=None``: it does not run), and the event lists ``step``. With
    ``skips``, ``method`` only keeps the stage's memory up to date and its update is skipped:
    the frame counts towards ``Settings.max_skipped_frames`` and the event lists the stage in
    ``skipped_stages`` (a stage without ``method`` is then not run at all)."""

    stage: str
    method: str | None
    step: str
    skips: bool = False


#: The deadline policy's steps, in the order they are taken (see :class:`Pipeline`). A frame
#: whose contrast update is skipped still joins the contrast stage's recent frames, so that a
#: vessel which came and went around it is still seen on the next frame.
DEGRADATION_ORDER: tuple[Degradation, ...] = (
    Degradation("contrast", "process_remember", "contrast_skipped", skips=True),
    Degradation("needle", "process_roi", "needle_roi"),
    Degradation("register", "process_reuse", "joint_reused"),
)

FULL = "process"  # the mode of a stage that runs as usual
_SKIP = "skip"


@dataclass
class StudyState:
    """Everything the pipeline carries from one frame of a study to the next."""

    study_instance_uid: str
    dose: DoseAccumulator
    contrast_state: str = "none"
    contrast_confidence: float = 0.0  # of the last contrast update (carried over when skipped)
    #: the study's contrast state: the last frame's, or in a bilateral study the most
    #: dangerous any side's injection showed (the frames show their side's)
    contrast_study_state: str = "none"
    stage_state: dict[str, Any] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    degraded_frames: int = 0
    dropped_image_frames: int = 0  # live sources: frames whose image work was dropped
    frames: int = 0
    alerts: list[dict] = field(default_factory=list)
    stage_names: tuple[str, ...] = ()  # the image stages that assess this study
    skipped_in_a_row: dict[str, int] = field(default_factory=dict)  # frames, per stage
    no_picture_frames: int = 0
    no_picture_run: Run | None = None  # the run of the last frame without a picture (log once)
    #: runs the image stages read on an assumption (each logged once): "polarity" (bone taken
    #: as bright: no PixelIntensityRelationshipSign, no LIN/LOG relationship), "pixel_spacing"
    #: (none, or pixels not square: no distance in mm, the stages assume a scale)
    assumed_runs: dict[str, int] = field(default_factory=lambda: {"polarity": 0, "pixel_spacing": 0})
    checked_runs: set[str] = field(default_factory=set)
    #: runs of pixels that are not square as the image stages see them (no scale), by UID
    unscaled_runs: dict[str, Run] = field(default_factory=dict)
    #: single-frame instances that continue one another (:func:`continues`): the image stages
    #: see them as frames of the first one's run (the lead), so their memories carry over
    chain: "_Chain | None" = None


@dataclass
class _Chain:
    lead: Run
    last: Run
    frames: int


@dataclass(frozen=True)
class Arrival:
    """A frame's dose, accounted when the frame arrived (before any image work).

    Attributes
    ----------
    t_s : float
        Pipeline clock at arrival; a frame's latency runs from here.
    dose : dict
        Cumulative ``air_kerma_mgy``, ``dap_gycm2``, ``fluoro_time_s`` including this frame.
    alerts : tuple of dict
        Dose alerts this frame raised.
    """

    t_s: float
    dose: dict[str, float]
    alerts: tuple[dict, ...]


class StageCosts:
    """Recent cost of every stage, per mode and frame shape, for planning a frame's work.

    The last ``window`` costs of each (stage, mode, shape) are kept, and the estimate is their
    median: the common frame's cost. A run's first frames cost several times more (a new
    field or view is segmented) and are not counted here (the pipeline files them under
    ``<mode>@run_start``): with runs of 3-12 frames they would make the planner degrade every
    frame to spare those few, which go over the budget instead (marked ``degraded``;
    ``Settings.run_start_frames``). An estimate from
    fewer than ``min_samples`` costs, or of a mode not measured during the last
    ``stale_frames`` frames of its shape, is unknown: the planner then lets the stage run as
    usual, which measures it again (the machine may have become less busy; a needle is
    detected afresh). Safe to share between threads.
    """

    def __init__(self, *, window: int = 32, min_samples: int = 3, stale_frames: int = 16):
        self.window = window
        self.min_samples = min_samples
        self.stale_frames = stale_frames
        self._lock = threading.Lock()
        self._samples: dict[tuple, deque] = {}  # in arrival order
        self._ordered: dict[tuple, list[float]] = {}  # the same, sorted
        self._quantiles: dict[tuple, tuple[float, float, float]] = {}  # p50, p75, p90
        self._measured_at: dict[tuple, int] = {}
        self._frames: dict[tuple, int] = {}

    def new_frame(self, shape: tuple[int, ...]) -> None:
        with self._lock:
            self._frames[shape] = self._frames.get(shape, 0) + 1

    def add(self, stage: str, mode: str, shape: tuple[int, ...], cost_ms: float) -> None:
        key = (stage, mode, shape)
        with self._lock:
            samples = self._samples.get(key)
            if samples is None:
                samples = self._samples[key] = deque(maxlen=self.window)
                self._ordered[key] = []
            ordered = self._ordered[key]  # the window's costs kept sorted (not sorted anew)
            if len(samples) == self.window:
                del ordered[bisect.bisect_left(ordered, samples[0])]
            samples.append(cost_ms)
            bisect.insort(ordered, cost_ms)
            n = len(ordered)  # nearest-rank quantiles
            self._quantiles[key] = (ordered[max(0, math.ceil(0.5 * n) - 1)],
                                    ordered[max(0, math.ceil(0.75 * n) - 1)],
                                    ordered[max(0, math.ceil(0.9 * n) - 1)])
            self._measured_at[key] = self._frames.get(shape, 0)

    def estimate_ms(self, stage: str, mode: str, shape: tuple[int, ...]) -> float | None:
        """The planning estimate (p50) in ms, or None when unknown or stale."""
        key = (stage, mode, shape)
        with self._lock:
            found = self._quantiles.get(key)
            if (found is None or len(self._samples[key]) < self.min_samples
                    or self._frames.get(shape, 0) - self._measured_at[key] > self.stale_frames):
                return None
            return found[0]

    def snapshot(self) -> dict[str, dict[str, float]]:
        """``{"stage/mode/ROWSxCOLS": {"p50_ms", "p75_ms", "p90_ms", "n"}}`` of what is known
        (mode: the method that ran, ``process`` when not degraded)."""
        with self._lock:
            return {f"{s}/{m}/{'x'.join(map(str, shape))}":
                    {"p50_ms": round(q[0], 4), "p75_ms": round(q[1], 4), "p90_ms": round(q[2], 4),
                     "n": len(self._samples[(s, m, shape)])}
                    for (s, m, shape), q in sorted(self._quantiles.items())}


class Pipeline:
    """Runs the stages over frames of one study at a time.

    Deadline policy
    ---------------
    Dose is accounted first on every frame and is never skipped. The image stages then share
    what is left of ``settings.latency_budget_ms`` (counted from the frame's arrival). Before
    they run, the frame's work is planned from the stages' recent costs (:class:`StageCosts`,
    median per stage, mode and frame shape); when the plan does not fit, it is degraded in this
    order, one step at a time, until it fits:

    1. ``contrast_skipped``: the contrast update is skipped; the contrast state and
       confidence carry over from the last update. The frame only joins the stage's recent
       frames (``ContrastStage.process_remember``, about 0.7 ms at 1024²), and the next
       frame runs the vessel test it owes beside its own (so that frame costs a second test):
       a vessel that came and went around a skipped frame is still seen. The stage is listed
       in ``skipped_stages``;
    2. ``needle_roi``: the needle stage only follows the last tip in a small region around it
       (``NeedleStage.process_roi``; with no tip to follow it declines and the field is
       searched, and so it does when a search is due: ``NeedleSettings.max_deferred_searches``).
       The needle's usual work is costed by kind (box or field search,
       ``NeedleStage.work_kind``), so that a frame that follows the needle in its box is
       planned at the box's cost;
    3. ``joint_reused``: the register stage moves the current view's joint line and target by
       the frame's registration, without averaging or segmenting
       (``JointStage.process_reuse``).

    A stage whose step is to be skipped (contrast), skipped on ``settings.max_skipped_frames``
    frames in a row, is not skipped on the next: the plan goes on to the later steps instead,
    and the frame may go over budget (so contrast is assessed at least every other frame by
    default).

    Steps whose stage is not in the pipeline are absent from the plan. A degraded method may
    decline (return None: nothing to reuse, e.g. a new view); the stage then runs as usual
    and the step is not listed. Should the budget be spent anyway when a stage's turn comes,
    that stage takes its step at once, and a stage without a step is skipped (listed in
    ``skipped_stages``). The event is then marked ``degraded`` with ``degraded_steps`` (in the
    order above); a frame over budget, or with a stage that raised (logged, listed in
    ``failed_stages``), is ``degraded`` too.

    With ``settings.stage_threads`` above 1, stages that declare ``reads`` and do not read
    each other (needle and contrast, which both read register) run at the same time as one
    wave (the first on the calling thread, the others on worker threads); a wave is planned as
    a whole before it runs and costs its dearest stage. Their fields are merged in stage
    order, so the events are those of one thread.

    Frames are planned only once their shape has been prepared (:meth:`prepare_run` or
    :meth:`prepare_stages`): before the warm-up a stage's cost includes compilation and
    allocation, which would mislead the plan; such frames only have the budget-spent rule.

    Parameters
    ----------
    stages : sequence of Stage
        Image stages in the order they run.
    settings : Settings
    clock : callable, optional
        Monotonic time in seconds (``time.perf_counter``); tests pass a simulated clock.
    """

    def __init__(self, stages: Iterable[Stage] = (), settings: Settings | None = None, *,
                 clock: Callable[[], float] = time.perf_counter):
        self.stages = list(stages)
        self.settings = settings or Settings()
        self.costs = StageCosts()
        self._clock = clock
        self._warmed: set[tuple] = set()
        self._planned_shapes: set[tuple[int, int]] = set()  # warmed up: costs mean something
        self._warm_lock = threading.Lock()
        names = {stage.name: stage for stage in self.stages}
        # the policy's steps this pipeline can take, in order
        self._steps = tuple(d for d in (_available(d, names) for d in DEGRADATION_ORDER)
                            if d is not None)
        self._step_of = {d.stage: d for d in self._steps}
        self._stage_order = {stage.name: k for k, stage in enumerate(self.stages)}
        # (stage, method) of the stages that keep a skipped frame in their memory
        self._remembering = [(names[d.stage], d.method) for d in self._steps
                             if d.skips and d.method is not None]
        # one stage a wave unless there are threads to share: a wave's stages are planned
        # together, before any of them runs
        self._waves = (_waves(self.stages) if self.settings.stage_threads > 1
                       else [[stage] for stage in self.stages])
        self._executor = None
        if any(len(w) > 1 for w in self._waves):
            self._executor = ThreadPoolExecutor(self.settings.stage_threads - 1,
                                                thread_name_prefix="sifluoro-stage")

    def close(self) -> None:
        """Stop the stage threads (its owner is done with it; review s22 F12: each engine
        closed left them until garbage-collected)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
            self._waves = [[stage] for stage in self.stages]

    def warm_up(self, run) -> None:
        """Compile and size every stage on a frame of the run's real shape, dtype and spacing
        before the first live frame (stages without ``warm_up(frame)`` need none)."""
        if run.frames_refused or min(run.rows, run.columns) < MIN_IMAGE_PX:
            return  # no frame of it reaches a stage (a header's size is no reason to
            # allocate, review s22 F4)
        rng = np.random.default_rng(0)
        top = (1 << run.bits_stored) - 1
        pixels = rng.integers(int(0.4 * top), int(0.6 * top) + 1, (run.rows, run.columns),
                              dtype=np.uint16)
        pixels.flags.writeable = False
        frame = Frame(pixels=pixels, index=0, frame_number=1, t_s=0.0, run=run)
        imaging.warm_up()
        for stage in self.stages:
            warm = getattr(stage, "warm_up", None)
            if warm is None:
                continue
            try:
                warm(frame)
            except Exception:  # the stage fails on its frames too (logged there): dose goes on
                log.exception("stage %s: warm-up failed on a %dx%d frame at %s mm", stage.name,
                              run.columns, run.rows, run.pixel_spacing_xy_mm)

    def load_kernels(self) -> None:
        """Load every stage's compiled kernels on a small frame (64 x 64 at 0.5 mm) before a
        live source is opened: a frame grabber is not read while its first size's warm-up
        runs, and loading the kernels was most of that time (the pulses of those frames were
        lost from the dose). The source's own size is warmed after it opens
        (:meth:`prepare_stages`): 41 ms at 1024² on a quiet machine, 327 ms before."""
        tech = Technique(imager_pixel_spacing_xy_mm=(0.5, 0.5), frame_time_ms=66.7)
        run = Run(path="(kernels)", sop_instance_uid="1.2", sop_class_uid="", series_instance_uid="",
                  study_instance_uid="1.2", modality="XA", transfer_syntax_uid="", rows=64,
                  columns=64, bits_stored=12, photometric="MONOCHROME2", start_s=0.0,
                  frame_offsets_s=(0.0,), frame_intervals_ms=(66.7,), technique=tech,
                  device=Device())
        imaging.warm_up()
        self.warm_up(run)

    def start_study(self, study_instance_uid: str) -> StudyState:
        return StudyState(study_instance_uid, DoseAccumulator(self.settings.dose),
                          stage_names=tuple(stage.name for stage in self.stages))

    def prepare_run(self, run, state: StudyState) -> None:
        """Run-level work done when a run is announced (its header is known), so that its first
        frame does not pay for it: the dose model, and the stages' warm-up for a frame shape not
        seen before. A run never announced is prepared on its first frame."""
        state.dose.prepare(run)
        self.prepare_stages(run)

    def prepare_stages(self, run) -> float:
        """The stages' warm-up for the run's frame shape, once per shape and spacing; return
        the milliseconds it took (0 when the shape was warm already)."""
        key = (run.rows, run.columns, run.bits_stored, run.pixel_spacing_xy_mm)
        with self._warm_lock:
            if key in self._warmed:
                return 0.0
            t0 = time.perf_counter()
            self.warm_up(run if square_pixels(run) else without_scale(run))
            self._warmed.add(key)
            self._planned_shapes.add((run.rows, run.columns))
            return (time.perf_counter() - t0) * 1000.0

    def prepare_stages_on_live_frame(self, run) -> None:
        """:meth:`prepare_stages` for a run whose first frame is already here (it was never
        announced): the frame's latency pays for the warm-up, so say so once per shape."""
        warm_ms = self.prepare_stages(run)
        if warm_ms:
            log.warning("a %dx%d run arrived unannounced: the stages' warm-up ran on its first "
                        "frame and took %.0f ms; announce runs before their frames (Engine."
                        "prepare) so that no live frame pays for it", run.columns, run.rows,
                        warm_ms)

    def process(self, frame: Frame, state: StudyState) -> dict[str, Any]:
        """Process one frame; return its event (docs/contract.md §3)."""
        return self.process_arrived(frame, state, self.account(frame, state))

    def account(self, frame: Frame, state: StudyState) -> Arrival:
        """Count the frame's dose now (on arrival); its image work may come later or never.
        A frame whose pixels the stages cannot take raises InputError (:func:`check_pixels`)."""
        check_pixels(frame, "Pipeline")
        t_s = self._clock()
        alerts = tuple(a.as_dict() for a in state.dose.add(frame))
        return Arrival(t_s, state.dose.shown(), alerts)

    def process_arrived(self, frame: Frame, state: StudyState, arrival: Arrival) -> dict[str, Any]:
        """The image work of a frame whose dose :meth:`account` counted; return its event."""
        image = self._seen_by_stages(frame, state)
        if self.stages and not _shows_picture(frame):
            return self._no_picture_event(frame, state, arrival)
        clock, costs = self._clock, self.costs
        budget_ms = self.settings.latency_budget_ms
        shape = frame.pixels.shape
        planned = shape in self._planned_shapes
        steady = image.frame_number > self.settings.run_start_frames
        if planned:
            costs.new_frame(shape)
        t_plan = clock()
        due = {d.stage for d in self._steps if (d.method is None or d.skips)
               and state.skipped_in_a_row.get(d.stage, 0) >= self.settings.max_skipped_frames}
        # a stage whose update was skipped on the previous frame may owe work (the contrast
        # stage's vessel test): its cost is learnt apart, so as not to inflate the usual one
        after_skip = {d.stage for d in self._steps if d.skips and d.method is not None
                      and state.skipped_in_a_row.get(d.stage, 0) > 0}
        kinds = ({stage.name: _work_kind(stage, image, state) for stage in self.stages}
                 if planned else {})
        modes = (self._plan(shape, budget_ms - (t_plan - arrival.t_s) * 1000.0, due, after_skip,
                            kinds) if planned else {})
        event = _base_event(frame, state)
        alerts = list(arrival.alerts)
        skipped, failed, steps = [], [], set()
        stage_ms = 0.0
        for wave in self._waves:
            t_wave = clock()
            runs = []
            for stage in wave:
                mode = modes.get(stage.name, FULL)
                if mode == FULL and (clock() - arrival.t_s) * 1000.0 > budget_ms:
                    step = self._step_of.get(stage.name)  # the budget is spent: cheapest at once
                    if step is not None and step.method is not None:
                        if not (step.skips and stage.name in due):
                            mode = step.method
                    elif stage.name not in due:
                        mode = _SKIP
                if mode == _SKIP:
                    skipped.append(stage.name)
                    if stage.name in self._step_of:
                        steps.add(self._step_of[stage.name].step)
                else:
                    runs.append((stage, mode))
            if len(runs) > 1 and self._executor is not None:
                # the others on the worker threads, the first here; merged in stage order
                futures = [self._executor.submit(self._run_stage, s, m, image, state)
                           for s, m in runs[1:]]
                outcomes = [self._run_stage(*runs[0], image, state)] + [f.result() for f in futures]
            else:
                outcomes = [self._run_stage(s, m, image, state) for s, m in runs]
            stage_ms += (clock() - t_wave) * 1000.0
            for (stage, asked), (mode, fields, cost_ms) in zip(runs, outcomes):
                if fields is None:
                    failed.append(stage.name)
                else:
                    if mode != FULL:
                        step = self._step_of[stage.name]
                        steps.add(step.step)
                        if step.skips:
                            skipped.append(stage.name)
                    alerts.extend(fields.pop("alerts", ()))  # a stage's alerts join the dose alerts
                    event.update(fields)
                if planned:
                    kind = kinds[stage.name]
                    key = f"{mode}{kind}" if steady else f"{mode}{kind}@run_start"
                    if mode == FULL and stage.name in after_skip:
                        key = f"{mode}{kind}@after_skip"
                    costs.add(stage.name, key, shape, cost_ms)
                    if asked != mode and steady:
                        # the step declined (the stage ran as usual): what taking it costs on
                        # such frames, so that the plan stops counting on it
                        costs.add(stage.name, f"{asked}{kind}", shape, cost_ms)
        t_end = self._close(frame, event, state, arrival, skipped, failed, steps)
        if planned:
            costs.add("pipeline", "overhead", shape, (t_end - t_plan) * 1000.0 - stage_ms)
        return self._finish(event, state, alerts, (t_end - arrival.t_s) * 1000.0)

    def _close(self, frame: Frame, event: dict, state: StudyState, arrival: Arrival,
               skipped: list, failed: list, steps: set, t_end: float | None = None) -> float:
        """Carry the frame's outcome into ``state`` and mark its event (dose, ``degraded``,
        what was skipped or failed; no mm without a pixel spacing, :func:`_without_scale`);
        return the end of its image work (``t_end``, else the clock now)."""
        if frame.pixel_spacing_xy_mm is None or not square_pixels(frame.run):
            _without_scale(event)
        event["tip_to_target_mm_iso"] = at_isocenter_mm(event.get("tip_to_target_mm"),
                                                        frame.technique)
        for stage in self.stages:
            state.skipped_in_a_row[stage.name] = (state.skipped_in_a_row.get(stage.name, 0) + 1
                                                  if stage.name in skipped else 0)
        contrast = event["contrast"]
        state.contrast_state = contrast["state"]
        state.contrast_confidence = contrast.get("confidence", 0.0)
        if "contrast" not in skipped and "contrast" not in failed:  # else carried over
            state.contrast_study_state = contrast.get("study_state", contrast["state"])
        event["dose"] = dict(arrival.dose)
        ordered_steps = [d.step for d in self._steps if d.step in steps]
        if t_end is None:
            t_end = self._clock()
        latency_ms = (t_end - arrival.t_s) * 1000.0
        event["degraded"] = (bool(skipped or failed or ordered_steps)
                             or latency_ms > self.settings.latency_budget_ms)
        if ordered_steps:
            event["degraded_steps"] = ordered_steps
        if skipped:
            event["skipped_stages"] = sorted(skipped, key=self._stage_order.__getitem__)
        if failed:
            event["failed_stages"] = failed
        return t_end

    def process_frames(self, frames: Iterable[Frame], state: StudyState
                       ) -> Iterator[tuple[Frame, dict[str, Any]]]:
        """``(frame, event)`` of each of ``frames``, in order (offline replay).

        Without a deadline (``latency_budget_ms`` infinite), with ``stage_threads`` above 1 and
        stages that allow it (:meth:`_overlappable`; contrast last, after register and needle),
        consecutive frames overlap: the last stage of frame n runs on a worker thread while the
        earlier stages of frame n+1 run here, one after the other. On two cores this pays when
        the last stage costs about as much as the others together, as contrast does. The last
        stage sees ``stage_state`` as its frame's earlier stages left it (a shallow copy; the
        shared attenuation image alternates between two buffers, so the next frame does not
        overwrite its frame's), except its own entry ``stage_state[name]`` (its memory), which
        is the study's. The events are those of :meth:`process` one frame at a time, except
        ``latency_ms``: from arrival to the end of the frame's last stage, which includes
        waiting for the previous frame's. Otherwise each frame is :meth:`process`-ed in turn.

        A frame source that raises ends the stream after the events of every frame it gave; a
        consumer that stops early leaves the last frame taken (its dose and the stages' memories
        counted) without an event.
        """
        if not (self._overlappable() and math.isinf(self.settings.latency_budget_ms)
                and self.settings.stage_threads > 1):
            for frame in frames:
                yield frame, self.process(frame, state)
            return
        front, last = self.stages[:-1], self.stages[-1]
        frames = iter(frames)
        pending = spare = None
        with ThreadPoolExecutor(1, thread_name_prefix="sifluoro-overlap") as worker:
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except BaseException:
                    if pending is not None:
                        yield pending[0], self._overlapped_event(state, *pending)
                    raise
                arrival = self.account(frame, state)
                image = self._seen_by_stages(frame, state)
                if not _shows_picture(frame):
                    if pending is not None:
                        yield pending[0], self._overlapped_event(state, *pending)
                        pending = None
                    yield frame, self._no_picture_event(frame, state, arrival)
                    continue
                done = [(stage.name, self._run_stage(stage, FULL, image, state)[1])
                        for stage in front]
                t_front = self._clock()
                view = _FrameView(state, last.name)
                spare = imaging.swap_attenuation_buffer(state.stage_state, spare)
                later = worker.submit(self._run_behind, last, image, view)
                if pending is not None:
                    yield pending[0], self._overlapped_event(state, *pending)
                pending = (frame, arrival, done, t_front, last.name, later)
            if pending is not None:
                yield pending[0], self._overlapped_event(state, *pending)

    def _seen_by_stages(self, frame: Frame, state: StudyState) -> Frame:
        """The frame as the image stages see it (:func:`_as_seen_by_stages`; a run of pixels
        that are not square without its scale, :func:`square_pixels`), the assumptions about
        its run said once per run the stages see."""
        if not self.stages:
            return frame
        image = _as_seen_by_stages(frame, state)
        if image.run.sop_instance_uid not in state.checked_runs:
            _check_assumptions(image.run, state)
        if not square_pixels(image.run):
            uid = image.run.sop_instance_uid
            if uid not in state.unscaled_runs:  # one object a run: the stages key memories on it
                state.unscaled_runs[uid] = without_scale(image.run)
            image = replace(image, run=state.unscaled_runs[uid])
        return image

    def _overlappable(self) -> bool:
        """The last stage may run one frame behind the others: every stage declares what it
        reads (a stage that does not may read anything), and none before the last reads it."""
        if len(self.stages) < 2 or any(getattr(s, "reads", None) is None for s in self.stages):
            return False
        last = self.stages[-1].name
        return all(last not in s.reads for s in self.stages[:-1])

    def _run_behind(self, stage: Stage, frame: Frame, view: "_FrameView"
                    ) -> tuple[dict[str, Any] | None, float]:
        """The last stage on its frame (worker thread): its fields and the clock at its end."""
        return self._run_stage(stage, FULL, frame, view)[1], self._clock()

    def _overlapped_event(self, state: StudyState, frame: Frame, arrival: Arrival,
                          done: list[tuple[str, dict | None]], t_front: float, last_name: str,
                          later: Future) -> dict[str, Any]:
        """The event of an overlapped frame once its last stage is done (``later``): fields
        merged in stage order, the state carried, as :meth:`process_arrived` does."""
        fields_last, t_last = later.result()
        event = _base_event(frame, state)
        alerts = list(arrival.alerts)
        failed = []
        for name, fields in done + [(last_name, fields_last)]:
            if fields is None:
                failed.append(name)
                continue
            alerts.extend(fields.pop("alerts", ()))
            event.update(fields)
        t_end = max(t_front, t_last)
        self._close(frame, event, state, arrival, [], failed, set(), t_end)
        return self._finish(event, state, alerts, (t_end - arrival.t_s) * 1000.0)

    def _run_stage(self, stage: Stage, mode: str, frame: Frame, state: StudyState
                   ) -> tuple[str, dict[str, Any] | None, float]:
        """Run one stage in ``mode``; return the mode it ran in, its fields (None: it raised,
        logged) and its cost in ms."""
        clock = self._clock
        t0 = clock()
        try:
            fields = getattr(stage, mode)(frame, state)
            if mode != FULL and fields is None:  # declined: nothing to reuse, runs as usual
                mode = FULL
                fields = stage.process(frame, state)
        except Exception:  # a stage's defect must not lose the frame, its dose or the study
            log.exception("stage %s failed on frame %d", stage.name, frame.index)
            fields = None
        return mode, fields, (clock() - t0) * 1000.0

    def dropped_event(self, frame: "Frame | DroppedFrame", state: StudyState,
                      arrival: Arrival) -> dict[str, Any]:
        """The event of a frame whose image work was dropped (live queue backed up): its dose,
        no image fields (``needle``/``joint``/``target`` null, contrast carried over),
        ``"dropped": true`` and every stage in ``skipped_stages``.

        A dropped frame whose pixels were kept (a :class:`Frame`) still joins the memory of
        the stages the deadline may skip (``ContrastStage.process_remember``): a vessel that
        came and went on it is tested on the next frame. A stage that took it counts it as
        skipped, so under a deadline the next frame runs that stage in full (and its cost is
        learnt as the one after a skip); one that declined (it already owes a test) does not."""
        if isinstance(frame, Frame) and self._remembering and _shows_picture(frame):
            image = self._seen_by_stages(frame, state)
            for stage, method in self._remembering:
                try:
                    took = getattr(stage, method)(image, state) is not None
                except Exception:  # as in process: the frame's dose and the study go on
                    log.exception("stage %s failed on dropped frame %d", stage.name, frame.index)
                    took = False
                if took:
                    state.skipped_in_a_row[stage.name] = (
                        state.skipped_in_a_row.get(stage.name, 0) + 1)
        return self._unanalysed_event(frame, state, arrival, "dropped")

    def _no_picture_event(self, frame: Frame, state: StudyState, arrival: Arrival
                          ) -> dict[str, Any]:
        """The event of a frame that shows no picture (:func:`_shows_picture`): its dose, no
        image fields (contrast carried over), ``"no_picture": true``, every stage skipped. No
        stage sees it: to the contrast stage every edge of the run washed out on it (a false
        vascular alert), and registration would lose the view."""
        if frame.run is not state.no_picture_run:
            # once per run: a grabber without signal gives 30 of these a second
            rows, cols = frame.pixels.shape
            why = (f"{rows}x{cols} pixels, fewer than {MIN_IMAGE_PX} a side"
                   if min(rows, cols) < MIN_IMAGE_PX else "flat or saturated")
            log.warning("frame %d shows no picture (%s): not analysed; further such frames of "
                        "this run are counted in summary.no_picture_frames", frame.index, why)
        state.no_picture_frames += 1
        state.no_picture_run = frame.run
        return self._unanalysed_event(frame, state, arrival, "no_picture")

    def _unanalysed_event(self, frame: "Frame | DroppedFrame", state: StudyState,
                          arrival: Arrival, why: str) -> dict[str, Any]:
        """The event of a frame no image stage analysed: its dose, ``degraded``, ``why``
        (``"dropped"``, ``"no_picture"``) true and every stage in ``skipped_stages``."""
        event = _base_event(frame, state)
        event["dose"] = dict(arrival.dose)
        event["degraded"] = True
        event[why] = True
        if self.stages:
            event["skipped_stages"] = [stage.name for stage in self.stages]
        latency_ms = (self._clock() - arrival.t_s) * 1000.0
        return self._finish(event, state, list(arrival.alerts), latency_ms)

    def stage_costs(self) -> dict[str, dict[str, float]]:
        """What the planner knows: p50/p90 cost per stage, mode and frame shape."""
        return self.costs.snapshot()

    def _plan(self, shape: tuple[int, ...], remaining_ms: float, due: set[str] = frozenset(),
              after_skip: set[str] = frozenset(), kinds: dict[str, str] | None = None
              ) -> dict[str, str]:
        """The fewest steps of the policy, in order, whose predicted cost fits ``remaining_ms``
        (an unknown cost counts as zero, so that the stage runs and is measured); the stages
        in ``due`` are not skipped, and a step that saves nothing (its stage shares a wave with
        a dearer one) is passed over until a later step makes it count. A stage's costs are
        those of the kind of work it has on this frame (``kinds``: ``:<kind>``, see
        :class:`Stage`, or ``""``): ``process:<kind>``, ``<step method>:<kind>``; the stages
        in ``after_skip`` are costed as after a skipped update (``<mode>@after_skip``, the
        usual cost until that is known)."""
        costs = self.costs
        kinds = kinds or {}
        remaining_ms -= costs.estimate_ms("pipeline", "overhead", shape) or 0.0
        cost = {}
        for s in self.stages:
            mode = f"{FULL}{kinds.get(s.name, '')}"
            cost[s.name] = ((costs.estimate_ms(s.name, f"{mode}@after_skip", shape)
                             if s.name in after_skip else None)
                            or costs.estimate_ms(s.name, mode, shape) or 0.0)

        def predicted() -> float:  # a wave costs its dearest stage
            return sum(max(cost[s.name] for s in wave) for wave in self._waves)

        modes: dict[str, str] = {}
        # the earliest step of the order that saves time, again and again until the plan fits; a
        # step that saves nothing (another stage of its wave costs more) is not taken
        while predicted() > remaining_ms:
            for d in self._steps:
                if d.stage in modes or ((d.method is None or d.skips) and d.stage in due):
                    continue
                before, full = predicted(), cost[d.stage]
                cost[d.stage] = (0.0 if d.method is None else costs.estimate_ms(
                    d.stage, f"{d.method}{kinds.get(d.stage, '')}", shape) or 0.0)
                if predicted() < before:
                    modes[d.stage] = d.method or _SKIP
                    break
                cost[d.stage] = full
            else:
                break  # no step saves anything more
        return modes

    @staticmethod
    def _finish(event: dict, state: StudyState, alerts: list, latency_ms: float) -> dict[str, Any]:
        if alerts:
            event["alerts"] = alerts
            state.alerts.extend(alerts)
        event["latency_ms"] = round(latency_ms, 4)
        state.latencies_ms.append(latency_ms)
        state.degraded_frames += event["degraded"]
        state.frames += 1
        return event


#: a frame with fewer steps of picture than this (:func:`imaging.picture_steps`) is flat: a
#: grabber's "no signal" black, a frame stuck at one value, a saturated one
NO_PICTURE_STEPS = 16
#: nor has one with fewer rows or columns than this: no joint, needle or contrast cloud fits,
#: and the stages' working grids would have no rows (a 2x1024 run corrupted the heap in the
#: contrast kernels and aborted the whole replay, review s25 r5)
MIN_IMAGE_PX = 32


#: row and column spacings further apart than this share of the larger are not square pixels
SQUARE_PIXELS_TOLERANCE = 0.01


#: the longest pause between single-frame instances that still continue one another (s)
CHAIN_GAP_S = 2.0
#: the largest change of a C-arm angle between them (degrees)
CHAIN_ANGLE_DEG = 1.0


def continues(previous: Run, run: Run, lead: Run | None = None) -> bool:
    """Whether single-frame instance ``run`` continues ``previous`` (in a chain that began with
    ``lead``, default ``previous``): a device that stores fluoroscopy one frame per file (each
    file a run) would otherwise give the image stages a new run on every frame (a new
    segmentation, no contrast reference: contrast never classified). Same series, frame type
    and scale as ``previous`` and at most :data:`CHAIN_GAP_S` after it; the collimation and
    angles of ``lead`` (a slow turn is a new view once it passes :data:`CHAIN_ANGLE_DEG`)."""
    lead = lead or previous
    if previous is run or previous.n_frames != 1 or run.n_frames != 1:
        return False
    if not run.series_instance_uid or run.series_instance_uid != previous.series_instance_uid:
        return False
    same = ("rows", "columns", "bits_stored", "photometric", "modality_lut_inverts",
            "pixel_intensity_sign", "pixel_intensity_relationship", "pixel_spacing_xy_mm")
    if any(getattr(run, k) != getattr(previous, k) for k in same):
        return False
    a, b = lead.technique, run.technique
    if a.shutter != b.shutter:
        return False
    for x, y in ((a.primary_angle_deg, b.primary_angle_deg), (a.secondary_angle_deg, b.secondary_angle_deg)):
        if (x is None) != (y is None) or (x is not None and abs(x - y) > CHAIN_ANGLE_DEG):
            return False
    return 0.0 <= run.start_s - previous.start_s <= CHAIN_GAP_S


def _as_seen_by_stages(frame: Frame, state: StudyState) -> Frame:
    """``frame`` as the image stages see it: a single-frame instance that :func:`continues`
    the previous one is a further frame of the chain's first run. Its dose and event are its
    own."""
    chain = state.chain
    if chain is not None and continues(chain.last, frame.run, chain.lead):
        chain.last, chain.frames = frame.run, chain.frames + 1
        return replace(frame, run=chain.lead, frame_number=chain.frames)
    if chain is None or chain.last is not frame.run:
        state.chain = _Chain(frame.run, frame.run, 1) if frame.run.n_frames == 1 else None
    return frame


def check_pixels(frame: Frame, where: str) -> None:
    """Raise InputError unless ``frame``'s pixels are a 2-D array of unsigned integers of up to
    16 bits of its run's Rows x Columns: the stages' buffers of a run are of its size (a
    600x700 frame fed to a 512x512 run read past them: SIGSEGV, review s25 r4); a new picture
    size is a new Run."""
    pixels, run = frame.pixels, frame.run
    tag = "(7FE0,0010) PixelData"
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 2:
        raise InputError(f"{where}: a frame's pixels are one grey image, a 2-D array of (rows, "
                         f"columns); got {type(pixels).__name__} of shape "
                         f"{getattr(pixels, 'shape', None)} (convert a colour capture to grey "
                         "first)", path=run.path, tag=tag)
    if pixels.shape != (run.rows, run.columns):
        raise InputError(f"{where}: a frame of {pixels.shape[0]}x{pixels.shape[1]} pixels (rows x "
                         f"columns) in a run of {run.rows}x{run.columns}: a new picture size is a "
                         "new Run (another sop_instance_uid)", path=run.path, tag="(0028,0010) Rows")
    if pixels.dtype.kind != "u" or pixels.dtype.itemsize > 2:
        raise InputError(f"{where}: a frame's pixels are unsigned integers of up to 16 bits, as "
                         f"stored; got {pixels.dtype}", path=run.path, tag=tag)


def stored_pixels(frame: Frame, where: str) -> Frame:
    """``frame`` (checked, :func:`check_pixels`) with its pixels as the kernels were compiled
    for, native C-ordered uint16: a copy only when they are not (big-endian pixels failed every
    stage on every frame, a Fortran-ordered or cropped view compiled the kernels anew on a live
    frame, review s25 r2)."""
    check_pixels(frame, where)
    pixels = frame.pixels
    if pixels.dtype == np.uint16 and pixels.dtype.isnative and pixels.flags.c_contiguous:
        return frame
    return replace(frame, pixels=np.ascontiguousarray(pixels, dtype=np.uint16))


def square_pixels(run: Run) -> bool:
    """Whether the image stages can take ``run``'s pixels as square (or it has no scale): they
    work in mm on square pixels, and the one spacing they read would make every length, area
    and distance across the other axis wrong by the difference (review s25 r1: 18 % at
    0.4 by 0.3 mm)."""
    s = run.pixel_spacing_xy_mm
    return s is None or abs(s[0] - s[1]) <= SQUARE_PIXELS_TOLERANCE * max(s)


def without_scale(run: Run) -> Run:
    """``run`` as the image stages see a run without a pixel spacing (its dose keeps it)."""
    return replace(run, technique=replace(run.technique, imager_pixel_spacing_xy_mm=None))


def _check_assumptions(run: Run, state: StudyState) -> None:
    """Say (once per run) what the image stages must assume about its frames."""
    state.checked_runs.add(run.sop_instance_uid)
    if not run.polarity_stated:
        state.assumed_runs["polarity"] += 1
        log.warning("%s: neither PixelIntensityRelationshipSign (0028,1041) nor a LIN/LOG "
                    "PixelIntensityRelationship (0028,1040): bone is taken as %s as stored (%s); "
                    "a device that stores it the other way is read inverted and its guidance is "
                    "wrong", run.path, "bright" if run.attenuation_rises_with_value else "dark",
                    run.photometric + (", turned round by its Modality LUT"
                                       if run.modality_lut_inverts else ""))
    if run.pixel_spacing_xy_mm is None:
        state.assumed_runs["pixel_spacing"] += 1
        log.warning("%s: no ImagerPixelSpacing (0018,1164) or PixelSpacing: no joint line nor "
                    "target is sought, needle and contrast work at an assumed scale, and the "
                    "events' distances in mm are null", run.path)
    elif not square_pixels(run):
        state.assumed_runs["pixel_spacing"] += 1
        log.warning("%s: pixels not square (spacing x %.4g mm, y %.4g mm): the image stages "
                    "work on square pixels, so they take the run as without a scale: no joint "
                    "line nor target is sought, needle and contrast work at an assumed scale, "
                    "and the events' distances in mm are null", run.path,
                    *run.pixel_spacing_xy_mm)


def _shows_picture(frame: Frame) -> bool:
    """Whether ``frame`` holds a picture the image stages can read: at least
    :data:`MIN_IMAGE_PX` a side, and not flat. An absolute test: a rule relative to the run's
    earlier frames would lock a run out after one bright frame (a grabber's snow before it
    locks)."""
    if min(frame.pixels.shape) < MIN_IMAGE_PX:
        return False
    bits = frame.run.bits_stored
    if imaging.picture_steps(frame.pixels, bits, at_least=NO_PICTURE_STEPS) >= NO_PICTURE_STEPS:
        return True
    # values using two or more bits fewer than BitsStored says (a device's 10 or 11 significant
    # bits stored in 16) were steps too small for the stored bits' scale: their picture was
    # dropped (review s25 r7); a second look at their own scale, above their noise
    used = int(frame.pixels.max()).bit_length()
    if bits <= 8 or used > bits - 2:
        return False
    return imaging.picture_steps_over_noise(frame.pixels, used) >= NO_PICTURE_STEPS


def at_isocenter_mm(detector_mm: float | None, tech: Technique) -> float | None:
    """A length at the detector plane scaled to the isocenter (near the joint), by
    DistanceSourceToIsocenter / SID as the key frames' PixelSpacing is, so the screen and the
    PACS measure alike; None when either distance is unknown."""
    sid_mm, sod_mm = tech.sid_mm, tech.source_to_isocenter_mm
    if detector_mm is None or not (sid_mm and sod_mm and 0 < sod_mm <= sid_mm):
        return None
    return round(detector_mm * sod_mm / sid_mm, 3)


def _without_scale(event: dict) -> None:
    """A frame without a pixel spacing: its image fields in mm (``*_mm``, ``*_mm2``: needle
    length and advance, tip to target, opacified area) would come from a scale the stages
    assume, so they are null, and the event says ``"scale_unknown": true``."""
    def clear(fields: dict) -> None:
        for key, value in fields.items():
            if key.endswith(("_mm", "_mm2")):
                fields[key] = None
            elif isinstance(value, dict):
                clear(value)

    clear(event)
    event["scale_unknown"] = True


def _work_kind(stage: Stage, frame: Frame, state: StudyState) -> str:
    """``":<kind>"``, the kind of work ``stage`` has on ``frame`` (its ``work_kind``), or ``""``
    (none, or it raised: logged, the frame still runs)."""
    work_kind = getattr(stage, "work_kind", None)
    if work_kind is None:
        return ""
    try:
        kind = work_kind(frame, state)
    except Exception:
        log.exception("stage %s: work_kind failed on frame %d", stage.name, frame.index)
        return ""
    return "" if kind is None else f":{kind}"


def _available(step: Degradation, stages: dict) -> Degradation | None:
    """``step`` as the stages at hand can take it: None when its stage is absent or lacks its
    method; a skipping step whose stage lacks the method does not run the stage at all."""
    stage = stages.get(step.stage)
    if stage is None:
        return None
    if step.method is None or callable(getattr(stage, step.method, None)):
        return step
    return replace(step, method=None) if step.skips else None


def _waves(stages: list) -> list[list]:
    """The stages in runs that may go at the same time: a stage joins the current wave when it
    declares ``reads`` and reads none of the wave's stages; otherwise it starts a new one. A
    stage that declares nothing runs alone (it may read or change anything)."""
    waves: list[list] = []
    for stage in stages:
        reads = getattr(stage, "reads", None)
        last = waves[-1] if waves else None
        if (last is not None and reads is not None
                and all(getattr(s, "reads", None) is not None for s in last)
                and not {s.name for s in last} & set(reads)):
            last.append(stage)
        else:
            waves.append([stage])
    return waves


class _FrameView:
    """The study state as a stage running one frame behind sees it: ``stage_state`` is a copy
    of the moment its frame's earlier stages finished, except the stage's own entry (its
    memory), which is the study's; other attributes are the study's as they are now (later
    frames may have moved them on) and cannot be set."""

    __slots__ = ("_state", "stage_state")

    def __init__(self, state: StudyState, own: str):
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "stage_state", _PinnedStageState(state.stage_state, own))

    def __getattr__(self, name: str):
        return getattr(self._state, name)

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"a stage running a frame behind cannot set the study's {name}")


class _PinnedStageState(MutableMapping):
    """``stage_state`` for :class:`_FrameView`: the entry ``own`` is the study's; the others
    are a copy (writes to them stay in the copy)."""

    def __init__(self, shared: dict, own: str):
        self._shared, self._own = shared, own
        self._copy = shared.copy()  # one C call: no thread switch while another stage writes
        self._copy.pop(own, None)

    def _map(self, key) -> dict:
        return self._shared if key == self._own else self._copy

    def __getitem__(self, key):
        return self._map(key)[key]

    def __setitem__(self, key, value):
        self._map(key)[key] = value

    def __delitem__(self, key):
        del self._map(key)[key]

    def __iter__(self):
        yield from self._copy
        if self._own in self._shared:
            yield self._own

    def __len__(self) -> int:
        return len(self._copy) + (self._own in self._shared)


@dataclass(frozen=True)
class DroppedFrame:
    """What is kept of a frame whose image work was dropped: where it is in the study (the
    pixels are released)."""

    sop_instance_uid: str
    frame_number: int
    index: int
    t_s: float


def _base_event(frame: "Frame | DroppedFrame", state: StudyState) -> dict[str, Any]:
    return {
        "sop_instance_uid": frame.sop_instance_uid,
        "frame": frame.frame_number,
        # a receiver's shared events file holds many studies: each line names its own
        "study_instance_uid": state.study_instance_uid,
        "index": frame.index,
        "t_s": round(frame.t_s, 6),
        "needle": None,
        "joint": None,
        "target": None,
        "tip_to_target_mm": None,
        "tip_to_target_mm_iso": None,
        "contrast": {"state": state.contrast_state, "confidence": state.contrast_confidence},
    }


class LiveFeeder:
    """Live sources (a receiver or capture thread): dose on arrival, image work on a worker
    thread behind a short queue that never grows without bound.

    :meth:`submit` counts the frame's dose at once and queues its image work. When
    ``capacity`` frames are already waiting, the *oldest* waiting frame's image work is dropped
    (the newest frame is what the radiologist looks at): its event still comes, in order, with
    its dose and ``"dropped": true``, and ``state.dropped_image_frames`` counts it. The most
    recently dropped frame keeps its pixels until its turn, for the contrast stage's memory
    (:meth:`Pipeline.dropped_event`; the stage keeps one skipped frame between updates), when
    a stage has such a memory; the others are released, so at most ``capacity + 2`` frames'
    pixels are held. Events are
    handed to ``on_event`` on the worker thread, in arrival order; a handler that raises is
    logged. Offline replay does not use this: it blocks its reader instead (:func:`prefetch`).

    Parameters
    ----------
    pipeline : Pipeline
    state : StudyState
        The study's state; only this feeder may process frames with it while it runs.
    on_event : callable, optional
        ``on_event(event)`` for every frame's event.
    capacity : int, optional
        Frames waiting for image work; default ``settings.live_queue_frames``.
    """

    def __init__(self, pipeline: Pipeline, state: StudyState, *,
                 on_event: Callable[[dict], None] | None = None, capacity: int | None = None):
        self.pipeline = pipeline
        self.state = state
        self.on_event = on_event
        self.capacity = capacity or pipeline.settings.live_queue_frames
        self._entries: deque[list] = deque()  # [Frame | DroppedFrame, Arrival, dropped]
        self._waiting_images = 0
        self._kept_dropped: list | None = None  # the entry dropped with its pixels kept
        self._keep_dropped = bool(pipeline._remembering)
        self._unfinished = 0
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._submit_lock = threading.Lock()  # dose in submission order
        self._worker = threading.Thread(target=self._work, name="sifluoro-live", daemon=True)
        self._worker.start()

    def submit(self, frame: Frame) -> None:
        """Count the frame's dose and queue its image work; never waits for image work."""
        with self._submit_lock:
            if self._closed:
                raise RuntimeError("the live feeder is closed")
            arrival = self.pipeline.account(frame, self.state)
            with self._cond:
                if self._waiting_images >= self.capacity:
                    oldest = next(e for e in self._entries if not e[2])
                    oldest[2] = True
                    released = self._kept_dropped
                    if self._keep_dropped:
                        self._kept_dropped = oldest
                    else:
                        released = oldest
                    if released is not None and isinstance(released[0], Frame):
                        old = released[0]  # not taken by the worker yet (entries keep order)
                        released[0] = DroppedFrame(old.sop_instance_uid, old.frame_number,
                                                   old.index, old.t_s)
                    self._waiting_images -= 1
                    self.state.dropped_image_frames += 1
                self._entries.append([frame, arrival, False])
                self._waiting_images += 1
                self._unfinished += 1
                self._cond.notify_all()

    def call_soon(self, call: Callable[[], None]) -> bool:
        """Run ``call()`` on the worker after the frames queued now (e.g. a dose event, so that
        handlers only ever run on the worker); False when the feeder is closed."""
        with self._cond:
            if self._closed:
                return False
            self._entries.append([call, None, True])
            self._unfinished += 1
            self._cond.notify_all()
            return True

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted frame has its event; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._unfinished == 0, timeout=timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Finish the queued work and stop the worker; re-raise what failed in it."""
        with self._submit_lock, self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout=timeout_s)
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        pipeline, state = self.pipeline, self.state
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._entries or self._closed)
                if not self._entries:
                    return
                entry = self._entries.popleft()
                item, arrival, dropped = entry
                if dropped:
                    if self._kept_dropped is entry:
                        self._kept_dropped = None
                else:
                    self._waiting_images -= 1
            try:
                if callable(item):  # call_soon
                    try:
                        item()
                    except Exception:
                        log.exception("a call queued on the live worker failed")
                    continue
                if not dropped:
                    pipeline.prepare_stages_on_live_frame(item.run)
                    event = pipeline.process_arrived(item, state, arrival)
                else:
                    event = pipeline.dropped_event(item, state, arrival)
                if self.on_event is not None:
                    try:
                        self.on_event(event)
                    except Exception:  # a consumer's defect must not stop the study
                        log.exception("event handler failed on frame %d", event["index"])
            except BaseException as exc:  # handed to close()
                log.exception("live pipeline failed on %s", f"frame {item.index}"
                              if hasattr(item, "index") else "a queued call")
                self._error = self._error or exc
            finally:
                with self._cond:
                    self._unfinished -= 1
                    self._cond.notify_all()


def latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    """p50/p95/p99/max of per-frame latencies in ms."""
    if not latencies_ms:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    values = np.asarray(latencies_ms)
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 4), "p95": round(float(p95), 4), "p99": round(float(p99), 4),
            "max": round(float(values.max()), 4)}


_END = object()


def put_unless_stopped(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put ``item`` on a bounded queue, waiting while it is full but never past ``stop`` (a
    consumer that stopped reads nothing more); whether it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def read_ahead(frames: Iterator[Frame], capacity: int, runs: Iterable[Run]) -> Iterator[Frame]:
    """:func:`prefetch` the ``frames`` of ``runs``, unless a run's pixel data is compressed:
    pylibjpeg's decoders hold the GIL for a whole frame (JPEG 2000 at 1024², 0.15-0.3 s), so a
    reader thread decoding ahead would stop the stages, and a frame's deadline clock, for that
    long (a study replayed within its budget came out degraded on most frames). Such frames are
    decoded when taken, between frames."""
    if any(_compressed(run.transfer_syntax_uid) for run in runs):
        return frames
    return prefetch(frames, capacity)


def _compressed(transfer_syntax_uid: str) -> bool:
    try:
        return UID(transfer_syntax_uid).is_compressed
    except ValueError:  # no transfer syntax: its run's frames are refused, not decoded
        return False


def prefetch(frames: Iterator[Frame], capacity: int) -> Iterator[Frame]:
    """Decode frames on a reader thread into a bounded queue, so decoding overlaps processing.

    Offline replay blocks the reader when the queue is full (nothing is dropped). An exception
    in the reader is re-raised in the consumer.
    """
    q: queue.Queue = queue.Queue(maxsize=capacity)
    stop = threading.Event()

    def put(item) -> bool:
        return put_unless_stopped(q, item, stop)

    def produce():
        try:
            for item in frames:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer
            put(exc)

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
