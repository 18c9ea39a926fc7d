"""Source of Dose Information (CID 10021) read back per event: sifluoro's estimates entered
the registry as a device's dose, 'rdsr' (review s12 #6)."""
from __future__ import annotations

import pydicom

from sifluoro.dose.rdsr_read import read_rdsr
from sifluoro.replay import replay
from tests.dicom_fixtures import RunSpec, as_device_report, technique, write_study
from tests.dose.rdsr_fixtures import Ev, acquired, build_rdsr, save
from tests.dose.test_unstored import unstored_study


def _own_report(tmp_path, specs):
    write_study(tmp_path / "study", specs)
    replay([tmp_path / "study"], events_path=tmp_path / "e.jsonl", summary_path=tmp_path / "s.json",
           rdsr_path=tmp_path / "r.dcm", stages=[])
    return tmp_path / "r.dcm"


def test_sifluoros_estimates_and_header_doses_read_back_as_such(tmp_path):
    path = _own_report(tmp_path, [RunSpec(0.0, n_frames=3), RunSpec(20.0, n_frames=3, tech=technique(
        reported_air_kerma_mgy=5.0, reported_dap_gycm2=0.5))])
    report = read_rdsr(path)
    assert [e.dose_source for e in report.events] == ["estimated", "reported"]
    assert report.dose_source == "mixed" and report.summary()["dose_source"] == "mixed"
    # the same report as a device sends it ("Computed From Image Attributes" is how Philips
    # gives its own dose): the device's
    as_device_report(path, tmp_path / "device.dcm")
    assert {e.dose_source for e in read_rdsr(tmp_path / "device.dcm").events} <= {"rdsr", "reported"}


def test_the_device_events_in_sifluoros_report_stay_the_devices(tmp_path):
    folder, _ = unstored_study(tmp_path)
    summary = replay([folder], events_path=tmp_path / "e.jsonl", summary_path=tmp_path / "s.json",
                     rdsr_path=tmp_path / "r.dcm", stages=[]).summary
    # the device's report covers every run: sifluoro has nothing to add to it (review s12 #5)
    assert "rdsr" not in summary and not (tmp_path / "r.dcm").exists()
    # a run the device's report does not name is sifluoro's estimate; the device's event stays
    # in the device's report
    paths = write_study(tmp_path / "two", [RunSpec(0.0, n_frames=3), RunSpec(30.0, n_frames=3)])
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    save(build_rdsr([Ev(dap_gycm2=1.0, rp_mgy=10.0,
                        extra=[acquired(first.SOPInstanceUID, first.SOPClassUID)])],
                    study_uid=first.StudyInstanceUID), tmp_path / "two" / "rdsr.dcm")
    replay([tmp_path / "two"], events_path=tmp_path / "e2.jsonl", summary_path=tmp_path / "s2.json",
           rdsr_path=tmp_path / "r2.dcm", stages=[])
    report = read_rdsr(tmp_path / "r2.dcm")
    assert [e.dose_source for e in report.events] == ["estimated"]
    assert report.dose_source == "estimated"


def test_the_registry_stores_an_estimated_report_as_estimated(tmp_path):
    from sqlalchemy import select

    from sifluoro.audit.ingest import ingest
    from sifluoro.audit.schema import EventRow, StudyRow, open_registry

    path = _own_report(tmp_path / "a", [RunSpec(0.0, n_frames=3)])
    (tmp_path / "in").mkdir()
    path.rename(tmp_path / "in" / "r.dcm")
    engine = open_registry(f"sqlite:///{tmp_path / 'reg.db'}")
    ingest([tmp_path / "in"], engine)
    with engine.connect() as conn:
        assert conn.execute(select(StudyRow.source, StudyRow.dose_source)).all() == [("rdsr", "estimated")]
        assert conn.execute(select(EventRow.dose_source)).scalars().all() == ["estimated"]
    engine.dispose()
    assert pydicom.dcmread(tmp_path / "in" / "r.dcm").SoftwareVersions
