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


def test_a_shared_output_is_readable_by_all(tmp_path):
    with replaced(tmp_path / "report.html", "wb", shared=True) as out:
        out.write(b"<html>")
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
