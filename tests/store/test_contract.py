"""The storage contract: every backend must behave exactly like this (docs/adr/0002-search-index.md)."""
from __future__ import annotations

import threading

import pytest

from fhir_server.search.entries import (DateEntry, IndexEntries, PackedIndex, ReferenceEntry, StringEntry,
                                        TokenEntry)
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



def test_history_keeps_the_versions_current_during_a_period(store):
    # a: v1 Jan 1, v2 Jan 3, v3 (deleted) Jan 5; b: v1 Jan 2 only
    put(store, version("a", 1, when="2026-01-01T00:00:00.000000Z"))
    put(store, version("b", 1, when="2026-01-02T00:00:00.000000Z"))
    put(store, version("a", 2, when="2026-01-03T00:00:00.000000Z"), expected=1)
    put(store, version("a", 3, deleted=True, when="2026-01-05T00:00:00.000000Z"), expected=2)

    def current(start: str, end: str, **kw) -> list[tuple[str, int]]:
        page = store.history("Patient", before=end, current_from=start, count=10, **kw)
        return sorted((v.id, v.version) for v in page.entries)

    assert current("2026-01-02T12:00:00Z", "2026-01-02T12:00:01Z") == [("a", 1), ("b", 1)]
    assert current("2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z") == [("a", 2), ("b", 1)]  # a.1 ended at its start
    assert current("2026-01-02T00:00:00Z", "2026-01-06T00:00:00Z") == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]
    assert current("2025-12-01T00:00:00Z", "2026-01-01T00:00:00Z") == []  # before anything
    assert current("2026-02-01T00:00:00Z", "2026-02-02T00:00:00Z") == [("a", 3), ("b", 1)]  # a deleted since
    one = store.history("Patient", "a", before="2026-01-04T00:00:00Z", current_from="2026-01-03T12:00:00Z", count=10)
    assert [v.version for v in one.entries] == [2]

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


@pytest.mark.parametrize("pack", [lambda index: index, PackedIndex.of], ids=["entries", "packed"])
def test_token_string_date_and_reference_clauses(store, pack):
    """Index entries are found the same whether they are objects or packed as tuples (a bulk import's worker
    processes send them packed)."""
    put(store, version("o1", 1, rtype="Observation"), pack(IndexEntries(
        tokens=[TokenEntry("code", "http://loinc.org", "1234-5")],
        dates=[DateEntry("date", 1_000, 2_000)],
        references=[ReferenceEntry("subject", "Patient", "p1")])))
    put(store, version("o2", 1, rtype="Observation"), pack(IndexEntries(
        tokens=[TokenEntry("code", "http://other", "1234-5")],
        dates=[DateEntry("date", 5_000, 6_000)],
        references=[ReferenceEntry("subject", "Patient", "p2")],
        strings=[StringEntry("note", "helene", "Hélène")])))
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


# -- several writes in one transaction (bulk loads: put_many, or puts buffered until the transaction ends) ----
GENDER = {code: Clause("gender", "token", None, (TokenValue(None, code, False),)) for code in ("x", "f", "m", "u")}


def _keys(rows):
    return sorted(i for _, i in rows)


def test_put_many_writes_every_item_with_its_index(store):
    with store.transaction() as tx:
        tx.put_many([(version(f"p{i}", 1), entries("f" if i % 2 else "m"), None) for i in range(6)])
    assert [store.read("Patient", f"p{i}").version for i in range(6)] == [1] * 6
    assert _search(store, GENDER["f"]) == ["p1", "p3", "p5"]
    assert store.count(Query(("Patient",), [GENDER["m"]])) == 3


def test_put_many_mixes_creates_updates_and_deletions_in_order(store):
    put(store, version("a", 1), entries("f"))
    put(store, version("b", 1), entries("f"))
    with store.transaction() as tx:
        tx.put_many([(version("c", 1), entries("m"), None), (version("a", 2), entries("m"), 1),
                     (version("d", 1), entries("f"), None), (version("b", 2, deleted=True), None, 1),
                     (version("c", 2), entries("u"), 1)])
    assert [store.read("Patient", r).version for r in "abcd"] == [2, 2, 2, 1]
    assert store.read("Patient", "b").deleted
    assert _search(store, GENDER["f"]) == ["d"] and _search(store, GENDER["m"]) == ["a"]
    assert _search(store, GENDER["u"]) == ["c"]
    assert [v.version for v in store.history("Patient", "c", count=5).entries] == [2, 1]


