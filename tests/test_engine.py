"""The Engine API: typed events to handlers, the same summary as replay, one study per engine."""
from __future__ import annotations

import dataclasses
import json
import logging
import threading

import pytest

from sifluoro import Engine, Settings
from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.engine import AlertEvent, DoseEvent, FrameEvent
from sifluoro.errors import InputError
from sifluoro.replay import replay
from tests.dicom_fixtures import RunSpec, as_device_report, technique, write_study

NO_DEADLINE = Settings(latency_budget_ms=1e9)


def _without_timing(summary):
    return {k: v for k, v in summary.items() if k not in ("latency_ms", "degraded_frames")}


def test_run_gives_typed_events_and_the_replay_summary(tmp_path):
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=4), RunSpec(30.0, n_frames=3,
                tech=technique(reported_air_kerma_mgy=3500.0))])
    engine = Engine(NO_DEADLINE)
    got: dict[str, list] = {"frame": [], "dose": [], "alert": []}
    for kind in got:
        engine.on(kind, got[kind].append)
    summary = engine.run(tmp_path / "study")
    assert [e.index for e in got["frame"]] == list(range(7))
    assert all(isinstance(e, FrameEvent) for e in got["frame"])
    assert all(isinstance(e, DoseEvent) for e in got["dose"])
    assert got["dose"][-1].air_kerma_mgy == pytest.approx(summary["air_kerma_mgy"])
    assert [a.kind for a in got["alert"]] == ["air_kerma"] and isinstance(got["alert"][0], AlertEvent)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got["dose"][0].air_kerma_mgy = 0.0
    replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl", summary_path=tmp_path / "s.json",
           settings=NO_DEADLINE)
    expected = json.loads((tmp_path / "s.json").read_text())
    assert _without_timing(summary) == _without_timing(expected)


def test_a_frame_handler_that_edits_its_event_does_not_change_the_typed_events(tmp_path):
    """Review s23 #11: the dose event was made after the "frame" handlers ran, from the dicts
    they were handed: a handler that wrote into them changed what every dose handler got."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])
    engine = Engine(NO_DEADLINE)
    doses = []

    def meddle(event):
        event.event["dose"]["air_kerma_mgy"] = -1.0

    engine.on("frame", meddle)
    engine.on("dose", doses.append)
    engine.run(tmp_path / "study")
    assert [d.air_kerma_mgy > 0 for d in doses] == [True] * 3


def test_feed_from_threads_and_a_failing_handler(tmp_path, caplog):
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=6)])
    frames = list(iter_frames(read_study([tmp_path / "study"]), []))
    engine = Engine(NO_DEADLINE)
    engine.on("frame", lambda e: 1 / 0)
    seen = []
    engine.on("dose", seen.append)
    threads = [threading.Thread(target=engine.feed, args=(f,)) for f in frames[:3]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in frames[3:]:
        engine.feed(f)
    assert len(seen) == 6 and sorted(e.index for e in seen) == list(range(6))
    assert engine.close()["frames"] == 6
    assert "frame handler failed" in caplog.text
    # its traceback once, then a count (user review s18: one traceback per frame, 48 a demo)
    assert caplog.text.count("ZeroDivisionError") == 1
    assert "a frame handler failed on 6 frames" in caplog.text


def test_one_engine_follows_one_study(tmp_path):
    write_study(tmp_path / "a", [RunSpec(0.0)], study_uid="1.2.3.1")
    write_study(tmp_path / "b", [RunSpec(0.0)], study_uid="1.2.3.2")
    engine = Engine(NO_DEADLINE)
    engine.feed(next(iter_frames(read_study([tmp_path / "a"]), [])))
    with pytest.raises(InputError, match="one Engine per study"):
        engine.feed(next(iter_frames(read_study([tmp_path / "b"]), [])))
    with pytest.raises(ValueError, match="unknown event kind"):
        engine.on("needles", print)


def test_prepare_then_feed_frames_one_by_one_gives_the_run_summary(tmp_path):
    """A caller that reads the study itself and feeds frames at its own pace: prepared runs,
    the reader's rejections and the dose accumulator are the engine's, as with run()."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=4), RunSpec(30.0, n_frames=3)])
    (tmp_path / "study" / "junk.dcm").write_bytes(b"not dicom")
    study = read_study([tmp_path / "study"])
    engine = Engine(NO_DEADLINE)
    assert engine.dose is None
    engine.prepare(study)
    for frame in iter_frames(study, []):
        engine.feed(frame)
    other = read_study([write_study(tmp_path / "b", [RunSpec(0.0)], study_uid="1.2.3.9")[0]])
    with pytest.raises(InputError, match="one Engine per study"):
        engine.prepare(other)
    summary = engine.close()
    expected = Engine(NO_DEADLINE).run(tmp_path / "study")
    assert _without_timing(summary) == _without_timing(expected)
    assert [r["file"].endswith("junk.dcm") for r in summary["rejected_files"]] == [True]
    assert engine.dose.totals.air_kerma_mgy == pytest.approx(summary["air_kerma_mgy"])


