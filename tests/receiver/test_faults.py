"""What the receiver refuses, with which status, and that it stays up afterwards.

A pynetdicom client sends what DCMTK would not (hostile UIDs, mismatched classes, garbage),
and raw sockets send broken PDUs. After each fault ``echoscu`` must still succeed.
"""
from __future__ import annotations

import copy
import errno
import json
import os
import re
import signal
import socket
import struct
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    XRayAngiographicImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import XRayRadiationDoseSRStorage, XRayRadiofluoroscopicImageStorage

from sifluoro.replay import replay
from tests.dicom_fixtures import RunSpec, as_device_report, write_study
from tests.dose.rdsr_fixtures import Ev, build_rdsr
from tests.receiver.helpers import (
    AE_TITLE,
    ECHOSCU,
    STORESCU,
    dataset_bytes,
    echoscu,
    file_uids,
    needs_dcmtk,
    spooled,
    storescu,
    summary_frames,
    wait_for,
)

pytestmark = needs_dcmtk


def _associate(port: int, *, aet: str = "PYSCU", contexts=None):
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in contexts or (XRayAngiographicImageStorage,):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    return assoc


def send(port: int, items, **kw) -> list[tuple[int | None, str]]:
    """C-STORE each dataset (or file path) on one association: [(status, error comment)]."""
    assoc = _associate(port, **kw)
    out = []
    try:
        for item in items:
            rsp = assoc.send_c_store(item)
            out.append((rsp.get("Status"), str(rsp.get("ErrorComment", ""))))
    finally:
        assoc.release()
    return out


def assert_still_up(port: int) -> None:
    echo = echoscu(port)
    assert echo.returncode == 0, echo.stdout + echo.stderr


@pytest.fixture
def study_files(tmp_path):
    return write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(3.0, n_frames=2),
                                            RunSpec(6.0, n_frames=2)])


def test_calling_ae_not_allowed_and_wrong_called_ae_are_rejected(start_receiver, study_files):
    receiver = start_receiver(None, "--allow-ae", "CARM1", "--allow-ae", "ROUTER")
    refused = echoscu(receiver.port, aet="INTRUDER")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stdout + refused.stderr
    misdirected = subprocess.run([ECHOSCU, "-aet", "CARM1", "-aec", "OTHER_SCP", "127.0.0.1",
                                  str(receiver.port)], capture_output=True, text=True, timeout=60)
    assert misdirected.returncode != 0
    assert echoscu(receiver.port, aet="CARM1").returncode == 0
    sent = storescu(receiver.port, study_files[:1], "-xe", aet="ROUTER")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert len(list(receiver.spool.rglob("*.dcm"))) == 1


def test_hostile_and_invalid_uids_are_refused_and_never_used_as_paths(tmp_path, start_receiver,
                                                                      study_files):
    receiver = start_receiver()
    good = pydicom.dcmread(study_files[0])
    evil_sop = copy.deepcopy(good)
    evil_sop.SOPInstanceUID = "../../evil"
    evil_study = copy.deepcopy(good)
    evil_study.SOPInstanceUID = generate_uid()
    evil_study.StudyInstanceUID = "../../../evil_study"
    too_long = copy.deepcopy(good)
    too_long.SOPInstanceUID = generate_uid()
    too_long.StudyInstanceUID = "1." + "2" * 70  # pynetdicom checks the command's UIDs, not these
    statuses = send(receiver.port, [evil_sop, evil_study, too_long, good])
    assert [s for s, _ in statuses] == [0xC001, 0xC001, 0xC001, 0x0000]
    assert statuses[1][1] == "invalid UID in (0020,000D) StudyInstanceUID"
    assert not [p for p in tmp_path.rglob("*evil*")]
    assert sorted(p.name for p in receiver.spool.iterdir()) == [".lock",  # the receiver's flock
                                                                str(good.StudyInstanceUID)]
    assert_still_up(receiver.port)


