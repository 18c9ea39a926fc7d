"""The README's first command: simulate one study, replay it end to end, write and summarise."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import Settings
from sifluoro.contract import replay_output_violations
from sifluoro.errors import ConfigError
from sifluoro.overlay import OverlayWriter
from sifluoro.replay import format_summary, replay
from sifluoro.stages import REPLAY_STAGES, make_stages

DEMO_SEED, DEMO_CASE = 2026, 10  # an intra-articular injection on a flat panel


def write_overlays(study_dir: Path, events_path: Path, truth: dict | None, png_path: Path,
                   mp4_path: Path | None, *, key_index: int | None = None,
                   stages: tuple[str, ...] | None = None) -> int:
    """Annotated key frame (PNG) and all frames (MP4); returns the key frame's index.
    ``stages``: the image stages that ran (the others are drawn *not assessed*)."""
    events = {}
    for line in events_path.read_text().splitlines():
        e = json.loads(line)
        events[(e["sop_instance_uid"], e["frame"])] = e
    truth_by_key = {(f["sop_instance_uid"], f["frame"]): f for f in truth["frames"]} if truth else {}
    if key_index is None:
        key_index = _key_frame(truth, events)
    writer = OverlayWriter(mp4_path=mp4_path, stages=stages)
    for frame in iter_frames(read_study([study_dir]), []):
        event = events.get((frame.sop_instance_uid, frame.frame_number))
        if event is None:
            continue
        img = writer.add(frame, event,
                         truth=truth_by_key.get((frame.sop_instance_uid, frame.frame_number)))
        if event["index"] == key_index:
            cv2.imwrite(str(png_path), img)
    writer.close()
    return key_index


def _key_frame(truth: dict | None, events: dict) -> int:
    """The most telling frame: the last with contrast and a visible tip, else the last frame."""
    if truth:
        good = [f["index"] for f in truth["frames"] if f["contrast_visible"] and f["tip_xy"]
                and (f["sop_instance_uid"], f["frame"]) in events]
        if good:
            return good[-1]
        tips = [f["index"] for f in truth["frames"] if f["tip_xy"] and (f["sop_instance_uid"], f["frame"]) in events]
        if tips:
            return tips[-1]
    return max(e["index"] for e in events.values())


def _make_room(out: Path) -> None:
    """``out``, and no ``out/study`` but one an earlier demo made (replaced: two cases' files
    in one folder are two studies, and a name both use is one overwritten)."""
    from sifluoro.outfiles import check_folder_writable

    check_folder_writable(out=out)
    study = out / "study"
    if study.is_symlink():
        raise ConfigError(f"--out {out}: {study} is a link; give another --out")
    if study.exists():
        if not (study / "truth.json").is_file() or not (study / "dicom").is_dir():
            raise ConfigError(f"--out {out}: {study} holds files the demo did not make; "
                              "give another --out")
        shutil.rmtree(study)


def run_demo(out: Path, *, seed: int = DEMO_SEED, case: int = DEMO_CASE, size: int = 512,
             stages: tuple[str, ...] = REPLAY_STAGES) -> int:
    from sifluoro.sim import simulate_case
    from sifluoro.sim.export import export_study

    _make_room(out)
    print(f"simulating SI-joint injection study (seed {seed}, case {case}, {size}x{size}) ...")
    exported = export_study(simulate_case(seed, case, size=size), out / "study")
    study_dir = exported.dicom_dir
    truth = json.loads(exported.truth_path.read_text())
    print(f"  {len(exported.files)} DICOM files ({truth['storage']}, "
          f"{truth['compression'] or 'uncompressed'}) in {study_dir}/, truth in {exported.truth_path}")
    print("replaying ...")
    events, summary = out / "events.jsonl", out / "summary.json"
    rdsr = out / "dose-rdsr.dcm"
    settings = Settings()
    result = replay([study_dir], events_path=events, summary_path=summary, settings=settings,
                    rdsr_path=rdsr, stages=make_stages(stages, settings))
    print(format_summary(result.summary))
    violations = replay_output_violations(events, summary)
    print(f"contract   {'ok' if not violations else f'{len(violations)} violations'} "
          "(docs/contract.md §3)")
    png, mp4 = out / "annotated.png", out / "annotated.mp4"
    key = write_overlays(study_dir, events, truth, png, mp4,
                         stages=tuple(result.summary.get("stages", ())))
    reported = truth.get("reported_dose")
    print(f"truth      outcome {truth['outcome']}, Ka,r {truth['dose']['air_kerma_mgy']:.2f} mGy, "
          f"DAP {truth['dose']['dap_gycm2']:.3f} Gy·cm², fluoro {truth['dose']['fluoro_time_s']:.1f} s"
          + (f" (the simulated device reported Ka,r {reported['air_kerma_mgy']:.2f} mGy, DAP "
             f"{reported['dap_gycm2']:.3f} Gy·cm²: what a [reported] dose copies)"
             if reported else ""))
    print(f"outputs    {events}\n           {summary}\n           {rdsr} (X-Ray Radiation Dose SR)"
          f"\n           {png} (event index {key})\n           {mp4}")
    return result.exit_code or (1 if violations else 0)
