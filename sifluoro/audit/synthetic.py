"""Synthetic dose reports and registry rows, for benchmarks and tests of the audit at scale.

:func:`write_synthetic_rdsrs` writes many RDSRs fast: a few dozen varied templates are built
with sifluoro's own writer (:func:`sifluoro.dose.rdsr_write.build_rdsr_dataset`), encoded
once, and each file is a copy of a template's bytes with new UIDs (same length), a new study
date and its dose values scaled in place (the binary Floating Point Values the reader uses;
the Numeric Value strings keep the template's values). Everything is derived from ``seed``.
"""
from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np

from sifluoro.dose.records import ACQUISITION, FLUOROSCOPY, IrradiationEvent, StudyDose, totals_from_events
from sifluoro.model import Device, Study

UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root
DEVICES = (Device("ACME Medical", "C-Arm 9000", "SN123", "OR1"),
           Device("Siemens", "Cios Spin", "40512", "OR2"),
           Device("GE Healthcare", "OEC Elite", "E77", "PAIN1"),
           Device("Philips", "Zenition 70", "Z-9", "PAIN2"))
DESCRIPTIONS = ("SI joint injection", "SIJ inj left", "Sacroiliac joint injection R",
                "SI JOINT INJECTION BILAT", "Facet joint injection L4-5",
                "Lumbar epidural steroid injection")
PLACEHOLDER_DATE = b"19000101"
_FD = re.compile(re.escape(b"\x40\x00\x61\xa1FD\x08\x00"))
_STUDY_DATE = b"\x08\x00\x20\x00DA\x08\x00"
_UNIT = b"\x08\x00\x00\x01SH"


def _uid(n: int) -> str:
    return f"{UID_PREFIX}{n:030d}"


@dataclass(frozen=True)
class _Template:
    data: bytes
    uids: tuple[bytes, ...]  # placeholder UIDs, in slot order
    date_at: int  # offset of the StudyDate value
    dose_at: tuple[int, ...]  # offsets of FD values in Gy or Gy.m2
    time_at: tuple[int, ...]  # offsets of FD values in s


def synthetic_study_dose(rng: np.random.Generator, uids: list[str], device: Device) -> StudyDose:
    """A plausible SI-joint-injection-like dose record: 1-6 fluoroscopy runs, maybe one acquisition."""
    n = int(rng.integers(1, 7))
    events = []
    for k in range(n):
        acquisition = k == n - 1 and rng.random() < 0.3
        duration_s = float(rng.uniform(1.0, 3.0) if acquisition else rng.lognormal(1.5, 0.6))
        rate = 7.5 if not acquisition else 2.0
        pulses = max(1, int(round(duration_s * rate)))
        dap = float(rng.lognormal(-2.3, 0.5)) * (4.0 if acquisition else 1.0) * duration_s / 5.0
        events.append(IrradiationEvent(
            event_uid=uids[3 + k], kind=ACQUISITION if acquisition else FLUOROSCOPY,
            dap_gycm2=dap, air_kerma_mgy=dap * float(rng.uniform(4.0, 6.0)), dose_source="rdsr",
            kvp=float(rng.uniform(65, 95)), tube_current_ma=float(rng.uniform(2, 12)),
            pulse_width_ms=8.0, pulse_rate_per_s=rate, n_pulses=pulses,
            irradiation_duration_s=duration_s, sid_mm=1000.0, source_to_isocenter_mm=650.0,
            collimated_field_area_cm2=float(rng.uniform(150, 400)), filter_cu_mm=0.1,
            primary_angle_deg=float(rng.uniform(-30, 30)), secondary_angle_deg=0.0,
            reference_point="15cm from Isocenter toward Source"))
    events = tuple(events)
    return StudyDose(study_instance_uid=uids[0], source="rdsr", device=device, events=events,
                     planes=(totals_from_events("single", events),), dose_source="rdsr")


def _template(rng: np.random.Generator, index: int, *, patient_name: str, patient_id: str) -> _Template:
    from pydicom.dataset import Dataset

    from sifluoro.dose.rdsr_write import build_rdsr_dataset

    uids = [_uid(10**29 + index * 100 + slot) for slot in range(10)]
    device = DEVICES[index % len(DEVICES)]
    record = synthetic_study_dose(rng, uids, device)
    header = Dataset()
    header.SpecificCharacterSet = "ISO_IR 192"
    header.PatientName, header.PatientID = patient_name, patient_id
    header.PatientSex = "O"
    header.StudyDate, header.StudyTime = PLACEHOLDER_DATE.decode(), "093000"
    header.StudyDescription = DESCRIPTIONS[index % len(DESCRIPTIONS)]
    header.AccessionNumber = ""
    ds = build_rdsr_dataset(record, header, Study(uids[0], ()), {}, sop_instance_uid=uids[1],
                            series_instance_uid=uids[2], content_datetime=datetime(2000, 1, 1, 12))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    used = tuple(u.encode() for u in uids if u.encode() in data)
    date_at = data.index(_STUDY_DATE + PLACEHOLDER_DATE) + len(_STUDY_DATE)
    dose_at, time_at = [], []
    for m in _FD.finditer(data):
        unit_at = data.rfind(_UNIT, 0, m.start())
        length = struct.unpack_from("<H", data, unit_at + 6)[0]
        unit = data[unit_at + 8:unit_at + 8 + length].rstrip(b" \x00")
        if unit in (b"Gy", b"Gy.m2"):
            dose_at.append(m.end())
        elif unit == b"s":
            time_at.append(m.end())
    return _Template(data, used, date_at, tuple(dose_at), tuple(time_at))


