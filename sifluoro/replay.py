"""Offline replay of a recorded study: events.jsonl + summary.json (docs/contract.md §3)."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import Settings
from sifluoro.contract import dose_value
from sifluoro.dose.rdsr_write import write_rdsr
from sifluoro.dose.summary import device_report
from sifluoro.model import Frame, Rejection, Run, Study, counted, first_few, is_not_dicom
from sifluoro.outfiles import replaced
from sifluoro.overlay import OverlayWriter
from sifluoro.pipeline import Pipeline, Stage, latency_summary, read_ahead
from sifluoro.stages import REPLAY_STAGES, as_stages, make_stages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayResult:
    summary: dict
    exit_code: int  # 0 when at least one frame was processed, 2 when none, 1 RDSR not written
    startup_s: float = 0.0  # reading headers and preparing runs, before the first frame
    stream_s: float = 0.0  # first frame decoded to last event written


def default_stages(settings: Settings) -> list[Stage]:
    """The replay's image stages (:data:`sifluoro.stages.REPLAY_STAGES`), in pipeline order."""
    return make_stages(REPLAY_STAGES, settings)


def replay(inputs: Iterable[str | Path], *, events_path: str | Path, summary_path: str | Path,
           settings: Settings | None = None, study_uid: str | None = None,
           stages: list[Stage] | None = None, rdsr_path: str | Path | None = None,
           overlay_png_dir: str | Path | None = None,
           overlay_mp4: str | Path | None = None) -> ReplayResult:
    """Replay one study through the pipeline, writing one event per frame and a summary.

    Damaged or unusable files are listed in ``rejected_files``; the rest of the study goes on.
    A dose report (RDSR) of the study among the inputs supplies the dose of the runs it
    references. With ``rdsr_path``, the study's dose is written there as an RDSR at the end;
    ``overlay_png_dir`` / ``overlay_mp4`` write every frame annotated with its event.
    """
    settings = settings or Settings()
    t_start = time.perf_counter()
    study = read_study(list(inputs), study_uid=study_uid)
    log.info("read %d run(s), %d frame(s), %d dose report(s), %d file(s) rejected in %.1f s",
             len(study.runs), sum(r.n_frames for r in study.runs), len(study.dose_reports),
             len(study.rejected), time.perf_counter() - t_start)
    pipeline = Pipeline(default_stages(settings) if stages is None else as_stages(stages, settings),
                        settings)
    state = pipeline.start_study(study.study_instance_uid)
    rejected: list[Rejection] = list(study.rejected)
    other_reports: list[str] = []
    report = device_report(study, rejected, other_reports)
    if report is not None:  # its exposures outside the stored images can reach alert levels
        state.alerts.extend(a.as_dict() for a in state.dose.use_report(report, study.runs))
    for run in study.runs:
        pipeline.prepare_run(run, state)
    events_path = Path(events_path)
    events_path.parent.mkdir(parents=True, exist_ok=True)
    t_stream = time.perf_counter()
    overlays = (OverlayWriter(overlay_png_dir, overlay_mp4, stages=state.stage_names)
                if overlay_png_dir is not None or overlay_mp4 is not None else None)
    events_error = None  # a full disk stops the events, not the study: its dose goes on
    lost: list = []  # (run, first frame not decoded) of damaged runs
    lost_frames = LostFrames(study, lost, lambda run, first: count_lost(state, run, first))
    try:
        with replaced(events_path) as out:
            frames = lost_frames.passing(read_ahead(iter_frames(study, rejected, lost),
                                                    settings.queue_frames, study.runs))
            for frame, event in pipeline.process_frames(frames, state):
                if events_error is None:
                    try:
                        out.write(json.dumps(event, separators=(",", ":")) + "\n")
                    except OSError as exc:
                        events_error = _events_lost(events_path, exc)
                if overlays is not None:
                    overlays.add(frame, event)
            if events_error is None:
                try:  # the last lines: a failure here is the events file's, not the study's
                    out.flush()
                except OSError as exc:
                    events_error = _events_lost(events_path, exc)
            if events_error is not None:
                raise _EventsLost  # an incomplete file replaces nothing
    except _EventsLost:
        pass
    except OSError:  # the failed file's close, once its error is known: said already
        if events_error is None:
            raise
    pipeline.close()  # a batch of studies keeps no stage threads of those done
    if overlays is not None:
        overlays.close()
    t_end = time.perf_counter()
    log.info("processed %d frame(s) in %.1f s (%s)", state.frames, t_end - t_stream,
             ", ".join(state.stage_names) or "dose only")
    lost_frames.rest()
    summary = build_summary(study, state, rejected)
    if other_reports:  # an archive folder: said, not dropped in silence (user review s19)
        summary["other_studies_dose_reports"] = other_reports
    code = 0 if state.frames else 2
    if events_error is not None:
        summary["events_not_written"] = events_error
        code = code or 1
    if rdsr_path is not None and (state.frames or state.dose.lost_frames):
        try:
            written = write_rdsr(study, state.dose, rdsr_path, settings=settings.dose)
        except OSError as exc:  # a full disk: the summary is still written, and says so
            summary["rdsr_not_written"] = f"{rdsr_path}: {exc.strerror or exc}"
            log.error("the RDSR could not be written: %s", summary["rdsr_not_written"])
            written, code = None, code or 1
        if written is not None:  # None: the device's report gives the dose of every run
            summary["rdsr"] = str(written)
    write_json(summary_path, summary)
    return ReplayResult(summary, code, t_stream - t_start, t_end - t_stream)


