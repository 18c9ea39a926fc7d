"""Ingest into the registry, on SQLite and on a real PostgreSQL server (same tests)."""
from __future__ import annotations

import hashlib
import hmac

import pytest
from sqlalchemy import String, Text, create_engine, func, select

from sifluoro.audit import ingest as ingest_module
from sifluoro.audit.ingest import ingest
from sifluoro.audit.schema import (
    SCHEMA_VERSION,
    Base,
    EventRow,
    InstanceRow,
    PlaneRow,
    SchemaVersion,
    StudyRow,
    open_registry,
)
from sifluoro.audit.settings import AuditSettings
from sifluoro.dose.summary import summarize
from tests.audit.corpus import scale_dap, write_corpus
from tests.dicom_fixtures import PATIENT_ID, PATIENT_NAME, RunSpec, write_study

KEY = b"0123456789abcdef-test-key"


@pytest.fixture()
def corpus(tmp_path):
    return write_corpus(tmp_path / "in")


def _studies(engine) -> dict[str, dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(StudyRow)).mappings().all()
    return {r["study_instance_uid"]: dict(r) for r in rows}


def _counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t.__tablename__: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (StudyRow, InstanceRow, EventRow, PlaneRow)}


def test_ingest_matches_dose_summary(db_url, corpus, tmp_path):
    engine = open_registry(db_url)
    result = ingest([tmp_path / "in"], engine)
    assert result.studies_new == corpus["studies"]
    assert [r.file for r in result.rejected] == [str(corpus["junk"])]
    assert "not a DICOM file" in result.rejected[0].reason
    expected, _ = summarize([tmp_path / "in"])
    got = _studies(engine)
    assert sorted(got) == sorted(s.study_instance_uid for s in expected)
    for study in expected:
        row, s = got[study.study_instance_uid], study.summary()
        assert (row["source"], row["n_events"], row["n_planes"]) == (s["source"], s["events"], s["planes"])
        for key in ("dap_gycm2", "air_kerma_mgy", "fluoro_time_s", "acquisition_dap_gycm2"):
            assert row[key] == pytest.approx(s[key], rel=1e-12, abs=1e-15), key
    assert got[corpus["both_uid"]]["source"] == "rdsr"  # the report wins over its images
    assert got[corpus["images_uid"]]["source"] == "images"
    assert {r["procedure"] for r in got.values()} >= {"SI joint injection", "Facet joint injection"}
    with engine.connect() as conn:
        assert conn.execute(select(SchemaVersion.version)).scalars().all() == list(range(1, SCHEMA_VERSION + 1))
        n_events = conn.execute(select(func.count()).select_from(EventRow)).scalar_one()
    assert n_events == sum(len(s.events) for s in expected)
    engine.dispose()


def test_reingest_is_idempotent(db_url, corpus, tmp_path):
    engine = open_registry(db_url)
    ingest([tmp_path / "in"], engine)
    before, rows = _counts(engine), _studies(engine)
    again = ingest([tmp_path / "in"], engine)
    assert (again.unchanged, again.parsed, again.studies_new, again.studies_updated) == (
        again.files - 1, 1, 0, 0)  # only the junk file is looked at again
    assert _counts(engine) == before
    assert _studies(engine) == rows
    engine.dispose()


def test_changed_file_updates_its_study(db_url, corpus, tmp_path):
    engine = open_registry(db_url)
    ingest([tmp_path / "in"], engine)
    before = _counts(engine)
    path = corpus["rdsrs"][3]
    uid = next(u for u, r in _studies(engine).items()
               if r["id"] == _instance(engine, path)["study_id"])
    old = _studies(engine)[uid]["dap_gycm2"]
    scale_dap(path, 2.0)
    result = ingest([tmp_path / "in"], engine)
    assert (result.parsed, result.studies_new, result.studies_updated) == (2, 0, 1)
    assert _studies(engine)[uid]["dap_gycm2"] == pytest.approx(2.0 * old, rel=1e-9)
    assert _instance(engine, path)["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert _counts(engine) == before  # updated in place, nothing duplicated
    engine.dispose()


def _instance(engine, path) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(select(InstanceRow).where(InstanceRow.path == str(path))).mappings().one())


def test_a_study_split_across_ingests_is_recomputed_whole(db_url, corpus, tmp_path):
    engine = open_registry(db_url)
    both = tmp_path / "in" / "images_and_rdsr"
    ingest([p for p in both.iterdir() if p.name != "zz_rdsr.dcm"], engine)
    assert _studies(engine)[corpus["both_uid"]]["source"] == "images"
    ingest([corpus["both_rdsr"]], engine)
    row = _studies(engine)[corpus["both_uid"]]
    assert row["source"] == "rdsr"
    with engine.connect() as conn:
        kinds = sorted(conn.execute(select(InstanceRow.kind).where(InstanceRow.study_id == row["id"])).scalars())
    assert kinds == ["image", "image", "rdsr"]
    engine.dispose()


def test_interrupted_ingest_keeps_only_whole_studies_and_resumes(db_url, corpus, tmp_path, monkeypatch):
    engine = open_registry(db_url)
    real, calls = ingest_module._event_rows, []

    def failing(study_id, dose):
        calls.append(study_id)
        if len(calls) == 7:  # inside the 4th batch of 2 studies
            raise KeyboardInterrupt
        return real(study_id, dose)

    monkeypatch.setattr(ingest_module, "_event_rows", failing)
    settings = AuditSettings(batch_studies=2, chunk_files=3)
    with pytest.raises(KeyboardInterrupt):
        ingest([tmp_path / "in"], engine, settings=settings)
    studies = _studies(engine)
    assert len(studies) == 6  # three whole batches
    with engine.connect() as conn:
        for row in studies.values():
            events = conn.execute(select(func.count()).where(EventRow.study_id == row["id"])).scalar_one()
            planes = conn.execute(select(func.count()).where(PlaneRow.study_id == row["id"])).scalar_one()
            files = conn.execute(select(func.count()).where(InstanceRow.study_id == row["id"])).scalar_one()
            assert (events, planes) == (row["n_events"], row["n_planes"]) and files >= 1
    monkeypatch.setattr(ingest_module, "_event_rows", real)
    resumed = ingest([tmp_path / "in"], engine, settings=settings)
    assert resumed.unchanged >= 6 and resumed.studies_new == corpus["studies"] - 6
    fresh = open_registry(f"sqlite:///{tmp_path / 'fresh.db'}")
    ingest([tmp_path / "in"], fresh)
    assert _comparable(engine) == _comparable(fresh)
    engine.dispose()


def _comparable(engine) -> dict:
    drop = {"id", "study_id", "device_id", "ingested_at"}
    out = {}
    with engine.connect() as conn:
        uid_of = dict(conn.execute(select(StudyRow.id, StudyRow.study_instance_uid)).all())
        out["studies"] = sorted(tuple(sorted((k, v) for k, v in r.items() if k not in drop))
                                for r in conn.execute(select(StudyRow)).mappings())
        out["events"] = sorted((uid_of[r["study_id"]], r["seq"], r["event_uid"], r["dap_gycm2"])
                               for r in conn.execute(select(EventRow)).mappings())
    return out


def test_no_patient_identifiers_in_the_registry(db_url, corpus, tmp_path):
    engine = open_registry(db_url)
    ingest([tmp_path / "in"], engine, settings=AuditSettings(patient_link_key=KEY))
    needles = [PATIENT_NAME, PATIENT_ID, "DOE", "JANE", PATIENT_NAME.replace("^", " ")]
    found = []
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for column in table.columns:
                if isinstance(column.type, (String, Text)):
                    for value in conn.execute(select(column)).scalars():
                        if value and any(n.lower() in str(value).lower() for n in needles):
                            found.append((table.name, column.name, value))
        keys = set(conn.execute(select(StudyRow.patient_key)).scalars())
    assert found == []
    assert keys == {hmac.new(KEY, PATIENT_ID.encode(), hashlib.sha256).hexdigest()}
    engine.dispose()