@pytest.mark.parametrize("stages, shown", [("register", "not_assessed"), ("contrast", "none")])
def test_a_frame_event_says_whether_contrast_was_assessed(tmp_path, stages, shown):
    """``none`` from a pipeline without the contrast stage means not assessed, not no contrast:
    live outputs (web view, OpenIGTLink) show what ``FrameEvent.contrast_state`` says."""
    from sifluoro.stages import make_stages

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=2)])
    engine = Engine(NO_DEADLINE, stages=make_stages((stages,), NO_DEADLINE))
    frames: list[FrameEvent] = []
    engine.on("frame", frames.append)
    engine.run(tmp_path / "study")
    assert frames[-1].stages == (stages,)
    assert frames[-1].event["contrast"]["state"] == "none"
    assert frames[-1].contrast_state == shown


def test_run_streams_a_frame_generator(tmp_path):
    """Frames given one by one (a live source) get their events as they come, not once the
    source has ended."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=4)])
    frames = list(iter_frames(read_study([tmp_path / "study"]), []))
    engine = Engine(NO_DEADLINE)
    order: list[str] = []
    engine.on("frame", lambda e: order.append(f"event {e.index}"))

    def source():
        for frame in frames:
            order.append(f"yield {frame.index}")
            yield frame

    summary = engine.run(source())
    assert order == [f"{what} {i}" for i in range(4) for what in ("yield", "event")]
    assert summary["frames"] == 4


def test_the_devices_report_among_the_inputs_gives_the_engines_dose_as_in_replay(tmp_path):
    """``export``, ``serve-igtl`` and ``view`` run the Engine: it ignored the device's RDSR
    among the inputs, summed the headers' dose and sent the PACS a report contradicting the
    device's (review s10 A#3)."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(15.0, n_frames=3)])
    estimated = replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl",
                       summary_path=tmp_path / "s.json", rdsr_path=tmp_path / "device.dcm",
                       stages=[]).summary
    as_device_report(tmp_path / "device.dcm", tmp_path / "study" / "device.dcm")
    by_replay = replay([tmp_path / "study"], events_path=tmp_path / "e2.jsonl",
                       summary_path=tmp_path / "s2.json", stages=[]).summary
    by_engine = Engine(NO_DEADLINE, stages=[]).run(tmp_path / "study")
    assert by_replay["dose_source"] == by_engine["dose_source"] == "rdsr"
    assert by_engine["dap_gycm2"] == pytest.approx(by_replay["dap_gycm2"])
    assert by_engine["dap_gycm2"] == pytest.approx(1.5 * estimated["dap_gycm2"], rel=1e-6)
    assert by_engine["dose_reports"] == [str(tmp_path / "study" / "device.dcm")]


