"""DICOM date-times with their UTC offsets: a DT's own suffix, else the instance's
(0008,0201) TimezoneOffsetFromUTC. Times with offsets compare as instants (a report in UTC
and images in local time are the same moments); without, as the device's wall clock
(:func:`wall`), which is also what orders runs and frames."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from pydicom.valuerep import DT

_OFFSET = re.compile(r"^([+-])(\d\d)(\d\d)$")


def utc_offset(text: str | None) -> timezone | None:
    """``"+0100"`` (TimezoneOffsetFromUTC) as a timezone; None when absent or not one."""
    m = _OFFSET.match((text or "").strip())
    if m is None or int(m.group(2)) > 14 or int(m.group(3)) > 59:
        return None
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    return timezone(timedelta(minutes=-minutes if m.group(1) == "-" else minutes))


def with_offset(value: datetime | None, offset: timezone | None) -> datetime | None:
    """``value`` with ``offset`` when it carries none of its own."""
    if value is None or value.tzinfo is not None or offset is None:
        return value
    return value.replace(tzinfo=offset)


def parse_dt(text: str, offset: timezone | None = None) -> datetime | None:
    """A DT value (its own offset kept, else ``offset``); raises ValueError when not a DT."""
    value = DT(text)
    return with_offset(datetime(*value.timetuple()[:6], value.microsecond, value.tzinfo)
                       if value is not None else None, offset)


def wall(value: datetime) -> datetime:
    """``value`` on the device's wall clock (its offset dropped)."""
    return value.replace(tzinfo=None)


def wall_seconds(value: datetime) -> float:
    """``value``'s wall clock as seconds, the same on every machine (a naive datetime's
    ``timestamp()`` reads it in the machine's own timezone: across its DST change two runs an
    hour apart on the device came out minutes apart)."""
    return wall(value).replace(tzinfo=timezone.utc).timestamp()
