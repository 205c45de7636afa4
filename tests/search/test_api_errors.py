"""Unknown parameters (ignored and reported, or refused with Prefer: handling=strict), unknown
modifiers, and malformed values (always 400, naming the parameter)."""
from __future__ import annotations


import pytest

from search_api_data import BASE, bundle, error, ids, link


def outcomes(body: dict) -> list[dict]:
    return [e for e in body.get("entry", []) if e["search"]["mode"] == "outcome"]


@pytest.mark.parametrize("unknown", ["foo=bar", "_foo=1", "_sort=nope", "subject.nope=x", "_contained=true",
                                     "_has:Observation:subject:nope=1"])
def test_unknown_parameters_are_ignored_and_reported(dataset, unknown):
    body = bundle(dataset, f"Observation?status=cancelled&{unknown}")
    assert {e["resource"]["id"] for e in body["entry"] if e["search"]["mode"] == "match"} == {"o5"}
    [outcome] = outcomes(body)
    assert outcome["resource"]["resourceType"] == "OperationOutcome"
    issue = outcome["resource"]["issue"][0]
    assert issue["severity"] == "warning"
    assert unknown.split("=")[0] in issue["expression"]
    assert "fullUrl" not in outcome
    assert link(body, "self") == f"{BASE}/Observation?status=cancelled"


@pytest.mark.parametrize("unknown", ["foo=bar", "_sort=nope", "subject.nope=x", "_has:Observation:subject:nope=1"])
def test_unknown_parameters_are_400_with_strict_handling(dataset, unknown):
    outcome = error(dataset, f"Observation?status=final&{unknown}", Prefer="handling=strict")
    assert unknown.split("=")[0] in outcome["issue"][0]["expression"]


def test_lenient_handling_header_is_the_default(dataset):
    assert ids(dataset, "Patient?foo=bar&gender=male", Prefer="handling=lenient") == {"p2"}


@pytest.mark.parametrize("query, name", [
    ("Patient?gender:nope=male", "gender:nope"),
    ("Patient?name:below=x", "name:below"),
    ("Patient?birthdate:exact=1980", "birthdate:exact"),
    ("Observation?value-quantity:text=1", "value-quantity:text"),
    ("Patient?_id:contains=p", "_id:contains"),
])
def test_unknown_or_inapplicable_modifier_is_400(dataset, query, name):
    outcome = error(dataset, query)
    assert outcome["issue"][0]["expression"] == [name]


@pytest.mark.parametrize("query, name", [
    ("Patient?birthdate=notadate", "birthdate"),
    ("Observation?value-quantity=lots", "value-quantity"),
    ("Patient?_count=ten", "_count"),
    ("Patient?_count=-1", "_count"),
    ("Patient?_total=some", "_total"),
    ("Patient?_summary=maybe", "_summary"),
    ("Patient?gender=", "gender"),
    ("Patient?identifier=|", "identifier"),
    ("Patient?identifier:of-type=a|b", "identifier:of-type"),
    ("Patient?active:missing=yes", "active:missing"),
])
def test_malformed_values_are_400_naming_the_parameter(dataset, query, name):
    outcome = error(dataset, query)
    assert outcome["issue"][0]["expression"] == [name]
    assert outcome["issue"][0]["severity"] == "error"