def test_a_device_report_announced_after_the_frames_recounts_them(tmp_path):
    """A plug-in announces each run as it arrives and the C-arm's RDSR at the end of the
    procedure: the runs already counted kept their header estimates and the summary (and the
    RDSR sent) ignored the device's dose."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(15.0, n_frames=3)])
    estimated = replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl",
                       summary_path=tmp_path / "s.json", rdsr_path=tmp_path / "device.dcm",
                       stages=[]).summary
    as_device_report(tmp_path / "device.dcm", tmp_path / "late.dcm")
    engine = Engine(NO_DEADLINE, stages=[])
    study = read_study([tmp_path / "study"])
    engine.prepare(study)
    for frame in iter_frames(study, []):
        engine.feed(frame)
    engine.prepare(read_study([tmp_path / "late.dcm"], study_uid=study.study_instance_uid))
    summary = engine.close()
    # the study's dose is the device's (and says so); the totals keep the source they were
    # counted with (review s16, second review M1)
    assert (summary["study_dose"]["dose_source"], summary["dose_source"]) == ("rdsr", "estimated")
    # the study's dose is the device's; the frames' counter stays as the events counted it
    # (docs/contract.md §3: it never goes down, review s16 H5)
    whole = summary["study_dose"]
    assert whole["dap_gycm2"] == pytest.approx(1.5 * estimated["dap_gycm2"], rel=1e-6)
    assert whole["air_kerma_mgy"] == pytest.approx(1.5 * estimated["air_kerma_mgy"], rel=1e-6)
    assert summary["air_kerma_mgy"] == pytest.approx(estimated["air_kerma_mgy"], rel=1e-6)
    assert [e.dose_source for e in engine.dose.events()] == ["rdsr", "rdsr"]


def test_stages_may_be_given_by_name():
    engine = Engine(NO_DEADLINE, stages=["contrast", "register"])
    assert [s.name for s in engine.pipeline.stages] == ["register", "contrast"]
    with pytest.raises(Exception, match="bogus"):
        Engine(NO_DEADLINE, stages=["bogus"])


@pytest.mark.parametrize("mode", ["feed", "submit"])
def test_a_run_fed_unannounced_pays_its_warm_up_in_its_latency_and_says_so(tmp_path, caplog,
                                                                         mode):
    """Review s13 M2: without prepare(), the stages' warm-up ran on the first live frame but
    its event's latency_ms left it out. Now the latency counts it and a warning says so, once
    per frame shape; announced runs warn nothing."""
    import logging
    import re

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(30.0, n_frames=2)])
    study = read_study([tmp_path / "study"])
    frames = list(iter_frames(study, []))
    caplog.set_level(logging.WARNING, logger="sifluoro.pipeline")
    engine = Engine(NO_DEADLINE, stages=["register"])
    events = []
    engine.on("frame", events.append)
    for frame in frames:
        getattr(engine, mode)(frame)
    engine.close()
    warnings = [r.getMessage() for r in caplog.records if "arrived unannounced" in r.getMessage()]
    assert len(warnings) == 1  # two runs of one shape
    warm_ms = float(re.search(r"took (\d+) ms", warnings[0]).group(1))
    # submitted frames wait in a short queue: the oldest may have had its image work dropped
    first_analysed = next(e for e in events if not e.event.get("dropped"))
    assert first_analysed.latency_ms >= warm_ms - 1.0
    caplog.clear()
    announced = Engine(NO_DEADLINE, stages=["register"])
    announced.prepare(study)
    for frame in frames:
        getattr(announced, mode)(frame)
    announced.close()
    assert "arrived unannounced" not in caplog.text


def _prepared_with_a_late_report(tmp_path):
    """An engine prepared with a study of a 6-frame and a 2-frame run, and, in
    ``tmp_path/late``, the device's report (500 mGy) of the first run, announced later."""
    import pydicom

    from tests.dose.rdsr_fixtures import Ev, acquired, build_rdsr, save

    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=6), RunSpec(30.0, n_frames=2)])
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    save(build_rdsr([Ev(dap_gycm2=30.0, rp_mgy=500.0,
                        extra=[acquired(first.SOPInstanceUID, first.SOPClassUID)])],
                    study_uid=first.StudyInstanceUID), tmp_path / "late" / "rdsr.dcm")
    engine = Engine(NO_DEADLINE, stages=["register"])
    study = read_study([tmp_path / "study"])
    engine.prepare(study)
    return engine, study, list(iter_frames(study, []))


def _whole_kerma(d: DoseEvent) -> float:
    """The study's whole air kerma a dose event gives (the frames' when nothing else adds)."""
    return d.air_kerma_mgy if d.study_air_kerma_mgy is None else d.study_air_kerma_mgy


def test_a_recount_while_submitted_frames_wait_is_announced_after_them(tmp_path):
    """Review s13 M1: the device's report arrives (prepare) while submitted frames still wait
    for their image work. Their dose events carry the totals from before the report, so the
    recount's dose event comes after theirs, on the worker: the dose shown never goes down."""
    engine, study, frames = _prepared_with_a_late_report(tmp_path)
    release, shown = threading.Event(), []
    engine.on("frame", lambda e: release.wait(10) if e.index == 0 else None)  # the worker waits
    engine.on("dose", lambda d: shown.append((threading.current_thread().name, d.index,
                                              _whole_kerma(d))))
    for frame in frames[:6]:
        engine.submit(frame)
    engine.prepare(read_study([tmp_path / "late" / "rdsr.dcm"], study_uid=study.study_instance_uid))
    assert shown == []  # nothing announced on the caller's thread ahead of the queued frames
    release.set()
    for frame in frames[6:]:
        engine.submit(frame)
    summary = engine.close()
    values = [k for _, _, k in shown]
    assert values == sorted(values)
    assert values[-1] == pytest.approx(summary["study_dose"]["air_kerma_mgy"])
    assert max(values) == pytest.approx(500.0, abs=1.0)
    assert {name for name, _, _ in shown} == {"sifluoro-live"}
    recount = next(i for i, (_, _, k) in enumerate(shown) if k >= 499.0)
    assert shown[recount][1] == 5 and shown[recount - 1][1] == 5  # right after frame 5's event


def test_a_recount_after_every_submitted_frame_is_announced_on_the_worker(tmp_path):
    """Review s14: with submit(), handlers run on the worker; a report that came once every
    frame had its event was announced on the caller's thread (two threads calling handlers)."""
    engine, study, frames = _prepared_with_a_late_report(tmp_path)
    all_shown, shown = threading.Event(), []
    engine.on("frame", lambda e: all_shown.set() if e.index == len(frames) - 1 else None)
    engine.on("dose", lambda d: shown.append((threading.current_thread().name, _whole_kerma(d))))
    for frame in frames:
        engine.submit(frame)
    assert all_shown.wait(30)
    engine.prepare(read_study([tmp_path / "late" / "rdsr.dcm"], study_uid=study.study_instance_uid))
    summary = engine.close()
    assert shown[-1][1] == pytest.approx(summary["study_dose"]["air_kerma_mgy"])
    assert shown[-1][1] > 499.0
    assert {name for name, _ in shown} == {"sifluoro-live"}


