"""Receiver throughput and latency under load: 8 concurrent DCMTK senders x 100 frames each.

Each sender is one ``storescu`` process on its own association, sending its own study of 10
instances of 10 frames (1024² uint16, uncompressed; 256² with ``quick``). The receiver runs in
this process (as the plug-in would host it) so that per-instance latencies can be read:
instance stored and answered → its last frame's event written.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from sifluoro.acquire.receiver import Receiver, ReceiverSettings
from sifluoro.io.dicom_writer import StudyIdentity, build_run_dataset, save_dataset
from sifluoro.model import Device, Technique
from tests.receiver.helpers import STORESCU

AE_TITLE = "SIFLUORO"
TECHNIQUE = Technique(kvp=80, tube_current_ma=10, pulse_width_ms=8, frame_time_ms=66.6667,
                      sid_mm=1100, source_to_isocenter_mm=785, imager_pixel_spacing_xy_mm=(0.3, 0.3),
                      filter_cu_mm=0.1, radiation_setting="SC")


def write_load(folder: Path, *, senders: int, instances: int, frames: int, size: int,
               seed: int = 0) -> list[list[Path]]:
    """One study per sender: ``instances`` runs of ``frames`` frames each; files per sender."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 4096, (frames, size, size), dtype=np.uint16)
    out = []
    for s in range(senders):
        study = StudyIdentity(generate_uid(), datetime(2026, 5, 6, 8, 0) + timedelta(hours=s))
        series = generate_uid()
        sub = folder / f"sender{s}"
        sub.mkdir(parents=True)
        paths = []
        for i in range(instances):
            pixels = base.copy()
            pixels[:, 0, 0] = np.arange(frames) + 100 * i  # every frame differs
            ds = build_run_dataset(pixels, storage="xa", study=study, series_instance_uid=series,
                                   sop_instance_uid=generate_uid(),
                                   acquisition_datetime=study.study_datetime + timedelta(seconds=5 * i),
                                   technique=TECHNIQUE, device=Device("Bench", "B1"), bits_stored=12,
                                   frame_time_ms=66.6667, instance_number=i + 1)
            paths.append(save_dataset(ds, sub / f"run{i:03d}.dcm"))
        out.append(paths)
    return out


def send_concurrently(port: int, file_sets: list[list[Path]], *, timeout_s: float = 600.0,
                      extra: tuple[str, ...] = ()) -> list[subprocess.CompletedProcess]:
    """One ``storescu`` process (one association) per file set, all at once."""
    procs = [subprocess.Popen([STORESCU, "-aet", f"CARM{k}", "-aec", AE_TITLE, "-xe", *extra,
                               "127.0.0.1", str(port), *map(str, paths)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, paths in enumerate(file_sets)]
    results = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout_s)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(quick: bool = False) -> dict:
    """Run the load once and report throughput and latencies.

    Returns
    -------
    dict
        ``instances_per_s`` and ``mb_per_s`` (MiB/s, first byte sent → last instance answered),
        ``receive_to_event_ms`` p50/p99/max (instance stored → its last event written),
        ``all_events_s`` (first byte sent → last event written) and the load's shape.
    """
    senders, instances, frames, size = 8, 10, 10, (256 if quick else 1024)
    if STORESCU is None:
        raise RuntimeError("storescu (DCMTK) is needed: apt-get install dcmtk")
    with tempfile.TemporaryDirectory(prefix="bench_receiver_") as tmp:
        tmp = Path(tmp)
        file_sets = write_load(tmp / "load", senders=senders, instances=instances, frames=frames,
                               size=size)
        nbytes = sum(p.stat().st_size for paths in file_sets for p in paths)
        receiver = Receiver(ReceiverSettings(port=_free_port(), ae_title=AE_TITLE,
                                             spool=tmp / "spool", host="127.0.0.1",
                                             max_associations=senders + 2))
        receiver.start()
        try:
            time.sleep(2.0)  # let the warm-up (dose model import) finish before timing
            t0 = time.perf_counter()
            results = send_concurrently(receiver.port, file_sets)
            t_sent = time.perf_counter() - t0
            failed = [r.stdout[-500:] for r in results if r.returncode != 0]
            if failed:
                raise RuntimeError(f"{len(failed)} senders failed: {failed[0]}")
            receiver.live.wait_idle(timeout_s=600)
            t_events = time.perf_counter() - t0
        finally:
            receiver.stop()
        latencies = [v for values in receiver.live.receive_latencies_ms().values() for v in values]
        frames_done = sum(json.loads(p.read_text())["frames"]
                          for p in (tmp / "spool").glob("*/summary.json"))
    n_instances = senders * instances
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (0.0, 0.0)
    return {
        "senders": senders, "instances": n_instances, "frames": frames_done,
        "frame_size": size, "megabytes": round(nbytes / 2**20, 1),
        "send_s": round(t_sent, 3), "all_events_s": round(t_events, 3),
        "instances_per_s": round(n_instances / t_sent, 2),
        "mb_per_s": round(nbytes / 2**20 / t_sent, 1),
        "receive_to_event_ms": {"p50": round(float(p50), 2), "p99": round(float(p99), 2),
                                "max": round(float(max(latencies, default=0.0)), 2)},
        "stored": receiver.counts["stored"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256² frames instead of 1024²")
    print(json.dumps(run(quick=parser.parse_args().quick), indent=2))
