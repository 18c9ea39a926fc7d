"""Interoperability with DCMTK: echoscu and storescu against the receiver as a real process.

What is compared: the dataset part of each file (everything after the file meta group). DCMTK
and the receiver each write their own file meta (implementation UID, source AE title), but the
dataset bytes are what travelled over the network; the receiver must store them unchanged.
Each file is sent with the storescu option that proposes its own transfer syntax, so that
storescu does not transcode it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from sifluoro.contract import replay_output_violations
from tests.dicom_fixtures import (
    PATIENT_ID,
    PATIENT_NAME,
    RunSpec,
    video_frames,
    write_mpeg2_run,
    write_study,
)
from tests.receiver.helpers import (
    dataset_bytes,
    echoscu,
    file_uids,
    needs_dcmtk,
    read_events,
    spooled,
    storescu,
    summary_frames,
    wait_for,
)

pytestmark = needs_dcmtk

PROPOSE = {"explicit": "-xe", "implicit": "-xi", "rle": "-xr", "jpeg_lossless": "-xs"}
SPECS = [
    RunSpec(0.0, n_frames=4, storage="xa", transfer_syntax="explicit"),
    RunSpec(2.0, n_frames=1, storage="rf", transfer_syntax="implicit"),
    RunSpec(4.0, n_frames=3, storage="xa", transfer_syntax="rle"),
    RunSpec(6.0, n_frames=3, storage="xa", transfer_syntax="jpeg_lossless"),
    RunSpec(8.0, n_frames=2, storage="enhanced_xa", transfer_syntax="explicit"),
    RunSpec(10.0, n_frames=2, storage="sc", dtype=np.uint8, bits_stored=8,
            transfer_syntax="explicit"),
]


def test_echoscu_and_storescu_every_variant_byte_identical(tmp_path, start_receiver):
    paths = write_study(tmp_path / "study", SPECS)
    receiver = start_receiver()
    assert echoscu(receiver.port).returncode == 0

    for spec, path in zip(SPECS, paths):  # in acquisition order
        sent = storescu(receiver.port, [path], PROPOSE[spec.transfer_syntax])
        assert sent.returncode == 0, sent.stdout + sent.stderr

    study_uid, _ = file_uids(paths[0])
    folder = receiver.spool / study_uid
    total = sum(s.n_frames for s in SPECS)
    wait_for(lambda: summary_frames(folder / "summary.json") == total)
    assert receiver.terminate() == 0

    for path in paths:
        stored = spooled(receiver.spool, *file_uids(path))
        assert dataset_bytes(stored) == dataset_bytes(path), path.name
    events = read_events(folder / "events.jsonl")
    assert replay_output_violations(folder / "events.jsonl", folder / "summary.json") == []
    expected = {(file_uids(p)[1], k) for s, p in zip(SPECS, paths) for k in range(1, s.n_frames + 1)}
    assert {(e["sop_instance_uid"], e["frame"]) for e in events} == expected
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["frames"], summary["runs"], summary["rejected_files"]) == (total, len(SPECS), [])
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    log = receiver.log()
    assert PATIENT_NAME not in log and PATIENT_ID not in log
    assert b"6 stored" in receiver.stdout


def test_the_same_instance_twice_is_stored_once_and_counted(tmp_path, start_receiver):
    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(5.0, n_frames=2)])
    receiver = start_receiver()
    first = sorted(paths)  # file names run against time: the later run goes first
    for _ in range(2):
        sent = storescu(receiver.port, first, "-xe")
        assert sent.returncode == 0, sent.stdout + sent.stderr
    study_uid, _ = file_uids(paths[0])
    folder = receiver.spool / study_uid
    wait_for(lambda: summary_frames(folder / "summary.json") == 5)
    assert receiver.terminate() == 0

    assert sorted(p.name for p in folder.glob("*.dcm")) == sorted(
        f"{file_uids(p)[1]}.dcm" for p in paths)
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["frames"], summary["instances"], summary["duplicates"]) == (5, 2, 2)
    assert summary["out_of_order_runs"] == 1
    events = read_events(folder / "events.jsonl")
    assert [e["index"] for e in events] == list(range(5))
    # the earlier run arrived second: processed as it came, flagged, with its true (earlier) t_s
    late = [e for e in events if e.get("out_of_order")]
    assert [e["frame"] for e in late] == [1, 2, 3]
    assert late[0]["t_s"] == pytest.approx(-5.0)
    # the contract's checker knows that exception (user review s19: it said "t_s goes
    # backwards" of a receiver's own output) but still sees time going back within a run
    assert replay_output_violations(folder / "events.jsonl", folder / "summary.json") == []
    lines = (folder / "events.jsonl").read_text().splitlines()
    backwards = [json.loads(line) for line in lines]
    backwards[4]["t_s"] = backwards[3]["t_s"] - 1.0
    (folder / "bad.jsonl").write_text("".join(json.dumps(e) + "\n" for e in backwards))
    assert replay_output_violations(folder / "bad.jsonl", folder / "summary.json") == [
        "t_s goes backwards at index 4"]


def test_duplicates_reach_the_summary_as_they_come_and_after_a_restart(tmp_path, start_receiver):
    """User review s20 I1: a duplicate is processed by nothing, so the summary said 0 while
    the receiver ran (state.json 6) and, after a restart, never counted the ones received."""
    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=3), RunSpec(5.0, n_frames=2)])
    study_uid, _ = file_uids(paths[0])
    receiver = start_receiver()
    folder = receiver.spool / study_uid

    def duplicates():
        try:
            return json.loads((folder / "summary.json").read_text())["duplicates"]
        except (FileNotFoundError, ValueError, KeyError):
            return -1

    assert storescu(receiver.port, sorted(paths), "-xe").returncode == 0
    wait_for(lambda: summary_frames(folder / "summary.json") == 5)
    assert storescu(receiver.port, sorted(paths), "-xe").returncode == 0
    assert wait_for(lambda: duplicates() == 2, timeout_s=20)  # while it runs
    assert receiver.terminate() == 0
    again = start_receiver(receiver.spool)
    assert storescu(again.port, sorted(paths), "-xe").returncode == 0
    assert wait_for(lambda: duplicates() == 4, timeout_s=20)
    assert again.terminate() == 0
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["frames"], summary["duplicates"]) == (5, 4)


def test_one_events_file_for_two_interleaved_studies_names_each_frames_study(
        tmp_path, start_receiver):
    a = write_study(tmp_path / "a", [RunSpec(0.0, n_frames=2), RunSpec(3.0, n_frames=2)])
    b = write_study(tmp_path / "b", [RunSpec(0.0, n_frames=3), RunSpec(4.0, n_frames=1)])
    shared = tmp_path / "all-events.jsonl"
    receiver = start_receiver(None, "--events", str(shared), "--summary",
                              str(tmp_path / "last-summary.json"))
    for path in (a[0], b[0], a[1], b[1]):  # acquisition order within each study
        sent = storescu(receiver.port, [path], "-xe")
        assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_for(lambda: shared.exists() and len(read_events(shared)) == 8)
    assert receiver.terminate() == 0

    sop_to_study = {file_uids(p)[1]: file_uids(p)[0] for p in a + b}
    events = read_events(shared)
    assert [sop_to_study[e["sop_instance_uid"]] for e in events] == [
        e["study_instance_uid"] for e in events]
    for study_uid, frames in ((file_uids(a[0])[0], 4), (file_uids(b[0])[0], 4)):
        own = [e for e in events if e["study_instance_uid"] == study_uid]
        assert [e["index"] for e in own] == list(range(len(own)))
        # review s16 H3: with --summary each study's own summary was not written
        assert summary_frames(receiver.spool / study_uid / "summary.json") == frames
    last = json.loads((tmp_path / "last-summary.json").read_text())
    assert last["study_instance_uid"] == file_uids(b[1])[0]
    # the contract check sees the mix: a study's summary does not go with the shared file
    summary_a = receiver.spool / file_uids(a[0])[0] / "summary.json"
    assert any("another study" in v for v in replay_output_violations(shared, summary_a))


def test_a_c_arm_that_sends_its_loop_as_mpeg2_is_stored_and_processed(tmp_path, start_receiver):
    """Refused at association before (only image syntaxes were offered): the loop's frames and
    dose were lost. storescu proposes only MPEG2 Main Profile / Main Level (-xm)."""
    path = write_mpeg2_run(tmp_path / "study", video_frames(5))
    receiver = start_receiver()
    sent = storescu(receiver.port, [path], "-xm")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    study_uid, sop_uid = file_uids(path)
    folder = receiver.spool / study_uid
    wait_for(lambda: summary_frames(folder / "summary.json") == 5)
    assert receiver.terminate() == 0
    assert dataset_bytes(spooled(receiver.spool, study_uid, sop_uid)) == dataset_bytes(path)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["rejected_files"] == [] and summary["air_kerma_mgy"] > 0
    assert [e["frame"] for e in read_events(folder / "events.jsonl")] == [1, 2, 3, 4, 5]


def test_a_colour_screenshot_is_stored_and_the_study_sent_after_it_arrives(tmp_path,
                                                                        start_receiver):
    """Review s16 M5: a colour Secondary Capture was answered 0xC002 and DCMTK's storescu then
    stopped: the runs sent after it never arrived. It is stored now and listed as not used."""
    specs = [RunSpec(0.0, n_frames=1, storage="sc", dtype=np.uint8, bits_stored=8,
                     filename="a_screenshot.dcm"),
             RunSpec(2.0, n_frames=3, filename="b_run.dcm")]
    paths = write_study(tmp_path / "study", specs)
    import pydicom
    ds = pydicom.dcmread(paths[0])
    rgb = np.repeat(ds.pixel_array[..., None], 3, axis=-1).astype(np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = rgb.tobytes()
    ds.save_as(paths[0])
    summary = _sent_before_a_run(start_receiver, paths)
    assert summary["rejected_files"][0]["reason"].startswith("(0028,0002) SamplesPerPixel")


def _sent_before_a_run(start_receiver, paths) -> dict:
    """Send an instance the pipeline cannot use, then a 3-frame run, in one storescu
    association; both must be stored (the run processed), the first one rejected: the
    study's summary."""
    receiver = start_receiver()
    sent = storescu(receiver.port, paths, "-xe")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    folder = receiver.spool / file_uids(paths[1])[0]
    wait_for(lambda: summary_frames(folder / "summary.json") == 3)
    assert receiver.terminate() == 0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["instances"] == 2
    assert len(summary["rejected_files"]) == 1
    return summary


