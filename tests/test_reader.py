"""Reading every supported variant, in the right order, with the right timing."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import pydicom
import pytest

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import DoseSettings
from sifluoro.dose.accumulate import accumulate_study
from sifluoro.errors import MultipleStudiesError, StudyNotFoundError
from tests.dicom_fixtures import RunSpec, frames_for, technique, write_study

VARIANTS = [
    RunSpec(0.0, storage="xa"),
    RunSpec(0.0, storage="rf"),
    RunSpec(0.0, storage="enhanced_xa"),
    RunSpec(0.0, storage="sc"),
    RunSpec(0.0, n_frames=1, storage="xa"),
    RunSpec(0.0, photometric="MONOCHROME1"),
    RunSpec(0.0, dtype=np.uint8, bits_stored=8),
    RunSpec(0.0, bits_stored=10),
    RunSpec(0.0, bits_stored=16),
    RunSpec(0.0, transfer_syntax="implicit"),
    RunSpec(0.0, transfer_syntax="rle"),
    RunSpec(0.0, transfer_syntax="jpeg2000"),
    RunSpec(0.0, transfer_syntax="jpeg_lossless"),
    RunSpec(0.0, storage="enhanced_xa", transfer_syntax="jpeg_lossless"),
    RunSpec(0.0, storage="rf", transfer_syntax="rle", photometric="MONOCHROME1"),
]


@pytest.mark.parametrize("spec", VARIANTS, ids=lambda s: f"{s.storage}-{s.transfer_syntax}-"
                         f"{s.photometric[-1]}-{s.bits_stored}b-{s.n_frames}f")
def test_each_variant_reads_pixels_exactly(tmp_path, spec):
    write_study(tmp_path, [spec])
    study = read_study([tmp_path])
    assert study.rejected == ()
    rejected = []
    frames = list(iter_frames(study, rejected))
    assert rejected == []
    expected = frames_for(spec, 0)
    assert len(frames) == spec.n_frames
    for k, frame in enumerate(frames):
        assert frame.pixels.dtype == np.uint16
        assert not frame.pixels.flags.writeable
        np.testing.assert_array_equal(frame.pixels, expected[k].astype(np.uint16))
        assert frame.frame_number == k + 1 and frame.index == k
    assert frames[0].photometric == spec.photometric
    run = study.runs[0]
    assert run.bits_stored == spec.bits_stored
    if spec.storage != "sc":  # secondary capture carries no acquisition technique
        assert run.pixel_spacing_xy_mm == (0.4, 0.4)
        assert run.technique.kvp == 78.0 and run.technique.tube_current_ma == 9.0
    if spec.n_frames > 1:
        assert run.frame_intervals_ms == pytest.approx((133.333,) * spec.n_frames)


def test_order_comes_from_acquisition_time_not_file_names(tmp_path):
    # file names sort in the reverse of acquisition order; one run starts 2 s after midnight-like
    specs = [RunSpec(40.0, filename="a.dcm"), RunSpec(5.0, filename="b.dcm"),
             RunSpec(12.5, filename="c.dcm", storage="enhanced_xa")]
    write_study(tmp_path, specs)
    study = read_study([tmp_path])
    assert [r.path.rsplit("/", 1)[-1] for r in study.runs] == ["b.dcm", "c.dcm", "a.dcm"]
    assert [r.start_s for r in study.runs] == pytest.approx([0.0, 7.5, 35.0])
    frames = list(iter_frames(study, []))
    assert [f.index for f in frames] == list(range(9))
    assert [f.t_s for f in frames] == pytest.approx(
        [0.0, 0.133333, 0.266666, 7.5, 7.633333, 7.766666, 35.0, 35.133333, 35.266666], abs=1e-5)


def test_a_run_that_starts_inside_an_earlier_one_is_not_shown_and_its_dose_counts(tmp_path):
    """One plane cannot expose two runs at once: "b" starts inside "a" (its frames would go
    back in time, breaking the contract's rising t_s, which replay broke before), "c" after
    both. "b"'s frames are refused naming "a", its dose counted; the events keep the rule."""
    from sifluoro.contract import replay_output_violations
    from sifluoro.replay import replay

    specs = [RunSpec(0.0, n_frames=5, filename="a.dcm"), RunSpec(0.2, filename="b.dcm"),
             RunSpec(0.6, filename="c.dcm")]
    write_study(tmp_path / "in", specs)
    study = read_study([tmp_path / "in"])
    assert [r.frames_refused for r in study.runs] == [False, True, False]
    out = replay([tmp_path / "in"], events_path=tmp_path / "e.jsonl",
                 summary_path=tmp_path / "s.json", stages=[])
    assert replay_output_violations(tmp_path / "e.jsonl", tmp_path / "s.json") == []
    assert out.summary["frames"] == 5 + 3 and out.summary["lost_frames"]["frames"] == 3
    [rejected] = out.summary["rejected_files"]
    assert rejected["error"] == "OverlappingRunError" and "a.dcm" in rejected["reason"]
    apart = [replace(spec, start_s=10.0 * k) for k, spec in enumerate(specs)]
    write_study(tmp_path / "apart", apart)
    alone = replay([tmp_path / "apart"], events_path=tmp_path / "e2.jsonl",
                   summary_path=tmp_path / "s2.json", stages=[]).summary
    assert out.summary["study_dose"] == pytest.approx(alone["study_dose"])


def test_frame_time_vector_gives_irregular_timing(tmp_path):
    write_study(tmp_path, [RunSpec(0.0, n_frames=4, frame_time_vector_ms=[0.0, 66.7, 133.3, 66.7])])
    run = read_study([tmp_path]).runs[0]
    assert run.frame_offsets_s == pytest.approx((0.0, 0.0667, 0.2, 0.2667))
    # a step twice the nominal one is a frame not stored (its pulse was given), not a pause
    assert run.frame_intervals_ms == pytest.approx((66.7, 133.3, 66.7, 66.7))


def _pause_in_enhanced_run(path, pause_s: float) -> None:
    """Per-frame times the only frame timing, the last frame ``pause_s`` after the one before."""
    ds = pydicom.dcmread(path)
    for keyword in ("FrameTime", "FrameTimeVector"):
        if keyword in ds:
            delattr(ds, keyword)
    groups = ds.PerFrameFunctionalGroupsSequence
    before = datetime.strptime(groups[-2].FrameContentSequence[0].FrameAcquisitionDateTime,
                               "%Y%m%d%H%M%S.%f")
    content = groups[-1].FrameContentSequence[0]
    content.FrameAcquisitionDateTime = content.FrameReferenceDateTime = (
        before + timedelta(seconds=pause_s)).strftime("%Y%m%d%H%M%S.%f")
    ds.save_as(path)


def _per_frame_times(path, variant: str, *, duration_s: float | None) -> None:
    """An Enhanced XA whose per-frame times are its only frame timing, spoilt one way."""
    ds = pydicom.dcmread(path)
    for keyword in ("FrameTime", "FrameTimeVector", "AcquisitionDuration"):
        if keyword in ds:
            delattr(ds, keyword)
    if duration_s is not None:
        ds.AcquisitionDuration = duration_s
    contents = [g.FrameContentSequence[0] for g in ds.PerFrameFunctionalGroupsSequence]
    times = [c.FrameAcquisitionDateTime for c in contents]
    if variant == "to_the_second":
        times = [t[:14] for t in times]
    elif variant == "reversed":
        times = times[::-1]
    else:  # the last frame 100 s after the one before: beyond a plausible frame time
        last = datetime.strptime(times[-2], "%Y%m%d%H%M%S.%f") + timedelta(seconds=100)
        times[-1] = last.strftime("%Y%m%d%H%M%S.%f")
    for content, t in zip(contents, times):
        content.FrameAcquisitionDateTime = content.FrameReferenceDateTime = t
    ds.save_as(path)


WHAT_IS_WRONG = {
    "to_the_second": "frames 2, 3, 4 at the time of the frame before (times to the second",
    "reversed": "frames 2, 3, 4 before the frame before",
    "late": "frame 4 more than 60 s after the frame before",
}


@pytest.mark.parametrize("variant", sorted(WHAT_IS_WRONG))
def test_unusable_per_frame_times_are_named_and_acquisition_duration_gives_the_timing(
        tmp_path, caplog, variant):
    """Per-frame times present but unusable: the warning says what is wrong with them, naming
    the frames, and (0018,9073) AcquisitionDuration over the 4 frames gives the timing."""
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=4, storage="enhanced_xa")])
    _per_frame_times(path, variant, duration_s=0.6)
    study = read_study([tmp_path])
    assert study.rejected == ()
    (run,) = study.runs
    assert run.frame_intervals_ms == pytest.approx((150.0,) * 4)
    assert run.frame_offsets_s == pytest.approx((0.0, 0.15, 0.3, 0.45))
    assert "(0018,9073) AcquisitionDuration / 4 frames: 150 ms" in caplog.text
    assert WHAT_IS_WRONG[variant] in caplog.text


