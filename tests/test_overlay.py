"""Overlays: what the event says is drawn where it says."""
from __future__ import annotations

import numpy as np
import pytest

from sifluoro.overlay import COLOURS, display_u8, draw_overlay


def _event(**fields):
    base = {"index": 3, "t_s": 1.5, "needle": None, "joint": None, "target": None,
            "tip_to_target_mm": None, "contrast": {"state": "none", "confidence": 0.0},
            "dose": {"air_kerma_mgy": 1.0, "dap_gycm2": 0.1, "fluoro_time_s": 2.0}}
    base.update(fields)
    return base


def _near(pixel, colour, tolerance=60):
    """Anti-aliased lines blend with the background: close enough to the colour."""
    return int(np.abs(pixel.astype(int) - np.array(colour)).max()) < tolerance


def test_needle_target_and_contrast_are_drawn_in_their_colours():
    pixels = np.full((200, 200), 2000, np.uint16)
    event = _event(needle={"tip_xy": [120.0, 150.0], "confidence": 0.9, "direction_xy": [0.0, 1.0]},
                   target={"xy": [150.0, 100.0], "radius_mm": 5.0},
                   contrast={"state": "vascular", "confidence": 0.8, "bbox_xyxy": [20, 100, 80, 180]})
    img = draw_overlay(pixels, "MONOCHROME2", event, spacing_mm=0.5)
    assert img.shape == (200, 200, 3) and img.dtype == np.uint8
    assert _near(img[150, 120], COLOURS["needle"])
    assert _near(img[130, 120], COLOURS["needle"])  # the shaft, drawn back from the tip
    assert _near(img[100, 160], COLOURS["target"])  # 5 mm = 10 px to the right of the target
    assert _near(img[140, 20], COLOURS["vascular"])
    assert not _near(img[10, 190], COLOURS["needle"])


def test_monochrome1_is_shown_with_bone_bright():
    pixels = np.zeros((100, 100), np.uint16)
    pixels[:, 50:] = 4000  # in MONOCHROME1 high values display dark
    img = draw_overlay(pixels, "MONOCHROME1", _event())
    assert img[80, 20, 0] > img[80, 80, 0]


