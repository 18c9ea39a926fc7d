"""``sifluoro dose summary``: the dose of each study found under some paths (docs/contract.md §4).

RDSRs are read with :func:`read_rdsr`; image studies are accumulated from their headers with
:class:`DoseAccumulator` (no pixels decoded). When a study has both, the report wins: it
counts fluoroscopy that was never stored as images. Several reports of one study are merged:
a report that another names as its predecessor (a correction) is left out; a report whose
events are all in another one is superseded by it (a later, cumulative report);
disjoint reports (one per performed procedure step) are added, except totals-only reports of
Study scope (the newest stands for the others: each covers the study so far); a report sifluoro wrote
(``replay --rdsr``, the plug-in) is left out when the device's own report is there (it repeats
the device's exposures under event UIDs of its own), except its runs that lie wholly outside
the time the device's report covers (a report sent before the procedure ended): those are
added. The same rule holds for the study's image runs: a run that no report event names and
that lies wholly outside the report's time adds its dose (header or estimate).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

from sifluoro.acquire.dicom_reader import scan
from sifluoro.config import DoseSettings
from sifluoro.dicom_time import wall, wall_seconds
from sifluoro.dose.accumulate import accumulate_study
from sifluoro.dose.rdsr_read import names_an_sr_class, read_rdsr
from sifluoro.dose.records import (
    FLUOROSCOPY, SINGLE_PLANE, IrradiationEvent, PlaneTotals, StudyDose, event_duration_s,
    is_timed, totals_from_events)
from sifluoro.errors import InputError
from sifluoro.model import Rejection, Run, Study, first_few

log = logging.getLogger(__name__)


def summarize(paths: Iterable[str | Path], *, settings: DoseSettings | None = None
              ) -> tuple[list[StudyDose], list[Rejection]]:
    """The dose of every study under ``paths``, sorted by Study Instance UID.

    Returns
    -------
    studies : list of StudyDose
    rejected : list of Rejection
        Files that could not be used (image files and dose reports alike), with the reason.
    """
    from sifluoro.acquire.dicom_reader import order_runs

    settings = settings or DoseSettings()
    found = scan(list(paths))
    rejected = [_as_report(r) for r in found.rejected]
    reports: dict[str, list[StudyDose]] = {}
    for path in found.dose_reports:
        try:
            _check_whole(path)
            report = read_rdsr(path)  # it reads the file, a damaged one a typed error
        except InputError as exc:
            log.info("rejected %s", exc)  # the caller reports it
            rejected.append(Rejection.of(path, exc))
            continue
        reports.setdefault(report.study_instance_uid, []).append(report)
    by_uid: dict[str, StudyDose] = {uid: merge_reports(group) for uid, group in reports.items()}
    covered = {**{r.scope_study_instance_uid: uid for uid, r in by_uid.items()
                  if r.scope_study_instance_uid}, **{uid: uid for uid in by_uid}}
    for uid, runs in found.runs_by_study.items():
        if uid in covered:
            by_uid[covered[uid]] = with_runs_outside(by_uid[covered[uid]], runs, settings)
            continue
        ordered = order_runs(runs)
        study = Study(uid, tuple(ordered))
        dose = accumulate_study(study, settings)
        by_uid[uid] = replace(dose.study_dose(uid, study.device), path=_folder_of(ordered))
    studies = [with_srdl_reached(by_uid[uid], settings) for uid in sorted(by_uid)]
    return studies, rejected


def _folder_of(runs) -> str | None:
    """The folder holding a study's image files (their common folder), or None."""
    # as the inputs were given (relative or not), as a report's path is (user review s20 P6);
    # files in unrelated folders have no one folder ("/" would say nothing)
    folders = {os.path.dirname(r.path) or "." for r in runs if r.path}
    if len(folders) == 1:
        return folders.pop()
    try:
        common = os.path.commonpath(sorted(folders)) if folders else None
    except ValueError:  # relative and absolute mixed, other drives
        return None
    return common if common and common not in (os.sep, ".") else None


