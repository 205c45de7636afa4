"""The insurer's feed through batch and transaction Bundles of conditional updates on its identifier,
with a backend-service token limited to the feed (system/ExplanationOfBenefit.cu system/Patient.rs)."""
from __future__ import annotations

from feed_helpers import PATIENTS, bundle, care_item, conditional_url, identifiers

from fhir_server.carehistory import INSURER_SYSTEM


def statuses(response) -> list[str]:
    assert response.status_code == 200, response.get_json()
    return [e["response"]["status"] for e in response.get_json()["entry"]]


def versions(feed, item_id: str) -> list[str]:
    found = feed.get(f"/fhir/ExplanationOfBenefit?identifier={INSURER_SYSTEM}|{item_id}", feed.admin).get_json()
    assert len(found.get("entry", [])) == 1, found
    rid = found["entry"][0]["resource"]["id"]
    history = feed.get(f"/fhir/ExplanationOfBenefit/{rid}/_history", feed.admin).get_json()
    return sorted(e["resource"]["meta"]["versionId"] for e in history["entry"])


def test_each_item_of_a_batch_gets_its_own_outcome(feed):
    bad = care_item("no-date")
    del bad["item"][0]["servicedDate"]  # the profile requires a service date
    response = feed.post("/fhir", bundle([care_item("a1"), bad, care_item("a2", "pb")]), feed.insurer)
    assert statuses(response) == ["201 Created", "422 Unprocessable Entity", "201 Created"]
    outcome = response.get_json()["entry"][1]["response"]["outcome"]
    assert any("serviced" in " ".join(i.get("expression", [])) for i in outcome["issue"]), outcome
    assert identifiers(feed.get("/fhir/ExplanationOfBenefit", feed.admin).get_json()) == ["a1", "a2"]


def test_resending_identical_items_creates_no_new_version(feed):
    items = [care_item("a1"), care_item("a2")]
    assert statuses(feed.post("/fhir", bundle(items), feed.insurer)) == ["201 Created"] * 2
    again = feed.post("/fhir", bundle(items), feed.insurer)
    assert statuses(again) == ["200 OK"] * 2
    assert [e["response"]["etag"] for e in again.get_json()["entry"]] == ['W/"1"', 'W/"1"']
    assert versions(feed, "a1") == ["1"] and versions(feed, "a2") == ["1"]
    assert len(feed.get("/fhir/ExplanationOfBenefit", feed.admin).get_json()["entry"]) == 2


def test_a_corrected_item_replaces_the_old_one_as_a_new_version(feed):
    feed.post("/fhir", bundle([care_item("a1", code="G")]), feed.insurer)
    corrected = care_item("a1", code="VG")  # the insurer re-coded the consultation as a home visit
    response = feed.post("/fhir", bundle([corrected]), feed.insurer)
    assert statuses(response) == ["200 OK"] and response.get_json()["entry"][0]["response"]["etag"] == 'W/"2"'
    assert versions(feed, "a1") == ["1", "2"]
    assert identifiers(feed.get("/fhir/ExplanationOfBenefit?code=VG", feed.admin).get_json()) == ["a1"]
    assert identifiers(feed.get("/fhir/ExplanationOfBenefit?code=G", feed.admin).get_json()) == []


def test_an_item_for_an_unknown_patient_is_reported_not_dropped(feed):
    response = feed.post("/fhir", bundle([care_item("a1"), care_item("x1", "nobody")]), feed.insurer)
    assert statuses(response) == ["201 Created", "400 Bad Request"]
    issue = response.get_json()["entry"][1]["response"]["outcome"]["issue"][0]
    assert issue["code"] == "not-found" and "Patient/nobody" in issue["diagnostics"]
    assert issue["expression"] == ["Bundle.entry[1].resource.patient"]
    # once the record exists, the same entry goes in
    assert feed.put("/fhir/Patient/nobody", dict(PATIENTS[0], id="nobody"), feed.admin).status_code == 201
    assert statuses(feed.post("/fhir", bundle([care_item("x1", "nobody")]), feed.insurer)) == ["201 Created"]


def test_a_transaction_corrects_all_or_nothing(feed):
    feed.post("/fhir", bundle([care_item("a1"), care_item("a2")]), feed.insurer)
    corrections = [care_item("a1", code="VG"), care_item("a2", "nobody", code="VG")]
    refused = feed.post("/fhir", bundle(corrections, "transaction"), feed.insurer)
    assert refused.status_code == 400 and "Patient/nobody" in refused.get_json()["issue"][0]["diagnostics"]
    assert versions(feed, "a1") == ["1"]  # a1's correction was rolled back with the failing entry
    corrections[1] = care_item("a2", code="VG")
    accepted = feed.post("/fhir", bundle(corrections, "transaction"), feed.insurer)
    assert accepted.status_code == 200, accepted.get_json()
    assert [e["response"]["etag"] for e in accepted.get_json()["entry"]] == ['W/"2"', 'W/"2"']
    assert identifiers(feed.get("/fhir/ExplanationOfBenefit?code=VG", feed.admin).get_json()) == ["a1", "a2"]


def test_the_feed_token_writes_care_items_and_nothing_else(feed):
    assert feed.get("/fhir/Observation", feed.insurer).status_code == 403
    assert feed.put("/fhir/Patient/pc", dict(PATIENTS[0], id="pc"), feed.insurer).status_code == 403
    assert feed.put(f"/fhir/{conditional_url('a1')}", care_item("a1"), feed.insurer).status_code == 201
    reader = feed.auth("system/Patient.rs system/ExplanationOfBenefit.rs", sub="other")
    assert feed.put(f"/fhir/{conditional_url('a2')}", care_item("a2"), reader).status_code == 403


def test_the_patient_sees_their_own_history_and_not_another_one(feed):
    feed.post("/fhir", bundle([care_item("a1"), care_item("a2"), care_item("b1", "pb")]), feed.insurer)
    own = feed.get("/fhir/ExplanationOfBenefit", feed.patient("pa")).get_json()
    assert identifiers(own) == ["a1", "a2"]
    b1 = feed.get("/fhir/ExplanationOfBenefit", feed.patient("pb")).get_json()["entry"][0]["resource"]["id"]
    assert feed.get(f"/fhir/ExplanationOfBenefit/{b1}", feed.patient("pa")).status_code == 404
    everything = feed.get("/fhir/Patient/pa/$everything", feed.patient("pa")).get_json()
    assert identifiers(everything) == ["a1", "a2"]


def test_a_patient_created_earlier_in_the_same_transaction_counts(feed):
    patient = dict(PATIENTS[0], id="pc")
    body = bundle([care_item("c1", "pc"), care_item("c2", "pc")], "transaction")
    body["entry"].insert(0, {"resource": patient, "request": {"method": "PUT", "url": "Patient/pc"}})
    response = feed.post("/fhir", body, feed.admin)
    assert statuses(response) == ["201 Created"] * 3
    assert identifiers(feed.get("/fhir/ExplanationOfBenefit?patient=pc", feed.admin).get_json()) == ["c1", "c2"]
