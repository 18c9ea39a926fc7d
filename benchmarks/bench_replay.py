"""Replay throughput and peak memory, pipeline skeleton and default pipeline, on a large study.

Writes a study of N frames of 1024² uint16 (runs of 20 frames), then replays it in a child
process under ``/usr/bin/time -v`` (peak RSS of the whole process) and reports frames/s.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from sifluoro.io.dicom_writer import StudyIdentity, build_run_dataset, save_dataset
from sifluoro.model import Device, Technique


def write_large_study(folder: Path, n_frames: int, size: int, frames_per_run: int = 20) -> None:
    from datetime import datetime

    study = StudyIdentity(generate_uid(), datetime(2026, 5, 6, 8, 0))
    tech = Technique(kvp=80, tube_current_ma=10, pulse_width_ms=8, frame_time_ms=66.6667,
                     sid_mm=1100, source_to_isocenter_mm=785, imager_pixel_spacing_xy_mm=(0.3, 0.3),
                     filter_cu_mm=0.1, radiation_setting="SC")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 4096, (size, size), dtype=np.uint16)
    series = generate_uid()
    for r in range(0, n_frames, frames_per_run):
        n = min(frames_per_run, n_frames - r)
        frames = np.repeat(base[None], n, axis=0)
        ds = build_run_dataset(frames, storage="xa", study=study, series_instance_uid=series,
                               sop_instance_uid=generate_uid(),
                               acquisition_datetime=study.study_datetime + timedelta(seconds=10 * r),
                               technique=tech, device=Device("Bench", "B1"), bits_stored=12,
                               frame_time_ms=66.6667, instance_number=r // frames_per_run + 1)
        save_dataset(ds, folder / f"run{r:04d}.dcm")


CHILD = """
import sys, time, json
from sifluoro.replay import replay
t = time.perf_counter()
stages = [] if sys.argv[4] == "skeleton" else None  # None: the default image stages
r = replay([sys.argv[1]], events_path=sys.argv[2], summary_path=sys.argv[3], stages=stages)
print(json.dumps({"seconds": time.perf_counter() - t, "frames": r.summary["frames"],
                  "startup_s": r.startup_s, "stream_s": r.stream_s,
                  "latency_ms": r.summary["latency_ms"]}))
"""


def run(n_frames: int = 200, size: int = 1024) -> dict:
    """The pipeline skeleton (decode, dose, events) and the default pipeline (with image stages)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "study").mkdir()
        write_large_study(tmp / "study", n_frames, size)
        return {mode: _replay_child(tmp, mode, n_frames, size) for mode in ("skeleton", "default")}


def _replay_child(tmp: Path, mode: str, n_frames: int, size: int) -> dict:
    """One replay in a fresh process under /usr/bin/time -v (peak RSS of the whole process)."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", CHILD, str(tmp / "study"),
           str(tmp / "events.jsonl"), str(tmp / "summary.json"), mode]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    child = json.loads(out.stdout.strip().splitlines()[-1])
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return {
        "study": f"{n_frames} frames of {size}x{size} uint16, uncompressed, runs of 20",
        "frames": child["frames"],
        "replay_s": round(child["seconds"], 3),
        "startup_s": round(child["startup_s"], 3),
        "frames_per_s": round(child["frames"] / child["stream_s"], 1),
        "frames_per_s_including_startup": round(child["frames"] / child["seconds"], 1),
        "process_wall_s": round(wall, 3),
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "pipeline_latency_ms": child["latency_ms"],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)
    result = run(args.frames, args.size)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
