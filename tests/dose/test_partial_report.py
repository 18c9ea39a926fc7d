"""Image runs beside a device report that does not name them: a run made after the report was
sent adds its dose to the study's, one within the report's time does not (review s12 #2)."""
from __future__ import annotations

import pydicom
import pytest

from sifluoro.dose.summary import summarize
from tests.dicom_fixtures import STUDY_START, RunSpec, technique, write_study
from tests.dose.rdsr_fixtures import Ev, _item, acquired, build_rdsr, save


def partial_report_study(folder, *, late_s: float = 600.0):
    """Run 1 at t=0, named by the device report (10 mGy, started at t=0); run 2 at ``late_s``
    with a header-reported 5500 mGy, named by no event."""
    paths = write_study(folder, [RunSpec(0.0, n_frames=3), RunSpec(late_s, n_frames=3, tech=technique(
        reported_air_kerma_mgy=5500.0, reported_dap_gycm2=150.0))])
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    started = _item("CONTAINS", "DATETIME", ("111526", "DCM", "DateTime Started"))
    started.DateTime = STUDY_START.strftime("%Y%m%d%H%M%S")
    save(build_rdsr([Ev(dap_gycm2=1.0, rp_mgy=10.0,
                        extra=[started, acquired(first.SOPInstanceUID, first.SOPClassUID)])],
                    study_uid=first.StudyInstanceUID), folder / "rdsr.dcm")
    return folder


def test_a_run_after_the_report_adds_its_dose_to_the_summary(tmp_path):
    (study,), _ = summarize([partial_report_study(tmp_path / "s")])
    s = study.summary()
    assert s["air_kerma_mgy"] == pytest.approx(5510.0)
    assert s["dap_gycm2"] == pytest.approx(151.0)
    assert s["events"] == 2 and s["dose_source"] == "mixed"
    assert s["srdl_exceeded"] == ["air_kerma"]


def test_a_run_within_the_reports_time_is_taken_as_in_the_report(tmp_path):
    """A report whose events name no image for some runs (they may be in its events under
    no Acquired Image): a run inside its time adds nothing."""
    (study,), _ = summarize([partial_report_study(tmp_path / "s", late_s=5.0)])
    assert study.air_kerma_mgy == pytest.approx(10.0) and len(study.events) == 1