def test_mismatched_unparseable_unusable_and_oversized_instances(tmp_path, start_receiver,
                                                                 study_files, monkeypatch):
    receiver = start_receiver(None, "--max-instance-mb", "0.2")
    folder = tmp_path / "crafted"
    folder.mkdir()
    # chunked sending takes class and instance from the file meta and sends the dataset raw
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    mismatch = folder / "mismatch.dcm"
    ds = pydicom.dcmread(study_files[0])
    ds.SOPClassUID = XRayRadiofluoroscopicImageStorage  # the file meta still says XA
    ds.save_as(mismatch)
    garbage = folder / "garbage.dcm"
    raw = Path(study_files[1]).read_bytes()
    body = dataset_bytes(study_files[1])
    garbage.write_bytes(raw[:len(raw) - len(body)] + b"\x08\x00\x18\x00UI\xff\xff" + os.urandom(64))
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)

    no_pixels = pydicom.dcmread(study_files[2])
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = generate_uid()
    big_path = write_study(tmp_path / "big", [RunSpec(0.0, n_frames=2, size=256)])[0]
    big = pydicom.dcmread(big_path)

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    raw_statuses = send(receiver.port, [mismatch, garbage])
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    statuses = send(receiver.port, [no_pixels, big])
    assert [s for s, _ in raw_statuses] == [0xA900, 0xC000]
    assert [s for s, _ in statuses] == [0xC002, 0xA700]
    assert "PixelData" in statuses[0][1]
    assert "max-instance-mb" in statuses[1][1]
    assert not list(receiver.spool.rglob("*.dcm")) and not list(receiver.spool.rglob(".*.part"))
    assert_still_up(receiver.port)
    log = receiver.log()
    assert "refused" in log and "(7FE0,0010) PixelData" in log


def _without_timing(ds):
    del ds.FrameTime
    del ds.FrameIncrementPointer


def _signed(ds):
    ds.PixelRepresentation = 1


@pytest.mark.parametrize("edit, reason", [
    (_without_timing, "(0018,1063) FrameTime: 2 frames but no usable frame timing"),
    (_signed, "(0028,0103) PixelRepresentation: signed pixel data")])  # review s15 H2
def test_a_run_without_frame_timing_is_stored_and_its_dose_counted_as_lost(start_receiver,
                                                                           study_files, edit,
                                                                           reason):
    """Its frames cannot be placed in time (or their values read), so none is shown, but they
    were exposed: the instance is stored (as the folder reader takes it), listed as rejected
    saying why, and its dose counted with the lost frames rather than refused with it."""
    receiver = start_receiver()
    image = pydicom.dcmread(study_files[0])
    no_timing = pydicom.dcmread(study_files[1])
    edit(no_timing)
    statuses = send(receiver.port, [image, no_timing])
    assert [s for s, _ in statuses] == [0, 0]
    summary_path = receiver.spool / str(image.StudyInstanceUID) / "summary.json"
    wait_for(lambda: summary_path.exists()
             and json.loads(summary_path.read_text())["instances"] == 2)
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 3 and summary["lost_frames"]["frames"] == 2
    assert summary["lost_frames"]["air_kerma_mgy"] > 0
    [rejected] = summary["rejected_files"]
    assert rejected["reason"].startswith(reason), rejected
    assert_still_up(receiver.port)


def test_dose_report_is_stored_and_listed(tmp_path, start_receiver, study_files):
    receiver = start_receiver()
    image = pydicom.dcmread(study_files[0])
    sr = build_rdsr([Ev()], study_uid=image.StudyInstanceUID)
    statuses = send(receiver.port, [image, sr],
                    contexts=(XRayAngiographicImageStorage, XRayRadiationDoseSRStorage))
    assert [s for s, _ in statuses] == [0, 0]
    summary_path = receiver.spool / str(image.StudyInstanceUID) / "summary.json"
    wait_for(lambda: summary_path.exists()
             and json.loads(summary_path.read_text())["dose_reports"])
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 3
    assert summary["dose_reports"] == [str(spooled(receiver.spool, str(image.StudyInstanceUID),
                                                   str(sr.SOPInstanceUID)))]


