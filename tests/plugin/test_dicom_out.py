"""DICOM out against a real Orthanc: key frames (Secondary Capture, overlay burned in) and the
RDSR arrive and Orthanc's REST API lists them; while Orthanc is down the outbox keeps them, and
a later process delivers them once it is back."""
from __future__ import annotations

import shutil
import subprocess

import pydicom
import pytest

from tests.dicom_fixtures import PATIENT_ID, PATIENT_NAME
from tests.plugin.conftest import ORTHANC_AET
from tests.plugin.studies import needle_study

SC = "1.2.840.10008.5.1.4.1.1.7"
RDSR = "1.2.840.10008.5.1.4.1.1.88.67"


def _stored(orthanc) -> dict[str, dict]:
    """SOP Instance UID -> simplified tags of every instance Orthanc holds."""
    tags = (orthanc.get(f"/instances/{i}/simplified-tags") for i in orthanc.get("/instances"))
    return {t["SOPInstanceUID"]: t for t in tags}


def test_key_frames_and_rdsr_reach_orthanc_and_wait_out_its_downtime(tmp_path, orthanc,
                                                                     sifluoro_command):
    outbox = tmp_path / "outbox"
    study_a = needle_study(tmp_path / "a", frames_per_run=(8, 8), size=128)
    study_b = needle_study(tmp_path / "b", frames_per_run=(8,), size=128)
    orthanc.start()
    pacs = f"{ORTHANC_AET}@127.0.0.1:{orthanc.dicom_port}"
    fast = ["--budget-ms", "1e9", "--retries", "1", "--retry-wait-s", "0.1"]

    export_a = sifluoro_command("-v", "export", study_a, "--outbox", outbox, "--pacs", pacs, *fast)
    assert export_a.wait() == 0, export_a.stderr()
    sent_a = sorted(p.stem for p in (outbox / "sent").glob("*.dcm"))
    assert len(sent_a) == 3 and not list((outbox / "pending").iterdir())  # 2 run ends + RDSR
    stored = _stored(orthanc)
    assert sorted(stored) == sent_a
    classes = sorted(t["SOPClassUID"] for t in stored.values())
    assert classes == [SC, SC, RDSR]
    for tags in stored.values():
        assert tags["PatientID"] == PATIENT_ID  # filed with the patient, from the source images
        if tags["SOPClassUID"] == SC:
            assert tags["BurnedInAnnotation"] == "YES" and tags["ConversionType"] == "WSD"
    log = export_a.stdout + export_a.stderr()
    assert "sent Secondary Capture Image Storage" in log
    assert PATIENT_ID not in log and PATIENT_NAME not in log

    sc_file = next(p for p in (outbox / "sent").glob("*.dcm")
                   if pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID == SC)
    if shutil.which("dciodvfy"):
        check = subprocess.run(["dciodvfy", str(sc_file)], capture_output=True, text=True)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if "Error" in line]
        assert errors == []
    sc = pydicom.dcmread(sc_file)
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape == (128, 128, 3)
    assert sc.SourceImageSequence[0].ReferencedFrameNumber in (8,)

    orthanc.stop()  # the PACS goes down: study B waits in the outbox
    export_b = sifluoro_command("export", study_b, "--outbox", outbox, "--pacs", pacs, *fast)
    assert export_b.wait() == 3, export_b.stderr()
    assert "2 pending" in export_b.stdout
    pending_b = sorted(p.stem for p in (outbox / "pending").glob("*.dcm"))
    assert len(pending_b) == 2 and sorted(p.stem for p in (outbox / "sent").glob("*.dcm")) == sent_a

    orthanc.start()  # back, with what it had; a new process delivers what waited
    send = sifluoro_command("outbox", "send", "--outbox", outbox, "--pacs", pacs)
    assert send.wait() == 0, send.stderr()
    assert "0 pending, 0 refused" in send.stdout
    assert not list((outbox / "pending").glob("*.dcm"))
    assert sorted(_stored(orthanc)) == sorted(sent_a + pending_b)