def test_a_refused_item_of_put_many_rolls_the_whole_transaction_back(store):
    put(store, version("taken", 1), entries("f"))
    with pytest.raises(AlreadyExists):
        with store.transaction() as tx:
            tx.put(version("before", 1), entries("m"), expected_version=None)
            tx.put_many([(version("n1", 1), entries("m"), None), (version("n2", 1), entries("m"), None),
                         (version("taken", 1), entries("m"), None), (version("n3", 1), entries("m"), None)])
    for rid in ("before", "n1", "n2", "n3"):
        assert store.read("Patient", rid) is None
    assert store.read("Patient", "taken").version == 1
    assert _search(store, GENDER["m"]) == [] and _search(store, GENDER["f"]) == ["taken"]
    assert store.history("Patient", count=10).total == 1


def test_put_many_detects_version_conflicts(store):
    put(store, version("a", 1))
    put(store, version("a", 2), expected=1)
    with pytest.raises(VersionConflict):
        with store.transaction() as tx:
            tx.put_many([(version("new", 1), entries(), None), (version("a", 2), entries(), 1)])
    assert store.read("Patient", "new") is None and store.read("Patient", "a").version == 2
    with pytest.raises(AlreadyExists):  # two creates of one id in one call
        with store.transaction() as tx:
            tx.put_many([(version("twice", 1), entries(), None), (version("twice", 1), entries(), None)])
    assert store.read("Patient", "twice") is None


def test_a_transaction_sees_its_own_writes_and_checks_against_them(store):
    put(store, version("old", 1), entries("f"))
    with store.transaction() as tx:
        tx.put(version("a", 1), entries("f"), expected_version=None)
        assert tx.current("Patient", "a") == version("a", 1)
        with pytest.raises(AlreadyExists):
            tx.put(version("a", 1), entries("f"), expected_version=None)
        tx.put(version("a", 2), entries("m"), expected_version=1)
        with pytest.raises(VersionConflict):
            tx.put(version("a", 2), entries("m"), expected_version=1)
        assert tx.current("Patient", "a").version == 2
        tx.put(version("old", 2, deleted=True), None, expected_version=1)
        assert tx.current("Patient", "old").deleted
        tx.put(version("old", 3), entries("u"), expected_version=2)
        assert tx.current("Patient", "missing") is None
    assert store.read("Patient", "a").version == 2 and store.read("Patient", "old").version == 3
    assert [v.version for v in store.history("Patient", "old", count=5).entries] == [3, 2, 1]


def test_index_entries_are_searchable_inside_the_transaction_and_after(store):
    put(store, version("kept", 1), entries("f"))
    female = Query(("Patient",), [GENDER["f"]])
    male = Query(("Patient",), [GENDER["m"]])
    with store.transaction() as tx:
        tx.put_many([(version(f"n{i}", 1), entries("f"), None) for i in range(3)])
        assert _keys(tx.search(female)) == ["kept", "n0", "n1", "n2"]
        tx.put(version("n1", 2), entries("m"), expected_version=1)  # its rows are replaced, in the transaction
        tx.put(version("kept", 2), entries("m"), expected_version=1)
        tx.put(version("n3", 1), entries("f"), expected_version=None)
        assert _keys(tx.search(female)) == ["n0", "n2", "n3"]
        assert _keys(tx.search(male)) == ["kept", "n1"]
        tx.put(version("n3", 2), entries("m"), expected_version=1)  # created and changed before any read
        tx.put(version("n0", 2, deleted=True), None, expected_version=1)
    assert _search(store, GENDER["f"]) == ["n2"]
    assert _search(store, GENDER["m"]) == ["kept", "n1", "n3"]
    assert store.count(female) == 1 and store.read("Patient", "n0").deleted


def test_a_failed_transaction_leaves_none_of_its_writes_nor_their_index(store):
    put(store, version("keep", 1), entries("f"))
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.put_many([(version(f"n{i}", 1), entries("m"), None) for i in range(5)])
            tx.put(version("keep", 2), entries("m"), expected_version=1)
            assert len(tx.search(Query(("Patient",), [GENDER["m"]]))) == 6
            tx.put(version("later", 1), entries("m"), expected_version=None)
            raise RuntimeError("entry 57 failed")
    assert _search(store, GENDER["m"]) == [] and _search(store, GENDER["f"]) == ["keep"]
    assert store.read("Patient", "later") is None and store.read("Patient", "keep").version == 1
    assert store.history("Patient", count=10).total == 1
    put(store, version("after", 1), entries("m"))  # the store goes on as before
    assert _search(store, GENDER["m"]) == ["after"]


