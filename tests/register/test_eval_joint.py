"""benchmarks.eval_joint scores doubled-line advice per case as sifluoro.sim.evaluate does."""
from __future__ import annotations

import pytest

from benchmarks.eval_joint import case_doubled_rate
from sifluoro.sim.evaluate import Tally, score_study


def _case(doubled, lines, advised):
    """Truth and events of a case: per frame, truth doubled, a line out, the advice on it."""
    truth = {"case": 0, "frames": [], "dose": {"air_kerma_mgy": 1.0, "dap_gycm2": 0.1,
                                               "fluoro_time_s": 1.0}, "reported_dose": None}
    events = []
    for i, (d, line, adv) in enumerate(zip(doubled, lines, advised)):
        truth["frames"].append({
            "sop_instance_uid": "1.2", "frame": i + 1, "index": i, "pixel_spacing_mm": 0.5,
            "tip_xy": None, "needle_visible": False, "end_on": False,
            "joint_polyline_xy": [[10.0, 10.0], [10.0, 110.0]], "joint_doubled": d,
            "target_xy": None, "contrast_state": "none"})
        events.append({"sop_instance_uid": "1.2", "frame": i + 1, "index": i, "needle": None,
                       "joint": ({"polyline_xy": [[10.0, 10.0], [10.0, 110.0]], "doubled": adv}
                                 if line else None),
                       "target": None, "contrast": {"state": "none"}})
    return truth, events


@pytest.mark.parametrize("doubled, lines, advised, expected", [
    ([True] * 4, [False] * 4, [False] * 4, 0.0),  # never a line out: never advised, not dropped
    ([True, True, False, False], [True] * 4, [True, False, True, True], 0.5),
    ([True, True, True, False], [False, True, True, True], [False, True, True, False], 1.0),
    ([False] * 3, [True] * 3, [True] * 3, None),  # no doubled truth: not a doubled case
])
def test_case_doubled_rate_is_the_evaluators(doubled, lines, advised, expected):
    truth, events = _case(doubled, lines, advised)
    rate = case_doubled_rate(truth, events)
    tally = Tally()
    score_study(truth, events, None, tally)
    assert rate == expected
    assert tally.doubled_case_rates == ([] if expected is None else [expected])