@pytest.mark.parametrize("args, message", [
    (["--pacs", "ORTHANC@127.0.0.1:4242"], "the following arguments are required: --outbox"),
    (["--outbox", "OUT", "--pacs", "ORTHANC-4242"], "AE_TITLE@HOST:PORT"),
])
def test_export_arguments_are_checked(tmp_path, capsys, args, message):
    from sifluoro.cli import main

    study = needle_study(tmp_path / "s", frames_per_run=(2,), size=64)
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    try:
        code = main(["export", str(study), *args])
    except SystemExit as exc:  # argparse's own check of a required option
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def _export(tmp_path, capsys, folder, *extra):
    from sifluoro.cli import main

    code = main(["export", str(folder), "--outbox", str(tmp_path / "outbox"), "--stages", "none",
                 "-q", *extra])
    return code, capsys.readouterr(), sorted((tmp_path / "outbox" / "pending").glob("*.dcm"))


def test_an_odd_source_header_still_gives_the_rdsr_and_its_key_frames(tmp_path, capsys):
    """PatientSex 'U' (not a DICOM value; highdicom refuses it) is left empty on the key frames,
    and a single-component patient name (highdicom warns, quoting it) is not printed."""
    from tests.dicom_fixtures import RunSpec, write_study

    for path in write_study(tmp_path / "in", [RunSpec(0.0), RunSpec(5.0)],
                            patient_name="SMITHERSON"):
        ds = pydicom.dcmread(path)
        ds.PatientSex = "U"
        ds.save_as(path)
    code, out, pending = _export(tmp_path, capsys, tmp_path / "in")
    assert code == 0, out.err
    classes = [pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID for p in pending]
    assert classes.count(RDSR) == 1 and classes.count(SC) >= 2
    assert "SMITHERSON" not in out.err + out.out


@pytest.mark.parametrize("keyword,value", [("PatientBirthDate", "00000000"),
                                           ("PatientBirthDate", "19500000"),
                                           ("StudyDate", "2026-01-05"), ("StudyTime", "10:30:00")])
def test_a_date_or_time_highdicom_refuses_is_left_empty_on_the_key_frames(tmp_path, capsys,
                                                                         keyword, value):
    """Every key frame failed on an invalid Type 2 date or time of the source (review s10 A#8);
    the value is never printed."""
    from tests.dicom_fixtures import RunSpec, write_study

    for path in write_study(tmp_path / "in", [RunSpec(0.0), RunSpec(5.0)]):
        ds = pydicom.dcmread(path)
        setattr(ds, keyword, value)
        ds.save_as(path)
    code, out, pending = _export(tmp_path, capsys, tmp_path / "in")
    assert code == 0, out.err
    keys = [pydicom.dcmread(p, stop_before_pixels=True) for p in pending]
    keys = [k for k in keys if k.SOPClassUID == SC]
    assert len(keys) >= 2 and all(str(k.get(keyword, "")) == "" for k in keys)
    assert value not in out.err + out.out


def test_a_key_frame_that_cannot_be_made_loses_only_itself(tmp_path, capsys, monkeypatch):
    from sifluoro.plugin import keyframes
    from tests.dicom_fixtures import RunSpec, write_study

    write_study(tmp_path / "in", [RunSpec(0.0), RunSpec(5.0)])
    made = keyframes.key_frame_sc
    calls = []

    def failing(key, ref, **kw):
        calls.append(key)
        if len(calls) == 1:
            raise ValueError("an attribute highdicom refuses")
        return made(key, ref, **kw)

    monkeypatch.setattr(keyframes, "key_frame_sc", failing)
    code, out, pending = _export(tmp_path, capsys, tmp_path / "in")
    assert code == 1 and "1 item(s) could not be made: key frame 1" in out.err
    classes = [pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID for p in pending]
    assert classes.count(RDSR) == 1 and classes.count(SC) == len(calls) - 1 >= 1


