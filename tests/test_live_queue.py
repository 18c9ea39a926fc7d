"""Live sources: dose on arrival, a short image queue that drops the oldest image work and
counts it, events in arrival order; offline replay drops nothing.

The worker is held inside a stage by an event, so which frames wait, and which are dropped,
is decided by the test and not by thread timing.
"""
from __future__ import annotations

import threading

import pytest

from sifluoro import Engine, Settings
from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.pipeline import LiveFeeder, Pipeline, prefetch
from tests.dicom_fixtures import RunSpec, technique, write_study

NO_DEADLINE = Settings(latency_budget_ms=1e9)


class GatedStage:
    """Holds the worker on frame ``hold_index`` until ``release`` is set."""

    name = "gated"

    def __init__(self, hold_index: int = 0):
        self.hold_index = hold_index
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: list[int] = []

    def process(self, frame, state):
        self.seen.append(frame.index)
        if frame.index == self.hold_index:
            self.entered.set()
            assert self.release.wait(60), "the test never released the worker"
        return {"needle": {"tip_xy": [float(frame.index), 0.0], "confidence": 1.0}}


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """10 frames in two runs: one with reported dose and a kerma alert level, one estimated."""
    folder = tmp_path_factory.mktemp("live")
    write_study(folder, [RunSpec(0.0, n_frames=6, tech=technique(reported_air_kerma_mgy=3600.0,
                                                                  reported_dap_gycm2=0.6)),
                         RunSpec(30.0, n_frames=4)])
    return list(iter_frames(read_study([folder]), []))


def _reference(frames):
    """Every frame processed in turn: the dose the live path must equal."""
    pipeline = Pipeline([], NO_DEADLINE)
    state = pipeline.start_study("ref")
    return state, [pipeline.process(f, state) for f in frames]


def _held_feeder(stage, frames, after_submit=None):
    """A feeder (capacity 2) whose worker ``stage`` holds on frame 0 while the 9 others are
    submitted (7 dropped, the last 2 kept); returns (state, events, feeder)."""
    pipeline = Pipeline([stage], NO_DEADLINE)
    state = pipeline.start_study("live")
    events: list[dict] = []
    feeder = LiveFeeder(pipeline, state, on_event=events.append, capacity=2)
    feeder.submit(frames[0])
    assert stage.entered.wait(60)
    for frame in frames[1:]:
        feeder.submit(frame)
        if after_submit is not None:
            after_submit(feeder)
    return state, events, feeder


def test_a_backed_up_queue_drops_the_oldest_image_work_and_counts_it(frames):
    stage = GatedStage(hold_index=0)
    state, events, feeder = _held_feeder(stage, frames)
    # dose is counted on arrival, before any image work
    ref_state, ref_events = _reference(frames)
    assert state.dose.totals == ref_state.dose.totals
    assert state.dropped_image_frames == 7
    stage.release.set()
    assert feeder.drain(10)
    feeder.close()
    assert [e["index"] for e in events] == list(range(10))  # every frame, in arrival order
    assert stage.seen == [0, 8, 9]  # the oldest waiting were dropped, the newest kept
    dropped = [e["index"] for e in events if e.get("dropped")]
    assert dropped == list(range(1, 8))
    assert all(e["degraded"] and e["skipped_stages"] == ["gated"] and e["needle"] is None
               for e in events if e.get("dropped"))
    assert [e["needle"]["tip_xy"][0] for e in events if not e.get("dropped")] == [0.0, 8.0, 9.0]
    # each event carries the cumulative dose at its arrival, and every alert once
    assert [e["dose"] for e in events] == [e["dose"] for e in ref_events]
    assert [a for e in events for a in e.get("alerts", [])] == \
           [a for e in ref_events for a in e.get("alerts", [])]
    assert state.frames == 10 and state.degraded_frames == 7


