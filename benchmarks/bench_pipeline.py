"""The whole pipeline and each stage on simulated frames, against a floor of one cv2.Sobel pass.

For 512² and 1024² frames of whole simulated studies (``simulate_case(seed, case, size=size)``,
``STUDIES``: every run of each case, scouts, the needle's advance runs and the contrast run;
``--quick``: one quick study, its final needle run and contrast run). Each pass over a study
is a fresh pipeline (new stages, ``start_study``, ``prepare_run`` of every run, whose warm-up
is not timed), as a real study meets it: the runs' starts segment the joint and search the
needle's field again, and the register's view grows from its first frame:

- p50/p99 per stage and for the whole pipeline (``Pipeline.process``, dose included), with the
  default stages and with joint + needle + contrast, under no deadline (every stage in full);
  with one stage thread also the pipeline's own time per frame (``own``: latency less the
  stages, frame by frame) and each frame's thread CPU time (``pipeline_cpu``); for every stage
  also the CPU time of the thread that ran it, in a pass of its own (``<stage>_cpu``: on a busy
  machine the wall time mostly measures waiting for a core). The studies' frames are a mix:
  a run's first frames segment the joint and search the needle's field, and the contrast run's
  frames from its 4th run the vessel test, so a p50 is that of a mix; with one thread the
  thread CPU of each stage on each study frame (``per_frame_cpu``, medians over the passes,
  which see the same frames in the same state) shows which frames set it, and
  ``run_first_vs_later_cpu`` sums it up for a run's first frames and the later ones;
- the grids each stage works on at each size (``work_grids``): fixed in mm or in pixels, the
  same at 512² as at 1024² over the same field, which is why 512² costs about as much;
- the ratio of each stage's and of the pipeline's p50 to the p50 of one ``cv2.Sobel`` pass
  (CV_32F, dx=1) over the same uint16 frames;
- at 1024², the memory each stage allocates per frame (tracemalloc, a separate pass);
- in a fresh process, on a 1024² uncompressed DICOM study written from the simulated frames:
  start-up (imports, construction, headers, warm-up) and first-frame latency, replay
  throughput in frames/s including decode (reader thread), and peak RSS; also with no
  deadline at all (an infinite budget), where replay overlaps consecutive frames.

``python -m benchmarks.bench_pipeline [--quick]``; ``run(quick) -> dict``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np

SEED, CASE = 2026, 1  # needle on every frame, contrast run (vascular); --quick's study
#: (seed, case) of the whole studies timed at each size (outcomes: 0 extravasation, 1 and 2
#: vascular); 1024² ones take ~20 s each to simulate, so two there
STUDIES = {512: ((2026, 0), (2026, 1), (2026, 2)), 1024: ((2026, 0), (2026, 2))}
PER_FRAME_ROWS = 16  # of the per-frame table printed (the dearest frames)
# "x2": Settings.stage_threads=2 (needle and contrast side by side after register)
CONFIGS = ("default", "joint+needle+contrast", "joint+needle+contrast x2")


def _stages(config: str, settings):
    from sifluoro.stages import REPLAY_STAGES, STAGE_NAMES, make_stages

    return make_stages(REPLAY_STAGES if config == "default" else STAGE_NAMES, settings)


def _threads(config: str) -> int:
    return 2 if config.endswith(" x2") else 1


class _Timed:
    """A stage that records the duration of each call (pipeline order and names kept)."""

    def __init__(self, stage):
        self.stage, self.name, self.ms = stage, stage.name, []
        if hasattr(stage, "warm_up"):
            self.warm_up = stage.warm_up
        if hasattr(stage, "reads"):
            self.reads = stage.reads

    def process(self, frame, state):
        t0 = time.perf_counter()
        try:
            return self.stage.process(frame, state)
        finally:
            self.ms.append((time.perf_counter() - t0) * 1000.0)


class _CpuTimed(_Timed):
    """A stage that records the CPU time of the thread that ran each call, for a pass of its
    own: reading the thread's CPU clock is a system call, where a busy machine's scheduler
    may take the core away (around every stage it made the stages' wall p50s 3-7 times
    longer under load; 1024², 6 rounds)."""

    def process(self, frame, state):
        c0 = time.thread_time()
        try:
            return self.stage.process(frame, state)
        finally:
            self.ms.append((time.thread_time() - c0) * 1000.0)


def _pct(values) -> dict:
    v = np.asarray(values, float)
    return {"p50_ms": round(float(np.percentile(v, 50)), 3),
            "p99_ms": round(float(np.percentile(v, 99)), 3), "n": int(v.size)}


def _sobel_ms(frames) -> dict:
    out = np.empty(frames[0].pixels.shape, np.float32)
    times = []
    for _ in range(3):
        for f in frames:
            t0 = time.perf_counter()
            cv2.Sobel(f.pixels, cv2.CV_32F, 1, 0, dst=out)
            times.append((time.perf_counter() - t0) * 1000.0)
    return _pct(times)


def _work_grids(frame) -> dict:
    """The grids (rows x cols) each stage works on for frames of this size and spacing. The
    stages reduce a frame to a grid fixed in mm (register, needle) or in pixels (contrast), so
    their cost hardly follows the frame's size; at 512² over the same field the register and
    needle grids are the frame itself."""
    from sifluoro.imaging import working_grid
    from sifluoro.register.motion import Registrar
    from sifluoro.register.stage import WORK_MM
    from sifluoro.stages import STAGE_NAMES, make_stages

    def shape(s) -> str:
        return "x".join(map(str, s))

    rows, cols = frame.pixels.shape
    spacing_mm = float(frame.pixel_spacing_xy_mm[0])
    _, needle, contrast = make_stages(STAGE_NAMES)
    grid = working_grid(spacing_mm, target_mm=WORK_MM)
    work = (rows // grid.factor, cols // grid.factor)
    motion = Registrar(work, grid.factor, grid.spacing_mm, np.ones(work, bool))
    needle_factor = working_grid(spacing_mm, target_mm=needle.settings.grid_mm).factor
    contrast_factor = contrast.factor_for(rows, cols)
    return {"frame": shape((rows, cols)), "spacing_mm": round(spacing_mm, 4),
            "register": shape(work), "register_motion_dft": shape(motion.dft_shape),
            "needle": shape((rows // needle_factor, cols // needle_factor)),
            "contrast": shape((rows // contrast_factor, cols // contrast_factor))}


def _in_process(studies, config: str, repeats: int) -> dict:
    """p50/p99 of the pipeline and of each stage over the frames of ``studies`` (lists of a
    study's frames); with one thread also the pipeline's own time per frame (its latency less
    its stages', frame by frame: the p50s of a mix of cheap and dear frames do not add up) and
    the thread CPU time of each frame (on a busy machine the wall time also counts waiting for
    a core); and, in passes of their own, each stage's thread CPU time (``stages_cpu``,
    :class:`_CpuTimed`)."""
    wall = _timed_pass(studies, config, repeats, _Timed)
    out = {"pipeline": _pct(wall.latencies_ms),
           "stages": {name: _pct(ms) for name, ms in wall.stage_ms.items()}}
    if _threads(config) == 1:
        out["pipeline_cpu"] = _pct(wall.cpu_ms)
        out["own"] = _pct(np.subtract(wall.latencies_ms, np.sum(list(wall.stage_ms.values()), axis=0)))
    cpu = _timed_pass(studies, config, repeats, _CpuTimed)
    out["stages_cpu"] = {name: _pct(ms) for name, ms in cpu.stage_ms.items()}
    if _threads(config) == 1:
        out["per_frame_cpu"] = _per_frame([f for frames in studies for f in frames], cpu)
        out["run_first_vs_later_cpu"] = _by_kind(out["per_frame_cpu"])
    return out


def _by_kind(rows: list[dict]) -> dict:
    """Thread CPU ms of a run's first frame (the joint segmented, the needle's field searched,
    the exposed field and text mask made) and of the later frames, apart: mean and p50 of each
    stage, the pipeline's own work and the whole frame (from :func:`_per_frame`'s rows). The
    p99 is set by the first frames, the p50 by the later ones."""
    names = [k for k in rows[0] if k not in ("frame", "case", "run", "frame_of_run")]
    out = {}
    for kind, pick in (("run_first", lambda r: r["frame_of_run"] == 1),
                       ("later", lambda r: r["frame_of_run"] > 1)):
        chosen = [r for r in rows if pick(r)]
        if chosen:
            out[kind] = {"frames": len(chosen), **{
                n: {"mean_ms": round(float(np.mean([r[n] for r in chosen])), 3),
                    "p50_ms": round(float(np.median([r[n] for r in chosen])), 3)} for n in names}}
    return out


def _per_frame(frames, passes: "_Passes") -> list[dict]:
    """Thread CPU ms of each study frame (median over the passes, each a fresh pipeline, so
    the same frame in the same state): each stage's and the whole frame's. The bench's p50s
    are those of a mix (run starts, needle field searches, frames with the contrast vessel
    test, plain frames): the p50 of the whole is not the sum of the stages' p50s, and this
    table shows which frames set it."""
    n = len(frames)
    whole_ms = passes.cpu_ms
    rows = []
    for i, f in enumerate(frames):
        row = {"frame": i, "case": _case_of(f), "run": int(f.run.index),
               "frame_of_run": int(f.frame_number)}
        for name, ms in passes.stage_ms.items():
            row[name] = round(float(np.median(ms[i::n])), 3)
        row["whole"] = round(float(np.median(whole_ms[i::n])), 3)
        own = np.subtract(whole_ms[i::n], np.sum([ms[i::n] for ms in passes.stage_ms.values()], axis=0))
        row["own"] = round(float(np.median(own)), 3)  # pass by pass, then the median
        rows.append(row)
    return rows


def _case_of(frame) -> int:
    return int(frame.run.path.split("-")[2])  # sim_frames' "sim-SEED-CASE-RUN"


@dataclass
class _Passes:
    """Per frame, in pass order (pass 0's frames of every study, then pass 1's, ...): the
    pipeline's latency, each stage's timer reading and the frame's thread CPU; and each
    pass's events."""

    latencies_ms: list = field(default_factory=list)
    stage_ms: dict = field(default_factory=dict)  # stage name -> ms, in the pipeline's order
    cpu_ms: list = field(default_factory=list)
    events: list = field(default_factory=list)  # per pass: the events of all its frames