def device_report(study: Study, rejected: list[Rejection],
                  others: list[str] | None = None) -> StudyDose | None:
    """The device's dose report of the study among the inputs, its copies and partial reports
    merged into one (each used alone counted their runs once per report), or None. The
    reports of other studies are passed over (their paths appended to ``others``).

    sifluoro's own earlier report of the study is not the device's: its doses are this
    program's estimates, made again from the images with the current settings."""
    reports = []
    for path in study.dose_reports:
        try:
            _check_whole(path)  # a copy cut short is read as far as it goes, short of events
            report = read_rdsr(path)
        except InputError as exc:
            rejected.append(Rejection.of(path, exc))
            continue
        if report.study_instance_uid != study.study_instance_uid:
            if others is not None:
                others.append(path)
            continue
        if report.by_sifluoro:
            log.info("%s: sifluoro's own dose report; the dose is worked out again from the images",
                     path)
            continue
        reports.append(report)
    return merge_reports(reports) if reports else None


def _as_report(rejection: Rejection) -> Rejection:
    """A dose report cut too short for pydicom is rejected by the image reader, which speaks of
    its missing pixel data: word it as ``audit ingest`` does (review s16 L2)."""
    if rejection.error not in ("DamagedPixelDataError", "DamagedFileError", "UnsupportedDicomError"):
        return rejection  # (the image reader says DamagedFileError of an SR cut in its meta)
    try:
        if not names_an_sr_class(rejection.file):
            return rejection
        _check_whole(rejection.file)
        read_rdsr(rejection.file)  # one cut before its content: the report reader says so
    except OSError:
        return rejection
    except InputError as exc:
        return Rejection.of(rejection.file, exc)
    return rejection


def _check_whole(path: str) -> None:
    """Refuse a report cut short (pydicom reads one as far as it goes: beside the whole
    report, a copy short of its events would be added as another procedure step)."""
    from sifluoro.audit._fastsr import CutShort, cut_short_error, parse_if_covered

    try:
        parse_if_covered(Path(path).read_bytes())
    except CutShort as exc:
        raise cut_short_error(exc, path) from None
    except OSError:
        pass  # pydicom says why


#: a run in sifluoro's report that ends this long before the device report's first event, or
#: starts this long after its last one ends, is not in the device report (clock and
#: start-time differences between an image header and the report are a few seconds)
OUTSIDE_REPORT_S = 10.0


def merge_reports(reports: list[StudyDose]) -> StudyDose:
    """One StudyDose from several reports of the same study (see the module notes)."""
    replaced = {uid for r in reports for uid in r.predecessors}
    if any(r.sop_instance_uid in replaced for r in reports):
        # a corrected report names the one it corrects (its events may have new UIDs: added
        # as another procedure step, the corrected exposures would count twice)
        log.info("study dose: %d report(s) replaced by a later one that names them as its "
                 "predecessor", sum(r.sop_instance_uid in replaced for r in reports))
        reports = [r for r in reports if r.sop_instance_uid not in replaced] or reports
    device = [r for r in reports if not r.by_sifluoro]
    if not device:
        return _merge(reports)
    # sifluoro's report repeats the device's exposures under event UIDs of its own: only
    # its runs outside the time the device's report covers (a report sent before the
    # procedure ended) are added
    merged = _merge(device)
    own = [r for r in reports if r.by_sifluoro]
    extra = _outside_report(merged, [e for r in own for e in r.events])
    if not extra:
        return merged
    return _with_extra(merged, extra, "sifluoro's report", [r.path for r in own])