def test_a_handler_that_calls_back_into_the_engine_gets_an_error_not_a_deadlock(tmp_path, caplog):
    """Review s13 L3: feed holds the engine's lock while it calls the handlers; a handler that
    called close() waited for ever. It now fails (logged, as any handler's error) and the
    frames go on."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])
    study = read_study([tmp_path / "study"])
    engine = Engine(NO_DEADLINE, stages=[])
    engine.prepare(study)
    engine.on("frame", lambda e: engine.close())
    done = threading.Event()

    def feed_all():
        for frame in iter_frames(study, []):
            engine.feed(frame)
        done.set()

    threading.Thread(target=feed_all, daemon=True).start()
    assert done.wait(60), "feed blocked: the handler's call deadlocked"
    assert engine.close()["frames"] == 3
    failed = [r for r in caplog.records if r.exc_info and "while the engine was calling it"
              in str(r.exc_info[1])]
    assert len(failed) == 1 and "a frame handler failed on 3 frames" in caplog.text  # s18


def test_a_run_announced_but_never_fed_gives_back_its_share_of_the_device_report(tmp_path):
    """Review s13 F5: the Engine is closed before the second run's frames come (a cut stream):
    the device report's fluoroscopy event given to that run counted nowhere (6990 of 7010
    mGy). Its share is now unstored dose, and the study's dose is the report's."""
    from tests.dose.test_report_cover import three_sources

    folder = three_sources(tmp_path / "study")
    study = read_study([folder])
    engine = Engine(NO_DEADLINE, stages=[])
    doses = []
    engine.on("dose", doses.append)
    engine.prepare(study)
    first = min(study.runs, key=lambda r: r.start_s)
    for frame in iter_frames(study, []):
        if frame.run is first:
            engine.feed(frame)
    summary = engine.close()
    assert summary["study_dose"]["air_kerma_mgy"] == pytest.approx(7010.0)
    assert doses[-1].study_air_kerma_mgy == pytest.approx(7010.0)  # the close announced it
    # the runs shown, not those announced (user review s18 F14: "14 frames in 6 runs" of 2)
    assert (summary["runs"], summary["runs_announced_not_shown"]) == (1, len(study.runs) - 1)
    # closed before any frame: no run shown, the device still named (review s19)
    engine = Engine(NO_DEADLINE, stages=[])
    engine.prepare(study)
    summary = engine.close()
    assert (summary["runs"], summary["runs_announced_not_shown"]) == (0, len(study.runs))
    assert summary["device"] == {"manufacturer": study.device.manufacturer,
                                 "model": study.device.model} and study.device.manufacturer


def test_a_worker_handler_that_calls_close_gets_an_error_not_a_deadlock(tmp_path):
    """Review s14 (second) M1: with submit(), handlers run on the worker; one that called
    close() deadlocked with the submitter's close() (which waits for the worker, holding the
    engine's lock)."""
    write_study(tmp_path / "s", [RunSpec(0.0, n_frames=3)])
    study = read_study([tmp_path / "s"])
    engine = Engine(NO_DEADLINE, stages=[])
    engine.prepare(study)
    errors = []

    def handler(_):
        try:
            engine.close()
        except RuntimeError as exc:
            errors.append(exc)
    engine.on("frame", handler)
    done = threading.Event()

    def go():
        for frame in iter_frames(study, []):
            engine.submit(frame)
        engine.close()
        done.set()
    threading.Thread(target=go, daemon=True).start()
    assert done.wait(20), "close() deadlocked with a worker handler's close()"
    assert len(errors) == 3


def test_a_recount_after_a_frame_whose_image_work_failed_keeps_its_place(tmp_path):
    """Review s14 (second) M2: a recount deferred to frame 5, whose image work raised on the
    worker, was announced only at close(), after frames 6-7, with older totals: the dose shown
    went back down."""
    engine, study, frames = _prepared_with_a_late_report(tmp_path)
    process = engine.pipeline.process_arrived

    def failing(frame, state, arrival):
        if frame.index == 5:
            raise ValueError("image work failed on frame 5")
        return process(frame, state, arrival)
    engine.pipeline.process_arrived = failing
    release, shown = threading.Event(), []
    engine.on("frame", lambda e: release.wait(10) if e.index == 0 else None)
    engine.on("dose", lambda d: shown.append(d.air_kerma_mgy))
    for frame in frames[:6]:
        engine.submit(frame)
    engine.prepare(read_study([tmp_path / "late" / "rdsr.dcm"], study_uid=study.study_instance_uid))
    release.set()
    assert engine._live.drain(30)
    for frame in frames[6:]:
        engine.submit(frame)
    with pytest.raises(ValueError):
        engine.close()  # the worker's failure is re-raised, as before
    assert shown == sorted(shown)


