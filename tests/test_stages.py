"""Image stages chosen by name: parsing, order, the CLI and batch replay, and the summary saying
which stages assessed the study."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sifluoro.audit.distributed import batch_replay
from sifluoro.contract import replay_output_violations
from sifluoro.errors import ConfigError
from sifluoro.register.stage import JointStage
from sifluoro.sim import simulate_case
from sifluoro.sim.export import export_study
from sifluoro.stages import LIVE_STAGES, REPLAY_STAGES, make_stages, parse_stage_names
from sifluoro.track.contrast import ContrastStage
from sifluoro.track.needle import NeedleStage


@pytest.mark.parametrize("text, names", [
    ("contrast,register", ("register", "contrast")),
    (" needle , register,needle", ("register", "needle")),
    ("none", ()),
    ("", ()),
])
def test_names_are_parsed_into_pipeline_order(text, names):
    assert parse_stage_names(text) == names


def test_an_unknown_stage_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="joint.*register, needle, contrast"):
        parse_stage_names("register,joint")


def test_stages_are_made_fresh_in_pipeline_order():
    stages = make_stages(("contrast", "needle", "register"))
    assert [type(s) for s in stages] == [JointStage, NeedleStage, ContrastStage]
    assert [s.name for s in make_stages(REPLAY_STAGES)] == ["register"]
    assert [s.name for s in make_stages(LIVE_STAGES)] == ["register", "needle"]
    assert make_stages(("register",))[0] is not make_stages(("register",))[0]


@pytest.fixture(scope="module")
def case_set(tmp_path_factory):
    """One quick simulated case (final needle run and a contrast run) as a one-case set."""
    out = tmp_path_factory.mktemp("set")
    export_study(simulate_case(2026, 1, size=512, quick=True), out / "case000")
    return out


def _replay_cli(case_set, out, *extra):
    run = subprocess.run([sys.executable, "-m", "sifluoro", "replay", str(case_set / "case000" / "dicom"),
                          "--events", str(out / "e.jsonl"), "--summary", str(out / "s.json"),
                          "--budget-ms", "1e9", *extra], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in (out / "e.jsonl").read_text().splitlines()]
    return run.stdout, events, json.loads((out / "s.json").read_text())


def test_cli_runs_the_stages_asked_for_and_the_summary_says_which(case_set, tmp_path):
    (tmp_path / "all").mkdir()
    (tmp_path / "none").mkdir()
    text, events, summary = _replay_cli(case_set, tmp_path / "all", "--stages", "register,needle,contrast")
    assert summary["stages"] == ["register", "needle", "contrast"]
    assert "stages     register, needle, contrast" in text
    assert any(e["needle"] is not None for e in events)
    assert replay_output_violations(tmp_path / "all" / "e.jsonl", tmp_path / "all" / "s.json") == []

    text, events, bare = _replay_cli(case_set, tmp_path / "none", "--stages", "none")
    assert bare["stages"] == []
    assert "contrast   not assessed" in text
    assert [line.split()[0] for line in text.splitlines()[:7]] == [
        "study", "frames", "fluoro", "dose", "contrast", "stages", "latency"]  # each once
    assert all(e["joint"] is None and e["needle"] is None for e in events)
    # dose never depends on the image stages
    assert (bare["air_kerma_mgy"], bare["dap_gycm2"]) == (summary["air_kerma_mgy"], summary["dap_gycm2"])


def test_cli_refuses_an_unknown_stage(case_set, tmp_path):
    run = subprocess.run([sys.executable, "-m", "sifluoro", "replay", str(case_set), "--events",
                          str(tmp_path / "e"), "--summary", str(tmp_path / "s"), "--stages", "needel"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown image stage(s) needel" in run.stderr


def test_batch_replay_passes_the_stages_on(case_set, tmp_path):
    [(name, summary, code)] = list(batch_replay(case_set, tmp_path, budget_ms=1e9,
                                                stages=("register", "contrast")))
    assert (name, code, summary["stages"]) == ("case000", 0, ["register", "contrast"])
    [(_, default, _)] = list(batch_replay(case_set, tmp_path / "default", budget_ms=1e9))
    assert default["stages"] == list(REPLAY_STAGES)
    # "none" (an empty tuple) is no image stage, not the default (user review s18 F20)
    [(_, bare, _)] = list(batch_replay(case_set, tmp_path / "none", budget_ms=1e9, stages=()))
    assert bare["stages"] == []


@pytest.mark.parametrize("value, says", [("", "no stage named; give none for dose only"),
                                         ("none,register", "none and register contradict")])
def test_cli_refuses_an_empty_or_contradictory_stage_list(value, says, tmp_path, capsys):
    """User review s18 F21: ``--stages ""`` (an unset shell variable) turned guidance off
    without a word, and ``none,register`` ran register."""
    from sifluoro.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["replay", str(tmp_path), "--events", str(tmp_path / "e"), "--summary",
              str(tmp_path / "s"), "--stages", value])
    assert stop.value.code == 2 and says in capsys.readouterr().err


def test_batch_replay_says_not_assessed_for_a_contrast_stage_that_did_not_run(case_set, tmp_path,
                                                                               capsys):
    """User review s18 F15: batch-replay printed "contrast none" (nothing seen) for a study
    whose contrast stage never ran."""
    from sifluoro.cli import main

    assert main(["batch-replay", str(case_set), "--out", str(tmp_path / "r"), "--budget-ms",
                 "inf"]) == 0
    assert "case000: " in (out := capsys.readouterr().out) and "contrast not assessed" in out
