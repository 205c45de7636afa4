"""The search-index entries of the AuditEvents this server builds, without the general indexer.

A trace is written for every request, so its indexing is on the hot path of the writer thread; the
general :class:`~fhir_server.search.extract.Indexer` evaluates every AuditEvent search parameter's
expression on it. The builder (:mod:`.builder`) only ever emits a known set of elements, whose
entries are produced here directly, with the same converters' rules (normalised display texts,
reference parsing, date ranges, duplicates dropped).

Safety: :class:`TraceIndexer` checks itself against the general indexer on probe events at start-up
and whenever the search parameter registry changes (a custom SearchParameter on AuditEvent); on any
difference it logs a warning and uses the general indexer. tests/audit compares both on every kind
of trace the builder makes.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from fhir_server.model.dates import parse_range
from fhir_server.model.text import normalize
from fhir_server.search.entries import IndexEntries
from fhir_server.search.extract import _Collector, parse_reference

log = logging.getLogger("fhir_server.audit")


def _coding(out: _Collector, code: str, c: Any) -> None:
    if type(c) is dict:
        system, value, display = c.get("system") or None, c.get("code") or None, c.get("display") or None
        if system or value:
            out.token(code, system, value, normalize(display) if display else None)


def _reference(out: _Collector, code: str, ref: Any, types: frozenset[str], patient: bool) -> None:
    if type(ref) is not dict:
        return
    text = ref.get("reference")
    of_patient = False
    if type(text) is str and text:
        parsed = parse_reference(text, types)
        if parsed is not None:
            out.reference(code, *parsed)
            if patient and parsed[0] == "Patient":
                out.reference("patient", *parsed)
                of_patient = True
    ident = ref.get("identifier")
    if type(ident) is dict:
        system, value = ident.get("system") or None, ident.get("value") or None
        if system or value:
            out.token(code + ":identifier", system, value, None)
            if of_patient:  # the patient parameter's reference is this one: its identifier too
                out.token("patient:identifier", system, value, None)


def trace_entries(event: dict, types: frozenset[str]) -> IndexEntries:
    """The index entries of an AuditEvent made by :class:`~fhir_server.audit.builder.AuditEventBuilder`."""
    out = _Collector()
    t = event.get("type")
    _coding(out, "type", t)
    for c in event.get("subtype") or ():
        _coding(out, "subtype", c)
    if event.get("action"):
        out.token("action", None, event["action"], None)
    recorded = event.get("recorded")
    if recorded:
        low, high = parse_range(recorded)
        out.date("date", low, high)
    if event.get("outcome"):
        out.token("outcome", None, event["outcome"], None)
    for agent in event.get("agent") or ():
        for role in agent.get("role") or ():
            for c in role.get("coding") or ():
                _coding(out, "agent-role", c)
            if role.get("text"):
                out.token("agent-role", None, None, normalize(role["text"]))
        _reference(out, "agent", agent.get("who"), types, True)
        if agent.get("altId"):
            out.token("altid", None, agent["altId"], None)
        address = (agent.get("network") or {}).get("address")
        if type(address) is str and normalize(address):
            out.string("address", normalize(address), address)
    for entity in event.get("entity") or ():
        _reference(out, "entity", entity.get("what"), types, True)
        _coding(out, "entity-type", entity.get("type"))
        _coding(out, "entity-role", entity.get("role"))
    return out.entries()


#: the elements the builder emits; an event with anything else is indexed by the general indexer
KNOWN = frozenset({"resourceType", "id", "meta", "text", "type", "subtype", "action", "period", "recorded",
                   "outcome", "outcomeDesc", "purposeOfEvent", "agent", "source", "entity"})
KNOWN_AGENT = frozenset({"type", "role", "who", "altId", "requestor", "network", "purposeOfUse"})
KNOWN_ENTITY = frozenset({"what", "type", "role", "query", "description", "detail"})
KNOWN_SOURCE = frozenset({"observer", "type"})
KNOWN_META = frozenset({"versionId", "lastUpdated"})


def _plain(event: dict) -> bool:
    """Whether ``event`` holds only what :func:`trace_entries` covers."""
    if not KNOWN.issuperset(event) or not KNOWN_META.issuperset(event.get("meta") or {}):
        return False
    if not KNOWN_SOURCE.issuperset(event.get("source") or {}):
        return False
    observer = (event.get("source") or {}).get("observer") or {}
    if "reference" in observer or "identifier" in observer:
        return False
    return all(KNOWN_AGENT.issuperset(a) for a in event.get("agent") or ()) and \
        all(KNOWN_ENTITY.issuperset(e) for e in event.get("entity") or ())


def _same(a: IndexEntries, b: IndexEntries) -> bool:
    return all(sorted(map(repr, getattr(a, name))) == sorted(map(repr, getattr(b, name)))
               for name in ("tokens", "strings", "dates", "numbers", "quantities", "references", "uris", "composites"))


def probe_records() -> list:
    """A record of every kind of trace the builder makes (the start-up check compares both indexers on them)."""
    from fhir_server.access.gate import Principal
    from fhir_server.audit.model import AuditRecord, Item
    user = Principal("account-9", frozenset(), None, True, "Practitioner/dr1", "app-1", "practitioner", "BTG")
    patient = Principal("account-2", frozenset(), "pa", True, "Patient/pa", "app-2", "patient")
    system = Principal("backend", frozenset(), None, True, None, "backend", "system", "HPAYMT")
    body = {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/pa"}}
    base = dict(server="http://fhir.test/fhir", address="10.0.0.7")
    return [
        AuditRecord("rest", "read", "R", 1.0, 2.0, 200, user, [Item("Observation", "o1", 3, body)], **base),
        AuditRecord("rest", "search-type", "E", 1.0, 2.0, 200, patient,
                    [Item("Observation", "o1", 1, body, "match"), Item("Patient", "pa", 2, None, "include")],
                    query="subject=Patient/pa", **base),
        AuditRecord("rest", "read", "R", 1.0, 2.0, 404, None, [Item("Observation", "zz")], **base),
        AuditRecord("rest", "operation", "R", 1.0, 2.0, 200, system,
                    [Item(None, "http://fhir.test/fhir/$export-file/j/P.ndjson", None, None, "file")],
                    operation="$export-file", **base),
        AuditRecord("auth", "login", "E", 1.0, 2.0, 303, patient, [], **base),
    ]


class TraceIndexer:
    """``index(event)``: :func:`trace_entries` when it is known to agree with the general indexer on this
    server's search parameters, else the general indexer."""

    def __init__(self, indexer_of: Callable[[], Any], registry_of: Callable[[], Any], probes: Callable[[], list]):
        self._indexer_of = indexer_of
        self._registry_of = registry_of
        self._probes = probes
        self._checked_version: Any = None
        self._fast = False

    def _check(self) -> bool:
        version = getattr(self._registry_of(), "version", None)
        if version != self._checked_version:
            indexer = self._indexer_of()
            types = indexer.resource_types
            try:
                self._fast = all(_same(trace_entries(p, types), indexer.index(p)) for p in self._probes())
            except Exception:
                log.exception("the trace index check failed")
                self._fast = False
            if not self._fast:
                log.warning("AuditEvent search parameters differ from those the trace indexer knows: traces are "
                            "indexed by the general indexer (slower)")
            self._checked_version = version
        return self._fast

    def index(self, event: dict) -> IndexEntries:
        indexer = self._indexer_of()
        if self._check() and _plain(event):
            return trace_entries(event, indexer.resource_types)
        return indexer.index(event)