class _EventsLost(Exception):
    """The events file could not be written whole: its temporary file is removed."""


def _events_lost(path, exc: OSError) -> str:
    """What stopped the events (``summary.events_not_written``), said in the log."""
    error = f"{path}: {exc.strerror or exc}"
    log.error("events can no longer be written (%s); the study goes on and its summary says so",
              error)
    return error


class LostFrames:
    """The frames damaged runs lost, counted as soon as the frames have passed their run.

    ``lost`` is the reader's list (:func:`~sifluoro.acquire.dicom_reader.iter_frames`), which
    a reader thread fills ahead of the frames, in run order. An entry is handed to
    ``count(run, first_frame_number)`` before the first frame of a later run, so the events
    after it carry the study's whole dose (``study_*``) and the alerts the lost frames cause
    are raised then, not at the study's end; :meth:`rest` counts the others (the last run).
    """

    def __init__(self, study: Study, lost: list, count: Callable[[Run, int], None]):
        self._position = {run.sop_instance_uid: k for k, run in enumerate(study.runs)}
        self._lost, self._count, self._done = lost, count, 0

    def passing(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        """``frames``, counting the lost frames of the runs they have passed."""
        for frame in frames:
            self._count_before(self._position.get(frame.run.sop_instance_uid, -1))
            yield frame

    def rest(self) -> None:
        self._count_before(math.inf)

    def _count_before(self, position: float) -> None:
        """Count the entries not counted yet of the runs before ``position`` in the study."""
        while (self._done < len(self._lost)
               and self._position.get(self._lost[self._done][0].sop_instance_uid, 0) < position):
            self._count(*self._lost[self._done])
            self._done += 1


def count_lost(state, run: Run, first_frame_number: int) -> list:
    """The frames of ``run`` from ``first_frame_number`` on that a damaged file lost: their
    exposure happened, so it goes into the RDSR's events and ``summary.lost_frames``, and the
    SRDL levels it makes the study reach into the study's alerts (also returned, as raised at
    the last frame seen)."""
    alerts = state.dose.add_lost(run, first_frame_number, index=max(state.frames - 1, 0))
    state.alerts.extend(a.as_dict() for a in alerts)
    return alerts


def build_summary(study: Study, state, rejected: list[Rejection]) -> dict:
    totals = state.dose.live  # as the events counted them (study_dose: recounted, whole)
    device = study.device if study.runs else (state.dose.report_device or study.device)
    return {
        "study_instance_uid": study.study_instance_uid,
        "frames": state.frames,
        "runs": len(study.runs),
        "fluoro_time_s": round(totals.fluoro_time_s, 6),
        "acquisition_time_s": round(totals.acquisition_time_s, 6),
        "air_kerma_mgy": dose_value(totals.air_kerma_mgy),
        "dap_gycm2": dose_value(totals.dap_gycm2),
        "dose_source": state.dose.live_source,  # of the totals above: as the events counted
        # runs whose air kerma or DAP is unknown: not in the totals, which are lower bounds
        "runs_dose_unknown": state.dose.live_runs_dose_unknown,
        # runs without usable frame timing: their time is not in the times (lower bounds)
        "runs_time_unknown": state.dose.runs_time_unknown,
        "contrast_state": state.contrast_study_state,
        "stages": list(state.stage_names),
        "rejected_files": [r.as_dict() for r in rejected],
        # frames of damaged files given by their header only: not in the totals above (no
        # event shows them), in the RDSR's irradiation events
        "lost_frames": {"frames": state.dose.lost_frames,
                        "air_kerma_mgy": dose_value(state.dose.lost.air_kerma_mgy),
                        "dap_gycm2": dose_value(state.dose.lost.dap_gycm2),
                        "fluoro_time_s": round(state.dose.lost.fluoro_time_s, 6),
                        "acquisition_time_s": round(state.dose.lost.acquisition_time_s, 6),
                        "runs_dose_unknown": state.dose.lost_runs_dose_unknown},
        # the device report's events that name no image (fluoroscopy not stored): the study's
        # dose outside the frames, in the alerts, the SRDL check and the RDSR, not in the totals
        "unstored": _totals_dict(state.dose.unstored, events=len(state.dose.unstored_events)),
        # the study's whole dose: the frames, the frames lost, the exposures not stored
        "study_dose": {**_totals_dict(state.dose.totals, state.dose.lost, state.dose.unstored),
                       "dose_source": state.dose.study_source},
        "latency_ms": latency_summary(state.latencies_ms),
        "degraded_frames": state.degraded_frames,
        "no_picture_frames": state.no_picture_frames,
        # runs read on an assumption (polarity, pixel spacing): their guidance may be wrong
        "assumed_runs": dict(state.assumed_runs),
        "alerts": list(state.alerts),
        "srdl_exceeded": list(state.dose.srdl_exceeded),
        # the runs' device; without runs, the device report's (user review s20 I6)
        "device": {"manufacturer": device.manufacturer, "model": device.model},
        "dose_reports": list(study.dose_reports),
    }


def _totals_dict(*parts, **counts) -> dict:
    return {**counts,
            "air_kerma_mgy": dose_value(sum(p.air_kerma_mgy for p in parts)),
            "dap_gycm2": dose_value(sum(p.dap_gycm2 for p in parts)),
            "fluoro_time_s": round(sum(p.fluoro_time_s for p in parts), 6),
            "acquisition_time_s": round(sum(p.acquisition_time_s for p in parts), 6)}


def write_json(path: str | Path, obj: dict) -> None:
    """``obj`` as indented JSON in ``path``; an OSError names ``path`` (a full disk's does not:
    the file is open by then)."""
    try:
        with replaced(path) as out:
            json.dump(obj, out, indent=2)
            out.write("\n")
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def _contrast_line(summary: dict) -> str:
    if "contrast" in summary.get("stages", ("contrast",)):
        return summary["contrast_state"]
    return "not assessed (the contrast stage did not run; see --stages)"


def format_summary(summary: dict) -> str:
    """A short human summary of a replay."""
    lines = [
        f"study      {summary['study_instance_uid']}",
        f"frames     {summary['frames']} in {summary['runs']} runs"
        + (f" ({late} degraded for the deadline)" if (late := summary["degraded_frames"]
                                                        - summary.get("no_picture_frames", 0)) else "")
        + (f", {summary['no_picture_frames']} showing no picture" if summary.get("no_picture_frames") else ""),
        f"fluoro     {summary['fluoro_time_s']:.1f} s"
        + (f"  (+{summary['acquisition_time_s']:.1f} s acquisition)" if summary["acquisition_time_s"] else "")
        # a run without usable timing adds an unknown time, not 0 (user review s20 F2)
        + (f"  (+ {counted(n, 'run')} of unknown time, not counted)"
           if (n := summary.get("runs_time_unknown")) else ""),
        # no source: the totals' zeros are no measurement, and a reader copies what is printed
        "dose       no image frames (the device's dose report below)" if not summary["runs"]
        and (summary.get("unstored") or {}).get("events") else
        # sifluoro's own earlier report is not the device's; a report of another study neither
        "dose       no image frames, and no device dose report of this study" if not summary["runs"]
        and summary.get("dose_reports") else
        # frames not shown (damaged, no timing): their dose, from the headers, is below
        "dose       no frame shown (the dose of the frames not shown is below)"
        if not summary["frames"] and (summary.get("lost_frames") or {}).get("frames") else
        "dose       unknown (no dose in the headers or a report, and no technique to estimate "
        "it from)" if summary["dose_source"] == "none" else
        f"dose       {summary['air_kerma_mgy']:.2f} mGy air kerma, {summary['dap_gycm2']:.3f} Gy·cm² DAP"
        f"  [{summary['dose_source']}]"
        # its air kerma may be counted and its DAP not (an estimate without the SID): said so
        + (f"  (+ {counted(n, 'run')} of unknown air kerma or DAP, left out of that total)"
           if (n := summary.get("runs_dose_unknown")) else ""),
    ]
    lost = summary.get("lost_frames") or {}
    unknown = lost.get("runs_dose_unknown")
    if lost.get("frames") and not (lost["air_kerma_mgy"] or lost["dap_gycm2"]) and unknown:
        lines.append(f"           + {counted(lost['frames'], 'frame')} lost in damaged files, their dose "
                     "unknown")
    elif lost.get("frames"):
        lines.append(f"           + {lost['air_kerma_mgy']:.2f} mGy, {lost['dap_gycm2']:.3f} Gy·cm² "
                     f"of {counted(lost['frames'], 'frame')} lost in damaged files (in the RDSR, not above)"
                     + (f"; {counted(unknown, 'run')} of them of unknown dose, "
                        "not counted" if unknown else ""))
    unstored = summary.get("unstored") or {}
    if any(unstored.get(k) for k in ("events", "air_kerma_mgy", "dap_gycm2", "fluoro_time_s")):
        lines.append(f"           + {unstored['air_kerma_mgy']:.2f} mGy, {unstored['dap_gycm2']:.3f} Gy·cm², "
                     f"{unstored['fluoro_time_s']:.1f} s of {unstored['events']} exposures not stored "
                     "as images and the rest of the device's totals (its dose report; not above)")
    whole = summary.get("study_dose") or {}
    if whole and any(abs(whole[k] - summary[k]) > 1e-9 for k in ("air_kerma_mgy", "dap_gycm2")):
        lines.append(f"study dose {whole['air_kerma_mgy']:.2f} mGy air kerma, {whole['dap_gycm2']:.3f} Gy·cm² DAP, "
                     f"fluoro {whole['fluoro_time_s']:.1f} s"
                     + (f" (+ {counted(n, 'run')} of unknown time)"
                        if (n := summary.get("runs_time_unknown")) else ""))
    lines += [
        f"contrast   {_contrast_line(summary)}",
        f"stages     {', '.join(summary.get('stages', ())) or 'none (dose only)'}",
        f"latency    p50 {summary['latency_ms']['p50']:.2f} ms, p99 {summary['latency_ms']['p99']:.2f} ms",
    ]
    for alert in summary["alerts"]:
        lines.append(f"ALERT      {alert['message']} (frame {alert['index']})")
    # notes, exports, a simulated case's truth.json beside a study: counted, not each a fault
    not_dicom = [r["file"] for r in summary["rejected_files"] if is_not_dicom(r)]
    for rej in summary["rejected_files"]:
        if not is_not_dicom(rej):  # a damaged DICOM header is named: its exposure is missing
            lines.append(f"rejected   {rej['file']}: {rej['reason']}")
    if not_dicom:
        lines.append(f"passed over {counted(len(not_dicom), 'file')}, not DICOM: {first_few(not_dicom)}")
    if others := summary.get("other_studies_dose_reports"):
        lines.append(f"not read   {counted(len(others), 'dose report')} of other studies "
                     f"({first_few(others)}): read them with `sifluoro dose summary`")
    return "\n".join(lines)

