"""A ``patient/*.rs`` token for patient A never reaches patient B's data, by any path of the API."""
from __future__ import annotations

import pytest
from access_helpers import LAB, admin_headers, ids, observation

A = "patient/*.rs"


@pytest.fixture
def a(record):
    return record.auth(A, "pa")


def _outcome_without_ids(response, *names):
    body = response.get_json()
    text = str(body)
    for name in names:
        text = text.replace(name, "<id>")
    return text


def test_read_of_b_looks_exactly_like_an_unknown_id(record, a):
    refused = record.get("/fhir/Observation/ob1", a)
    absent = record.get("/fhir/Observation/nope", a)
    assert refused.status_code == absent.status_code == 404
    assert _outcome_without_ids(refused, "ob1") == _outcome_without_ids(absent, "nope")
    assert {k for k in refused.headers.keys() if k != "Content-Length"} == \
           {k for k in absent.headers.keys() if k != "Content-Length"}
    assert record.get("/fhir/Patient/pb", a).status_code == 404
    assert record.get("/fhir/Condition/cb1", a).status_code == 404
    assert record.get("/fhir/Observation/ob1/_history/1", a).status_code == 404
    assert _outcome_without_ids(record.get("/fhir/Observation/ob1/_history/1", a), "ob1") == \
        _outcome_without_ids(record.get("/fhir/Observation/nope/_history/1", a), "nope")
    # A's own data and reference data
    assert record.get("/fhir/Observation/oa1", a).status_code == 200
    assert record.get("/fhir/Observation/oa1/_history/1", a).status_code == 200
    assert record.get("/fhir/Patient/pa", a).status_code == 200
    assert record.get("/fhir/Practitioner/dr1", a).status_code == 200


def test_search_counts_and_paging_only_see_a(record, a):
    bundle = record.get("/fhir/Observation", a).get_json()
    assert ids(bundle) == {"Observation/oa1", "Observation/oa2"} and bundle["total"] == 2
    assert record.get("/fhir/Observation?_summary=count", a).get_json()["total"] == 2
    assert record.get("/fhir/Observation?subject=Patient/pb", a).get_json()["total"] == 0
    assert record.get("/fhir/Observation?_summary=count&subject=Patient/pb", a).get_json()["total"] == 0
    assert ids(record.get("/fhir/Patient", a).get_json()) == {"Patient/pa"}
    assert ids(record.get("/fhir/Condition?code:text=secret", a).get_json()) == set()
    page = record.get("/fhir/Observation?_count=1", a).get_json()
    seen = ids(page)
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    seen |= ids(record.get(nxt.replace("http://fhir.test", ""), a).get_json())
    assert seen == {"Observation/oa1", "Observation/oa2"}
    post = record.client.post("/fhir/Observation/_search", data={"subject": "Patient/pb"}, headers=a)
    assert post.status_code == 200 and post.get_json()["total"] == 0


def test_includes_and_revincludes_never_bring_b(record, a):
    forward = record.get("/fhir/Observation?_include=Observation:derived-from&_include=Observation:subject", a)
    assert ids(forward.get_json(), "include") == {"Patient/pa"}  # oa1 is derived from ob1 (B's)
    everything = record.get("/fhir/Observation?_include=*", a).get_json()
    assert not {"Observation/ob1", "Patient/pb"} & ids(everything)
    reverse = record.get("/fhir/Practitioner?_revinclude=Observation:performer", a).get_json()
    assert ids(reverse, "include") == {"Observation/oa1"}  # not ob1, performed by the same practitioner
    wildcard = record.get("/fhir/Practitioner?_revinclude=*", a).get_json()
    assert ids(wildcard, "include") == {"Observation/oa1"}
    iterate = record.get("/fhir/Practitioner?_revinclude=Observation:performer"
                         "&_include:iterate=Observation:subject", a).get_json()
    assert ids(iterate, "include") == {"Observation/oa1", "Patient/pa"}
    patient = record.get("/fhir/Patient?_revinclude=Observation:subject&_revinclude=Condition:subject", a)
    assert ids(patient.get_json()) == {"Patient/pa", "Observation/oa1", "Observation/oa2", "Condition/ca1"}


