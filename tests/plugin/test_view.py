"""The live web view in headless Chromium: it updates while the study is replayed, and at the
end shows the overlay frame and counters equal to the replay's summary.json."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request

import cv2
import numpy as np
import pytest

from sifluoro.config import Settings
from sifluoro.replay import replay
from tests.dicom_fixtures import PATIENT_ID, PATIENT_NAME
from tests.plugin.studies import FPS, needle_study

WINDOW = (800, 420)
DIGITS = {"fluoro_time_s": 1, "air_kerma_mgy": 2, "dap_gycm2": 3}


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium not found: install the Debian package `chromium` "
                "(apt-get install -y chromium); the live view test must run", pytrace=False)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_live_page_updates_and_ends_with_the_summary_counters(tmp_path, sifluoro_command):
    # the last run reports 3500 mGy: the 3 Gy air kerma alert fires on its first frame
    study = needle_study(tmp_path / "study", frames_per_run=(30, 30),
                         last_run_changes={"reported_air_kerma_mgy": 3500.0})
    view = sifluoro_command("view", study, "--port", "0", "--fps", FPS, "--budget-ms", "1e9")
    url = view.wait_for(r"listening on (http://127\.0\.0\.1:\d+/)").group(1)
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = json.loads(_get(url + "state.json"))
        if state["index"] is not None:
            seen.append(state["index"])
        if state["ended"]:
            break
        time.sleep(0.1)
    assert state["ended"] and len(set(seen)) >= 5 and seen == sorted(seen)  # it moved, live
    assert state["contrast"] == "not_assessed"  # the view runs register and needle only
    part = urllib.request.urlopen(url + "stream.mjpg", timeout=10)
    head = part.read(200)
    part.close()
    assert head.startswith(b"--sifluoro-frame\r\nContent-Type: image/jpeg") and b"\xff\xd8" in head

    result = replay([study], events_path=tmp_path / "events.jsonl",
                    summary_path=tmp_path / "summary.json", settings=Settings(latency_budget_ms=1e9))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert result.exit_code == 0 and summary["frames"] == 60 and state["index"] == 59
    assert [a["kind"] for a in summary["alerts"]] == ["air_kerma"]

    browser = _chromium()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
              "--virtual-time-budget=3000"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout
    for key, digits in DIGITS.items():
        cell = re.search(rf'id="{key}" data-value="([^"]*)">([^<]*)<', dom)
        assert cell, dom
        assert float(cell.group(1)) == summary[key]
        assert cell.group(2) == f"{summary[key]:.{digits}f}"
    assert 'data-ended="yes"' in dom and 'data-seq="60"' in dom  # the last frame was shown
    assert 'id="contrast">not-assessed<' in dom
    # how the dose was had, said beside it (user review s20 R3)
    sources = {"reported": "reported by the device", "estimated": "estimated",
               "mixed": "partly estimated"}
    assert state["dose"]["dose_source"] in sources
    assert f'id="dose_source">{sources[state["dose"]["dose_source"]]}<' in dom
    assert summary["alerts"][0]["message"] in dom
    assert PATIENT_NAME not in dom and PATIENT_ID not in dom

    shot = tmp_path / "view.png"
    subprocess.run([*common, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url],
                   capture_output=True, timeout=120, check=True)
    png = cv2.imread(str(shot))
    assert png.shape[:2] == (WINDOW[1], WINDOW[0])
    frame = cv2.imdecode(np.frombuffer(_get(url + "frame.jpg"), np.uint8), cv2.IMREAD_COLOR)
    shown = png[:frame.shape[0], :frame.shape[1]].astype(np.int16)
    assert np.abs(shown - frame).mean() < 3.0  # the overlay frame, top left, as served
    panel = png[:200, frame.shape[1] + 10:]
    assert (panel > 200).mean() > 0.005  # the counters are written there
    assert view.terminate() == 0


def test_before_the_first_frame_nothing_is_assessed():
    """User review s20 I4: /state.json said contrast "none" during the warm-up."""
    from sifluoro.plugin.view import ViewState

    state = ViewState().snapshot()
    assert state["contrast"] == "not_assessed" and state["dose"]["dose_source"] == "none"
    # every key of contract §5 from the start (review s22 F11: no "analysis" before a frame)
    assert set(state) >= {"seq", "index", "t_s", "dose", "contrast", "tip_to_target_mm",
                          "tip_to_target_mm_iso", "analysis", "alerts", "ended", "summary"}
    assert state["analysis"]["degraded"] is False
    assert state["dose"]["study_air_kerma_mgy"] == 0.0


def test_the_ended_page_shows_the_studys_whole_dose_and_every_alert():
    """Review s14 H1: the page ended on the frames' dose; the frames a damaged file lost (and
    the SRDL alert they caused) never showed."""
    from sifluoro.plugin.view import ViewState

    view = ViewState()
    dose = {"air_kerma_mgy": 0.634, "dap_gycm2": 0.1, "fluoro_time_s": 3.2}
    view.update({"index": 0, "t_s": 0.0, "dose": dose, "contrast": {"state": "none"}},
                np.zeros((4, 4, 3), np.uint8))
    view.finish({"frames": 1, **dose, "study_dose": {**dose, "air_kerma_mgy": 0.687},
                 "lost_frames": {"frames": 4}, "alerts": [{"kind": "srdl", "message": "SRDL"}],
                 "contrast_state": "none", "stages": ["register"]})
    state = view.snapshot()
    # user review s19 U9: without the stages a client could not tell "none" from not assessed
    assert state["summary"]["stages"] == ["register"]
    assert state["ended"] and state["dose"]["study_air_kerma_mgy"] == 0.687
    assert state["dose"]["air_kerma_mgy"] == 0.634  # the frames' own, beside it
    assert [a["message"] for a in state["alerts"]] == ["SRDL"]
    assert state["summary"]["lost_frames"] == {"frames": 4}


def test_the_page_names_the_plane_of_the_tip_to_target_distance():
    """User review s18 F17: the page's "tip to target … mm" was at the detector, the PACS's at
    the isocentre; state.json carries both, the page says which it shows."""
    from sifluoro.plugin.view import PAGE, ViewState

    view = ViewState()
    dose = {"air_kerma_mgy": 0.1, "dap_gycm2": 0.01, "fluoro_time_s": 1.0}
    view.update({"index": 0, "t_s": 0.0, "dose": dose, "contrast": {"state": "none"},
                 "tip_to_target_mm": 30.6, "tip_to_target_mm_iso": 19.7},
                np.zeros((4, 4, 3), np.uint8))
    state = view.snapshot()
    assert state["tip_to_target_mm"] == 30.6 and state["tip_to_target_mm_iso"] == 19.7
    assert "mm at the joint" in PAGE and "mm at the detector" in PAGE


def test_streams_beyond_the_limit_are_answered_503(monkeypatch):
    """Each MJPEG stream holds a thread while its client reads, and any number was served
    (review s23): beyond MAX_STREAMS one is answered 503; the other pages are still served."""
    import http.client
    import urllib.error

    from sifluoro.plugin import view

    monkeypatch.setattr(view, "MAX_STREAMS", 2)
    server = view.ViewServer(view.ViewState(), port=0).start()
    try:
        open_streams = []
        for _ in range(2):
            conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
            conn.request("GET", "/stream.mjpg")
            assert conn.getresponse().status == 200
            open_streams.append(conn)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url + "stream.mjpg", timeout=10)
        assert refused.value.code == 503
        assert urllib.request.urlopen(server.url + "state.json", timeout=10).status == 200
    finally:
        for conn in open_streams:
            conn.close()
        server.close()
