"""Simulated studies as pipeline frames, for the needle tests and benchmarks (no DICOM)."""
from __future__ import annotations

from typing import Iterator

from sifluoro.model import Device, Frame, Run
from sifluoro.sim.export import technique_of
from sifluoro.sim.records import FrameTruth, SimStudy


def sim_frames(study: SimStudy) -> Iterator[tuple[Frame, FrameTruth]]:
    """Frames of a simulated study in acquisition order, each with its ground truth."""
    index = 0
    for r, sim_run in enumerate(study.runs):
        n = len(sim_run.frames)
        dt_s = sim_run.technique.frame_time_ms / 1000.0
        run = Run(path=f"sim-{study.seed}-{study.case}-{r}",
                  sop_instance_uid=f"1.2.826.0.1.3680043.10.1.{study.seed}.{study.case}.{r}",
                  sop_class_uid="", series_instance_uid="", study_instance_uid="",
                  modality="XA", transfer_syntax_uid="", rows=study.size, columns=study.size,
                  bits_stored=sim_run.bits_stored, photometric=sim_run.photometric,
                  pixel_intensity_sign=sim_run.pixel_intensity_sign,
                  start_s=sim_run.start_s, frame_offsets_s=tuple(i * dt_s for i in range(n)),
                  frame_intervals_ms=(sim_run.technique.frame_time_ms,) * n,
                  technique=technique_of(sim_run, study.size, reported=None), device=Device(),
                  index=r)
        for i in range(n):
            yield (Frame(pixels=sim_run.frames[i], index=index, frame_number=i + 1,
                         t_s=sim_run.start_s + i * dt_s, run=run), sim_run.truth[i])
            index += 1
