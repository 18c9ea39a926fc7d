"""A small mixed corpus for the audit tests: synthetic RDSRs, image studies, one with its RDSR, junk."""
from __future__ import annotations

from pathlib import Path

import pydicom

from sifluoro.acquire.dicom_reader import read_study
from sifluoro.config import DoseSettings
from sifluoro.dose.accumulate import accumulate_study
from sifluoro.dose.rdsr_write import write_rdsr
from sifluoro.audit.synthetic import write_synthetic_rdsrs
from tests.dicom_fixtures import PATIENT_ID, PATIENT_NAME, RunSpec, technique, write_study

N_RDSR = 12


def write_corpus(root: Path) -> dict:
    """Write the corpus under ``root``; return what is where."""
    rdsrs = write_synthetic_rdsrs(root / "rdsr", N_RDSR, seed=7, templates=6, per_folder=5,
                                  patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    images = write_study(root / "images_only", [RunSpec(0.0, n_frames=4), RunSpec(12.0, n_frames=3)])
    both = write_study(root / "images_and_rdsr", [
        RunSpec(0.0, n_frames=5),
        RunSpec(30.0, n_frames=2, tech=technique(radiation_setting="GR", tube_current_ma=100.0,
                                                 pulse_width_ms=30.0, frame_time_ms=500.0))])
    study = read_study([root / "images_and_rdsr"])
    rdsr = write_rdsr(study, accumulate_study(study, DoseSettings()), root / "images_and_rdsr" / "zz_rdsr.dcm")
    junk = root / "junk" / "notes.txt"
    junk.parent.mkdir(parents=True)
    junk.write_text("not a DICOM file\n")
    return {"rdsrs": rdsrs, "images": images, "both": both, "both_rdsr": rdsr, "junk": junk,
            "both_uid": study.study_instance_uid,
            "images_uid": pydicom.dcmread(images[0], stop_before_pixels=True).StudyInstanceUID,
            "studies": N_RDSR + 2}


def scale_dap(path: Path, factor: float) -> None:
    """Rewrite an RDSR with every DAP value (Gy.m2) scaled: same SOP Instance UID, new content."""
    ds = pydicom.dcmread(path)

    def walk(items):
        for item in items:
            if item.ValueType == "NUM" and "MeasuredValueSequence" in item:
                mv = item.MeasuredValueSequence[0]
                if mv.MeasurementUnitsCodeSequence[0].CodeValue == "Gy.m2":
                    if "FloatingPointValue" in mv:
                        mv.FloatingPointValue = float(mv.FloatingPointValue) * factor
                    mv.NumericValue = f"{float(mv.NumericValue) * factor:.8g}"
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(ds.ContentSequence)
    ds.save_as(path, enforce_file_format=True)
