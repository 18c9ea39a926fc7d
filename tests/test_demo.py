"""The README's first command (``sifluoro demo``) end to end, and run again into its folder."""
from __future__ import annotations

import json

import pydicom

from sifluoro.cli import main
from sifluoro.contract import replay_output_violations


def test_the_demo_runs_end_to_end_and_a_second_demo_replaces_its_study(tmp_path, capsys):
    """User review s18 F12: a second demo of another case into the same folder mixed the two
    studies' files (a name both use overwritten) and failed advising ``--study``, which the
    demo does not have."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    # the document it cites ships with the project (user review s18 F18: the DESIGN it cited did not)
    assert "contract   ok (docs/contract.md §3)" in capsys.readouterr().out
    assert main(["demo", "--out", str(out), "--case", "1"]) == 0
    assert "contract   ok" in capsys.readouterr().out
    assert not replay_output_violations(out / "events.jsonl", out / "summary.json")
    truth = json.loads((out / "study" / "truth.json").read_text())
    studies = {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID
               for p in (out / "study" / "dicom").iterdir()}
    assert truth["case"] == 1 and studies == {truth["study_instance_uid"]}
    for name in ("dose-rdsr.dcm", "annotated.png", "annotated.mp4"):
        assert (out / name).stat().st_size > 0


def test_the_demo_keeps_a_study_folder_it_did_not_make(tmp_path, capsys):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "mine.dcm").write_bytes(b"x")
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "holds files the demo did not make" in capsys.readouterr().err
    assert (tmp_path / "study" / "mine.dcm").read_bytes() == b"x"


def test_the_demo_refuses_a_linked_study_folder(tmp_path, capsys):
    """Review s18 F6: a linked ``out/study`` ended in a traceback (rmtree refuses links)."""
    mine = tmp_path / "mine"
    (mine / "dicom").mkdir(parents=True)
    (mine / "truth.json").write_text("{}")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "study").symlink_to(mine, target_is_directory=True)
    assert main(["demo", "--out", str(tmp_path / "out")]) == 2
    assert "is a link" in capsys.readouterr().err and (mine / "truth.json").exists()