def test_chains_and_has_inner_queries_are_constrained(record, a):
    system = admin_headers(record)
    # control: with unlimited access the chain and the _has do find something
    assert ids(record.get("/fhir/Observation?derived-from:Observation.category=laboratory", system).get_json()) \
        == {"Observation/oa1"}
    assert ids(record.get("/fhir/Patient?_has:Observation:focus:code=secret", system).get_json()) == {"Patient/pa"}
    # A cannot learn that B's observation (which oa1 derives from) is a lab result ...
    assert record.get("/fhir/Observation?derived-from:Observation.category=laboratory", a).get_json()["total"] == 0
    # ... nor that B's record holds an observation about A
    assert record.get("/fhir/Patient?_has:Observation:focus:code=secret", a).get_json()["total"] == 0
    # a chain to several target types limited differently (Patient, Group) is one chain per type
    assert record.get("/fhir/Observation?subject.name=Bravo", a).get_json()["total"] == 0
    assert ids(record.get("/fhir/Observation?subject.name=Alpha", a).get_json()) == {"Observation/oa1",
                                                                                     "Observation/oa2"}
    assert record.get("/fhir/Condition?subject:Patient.name=Bravo", a).get_json()["total"] == 0


def test_compartment_and_everything_of_b_are_not_found(record, a):
    assert record.get("/fhir/Patient/pb/Observation", a).status_code == 404
    assert record.get("/fhir/Patient/pb/$everything", a).status_code == 404
    mine = record.get("/fhir/Patient/pa/$everything", a).get_json()
    assert ids(mine) == {"Patient/pa", "Observation/oa1", "Observation/oa2", "Condition/ca1", "Practitioner/dr1",
                         "Consent/creation-pa"}
    assert ids(record.get("/fhir/Patient/$everything", a).get_json()) == ids(mine)
    assert ids(record.get("/fhir/Patient/pa/Observation", a).get_json()) == {"Observation/oa1", "Observation/oa2"}


def test_history(record, a):
    assert record.get("/fhir/Observation/ob1/_history", a).status_code == 404
    assert record.get("/fhir/Observation/oa1/_history", a).status_code == 200
    assert record.get("/fhir/Observation/_history", a).status_code == 403
    assert record.get("/fhir/_history", a).status_code == 403
    # a resource that moved from B to A: its versions from B's record stay hidden
    system = admin_headers(record)
    moved = observation("om", "pb", LAB)
    assert record.send("PUT", "/fhir/Observation/om", moved, system).status_code == 201
    moved["subject"] = {"reference": "Patient/pa"}
    assert record.send("PUT", "/fhir/Observation/om", moved, system).status_code == 200
    versions = [e["resource"]["meta"]["versionId"] for e in
                record.get("/fhir/Observation/om/_history", a).get_json()["entry"]]
    assert versions == ["2"]
    assert record.get("/fhir/Observation/om/_history/1", a).status_code == 404
    assert record.get("/fhir/Observation/om/_history/2", a).status_code == 200


def test_batch_and_transaction_entries_pass_the_same_checks(record, a):
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/ob1"}},
        {"request": {"method": "GET", "url": "Observation?subject=Patient/pb"}},
        {"request": {"method": "GET", "url": "Observation/oa1"}},
        {"request": {"method": "GET", "url": "Patient/pb/$everything"}},
        {"request": {"method": "GET", "url": "Observation/ob1/_history"}},
        {"request": {"method": "GET", "url": "Observation/_history"}},
    ]}
    response = record.send("POST", "/fhir", batch, a).get_json()
    statuses = [e["response"]["status"][:3] for e in response["entry"]]
    assert statuses[0] == "404" and statuses[2] == "200" and statuses[4] == "404" and statuses[5] == "403"
    assert response["entry"][1]["resource"]["total"] == 0
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Observation/ob1"}}]}
    refused = record.send("POST", "/fhir", transaction, a)
    absent = record.send("POST", "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Observation/nope"}}]}, a)
    assert refused.status_code == absent.status_code
    assert _outcome_without_ids(refused, "ob1") == _outcome_without_ids(absent, "nope")
    searched = record.send("POST", "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Condition"}}]}, a).get_json()
    assert ids(searched["entry"][0]["resource"]) == {"Condition/ca1"}


