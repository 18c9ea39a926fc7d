"""benchmarks.needle_trace's frame verdicts."""
from __future__ import annotations

from benchmarks.needle_trace import _verdict


def _truth() -> dict:
    # a straight shaft along +x ending at (100, 50), 0.5 mm pixels
    return {"tip_xy": [100.0, 50.0], "needle_visible": True, "pixel_spacing_mm": 0.5,
            "shaft_xy": [[float(x), 50.0] for x in range(20, 101, 2)]}


def test_a_tip_past_the_true_tip_on_its_line_is_far_beyond():
    """A tip 5 mm past the true tip on the needle's line is FAR_BEYOND (it read FAR: its
    distance from the shaft, to the shaft's end, is over 1.5 mm); 5 mm short on the line is
    FAR_SHORT; 5 mm beside the line past the tip is FAR; within 3 mm ok."""
    t = _truth()

    def verdict(x, y):
        err = ((x - 100.0) ** 2 + (y - 50.0) ** 2) ** 0.5 * 0.5
        return _verdict(t, {"tip_xy": [x, y]}, err, [])

    assert verdict(110.0, 50.5) == "FAR_BEYOND"
    assert verdict(90.0, 50.5) == "FAR_SHORT"
    assert verdict(110.0, 60.0) == "FAR"
    assert verdict(104.0, 50.0) == "ok"


def test_the_trace_runs_the_register_stage_first_when_asked():
    """``--register``: the needle stage has the register target, as in the held-out runs
    (``batch-replay --stages register,needle``); by default the needle stage alone."""
    from benchmarks.needle_trace import trace_pipeline

    assert [s.name for s in trace_pipeline(register=True).stages] == ["register", "needle"]
    assert [s.name for s in trace_pipeline().stages] == ["needle"]
