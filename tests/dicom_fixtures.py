"""Build DICOM studies in code for the tests: every variant the reader handles, and bad ones."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from sifluoro.io.dicom_writer import StudyIdentity, build_run_dataset, save_dataset
from sifluoro.model import Device, Shutter, Technique

STUDY_START = datetime(2026, 3, 4, 9, 30, 0)
DEVICE = Device("ACME Medical", "C-Arm 9000", "SN123", "ANGIO1")
PATIENT_NAME = "DOE^JANE"
PATIENT_ID = "PID-778899"


def technique(**changes) -> Technique:
    base = Technique(kvp=78.0, tube_current_ma=9.0, pulse_width_ms=7.0, frame_time_ms=133.333,
                     sid_mm=1100.0, source_to_patient_mm=750.0, source_to_isocenter_mm=785.0,
                     filter_cu_mm=0.1, filter_al_mm=1.0, imager_pixel_spacing_xy_mm=(0.4, 0.4),
                     primary_angle_deg=25.0, secondary_angle_deg=-10.0, radiation_setting="SC",
                     shutter=Shutter(rect_xyxy=(4, 4, 59, 59)))
    return replace(base, **changes)


@dataclass
class RunSpec:
    """One run to write: when it starts (s after the study start) and how it is stored."""

    start_s: float
    n_frames: int = 3
    storage: str = "xa"
    transfer_syntax: str = "explicit"
    size: int = 64
    dtype: type = np.uint16
    bits_stored: int = 12
    photometric: str = "MONOCHROME2"
    frame_time_ms: float | None = 133.333
    frame_time_vector_ms: list[float] | None = None
    tech: Technique = field(default_factory=technique)
    filename: str | None = None
    fill: int | None = None  # constant pixel value (default: a run-specific pattern)


def frames_for(spec: RunSpec, run_index: int) -> np.ndarray:
    top = (1 << spec.bits_stored) - 1
    rng = np.random.default_rng(run_index)
    if spec.fill is not None:
        frames = np.full((spec.n_frames, spec.size, spec.size), spec.fill)
    else:
        frames = rng.integers(0, top + 1, (spec.n_frames, spec.size, spec.size))
        frames[:, 0, 0] = np.arange(spec.n_frames) + 10 * run_index  # identifies the frame
    return frames.astype(spec.dtype)


def write_study(folder: Path, specs: list[RunSpec], *, study_uid: str | None = None,
                patient_name: str = PATIENT_NAME) -> list[Path]:
    """Write one file per run spec, named so that file-name order differs from time order."""
    folder.mkdir(parents=True, exist_ok=True)
    study = StudyIdentity(study_uid or generate_uid(), STUDY_START, patient_name=patient_name,
                          patient_id=PATIENT_ID)
    series_uid = generate_uid()
    paths = []
    for i, spec in enumerate(specs):
        ds = build_run_dataset(
            frames_for(spec, i), storage=spec.storage, study=study,
            series_instance_uid=series_uid, sop_instance_uid=generate_uid(),
            acquisition_datetime=STUDY_START + timedelta(seconds=spec.start_s),
            technique=spec.tech, device=DEVICE, bits_stored=spec.bits_stored,
            photometric=spec.photometric, instance_number=i + 1,
            frame_time_ms=spec.frame_time_ms if spec.frame_time_vector_ms is None else None,
            frame_time_vector_ms=spec.frame_time_vector_ms, laterality="L")
        name = spec.filename or f"{len(specs) - i:03d}_run.dcm"
        paths.append(save_dataset(ds, folder / name, transfer_syntax=spec.transfer_syntax))
    return paths


def as_device_report(sifluoro_rdsr: Path, out: Path, *, scale: float = 1.5):
    """sifluoro's RDSR of a study made into the C-arm's own (another SoftwareVersions), every
    irradiation event's DAP and Dose (RP) times ``scale``: a device report that disagrees with
    the headers' doses, so a test can tell which one was used. Written to ``out``."""
    import pydicom

    ds = pydicom.dcmread(sifluoro_rdsr)
    ds.SoftwareVersions = "VC21C"
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "113706":  # an irradiation event
            for sub in item.ContentSequence:
                if sub.ValueType == "NUM" and sub.ConceptNameCodeSequence[0].CodeValue in ("122130", "113738"):
                    value = sub.MeasuredValueSequence[0]
                    value.NumericValue = f"{float(value.NumericValue) * scale:.10g}"
                    if "FloatingPointValue" in value:
                        value.FloatingPointValue = float(value.FloatingPointValue) * scale
    ds.save_as(out)
    return ds


def video_frames(n_frames: int, size: int = 256) -> np.ndarray:
    """8-bit frames a video codec keeps well: a smooth ramp whose level steps each frame and a
    dark bar (a needle-like line) that moves, so frames can be told apart after decoding."""
    y, x = np.mgrid[0:size, 0:size]
    frames = np.empty((n_frames, size, size), np.uint8)
    for k in range(n_frames):
        f = 60 + 0.3 * x + 0.1 * y + 12 * k
        f[size // 3:size // 3 + 6, 40 + 8 * k:160 + 8 * k] = 20
        frames[k] = np.clip(f, 0, 255)
    return frames


def write_mpeg2_run(folder: Path, frames: np.ndarray, *, name: str = "video.dcm",
                    frame_time_ms: float = 40.0, study_uid: str | None = None) -> Path:
    """An XA run stored the way some C-arms send their loops: MPEG2 Main Profile / Main Level,
    the stream in one fragment, YBR_PARTIAL_420 (PS3.5 8.2.5). The stream is encoded by
    OpenCV's FFmpeg (25 frames/s: MPEG-2 has no 7.5 or 15/s; the DICOM FrameTime is the
    run's own)."""
    import tempfile

    import cv2
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    (path,) = write_study(folder, [RunSpec(0.0, n_frames=len(frames), size=frames.shape[1],
                                           dtype=np.uint8, bits_stored=8, filename=name,
                                           frame_time_ms=frame_time_ms)], study_uid=study_uid)
    with tempfile.TemporaryDirectory() as tmp:
        stream_path = str(Path(tmp) / "loop.mpg")
        writer = cv2.VideoWriter(stream_path, cv2.VideoWriter_fourcc(*"MPG2"), 25,
                                 (frames.shape[2], frames.shape[1]), isColor=False)
        assert writer.isOpened(), "OpenCV cannot write MPEG"
        for f in frames:
            writer.write(f)
        writer.release()
        stream = Path(stream_path).read_bytes()
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_PARTIAL_420", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([stream + b"\x00" * (len(stream) % 2)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path
