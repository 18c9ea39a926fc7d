"""Every command checks its outputs and option values before any work, as ``replay`` does: a
bad one is exit 2 with ``sifluoro: --option PATH: reason`` (user review s18 F26/F25/F13/F27),
never a traceback after the study was read or a port opened."""
from __future__ import annotations

import numpy as np
import pytest

from sifluoro.acquire.video import write_test_video
from sifluoro.cli import main
from tests.dicom_fixtures import PATIENT_ID, PATIENT_NAME, RunSpec, write_study


@pytest.fixture
def study(tmp_path):
    write_study(tmp_path / "study", [RunSpec(0.0)])
    return tmp_path / "study"


@pytest.fixture
def blocker(tmp_path):
    """A regular file: a path through it cannot be written, even by root."""
    path = tmp_path / "afile"
    path.write_text("x")
    return path


def _refused(argv, capsys, says: str) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert f"sifluoro: {says}" in err, err
    assert "Traceback" not in err and "listening" not in out  # before the port opened
    assert PATIENT_NAME not in err + out and PATIENT_ID not in err + out
    return err


@pytest.mark.parametrize("command", ["export", "serve-igtl", "view"])
@pytest.mark.parametrize("option", ["--events", "--summary"])
def test_the_plugin_commands_refuse_an_output_that_cannot_be_written(
        command, option, study, blocker, tmp_path, capsys):
    extra = ["--outbox", tmp_path / "outbox"] if command == "export" else ["--port", "0"]
    _refused([command, study, option, blocker / "x", "--stages", "none", *extra], capsys,
             f"{option} {blocker / 'x'}: a file stands where its folder should be")
    assert not (tmp_path / "outbox").exists()


def test_export_names_an_outbox_that_cannot_be_made(study, blocker, capsys):
    _refused(["export", study, "--outbox", blocker / "ob", "--stages", "none"], capsys,
             f"--outbox {blocker / 'ob'}: a file stands on its path")


@pytest.fixture
def video(tmp_path):
    return write_test_video(tmp_path / "v.avi", np.full((3, 64, 64), 128, np.uint8), 7.5)


def _parse_refused(argv, capsys, says: str) -> None:
    """Refused by argparse: usage, ``argument --option: ...``, exit 2."""
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and f"error: argument {says}" in err, err
    assert "listening" not in out


@pytest.mark.parametrize("option", ["--events", "--summary", "--overlay-mp4"])
def test_video_refuses_an_output_that_cannot_be_written(option, video, blocker, tmp_path, capsys):
    """F25: an unwritable ``--overlay-mp4`` was listed among the outputs, exit 0."""
    outs = {"--events": tmp_path / "e.jsonl", "--summary": tmp_path / "s.json",
            option: blocker / "x"}
    _refused(["video", video, "--pixel-spacing-mm", "0.5", "--stages", "none", "-q",
              *[a for kv in outs.items() for a in kv]], capsys,
             f"{option} {blocker / 'x'}: a file stands where its folder should be")
    assert not (tmp_path / "s.json").exists()


def test_audit_report_refuses_an_out_folder_that_cannot_be_made(blocker, tmp_path, capsys):
    db = tmp_path / "registry.db"
    db.write_text("")
    _refused(["audit", "report", "--db", f"sqlite:///{db}", "--out", blocker / "rep", "-q"],
             capsys, f"--out {blocker / 'rep'}: a file stands on its path")


def test_simulate_refuses_an_outdir_that_cannot_be_made(blocker, capsys):
    _refused(["simulate", blocker / "sim", "--cases", "1", "--quick", "--workers", "1"], capsys,
             f"OUTDIR {blocker / 'sim'}: a file stands on its path")


@pytest.mark.parametrize("make", [False, True])
def test_outbox_send_refuses_a_folder_that_is_not_an_outbox(make, tmp_path, capsys):
    """F10: a mistyped ``--outbox`` was made an empty outbox, exit 0 (sending nothing)."""
    folder = tmp_path / "outbxo"
    if make:
        folder.mkdir()  # an existing folder that is no outbox either
    _refused(["outbox", "send", "--outbox", folder, "--pacs", "PACS@127.0.0.1:1"], capsys,
             f"--outbox {folder}: not an outbox")
    assert not (folder / "pending").exists()


@pytest.mark.parametrize("command", ["export", "serve-igtl", "view"])
def test_input_and_simulate_together_are_refused(command, study, tmp_path, capsys):
    """F13: INPUT was silently ignored for the simulated case."""
    extra = ["--outbox", tmp_path / "outbox"] if command == "export" else ["--port", "0"]
    _refused([command, study, "--simulate", "3", "--stages", "none", *extra], capsys,
             "give INPUT or --simulate, not both")


@pytest.mark.parametrize("technique, says", [
    (["--kvp", "500"], "--kvp: must be in 40-150 kV"),
    (["--ma", "-10"], "--ma: must be > 0 mA"),
    (["--pulse-width-ms", "0"], "--pulse-width-ms: must be > 0 ms"),
    (["--sid-mm", "100", "--source-to-isocenter-mm", "50"], "--sid-mm: must be > 300 mm"),
    (["--source-to-isocenter-mm", "100"], "--source-to-isocenter-mm: must be > 150 mm"),
    (["--cu-mm", "-1"], "--cu-mm: must be in 0-"),
    (["--kvp", "nan"], "--kvp: must be in 40-150 kV")])