def _timed_pass(studies, config: str, repeats: int, timer: type) -> _Passes:
    """``repeats`` passes over ``studies`` with no deadline, each study in each pass on a
    fresh pipeline of stages wrapped in ``timer`` (new stages, ``start_study``,
    ``prepare_run`` of every run before its frames, as a study read from disk): a real
    study's run starts and growing views, not a replay into warm stages. The warm-up calls
    are not frames."""
    from sifluoro.config import Settings

    settings = Settings(latency_budget_ms=1e9, stage_threads=_threads(config))  # every stage in full
    out = _Passes()
    for _ in range(repeats):
        events = []
        for frames in studies:
            timed = [timer(s) for s in _stages(config, settings)]
            pipeline, state = _fresh_pipeline(timed, settings, frames)
            for f in frames:
                c0 = time.thread_time()
                events.append(pipeline.process(f, state))
                out.cpu_ms.append((time.thread_time() - c0) * 1000.0)
            out.latencies_ms.extend(state.latencies_ms)
            for t in timed:
                # a stage skipped on a frame would shift the frame-by-frame tables
                assert len(t.ms) == len(frames), f"{t.name} ran on {len(t.ms)} of {len(frames)} frames"
                out.stage_ms.setdefault(t.name, []).extend(t.ms)
        out.events.append(events)
    return out


