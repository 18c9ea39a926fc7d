"""A frame without a pixel spacing: the image stages run at a scale they assume, so nothing
in mm comes out of them (needle length 40.9 "mm" for 60.8, opacified area 335 "mm²" for 738)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest

from sifluoro.config import Settings
from sifluoro.pipeline import Pipeline
from sifluoro.stages import make_stages


def _mm_values(event: dict) -> list:
    out = []
    for key, value in event.items():
        if key.endswith(("_mm", "_mm2")):
            out.append(value)
        elif isinstance(value, dict):
            out += _mm_values(value)
    return out


@pytest.mark.parametrize("threads", [1, 2])
def test_no_mm_fields_without_a_pixel_spacing(threads):
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    frames = [f for f, _ in sim_frames(simulate_case(2026, 3, quick=True))]
    settings = Settings(latency_budget_ms=math.inf, stage_threads=threads)
    runs = {}

    def unscaled(f):
        run = runs.setdefault(f.run.sop_instance_uid, replace(
            f.run, technique=replace(f.run.technique, imager_pixel_spacing_xy_mm=None)))
        return replace(f, run=run)

    for scaled in (True, False):
        pipeline = Pipeline(make_stages(("register", "needle", "contrast"), settings), settings)
        state = pipeline.start_study("1.2.3")
        events = [e for _, e in pipeline.process_frames(
            frames if scaled else [unscaled(f) for f in frames], state)]
        values = [v for e in events for v in _mm_values(e)]
        if scaled:
            assert any(v is not None for v in values)  # the check can fail
            assert not any(e.get("scale_unknown") for e in events)
        else:
            assert values and all(v is None for v in values)
            assert all(e["scale_unknown"] for e in events)
            assert any(e["needle"] for e in events)  # still found, in pixels
