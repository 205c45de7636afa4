"""_sort, _count and paging through the REST API: links, walking every page exactly once while
resources are created and updated, and expired or forged page links."""
from __future__ import annotations

import base64
import json

import pytest

from search_api_data import (BASE, FHIR_JSON, bundle, get, link, load, local,
                             query_of)


def order(client, url: str) -> list[str]:
    return [e["resource"]["id"] for e in bundle(client, url).get("entry", []) if e["search"]["mode"] == "match"]


@pytest.mark.parametrize("query, expected", [
    ("Patient?_sort=birthdate", ["p2", "p1", "p3", "p4"]),  # without a value: last
    ("Patient?_sort=-birthdate", ["p3", "p1", "p2", "p4"]),
    ("Patient?_sort=family", ["p4", "p1", "p3", "p2"]),  # Lemartin, Martin, Martinez, Müller
    ("Patient?_sort=-family", ["p2", "p3", "p1", "p4"]),
    ("Patient?_sort=gender,-birthdate", ["p3", "p1", "p2", "p4"]),
    ("Patient?_sort=_id", ["p1", "p2", "p3", "p4"]),
    ("Patient?_sort=-_id", ["p4", "p3", "p2", "p1"]),
    ("Patient?_sort=_lastUpdated", ["p1", "p2", "p3", "p4"]),  # loaded in that order
    ("Patient?_sort=-_lastUpdated", ["p4", "p3", "p2", "p1"]),
    ("Observation?_sort=date", ["o3", "o2", "o1", "o7", "o5", "o4", "o6"]),  # ties by creation
    ("Observation?_sort=-date", ["o4", "o2", "o5", "o1", "o7", "o3", "o6"]),
    ("Observation?_sort=status,-date", ["o4", "o5", "o1", "o7", "o3", "o6", "o2"]),
    ("Observation?_sort=value-quantity", ["o3", "o4", "o2", "o5", "o1", "o6", "o7"]),
    ("Observation?_sort=code", ["o1", "o3", "o4", "o7", "o2", "o5", "o6"]),
    ("Observation?status=final&_sort=-date", ["o1", "o7", "o3", "o6"]),
])
def test_sort(dataset, query, expected):
    assert order(dataset, query) == expected


def test_sorted_pages_follow_the_order_with_next_and_previous_links(dataset):
    expected = ["o3", "o2", "o1", "o7", "o5", "o4", "o6"]
    body = bundle(dataset, "Observation?_sort=date&_count=3")
    assert link(body, "previous") is None
    pages = [body]
    while link(body, "next"):
        body = bundle(dataset, local(link(body, "next")))
        pages.append(body)
    assert [[e["resource"]["id"] for e in p["entry"]] for p in pages] == [expected[:3], expected[3:6], expected[6:]]
    assert pages[0]["total"] == 7
    for i in (1, 2):  # previous leads back to exactly the page before
        back = bundle(dataset, local(link(pages[i], "previous")))
        assert [e["resource"]["id"] for e in back["entry"]] == [e["resource"]["id"] for e in pages[i - 1]["entry"]]
        assert dict(query_of(link(pages[i], "previous")))["_sort"] == "date"
        assert link(pages[i], "first") is not None


def test_unsorted_pages_cover_every_match_once(dataset):
    body = bundle(dataset, "Observation?_count=2")
    assert body["total"] == 7 and link(body, "previous") is None
    seen = [e["resource"]["id"] for e in body["entry"]]
    while link(body, "next"):
        url = link(body, "next")
        assert dict(query_of(url))["_count"] == "2"
        body = bundle(dataset, local(url))
        seen += [e["resource"]["id"] for e in body["entry"]]
    assert sorted(seen) == ["o1", "o2", "o3", "o4", "o5", "o6", "o7"]