def test_a_patient_token_cannot_write_into_b(record):
    writer = record.auth("patient/*.cruds", "pa")
    system = admin_headers(record)
    assert record.send("POST", "/fhir/Observation", observation("x", "pb", LAB), writer).status_code == 403
    assert record.send("POST", "/fhir/Observation", observation("x", "pa", LAB), writer).status_code == 201
    before = record.get("/fhir/Observation?_summary=count", system).get_json()["total"]
    # moving A's observation to B, overwriting B's, patching or deleting B's: refused or not found
    assert record.send("PUT", "/fhir/Observation/oa2", observation("oa2", "pb", LAB), writer).status_code == 403
    assert record.send("PUT", "/fhir/Observation/ob1", observation("ob1", "pa", LAB), writer).status_code == 403
    patch = [{"op": "replace", "path": "/status", "value": "cancelled"}]
    assert record.send("PATCH", "/fhir/Observation/ob1", patch, writer,
                       content_type="application/json-patch+json").status_code == 404
    assert record.client.delete("/fhir/Observation/ob1", headers=writer).status_code == 200
    assert record.client.delete("/fhir/Observation?subject=Patient/pb", headers=writer).status_code == 200
    assert record.send("POST", "/fhir/Patient", {"resourceType": "Patient"}, writer).status_code == 403
    # a transaction with one bad entry changes nothing
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("t1", "pa", LAB), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation("t2", "pb", LAB), "request": {"method": "POST", "url": "Observation"}}]}
    assert record.send("POST", "/fhir", transaction, writer).status_code == 403
    # conditional update matching B's resource is not a match: it would create, in A's compartment only
    conditional = observation("c1", "pb", LAB)
    del conditional["id"]
    assert record.send("PUT", "/fhir/Observation?_id=ob1", conditional, writer).status_code == 403
    after = record.get("/fhir/Observation?_summary=count", system).get_json()["total"]
    assert after == before
    for oid in ("ob1", "oa2"):
        stored = record.get(f"/fhir/Observation/{oid}", system).get_json()
        assert stored["status"] == "final" and stored["meta"]["versionId"] == "1"
    assert record.get("/fhir/Observation/ob1", system).get_json()["subject"]["reference"] == "Patient/pb"


def test_patient_scopes_need_the_patient_context(record):
    no_patient = record.auth(A, role="patient")
    response = record.get("/fhir/Observation", no_patient)
    assert response.status_code == 403 and "patient" in response.get_json()["issue"][0]["diagnostics"]


def test_types_outside_the_compartment(record, a):
    assert record.get("/fhir/Practitioner", a).status_code == 200  # reference data
    assert record.get("/fhir/Binary", a).status_code == 403  # may hold patient data: refused
    writer = record.auth("patient/*.cruds", "pa")
    practitioner = {"resourceType": "Practitioner", "name": [{"family": "Fake"}]}
    assert record.send("POST", "/fhir/Practitioner", practitioner, writer).status_code == 403  # read-only
    assert record.get("/fhir?_type=Observation,Condition", a).status_code == 403  # limited differently


def test_validate_needs_the_right_to_write_the_type(record, a):
    body = observation("v", "pa", LAB)
    assert record.send("POST", "/fhir/Observation/$validate", body, a).status_code == 403
    writer = record.auth("patient/Observation.cu", "pa")
    assert record.send("POST", "/fhir/Observation/$validate", body, writer).status_code == 200


def test_a_bulk_export_job_keeps_the_principals_limits(record):
    """$export stores the principal with the job; the worker's constrained queries only reach A's data."""
    from fhir_server.bulk.export import plan_export, principal_from_dict, principal_to_dict
    from fhir_server.search.query import Query
    server = record.client.application.extensions["fhir"]
    principal = server.gate.principal(record.auth(A, "pa")["Authorization"])
    spec = plan_export(server, principal, "patient", [])
    assert "Observation" in spec["types"] and "Binary" not in spec["types"]
    restored = principal_from_dict(principal_to_dict(principal))
    query = server.search.constrained(restored, Query(types=("Observation",)))
    assert {r.id for r in server.store.search(query, count=100).resources} == {"oa1", "oa2"}
