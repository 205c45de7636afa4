"""_include and _revinclude (with :iterate and the * wild card) through the REST API."""
from __future__ import annotations


import pytest

from search_api_data import bundle, error, load, typed_ids


@pytest.mark.parametrize("query, matches, included", [
    ("Observation?_id=o1&_include=Observation:subject", {"Observation/o1"}, {"Patient/p1"}),
    ("Observation?code=2339-0&_include=Observation:subject:Patient", {"Observation/o1", "Observation/o3"},
     {"Patient/p1", "Patient/p2"}),  # o3's reference is absolute, on this server
    ("Observation?code=2339-0&_include=Observation:subject:Group", {"Observation/o1", "Observation/o3"}, set()),
    ("Observation?_id=o1&_include=Observation:encounter&_include=Observation:performer", {"Observation/o1"},
     {"Encounter/e1", "Practitioner/pr1"}),
    ("Observation?_id=o1&_include=*", {"Observation/o1"}, {"Patient/p1", "Encounter/e1", "Practitioner/pr1"}),
    ("Observation?_id=o1&_include=Observation:*", {"Observation/o1"},
     {"Patient/p1", "Encounter/e1", "Practitioner/pr1"}),
    ("Observation?_id=o6&_include=Observation:subject", {"Observation/o6"}, set()),  # another server's
    ("Observation?_id=o4&_include=Observation:performer", {"Observation/o4"}, set()),  # identifier only
    # not iterated: Observation:performer applies to the matches (reports) only
    ("DiagnosticReport?_include=DiagnosticReport:result&_include=Observation:performer", {"DiagnosticReport/dr1"},
     {"Observation/o1", "Observation/o2"}),
    ("DiagnosticReport?_include=DiagnosticReport:result&_include:iterate=Observation:performer",
     {"DiagnosticReport/dr1"}, {"Observation/o1", "Observation/o2", "Practitioner/pr1", "Practitioner/pr2"}),
    ("Observation?_id=o1&_include=Observation:subject&_include:iterate=Patient:general-practitioner"
     "&_include:iterate=Patient:organization&_include:iterate=Organization:partof", {"Observation/o1"},
     {"Patient/p1", "Practitioner/pr1", "Organization/org1"}),
    ("Patient?_id=p2&_include=Patient:organization&_include:iterate=Organization:partof", {"Patient/p2"},
     {"Organization/org2", "Organization/org1"}),
    ("Patient?_id=p1&_revinclude=Observation:subject", {"Patient/p1"}, {"Observation/o1", "Observation/o2"}),
    ("Patient?_id=p2&_revinclude=Observation:subject", {"Patient/p2"}, {"Observation/o3", "Observation/o5"}),
    ("Patient?_id=p1&_revinclude=Observation:subject&_revinclude:iterate=DiagnosticReport:result",
     {"Patient/p1"}, {"Observation/o1", "Observation/o2", "DiagnosticReport/dr1"}),
    ("Patient?_id=p1&_revinclude=Observation:*", {"Patient/p1"}, {"Observation/o1", "Observation/o2"}),
    ("Patient?_id=p1&_revinclude=*", {"Patient/p1"},
     {"Observation/o1", "Observation/o2", "Condition/c1", "DiagnosticReport/dr1", "Procedure/proc1",
      "Encounter/e1", "Patient/p4"}),
    ("Practitioner?_id=pr1&_revinclude=Patient:general-practitioner&_include=Practitioner:nothing",
     None, None),
    ("Patient?gender=female&_revinclude=Patient:link", {"Patient/p1", "Patient/p3"}, {"Patient/p4"}),
    ("Patient?_revinclude=Patient:link", {"Patient/p1", "Patient/p2", "Patient/p3", "Patient/p4"}, set()),
    ("Organization?_id=org1&_revinclude=Patient:organization&_include=Organization:partof"
     "&_revinclude:iterate=Observation:subject",
     {"Organization/org1"}, {"Patient/p1", "Observation/o1", "Observation/o2"}),
])
def test_includes(dataset, query, matches, included):
    if matches is None:  # an unknown include parameter
        error(dataset, query)
        return
    assert typed_ids(dataset, query) == matches
    assert typed_ids(dataset, query, "include") == included


def test_included_resources_do_not_count_in_the_total(dataset):
    body = bundle(dataset, "Observation?_id=o1&_include=Observation:subject&_include=Observation:performer")
    assert body["total"] == 1
    modes = [e["search"]["mode"] for e in body["entry"]]
    assert modes == ["match", "include", "include"]  # matches first


def test_includes_follow_the_page(dataset):
    first = bundle(dataset, "Observation?code=2339-0&_include=Observation:subject&_count=1")
    assert len([e for e in first["entry"] if e["search"]["mode"] == "match"]) == 1
    subject = first["entry"][0]["resource"]["subject"]["reference"].rsplit("/", 1)[1]
    assert [e["resource"]["id"] for e in first["entry"] if e["search"]["mode"] == "include"] == [subject]
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert "_include=Observation%3Asubject" in next_url


@pytest.mark.parametrize("query", [
    "Observation?_include=Observation:code",  # not a reference parameter
    "Observation?_include=Nope:subject",
    "Observation?_include=Observation",
    "Observation?_include=Observation:subject:Nope",
    "Patient?_revinclude=Observation:nope",
    "Observation?_include:nope=Observation:subject",
])
def test_invalid_includes_are_400(dataset, query):
    error(dataset, query)


def test_one_store_query_per_include_parameter_per_page(client):
    from search_api_data import RESOURCES
    load(client)
    store = client.application.extensions["fhir"].store
    calls = []
    original = store.search

    def counting(query, **kwargs):
        calls.append(query)
        return original(query, **kwargs)

    store.search = counting
    try:
        body = bundle(client, "Observation?_include=Observation:subject&_include=Observation:performer"
                              "&_include:iterate=Patient:general-practitioner&_revinclude=DiagnosticReport:result")
    finally:
        del store.search
    assert len(RESOURCES) > 20
    included = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in body["entry"]
                if e["search"]["mode"] == "include"}
    assert included == {"Patient/p1", "Patient/p2", "Patient/p3", "Practitioner/pr1", "Practitioner/pr2",
                        "DiagnosticReport/dr1"}
    # the page, then each include parameter once, then the iterated one once more per new level
    assert len(calls) <= 1 + 4 + 2
