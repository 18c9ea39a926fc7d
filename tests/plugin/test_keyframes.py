"""Key-frame choice, the Secondary Capture of a frame whose source says little, and pacing."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from pydicom.dataset import Dataset

from sifluoro.errors import ConfigError
from sifluoro.io.dicom_writer import save_dataset
from sifluoro.model import Device, Frame, Run, Technique
from sifluoro.plugin.keyframes import KeyFrame, KeyFrameSelector, key_frame_sc, key_frame_title
from sifluoro.plugin.live import Pacer


def _run(uid: str, n: int = 3) -> Run:
    return Run(path="synthetic", sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.12.1",
               series_instance_uid="1.2.3", study_instance_uid="1.2", modality="XA",
               transfer_syntax_uid="", rows=32, columns=32, bits_stored=12,
               photometric="MONOCHROME2", start_s=0.0, frame_offsets_s=(0.0,) * n,
               frame_intervals_ms=(100.0,) * n, technique=Technique(), device=Device())


def _event(index: int, *, contrast: str = "none", alerts=()) -> dict:
    return {"index": index, "t_s": index * 0.1, "contrast": {"state": contrast, "confidence": 0.5},
            "dose": {"air_kerma_mgy": 1.0, "dap_gycm2": 0.1, "fluoro_time_s": 1.0},
            "alerts": list(alerts), "needle": None, "joint": None, "target": None}


def _frame(run: Run, index: int, number: int) -> Frame:
    return Frame(pixels=np.full((32, 32), 100 * index, np.uint16), index=index,
                 frame_number=number, t_s=index * 0.1, run=run)


def test_run_ends_contrast_changes_and_alerts_are_kept_within_the_cap():
    runs = [_run(f"1.2.3.{r}") for r in range(4)]
    selector = KeyFrameSelector(max_frames=4)
    index = 0
    for r, run in enumerate(runs):
        for number in (1, 2, 3):
            contrast = "vascular" if (r, number) >= (2, 2) else "none"
            alerts = [{"kind": "air_kerma", "message": "3 Gy"}] if (r, number) == (1, 1) else []
            selector.add(_frame(run, index, number), _event(index, contrast=contrast, alerts=alerts))
            index += 1
    chosen = selector.frames()
    # alert (3), contrast change (7), then the latest run ends (11, 8) fill the cap of 4
    assert [(k.event["index"], k.reason) for k in chosen] == [
        (3, "alert air_kerma"), (7, "contrast vascular"), (8, "run end"), (11, "run end")]


def test_single_frame_files_chained_into_a_run_give_one_run_end():
    """Review s23 #7: a device storing one frame per file (3 sequences of 5, 0.2 s apart, the
    sequences 10 s apart): every file passed for a run, so 3 key frames were the last 3
    frames (12, 13, 14) instead of each sequence's last (4, 9, 14)."""
    from dataclasses import replace

    selector = KeyFrameSelector(max_frames=3)
    for index in range(15):
        sequence, k = divmod(index, 5)
        run = replace(_run(f"1.2.3.{index}", n=1), start_s=10.0 * sequence + 0.2 * k)
        selector.add(_frame(run, index, 1), _event(index))
    assert [k.event["index"] for k in selector.frames()] == [4, 9, 14]


def test_a_long_study_holds_only_the_frames_it_can_export():
    """150 runs had kept a whole frame per run end (300 MiB at 1024²) to export 12 (review M5);
    the choice is the same as when everything was kept."""
    import gc
    import weakref

    selector = KeyFrameSelector(max_frames=4)
    held, index = [], 0
    for r in range(150):
        run = _run(f"1.2.3.{r}")
        for number in (1, 2, 3):
            frame = _frame(run, index, number)
            held.append(weakref.ref(frame.pixels))
            alerts = [{"kind": "air_kerma", "message": "x"}] if r % 10 == 0 and number == 1 else []
            selector.add(frame, _event(index, alerts=alerts))
            index += 1
    gc.collect()
    assert sum(ref() is not None for ref in held) <= 2 * 4 + 1
    # the first 4 alerts (runs 0, 10, 20, 30); no room left for run ends
    assert [k.event["index"] for k in selector.frames()] == [0, 30, 60, 90]


