"""What is specific to the MongoDB store: indexes, the undo-log fallback, search snapshots, claims,
and query-by-query parity of its compiler with the SQLite reference (run on mongomock; with
MONGODB_URI set they run against that server too)."""
from __future__ import annotations

import os
import uuid

import pytest

from fhir_server.search.entries import (CompositeEntry, DateEntry, IndexEntries, NumberEntry, QuantityEntry,
                                        ReferenceEntry, StringEntry, TokenEntry, UriEntry)
from fhir_server.search.query import (AnyOf, Chain, Clause, CompositeValue, HasClause, Query, RangeValue,
                                      ReferenceValue, SortKey, StringValue, TokenValue, UriValue)
from fhir_server.store.base import AlreadyExists, PageExpired, StoredResource, VersionConflict
from fhir_server.store.mongo import MongoStore, index_arrays
from fhir_server.store.mongo_search import MongoCompiler, regex_escape
from fhir_server.store.sqlite import SQLiteStore
from fhir_server.store.sqlite_search import encode_cursor

T0 = "2026-01-01T00:00:00.000000Z"


def open_mongo(**options) -> MongoStore:
    uri = os.environ.get("MONGODB_URI")
    if uri:
        from pymongo import MongoClient
        return MongoStore(MongoClient(uri), f"test_{uuid.uuid4().hex[:12]}", drop_on_close=True, **options)
    import mongomock
    return MongoStore(mongomock.MongoClient(), "fhir", **options)


@pytest.fixture
def mongo():
    store = open_mongo()
    yield store
    store.close()


def res(rid: str, n: int = 1, *, rtype: str = "Patient", when: str = T0, deleted: bool = False) -> StoredResource:
    body = None if deleted else f'{{"resourceType":"{rtype}","id":"{rid}","meta":{{"versionId":"{n}"}}}}'.encode()
    return StoredResource(rtype, rid, n, when, deleted, body, "DELETE" if deleted else ("POST" if n == 1 else "PUT"))


def put(store, resource, index=None, expected=None):
    with store.transaction() as tx:
        tx.put(resource, index if index is not None or resource.deleted else IndexEntries(),
               expected_version=expected)


# -- start-up ------------------------------------------------------------------------------------
def test_indexes_exist_after_start_up_and_creating_them_again_is_harmless(mongo):
    MongoStore(mongo.client, mongo.database)  # a second process starting on the same database
    keys = {tuple(info["key"]) for info in mongo.resources.index_information().values()}
    for wanted in ([("type", 1), ("id", 1)], [("type", 1), ("seq", 1)],
                   [("tok.p", 1), ("tok.c", 1), ("tok.s", 1)], [("str.p", 1), ("str.n", 1)],
                   [("dt.p", 1), ("dt.lo", 1), ("dt.hi", 1)], [("ref.p", 1), ("ref.ti", 1), ("ref.tt", 1)],
                   [("ref.tt", 1), ("ref.ti", 1)], [("uri.p", 1), ("uri.u", 1)]):
        assert tuple(wanted) in keys
    unique = [info for info in mongo.resources.index_information().values()
              if list(info["key"]) == [("type", 1), ("id", 1)]]
    assert unique[0].get("unique")
    versions = mongo.versions.index_information().values()
    assert any(list(i["key"]) == [("type", 1), ("id", 1), ("version", 1)] and i.get("unique") for i in versions)
    assert any(i.get("expireAfterSeconds") == 0 for i in mongo.snapshots.index_information().values())
    assert any(i.get("expireAfterSeconds") == 0 for i in mongo.locks.index_information().values())


def test_from_url_mongomock_and_close():
    store = MongoStore.from_url("mongomock://localhost/other")
    assert store.database == "other" and not store.supports_transactions()
    put(store, res("a"))
    assert store.read("Patient", "a").version == 1
    store.close()