def _fresh_pipeline(wrapped: list, settings, frames) -> tuple:
    """(pipeline, study state) of a new pipeline of the ``wrapped`` stages, the runs of
    ``frames`` announced (kernels warmed); the warm-up calls are not frames: their times go."""
    from sifluoro.pipeline import Pipeline

    pipeline = Pipeline(wrapped, settings)
    state = pipeline.start_study("bench")
    for run in {f.run.sop_instance_uid: f.run for f in frames}.values():
        pipeline.prepare_run(run, state)
    for w in wrapped:
        w.ms.clear()
    return pipeline, state


def _allocations(studies) -> dict:
    """Memory each stage allocates while processing a frame (tracemalloc's peak above what was
    held before the call, numpy arrays included), p50 and max over the frames of ``studies``
    (a fresh pipeline each), in MB; a separate pass, as tracing slows everything down."""
    import tracemalloc

    from sifluoro.config import Settings

    class Traced(_Timed):
        def process(self, frame, state):
            tracemalloc.reset_peak()
            held = tracemalloc.get_traced_memory()[0]
            try:
                return self.stage.process(frame, state)
            finally:
                self.ms.append((tracemalloc.get_traced_memory()[1] - held) / 1e6)

    settings = Settings(latency_budget_ms=1e9)
    mb: dict = {}
    for frames in studies:
        traced = [Traced(s) for s in _stages(CONFIGS[1], settings)]
        pipeline, state = _fresh_pipeline(traced, settings, frames)
        tracemalloc.start()
        try:
            for f in frames:
                pipeline.process(f, state)
        finally:
            tracemalloc.stop()
        for t in traced:
            mb.setdefault(t.name, []).extend(t.ms)
    return {name: {"p50_mb": round(float(np.percentile(v, 50)), 3),
                   "max_mb": round(float(np.max(v)), 3)} for name, v in mb.items()}