def test_vendor_reports_ingest_with_their_planes(db_url):
    from tests.dose.conftest import VENDOR_DIR, VENDOR_FILES

    if not all((VENDOR_DIR / n).is_file() for n in VENDOR_FILES):
        pytest.skip(f"vendor RDSRs are not cached in {VENDOR_DIR}: run tests/dose/fetch_vendor_rdsr.sh")
    engine = open_registry(db_url)
    result = ingest([VENDOR_DIR / n for n in VENDOR_FILES], engine)
    assert (result.reports, result.rejected) == (4, [])
    expected = {s.study_instance_uid: s for s in summarize([VENDOR_DIR / n for n in VENDOR_FILES])[0]}
    got = _studies(engine)
    assert sorted(got) == sorted(expected)
    with engine.connect() as conn:
        for uid, study in expected.items():
            planes = conn.execute(select(PlaneRow).where(PlaneRow.study_id == got[uid]["id"])
                                  .order_by(PlaneRow.plane)).mappings().all()
            assert [p["plane"] for p in planes] == [p.plane for p in study.planes]
            for row, plane in zip(planes, study.planes):
                assert row["dap_gycm2"] == pytest.approx(plane.dap_gycm2, rel=1e-12)
            assert got[uid]["air_kerma_mgy"] == pytest.approx(study.air_kerma_mgy, rel=1e-12)
    engine.dispose()


def test_two_ingests_at_once_take_turns_per_batch(db_url, tmp_path, monkeypatch):
    """Two ingests write the same new study and device at the same time: the second waits for
    the first's batch (a registry lock per batch), then finds its study and device and adds to
    them, instead of failing on a duplicate row (it did)."""
    import threading
    import time

    from sifluoro.audit.parse import parse_file
    from sifluoro.audit.schema import DeviceRow
    from tests.dicom_fixtures import RunSpec, write_study

    uid = "1.2.826.0.1.3680043.8.498.4242"
    first = write_study(tmp_path / "a", [RunSpec(0.0, n_frames=4)], study_uid=uid)[0]
    second = write_study(tmp_path / "b", [RunSpec(30.0, n_frames=4)], study_uid=uid)[0]
    engine = open_registry(db_url)
    settings = AuditSettings()
    writer_a, writer_b = ingest_module._Writer(engine, settings), ingest_module._Writer(engine, settings)
    results, errors, waited = [], [], []
    compute = ingest_module.study_dose

    def run(writer, path):
        try:
            result = ingest_module.IngestResult()
            writer.write_batch({uid: [parse_file(path)]}, result)
            results.append(result)
        except Exception as exc:  # the failure this test is about
            errors.append(exc)

    other = threading.Thread(target=run, args=(writer_b, second))

    def first_computes(*args, **kwargs):  # inside A's batch: B starts and must wait for it
        monkeypatch.setattr(ingest_module, "study_dose", compute)
        other.start()
        time.sleep(0.5)
        waited.append(other.is_alive())
        return compute(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "study_dose", first_computes)
    run(writer_a, first)
    other.join(60)
    assert errors == [] and waited == [True]
    assert [(r.studies_new, r.studies_updated) for r in results] == [(1, 0), (0, 1)]
    studies = _studies(engine)
    assert list(studies) == [uid] and _counts(engine)["instances"] == 2
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(DeviceRow)).scalar_one() == 1
    engine.dispose()


def _study_rows(engine) -> dict[str, tuple]:
    """study UID -> (source, n_events, dap_gycm2, number of instances)"""
    with engine.connect() as conn:
        out = {}
        for uid, sid, source, n_events, dap in conn.execute(select(
                StudyRow.study_instance_uid, StudyRow.id, StudyRow.source, StudyRow.n_events,
                StudyRow.dap_gycm2)):
            n = conn.execute(select(func.count()).where(InstanceRow.study_id == sid)).scalar_one()
            out[uid] = (source, n_events, dap, n)
    return out


def test_a_file_whose_study_uid_was_corrected_leaves_its_old_study(db_url, tmp_path):
    """PACS reconciliation corrects the Study UID of one run: the run's dose moves to the new
    study and the old study is recomputed without it (it kept it: counted twice); a study
    left with no files is removed."""
    import pydicom

    from tests.dicom_fixtures import RunSpec, write_study

    old, new = "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"
    paths = write_study(tmp_path / "wrong", [RunSpec(0.0, n_frames=8), RunSpec(20.0, n_frames=8)],
                        study_uid=old)
    engine = open_registry(db_url)
    ingest([tmp_path / "wrong"], engine)
    whole = _study_rows(engine)[old]
    (tmp_path / "fixed").mkdir()
    for i, path in enumerate(sorted(paths)):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = new
        ds.save_as(tmp_path / "fixed" / f"run{i}.dcm")
        ingest([tmp_path / "fixed" / f"run{i}.dcm"], engine)
        rows = _study_rows(engine)
        if i == 0:
            assert rows[old][1:] == (1, pytest.approx(whole[2] - rows[new][2], rel=1e-9), 1)
            assert rows[new][1] == 1
    rows = _study_rows(engine)
    assert list(rows) == [new]
    assert rows[new][1:] == (2, pytest.approx(whole[2], rel=1e-9), 2)
    engine.dispose()


def _study_with_report(folder, uid):
    from sifluoro.acquire.dicom_reader import read_study
    from sifluoro.config import DoseSettings
    from sifluoro.dose.accumulate import accumulate_study
    from sifluoro.dose.rdsr_write import write_rdsr
    from tests.dicom_fixtures import RunSpec, write_study

    write_study(folder / "images", [RunSpec(0.0, n_frames=8), RunSpec(20.0, n_frames=8)], study_uid=uid)
    study = read_study([folder / "images"])
    write_rdsr(study, accumulate_study(study, DoseSettings()), folder / "rdsr.dcm")


def test_a_moved_archive_is_recomputed_from_its_new_place(db_url, tmp_path):
    """The archive is moved after ingest; a late file of a study then recomputes it from the
    files' new place (it had been rewritten from the late file alone: RDSR dose lost)."""
    import shutil

    from tests.dicom_fixtures import RunSpec, write_study

    uid = "1.2.826.0.1.3680043.8.498.777"
    _study_with_report(tmp_path / "v1", uid)
    engine = open_registry(db_url)
    ingest([tmp_path / "v1"], engine)
    before = _study_rows(engine)[uid]
    assert before[0] == "rdsr" and before[3] == 3
    shutil.move(tmp_path / "v1", tmp_path / "v2")
    again = ingest([tmp_path / "v2"], engine)
    assert (again.unchanged, again.studies_updated) == (3, 0)
    with engine.connect() as conn:
        paths = conn.execute(select(InstanceRow.path)).scalars().all()
    assert all(p.startswith(str(tmp_path / "v2")) for p in paths)
    write_study(tmp_path / "late", [RunSpec(40.0, n_frames=4)], study_uid=uid)
    late = ingest([tmp_path / "late"], engine)
    assert (late.studies_updated, late.rejected) == (1, [])
    # the late run, made after the report, adds its dose to the report's (review s12 #2)
    (whole,), _ = summarize([tmp_path / "v2", tmp_path / "late"])
    assert whole.dap_gycm2 > before[2]
    assert _study_rows(engine)[uid] == (before[0], before[1] + 1,
                                        pytest.approx(whole.dap_gycm2, rel=1e-12), 4)
    engine.dispose()


def test_a_study_whose_recorded_file_is_gone_is_kept_and_the_new_file_rejected(db_url, tmp_path):
    """A recorded file was deleted after ingest (a spool cleaned): a late file of the study is
    rejected, saying why, and the study keeps its dose (it was shrunk to the late file)."""
    from tests.dicom_fixtures import RunSpec, write_study

    uid = "1.2.826.0.1.3680043.8.498.778"
    _study_with_report(tmp_path / "spool", uid)
    engine = open_registry(db_url)
    ingest([tmp_path / "spool"], engine)
    before = _study_rows(engine)[uid]
    (tmp_path / "spool" / "rdsr.dcm").unlink()
    late = write_study(tmp_path / "late", [RunSpec(40.0, n_frames=4)], study_uid=uid)[0]
    result = ingest([tmp_path / "late"], engine)
    assert [r.file for r in result.rejected] == [str(late)]
    assert "rdsr.dcm" in result.rejected[0].reason and "kept as it was" in result.rejected[0].reason
    assert _study_rows(engine)[uid] == before
    engine.dispose()


