"""docs/contract.md, the output contract cited by the code, the README and ``--help``, ships
with the project and names what ``sifluoro.contract`` checks (user review s18 F18: they cited
sections of "DESIGN", a document users do not have)."""
from __future__ import annotations

import re
from pathlib import Path

from sifluoro.contract import CONTRAST_STATES, DOSE_KEYS, SUMMARY_KEYS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "contract.md"


def _project_texts():
    for folder in ("sifluoro", "docs", "benchmarks", "tests"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".md") and path.is_file():
                yield path
    yield ROOT / "README.md"


def test_citations_name_the_shipped_contract_and_its_sections():
    sections = set(re.findall(r"^## (\d+)\. ", DOC.read_text(encoding="utf-8"), re.M))
    assert sections >= {"1", "2", "3", "4"}
    cited = 0
    for path in _project_texts():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"DESIGN\s*§", text), f"{path} cites DESIGN, which does not ship"
        for number in re.findall(r"contract\.md\)? §(\d+)", text):
            assert number in sections, f"{path} cites docs/contract.md §{number}"
            cited += 1
    assert cited >= 10


def test_the_contract_names_every_field_the_checker_requires():
    text = DOC.read_text(encoding="utf-8")
    event_keys = ("sop_instance_uid", "frame", "index", "t_s", "latency_ms", "needle", "tip_xy",
                  "confidence", "joint", "polyline_xy", "target", "xy", "tip_to_target_mm",
                  "tip_to_target_mm_iso", "contrast", "state", "dose")
    dose_summary_keys = ("source", "device", "manufacturer", "model", "events", "planes",
                         "fluoro_dap_gycm2", "fluoro_air_kerma_mgy", "acquisition_dap_gycm2",
                         "acquisition_air_kerma_mgy")
    for key in (*event_keys, *DOSE_KEYS, *SUMMARY_KEYS, *CONTRAST_STATES, *dose_summary_keys,
                "file", "reason", "p50", "p95", "p99", "max"):
        assert f'"{key}"' in text or f"`{key}`" in text, key


def test_the_contract_names_every_field_of_the_live_states():
    """User review s20 I7: the OpenIGTLink State and /state.json had no documented schema."""
    from sifluoro.plugin.igtl import study_end_state
    from sifluoro.plugin.view import ViewState

    section = DOC.read_text(encoding="utf-8").split("## 5. ", 1)[1]
    view = ViewState()
    view.finish({"stages": ["register"]})
    state = view.snapshot()
    names = set(state) | set(state["dose"]) | set(state["summary"])
    names |= set(study_end_state({"stages": []}))
    igtl_frame = {"tip_visible", "tip_confidence", "end_on", "target_visible", "scale_unknown",
                  "study_alerts", "dose_source", "runs_dose_unknown", "degraded_steps",
                  "no_picture"}
    for name in sorted(names | igtl_frame):
        if not name.startswith("study_") or name in ("study_alerts", "study_instance_uid",
                                                     "study_dose"):
            assert f'"{name}"' in section, name
