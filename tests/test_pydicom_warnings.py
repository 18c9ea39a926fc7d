"""pydicom's warnings are said once by the CLI: logged ("WARNING pydicom: ..."), not printed a
second time as a bare UserWarning with pydicom's source line (review s16 L6), in ingest's
worker processes and on Dask workers too."""
from __future__ import annotations

import subprocess
import sys

import pydicom
import pytest

from tests.dicom_fixtures import RunSpec, write_study

NOTICE = "Invalid value for VR UI"


@pytest.fixture()
def bad_uid_study(tmp_path):
    path = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3)])[0]
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID).encode()
    path.write_bytes(path.read_bytes().replace(uid, uid[:-3] + b".x" + uid[-1:]))  # same length
    return tmp_path / "study"


def _said_once(args: list[str]) -> None:
    run = subprocess.run([sys.executable, "-m", "sifluoro", *args], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = [x for x in run.stderr.splitlines() if NOTICE in x]
    assert len(lines) == 1 and lines[0].startswith("WARNING pydicom: "), run.stderr
    assert "UserWarning" not in run.stderr


def test_dose_summary_says_a_pydicom_warning_once(bad_uid_study):
    _said_once(["dose", "summary", "--json", str(bad_uid_study)])


def test_ingest_workers_say_a_pydicom_warning_once(bad_uid_study, tmp_path):
    _said_once(["audit", "ingest", str(bad_uid_study), "--db", str(tmp_path / "r.db"),
                "--workers", "2", "-q"])


def test_dask_workers_say_a_pydicom_warning_once(bad_uid_study, tmp_path):
    pytest.importorskip("distributed", reason="Dask is not installed")
    _said_once(["audit", "ingest", str(bad_uid_study), "--db", str(tmp_path / "r.db"),
                "--dask", "-q"])


def test_a_run_cut_in_its_encapsulated_pixel_data_is_said_as_such(tmp_path):
    """User review s20 P7: dose summary of a compressed run cut in its pixel data printed only
    pydicom's "End of file reached before delimiter (FFFE,E0DD) found in file ...", nothing of
    what it means (the totals were right)."""
    path = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=4, transfer_syntax="rle")])[0]
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - len(data) // 3])
    run = subprocess.run([sys.executable, "-m", "sifluoro", "dose", "summary", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "cut short inside its pixel data" in run.stderr and "FFFE,E0DD" not in run.stderr
