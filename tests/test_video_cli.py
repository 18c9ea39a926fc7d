"""``sifluoro video``: a simulated study shown as a fluoroscopy monitor shows it (bone dark, 8
bits, lossy video), run through the engine from the file and as a live source."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from sifluoro.acquire.video import write_test_video
from sifluoro.cli import main
from sifluoro.config import Settings
from sifluoro.contract import replay_output_violations
from sifluoro.overlay import display_u8
from sifluoro.pipeline import Pipeline
from sifluoro.sim import simulate_case
from sifluoro.sim.visibility import distance_to_polyline_px
from sifluoro.stages import REPLAY_STAGES, make_stages
from sifluoro.track.needle_sim import sim_frames

FPS = 7.5


@pytest.fixture(scope="module")
def study():
    return simulate_case(2026, 1, quick=True)


@pytest.fixture(scope="module")
def monitor_video(tmp_path_factory, study):
    """(path, spacing_mm, truths): seed 2026 case 1 quick, as the C-arm's monitor shows it."""
    frames, truths = [], []
    for run in study.runs:
        for pixels, truth in zip(run.frames, run.truth):
            shown = display_u8(pixels, run.photometric)
            if run.attenuation_rises_with_value == (run.photometric == "MONOCHROME2"):
                shown = 255 - shown              # that device shows bone bright: invert
            frames.append(shown)
            truths.append(truth)
    path = write_test_video(tmp_path_factory.mktemp("video") / "monitor.avi", np.stack(frames), FPS)
    return path, study.runs[0].technique.imager_pixel_spacing_mm, truths


def _args(path, spacing, out, *extra):
    return ["video", str(path), "--pixel-spacing-mm", str(spacing), "--kvp", "80", "--ma", "10",
            "--pulse-width-ms", "8", "--sid-mm", "1000", "--source-to-isocenter-mm", "700",
            "--events", str(out / "events.jsonl"), "--summary", str(out / "summary.json"),
            "--budget-ms", "1e9", "-q", *extra]


def _joint_distances_mm(joints, truths, spacing):
    """Mean distance output → truth per frame of the needle run (no contrast yet)."""
    return [distance_to_polyline_px(np.asarray(j["polyline_xy"]), np.asarray(t.joint_polyline_xy)).mean()
            * spacing for j, t in zip(joints, truths) if t.contrast_state == "none" and j]


def test_a_monitor_video_gives_events_dose_and_the_joint_line(monitor_video, study, tmp_path):
    path, spacing, truths = monitor_video
    assert main(_args(path, spacing, tmp_path, "--overlay-mp4", str(tmp_path / "o.mp4"))) == 0
    assert replay_output_violations(tmp_path / "events.jsonl", tmp_path / "summary.json") == []
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(events) == len(truths) == summary["frames"]
    assert summary["fluoro_time_s"] == pytest.approx(len(truths) / FPS)
    assert summary["dose_source"] == "estimated" and summary["air_kerma_mgy"] > 0
    # bone dark, 8 bits and lossy on the monitor: the line is found on every frame of the needle
    # run, about as close to the truth as from the study's own DICOM pixels
    needle_run = sum(t.contrast_state == "none" for t in truths)
    from_video = _joint_distances_mm([e["joint"] for e in events], truths, spacing)
    pipeline = Pipeline(make_stages(REPLAY_STAGES), Settings(latency_budget_ms=1e9))
    state = pipeline.start_study("dicom")
    from_dicom = _joint_distances_mm([pipeline.process(f, state)["joint"] for f, _ in sim_frames(study)],
                                     truths, spacing)
    assert len(from_video) == len(from_dicom) == needle_run
    assert np.median(from_video) < 3.0 and np.median(from_video) <= np.median(from_dicom) + 0.5
    assert (tmp_path / "o.mp4").stat().st_size > 0


def test_live_source_counts_every_frames_dose(monitor_video, tmp_path):
    path, spacing, truths = monitor_video
    (tmp_path / "file").mkdir()
    (tmp_path / "live").mkdir()
    assert main(_args(path, spacing, tmp_path / "file")) == 0
    assert main(_args(path, spacing, tmp_path / "live", "--live")) == 0
    offline = json.loads((tmp_path / "file" / "summary.json").read_text())
    live = json.loads((tmp_path / "live" / "summary.json").read_text())
    assert live["frames"] == offline["frames"] == len(truths)
    assert live["air_kerma_mgy"] == pytest.approx(offline["air_kerma_mgy"])
    assert "dropped_image_frames" in live and 0 <= live["dropped_image_frames"] < len(truths)
    assert replay_output_violations(tmp_path / "live" / "events.jsonl",
                                    tmp_path / "live" / "summary.json") == []


