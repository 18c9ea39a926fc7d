"""Peak skin dose, **an estimate**: the reference-point air kerma of each irradiation event
carried to the skin and summed where beams overlap.

For an SI-joint injection the beam stays in one or two obliques, so the events that share a
projection hit the same patch of skin and their doses add; events whose projections differ by
more than ``angle_tolerance_deg`` are taken to hit separate patches. Per event::

    skin dose = Ka,r x (d_ref / d_skin)^2 x table transmission x backscatter x f(tissue/air)

The skin is taken at the reference point (the IEC 60601-2-43 point is meant to approximate the
skin entrance; ``d_ref = d_skin``) and the beam enters through the table (posterior beams, as
in a prone SI-joint injection), attenuated by the table and pad. Defaults: table transmission
0.8 (pyskindose's default ``k_tab``), backscatter factor 1.35 (a 10x10 to 20x20 cm field at
70-90 kV on water), f = 1.06 (mass energy absorption of soft tissue over air at 40-60 keV).
It ignores the patient's position on the table, the field size at the skin and the heel
effect; for a dose map use pyskindose (``--pyskindose``; optional dependency), which models
them. Both are estimates; neither replaces a physicist's assessment after a substantial
radiation dose level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from sifluoro.dose.records import IrradiationEvent


@dataclass(frozen=True)
class SkinDoseSettings:
    """Factors of the estimate (see the module docstring for their defaults' sources)."""

    angle_tolerance_deg: float = 10.0
    table_transmission: float = 0.8
    backscatter: float = 1.35
    f_tissue_air: float = 1.06


@dataclass(frozen=True)
class SkinDoseEstimate:
    """Peak skin dose estimate (mGy) and how it was made.

    ``patches`` lists, per skin patch (projection), its angles (degrees; None when the
    report has none) and its estimated dose, highest first.
    """

    psd_mgy: float
    events: int
    events_without_kerma: int
    patches: tuple[tuple[float | None, float | None, float], ...]
    method: str = "estimate: reference-point air kerma x table x backscatter x f, summed per projection"


class _Patch:
    """Events of one projection: their dose and the mean of their angles."""

    def __init__(self, primary: float | None, secondary: float | None):
        self.dose_mgy = 0.0
        self.n = 0
        self.primary, self.secondary = primary, secondary

    def near(self, primary: float | None, secondary: float | None, tolerance_deg: float) -> bool:
        if (primary is None) != (self.primary is None) or (secondary is None) != (self.secondary is None):
            return False
        return all(a is None or abs(a - b) <= tolerance_deg
                   for a, b in ((primary, self.primary), (secondary, self.secondary)))

    def add(self, dose_mgy: float, primary: float | None, secondary: float | None) -> None:
        self.n += 1
        self.dose_mgy += dose_mgy
        if primary is not None:
            self.primary += (primary - self.primary) / self.n
        if secondary is not None:
            self.secondary += (secondary - self.secondary) / self.n


def estimate_peak_skin_dose(events: list[IrradiationEvent] | tuple[IrradiationEvent, ...],
                            settings: SkinDoseSettings | None = None) -> SkinDoseEstimate:
    """Peak skin dose from irradiation events (an RDSR's, or sifluoro's own per run).

    Events are grouped into skin patches by their projection: an event joins the first patch
    whose mean primary and secondary angles are within ``angle_tolerance_deg`` of its own,
    else starts one. An event without both angles may have hit any patch: its dose is added
    to every patch (and they share one patch of their own), which keeps the estimate an upper
    bound for them. Events without air kerma are counted and left out.
    """
    settings = settings or SkinDoseSettings()
    factor = settings.table_transmission * settings.backscatter * settings.f_tissue_air
    patches: list[_Patch] = []
    missing = 0
    for event in events:
        if event.air_kerma_mgy is None or not math.isfinite(event.air_kerma_mgy):
            missing += 1
            continue
        angles = (event.primary_angle_deg, event.secondary_angle_deg)
        if None in angles:  # one angle unknown: it may have hit any patch
            angles = (None, None)
        patch = next((p for p in patches if p.near(*angles, settings.angle_tolerance_deg)), None)
        if patch is None:
            patch = _Patch(*angles)
            patches.append(patch)
        patch.add(event.air_kerma_mgy * factor, *angles)
    unplaced = next((p.dose_mgy for p in patches if p.primary is None and p.secondary is None), 0.0)
    rows = sorted(((p.primary, p.secondary,
                    p.dose_mgy + (unplaced if p.primary is not None or p.secondary is not None else 0.0))
                   for p in patches), key=lambda r: -r[2])
    return SkinDoseEstimate(psd_mgy=rows[0][2] if rows else 0.0,
                            events=len(events) - missing, events_without_kerma=missing,
                            patches=tuple(rows))


def pyskindose_peak_skin_dose(rdsr_path: str) -> float:
    """pyskindose's peak skin dose (mGy) for an RDSR: plane phantom, its example settings.

    Raises ImportError when pyskindose (optional) is not installed.
    """
    import contextlib
    import copy
    import io
    import json
    import logging
    from importlib import resources

    import pydicom

    from pyskindose.analyze_data import analyze_data
    from pyskindose.helpers.read_and_normalize_rdsr_data import read_and_normalise_rdsr_data
    from pyskindose.settings import PyskindoseSettings

    settings = json.loads(resources.files("pyskindose").joinpath("settings_example.json").read_text())
    settings.update(mode="calculate_dose")
    settings["plot"].update(interactivity=False, notebook_mode=False)
    settings["phantom"]["model"] = "plane"
    # its backscatter/table correction tables ship with it; the default path ("corrections.db")
    # would create a copy in the working directory
    settings["corrections_db_path"] = str(resources.files("pyskindose").joinpath("corrections.db"))
    quiet = logging.getLogger("pyskindose")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    # its RDSR parser turns pydicom's value validation off for the whole process, and with
    # it the warnings every later read would give: put back as it was
    validation = pydicom.config.settings.reading_validation_mode
    try:
        parsed = PyskindoseSettings(copy.deepcopy(settings), output_format="dict")
        data = read_and_normalise_rdsr_data(rdsr_filepath=str(rdsr_path), settings=parsed)
        # its progress bars and prints would interleave with the caller's result lines
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return float(analyze_data(normalized_data=data, settings=parsed)["psd"])
    finally:
        quiet.setLevel(level)
        pydicom.config.settings.reading_validation_mode = validation
