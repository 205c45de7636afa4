"""Reference search, chains, reverse chains (_has) and compartment search through the REST API.

Observation subjects: o1 o2 -> Patient/p1; o3 -> http://localhost/fhir/Patient/p2 (absolute, on
this server); o5 -> Patient/p2; o4 o7 -> Patient/p3; o6 -> another server's Patient/p9.
General practitioners: p1 p3 -> pr1 (Dupont), p2 -> pr2 (Durand). Organisations: p1 -> org1
(Clinique), p2 -> org2 (Hôpital Nord, part of org1).
"""
from __future__ import annotations


import pytest

from search_api_data import BASE, bundle, error, get, ids

OTHER = "http://other.example.org/fhir/Patient/p9"


@pytest.mark.parametrize("query, expected", [
    ("Observation?subject=Patient/p1", {"o1", "o2"}),
    ("Observation?subject=p1", {"o1", "o2"}),  # an id alone: any target type
    ("Observation?subject=Patient/p2", {"o3", "o5"}),  # o3's absolute URL is on this server
    (f"Observation?subject={BASE}/Patient/p2", {"o3", "o5"}),
    (f"Observation?subject={BASE}/Patient/p1", {"o1", "o2"}),
    (f"Observation?subject={OTHER}", {"o6"}),
    ("Observation?subject=Patient/p9", set()),  # the local p9 is not the other server's
    ("Observation?subject:Patient=p1", {"o1", "o2"}),
    ("Observation?subject:Group=p1", set()),
    ("Observation?patient=p3", {"o4", "o7"}),
    ("Observation?subject=Patient/p1,Patient/p3", {"o1", "o2", "o4", "o7"}),
    ("Observation?performer=Practitioner/pr1", {"o1"}),
    ("Observation?performer:Practitioner=pr2", {"o2"}),
    ("Observation?performer:identifier=http://example.org/rpps|10001", {"o4"}),
    ("Observation?performer:identifier=10001", {"o4"}),
    ("Observation?performer:identifier=http://example.org/other|10001", set()),
    ("Observation?encounter:missing=false", {"o1"}),
    ("Patient?general-practitioner=pr1", {"p1", "p3"}),
    ("Patient?organization=Organization/org1", {"p1"}),
    ("Patient?organization:missing=true", {"p3", "p4"}),
    ("Patient?link=Patient/p1", {"p4"}),
    ("Organization?partof=org1", {"org2"}),
    ("DiagnosticReport?result=Observation/o2", {"dr1"}),
])
def test_reference(dataset, query, expected):
    assert ids(dataset, query) == expected


@pytest.mark.parametrize("query, expected", [
    ("Observation?subject.name=muller", {"o3", "o5"}),
    ("Observation?subject:Patient.name=martin", {"o1", "o2", "o4", "o7"}),  # Martin and Martinez
    ("Observation?patient.birthdate=1980", {"o1", "o2"}),
    ("Observation?subject.name=muller,ana", {"o3", "o4", "o5", "o7"}),
    ("Observation?subject.name=martin&subject.birthdate=1980", {"o1", "o2"}),
    ("Observation?subject.name=martin&code=8867-4", {"o2"}),
    ("Observation?subject.general-practitioner.name=dupont", {"o1", "o2", "o4", "o7"}),  # two levels
    ("Observation?subject:Patient.general-practitioner:Practitioner.name=durand", {"o3", "o5"}),
    ("Observation?subject.organization.partof=Organization/org1", {"o3", "o5"}),
    ("Patient?organization.name=hopital", {"p2"}),
    ("Patient?organization.partof.name=clinique", {"p2"}),
    ("Patient?general-practitioner.identifier:missing=true", {"p1", "p2", "p3"}),
    ("Encounter?subject.identifier=MRN-2", {"e2"}),
    ("DiagnosticReport?result.code=2339-0", {"dr1"}),
    ("DiagnosticReport?result.subject.name=nobody", set()),
])
def test_chains(dataset, query, expected):
    assert ids(dataset, query) == expected


@pytest.mark.parametrize("query, expected", [
    ("Patient?_has:Observation:patient:code=2339-0", {"p1", "p2"}),
    ("Patient?_has:Observation:subject:status=cancelled", {"p2"}),
    ("Patient?_has:Observation:patient:status=amended,cancelled", {"p2", "p3"}),
    ("Patient?_has:Observation:patient:code=2339-0&_has:Observation:patient:code=8867-4", {"p1", "p2"}),
    ("Patient?_has:Observation:patient:code=8867-4&gender=male", {"p2"}),
    ("Patient?_has:Condition:subject:code=44054006", {"p1"}),
    ("Patient?_has:Observation:subject:_has:DiagnosticReport:result:status=final", {"p1"}),  # nested
    ("Practitioner?_has:Patient:general-practitioner:_has:Observation:subject:code=29463-7", {"pr1"}),
    ("Organization?_has:Patient:organization:gender=male", {"org2"}),
    ("Patient?_has:Observation:patient:subject.name=claire", {"p1"}),  # a chain inside _has
    ("Patient?_has:Observation:patient:code=0000-0", set()),
])
def test_has(dataset, query, expected):
    assert ids(dataset, query) == expected


@pytest.mark.parametrize("query", [
    "Observation?status.name=x",  # not a reference parameter
    "Patient?_has:Observation:code:status=final",  # not a reference parameter
    "Patient?_has:Nope:subject:status=final",
    "Patient?_has:Observation",
    "Observation?subject:Nope=p1",  # unknown modifier
    "Observation?subject=",
])
def test_invalid_references_chains_and_has_are_400(dataset, query):
    error(dataset, query)


@pytest.mark.parametrize("path, expected", [
    ("Patient/p1/Observation", {"o1", "o2"}),
    ("Patient/p2/Observation", {"o3", "o5"}),
    ("Patient/p1/Observation?code=8867-4", {"o2"}),
    ("Patient/p1/Observation?code=2339-0,8867-4&_count=1", {"o1"}),
    ("Patient/p1/Condition", {"c1"}),
    ("Patient/p3/Procedure", {"proc3"}),
    ("Patient/p4/Observation", set()),
])
def test_compartment_search(dataset, path, expected):
    assert ids(dataset, path) == expected


def test_compartment_search_links_keep_the_compartment(dataset):
    body = bundle(dataset, "Patient/p1/Observation?_count=1")
    links = {link["relation"]: link["url"] for link in body["link"]}
    assert links["self"] == f"{BASE}/Patient/p1/Observation?_count=1"
    assert links["next"].startswith(f"{BASE}/Patient/p1/Observation?")
    second = bundle(dataset, links["next"].removeprefix("http://localhost"))
    assert {e["resource"]["id"] for e in second["entry"]} | {body["entry"][0]["resource"]["id"]} == {"o1", "o2"}
    assert body["total"] == 2


@pytest.mark.parametrize("path, status", [
    ("Patient/nope/Observation", 404),
    ("Patient/p1/Organization", 404),  # Organization is not in the Patient compartment
    ("Patient/p1/Observation?date=notadate", 400),
])
def test_compartment_errors(dataset, path, status):
    assert get(dataset, path).status_code == status