@pytest.mark.parametrize("sop_class", [EnhancedSRStorage, ComprehensiveSRStorage,
                                       Comprehensive3DSRStorage], ids=lambda c: c.name)
def test_a_dose_report_sent_as_another_sr_class_gives_the_study_its_dose(tmp_path, start_receiver,
                                                                         sop_class):
    """Older devices send their dose report as Enhanced/Comprehensive (3D) SR: the reader of a
    folder takes it, so the receiver does (DCMTK storescu), and its doses are the study's."""
    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(15.0, n_frames=3)])
    estimated = replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl",
                       summary_path=tmp_path / "s.json", rdsr_path=tmp_path / "mine.dcm",
                       stages=[]).summary
    report = as_device_report(tmp_path / "mine.dcm", tmp_path / "device.dcm")
    report.SOPClassUID = report.file_meta.MediaStorageSOPClassUID = sop_class
    report.save_as(tmp_path / "device.dcm")
    receiver = start_receiver()
    for path in [*paths, tmp_path / "device.dcm"]:
        sent = storescu(receiver.port, [path], "-R")  # propose the file's own class
        assert sent.returncode == 0 and "Failed" not in sent.stdout + sent.stderr, sent.stderr
    summary_path = receiver.spool / str(report.StudyInstanceUID) / "summary.json"
    wait_for(lambda: summary_path.exists()
             and json.loads(summary_path.read_text())["dose_reports"])
    summary = json.loads(summary_path.read_text())
    assert summary["study_dose"]["dose_source"] == "rdsr" and summary["rejected_files"] == []
    assert summary["study_dose"]["dap_gycm2"] == pytest.approx(1.5 * estimated["dap_gycm2"],
                                                               rel=1e-6)
    assert_still_up(receiver.port)


def test_an_sr_that_is_not_a_dose_report_is_refused_saying_so(start_receiver, study_files):
    receiver = start_receiver()
    sr = build_rdsr([Ev()], study_uid=pydicom.dcmread(study_files[0]).StudyInstanceUID,
                    sop_class=ComprehensiveSRStorage)
    sr.ConceptNameCodeSequence[0].CodeValue = "18748-4"  # a diagnostic imaging report
    sr.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    [(status, comment)] = send(receiver.port, [sr], contexts=(ComprehensiveSRStorage,))
    assert status == 0xC002 and "not a dose report" in comment, comment
    assert not list(receiver.spool.rglob("*.dcm"))
    assert "(DCM,113701)" in receiver.log()
    assert_still_up(receiver.port)


def test_spool_quota_answers_out_of_resources_and_corrupts_nothing(start_receiver, study_files):
    sizes = [p.stat().st_size for p in study_files]
    quota_mb = (sizes[0] + sizes[1] + sizes[2] / 2) / 2**20  # room for two instances and a half
    receiver = start_receiver(None, "--spool-quota-mb", f"{quota_mb:.6f}")
    statuses = send(receiver.port, [pydicom.dcmread(p) for p in study_files])
    assert [s for s, _ in statuses] == [0, 0, 0xA700]
    assert "quota" in statuses[2][1]
    # the live pipeline writes its state atomically too: look once it has finished
    wait_for(lambda: summary_frames(receiver.spool / file_uids(study_files[0])[0]
                                    / "summary.json") == 5)
    _check_spool_intact(receiver.spool, study_files[:2])
    assert_still_up(receiver.port)
    # the study is sent on and its folder deleted, as the refusal asks: room again, and the
    # folder is made again (both held until the receiver restarted; review s10 A#5, A#10)
    import shutil
    import time

    shutil.rmtree(receiver.spool / file_uids(study_files[0])[0])
    time.sleep(5.0)  # spool.REMEASURE_S: a refusal counts the files again at most this often
    again = send(receiver.port, [pydicom.dcmread(study_files[2])])
    assert [s for s, _ in again] == [0], again
    assert dataset_bytes(spooled(receiver.spool, *file_uids(study_files[2]))) == dataset_bytes(study_files[2])


