"""Batch and transaction Bundles at ``POST /fhir`` (R4 http.html §3.1.0.11), seen from a client."""
from __future__ import annotations

import base64
import json
import uuid

import pytest

FHIR_JSON = "application/fhir+json"
SYS = "urn:oid:1.2.250.1.213.1.4.8"


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def patient(value: str | None = None, **extra) -> dict:
    body = {"resourceType": "Patient", "name": [{"family": "Martin", "given": ["Claire"]}], "gender": "female"}
    if value is not None:
        body["identifier"] = [{"system": SYS, "value": value}]
    body.update(extra)
    return body


def observation(subject: str, **extra) -> dict:
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "Potassium"},
            "subject": {"reference": subject}, "valueQuantity": {"value": 4.2, "unit": "mmol/L"}}
    body.update(extra)
    return body


def post_entry(resource: dict, full_url: str | None = None, **request) -> dict:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"], **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def bundle(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def send(client, body, **headers):
    return client.post("/fhir", data=json.dumps(body), headers={"Content-Type": FHIR_JSON, **headers})


def create(client, resource: dict) -> dict:
    response = client.post(f"/fhir/{resource['resourceType']}", data=json.dumps(resource),
                           headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def total(client, query: str) -> int:
    return client.get(f"/fhir/{query}").get_json()["total"]


def expressions(response) -> list[str]:
    return [e for issue in response.get_json()["issue"] for e in issue.get("expression", [])]


# -- transaction: a whole clinical picture at once ---------------------------------------------------
def test_transaction_lands_cross_referenced_resources_whole_with_references_rewritten(client):
    p, enc, cond, obs, rep = urn(), urn(), urn(), urn(), urn()
    body = bundle(
        "transaction",
        post_entry({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "Kalemia"},
                    "subject": {"reference": p}, "encounter": {"reference": enc}, "result": [{"reference": obs}]},
                   rep),
        post_entry(observation(p, encounter={"reference": enc}), obs),
        post_entry({"resourceType": "Condition", "subject": {"reference": p}, "encounter": {"reference": enc},
                    "code": {"text": "Hyperkalemia"}, "evidence": [{"detail": [{"reference": obs}]}]}, cond),
        post_entry({"resourceType": "Encounter", "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": p}}, enc),
        post_entry(patient("tx-1"), p),
    )
    response = send(client, body)
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert result["resourceType"] == "Bundle" and result["type"] == "transaction-response"
    entries = result["entry"]
    types = ["DiagnosticReport", "Observation", "Condition", "Encounter", "Patient"]
    ids = {}
    for entry, rtype in zip(entries, types, strict=True):
        assert entry["response"]["status"] == "201 Created"
        location = entry["response"]["location"]
        assert location.startswith(f"{rtype}/") and location.endswith("/_history/1")
        assert entry["response"]["etag"] == 'W/"1"'
        assert entry["response"]["lastModified"].endswith("Z")
        assert entry["resource"]["resourceType"] == rtype
        ids[rtype] = location.split("/")[1]
        assert entry["resource"]["id"] == ids[rtype]
    stored_obs = client.get(f"/fhir/Observation/{ids['Observation']}").get_json()
    assert stored_obs["subject"]["reference"] == f"Patient/{ids['Patient']}"
    assert stored_obs["encounter"]["reference"] == f"Encounter/{ids['Encounter']}"
    report = client.get(f"/fhir/DiagnosticReport/{ids['DiagnosticReport']}").get_json()
    assert report["result"] == [{"reference": f"Observation/{ids['Observation']}"}]
    condition = client.get(f"/fhir/Condition/{ids['Condition']}").get_json()
    assert condition["evidence"][0]["detail"][0]["reference"] == f"Observation/{ids['Observation']}"
    # the references are indexed with their new ids: searches by the patient find everything
    assert total(client, f"Observation?subject=Patient/{ids['Patient']}") == 1
    assert total(client, f"DiagnosticReport?result=Observation/{ids['Observation']}") == 1


def test_prefer_return_minimal_leaves_out_the_resources(client):
    response = send(client, bundle("transaction", post_entry(patient())), Prefer="return=minimal")
    entry = response.get_json()["entry"][0]
    assert entry["response"]["status"] == "201 Created" and "resource" not in entry


