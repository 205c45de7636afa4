"""The 24-month window of the care history: what is older is never returned, to anyone.

An ExplanationOfBenefit is *in the window* while at least one of its service dates (the
``service-date`` parameter: ``billablePeriod`` and every ``item.servicedDate`` /
``item.servicedPeriod``) reaches the **cut-off day**: the same calendar day 24 months before
today, today being the civil date in **Europe/Paris** (the record is French; a day that does
not exist 24 months earlier, 29 February, becomes the last day of that month). So on
2026-11-26 (Paris) an item served on 2024-11-26 is shown and one served on 2024-11-25 is not;
a stay from 2024-11-20 to 2024-11-27 is shown, because its period reaches the cut-off day.
Dates without a time zone are dates of the Paris calendar, as written by the insurer (the index
reads them as UTC days, which is the same day).

The window is a standing rule of the access gate (:meth:`AccessGate.add_standing_rule`): the
clause ``service-date=ge<cut-off day>``, parsed by the server's own search parser, is ANDed into
every find and read of ExplanationOfBenefit by any principal (search, ``_include``, read, vread,
instance history, ``$everything``, export); type and system history, which cannot be filtered
by query, are refused by the services to a principal so limited. Time comes from the server's
clock (``Settings.clock``), which the tests replace with a fake one.
"""
from __future__ import annotations

import calendar
import threading
from datetime import date, datetime, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

from fhir_server.carehistory import EOB
from fhir_server.search.query import AnyOf

MONTHS = 24
ZONE = ZoneInfo("Europe/Paris")
PARAM = "service-date"


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


def months_before(day: date, months: int) -> date:
    """The same calendar day ``months`` earlier (clamped to the end of a shorter month)."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def cutoff_day(now: datetime, months: int = MONTHS) -> date:
    """The first day still in the window at ``now`` (an aware datetime; naive ones are taken as UTC)."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    return months_before(now.astimezone(ZONE).date(), months)


class CareHistoryWindow:
    """The window of one server: the clause for the current cut-off day, and the gate's standing rule."""

    def __init__(self, parser: Any, clock: Callable[[], datetime] = system_clock, months: int = MONTHS):
        self.parser = parser
        self.clock = clock
        self.months = months
        self._lock = threading.Lock()
        self._cached: tuple[date, list] | None = None
        self._missing: Any = None

    def cutoff(self) -> date:
        return cutoff_day(self.clock(), self.months)

    def clauses(self, day: date | None = None) -> list:
        """``service-date=ge<day>`` (default: today's cut-off day) as parsed search clauses."""
        day = day or self.cutoff()
        cached = self._cached
        if cached is not None and cached[0] == day:
            return cached[1]
        parsed = self.parser.parse((EOB,), [(PARAM, f"ge{day.isoformat()}")], strict=True)
        clauses = list(parsed.query.clauses)
        with self._lock:
            self._cached = (day, clauses)
        return clauses

    def rule(self, rtype: str, interaction: str) -> list:
        """The gate's standing rule: every principal finds and reads only the care items in the window."""
        return self.clauses() if rtype == EOB else []

    __call__ = rule  # the window itself is the standing rule registered on the gate

    def across(self, types: tuple[str, ...], interaction: str) -> list:
        """The rule for one query over several types (system search, ``$everything``, ``_revinclude=*``):
        in the window, or without any service date, which every resource of another type is."""
        if EOB not in types:
            return []
        if self._missing is None:
            self._missing = self.parser.parse((EOB,), [(f"{PARAM}:missing", "true")], strict=True).query.clauses[0]
        return [AnyOf((*self.clauses(), self._missing))]