def _check_spool_intact(spool: Path, sent: list[Path]) -> None:
    stored = sorted(spool.rglob("*.dcm"))
    assert len(stored) == len(sent)
    for path in sent:
        assert dataset_bytes(spooled(spool, *file_uids(path))) == dataset_bytes(path)
    # the live pipeline writes the study's state after its summary, also through a temporary
    # file: none may be left once it is done (looking right after the summary raced it)
    wait_for(lambda: not list(spool.rglob(".*.part")))


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 192 KiB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs",
                                            str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here; the quota test covers out-of-resources")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_answers_out_of_resources_and_corrupts_nothing(tmp_path, tiny_tmpfs,
                                                                 start_receiver):
    specs = [RunSpec(float(k), n_frames=4) for k in range(8)]  # ~33 KiB each: the 6th does not fit
    paths = write_study(tmp_path / "study", specs)
    receiver = start_receiver(tiny_tmpfs / "spool", "--events", str(tmp_path / "events.jsonl"),
                              "--summary", str(tmp_path / "summary.json"))
    statuses = [s for s, _ in send(receiver.port, [pydicom.dcmread(p) for p in paths])]
    n_ok = statuses.index(0xA700)
    assert 0 < n_ok and set(statuses[n_ok:]) == {0xA700}
    assert set(statuses[:n_ok]) == {0}
    wait_for(lambda: summary_frames(tmp_path / "summary.json") == 4 * n_ok)
    _check_spool_intact(receiver.spool, paths[:n_ok])
    assert_still_up(receiver.port)
    code = receiver.terminate()
    assert code == 0, receiver.log()[-3000:]  # stderr: why it failed (seen once under load)


def _fill(mount: Path) -> None:
    """Write a file on ``mount`` until the file system is full."""
    with open(mount / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 1024)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e


def test_disk_full_with_the_events_in_the_spool_stops_cleanly(tmp_path, tiny_tmpfs,
                                                               start_receiver):
    """The default layout: events and summaries on the full disk too. Their writes fail
    (logged); the receiver answers, stays up and stops on SIGTERM (a worker once died on the
    events' fsync and the drain waited for ever), with exit status 1 to say outputs are
    missing."""
    paths = write_study(tmp_path / "study", [RunSpec(float(k), n_frames=4) for k in range(8)])
    receiver = start_receiver(tiny_tmpfs / "spool")
    statuses = [s for s, _ in send(receiver.port, [pydicom.dcmread(p) for p in paths])]
    assert 0xA700 in statuses and statuses[0] == 0
    # the refused instance's partial file is removed, which may leave room for a few small
    # writes (it did, now and then): fill what is left so the summary's write at the end fails
    _fill(tiny_tmpfs)
    assert_still_up(receiver.port)
    assert receiver.terminate() == 1
    assert "writes failed" in receiver.log()


def test_garbage_on_the_wire_does_not_take_the_server_down(start_receiver, study_files):
    receiver = start_receiver()
    # junk instead of an association request
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as s:
        s.sendall(os.urandom(512))
    # a P-DATA-TF claiming far more bytes than follow, then the connection drops
    assoc = _associate(receiver.port)
    assoc.dul.socket.socket.sendall(b"\x04\x00" + struct.pack(">I", 0x7FFFFFF0) + b"\x00" * 100)
    assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)
    assoc.abort()
    # a P-DATA-TF whose PDV item length runs past the PDU
    assoc = _associate(receiver.port)
    assoc.dul.socket.socket.sendall(b"\x04\x00" + struct.pack(">I", 10) + struct.pack(">I", 5000)
                                    + b"\x01\x03" + b"\x00" * 4)
    wait_for(lambda: not assoc.is_established, timeout_s=30)
    # an unknown PDU type on a fresh association
    assoc = _associate(receiver.port)
    assoc.dul.socket.socket.sendall(b"\x09\x00" + struct.pack(">I", 4) + b"\x00" * 4)
    wait_for(lambda: not assoc.is_established, timeout_s=30)

    assert receiver.proc.poll() is None
    assert_still_up(receiver.port)
    sent = storescu(receiver.port, study_files, "-xe")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_for(lambda: summary_frames(receiver.spool / file_uids(study_files[0])[0]
                                    / "summary.json") == 7)
    assert receiver.terminate() == 0


