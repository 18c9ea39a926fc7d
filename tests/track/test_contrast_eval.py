"""The contrast evaluator's per-frame confusion (benchmarks.eval_contrast.frame_confusion)."""
import json

from benchmarks.eval_contrast import (confusion_lines, frame_confusion, outcome_parts,
                                      parts_lines, vascular_lines, vascular_visibility)


def _case(root, name, truth_states, out_states, snrs=None, vessel_snrs=None):
    case = root / "cases" / name
    case.mkdir(parents=True)
    frames = [{"index": i, "contrast_state": s} for i, s in enumerate(truth_states)]
    for f, snr in zip(frames, snrs or []):
        f["contrast_snr"] = snr
    for f, snr in zip(frames, vessel_snrs or []):
        f["vessel_snr"] = snr
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


def test_vascular_sensitivity_counts_the_vessels_in_the_pixels(tmp_path):
    n, ia, va = "none", "intra_articular", "vascular"
    # visible (snr 4 on a vascular frame) and found two frames late
    _case(tmp_path, "case000", [n, va, va, va], [n, n, n, va], [None, 4.0, 1.0, None])
    # visible only on its joint fill's frame (snr 9 before the vessel): not a visible vessel
    _case(tmp_path, "case001", [n, ia, va, va], [n, ia, ia, ia], [None, 9.0, 2.5, None])
    # visible and missed
    _case(tmp_path, "case002", [va, va], [n, ia], [3.0, None])
    _case(tmp_path, "case003", [n, ia], [n, ia], [None, 5.0])   # not vascular: left out
    vasc = vascular_visibility(tmp_path / "cases", tmp_path / "out")
    assert [(v["case"], v["snr_max"], v["visible"], v["output"], v["delay"]) for v in vasc] == [
        ("case000", 4.0, True, va, 2), ("case001", 2.5, False, ia, None),
        ("case002", 3.0, True, ia, None)]
    lines = vascular_lines(vasc)
    assert lines[0].endswith("1 of 2; all vascular: 1 of 3")


def test_visible_vessels_are_judged_by_the_vessels_own_snr(tmp_path):
    n, ia, va = "none", "intra_articular", "vascular"
    # joint + vessel: the opacity's SNR is the fill's (20), the vessel's own is 1.5
    _case(tmp_path, "case000", [n, ia, va, va], [n, ia, ia, ia], [None, 20.0, 21.0, 22.0],
          [None, None, 1.5, None])
    # a faint vessel beside a bright fill, found
    _case(tmp_path, "case001", [n, ia, va, va], [n, ia, va, va], [None, 20.0, 21.0, 22.0],
          [None, None, 4.0, 2.0])
    vasc = vascular_visibility(tmp_path / "cases", tmp_path / "out")
    assert [(v["case"], v["snr_max"], v["visible"], v["source"]) for v in vasc] == [
        ("case000", 1.5, False, "vessel_snr"), ("case001", 4.0, True, "vessel_snr")]
    assert vascular_lines(vasc)[0] == ("  vascular sensitivity on visible vessels "
                                       "(truth vessel_snr >= 3): 1 of 1; all vascular: 1 of 2")


def test_frames_are_matched_by_file_and_frame_number_after_a_damaged_file(tmp_path):
    """The replay numbers the frames it received: after a damaged file's lost frames its
    ``index`` runs behind the truth's, so frames are matched by (file, frame number)."""
    n, ia, va = "none", "intra_articular", "vascular"
    case = tmp_path / "cases" / "case000"
    case.mkdir(parents=True)
    files = ["1.1"] * 3 + ["1.2"] * 4          # the first file lost its last two frames
    numbers = [1, 2, 3, 1, 2, 3, 4]
    truth = [n, n, n, ia, va, va, va]
    frames = [{"index": i, "sop_instance_uid": u, "frame": k, "contrast_state": s}
              for i, (u, k, s) in enumerate(zip(files, numbers, truth))]
    frames[4]["vessel_snr"] = 6.0
    (case / "truth.json").write_text(json.dumps({"frames": frames}))
    out = tmp_path / "out" / "case000"
    out.mkdir(parents=True)
    received = [(0, "1.1", 1, n), (1, "1.2", 1, ia), (2, "1.2", 2, ia), (3, "1.2", 3, va),
                (4, "1.2", 4, va)]
    (out / "events.jsonl").write_text("".join(
        json.dumps({"index": i, "sop_instance_uid": u, "frame": k, "contrast": {"state": s}})
        + "\n" for i, u, k, s in received))
    conf = frame_confusion(tmp_path / "cases", tmp_path / "out")
    assert conf["pairs"] == {"I->I": 1, "V->I": 1, "V->V": 2}
    vasc = vascular_visibility(tmp_path / "cases", tmp_path / "out")
    assert [(v["output"], v["delay"]) for v in vasc] == [(va, 1)]


def test_studies_are_scored_by_the_parts_of_their_injection(tmp_path):
    """An extravasation beside a joint fill read as joint fill is told apart from a cloud
    alone read right; truths without ``contrast_components`` (older sets) are left out."""
    n, ia, ex = "none", "intra_articular", "extravasation"
    for name, parts, outcome, out in [("case000", [ia, ex], ex, ia), ("case001", [ex], ex, ex),
                                      ("case002", [ia, ex], ex, ex), ("case003", [], n, n),
                                      ("case004", None, ex, ia)]:
        _case(tmp_path, name, [n, outcome], [n, out])
        truth_path = tmp_path / "cases" / name / "truth.json"
        truth = json.loads(truth_path.read_text())
        truth["outcome"] = outcome
        if parts is not None:
            truth["contrast_components"] = parts
        truth_path.write_text(json.dumps(truth))
    # the summary's state wins over the last event's
    (tmp_path / "out" / "case001" / "summary.json").write_text(json.dumps({"contrast_state": ex}))
    parts = outcome_parts(tmp_path / "cases", tmp_path / "out")
    assert parts == {
        "extravasation": {"studies": 1, "right": 1, "wrong": []},
        "intra_articular+extravasation": {"studies": 2, "right": 1,
                                          "wrong": ["case000 -> intra_articular"]},
        "none": {"studies": 1, "right": 1, "wrong": []}}
    assert parts_lines(parts) == [
        "  studies right by injection parts: extravasation 1 of 1, "
        "intra_articular+extravasation 1 of 2, none 1 of 1",
        "    intra_articular+extravasation: case000 -> intra_articular"]
    assert parts_lines({}) == []


def test_a_vascular_state_called_before_the_truth_is_no_detection(tmp_path):
    """Review s26 F2: the delay took the output's first vascular frame anywhere, clipped at 0:
    a false vascular call before the injection, dropped, then the vessel shown 3 frames late
    read as a delay of 0."""
    n, va = "none", "vascular"
    _case(tmp_path, "case000", [n, n, va, va, va, va], [va, n, n, n, n, va], [None] * 6,
          [None, None, 5.0, None, None, None])
    vasc = vascular_visibility(tmp_path / "cases", tmp_path / "out")
    assert [(v["case"], v["delay"]) for v in vasc] == [("case000", 3)]