def test_a_corrected_file_waits_while_its_old_study_cannot_be_recomputed(db_url, tmp_path):
    """The old study has a recorded file that is gone: it is kept as it was, so the corrected
    run would count in both studies; the corrected file is rejected, saying why, until the
    missing file is back (review helper-53 #4)."""
    import shutil

    import pydicom

    from tests.dicom_fixtures import RunSpec, write_study

    old, new = "1.2.826.0.1.3680043.8.498.311", "1.2.826.0.1.3680043.8.498.322"
    paths = sorted(write_study(tmp_path / "a", [RunSpec(0.0, n_frames=8), RunSpec(20.0, n_frames=8)],
                               study_uid=old))
    engine = open_registry(db_url)
    ingest([tmp_path / "a"], engine)
    before = _study_rows(engine)
    shutil.move(paths[1], tmp_path / "away.dcm")  # the other run's file is gone
    ds = pydicom.dcmread(paths[0])
    ds.StudyInstanceUID = new
    (tmp_path / "fixed").mkdir()
    ds.save_as(tmp_path / "fixed" / "run.dcm")
    result = ingest([tmp_path / "fixed"], engine)
    assert [r.file for r in result.rejected] == [str(tmp_path / "fixed" / "run.dcm")]
    assert str(paths[1]) in result.rejected[0].reason and "(cannot be read (" not in result.rejected[0].reason
    assert _study_rows(engine) == before
    shutil.move(tmp_path / "away.dcm", paths[1])  # back: now it moves
    result = ingest([tmp_path / "fixed"], engine)
    assert result.rejected == []
    rows = _study_rows(engine)
    assert rows[old][1] == rows[new][1] == 1
    assert rows[old][2] + rows[new][2] == pytest.approx(before[old][2], rel=1e-9)
    engine.dispose()


@pytest.mark.parametrize("new_study_recorded", [False, True])
def test_a_file_corrected_in_place_joins_its_new_study_when_its_old_one_is_recomputed(
        db_url, tmp_path, new_study_recorded):
    """PACS reconciliation rewrites an archived file with a corrected Study UID; a later
    ingest that does not name that file recomputes its old study: the file moves to its new
    study then (its dose was in no study until the archive was ingested again)."""
    from tests.dicom_fixtures import RunSpec, write_study

    old, new = "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"
    paths = sorted(write_study(tmp_path / "archive", [RunSpec(0.0, n_frames=8), RunSpec(20.0, n_frames=8)],
                               study_uid=old))
    engine = open_registry(db_url)
    ingest([tmp_path / "archive"], engine)
    if new_study_recorded:
        write_study(tmp_path / "other", [RunSpec(60.0, n_frames=2)], study_uid=new)
        ingest([tmp_path / "other"], engine)
    before = _study_rows(engine)
    result, late = _correct_in_place_then_ingest_a_late_run(engine, paths[0], new, tmp_path / "today", old)
    assert result.rejected == []
    after = _study_rows(engine)
    # every run's dose in exactly one study: none lost, none counted twice
    assert after[old][2] + after[new][2] == pytest.approx(sum(v[2] for v in before.values()) + late,
                                                          rel=1e-9)
    assert after[old][3] == 2 and after[new][3] == (2 if new_study_recorded else 1)
    assert after[old][1] == 2 and after[new][1] == (2 if new_study_recorded else 1)
    engine.dispose()


def test_files_ingested_by_relative_path_are_found_from_another_directory(db_url, tmp_path, monkeypatch):
    """Day 1 ingests 'day1' from the archive's folder, day 2 a later file of the same study
    from elsewhere: the day-1 files are read again (they were taken for gone, and the day-2
    file rejected)."""
    from tests.dicom_fixtures import RunSpec, write_study

    uid = "1.2.826.0.1.3680043.8.498.333"
    write_study(tmp_path / "archive" / "day1", [RunSpec(0.0, n_frames=8), RunSpec(20.0, n_frames=8)],
                study_uid=uid)
    write_study(tmp_path / "archive" / "day2", [RunSpec(40.0, n_frames=4)], study_uid=uid)
    engine = open_registry(db_url)
    monkeypatch.chdir(tmp_path / "archive")
    ingest(["day1"], engine)
    monkeypatch.chdir(tmp_path)
    result = ingest([tmp_path / "archive" / "day2"], engine)
    assert result.rejected == []
    both = open_registry(str(tmp_path / "both.db"))
    ingest([tmp_path / "archive"], both)
    assert _study_rows(engine) == _study_rows(both)
    engine.dispose()
    both.dispose()


@pytest.mark.parametrize("how", ["one ingest", "original first"])
def test_an_instance_in_two_studies_counts_once_in_the_newer_files_study(db_url, tmp_path, how):
    """The archive keeps a run's original export and, elsewhere, its re-export with a
    corrected Study UID: the newer file's study has the run, the older copy is rejected naming
    it, and ingesting the archive again changes nothing (it crashed on a duplicate row, or
    moved the run back and forth on every ingest)."""
    import os

    import pydicom

    from tests.dicom_fixtures import RunSpec, write_study

    old, new = "1.2.826.0.1.3680043.8.498.444", "1.2.826.0.1.3680043.8.498.555"
    paths = sorted(write_study(tmp_path / "archive" / "day1", [RunSpec(0.0, n_frames=8), RunSpec(20.0, n_frames=8)],
                               study_uid=old))
    (tmp_path / "archive" / "fixed").mkdir()
    fixed = tmp_path / "archive" / "fixed" / "run0.dcm"
    ds = pydicom.dcmread(paths[0])
    ds.StudyInstanceUID = new
    ds.save_as(fixed)
    for path in paths:
        os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    os.utime(fixed, ns=(1_700_000_100_000_000_000,) * 2)  # re-exported later
    whole = summarize_dap(paths)
    engine = open_registry(db_url)
    if how == "original first":
        ingest([tmp_path / "archive" / "day1"], engine)
    results = [ingest([tmp_path / "archive"], engine) for _ in range(3)]
    rows = _study_rows(engine)
    assert sorted(rows) == [old, new]
    assert (rows[old][3], rows[new][3]) == (1, 1)
    assert rows[old][2] + rows[new][2] == pytest.approx(whole, rel=1e-9)
    assert rows[new][2] == pytest.approx(summarize_dap([fixed]), rel=1e-9)
    # (the original, recorded unchanged, is not read again until the corrected copy replaced it)
    for result in results[1:] if how == "original first" else results:
        assert [r.file for r in result.rejected] == [str(paths[0])]
        assert str(fixed) in result.rejected[0].reason
    assert _study_rows(engine) == rows
    engine.dispose()


def summarize_dap(paths):
    from sifluoro.dose.summary import summarize
    return sum(s.dap_gycm2 for s in summarize(paths)[0])