def test_history_keeps_the_write_order_of_a_bulk_transaction(store):
    with store.transaction() as tx:
        tx.put_many([(version(f"h{i}", 1), entries(), None) for i in range(4)])
        tx.put(version("h1", 2), entries(), expected_version=1)
    assert [(v.id, v.version) for v in store.history("Patient", count=10).entries] == [
        ("h1", 2), ("h3", 1), ("h2", 1), ("h1", 1), ("h0", 1)]
    with store.transaction() as tx:  # and the order of creation is the stable order of searches
        tx.put_many([(version(f"h{i}", 1), entries(), None) for i in range(4, 8)])
    page = store.search(Query(("Patient",), [GENDER["x"]]), count=5)
    more = store.search(Query(("Patient",), [GENDER["x"]]), count=5, cursor=page.next_cursor)
    assert [r.id for r in page.resources + more.resources] == [f"h{i}" for i in range(8)]


def test_group_committed_actions_each_keep_or_lose_their_bulk_writes(store):
    def bulk(prefix: str, fail: bool = False):
        def action(tx):
            tx.put_many([(version(f"{prefix}{i}", 1), entries(prefix), None) for i in range(3)])
            assert len(tx.search(Query(("Patient",), [Clause("gender", "token", None,
                                                              (TokenValue(None, prefix, False),))]))) == 3
            tx.put(version(f"{prefix}-last", 1), entries(prefix), expected_version=None)
            if fail:
                raise ValueError(prefix)
            return prefix
        return action
    results: list = []
    barrier = threading.Barrier(3)

    def run(prefix: str, fail: bool) -> None:
        barrier.wait()
        try:
            results.append(store.atomically(bulk(prefix, fail)))
        except ValueError as exc:
            results.append(f"failed {exc}")
    threads = [threading.Thread(target=run, args=args) for args in (("a", False), ("b", True), ("c", False))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == ["a", "c", "failed b"]
    for prefix, count in (("a", 4), ("b", 0), ("c", 4)):
        query = Query(("Patient",), [Clause("gender", "token", None, (TokenValue(None, prefix, False),))])
        assert store.count(query) == count
        assert (store.read("Patient", f"{prefix}-last") is not None) == bool(count)


def test_current_many_reads_stored_and_own_writes_and_the_checks_follow_it(store):
    put(store, version("a", 1), entries("f"))
    put(store, version("b", 1))
    put(store, version("b", 2, deleted=True), expected=1)
    with store.transaction() as tx:
        tx.put(version("c", 1), entries("f"), expected_version=None)
        found = tx.current_many([("Patient", "a"), ("Patient", "b"), ("Patient", "c"), ("Patient", "zz"),
                                 ("Observation", "a")])
        assert found == {("Patient", "a"): version("a", 1), ("Patient", "b"): version("b", 2, deleted=True),
                         ("Patient", "c"): version("c", 1), ("Patient", "zz"): None, ("Observation", "a"): None}
        with pytest.raises(AlreadyExists):
            tx.put(version("a", 1), entries(), expected_version=None)
        with pytest.raises(VersionConflict):
            tx.put(version("zz", 2), entries(), expected_version=1)
        tx.put(version("zz", 1), entries("f"), expected_version=None)
        tx.put(version("a", 2), entries("m"), expected_version=1)
        tx.put(version("b", 3), entries("f"), expected_version=2)
        assert tx.current("Patient", "a").version == 2 and tx.current("Patient", "zz").version == 1
        assert tx.current_many([("Patient", "b")]) == {("Patient", "b"): version("b", 3)}
        assert _keys(tx.search(Query(("Patient",), [GENDER["f"]]))) == ["b", "c", "zz"]
    assert _search(store, GENDER["f"]) == ["b", "c", "zz"] and _search(store, GENDER["m"]) == ["a"]
    assert [store.read("Patient", r).version for r in ("a", "b", "c", "zz")] == [2, 3, 1, 1]