@pytest.mark.parametrize("n_frames", [2, 8])
def test_acquisition_duration_reads_back_as_sifluoros_writer_writes_it(tmp_path, n_frames):
    """The writer gives AcquisitionDuration as n x FrameTime (the complete acquisition, PS3.3
    C.8.19.3); the reader took it over n - 1 steps: 152.4 ms frames for 133.3 over 8 frames,
    twice the time over 2 (second review s12 #10). Read back, the frame time is the written one."""
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=n_frames, storage="enhanced_xa")])
    written = float(pydicom.dcmread(path).AcquisitionDuration)
    assert written == pytest.approx(n_frames * 0.133333, rel=1e-4)
    _per_frame_times(path, "to_the_second", duration_s=written)  # the duration the only timing
    (run,) = read_study([tmp_path]).runs
    assert run.frame_intervals_ms == pytest.approx((133.333,) * n_frames, rel=1e-4)
    assert sum(run.frame_intervals_ms) / 1000.0 == pytest.approx(written)


@pytest.mark.parametrize("variant", sorted(WHAT_IS_WRONG))
def test_a_run_refused_for_its_frame_timing_keeps_its_header_dose(tmp_path, variant):
    """With no other timing, the run's frames are refused, saying what is wrong with the
    per-frame times (not naming a remedy already there), and the 800 mGy its header reports
    is counted with the lost frames, not dropped."""
    from sifluoro.replay import replay

    tech = technique(reported_air_kerma_mgy=800.0, reported_dap_gycm2=40.0)
    paths = write_study(tmp_path / "study", [RunSpec(0.0, n_frames=4),
                                             RunSpec(20.0, n_frames=4, storage="enhanced_xa",
                                                     tech=tech)])
    _per_frame_times(paths[1], variant, duration_s=None)
    summary = replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl",
                     summary_path=tmp_path / "s.json", stages=[]).summary
    assert summary["frames"] == 4
    [rejection] = summary["rejected_files"]
    reason = rejection["reason"]
    assert reason.startswith("(0018,9074) FrameAcquisitionDateTime: 4 frames but no usable frame "
                             "timing: per-frame times"), reason
    assert WHAT_IS_WRONG[variant] in reason and "no FrameTime, FrameTimeVector or " \
        "AcquisitionDuration" in reason and "their dose is counted from the header" in reason
    assert summary["lost_frames"]["frames"] == 4
    assert summary["lost_frames"]["air_kerma_mgy"] == pytest.approx(800.0)
    assert summary["lost_frames"]["dap_gycm2"] == pytest.approx(40.0)
    # the frames seen are estimated, the study's whole dose also holds the header's report
    assert summary["dose_source"] == "estimated"
    assert summary["study_dose"]["dose_source"] == "mixed"


@pytest.mark.parametrize("storage", ["xa", "enhanced_xa"])
def test_a_pause_inside_a_run_is_not_fluoroscopy_time(tmp_path, storage):
    """A stored run across two pedal presses: its 12-s step is beam-off, counted as one nominal
    interval (not once by the frame before it and again by the last frame); the dose per frame
    stays the header's."""
    tech = technique(reported_air_kerma_mgy=800.0, reported_dap_gycm2=40.0)
    if storage == "xa":
        spec = RunSpec(0.0, n_frames=5, tech=tech,
                       frame_time_vector_ms=[0.0, 133.333, 133.333, 12_000.0, 133.333])
    else:
        spec = RunSpec(0.0, n_frames=5, storage="enhanced_xa", tech=tech)
    (path,) = write_study(tmp_path, [spec])
    if storage == "enhanced_xa":
        _pause_in_enhanced_run(path, 12.0)
    study = read_study([tmp_path])
    (run,) = study.runs
    assert max(np.diff(run.frame_offsets_s)) == pytest.approx(12.0, abs=1e-3)
    assert run.frame_intervals_ms == pytest.approx((133.333,) * 5, abs=1e-2)
    dose = accumulate_study(study, DoseSettings())
    assert dose.totals.fluoro_time_s == pytest.approx(5 * 0.133333, abs=1e-4)
    assert dose.totals.air_kerma_mgy == pytest.approx(800.0)
    assert dose.totals.dap_gycm2 == pytest.approx(40.0)


