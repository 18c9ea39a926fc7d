"""Receiver test helpers: the receiver as a real subprocess, DCMTK senders, byte comparisons.

Only 127.0.0.1 is used; ports are picked free by the test; every process started here is
stopped in teardown.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AE_TITLE = "SIFLUORO"
START_TIMEOUT_S = 120.0  # only stops a hang: the import of numba and OpenCV is slow under load



def dcmtk_tool(name: str) -> str | None:
    """The DCMTK program ``name`` on PATH, passing over the Python environment's own bin
    folder: pynetdicom installs Python apps of the same names there (storescu, echoscu, ...),
    which an activated virtualenv puts first."""
    env_bin = Path(sys.prefix, "bin").resolve()
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != env_bin)
    return shutil.which(name, path=path)


STORESCU, ECHOSCU = dcmtk_tool("storescu"), dcmtk_tool("echoscu")
needs_dcmtk = pytest.mark.skipif(STORESCU is None or ECHOSCU is None,
                                 reason="DCMTK (storescu, echoscu) is not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReceiverProcess:
    """``python -m sifluoro.acquire.receiver`` as a child process."""

    def __init__(self, spool: Path, log_path: Path, *extra: str, port: int | None = None):
        self.spool = spool
        self.log_path = log_path
        # port 0: the receiver binds a free port and says which (a port picked here and bound
        # seconds later by a slow-starting child could be taken meanwhile)
        self.args = [sys.executable, "-m", "sifluoro.acquire.receiver", "-v", "--host", "127.0.0.1",
                     "--port", str(port or 0), "--ae-title", AE_TITLE, "--spool", str(spool),
                     *extra]
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=subprocess.PIPE, stderr=self._log,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.stdout = b""
        listening = self._read_until(rb"listening on 127\.0\.0\.1:(\d+) as", START_TIMEOUT_S)
        if listening is None:
            self.kill()
            raise RuntimeError(f"receiver did not start: {self.stdout!r}\n{self.log()}")
        self.port = int(listening.group(1))

    def _read_until(self, pattern: bytes, timeout_s: float) -> re.Match | None:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while not re.search(pattern, self.stdout) and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                self.stdout += chunk
        return re.search(pattern, self.stdout)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (drain) and wait for the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        finally:
            self._close()
        self.stdout += self.proc.stdout.read() or b""
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> None:
        if not self._log.closed:
            self._log.close()


@pytest.fixture
def start_receiver(tmp_path):
    """Start receivers (``start_receiver(spool, *args, port=None)``); all are killed at teardown."""
    started: list[ReceiverProcess] = []

    def start(spool: Path | None = None, *extra: str, port: int | None = None) -> ReceiverProcess:
        spool = spool or tmp_path / "spool"
        proc = ReceiverProcess(spool, tmp_path / f"receiver{len(started)}.log", *extra, port=port)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def storescu(port: int, files, *options: str, aet: str = "STORESCU",
             timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([STORESCU, "-aet", aet, "-aec", AE_TITLE, *options, "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True,
                          timeout=timeout_s)


def echoscu(port: int, *options: str, aet: str = "ECHOSCU") -> subprocess.CompletedProcess:
    return subprocess.run([ECHOSCU, "-aet", aet, "-aec", AE_TITLE, *options, "127.0.0.1",
                           str(port)], capture_output=True, text=True, timeout=60)


# Files --------------------------------------------------------------------------------------------
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file: everything after the file meta group.

    Senders and receivers each write their own file meta (implementation UID, source AE
    title), so the dataset part is what travels over the network and must be identical.
    """
    data = Path(path).read_bytes()
    assert data[128:132] == b"DICM", f"{path} is not a DICOM Part 10 file"
    pos = 132
    while pos + 8 <= len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12 + length
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8 + length
    return data[pos:]


def spooled(spool: Path, study_uid: str, sop_uid: str) -> Path:
    return spool / study_uid / f"{sop_uid}.dcm"


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout_s: float = 60.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {predicate}")


def summary_frames(path: Path) -> int:
    try:
        return json.loads(path.read_text())["frames"]
    except (FileNotFoundError, ValueError, KeyError):
        return -1


def file_uids(path: Path) -> tuple[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


def without_latency(obj):
    """Drop timing-dependent values (latencies, 'degraded') for restart comparisons."""
    if isinstance(obj, dict):
        return {k: without_latency(v) for k, v in obj.items()
                if k not in ("latency_ms", "receive_latency_ms", "degraded", "degraded_frames",
                             "skipped_stages")}
    if isinstance(obj, list):
        return [without_latency(v) for v in obj]
    return obj