def test_a_study_the_devices_rdsr_covers_queues_no_second_rdsr(tmp_path, capsys):
    """The C-arm sends its own RDSR to the PACS; sifluoro's copy of the same exposures (other
    event UIDs) beside it would be counted twice by a dose registry there. A run the device's
    report does not cover still gets sifluoro's RDSR."""
    from sifluoro.replay import replay
    from tests.dicom_fixtures import RunSpec, write_study

    write_study(tmp_path / "in", [RunSpec(0.0, n_frames=3), RunSpec(15.0, n_frames=3)])
    replay([tmp_path / "in"], events_path=tmp_path / "e.jsonl", summary_path=tmp_path / "s.json",
           rdsr_path=tmp_path / "device.dcm", stages=[])
    device = pydicom.dcmread(tmp_path / "device.dcm")
    device.SoftwareVersions = "VC21C"  # the C-arm's own report, not sifluoro's
    device.save_as(tmp_path / "in" / "device.dcm")
    code, out, pending = _export(tmp_path, capsys, tmp_path / "in")
    assert code == 0, out.err
    classes = [pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID for p in pending]
    assert classes.count(RDSR) == 0 and classes.count(SC) >= 2

    write_study(tmp_path / "in", [RunSpec(30.0, n_frames=3, filename="late_run.dcm")],
                study_uid=device.StudyInstanceUID)
    shutil.rmtree(tmp_path / "outbox")
    code, out, pending = _export(tmp_path, capsys, tmp_path / "in")
    assert code == 0, out.err
    classes = [pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID for p in pending]
    assert classes.count(RDSR) == 1


def test_export_of_nothing_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, pending = _export(tmp_path, capsys, tmp_path / "empty")
    assert code == 2 and pending == []


@pytest.mark.parametrize("command_name", ["serve-igtl", "export"])
def test_ctrl_c_ends_the_command_at_once_while_the_outbox_waits_for_a_silent_pacs(
        tmp_path, sifluoro_command, command_name):
    """A PACS that takes the connection and never answers: the command waits for the sender's
    retries after the study, but one SIGINT ends that wait; what was not sent stays pending.
    The stop took ~12 s in serve-igtl (the sender's 10 s join: pynetdicom's abort does not
    wake a pending association request; 26 s under load), and export did not end at all
    (a KeyboardInterrupt in the main thread, pynetdicom's non-daemon thread still waiting).
    Now the connection is cut and the command ends in about a second; 9 s stays under the
    old join and leaves room for a loaded machine."""
    import signal
    import socket
    import subprocess
    import time

    study = needle_study(tmp_path / "s", frames_per_run=(3,), size=64)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(50)
        extra = ["--port", "0", "--fps", "30"] if command_name == "serve-igtl" else []
        command = sifluoro_command(command_name, study, *extra, "--stages", "none", "-q",
                                   "--outbox", tmp_path / "outbox", "--pacs",
                                   f"PACS@127.0.0.1:{silent.getsockname()[1]}", "--retries", "9")
        silent.settimeout(300)
        held, _ = silent.accept()  # the sender is now stuck on the silent PACS (not a sleep:
        with held:                 # under load it had not connected yet after 1 s)
            time.sleep(0.3)        # inside pynetdicom's wait for the answer
            t0 = time.monotonic()
            command.proc.send_signal(signal.SIGINT)
            try:
                code = command.wait(60)
            except subprocess.TimeoutExpired:
                code = None
            stopped_s = time.monotonic() - t0
    assert code == 3, command.stderr()[-2000:]  # LEFT_IN_OUTBOX, reported
    assert stopped_s < 9.0 and "2 pending" in command.stdout
    assert len(list((tmp_path / "outbox" / "pending").glob("*.dcm"))) == 2  # key frame + RDSR