def test_an_older_copy_of_a_recorded_instance_in_the_same_study_is_not_used(db_url, tmp_path):
    """The re-export (newer, the same study) is recorded; a later ingest names the original
    export too: the original is rejected naming the re-export, every time (it replaced it, and
    the whole archive flipped the study's dose on every ingest)."""
    import os

    import pydicom

    from tests.dicom_fixtures import RunSpec, write_study

    uid = "1.2.826.0.1.3680043.8.498.666"
    paths = sorted(write_study(tmp_path / "export", [RunSpec(0.0, n_frames=8), RunSpec(20.0, n_frames=8)],
                               study_uid=uid))
    (tmp_path / "reexport").mkdir()
    fixed = tmp_path / "reexport" / "run0.dcm"
    ds = pydicom.dcmread(paths[0])
    ds.KVP = float(ds.KVP) + 10  # a corrected technique: another dose
    ds.save_as(fixed)
    for path in paths:
        os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    os.utime(fixed, ns=(1_700_000_100_000_000_000,) * 2)
    engine = open_registry(db_url)
    ingest([paths[1], fixed], engine)
    rows = _study_rows(engine)
    for _ in range(3):
        result = ingest([tmp_path / "export", tmp_path / "reexport"], engine)
        assert [r.file for r in result.rejected] == [str(paths[0])]
        assert _study_rows(engine) == rows
    engine.dispose()


def test_a_file_corrected_into_a_study_that_cannot_be_recomputed_stays_where_it_was(db_url, tmp_path):
    """A recorded file of A is corrected in place to name B, one of whose recorded files is
    gone; a new file of A comes: the file stays counted in A (it was in no study)."""
    from tests.dicom_fixtures import RunSpec, write_study

    a, b = "1.2.826.0.1.3680043.8.498.701", "1.2.826.0.1.3680043.8.498.702"
    a_paths = sorted(write_study(tmp_path / "A", [RunSpec(0.0, n_frames=8), RunSpec(20.0, n_frames=8)],
                                 study_uid=a))
    b_paths = sorted(write_study(tmp_path / "B", [RunSpec(0.0, n_frames=4), RunSpec(20.0, n_frames=4)],
                                 study_uid=b))
    engine = open_registry(db_url)
    ingest([tmp_path / "A", tmp_path / "B"], engine)
    before = _study_rows(engine)
    b_paths[1].unlink()
    result, late = _correct_in_place_then_ingest_a_late_run(engine, a_paths[0], b, tmp_path / "late", a)
    assert result.rejected == []
    after = _study_rows(engine)
    assert after[a][3] == 3 and after[b] == before[b]
    assert after[a][2] == pytest.approx(before[a][2] + late, rel=1e-9)
    engine.dispose()


def _correct_in_place_then_ingest_a_late_run(engine, path, new_uid, late_dir, old_uid):
    """Rewrite ``path`` in place with Study UID ``new_uid`` (PACS reconciliation), then ingest
    a later run of ``old_uid`` from ``late_dir`` alone: the ingest's result and that run's DAP."""
    import pydicom

    from sifluoro.dose.summary import summarize
    from tests.dicom_fixtures import RunSpec, write_study

    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = new_uid
    ds.save_as(path)
    write_study(late_dir, [RunSpec(40.0, n_frames=4)], study_uid=old_uid)
    return ingest([late_dir], engine), summarize([late_dir])[0][0].dap_gycm2


def test_long_free_text_a_file_above_2_gib_and_a_refused_study_lose_nothing_else(db_url, tmp_path):
    """A Reference Point Definition sent as a sentence (TID 10003 allows TEXT) and a run file
    above 2 GiB stopped a PostgreSQL ingest for good: the whole batch rolled back, on every run
    again. Now they are stored, and a study the database refuses is rejected alone, named
    (review s10 B#2: a Study UID longer than DICOM's 64 characters was one on PostgreSQL; it
    is stored now, review s24 #7: here the server is made to refuse a study)."""
    import struct

    import pydicom

    from tests.dose.conftest import VENDOR_DIR

    source = VENDOR_DIR / "siemens_axiom_artis.dcm"
    if not source.is_file():
        pytest.skip(f"vendor RDSRs are not cached in {VENDOR_DIR}: run tests/dose/fetch_vendor_rdsr.sh")
    sentence = "Interventional Reference Point: 15 cm from the isocentre toward the focal spot, " * 2
    ds = pydicom.dcmread(source)
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "113706":
            for sub in item.ContentSequence:
                if sub.ConceptNameCodeSequence[0].CodeValue == "113780":
                    del sub.ConceptCodeSequence
                    sub.ValueType, sub.TextValue = "TEXT", sentence
    (tmp_path / "in").mkdir()
    ds.save_as(tmp_path / "in" / "report.dcm")
    # a 1025-frame 1024² 16-bit loop: 2 GiB of pixels, sparse on disk
    (big,) = write_study(tmp_path / "in" / "big", [RunSpec(0.0, n_frames=1, size=1024)])
    run = pydicom.dcmread(big)
    del run.PixelData
    run.NumberOfFrames = 1025
    run.save_as(big)
    with open(big, "r+b") as fh:
        fh.seek(0, 2)
        fh.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 1025 * 1024 * 1024 * 2))
        fh.truncate(fh.tell() + 1025 * 1024 * 1024 * 2)
    (long_uid,) = write_study(tmp_path / "in" / "long", [RunSpec(0.0, n_frames=2, size=32)])
    long = pydicom.dcmread(long_uid)
    long.StudyInstanceUID = "1.2.826.0.1.3680043.8.498." + "1" * 50  # 76 characters
    long.save_as(long_uid)
    refused_uid = "1.2.826.0.1.3680043.8.498.99999"
    (odd,) = write_study(tmp_path / "in" / "odd", [RunSpec(0.0, n_frames=2, size=32)],
                         study_uid=refused_uid)
    engine = open_registry(db_url)
    with engine.begin() as conn:  # the server refuses that study (a rule of its own)
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE studies ADD CONSTRAINT no_99999 CHECK "
                                 f"(study_instance_uid <> '{refused_uid}')")
        else:
            conn.exec_driver_sql(f"CREATE TRIGGER no_99999 BEFORE INSERT ON studies WHEN "
                                 f"NEW.study_instance_uid = '{refused_uid}' BEGIN SELECT "
                                 "RAISE(ABORT, 'refused'); END")
    result = ingest([tmp_path / "in"], engine, settings=AuditSettings(batch_studies=10))
    got = _studies(engine)
    assert {str(ds.StudyInstanceUID), str(run.StudyInstanceUID), str(long.StudyInstanceUID)} == set(got)
    with engine.connect() as conn:
        points = set(conn.execute(select(EventRow.reference_point)).scalars())
        sizes = set(conn.execute(select(InstanceRow.size_bytes)).scalars())
    assert sentence.strip() in points and big.stat().st_size in sizes and big.stat().st_size > 2 ** 31
    assert [r.file for r in result.rejected] == [str(odd)]
    assert f"the registry refused study {refused_uid}" in result.rejected[0].reason
    engine.dispose()


def test_a_version_1_postgresql_registry_is_widened_in_place(postgres):
    """Registries made before version 2 hold VARCHAR(n) free text and 32-bit file sizes, and
    before version 6 UIDs of 64 characters at most."""
    from sqlalchemy import inspect, text

    from sifluoro.audit.schema import _UID_COLUMNS, _WIDENED

    url = postgres.create_database()
    engine = open_registry(url)
    old = {"TEXT": "VARCHAR(64)", "BIGINT": "INTEGER"}
    widened = _WIDENED + [(t, c, "TEXT") for t, c in _UID_COLUMNS]
    with engine.begin() as conn:  # back to how version 1 made them
        for table, column, kind in widened:
            conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {old[kind]}"))
        conn.execute(text("DROP TABLE report_scopes"))
        conn.execute(text("DELETE FROM schema_version WHERE version > 1"))
    engine.dispose()
    engine = open_registry(url)
    columns = {(t, c["name"]): str(c["type"]) for t in {w[0] for w in widened}
               for c in inspect(engine).get_columns(t)}
    assert {(t, c): columns[(t, c)] for t, c, _ in widened} == {(t, c): k for t, c, k in widened}
    assert "report_scopes" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(select(SchemaVersion.version)).scalars().all() == list(range(1, SCHEMA_VERSION + 1))
    engine.dispose()