def test_put_entries_with_urn_full_urls_map_to_their_id(client):
    p = urn()
    body = bundle("transaction",
                  post_entry(observation(p)),
                  {"fullUrl": p, "resource": patient(id="pat-put"), "request": {"method": "PUT",
                                                                                 "url": "Patient/pat-put"}})
    response = send(client, body)
    assert response.status_code == 200, response.get_json()
    obs_id = response.get_json()["entry"][0]["response"]["location"].split("/")[1]
    assert client.get(f"/fhir/Observation/{obs_id}").get_json()["subject"]["reference"] == "Patient/pat-put"
    assert response.get_json()["entry"][1]["response"]["status"] == "201 Created"


def test_a_urn_reference_to_no_entry_fails_the_transaction(client):
    response = send(client, bundle("transaction", post_entry(patient("x1")), post_entry(observation(urn()))))
    assert response.status_code == 400
    assert "Bundle.entry[1].resource.subject.reference" in expressions(response)
    assert total(client, "Patient?identifier=x1") == 0


# -- atomicity -----------------------------------------------------------------------------------
def test_an_invalid_entry_rolls_back_the_whole_transaction(client):
    existing = create(client, patient("keep", gender="male"))
    entries = []
    for i in range(100):
        if i == 57:
            entries.append(post_entry(observation("Patient/x", status="not-a-status")))
        elif i == 30:
            entries.append({"resource": dict(existing, gender="other"),
                            "request": {"method": "PUT", "url": f"Patient/{existing['id']}"}})
        elif i == 80:
            entries.append({"request": {"method": "DELETE", "url": f"Patient/{existing['id']}"}})
        else:
            entries.append(post_entry(patient(f"bulk-{i}")))
    # the DELETE and the PUT of the same patient would overlap: keep only the PUT
    entries[80] = post_entry(patient("bulk-80"))
    response = send(client, bundle("transaction", *entries))
    assert response.status_code == 400
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(e.startswith("Bundle.entry[57]") for e in expressions(response))
    assert "Bundle.entry[57]" in outcome["issue"][0]["diagnostics"]
    assert total(client, f"Patient?identifier={SYS}|bulk-1") == 0
    assert total(client, f"Patient?identifier={SYS}|bulk-99") == 0
    assert total(client, "Patient") == 1
    assert total(client, "Observation") == 0
    after = client.get(f"/fhir/Patient/{existing['id']}").get_json()
    assert after == existing
    history = client.get(f"/fhir/Patient/{existing['id']}/_history").get_json()
    assert history["total"] == 1


def test_a_failing_delete_step_rolls_back_the_earlier_deletes(client):
    first = create(client, patient("d1"))
    response = send(client, bundle(
        "transaction",
        {"request": {"method": "DELETE", "url": f"Patient/{first['id']}"}},
        {"request": {"method": "PUT", "url": "Patient/zzz"}, "resource": patient(id="zzz", gender="bogus")}))
    assert response.status_code == 400
    assert client.get(f"/fhir/Patient/{first['id']}").status_code == 200


# -- conditional references ----------------------------------------------------------------------
def test_a_conditional_reference_resolves_to_its_single_match(client):
    target = create(client, patient("cr-1"))
    response = send(client, bundle("transaction", post_entry(observation(f"Patient?identifier={SYS}|cr-1"))))
    assert response.status_code == 200, response.get_json()
    obs = response.get_json()["entry"][0]["resource"]
    assert obs["subject"]["reference"] == f"Patient/{target['id']}"


def test_a_conditional_reference_with_no_match_fails_the_transaction(client):
    response = send(client, bundle("transaction", post_entry(patient("cr-none-p")),
                                   post_entry(observation(f"Patient?identifier={SYS}|nobody"))))
    assert response.status_code == 412
    assert "Bundle.entry[1].resource.subject.reference" in expressions(response)
    assert total(client, "Patient") == 0


def test_a_conditional_reference_with_two_matches_fails_the_transaction(client):
    create(client, patient("twin"))
    create(client, patient("twin"))
    response = send(client, bundle("transaction", post_entry(observation(f"Patient?identifier={SYS}|twin"))))
    assert response.status_code == 412
    assert response.get_json()["issue"][0]["code"] == "multiple-matches"
    assert total(client, "Observation") == 0


