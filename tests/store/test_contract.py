"""The storage contract: every backend must behave exactly like this (docs/adr/0002-search-index.md)."""
from __future__ import annotations

import threading

import pytest

from fhir_server.search.entries import (DateEntry, IndexEntries, ReferenceEntry, StringEntry, TokenEntry)
from fhir_server.search.query import Clause, Query, RangeValue, ReferenceValue, StringValue, TokenValue
from fhir_server.store.base import AlreadyExists, StoredResource, VersionConflict

T0 = "2026-01-01T00:00:00.000000Z"


def version(rid: str, n: int, *, deleted: bool = False, rtype: str = "Patient", when: str = T0) -> StoredResource:
    body = None if deleted else f'{{"resourceType":"{rtype}","id":"{rid}","meta":{{"versionId":"{n}"}}}}'.encode()
    return StoredResource(rtype, rid, n, when, deleted, body, "DELETE" if deleted else ("POST" if n == 1 else "PUT"))


def entries(code: str = "x", family: str = "smith") -> IndexEntries:
    return IndexEntries(tokens=[TokenEntry("gender", None, code)],
                        strings=[StringEntry("family", family, family.title())])


def put(store, resource, index=None, expected=None):
    with store.transaction() as tx:
        tx.put(resource, index if index is not None or resource.deleted else entries(), expected_version=expected)


def test_put_then_read_returns_the_exact_bytes(store):
    first = version("a", 1)
    put(store, first)
    assert store.read("Patient", "a") == first
    assert store.read("Patient", "missing") is None


def test_a_create_cannot_overwrite_an_existing_id(store):
    put(store, version("a", 1))
    with pytest.raises(AlreadyExists):
        put(store, version("a", 1))


def test_update_is_compare_and_set_on_the_version(store):
    put(store, version("a", 1))
    put(store, version("a", 2), expected=1)
    with pytest.raises(VersionConflict):
        put(store, version("a", 3), expected=1)
    assert store.read("Patient", "a").version == 2


def test_every_version_stays_readable_and_history_is_newest_first(store):
    put(store, version("a", 1, when="2026-01-01T00:00:00.000000Z"))
    put(store, version("a", 2, when="2026-01-02T00:00:00.000000Z"), expected=1)
    put(store, version("a", 3, deleted=True, when="2026-01-03T00:00:00.000000Z"), expected=2)
    assert store.vread("Patient", "a", 1).version == 1
    assert store.vread("Patient", "a", 9) is None
    assert store.read("Patient", "a").deleted
    page = store.history("Patient", "a", count=10)
    assert [v.version for v in page.entries] == [3, 2, 1]
    assert page.total == 3 and page.next_cursor is None
    since = store.history("Patient", "a", since="2026-01-02T00:00:00.000000Z", count=10)
    assert [v.version for v in since.entries] == [3, 2]


def test_history_pages_with_an_opaque_cursor(store):
    for i in range(5):
        put(store, version(f"p{i}", 1))
    first = store.history("Patient", count=2)
    second = store.history("Patient", count=2, cursor=first.next_cursor)
    third = store.history("Patient", count=2, cursor=second.next_cursor)
    ids = [v.id for page in (first, second, third) for v in page.entries]
    assert sorted(ids) == [f"p{i}" for i in range(5)] and third.next_cursor is None


def test_a_failed_transaction_leaves_no_trace(store):
    put(store, version("keep", 1))
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.put(version("new", 1), entries(), expected_version=None)
            tx.put(version("keep", 2), entries("changed"), expected_version=1)
            raise RuntimeError("entry 57 failed")
    assert store.read("Patient", "new") is None
    assert store.read("Patient", "keep").version == 1
    assert store.count(Query(("Patient",), [Clause("gender", "token", None, (TokenValue(None, "changed", False),))])) == 0


def _search(store, *clauses, types=("Patient",), count=50):
    return sorted(r.id for r in store.search(Query(types, list(clauses)), count=count).resources)


def test_search_finds_current_versions_only(store):
    put(store, version("a", 1), entries("female"))
    put(store, version("b", 1), entries("male"))
    put(store, version("b", 2), entries("female"), expected=1)
    put(store, version("c", 1), entries("female"))
    put(store, version("c", 2, deleted=True), expected=1)
    female = Clause("gender", "token", None, (TokenValue(None, "female", False),))
    assert _search(store, female) == ["a", "b"]
    assert store.count(Query(("Patient",), [female])) == 2


def test_token_string_date_and_reference_clauses(store):
    put(store, version("o1", 1, rtype="Observation"), IndexEntries(
        tokens=[TokenEntry("code", "http://loinc.org", "1234-5")],
        dates=[DateEntry("date", 1_000, 2_000)],
        references=[ReferenceEntry("subject", "Patient", "p1")]))
    put(store, version("o2", 1, rtype="Observation"), IndexEntries(
        tokens=[TokenEntry("code", "http://other", "1234-5")],
        dates=[DateEntry("date", 5_000, 6_000)],
        references=[ReferenceEntry("subject", "Patient", "p2")],
        strings=[StringEntry("note", "helene", "Hélène")]))
    obs = ("Observation",)
    loinc = Clause("code", "token", None, (TokenValue("http://loinc.org", "1234-5", True),))
    assert _search(store, loinc, types=obs) == ["o1"]
    any_system = Clause("code", "token", None, (TokenValue(None, "1234-5", False),))
    assert _search(store, any_system, types=obs) == ["o1", "o2"]
    after = Clause("date", "date", None, (RangeValue("gt", 3_000, 3_999),))
    assert _search(store, after, types=obs) == ["o2"]
    subject = Clause("subject", "reference", None, (ReferenceValue("Patient", "p1"),))
    assert _search(store, subject, types=obs) == ["o1"]
    starts = Clause("note", "string", None, (StringValue("hel"),))
    assert _search(store, starts, types=obs) == ["o2"]
    missing = Clause("note", "string", "missing", (), missing=True)
    assert _search(store, missing, types=obs) == ["o1"]


def test_search_pages_return_every_match_once_while_creating(store):
    for i in range(7):
        put(store, version(f"p{i}", 1), entries("female"))
    female = Query(("Patient",), [Clause("gender", "token", None, (TokenValue(None, "female", False),))])
    seen, cursor = [], None
    while True:
        page = store.search(female, count=3, cursor=cursor)
        seen += [r.id for r in page.resources]
        put(store, version(f"new{len(seen)}", 1), entries("female"))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    originals = [s for s in seen if s.startswith("p")]
    assert sorted(originals) == [f"p{i}" for i in range(7)]
    assert len(seen) == len(set(seen))


def test_read_many_skips_deleted_and_unknown(store):
    put(store, version("a", 1))
    put(store, version("b", 1))
    put(store, version("b", 2, deleted=True), expected=1)
    found = store.read_many([("Patient", "a"), ("Patient", "b"), ("Patient", "zzz")])
    assert [r.id for r in found] == ["a"]


def test_concurrent_compare_and_set_never_loses_a_write(store):
    put(store, version("hot", 1))
    wins = []

    def worker(n: int) -> None:
        for _ in range(200):
            current = store.read("Patient", "hot")
            try:
                put(store, version("hot", current.version + 1), expected=current.version)
                wins.append(n)
                return
            except (VersionConflict, AlreadyExists):
                continue

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 8
    assert store.read("Patient", "hot").version == 9
    assert [v.version for v in store.history("Patient", "hot", count=20).entries] == list(range(9, 0, -1))