#: the studies table as versions 1 and 2 made it on SQLite: every dose total NOT NULL
_V2_SQLITE_STUDIES = """CREATE TABLE studies (id INTEGER NOT NULL, study_instance_uid VARCHAR(64) NOT NULL,
 device_id INTEGER NOT NULL, procedure VARCHAR(128) NOT NULL, study_date DATE, patient_key VARCHAR(64),
 source VARCHAR(16) NOT NULL, dose_source VARCHAR(16) NOT NULL, n_events INTEGER NOT NULL,
 n_planes INTEGER NOT NULL, dap_gycm2 FLOAT NOT NULL, air_kerma_mgy FLOAT NOT NULL,
 fluoro_time_s FLOAT NOT NULL, fluoro_dap_gycm2 FLOAT NOT NULL, fluoro_air_kerma_mgy FLOAT NOT NULL,
 acquisition_dap_gycm2 FLOAT NOT NULL, acquisition_air_kerma_mgy FLOAT NOT NULL,
 acquisition_time_s FLOAT NOT NULL, planes_from_report BOOLEAN NOT NULL, srdl_exceeded VARCHAR(64) NOT NULL,
 ingested_at DATETIME NOT NULL, PRIMARY KEY (id), UNIQUE (study_instance_uid),
 FOREIGN KEY(device_id) REFERENCES devices (id))"""


def _roll_back(engine, version: int, zeroed: dict[str, tuple[str, ...]], rebuild_sqlite) -> None:
    """Take the registry back to ``version``: ``zeroed`` table -> columns whose NULLs become 0
    (what older versions stored), and the studies table's of them NOT NULL again (SQLite:
    ``rebuild_sqlite(conn)`` rebuilds the table, its foreign keys off meanwhile)."""
    from sqlalchemy import text

    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        with conn.begin():
            for table, columns in zeroed.items():
                for column in columns:
                    conn.execute(text(f"UPDATE {table} SET {column} = 0 WHERE {column} IS NULL"))
            if sqlite:
                rebuild_sqlite(conn)
            else:
                for column in zeroed["studies"]:
                    conn.execute(text(f"ALTER TABLE studies ALTER COLUMN {column} SET NOT NULL"))
            conn.execute(text(f"DELETE FROM schema_version WHERE version > {version}"))
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()
    engine.dispose()


def _back_to_version_2(engine) -> None:
    """The registry as version 2 left it: totals NOT NULL, an unknown total stored as 0."""
    from sifluoro.audit.schema import _NULLABLE_TOTALS

    def rebuild(conn):
        conn.exec_driver_sql("CREATE TABLE v2 AS SELECT * FROM studies")
        conn.exec_driver_sql("DROP TABLE studies")
        conn.exec_driver_sql(_V2_SQLITE_STUDIES)
        conn.exec_driver_sql("INSERT INTO studies SELECT * FROM v2")
        conn.exec_driver_sql("DROP TABLE v2")

    totals = tuple(column for column, _, _ in _NULLABLE_TOTALS)
    _roll_back(engine, 2, {"studies": totals, "plane_totals": totals}, rebuild)


def test_a_version_2_registry_keeps_its_rows_and_stores_unknown_totals_as_null(db_url, tmp_path):
    """Version 2 stored a dose total none of a study's events gives (headers reporting DAP
    only, no technique) as 0, so SQL medians counted it as a measured 0. Version 3 makes the
    totals nullable and turns those 0s into NULL; every other row and value is kept (SQLite
    rebuilds the table: its drop must not cascade to the events, instances and planes)."""
    from tests.dicom_fixtures import technique

    write_study(tmp_path / "in" / "dap-only", [RunSpec(0.0, n_frames=5, tech=technique(
        kvp=None, reported_dap_gycm2=2.0))])
    write_study(tmp_path / "in" / "both", [RunSpec(0.0, n_frames=5, tech=technique(
        reported_dap_gycm2=4.0, reported_air_kerma_mgy=40.0))])
    ingest([tmp_path / "in"], db_url)
    engine = open_registry(db_url)
    before = _counts(engine)
    _back_to_version_2(engine)
    engine = open_registry(db_url)
    with engine.connect() as conn:
        assert conn.execute(select(SchemaVersion.version)).scalars().all() == list(range(1, SCHEMA_VERSION + 1))
        kerma = sorted(conn.execute(select(StudyRow.air_kerma_mgy)).scalars(), key=str)
        dap = sorted(conn.execute(select(StudyRow.dap_gycm2)).scalars())
        planes = sorted(conn.execute(select(PlaneRow.air_kerma_mgy)).scalars(), key=str)
        nulls = conn.execute(select(func.count()).where(StudyRow.fluoro_air_kerma_mgy.is_(None))).scalar_one()
    assert _counts(engine) == before  # nothing cascaded away
    assert kerma == [pytest.approx(40.0), None] and dap == [pytest.approx(2.0), pytest.approx(4.0)]
    assert planes == [pytest.approx(40.0), None] and nulls == 1
    ingest([tmp_path / "in"], db_url)  # still takes studies
    engine.dispose()


def test_a_locked_registry_is_an_error_not_a_list_of_refused_studies(tmp_path, capsys):
    """Another writer holds SQLite's lock past the busy timeout: every study was 'refused by
    the registry' and the ingest exited 0 (review s10 C#4). It says so and exits 1; a later
    run takes the files."""
    import sqlite3

    from sifluoro.cli import main

    for k in range(2):
        write_study(tmp_path / "in" / f"s{k}", [RunSpec(0.0, n_frames=3)])
    db = tmp_path / "r.db"
    open_registry(f"sqlite:///{db}").dispose()
    holder = sqlite3.connect(db, timeout=0, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code = main(["audit", "ingest", str(tmp_path / "in"), "--db", f"sqlite:///{db}", "-q",
                     "--lock-wait-s", "0.5"])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 1 and "the registry could not be written (database is locked)" in capsys.readouterr().err
    assert main(["audit", "ingest", str(tmp_path / "in"), "--db", f"sqlite:///{db}", "-q"]) == 0
    assert len(_studies(open_registry(f"sqlite:///{db}"))) == 2


def test_an_interrupted_migration_leaves_the_registry_as_it_was(db_url, tmp_path, monkeypatch):
    """SQLite's driver committed the rebuild's CREATE TABLE on its own: a migration stopped
    part way (Ctrl-C, a full disk) left a table that made every later open fail (review s11
    B#3). The whole migration is one transaction; the next open migrates."""
    from sqlalchemy import inspect

    from sifluoro.audit import schema

    write_study(tmp_path / "in" / "s", [RunSpec(0.0, n_frames=3)])
    ingest([tmp_path / "in"], db_url)
    engine = open_registry(db_url)
    before = _counts(engine)
    _back_to_version_2(engine)
    real = schema._v3

    def interrupted(conn):
        real(conn)
        raise KeyboardInterrupt

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS[:2], (3, interrupted)])
    with pytest.raises(KeyboardInterrupt):
        open_registry(db_url)
    monkeypatch.undo()
    engine = create_engine(db_url)
    assert "studies_v3" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(select(SchemaVersion.version)).scalars().all() == [1, 2]
    engine.dispose()
    engine = open_registry(db_url)
    assert _counts(engine) == before
    engine.dispose()


def test_two_processes_opening_an_old_registry_take_turns(db_url, tmp_path, monkeypatch):
    """Both read the versions before either wrote them: the second failed on a duplicate
    version row (review s11 B#6). The first migrates holding the lock; the second waits and
    finds it done."""
    import threading
    import time

    from sifluoro.audit import schema

    write_study(tmp_path / "in" / "s", [RunSpec(0.0, n_frames=3)])
    ingest([tmp_path / "in"], db_url)
    engine = open_registry(db_url)
    _back_to_version_2(engine)
    real = schema._v3

    def slow(conn):
        time.sleep(1.0)
        real(conn)

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS[:2], (3, slow)])
    errors = []

    def open_it():
        try:
            open_registry(db_url).dispose()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    engine = open_registry(db_url)
    with engine.connect() as conn:
        assert conn.execute(select(SchemaVersion.version)).scalars().all() == [1, 2, 3]
    engine.dispose()


