"""FHIR date / dateTime / instant text as closed ranges of UTC microseconds.

A FHIR date-like value denotes the whole interval its precision covers: ``2020`` is the
year 2020, ``2020-03-01T10:00:00Z`` is that second. :func:`parse_range` returns that
interval as ``(low, high)``, both ends included, in integer microseconds since
1970-01-01T00:00:00Z (the convention of :mod:`fhir_server.search.entries`).

Accepted forms (FHIR R4 date, dateTime and instant, plus the minute precision that search
values may use):

* ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD``
* ``YYYY-MM-DDThh:mm`` and ``YYYY-MM-DDThh:mm:ss[.fffffffff]``, each with an optional zone
  ``Z`` or ``+hh:mm`` / ``-hh:mm``.

A value with a time but without a zone is read as UTC (documented choice: the server runs
on UTC and FHIR requires a zone on stored dateTimes with a time anyway). A second of ``60``
(leap second, allowed by the FHIR regex) is read as the first second of the next minute.
Anything else raises :class:`ValueError`.
"""
from __future__ import annotations

import datetime as _dt
import re
from functools import lru_cache

from fhir_server.search.entries import DATE_MAX, DATE_MIN  # single source of the bounds

__all__ = ["parse_range", "format_instant", "DATE_MIN", "DATE_MAX"]

_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_US_PER_DAY = 86_400_000_000

_PATTERN = re.compile(
    r"(\d{4})"
    r"(?:-(\d{2})"
    r"(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?"
    r")?)?)?",
    re.ASCII,
)


def _days(year: int, month: int, day: int) -> int:
    return _dt.date(year, month, day).toordinal() - _EPOCH_ORDINAL


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def parse_range(value: str) -> tuple[int, int]:
    """FHIR date/dateTime/instant text -> closed ``[low, high]`` µs UTC range from its precision."""
    if not isinstance(value, str):
        raise ValueError(f"not a date: {value!r}")
    return _parse_range(value)


@lru_cache(maxsize=8192)
def _parse_range(value: str) -> tuple[int, int]:
    m = _PATTERN.fullmatch(value)
    if m is None:
        raise ValueError(f"not a FHIR date, dateTime or instant: {value!r}")
    ys, mos, ds, hs, mis, ss, frac, zone = m.groups()
    year = int(ys)
    if year == 0:
        raise ValueError(f"year 0000 is not allowed: {value!r}")
    if mos is None:
        low = _days(year, 1, 1) * _US_PER_DAY
        high = (_days(year + 1, 1, 1) * _US_PER_DAY - 1) if year < 9999 else DATE_MAX
        return low, high
    month = int(mos)
    if not 1 <= month <= 12:
        raise ValueError(f"month out of range: {value!r}")
    if ds is None:
        low = _days(year, month, 1) * _US_PER_DAY
        ny, nm = _next_month(year, month)
        high = (_days(ny, nm, 1) * _US_PER_DAY - 1) if ny <= 9999 else DATE_MAX
        return low, high
    day = int(ds)
    try:
        days = _days(year, month, day)
    except ValueError:
        raise ValueError(f"day out of range: {value!r}") from None
    if hs is None:
        low = days * _US_PER_DAY
        return low, low + _US_PER_DAY - 1
    hour, minute = int(hs), int(mis)
    if hour > 23 or minute > 59:
        raise ValueError(f"time out of range: {value!r}")
    if ss is None:
        second, micros, width = 0, 0, 60_000_000
        if frac is not None:  # pragma: no cover - excluded by the pattern
            raise ValueError(value)
    else:
        second = int(ss)
        if second > 60:
            raise ValueError(f"second out of range: {value!r}")
        if frac is None:
            micros, width = 0, 1_000_000
        else:
            digits = len(frac)
            if digits >= 6:
                micros, width = int(frac[:6]), 1
            else:
                scale = 10 ** (6 - digits)
                micros, width = int(frac) * scale, scale
    offset = 0
    if zone is not None and zone != "Z":
        zh, zm = int(zone[1:3]), int(zone[4:6])
        if zh > 14 or zm > 59:
            raise ValueError(f"time zone out of range: {value!r}")
        offset = (zh * 3600 + zm * 60) * 1_000_000
        if zone[0] == "-":
            offset = -offset
    low = days * _US_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1_000_000 + micros - offset
    high = low + width - 1
    return max(low, DATE_MIN), min(high, DATE_MAX)


def period_instants(value: str) -> tuple[str, str]:
    """The instants a FHIR date/dateTime/instant's period starts at and ends before (``2026-11-26`` ->
    midnight that day, midnight the next): R4 history's ``_at`` period. ValueError if not a date."""
    low, high = parse_range(value)
    return format_instant(low), format_instant(high + 1)


def format_instant(us: int) -> str:
    """Microseconds since the epoch -> ISO 8601 instant in UTC (``...Z``).

    Fractions are written with millisecond digits when they are whole milliseconds, with
    six digits otherwise, and left out when zero.
    """
    us = max(DATE_MIN, min(int(us), DATE_MAX))
    days, rest = divmod(us, _US_PER_DAY)
    date = _dt.date.fromordinal(days + _EPOCH_ORDINAL)
    seconds, micros = divmod(rest, 1_000_000)
    hh, rem = divmod(seconds, 3600)
    mm, ss = divmod(rem, 60)
    text = f"{date.year:04d}-{date.month:02d}-{date.day:02d}T{hh:02d}:{mm:02d}:{ss:02d}"
    if micros:
        text += f".{micros // 1000:03d}" if micros % 1000 == 0 else f".{micros:06d}"
    return text + "Z"