def _write_uncompressed(folder: Path, study, n_frames: int, frames_per_run: int = 20) -> None:
    """``n_frames`` of the simulated frames (cycled), uncompressed XA, runs of 20."""
    from pydicom.uid import generate_uid

    from sifluoro.io.dicom_writer import StudyIdentity, build_run_dataset, save_dataset
    from sifluoro.model import Device
    from sifluoro.sim.export import technique_of

    sim_run = study.runs[0]
    pixels = np.concatenate([r.frames for r in study.runs])
    tech = technique_of(sim_run, study.size, reported=None)
    ident = StudyIdentity(generate_uid(), datetime(2026, 5, 6, 8, 0))
    series = generate_uid()
    for r in range(0, n_frames, frames_per_run):
        n = min(frames_per_run, n_frames - r)
        idx = [(r + k) % len(pixels) for k in range(n)]
        ds = build_run_dataset(pixels[idx], storage="xa", study=ident, series_instance_uid=series,
                               sop_instance_uid=generate_uid(),
                               acquisition_datetime=ident.study_datetime + timedelta(seconds=10 * r),
                               technique=tech, device=Device("Bench", "B1"),
                               bits_stored=sim_run.bits_stored,
                               frame_time_ms=tech.frame_time_ms or 66.6667,
                               instance_number=r // frames_per_run + 1)
        save_dataset(ds, folder / f"run{r:04d}.dcm")


CHILD = r"""
import collections, json, re, sys, time
t0 = time.perf_counter()
from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import Settings
from sifluoro.pipeline import Pipeline, prefetch
sys.path.insert(0, sys.argv[3])
from benchmarks.bench_pipeline import _stages, _threads
t_import = time.perf_counter()
settings = Settings(latency_budget_ms=float(sys.argv[2]), stage_threads=_threads(sys.argv[4]))
pipeline = Pipeline(_stages(sys.argv[4], settings), settings)
t_built = time.perf_counter()
study = read_study([sys.argv[1]])
state = pipeline.start_study(study.study_instance_uid)
for run in study.runs:
    pipeline.prepare_run(run, state)
t_ready = time.perf_counter()
frames = prefetch(iter_frames(study, []), settings.queue_frames)
first = next(frames)
t_decoded = time.perf_counter()
event = pipeline.process(first, state)
t_first = time.perf_counter()
first_ms = event["latency_ms"]
steps = collections.Counter(event.get("degraded_steps", ()))
for _, event in pipeline.process_frames(frames, state):
    steps.update(event.get("degraded_steps", ()))
t_end = time.perf_counter()
# VmHWM: this process's peak RSS (ru_maxrss would carry the parent's over the exec)
hwm_kb = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({
    "import_s": round(t_import - t0, 3), "construct_s": round(t_built - t_import, 3),
    "headers_and_warm_up_s": round(t_ready - t_built, 3),
    "first_frame_decode_ms": round((t_decoded - t_ready) * 1000, 2),
    "first_frame_event_ms": round(first_ms, 2),
    "start_to_first_event_s": round(t_first - t0, 3),
    "frames": state.frames, "frames_per_s": round((state.frames - 1) / (t_end - t_first), 1),
    "frames_per_s_from_first_decode": round(state.frames / (t_end - t_ready), 1),
    "degraded_frames": state.degraded_frames, "degraded_steps": dict(steps),
    "peak_rss_mb": round(hwm_kb / 1024, 1)}))
"""


def _fresh_process(folder: Path, config: str, budget_ms: float) -> dict:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(budget_ms), str(root), config],
                         capture_output=True, text=True, check=True, cwd=root)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _simulate(size: int, quick: bool) -> tuple[list, list]:
    """(the simulated studies, each one's frames) timed at ``size``."""
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    cases = ((SEED, CASE),) if quick else STUDIES[size]
    studies = [simulate_case(seed, case, size=size, quick=quick) for seed, case in cases]
    return studies, [[f for f, _ in sim_frames(s)] for s in studies]


