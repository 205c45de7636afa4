"""The care history's own search parameters (profiles/SearchParameter-dmp-eob-*.json): loaded at start-up,
extracted at write time, searchable, and listed in the CapabilityStatement."""
from __future__ import annotations

import pytest
from feed_helpers import CCAM, CIP13, bundle, care_item, identifiers

PARAMETERS = {
    "service-date": ("date", "https://dmp.example.org/fhir/SearchParameter/dmp-eob-service-date"),
    "type": ("token", "https://dmp.example.org/fhir/SearchParameter/dmp-eob-type"),
    "code": ("token", "https://dmp.example.org/fhir/SearchParameter/dmp-eob-code"),
}


@pytest.fixture
def history(feed):
    items = [
        care_item("consult", served="2026-03-02"),
        care_item("ecg", served="2026-05-10", code="DEQP003", system=CCAM),
        care_item("paracetamol", served="2026-05-11", code="3400933516390", system=CIP13, kind="pharmacy"),
        care_item("stay", served="2026-06-01", kind="institutional",
                  billablePeriod={"start": "2026-06-01", "end": "2026-06-05"},
                  item=[{"sequence": 1, "productOrService": {"text": "Séjour"},
                         "servicedPeriod": {"start": "2026-06-01", "end": "2026-06-05"}}]),
    ]
    response = feed.post("/fhir", bundle(items), feed.insurer)
    assert [e["response"]["status"] for e in response.get_json()["entry"]] == ["201 Created"] * 4, response.get_json()
    return feed


def search(feed, query: str) -> list[str]:
    response = feed.get(f"/fhir/ExplanationOfBenefit?{query}", feed.admin)
    assert response.status_code == 200, response.get_json()
    return identifiers(response.get_json())


def test_service_date_covers_item_dates_and_the_billable_period(history):
    assert search(history, "service-date=2026-05") == ["ecg", "paracetamol"]
    assert search(history, "service-date=ge2026-06-03&service-date=le2026-06-03") == ["stay"]  # during the stay
    assert search(history, "service-date=lt2026-05-01") == ["consult"]
    assert search(history, "service-date=ge2026-05-11") == ["paracetamol", "stay"]


def test_type_is_the_kind_of_care(history):
    assert search(history, "type=pharmacy") == ["paracetamol"]
    assert search(history, "type=http://terminology.hl7.org/CodeSystem/claim-type|institutional") == ["stay"]
    assert search(history, "type=oral") == []


def test_code_is_the_act_or_product_of_an_item(history):
    assert search(history, f"code={CCAM}|DEQP003") == ["ecg"]
    assert search(history, "code=3400933516390") == ["paracetamol"]
    assert search(history, "code:text=séjour") == ["stay"]
    assert search(history, f"code={CCAM}|3400933516390") == []


def test_capability_statement_lists_them_with_their_definitions(feed):
    statement = feed.get("/fhir/metadata", {}).get_json()
    eob = next(r for r in statement["rest"][0]["resource"] if r["type"] == "ExplanationOfBenefit")
    listed = {p["name"]: (p["type"], p["definition"]) for p in eob["searchParam"]}
    for name, expected in PARAMETERS.items():
        assert listed[name] == expected
    assert {"patient", "provider", "created", "identifier"} <= set(listed)  # the R4 ones stay


def test_a_client_cannot_redefine_them(feed):
    response = feed.put("/fhir/SearchParameter/mine", {
        "resourceType": "SearchParameter", "id": "mine", "url": "https://example.org/sp/service-date",
        "name": "Mine", "status": "active", "description": "x", "code": "service-date",
        "base": ["ExplanationOfBenefit"], "type": "date", "expression": "ExplanationOfBenefit.created"}, feed.admin)
    assert response.status_code == 400
    assert "already defined" in response.get_json()["issue"][0]["diagnostics"]