def test_max_associations_rejects_the_extra_one(start_receiver):
    receiver = start_receiver(None, "--max-associations", "1")
    first = _associate(receiver.port)
    try:
        extra = echoscu(receiver.port)
        assert extra.returncode != 0
        assert "Association Rejected" in extra.stdout + extra.stderr
    finally:
        first.release()
    wait_for(lambda: echoscu(receiver.port).returncode == 0, timeout_s=60)


def test_sigterm_drains_open_association_and_pipelines(tmp_path, start_receiver):
    specs = [RunSpec(float(k), n_frames=6, size=256) for k in range(8)]
    paths = write_study(tmp_path / "study", specs)
    # the drain waits for the open association: its 30 s default is not promised on a loaded
    # machine (a drain that does not wait aborts the sender at once all the same)
    receiver = start_receiver(None, "--drain-timeout-s", "300")
    sender = subprocess.Popen([STORESCU, "-aet", "CARM", "-aec", AE_TITLE, "-xe", "127.0.0.1",
                               str(receiver.port), *map(str, paths)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: list(receiver.spool.rglob("*.dcm")), timeout_s=30, interval_s=0.005)
        assert receiver.terminate() == 0
        out, _ = sender.communicate(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
    assert sender.returncode == 0, out
    study_uid = file_uids(paths[0])[0]
    summary = json.loads((receiver.spool / study_uid / "summary.json").read_text())
    assert summary["frames"] == 6 * len(specs)
    state = json.loads((receiver.spool / study_uid / "state.json").read_text())
    assert state["finished"] and state["processed"] == len(specs)
    assert b"stopped" in receiver.stdout
    assert np.all([dataset_bytes(spooled(receiver.spool, study_uid, file_uids(p)[1]))
                   == dataset_bytes(p) for p in paths])


def test_a_second_sigint_ends_a_drain_at_once_and_the_spool_opens_again(tmp_path,
                                                                         start_receiver,
                                                                         study_files):
    """Review s22: the drain (here held by an association left open, for up to 300 s) ignored
    every further signal, so an operator's second Ctrl-C did nothing."""
    receiver = start_receiver(None, "--drain-timeout-s", "300")
    assoc = _associate(receiver.port)
    try:
        assert assoc.send_c_store(pydicom.dcmread(study_files[0])).Status == 0
        receiver.proc.send_signal(signal.SIGINT)
        wait_for(lambda: "draining" in receiver.log(), timeout_s=30)
        receiver.proc.send_signal(signal.SIGINT)
        assert receiver.proc.wait(timeout=30) == 130
    finally:
        assoc.abort()
    assert "second signal" in receiver.log()
    again = start_receiver()  # the spool's lock went with the process
    assert again.terminate() == 0


def _receive(spool: Path, port: int) -> subprocess.CompletedProcess:
    import sys

    from tests.receiver.helpers import REPO

    return subprocess.run([sys.executable, "-m", "sifluoro.acquire.receiver", "--host",
                           "127.0.0.1", "--port", str(port), "--spool", str(spool),
                           "--ae-title", AE_TITLE],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_a_receiver_that_cannot_start_touches_no_spool(tmp_path, start_receiver, study_files):
    """A second receiver on a spool in use exits 2 at once; one whose port is taken exits 2
    before it resumes the spool's unfinished study (it had processed part of it first)."""
    from sifluoro.acquire.spool import Spool
    from tests.receiver.helpers import free_port

    first = start_receiver(tmp_path / "spool")
    in_flight = tmp_path / "spool" / "1.2.3" / ".1.2.3.4.abc.part"  # an instance being written
    in_flight.parent.mkdir()
    in_flight.write_bytes(b"\0" * 100)
    second = _receive(tmp_path / "spool", free_port())
    assert second.returncode == 2 and "in use by another receiver" in second.stderr
    assert in_flight.exists()
    assert first.terminate() == 0

    spool = Spool(tmp_path / "unfinished")
    study_uid, sop_uid = file_uids(study_files[0])
    spool.commit(spool.write_temp(study_uid, sop_uid, study_files[0].read_bytes()),
                 study_uid, sop_uid)
    state = spool.load_state(study_uid)
    state.received.append(sop_uid)
    spool.save_state(state)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        blocked = _receive(tmp_path / "unfinished", taken.getsockname()[1])
    assert blocked.returncode == 2 and "cannot start the receiver" in blocked.stderr
    assert spool.load_state(study_uid).processed == 0
    assert not (spool.study_dir(study_uid) / "events.jsonl").exists()


def test_a_quota_recount_between_a_commit_and_its_settle_counts_the_file_once(tmp_path, monkeypatch):
    """One association has renamed its instance into place but not yet settled it when another
    one's refusal recounts the spool: the file was counted by the recount and again at settle,
    and instances that fit were refused until the next recount (review s10 C#6)."""
    import sifluoro.acquire.spool as spool_module

    monkeypatch.setattr(spool_module, "REMEASURE_S", 0.0)
    spool = spool_module.Spool(tmp_path / "spool", quota_bytes=10_000)
    data = b"x" * 4000
    spool.reserve(len(data))
    spool.commit(spool.write_temp("1.2.3", "1.2.3.4", data), "1.2.3", "1.2.3.4")
    with pytest.raises(spool_module.SpoolFullError):
        spool.reserve(7000)  # 4000 + 7000 > 10000, and the recount runs now
    spool.settle(len(data), stored=True)
    assert spool.used_bytes == 4000
    spool.reserve(5000)  # fits: 4000 + 5000 <= 10000


def test_a_committed_file_taken_back_leaves_the_quota_counting_right(tmp_path, monkeypatch):
    """Review s22 F8: an instance renamed into place whose state could not be saved (a full
    disk) is removed and refused; its bytes stayed "waiting to be settled", so every later
    recount subtracted them from what is on disk: the quota counted short for good."""
    import sifluoro.acquire.spool as spool_module

    monkeypatch.setattr(spool_module, "REMEASURE_S", 0.0)
    spool = spool_module.Spool(tmp_path / "spool", quota_bytes=10_000)
    kept, taken_back = b"x" * 4000, b"y" * 3000
    spool.reserve(len(kept))
    spool.commit(spool.write_temp("1.2.3", "1.2.3.4", kept), "1.2.3", "1.2.3.4")
    spool.settle(len(kept), stored=True)
    spool.reserve(len(taken_back))
    final = spool.commit(spool.write_temp("1.2.3", "1.2.3.5", taken_back), "1.2.3", "1.2.3.5")
    spool.uncommit(final)
    spool.settle(len(taken_back), stored=False)
    assert not final.exists()
    with pytest.raises(spool_module.SpoolFullError):
        spool.reserve(7000)  # 4000 + 7000 > 10000: the recount runs now
    assert spool.used_bytes == 4000  # was 1000: the file taken back was subtracted


def _double_pixel_data(image):
    image.PixelData = image.PixelData * 2


@pytest.mark.parametrize("damage", [_double_pixel_data, lambda image: delattr(image, "Rows")],
                         ids=["pixel data twice its header's size", "no Rows"])
def test_an_image_whose_frames_cannot_be_cut_is_stored_with_its_dose(start_receiver, study_files,
                                                                     damage):
    """Review s16 H1 (pixel data twice the bytes the header gives) and user review s18 F9 (no
    Rows): answered 0xC002 and not stored, so the run's exposure was lost and DCMTK's storescu
    stopped before the rest of the study. Its frames cannot be cut from the data, so none is
    shown; the instance is stored and its dose counted from the header."""
    receiver = start_receiver()
    image = pydicom.dcmread(study_files[0])
    damage(image)
    [(status, _)] = send(receiver.port, [image], contexts=(XRayAngiographicImageStorage,))
    assert status == 0
    summary_path = receiver.spool / str(image.StudyInstanceUID) / "summary.json"
    wait_for(lambda: summary_path.exists())
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] == 0 and summary["lost_frames"]["frames"] == 3
    assert summary["study_dose"]["air_kerma_mgy"] > 0


def test_a_whole_copy_sent_after_one_cut_short_is_stored_beside_it(start_receiver, study_files,
                                                                   tmp_path, monkeypatch):
    """Review s22 F2: an instance forwarded cut short inside its last frame is stored (2 of 3
    frames shown, the third lost); its whole copy, sent again, was answered Success and
    dropped as a duplicate, so the spool never held that frame. It is now kept beside the cut
    copy: the live study goes on with what it showed, a replay of the folder shows all, and a
    third copy is a duplicate."""
    receiver = start_receiver()
    whole = Path(study_files[0])
    study_uid, sop_uid = file_uids(whole)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole.read_bytes()[:-3000])  # inside frame 3 of 3
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes as they are
    assert send(receiver.port, [cut]) == [(0, "")]
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    summary_path = receiver.spool / study_uid / "summary.json"
    wait_for(lambda: summary_path.exists())

    for resent in (1, 2):  # the whole copy, stored; then again, a duplicate
        done = storescu(receiver.port, [whole])
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: json.loads(summary_path.read_text())["duplicates"] == resent - 1
                 and json.loads(summary_path.read_text())["whole_copies"] == 1)
    done = storescu(receiver.port, study_files[1:])
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(lambda: json.loads(summary_path.read_text())["instances"] == 3)

    summary = json.loads(summary_path.read_text())
    assert (summary["frames"], summary["lost_frames"]["frames"]) == (2 + 2 + 2, 1)
    kept = spooled(receiver.spool, study_uid, sop_uid).with_suffix(".whole.dcm")
    assert pydicom.dcmread(kept).PixelData == pydicom.dcmread(whole).PixelData
    state = json.loads((receiver.spool / study_uid / "state.json").read_text())
    assert state["whole_copies"] == 1 and len(state["received"]) == 3
    assert "kept as" in receiver.log()
    replayed = replay([receiver.spool / study_uid], events_path=tmp_path / "e.jsonl",
                      summary_path=tmp_path / "s.json", stages=[]).summary
    assert (replayed["frames"], replayed["lost_frames"]["frames"]) == (3 + 2 + 2, 0)


