"""Tight collimation (``simulate_case(tight_collimation=True)``): needle tips beyond a blade
with the shaft in the field, with their truth, dose and DICOM; the default path untouched."""
import json

import numpy as np
import pytest

from sifluoro.sim import simulate_case
from sifluoro.sim import study as study_mod
from sifluoro.sim.evaluate import Tally, score_study
from sifluoro.sim.export import export_study, true_run_dose


@pytest.fixture(scope="module")
def tight(study):
    return simulate_case(7, 2, tight_collimation=True)


def _work_needle_runs(s):
    work = s.runs[-1].technique.primary_angle_deg  # the contrast run is in the working view
    return [i for i, r in enumerate(s.runs)
            if r.technique.primary_angle_deg == work and any(t.needle_visible for t in r.truth)]


def _area_px(run):
    x0, y0, x1, y1 = run.technique.collimation_xyxy
    return (x1 - x0 + 1) * (y1 - y0 + 1)


def test_the_default_path_never_draws_a_tight_field(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("tight field drawn without tight_collimation")
    monkeypatch.setattr(study_mod, "_tight_field", boom)
    monkeypatch.setattr(study_mod, "_field_transmission", boom)
    simulate_case(2026, 5, quick=True)
    simulate_case(2026, 5, quick=True, wrong_level_scout=True)
    with pytest.raises(AssertionError, match="tight field"):
        simulate_case(2026, 5, quick=True, tight_collimation=True)


def test_only_the_working_views_needle_runs_change(study, tight):
    assert len(tight.runs) == len(study.runs)
    changed = set(_work_needle_runs(study))
    assert changed and 0 not in changed  # the scout stays as it was
    for i, (a, b) in enumerate(zip(study.runs, tight.runs)):
        assert a.start_s == b.start_s and len(a.frames) == len(b.frames)
        if i in changed:
            assert _area_px(b) < 0.25 * _area_px(a)
            continue
        np.testing.assert_array_equal(a.frames, b.frames)
        assert a.truth == b.truth and a.technique == b.technique


def test_tips_beyond_a_blade_with_the_shaft_in_the_field(tight):
    out = [(r, t) for r in tight.runs for t in r.truth if t.needle_visible and t.tip_xy is None]
    assert len(out) >= 5
    for run, t in out:
        mask = run.exposed_mask
        shaft = np.rint(np.asarray(t.shaft_xy)).astype(int)
        assert mask[shaft[:, 1], shaft[:, 0]].all()
        assert t.tip_snr is None and t.tip_to_target_mm is None
        # where the tip is: outside the field, beyond the shaft's end at the blade
        tip = np.asarray(t.tip_beyond_field_xy)
        x, y = np.rint(tip).astype(int)
        assert not (0 <= x < mask.shape[1] and 0 <= y < mask.shape[0] and mask[y, x])
        ends = np.asarray(t.shaft_xy)[[0, -1]]
        near, far = sorted(ends, key=lambda e: np.hypot(*(e - tip)))
        assert np.hypot(*(tip - far)) > np.hypot(*(tip - near))
        # the field is the collimator's rectangle, blank (maximal attenuation) outside
        x0, y0, x1, y1 = run.technique.collimation_xyxy
        assert mask[y0:y1 + 1, x0:x1 + 1].all() and mask.sum() == _area_px(run)
    # the tip comes into the field as the needle advances: a later frame shows it
    assert any(t.tip_xy is not None for r in tight.runs for t in r.truth)
    assert all(t.tip_beyond_field_xy is None for r in tight.runs for t in r.truth
               if t.tip_xy is not None or not t.needle_visible)


def test_dose_follows_the_field_and_the_evaluator_counts_the_frames(study, tight, tmp_path):
    for i in _work_needle_runs(study):
        open_k, open_dap = true_run_dose(study.runs[i], study.size)
        k, dap = true_run_dose(tight.runs[i], tight.size)
        # DAP by the area (the tube output per pulse moves a little with the smaller scatter)
        ratio = _area_px(tight.runs[i]) / _area_px(study.runs[i])
        assert dap / open_dap == pytest.approx(ratio * k / open_k, rel=0.02)
    exported = export_study(tight, tmp_path / "case")
    truth = json.loads(exported.truth_path.read_text())
    tally = Tally()
    score_study(truth, [], None, tally)
    expected = sum(t.needle_visible and t.tip_xy is None for r in tight.runs for t in r.truth)
    damaged = {r["sop_instance_uid"] for r in truth["runs"] if r["damaged"]}
    lost = sum(ft["needle_visible"] and ft["tip_xy"] is None for ft in truth["frames"]
               if ft["sop_instance_uid"] in damaged)
    assert tally.tip_outside_frames == expected - lost > 0
    # the tip beyond the field is in the truth of those frames only
    assert sum("tip_beyond_field_xy" in ft for ft in truth["frames"]) == expected
    # the files carry the tight fields: the dose read from their headers is the truth's
    from sifluoro.replay import replay
    replay([exported.dicom_dir], events_path=tmp_path / "e.jsonl",
           summary_path=tmp_path / "s.json", stages=[])
    summary = json.loads((tmp_path / "s.json").read_text())
    whole = summary.get("study_dose") or summary
    ref = truth["reported_dose"] or truth["dose"]
    assert whole["dap_gycm2"] == pytest.approx(ref["dap_gycm2"], rel=0.02)


def test_the_cli_option_reaches_the_simulator(tmp_path):
    from sifluoro.cli import main
    assert main(["simulate", str(tmp_path / "tc"), "--cases", "1", "--first-case", "5",
                 "--seed", "2026", "--size", "512", "--quick", "--workers", "1",
                 "--tight-collimation"]) == 0
    truth = json.loads((tmp_path / "tc" / "case005" / "truth.json").read_text())
    plain = simulate_case(2026, 5, quick=True)
    for run, ref in zip(truth["runs"], plain.runs):
        x0, y0, x1, y1 = run["technique"]["collimation_xyxy"]
        assert (x1 - x0 + 1) * (y1 - y0 + 1) < 0.25 * _area_px(ref)
