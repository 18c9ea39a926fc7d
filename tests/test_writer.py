"""DICOM written by sifluoro passes dciodvfy (dicom3tools) with no errors."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from sifluoro.model import Shutter
from tests.dicom_fixtures import RunSpec, technique, write_study

pytestmark = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                reason="dciodvfy (Debian dicom3tools) is installed by .ci/run")


def dciodvfy_errors(path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("storage", ["xa", "rf", "enhanced_xa", "sc"])
@pytest.mark.parametrize("transfer_syntax", ["explicit", "rle", "jpeg2000"])
def test_written_runs_have_no_dciodvfy_errors(tmp_path, storage, transfer_syntax):
    tech = technique(reported_dap_gycm2=0.3, reported_air_kerma_mgy=2.0,
                     shutter=Shutter(rect_xyxy=(4, 4, 59, 59)))
    (path,) = write_study(tmp_path, [RunSpec(0.0, storage=storage, transfer_syntax=transfer_syntax,
                                             tech=tech)])
    assert dciodvfy_errors(path) == []


@pytest.mark.parametrize("storage", ["xa", "rf", "enhanced_xa"])
def test_collimator_round_field_and_isocentre_distance_pass_dciodvfy(tmp_path, storage):
    import pydicom

    aperture = Shutter(rect_xyxy=(4, 4, 59, 59), circle_xyr=(31.5, 31.5, 30.0))
    tech = technique(collimator=aperture, field_of_view_mm=(230.0, 230.0), field_of_view_shape="ROUND")
    (path,) = write_study(tmp_path, [RunSpec(0.0, storage=storage, tech=tech)])
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    if storage != "enhanced_xa":
        # XA/XRF Positioner modules: (0018,1111) is the source-isocentre distance
        assert float(ds.DistanceSourceToPatient) == 785.0 and "DistanceSourceToIsocenter" not in ds
        assert list(ds.CollimatorShape) == ["RECTANGULAR", "CIRCULAR"]
        assert ds.FieldOfViewShape == "ROUND"


@pytest.mark.parametrize("transfer_syntax", ["explicit", "implicit", "rle", "jpeg2000", "jpeg_lossless"])
def test_encoding_keeps_the_instance_identity(tmp_path, transfer_syntax):
    import pydicom

    from sifluoro.io.dicom_writer import build_run_dataset, save_dataset
    from tests.dicom_fixtures import DEVICE, STUDY_START, frames_for
    from sifluoro.io.dicom_writer import StudyIdentity

    ds = build_run_dataset(frames_for(RunSpec(0.0), 0), storage="xa",
                           study=StudyIdentity("1.2.3.4", STUDY_START), series_instance_uid="1.2.3.5",
                           sop_instance_uid="1.2.3.6", acquisition_datetime=STUDY_START,
                           technique=technique(), device=DEVICE, bits_stored=12, frame_time_ms=100.0)
    read = pydicom.dcmread(save_dataset(ds, tmp_path / "x.dcm", transfer_syntax=transfer_syntax))
    assert read.SOPInstanceUID == "1.2.3.6" == read.file_meta.MediaStorageSOPInstanceUID
    assert read.StudyInstanceUID == "1.2.3.4" and read.SeriesInstanceUID == "1.2.3.5"


def test_dciodvfy_does_find_errors(tmp_path):
    """The check can fail: a file missing a type 1 attribute is reported."""
    import pydicom

    (path,) = write_study(tmp_path, [RunSpec(0.0)])
    ds = pydicom.dcmread(path)
    del ds.RadiationSetting
    ds.save_as(path)
    assert any("RadiationSetting" in e for e in dciodvfy_errors(path))


@pytest.mark.parametrize("storage", ["xa", "rf", "enhanced_xa"])
def test_an_intensifier_run_says_so_in_every_storage(tmp_path, storage):
    """An image intensifier run (a round field of the intensifier's size) reads back as one from
    every storage: the needle stage and the dose estimate depend on it."""
    import pydicom

    from sifluoro.acquire.dicom_reader import read_study

    tech = technique(field_of_view_mm=(230.0, 230.0), field_of_view_shape="ROUND",
                     intensifier_size_mm=230.0)
    (path,) = write_study(tmp_path, [RunSpec(0.0, storage=storage, tech=tech)])
    assert dciodvfy_errors(path) == []
    (run,) = read_study([tmp_path]).runs
    assert run.technique.field_of_view_shape == "ROUND"
    assert run.technique.intensifier_size_mm == pytest.approx(230.0)
    assert run.technique.field_of_view_mm == pytest.approx((230.0, 230.0))
    if storage == "enhanced_xa":
        ds = pydicom.dcmread(path)
        assert ds.XRayReceptorType == "IMG_INTENSIFIER" and "DetectorType" not in ds
