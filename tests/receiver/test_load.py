"""Load: 8 concurrent DCMTK associations x 100 frames each; nothing lost, everything identical.

The default suite sends 256² frames; the 1024² version of the same load is
``benchmarks/bench_receiver.py`` (``python -m benchmarks.bench_receiver``).
"""
from __future__ import annotations

import json

from benchmarks.bench_receiver import send_concurrently, write_load
from sifluoro.contract import replay_output_violations
from tests.receiver.helpers import (
    dataset_bytes,
    file_uids,
    needs_dcmtk,
    read_events,
    spooled,
    summary_frames,
    wait_for,
)

pytestmark = needs_dcmtk
SENDERS, INSTANCES, FRAMES = 8, 10, 10


def test_eight_concurrent_associations_lose_nothing(tmp_path, start_receiver):
    file_sets = write_load(tmp_path / "load", senders=SENDERS, instances=INSTANCES,
                           frames=FRAMES, size=256)
    receiver = start_receiver(None, "--max-associations", str(SENDERS))
    results = send_concurrently(receiver.port, file_sets, timeout_s=120)
    assert [r.returncode for r in results] == [0] * SENDERS, results[0].stdout

    for paths in file_sets:
        folder = receiver.spool / file_uids(paths[0])[0]
        wait_for(lambda: summary_frames(folder / "summary.json") == INSTANCES * FRAMES, 120)
    assert receiver.terminate() == 0
    assert b"80 stored, 0 duplicates, 0 refused" in receiver.stdout

    for paths in file_sets:
        study_uid = file_uids(paths[0])[0]
        folder = receiver.spool / study_uid
        for path in paths:
            assert dataset_bytes(spooled(receiver.spool, study_uid, file_uids(path)[1])) \
                == dataset_bytes(path)
        events = read_events(folder / "events.jsonl")
        assert {(e["sop_instance_uid"], e["frame"]) for e in events} == {
            (file_uids(p)[1], k) for p in paths for k in range(1, FRAMES + 1)}
        assert replay_output_violations(folder / "events.jsonl", folder / "summary.json") == []
        summary = json.loads((folder / "summary.json").read_text())
        assert (summary["instances"], summary["duplicates"]) == (INSTANCES, 0)