def test_sc_of_a_source_without_orientation_or_laterality_leaves_them_empty(tmp_path):
    ref = Dataset()
    ref.SOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    ref.StudyInstanceUID, ref.PatientID, ref.PatientName = "1.2.3.4", "", ""
    run = _run("1.2.3.9")
    sc = key_frame_sc(KeyFrame(_frame(run, 5, 2), _event(5), "run end"), ref,
                      series_instance_uid="1.2.3.5", instance_number=1)
    assert sc.PatientOrientation is None and sc.Laterality is None
    assert sc.BurnedInAnnotation == "YES" and sc.SourceImageSequence[0].ReferencedFrameNumber == 2
    assert sc.Rows == 32 and sc.SamplesPerPixel == 3
    if shutil.which("dciodvfy"):
        path = save_dataset(sc, tmp_path / "sc.dcm")
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert [line for line in check.stderr.splitlines() if "Error" in line] == []


class _SimulatedTime:
    """A clock for the Pacer and a ``stop`` whose ``wait`` moves it: the waits are exact (real
    sleeps on a loaded CI machine overran the bound)."""

    def __init__(self):
        self.t_s = 0.0
        self.waits_s: list[float] = []

    def __call__(self) -> float:
        return self.t_s

    def wait(self, timeout_s: float) -> bool:
        self.waits_s.append(timeout_s)
        self.t_s += timeout_s
        return False


def _pace(pacer: Pacer, clock: _SimulatedTime, times_s, work_s=None) -> None:
    run = _run("1.2.3.1")
    for i, t_s in enumerate(times_s):
        clock.t_s += (work_s or {}).get(i, 0.0)  # time spent before this frame is fed
        pacer.wait(Frame(pixels=np.zeros((2, 2), np.uint16), index=i, frame_number=1, t_s=t_s,
                         run=run), clock)


def test_pacing_follows_frame_times_with_pauses_between_runs_shortened():
    clock = _SimulatedTime()
    _pace(Pacer(max_gap_s=0.2, clock=clock), clock, [0.0, 0.1, 0.2, 30.0, 30.1])
    assert clock.waits_s == pytest.approx([0.1, 0.1, 0.2, 0.1])  # 0.2, not 29.8
    assert clock.t_s == pytest.approx(0.5)
    clock = _SimulatedTime()
    _pace(Pacer(fps=10, clock=clock), clock, [0.0, 5.0, 5.01, 9.0])
    assert clock.waits_s == pytest.approx([0.1, 0.1, 0.1])  # a fixed rate ignores frame times
    with pytest.raises(ConfigError, match="fps must be > 0"):
        Pacer(fps=0)


def test_a_late_frame_restarts_the_pace_instead_of_a_burst():
    """Frame 2 comes 1 s late (a busy machine): no wait for it, and frame 3 still waits its
    own 0.1 s after it rather than going out at once to catch up."""
    clock = _SimulatedTime()
    _pace(Pacer(fps=10, clock=clock), clock, [0.0, 0.1, 0.2, 0.3], work_s={2: 1.0})
    assert clock.waits_s == pytest.approx([0.1, 0.1])
    assert clock.t_s == pytest.approx(1.2)


def test_sc_key_frame_is_calibrated_at_the_isocenter_when_the_geometry_is_known(tmp_path):
    """A PACS measured the key frames in pixels only (no spacing): the spacing at the
    isocenter, by the geometry, with its calibration type, so the joint measures in mm."""
    ref = Dataset()
    ref.SOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    ref.StudyInstanceUID, ref.PatientID, ref.PatientName = "1.2.3.4", "", ""
    tech = Technique(imager_pixel_spacing_xy_mm=(0.30, 0.31), sid_mm=1200.0,
                     source_to_isocenter_mm=800.0)
    run = Run(**{**_run("1.2.3.9").__dict__, "technique": tech})
    sc = key_frame_sc(KeyFrame(_frame(run, 5, 2), _event(5), "run end"), ref,
                      series_instance_uid="1.2.3.5", instance_number=1)
    assert [float(v) for v in sc.PixelSpacing] == pytest.approx([0.31 * 2 / 3, 0.30 * 2 / 3])
    assert sc.PixelSpacingCalibrationType == "GEOMETRY"
    if shutil.which("dciodvfy"):
        path = save_dataset(sc, tmp_path / "sc.dcm")
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert [line for line in check.stderr.splitlines() if "Error" in line] == []
    # without the source-to-isocenter distance the spacing is not guessed
    bare = Run(**{**_run("1.2.3.9").__dict__,
                  "technique": Technique(imager_pixel_spacing_xy_mm=(0.3, 0.3), sid_mm=1200.0)})
    sc = key_frame_sc(KeyFrame(_frame(bare, 5, 2), _event(5), "run end"), ref,
                      series_instance_uid="1.2.3.5", instance_number=1)
    assert "PixelSpacing" not in sc and "PixelSpacingCalibrationType" not in sc


