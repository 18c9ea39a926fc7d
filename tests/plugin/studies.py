"""A small study in which the needle stage sees a tip: a needle advancing over a smooth
background, 30 frames/s, written as XA runs (one multi-frame instance per run)."""
from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
from pydicom.uid import generate_uid

from sifluoro.io.dicom_writer import StudyIdentity, build_run_dataset, save_dataset
from sifluoro.model import Shutter
from tests.dicom_fixtures import DEVICE, PATIENT_ID, PATIENT_NAME, STUDY_START, technique

FPS = 30.0
SPACING_MM = 0.5
BITS = 12


def _frames(size: int, n: int, first: float, last: float, seed: int) -> np.ndarray:
    """Needle from the bottom edge toward the upper middle; its tip goes from ``first`` to
    ``last`` of the way (drawn 4x supersampled, area-averaged and blurred like a detector)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size].astype(np.float32)
    background = 0.45 + 0.1 * np.sin(x / (size / 6)) * np.cos(y / (size / 7))
    background = cv2.GaussianBlur(background.astype(np.float32), (0, 0), 1.5)
    base = np.array([0.25 * size, size - 1.0])
    end = np.array([0.55 * size, 0.45 * size])
    ss = 4
    out = np.empty((n, size, size), np.uint16)
    for i in range(n):
        tip = base + (first + (last - first) * i / max(n - 1, 1)) * (end - base)
        fine = np.zeros((size * ss, size * ss), np.float32)
        cv2.line(fine, tuple(int(v * ss) for v in base), tuple(int(v * ss) for v in tip), 1.0,
                 int(1.8 * ss))
        tube = cv2.resize(fine, (size, size), interpolation=cv2.INTER_AREA)
        img = (background + 0.05 * cv2.GaussianBlur(tube, (0, 0), 0.7)
               + rng.normal(0, 0.012, background.shape).astype(np.float32))
        out[i] = np.rint(np.clip(img, 0, 1) * ((1 << BITS) - 1))
    return out


def needle_study(folder: Path, *, frames_per_run: tuple[int, ...] = (120,), size: int = 256,
                 study_uid: str | None = None, last_run_changes: dict | None = None) -> Path:
    """Write the study under ``folder`` (one file per run, runs 10 s apart); return ``folder``.

    ``last_run_changes`` changes the last run's technique (e.g. a reported air kerma that
    crosses an alert level)."""
    folder.mkdir(parents=True, exist_ok=True)
    identity = StudyIdentity(study_uid or generate_uid(), STUDY_START, patient_name=PATIENT_NAME,
                             patient_id=PATIENT_ID)
    series_uid = generate_uid()
    tech = technique(imager_pixel_spacing_xy_mm=(SPACING_MM, SPACING_MM), frame_time_ms=1000 / FPS,
                     pulse_width_ms=5.0, shutter=Shutter(rect_xyxy=(0, 0, size - 1, size - 1)))
    runs = len(frames_per_run)
    for r, n in enumerate(frames_per_run):
        first, last = 0.4 + 0.5 * r / runs, 0.4 + 0.5 * (r + 1) / runs
        run_tech = replace(tech, **last_run_changes) if last_run_changes and r == runs - 1 else tech
        ds = build_run_dataset(
            _frames(size, n, first, last, seed=r), storage="xa", study=identity,
            series_instance_uid=series_uid, sop_instance_uid=generate_uid(),
            acquisition_datetime=STUDY_START + timedelta(seconds=10.0 * r), technique=run_tech,
            device=DEVICE, bits_stored=BITS, instance_number=r + 1, frame_time_ms=1000 / FPS,
            laterality="L")
        save_dataset(ds, folder / f"run{r + 1:02d}.dcm")
    return folder