def _study_label(quick: bool) -> str:
    if quick:
        return f"simulate_case({SEED}, {CASE}, size=512 and 1024, quick=True)"
    return "; ".join(f"{size}²: simulate_case(seed, case, size={size}, quick=False) for (seed, case) "
                     f"in {STUDIES[size]}" for size in (512, 1024))


def run(quick: bool = False) -> dict:
    start = time.perf_counter()

    def progress(what: str) -> None:
        print(f"bench_pipeline: {what} at {time.perf_counter() - start:.1f} s", file=sys.stderr)

    repeats = 1 if quick else 3
    result: dict = {
        "study": _study_label(quick), "sizes": {},
        "note": "in-process timings under no deadline (every stage in full)",
        "passes": f"{repeats} per size; in each pass every study on a fresh pipeline (new stages, "
                  "start_study, prepare_run of every run with its warm-up before the timed "
                  "frames): p50/p99 over all frames of all passes",
        "changed": "session 19: whole simulated studies (all runs) and a fresh pipeline per pass; "
                   "until then one quick 13-frame study replayed 3 times into one pipeline, whose "
                   "passes 2-3 ran on warm stages (no run-start segmentations, tracks warm)"}
    study_1024 = None
    for size in (512, 1024):
        t0 = time.perf_counter()
        sims, studies = _simulate(size, quick)
        sim_s = time.perf_counter() - t0
        progress(f"{size}² simulated")
        if size == 1024:
            study_1024 = sims[0]
        frames = [f for fs in studies for f in fs]
        floor = _sobel_ms(frames)
        per_size = {"frames": len(frames),
                    "studies": [{"case": s.case, "runs": len(s.runs), "frames": len(fs),
                                 "outcome": s.outcome} for s, fs in zip(sims, studies)],
                    "simulate_s": round(sim_s, 1), "sobel_floor": floor,
                    "work_grids": _work_grids(frames[0])}
        del sims
        for config in CONFIGS:
            got = _in_process(studies, config, repeats)
            f50 = floor["p50_ms"] or 1e-9
            got["pipeline"]["x_sobel"] = round(got["pipeline"]["p50_ms"] / f50, 1)
            for s in (list(got["stages"].values()) + list(got["stages_cpu"].values())
                      + [got[k] for k in ("own", "pipeline_cpu") if k in got]):
                s["x_sobel"] = round(s["p50_ms"] / f50, 1)
            per_size[config] = got
            progress(f"{size}² {config} timed")
        if size == 1024:
            per_size["allocated_per_frame"] = _allocations(studies)
            progress(f"{size}² allocations traced")
        result["sizes"][str(size)] = per_size
    n_frames = 60 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _write_uncompressed(folder, study_1024, n_frames)
        result["fresh_process_1024"] = {
            "study": f"{n_frames} frames of simulate_case({study_1024.seed}, {study_1024.case}, "
                     f"size=1024, quick={quick}) (cycled), uncompressed XA, runs of 20",
            **{f"{config} (no deadline)": _fresh_process(folder, config, 1e9) for config in CONFIGS},
            **{f"{config} (10 ms budget)": _fresh_process(folder, config, 10.0) for config in CONFIGS[1:]},
            # infinite budget: replay overlaps consecutive frames (Pipeline.process_frames)
            f"{CONFIGS[2]} (no deadline, frames overlapped)": _fresh_process(folder, CONFIGS[2],
                                                                             float("inf")),
        }
    progress("fresh processes done")
    print(table(result), file=sys.stderr)
    return result