def test_video_refuses_a_technique_the_dose_model_cannot_use(technique, says, video, tmp_path,
                                                            capsys):
    """F16: each gave ``dose 0.00 mGy ... [none]`` and exit 0, not saying what was refused."""
    _parse_refused(["video", video, "--pixel-spacing-mm", "0.5", "--events", tmp_path / "e",
                    "--summary", tmp_path / "s", "--stages", "none", "-q", "--kvp", "80", "--ma",
                    "10", "--pulse-width-ms", "5", "--sid-mm", "1000", *technique], capsys, says)
    assert not (tmp_path / "s").exists()


def test_video_refuses_an_isocenter_beyond_the_detector(video, tmp_path, capsys):
    _refused(["video", video, "--pixel-spacing-mm", "0.5", "--events", tmp_path / "e",
              "--summary", tmp_path / "s", "--stages", "none", "-q", "--kvp", "80", "--ma", "10",
              "--pulse-width-ms", "5", "--sid-mm", "800", "--source-to-isocenter-mm", "900"],
             capsys, "--source-to-isocenter-mm 900 must be less than --sid-mm 800")
    assert not (tmp_path / "s").exists()


def test_video_in_range_technique_gives_a_dose(video, tmp_path):
    assert main([str(a) for a in ["video", video, "--pixel-spacing-mm", "0.5", "--events",
                 tmp_path / "e", "--summary", tmp_path / "s", "--stages", "none", "-q", "--kvp",
                 "150", "--ma", "10", "--pulse-width-ms", "5", "--sid-mm", "301",
                 "--source-to-isocenter-mm", "300"]]) == 0
    import json
    assert json.loads((tmp_path / "s").read_text())["air_kerma_mgy"] > 0


@pytest.mark.parametrize("argv, says", [
    (["export", "{study}", "--outbox", "{tmp}/ob", "--key-frames", "-1"], "--key-frames: must be >= 0"),
    (["export", "{study}", "--outbox", "{tmp}/ob", "--retries", "-3"], "--retries: must be >= 0"),
    (["export", "{study}", "--outbox", "{tmp}/ob", "--budget-ms", "-5"], "--budget-ms: must be > 0 ms"),
    (["serve-igtl", "{study}", "--port", "0", "--fps", "0"], "--fps: must be > 0 frames/s"),
    (["view", "{study}", "--port", "0", "--fps", "-5"], "--fps: must be > 0 frames/s"),
    (["serve-igtl", "{study}", "--port", "70000"], "--port: must be in 0-65535"),
    (["replay", "{study}", "--events", "{tmp}/e", "--summary", "{tmp}/s", "--budget-ms", "nan"],
     "--budget-ms: must be > 0 ms"),
    (["batch-replay", "{tmp}", "--out", "{tmp}/r", "--budget-ms", "-5"], "--budget-ms: must be > 0 ms"),
    (["outbox", "send", "--outbox", "{tmp}/ob", "--pacs", "P@127.0.0.1:1", "--retry-wait-s", "-1"],
     "--retry-wait-s: must be >= 0 s"),
    (["audit", "report", "--db", "sqlite:///{tmp}/x.db", "--out", "{tmp}/s", "--outlier-factor",
      "-1"], "--outlier-factor: must be > 0"),
    (["simulate", "{tmp}/s", "--cases", "0", "--workers", "1"], "--cases: must be >= 1")])
def test_option_values_are_refused_when_parsed_by_their_own_name(argv, says, study, tmp_path,
                                                                 capsys):
    """F27: ``--key-frames -1`` failed after the whole replay with a traceback, ``--fps 0``
    after the port opened as ``fps``, ``--retries -3`` as ``pacs.retries ...``."""
    _parse_refused([a.format(study=study, tmp=tmp_path) for a in argv], capsys, says)
    assert not (tmp_path / "ob").exists() and not (tmp_path / "s").exists()


def test_the_video_overlay_says_which_stages_did_not_run(video, tmp_path, monkeypatch):
    """The video's overlay was drawn without the stages that ran: a stage left out read as
    "looked, found nothing" (no "not assessed" line), unlike replay's overlay."""
    from sifluoro import overlay

    seen, draw = [], overlay.draw_overlay

    def spy(*args, **kwargs):
        seen.append(kwargs.get("stages"))
        return draw(*args, **kwargs)

    monkeypatch.setattr(overlay, "draw_overlay", spy)
    assert main([str(a) for a in ["video", video, "--pixel-spacing-mm", "0.5", "--events",
                 tmp_path / "e", "--summary", tmp_path / "s", "--stages", "none", "-q",
                 "--overlay-mp4", tmp_path / "o.mp4"]]) == 0
    assert seen and all(s is not None and not list(s) for s in seen)
    assert (tmp_path / "o.mp4").stat().st_size > 0


def test_batch_replay_and_evaluate_refuse_an_output_that_cannot_be_written(blocker, tmp_path,
                                                                          capsys):
    (tmp_path / "cases").mkdir()
    _refused(["batch-replay", tmp_path / "cases", "--out", blocker / "r"], capsys,
             f"--out {blocker / 'r'}: a file stands on its path")
    _refused(["evaluate", tmp_path / "cases", tmp_path / "cases", "--json", blocker / "j.json"],
             capsys, f"--json {blocker / 'j.json'}: a file stands where its folder should be")
