"""BundleService directly: atomicity in the store, retries on a concurrent writer, resolution rules."""
from __future__ import annotations

import base64
import json

import pytest

from fhir_server.access.gate import ANONYMOUS, OpenGate
from fhir_server.app import FHIRServer
from fhir_server.model import jsonio
from fhir_server.model.outcome import FHIRError
from fhir_server.services.bundles import BundleService
from fhir_server.settings import Settings
from fhir_server.store.base import VersionConflict

BASE = "http://fhir.example.org/fhir"
SYS = "urn:test"


@pytest.fixture
def server(store, engine):
    return FHIRServer(Settings(insecure_no_auth=True), engine, store, OpenGate())


@pytest.fixture
def service(server):
    return BundleService.for_server(server)


def run(service, kind, *entries, **options):
    return service.process(ANONYMOUS, {"resourceType": "Bundle", "type": kind, "entry": list(entries)}, base=BASE,
                           **options)


def patient(value=None, **extra):
    body = {"resourceType": "Patient", "gender": "female"}
    if value:
        body["identifier"] = [{"system": SYS, "value": value}]
    return {**body, **extra}


def post(resource, full_url=None, **request):
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"], **request}}
    return {**entry, "fullUrl": full_url} if full_url else entry


def ids_of(response):
    return [e["response"]["location"].split("/")[1] for e in response["entry"]]


def count(store, server, rtype, query=""):
    parsed = server.parser.parse((rtype,), [tuple(p.split("=", 1)) for p in query.split("&") if p])
    return store.count(parsed.query)


def test_failure_leaves_no_version_in_the_store(service, server, store):
    existing = server.resources.create(ANONYMOUS, "Patient", patient("keep")).resource
    body = jsonio.loads(existing.body)
    with pytest.raises(FHIRError) as caught:
        run(service, "transaction",
            post(patient("a")),
            {"resource": dict(body, gender="male"), "request": {"method": "PUT", "url": f"Patient/{existing.id}"}},
            post({"resourceType": "Observation", "status": "final"}))  # no code: invalid
    assert caught.value.status == 400
    assert any(i.expression.startswith("Bundle.entry[2]") for i in caught.value.issues)
    assert store.read("Patient", existing.id) == existing
    assert store.history("Patient", existing.id).total == 1
    assert count(store, server, "Patient") == 1


def test_a_concurrent_writer_makes_the_whole_transaction_run_again(service, server, store, monkeypatch):
    original = server.resources.create_in
    calls = []

    def flaky(tx, *args, **kwargs):
        calls.append(1)
        result = original(tx, *args, **kwargs)
        if len(calls) == 2:  # the second create of the first attempt loses a race
            raise VersionConflict("someone else got there first")
        return result

    monkeypatch.setattr(server.resources, "create_in", flaky)
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "subject": {"reference": "urn:uuid:p"}}
    response = run(service, "transaction", post(patient("r1"), "urn:uuid:p"), post(patient("r2")),
                   post(observation, ifNoneExist="subject=urn:uuid:p"))
    assert [e["response"]["status"] for e in response["entry"]] == ["201 Created"] * 3
    assert len(calls) == 5
    assert count(store, server, "Patient") == 2  # the first attempt left nothing behind
    patient_id, _, observation_id = ids_of(response)
    assert response["entry"][2]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"
    # the conditional create's criteria were rewritten with this attempt's id, not the first one's
    again = run(service, "transaction", post(dict(observation, subject={"reference": f"Patient/{patient_id}"}),
                                             ifNoneExist=f"subject=Patient/{patient_id}"))
    assert ids_of(again) == [observation_id]


def test_no_retry_when_an_if_match_is_involved(service, server, monkeypatch):
    existing = server.resources.create(ANONYMOUS, "Patient", patient("im")).resource
    body = jsonio.loads(existing.body)

    def conflict(*args, **kwargs):
        raise VersionConflict("changed meanwhile")

    monkeypatch.setattr(server.resources, "update_in", conflict)
    with pytest.raises(FHIRError) as caught:
        run(service, "transaction", {"resource": dict(body, gender="male"),
                                     "request": {"method": "PUT", "url": f"Patient/{existing.id}",
                                                 "ifMatch": 'W/"1"'}})
    assert caught.value.status == 412


def test_resolved_identities_may_not_overlap(service, server, store):
    existing = server.resources.create(ANONYMOUS, "Patient", patient("ov")).resource
    body = jsonio.loads(existing.body)
    with pytest.raises(FHIRError) as caught:
        run(service, "transaction",
            {"resource": dict(body, gender="male"), "request": {"method": "PUT", "url": f"Patient/{existing.id}"}},
            {"resource": patient("ov", gender="other"),
             "request": {"method": "PUT", "url": f"Patient?identifier={SYS}|ov"}})
    assert caught.value.status == 400
    assert "only once" in caught.value.issues[0].diagnostics
    assert store.read("Patient", existing.id).version == 1


