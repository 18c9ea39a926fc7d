"""UCUM unit codes of RDSR measurements → sifluoro units (docs/contract.md §2), vendor
spellings included.

Vendors differ: ``Gy.m2`` (standard), ``Gym2`` (Siemens), ``dGy.cm2``, ``mGy.cm2``,
``uGy.m2``, ``Gy.cm2``; ``uAs`` for tube load; ``°`` for degrees. Each quantity has one target
unit; :func:`factor` returns the multiplier or None for a unit it does not know.
"""
from __future__ import annotations

import math
import re

_PREFIX = {"": 1.0, "k": 1e3, "d": 1e-1, "c": 1e-2, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "μ": 1e-6,
           "n": 1e-9}
_P = "([kdcmuµμn]?)"
_SQUARED = "(?:2|\\^2|²)"
_SEP = "[.·*]?"

# quantity → (pattern, scale of the un-prefixed unit in the target unit, prefix powers)
_RULES: dict[str, list[tuple[re.Pattern, float, tuple[int, ...]]]] = {
    "dap_gycm2": [(re.compile(f"^{_P}Gy{_SEP}{_P}m{_SQUARED}$"), 1e4, (1, 2))],
    "dose_mgy": [(re.compile(f"^{_P}Gy$"), 1e3, (1,))],
    "time_s": [(re.compile(f"^{_P}s$"), 1.0, (1,)), (re.compile("^min$"), 60.0, ()),
               (re.compile("^h$"), 3600.0, ())],
    "time_ms": [(re.compile(f"^{_P}s$"), 1e3, (1,))],
    "length_mm": [(re.compile(f"^{_P}m$"), 1e3, (1,))],
    "area_cm2": [(re.compile(f"^{_P}m{_SQUARED}$"), 1e4, (2,))],
    "current_ma": [(re.compile(f"^{_P}A$"), 1e3, (1,))],
    "charge_mas": [(re.compile(f"^{_P}A{_SEP}s$"), 1e3, (1,))],
    "voltage_kv": [(re.compile(f"^{_P}Vp?$"), 1e-3, (1,))],  # kVp: peak, the same unit
    "angle_deg": [(re.compile("^(?:deg|°|degrees?)$"), 1.0, ())],
    "rate_per_s": [(re.compile("^(?:\\{[^}]*\\}|1|pulses?|frames?)?/s$"), 1.0, ()),
                   (re.compile("^Hz$"), 1.0, ())],
    "count": [(re.compile("^(?:1|\\{[^}]*\\})?$"), 1.0, ())],
    "ratio": [(re.compile("^1$"), 1.0, ()), (re.compile("^%$"), 0.01, ())],
}
QUANTITIES = tuple(_RULES)
#: the quantities that make a report's totals: a value in a unit not known here refuses the
#: report (a guess would be a wrong dose); another quantity's value is left out, with a warning
DOSE_QUANTITIES = ("dap_gycm2", "dose_mgy", "time_s", "area_cm2")

#: the largest value of each quantity (its target unit) that projection X-ray can give, with a
#: margin of 10x or more over the extreme: a value above it is damage or a unit slip (1e30 mA,
#: 1e200 mGy), refused for its field like a negative one. Extremes: 10 h of fluoroscopy at
#: 100 mGy/min is 60 Gy at the reference point, 1e5 Gy.cm2 over a 1600 cm2 field; tubes give
#: at most ~1.5 A and 150 kV; SIDs are 0.6-1.5 m, detectors under 0.5 m across; pulses come
#: at most 30-60 a second (cine up to 150)
MAX_PLAUSIBLE = {
    "dap_gycm2": 1e6,
    "dose_mgy": 1e6,
    "time_s": 1e6,        # 11 days of beam
    "time_ms": 1e9,       # the same, in ms
    "length_mm": 1e4,
    "area_cm2": 1e5,      # 10 m2
    "current_ma": 1e4,
    "charge_mas": 1e7,    # 1 A for 3 h
    "voltage_kv": 1000.0,
    "angle_deg": 360.0,   # either way
    "rate_per_s": 1000.0,
    "count": 1e9,         # pulses or frames: 1e6 s at 1000/s
}
#: a pulse (or single exposure) longer than 10 s is no pulse: 1e6 ms was read as given
MAX_PULSE_WIDTH_MS = 1e4


def plausible(value: float, quantity: str, most: float | None = None) -> bool:
    """``value`` (target unit of ``quantity``) is finite, not negative (an angle: either
    way) and not above ``most`` or :data:`MAX_PLAUSIBLE`."""
    if not math.isfinite(value):
        return False
    limit = most if most is not None else MAX_PLAUSIBLE.get(quantity, math.inf)
    if quantity == "angle_deg":
        return abs(value) <= limit
    return 0.0 <= value <= limit


def factor(unit: str, quantity: str) -> float | None:
    """Multiplier from ``unit`` (a UCUM code value) to the target unit of ``quantity``.

    Parameters
    ----------
    unit : str
        The code value of the measurement unit, e.g. ``"Gy.m2"``.
    quantity : str
        One of :data:`QUANTITIES`: ``"dap_gycm2"``, ``"dose_mgy"``, ``"time_s"``,
        ``"time_ms"``, ``"length_mm"``, ``"area_cm2"``, ``"current_ma"``, ``"charge_mas"``,
        ``"voltage_kv"``, ``"angle_deg"``, ``"rate_per_s"``, ``"count"``, ``"ratio"``.

    Returns
    -------
    float or None
        None when the unit is not one of that quantity's.

    Examples
    --------
    >>> factor("Gy.m2", "dap_gycm2"), factor("dGy.cm2", "dap_gycm2"), factor("uGy", "dose_mgy")
    (10000.0, 0.1, 0.001)
    """
    text = unit.strip().replace(" ", "")
    for pattern, scale, powers in _RULES[quantity]:
        match = pattern.match(text)
        if match is None:
            continue
        value = scale
        for group, power in zip(match.groups(), powers):
            value *= _PREFIX[group] ** power
        return value
    return None
