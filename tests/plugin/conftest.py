"""Real peers for the plug-in tests: an Orthanc PACS started here, and the sifluoro commands as
child processes. Only 127.0.0.1 is used, ports are free ones, and everything started is stopped
in teardown."""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ORTHANC_AET = "ORTHANC"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """``Orthanc CONFIG.json`` with its own storage, free HTTP and DICOM ports, no auth on
    localhost. ``stop()`` and ``start()`` again keep the storage (a PACS restart)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "sifluoro-test", "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"), "Plugins": [], "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": ORTHANC_AET, "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True, "UnknownSopClassAccepted": False,
            "ConcurrentJobs": 1, "HttpThreadsCount": 4, "StorageCompression": False,
            "SaveJobs": False, "DicomScpTimeout": 10}))
        self.proc: subprocess.Popen | None = None
        self._log = folder / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout_s: float = 120.0) -> None:
        log = open(self._log, "ab")
        self.proc = subprocess.Popen(["Orthanc", str(self.config)], stdout=log, stderr=log,
                                     cwd=self.folder)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self._log.read_text(errors='replace')[-3000:]}")
            try:
                self.get("/system")
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not start: {self._log.read_text(errors='replace')[-3000:]}")

    def stop(self, *, graceful: bool = True) -> None:
        """SIGTERM and wait (about 3 s: Orthanc winds its servers down), or SIGKILL at once."""
        if self.proc is not None and self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            else:
                self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture
def orthanc(tmp_path):
    if shutil.which("Orthanc") is None:
        pytest.fail("Orthanc not found: install the Debian package `orthanc` (apt-get install -y "
                    "orthanc); the DICOM-out tests must run against a real PACS", pytrace=False)
    server = Orthanc(tmp_path / "orthanc-home")
    yield server
    server.stop(graceful=False)  # its storage is thrown away with tmp_path


class Command:
    """``python -m sifluoro ARGS`` as a child process; ``wait_for(pattern)`` reads its stdout."""

    def __init__(self, *args: str, log_path: Path):
        self._log = open(log_path, "ab")
        self.log_path = log_path
        self.proc = subprocess.Popen([sys.executable, "-m", "sifluoro", *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=self._log,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.stdout = ""

    # the timeouts only stop a hang: a loaded CI machine took over 60 s for an export
    def wait_for(self, pattern: str, timeout_s: float = 300.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            found = re.search(pattern, self.stdout)
            if found:
                return found
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.stdout += chunk.decode("utf-8", "replace")
        found = re.search(pattern, self.stdout)
        if found:
            return found
        raise AssertionError(f"{pattern!r} not seen; stdout:\n{self.stdout}\nstderr:\n{self.stderr()}")

    def stderr(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout_s: float = 300.0) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self.stdout += self.proc.stdout.read().decode("utf-8", "replace")
        return code

    def terminate(self, timeout_s: float = 120.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self._log.close()


@pytest.fixture
def sifluoro_command(tmp_path):
    """Start ``sifluoro`` commands (``sifluoro_command(*args)``); all are killed at teardown."""
    started: list[Command] = []

    def start(*args: str) -> Command:
        command = Command(*map(str, args), log_path=tmp_path / f"command{len(started)}.log")
        started.append(command)
        return command

    yield start
    for command in started:
        command.kill()