def test_a_run_made_after_the_devices_report_is_in_the_registry(db_url, tmp_path):
    """The registry held the report's 10 mGy and no SRDL; the run after it reports 5500 mGy
    (review s12 #2)."""
    from tests.dose.test_partial_report import partial_report_study

    engine = open_registry(db_url)
    ingest([partial_report_study(tmp_path / "in")], engine)
    (row,) = _studies(engine).values()
    assert (row["air_kerma_mgy"], row["n_events"]) == (pytest.approx(5510.0), 2)
    assert row["srdl_exceeded"] == "air_kerma"
    engine.dispose()


def _untimed_report(folder):
    """A report without Total Fluoro Time whose fluoroscopy events say nothing of their time."""
    from tests.dose.rdsr_fixtures import Ev, build_rdsr, save

    ds = build_rdsr([Ev(dap_gycm2=20.0, rp_mgy=300.0), Ev(dap_gycm2=10.0, rp_mgy=150.0)],
                    accumulated={"single": {"dap_total": 30.0, "rp_total": 450.0, "fl_dap": 30.0,
                                            "fl_rp": 450.0}})
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "113706":  # no pulse rate, no pulses
            item.ContentSequence = [c for c in item.ContentSequence
                                    if c.ConceptNameCodeSequence[0].CodeValue not in ("113791", "113768")]
    return save(ds, folder / "no_time.dcm")


def _back_to_version_3(engine) -> None:
    """The registry as version 3 left it: time totals NOT NULL, an unknown time stored as 0."""
    from sqlalchemy import MetaData

    from sifluoro.audit.schema import DeviceRow

    times = ("fluoro_time_s", "acquisition_time_s")

    def rebuild(conn):
        metadata = MetaData()
        DeviceRow.__table__.to_metadata(metadata)
        old = StudyRow.__table__.to_metadata(metadata, name="v3")
        for index in list(old.indexes):
            old.indexes.discard(index)
        for column in times:
            old.c[column].nullable = False
        old.create(conn)
        conn.exec_driver_sql("INSERT INTO v3 SELECT * FROM studies")
        conn.exec_driver_sql("DROP TABLE studies")
        conn.exec_driver_sql("ALTER TABLE v3 RENAME TO studies")

    _roll_back(engine, 3, {"studies": times}, rebuild)


def test_an_unknown_fluoroscopy_time_is_null_and_a_version_3_registry_is_migrated(db_url, tmp_path):
    """A report that gives no fluoroscopy time and events without one: 0.0 s went into the
    registry's medians (review s12 #13). It is NULL; versions 4 and 5 turn such stored 0s into
    NULL (5: a totals-only study, which 4 missed) and keep the rest (a timed study keeps its
    time)."""
    _untimed_report(tmp_path / "in" / "untimed")
    write_study(tmp_path / "in" / "timed", [RunSpec(0.0, n_frames=5)])
    from tests.dose.rdsr_fixtures import build_rdsr, save

    # totals only: a fluoroscopy dose and no time (version 4 left its 0; second review s12 #11)
    save(build_rdsr([], accumulated={"single": {"dap_total": 12.0, "rp_total": 90.0,
                                                "fl_dap": 12.0, "fl_rp": 90.0}}),
         tmp_path / "in" / "totals" / "r.dcm")
    ingest([tmp_path / "in"], db_url)
    engine = open_registry(db_url)
    before = _counts(engine)

    def times():
        with engine.connect() as conn:
            return sorted(conn.execute(select(StudyRow.fluoro_time_s, StudyRow.air_kerma_mgy)).all(),
                          key=lambda r: r[1])

    timed, totals, untimed = times()
    assert untimed == (None, pytest.approx(450.0)) and timed[0] > 0
    assert totals == (None, pytest.approx(90.0))
    _back_to_version_3(engine)
    engine = open_registry(f"{db_url}")
    assert [t for t, _ in times()] == [pytest.approx(timed[0]), None, None]
    assert _counts(engine) == before
    with engine.connect() as conn:
        assert conn.execute(select(SchemaVersion.version)).scalars().all() == list(range(1, SCHEMA_VERSION + 1))
    engine.dispose()


def test_a_rejected_file_names_its_error_class(tmp_path):
    """Second review s15 L3: ingest's rejections carried only a text."""
    import pydicom

    (path,) = write_study(tmp_path / "in", [RunSpec(0.0)])
    ds = pydicom.dcmread(path)
    del ds.SOPInstanceUID
    ds.save_as(path)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    result = ingest([tmp_path / "in"], f"sqlite:///{tmp_path / 'r.db'}")
    errors = sorted((r.file.rsplit("/", 1)[-1], r.error, r.tag) for r in result.rejected)
    assert errors == [(path.name, "MissingAttributeError", "(0008,0018) SOPInstanceUID"),
                      ("notes.txt", "NotDicomError", "")]


def test_a_run_without_rows_is_ingested_with_its_dose(tmp_path):
    """User review s18 F9: its dose is in its header; the registry took none of it."""
    import pydicom

    (path,) = write_study(tmp_path / "in", [RunSpec(0.0)])
    whole = ingest([tmp_path / "in"], f"sqlite:///{tmp_path / 'a.db'}")
    ds = pydicom.dcmread(path)
    del ds.Rows
    ds.save_as(path)
    result = ingest([tmp_path / "in"], f"sqlite:///{tmp_path / 'r.db'}")
    assert not result.rejected and result.studies_new == whole.studies_new == 1