def test_a_frame_rate_change_inside_a_run_is_beam_time_not_a_pause(tmp_path):
    """4 frames/s for 4 s, then 1 frame/s for 8 s (a DSA program): every step is beam time
    (the pause rule once counted the 1-s steps as 250 ms: 6.25 s for 12 s)."""
    ftv = [0.0] + [250.0] * 16 + [1000.0] * 8
    write_study(tmp_path, [RunSpec(0.0, n_frames=len(ftv), frame_time_vector_ms=ftv)])
    (run,) = read_study([tmp_path]).runs
    assert sum(run.frame_intervals_ms[:-1]) == pytest.approx(12_000.0)


def test_a_two_frame_run_counts_its_one_step_once(tmp_path):
    """Two frames 12 s apart: the one step is the run's nominal interval, and the last frame
    was given it again (24 s for 12 s, and a continuous-mode estimate of 24 s of beam; second
    review s12 #9). The last frame now stands for at most PAUSE_MIN_MS; a short step counts as
    before."""
    from sifluoro.acquire.header import PAUSE_MIN_MS

    for name, step_ms, counted_ms in (("pause", 12_000.0, 12_000.0 + PAUSE_MIN_MS),
                                      ("short", 133.333, 2 * 133.333)):
        write_study(tmp_path / name, [RunSpec(0.0, n_frames=2, frame_time_vector_ms=[0.0, step_ms],
                                              tech=technique(pulse_width_ms=None, radiation_setting="GR"))])
        study = read_study([tmp_path / name])
        (run,) = study.runs
        assert sum(run.frame_intervals_ms) == pytest.approx(counted_ms)
        dose = accumulate_study(study, DoseSettings())
        assert dose.totals.acquisition_time_s == pytest.approx(counted_ms / 1000.0)
        if name == "pause":  # continuous beam estimated over the time counted, not 2 x 12 s
            per_s = dose.totals.air_kerma_mgy / dose.totals.acquisition_time_s
        else:
            short_per_s = dose.totals.air_kerma_mgy / dose.totals.acquisition_time_s
    assert per_s == pytest.approx(short_per_s, rel=1e-6)


def test_pulsed_7_5_per_s_uses_frame_time_not_integer_cine_rate(tmp_path):
    paths = write_study(tmp_path, [RunSpec(0.0, n_frames=8, frame_time_ms=133.333)])
    import pydicom

    assert pydicom.dcmread(paths[0]).CineRate == 8  # integer: would give 125 ms frames
    run = read_study([tmp_path]).runs[0]
    assert run.technique.pulse_rate_per_s == pytest.approx(7.5, rel=1e-4)
    assert sum(run.frame_intervals_ms) / 1000 == pytest.approx(8 / 7.5, rel=1e-4)


def test_enhanced_xa_per_frame_timing_and_functional_groups(tmp_path):
    write_study(tmp_path, [RunSpec(0.0, n_frames=5, storage="enhanced_xa", frame_time_ms=66.6667)])
    run = read_study([tmp_path]).runs[0]
    assert run.frame_offsets_s == pytest.approx([k * 0.0666667 for k in range(5)], abs=1e-6)
    tech = run.technique
    assert tech.source_to_isocenter_mm == 785.0 and tech.sid_mm == 1100.0
    assert tech.primary_angle_deg == 25.0 and tech.secondary_angle_deg == -10.0
    assert tech.filter_cu_mm == pytest.approx(0.1)


def test_a_pixel_spacing_that_changes_within_an_enhanced_run_is_said(tmp_path, caplog):
    """Frame 3's own Frame Pixel Data Properties give another ImagerPixelSpacing (a zoom
    within the run): the run keeps frame 1's, and the warning says from which frame mm are off."""
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=4, storage="enhanced_xa")])
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0].FramePixelDataPropertiesSequence[0]
    first = [float(v) for v in shared.ImagerPixelSpacing]
    for k, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item = pydicom.Dataset()
        item.ImagerPixelSpacing = first if k < 2 else [v * 1.5 for v in first]
        group.FramePixelDataPropertiesSequence = [item]
    ds.save_as(path)
    run = read_study([tmp_path]).runs[0]
    assert run.technique.imager_pixel_spacing_xy_mm == pytest.approx((first[1], first[0]))
    assert "per-frame (0018,1164) ImagerPixelSpacing changes within the run" in caplog.text
    assert "from frame 3 on" in caplog.text


def test_a_pixel_spacing_the_same_on_every_frame_says_nothing(tmp_path, caplog):
    write_study(tmp_path, [RunSpec(0.0, n_frames=4, storage="enhanced_xa")])
    read_study([tmp_path])
    assert "changes within the run" not in caplog.text


def test_shutters_and_technique_round_trip(tmp_path):
    write_study(tmp_path, [RunSpec(0.0, tech=technique(reported_dap_gycm2=0.25,
                                                       reported_air_kerma_mgy=1.5))])
    tech = read_study([tmp_path]).runs[0].technique
    assert tech.shutter.rect_xyxy == (4, 4, 59, 59)
    assert tech.reported_dap_gycm2 == pytest.approx(0.25)
    assert tech.reported_air_kerma_mgy == pytest.approx(1.5)
    assert (tech.filter_cu_mm, tech.filter_al_mm) == (pytest.approx(0.1), pytest.approx(1.0))


def test_enhanced_xrf_reads_like_enhanced_xa(tmp_path):
    import pydicom
    from pydicom.uid import EnhancedXRFImageStorage

    (path,) = write_study(tmp_path, [RunSpec(0.0, storage="enhanced_xa", n_frames=4)])
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedXRFImageStorage
    ds.Modality = "RF"
    ds.save_as(path)
    study = read_study([tmp_path])
    assert study.rejected == () and study.runs[0].modality == "RF"
    frames = list(iter_frames(study, []))
    np.testing.assert_array_equal(frames[3].pixels, frames_for(RunSpec(0.0, n_frames=4), 0)[3])