# -- writes --------------------------------------------------------------------------------------
def test_documents_carry_the_index_and_deletion_markers_empty_it(mongo):
    put(mongo, res("a"), IndexEntries(tokens=[TokenEntry("gender", None, "female")]))
    doc = mongo.resources.find_one({"_id": "Patient/a"})
    assert doc["tok"] == [{"p": "gender", "s": None, "c": "female", "t": None}] and doc["version"] == 1
    seq = doc["seq"]
    put(mongo, res("a", 2, deleted=True), expected=1)
    doc = mongo.resources.find_one({"_id": "Patient/a"})
    assert doc["deleted"] and doc["body"] is None and doc["tok"] == [] and doc["seq"] == seq
    assert mongo.versions.count_documents({"type": "Patient", "id": "a"}) == 2


def test_a_raising_transaction_is_undone_by_the_undo_log(mongo):
    assert not mongo.supports_transactions() or os.environ.get("MONGODB_URI")
    put(mongo, res("keep"), IndexEntries(tokens=[TokenEntry("gender", None, "female")]))
    put(mongo, res("gone"), IndexEntries(tokens=[TokenEntry("gender", None, "male")]))
    before = {d["_id"]: d for d in mongo.resources.find()}
    versions_before = mongo.versions.count_documents({})
    with pytest.raises(RuntimeError):
        with mongo.transaction() as tx:
            tx.put(res("new"), IndexEntries(tokens=[TokenEntry("gender", None, "other")]), expected_version=None)
            tx.put(res("keep", 2), IndexEntries(tokens=[TokenEntry("gender", None, "changed")]), expected_version=1)
            tx.put(res("keep", 3), IndexEntries(tokens=[TokenEntry("gender", None, "again")]), expected_version=2)
            tx.put(res("gone", 2, deleted=True), None, expected_version=1)
            raise RuntimeError("entry 57 failed")
    assert {d["_id"]: d for d in mongo.resources.find()} == before
    assert mongo.versions.count_documents({}) == versions_before
    assert mongo.read("Patient", "new") is None and mongo.read("Patient", "keep").version == 1


def test_a_conflict_inside_a_transaction_undoes_the_earlier_writes(mongo):
    put(mongo, res("a"))
    with pytest.raises(VersionConflict):
        with mongo.transaction() as tx:
            tx.put(res("b"), IndexEntries(), expected_version=None)
            tx.put(res("a", 2), IndexEntries(), expected_version=7)
    assert mongo.read("Patient", "b") is None
    with pytest.raises(AlreadyExists):
        put(mongo, res("a"))


def test_claim_holds_a_key_until_the_transaction_ends(mongo):
    with mongo.transaction() as first:
        first.claim("Patient?identifier=x")
        with pytest.raises(AlreadyExists):
            with mongo.transaction() as second:
                second.claim("Patient?identifier=x")
    with mongo.transaction() as third:  # released on exit
        third.claim("Patient?identifier=x")
    assert mongo.locks.count_documents({}) == 0


def test_a_stale_claim_is_taken_over(mongo):
    import datetime as dt
    mongo.locks.insert_one({"_id": "k", "owner": "dead", "expires": dt.datetime(2000, 1, 1)})
    with mongo.transaction() as tx:
        tx.claim("k")


def test_claim_fails_when_the_searched_resource_appeared_meanwhile(mongo):
    query = Query(("Patient",), [Clause("identifier", "token", None, (TokenValue("s", "1", True),))])
    with pytest.raises(AlreadyExists):
        with mongo.transaction() as tx:
            assert tx.search(query) == []
            put(mongo, res("other"), IndexEntries(tokens=[TokenEntry("identifier", "s", "1")]))  # concurrent create
            tx.claim("Patient?identifier=s|1")


# -- history ------------------------------------------------------------------------------------
def test_system_history_is_newest_first_across_types_with_a_cursor(mongo):
    put(mongo, res("a", when="2026-01-01T00:00:00.000000Z"))
    put(mongo, res("o", rtype="Observation", when="2026-01-03T00:00:00.000000Z"))
    put(mongo, res("a", 2, when="2026-01-02T00:00:00.000000Z"), expected=1)
    first = mongo.history(count=2)
    assert [(r.type, r.version) for r in first.entries] == [("Observation", 1), ("Patient", 2)]
    assert first.total == 3
    second = mongo.history(count=2, cursor=first.next_cursor)
    assert [(r.type, r.version) for r in second.entries] == [("Patient", 1)] and second.next_cursor is None
    assert second.total is None
    with pytest.raises(PageExpired):
        mongo.history(count=2, cursor="not-a-cursor")
    with pytest.raises(PageExpired):
        mongo.history(count=2, cursor=encode_cursor({"x": 1}))