def test_a_binary_link_key_file_is_a_key(corpus, tmp_path):
    """``--link-key-file`` with random bytes (``head -c 32 /dev/urandom``) ended in a
    UnicodeDecodeError traceback (review s16 M3): the bytes are the key; a text key gives the
    stripped text as before, so a registry's links do not change."""
    import subprocess
    import sys
    from pathlib import Path

    from sifluoro.audit.settings import read_link_key

    raw = bytes(range(0x80, 0xa0))  # 32 bytes, not UTF-8
    (tmp_path / "key.bin").write_bytes(raw)
    assert read_link_key(tmp_path / "key.bin") == raw
    for text in (b"0123456789abcdef-text-key\n", b"  0123456789abcdef\r\n", b"caf\xc3\xa9-0123456789abcdef\r"):
        (tmp_path / "key.txt").write_bytes(text)
        before = Path(tmp_path / "key.txt").read_text(encoding="utf-8").strip().encode("utf-8")
        assert read_link_key(tmp_path / "key.txt") == before
    db = tmp_path / "k.db"
    run = subprocess.run([sys.executable, "-m", "sifluoro", "audit", "ingest", str(tmp_path / "in"),
                          "--db", str(db), "--workers", "1", "-q",
                          "--link-key-file", str(tmp_path / "key.bin")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    engine = open_registry(f"sqlite:///{db}")
    with engine.connect() as conn:
        keys = set(conn.execute(select(StudyRow.patient_key)).scalars())
    engine.dispose()
    assert keys == {hmac.new(raw, PATIENT_ID.encode(), hashlib.sha256).hexdigest()}


def test_an_archive_s_non_dicom_files_are_counted_not_listed_as_faults(tmp_path, capsys):
    """User review s18 F8: an archive's notes and exports gave one "not taken ...: not a DICOM
    file ...; remove it from the input" line each, hiding the summary; a real fault is still
    named on its own line."""
    import pydicom

    from sifluoro.cli import main

    (path,) = write_study(tmp_path / "in" / "s1", [RunSpec(0.0)])
    for k in range(5):
        (tmp_path / "in" / f"notes{k}.txt").write_text("not DICOM")
    (bad,) = write_study(tmp_path / "in" / "s2", [RunSpec(0.0)])
    ds = pydicom.dcmread(bad)
    del ds.SOPInstanceUID
    ds.save_as(bad)
    assert main(["audit", "ingest", str(tmp_path / "in"), "--db",
                 f"sqlite:///{tmp_path / 'r.db'}"]) == 0
    out, err = capsys.readouterr()
    assert "sifluoro: 5 file(s) passed over, not DICOM:" in err and "remove it" not in err
    assert out.startswith("7 files: 0 dose reports, 1 image run, 0 unchanged, 6 not taken; "
                          "1 study new, 0 updated")  # counts said in the singular when one
    assert err.count("not taken") == 1 and "SOPInstanceUID" in err


def test_ingest_counts_partition_the_files_and_a_reingest_of_duplicates_changes_nothing(
        tmp_path, capsys):
    """User review s19 U4: with duplicate instances the line did not add up ("47 files: 2 dose
    reports, 23 image runs, 0 unchanged, 33 not taken", 58: the older copies counted as image
    runs and as not taken) and ingesting the same files again "updated" a study."""
    import os
    import re
    import shutil

    from sifluoro.cli import main

    paths = sorted(write_study(tmp_path / "in" / "s1", [RunSpec(0.0), RunSpec(20.0)]))
    for k, path in enumerate(paths):  # an older export of each run elsewhere
        copy = tmp_path / "in" / "old" / f"copy{k}.dcm"
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, copy)
        with open(copy, "ab") as f:  # other bytes (trailing padding), the same instance
            f.write(b"\0\0")
        os.utime(copy, ns=(1_700_000_000_000_000_000,) * 2)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    db = f"sqlite:///{tmp_path / 'r.db'}"
    lines = []
    for _ in range(2):
        assert main(["audit", "ingest", str(tmp_path / "in"), "--db", db]) == 0
        out, err = capsys.readouterr()
        lines.append(out)
        assert "not taken" not in err and "2 file(s) passed over, another copy of an instance being used" in err
    counts = [[int(n) for n in re.findall(r"(\d+) (?:files?|image runs?|dose reports?|unchanged|"
                                          r"older cop(?:y|ies)|not taken)", line.split(";")[0])] for line in lines]
    for (files, *parts) in counts:
        assert files == 5 and sum(parts) == files
    assert lines[0].startswith("5 files: 0 dose reports, 2 image runs, 0 unchanged, 2 older copies "
                               "of an instance, 1 not taken; 1 study new, 0 updated")
    assert lines[1].startswith("5 files: 0 dose reports, 0 image runs, 2 unchanged, 2 older copies "
                               "of an instance, 1 not taken; 0 studies new, 0 updated")


@pytest.mark.parametrize("how", ["one ingest", "whole study first"])
def test_a_file_cut_inside_its_study_uid_joins_its_study_not_a_phantom_one(db_url, tmp_path, how):
    """User review s19 U1: a run's file cut inside its header, inside the StudyInstanceUID
    value, made a study of its own in the registry (its UID the start of the real one's): one
    procedure counted twice, its median DAP halved. It joins its study, as in dose summary."""
    import pydicom

    paths = sorted(write_study(tmp_path / "in", [RunSpec(0.0, n_frames=4), RunSpec(20.0, n_frames=4)]))
    uid = pydicom.dcmread(paths[1]).StudyInstanceUID
    data = paths[1].read_bytes()
    cut = tmp_path / "late" / "cut.dcm"
    cut.parent.mkdir()
    cut.write_bytes(data[:data.index(uid.encode()) + len(uid) // 2])
    paths[1].unlink()
    engine = open_registry(db_url)
    if how == "whole study first":
        ingest([tmp_path / "in"], engine)
        result = ingest([cut], engine)
        assert (result.studies_new, result.studies_updated) == (0, 1)
    else:
        ingest([tmp_path / "in", cut], engine)
    assert list(_studies(engine)) == [uid]
    assert _counts(engine)["instances"] == 2
    studies, _ = summarize([tmp_path / "in", cut])
    assert [s.study_instance_uid for s in studies] == [uid]
    engine.dispose()


@pytest.mark.parametrize("how", ["one ingest", "whole recorded first"])
def test_a_newer_copy_cut_short_does_not_replace_the_whole_file(db_url, tmp_path, how):
    """User review s20 P2: the registry took a newer copy cut short in its pixel data over the
    whole file it held ("1 updated", nothing named), while replay and dose summary keep the
    whole one and say so."""
    import os

    paths = sorted(write_study(tmp_path / "in", [RunSpec(0.0, n_frames=8), RunSpec(20.0, n_frames=8)]))
    data = paths[1].read_bytes()
    cut = tmp_path / "late" / "cut.dcm"
    cut.parent.mkdir()
    cut.write_bytes(data[:len(data) - len(data) // 4])  # an interrupted copy, newer
    for path in paths:
        os.utime(path, ns=(1_700_000_000_000_000_000,) * 2)
    engine = open_registry(db_url)
    if how == "whole recorded first":
        ingest([tmp_path / "in"], engine)
        before = _studies(engine)
        result = ingest([cut], engine)
        assert result.studies_updated == 0 and _studies(engine) == before
    else:
        result = ingest([tmp_path / "in", cut], engine)
    assert [r.file for r in result.rejected] == [str(cut)] and str(paths[1]) in result.rejected[0].reason
    with engine.connect() as conn:
        recorded = set(conn.execute(select(InstanceRow.path)).scalars())
    assert recorded == {str(p) for p in paths}
    engine.dispose()


def test_a_file_cut_before_its_pixel_data_with_a_whole_study_uid_joins_no_other_study(db_url, tmp_path):
    """Review s20 I1: any file cut before its pixel data joined a study whose UID starts with
    its own, also when its own Study UID was whole (study ...777.5 of another patient joined
    ...777.51), in the registry and in dose summary alike."""
    a = write_study(tmp_path / "A", [RunSpec(0.0, n_frames=3)], study_uid="1.2.826.0.1.3680043.9.777.51")
    b = write_study(tmp_path / "B", [RunSpec(0.0, n_frames=3)], study_uid="1.2.826.0.1.3680043.9.777.5")
    data = b[0].read_bytes()
    cut = tmp_path / "Bcut.dcm"
    cut.write_bytes(data[:data.rindex(b"\xe0\x7f\x10\x00") - 2])  # before (7FE0,0010)
    engine = open_registry(db_url)
    ingest([tmp_path / "A"], engine)
    result = ingest([cut], engine)
    assert (result.studies_new, result.studies_updated) == (1, 0)
    assert sorted(_studies(engine)) == ["1.2.826.0.1.3680043.9.777.5", "1.2.826.0.1.3680043.9.777.51"]
    studies, _ = summarize([tmp_path / "A", cut])
    assert len(studies) == 2
    engine.dispose()


def test_a_derived_copy_of_a_run_adds_no_dose_to_its_study(db_url, tmp_path):
    """A processed copy (ImageType DERIVED, naming its source) ingested after its study: the
    study's dose stays that of its original runs, as ``dose summary`` gives it, the copy
    rejected naming the run it copies (and, recorded, unchanged on the next ingest)."""
    from tests.dicom_fixtures import RunSpec, write_study
    from tests.test_reader import derived_copy

    first, _ = write_study(tmp_path / "in", [RunSpec(0.0, n_frames=8), RunSpec(20.0)])
    [expected], _ = summarize([tmp_path / "in"])
    engine = open_registry(db_url)
    ingest([tmp_path / "in"], engine)
    (tmp_path / "later").mkdir()
    derived_copy(first, tmp_path / "later" / "copy.dcm")
    result = ingest([tmp_path / "later"], engine)
    assert [r.error for r in result.rejected] == ["CopiedRunError"]
    assert first.name in result.rejected[0].reason
    again = ingest([tmp_path / "in", tmp_path / "later"], engine)  # recorded: unchanged
    assert (again.unchanged, again.rejected) == (3, [])
    [row] = _studies(engine).values()
    assert (row["dap_gycm2"], row["n_events"]) == pytest.approx(
        (expected.summary()["dap_gycm2"], expected.summary()["events"]))
    engine.dispose()


def test_a_second_ingest_waits_for_a_long_batch_to_commit(tmp_path, monkeypatch):
    """Review s24 #3: a batch recomputing 200 studies from their files holds SQLite's write lock
    for seconds, and SQLite's driver waits 5 s by default: the second of two ingests failed
    ("database is locked", exit 1) where the README says they take turns. It waits now."""
    import sqlite3
    import threading

    write_study(tmp_path / "in", [RunSpec(0.0, n_frames=3)])
    db = tmp_path / "r.db"
    open_registry(f"sqlite:///{db}").dispose()
    holder = sqlite3.connect(db, timeout=0, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another ingest's batch, 6 s long
    threading.Timer(6.0, lambda: holder.execute("ROLLBACK")).start()
    result = ingest([tmp_path / "in"], f"sqlite:///{db}")
    holder.close()
    assert result.studies_new == 1 and result.rejected == []


def test_a_device_named_by_pages_of_text_is_stored_with_the_rest_of_its_batch(db_url, tmp_path):
    """Review s24 #4: a report's Device Observer Name (free TEXT) of 6 000 characters made
    PostgreSQL's row of the devices' unique index too long (ProgramLimitExceeded, an
    OperationalError to SQLAlchemy): the whole ingest stopped, the batch's good studies lost,
    on every run again. The name is kept to DEVICE_TEXT_CHARS; a value the server refuses
    for a limit of its own rejects that study alone."""
    import random
    import string

    import pydicom

    from sifluoro.audit.ingest import DEVICE_TEXT_CHARS
    from sifluoro.audit.schema import DeviceRow
    from tests.dose.conftest import VENDOR_DIR

    source = VENDOR_DIR / "siemens_axiom_artis.dcm"
    if not source.is_file():
        pytest.skip(f"vendor RDSRs are not cached in {VENDOR_DIR}: run tests/dose/fetch_vendor_rdsr.sh")
    write_study(tmp_path / "in" / "images", [RunSpec(0.0, n_frames=3)])
    ds = pydicom.dcmread(source)
    name = "AXIS01475 " + "".join(random.Random(1).choice(string.ascii_letters)
                                  for _ in range(6000))
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "121013":  # Device Observer Name
            item.TextValue = name
        if item.ConceptNameCodeSequence[0].CodeValue == "121016":  # a NUL in the serial (s24 #7)
            item.TextValue = "A\x00B"
    ds.save_as(tmp_path / "in" / "report.dcm")
    engine = open_registry(db_url)
    result = ingest([tmp_path / "in"], engine)
    assert result.rejected == [] and len(_studies(engine)) == 2
    with engine.connect() as conn:
        names = set(conn.execute(select(DeviceRow.station_name)).scalars())
        serials = set(conn.execute(select(DeviceRow.serial_number)).scalars())
    assert name[:DEVICE_TEXT_CHARS - 1] + "…" in names and "AB" in serials
    engine.dispose()


def test_a_value_over_a_servers_limit_rejects_its_study_alone():
    """The SQLSTATE classes of a value the server refuses (data 22, constraint 23, limit 54)
    reject the study; a lock or a server gone (class 08, 40, 55) stops the ingest, said."""
    from sqlalchemy.exc import OperationalError

    from sifluoro.audit.ingest import _refused_value

    class Orig(Exception):
        def __init__(self, sqlstate):
            self.sqlstate = sqlstate

    refused = [_refused_value(OperationalError("x", {}, Orig(s)))
               for s in ("54000", "22001", "23505", "08006", "40P01", "55P03", None)]
    assert refused == [True, True, True, False, False, False, False]


def test_event_starts_are_stored_on_the_devices_clock_on_every_backend(db_url, tmp_path):
    """Review s24b #7: with UTC offsets kept, PostgreSQL stored an image run's start turned to
    the session's zone (08:30) where SQLite stored the device's clock (09:30), as both did
    before. Both store the device's clock."""
    import pydicom

    from sifluoro.acquire.dicom_reader import read_study
    from sifluoro.config import DoseSettings
    from sifluoro.dose.accumulate import accumulate_study
    from sifluoro.dose.rdsr_read import read_rdsr
    from sifluoro.dose.rdsr_write import write_rdsr

    (path,) = write_study(tmp_path / "images", [RunSpec(0.0, n_frames=3)])
    ds = pydicom.dcmread(path)
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.save_as(path)
    study = read_study([tmp_path / "images"])
    report = write_rdsr(study, accumulate_study(study, DoseSettings()), tmp_path / "in" / "r.dcm")
    [event] = read_rdsr(report).events
    assert event.start.utcoffset().total_seconds() == 3600
    engine = open_registry(db_url)
    ingest([tmp_path / "in"], engine)
    with engine.connect() as conn:
        [start] = conn.execute(select(EventRow.start)).scalars()
    assert start == event.start.replace(tzinfo=None)
    engine.dispose()


def _report_covering(folder, scope_uid: str) -> str:
    """A device report (DAP 5 Gy·cm², its events untimed) in a study of its own whose Scope of
    Accumulation names study ``scope_uid`` (one of the vendors' example files does so)."""
    from pydicom.uid import generate_uid

    from tests.dose.rdsr_fixtures import Ev, build_rdsr, coded, save, uidref

    uid = generate_uid()
    ds = build_rdsr([Ev(dap_gycm2=3.0, rp_mgy=30.0), Ev(dap_gycm2=2.0, rp_mgy=20.0)], study_uid=uid)
    item = coded(("113705", "DCM", "Scope of Accumulation"), ("113014", "DCM", "Study"),
                 "HAS OBS CONTEXT")
    item.ContentSequence = [uidref(("110180", "DCM", "Study Instance UID"), scope_uid, "HAS PROPERTIES")]
    ds.ContentSequence.insert(3, item)
    save(ds, folder / "report.dcm")
    return uid


@pytest.mark.parametrize("order", ["one ingest", "images first", "report first"])
def test_the_images_of_a_reports_scope_study_count_in_the_reports_study(db_url, tmp_path, order):
    """Review s24 #5: a report naming study X in its Scope of Accumulation and study Y in its
    header, beside X's image runs: ``dose summary`` counts one study, Y, with the report's dose
    (the report covers the runs); the registry kept X apart as a study of its own and counted
    the runs' dose beside the report's (5 + 4 Gy·cm²), in whatever order the files came."""
    from pydicom.uid import generate_uid

    from sifluoro.audit.schema import ScopeRow

    scope_uid = generate_uid()
    images = tmp_path / "in" / "images"
    write_study(images, [RunSpec(0.0, n_frames=3, tech=_reported(2.0)),
                         RunSpec(30.0, n_frames=3, tech=_reported(2.0))], study_uid=scope_uid)
    report_uid = _report_covering(tmp_path / "in" / "report", scope_uid)
    (expected,), _ = summarize([tmp_path / "in"])
    assert (expected.study_instance_uid, expected.dap_gycm2) == (report_uid, pytest.approx(5.0))
    engine = open_registry(db_url)
    parts = {"one ingest": ["in"], "images first": ["in/images", "in/report"],
             "report first": ["in/report", "in/images"]}[order]
    for part in parts:
        ingest([tmp_path / part], engine)
    assert {u: r["dap_gycm2"] for u, r in _studies(engine).items()} == {report_uid: pytest.approx(5.0)}
    assert _counts(engine)["instances"] == 3
    # a later run of the scope study joins the report's study too; a re-ingest changes nothing
    write_study(tmp_path / "late", [RunSpec(60.0, n_frames=3, tech=_reported(2.0))], study_uid=scope_uid)
    ingest([tmp_path / "late"], engine)
    ingest([tmp_path / "in", tmp_path / "late"], engine)
    assert list(_studies(engine)) == [report_uid]
    assert _counts(engine)["instances"] == 4
    with engine.connect() as conn:
        assert conn.execute(select(ScopeRow.scope_study_instance_uid)).scalars().all() == [scope_uid]
    engine.dispose()


def _reported(dap_gycm2: float):
    from tests.dicom_fixtures import technique

    return technique(reported_dap_gycm2=dap_gycm2, reported_air_kerma_mgy=10.0 * dap_gycm2)
