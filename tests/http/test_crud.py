"""The RESTful interactions of R4 http.html, checked from the outside: status, headers, body, stored state."""
from __future__ import annotations

import json
import time
import threading
from pathlib import Path

FHIR_JSON = "application/fhir+json"


def patient(**extra):
    body = {"resourceType": "Patient", "name": [{"family": "Martin", "given": ["Claire"]}], "gender": "female",
            "birthDate": "1980-04-12"}
    body.update(extra)
    return body


def post(client, resource, **headers):
    return client.post(f"/fhir/{resource['resourceType']}", data=json.dumps(resource),
                       headers={"Content-Type": FHIR_JSON, **headers})


def put(client, resource, **headers):
    return client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", data=json.dumps(resource),
                      headers={"Content-Type": FHIR_JSON, **headers})


# -- create ------------------------------------------------------------------------------------
def test_create_assigns_an_id_and_answers_201_with_location_etag_and_the_resource(client):
    response = post(client, patient(id="client-chosen"))
    assert response.status_code == 201
    body = response.get_json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"].endswith("Z")
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    assert "Last-Modified" in response.headers
    assert client.get(f"/fhir/Patient/{body['id']}").get_json() == body


def test_read_returns_exactly_what_was_stored_including_decimal_precision(client):
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "Potassium"},
                   "valueQuantity": {"value": 1.50, "unit": "mmol/L"}}
    raw = json.dumps(observation).replace("1.5", "1.50").encode()
    created = client.post("/fhir/Observation", data=raw, headers={"Content-Type": FHIR_JSON})
    assert created.status_code == 201, created.get_json()
    read = client.get(f"/fhir/Observation/{created.get_json()['id']}")
    assert b'"value":1.50' in read.data
    assert read.get_json()["code"] == {"text": "Potassium"}