@pytest.mark.parametrize("mode", ["feed", "submit"])
def test_a_frame_fed_again_is_no_new_exposure(tmp_path, mode):
    """Review s16 H2: a frame delivered again (a plug-in's source after a reconnect) was
    counted as a new pulse (air kerma +20 %) and its event repeated an index."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(10.0, n_frames=2)])
    expected = Engine(NO_DEADLINE, stages=[]).run(tmp_path / "study")
    engine = Engine(NO_DEADLINE, stages=[])
    indexes = []
    engine.on("frame", lambda e: indexes.append(e.index))
    study = read_study([tmp_path / "study"])
    engine.prepare(study)
    frames = list(iter_frames(study, []))
    put = getattr(engine, mode)
    for frame in [*frames[:3], frames[2], frames[0], *frames[3:]]:
        put(frame)
    summary = engine.close()
    assert indexes == [0, 1, 2, 3, 4]
    assert summary["duplicate_frames"] == 2 and summary["frames"] == 5
    for key in ("air_kerma_mgy", "dap_gycm2", "fluoro_time_s"):
        assert summary[key] == pytest.approx(expected[key])


def test_frames_of_a_study_read_by_the_caller_count_what_a_damaged_file_lost(tmp_path):
    """Review s16 H4: the README's "read the study yourself" (prepare, then feed the reader's
    frames) lost the dose of the frames a damaged file lost and its rejection; Engine.frames
    does what run does."""
    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=4, filename="a.dcm"),
                                             RunSpec(10.0, n_frames=3, filename="b.dcm")])
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[:len(data) - 3000])  # its last frame cut
    expected = Engine(NO_DEADLINE, stages=[]).run(tmp_path / "study")
    engine = Engine(NO_DEADLINE, stages=[])
    for frame in engine.frames(read_study([tmp_path / "study"])):
        engine.feed(frame)
    summary = engine.close()
    assert summary["lost_frames"]["frames"] == expected["lost_frames"]["frames"] == 1
    assert [r["file"] for r in summary["rejected_files"]] == [str(paths[0])]
    assert _without_timing(summary) == _without_timing(expected)


def test_a_device_report_lower_than_the_estimate_mid_study_never_lowers_the_events_dose(
        tmp_path):
    """Review s16 H5: the device's report, sent when the exam closes while images are still
    being sent, arrives before the last run; its dose is half the estimate. The next frame's
    cumulative dose went down (0.596 -> 0.308 mGy) and the events broke docs/contract.md §3.
    The frames' counter stays as counted; the study's dose (``study_*``, ``study_dose``) is the
    device's."""
    from sifluoro.contract import replay_output_violations

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(15.0, n_frames=3)])
    replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl",
           summary_path=tmp_path / "s.json", rdsr_path=tmp_path / "device.dcm", stages=[])
    device = as_device_report(tmp_path / "device.dcm", tmp_path / "half.dcm", scale=0.5)
    engine = Engine(NO_DEADLINE, stages=[])
    events = []
    engine.on("frame", lambda e: events.append(e.event))
    study = read_study([tmp_path / "study"])
    frames = list(iter_frames(study, []))
    for frame in frames[:4]:  # the first run and the second's first frame
        engine.feed(frame)
    engine.prepare(read_study([tmp_path / "half.dcm"], study_uid=study.study_instance_uid))
    for frame in frames[4:]:
        engine.feed(frame)
    summary = engine.close()
    out = tmp_path / "out"
    out.mkdir()
    (out / "e.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (out / "s.json").write_text(json.dumps(summary))
    assert replay_output_violations(out / "e.jsonl", out / "s.json") == []
    kerma = [e["dose"]["air_kerma_mgy"] for e in events]
    assert kerma == sorted(kerma)
    assert events[-1]["dose"]["study_air_kerma_mgy"] == pytest.approx(
        summary["study_dose"]["air_kerma_mgy"])
    assert summary["study_dose"]["dose_source"] == "rdsr"
    assert summary["dose_source"] == "mixed"  # 4 frames estimated, 2 with the report
    assert device.StudyInstanceUID == study.study_instance_uid


def test_a_closed_engine_takes_no_more_frames_and_rejections_are_listed_once(tmp_path):
    """Review s16 L8: feed after close was taken (a second close counted one frame more);
    L13: announcing the study again as more arrived listed the reader's rejections twice."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=2)])
    (tmp_path / "study" / "notes.txt").write_text("not dicom\n")
    engine = Engine(NO_DEADLINE, stages=[])
    frames = list(engine.frames(read_study([tmp_path / "study"])))
    engine.prepare(read_study([tmp_path / "study"]))  # the same inputs again
    for frame in frames:
        engine.feed(frame)
    summary = engine.close()
    assert [r["file"].rsplit("/", 1)[-1] for r in summary["rejected_files"]] == ["notes.txt"]
    with pytest.raises(RuntimeError, match="closed"):
        engine.feed(frames[0])
    with pytest.raises(RuntimeError, match="closed"):  # a report after close: no recount
        engine.prepare(read_study([tmp_path / "study"]))
    assert engine.close()["frames"] == summary["frames"] == 2
    with pytest.raises(RuntimeError, match="closed"):  # lost frames after close: in no summary
        engine.count_lost(read_study([tmp_path / "study"]).runs[0], 1)


def test_lost_frames_of_another_study_are_refused(tmp_path):
    """Review s20 #7: count_lost added another study's exposure to this study's dose."""
    from sifluoro.errors import InputError

    write_study(tmp_path / "a", [RunSpec(0.0, n_frames=2)])
    write_study(tmp_path / "b", [RunSpec(0.0, n_frames=2)], study_uid="1.2.826.0.1.3680043.8.498.77")
    engine = Engine(NO_DEADLINE, stages=[])
    for frame in engine.frames(read_study([tmp_path / "a"])):
        engine.feed(frame)
    with pytest.raises(InputError, match="one Engine per study"):
        engine.count_lost(read_study([tmp_path / "b"]).runs[0], 1)
    assert engine.close()["frames"] == 2


def test_a_setting_given_as_text_is_a_config_error():
    """Review s16 L11: a bare TypeError ("'>' not supported between 'str' and 'int'")."""
    from sifluoro.errors import ConfigError

    with pytest.raises(ConfigError, match="latency_budget_ms must be a number"):
        Settings(latency_budget_ms="10")


def test_a_device_report_alone_gives_its_study_and_dose(tmp_path):
    """Review s16 L10: Engine.run of a device report alone gave study "" and a dose of 0,
    silently; the receiver given the same file gives its dose. The report's study is the
    study, and its exposures are the study's dose (none stored as images)."""
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])
    replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl",
           summary_path=tmp_path / "s.json", rdsr_path=tmp_path / "mine.dcm", stages=[])
    (tmp_path / "only").mkdir()
    device = as_device_report(tmp_path / "mine.dcm", tmp_path / "only" / "device.dcm")
    summary = Engine(NO_DEADLINE, stages=[]).run(tmp_path / "only")
    assert summary["study_instance_uid"] == device.StudyInstanceUID
    assert summary["frames"] == 0 and summary["study_dose"]["dose_source"] == "rdsr"
    assert summary["study_dose"]["air_kerma_mgy"] > 0


