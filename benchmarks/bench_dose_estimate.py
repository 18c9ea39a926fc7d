"""Technique-based dose estimate against the device's own per-event dose in vendor RDSRs.

For every irradiation event that carries kVp, tube load (Exposure, or tube current × pulse width
× number of pulses) and the source-isocentre distance, the Dose (RP) is estimated with
:func:`sifluoro.dose.physics.tube_output_mgy_per_mas_at_1m` and the inverse square law to the
reference point, and compared with the device's Dose (RP); DAP likewise where the event gives a
collimated field area (at the detector). Prints median and 90th percentile of |relative error|.

``python -m benchmarks.bench_dose_estimate [DIR]`` (default ``.cache/vendor-rdsr``, filled by
``tests/dose/fetch_vendor_rdsr.sh``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sifluoro.config import DoseSettings
from sifluoro.dose.physics import tube_output_mgy_per_mas_at_1m
from sifluoro.dose.rdsr_read import read_rdsr
from sifluoro.dose.records import IrradiationEvent

DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".cache" / "vendor-rdsr"
# Dose (RP) below this is reported with too few digits (Siemens: 0.01 mGy steps) to compare
MIN_REPORTED_MGY = 0.05


def tube_load_mas(event: IrradiationEvent) -> float | None:
    if event.exposure_mas:
        return event.exposure_mas
    if event.tube_current_ma and event.pulse_width_ms and event.n_pulses:
        return event.tube_current_ma * event.pulse_width_ms / 1000.0 * event.n_pulses
    return None


def estimate(event: IrradiationEvent, settings: DoseSettings) -> tuple[float, float | None] | None:
    """(air_kerma_mgy, dap_gycm2 or None) at the reference point, or None if not estimable."""
    mas = tube_load_mas(event)
    if not event.kvp or mas is None or not event.source_to_isocenter_mm:
        return None
    d_ref_mm = event.source_to_isocenter_mm - settings.reference_point_offset_mm
    output = tube_output_mgy_per_mas_at_1m(
        min(max(event.kvp, 40.0), 150.0),
        filter_al_mm=settings.inherent_filtration_al_mm + (event.filter_al_mm or 0.0),
        filter_cu_mm=event.filter_cu_mm or 0.0, anode_angle_deg=settings.anode_angle_deg)
    kerma_mgy = output * mas * (1000.0 / d_ref_mm) ** 2
    dap = None
    if event.collimated_field_area_cm2 and event.sid_mm:
        dap = kerma_mgy / 1000.0 * event.collimated_field_area_cm2 * (d_ref_mm / event.sid_mm) ** 2
    return kerma_mgy, dap


def run(folder: Path = DEFAULT_DIR, settings: DoseSettings | None = None) -> dict:
    settings = settings or DoseSettings()
    per_file, kerma_errors, dap_errors = {}, [], []
    for path in sorted(folder.glob("*.dcm")):
        report = read_rdsr(path)
        k_err, d_err, skipped = [], [], 0
        for event in report.events:
            found = estimate(event, settings)
            if found is None or not event.air_kerma_mgy or event.air_kerma_mgy < MIN_REPORTED_MGY:
                skipped += 1
                continue
            k_err.append(found[0] / event.air_kerma_mgy - 1.0)
            if found[1] is not None and event.dap_gycm2:
                d_err.append(found[1] / event.dap_gycm2 - 1.0)
        per_file[path.name] = {"events": len(report.events), "compared": len(k_err), "skipped": skipped,
                               **_stats("air_kerma", k_err), **_stats("dap", d_err)}
        kerma_errors += k_err
        dap_errors += d_err
    return {"files": per_file, "all": {"compared": len(kerma_errors), **_stats("air_kerma", kerma_errors),
                                       **_stats("dap", dap_errors)}}


def _stats(name: str, errors: list[float]) -> dict:
    if not errors:
        return {}
    e = np.asarray(errors)
    a = np.abs(e)
    return {f"{name}_median_abs_rel_error": round(float(np.median(a)), 4),
            f"{name}_p90_abs_rel_error": round(float(np.percentile(a, 90)), 4),
            f"{name}_median_signed_rel_error": round(float(np.median(e)), 4),
            f"{name}_n": int(len(e))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--inherent-al-mm", type=float, default=DoseSettings().inherent_filtration_al_mm,
                        help="tube inherent filtration assumed for every device (default %(default)s mm Al)")
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder} is missing: run tests/dose/fetch_vendor_rdsr.sh first")
    settings = DoseSettings(inherent_filtration_al_mm=args.inherent_al_mm)
    print(json.dumps(run(args.folder, settings), indent=2))


if __name__ == "__main__":
    main()
