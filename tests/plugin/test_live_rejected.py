"""LiveReplay's summary lists every rejected file, the device report the Engine refused too."""
from __future__ import annotations

import os
from pathlib import Path

import pydicom

from sifluoro import Engine, Settings
from sifluoro.plugin.live import LiveReplay
from sifluoro.replay import replay
from tests.dicom_fixtures import RunSpec, write_study
from tests.dose.rdsr_fixtures import Ev, acquired, build_rdsr, save


def test_a_device_report_cut_short_is_listed_as_replay_lists_it(tmp_path):
    """LiveReplay had replaced the Engine's rejected_files with its reader's list (review M4)."""
    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(30.0, n_frames=3)])
    d0 = pydicom.dcmread(paths[0], stop_before_pixels=True)
    rdsr = save(build_rdsr([Ev(dap_gycm2=30.0, rp_mgy=500.0,
                               extra=[acquired(d0.SOPInstanceUID, d0.SOPClassUID)])],
                           study_uid=d0.StudyInstanceUID), tmp_path / "study" / "rdsr.dcm")
    os.truncate(rdsr, os.path.getsize(rdsr) - 200)  # a copy cut short
    offline = replay([tmp_path / "study"], events_path=tmp_path / "r.jsonl",
                     summary_path=tmp_path / "r.json", settings=Settings(), stages=[])
    live = LiveReplay(Engine(Settings(), stages=[]), [], paced=False).run([tmp_path / "study"])
    names = [Path(x["file"]).name for x in offline.summary["rejected_files"]]
    assert names == ["rdsr.dcm"]
    assert [Path(x["file"]).name for x in live["rejected_files"]] == names


def test_view_and_serve_igtl_of_nothing_usable_say_so_and_end(tmp_path, capsys):
    """User review s20 I8: `view nonexist` printed a blank study's table and served a page of
    zeros until interrupted; `serve-igtl` of a non-DICOM file printed the same blank table."""
    from sifluoro.cli import main

    assert main(["view", str(tmp_path / "nonexist"), "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert "nonexist" in captured.err and "study " not in captured.out
    (tmp_path / "notes.txt").write_text("not DICOM")
    for command in (["view", "--port", "0"], ["serve-igtl", "--port", "0"]):
        assert main([command[0], str(tmp_path / "notes.txt"), *command[1:]]) == 2
        captured = capsys.readouterr()
        assert "rejected" in captured.err and "notes.txt" in captured.err
        assert "study      " not in captured.out and "dose       " not in captured.out