# -- snapshots ----------------------------------------------------------------------------------
def test_a_large_snapshot_is_chunked_and_pages_across_chunk_boundaries():
    store = open_mongo(snapshot_chunk=1000)
    try:
        ids = [f"Observation/{i:06d}" for i in range(30_000)]
        sid = store.save_snapshot(ids)
        docs = list(store.snapshots.find({"sid": sid}))
        assert len(docs) == 30 and max(len(d["ids"]) for d in docs) == 1000
        page, total = store.snapshot_slice(sid, 995, 10, 1000)
        assert page == ids[995:1005] and total == 30_000
        page, _ = store.snapshot_slice(sid, 29_995, 50, 1000)
        assert page == ids[29_995:]
        page, _ = store.snapshot_slice(sid, 30_000, 50, 1000)
        assert page == []
        page, _ = store.snapshot_slice(sid, 1500, 2600, 1000)  # spans four chunks
        assert page == ids[1500:4100]
    finally:
        store.close()


def _sorted_store():
    store = open_mongo(snapshot_chunk=7)
    for i in range(40):
        put(store, res(f"p{i:02d}"), IndexEntries(strings=[StringEntry("family", f"n{(i * 7) % 40:02d}", "x")]))
    return store


def test_sorted_search_pages_over_the_snapshot():
    store = _sorted_store()
    try:
        query = Query(("Patient",), [], sort=[SortKey("family", "string", False)])
        names, cursor = [], None
        while True:
            page = store.search(query, count=6, cursor=cursor)
            names += [store.resources.find_one({"_id": f"Patient/{r.id}"})["str"][0]["n"] for r in page.resources]
            # updates while paging change nothing in the order already computed
            for r in page.resources:
                put(store, res(r.id, 2), IndexEntries(strings=[StringEntry("family", "aaa", "x")]), expected=1)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert len(names) == 40 and len(set(names)) <= 40
        assert store.snapshots.count_documents({}) == 6  # 40 ids in chunks of 7
    finally:
        store.close()


def test_an_expired_or_unknown_snapshot_raises_page_expired():
    store = _sorted_store()
    try:
        query = Query(("Patient",), [], sort=[SortKey("family", "string", True)])
        page = store.search(query, count=5)
        store.search(query, count=5, cursor=page.next_cursor)  # alive
        import datetime as dt
        store.snapshots.update_many({}, {"$set": {"expires": dt.datetime(2000, 1, 1)}})
        with pytest.raises(PageExpired):
            store.search(query, count=5, cursor=page.next_cursor)
        for bad in ("garbage!", encode_cursor({"s": "nope", "o": 5, "z": 7}), encode_cursor({"s": "x"}),
                    encode_cursor({"s": "x", "o": -1, "z": 7}), encode_cursor([1])):
            with pytest.raises(PageExpired):
                store.search(query, count=5, cursor=bad)
        with pytest.raises(PageExpired):
            store.search(Query(("Patient",), []), count=5, cursor=encode_cursor({"k": "zz"}))
    finally:
        store.close()


# -- the compiler ---------------------------------------------------------------------------------
def test_regex_escape_keeps_literal_prefixes():
    import re
    for text in ("a.b(c", "x*y+z?", "[a]{1}", "^$|\\", "plain", "hél-ène/ #"):
        assert re.match("^" + regex_escape(text), text + "tail")
        assert not re.match("^" + regex_escape(text), "Z" + text)


