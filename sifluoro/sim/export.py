"""Write a simulated study as DICOM files plus ``truth.json`` (ground truth per frame).

The study's dose truth comes from the same physics the dose stage uses
(:mod:`sifluoro.dose.physics`), evaluated with the simulated tube's own inherent filtration and
anode angle. Cases that "report dose" carry the device's values (the truth times a per-device
calibration factor within ±5 %, as dose meters are) in the image headers.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from sifluoro.config import DoseSettings
from sifluoro.dose.physics import estimate_frame_dose
from sifluoro.io.dicom_writer import StudyIdentity, build_run_dataset, save_dataset
from sifluoro.model import Device, Shutter, Technique

# 2: a view is joint_doubled only where its margins project resolvably apart (anatomy.project_joint)
TRUTH_VERSION = 2
DEVICES = {
    "flat_panel": Device("sifluoro-sim", "Simulated C-arm FD 30x30", "SIM-FD-01", "SIMFD"),
    "image_intensifier": Device("sifluoro-sim", "Simulated mobile C-arm II", "SIM-II-01", "SIMII"),
}


@dataclass(frozen=True)
class ExportedStudy:
    folder: Path
    dicom_dir: Path
    files: tuple[Path, ...]
    truth_path: Path
    study_instance_uid: str


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=["sifluoro-sim", *map(str, parts)])


def technique_of(run, size: int, *, reported: tuple[float, float] | None) -> Technique:
    """The DICOM-facing technique of a simulated run (what a C-arm would store)."""
    t = run.technique
    shutter = Shutter(rect_xyxy=tuple(int(v) for v in t.collimation_xyxy))
    if t.circular_field:
        radius = getattr(t, "circular_field_radius_px", None) or (size / 2.0 - 2.0)
        shutter = Shutter(rect_xyxy=shutter.rect_xyxy, circle_xyr=((size - 1) / 2.0, (size - 1) / 2.0, radius))
    return Technique(
        kvp=t.kvp, tube_current_ma=t.tube_current_ma, pulse_width_ms=t.pulse_width_ms,
        pulse_rate_per_s=t.pulse_rate_per_s, frame_time_ms=t.frame_time_ms,
        exposure_time_ms=t.pulse_width_ms * len(run.frames),
        sid_mm=t.sid_mm, source_to_patient_mm=t.source_to_patient_mm,
        # the mobile C-arm declares no isocentre: its dose reference point is 30 cm in front of
        # the receptor (the source-skin distance is kept here but has no place in the file)
        source_to_isocenter_mm=t.source_to_isocenter_mm if t.detector == "flat_panel" else None,
        field_of_view_mm=(t.field_of_view_mm, t.field_of_view_mm),
        field_of_view_shape="ROUND" if t.detector == "image_intensifier" else "RECTANGLE",
        intensifier_size_mm=t.field_of_view_mm if t.detector == "image_intensifier" else None,
        filter_cu_mm=t.filter_cu_mm, filter_al_mm=t.filter_al_mm,
        imager_pixel_spacing_xy_mm=(t.imager_pixel_spacing_mm, t.imager_pixel_spacing_mm),
        primary_angle_deg=t.primary_angle_deg, secondary_angle_deg=t.secondary_angle_deg,
        radiation_setting="GR" if t.kind == "acquisition" else "SC", shutter=shutter,
        collimator=shutter,  # the simulated blades (and intensifier circle) limit the beam
        reported_air_kerma_mgy=reported[0] if reported else None,
        reported_dap_gycm2=reported[1] if reported else None,
    )


def true_run_dose(run, size: int) -> tuple[float, float]:
    """(air_kerma_mgy, dap_gycm2) of a whole run from the simulator's own tube and geometry."""
    t = run.technique
    settings = DoseSettings(inherent_filtration_al_mm=t.inherent_filtration_al_mm,
                            anode_angle_deg=t.anode_angle_deg)
    tech = technique_of(run, size, reported=None)
    per_frame = estimate_frame_dose(tech, rows=size, columns=size, frame_interval_ms=t.frame_time_ms,
                                    n_frames=len(run.frames), settings=settings)
    if per_frame is None or per_frame[1] is None:
        raise ValueError("simulated technique lacks what the dose physics needs")
    n = len(run.frames)
    return per_frame[0] * n, per_frame[1] * n


def _transfer_syntax(study, run_index: int) -> str:
    return study.compression or "explicit"