def test_conditional_update_with_a_urn_full_url_maps_to_the_match(service, server):
    existing = server.resources.create(ANONYMOUS, "Patient", patient("cu")).resource
    response = run(service, "transaction",
                   post({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "subject": {"reference": "urn:uuid:p"}}),
                   {"fullUrl": "urn:uuid:p", "resource": patient("cu", gender="male"),
                    "request": {"method": "PUT", "url": f"Patient?identifier={SYS}|cu"}})
    assert response["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{existing.id}"
    assert response["entry"][1]["response"]["location"] == f"Patient/{existing.id}/_history/2"


def test_urns_in_conditional_urls_and_narrative_are_rewritten(service, server):
    response = run(service, "transaction",
                   post(patient("n1", text={"status": "generated",
                                            "div": '<div xmlns="http://www.w3.org/1999/xhtml">'
                                                   '<a href="urn:uuid:o">obs</a></div>'}), "urn:uuid:p"),
                   post({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "subject": {"reference": "urn:uuid:p"}}, "urn:uuid:o",
                        ifNoneExist="subject=urn:uuid:p"))
    patient_id, observation_id = ids_of(response)
    assert f'href="Observation/{observation_id}"' in response["entry"][0]["resource"]["text"]["div"]
    assert response["entry"][1]["response"]["status"] == "201 Created"
    # the same bundle again: the conditional create now matches nothing (a new patient), so it creates again
    again = run(service, "transaction",
                post({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": f"Patient/{patient_id}"}},
                     ifNoneExist=f"subject=Patient/{patient_id}"))
    assert again["entry"][0]["response"]["status"] == "200 OK"
    assert ids_of(again) == [observation_id]


def test_relative_references_resolve_against_an_absolute_full_url(service):
    response = run(service, "transaction",
                   post(patient("rel"), "http://other.example/fhir/Patient/7"),
                   post({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "subject": {"reference": "Patient/7"}}, "http://other.example/fhir/Observation/1"),
                   post({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                         "subject": {"reference": "Patient/7"}}))  # relative to this server: untouched
    patient_id = ids_of(response)[0]
    assert response["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"
    assert response["entry"][2]["resource"]["subject"]["reference"] == "Patient/7"


def test_delete_with_a_stale_if_match_fails(service, server, store):
    existing = server.resources.create(ANONYMOUS, "Patient", patient("dim")).resource
    with pytest.raises(FHIRError) as caught:
        run(service, "transaction", {"request": {"method": "DELETE", "url": f"Patient/{existing.id}",
                                                 "ifMatch": 'W/"7"'}})
    assert caught.value.status == 412
    assert not store.read("Patient", existing.id).deleted


def test_patch_values_referencing_full_urls_are_rewritten(service, server, store):
    existing = server.resources.create(ANONYMOUS, "Patient", patient("pv")).resource
    ops = [{"op": "add", "path": "/managingOrganization", "value": {"reference": "urn:uuid:org"}}]
    response = run(service, "transaction",
                   {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                                 "data": base64.b64encode(json.dumps(ops).encode()).decode()},
                    "request": {"method": "PATCH", "url": f"Patient/{existing.id}"}},
                   post({"resourceType": "Organization", "name": "Clinic"}, "urn:uuid:org"))
    organization_id = ids_of(response)[1]
    stored = jsonio.loads(store.read("Patient", existing.id).body)
    assert stored["managingOrganization"] == {"reference": f"Organization/{organization_id}"}


def test_head_entries_answer_without_a_body(service, server):
    existing = server.resources.create(ANONYMOUS, "Patient", patient("head")).resource
    response = run(service, "batch", {"request": {"method": "HEAD", "url": f"Patient/{existing.id}"}})
    assert response["entry"][0] == {"response": {"status": "200 OK", "etag": 'W/"1"',
                                                 "lastModified": existing.last_updated}}


def test_absolute_request_urls_on_this_server(service, server):
    existing = server.resources.create(ANONYMOUS, "Patient", patient("abs")).resource
    response = run(service, "batch", {"request": {"method": "GET", "url": f"{BASE}/Patient/{existing.id}"}},
                   {"request": {"method": "GET", "url": f"http://elsewhere.example/fhir/Patient/{existing.id}"}})
    assert response["entry"][0]["response"]["status"] == "200 OK"
    assert response["entry"][1]["response"]["status"].startswith("400")


def test_compartment_search_entry(service, server):
    p = server.resources.create(ANONYMOUS, "Patient", patient("comp")).resource
    server.resources.create(ANONYMOUS, "Observation", {"resourceType": "Observation", "status": "final",
                                                      "code": {"text": "x"},
                                                      "subject": {"reference": f"Patient/{p.id}"}})
    response = run(service, "batch", {"request": {"method": "GET", "url": f"Patient/{p.id}/Observation"}})
    searchset = response["entry"][0]["resource"]
    assert searchset["total"] == 1
    assert searchset["link"][0]["url"] == f"{BASE}/Patient/{p.id}/Observation"


def test_the_entry_limit(server):
    service = BundleService.for_server(server)
    service.max_entries = 3
    entry = {"request": {"method": "GET", "url": "Patient/1"}}
    with pytest.raises(FHIRError) as caught:
        run(service, "batch", *[entry] * 4)
    assert caught.value.status == 413


def test_every_entry_passes_the_access_gate(server, store, engine):
    class ReadOnly(OpenGate):
        def authorize(self, principal, interaction, rtype, resource=None):
            if interaction not in ("read", "vread", "search"):
                raise FHIRError.of(403, "forbidden", f"{interaction} is not allowed")

    guarded = FHIRServer(Settings(insecure_no_auth=True), engine, store, ReadOnly())
    service = BundleService.for_server(guarded)
    with pytest.raises(FHIRError) as caught:
        run(service, "transaction", post(patient("gate")))
    assert caught.value.status == 403
    batch = run(service, "batch", post(patient("gate")), {"request": {"method": "GET", "url": "Patient?gender=male"}})
    assert [e["response"]["status"] for e in batch["entry"]] == ["403 Forbidden", "200 OK"]
    assert count(store, server, "Patient") == 0