def test_sort_puts_missing_values_last_in_both_directions():
    docs = [{"_id": "a", "seq": 1, "str": [{"p": "f", "n": "b"}]}, {"_id": "b", "seq": 2, "str": []},
            {"_id": "c", "seq": 3, "str": [{"p": "f", "n": "a"}, {"p": "f", "n": "z"}]},
            {"_id": "d", "seq": 4, "str": [{"p": "f", "n": "b"}]}]
    up = MongoCompiler.sort_docs(docs, [SortKey("f", "string", False)])
    down = MongoCompiler.sort_docs(docs, [SortKey("f", "string", True)])
    assert [d["_id"] for d in up] == ["c", "a", "d", "b"]
    assert [d["_id"] for d in down] == ["c", "a", "d", "b"]  # max: c has z; ties stay in creation order


def test_deletion_marker_arrays_are_empty():
    assert all(v == [] for v in index_arrays(None).values())


# -- parity with the SQLite reference -------------------------------------------------------------
LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"

DATA = [
    res("p1", when="2026-01-01T00:00:00.000000Z"), IndexEntries(
        tokens=[TokenEntry("gender", None, "female")], strings=[StringEntry("family", "smith", "Smith")],
        dates=[DateEntry("birthdate", 100, 199)]),
    res("p2", when="2026-01-02T00:00:00.000000Z"), IndexEntries(
        tokens=[TokenEntry("gender", None, "male")], strings=[StringEntry("family", "smyth", "Smyth"),
                                                             StringEntry("family", "a.b(c", "A.b(c")],
        dates=[DateEntry("birthdate", 300, 399)]),
    res("p3", when="2026-01-03T00:00:00.000000Z"), IndexEntries(),
    res("o1", rtype="Observation", when="2026-01-04T00:00:00.000000Z"), IndexEntries(
        tokens=[TokenEntry("code", LOINC, "1234-5", "body weight"), TokenEntry("status", None, "final")],
        dates=[DateEntry("date", 1_000, 2_000)],
        numbers=[NumberEntry("probability", 4.95, 5.05)],
        quantities=[QuantityEntry("value-quantity", 69.5, 70.5, UCUM, "kg", "g", 69_500.0, 70_500.0)],
        references=[ReferenceEntry("subject", "Patient", "p1")],
        uris=[UriEntry("instantiates", "http://example.org/fhir/a")],
        strings=[StringEntry("note", "helene", "Hélène")],
        composites=[CompositeEntry("code-value-quantity", (TokenEntry("code", LOINC, "1234-5"),
                                                           QuantityEntry("value-quantity", 69.5, 70.5, UCUM, "kg", "g",
                                                                         69_500.0, 70_500.0)))]),
    res("o2", rtype="Observation", when="2026-01-05T00:00:00.000000Z"), IndexEntries(
        tokens=[TokenEntry("code", "http://other", "1234-5", "weight other"), TokenEntry("status", "s", "prelim")],
        dates=[DateEntry("date", 5_000, 6_000)],
        numbers=[NumberEntry("probability", 9.5, 10.5)],
        quantities=[QuantityEntry("value-quantity", 149.5, 150.5, UCUM, "[lb_av]", "g", 67_812.0, 68_266.0)],
        references=[ReferenceEntry("subject", "Patient", "p2"),
                    ReferenceEntry("performer", None, None, "http://ext.org/Practitioner/9")],
        uris=[UriEntry("instantiates", "http://example.org/fhir/a/b")],
        composites=[CompositeEntry("code-value-quantity", (TokenEntry("code", "http://other", "1234-5"),
                                                           QuantityEntry("value-quantity", 149.5, 150.5, UCUM,
                                                                         "[lb_av]", "g", 67_812.0, 68_266.0)))]),
    res("o3", rtype="Observation", when="2026-01-06T00:00:00.000000Z"), IndexEntries(
        dates=[DateEntry("date", 1_500, 5_500), DateEntry("date", 9_000, 9_999)],
        quantities=[QuantityEntry("value-quantity", 69_999.5, 70_000.5, UCUM, "g", "g", 69_999.5, 70_000.5)],
        references=[ReferenceEntry("subject", "Group", "g1")],
        uris=[UriEntry("instantiates", "http://example.org")]),
]

OBS, PAT = ("Observation",), ("Patient",)


def tok(param, code, system=None, match=False, modifier=None):
    return Clause(param, "token", modifier, (TokenValue(system, code, match),))