def table(result: dict) -> str:
    lines = [f"study: {result['study']}",
             f"{'size':>5} {'config':<25} {'what':<12} {'p50 ms':>8} {'p99 ms':>8} {'x Sobel':>8}"]
    for size, per in result["sizes"].items():
        lines.append(f"{size:>5} {per['frames']} frames: " + ", ".join(
            f"case {s['case']} ({s['runs']} runs, {s['frames']} frames)" for s in per["studies"]))
        lines.append(f"{size:>5} work grids: " + ", ".join(f"{k} {v}" for k, v in per["work_grids"].items()))
        lines.append(f"{size:>5} {'':<25} {'sobel':<12} {per['sobel_floor']['p50_ms']:>8.3f} "
                     f"{per['sobel_floor']['p99_ms']:>8.3f} {1.0:>8.1f}")
        for config in CONFIGS:
            got = per[config]
            rows = ([("pipeline", got["pipeline"])] + list(got["stages"].items())
                    + [(f"{k}_cpu", v) for k, v in got["stages_cpu"].items()]
                    + [(k, got[k]) for k in ("own", "pipeline_cpu") if k in got])
            for name, s in rows:
                lines.append(f"{size:>5} {config:<25} {name:<12} {s['p50_ms']:>8.3f} "
                             f"{s['p99_ms']:>8.3f} {s['x_sobel']:>8.1f}")
    for size, per in result["sizes"].items():
        frames = per[CONFIGS[1]].get("per_frame_cpu")
        if frames:
            names = [k for k in frames[0] if k not in ("frame", "case", "run", "frame_of_run")]
            shown = sorted(sorted(frames, key=lambda r: -r["whole"])[:PER_FRAME_ROWS],
                           key=lambda r: r["frame"])
            lines.append(f"{size:>5} {CONFIGS[1]}, thread CPU ms per study frame (median of the "
                         f"passes; the {len(shown)} dearest of {len(frames)}, all in the JSON): "
                         f"frame case/run (of its run) " + " ".join(f"{n:>8}" for n in names))
            for r in shown:
                lines.append(f"{size:>5} {r['frame']:>3} {r['case']:>2}/{r['run']:<2} "
                             f"({r['frame_of_run']:>2}) " + " ".join(f"{r[n]:>8.3f}" for n in names))
    for size, per in result["sizes"].items():
        for kind, got in per[CONFIGS[1]].get("run_first_vs_later_cpu", {}).items():
            lines.append(f"{size:>5} {CONFIGS[1]}, thread CPU ms mean (p50) of the {kind} frames "
                         f"({got['frames']}): " + ", ".join(
                             f"{n} {v['mean_ms']:.3f} ({v['p50_ms']:.3f})"
                             for n, v in got.items() if n != "frames"))
    for name, a in result["sizes"]["1024"]["allocated_per_frame"].items():
        lines.append(f"1024 {name}: allocates {a['p50_mb']} MB per frame (p50; max {a['max_mb']} MB)")
    for name, r in result["fresh_process_1024"].items():
        if isinstance(r, dict):
            lines.append(f"fresh 1024² {name}: start->first event {r['start_to_first_event_s']} s "
                         f"(warm-up {r['headers_and_warm_up_s']} s, first frame "
                         f"{r['first_frame_event_ms']} ms), {r['frames_per_s']} frames/s, "
                         f"peak RSS {r['peak_rss_mb']} MB, degraded {r['degraded_frames']}/{r['frames']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.quick)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