@pytest.mark.parametrize("storage", ["xa", "enhanced_xa"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_attenuation_polarity(tmp_path, storage, photometric):
    write_study(tmp_path, [RunSpec(0.0, storage=storage, photometric=photometric)])
    run = read_study([tmp_path]).runs[0]
    assert run.pixel_intensity_sign == ({"MONOCHROME2": -1, "MONOCHROME1": 1}[photometric]
                                        if storage == "enhanced_xa" else None)
    assert run.attenuation_rises_with_value == (photometric == "MONOCHROME2")


@pytest.mark.parametrize("pir, sign, rises", [
    ("DISP", 1, False),     # bone-dark MONOCHROME2, stated by the sign (fluoroscopy monitors)
    ("DISP", -1, True),
    ("LIN", None, False),   # proportional to X-ray intensity: falls with attenuation
    ("LOG", None, False),
    ("DISP", None, True),   # nothing stated: bone assumed bright, as radiographs
])
def test_polarity_of_legacy_xa_from_sign_then_relationship(tmp_path, pir, sign, rises):
    path = write_study(tmp_path, [RunSpec(0.0, storage="xa")])[0]
    ds = pydicom.dcmread(path)
    ds.PixelIntensityRelationship = pir
    if sign is not None:
        ds.PixelIntensityRelationshipSign = sign
    ds.save_as(path)
    run = read_study([tmp_path]).runs[0]
    assert run.pixel_intensity_relationship == pir
    assert run.attenuation_rises_with_value is rises


def test_several_studies_need_a_choice(tmp_path):
    write_study(tmp_path / "a", [RunSpec(0.0)], study_uid="1.2.3.1")
    write_study(tmp_path / "b", [RunSpec(0.0), RunSpec(9.0)], study_uid="1.2.3.2")
    with pytest.raises(MultipleStudiesError) as info:
        read_study([tmp_path])
    assert "1.2.3.1" in str(info.value) and "1.2.3.2" in str(info.value)
    assert "--study" in str(info.value)
    study = read_study([tmp_path], study_uid="1.2.3.2")
    assert len(study.runs) == 2
    with pytest.raises(StudyNotFoundError, match=r"1\.2\.3\.9 is not in the input \(its "
                       r"studies: 1\.2\.3\.1, 1\.2\.3\.2\)"):
        read_study([tmp_path], study_uid="1.2.3.9")


def test_a_study_is_chosen_by_the_end_of_its_uid_as_dose_summary_shows_it(tmp_path):
    """User review s18 F19: ``dose summary`` shows "…" and a UID's last 27 characters, and
    ``--study`` wanted the whole UID. A unique end of 8 characters or more chooses the study;
    one that two studies share, or a shorter one, does not."""
    write_study(tmp_path / "a", [RunSpec(0.0)], study_uid="1.2.840.99.111122223333")
    write_study(tmp_path / "b", [RunSpec(0.0), RunSpec(9.0)], study_uid="1.2.840.99.444422223333")
    for asked in ("…444422223333", "...444422223333", "444422223333"):
        study = read_study([tmp_path], study_uid=asked)
        assert study.study_instance_uid == "1.2.840.99.444422223333" and len(study.runs) == 2
    with pytest.raises(StudyNotFoundError, match=r"22223333 ends 2 studies' UIDs \(1\.2\.840"
                       r"\.99\.111122223333, 1\.2\.840\.99\.444422223333\); give more of it"):
        read_study([tmp_path], study_uid="22223333")  # both end so
    with pytest.raises(StudyNotFoundError, match="is not in the input"):
        read_study([tmp_path], study_uid="…3333")  # too short to choose


def test_an_instance_given_twice_is_read_once(tmp_path):
    """A folder and a file in it, and a copy of an instance under another name: its frames and
    dose count once; the copy is listed as rejected, naming the file that is used."""
    import shutil

    paths = write_study(tmp_path / "in", [RunSpec(0.0, n_frames=3), RunSpec(5.0, n_frames=2)])
    copy = tmp_path / "in" / "zz-copy.dcm"
    shutil.copy(paths[0], copy)
    study = read_study([tmp_path / "in", paths[1]])
    assert len(study.runs) == 2
    assert sum(r.n_frames for r in study.runs) == 5
    assert [r.file for r in study.rejected] == [str(copy)]
    assert "SOPInstanceUID" in study.rejected[0].reason and str(paths[0]) in study.rejected[0].reason


@pytest.mark.parametrize("size, dtype, bits", [(64, np.uint16, 16), (64, np.uint8, 8),
                                               (63, np.uint16, 12)])
def test_deflated_explicit_little_endian_reads_its_pixels_exactly(tmp_path, size, dtype, bits):
    """Deflated files: the header's offsets are in the inflated stream, so the frames are not
    read at file offsets (that gave other pixels, or 'truncated')."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    spec = RunSpec(0.0, size=size, dtype=dtype, bits_stored=bits)
    (path,) = write_study(tmp_path, [spec])
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    study = read_study([tmp_path])
    assert study.rejected == ()
    rejected = []
    frames = list(iter_frames(study, rejected))
    assert rejected == [] and len(frames) == 3
    for k, frame in enumerate(frames):
        assert np.array_equal(frame.pixels, frames_for(spec, 0)[k])


def _with(path, **attributes):
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


@pytest.mark.parametrize("n_frames, attributes, intervals_ms", [
    # an implausible source is skipped for a plausible one (with a warning naming it)
    (3, {"FrameTimeVector": [0, 0, 0], "FrameIncrementPointer": 0x00181065}, (133.333,) * 3),
    (3, {"FrameTimeVector": [0, 100, 50]}, (100.0, 50.0, 50.0)),
    # a single frame needs no frame time: an implausible one is not used for the pulse rate
    (1, {"FrameTime": -66.7}, None),
    (1, {"FrameTime": 0.0667}, None),
])
def test_implausible_frame_timing_is_not_used(tmp_path, caplog, n_frames, attributes, intervals_ms):
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=n_frames)])
    _with(path, **attributes)
    study = read_study([tmp_path])
    assert study.rejected == ()
    (run,) = study.runs
    if intervals_ms is not None:
        assert run.frame_intervals_ms == pytest.approx(intervals_ms)
    if attributes.get("FrameTimeVector") == [0, 0, 0]:
        assert "(0018,1065) FrameTimeVector has increments outside 1-60000 ms" in caplog.text
    if n_frames == 1:
        assert run.technique.pulse_rate_per_s is None and run.technique.frame_time_ms is None


@pytest.mark.parametrize("attributes, intervals_ms, warning", [
    # a vector of the wrong length is not used, and the user is told
    ({"FrameTimeVector": [0, 50], "FrameTime": 100.0}, (100.0,) * 3,
     "(0018,1065) FrameTimeVector has 2 values for 3 frames; frame timing taken from another"),
    # two timings of one run that disagree: the vector is used, and the user is told
    ({"FrameTimeVector": [0, 50, 50], "FrameTime": 100.0}, (50.0,) * 3,
     "(0018,1063) FrameTime = 100 ms but (0018,1065) FrameTimeVector steps 50 ms (median); the "
     "vector is used"),
])
def test_frame_timings_that_disagree_are_said(tmp_path, caplog, attributes, intervals_ms, warning):
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=3)])
    _with(path, **attributes)
    study = read_study([tmp_path])
    (run,) = study.runs
    assert run.frame_intervals_ms == pytest.approx(intervals_ms)
    assert warning in caplog.text


def test_frame_timings_that_agree_say_nothing(tmp_path, caplog):
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=3)])
    _with(path, FrameTimeVector=[0, 66.7, 68.0], FrameTime=66.7)
    read_study([tmp_path])
    assert "FrameTime" not in caplog.text


def test_a_frame_time_in_seconds_is_read_as_such_with_a_warning(tmp_path, caplog):
    """The only frame timing is FrameTime = 0.0667 (seconds, not ms): read as 66.7 ms with a
    warning naming the tag, rather than the run and its dose refused."""
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=3)])
    _with(path, FrameTime=0.0667)
    study = read_study([tmp_path])
    assert study.rejected == ()
    (run,) = study.runs
    assert run.frame_intervals_ms == pytest.approx((66.7,) * 3)
    assert "(0018,1063) FrameTime = 0.0667 is read as seconds: 66.7 ms" in caplog.text


@pytest.mark.parametrize("attributes, reason", [
    ({"FrameTime": 0.0005}, "(0018,1063) FrameTime: (0018,1063) FrameTime = 0.0005 ms is outside"),
    ({"FrameTime": -66.7}, "(0018,1063) FrameTime: (0018,1063) FrameTime = -66.7 ms is outside"),
    ({"FrameTime": 0.0}, "(0018,1063) FrameTime: (0018,1063) FrameTime = 0 ms is outside"),
    ({"FrameTime": None, "FrameTimeVector": [0, 0, 0], "FrameIncrementPointer": 0x00181065},
     "(0018,1065) FrameTimeVector: (0018,1065) FrameTimeVector has increments outside 1-60000 ms"),
])
def test_impossible_frame_timing_is_refused_naming_the_tag(tmp_path, attributes, reason):
    """A multi-frame run whose only frame timing is impossible (seconds instead of ms, zero,
    negative): its frames refused naming the tag, rather than a fluoroscopy time 1000 times
    too short; they were exposed all the same, so their dose counts, as lost frames."""
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=3)])
    _with(path, **attributes)
    study = read_study([tmp_path])
    assert study.rejected == ()
    rejected, lost = [], []
    assert list(iter_frames(study, rejected, lost)) == []
    [rejection] = rejected
    assert rejection.reason.startswith(reason), rejection.reason
    assert "fluoroscopy time is unknown and not counted" in rejection.reason
    assert [(run.n_frames, first) for run, first in lost] == [(3, 1)]


@pytest.mark.parametrize("content_date", [True, False])
def test_a_time_without_its_date_after_midnight_is_dated_the_next_day(tmp_path, content_date):
    """AcquisitionTime without AcquisitionDate(Time) in a study that crosses midnight: the run
    at 00:05 took the StudyDate and started 24 h early, first in the study, and beside the
    device's report its dose was added again (review s10 B#10). The image's own ContentDate
    dates it; without one, a time before the study's is on the next day."""
    from datetime import datetime, timedelta

    import pydicom

    import tests.dicom_fixtures as fx

    start = datetime(2026, 3, 4, 23, 50, 0)
    paths = fx.write_study(tmp_path, [fx.RunSpec(0.0), fx.RunSpec(480.0), fx.RunSpec(900.0)])
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        when = start + timedelta(seconds=(0.0, 480.0, 900.0)[k])
        ds.StudyDate, ds.StudyTime = start.strftime("%Y%m%d"), start.strftime("%H%M%S")
        for keyword in ("AcquisitionDateTime", "AcquisitionDate"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.AcquisitionTime = when.strftime("%H%M%S")
        if content_date:
            ds.ContentDate, ds.ContentTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
        elif "ContentDate" in ds:
            del ds.ContentDate
        ds.save_as(path)
    study = read_study([tmp_path])
    assert [r.start_s for r in study.runs] == pytest.approx([0.0, 480.0, 900.0])
    assert [r.sop_instance_uid for r in study.runs] == [pydicom.dcmread(p).SOPInstanceUID for p in paths]


def test_a_run_seconds_before_the_study_time_stays_on_the_study_date(tmp_path):
    """StudyTime a few seconds after the first run's time (no dates on the run): the run is
    on the study's day, not 24 h later (review s10 C#3)."""
    import pydicom

    import tests.dicom_fixtures as fx

    paths = fx.write_study(tmp_path, [fx.RunSpec(0.0), fx.RunSpec(60.0)])
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.StudyDate, ds.StudyTime = "20260304", "093010"
        for keyword in ("AcquisitionDateTime", "AcquisitionDate", "ContentDate"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.AcquisitionTime = ("093000", "093100")[k]
        ds.save_as(path)
    study = read_study([tmp_path])
    assert [r.start_s for r in study.runs] == pytest.approx([0.0, 60.0])


def test_a_missing_input_and_an_empty_folder_are_named_as_such(tmp_path):
    """A path that does not exist was rejected as "DICOM header cannot be parsed
    (FileNotFoundError ...)", and an empty folder gave no word at all (review s13 L6); the
    rest of the study is still read."""
    from sifluoro.acquire.dicom_reader import scan

    write_study(tmp_path / "study", [RunSpec(0.0, n_frames=2)])
    (tmp_path / "empty").mkdir()
    result = scan([tmp_path / "study", tmp_path / "gone.dcm", tmp_path / "empty"])
    reasons = {r.file: r.reason for r in result.rejected}
    assert reasons == {str(tmp_path / "gone.dcm"): "no such file or folder",
                       str(tmp_path / "empty"): "the folder holds no files"}
    assert {r.error for r in result.rejected} == {"InputError"}  # typed (user review s18 F15)
    assert sum(len(runs) for runs in result.runs_by_study.values()) == 1


def test_linked_study_folders_are_read_once_and_a_link_loop_ends(tmp_path):
    """User review s18 F7: study folders reached through a symbolic link (an archive's layout,
    the published evaluation set's) were skipped by every folder walk: replay found no frame,
    ``audit ingest`` took nothing and exited 0."""
    from sifluoro.acquire.dicom_reader import iter_input_files

    write_study(tmp_path / "store" / "s1", [RunSpec(0.0, filename="a.dcm"),
                                           RunSpec(30.0, filename="b.dcm")])
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "study1").symlink_to(tmp_path / "store" / "s1", target_is_directory=True)
    (archive / "again").symlink_to(tmp_path / "store" / "s1", target_is_directory=True)
    (tmp_path / "store" / "s1" / "loop").symlink_to(archive, target_is_directory=True)
    files = list(iter_input_files([archive]))
    assert sorted(p.name for p in files) == ["a.dcm", "b.dcm"]  # once, through the first link
    assert len(read_study([archive]).runs) == 2


def test_a_fifo_in_a_walked_folder_is_passed_over_not_waited_on(tmp_path, caplog):
    """Review s18 F3: reading a FIFO (or a device) found by a folder walk waited forever, and
    following linked folders reaches more of them; a study folder holds regular files."""
    import os

    from sifluoro.acquire.dicom_reader import iter_input_files

    write_study(tmp_path / "s", [RunSpec(0.0, filename="a.dcm")])
    other = tmp_path / "other"
    other.mkdir()
    os.mkfifo(other / "pipe")
    os.mkfifo(tmp_path / "s" / "pipe2")
    (tmp_path / "s" / "linked").symlink_to(other, target_is_directory=True)
    assert [p.name for p in iter_input_files([tmp_path / "s"])] == ["a.dcm"]
    assert "pipe: not a regular file" in caplog.text and "pipe2: not a regular file" in caplog.text
    assert len(read_study([tmp_path / "s"]).runs) == 1


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"])  # JPEG-LS, RLE
def test_compressed_frames_have_the_bits_above_bits_stored_cleared(tmp_path, syntax):
    """Review s21 #1: a JPEG-LS codestream coded at 16 bits from a file whose unused high bits
    hold overlays or junk (a PACS transcoding it) decoded to values up to 65535 and the run was
    processed as noise; uncompressed files had them cleared."""
    spec = RunSpec(0.0, n_frames=2)
    (path,) = write_study(tmp_path, [spec])
    ds = pydicom.dcmread(path)
    clean = ds.pixel_array.copy()
    junk = np.random.default_rng(2).integers(0, 16, clean.shape).astype(np.uint16) << 12
    ds.PixelData = (clean | junk).tobytes()
    ds.BitsStored, ds.HighBit = 16, 15
    ds.compress(syntax, **({"encoding_plugin": "pydicom"} if syntax.endswith(".5") else {}))
    ds.BitsStored, ds.HighBit = 12, 11
    ds.save_as(path)
    (run,) = read_study([tmp_path]).runs
    assert run.bits_stored == 12
    frames = [frame.pixels for frame in iter_frames(read_study([tmp_path]), [])]
    assert np.array_equal(np.stack(frames), clean)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"])  # JPEG-LS, RLE
def test_encoded_frames_beyond_number_of_frames_are_said(tmp_path, caplog, syntax):
    """Review s21 #4: three encoded frames, NumberOfFrames 2: the third frame, its time and
    dose were dropped without a word. Its frames are not taken (code review s21 #2, #3: the
    header times only its count, and a trailing fragment may be padding): it is said."""
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=3)])
    ds = pydicom.dcmread(path)
    clean = ds.pixel_array.copy()
    ds.compress(syntax, **({"encoding_plugin": "pydicom"} if syntax.endswith(".5") else {}))
    ds.NumberOfFrames = 2
    ds.save_as(path)
    study = read_study([tmp_path])
    (run,) = study.runs
    assert run.n_frames == 2 and study.rejected == ()
    assert np.array_equal(np.stack([f.pixels for f in iter_frames(study, [])]), clean[:2])
    assert ("(0028,0008) NumberOfFrames = 2, but the encapsulated pixel data seems to hold 3 "
            "frames: 2 are read; if the count is wrong, the others and their dose are not") in caplog.text