def test_a_conditional_reference_to_an_if_none_exist_entry_of_the_same_bundle(client):
    response = send(client, bundle(
        "transaction",
        post_entry(observation(f"Patient?identifier={SYS}|fresh")),
        post_entry(patient("fresh"), ifNoneExist=f"identifier={SYS}|fresh")))
    assert response.status_code == 200, response.get_json()
    patient_id = response.get_json()["entry"][1]["response"]["location"].split("/")[1]
    assert response.get_json()["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"


# -- conditional create, If-Match ----------------------------------------------------------------
def test_if_none_exist_returns_the_existing_resource_and_maps_its_full_url(client):
    existing = create(client, patient("ine-1"))
    p = urn()
    response = send(client, bundle("transaction",
                                   post_entry(patient("ine-1"), p, ifNoneExist=f"identifier={SYS}|ine-1"),
                                   post_entry(observation(p))))
    assert response.status_code == 200, response.get_json()
    first, second = response.get_json()["entry"]
    assert first["response"]["status"] == "200 OK"
    assert first["response"]["location"] == f"Patient/{existing['id']}/_history/1"
    assert second["resource"]["subject"]["reference"] == f"Patient/{existing['id']}"
    assert total(client, "Patient") == 1


def test_if_none_exist_creates_when_nothing_matches(client):
    response = send(client, bundle("transaction",
                                   post_entry(patient("ine-2"), ifNoneExist=f"Patient?identifier={SYS}|ine-2")))
    assert response.get_json()["entry"][0]["response"]["status"] == "201 Created"


def test_the_same_conditional_create_twice_in_one_transaction_is_refused(client):
    criteria = f"identifier={SYS}|dup"
    response = send(client, bundle("transaction", post_entry(patient("dup"), ifNoneExist=criteria),
                                   post_entry(patient("dup"), ifNoneExist=criteria)))
    assert response.status_code == 400
    assert total(client, "Patient") == 0


def test_two_entries_on_the_same_resource_are_refused(client):
    existing = create(client, patient("same"))
    url = f"Patient/{existing['id']}"
    first = {"resource": dict(existing, gender="male"), "request": {"method": "PUT", "url": url}}
    second = {"resource": dict(existing, gender="other"), "request": {"method": "PUT", "url": url}}
    response = send(client, bundle("transaction", first, second))
    assert response.status_code == 400
    assert client.get(f"/fhir/{url}").get_json()["gender"] == "female"


def test_a_stale_if_match_fails_the_whole_transaction_with_412(client):
    existing = create(client, patient("im"))
    url = f"Patient/{existing['id']}"
    assert send(client, bundle("transaction", {"resource": dict(existing, gender="male"),
                                               "request": {"method": "PUT", "url": url, "ifMatch": 'W/"1"'}})
                ).status_code == 200
    response = send(client, bundle("transaction",
                                   post_entry(patient("im-new")),
                                   {"resource": dict(existing, gender="other"),
                                    "request": {"method": "PUT", "url": url, "ifMatch": 'W/"1"'}}))
    assert response.status_code == 412
    assert "Bundle.entry[1]" in expressions(response)
    assert client.get(f"/fhir/{url}").get_json()["gender"] == "male"
    assert total(client, f"Patient?identifier={SYS}|im-new") == 0


def test_conditional_update_and_delete_urls(client):
    existing = create(client, patient("cu"))
    doomed = create(client, patient("cd"))
    response = send(client, bundle(
        "transaction",
        {"resource": patient("cu", gender="male"), "request": {"method": "PUT", "url": f"Patient?identifier={SYS}|cu"}},
        {"resource": patient("cu-new"), "request": {"method": "PUT", "url": f"Patient?identifier={SYS}|cu-new"}},
        {"request": {"method": "DELETE", "url": f"Patient?identifier={SYS}|cd"}}))
    assert response.status_code == 200, response.get_json()
    updated, created, deleted = response.get_json()["entry"]
    assert updated["response"]["status"] == "200 OK"
    assert updated["response"]["location"] == f"Patient/{existing['id']}/_history/2"
    assert created["response"]["status"] == "201 Created"
    assert deleted["response"]["status"] == "204 No Content"
    assert client.get(f"/fhir/Patient/{existing['id']}").get_json()["gender"] == "male"
    assert client.get(f"/fhir/Patient/{doomed['id']}").status_code == 410


# -- ordering ------------------------------------------------------------------------------------
def test_processing_order_is_delete_post_put_get_and_answers_keep_the_bundle_order(client):
    old = create(client, patient("order-old"))
    kept = create(client, patient("order-kept"))
    p = urn()
    response = send(client, bundle(
        "transaction",
        {"request": {"method": "GET", "url": f"Patient?identifier={SYS}|order-new"}},
        {"request": {"method": "GET", "url": f"Patient/{kept['id']}"}},
        {"resource": dict(kept, gender="male"), "request": {"method": "PUT", "url": f"Patient/{kept['id']}"}},
        post_entry(patient("order-new"), p),
        {"request": {"method": "DELETE", "url": f"Patient/{old['id']}"}},
        {"request": {"method": "GET", "url": f"Patient?identifier={SYS}|order-old"}},
    ))
    assert response.status_code == 200, response.get_json()
    search_new, read_kept, put_kept, post_new, delete_old, search_old = response.get_json()["entry"]
    assert search_new["response"]["status"] == "200 OK"
    assert search_new["resource"]["type"] == "searchset" and search_new["resource"]["total"] == 1
    assert search_new["resource"]["entry"][0]["resource"]["id"] == post_new["resource"]["id"]
    assert read_kept["resource"]["gender"] == "male" and read_kept["response"]["etag"] == 'W/"2"'
    assert put_kept["response"]["status"] == "200 OK"
    assert post_new["response"]["status"] == "201 Created"
    assert delete_old["response"]["status"] == "204 No Content"
    assert search_old["resource"]["total"] == 0


def test_delete_then_create_with_the_same_identifier_in_one_transaction(client):
    create(client, patient("replace"))
    response = send(client, bundle(
        "transaction",
        post_entry(patient("replace", gender="male"), ifNoneExist=f"identifier={SYS}|replace"),
        {"request": {"method": "DELETE", "url": f"Patient?identifier={SYS}|replace"}}))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["entry"][0]["response"]["status"] == "201 Created"
    search = client.get(f"/fhir/Patient?identifier={SYS}|replace").get_json()
    assert search["total"] == 1 and search["entry"][0]["resource"]["gender"] == "male"


def test_get_entries_read_vread_search_and_history(client):
    created = create(client, patient("reads"))
    rid = created["id"]
    response = send(client, bundle(
        "batch",
        {"request": {"method": "GET", "url": f"Patient/{rid}"}},
        {"request": {"method": "GET", "url": f"Patient/{rid}/_history/1"}},
        {"request": {"method": "GET", "url": f"Patient?identifier={SYS}|reads&_count=5"}},
        {"request": {"method": "GET", "url": f"Patient/{rid}/_history"}},
        {"request": {"method": "GET", "url": f"Patient/{rid}", "ifNoneMatch": 'W/"1"'}},
        {"request": {"method": "GET", "url": "Patient/unknown"}},
    ))
    assert response.status_code == 200
    read, vread, search, history, not_modified, missing = response.get_json()["entry"]
    assert read["resource"] == created and read["response"]["etag"] == 'W/"1"'
    assert vread["resource"] == created
    assert search["resource"]["total"] == 1 and "_count=5" in search["resource"]["link"][0]["url"]
    assert history["resource"]["type"] == "history" and history["resource"]["total"] == 1
    assert not_modified["response"]["status"] == "304 Not Modified" and "resource" not in not_modified
    assert missing["response"]["status"] == "404 Not Found"
    assert missing["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_a_read_of_an_unknown_resource_fails_a_transaction(client):
    response = send(client, bundle("transaction", post_entry(patient("r404")),
                                   {"request": {"method": "GET", "url": "Patient/nope"}}))
    assert response.status_code == 404
    assert total(client, "Patient") == 0


# -- batch -----------------------------------------------------------------------------------------
def test_batch_entries_succeed_or_fail_independently(client):
    response = send(client, bundle(
        "batch",
        post_entry(patient("b1"), urn()),
        post_entry(observation("Patient/x", status="bogus")),
        {"request": {"method": "PUT", "url": "Patient/b3"}, "resource": patient(id="b3")},
        {"request": {"method": "GET", "url": "Spaceship/1"}},
        {"request": {"method": "BREW", "url": "Patient"}},
        post_entry(patient("b6")),
    ))
    assert response.status_code == 200
    result = response.get_json()
    assert result["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses[0] == "201 Created" and statuses[2] == "201 Created" and statuses[5] == "201 Created"
    assert statuses[1].startswith("400") and statuses[3].startswith("404") and statuses[4].startswith("400")
    bad = result["entry"][1]["response"]["outcome"]
    assert bad["resourceType"] == "OperationOutcome"
    assert any(e.startswith("Bundle.entry[1].resource.status") for i in bad["issue"] for e in i.get("expression", []))
    assert "resource" not in result["entry"][1]
    assert total(client, "Patient") == 3
    assert total(client, "Observation") == 0


def test_batch_entries_cannot_reference_each_other(client):
    p = urn()
    response = send(client, bundle("batch", post_entry(patient("bp"), p), post_entry(observation(p))))
    first, second = response.get_json()["entry"]
    assert first["response"]["status"] == "201 Created"
    assert second["response"]["status"].startswith("400")


# -- PATCH ---------------------------------------------------------------------------------------
def binary_patch(ops: list) -> dict:
    return {"resourceType": "Binary", "contentType": "application/json-patch+json",
            "data": base64.b64encode(json.dumps(ops).encode()).decode()}


def test_patch_entry_carries_a_json_patch_in_a_binary(client):
    existing = create(client, patient("patch-me"))
    p = urn()
    response = send(client, bundle(
        "transaction",
        {"resource": binary_patch([{"op": "replace", "path": "/gender", "value": "male"},
                                   {"op": "add", "path": "/generalPractitioner",
                                    "value": [{"reference": p}]}]),
         "request": {"method": "PATCH", "url": f"Patient/{existing['id']}"}},
        post_entry({"resourceType": "Practitioner", "name": [{"family": "House"}]}, p),
        {"request": {"method": "GET", "url": f"Patient/{existing['id']}"}},
    ))
    assert response.status_code == 200, response.get_json()
    patched, practitioner, read = response.get_json()["entry"]
    assert patched["response"]["status"] == "200 OK"
    assert patched["response"]["location"] == f"Patient/{existing['id']}/_history/2"
    practitioner_id = practitioner["response"]["location"].split("/")[1]
    assert read["resource"]["gender"] == "male"
    assert read["resource"]["generalPractitioner"] == [{"reference": f"Practitioner/{practitioner_id}"}]


def test_conditional_patch_entry(client):
    existing = create(client, patient("cpatch"))
    response = send(client, bundle("batch", {
        "resource": binary_patch([{"op": "replace", "path": "/gender", "value": "other"}]),
        "request": {"method": "PATCH", "url": f"Patient?identifier={SYS}|cpatch"}}))
    assert response.get_json()["entry"][0]["response"]["status"] == "200 OK"
    assert client.get(f"/fhir/Patient/{existing['id']}").get_json()["gender"] == "other"



def test_patch_entry_may_carry_a_json_merge_patch(client):
    existing = create(client, patient("merge-me", birthDate="1980-01-01"))
    merge = {"resourceType": "Binary", "contentType": "application/merge-patch+json",
             "data": base64.b64encode(json.dumps({"gender": "male", "birthDate": None}).encode()).decode()}
    response = send(client, bundle("transaction", {"resource": merge,
                                                   "request": {"method": "PATCH", "url": f"Patient/{existing['id']}"}}))
    assert response.status_code == 200, response.get_json()
    current = client.get(f"/fhir/Patient/{existing['id']}").get_json()
    assert current["gender"] == "male" and "birthDate" not in current and current["meta"]["versionId"] == "2"

def test_a_patch_that_is_not_a_json_patch_binary_is_refused(client):
    existing = create(client, patient("bad-patch"))
    url = f"Patient/{existing['id']}"
    for resource, where in (
            ([{"op": "replace", "path": "/gender", "value": "male"}], "Bundle.entry[0].resource"),
            ({"resourceType": "Binary", "contentType": "application/json", "data": "W10="},
             "Bundle.entry[0].resource.contentType"),
            ({"resourceType": "Binary", "contentType": "application/json-patch+json", "data": "%%%"},
             "Bundle.entry[0].resource.data"),
            ({"resourceType": "Binary", "contentType": "application/merge-patch+json", "data": "W10="},  # []
             "Bundle.entry[0].resource.data"),
            ({"resourceType": "Parameters", "parameter": []}, "Bundle.entry[0].resource")):
        response = send(client, bundle("transaction", {"resource": resource,
                                                       "request": {"method": "PATCH", "url": url}}))
        assert response.status_code == 400, resource
        assert where in expressions(response)


# -- the envelope ----------------------------------------------------------------------------------
@pytest.mark.parametrize("body, where", [
    ({"resourceType": "Patient"}, "Bundle.resourceType"),
    ({"resourceType": "Bundle", "type": "collection", "entry": []}, "Bundle.type"),
    ({"resourceType": "Bundle", "type": "transaction", "entry": {}}, "Bundle.entry"),
    (bundle("transaction", {"resource": patient()}), "Bundle.entry[0].request"),
    (bundle("transaction", post_entry(patient()), {"request": {"method": "POST"}, "resource": patient()}),
     "Bundle.entry[1].request.url"),
    (bundle("transaction", {"request": {"method": "FETCH", "url": "Patient"}}), "Bundle.entry[0].request.method"),
    (bundle("transaction", {"request": {"method": "POST", "url": "Patient"}}), "Bundle.entry[0].resource"),
    (bundle("transaction", {"request": {"method": "PUT", "url": "Patient/1"}}), "Bundle.entry[0].resource"),
    (bundle("transaction", {"request": {"method": "POST", "url": "Observation"}, "resource": patient()}),
     "Bundle.entry[0].resource.resourceType"),
    (bundle("transaction", {"request": {"method": "PUT", "url": "Patient"}, "resource": patient()}),
     "Bundle.entry[0].request.url"),
    (bundle("transaction", {"request": {"method": "PUT", "url": "Patient/1", "ifMatch": "yesterday"},
                            "resource": patient(id="1")}), "Bundle.entry[0].request.ifMatch"),
    (bundle("transaction", post_entry(patient(), "urn:uuid:1"), post_entry(patient(), "urn:uuid:1")),
     "Bundle.entry[1].fullUrl"),
])
def test_a_malformed_envelope_is_400_naming_the_element(client, body, where):
    response = send(client, body)
    assert response.status_code == 400, response.get_json()
    assert where in expressions(response)
    assert total(client, "Patient") == 0


def test_an_unknown_search_parameter_in_a_conditional_url_is_400(client):
    response = send(client, bundle("transaction", {"request": {"method": "DELETE", "url": "Patient?shoe-size=42"}}))
    assert response.status_code == 400
    assert any(e.startswith("Bundle.entry[0]") for e in expressions(response))


def test_an_empty_transaction_answers_an_empty_response(client):
    response = send(client, {"resourceType": "Bundle", "type": "transaction"})
    assert response.status_code == 200
    assert response.get_json()["type"] == "transaction-response" and "entry" not in response.get_json()


def test_more_than_ten_thousand_entries_is_413(client):
    entry = {"request": {"method": "GET", "url": "Patient/1"}}
    response = send(client, {"resourceType": "Bundle", "type": "batch", "entry": [entry] * 10_001})
    assert response.status_code == 413
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_full_urls_absolute_on_the_server_base_are_rewritten_too(client):
    full = "http://example.org/fhir/Patient/client-side-1"
    body = bundle("transaction", post_entry(patient("abs"), full),
                  {"fullUrl": "http://example.org/fhir/Observation/o1",
                   "resource": observation("Patient/client-side-1"),
                   "request": {"method": "POST", "url": "Observation"}})
    response = send(client, body)
    assert response.status_code == 200, response.get_json()
    patient_id = response.get_json()["entry"][0]["response"]["location"].split("/")[1]
    assert patient_id != "client-side-1"
    assert response.get_json()["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{patient_id}"


def test_concurrent_transactions_with_the_same_conditional_create_make_one_resource(client, app):
    import threading
    statuses = []

    def worker() -> None:
        local = app.test_client()
        for _ in range(3):
            p = urn()
            response = send(local, bundle("transaction",
                                          post_entry(patient("race"), p, ifNoneExist=f"identifier={SYS}|race"),
                                          post_entry(observation(p))))
            statuses.append(response.status_code)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 409} and 200 in statuses
    assert total(client, f"Patient?identifier={SYS}|race") == 1
    assert total(client, "Observation") == statuses.count(200)