def test_a_run_received_that_starts_inside_the_run_before_is_not_shown(start_receiver, tmp_path):
    """As replay (tests/test_reader.py): its frames would go back in time without being out of
    order (it starts after the run before it started), breaking the events' rising t_s."""
    from sifluoro.contract import replay_output_violations

    files = write_study(tmp_path / "in", [RunSpec(0.0, n_frames=5), RunSpec(0.2),
                                          RunSpec(0.6)])
    folder, summary = _received(start_receiver(), files)
    assert [r["error"] for r in summary["rejected_files"]] == ["OverlappingRunError"]
    assert (summary["frames"], summary["lost_frames"]["frames"]) == (8, 3)
    assert replay_output_violations(folder / "events.jsonl", folder / "summary.json") == []


@pytest.mark.parametrize("derived, uid_first", [(True, False), (False, False), (False, True)],
                         ids=["derived", "re-exported", "re-exported-uid-sorting-first"])
def test_a_copy_received_after_its_run_is_stored_not_counted(start_receiver, tmp_path, derived,
                                                             uid_first):
    """A processed copy of a run (ImageType DERIVED, a new instance), or the run under other
    UIDs, sent after it: stored (Success), neither shown nor counted; the study's dose as
    without it. The one that came second is the copy, whichever UID sorts first (review s24b
    #2: a copy whose UID sorted first counted twice)."""
    from tests.test_reader import derived_copy

    files = write_study(tmp_path / "in", [RunSpec(0.0, n_frames=5), RunSpec(10.0)])
    copy = derived_copy(files[0], tmp_path / "copy.dcm", name_source=False, derived=derived,
                        uid_first=uid_first)
    _, summary = _received(start_receiver(), files + [copy])
    assert [r["error"] for r in summary["rejected_files"]] == ["CopiedRunError"]
    assert (summary["frames"], summary["lost_frames"]["frames"]) == (8, 0)
    alone = replay([tmp_path / "in"], events_path=tmp_path / "e.jsonl",
                   summary_path=tmp_path / "s.json", stages=[]).summary
    assert summary["study_dose"] == pytest.approx(alone["study_dose"])