def with_runs_outside(report: StudyDose, runs: list[Run], settings: DoseSettings) -> StudyDose:
    """``report`` (a study's merged reports) with the dose of the study's image ``runs`` (start
    times absolute, as read) that no report event names and that lie wholly outside the
    report's time: a run made after the report was sent, or before the step it covers."""
    from sifluoro.acquire.dicom_reader import order_runs

    named = {uid for e in report.events for uid in e.sop_instance_uids}
    # the header's own date and time: a timestamp turned back into wall-clock time moves a run
    # started in the spring-forward hour an hour later (out of the report's span)
    starts = {r.sop_instance_uid: r.started_at for r in runs}
    rest = [r for r in runs if r.sop_instance_uid not in named]
    if not rest:
        return report
    ordered = order_runs(rest)
    events = [replace(e, start=starts.get(e.sop_instance_uids[0]))
              for e in accumulate_study(Study(report.study_instance_uid, tuple(ordered)),
                                        settings).events()]
    extra = _outside_report(report, events)
    inside = len(events) - len(extra)
    if inside:
        log.info("study dose: %d image run(s) that the report names by no event lie within its "
                 "time (or it gives none); taken as in the report", inside)
    if not extra:
        return report
    return _with_extra(report, extra, "the images", [])


def _with_extra(merged: StudyDose, extra: tuple[IrradiationEvent, ...], what: str,
                paths: list[str | None]) -> StudyDose:
    """``merged`` with single-plane ``extra`` events added (on a biplane report, to the
    frontal plane A)."""
    planes = sorted({p.plane for p in merged.planes})
    plane = planes[0] if len(planes) == 1 else ("A" if "A" in planes else SINGLE_PLANE)
    extra = tuple(replace(e, plane=plane) for e in extra)
    log.warning("study dose: %d run(s) of %s are outside the time the device's report covers; "
                "their dose is added to it (plane %s)", len(extra), what, plane)
    return replace(merged, events=merged.events + extra,
                   planes=tuple(_add_planes([*merged.planes, totals_from_events(plane, extra)])),
                   planes_from_report=False,
                   dose_source=_dose_source(merged.events + extra, merged.dose_source),
                   path=", ".join(x for x in [merged.path, *paths] if x))


def _dose_source(events, default: str) -> str:
    used = {e.dose_source for e in events} - {"none"}
    return "mixed" if len(used) > 1 else default


def _outside_report(device: StudyDose, candidates: list[IrradiationEvent]
                    ) -> tuple[IrradiationEvent, ...]:
    """``candidates`` that lie wholly outside the device report's time span; none when the
    device report gives no start times (nothing shows what it misses)."""
    timed = [e for e in device.events if e.start is not None]
    if not timed:
        return ()
    candidates = [e for e in candidates if e.start is not None]
    # each candidate against the report's span as instants when both carry UTC offsets (a
    # report in UTC and images in local time are the same moments), else on the wall clock
    # (one clock; some carry an offset, some not): pair by pair, as the accumulator matches
    bounds = {clock: _span(timed, clock) for clock in (wall, _instant)
              if clock is wall or all(e.start.tzinfo is not None for e in timed)}
    out, seen = [], set()
    for e in candidates:
        if e.event_uid in seen:
            continue
        clock = _instant if e.start.tzinfo is not None and _instant in bounds else wall
        first, last = bounds[clock]
        start = clock(e.start)
        if start + timedelta(seconds=event_duration_s(e)) < first or start > last:
            seen.add(e.event_uid)
            out.append(e)
    return tuple(out)


def _span(events: list[IrradiationEvent], clock) -> tuple[datetime, datetime]:
    """The events' time span on ``clock``, widened by :data:`OUTSIDE_REPORT_S` each side."""
    margin = timedelta(seconds=OUTSIDE_REPORT_S)
    return (min(clock(e.start) for e in events) - margin,
            max(clock(e.start) + timedelta(seconds=event_duration_s(e)) for e in events) + margin)


def _instant(t: datetime) -> datetime:
    return t.astimezone(timezone.utc)