@pytest.mark.parametrize("feeding", ["feed", "submit"])
def test_the_engine_numbers_frames_a_caller_built_itself(tmp_path, feeding):
    """Review s16 L7: the events carried the caller's Frame.index, so a plug-in that built
    its own frames (all index 0 here) broke docs/contract.md §3's increasing index."""
    from dataclasses import replace

    from sifluoro.contract import replay_output_violations

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(15.0, n_frames=2)])
    write_study(tmp_path / "other", [RunSpec(0.0, n_frames=1)])
    engine = Engine(NO_DEADLINE, stages=[])
    events = []
    engine.on("frame", lambda e: events.append(e.event))
    frames = [replace(f, index=0) for f in engine.frames(read_study([tmp_path / "study"]))]
    [other] = iter_frames(read_study([tmp_path / "other"]), [])
    for frame in frames[:2] + [other] + frames[2:] + frames[1:2]:
        if frame is other:  # another study's frame is refused and takes no number (review s17)
            with pytest.raises(InputError):
                getattr(engine, feeding)(frame)
        else:  # the last, fed again: ignored, takes no number either
            getattr(engine, feeding)(frame)
    summary = engine.close()
    assert [e["index"] for e in events] == [0, 1, 2, 3, 4]
    assert summary["duplicate_frames"] == 1
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "s.json").write_text(json.dumps(summary))
    assert replay_output_violations(tmp_path / "e.jsonl", tmp_path / "s.json") == []


def test_a_handler_for_a_stage_that_does_not_run_is_warned_about(caplog):
    """New-user review s19 U16: ``on("needle", ...)`` without the needle stage was accepted
    silently and its handler never called."""
    engine = Engine(NO_DEADLINE, stages=["register"])
    with caplog.at_level(logging.WARNING, logger="sifluoro"):
        engine.on("needle", lambda e: None)
        engine.on("joint", lambda e: None)
        engine.on("dose", lambda e: None)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "the needle stage is not among this engine's stages" in said[0]
    engine.close()