@pytest.mark.parametrize("name_source", [True, False], ids=["naming-it", "over-its-time"])
def test_a_run_received_after_its_derived_copy_is_stored_not_counted(start_receiver, tmp_path,
                                                                     name_source):
    """A DERIVED copy sent before its run was shown and counted, and so was the run after it
    (its frames refused as overlapping, its dose counted again: session 24's leftover). The
    copy, shown first, stands for the run now: the study's dose as without the copy."""
    from tests.test_reader import derived_copy

    files = write_study(tmp_path / "in", [RunSpec(0.0, n_frames=5), RunSpec(10.0)])
    copy = derived_copy(files[0], tmp_path / "copy.dcm", name_source=name_source)
    _, summary = _received(start_receiver(), [copy] + files)
    [rejection] = summary["rejected_files"]
    run_uid, copy_uid = (pydicom.dcmread(f).SOPInstanceUID for f in (files[0], copy))
    assert rejection["error"] == "CopiedRunError" and run_uid in rejection["file"]
    assert copy_uid in rejection["reason"]  # the spool names an instance by its UID
    assert (summary["frames"], summary["lost_frames"]["frames"]) == (8, 0)
    alone = replay([tmp_path / "in"], events_path=tmp_path / "e.jsonl",
                   summary_path=tmp_path / "s.json", stages=[]).summary
    assert summary["study_dose"] == pytest.approx(alone["study_dose"])


