"""Simulated frames for the register/ tests (one 512 study, rendered once per session)."""
from __future__ import annotations

import numpy as np
import pytest

from sifluoro.model import Device, Frame, Run, Shutter, Technique
from sifluoro.sim import simulate_case
from sifluoro.sim.export import technique_of


def make_run(pixels: np.ndarray, *, bits_stored: int = 12, photometric: str = "MONOCHROME2",
             spacing_mm: float = 0.58, angles_deg=(20.0, 0.0), shutter: Shutter | None = None,
             technique: Technique | None = None, index: int = 0,
             pixel_intensity_sign: int | None = None) -> Run:
    """A one-frame-geometry run around ``pixels`` (frames, rows, cols) held in memory."""
    n, rows, cols = pixels.shape
    if technique is None:
        technique = Technique(imager_pixel_spacing_xy_mm=(spacing_mm, spacing_mm),
                              primary_angle_deg=angles_deg[0], secondary_angle_deg=angles_deg[1],
                              shutter=shutter)
    return Run(path=f"mem-{index}", sop_instance_uid=f"1.2.3.{index}", sop_class_uid="",
               series_instance_uid="", study_instance_uid="1.2.3", modality="XA",
               transfer_syntax_uid="", rows=rows, columns=cols, bits_stored=bits_stored,
               photometric=photometric, pixel_intensity_sign=pixel_intensity_sign,
               start_s=float(index), frame_offsets_s=(0.0,) * n,
               frame_intervals_ms=(33.3,) * n, technique=technique, device=Device(), index=index,
               read_frames=lambda run: iter(pixels))


def frames_of(run: Run, first_index: int = 0) -> list[Frame]:
    return [Frame(pixels=p, index=first_index + i, frame_number=i + 1, t_s=run.start_s, run=run)
            for i, p in enumerate(run.iter_pixels())]


@pytest.fixture(scope="session")
def sim_study():
    """Seed 7, case 2 (512², left side): scout, doubled working runs, an opened view change."""
    return simulate_case(7, 2)


@pytest.fixture(scope="session")
def sim_runs(sim_study):
    """(Run, [Frame], [FrameTruth]) per simulated run, in acquisition order."""
    out, index = [], 0
    for r, sim_run in enumerate(sim_study.runs):
        run = make_run(sim_run.frames, bits_stored=sim_run.bits_stored,
                       photometric=sim_run.photometric,
                       pixel_intensity_sign=sim_run.pixel_intensity_sign,
                       technique=technique_of(sim_run, sim_study.size, reported=None), index=r)
        frames = frames_of(run, index)
        index += len(frames)
        out.append((run, frames, list(sim_run.truth)))
    return out