def test_key_frame_title_gives_the_frame_of_its_run_not_the_index_as_a_frame():
    """Review s16 L14: "run end: frame 41" where 41 was the study index (the run's frame 4)."""
    key = KeyFrame(_frame(_run("1.2.3.9"), 41, 4), _event(41), "run end")
    assert key_frame_title(key) == "run end: #41 (frame 4 of its run)  t=4.10 s"


def test_a_key_frame_says_its_guidance_is_not_a_measurement(monkeypatch):
    """User review s20 X4: key frames sent to a clinical PACS carried "tip to target 8.3 mm"
    burned in, and nothing on the image or in the header said the guidance is not validated:
    there it reads as a measurement."""
    import sifluoro.overlay as overlay
    from sifluoro.plugin.keyframes import NOT_VALIDATED

    texts = []
    real = overlay._text
    monkeypatch.setattr(overlay, "_text", lambda img, text, org, *a, **kw: (texts.append(text),
                                                                          real(img, text, org, *a, **kw)))
    ref = Dataset()
    ref.SOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    ref.StudyInstanceUID, ref.PatientID, ref.PatientName = "1.2.3.4", "", ""
    sc = key_frame_sc(KeyFrame(_frame(_run("1.2.3.9"), 5, 2), _event(5), "run end"), ref,
                      series_instance_uid="1.2.3.5", instance_number=1)
    assert NOT_VALIDATED in texts and NOT_VALIDATED in sc.ImageComments
    assert "not validated" in NOT_VALIDATED and "not a measurement" in NOT_VALIDATED


def test_a_key_frame_keeps_the_ids_issuer_and_de_identification(tmp_path):
    """User review s20 X1, X6: key frames dropped IssuerOfPatientID (the RDSR kept it) and a
    de-identified input's PatientIdentityRemoved / DeidentificationMethod (RDSR too)."""
    ref = Dataset()
    ref.SOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    ref.StudyInstanceUID, ref.PatientID, ref.PatientName = "1.2.3.4", "ANON1", "Anon"
    ref.IssuerOfPatientID, ref.PatientIdentityRemoved = "SITE-A", "YES"
    ref.DeidentificationMethod = "gateway profile 1"
    sc = key_frame_sc(KeyFrame(_frame(_run("1.2.3.9"), 5, 2), _event(5), "run end"), ref,
                      series_instance_uid="1.2.3.5", instance_number=1)
    assert (sc.IssuerOfPatientID, sc.PatientIdentityRemoved, sc.DeidentificationMethod) == (
        "SITE-A", "YES", "gateway profile 1")
    if shutil.which("dciodvfy"):
        path = save_dataset(sc, tmp_path / "sc.dcm")
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert [line for line in check.stderr.splitlines() if "Error" in line] == []


@pytest.mark.parametrize("lossy", [False, True])
def test_a_key_frame_of_a_lossy_source_says_it_was_lossy(tmp_path, lossy):
    """Review s23 #10: a key frame drawn on a source with LossyImageCompression "01" was
    written "00", which PS3.3 C.7.6.1.1.5 forbids (once lossy, never reset)."""
    ref = Dataset()
    ref.SOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    ref.StudyInstanceUID, ref.PatientID, ref.PatientName = "1.2.3.4", "ANON1", "Anon"
    if lossy:
        ref.LossyImageCompression, ref.LossyImageCompressionRatio = "01", [8.2]
        ref.LossyImageCompressionMethod = ["ISO_10918_1"]
    sc = key_frame_sc(KeyFrame(_frame(_run("1.2.3.9"), 5, 2), _event(5), "run end"), ref,
                      series_instance_uid="1.2.3.5", instance_number=1)
    assert sc.LossyImageCompression == ("01" if lossy else "00")
    assert ("LossyImageCompressionMethod" in sc) == lossy
    if shutil.which("dciodvfy"):
        path = save_dataset(sc, tmp_path / "sc.dcm")
        check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert [line for line in check.stderr.splitlines() if "Error" in line] == []