def test_default_and_maximum_count(dataset):
    body = bundle(dataset, "?_type=Patient,Observation,Practitioner,Organization,Encounter,Condition")
    assert body["total"] == 19 and len(body["entry"]) == 19 and link(body, "next") is None
    everything = bundle(dataset, "")  # system search over every type: 23 resources, 20 per page
    assert everything["total"] == 23 and len(everything["entry"]) == 20 and link(everything, "next")
    rest = bundle(dataset, local(link(everything, "next")))
    assert len(rest["entry"]) == 3 and link(rest, "next") is None
    capped = bundle(dataset, "Patient?_count=5000")
    assert dict(query_of(link(capped, "self")))["_count"] == "1000"
    assert len(capped["entry"]) == 4


def test_count_zero_gives_the_total_only(dataset):
    body = bundle(dataset, "Observation?_count=0")
    assert body["total"] == 7 and "entry" not in body


def _post(client, resource):
    response = client.post(f"/fhir/{resource['resourceType']}", data=json.dumps(resource),
                           headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 201
    return response.get_json()


def _put(client, resource):
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", data=json.dumps(resource),
                          headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 200, response.get_json()


def _observation(value: int, date: str) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "paging"},
            "effectiveDateTime": date, "valueInteger": value}


@pytest.mark.parametrize("sort", [None, "date", "-date"])
def test_walking_pages_while_resources_are_created_and_updated_returns_each_match_once(client, sort):
    load(client, [])
    created = [_post(client, _observation(i, f"2020-01-{i + 1:02d}")) for i in range(11)]
    original = {r["id"] for r in created}
    url = "Observation?code:text=paging&_count=3" + (f"&_sort={sort}" if sort else "")
    body = bundle(client, url)
    assert body["total"] == 11
    seen = [e["resource"]["id"] for e in body["entry"]]
    step = 0
    while link(body, "next"):
        step += 1
        # between pages: new matches, and updates that move resources in the sort order
        _post(client, _observation(100 + step, "2019-06-01"))
        _post(client, _observation(200 + step, "2030-06-01"))
        victim = created[(step * 5) % 11]
        _put(client, dict(victim, effectiveDateTime=f"20{10 + step}-05-05", valueInteger=-step))
        body = bundle(client, local(link(body, "next")))
        seen += [e["resource"]["id"] for e in body["entry"]]
    assert len(seen) == len(set(seen)), "a resource was returned twice"
    assert original <= set(seen), "a match was skipped"
    if sort:
        assert set(seen) == original  # a snapshot: exactly the matches of the first page's time


@pytest.mark.parametrize("page", [
    "garbage!",
    "eyJzIjoiZGVhZGJlZWYiLCJvIjozfQ",  # {"s":"deadbeef","o":3}: no such snapshot
    base64.urlsafe_b64encode(b'{"k":"abc"}').decode().rstrip("="),
    base64.urlsafe_b64encode(b'{"k":-5,"x":[1]}').decode().rstrip("="),
    base64.urlsafe_b64encode(b'[1,2]').decode().rstrip("="),
    base64.urlsafe_b64encode(b'{"s":"deadbeef","o":"x"}').decode().rstrip("="),
])
def test_expired_or_forged_page_links_are_410_or_400(dataset, page):
    response = get(dataset, f"Observation?_count=2&_page={page}")
    assert response.status_code in (400, 410), response.get_json()
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_sorted_page_link_of_another_search_is_refused(dataset):
    body = bundle(dataset, "Observation?_sort=date&_count=2")
    page = dict(query_of(link(body, "next")))["_page"]
    response = get(dataset, f"Observation?_count=2&_page={page}")  # an unsorted search
    assert response.status_code in (400, 410)


def test_self_link_of_a_later_page(dataset):
    body = bundle(dataset, "Observation?_count=2&_sort=date")
    second = bundle(dataset, local(link(body, "next")))
    self_query = dict(query_of(link(second, "self")))
    assert self_query["_sort"] == "date" and self_query["_count"] == "2" and "_page" in self_query
    assert link(second, "self").startswith(BASE + "/Observation?")