def _received(receiver, files: list) -> tuple:
    """Send ``files`` (one study) with storescu; the study's spool folder and its summary once
    every instance is in."""
    done = storescu(receiver.port, files)
    assert done.returncode == 0, done.stdout + done.stderr
    study_uid, _ = file_uids(files[0])
    folder = receiver.spool / study_uid
    wait_for(lambda: (folder / "summary.json").exists()
             and json.loads((folder / "summary.json").read_text())["instances"] == len(files))
    return folder, json.loads((folder / "summary.json").read_text())


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_an_instance_is_received_into_a_file_not_held_in_memory(start_receiver, study_files,
                                                                tmp_path, monkeypatch):
    """Review s22: an instance was held whole in memory (pynetdicom's buffer, then a copy with
    its file meta) before --max-instance-mb could refuse it, so the peak grew by twice the
    largest instance on each association. A 120 MiB one now leaves the peak where it was."""
    receiver = start_receiver(None, "--max-instance-mb", "20")
    big = pydicom.dcmread(study_files[0])
    big.Rows = big.Columns = 1024
    big.NumberOfFrames = 60
    big.PixelData = bytes(1024 * 1024 * 2 * 60)
    path = tmp_path / "big.dcm"
    big.save_as(path)
    del big
    assert_still_up(receiver.port)
    before_mb = _peak_rss_mb(receiver.proc.pid)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # from the file
    [(status, comment)] = send(receiver.port, [path])
    assert status == 0xA700 and "max-instance-mb" in comment
    assert _peak_rss_mb(receiver.proc.pid) - before_mb < 40
    assert not list(receiver.spool.rglob("*.dcm"))


def test_an_events_or_summary_path_that_cannot_be_written_stops_the_start(tmp_path, capsys):
    """User review s18 F24: ``receive --events`` naming a place that cannot be written started,
    answered every instance success and lost every event (exit 1 only at shutdown)."""
    from sifluoro.acquire.receive_cli import main

    (tmp_path / "afile").write_text("x")
    for option in ("--events", "--summary"):
        code = main(["--port", "0", "--ae-title", "SIFLUORO", "--spool",
                     str(tmp_path / "spool"), option, str(tmp_path / "afile" / "out.json")])
        assert code == 2 and f"{option} {tmp_path / 'afile' / 'out.json'}" in capsys.readouterr().err
    assert not (tmp_path / "spool").exists()  # refused before anything was made