def test_prefer_return_minimal_and_operation_outcome(client):
    minimal = post(client, patient(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.data == b"" and "Location" in minimal.headers
    outcome = post(client, patient(), Prefer="return=OperationOutcome")
    assert outcome.status_code == 201 and outcome.get_json()["resourceType"] == "OperationOutcome"


def test_conditional_create_returns_the_existing_match_instead_of_a_duplicate(client):
    identified = patient(identifier=[{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1800474111222"}])
    criteria = "identifier=urn:oid:1.2.250.1.213.1.4.8|1800474111222"
    first = post(client, identified, **{"If-None-Exist": criteria})
    second = post(client, identified, **{"If-None-Exist": criteria})
    assert first.status_code == 201 and second.status_code == 200
    assert second.get_json()["id"] == first.get_json()["id"]
    bundle = client.get("/fhir/Patient?identifier=urn:oid:1.2.250.1.213.1.4.8|1800474111222").get_json()
    assert bundle["total"] == 1


def test_conditional_create_with_several_matches_is_412(client):
    post(client, patient(gender="other"))
    post(client, patient(gender="other"))
    assert post(client, patient(), **{"If-None-Exist": "gender=other"}).status_code == 412


# -- read / vread ------------------------------------------------------------------------------
def test_unknown_type_and_unknown_id_are_404_operation_outcomes(client):
    for url in ("/fhir/Spaceship/1", "/fhir/Patient/does-not-exist"):
        response = client.get(url)
        assert response.status_code == 404
        assert response.get_json()["resourceType"] == "OperationOutcome"


def test_vread_returns_each_version(client):
    created = post(client, patient()).get_json()
    put(client, dict(created, gender="male"))
    v1 = client.get(f"/fhir/Patient/{created['id']}/_history/1")
    v2 = client.get(f"/fhir/Patient/{created['id']}/_history/2")
    assert v1.get_json()["gender"] == "female" and v2.get_json()["gender"] == "male"
    assert v2.headers["ETag"] == 'W/"2"'
    assert client.get(f"/fhir/Patient/{created['id']}/_history/3").status_code == 404


def test_conditional_read_answers_304_when_not_modified(client):
    created = post(client, patient())
    url = f"/fhir/Patient/{created.get_json()['id']}"
    assert client.get(url, headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(url, headers={"If-None-Match": 'W/"0"'}).status_code == 200
    last_modified = created.headers["Last-Modified"]
    assert client.get(url, headers={"If-Modified-Since": last_modified}).status_code == 304
    assert client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200


# -- update ------------------------------------------------------------------------------------
def test_update_makes_a_new_version_and_keeps_the_old_one(client):
    created = post(client, patient()).get_json()
    updated = put(client, dict(created, gender="male"))
    assert updated.status_code == 200
    assert updated.get_json()["meta"]["versionId"] == "2"
    assert updated.headers["ETag"] == 'W/"2"'


def test_update_with_a_client_id_creates_the_resource(client):
    response = put(client, patient(id="ins-123"))
    assert response.status_code == 201
    assert client.get("/fhir/Patient/ins-123").status_code == 200


def test_update_with_identical_content_makes_no_new_version(client):
    created = post(client, patient()).get_json()
    again = put(client, created)
    assert again.status_code == 200 and again.get_json()["meta"]["versionId"] == "1"


def test_if_match_with_a_stale_version_is_412_and_changes_nothing(client):
    created = post(client, patient()).get_json()
    assert put(client, dict(created, gender="male"), **{"If-Match": 'W/"1"'}).status_code == 200
    stale = put(client, dict(created, gender="other"), **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.get_json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{created['id']}").get_json()["gender"] == "male"


def test_concurrent_if_match_updates_never_lose_a_write(client, app):
    created = post(client, patient()).get_json()
    rid = created["id"]
    successes, failures = [], []

    def writer(n: int) -> None:
        local = app.test_client()
        for attempt in range(100):
            current = local.get(f"/fhir/Patient/{rid}")
            body = current.get_json()
            names = body.get("name", [])
            body["name"] = names + [{"family": f"writer{n}"}]
            response = local.put(f"/fhir/Patient/{rid}", data=json.dumps(body),
                                 headers={"Content-Type": FHIR_JSON, "If-Match": current.headers["ETag"]})
            if response.status_code == 200:
                successes.append(n)
                return
            failures.append(response.status_code)
            assert response.status_code == 412

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = client.get(f"/fhir/Patient/{rid}").get_json()
    families = sorted(n["family"] for n in final["name"] if n["family"].startswith("writer"))
    assert families == sorted(f"writer{n}" for n in range(6)), "every acknowledged write is in the final state"
    assert final["meta"]["versionId"] == "7"


def test_update_with_mismatched_id_or_type_is_400(client):
    created = post(client, patient()).get_json()
    wrong_id = client.put(f"/fhir/Patient/{created['id']}", data=json.dumps(dict(created, id="other")),
                          headers={"Content-Type": FHIR_JSON})
    assert wrong_id.status_code == 400
    assert "id" in wrong_id.get_json()["issue"][0]["diagnostics"]
    no_id = client.put(f"/fhir/Patient/{created['id']}", data=json.dumps(patient()),
                       headers={"Content-Type": FHIR_JSON})
    assert no_id.status_code == 400
    wrong_type = client.put(f"/fhir/Observation/{created['id']}", data=json.dumps(created),
                            headers={"Content-Type": FHIR_JSON})
    assert wrong_type.status_code == 400


def test_conditional_update_updates_the_single_match_or_creates(client):
    identified = patient(identifier=[{"system": "urn:test", "value": "42"}])
    created = client.put("/fhir/Patient?identifier=urn:test|42", data=json.dumps(identified),
                         headers={"Content-Type": FHIR_JSON})
    assert created.status_code == 201
    updated = client.put("/fhir/Patient?identifier=urn:test|42", data=json.dumps(dict(identified, gender="male")),
                         headers={"Content-Type": FHIR_JSON})
    assert updated.status_code == 200 and updated.get_json()["id"] == created.get_json()["id"]
    post(client, patient(identifier=[{"system": "urn:test", "value": "dup"}]))
    post(client, patient(identifier=[{"system": "urn:test", "value": "dup"}]))
    several = client.put("/fhir/Patient?identifier=urn:test|dup", data=json.dumps(identified),
                         headers={"Content-Type": FHIR_JSON})
    assert several.status_code == 412


# -- patch -------------------------------------------------------------------------------------
def test_json_patch_changes_the_resource_and_validates_the_result(client):
    created = post(client, patient()).get_json()
    url = f"/fhir/Patient/{created['id']}"
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    patched = client.patch(url, data=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"})
    assert patched.status_code == 200 and patched.get_json()["gender"] == "male"
    assert patched.get_json()["meta"]["versionId"] == "2"
    invalid = [{"op": "replace", "path": "/gender", "value": "robot"}]
    refused = client.patch(url, data=json.dumps(invalid), headers={"Content-Type": "application/json-patch+json"})
    assert refused.status_code == 400
    failed_test = [{"op": "test", "path": "/gender", "value": "female"}]
    assert client.patch(url, data=json.dumps(failed_test),
                        headers={"Content-Type": "application/json-patch+json"}).status_code == 422
    assert client.get(url).get_json()["gender"] == "male"



def test_merge_patch_replaces_members_and_null_removes_one(client):
    created = post(client, patient()).get_json()
    url = f"/fhir/Patient/{created['id']}"
    merge = {"gender": "male", "birthDate": None, "name": [{"family": "Martin"}]}
    patched = client.patch(url, data=json.dumps(merge), headers={"Content-Type": "application/merge-patch+json"})
    assert patched.status_code == 200, patched.get_json()
    body = patched.get_json()
    assert body["gender"] == "male" and "birthDate" not in body and body["name"] == [{"family": "Martin"}]
    assert body["meta"]["versionId"] == "2"
    # fhirpy's patch(): a partial resource sent as plain JSON
    again = client.patch(url, data=json.dumps({"gender": "female"}), headers={"Content-Type": "application/json"})
    assert again.status_code == 200 and again.get_json()["gender"] == "female"
    assert client.get(url).get_json()["meta"]["versionId"] == "3"


def test_a_patch_body_must_match_its_media_type_and_leave_a_valid_resource(client):
    created = post(client, patient()).get_json()
    url = f"/fhir/Patient/{created['id']}"
    refusals = [
        ("application/json-patch+json", {"gender": "male"}, 400),  # a JSON Patch is an array
        ("application/merge-patch+json", [{"op": "remove", "path": "/gender"}], 400),  # a merge patch an object
        ("application/fhir+json", {"resourceType": "Parameters", "parameter": []}, 415),  # FHIRPath Patch
        ("application/merge-patch+json", {"gender": "robot"}, 400),  # the result must validate
        ("application/merge-patch+json", {"id": "someone-else"}, 400),  # nor change the resource's id
        ("text/plain", {"gender": "male"}, 415),
    ]
    for mime, body, status in refusals:
        response = client.patch(url, data=json.dumps(body), headers={"Content-Type": mime})
        assert response.status_code == status, (mime, body, response.get_json())
        assert response.get_json()["resourceType"] == "OperationOutcome"
    assert client.get(url).get_json() == created  # nothing changed

# -- delete ------------------------------------------------------------------------------------
def test_delete_then_read_is_410_and_history_keeps_every_version(client):
    created = post(client, patient()).get_json()
    url = f"/fhir/Patient/{created['id']}"
    deleted = client.delete(url)
    assert deleted.status_code == 200
    assert client.get(url).status_code == 410
    history = client.get(f"{url}/_history").get_json()
    assert history["type"] == "history" and history["total"] == 2
    methods = [e["request"]["method"] for e in history["entry"]]
    assert methods == ["DELETE", "POST"]
    assert client.get(f"{url}/_history/1").status_code == 200
    assert client.delete(url).status_code == 200  # deleting again is harmless
    recreated = put(client, dict(created))
    assert recreated.status_code == 201 and recreated.get_json()["meta"]["versionId"] == "3"



def test_history_at_gives_the_versions_current_at_some_point_of_the_period(client):
    created = post(client, patient()).get_json()
    url = f"/fhir/Patient/{created['id']}"
    time.sleep(0.002)  # distinct lastUpdated instants (milliseconds)
    updated = put(client, dict(created, gender="male")).get_json()
    first, second = created["meta"]["lastUpdated"], updated["meta"]["lastUpdated"]
    assert first < second

    def versions(at: str) -> list[str]:
        response = client.get(f"{url}/_history", query_string={"_at": at})
        assert response.status_code == 200, response.get_json()
        return [e["resource"]["meta"]["versionId"] for e in response.get_json().get("entry", [])]

    assert versions(first) == ["1"]  # only version 1 was current then
    assert versions(second) == ["2"]
    assert versions(first[:10]) == ["2", "1"]  # the whole day: both were current during it
    assert versions("2001-01-01") == []
    assert client.get(f"{url}/_history?_at=yesterday").status_code == 400

def test_conditional_delete(client):
    post(client, patient(identifier=[{"system": "urn:test", "value": "gone"}]))
    response = client.delete("/fhir/Patient?identifier=urn:test|gone")
    assert response.status_code == 200
    assert client.get("/fhir/Patient?identifier=urn:test|gone").get_json()["total"] == 0
    post(client, patient(gender="other"))
    post(client, patient(gender="other"))
    assert client.delete("/fhir/Patient?gender=other").status_code == 412


# -- history -----------------------------------------------------------------------------------
def test_type_and_system_history_with_since_and_paging(client):
    client.application.extensions["fhir_audit"].enabled = False  # this test counts every stored version
    first = post(client, patient()).get_json()
    post(client, {"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    put(client, dict(first, gender="male"))
    type_history = client.get("/fhir/Patient/_history").get_json()
    assert type_history["total"] == 2
    system_history = client.get("/fhir/_history?_count=2").get_json()
    assert system_history["total"] == 3 and len(system_history["entry"]) == 2
    next_url = next(link["url"] for link in system_history["link"] if link["relation"] == "next")
    rest = client.get(next_url[next_url.index("/fhir"):]).get_json()
    assert len(rest["entry"]) == 1
    since = client.get(f"/fhir/_history?_since={first['meta']['lastUpdated']}").get_json()
    assert since["total"] == 3
    assert client.get("/fhir/_history?_since=yesterday").status_code == 400


# -- errors a client can act on ----------------------------------------------------------------
def test_malformed_json_is_400(client):
    response = client.post("/fhir/Patient", data=b'{"resourceType": "Patient",', headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["code"] == "structure"


def test_unsupported_media_type_is_415(client):
    response = client.post("/fhir/Patient", data=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert response.status_code == 415
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_plain_application_json_is_accepted(client):
    response = client.post("/fhir/Patient", data=json.dumps(patient()), headers={"Content-Type": "application/json"})
    assert response.status_code == 201


def test_body_over_the_limit_is_413(client):
    huge = patient(text={"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">"
                         + "x" * 1_100_000 + "</div>"})
    response = post(client, huge)
    assert response.status_code == 413
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_unsupported_method_is_405(client):
    response = client.post("/fhir/Patient/123")
    assert response.status_code == 405
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_interactions_not_allowed_on_a_type_are_405(client):
    event = {"resourceType": "AuditEvent", "type": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                    "code": "110110"},
             "recorded": "2026-01-01T00:00:00Z", "agent": [{"requestor": True, "who": {"display": "x"}}],
             "source": {"observer": {"display": "server"}}}
    created = post(client, event)
    assert created.status_code == 201, created.get_json()
    rid = created.get_json()["id"]
    assert put(client, dict(created.get_json())).status_code == 405
    assert client.delete(f"/fhir/AuditEvent/{rid}").status_code == 405


def test_xml_is_refused_with_406(client):
    created = post(client, patient()).get_json()
    response = client.get(f"/fhir/Patient/{created['id']}?_format=xml")
    assert response.status_code == 406
    assert client.get(f"/fhir/Patient/{created['id']}", headers={"Accept": "application/fhir+xml"}).status_code == 406


def test_validation_errors_name_the_problem_and_its_location_and_store_nothing(client):
    bad = patient(gender="mal", birthDate="12/25/1974", favoriteColor="blue")
    response = post(client, bad)
    assert response.status_code == 400
    issues = response.get_json()["issue"]
    locations = {loc for issue in issues for loc in issue.get("expression", [])}
    assert {"Patient.gender", "Patient.birthDate", "Patient.favoriteColor"} <= locations
    assert client.get("/fhir/Patient").get_json()["total"] == 0


def test_resource_type_must_match_the_url(client):
    response = client.post("/fhir/Observation", data=json.dumps(patient()), headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 400


# -- _summary / _elements / _pretty / _format --------------------------------------------------
def test_summary_and_elements_subset_the_resource_and_mark_it(client):
    created = post(client, patient(text={"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">"
                                          "Claire</div>"},
                                   maritalStatus={"text": "married"})).get_json()
    url = f"/fhir/Patient/{created['id']}"
    summary = client.get(f"{url}?_summary=true").get_json()
    assert "name" in summary and "maritalStatus" not in summary and "text" not in summary
    assert summary["meta"]["tag"][-1]["code"] == "SUBSETTED"
    text = client.get(f"{url}?_summary=text").get_json()
    assert "text" in text and "name" not in text
    data = client.get(f"{url}?_summary=data").get_json()
    assert "text" not in data and "maritalStatus" in data
    elements = client.get(f"{url}?_elements=birthDate").get_json()
    assert set(elements) == {"resourceType", "id", "meta", "birthDate"}


def test_pretty_and_format_parameters(client):
    created = post(client, patient()).get_json()
    pretty = client.get(f"/fhir/Patient/{created['id']}?_pretty=true&_format=json")
    assert pretty.status_code == 200 and b"\n" in pretty.data


# -- metadata ----------------------------------------------------------------------------------
def test_capability_statement_lists_the_served_types_and_their_interactions(client):
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    statement = response.get_json()
    assert statement["resourceType"] == "CapabilityStatement" and statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert len(resources) == len(list(Path("resources/registry").glob("*.json")))
    audit = {i["code"] for i in resources["AuditEvent"]["interaction"]}
    assert "delete" not in audit and "update" not in audit
    assert "birthdate" in {p["name"] for p in resources["Patient"]["searchParam"]}



def test_capability_statement_names_the_address_each_client_reached(client):
    # the encoded statement is kept between requests: one per address, never another's
    for _ in range(2):
        for host in ("a.example", "b.example:8443"):
            statement = client.get("/fhir/metadata", base_url=f"https://{host}").get_json()
            assert statement["implementation"]["url"] == f"https://{host}/fhir"
    pretty = client.get("/fhir/metadata?_pretty=true")
    assert pretty.status_code == 200 and b"\n" in pretty.data

def test_unexpected_errors_are_500_outcomes_without_a_stack_trace(client, app, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail")
    monkeypatch.setattr(app.extensions["fhir"].store, "read", explode)
    response = client.get("/fhir/Patient/x")
    assert response.status_code == 500
    assert b"secret internal detail" not in response.data and b"Traceback" not in response.data
    assert response.get_json()["issue"][0]["severity"] == "fatal"
