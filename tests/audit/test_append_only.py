"""Traces cannot be changed or deleted through the API; only the server and backend (system/) clients write
them (docs/adr/0008-traceability.md)."""
from __future__ import annotations

import json

import pytest
from access_helpers import FHIR_JSON, admin_headers
from audit_helpers import all_traces

DR = {"fhirUser": "Practitioner/dr1", "role": "admin"}


def event_body() -> dict:
    return {"resourceType": "AuditEvent",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
            "action": "R", "period": {"start": "2026-01-07T09:30:00Z"}, "recorded": "2026-01-07T09:32:15Z",
            "outcome": "0",
            "agent": [{"who": {"reference": "Practitioner/dr1",
                               "identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810000000001"}},
                       "type": {"text": "professional"}, "requestor": True}],
            "source": {"observer": {"display": "EHR of the Hôpital Nord"}},
            "entity": [{"what": {"reference": "Patient/pa"}}]}


@pytest.fixture
def trace(record) -> dict:
    """One trace written by the server (the read of a patient)."""
    assert record.get("/fhir/Patient/pa", admin_headers(record)).status_code == 200
    return all_traces(record)[-1]


def outcome_of(response) -> dict:
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome", body
    return body


@pytest.mark.parametrize("method, path, body_kind", [
    ("PUT", "/fhir/AuditEvent/{id}", "resource"),
    ("PATCH", "/fhir/AuditEvent/{id}", "patch"),
    ("DELETE", "/fhir/AuditEvent/{id}", None),
    ("PUT", "/fhir/AuditEvent?_id={id}", "resource"),
    ("PATCH", "/fhir/AuditEvent?_id={id}", "patch"),
    ("DELETE", "/fhir/AuditEvent?_id={id}", None),
    ("POST", "/fhir/AuditEvent/{id}/$meta-add", "meta"),
    ("POST", "/fhir/AuditEvent/{id}/$meta-delete", "meta"),
])
def test_no_one_changes_or_deletes_a_trace(record, trace, method, path, body_kind):
    """Not even a backend client with every scope: 405 with an OperationOutcome, the trace unchanged."""
    url = path.format(id=trace["id"])
    headers = admin_headers(record)
    if body_kind == "resource":
        body, content_type = dict(trace, outcome="4"), FHIR_JSON
    elif body_kind == "patch":
        body, content_type = [{"op": "replace", "path": "/outcome", "value": "4"}], "application/json-patch+json"
    elif body_kind == "meta":
        body, content_type = {"resourceType": "Parameters", "parameter": [
            {"name": "meta", "valueMeta": {"tag": [{"system": "urn:x", "code": "y"}]}}]}, FHIR_JSON
    else:
        body, content_type = None, FHIR_JSON
    response = record.client.open(url, method=method, data=json.dumps(body) if body is not None else None,
                                  headers={"Content-Type": content_type, **headers})
    assert response.status_code == 405, response.get_json()
    outcome_of(response)
    stored = record.app.extensions["fhir"].store.read("AuditEvent", trace["id"])
    assert stored.version == 1 and not stored.deleted


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_bundle_entries_cannot_change_or_delete_a_trace(record, trace, kind):
    bundle = {"resourceType": "Bundle", "type": kind, "entry": [
        {"resource": dict(trace, outcome="4"), "request": {"method": "PUT", "url": f"AuditEvent/{trace['id']}"}},
        {"request": {"method": "DELETE", "url": f"AuditEvent/{trace['id']}"}},
        {"request": {"method": "PATCH", "url": f"AuditEvent/{trace['id']}"},
         "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": "W10="}},
    ]}
    response = record.send("POST", "/fhir", bundle, admin_headers(record))
    if kind == "transaction":
        assert response.status_code == 405, response.get_json()
        outcome_of(response)
    else:
        assert response.status_code == 200
        statuses = [e["response"]["status"] for e in response.get_json()["entry"]]
        assert all(s.startswith("405") for s in statuses), statuses
    stored = record.app.extensions["fhir"].store.read("AuditEvent", trace["id"])
    assert stored.version == 1 and not stored.deleted


def test_only_backend_clients_feed_their_own_traces(record):
    """An EHR's backend (system/ scopes) may post its own AuditEvents (IHE ITI-20); users may not."""
    for headers in (record.auth("user/*.cruds", **DR), record.auth("patient/*.cruds", patient="pa")):
        response = record.send("POST", "/fhir/AuditEvent", event_body(), headers)
        assert response.status_code == 403, response.get_json()
        outcome_of(response)
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": event_body(), "request": {"method": "POST", "url": "AuditEvent"}}]}
        assert record.send("POST", "/fhir", bundle, headers).status_code == 403
    response = record.send("POST", "/fhir/AuditEvent", event_body(), admin_headers(record))
    assert response.status_code == 201, response.get_json()
    fed = response.get_json()["id"]
    # the feed itself is traced, like any write
    creates = [e for e in all_traces(record) if e.get("subtype", [{}])[0].get("code") == "create"]
    assert any(f"AuditEvent/{fed}/_history/1" == x.get("what", {}).get("reference")
               for e in creates for x in e.get("entity", []))


def test_traces_stay_readable_and_searchable(record, trace):
    headers = admin_headers(record)
    assert record.get(f"/fhir/AuditEvent/{trace['id']}", headers).get_json()["id"] == trace["id"]
    assert record.get(f"/fhir/AuditEvent/{trace['id']}/_history/1", headers).status_code == 200
    assert record.get(f"/fhir/AuditEvent/{trace['id']}/_history", headers).status_code == 200
