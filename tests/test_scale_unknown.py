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


@pytest.mark.parametrize("overlapped", [False, True])
@pytest.mark.parametrize("drop", ["PixelIntensityRelationshipSign", "ImagerPixelSpacing"])
def test_a_run_read_on_an_assumption_is_said_once_and_counted(tmp_path, caplog, drop, overlapped):
    """A bone-dark device that writes neither the sign nor LIN/LOG is read inverted (the joint
    2.9 mm off at confidence 1.0, no needle, review s11 A#3); a run without a pixel spacing
    has no mm. Nothing said so: a warning per run naming the file, and summary.assumed_runs."""
    import logging

    import pydicom

    from sifluoro.replay import replay
    from tests.dicom_fixtures import RunSpec, write_study

    paths = write_study(tmp_path / "in", [RunSpec(0.0, n_frames=3), RunSpec(5.0, n_frames=3)])
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PixelIntensityRelationship = "DISP"
        ds.PixelIntensityRelationshipSign = -1  # bone bright as stored, as the fixture's are
        if drop in ds:
            delattr(ds, drop)
        ds.save_as(path)
    with caplog.at_level(logging.WARNING):
        # overlapped: replay's path with no deadline and two threads (review s11 B#5)
        settings = Settings(latency_budget_ms=math.inf, stage_threads=2) if overlapped else Settings()
        names = ["register", "contrast"] if overlapped else ["register"]
        summary = replay([tmp_path / "in"], events_path=tmp_path / "e.jsonl",
                         summary_path=tmp_path / "s.json", settings=settings,
                         stages=make_stages(names, settings)).summary
    key = "polarity" if drop == "PixelIntensityRelationshipSign" else "pixel_spacing"
    assert summary["assumed_runs"] == {"polarity": 0, "pixel_spacing": 0, key: 2}
    said = [r.getMessage() for r in caplog.records if drop.split("Relationship")[0] in r.getMessage()
            or "PixelSpacing" in r.getMessage()]
    assert sorted(m.split(":")[0] for m in said) == sorted(str(p) for p in paths)
    assert replay([tmp_path / "in"], events_path=tmp_path / "e.jsonl", summary_path=tmp_path / "s.json",
                  stages=[]).summary["assumed_runs"][key] == 0  # no image stage: nothing assumed


@pytest.mark.parametrize("threads", [1, 2])
def test_pixels_that_are_not_square_give_no_mm_and_are_said(caplog, threads):
    """Review s25 r1: with ImagerPixelSpacing 0.4 by 0.3 mm the stages took one axis's spacing
    for both: tip to target 4.28 mm for 5.21, with no word. The stages work on square pixels:
    such a run is taken as without a scale (its mm null, positions in pixels hold), said once
    and counted; a spacing within 1 % is square."""
    import logging

    from sifluoro.sim import simulate_case
    from sifluoro.track.needle_sim import sim_frames

    frames = [f for f, _ in sim_frames(simulate_case(2026, 3, quick=True))]
    settings = Settings(latency_budget_ms=math.inf, stage_threads=threads)
    for stretch, square in ((1.004, True), (1.3, False)):
        runs = {}

        def stretched(f):
            sx, sy = f.run.pixel_spacing_xy_mm
            return replace(f, run=runs.setdefault(f.run.sop_instance_uid, replace(
                f.run, technique=replace(f.run.technique,
                                         imager_pixel_spacing_xy_mm=(sx, sy * stretch)))))

        caplog.clear()
        pipeline = Pipeline(make_stages(("register", "needle", "contrast"), settings), settings)
        state = pipeline.start_study("1.2.3")
        with caplog.at_level(logging.WARNING):
            events = [e for _, e in pipeline.process_frames([stretched(f) for f in frames], state)]
        values = [v for e in events for v in _mm_values(e)]
        said = [r for r in caplog.records if "pixels not square" in r.getMessage()]
        if square:
            assert any(v is not None for v in values) and not said
            assert state.assumed_runs["pixel_spacing"] == 0
        else:
            assert values and all(v is None for v in values)
            assert all(e["scale_unknown"] for e in events)
            assert any(e["needle"] for e in events)  # still found, in pixels
            assert len(said) == len(runs) == state.assumed_runs["pixel_spacing"]
        assert events[-1]["dose"]["air_kerma_mgy"] > 0
