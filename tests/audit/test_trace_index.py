"""The trace indexer gives exactly the general indexer's entries for every kind of trace the builder makes."""
from __future__ import annotations

import time

from fhir_server.access.gate import Principal
from fhir_server.audit.index import TraceIndexer, _same, trace_entries
from fhir_server.audit.model import AuditRecord, Item

PRACTITIONER = Principal("account-9", frozenset({"user/*.rs"}), None, True, "Practitioner/dr1", "app-1",
                         "practitioner", "BTG")
PATIENT = Principal("account-2", frozenset({"patient/*.rs"}), "pa", True, "Patient/pa", "app-2", "patient")
SYSTEM = Principal("backend", frozenset({"system/*.rs"}), None, True, None, "backend", "system", "HPAYMT")
OBS = {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/pa"}}


def records() -> list[AuditRecord]:
    now = time.time()
    base = dict(server="http://fhir.test/fhir", address="10.0.0.7")
    return [
        AuditRecord("rest", "read", "R", now, now, 200, PRACTITIONER, [Item("Observation", "o1", 3, OBS)], **base),
        AuditRecord("rest", "search-type", "E", now, now, 200, PATIENT,
                    [Item("Observation", f"o{i}", 1, OBS, "match") for i in range(3)]
                    + [Item("Patient", "pa", 2, None, "include"), Item("Practitioner", "dr1", 1, None, "include")],
                    query="subject=Patient/pa&_include=Observation:subject", **base),
        AuditRecord("rest", "read", "R", now, now, 404, None, [Item("Observation", "zz")],
                    outcome_text="Observation/zz is not known", **base),
        AuditRecord("rest", "operation", "R", now, now, 200, SYSTEM,
                    [Item(None, "http://fhir.test/fhir/$export-file/j/Patient-1.ndjson", None, None, "file")],
                    operation="$export-file", **base),
        AuditRecord("rest", "operation", "E", now, now, 200, SYSTEM, [], ["pa"], query="_type=Patient",
                    operation="$everything", **base),
        AuditRecord("auth", "login", "E", now, now, 303, PATIENT, [], outcome_text="signed in", **base),
        AuditRecord("auth", "token", "E", now, now, 401, Principal("nobody", client_id="nobody"), [], **base),
    ]


def test_the_trace_indexer_agrees_with_the_general_indexer(smart):
    server = smart.app.extensions["fhir"]
    builder = smart.app.extensions["fhir_audit"].builder
    server.store.transaction  # noqa: B018  (the store is open)
    for record in records():
        event = builder.build(record)
        event.update(id="x", meta={"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"})
        fast, general = trace_entries(event, server.indexer.resource_types), server.indexer.index(event)
        assert _same(fast, general), (event, fast, general)


def test_an_unknown_search_parameter_sends_traces_to_the_general_indexer(smart):
    server = smart.app.extensions["fhir"]
    builder = smart.app.extensions["fhir_audit"].builder
    event = builder.build(records()[0])
    calls = []

    class Spy:
        resource_types = server.indexer.resource_types

        def index(self, resource):
            calls.append(resource)
            return server.indexer.index(resource)

    class Registry:
        version = 1
    registry = Registry()
    spy = Spy()
    checked = TraceIndexer(lambda: spy, lambda: registry, lambda: [event])
    checked.index(event)
    assert checked._fast and len(calls) == 1  # the probe only
    odd = dict(event, location={"reference": "Location/l1"})
    checked.index(odd)
    assert calls[-1] is odd  # an element the trace indexer does not know

    def disagree(resource):
        calls.append(resource)
        return trace_entries(dict(resource, outcome="12"), server.indexer.resource_types)
    spy.index = disagree
    registry.version = 2  # e.g. a custom SearchParameter on AuditEvent was added
    checked.index(event)
    assert not checked._fast and calls[-1] is event
