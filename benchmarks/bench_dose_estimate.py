"""Technique-based dose estimate against the device's own per-event dose in vendor RDSRs.

For every irradiation event that carries kVp, tube load (Exposure, or tube current × pulse width
× number of pulses) and a distance to the reference point, the Dose (RP) is estimated with
:func:`sifluoro.dose.physics.estimate_event_dose` (tube output from the SpekPy-derived table,
inverse square to the event's reference point) and compared with the device's Dose (RP); DAP
likewise where the event gives a collimated field area (at the detector). Prints median and
90th percentile of |relative error| per file, per manufacturer and overall.

``python -m benchmarks.bench_dose_estimate [DIR]`` (default ``.cache/vendor-rdsr``, filled by
``tests/dose/fetch_vendor_rdsr.sh``). Each report's device picks its tube data
(``DoseSettings.tubes``: PySkinDose's values for these two systems). ``--generic-tube`` ignores
them and uses ``--inherent-al-mm`` and ``--anode-angle-deg`` for every device, to show the
sensitivity to tube data; nothing is fitted here.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sifluoro.config import DoseSettings
from sifluoro.dose.physics import estimate_event_dose
from sifluoro.dose.rdsr_read import read_rdsr

DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".cache" / "vendor-rdsr"
# Dose (RP) below this is reported with too few digits (Siemens: 0.01 mGy steps) to compare
MIN_REPORTED_MGY = 0.05


def run(folder: Path = DEFAULT_DIR, settings: DoseSettings | None = None) -> dict:
    settings = settings or DoseSettings()
    per_file: dict[str, dict] = {}
    by_vendor: dict[str, tuple[list[float], list[float]]] = {}
    kerma_errors, dap_errors = [], []
    for path in sorted(folder.glob("*.dcm")):
        report = read_rdsr(path)
        k_err, d_err, skipped = [], [], 0
        for event in report.events:
            found = estimate_event_dose(event, settings, report.device)
            if found is None or not event.air_kerma_mgy or event.air_kerma_mgy < MIN_REPORTED_MGY:
                skipped += 1
                continue
            k_err.append(found[0] / event.air_kerma_mgy - 1.0)
            if found[1] is not None and event.dap_gycm2:
                d_err.append(found[1] / event.dap_gycm2 - 1.0)
        per_file[path.name] = {"events": len(report.events), "compared": len(k_err), "skipped": skipped,
                               **_stats("air_kerma", k_err), **_stats("dap", d_err)}
        vendor = by_vendor.setdefault(f"{report.device.manufacturer} {report.device.model}".strip(), ([], []))
        vendor[0].extend(k_err)
        vendor[1].extend(d_err)
        kerma_errors += k_err
        dap_errors += d_err
    return {"settings": {"generic_inherent_filtration_al_mm": settings.inherent_filtration_al_mm,
                         "generic_anode_angle_deg": settings.anode_angle_deg,
                         "tubes": [vars(t) for t in settings.tubes]},
            "files": per_file,
            "vendors": {name: {"compared": len(k), **_stats("air_kerma", k), **_stats("dap", d)}
                        for name, (k, d) in sorted(by_vendor.items())},
            "all": {"compared": len(kerma_errors), **_stats("air_kerma", kerma_errors),
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
    defaults = DoseSettings()
    parser.add_argument("--inherent-al-mm", type=float, default=defaults.inherent_filtration_al_mm,
                        help="tube inherent filtration assumed for every device (default %(default)s mm Al)")
    parser.add_argument("--anode-angle-deg", type=float, default=defaults.anode_angle_deg,
                        help="anode target angle assumed for every device (default %(default)s°)")
    parser.add_argument("--generic-tube", action="store_true",
                        help="ignore the per-device tube data; use the two values above for every device")
    args = parser.parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder} is missing: run tests/dose/fetch_vendor_rdsr.sh first")
    settings = DoseSettings(inherent_filtration_al_mm=args.inherent_al_mm, anode_angle_deg=args.anode_angle_deg,
                            **({"tubes": ()} if args.generic_tube else {}))
    print(json.dumps(run(args.folder, settings), indent=2))


if __name__ == "__main__":
    main()