def _merge(reports: list[StudyDose]) -> StudyDose:
    # totals-only reports whose scope is the whole study are cumulative: each device's newest
    # stands for its others (a C-arm and a mobile unit in one study each give theirs; reports
    # of performed procedure steps add up)
    by_device: dict[tuple[str, str, str], list[StudyDose]] = {}
    for r in reports:
        if not r.events and r.scope == "study":
            d = r.device
            by_device.setdefault((d.manufacturer, d.model, d.serial_number), []).append(r)
    for whole in by_device.values():
        if len(whole) > 1:
            newest = max(whole, key=_made_at)
            log.info("study dose: %d totals-only report(s) of Study scope superseded by the "
                     "device's newest, %s", len(whole) - 1, newest.path)
            reports = [r for r in reports if r is newest or all(r is not w for w in whole)]
    kept = []
    # of reports with the same events, the newest is kept (a correction sent again under a new
    # SOP Instance UID), whatever the files' names
    for report in sorted(reports, key=lambda r: (-len(r.events), *(-t for t in _made_at(r)))):
        uids = {e.event_uid for e in report.events}
        if any(uids <= {e.event_uid for e in k.events} for k in kept) and uids:
            continue  # superseded by a cumulative report already kept
        if not uids and any(not k.events and k.planes == report.planes for k in kept):
            continue  # a totals-only report sent again
        kept.append(report)
    if len(kept) == 1:
        return kept[0]
    seen, events = set(), []
    for report in kept:
        for event in report.events:
            if event.event_uid not in seen:
                seen.add(event.event_uid)
                events.append(event)
    overlapping = len(events) < sum(len(r.events) for r in kept)
    if overlapping or not all(r.planes_from_report for r in kept):
        planes = tuple(totals_from_events(p, events) for p in sorted({e.plane for e in events}))
        from_report = False
    else:
        planes = tuple(_add_planes([p for r in kept for p in r.planes]))
        from_report = True
    first = kept[0]
    return replace(first, events=tuple(events), planes=planes, planes_from_report=from_report,
                   path=", ".join(r.path or "" for r in kept))


def _made_at(report: StudyDose) -> tuple[float, float]:
    """When the report was made (seconds): its own date, then its file's modification time
    (a correction often keeps the original's dates)."""
    own = wall_seconds(report.created) if report.created is not None else 0.0
    try:
        return own, os.stat(report.path.split(", ")[0]).st_mtime if report.path else 0.0
    except OSError:
        return own, 0.0


def _add_planes(planes: list[PlaneTotals]) -> list[PlaneTotals]:
    out: dict[str, PlaneTotals] = {}
    for p in planes:
        if p.plane not in out:
            out[p.plane] = p
            continue
        q = out[p.plane]
        sums = {}
        for name in ("dap_gycm2", "air_kerma_mgy", "fluoro_dap_gycm2", "fluoro_air_kerma_mgy",
                     "acquisition_dap_gycm2", "acquisition_air_kerma_mgy", "fluoro_time_s",
                     "acquisition_time_s", "n_radiographic_frames"):
            a, b = getattr(q, name), getattr(p, name)
            sums[name] = None if a is None and b is None else (a or 0) + (b or 0)
        out[p.plane] = replace(q, **sums)
    return [out[k] for k in sorted(out)]


def with_srdl_reached(study: StudyDose, settings: DoseSettings) -> StudyDose:
    """``study`` with ``srdl_exceeded`` set from its totals and the settings' substantial
    radiation dose levels (air kerma, DAP, fluoroscopy time; a level of 0 is disabled).

    A study that already names the levels it reached (counted frame by frame) is returned as
    it is; so is one that reached none.
    """
    if study.srdl_exceeded:
        return study
    reached = []
    for name, level, value in (("air_kerma", settings.srdl_air_kerma_mgy, study.air_kerma_mgy),
                               ("dap", settings.srdl_dap_gycm2, study.dap_gycm2),
                               ("fluoro_time", settings.srdl_fluoro_time_s, study.fluoro_time_s)):
        if level > 0 and value >= level:
            reached.append(name)
    return replace(study, srdl_exceeded=tuple(reached)) if reached else study


def json_lines(studies: list[StudyDose]) -> str:
    """One JSON object per study per line, doses to :data:`sifluoro.contract.DOSE_DIGITS`
    significant digits (docs/contract.md §2: a report's 14.06 mGy, not 14.059999999999999)."""
    return "".join(json.dumps(_doses_rounded(s.summary()), separators=(", ", ": ")) + "\n"
                   for s in studies)


