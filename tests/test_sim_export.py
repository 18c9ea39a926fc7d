"""Simulated studies as DICOM: valid (dciodvfy), replayable to the contract, truth consistent."""
from __future__ import annotations

import json
import shutil
import subprocess
from functools import lru_cache

import pytest

from sifluoro.contract import replay_output_violations
from sifluoro.dose.rdsr_read import read_rdsr
from sifluoro.replay import replay
from sifluoro.sim import simulate_case
from sifluoro.sim.export import export_study


@lru_cache(maxsize=None)
def _find_cases():
    """Two cases: one with a damaged (cut short) file and one without, one reporting dose and
    one not, uncompressed where possible (a cut-short native run gives its whole frames)."""
    by_key = {}
    for case in range(40):
        s = simulate_case(11, case, size=512)
        by_key.setdefault((s.damaged, s.reports_dose, s.compression is None), s)
        for d_reports in (True, False):
            damaged = by_key.get((True, d_reports, True)) or by_key.get((True, d_reports, False))
            clean = by_key.get((False, not d_reports, True)) or by_key.get((False, not d_reports, False))
            if damaged is not None and clean is not None and (damaged.compression is None
                                                              or case == 39):
                return [damaged, clean]
    raise AssertionError("no damaged case among the first 40 of seed 11")


def write_rdsr_of(dicom_dir, path):
    """Replay ``dicom_dir`` (dose only) with an RDSR written to ``path``; return ``path``."""
    replay([dicom_dir], events_path=path.with_suffix(".jsonl"), summary_path=path.with_suffix(".json"),
           stages=[], rdsr_path=path)
    return path


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
        damaged = {f["sop_instance_uid"] for f in truth["frames"] if f["damaged"]}
        got = [(e["sop_instance_uid"], e["frame"]) for e in events]
        # every undamaged frame, in order, with the identity and time truth gives it; of the
        # damaged (cut short) run, its first frames that are whole or decode
        assert [g for g in got if g[0] not in damaged] == \
            [(f["sop_instance_uid"], f["frame"]) for f in kept]
        salvaged = [g[1] for g in got if g[0] in damaged]
        assert salvaged == list(range(1, len(salvaged) + 1))
        truth_t = {(f["sop_instance_uid"], f["frame"]): f["t_s"] for f in truth["frames"]}
        assert [e["t_s"] for e in events] == pytest.approx(
            [truth_t[g] - truth_t[got[0]] for g in got], abs=1e-5)   # from the first frame
        rejected = {r["file"].rsplit("/", 1)[-1] for r in result.summary["rejected_files"]}
        assert rejected == set(truth["damaged_files"])
        runs = [r for r in truth["runs"] if not r["damaged"]]
        # the salvaged frames' share of the damaged run's dose counts too
        true_kerma = sum(r["air_kerma_mgy"] for r in runs) + sum(
            r["air_kerma_mgy"] * len(salvaged) / r["frames"] for r in truth["runs"] if r["damaged"])
        if truth["reports_dose"]:
            # the device's values: truth x its calibration factor (within 5 %)
            assert result.summary["dose_source"] == "reported"
            assert result.summary["air_kerma_mgy"] == pytest.approx(true_kerma, rel=0.051)
        else:
            # estimated with the default per-device settings, not the simulated tube's own
            assert result.summary["dose_source"] == "estimated"
            assert result.summary["air_kerma_mgy"] == pytest.approx(true_kerma, rel=0.15)
        assert result.summary["fluoro_time_s"] + result.summary["acquisition_time_s"] == pytest.approx(
            sum(r["frames"] * r["technique"]["frame_time_ms"] / 1000 for r in runs)
            + sum(len(salvaged) * r["technique"]["frame_time_ms"] / 1000
                  for r in truth["runs"] if r["damaged"]), rel=1e-6)
        # the damaged run's other frames: from its header, apart in the summary and in the RDSR
        lost = result.summary["lost_frames"]
        assert lost["frames"] == sum(r["frames"] for r in truth["runs"] if r["damaged"]) - len(salvaged)
        lost_kerma = sum(r["air_kerma_mgy"] * (r["frames"] - len(salvaged)) / r["frames"]
                         for r in truth["runs"] if r["damaged"])
        assert lost["air_kerma_mgy"] == pytest.approx(lost_kerma, rel=0.15)
        if damaged:
            rdsr = read_rdsr(write_rdsr_of(ex.dicom_dir, tmp_path / f"{study.case}.dcm"))
            assert rdsr.planes[0].air_kerma_mgy == pytest.approx(
                result.summary["air_kerma_mgy"] + lost["air_kerma_mgy"], rel=1e-3)
            assert sum(e.n_pulses for e in rdsr.events) == result.summary["frames"] + lost["frames"]


def test_truth_names_the_parts_of_the_injection(tmp_path):
    """A joint fill with a cloud beside it has the outcome extravasation, as a cloud alone
    has: the truth says which (seed 2211 case 4 is such a mix)."""
    study = simulate_case(2211, 4, size=512, quick=True)
    truth = json.loads(export_study(study, tmp_path / "case004").truth_path.read_text())
    assert truth["outcome"] == "extravasation"
    assert truth["contrast_components"] == ["intra_articular", "extravasation"]