def test_an_rdsr_that_cannot_be_made_loses_only_itself(tmp_path, capsys, monkeypatch):
    from sifluoro.plugin import keyframes
    from tests.dicom_fixtures import RunSpec, write_study

    write_study(tmp_path / "in", [RunSpec(0.0), RunSpec(5.0)])

    def failing(*args, **kwargs):
        raise ValueError("a header value the RDSR writer refuses")

    monkeypatch.setattr(keyframes, "write_rdsr", failing)
    code, out, pending = _export(tmp_path, capsys, tmp_path / "in")
    assert code == 1 and "RDSR: ValueError" in out.err
    classes = [pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID for p in pending]
    assert RDSR not in classes and classes.count(SC) >= 2


def test_a_study_stopped_part_way_queues_no_rdsr_and_says_so(tmp_path, sifluoro_command):
    """One Ctrl-C during serve-igtl: the study end wrote an RDSR of the frames so far, which
    the PACS took for the procedure's dose report, and the command exited 0 (review s10 A#4)."""
    import json
    import signal
    import time

    study = needle_study(tmp_path / "s", frames_per_run=(40, 40), size=64)
    command = sifluoro_command("serve-igtl", study, "--port", "0", "--fps", "10", "--stages",
                               "none", "-q", "--outbox", tmp_path / "outbox", "--summary",
                               tmp_path / "summary.json", "--events", tmp_path / "e.jsonl")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # a few frames at 10 frames/s, far from the 80
        if (tmp_path / "e.jsonl").exists() and len((tmp_path / "e.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    command.proc.send_signal(signal.SIGINT)
    assert command.wait() == 4
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ended_early"] and 0 < summary["frames"] < 80
    classes = [pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID
               for p in (tmp_path / "outbox" / "pending").glob("*.dcm")]
    assert RDSR not in classes
    # nor key frames, and the console says so (user review s20 I5)
    assert classes == []
    assert "stopped before its end" in command.log_path.read_text() and \
        "no RDSR nor key frames were queued" in command.log_path.read_text()


@pytest.mark.parametrize("option", ["--events", "--summary"])
def test_a_full_disk_for_the_events_or_summary_keeps_the_study_and_its_rdsr(tmp_path, capsys,
                                                                              option):
    """``--events`` on a disk that fills: the study end was aborted and no RDSR queued; the
    same for ``--summary`` until review s23 #2 (written before the sinks' end, the error
    skipped it and named no file)."""
    from pathlib import Path

    from tests.dicom_fixtures import RunSpec, write_study

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    write_study(tmp_path / "in", [RunSpec(0.0), RunSpec(5.0)])
    code, out, pending = _export(tmp_path, capsys, tmp_path / "in", option, "/dev/full")
    what = option.lstrip("-")
    assert code == 1 and f"{what} not written: /dev/full" in out.err  # said, and not 0 (C#5)
    classes = [pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID for p in pending]
    assert classes.count(RDSR) == 1


def test_a_study_whose_frames_were_all_lost_still_queues_its_rdsr(tmp_path, capsys):
    """The only run cut short before its first whole frame: its exposure is in the header,
    and replay writes it to the RDSR; export queued nothing."""
    from sifluoro.dose.rdsr_read import read_rdsr
    from tests.dicom_fixtures import RunSpec, write_study

    (path,) = write_study(tmp_path / "in", [RunSpec(0.0, n_frames=5, size=64)])
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 5 * 64 * 64 * 2 + 64 * 64])  # half of frame 1
    code, out, pending = _export(tmp_path, capsys, tmp_path / "in")
    assert code == 2  # no frame to guide
    (report,) = [read_rdsr(p) for p in pending]
    assert len(report.events) == 1 and report.events[0].dap_gycm2 > 0


