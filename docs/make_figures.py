"""Make the README's pictures: the demo's annotated frame and a tile of simulated frames.

    .venv/bin/python docs/make_figures.py

Each tile is one telling frame of a simulated study (published set seed 2026), labelled
``letter``; the README's table says what each shows and with which parameters.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from sifluoro.demo import run_demo
from sifluoro.stages import STAGE_NAMES
from sifluoro.overlay import display_u8
from sifluoro.sim import simulate_case

HERE = Path(__file__).resolve().parent
SEED = 2026


def _telling_frame(study, want: str):
    """(frame, run, label) of the study: its first run, the last needle frame, or peak contrast."""
    runs = study.runs
    if want == "first run":
        run, k = runs[0], len(runs[0].frames) - 1
    elif want == "needle":
        run = next(r for r in reversed(runs) if not any(t.contrast_visible for t in r.truth))
        k = len(run.frames) - 1
    else:
        run = max(runs, key=lambda r: max(t.contrast_area_mm2 for t in r.truth))
        k = int(np.argmax([t.contrast_area_mm2 + (2 * t.contrast_visible) for t in run.truth]))
    t = run.technique
    info = (f"{t.kvp:.0f} kV {t.filter_cu_mm:.1f} Cu, {t.detector.replace('_', ' ')}, "
            f"{run.photometric}, {run.bits_stored} bit")
    return run.frames[k], run, info


def sim_tile(path: Path, picks: list[tuple[int, str]], tile_px: int = 300) -> list[str]:
    tiles, legend = [], []
    for n, (case, want) in enumerate(picks):
        study = simulate_case(SEED, case, size=512)
        frame, run, info = _telling_frame(study, want)
        letter = "abcdefghij"[n]
        # shown as the device's own monitor would: by the photometric interpretation (a
        # MONOCHROME2 device storing bone dark shows bone dark, as fluoroscopy monitors do)
        img = cv2.resize(display_u8(frame, run.photometric), (tile_px, tile_px),
                         interpolation=cv2.INTER_AREA)
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        cv2.rectangle(img, (0, 0), (22, 22), (0, 0, 0), -1)
        cv2.putText(img, letter, (5, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
        t = run.truth[-1]
        legend.append(f"| {letter} | case {case}: {want}, outcome {study.outcome} | {info}"
                      f"{', joint doubled' if t.joint_doubled else ''} |")
    row = [np.hstack(tiles[i:i + 4]) for i in range(0, len(tiles), 4)]
    cv2.imwrite(str(path), np.vstack(row), [cv2.IMWRITE_JPEG_QUALITY, 88])
    return legend


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run_demo(Path(tmp), stages=STAGE_NAMES)  # every stage, to show what each draws
        shutil.copy(Path(tmp) / "annotated.png", HERE / "annotated-demo.png")
    picks = [(0, "first run"), (1, "needle"), (10, "contrast"), (0, "contrast"),
             (1, "contrast"), (4, "contrast"), (5, "needle"), (11, "first run")]
    for line in sim_tile(HERE / "sim-tile.jpg", picks):
        print(line)


if __name__ == "__main__":
    main()