def test_an_x_ray_image_without_any_time_is_stored_and_the_study_after_it_arrives(
        tmp_path, start_receiver):
    """Second review s16 M5: an XA without acquisition or content time was answered 0xC002,
    and DCMTK's storescu then stopped: the study's next run never arrived. It is stored and
    listed as not used (it cannot be placed in the study), as replay lists it."""
    import pydicom
    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=2, filename="a_untimed.dcm"),
                                             RunSpec(5.0, n_frames=3, filename="b_run.dcm")])
    ds = pydicom.dcmread(paths[0])
    for keyword in ("AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime", "ContentDate",
                    "ContentTime"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(paths[0])
    summary = _sent_before_a_run(start_receiver, paths)
    [rejected] = summary["rejected_files"]
    assert rejected["reason"].startswith("(0008,002A) AcquisitionDateTime: no acquisition")
    # its exposure happened: counted as lost frames (review s21 #3)
    assert summary["lost_frames"]["frames"] == 2 and summary["lost_frames"]["air_kerma_mgy"] > 0


def test_a_sender_proposing_only_deflate_delivers_its_run(tmp_path, start_receiver):
    """Review s22 F10: the reader reads Deflated Explicit VR Little Endian, but the receiver did
    not accept it: a device proposing only deflate could not deliver its runs or dose report."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    spec = RunSpec(0.0, n_frames=3, transfer_syntax="explicit")
    (path,) = write_study(tmp_path / "study", [spec])
    receiver = start_receiver()
    sent = storescu(receiver.port, [path], "-xd")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    study_uid, sop_uid = file_uids(path)
    wait_for(lambda: summary_frames(receiver.spool / study_uid / "summary.json") == 3)
    assert receiver.terminate() == 0
    stored = pydicom.dcmread(spooled(receiver.spool, study_uid, sop_uid))
    assert stored.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert stored.PixelData == pydicom.dcmread(path).PixelData