def test_the_newest_dropped_frame_joins_the_contrast_memory(frames):
    """The most recently dropped frame keeps its pixels until its turn and is offered to the
    contrast stage's memory (``process_remember``: the stage keeps one skipped frame between
    updates), so that a vessel that came and went on it is still tested; the other dropped
    frames release their pixels."""
    from sifluoro.model import Frame

    class Remembering(GatedStage):
        name = "contrast"

        def __init__(self, hold_index):
            super().__init__(hold_index)
            self.remembered: list[int] = []

        def process_remember(self, frame, state):
            self.remembered.append(frame.index)
            return {}

    def pixels_kept(feeder):  # for one dropped frame at most
        assert sum(1 for item, _, dropped in feeder._entries
                   if dropped and isinstance(item, Frame)) <= 1

    stage = Remembering(hold_index=0)
    state, events, feeder = _held_feeder(stage, frames, pixels_kept)
    stage.release.set()
    assert feeder.drain(10)
    feeder.close()
    assert stage.remembered == [7] and stage.seen == [0, 8, 9]
    assert [e["index"] for e in events if e.get("dropped")] == list(range(1, 8))
    assert all(e["skipped_stages"] == ["contrast"] for e in events if e.get("dropped"))
    assert state.skipped_in_a_row["contrast"] == 0  # frame 9 ran it in full


@pytest.mark.parametrize("takes", [True, False])
def test_a_dropped_frame_counts_as_skipped_only_where_it_was_remembered(frames, takes):
    """Remembered, the next frame owes its test (the deadline must run contrast in full and
    learns that cost apart); declined, nothing is owed and the deadline may still skip."""
    class Contrast:
        name = "contrast"

        def process(self, frame, state):
            return {}

        def process_remember(self, frame, state):
            return {} if takes else None

    pipeline = Pipeline([Contrast()], NO_DEADLINE)
    state = pipeline.start_study("live")
    event = pipeline.dropped_event(frames[1], state, pipeline.account(frames[1], state))
    assert event["dropped"] and event["skipped_stages"] == ["contrast"]
    assert state.skipped_in_a_row.get("contrast", 0) == int(takes)


def test_nothing_is_dropped_while_the_worker_keeps_up(frames):
    pipeline = Pipeline([GatedStage(hold_index=-1)], NO_DEADLINE)
    state = pipeline.start_study("live")
    events: list[dict] = []
    feeder = LiveFeeder(pipeline, state, on_event=events.append, capacity=2)
    for frame in frames:
        feeder.submit(frame)
        assert feeder.drain(10)  # the source waits one frame interval; the worker is done
    feeder.close()
    assert state.dropped_image_frames == 0
    assert not any(e.get("dropped") for e in events) and len(events) == 10


def test_engine_submit_counts_drops_in_the_summary_and_all_the_dose(frames):
    stage = GatedStage(hold_index=0)
    engine = Engine(NO_DEADLINE.with_(live_queue_frames=3), stages=[stage])
    seen = {"frame": [], "dose": []}
    for kind in seen:
        engine.on(kind, seen[kind].append)
    engine.on("needle", lambda e: 1 / 0)  # a handler's defect is contained on the worker too
    engine.submit(frames[0])
    assert stage.entered.wait(60)
    for frame in frames[1:]:
        engine.submit(frame)
    with pytest.raises(RuntimeError, match="one of feed or submit"):
        engine.feed(frames[0])
    stage.release.set()
    summary = engine.close()
    assert summary["dropped_image_frames"] == 6 and summary["frames"] == 10
    assert [e.index for e in seen["frame"]] == list(range(10))
    assert stage.seen == [0, 7, 8, 9]
    reference = Engine(NO_DEADLINE, stages=[])
    for frame in frames:
        reference.feed(frame)
    expected = reference.close()
    for key in ("fluoro_time_s", "air_kerma_mgy", "dap_gycm2", "alerts", "runs"):
        assert summary[key] == expected[key], key
    assert seen["dose"][-1].air_kerma_mgy == pytest.approx(expected["air_kerma_mgy"])


def test_an_engine_fed_by_feed_refuses_submit(frames):
    engine = Engine(NO_DEADLINE, stages=[])
    engine.feed(frames[0])
    with pytest.raises(RuntimeError, match="one of feed or submit"):
        engine.submit(frames[1])
    assert "dropped_image_frames" not in engine.close()


def test_a_failure_in_the_worker_is_raised_by_close(frames, monkeypatch, caplog):
    pipeline = Pipeline([], NO_DEADLINE)
    state = pipeline.start_study("live")

    def broken(frame, state, arrival):
        raise MemoryError("no room")

    monkeypatch.setattr(pipeline, "process_arrived", broken)
    feeder = LiveFeeder(pipeline, state)
    feeder.submit(frames[0])
    with pytest.raises(MemoryError, match="no room"):
        feeder.close(timeout_s=10)
    assert "live pipeline failed on frame 0" in caplog.text
    with pytest.raises(RuntimeError, match="closed"):
        feeder.submit(frames[1])


