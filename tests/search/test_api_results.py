"""What a search answers besides its matches: _total, _summary, _elements, system search with
_type, POST _search, the self link, entries' fullUrl and search.mode."""
from __future__ import annotations


import pytest

from search_api_data import BASE, bundle, error, link, query_of, typed_ids

SUBSETTED = "SUBSETTED"


def test_entries_have_full_url_and_search_mode(dataset):
    body = bundle(dataset, "Patient?_id=p1")
    assert body["entry"] == [{"fullUrl": f"{BASE}/Patient/p1", "resource": body["entry"][0]["resource"],
                              "search": {"mode": "match"}}]


@pytest.mark.parametrize("total, present", [("none", False), ("estimate", True), ("accurate", True)])
def test_total(dataset, total, present):
    body = bundle(dataset, f"Observation?status=final&_total={total}&_count=1")
    assert ("total" in body) is present
    if present:
        assert body["total"] == 4
    assert dict(query_of(link(body, "self")))["_total"] == total


def test_accurate_total_is_on_every_page(dataset):
    body = bundle(dataset, "Observation?_total=accurate&_count=3")
    second = bundle(dataset, link(body, "next").removeprefix("http://localhost"))
    assert body["total"] == second["total"] == 7


def test_summary_count(dataset):
    body = bundle(dataset, "Observation?code=2339-0&_summary=count")
    assert body["total"] == 2 and "entry" not in body
    assert dict(query_of(link(body, "self")))["_summary"] == "count"
    assert link(body, "next") is None


def test_summary_true(dataset):
    body = bundle(dataset, "Patient?_id=p1&_summary=true")
    resource = body["entry"][0]["resource"]
    assert resource["name"] and resource["birthDate"] == "1980-04-12"
    assert "text" not in resource
    assert SUBSETTED in [t.get("code") for t in resource["meta"]["tag"]]


def test_elements(dataset):
    body = bundle(dataset, "Patient?_id=p1,p2&_elements=gender,birthDate")
    for entry in body["entry"]:
        resource = entry["resource"]
        assert set(resource) <= {"resourceType", "id", "meta", "gender", "birthDate"}
        assert "gender" in resource and "name" not in resource
        assert SUBSETTED in [t.get("code") for t in resource["meta"]["tag"]]
    assert dict(query_of(link(body, "self")))["_elements"] == "gender,birthDate"


@pytest.mark.parametrize("query, expected", [
    ("?_type=Patient,Practitioner&name=du", {"Practitioner/pr1", "Practitioner/pr2"}),
    ("?_type=Patient,Practitioner&gender=female", {"Patient/p1", "Patient/p3", "Practitioner/pr2"}),
    ("?_type=Patient,Organization&_id=p1,org2", {"Patient/p1", "Organization/org2"}),
    ("?_type=Patient&_type=Organization&_id=p1,org2", {"Patient/p1", "Organization/org2"}),
    ("?_id=p1,org2,o3", {"Patient/p1", "Organization/org2", "Observation/o3"}),
    ("?_type=Condition", {"Condition/c1", "Condition/c2"}),
])
def test_system_search(dataset, query, expected):
    assert typed_ids(dataset, query) == expected


def test_system_search_self_link_shows_type(dataset):
    body = bundle(dataset, "?_type=Patient,Organization&_id=p1,org2")
    assert link(body, "self") == f"{BASE}?_type=Patient%2COrganization&_id=p1%2Corg2" or \
        dict(query_of(link(body, "self")))["_type"] == "Patient,Organization"


@pytest.mark.parametrize("query", ["?_type=Nope", "?_type=Patient,Observation&gender=female"])
def test_system_search_errors(dataset, query):
    error(dataset, query)


def test_post_search_with_a_form_body(dataset):
    response = dataset.post("/fhir/Observation/_search", data={"code": "2339-0", "_count": "1"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["total"] == 2 and len(body["entry"]) == 1
    assert link(body, "self") == f"{BASE}/Observation?code=2339-0&_count=1"
    second = dataset.get(link(body, "next").removeprefix("http://localhost"))
    assert {e["resource"]["id"] for e in second.get_json()["entry"]} | {body["entry"][0]["resource"]["id"]} == \
        {"o1", "o3"}


def test_post_search_merges_url_and_body_parameters(dataset):
    response = dataset.post("/fhir/Observation/_search?status=final", data={"code": "2339-0,8867-4"})
    assert {e["resource"]["id"] for e in response.get_json()["entry"]} == {"o1", "o3"}


def test_post_system_search(dataset):
    response = dataset.post("/fhir/_search", data={"_type": "Patient", "gender": "male"})
    assert response.status_code == 200
    assert {e["resource"]["id"] for e in response.get_json()["entry"]} == {"p2"}


def test_post_search_needs_a_form(dataset):
    response = dataset.post("/fhir/Observation/_search", data='{"code": "x"}',
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 415


def test_self_link_shows_only_what_was_applied(dataset):
    body = bundle(dataset, "Patient?gender=male&foo=bar&_count=5&_pretty=true&_format=json")
    assert link(body, "self") == f"{BASE}/Patient?gender=male&_count=5"


def test_capability_statement_lists_every_supported_search_parameter(dataset):
    capability = dataset.get("/fhir/metadata").get_json()
    by_type = {r["type"]: {p["name"]: p["type"] for p in r["searchParam"]} for r in capability["rest"][0]["resource"]}
    for rtype, code, ptype in [("Patient", "name", "string"), ("Patient", "birthdate", "date"),
                               ("Patient", "identifier", "token"), ("Patient", "general-practitioner", "reference"),
                               ("Observation", "value-quantity", "quantity"),
                               ("Observation", "code-value-quantity", "composite"),
                               ("Procedure", "instantiates-uri", "uri"), ("Patient", "_id", "token"),
                               ("Patient", "_lastUpdated", "date"), ("Encounter", "length", "quantity")]:
        assert by_type[rtype].get(code) == ptype, (rtype, code)
    observation = next(r for r in capability["rest"][0]["resource"] if r["type"] == "Observation")
    assert "Observation:subject" in observation["searchInclude"]
    assert "DiagnosticReport:result" in observation["searchRevInclude"]