@pytest.mark.parametrize("keyword, text, said", [
    ("KVP", "78 kV", "ignoring (0018,0060) KVP = '78 kV': not a number"),
    ("FrameTime", "133,3", "ignoring (0018,1063) FrameTime = '133,3': not a number"),
])
def test_a_number_that_is_not_one_is_said_naming_the_file(tmp_path, caplog, keyword, text, said):
    """Review s21 #7: values a vendor writes that are not numbers were dropped at INFO level
    (hidden by the CLI), without the file: the run's dose unknown, or its frames refused for
    "no usable frame timing", with no word on why."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataelem import RawDataElement

    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=3)])
    ds = pydicom.dcmread(path)
    tag = pydicom.tag.Tag(tag_for_keyword(keyword))
    raw = text.encode() + b" " * (len(text) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    ds.save_as(path)
    read_study([tmp_path])
    assert f"{path}: {said}" in caplog.text
    assert caplog.text.count(said) == 1
    # a file whose header is parsed twice (native pixel data longer than its frames) says it
    # once too (code review s21 #9)
    caplog.clear()
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData + bytes(ds.Columns * 2 * 4)
    ds.save_as(path)
    read_study([tmp_path])
    assert caplog.text.count(said) == 1


@pytest.mark.parametrize("implicit", [True, False])
def test_a_file_without_the_part10_header_is_read_with_a_warning(tmp_path, caplog, implicit):
    """Review s21 #9: a dataset stored without preamble and file meta (older systems write
    them so) was passed over as "not DICOM", its exposure in no total."""
    from pydicom.filewriter import write_dataset

    (path,) = write_study(tmp_path / "part10", [RunSpec(0.0, n_frames=3)])
    whole = read_study([tmp_path / "part10"])
    ds = pydicom.dcmread(path)
    del ds.file_meta
    (tmp_path / "bare").mkdir()
    bare = tmp_path / "bare" / "run"
    with pydicom.filebase.DicomFileLike(open(bare, "wb")) as fh:
        fh.is_little_endian, fh.is_implicit_VR = True, implicit
        write_dataset(fh, ds)
    (tmp_path / "bare" / "notes.txt").write_text("\x08\x00 not a dataset")
    study = read_study([tmp_path / "bare"])
    (run,) = study.runs
    assert [r.file.rsplit("/", 1)[-1] for r in study.rejected] == ["notes.txt"]
    assert run.frame_intervals_ms == whole.runs[0].frame_intervals_ms
    assert run.technique == whole.runs[0].technique
    frames = np.stack([f.pixels for f in iter_frames(study, [])])
    assert np.array_equal(frames, np.stack([f.pixels for f in iter_frames(whole, [])]))
    syntax = "Implicit VR Little Endian" if implicit else "Explicit VR Little Endian"
    assert f"{bare}: no DICOM Part 10 preamble and file meta header" in caplog.text
    assert f"read as {syntax}" in caplog.text
    # its header is read again for the RDSR (code review s21 #1: replay --rdsr stopped)
    from sifluoro.replay import replay

    result = replay([tmp_path / "bare"], events_path=tmp_path / "e.jsonl",
                    summary_path=tmp_path / "s.json", rdsr_path=tmp_path / "r.dcm", stages=[])
    assert result.summary["frames"] == 3 and (tmp_path / "r.dcm").exists()


def test_compressed_pixel_data_without_the_part10_header_is_refused_saying_why(tmp_path):
    """Code review s21 #8: encapsulated pixel data read as native, refused for a length of
    4294967295 bytes."""
    from pydicom.filewriter import write_dataset

    (path,) = write_study(tmp_path / "part10", [RunSpec(0.0, n_frames=2, transfer_syntax="rle")])
    ds = pydicom.dcmread(path)
    del ds.file_meta
    (tmp_path / "bare").mkdir()
    with pydicom.filebase.DicomFileLike(open(tmp_path / "bare" / "run", "wb")) as fh:
        fh.is_little_endian, fh.is_implicit_VR = True, False
        write_dataset(fh, ds)
    [rejection] = read_study([tmp_path / "bare"]).rejected
    assert rejection.reason.startswith("(0002,0010) TransferSyntaxUID: compressed (encapsulated) "
                                       "pixel data without the Part 10 file meta")


@pytest.mark.parametrize("lut", ["rescale", "table"])
def test_a_modality_lut_that_inverts_the_stored_values_turns_the_polarity(tmp_path, caplog, lut):
    """Review s21 #2: a MONOCHROME2 run stored bone-dark with an inverting rescale (slope -1)
    or Modality LUT, which a viewer shows bone bright, was read inverted by the stages and
    shown bone-dark."""
    from sifluoro.imaging import attenuation

    (path,) = write_study(tmp_path / "plain", [RunSpec(0.0, n_frames=2)])
    plain = read_study([tmp_path / "plain"])
    ds = pydicom.dcmread(path)
    top = (1 << ds.BitsStored) - 1
    ds.PixelData = (top - ds.pixel_array).astype(np.uint16).tobytes()  # stored the other way
    if lut == "rescale":
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = -1, top, "US"
    else:
        item = pydicom.Dataset()
        item.LUTDescriptor = [top + 1, 0, 16]
        item.LUTData = np.arange(top, -1, -1, dtype="<u2").tobytes()
        item.ModalityLUTType = "US"
        ds.ModalityLUTSequence = [item]
    (tmp_path / "inverted").mkdir()
    ds.save_as(tmp_path / "inverted" / "run.dcm")
    inverted = read_study([tmp_path / "inverted"])
    run = inverted.runs[0]
    assert run.modality_lut_inverts and not run.attenuation_rises_with_value
    assert plain.runs[0].attenuation_rises_with_value
    frame, frame0 = next(iter_frames(inverted, [])), next(iter_frames(plain, []))
    assert frame.photometric == "MONOCHROME1" and frame0.photometric == "MONOCHROME2"
    assert np.allclose(attenuation(frame), attenuation(frame0), atol=1e-6)


def test_a_modality_lut_of_no_direction_is_said_and_not_applied(tmp_path, caplog):
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=2)])
    ds = pydicom.dcmread(path)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.LUTData = np.array([0, 9, 3, 12], "<u2").tobytes()
    ds.ModalityLUTSequence = [item]
    ds.save_as(path)
    (run,) = read_study([tmp_path]).runs
    assert not run.modality_lut_inverts and run.attenuation_rises_with_value
    assert "(0028,3000) ModalityLUTSequence is not a rising or falling table: not applied" in caplog.text


def test_single_frame_files_of_opposite_modality_luts_are_not_one_run(tmp_path):
    """Code review s21 #5: single-frame instances chained into one run for the stages
    compared the photometric interpretation but not the Modality LUT's direction: the second
    frame was read with the first one's polarity."""
    from sifluoro.pipeline import continues

    paths = write_study(tmp_path, [RunSpec(0.0, n_frames=1), RunSpec(1.0, n_frames=1)])
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.5"
        if k == 1:
            ds.RescaleSlope, ds.RescaleIntercept = -1, 4095
        ds.save_as(path)
    first, second = read_study([tmp_path]).runs
    assert continues(first, replace(second, modality_lut_inverts=False))  # else one run
    assert not continues(first, second)


