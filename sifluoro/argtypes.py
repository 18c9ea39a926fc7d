"""Option values checked when the command line is parsed: argparse names the option (``argument
--kvp: must be ...``) and exits 2 before any work, rather than a setting's internal name (or
a silently missing result) once the study has been read."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def number(kind: type = float, *, above: float | None = None, least: float | None = None,
           most: float | None = None, unit: str = "", why: str = "",
           finite: bool = True) -> Callable[[str], float]:
    """An argparse ``type``: ``kind(text)`` within the bounds (``above``: strictly; ``least``,
    ``most``: inclusive); NaN never, infinity only when not ``finite``. ``why`` says where the
    bounds come from."""
    unit = f" {unit}" if unit else ""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: "
                                             f"{text!r}") from None
        low = (f"> {above:g}" if above is not None else
               f">= {least:g}" if least is not None else "")
        if most is not None:
            wanted = (f"in {least:g}-{most:g}{unit}" if least is not None and above is None
                      else f"{low}{unit} and <= {most:g}{unit}" if low else f"<= {most:g}{unit}")
        else:
            wanted = f"{low}{unit}" + ("" if finite else " (inf allowed)")
        ok = not math.isnan(value) and (not finite or math.isfinite(value)) and (
            (above is None or value > above) and (least is None or value >= least)
            and (most is None or value <= most))
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {wanted}{f' ({why})' if why else ''}, "
                                             f"got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


#: ``--budget-ms``: inf is documented (no deadline)
budget_ms = number(float, above=0.0, unit="ms", finite=False)