def test_run_of_a_path_that_does_not_exist_raises_and_a_study_can_be_chosen(tmp_path):
    """User review s20 I3: ``Engine.run("nonexistent/")`` returned a blank study of 0 dose,
    the path only in rejected_files; and the error of several studies said "pass --study
    UID", an option the API did not have."""
    from sifluoro import Engine
    from sifluoro.errors import ConfigError, MultipleStudiesError
    from tests.dicom_fixtures import RunSpec, write_study

    with pytest.raises(ConfigError, match="nonexistent: no such file or folder"):
        Engine().run(tmp_path / "nonexistent")
    write_study(tmp_path / "a", [RunSpec(0.0, n_frames=2)], study_uid="1.2.3.4.5.6.7.8.11111111")
    write_study(tmp_path / "b", [RunSpec(0.0, n_frames=3)], study_uid="1.2.3.4.5.6.7.8.22222222")
    with pytest.raises(MultipleStudiesError, match=r"study_uid= in Python"):
        Engine().run(tmp_path)
    summary = Engine().run(tmp_path, study_uid="22222222")
    assert (summary["study_instance_uid"], summary["frames"]) == ("1.2.3.4.5.6.7.8.22222222", 3)


def test_frames_fed_out_of_acquisition_order_are_marked(tmp_path, caplog):
    """User review s20 A1: runs fed in reverse order gave events whose t_s fell from 26.9 to
    0.0 with no out_of_order mark (the receiver marks them) and no warning."""
    from sifluoro import Engine
    from sifluoro.acquire.dicom_reader import read_study
    from tests.dicom_fixtures import RunSpec, write_study

    write_study(tmp_path / "s", [RunSpec(0.0, n_frames=3), RunSpec(20.0, n_frames=2)])
    engine = Engine()
    frames = list(engine.frames(read_study([tmp_path / "s"])))
    with caplog.at_level("WARNING"):
        events = [engine.feed(f) for f in frames[3:] + frames[:3]]
    engine.close()
    assert [e.event.get("out_of_order", False) for e in events] == [False] * 2 + [True] * 3
    assert "frames fed out of acquisition order" in caplog.text
    # review s20 #1: a study that starts at t 0.0 then gets a run acquired before it (negative
    # t): every frame of that run is marked, not only its first
    engine = Engine()
    frames = list(engine.frames(read_study([tmp_path / "s"])))
    from dataclasses import replace

    assert frames[0].t_s == 0.0
    earlier = [replace(f, t_s=f.t_s - 30.0) for f in frames[3:]]  # at -10.0, -9.87
    events = [engine.feed(f) for f in frames[:1] + earlier]
    engine.close()
    assert [e.event.get("out_of_order", False) for e in events] == [False, True, True]


def test_misuse_is_told_clearly(tmp_path):
    """User review s20 A2: submit() after close() gave the wrong reason ("fed by feed()"),
    feed(None) a bare AttributeError deep inside, and on() after close() was taken silently."""
    import numpy as np

    from sifluoro import Engine
    from sifluoro.acquire.dicom_reader import read_study
    from tests.dicom_fixtures import RunSpec, write_study

    write_study(tmp_path / "s", [RunSpec(0.0, n_frames=2)])
    engine = Engine()
    with pytest.raises(TypeError, match="Engine.feed takes a sifluoro.model.Frame"):
        engine.feed(np.zeros((4, 4), np.uint16))
    with pytest.raises(TypeError, match="not NoneType"):
        engine.submit(None)
    for frame in engine.frames(read_study([tmp_path / "s"])):
        engine.feed(frame)
    engine.close()
    with pytest.raises(RuntimeError, match="this engine was closed"):
        engine.submit(frame)
    with pytest.raises(RuntimeError, match="this engine was closed"):
        engine.on("frame", print)


def test_run_of_frames_refuses_a_study_uid():
    """Review s20 #10: Engine.run(frames, study_uid=...) ignored study_uid without a word."""
    from sifluoro import Engine
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    frames = [f for f, _ in sim_frames(simulate_case(2026, 1, quick=True))][:2]
    with pytest.raises(ValueError, match="study_uid chooses among the studies of files"):
        Engine().run(frames, study_uid="1.2.3")


def test_a_frame_of_another_size_than_its_run_is_refused_and_the_study_goes_on(tmp_path):
    """Review s25 r4: a frame of another size than its run (a grabber that renegotiated its
    size under the same Run) reached the stages, whose buffers are the run's size: the register
    kernels read past them (SIGSEGV with one stage thread: study, events and dose lost)."""
    import numpy as np

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=4)])
    engine = Engine(NO_DEADLINE, stages=["register", "needle", "contrast"])
    frames = list(iter_frames(read_study([tmp_path / "study"]), []))
    engine.feed(frames[0])
    big = np.zeros((frames[1].pixels.shape[0] + 40, frames[1].pixels.shape[1] + 60), np.uint16)
    with pytest.raises(InputError, match="a new picture size is a new Run") as refused:
        engine.feed(dataclasses.replace(frames[1], pixels=big))
    assert refused.value.tag == "(0028,0010) Rows"
    for frame in frames[1:]:
        engine.feed(frame)
    assert engine.close()["frames"] == 4


