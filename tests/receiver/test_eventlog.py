"""The receiver's events file: which frames it holds, after appends and after a reopen."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sifluoro.acquire.live import EventLog

WRITES = st.lists(st.tuples(st.sampled_from(["1.2.3", "1.2.4", "1.2.5"]),
                            st.integers(min_value=1, max_value=12)), max_size=60)


@settings(max_examples=200, deadline=None)
@given(WRITES)
def test_the_index_answers_as_a_set_of_every_pair_written(writes):
    """Review s13 M6: the index held every (instance, frame) pair for the receiver's life (85
    MiB a month); it keeps one number per instance now, and must still answer exactly, in
    order, out of order and with gaps."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        log = EventLog(Path(folder) / "events.jsonl")
        for sop, frame in writes:
            log.append({"sop_instance_uid": sop, "frame": frame, "index": 0})
        log.close()
        reopened = EventLog(Path(folder) / "events.jsonl")
        written = set(writes)
        for sop in ("1.2.3", "1.2.4", "1.2.5", "9.9"):
            for frame in range(0, 14):
                assert log.has(sop, frame) == ((sop, frame) in written)
                assert reopened.has(sop, frame) == ((sop, frame) in written)


def test_frames_written_in_order_take_one_entry_per_instance(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    for sop in ("1.2.3", "1.2.4"):
        for frame in range(1, 501):
            log.append({"sop_instance_uid": sop, "frame": frame})
    log.close()
    reopened = EventLog(tmp_path / "events.jsonl")
    assert reopened._written_to == {"1.2.3": 500, "1.2.4": 500} and not reopened._written_apart


def test_lines_of_another_key_order_and_a_last_line_cut_short_are_read(tmp_path):
    """The index reads the engine's lines from their start, others decoded whole; a last line
    cut short (a crash) is dropped from the file."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"sop_instance_uid":"1.2.3","frame":1,"needle":{"frame":9}}\n'
                    '{"index":4,"frame":2,"sop_instance_uid":"1.2.3"}\n'
                    '{"sop_instance_uid":"1.2.x","frame":1}\n'
                    'not an event\n'
                    '{"sop_instance_uid":"1.2.3","fra')
    log = EventLog(path)
    assert [log.has("1.2.3", k) for k in (1, 2, 3, 9)] == [True, True, False, False]
    assert log.has("1.2.x", 1)
    assert path.read_text().endswith("not an event\n")


def test_a_fifo_as_the_events_file_is_not_read_back(tmp_path):
    """Review s22 F6: `receive --events FIFO` (outfiles accepts one) read it whole at start:
    the receiver never listened and ignored SIGTERM."""
    import os
    import threading

    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    made = []
    opener = threading.Thread(target=lambda: made.append(EventLog(fifo)), daemon=True)
    opener.start()
    opener.join(10)
    if opener.is_alive():  # unblock the old code's read so the test process can end
        with open(fifo, "wb"):
            pass
    assert made, "EventLog blocked reading a FIFO"
