"""Per-exposure technique from the Exposure Dose Sequence (0040,030E).

The sequence belongs to the Radiation Dose Module (PS3.3 Table C.4-16), part of the Modality
Performed Procedure Step; some devices copy the module into their image headers. It holds
"Total Number of Exposures (0040,0301) items plus an item for each fluoroscopy episode not
already counted as an exposure", and each item carries technique, not dose:

- Radiation Mode (0018,115A): CONTINUOUS or PULSED;
- KVP (0018,0060): an average in the case of fluoroscopy;
- X-Ray Tube Current in µA (0018,8151): an average in the case of fluoroscopy;
- Exposure Time (0018,1150): time of X-ray exposure or fluoroscopy, in ms;
- Filter Type (0018,1160), Filter Material (0018,7050) (no thickness);
- Comments on Radiation Dose (0040,0310): free text, not read.

So the items give a tube load (µA × ms) and a kVp per exposure; dose comes from the technique
model (:mod:`sifluoro.dose.physics`), labelled ``"estimated"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pydicom.dataset import Dataset

from sifluoro.dose.units import MAX_PLAUSIBLE
from sifluoro.errors import InputError

SEQUENCE_TAG = "(0040,030E) ExposureDoseSequence"
_ITEM_TAGS = {"RadiationMode": "(0018,115A)", "KVP": "(0018,0060)",
              "XRayTubeCurrentInuA": "(0018,8151)", "ExposureTime": "(0018,1150)",
              "FilterType": "(0018,1160)", "FilterMaterial": "(0018,7050)"}

#: the largest possible value of each, in its DICOM unit (units.MAX_PLAUSIBLE)
_ITEM_MAX = {"KVP": MAX_PLAUSIBLE["voltage_kv"],
             "XRayTubeCurrentInuA": MAX_PLAUSIBLE["current_ma"] * 1000.0,
             "ExposureTime": MAX_PLAUSIBLE["time_ms"]}


@dataclass(frozen=True)
class ExposureDose:
    """One item of the Exposure Dose Sequence: one exposure or one fluoroscopy episode.

    ``tube_current_ma`` is converted from the item's µA; ``exposure_time_ms`` is as stored.
    """

    radiation_mode: str = ""
    kvp: float | None = None
    tube_current_ma: float | None = None
    exposure_time_ms: float | None = None
    filter_type: str = ""
    filter_materials: tuple[str, ...] = ()

    @property
    def exposure_mas(self) -> float | None:
        """Tube load of the exposure (mA × s), or None when current or time is missing."""
        if self.tube_current_ma is None or self.exposure_time_ms is None:
            return None
        return self.tube_current_ma * self.exposure_time_ms / 1000.0


def read_exposure_doses(ds: Dataset, path: str) -> tuple[ExposureDose, ...]:
    """The items of a dataset's top-level Exposure Dose Sequence (empty when absent).

    Raises
    ------
    InputError
        An item's KVP, X-Ray Tube Current in µA or Exposure Time is not a finite,
        non-negative number, or is above what X-ray can give; the message names the item and
        the attribute.
    """
    try:
        items = ds.get("ExposureDoseSequence") or []
    except Exception as exc:  # an undecodable sequence is this file's fault
        raise InputError(f"cannot be decoded ({type(exc).__name__}); remove or repair the "
                         "sequence", path=path, tag=SEQUENCE_TAG) from exc
    return tuple(_item(item, k + 1, path) for k, item in enumerate(items))


def _item(item: Dataset, number: int, path: str) -> ExposureDose:
    def number_of(keyword: str) -> float | None:
        try:
            raw = item.get(keyword)
        except Exception:
            raw = "<undecodable>"
        if raw is None or raw == "":
            return None
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise InputError(f"item {number}: {_ITEM_TAGS[keyword]} {keyword} = {raw!r} is not a "
                             "non-negative number; the exposure cannot be used",
                             path=path, tag=SEQUENCE_TAG)
        if value > _ITEM_MAX[keyword]:
            raise InputError(f"item {number}: {_ITEM_TAGS[keyword]} {keyword} = {raw!r} is above "
                             f"{_ITEM_MAX[keyword]:g}, not a possible value; the exposure cannot "
                             "be used", path=path, tag=SEQUENCE_TAG)
        return value

    current_ua = number_of("XRayTubeCurrentInuA")
    materials = item.get("FilterMaterial") or ()
    if isinstance(materials, str):
        materials = (materials,)
    return ExposureDose(
        radiation_mode=str(item.get("RadiationMode", "") or "").strip().upper(),
        kvp=number_of("KVP"),
        tube_current_ma=None if current_ua is None else current_ua / 1000.0,
        exposure_time_ms=number_of("ExposureTime"),
        filter_type=str(item.get("FilterType", "") or "").strip(),
        filter_materials=tuple(str(m).strip().upper() for m in materials),
    )


def run_technique(exposures: tuple[ExposureDose, ...]) -> dict[str, float]:
    """Technique of one run described by its exposures: total tube load and time, and the
    kVp weighted by tube load (output rises steeply with kVp, so the load-weighted mean
    keeps the estimate closest to the per-exposure sum).

    Returns only what every exposure carries: ``exposure_mas``, ``exposure_time_ms``,
    ``kvp``; an empty dict when the items do not allow it.
    """
    loads = [e.exposure_mas for e in exposures]
    if not exposures or any(v is None for v in loads):
        return {}
    out = {"exposure_mas": float(sum(loads)),
           "exposure_time_ms": float(sum(e.exposure_time_ms for e in exposures))}
    if all(e.kvp for e in exposures) and out["exposure_mas"] > 0:
        out["kvp"] = sum(e.kvp * m for e, m in zip(exposures, loads)) / out["exposure_mas"]
    return out
