"""The contrast evaluator's per-frame confusion (benchmarks.eval_contrast.frame_confusion)."""
import json

from benchmarks.eval_contrast import confusion_lines, frame_confusion


def _case(root, name, truth_states, out_states):
    case = root / "cases" / name
    case.mkdir(parents=True)
    frames = [{"index": i, "contrast_state": s} for i, s in enumerate(truth_states)]
    (case / "truth.json").write_text(json.dumps({"frames": frames}))
    out = root / "out" / name
    out.mkdir(parents=True)
    (out / "events.jsonl").write_text("".join(
        json.dumps({"index": i, "contrast": {"state": s}}) + "\n"
        for i, s in enumerate(out_states) if s is not None))


def test_frames_from_injection_start_by_truth_and_output(tmp_path):
    n, ia, ex, va = "none", "intra_articular", "extravasation", "vascular"
    # a false opacity before injection is not counted here; the vessel is seen one frame late
    # and a frame without an event is left out
    _case(tmp_path, "case000", [n, n, va, va, va, va], [n, ia, n, ia, va, None])
    # extravasation read as joint fill throughout; contrast that stops does not end the count
    _case(tmp_path, "case001", [n, ex, ex, n], [n, ia, ia, ia])
    conf = frame_confusion(tmp_path / "cases", tmp_path / "out")
    assert conf["frames"] == 6
    assert conf["pairs"] == {"E->I": 2, "V->I": 1, "V->V": 1, "V->none": 1, "none->I": 1}
    assert conf["wrong_studies"] == {"E->I": ["case001"], "V->I": ["case000"],
                                     "V->none": ["case000"], "none->I": ["case001"]}
    lines = confusion_lines(conf)
    assert lines[0].startswith("  per-frame from injection: 6 frames, wrong E->I 2")
    assert "V->V" not in lines[0]
