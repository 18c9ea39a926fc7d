"""Dose values in events and summaries are written to 9 significant digits: float noise
(``"dap_gycm2": 0.17423200000000003``, user review s18 F15) is not written, and the rules that
compare the cumulative doses and the totals (``sifluoro.contract``) still hold."""
from __future__ import annotations

import json

import pytest

from sifluoro.contract import dose_value, replay_output_violations


def _dose_numbers(obj):
    """Every number under a key naming a dose (mGy, Gy·cm²) in ``obj``."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key.endswith(("_mgy", "_gycm2")) and isinstance(value, float):
                yield key, value
            else:
                yield from _dose_numbers(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _dose_numbers(value)


def test_dose_value_rounds_to_nine_digits_and_keeps_the_order():
    assert dose_value(0.17423200000000003) == 0.174232
    assert repr(dose_value(0.007595149999999999)) == "0.00759515"
    assert dose_value(1234.56789012345) == 1234.56789
    values = sorted([0.1 + k * 1e-12 for k in range(50)] + [0.30000000000000004, 0.3, 0.0])
    rounded = [dose_value(v) for v in values]
    assert rounded == sorted(rounded)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    from sifluoro.config import Settings
    from sifluoro.replay import replay
    from sifluoro.sim import simulate_case
    from sifluoro.sim.export import export_study
    from sifluoro.stages import make_stages

    out = tmp_path_factory.mktemp("digits")
    exported = export_study(simulate_case(2026, 10, quick=True), out / "study")
    settings = Settings()
    replay([exported.dicom_dir], events_path=out / "events.jsonl",
           summary_path=out / "summary.json", settings=settings, stages=make_stages((), settings))
    return out


def test_events_and_summary_carry_no_float_noise(replayed):
    events = [json.loads(line) for line in (replayed / "events.jsonl").read_text().splitlines()]
    summary = json.loads((replayed / "summary.json").read_text())
    numbers = [v for obj in (*events, summary) for _, v in _dose_numbers(obj)]
    assert len(numbers) > 2 * len(events) and any(v > 0 for v in numbers)
    noisy = [v for v in numbers if v != dose_value(v)]
    assert not noisy, noisy[:5]
    assert not replay_output_violations(replayed / "events.jsonl", replayed / "summary.json")
