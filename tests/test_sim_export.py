"""Simulated studies as DICOM: valid (dciodvfy), replayable to the contract, truth consistent."""
from __future__ import annotations

import json
import shutil
import subprocess
from functools import lru_cache

import pytest

from sifluoro.contract import replay_output_violations
from sifluoro.replay import replay
from sifluoro.sim import simulate_case
from sifluoro.sim.export import export_study


@lru_cache(maxsize=None)
def _find_cases():
    """Two quick cases that between them cover damaged/not, reported dose/not."""
    found = {}
    for case in range(40):
        s = simulate_case(11, case, size=512)
        key = (s.damaged, s.reports_dose)
        if key not in found:
            found[key] = s
        if (True, True) in found or (True, False) in found:
            if any(not k[0] for k in found) and len(found) >= 2:
                break
    return list(found.values())[:2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = []
    for study in _find_cases():
        folder = tmp_path_factory.mktemp(f"case{study.case}")
        out.append((study, export_study(study, folder)))
    return out


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools is installed by .ci/run")
def test_dicom_written_by_the_simulator_has_no_dciodvfy_errors(exported):
    checked = 0
    for study, ex in exported:
        truth = json.loads(ex.truth_path.read_text())
        for path in ex.files:
            if path.name in truth["damaged_files"]:
                continue
            out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            errors = [l for l in (out.stdout + out.stderr).splitlines() if l.startswith("Error")]
            assert errors == [], (path.name, study.storage, errors[:5])
            checked += 1
    assert checked >= 4


def test_replay_matches_truth_timing_dose_and_damage(exported, tmp_path):
    for study, ex in exported:
        truth = json.loads(ex.truth_path.read_text())
        events_path, summary_path = tmp_path / f"{study.case}.jsonl", tmp_path / f"{study.case}.json"
        result = replay([ex.dicom_dir], events_path=events_path, summary_path=summary_path)
        assert result.exit_code == 0
        assert replay_output_violations(events_path, summary_path) == []
        events = [json.loads(l) for l in events_path.read_text().splitlines()]
        kept = [f for f in truth["frames"] if not f["damaged"]]
        got = [(e["sop_instance_uid"], e["frame"]) for e in events]
        # every undamaged frame, with the identity truth gives it (a partly decodable damaged
        # compressed run may add its first frames)
        assert set(got) >= {(f["sop_instance_uid"], f["frame"]) for f in kept}
        assert set(got) <= {(f["sop_instance_uid"], f["frame"]) for f in truth["frames"]}
        if truth["compression"] is None:  # a truncated uncompressed run is rejected whole
            assert [(e["sop_instance_uid"], e["frame"]) for e in events] == \
                [(f["sop_instance_uid"], f["frame"]) for f in kept]
            t0 = kept[0]["t_s"]
            assert [e["t_s"] for e in events] == pytest.approx([f["t_s"] - t0 for f in kept], abs=1e-5)
        rejected = {r["file"].rsplit("/", 1)[-1] for r in result.summary["rejected_files"]}
        assert rejected == set(truth["damaged_files"])
        runs = [r for r in truth["runs"] if not r["damaged"]]
        true_kerma = sum(r["air_kerma_mgy"] for r in runs)
        if truth["reports_dose"]:
            # the device's values: truth x its calibration factor (within 5 %)
            assert result.summary["dose_source"] == "reported"
            assert result.summary["air_kerma_mgy"] == pytest.approx(true_kerma, rel=0.051)
        else:
            # estimated with the default per-device settings, not the simulated tube's own
            assert result.summary["dose_source"] == "estimated"
            assert result.summary["air_kerma_mgy"] == pytest.approx(true_kerma, rel=0.15)
        assert result.summary["fluoro_time_s"] + result.summary["acquisition_time_s"] == pytest.approx(
            sum(r["frames"] * r["technique"]["frame_time_ms"] / 1000 for r in runs), rel=1e-6)