def rng(param, kind, prefix, low, high, **extra):
    return Clause(param, kind, None, (RangeValue(prefix, low, high, **extra),))


PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
QUERIES: list[tuple[tuple, list]] = [
    (OBS, [tok("code", "1234-5")]),
    (OBS, [tok("code", "1234-5", LOINC, True)]),
    (OBS, [tok("status", "final", None, True)]),
    (OBS, [Clause("status", "token", None, (TokenValue("s", None, True),))]),
    (OBS, [tok("code", "1234-5", LOINC, True, "not")]),
    (OBS, [tok("code", "weight", modifier="text")]),
    (OBS, [Clause("code", "token", "not-in", (TokenValue(None, "1234-5", False), TokenValue(None, "x", False)))]),
    (PAT, [Clause("gender", "token", None, (TokenValue(None, "female", False), TokenValue(None, "male", False)))]),
    (PAT, [Clause("family", "string", None, (StringValue("sm"),))]),
    (PAT, [Clause("family", "string", None, (StringValue("a.b("),))]),
    (PAT, [Clause("family", "string", None, (StringValue("a.c"),))]),
    (PAT, [Clause("family", "string", "exact", (StringValue("Smith"),))]),
    (PAT, [Clause("family", "string", "exact", (StringValue("smith"),))]),
    (PAT, [Clause("family", "string", "contains", (StringValue("yt"),))]),
    (PAT, [Clause("family", "string", "missing", (), missing=True)]),
    (PAT, [Clause("family", "string", "missing", (), missing=False)]),
    *[(OBS, [rng("date", "date", p, lo, hi)]) for p in PREFIXES for lo, hi in
      ((1_000, 2_000), (1_500, 1_999), (0, 10_000), (5_500, 5_600), (6_000, 9_000))],
    *[(OBS, [rng("probability", "number", p, lo, hi)]) for p in PREFIXES for lo, hi in ((4.95, 5.05), (9.0, 11.0))],
    (OBS, [rng("value-quantity", "quantity", "eq", 69.5, 70.5, system=UCUM, code="kg",
               canonical=("g", 69_500.0, 70_500.0))]),
    (OBS, [rng("value-quantity", "quantity", "gt", 69.5, 70.5, system=UCUM, code="kg",
               canonical=("g", 69_500.0, 70_500.0))]),
    (OBS, [rng("value-quantity", "quantity", "lt", 69.5, 70.5, code="kg")]),
    (OBS, [rng("value-quantity", "quantity", "ge", 69.5, 70.5)]),
    (OBS, [rng("value-quantity", "quantity", "ne", 69.5, 70.5, system=UCUM, code="kg",
               canonical=("g", 69_500.0, 70_500.0))]),
    (OBS, [Clause("subject", "reference", None, (ReferenceValue("Patient", "p1"),))]),
    (OBS, [Clause("subject", "reference", None, (ReferenceValue(None, "p2"),))]),
    (OBS, [Clause("subject", "reference", None, (ReferenceValue("Group", "g1", "http://x/Group/g1"),))]),
    (OBS, [Clause("performer", "reference", None, (ReferenceValue("Practitioner", None,
                                                                   "http://ext.org/Practitioner/9"),))]),
    (OBS, [Clause("subject", "reference", "missing", (), missing=True)]),
    (OBS, [Clause("performer", "reference", "missing", (), missing=True)]),
    (OBS, [Clause("instantiates", "uri", None, (UriValue("http://example.org/fhir/a"),))]),
    (OBS, [Clause("instantiates", "uri", "below", (UriValue("http://example.org/fhir"),))]),
    (OBS, [Clause("instantiates", "uri", "above", (UriValue("http://example.org/fhir/a/b/c"),))]),
    (OBS, [Clause("code-value-quantity", "composite", None,
                  (CompositeValue((TokenValue(LOINC, "1234-5", True), RangeValue("gt", 60, 60, UCUM, "kg"))),))]),
    (OBS, [Clause("code-value-quantity", "composite", None,
                  (CompositeValue((TokenValue(None, "1234-5", False), RangeValue("ge", 100, 100))),))]),
    (None, [Clause("_id", "token", None, (TokenValue(None, "p1", False), TokenValue(None, "o2", False)))]),
    (OBS, [Clause("_id", "token", "not", (TokenValue(None, "o2", False),))]),
    *[(None, [Clause("_lastUpdated", "date", None, (RangeValue(p, 1767312000000000, 1767398399999999),))])
      for p in PREFIXES],  # 2026-01-02
    (OBS, [AnyOf((Clause("subject", "reference", None, (ReferenceValue("Patient", "p1"),)),
                  tok("status", "prelim")))]),
    (OBS, [Clause("subject", "reference", None, (), chain=Chain(("Patient",), Query(PAT, [tok("gender", "female")])))]),
    (OBS, [Clause("subject", "reference", None, (), chain=Chain(("Patient", "Group"),
                                                                Query((), [Clause("_id", "token", None, (
                                                                    TokenValue(None, "g1", False),))])))]),
    (OBS, [Clause("subject", "reference", None, (), chain=Chain(("Patient",), Query(PAT, [tok("gender", "none")])))]),
    (PAT, [HasClause("Observation", "subject", Query(OBS, [tok("code", "1234-5")]))]),
    (PAT, [HasClause("Observation", "subject", Query(OBS, [tok("status", "final")]))]),
    (None, [HasClause("Observation", "subject", Query(OBS, []))]),
    (PAT, [tok("gender", "female"), Clause("family", "string", None, (StringValue("smi"),))]),
]