def export_study(study, folder: str | Path, *,
                 study_datetime: datetime = datetime(2026, 1, 5, 9, 0, 0)) -> ExportedStudy:
    """Write ``study`` (a :class:`sifluoro.sim.SimStudy`): DICOM under ``folder/dicom/``,
    ground truth in ``folder/truth.json``.

    File names do not follow acquisition order, so a reader that sorts by name is caught.
    """
    folder = Path(folder)
    dicom_dir = folder / "dicom"
    dicom_dir.mkdir(parents=True, exist_ok=True)
    study_uid = _uid(study.seed, study.case, "study")
    identity = StudyIdentity(study_uid, study_datetime,
                             patient_name=f"SIM^CASE{study.case:03d}",
                             patient_id=f"SIM-{study.seed}-{study.case:03d}",
                             accession_number=f"S{study.seed}C{study.case}")
    series_uid = _uid(study.seed, study.case, "series")
    device = DEVICES.get(study.runs[0].technique.detector, DEVICES["flat_panel"])
    rng = np.random.default_rng([study.seed, study.case, 7])
    calibration = 1.0 + rng.uniform(-0.05, 0.05)
    damaged_run = _damaged_run_index(study)
    files, runs_truth, frames_truth = [], [], []
    totals = {"air_kerma_mgy": 0.0, "dap_gycm2": 0.0, "fluoro_time_s": 0.0, "acquisition_time_s": 0.0}
    reported_totals = {"air_kerma_mgy": 0.0, "dap_gycm2": 0.0}
    index = 0
    n_runs = len(study.runs)
    for r, run in enumerate(study.runs):
        kerma, dap = true_run_dose(run, study.size)
        reported = (kerma * calibration, dap * calibration) if study.reports_dose else None
        tech = technique_of(run, study.size, reported=reported)
        sop_uid = _uid(study.seed, study.case, "run", r)
        # only Enhanced XA admits MONOCHROME1 (XA, RF and SC are MONOCHROME2 by their IODs)
        storage = "enhanced_xa" if run.photometric == "MONOCHROME1" else study.storage
        ds = build_run_dataset(
            run.frames, storage=storage, study=identity, series_instance_uid=series_uid,
            sop_instance_uid=sop_uid,
            acquisition_datetime=study_datetime + timedelta(seconds=run.start_s),
            technique=tech, device=device, bits_stored=run.bits_stored,
            photometric=run.photometric, series_number=1, instance_number=r + 1,
            frame_time_ms=run.technique.frame_time_ms, laterality=study.side,
            # the burned-in text (date, time, technique, side) names no patient: NO, the
            # only value the Enhanced XA/XRF Image Module admits
            burned_in_annotation=False,
            pixel_intensity_relationship="DISP",
            pixel_intensity_sign=run.pixel_intensity_sign)
        # names run backwards against time: order must come from the headers
        path = dicom_dir / f"IMG{(n_runs - r) * 7 % 97:03d}_{r:02d}.dcm"
        save_dataset(ds, path, transfer_syntax=_transfer_syntax(study, r))
        damaged = r == damaged_run
        if damaged:
            _truncate(path)
        files.append(path)
        n = len(run.frames)
        is_acq = run.technique.kind == "acquisition"
        totals["air_kerma_mgy"] += kerma
        totals["dap_gycm2"] += dap
        totals["acquisition_time_s" if is_acq else "fluoro_time_s"] += n * run.technique.frame_time_ms / 1000
        if reported:
            reported_totals["air_kerma_mgy"] += reported[0]
            reported_totals["dap_gycm2"] += reported[1]
        runs_truth.append({
            "file": path.name, "storage": storage, "sop_instance_uid": sop_uid, "frames": n, "start_s": run.start_s,
            "damaged": damaged, "technique": asdict(run.technique),
            "bits_stored": run.bits_stored, "photometric": run.photometric,
            "pixel_intensity_sign": run.pixel_intensity_sign,
            "air_kerma_mgy": kerma, "dap_gycm2": dap,
        })
        for k, ft in enumerate(run.truth):
            frames_truth.append({
                "sop_instance_uid": sop_uid, "frame": k + 1, "index": index,
                "t_s": run.start_s + k * run.technique.frame_time_ms / 1000.0,
                "pixel_spacing_mm": run.technique.imager_pixel_spacing_mm,
                "damaged": damaged, **_frame_truth_dict(ft)})
            index += 1
    truth = {
        "version": TRUTH_VERSION, "seed": study.seed, "case": study.case, "size": study.size,
        "study_instance_uid": study_uid, "side": study.side, "outcome": study.outcome,
        # the injection's parts: an outcome of extravasation may be a cloud alone or a cloud
        # beside a joint fill (scored apart by benchmarks.eval_contrast)
        "contrast_components": list(study.contrast_components),
        "modality": study.modality, "storage": study.storage, "compression": study.compression,
        "reports_dose": study.reports_dose, "distractors": list(study.distractors),
        "damaged_files": [runs_truth[damaged_run]["file"]] if damaged_run is not None else [],
        "dose": totals, "reported_dose": reported_totals if study.reports_dose else None,
        "runs": runs_truth, "frames": frames_truth,
    }
    truth_path = folder / "truth.json"
    truth_path.write_text(json.dumps(_finite(truth), indent=1) + "\n")
    return ExportedStudy(folder, dicom_dir, tuple(files), truth_path, study_uid)


def _damaged_run_index(study) -> int | None:
    """Which run's file is damaged: a needle run in the middle, never the contrast run (nor
    a wrong-level scout, so that the same run is damaged with or without one)."""
    first = sum(run.wrong_level for run in study.runs)
    if not study.damaged or len(study.runs) - first < 3:
        return None
    candidates = [i for i, run in enumerate(study.runs[first + 1:-1], start=first + 1)
                  if not any(t.contrast_visible for t in run.truth)]
    return candidates[len(candidates) // 2] if candidates else None


def _truncate(path: Path) -> None:
    """Cut the file inside its pixel data, as an interrupted transfer would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - max(1024, len(data) // 3)])


def _frame_truth_dict(ft) -> dict:
    d = asdict(ft)
    if d.get("tip_beyond_field_xy") is None:
        d.pop("tip_beyond_field_xy", None)
    for key in ("tip_xy", "target_xy", "tip_beyond_field_xy"):
        if d.get(key) is not None:
            d[key] = [float(v) for v in d[key]]
    for key in ("joint_polyline_xy", "shaft_xy"):
        if d.get(key) is not None:
            d[key] = [[round(float(x), 3), round(float(y), 3)] for x, y in d[key]]
    return d


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj
