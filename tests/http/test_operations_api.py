"""R4 operations from the outside: $validate, $meta, $meta-add, $meta-delete and Patient/$everything."""
from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from fhir_server.access.gate import OpenGate
from fhir_server.app import create_app
from fhir_server.model.outcome import FHIRError
from fhir_server.search.query import Clause, TokenValue
from fhir_server.settings import Settings

FHIR_JSON = "application/fhir+json"
TAG = {"system": "http://example.org/tags", "code": "vip"}
SECURITY = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
PROFILE = "http://example.org/StructureDefinition/my-patient"


def post_json(client, url, body, **headers):
    return client.post(url, data=json.dumps(body), headers={"Content-Type": FHIR_JSON, **headers})


def put(client, resource):
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", data=json.dumps(resource),
                          headers={"Content-Type": FHIR_JSON})
    assert response.status_code in (200, 201), response.get_json()
    return response.get_json()


def create(client, resource):
    response = post_json(client, f"/fhir/{resource['resourceType']}", resource)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def patient(rid="p1", **extra):
    return {"resourceType": "Patient", "id": rid, "name": [{"family": "Martin"}], "gender": "female", **extra}


def stored_versions(client) -> int:
    return client.get("/fhir/_history").get_json()["total"]


def issues(response):
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"]


def errors(response):
    return [i for i in issues(response) if i["severity"] in ("error", "fatal")]


# -- $validate ----------------------------------------------------------------------------------
def test_validate_a_valid_resource_is_200_without_errors_and_stores_nothing(client):
    client.application.extensions["fhir_audit"].enabled = False  # this test counts every stored version
    with open("profiles/examples/dmp-patient/valid-2.2-ins-nia-official.json", "rb") as f:
        record_patient = json.load(f)  # meets the record's Patient profile, which the registry requires
    response = post_json(client, "/fhir/Patient/$validate", record_patient)
    assert response.status_code == 200
    assert errors(response) == []
    assert stored_versions(client) == 0


def test_validate_says_all_ok_when_nothing_is_found(client):
    encounter = {"resourceType": "Encounter", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}}
    response = post_json(client, "/fhir/Encounter/$validate", encounter)  # no record profile for Encounter
    assert issues(response) == [{"severity": "information", "code": "informational", "diagnostics": "All OK"}]


def test_validate_reports_a_miss_of_the_record_profile_as_warnings(client):
    response = post_json(client, "/fhir/Patient/$validate", patient())
    assert response.status_code == 200 and errors(response) == []
    assert any("dmp-patient" in i["diagnostics"] for i in issues(response) if i["severity"] == "warning")


def test_validate_an_official_example(client):
    with open("tests/fixtures/r4-examples/Patient-example.json", "rb") as f:
        response = client.post("/fhir/Patient/$validate", data=f.read(), headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 200 and errors(response) == []


def test_validate_an_invalid_resource_is_200_with_errors_and_expressions(client):
    client.application.extensions["fhir_audit"].enabled = False  # this test counts every stored version
    response = post_json(client, "/fhir/Patient/$validate", patient(gender="x", colour="blue"))
    assert response.status_code == 200
    found = {(i["code"], i["expression"][0]) for i in errors(response)}
    assert ("code-invalid", "Patient.gender") in found and ("structure", "Patient.colour") in found
    assert stored_versions(client) == 0


def test_validate_a_parameters_body_with_mode_create(client):
    client.application.extensions["fhir_audit"].enabled = False  # this test counts every stored version
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Observation", "status": "bogus", "code": {"text": "x"}}},
        {"name": "mode", "valueCode": "create"}]}
    response = post_json(client, "/fhir/Observation/$validate", body)
    assert response.status_code == 200
    assert [i["expression"] for i in errors(response)] == [["Observation.status"]]
    valid = {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}}]}
    response = post_json(client, "/fhir/Observation/$validate?mode=create", valid)
    assert response.status_code == 200 and errors(response) == []
    assert stored_versions(client) == 0


def test_validate_mode_update_checks_the_id_and_that_the_resource_exists(client):
    put(client, patient("p1"))
    ok = post_json(client, "/fhir/Patient/p1/$validate?mode=update", patient("p1", gender="male"))
    assert ok.status_code == 200 and errors(ok) == []
    wrong_id = post_json(client, "/fhir/Patient/p1/$validate?mode=update", patient("p2"))
    assert wrong_id.status_code == 200
    assert any(i["expression"] == ["Patient.id"] for i in errors(wrong_id))
    no_id = post_json(client, "/fhir/Patient/p1/$validate?mode=update",
                      {k: v for k, v in patient().items() if k != "id"})
    assert any(i["code"] == "required" for i in errors(no_id))
    unknown = post_json(client, "/fhir/Patient/nobody/$validate?mode=update", patient("nobody"))
    assert [i["code"] for i in errors(unknown)] == ["not-found"]
    assert client.get("/fhir/Patient/p1").get_json()["gender"] == "female"  # nothing stored
    assert client.get("/fhir/Patient/nobody").status_code == 404


def test_validate_mode_delete_checks_existence_and_needs_an_id(client):
    put(client, patient("p1"))
    ok = client.post("/fhir/Patient/p1/$validate?mode=delete")
    assert ok.status_code == 200 and errors(ok) == []
    parameters = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]}
    assert errors(post_json(client, "/fhir/Patient/p1/$validate", parameters)) == []
    missing = client.post("/fhir/Patient/gone/$validate?mode=delete")
    assert [i["code"] for i in errors(missing)] == ["not-found"]
    assert client.post("/fhir/Patient/$validate?mode=delete").status_code == 400
    assert client.get("/fhir/Patient/p1").status_code == 200
    client.delete("/fhir/Patient/p1")
    assert [i["code"] for i in errors(client.post("/fhir/Patient/p1/$validate?mode=delete"))] == ["deleted"]


def test_validate_mode_on_a_type_that_does_not_allow_it(client):
    event = {"resourceType": "AuditEvent", "id": "a1"}
    response = post_json(client, "/fhir/AuditEvent/a1/$validate?mode=update", event)
    assert any(i["code"] == "not-supported" for i in errors(response))


def test_validate_an_unknown_profile_is_an_error_not_ignored(client):
    response = post_json(client, f"/fhir/Patient/$validate?profile={PROFILE}", patient())
    assert response.status_code == 200
    assert [(i["code"], PROFILE in i["diagnostics"]) for i in errors(response)] == [("not-supported", True)]
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient()},
                                                        {"name": "profile", "valueUri": PROFILE}]}
    assert [i["code"] for i in errors(post_json(client, "/fhir/Patient/$validate", body))] == ["not-supported"]


def test_validate_answers_400_only_for_unusable_requests(client):
    client.application.extensions["fhir_audit"].enabled = False  # this test counts every stored version
    not_json = client.post("/fhir/Patient/$validate", data=b"{nope", headers={"Content-Type": FHIR_JSON})
    assert not_json.status_code == 400
    assert post_json(client, "/fhir/Patient/$validate", [1, 2]).status_code == 400
    assert post_json(client, "/fhir/Patient/$validate", {"name": "no type"}).status_code == 400
    assert post_json(client, "/fhir/Patient/$validate?mode=merge", patient()).status_code == 400
    empty = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "create"}]}
    assert post_json(client, "/fhir/Patient/$validate", empty).status_code == 400
    conflicting = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient()},
                                                               {"name": "mode", "valueCode": "create"}]}
    assert post_json(client, "/fhir/Patient/$validate?mode=update", conflicting).status_code == 400
    assert post_json(client, "/fhir/Spaceship/$validate", patient()).status_code == 404
    other_type = post_json(client, "/fhir/Observation/$validate", patient())
    assert other_type.status_code == 200 and errors(other_type)[0]["expression"] == ["resourceType"]
    assert stored_versions(client) == 0


def test_validate_goes_through_the_gate(store, engine):
    class NoValidate(OpenGate):
        def authorize(self, principal, interaction, rtype, resource=None):
            if interaction == "validate":
                raise FHIRError.of(403, "forbidden", "no")

    client = (create_app(Settings(insecure_no_auth=True), store=store, gate=NoValidate(),
                             engine=engine)).test_client()
    assert post_json(client, "/fhir/Patient/$validate", patient()).status_code == 403


# -- $meta, $meta-add, $meta-delete -------------------------------------------------------------
def meta_of(response):
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["resourceType"] == "Parameters" and body["parameter"][0]["name"] == "return"
    return body["parameter"][0]["valueMeta"]


def test_meta_of_an_instance_and_of_a_version(client):
    put(client, patient("p1", meta={"profile": [PROFILE], "tag": [TAG], "security": [SECURITY]}))
    put(client, patient("p1", meta={"tag": [TAG]}))
    current = meta_of(client.get("/fhir/Patient/p1/$meta"))
    assert current["tag"] == [TAG] and "profile" not in current and current["versionId"] == "2"
    first = meta_of(client.get("/fhir/Patient/p1/_history/1/$meta"))
    assert first["profile"] == [PROFILE] and first["security"] == [SECURITY] and first["versionId"] == "1"
    assert client.get("/fhir/Patient/nobody/$meta").status_code == 404
    client.delete("/fhir/Patient/p1")
    assert client.get("/fhir/Patient/p1/$meta").status_code == 410


def test_meta_of_a_type_and_of_the_system_is_the_union_in_use(client):
    other_tag = {"system": "http://example.org/tags", "code": "test"}
    put(client, patient("p1", meta={"profile": [PROFILE], "tag": [TAG]}))
    put(client, patient("p2", meta={"tag": [TAG, other_tag], "security": [SECURITY]}))
    put(client, {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
                 "meta": {"tag": [{"system": "http://example.org/obs", "code": "lab"}]}})
    patients = meta_of(client.get("/fhir/Patient/$meta"))
    assert patients == {"profile": [PROFILE], "security": [SECURITY], "tag": [other_tag, TAG]}  # sorted
    everything = meta_of(client.get("/fhir/$meta"))
    assert {t["code"] for t in everything["tag"]} == {"vip", "test", "lab"}
    assert meta_of(client.get("/fhir/Condition/$meta")) == {}


def test_meta_add_then_meta_delete_round_trip(client):
    put(client, patient("p1", meta={"tag": [TAG]}))
    add = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {
        "profile": [PROFILE], "security": [SECURITY], "tag": [TAG, {"system": "urn:x", "code": "new"}]}}]}
    added = client.post("/fhir/Patient/p1/$meta-add", data=json.dumps(add), headers={"Content-Type": FHIR_JSON})
    meta = meta_of(added)
    assert meta["profile"] == [PROFILE] and meta["security"] == [SECURITY]
    assert meta["tag"] == [TAG, {"system": "urn:x", "code": "new"}]  # no duplicate of TAG
    assert meta["versionId"] == "2" and added.headers["ETag"] == 'W/"2"'
    read = client.get("/fhir/Patient/p1").get_json()
    assert read["meta"]["tag"] == meta["tag"] and read["name"] == [{"family": "Martin"}]

    again = client.post("/fhir/Patient/p1/$meta-add", data=json.dumps(add), headers={"Content-Type": FHIR_JSON})
    assert meta_of(again)["versionId"] == "2"  # nothing changed: no new version

    remove = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {
        "profile": [PROFILE], "security": [SECURITY], "tag": [{"system": "urn:x", "code": "new", "display": "x"}]}}]}
    removed = client.post("/fhir/Patient/p1/$meta-delete", data=json.dumps(remove),
                          headers={"Content-Type": FHIR_JSON})
    meta = meta_of(removed)
    assert meta["tag"] == [TAG] and "profile" not in meta and "security" not in meta and meta["versionId"] == "3"
    assert meta_of(client.get("/fhir/Patient/p1/$meta"))["tag"] == [TAG]
    history = client.get("/fhir/Patient/p1/_history").get_json()
    assert history["total"] == 3


def test_meta_add_and_delete_errors(client):
    body = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [TAG]}}]}

    def call(url, payload=body):
        return client.post(url, data=json.dumps(payload), headers={"Content-Type": FHIR_JSON})

    assert call("/fhir/Patient/nobody/$meta-add").status_code == 404
    put(client, patient("p1"))
    client.delete("/fhir/Patient/p1")
    assert call("/fhir/Patient/p1/$meta-add").status_code == 410
    assert call("/fhir/Patient/p1/$meta-delete").status_code == 410
    put(client, patient("p2"))
    assert call("/fhir/Patient/p2/$meta-add", patient()).status_code == 400
    assert call("/fhir/Patient/p2/$meta-add", {"resourceType": "Parameters"}).status_code == 400
    bad_tag = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [{"system": "s"}]}}]}
    assert call("/fhir/Patient/p2/$meta-add", bad_tag).status_code == 400
    not_meta = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": "vip"}}]}
    assert call("/fhir/Patient/p2/$meta-add", not_meta).status_code == 400
    assert client.get("/fhir/Patient/p2").get_json()["meta"]["versionId"] == "1"


# -- Patient/$everything ------------------------------------------------------------------------
def ref(target):
    return {"reference": target}


def obs(rid, patient_id, **extra):
    return {"resourceType": "Observation", "id": rid, "status": "final", "code": {"text": "Potassium"},
            "subject": ref(f"Patient/{patient_id}"), **extra}


@pytest.fixture
def record(client):
    _build_record(client)
    return client


def _build_record(client):
    """Patient a's record (with what it refers to) and patient b's, which must never show up in a's."""
    for rid in ("pr1", "pr2", "pr3"):
        put(client, {"resourceType": "Practitioner", "id": rid, "name": [{"family": rid}]})
    put(client, {"resourceType": "Organization", "id": "org1", "name": "Hôpital"})
    put(client, {"resourceType": "Medication", "id": "med1", "code": {"text": "Doliprane"}})
    put(client, patient("a", generalPractitioner=[ref("Practitioner/pr1")],
                        managingOrganization=ref("Organization/org1")))
    put(client, patient("b"))
    put(client, {"resourceType": "Condition", "id": "c1", "subject": ref("Patient/a"), "code": {"text": "Asthma"},
                 "asserter": ref("Practitioner/pr1")})
    put(client, {"resourceType": "AllergyIntolerance", "id": "al1", "patient": ref("Patient/a"),
                 "code": {"text": "Peanuts"}, "clinicalStatus": {"coding": [
                     {"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                      "code": "active"}]}})
    put(client, obs("o1", "a", performer=[ref("Practitioner/pr1")]))
    put(client, {"resourceType": "MedicationStatement", "id": "ms1", "status": "active",
                 "medicationReference": ref("Medication/med1"), "subject": ref("Patient/a")})
    put(client, {"resourceType": "Encounter", "id": "e1", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "subject": ref("Patient/a"), "serviceProvider": ref("Organization/org1")})
    put(client, {"resourceType": "DocumentReference", "id": "d1", "status": "current", "subject": ref("Patient/a"),
                 "author": [ref("Practitioner/pr2")],
                 "content": [{"attachment": {"contentType": "text/plain", "data": "aGVsbG8="}}]})
    put(client, obs("o2", "b", performer=[ref("Practitioner/pr3")]))
    put(client, {"resourceType": "Condition", "id": "c2", "subject": ref("Patient/b"), "code": {"text": "Flu"}})


A_MATCHES = {"Patient/a", "Condition/c1", "AllergyIntolerance/al1", "Observation/o1", "MedicationStatement/ms1",
             "Encounter/e1", "DocumentReference/d1"}
A_INCLUDES = {"Practitioner/pr1", "Practitioner/pr2", "Organization/org1", "Medication/med1"}


def keys(bundle, mode):
    return [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e["search"]["mode"] == mode]


def everything(client, url):
    response = client.get(url)
    assert response.status_code == 200, response.get_json()
    bundle = response.get_json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle


def next_link(bundle):
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


def walk(client, url):
    """Every page of a $everything, following next links; returns the bundles."""
    pages = []
    while url:
        pages.append(everything(client, url))
        url = next_link(pages[-1])
        if url:
            parts = urlsplit(url)
            url = parts.path + "?" + parts.query
        assert len(pages) < 100
    return pages


def test_everything_returns_the_compartment_and_what_it_refers_to(record):
    bundle = everything(record, "/fhir/Patient/a/$everything")
    matches = keys(bundle, "match")
    assert matches[0] == "Patient/a"
    assert sorted(matches) == sorted(A_MATCHES) and len(matches) == len(set(matches))
    assert sorted(keys(bundle, "include")) == sorted(A_INCLUDES)
    assert next_link(bundle) is None
    assert bundle["entry"][0]["fullUrl"].endswith("/fhir/Patient/a")


def test_everything_excludes_another_patients_data(record):
    b = everything(record, "/fhir/Patient/b/$everything")
    assert sorted(keys(b, "match")) == ["Condition/c2", "Observation/o2", "Patient/b"]
    assert keys(b, "include") == ["Practitioner/pr3"]


def test_everything_post_with_parameters(record):
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Condition,Observation"}]}
    response = post_json(record, "/fhir/Patient/a/$everything", body)
    assert response.status_code == 200, response.get_json()
    assert sorted(keys(response.get_json(), "match")) == ["Condition/c1", "Observation/o1"]


def test_everything_type_restricts_matches_and_includes(record):
    only = everything(record, "/fhir/Patient/a/$everything?_type=Observation")
    assert keys(only, "match") == ["Observation/o1"] and keys(only, "include") == []
    with_practitioners = everything(record, "/fhir/Patient/a/$everything?_type=Observation,Practitioner")
    assert keys(with_practitioners, "match") == ["Observation/o1"]
    assert keys(with_practitioners, "include") == ["Practitioner/pr1"]
    assert record.get("/fhir/Patient/a/$everything?_type=Spaceship").status_code == 400


def test_everything_since_keeps_what_changed(record):
    new = put(record, obs("o3", "a"))
    since = new["meta"]["lastUpdated"]
    put(record, {"resourceType": "Condition", "id": "c1", "subject": ref("Patient/a"), "code": {"text": "Asthma!"},
                 "asserter": ref("Practitioner/pr1")})
    bundle = everything(record, "/fhir/Patient/a/$everything?_since=" + since.replace("+", "%2B"))
    assert sorted(keys(bundle, "match")) == ["Condition/c1", "Observation/o3"]
    assert keys(bundle, "include") == ["Practitioner/pr1"]
    assert record.get("/fhir/Patient/a/$everything?_since=yesterday").status_code == 400



def test_everything_start_and_end_keep_the_care_of_that_period(record):
    # care dates are R4's clinical-date: Observation.effective, Encounter.period...; other types have none
    put(record, obs("o-2019", "a", effectiveDateTime="2019-06-01"))
    put(record, obs("o-2021", "a", effectiveDateTime="2021-03-15T10:00:00Z"))
    put(record, {"resourceType": "Encounter", "id": "e-2021", "status": "finished", "subject": ref("Patient/a"),
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "period": {"start": "2020-12-30", "end": "2021-01-02"}})
    pages = walk(record, "/fhir/Patient/a/$everything?start=2021-01-01&end=2021-12-31&_count=3")
    matches = {k for page in pages for k in keys(page, "match")}
    assert {"Observation/o-2021", "Encounter/e-2021"} <= matches  # the encounter overlaps the period
    assert not matches & {"Observation/o-2019", "Observation/o1", "Encounter/e1"}  # out of it, or undated
    assert {"Patient/a", "Condition/c1", "MedicationStatement/ms1"} <= matches  # no care date: kept
    assert all("start=2021-01-01" in link["url"] for page in pages for link in page["link"])
    before = {k for k in keys(everything(record, "/fhir/Patient/a/$everything?end=2020-01-01"), "match")}
    assert "Observation/o-2019" in before and "Observation/o-2021" not in before
    assert record.get("/fhir/Patient/a/$everything?start=soon").status_code == 400

def test_everything_pages_with_count_and_next_links(record):
    pages = walk(record, "/fhir/Patient/a/$everything?_count=2")
    matches = [k for page in pages for k in keys(page, "match")]
    assert all(len(keys(page, "match")) <= 2 for page in pages)
    assert sorted(matches) == sorted(A_MATCHES) and len(matches) == len(set(matches))
    assert set(k for page in pages for k in keys(page, "include")) == A_INCLUDES
    assert len(pages) >= 4
    for page in pages[1:]:
        self_link = next(link["url"] for link in page["link"] if link["relation"] == "self")
        assert "_count=2" in self_link and "_page=" in self_link


def test_everything_paging_while_resources_are_created(record):
    url = "/fhir/Patient/a/$everything?_count=2"
    seen, n = [], 0
    while url:
        page = everything(record, url)
        seen += keys(page, "match")
        n += 1
        put(record, obs(f"new{n}", "a"))
        put(record, {"resourceType": "Condition", "id": f"newc{n}", "subject": ref("Patient/a"),
                     "code": {"text": "x"}})
        put(record, patient(f"other{n}"))
        url = next_link(page)
        if url:
            parts = urlsplit(url)
            url = parts.path + "?" + parts.query
    assert len(seen) == len(set(seen))
    assert A_MATCHES <= set(seen)


def test_everything_errors(record):
    assert record.get("/fhir/Patient/nobody/$everything").status_code == 404
    record.delete("/fhir/Patient/b")
    assert record.get("/fhir/Patient/b/$everything").status_code == 410
    assert record.get("/fhir/Patient/a/$everything?_count=0").status_code == 400
    assert record.get("/fhir/Patient/a/$everything?_count=abc").status_code == 400
    assert record.get("/fhir/Patient/a/$everything?_page=garbage").status_code == 400
    first = everything(record, "/fhir/Patient/a/$everything?_count=2")
    token = next_link(first).split("_page=")[1]
    assert record.get(f"/fhir/Patient/o/$everything?_page={token}").status_code == 404
    put(record, patient("c"))
    assert record.get(f"/fhir/Patient/c/$everything?_page={token}").status_code == 400


def test_everything_at_type_level_walks_every_patient(record):
    pages = walk(record, "/fhir/Patient/$everything?_count=3")
    matches = [k for page in pages for k in keys(page, "match")]
    assert set(matches) == A_MATCHES | {"Patient/b", "Observation/o2", "Condition/c2"}
    assert len(matches) == len(set(matches))


def test_everything_obeys_the_gate(store, engine):
    """Constraints apply to every type's query; a type the principal may not search is left out."""

    class Limited(OpenGate):
        def authorize(self, principal, interaction, rtype, resource=None):
            if interaction == "search" and rtype == "Practitioner":
                raise FHIRError.of(403, "forbidden", "no practitioners")

        def constrain(self, principal, rtype):
            if rtype == "Observation":  # a record rule hiding o1
                return [Clause("_id", "token", "not", (TokenValue(None, "o1", False),))]
            return []

    client = (create_app(Settings(insecure_no_auth=True), store=store, gate=Limited(),
                             engine=engine)).test_client()
    _build_record(client)
    bundle = everything(client, "/fhir/Patient/a/$everything")
    matches = keys(bundle, "match")
    assert "Observation/o1" not in matches and "Condition/c1" in matches
    assert not any(k.startswith("Practitioner/") for k in keys(bundle, "include"))
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "Practitioner" in outcome[0]["resource"]["issue"][0]["diagnostics"]


def test_everything_refused_by_the_gate(store, engine):
    class NoEverything(OpenGate):
        def authorize(self, principal, interaction, rtype, resource=None):
            if interaction == "everything":
                raise FHIRError.of(403, "forbidden", "no")

    client = (create_app(Settings(insecure_no_auth=True), store=store, gate=NoEverything(),
                             engine=engine)).test_client()
    put(client, patient("a"))
    assert client.get("/fhir/Patient/a/$everything").status_code == 403