SORTS = [
    (OBS, [SortKey("date", "date", False)]),
    (OBS, [SortKey("date", "date", True)]),
    (PAT, [SortKey("family", "string", False)]),
    (PAT, [SortKey("family", "string", True), SortKey("_id", "token", True)]),
    (None, [SortKey("_lastUpdated", "date", True)]),
    (None, [SortKey("_id", "token", False)]),
    (OBS, [SortKey("code", "token", False), SortKey("probability", "number", True)]),
    (OBS, [SortKey("value-quantity", "quantity", True)]),
    (OBS, [SortKey("subject", "reference", False)]),
]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    sqlite = SQLiteStore(tmp_path_factory.mktemp("parity") / "fhir.sqlite3")
    mongo = open_mongo()
    for store in (sqlite, mongo):
        for resource, index in zip(DATA[::2], DATA[1::2]):
            put(store, resource, index)
        put(store, res("gone", rtype="Observation"), IndexEntries(tokens=[TokenEntry("code", LOINC, "1234-5")]))
        put(store, res("gone", 2, rtype="Observation", deleted=True), expected=1)
    yield sqlite, mongo
    sqlite.close()
    mongo.close()


@pytest.mark.parametrize("types,clauses", QUERIES, ids=[str(i) for i in range(len(QUERIES))])
def test_the_mongo_compiler_matches_the_sqlite_reference(both, types, clauses):
    sqlite, mongo = both
    query = Query(types or (), clauses)
    expected = sorted((r.type, r.id) for r in sqlite.search(query, count=100).resources)
    got = sorted((r.type, r.id) for r in mongo.search(query, count=100).resources)
    assert got == expected
    assert mongo.count(query) == sqlite.count(query) == len(expected)
    with mongo.transaction() as tx:
        assert sorted(tx.search(query)) == expected


@pytest.mark.parametrize("types,keys", SORTS, ids=[str(i) for i in range(len(SORTS))])
def test_sorting_matches_the_sqlite_reference(both, types, keys):
    sqlite, mongo = both
    query = Query(types or (), [], sort=keys)

    def pages(store):
        out, cursor = [], None
        while True:
            page = store.search(query, count=2, cursor=cursor)
            out += [(r.type, r.id) for r in page.resources]
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor
    assert pages(mongo) == pages(sqlite)


def test_a_composite_quantity_with_canonical_units_matches_by_conversion(both):
    _, mongo = both  # the SQLite compiler has no canonical columns on idx_composite (see the report)
    value = CompositeValue((TokenValue(None, "1234-5", False),
                            RangeValue("gt", 69.0, 69.0, UCUM, "kg", ("g", 69_000.0, 69_000.0))))
    query = Query(OBS, [Clause("code-value-quantity", "composite", None, (value,))])
    assert [r.id for r in mongo.search(query, count=10).resources] == ["o1"]