def _doses_rounded(value):
    from sifluoro.contract import dose_value

    if isinstance(value, dict):
        return {k: (dose_value(v) if k.endswith(("_mgy", "_gycm2")) and isinstance(v, float)
                    else _doses_rounded(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_doses_rounded(v) for v in value]
    return value


def _number(value: float | None, width: int, decimals: int, *, at_least: bool = False) -> str:
    """A right-aligned cell; ``at_least``: a lower bound (events of unknown dose left out)."""
    if value is None:
        return f"{'unknown':>{width}}"
    return f"{('≥' if at_least else '') + f'{value:.{decimals}f}':>{width}}"


_SOURCE_SHORT = {"reported": "rep", "estimated": "est", "mixed": "mix", "none": "none"}


def table(studies: list[StudyDose], rejected: list[Rejection] = ()) -> str:
    """A human table: one row per study, then per plane when there are several."""
    header = (f"{'study':<28} {'source':<8} {'device':<30} {'events':>6} {'fluoro s':>9} "
              f"{'DAP Gy·cm²':>11} {'Ka,r mGy':>10}  SRDL")
    lines = [header, "-" * len(header)]
    bounded = 0
    for s in studies:
        d = s.summary()
        uid = d["study_instance_uid"]
        uid = uid if len(uid) <= 28 else "…" + uid[-27:]
        device = f"{d['device']['manufacturer']} {d['device']['model']}".strip()
        device = device if len(device) <= 30 else device[:29] + "…"
        source = d["source"] if d["source"] == "rdsr" else f"img/{_SOURCE_SHORT.get(d['dose_source'], d['dose_source'])}"
        # each total a lower bound only when events leave out that quantity (a header reporting
        # DAP only left its exact DAP marked '≥' too)
        partial = d["events_dose_unknown"] > 0
        partial_dap = partial and any(e.dap_gycm2 is None for e in s.events)
        partial_kerma = partial and any(e.air_kerma_mgy is None for e in s.events)
        # a report's own accumulated totals are the device's whole count
        short_time = not s.planes_from_report and any(
            e.kind == FLUOROSCOPY and not is_timed(e) for e in s.events)
        bounded += partial or short_time
        lines.append(f"{uid:<28} {source:<8} {device:<30} {d['events']:>6} "
                     f"{_number(d['fluoro_time_s'], 9, 1, at_least=short_time)} "
                     f"{_number(d['dap_gycm2'], 11, 4, at_least=partial_dap)} "
                     f"{_number(d['air_kerma_mgy'], 10, 2, at_least=partial_kerma)}  "
                     f"{','.join(d['srdl_exceeded']) or '-'}")
        if len(s.planes) > 1:
            for p in d["per_plane"]:
                lines.append(f"{'  plane ' + p['plane']:<28} {'':<8} {'':<30} {p['events']:>6} "
                             f"{p['fluoro_time_s'] or 0.0:>9.1f} {_number(p['dap_gycm2'], 11, 4)} "
                             f"{_number(p['air_kerma_mgy'], 10, 2)}")
    if studies:
        lines.append("source: rdsr = a dose report (a device's, or sifluoro's own from replay --rdsr); "
                     "img/ = from the images: rep(orted "
                     "in their headers), est(imated from the technique), mix(ed), none (unknown)")
    if bounded:
        lines.append("≥ a lower bound: the study has events of unknown dose or time, not "
                     "counted (events_dose_unknown, events_time_unknown in --json)")
    # a folder's notes and exports are counted, not listed one by one as faults (review s19)
    not_dicom = [r for r in rejected if r.not_dicom]
    for r in rejected:
        if not r.not_dicom or len(not_dicom) == 1:
            lines.append(f"rejected {r.file}: {r.reason}")
    if len(not_dicom) > 1:
        lines.append(f"passed over {len(not_dicom)} files, not DICOM: "
                     f"{first_few(r.file for r in not_dicom)}")
    return "\n".join(lines)
