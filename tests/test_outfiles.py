"""Output files: whole or not at all, and never a device or FIFO replaced by a file."""
import json
import os
import stat
import threading

import pytest

from sifluoro.outfiles import replaced
from sifluoro.replay import write_json


def test_a_fifo_given_as_output_is_written_into_not_replaced(tmp_path):
    """Review s15: ``--events /dev/null`` as root renamed a temporary file over /dev/null (the
    machine lost its null device); a FIFO stands for it here."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    write_json(fifo, {"frames": 3})
    reader.join(10)
    assert json.loads(got[0]) == {"frames": 3}
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["out.fifo"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with replaced(path) as out:
            out.write("half")
            raise RuntimeError("disk gone")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_outputs_get_the_umask_s_permissions_or_keep_those_of_the_file_they_replace(tmp_path):
    """User review s18 F15: events, summary and RDSR were 0600 (the temporary file's mode)
    while the PNG/MP4 of the same study were 0644: a second user or service could not read the
    events. Like ``open``, the umask decides; a replaced file keeps its mode."""
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "summary.json", {"frames": 3})
        with replaced(tmp_path / "report.html", "wb") as out:
            out.write(b"<html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o640
    os.chmod(tmp_path / "summary.json", 0o604)
    write_json(tmp_path / "summary.json", {"frames": 4})
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o604


def test_an_output_that_cannot_be_written_is_named_before_the_replay(tmp_path, capsys):
    """Review s15 M4: ``--rdsr`` in a place that cannot be written ended the replay with a
    traceback at its end, and the summary (written after the RDSR) was lost."""
    from sifluoro.cli import main
    from tests.dicom_fixtures import RunSpec, write_study

    write_study(tmp_path / "s", [RunSpec(0.0)])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["replay", str(tmp_path / "s"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json"), "--rdsr", str(blocker / "r.dcm"), "-q"])
    assert code == 2 and "--rdsr" in capsys.readouterr().err
    assert not (tmp_path / "e.jsonl").exists()


def test_an_rdsr_that_fails_at_the_end_keeps_the_summary(tmp_path, monkeypatch):
    import errno

    from sifluoro import replay as replay_module
    from tests.dicom_fixtures import RunSpec, write_study

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    write_study(tmp_path / "s", [RunSpec(0.0)])
    monkeypatch.setattr(replay_module, "write_rdsr", full_disk)
    result = replay_module.replay([tmp_path / "s"], events_path=tmp_path / "e.jsonl",
                                  summary_path=tmp_path / "s.json", rdsr_path=tmp_path / "r.dcm",
                                  stages=[])
    summary = json.loads((tmp_path / "s.json").read_text())
    assert result.exit_code == 1 and "No space left" in summary["rdsr_not_written"]


def test_a_special_file_is_checked_itself_not_its_folder(tmp_path, monkeypatch):
    """Second review s15 M2: ``--events /dev/null`` was refused for a user who cannot write
    /dev (its folder); what is written is the file itself."""
    from sifluoro.outfiles import check_writable

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == "/dev" else
                        real_access(p, mode))  # a user who cannot write /dev
    check_writable(events="/dev/null")


def test_a_symlinked_output_keeps_its_link(tmp_path):
    target = tmp_path / "store" / "summary.json"
    target.parent.mkdir()
    target.write_text("old")
    (tmp_path / "summary.json").symlink_to(target)
    write_json(tmp_path / "summary.json", {"frames": 1})
    assert (tmp_path / "summary.json").is_symlink()
    assert json.loads(target.read_text()) == {"frames": 1}


def _replay_cli(*argv, quiet: bool = True) -> int:
    from sifluoro.cli import main

    return main(["replay", *map(str, argv)] + (["-q"] if quiet else []))


def test_an_output_that_names_an_input_file_is_refused_and_the_input_kept(tmp_path, capsys):
    """User review s18 F2: ``--events`` naming one of the study's files, or ``--rdsr`` naming a
    device's RDSR in the study's folder, replaced it with the output (exit 0): the data lost."""
    from tests.dicom_fixtures import RunSpec, write_study

    (run,) = write_study(tmp_path / "study", [RunSpec(0.0, filename="run.dcm")])
    before = run.read_bytes()
    for option in ("--events", "--summary", "--rdsr", "--overlay-mp4"):
        args = {"--events": tmp_path / "e.jsonl", "--summary": tmp_path / "s.json", option: run}
        flat = [x for kv in args.items() for x in kv]
        assert _replay_cli(tmp_path / "study", *flat) == 2
        assert f"{option} {run}: is one of the input files" in capsys.readouterr().err
        # named as a file of the study, or found inside its folder
        assert _replay_cli(run, *flat) == 2
    assert run.read_bytes() == before
    assert not (tmp_path / "e.jsonl").exists()  # refused before any work


def test_two_outputs_naming_one_file_are_refused(tmp_path, capsys):
    """User review s18 F3: ``--events X --summary X`` kept only the summary (exit 0); /dev/null
    may still take several."""
    from tests.dicom_fixtures import RunSpec, write_study

    write_study(tmp_path / "study", [RunSpec(0.0)])
    same = tmp_path / "out" / "same.json"
    assert _replay_cli(tmp_path / "study", "--events", same, "--summary", same) == 2
    assert "--summary" in capsys.readouterr().err and not same.exists()
    assert _replay_cli(tmp_path / "study", "--events", "/dev/null", "--summary", "/dev/null") == 0


def test_an_overlay_folder_that_cannot_be_written_is_refused_before_the_study_is_read(tmp_path, capsys):
    """User review s18 F4: ``--overlay-png`` naming a file (or a place that cannot be made)
    ended in a traceback (exit 1) after the replay."""
    from tests.dicom_fixtures import RunSpec, write_study

    write_study(tmp_path / "study", [RunSpec(0.0)])
    (tmp_path / "afile").write_text("x")
    for folder, says in ((tmp_path / "afile", "is a file, not a folder"),
                         (tmp_path / "afile" / "png", "a file stands on its path")):
        assert _replay_cli(tmp_path / "study", "--events", tmp_path / "e.jsonl", "--summary",
                           tmp_path / "s.json", "--overlay-png", folder) == 2
        assert f"--overlay-png {folder}: {says}" in capsys.readouterr().err
        assert not (tmp_path / "e.jsonl").exists()


def test_an_unknown_dose_is_printed_as_unknown_not_as_zero(tmp_path, capsys):
    """User review s18 F11: a study without any dose (no header dose, no technique) printed
    ``dose 0.00 mGy air kerma ... [none]``, which reads as a measured zero."""
    from tests.dicom_fixtures import RunSpec, technique, write_study

    no_dose = technique(kvp=None, tube_current_ma=None, pulse_width_ms=None)
    write_study(tmp_path / "study", [RunSpec(0.0, tech=no_dose)])
    _replay_cli(tmp_path / "study", "--events", tmp_path / "e.jsonl", "--summary",
                tmp_path / "s.json", quiet=False)
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["dose_source"] == "none"
    assert "dose       unknown" in out and "0.00 mGy" not in out


def test_outputs_beside_the_study_may_be_written_again_and_a_linked_input_is_guarded(tmp_path):
    """Review s18 F1, F4: every existing file in an input folder was taken for an input, so a
    second replay writing events.jsonl and summary.json beside the study (the receiver's own
    layout) was refused, though the reader never reads those; and an input reached through a
    linked folder was not guarded."""
    from tests.dicom_fixtures import RunSpec, write_study

    (run,) = write_study(tmp_path / "store" / "s1", [RunSpec(0.0, filename="run.dcm")])
    study = tmp_path / "store" / "s1"
    for _ in range(2):
        assert _replay_cli(study, "--events", study / "events.jsonl", "--summary",
                           study / "summary.json") == 0
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "study1").symlink_to(study, target_is_directory=True)
    assert _replay_cli(tmp_path / "archive", "--events", tmp_path / "e.jsonl", "--summary",
                       tmp_path / "s.json", "--rdsr", run) == 2


def test_lost_frames_of_unknown_dose_are_not_printed_as_zero(tmp_path, capsys):
    """Review s18 F8: below "dose unknown", the frames lost in a cut file printed
    "+ 0.00 mGy, 0.000 Gy·cm² ... (in the RDSR, not above)"."""
    import os

    from tests.dicom_fixtures import RunSpec, technique, write_study

    no_dose = technique(kvp=None, tube_current_ma=None, pulse_width_ms=None)
    (path,) = write_study(tmp_path / "study", [RunSpec(0.0, tech=no_dose, n_frames=4)])
    os.truncate(path, path.stat().st_size - path.stat().st_size // 3)  # the last frames cut off
    _replay_cli(tmp_path / "study", "--events", tmp_path / "e.jsonl", "--summary",
                tmp_path / "s.json", "--stages", "none", quiet=False)
    out = capsys.readouterr().out
    assert "frames lost in damaged files, their dose unknown" in out
    assert "0.00 mGy" not in out


def test_a_lost_run_of_unknown_dose_beside_runs_of_known_dose_is_said(tmp_path, capsys):
    """Review 2 s18 F3: a damaged run (here no Rows) whose header holds no dose beside a run
    that has one: "+ 0.00 mGy ... lost", runs_dose_unknown 0, the study dose read as whole."""
    import pydicom

    from tests.dicom_fixtures import RunSpec, technique, write_study

    no_dose = technique(kvp=None, tube_current_ma=None, pulse_width_ms=None)
    _, lost = write_study(tmp_path / "study", [RunSpec(0.0), RunSpec(30.0, tech=no_dose)])
    ds = pydicom.dcmread(lost)
    del ds.Rows
    ds.save_as(lost)
    _replay_cli(tmp_path / "study", "--events", tmp_path / "e.jsonl", "--summary",
                tmp_path / "s.json", "--stages", "none", quiet=False)
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["lost_frames"]["frames"] == 3 and summary["lost_frames"]["runs_dose_unknown"] == 1
    assert "frames lost in damaged files, their dose unknown" in out


def test_a_replay_of_inputs_that_do_not_exist_writes_nothing(tmp_path, capsys):
    """User review s18 F5: a mistyped study path printed and wrote a summary of 0 frames and
    no dose (a table a reader may take at face value) before the error."""
    from sifluoro.cli import main

    code = main(["replay", str(tmp_path / "nonexistent"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json")])
    captured = capsys.readouterr()
    assert code == 2 and "nonexistent: no such file or folder" in captured.err
    assert captured.out == "" and list(tmp_path.iterdir()) == []


def test_an_ingest_of_inputs_that_do_not_exist_makes_no_registry(tmp_path, capsys):
    from sifluoro.cli import main

    db = tmp_path / "x.db"
    assert main(["audit", "ingest", str(tmp_path / "gone"), "--db", str(db)]) == 2
    assert "gone: no such file or folder" in capsys.readouterr().err and not db.exists()


def test_a_broken_link_as_the_only_input_writes_nothing(tmp_path, capsys):
    """Review s19: the check took a dangling link for an input (lexists) while the reader
    does not: a zero-dose summary was written."""
    from sifluoro.cli import main

    (tmp_path / "link").symlink_to(tmp_path / "gone")
    code = main(["replay", str(tmp_path / "link"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json")])
    assert code == 2 and "no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_a_full_disk_under_the_events_keeps_the_study_and_its_summary(tmp_path, capsys):
    """New-user review s19 U2: ``--events /dev/full`` ended the replay with a traceback and no
    summary (the study's dose lost); a full disk under the summary, a traceback. Now the study
    goes on, the summary says the events were not written (exit 1), and a summary that cannot
    be written is one line (exit 1)."""
    from sifluoro.cli import main
    from tests.dicom_fixtures import RunSpec, write_study

    write_study(tmp_path / "s", [RunSpec(0.0, n_frames=3)])
    code = main(["replay", str(tmp_path / "s"), "--events", "/dev/full", "--summary",
                 str(tmp_path / "s.json"), "-q"])
    summary = json.loads((tmp_path / "s.json").read_text())
    assert code == 1 and summary["frames"] == 3 and summary["air_kerma_mgy"] > 0
    assert summary["events_not_written"].startswith("/dev/full: No space left on device")
    capsys.readouterr()
    # the outputs listed say which one is incomplete (user review s20 P9)
    assert main(["replay", str(tmp_path / "s"), "--events", "/dev/full", "--summary",
                 str(tmp_path / "s.json")]) == 1
    assert "outputs    /dev/full (incomplete: events_not_written in the summary)" in capsys.readouterr().out
    code = main(["replay", str(tmp_path / "s"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", "/dev/full", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().endswith("No space left on device") and "Traceback" not in err
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 3


def test_a_replay_of_a_lone_non_dicom_file_prints_its_rejection_not_a_blank_study(tmp_path,
                                                                                  capsys):
    """New-user review s19 U14: a blank study's table of zeros came before the error."""
    from sifluoro.cli import main

    (tmp_path / "notes.txt").write_text("not DICOM")
    code = main(["replay", str(tmp_path / "notes.txt"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "rejected" in captured.err and "notes.txt: not a DICOM file" in captured.err
    assert "no frame could be processed" in captured.err
