"""A stage's own run preparation (Pipeline.prepare_run): work moved off the frames, same events."""
from __future__ import annotations

from sifluoro.config import Settings
from sifluoro.pipeline import Pipeline
from sifluoro.track.contrast import ContrastStage


def test_contrast_study_arrays_are_made_when_a_run_is_announced_with_the_same_events(frames_512):
    """The contrast stage's working arrays are made (and their pages mapped) when the study's
    first run is announced, not on its first frame; every event is the one the stage gives
    making them on the frame."""
    runs = list({f.run.sop_instance_uid: f.run for f in frames_512}.values())
    events = {}
    for prepared in (True, False):
        stage = ContrastStage()
        pipeline = Pipeline([stage], Settings())
        state = pipeline.start_study("s")
        if prepared:
            for run in runs:
                pipeline.prepare_run(run, state)
            buffers = state.stage_state["contrast"].buffers
            factor = stage.factor_for(runs[0].rows, runs[0].columns)
            assert buffers is not None and buffers.factor == factor
            assert buffers.shape == (runs[0].rows // factor, runs[0].columns // factor)
        events[prepared] = [stage.process(f, state) for f in frames_512]
        if prepared:
            assert state.stage_state["contrast"].buffers is buffers  # the frames used them
    assert events[True] == events[False]