# -- the server-transaction path, driven through a stand-in session (mongomock has none) ----------
class _Session:
    def __init__(self, commit_errors=()):
        self.calls: list[str] = []
        self.in_transaction = False
        self.commit_errors = list(commit_errors)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.calls.append("end")

    def start_transaction(self, **options):
        self.calls.append("start")
        self.in_transaction = True

    def commit_transaction(self):
        self.calls.append("commit")
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        self.in_transaction = False

    def abort_transaction(self):
        self.calls.append("abort")
        self.in_transaction = False


class _Collection:
    """A mongomock collection that accepts (and ignores) ``session=``."""

    def __init__(self, inner, fail_on=None):
        self.inner, self.fail_on = inner, fail_on

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args, session=None, **kwargs):
            if self.fail_on and name == self.fail_on[0] and session is not None:
                raise self.fail_on[1]
            return attr(*args, **kwargs)
        return call


class _Client:
    def __init__(self, session, fail_on=None):
        import mongomock
        self.inner = mongomock.MongoClient()
        self.session, self.fail_on = session, fail_on

    def __getitem__(self, name):
        db = self.inner[name]
        client = self

        class _DB:
            def __getitem__(self, coll):
                return _Collection(db[coll], client.fail_on if coll == "resources" else None)
        return _DB()

    def start_session(self):
        return self.session

    def close(self):
        pass


def _label(message: str, label: str, code: int | None = None):
    from pymongo.errors import OperationFailure
    return OperationFailure(message, code=code, details={"errorLabels": [label], "code": code, "errmsg": message})


def test_server_transactions_commit_on_success_and_abort_on_error():
    session = _Session()
    store = MongoStore(_Client(session), "fhir", transactions=True)
    with store.transaction() as tx:
        tx.claim("k")
        tx.put(res("a"), IndexEntries(), expected_version=None)
    assert session.calls == ["start", "commit", "end"] and store.locks.count_documents({}) == 0
    session.calls.clear()
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.claim("k")
            raise RuntimeError("boom")
    assert session.calls == ["start", "abort", "end"] and store.locks.count_documents({}) == 0


def test_server_commit_retries_an_unknown_result_and_maps_transient_errors():
    session = _Session([_label("net", "UnknownTransactionCommitResult")])
    store = MongoStore(_Client(session), "fhir", transactions=True)
    with store.transaction() as tx:
        tx.put(res("a"), IndexEntries(), expected_version=None)
    assert session.calls.count("commit") == 2
    session = _Session([_label("conflict", "TransientTransactionError", 112)])
    store = MongoStore(_Client(session), "fhir", transactions=True)
    with pytest.raises(VersionConflict):
        with store.transaction() as tx:
            tx.put(res("a"), IndexEntries(), expected_version=None)


def test_a_write_conflict_inside_a_server_transaction_is_a_version_conflict():
    session = _Session()
    store = MongoStore(_Client(session, ("find_one_and_update", _label("WriteConflict", "TransientTransactionError",
                                                                       112))), "fhir", transactions=True)
    with store.transaction() as tx:
        tx.put(res("a"), IndexEntries(), expected_version=None)
    with pytest.raises(VersionConflict):
        with store.transaction() as tx:
            tx.put(res("a", 2), IndexEntries(), expected_version=1)
    assert session.calls[-2:] == ["abort", "end"]


def test_iterate_and_reindex_cover_current_resources_only(mongo):
    for i in range(3):
        put(mongo, res(f"p{i}"), IndexEntries(tokens=[TokenEntry("gender", None, "old")]))
    put(mongo, res("p2", 2, deleted=True), expected=1)
    assert sorted(r.id for r in mongo.iterate("Patient")) == ["p0", "p1"]
    done = mongo.reindex("Patient", lambda r: IndexEntries(tokens=[TokenEntry("gender", None, "new")]))
    assert done == 2
    new = Query(("Patient",), [tok("gender", "new")])
    assert mongo.count(new) == 2 and mongo.read("Patient", "p0").version == 1