@pytest.mark.parametrize("layout", ["big-endian", "fortran", "cropped-view", "uint8"])
def test_pixels_in_another_layout_are_taken_as_stored(tmp_path, layout):
    """Review s25 r2: big-endian pixels failed every stage on every frame, a Fortran-ordered or
    cropped view compiled new kernels on the first frame (1.5 s): the engine takes them as the
    stages do, native C-ordered uint16, with the same events."""
    import numpy as np

    def variant(pixels):
        if layout == "big-endian":
            return pixels.astype(">u2")
        if layout == "fortran":
            return np.asfortranarray(pixels)
        if layout == "uint8":
            return (pixels >> 8).astype(np.uint8)
        wide = np.zeros((pixels.shape[0], pixels.shape[1] + 8), np.uint16)
        wide[:, 4:-4] = pixels
        return wide[:, 4:-4]

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])
    frames = list(iter_frames(read_study([tmp_path / "study"]), []))
    events = []
    for given in (frames, [dataclasses.replace(f, pixels=variant(f.pixels)) for f in frames]):
        if layout == "uint8" and given is frames:  # the same grey values in 8 bits
            given = [dataclasses.replace(f, pixels=(f.pixels >> 8).astype(np.uint16)) for f in frames]
        engine = Engine(NO_DEADLINE, stages=["register", "needle", "contrast"])
        seen, process = [], engine.pipeline.process_arrived
        engine.pipeline.process_arrived = lambda f, *a: seen.append(f.pixels) or process(f, *a)
        events.append([{k: v for k, v in engine.feed(f).event.items() if k != "latency_ms"}
                       for f in given])
        assert not any(e.get("failed_stages") for e in events[-1])
        # as the kernels were compiled for (another layout compiles anew on a live frame)
        assert all(p.dtype == np.dtype("=u2") and p.flags.c_contiguous for p in seen)
    assert events[0] == events[1]


@pytest.mark.parametrize("pixels, what", [("rgb", "2-D array"), ("float", "unsigned integers"),
                                          ("list", "2-D array")])
def test_what_is_no_grey_frame_is_refused_clearly(tmp_path, pixels, what):
    import numpy as np

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=2)])
    frame = next(iter_frames(read_study([tmp_path / "study"]), []))
    bad = {"rgb": lambda p: np.repeat(p[:, :, None], 3, axis=2),
           "float": lambda p: p.astype(np.float32), "list": lambda p: p.tolist()}[pixels](frame.pixels)
    engine = Engine(NO_DEADLINE)
    with pytest.raises(InputError, match=what):
        engine.feed(dataclasses.replace(frame, pixels=bad))
    engine.feed(frame)
    assert engine.close()["frames"] == 1


def test_the_pipeline_itself_refuses_a_frame_of_another_size_before_counting_it(tmp_path):
    """Review s25 r4b: the same frame given to Pipeline.process (public, as replay and the
    receiver use it) still reached the register kernels (SIGSEGV)."""
    import numpy as np

    from sifluoro.pipeline import Pipeline
    from sifluoro.stages import make_stages

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])
    frames = list(iter_frames(read_study([tmp_path / "study"]), []))
    pipeline = Pipeline(make_stages(["register", "needle", "contrast"], NO_DEADLINE), NO_DEADLINE)
    state = pipeline.start_study(frames[0].run.study_instance_uid)
    pipeline.process(frames[0], state)
    big = np.zeros((frames[1].pixels.shape[0] + 40, frames[1].pixels.shape[1] + 60), np.uint16)
    with pytest.raises(InputError, match="a new picture size is a new Run"):
        pipeline.process(dataclasses.replace(frames[1], pixels=big), state)
    assert state.frames == 1
    pipeline.process(frames[1], state)
    assert state.frames == 2


def test_values_above_bits_stored_are_said_once_per_run(tmp_path, caplog):
    """Review s25 r2: 12-bit values in a run that says 8 bits gave no tip, target or contrast
    on any frame, without a word."""
    import logging

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])
    frames = list(iter_frames(read_study([tmp_path / "study"]), []))
    run = dataclasses.replace(frames[0].run, bits_stored=8)
    engine = Engine(NO_DEADLINE)
    with caplog.at_level(logging.WARNING):
        for frame in frames:
            engine.feed(dataclasses.replace(frame, run=run))
    said = [r.getMessage() for r in caplog.records if "above the run's BitsStored 8" in r.getMessage()]
    assert len(said) == 1 and "bits_stored=" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Engine(NO_DEADLINE).run(tmp_path / "study")
    assert not [r for r in caplog.records if "BitsStored" in r.getMessage()]
