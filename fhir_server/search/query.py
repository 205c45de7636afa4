"""The parsed form of a search, shared by every store (see docs/adr/0002-search-index.md).

``fhir_server.search.parse`` builds it from the query string once; each store
compiles it into its own query language. Values are already typed and normalised
(dates as microsecond ranges, strings normalised, token system/code split).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class TokenValue:
    system: str | None
    code: str | None
    match_system: bool  # False: any system ("code"); True: system must equal ``system`` (None = no system)


@dataclass(frozen=True)
class StringValue:
    text: str  # normalised for the default and :contains matches, verbatim for :exact


@dataclass(frozen=True)
class RangeValue:
    """date, number and quantity values: a prefix and the closed range the value's precision implies."""

    prefix: str  # eq ne gt lt ge le sa eb ap
    low: float | int
    high: float | int
    system: str | None = None  # quantity only
    code: str | None = None
    canonical: tuple[str, float, float] | None = None  # (canonical unit, low, high) for quantities


@dataclass(frozen=True)
class ReferenceValue:
    target_type: str | None
    target_id: str | None
    url: str | None = None


@dataclass(frozen=True)
class UriValue:
    uri: str


@dataclass(frozen=True)
class CompositeValue:
    parts: tuple  # one typed value per component


Value = Union[TokenValue, StringValue, RangeValue, ReferenceValue, UriValue, CompositeValue]


@dataclass(frozen=True)
class Clause:
    """One parameter occurrence: its values are ORed; clauses of a query are ANDed."""

    param: str  # parameter code, or a derived index name such as "identifier:of-type"
    type: str  # token | string | date | number | quantity | reference | uri | composite | special kinds below
    modifier: str | None
    values: tuple[Value, ...]
    missing: bool | None = None  # set for :missing
    chain: "Chain | None" = None


@dataclass(frozen=True)
class Chain:
    """``subject:Patient.name=x``: the reference must point at a resource matching ``query``."""

    target_types: tuple[str, ...]
    query: "Query"


@dataclass(frozen=True)
class HasClause:
    """``_has:Observation:patient:code=x``: some ``source_type`` resource refers here and matches."""

    source_type: str
    reference_param: str
    query: "Query"


@dataclass(frozen=True)
class AnyOf:
    """Clauses ORed together, e.g. the several parameters that put a resource in a patient's compartment."""

    clauses: tuple


@dataclass(frozen=True)
class SortKey:
    param: str
    type: str
    descending: bool


@dataclass
class Query:
    """Clauses ANDed over ``types``; ``_id`` and ``_lastUpdated`` are ordinary clauses that stores
    may answer from their resource table."""

    types: tuple[str, ...]  # empty: every type (system search)
    clauses: list[Clause | HasClause | AnyOf] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)


def approximate_range(low: float | int, high: float | int, now: float | int | None = None) -> tuple[float, float]:
    """The ``ap`` prefix: the value's range widened by 10 % of its distance from now (R4 search.html)."""
    if now is None:
        import time
        now = int(time.time() * 1_000_000) if isinstance(low, int) else 0
    gap = abs(((low + high) / 2) - now) * 0.1
    if not isinstance(low, int):
        gap = max(gap, abs((low + high) / 2) * 0.1)
    return low - gap, high + gap