def write_synthetic_rdsrs(outdir: str | Path, n: int, *, seed: int = 0, templates: int = 48,
                          first_day: date = date(2024, 1, 1), days: int = 730,
                          patient_name: str = "SYNTHETIC^PATIENT", patient_id: str = "SYN-0001",
                          per_folder: int = 500) -> list[Path]:
    """Write ``n`` RDSRs under ``outdir`` (``per_folder`` per sub-folder); return their paths.

    Study ``i`` gets UIDs derived from ``seed`` and ``i``, a study date in
    ``first_day + [0, days)``, and its template's doses and times scaled by log-normal factors.
    """
    rng = np.random.default_rng(seed)
    pool = [_template(rng, k, patient_name=patient_name, patient_id=patient_id) for k in range(templates)]
    dose_scale = rng.lognormal(0.0, 0.35, n)
    time_scale = rng.lognormal(0.0, 0.25, n)
    day = rng.integers(0, days, n)
    which = rng.integers(0, templates, n)
    outdir = Path(outdir)
    paths = []
    base = (seed % 10**6 + 1) * 10**20
    for i in range(n):
        t = pool[which[i]]
        data = bytearray(t.data)
        for slot, placeholder in enumerate(t.uids):
            new = _uid(base + i * 100 + slot).encode()
            start = 0
            while (at := data.find(placeholder, start)) >= 0:
                data[at:at + len(new)] = new
                start = at + len(new)
        data[t.date_at:t.date_at + 8] = (first_day + timedelta(days=int(day[i]))).strftime("%Y%m%d").encode()
        for offsets, scale in ((t.dose_at, dose_scale[i]), (t.time_at, time_scale[i])):
            for at in offsets:
                value = struct.unpack_from("<d", data, at)[0]
                struct.pack_into("<d", data, at, value * scale)
        folder = outdir / f"batch{i // per_folder:04d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rdsr{i:07d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def insert_synthetic_studies(engine, n: int, *, seed: int = 0, first_day: date = date(2024, 1, 1),
                             days: int = 730, chunk: int = 20000) -> None:
    """Insert ``n`` synthetic study rows (and their devices) in bulk, for report benchmarks."""
    from sqlalchemy import insert, select

    from sifluoro.audit.schema import DeviceRow, StudyRow

    rng = np.random.default_rng(seed)
    with engine.begin() as conn:
        ids = []
        for d in DEVICES:
            key = dict(manufacturer=d.manufacturer, model=d.model, serial_number=d.serial_number,
                       station_name=d.station_name)
            found = conn.execute(select(DeviceRow.id).filter_by(**key)).scalar()
            ids.append(found if found is not None else
                       conn.execute(insert(DeviceRow).returning(DeviceRow.id), [key]).scalar_one())
    procedures = ("SI joint injection", "SI joint injection", "SI joint injection",
                  "Facet joint injection", "Epidural injection")
    now = datetime(2026, 1, 1)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        device = rng.integers(0, len(ids), m)
        proc = rng.integers(0, len(procedures), m)
        dap = rng.lognormal(-0.8, 0.6, m) * (1.0 + 0.3 * device)
        kerma = dap * rng.uniform(4.0, 6.0, m)
        fluoro = rng.lognormal(3.0, 0.5, m)
        day = rng.integers(0, days, m)
        rows = [{"study_instance_uid": _uid(7 * 10**28 + seed * 10**9 + start + k),
                 "device_id": ids[device[k]], "procedure": procedures[proc[k]],
                 "study_date": first_day + timedelta(days=int(day[k])), "patient_key": None,
                 "source": "rdsr", "dose_source": "rdsr", "n_events": 3, "n_planes": 1,
                 "dap_gycm2": float(dap[k]), "air_kerma_mgy": float(kerma[k]),
                 "fluoro_time_s": float(fluoro[k]), "fluoro_dap_gycm2": float(dap[k]),
                 "fluoro_air_kerma_mgy": float(kerma[k]), "acquisition_dap_gycm2": 0.0,
                 "acquisition_air_kerma_mgy": 0.0, "acquisition_time_s": 0.0,
                 "planes_from_report": True, "srdl_exceeded": "", "ingested_at": now}
                for k in range(m)]
        with engine.begin() as conn:
            conn.execute(insert(StudyRow), rows)