def test_replay_writes_every_frame_as_png_and_mp4(tmp_path):
    import cv2

    from sifluoro.cli import main
    from tests.dicom_fixtures import RunSpec, write_study

    # the second run of another size (review s23 #8: OpenCV's writer dropped its frames)
    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(9.0, n_frames=2, size=96)])
    assert main(["replay", str(tmp_path / "study"), "--events", str(tmp_path / "e.jsonl"),
                 "--summary", str(tmp_path / "s.json"), "--overlay-png", str(tmp_path / "png"),
                 "--overlay-mp4", str(tmp_path / "all.mp4"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    assert cv2.imread(str(tmp_path / "png" / "00004.png")).shape == (96, 96, 3)
    video = cv2.VideoCapture(str(tmp_path / "all.mp4"))
    frames = []
    while (read := video.read())[0]:
        frames.append(read[1])
    video.release()
    assert len(frames) == 5 and {f.shape for f in frames} == {(64, 64, 3)}


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("dtype, top", [(np.uint16, 4095), (np.uint16, 65535), (np.uint8, 255)])
def test_display_window_matches_a_lookup_table(photometric, dtype, top):
    """The two saturating OpenCV passes give what a float lookup table gives (to 1 level),
    including values below and above the window."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, top + 1, (64, 80)).astype(dtype)
    pixels[:8] = rng.integers(top // 3, 2 * top // 3, (8, 80))     # most of the sample
    got = display_u8(pixels, photometric)
    lo, hi = np.percentile(pixels[::8, ::8], [1.0, 99.5])
    lo = round(lo)
    ref = np.clip((pixels.astype(np.float64) - lo) / max(hi - lo, 1.0), 0.0, 1.0) * 255.0
    if photometric == "MONOCHROME1":
        ref = 255.0 - ref
    assert got.dtype == np.uint8 and got.shape == pixels.shape
    assert np.abs(got.astype(float) - ref).max() <= 1.0
    assert got.min() in (0, 1) and got.max() in (254, 255)


@pytest.mark.parametrize("stages, contrast_line, unassessed", [
    (None, "contrast: none", None),
    (("register", "needle", "contrast"), "contrast: none", None),
    (("register",), None, "not assessed: needle, contrast"),
    (("register", "needle"), None, "not assessed: contrast"),
])
def test_stages_that_did_not_run_are_written_not_assessed(monkeypatch, stages, contrast_line,
                                                          unassessed):
    import sifluoro.overlay as overlay

    texts = []
    monkeypatch.setattr(overlay, "_text", lambda img, text, org, colour, **kw: texts.append(text))
    draw_overlay(np.full((200, 200), 2000, np.uint16), "MONOCHROME2", _event(), stages=stages)
    assert (contrast_line in texts) if contrast_line else not any(t.startswith("contrast") for t in texts)
    assert (unassessed in texts) if unassessed else not any("not assessed" in t for t in texts)


def _texts(monkeypatch, event, stages):
    import sifluoro.overlay as overlay

    texts = []
    monkeypatch.setattr(overlay, "_text", lambda img, text, org, colour, **kw: texts.append(text))
    draw_overlay(np.full((200, 200), 2000, np.uint16), "MONOCHROME2", event, stages=stages)
    return texts


@pytest.mark.parametrize("stages, fields, shown", [
    (("register", "needle", "contrast"), {}, True),
    (("register", "needle"), {}, True),
    (None, {}, False),                      # which stages ran is not known
    (("register",), {}, False),             # "not assessed: needle" says it
    (("register", "needle"), {"skipped_stages": ["needle"]}, False),  # not looked on this frame
    (("register", "needle"), {"failed_stages": ["needle"]}, False),
    (("register", "needle"), {"dropped": True}, False),
    (("register", "needle"), {"needle": {"tip_xy": [10.0, 10.0], "confidence": 0.5}}, False),
])
def test_a_needle_stage_that_found_no_tip_says_so(monkeypatch, stages, fields, shown):
    """User review s18 F19: a frame without a tip read like a study the stage was not asked of."""
    texts = _texts(monkeypatch, _event(**fields), stages)
    assert ("needle: not found" in texts) == shown


@pytest.mark.parametrize("fields, line", [
    ({"tip_to_target_mm": 30.64, "tip_to_target_mm_iso": 19.74},
     "tip to target 19.7 mm at the joint (30.6 at the detector)"),
    ({"tip_to_target_mm": 30.64, "tip_to_target_mm_iso": None}, "tip to target 30.6 mm at the detector"),
    ({"tip_to_target_mm": 30.64}, "tip to target 30.6 mm at the detector"),
])
def test_tip_to_target_names_its_plane(monkeypatch, fields, line):
    """User review s18 F17: the banner's mm were at the detector, the PACS's at the isocentre."""
    event = _event(needle={"tip_xy": [10.0, 10.0], "confidence": 0.5},
                   target={"xy": [30.0, 10.0]}, **fields)
    texts = _texts(monkeypatch, event, ("register", "needle"))
    assert line in texts
    assert not any(t.startswith("tip to target") and t != line for t in texts)


def test_the_banner_is_opaque_over_burned_in_text():
    """User review s18 F28: a translucent banner let the device's burned-in text show through
    and between its lines. Left of the glyphs (column 6, inside every band) and from the top
    row to the last line, the banner is black."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(1000, 3000, (300, 300)).astype(np.uint16)
    pixels[:60, :150] = 4000                 # bright burned-in text in the top-left corner
    event = _event(alerts=[{"kind": "x", "message": "test"}])
    img = draw_overlay(pixels, "MONOCHROME2", event)
    import cv2
    from sifluoro.overlay import _font_scale
    scale = _font_scale(img)
    (_, h), base = cv2.getTextSize("Mg", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    step = int(h * 1.9)
    n_lines = 4  # title, dose, contrast, alert
    assert img[: step * n_lines + base + 1, 6].max() == 0
    assert img[step * n_lines + base + 1:, 6].max() > 0  # the picture below the banner


def test_a_vascular_state_says_stop_on_every_frame_and_a_carried_state_says_so(monkeypatch):
    """User review s20 R1: the STOP instruction was on the alert's one frame only (0.13 s at
    7.5 pulses/s); the next frames read "contrast: vascular" beside a yellow tip distance, and
    a frame whose contrast update the deadline skipped showed the carried state unmarked."""
    vascular = {"state": "vascular", "confidence": 0.6}
    texts = _texts(monkeypatch, _event(contrast=vascular), ("register", "needle", "contrast"))
    assert "contrast: vascular: STOP, do not inject steroid" in texts
    texts = _texts(monkeypatch, _event(contrast=vascular, degraded=True,
                                       degraded_steps=["contrast_skipped"]), None)
    assert "contrast: vascular (not updated this frame): STOP, do not inject steroid" in texts
    texts = _texts(monkeypatch, _event(contrast={"state": "intra_articular", "confidence": 0.9},
                                       skipped_stages=["contrast"]), None)
    assert "contrast: intra-articular (not updated this frame)" in texts


def test_an_uncertain_tip_is_drawn_as_one(monkeypatch):
    """User review s20 R2: a 0.34 end-on dot was drawn as the confident green cross with its
    distance to the target, which a radiologist would trust."""
    pixels = np.full((200, 200), 2000, np.uint16)
    for needle, label in (({"tip_xy": [100.0, 100.0], "confidence": 0.34, "end_on": True}, "tip? (end-on)"),
                          ({"tip_xy": [100.0, 100.0], "confidence": 0.3, "direction_xy": [0.0, 1.0]},
                           "tip? (low confidence)")):
        event = _event(needle=needle, target={"xy": [150.0, 100.0]}, tip_to_target_mm=4.8)
        texts = _texts(monkeypatch, event, ("register", "needle"))
        assert label in texts and "tip to target 4.8 mm at the detector (uncertain tip)" in texts
        monkeypatch.undo()
        img = draw_overlay(pixels, "MONOCHROME2", event)
        assert _near(img[100, 106], COLOURS["needle"]) and not _near(img[100, 100], COLOURS["needle"])
    confident = _event(needle={"tip_xy": [100.0, 100.0], "confidence": 0.9, "direction_xy": [0.0, 1.0]},
                       target={"xy": [150.0, 100.0]}, tip_to_target_mm=4.8)
    texts = _texts(monkeypatch, confident, ("register", "needle"))
    assert "tip to target 4.8 mm at the detector" in texts and not any("tip?" in t for t in texts)


@pytest.mark.parametrize("source, mark", [("estimated", "  (estimated)"), ("mixed", "  (partly estimated)"),
                                          ("none", "  (dose unknown)"), ("reported", ""), (None, "")])
def test_an_estimated_dose_is_marked_as_one(monkeypatch, source, mark):
    """User review s20 R3: the console said [estimated]; the overlay showed the numbers bare."""
    dose = {"air_kerma_mgy": 1.16, "dap_gycm2": 0.189, "fluoro_time_s": 6.9}
    if source:
        dose["dose_source"] = source
    texts = _texts(monkeypatch, _event(dose=dose), None)
    assert f"fluoro 6.9 s   Ka,r 1.16 mGy   DAP 0.189 Gy.cm2{mark}" in texts


def test_a_frame_without_pixel_spacing_says_why_it_has_no_joint_or_distances(monkeypatch):
    """User review s20 R4: a run without a pixel spacing showed no joint line, target or
    distance, and nothing said why."""
    import sifluoro.overlay as overlay

    texts = []
    monkeypatch.setattr(overlay, "_text", lambda img, text, org, colour, **kw: texts.append(text))
    pixels = np.full((200, 200), 2000, np.uint16)
    draw_overlay(pixels, "MONOCHROME2", _event(), stages=("register",), scale_unknown=True)
    assert "no pixel spacing in the header: no joint line, target or mm" in texts
    texts.clear()
    draw_overlay(pixels, "MONOCHROME2", _event(), stages=("register",))
    assert not any("pixel spacing" in t for t in texts)


def test_a_dose_that_leaves_runs_out_is_marked_as_a_lower_bound(monkeypatch):
    """Review s20 O1: a live dose leaving out runs of unknown dose was shown as a total."""
    dose = {"air_kerma_mgy": 1.16, "dap_gycm2": 0.189, "fluoro_time_s": 6.9,
            "dose_source": "reported", "runs_dose_unknown": 1}
    texts = _texts(monkeypatch, _event(dose=dose), None)
    assert ("fluoro 6.9 s   Ka,r 1.16 mGy   DAP 0.189 Gy.cm2  (at least: runs of unknown dose "
            "left out)") in texts