def test_a_missing_device_or_file_is_a_clear_error(tmp_path, capsys):
    """A missing file is one error and nothing written (user review s18 F19: the technique
    notes and a 0-frame, 0-dose summary came first)."""
    (tmp_path / "out").mkdir()
    assert main([*_args(tmp_path / "none.avi", 0.3, tmp_path / "out")[:-1]]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"sifluoro: {tmp_path / 'none.avi'}: no such file; nothing was captured or written\n"
    assert captured.out == "" and list((tmp_path / "out").iterdir()) == []
    # a device that does not open: said, and nothing written either (user review s19: a
    # 0-frame session summary and an empty events file)
    assert main(_args("/dev/video99", 0.3, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "/dev/video99" in err and "nothing was captured or written" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_a_dicom_file_given_to_video_points_to_replay(tmp_path, capsys):
    """User review s19 U18: a DICOM file was "cannot be opened as video (... unsupported
    codec ...)" after two technique notes."""
    from tests.dicom_fixtures import RunSpec, write_study

    (path,) = write_study(tmp_path / "dicom", [RunSpec(0.0)])
    (tmp_path / "out").mkdir()
    assert main(_args(path, 0.3, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sifluoro: {path}: a DICOM file, not video; replay it with `sifluoro replay")
    assert "note:" not in err and list((tmp_path / "out").iterdir()) == []


def test_a_capture_with_part_of_the_technique_names_what_the_estimate_still_needs(
        monitor_video, tmp_path, capsys):
    """User review s19 U18: with --kvp alone the note said "without --sid-mm (and kV, mA,
    pulse width)"; with --sid-mm but no mA it said nothing of a missing estimate."""
    path, spacing, _ = monitor_video
    for given, missing in ((["--kvp", "78"], "--ma --sid-mm"),
                           (["--kvp", "78", "--sid-mm", "1000"], "--ma")):
        assert main(["video", str(path), "--pixel-spacing-mm", str(spacing), *given, "--max-frames",
                     "2", "--events", str(tmp_path / "e.jsonl"), "--summary",
                     str(tmp_path / "s.json")]) == 0
        err = capsys.readouterr().err
        assert f"note: without {missing} there is no dose estimate" in err
        assert "whole picture" not in err
    # review s20 V1: kV, mA and SID make an estimate (continuous: the pulse width refines it);
    # without the SID the air kerma is estimated but the DAP is unknown, not 0
    for given, said, dap_known in (
            (["--kvp", "78", "--ma", "10", "--sid-mm", "1000"], "without --pulse-width-ms", True),
            (["--kvp", "78", "--ma", "10", "--pulse-width-ms", "8", "--source-to-isocenter-mm",
              "700"], "without --sid-mm the DAP is not estimated", False)):
        assert main(["video", str(path), "--pixel-spacing-mm", str(spacing), *given, "--max-frames",
                     "2", "--events", str(tmp_path / "e.jsonl"), "--summary",
                     str(tmp_path / "s.json")]) == 0
        err = capsys.readouterr().err
        assert said in err and "no dose estimate" not in err
        summary = json.loads((tmp_path / "s.json").read_text())
        assert summary["dose_source"] == "estimated" and summary["air_kerma_mgy"] > 0
        assert (summary["runs_dose_unknown"] == 0) == dap_known


def test_a_capture_with_almost_no_joint_line_hints_at_the_polarity(monitor_video, tmp_path, capsys):
    """User review s19 U11: a bone-bright capture read with the default (bone dark) found a
    joint line on 2 of 48 frames and said nothing. (Which captures lose their line that way
    depends on the picture: here a capture without any joint stands for one.)"""
    _, spacing, _ = monitor_video
    rng = np.random.default_rng(7)
    frames = rng.normal(128, 20, (12, 256, 256)).clip(0, 255).astype(np.uint8)
    blank = write_test_video(tmp_path / "blank.avi", frames, FPS)
    args = _args(blank, spacing, tmp_path)
    args.remove("-q")
    assert main(args) == 0
    assert "note: a joint line on 0 of 12 frames; if the video shows bone bright" in capsys.readouterr().err
    for extra in (["--bone-bright"], ["--stages", "none"]):  # said already; no joint looked for
        args = _args(blank, spacing, tmp_path, *extra)
        args.remove("-q")
        assert main(args) == 0
        assert "--bone-bright" not in capsys.readouterr().err


def test_a_capture_without_technique_says_its_dose_is_unknown_not_zero(monitor_video, tmp_path,
                                                                        capsys):
    path, spacing, _ = monitor_video
    assert main(["video", str(path), "--pixel-spacing-mm", str(spacing), "--events",
                 str(tmp_path / "e.jsonl"), "--summary", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "dose       unknown (no technique to estimate it from), fluoro" in out and "0.00 mGy" not in out


def test_the_overlay_video_keeps_the_capture_time_when_pulses_are_faster(tmp_path):
    """30 p/s grabbed at 25 frame/s: the overlay MP4 plays at the 25 frames a second taken (at
    the pulse rate it ran 20 % fast)."""
    import cv2

    rng = np.random.default_rng(2)
    path = write_test_video(tmp_path / "grab.avi", rng.integers(40, 200, (10, 64, 64)).astype(np.uint8), 25)
    assert main(_args(path, 0.3, tmp_path, "--pulse-rate", "30", "--overlay-mp4", str(tmp_path / "o.mp4"))) == 0
    video = cv2.VideoCapture(str(tmp_path / "o.mp4"))
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0, abs=0.01)
    video.release()


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_capture_ended_by_ctrl_c_or_a_service_stop_still_writes_its_summary(tmp_path, signum):
    """A grabber never ends by itself; Ctrl-C or a service's SIGTERM ended the command with
    no summary: the session's fluoroscopy time, air kerma and DAP were lost (review s10 A#1)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(1)
    base = (rng.random((64, 64)) * 120 + 60).astype(np.uint8)
    path = write_test_video(tmp_path / "grab.avi", np.stack([np.roll(base, k, 1) for k in range(600)]), 30.0)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sifluoro", *_args(path, 0.3, out, "--live", "--stages", "none")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # some frames in, well before the file's 20 s end
            if (out / "events.jsonl").exists() and len((out / "events.jsonl").read_text().splitlines()) >= 5:
                break
            time.sleep(0.05)
        proc.send_signal(getattr(signal, signum))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["video"]["ended_early"] == "stopped by a signal"
    assert 5 <= summary["frames"] < 600 and summary["air_kerma_mgy"] > 0
    # every frame captured counts, the one in hand at the signal and those queued too (user
    # review s18 F23: "11 frames of 12 captured", the 12th pulse's dose lost)
    video = summary["video"]
    assert summary["frames"] == video["captured_frames"] - video["between_pulses"] - video["held_frames"]
    assert replay_output_violations(out / "events.jsonl", out / "summary.json") == []


def test_a_picture_size_change_mid_capture_starts_a_new_run(tmp_path, monkeypatch):
    """The grabber's input switched resolution (OpenCV's own image backend reads the sequence
    as delivered): the capture ended there and the rest of the session's dose was lost. Now
    the pictures go on as a new run of the same study, and every frame's dose counts."""
    import cv2

    for k in range(10):
        shape = (48, 64) if k < 6 else (60, 80)
        cv2.imwrite(str(tmp_path / f"f_{k:03d}.png"), np.full(shape, 20 + 20 * k, np.uint8))
    args = _args(tmp_path / "f_%03d.png", 0.3, tmp_path, "--pulse-rate", "15")
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == 10 and summary["runs"] == 2
    assert summary["fluoro_time_s"] == pytest.approx(10 / 15)
    assert summary["video"]["size_changes"] == 1 and summary["video"]["ended_early"] is None
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len({e["sop_instance_uid"] for e in events}) == 2
    assert replay_output_violations(tmp_path / "events.jsonl", tmp_path / "summary.json") == []


def test_without_a_pulse_rate_the_capture_says_what_counts_and_drops_a_long_hold(tmp_path, capsys):
    """2 s of pulses on a 25 frame/s capture, then the last image held 10 s: counted 12 s of
    fluoroscopy with no word of it; now the hold counts its first second and the start of the
    capture says that every frame counts as a pulse without --pulse-rate."""
    rng = np.random.default_rng(3)
    pulses = list(rng.integers(40, 200, (50, 48, 64)).astype(np.uint8))
    path = write_test_video(tmp_path / "hold.avi", np.stack(pulses + [pulses[-1]] * 250), fps=25)
    args = [a for a in _args(path, 0.3, tmp_path, "--stages", "none") if a != "-q"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "without --pulse-rate every captured frame counts as a pulse" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["video"]["held_frames"] == 225 and summary["frames"] == 75
    assert summary["fluoro_time_s"] == pytest.approx(3.0)
    assert main([*args, "--pulse-rate", "25"]) == 0
    assert "without --pulse-rate" not in capsys.readouterr().err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["video"]["held_frames"] == 250 and summary["fluoro_time_s"] == pytest.approx(2.0)


def _image_sequence(tmp_path, monkeypatch, n=6):
    """A PNG sequence: read by OpenCV's own image backend (video.open_capture), which reports
    CAP_PROP_FPS -1, not FFmpeg's, which makes up 25/s."""
    import cv2

    for k in range(n):
        cv2.imwrite(str(tmp_path / f"f_{k:03d}.png"), np.full((48, 64), 20 + 30 * k, np.uint8))
    return tmp_path / "f_%03d.png"


def test_a_capture_that_reports_no_frame_rate_needs_the_pulse_rate(tmp_path, monkeypatch, capsys):
    """A backend reporting CAP_PROP_FPS -1 was taken at its word: t_s ran 0, -1, -2 ... and
    fluoroscopy time and air kerma came out negative. Now such a capture is timed by the pulse
    rate given, and refused, naming the property, without one."""
    source = _image_sequence(tmp_path, monkeypatch)
    assert main(_args(source, 0.3, tmp_path, "--stages", "none", "--pulse-rate", "15")) == 0
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["t_s"] for e in events] == pytest.approx([k / 15 for k in range(6)], abs=1e-6)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fluoro_time_s"] == pytest.approx(6 / 15) and summary["air_kerma_mgy"] > 0
    assert replay_output_violations(tmp_path / "events.jsonl", tmp_path / "summary.json") == []
    capsys.readouterr()
    assert main(_args(source, 0.3, tmp_path, "--stages", "none")) == 2
    assert "CAP_PROP_FPS = -1" in capsys.readouterr().err
    assert json.loads((tmp_path / "summary.json").read_text())["frames"] == 0


def test_a_full_disk_stops_the_events_not_the_summary(tmp_path, monkeypatch, capsys):
    """Events written to a full disk (/dev/full): the capture crashed at the end with no
    summary, so the session's dose was lost. Now the summary is written and says so."""
    source = _image_sequence(tmp_path, monkeypatch)
    args = _args(source, 0.3, tmp_path, "--stages", "none", "--pulse-rate", "15")
    args[args.index("--events") + 1] = "/dev/full"
    args.remove("-q")
    assert main(args) == 1  # the record is incomplete
    captured = capsys.readouterr()
    assert "events can no longer be written" in captured.err
    # not listed as an output like the others (new-user review s19 U12)
    assert "/dev/full (incomplete: events_not_written in the summary)" in captured.out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == 6 and summary["air_kerma_mgy"] > 0
    assert "No space left on device" in summary["events_not_written"]


def test_a_stalled_network_grabber_is_waited_out_and_a_stop_ends_it_at_once(tmp_path):
    """A network frame grabber (MJPEG over TCP) sends 15 frames, nothing for 3 s with the
    connection open, 15 more, then nothing: a failed read was taken for the end of the
    procedure (exit 0, `ended_early` null, nothing counted after it) and SIGTERM waited for
    OpenCV's 30 s read timeout. Now a stall is waited out and counted, and a stop during a
    stall ends the capture at once with its summary."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import threading
    import time

    import cv2

    rng = np.random.default_rng(5)
    jpegs = [cv2.imencode(".jpg", rng.integers(30, 220, (64, 64)).astype(np.uint8))[1].tobytes()
             for _ in range(30)]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    finished = threading.Event()

    def grabber():
        conn, _ = server.accept()
        for k, jpeg in enumerate(jpegs):
            if k == 15:
                time.sleep(3.0)
            conn.sendall(jpeg)
            time.sleep(1 / 15)
        finished.wait(120)  # the connection stays open: a stall, not an end
        conn.close()

    threading.Thread(target=grabber, daemon=True).start()
    out = tmp_path / "out"
    source = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    # raw MJPEG has no header to probe: FFmpeg would wait 30 s for one (a grabber's setting)
    env = dict(os.environ, PYTHONPATH=os.getcwd(),
               OPENCV_FFMPEG_CAPTURE_OPTIONS="f;mjpeg|probesize;32|analyzeduration;0")
    proc = subprocess.Popen([sys.executable, "-m", "sifluoro",
                             *_args(source, 0.3, out, "--stages", "none")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        # the demuxer holds the last frame until the next one starts: 29 of 30 come
        while time.monotonic() < deadline:
            if (out / "events.jsonl").exists() and len((out / "events.jsonl").read_text().splitlines()) >= 29:
                break
            time.sleep(0.05)
        time.sleep(2.5)
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took_s = time.monotonic() - stopped
    finally:
        proc.kill()
        finished.set()
        server.close()
    assert proc.returncode == 0, err
    assert took_s < 15  # not OpenCV's 30 s read timeout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] >= 29
    assert summary["video"]["ended_early"] == "stopped by a signal"
    assert summary["video"]["stalls"] >= 1 and summary["video"]["longest_stall_s"] >= 2.0
    assert replay_output_violations(out / "events.jsonl", out / "summary.json") == []


def _mjpeg_grabber(n_frames: int, rate_per_s: float, backlog: int = 0):
    """A network frame grabber: raw MJPEG over TCP at ``rate_per_s``, the first ``backlog``
    frames at once (queued while the capture opened); the connection stays open after the
    last frame. Returns (source URL, the environment for OpenCV, an event set once every frame
    is sent, stop callable)."""
    import os
    import socket
    import threading
    import time

    import cv2

    rng = np.random.default_rng(7)
    jpegs = [cv2.imencode(".jpg", rng.integers(30, 220, (64, 64)).astype(np.uint8))[1].tobytes()
             for _ in range(n_frames)]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    sent, finished = threading.Event(), threading.Event()

    def serve():
        conn, _ = server.accept()
        t0 = time.monotonic()
        for k, jpeg in enumerate(jpegs):
            time.sleep(max(0.0, t0 + (k - backlog) / rate_per_s - time.monotonic()))
            try:
                conn.sendall(jpeg)
            except OSError:  # the capture ended (--max-frames) and closed the connection
                break
        sent.set()
        finished.wait(120)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    env = dict(os.environ, PYTHONPATH=os.getcwd(),
               OPENCV_FFMPEG_CAPTURE_OPTIONS="f;mjpeg|probesize;32|analyzeduration;0")

    def stop():
        finished.set()
        server.close()

    return f"tcp://127.0.0.1:{server.getsockname()[1]}", env, sent, stop


@pytest.mark.parametrize("given_rate", [False, True])
def test_a_grabber_whose_backend_reports_a_wrong_rate_is_measured_and_can_be_told(tmp_path,
                                                                                given_rate):
    """Review s13 H1: FFmpeg reports 25 frames/s for a raw MJPEG grabber sending 15. Frames
    were timed at 1/25 s and, with --pulse-rate 15, 40 % of real pulses were dropped as
    repeats between pulses. The source's rate is now measured on the reads' clock and a
    mismatch said (with the --capture-rate to give); given it, every pulse counts."""
    import signal
    import subprocess
    import sys

    source, env, sent, stop = _mjpeg_grabber(120, 15.0)  # two 3 s windows to agree
    out = tmp_path / "out"
    extra = ["--pulse-rate", "15"] + (["--capture-rate", "15"] if given_rate else [])
    proc = subprocess.Popen([sys.executable, "-m", "sifluoro",
                             *_args(source, 0.3, out, "--stages", "none", *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert sent.wait(60)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)  # how an operator ends a capture
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        stop()
    assert proc.returncode == 0, err
    summary = json.loads((out / "summary.json").read_text())
    video = summary["video"]
    assert 13.0 <= video["measured_capture_rate_per_s"] <= 17.0
    if given_rate:
        assert video["capture_rate_per_s"] == 15.0 and video["between_pulses"] == 0
        assert summary["frames"] >= 118  # the demuxer holds the last frame or two
        assert summary["fluoro_time_s"] == pytest.approx(summary["frames"] / 15.0, rel=1e-3)
        assert "--capture-rate" not in err
    else:
        assert video["capture_rate_per_s"] == 25.0  # what FFmpeg makes up for raw MJPEG
        assert "give --capture-rate 15" in err


def test_a_grabbers_backlog_at_opening_does_not_count_in_its_measured_rate(tmp_path):
    """A grabber that sends the 30 frames it queued while the capture opened, then 15/s: its
    rate was measured over the first 3 s of reads, burst included, at ~25/s — the rate FFmpeg
    makes up for raw MJPEG, so the wrong timing went unsaid. The rate is now the first 3 s
    window's that agrees with the window before it."""
    import signal
    import subprocess
    import sys

    # 14 s at 15/s: four windows after the burst, so a busy machine's jitter in one does not
    # leave the rate unmeasured (CI, session 18)
    source, env, sent, stop = _mjpeg_grabber(30 + 210, 15.0, backlog=30)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sifluoro",
                             *_args(source, 0.3, out, "--stages", "none", "--pulse-rate", "15")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert sent.wait(60)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        stop()
    assert proc.returncode == 0, err
    video = json.loads((out / "summary.json").read_text())["video"]
    assert video["capture_rate_per_s"] == 25.0 and video["captured_frames"] >= 238
    assert 14.0 <= video["measured_capture_rate_per_s"] <= 16.0
    assert "give --capture-rate 15" in err


def test_a_live_capture_ended_by_max_frames_exits_cleanly(tmp_path):
    """The reader thread was left inside a read at exit: when the read returned during the
    interpreter's shutdown, the process aborted ('FATAL: exception not rethrown', -6)."""
    import subprocess
    import sys

    source, env, _, stop = _mjpeg_grabber(75, 15.0)
    out = tmp_path / "out"
    try:
        proc = subprocess.run([sys.executable, "-m", "sifluoro",
                               *_args(source, 0.3, out, "--stages", "none", "--max-frames", "20")],
                              capture_output=True, text=True, env=env, timeout=120)
    finally:
        stop()
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "summary.json").read_text())["frames"] == 20


def test_a_capture_with_technique_says_its_dap_takes_the_whole_picture(monitor_video, tmp_path,
                                                                         capsys):
    """New-user review s19 U3: the estimated DAP took the whole picture as the field without
    a word (an upper bound when collimated)."""
    path, spacing, _ = monitor_video
    args = _args(path, spacing, tmp_path)
    args.remove("-q")
    assert main(args) == 0
    assert "the estimated DAP takes the whole picture as the X-ray field" in capsys.readouterr().err


def _avi_of(tmp_path, n=60):
    rng = np.random.default_rng(0)
    return write_test_video(tmp_path / "whole.avi",
                            rng.integers(0, 255, (n, 48, 64), dtype=np.uint8), fps=15.0)


def test_a_video_file_cut_short_ends_early_and_exits_1(tmp_path, capsys):
    """Review s23 #4: a 60-frame AVI cut in half (an interrupted copy) passed as whole: 30
    frames, exit 0, ended_early null. The frames read still count."""
    whole = _avi_of(tmp_path)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    assert main(_args(cut, 0.3, tmp_path, "--stages", "none", "--pulse-rate", "15")) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 < summary["frames"] < 60 and "cut short" in summary["video"]["ended_early"]
    assert "of the 60 frames its header gives" in capsys.readouterr().err
    assert main(_args(whole, 0.3, tmp_path, "--stages", "none", "--pulse-rate", "15")) == 0


def test_a_header_that_undercounts_its_frames_does_not_cap_them(tmp_path):
    """Review s23 #5: an AVI whose header says 30 of the 60 frames it holds gave 30, unsaid."""
    import struct

    data = bytearray(_avi_of(tmp_path).read_bytes())
    for chunk, offset in ((b"avih", 16), (b"strh", 32)):  # dwTotalFrames, the stream's dwLength
        struct.pack_into("<I", data, data.find(chunk) + 8 + offset, 30)
    (tmp_path / "thirty.avi").write_bytes(bytes(data))
    assert main(_args(tmp_path / "thirty.avi", 0.3, tmp_path, "--stages", "none",
                      "--pulse-rate", "15")) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["frames"] == 60


@pytest.mark.parametrize("option, value", [("--pulse-rate", "inf"), ("--capture-rate", "0"),
                                           ("--pixel-spacing-mm", "inf"),
                                           ("--pixel-spacing-mm", "-0.3")])
def test_rates_and_spacing_must_be_finite_and_positive(tmp_path, capsys, option, value):
    """Review s23 #12: --pulse-rate inf ended in an OverflowError traceback and
    --pixel-spacing-mm inf in a summary holding Infinity (not JSON)."""
    from sifluoro.acquire import video, video_cli

    assert video_cli.MAX_RATE_PER_S == video.MAX_CAPTURE_RATE_PER_S
    spacing = value if option == "--pixel-spacing-mm" else 0.3
    extra = () if option == "--pixel-spacing-mm" else (option, value)
    with pytest.raises(SystemExit) as exit_:
        main(_args(_avi_of(tmp_path, n=4), spacing, tmp_path, *extra))
    assert exit_.value.code == 2 and option in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()