def test_offline_prefetch_blocks_and_drops_nothing():
    release = threading.Event()
    produced: list[int] = []

    def source():
        for i in range(50):
            produced.append(i)
            yield i

    got = []
    for item in prefetch(source(), 2):
        if not release.is_set():
            # the reader fills the queue (2) plus the item in hand, then waits
            threading.Event().wait(0.2)
            assert len(produced) <= 4
            release.set()
        got.append(item)
    assert got == list(range(50))


def test_the_contrast_stage_keeps_one_dropped_frame_and_tests_it_on_the_next(frames_512):
    """With the real stages: of two dropped frames in a row the first joins the contrast
    stage's memory (its vessel test is owed) and the second is declined; the next processed
    frame runs the owed test, and the deadline counts one skip."""
    from sifluoro.stages import make_stages

    pipeline = Pipeline(make_stages(("register", "contrast"), NO_DEADLINE), NO_DEADLINE)
    state = pipeline.start_study("live")
    for frame in frames_512[:6]:
        pipeline.process(frame, state)
    memory = state.stage_state["contrast"]
    for frame in frames_512[6:8]:
        pipeline.dropped_event(frame, state, pipeline.account(frame, state))
        assert memory.run.test_owed
    assert state.skipped_in_a_row["contrast"] == 1
    pipeline.process(frames_512[8], state)
    assert not memory.run.test_owed and state.skipped_in_a_row["contrast"] == 0


def test_a_dropped_frame_without_picture_is_not_remembered(frames):
    """A dropped flat frame (video black) does not join the contrast memory: on it every edge
    of the run would have washed out (a false vascular alert)."""
    from dataclasses import replace

    import numpy as np

    class Contrast:
        name = "contrast"

        def __init__(self):
            self.remembered = []

        def process(self, frame, state):
            return {}

        def process_remember(self, frame, state):
            self.remembered.append(frame.index)
            return {}

    stage = Contrast()
    pipeline = Pipeline([stage], NO_DEADLINE)
    state = pipeline.start_study("live")
    flat = np.full_like(frames[2].pixels, 16)
    flat.flags.writeable = False
    for frame in (frames[1], replace(frames[2], pixels=flat)):
        pipeline.dropped_event(frame, state, pipeline.account(frame, state))
    assert stage.remembered == [1]
    assert state.skipped_in_a_row["contrast"] == 1


def test_prefetch_stopped_as_the_source_ends_leaves_no_reader_behind():
    """The reader waiting to put the end marker into a full queue had no stop check: closing
    the consumer waited the 5 s join and left the thread alive (review L1)."""
    exhausted = threading.Event()

    def source():
        yield from range(3)
        exhausted.set()

    gen = prefetch(source(), 2)
    assert next(gen) == 0
    assert exhausted.wait(timeout=60)  # 1 and 2 queued; the reader now waits to put the end
    gen.close()
    assert not any(t.name == "sifluoro-reader" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("syntax, decoded_on_reader", [("explicit", True), ("rle", False)])
def test_compressed_frames_are_decoded_between_frames_not_on_a_reader_thread(
        tmp_path, monkeypatch, syntax, decoded_on_reader):
    """pylibjpeg's decoders hold the GIL for a whole frame (JPEG 2000 at 1024²: 0.15-0.3 s), so
    a reader thread decoding a compressed study ahead stopped the stages and ran the deadline's
    clock (v2's JPEG 2000 study came out degraded on 31 of 35 frames): such frames are decoded
    by the thread that processes them, before their clock starts; native ones still ahead."""
    import sifluoro.replay as replay_module

    write_study(tmp_path / "in", [RunSpec(0.0, filename="a.dcm", transfer_syntax=syntax,
                                          n_frames=3)])
    decoded_on: list[str] = []
    real_iter_frames = replay_module.iter_frames

    def spied(*args, **kwargs):  # the real decoder; records which thread ran it
        for frame in real_iter_frames(*args, **kwargs):
            decoded_on.append(threading.current_thread().name)
            yield frame

    monkeypatch.setattr(replay_module, "iter_frames", spied)
    result = replay_module.replay([tmp_path / "in"], events_path=tmp_path / "e.jsonl",
                                  summary_path=tmp_path / "s.json")
    assert result.summary["frames"] == 3 and len(decoded_on) == 3
    on_reader = {name == "sifluoro-reader" for name in decoded_on}
    assert on_reader == {decoded_on_reader}
