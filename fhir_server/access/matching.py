"""Check access clauses against one resource version in memory, for versions the index does not hold.

The search index only holds current versions, so an old version (vread, instance history) is
checked here against the clauses of ``AccessGate.constrain``, from the version's own index
entries. Only the clause shapes access limits are made of are understood: ``_id``, plain token
(and ``:not``) and reference clauses, and ``AnyOf`` of them; anything else does not match (deny by default), so
an old version under an unusual granular scope is withheld rather than shown wrongly.
"""
from __future__ import annotations

from typing import Any

from fhir_server.search.entries import IndexEntries
from fhir_server.search.query import AnyOf, Clause, RangeValue, ReferenceValue, TokenValue


def matches(clauses: list, rid: str, index: IndexEntries) -> bool:
    """Whether a resource with id ``rid`` and these index entries satisfies every clause."""
    return all(_clause(c, rid, index) for c in clauses)


def _clause(clause: Any, rid: str, index: IndexEntries) -> bool:
    if isinstance(clause, AnyOf):
        return any(_clause(c, rid, index) for c in clause.clauses)
    if not isinstance(clause, Clause) or clause.chain is not None or clause.missing is not None:
        return False
    if clause.param == "_id" and clause.modifier in (None, "not"):
        found = any(isinstance(v, TokenValue) and v.code == rid for v in clause.values)
        return found != (clause.modifier == "not")
    if clause.modifier == "not" and clause.type == "token":  # R4: no value matches (absent counts too)
        entries = [e for e in index.tokens if e.param == clause.param]
        return not any(_token(v, e) for v in clause.values for e in entries)
    if clause.modifier is not None:
        return False
    if clause.type == "reference":
        entries = [e for e in index.references if e.param == clause.param]
        return any(_reference(v, e) for v in clause.values for e in entries)
    if clause.type == "token":
        entries = [e for e in index.tokens if e.param == clause.param]
        return any(_token(v, e) for v in clause.values for e in entries)
    if clause.type == "date":  # standing rules: the care history's window (service-date=ge...)
        entries = [e for e in index.dates if e.param == clause.param]
        return any(_date(v, e) for v in clause.values for e in entries)
    return False


def _date(value: Any, entry: Any) -> bool:
    """The R4 prefixes on a stored date range, as the stores compile them (``range_condition``)."""
    if not isinstance(value, RangeValue):
        return False
    low, high, prefix = value.low, value.high, value.prefix
    return {"eq": lambda: entry.low >= low and entry.high <= high,
            "ne": lambda: not (entry.low >= low and entry.high <= high),
            "gt": lambda: entry.high > high, "lt": lambda: entry.low < low,
            "ge": lambda: entry.high >= low, "le": lambda: entry.low <= high,
            "sa": lambda: entry.low > high, "eb": lambda: entry.high < low}.get(prefix, lambda: False)()


def _reference(value: Any, entry: Any) -> bool:
    if not isinstance(value, ReferenceValue):
        return False
    if value.target_id is None:
        return value.url is not None and entry.url == value.url
    if entry.target_id != value.target_id:
        return False
    if value.target_type is not None and entry.target_type != value.target_type:
        return False
    return value.url is None or entry.url is None or entry.url == value.url


def _token(value: Any, entry: Any) -> bool:
    if not isinstance(value, TokenValue):
        return False
    if value.code is not None and entry.code != value.code:
        return False
    if value.match_system:
        return entry.system == value.system
    return value.code is not None