def test_a_run_of_unknown_dose_the_device_report_misses_still_gets_an_rdsr(tmp_path):
    """A run the device's report does not name, whose header gives no dose and no technique:
    its dose source 'none' was left out of the study's, which read 'rdsr', and its fluoroscopy
    time reached the PACS in no report (review s11 B#10)."""
    from sifluoro.acquire.dicom_reader import iter_frames, read_study
    from sifluoro.config import DoseSettings
    from sifluoro.dose.accumulate import DoseAccumulator
    from sifluoro.dose.records import FLUOROSCOPY, IrradiationEvent, StudyDose
    from sifluoro.model import Device
    from sifluoro.plugin.keyframes import export_study
    from sifluoro.plugin.outbox import Outbox
    from tests.dicom_fixtures import RunSpec, technique, write_study

    write_study(tmp_path / "s", [RunSpec(0.0, n_frames=3), RunSpec(
        10.0, n_frames=4, tech=technique(kvp=None, tube_current_ma=None))])
    study = read_study([tmp_path / "s"])
    named, _ = study.runs
    for covered in (True, False):
        dose = DoseAccumulator(DoseSettings())
        dose.use_report(StudyDose(study.study_instance_uid, "rdsr", Device(), (IrradiationEvent(
            "1.2.3", FLUOROSCOPY, dap_gycm2=1.0, air_kerma_mgy=5.0, dose_source="rdsr",
            sop_instance_uids=(named.sop_instance_uid,)),), ()), study.runs)
        for frame in iter_frames(study, []):
            if covered and frame.run is not named:
                continue
            dose.add(frame)
        outbox = Outbox(tmp_path / f"outbox-{covered}")
        queued = export_study(outbox, study, dose, [])
        assert len(queued) == (0 if covered else 1)


def test_a_mixed_export_leaves_the_devices_events_to_the_devices_report(tmp_path):
    """Run 1's dose is the device report's, run 2's estimated. sifluoro's RDSR carried the
    device's events under the device's UIDs, rewritten with less content (a rotational
    acquisition as stationary, pulsed fluoroscopy as continuous, another start time): one
    Irradiation Event UID, two descriptions (review s12 #5). Now it holds run 2 alone, says in
    a Comment that the device's events are in the device's report, and shares no event UID."""
    from pathlib import Path

    from sifluoro.acquire.dicom_reader import read_study
    from sifluoro.config import Settings
    from sifluoro.dose.accumulate import accumulate_study
    from sifluoro.dose.rdsr_read import read_rdsr
    from sifluoro.dose.summary import device_report, summarize
    from sifluoro.plugin.keyframes import export_study
    from sifluoro.plugin.outbox import Outbox
    from tests.dose.rdsr_fixtures import Ev, acquired, build_rdsr, save
    from tests.dicom_fixtures import RunSpec, write_study
    from tests.dose.test_report_cover import started

    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(30.0, n_frames=3)])
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    events = [Ev(fluoro=False, dap_gycm2=1.0, rp_mgy=10.0,
                 extra=[acquired(first.SOPInstanceUID, first.SOPClassUID)]),
              Ev(dap_gycm2=400.0, rp_mgy=6000.0, pulses=9000, extra=[started(100.0)])]  # not run 2
    path = save(build_rdsr(events, study_uid=first.StudyInstanceUID), tmp_path / "study" / "rdsr.dcm")
    study = read_study([tmp_path / "study"])
    dose = accumulate_study(study, Settings().dose, report=device_report(study, []))
    assert dose.totals.sources == {"rdsr", "estimated"}
    (queued,) = export_study(Outbox(tmp_path / "outbox"), study, dose, [])
    mine, device = read_rdsr(queued), read_rdsr(path)
    (own,) = mine.events
    assert own.event_uid not in {e.event_uid for e in device.events}
    assert own.sop_instance_uids == (study.runs[1].sop_instance_uid,)
    assert mine.air_kerma_mgy == pytest.approx(own.air_kerma_mgy)
    ds = pydicom.dcmread(queued)
    (comment,) = [i.TextValue for i in ds.ContentSequence
                  if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert "2 irradiation event(s) are in that report" in comment
    # both reports together: each exposure once
    (tmp_path / "both").mkdir()
    for name, p in (("mine.dcm", queued), ("device.dcm", path)):
        (tmp_path / "both" / name).write_bytes(Path(p).read_bytes())
    studies, _ = summarize([tmp_path / "both"])
    assert studies[0].air_kerma_mgy == pytest.approx(6010.0 + own.air_kerma_mgy)
