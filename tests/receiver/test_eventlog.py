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