def test_an_enhanced_xa_rescale_in_its_functional_groups_turns_the_polarity(tmp_path):
    """Code review s21 #7: the rescale of an Enhanced XA is in its Pixel Value Transformation
    functional group, which the check did not read."""
    (path,) = write_study(tmp_path, [RunSpec(0.0, n_frames=2, storage="enhanced_xa")])
    ds = pydicom.dcmread(path)
    item = pydicom.Dataset()
    item.RescaleSlope, item.RescaleIntercept, item.RescaleType = -1, 4095, "US"
    ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = [item]
    ds.save_as(path)
    (run,) = read_study([tmp_path]).runs
    assert run.modality_lut_inverts


def derived_copy(source, to, *, name_source: bool = True, shift_s: float = 0.0,
                 derived: bool = True, uid_first: bool = False):
    """A processed copy of ``source`` written to ``to``: a new instance, ImageType DERIVED,
    naming its source (Source Image Sequence) or not, taken ``shift_s`` later; with
    ``derived=False``, the same instance under other UIDs (a re-export)."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(source)
    # a 2.25 UID sorts after the fixtures' (the first of two identical runs is kept), a 1.1
    # UID before
    uid = "1.1." + generate_uid(prefix=None)[5:55] if uid_first else generate_uid(prefix=None)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    if not derived:
        ds.SeriesInstanceUID = generate_uid()
        ds.save_as(to)
        return to
    ds.ImageType = ["DERIVED", "SECONDARY"]
    if name_source:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = pydicom.dcmread(source).SOPInstanceUID
        ds.SourceImageSequence = [item]
    if shift_s:
        start = datetime.strptime(ds.AcquisitionDateTime, "%Y%m%d%H%M%S.%f")
        ds.AcquisitionDateTime = (start + timedelta(seconds=shift_s)).strftime("%Y%m%d%H%M%S.%f")
        for keyword in ("AcquisitionTime", "ContentTime"):
            if keyword in ds:
                ds.data_element(keyword).value = ds.AcquisitionDateTime[8:]
    ds.save_as(to)
    return to


@pytest.mark.parametrize("name_source, shift_s, derived",
                         [(True, 0.0, True), (False, 0.1, True), (True, 20.0, True),
                          (False, 0.0, False)],
                         ids=["naming-it", "over-its-time", "naming-it-later", "re-exported"])
def test_a_copy_of_a_run_is_neither_shown_nor_counted(tmp_path, name_source, shift_s, derived):
    """A processed copy of a run (a new instance, ImageType DERIVED), or the run exported again
    under other UIDs, holds the same exposure and technique: before, it was a second run (a
    copy taken later) or an overlapping one, its dose counted twice either way (review s24 #1).
    It is rejected naming its original; the dose is as without it."""
    from sifluoro.dose.summary import summarize
    from sifluoro.replay import replay

    a, b = write_study(tmp_path / "in", [RunSpec(0.0, n_frames=5, filename="a.dcm"),
                                         RunSpec(10.0, filename="b.dcm")])
    alone = replay([tmp_path / "in"], events_path=tmp_path / "e0.jsonl",
                   summary_path=tmp_path / "s0.json", stages=[]).summary
    [alone_dose], _ = summarize([tmp_path / "in"])
    derived_copy(a, tmp_path / "in" / "copy.dcm", name_source=name_source, shift_s=shift_s,
                 derived=derived)
    study = read_study([tmp_path / "in"])
    assert [r.path.rsplit("/", 1)[-1] for r in study.runs] == ["a.dcm", "b.dcm"]
    [rejected] = study.rejected
    assert (rejected.error, rejected.tag) == (
        "CopiedRunError", "(0008,0008) ImageType" if derived else "(0008,0018) SOPInstanceUID")
    assert rejected.file.endswith("copy.dcm") and "a.dcm" in rejected.reason
    out = replay([tmp_path / "in"], events_path=tmp_path / "e.jsonl",
                 summary_path=tmp_path / "s.json", stages=[]).summary
    assert (out["frames"], out["lost_frames"]["frames"]) == (8, 0)
    assert out["study_dose"] == pytest.approx(alone["study_dose"])
    [dose], rejected = summarize([tmp_path / "in"])
    assert [r.error for r in rejected] == ["CopiedRunError"]
    for key in ("air_kerma_mgy", "dap_gycm2", "fluoro_time_s", "events"):
        assert dose.summary()[key] == pytest.approx(alone_dose.summary()[key]), key


def test_a_derived_run_alone_in_its_time_is_read_and_counted(tmp_path):
    """A secondary capture (ImageType DERIVED) that copies no run of the study, such as a
    grabbed screen, is the only record of its exposure: read, its dose counted."""
    write_study(tmp_path, [RunSpec(0.0, filename="a.dcm"),
                           RunSpec(10.0, storage="sc", filename="b.dcm",
                                   tech=technique())])
    study = read_study([tmp_path])
    assert study.rejected == () and [r.derived for r in study.runs] == [False, True]
    assert len(list(iter_frames(study, []))) == 6


def test_a_saved_screen_beside_the_studys_runs_is_no_exposure(tmp_path):
    """Review s24 #6: a workstation's key image or a screenshot (one frame of Secondary
    Capture, no exposure attribute, a series of its own) in an XA study was a run: an
    irradiation event of unknown dose (the totals turned lower bounds, '≥') and one in
    sifluoro's RDSR, for an exposure that never happened. It is rejected. Alone in the study,
    or one of a series (a loop stored a frame a file: review s24b #3), it is read."""
    from sifluoro.dose.rdsr_read import read_rdsr
    from sifluoro.dose.rdsr_write import write_rdsr
    from sifluoro.dose.summary import summarize
    from sifluoro.model import Technique

    specs = [RunSpec(0.0, n_frames=5, tech=technique(reported_dap_gycm2=2.0)),
             RunSpec(30.0, n_frames=5, tech=technique(reported_dap_gycm2=3.0))]
    screen = RunSpec(90.0, n_frames=1, storage="sc", frame_time_ms=None, tech=Technique(),
                     filename="screen.dcm")
    first = write_study(tmp_path / "in", specs)[0]
    uid = pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID
    write_study(tmp_path / "in" / "key", [screen], study_uid=uid)  # a series of its own
    study = read_study([tmp_path / "in"])
    assert len(study.runs) == 2
    [rejected] = study.rejected
    assert (rejected.error, rejected.file) == ("NotAnExposureError",
                                               str(tmp_path / "in" / "key" / "screen.dcm"))
    [dose], _ = summarize([tmp_path / "in"])
    assert (len(dose.events), dose.summary()["events_dose_unknown"]) == (2, 0)
    write_rdsr(study, accumulate_study(study, DoseSettings()), tmp_path / "r.dcm")
    assert len(read_rdsr(tmp_path / "r.dcm").events) == 2
    write_study(tmp_path / "alone", [screen])
    assert len(read_study([tmp_path / "alone"]).runs) == 1
    loop = [replace(screen, start_s=90.0 + 0.5 * k, filename=f"f{k}.dcm") for k in range(6)]
    write_study(tmp_path / "in" / "loop", loop, study_uid=uid)
    assert len(read_study([tmp_path / "in"]).runs) == 2 + 6


def test_frames_stored_a_file_each_are_no_copies_of_each_other(tmp_path):
    """Review s24b #1: eight one-frame files of one series at 4 frames/s whose times are stored
    to the whole second, same technique: the same-exposure rule took six for copies (and
    frames sharing the run's AcquisitionDateTime, seven). Instances of one series are never
    copies; a re-export is another series with the same series and instance numbers."""
    specs = [RunSpec(k // 4, n_frames=1, filename=f"f{k}.dcm") for k in range(8)]
    write_study(tmp_path / "in", specs)
    study = read_study([tmp_path / "in"])
    assert study.rejected == () and len(study.runs) == 8


def test_a_second_plane_or_another_devices_derived_run_is_no_copy(tmp_path):
    """Review s24b #4 and #6: biplane planes A and B expose together with the same technique
    (no angles, no dose in their headers), and a mobile unit's DERIVED run falls within the
    C-arm's run on its clock: each was taken for a copy, its dose dropped."""
    from pydicom.uid import generate_uid

    from sifluoro.dose.summary import summarize

    t = technique(primary_angle_deg=None, secondary_angle_deg=None)
    _, b = write_study(tmp_path / "biplane", [RunSpec(0.0, n_frames=5, tech=t),
                                             RunSpec(0.0, n_frames=5, tech=t)])
    ds = pydicom.dcmread(b)
    ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), 2
    ds.save_as(b)
    _, mobile = write_study(tmp_path / "two-devices", [
        RunSpec(0.0, n_frames=20, tech=technique(reported_dap_gycm2=1.0)),
        RunSpec(1.0, n_frames=5, tech=technique(kvp=65.0, reported_dap_gycm2=0.4))])
    ds = pydicom.dcmread(mobile)
    ds.ImageType, ds.Manufacturer, ds.StationName = ["DERIVED", "PRIMARY"], "Other Co", "MOBILE"
    ds.save_as(mobile)
    for folder, events in (("biplane", 2), ("two-devices", 2)):
        [dose], rejected = summarize([tmp_path / folder])
        assert [r.error for r in rejected if r.error == "CopiedRunError"] == [], folder
        assert len(dose.events) == events, folder
