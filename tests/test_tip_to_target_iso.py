"""``tip_to_target_mm_iso``: the tip-to-target distance at the isocentre, as a PACS measures the
key frames (their PixelSpacing is calibrated there), beside ``tip_to_target_mm`` at the detector
(user review s18 F17: 30.6 mm on screen, ~19.7 mm on the PACS, for one distance)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest

from sifluoro.config import Settings
from sifluoro.model import Technique
from sifluoro.pipeline import Pipeline, at_isocenter_mm
from sifluoro.stages import make_stages


def test_at_isocenter_scales_by_source_to_isocenter_over_sid():
    tech = Technique(sid_mm=1135.6, source_to_isocenter_mm=732.8)
    assert at_isocenter_mm(30.6, tech) == pytest.approx(19.746, abs=1e-3)
    assert at_isocenter_mm(None, tech) is None
    assert at_isocenter_mm(30.6, Technique(sid_mm=1135.6)) is None
    assert at_isocenter_mm(30.6, Technique(source_to_isocenter_mm=732.8)) is None
    # an isocentre beyond the detector is a broken header, not a magnification below 1
    assert at_isocenter_mm(30.6, Technique(sid_mm=700.0, source_to_isocenter_mm=732.8)) is None


@pytest.mark.parametrize("threads", [1, 2])
def test_events_carry_the_distance_at_the_isocenter_when_the_geometry_is_known(threads):
    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    frames = [f for f, _ in sim_frames(simulate_case(2026, 3, quick=True))]
    settings = Settings(latency_budget_ms=math.inf, stage_threads=threads)

    def with_isocenter(sod_mm):
        runs = {}

        def change(f):
            run = runs.setdefault(f.run.sop_instance_uid, replace(
                f.run, technique=replace(f.run.technique, source_to_isocenter_mm=sod_mm)))
            return replace(f, run=run)
        return change

    for known in (True, False):
        pipeline = Pipeline(make_stages(("register", "needle"), settings), settings)
        state = pipeline.start_study("1.2.3")
        pairs = list(pipeline.process_frames(map(with_isocenter(650.0 if known else None), frames),
                                             state))
        measured = [(f, e) for f, e in pairs if e["tip_to_target_mm"] is not None]
        assert measured  # the check can fail
        assert all("tip_to_target_mm_iso" in e for _, e in pairs)
        for f, e in measured:
            tech = f.technique
            if known:
                assert e["tip_to_target_mm_iso"] == pytest.approx(
                    e["tip_to_target_mm"] * tech.source_to_isocenter_mm / tech.sid_mm, abs=1e-3)
                assert e["tip_to_target_mm_iso"] < e["tip_to_target_mm"]
            else:
                assert e["tip_to_target_mm_iso"] is None
