"""What is specific to the SQLite store's write path: writes buffered in the transaction and made in bulk,
visible to every read on the writer's connection (its transaction's and the store's own reads from the
writing thread, e.g. the care item's patient lookup during validation inside a transaction Bundle)."""
from __future__ import annotations

import random

import pytest

from fhir_server.model.dates import parse_range
from fhir_server.search.entries import IndexEntries, TokenEntry
from fhir_server.search.query import Clause, Query, TokenValue
from fhir_server.store.sqlite import SQLiteStore, _lu

from test_contract import entries, version

FEMALE = Query(("Patient",), [Clause("gender", "token", None, (TokenValue(None, "f", False),))])


@pytest.fixture
def sqlite_store(tmp_path):
    store = SQLiteStore(tmp_path / "fhir.sqlite3", synchronous="NORMAL")
    yield store
    store.close()


@pytest.mark.parametrize("grouped", [False, True])
def test_the_stores_reads_from_the_writing_thread_see_the_buffered_writes(sqlite_store, grouped):
    store = sqlite_store

    def action(tx):
        tx.put(version("a", 1), entries("f"), expected_version=None)
        assert store.read("Patient", "a") == version("a", 1)
        assert store.count(FEMALE) == 1
        tx.put(version("b", 1), entries("f"), expected_version=None)
        assert [r.id for r in store.read_many([("Patient", "a"), ("Patient", "b")])] == ["a", "b"]
        tx.put(version("c", 1), entries("f"), expected_version=None)
        assert store.vread("Patient", "c", 1) is not None
        tx.put(version("c", 2), entries("m"), expected_version=1)
        assert [r.id for r in store.iterate("Patient")] == ["a", "b", "c"]
        assert store.count(FEMALE) == 2
        return "done"
    if grouped:
        assert store.atomically(action) == "done"
    else:
        with store.transaction() as tx:
            action(tx)
    assert store.count(FEMALE) == 2 and store.read("Patient", "c").version == 2


def test_a_bulk_transaction_looks_each_resource_up_once(sqlite_store):
    store = sqlite_store
    statements: list[str] = []
    with store.transaction() as tx:
        tx.conn.set_trace_callback(statements.append)
        tx.put_many([(version(f"p{i}", 1), entries("f"), None) for i in range(50)])
        tx.put(version("p7", 2), entries("m"), expected_version=1)  # known in the transaction: no lookup
        assert tx.current("Patient", "p8").version == 1
    store._conn().set_trace_callback(None)
    assert not any(s.startswith("SELECT rpk, version FROM resources") for s in statements)  # no lookup per row
    assert sum(" r.id IN (" in s for s in statements) == 1  # but one for all
    assert sum(s.startswith("SELECT max(rpk)") for s in statements) == 2  # the row ids, read again after the flush
    assert store.count(FEMALE) == 49


def test_row_ids_follow_the_stored_ones_as_sqlite_would_give_them(sqlite_store):
    store = sqlite_store
    with store.transaction() as tx:
        tx.put(version("a", 1), entries("f"), expected_version=None)
    store.expunge("Patient", "a")  # the largest ids went: the next ones are given again, as by SQLite itself
    with store.transaction() as tx:
        tx.put_many([(version(f"p{i}", 1), entries("f"), None) for i in range(3)])
    conn = store._conn()
    assert [r[0] for r in conn.execute("SELECT rpk FROM resources ORDER BY rpk")] == [1, 2, 3]
    assert [r[0] for r in conn.execute("SELECT vrow FROM versions ORDER BY vrow")] == [1, 2, 3]
    assert conn.execute("SELECT count(*) FROM idx_token").fetchone()[0] == 3


def test_the_fast_last_updated_parse_agrees_with_parse_range():
    rng = random.Random(7)
    samples = ["2026-01-01T00:00:00.000000Z", "0001-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.999999Z",
               "1969-12-31T23:59:59.999999Z", "2016-12-31T23:59:60.000000Z", "2024-02-29T12:30:45.123456Z",
               "2026-01-01T00:00:00.000000+01:00"[:27], "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123Z",
               "2026-01-01T01:00:00.000000+01:00"]
    for _ in range(2000):
        samples.append(f"{rng.randint(1, 9999):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                       f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}."
                       f"{rng.randint(0, 999999):06d}Z")
    for value in samples:
        try:
            expected = parse_range(value)[0]
        except ValueError:
            with pytest.raises(ValueError):
                _lu(value)
            continue
        assert _lu(value) == expected, value
    for bad in ("2026-13-01T00:00:00.000000Z", "0000-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.00000xZ",
                "2026-01-01T00:00:00.0000٣٤Z"):
        with pytest.raises(ValueError):
            _lu(bad)


def test_a_refused_put_buffers_nothing(sqlite_store):
    store = sqlite_store
    with store.transaction() as tx:
        tx.put(version("a", 1), entries("f"), expected_version=None)
        with pytest.raises(ValueError):
            tx.put(version("b", 1, when="not a date"), entries("f"), expected_version=None)
        tx.put(version("c", 1), entries("f"), expected_version=None)
    assert store.read("Patient", "b") is None and store.count(FEMALE) == 2
    assert [v.id for v in store.history("Patient", count=5).entries] == ["c", "a"]


def test_a_transaction_larger_than_one_statement_keeps_every_row(sqlite_store):
    # rows are inserted many per statement; 4,000 versions (9 values each) and one resource with 6,000
    # identifiers (6 values each) are more than one statement may bind (32,766): split, none lost
    store = sqlite_store
    many = IndexEntries(tokens=[TokenEntry("identifier", "urn:sys", f"v{i}") for i in range(6000)])
    with store.transaction() as tx:
        tx.put_many([(version(f"p{i}", 1), entries("f" if i % 4 else "m"), None) for i in range(4000)])
        tx.put(version("many", 1), many, expected_version=None)
    assert store.count(FEMALE) == 3000
    for code in ("v0", "v5461", "v5999"):
        query = Query(("Patient",), [Clause("identifier", "token", None, (TokenValue("urn:sys", code, False),))])
        assert [r.id for r in store.search(query, count=5).resources] == ["many"]
    assert store.read("Patient", "p3999").version == 1


def test_bulk_writes_enlarge_the_page_cache_and_space_checkpoints_only_while_they_run(sqlite_store):
    store = sqlite_store

    def cache_kib():
        return -store._conn().execute("PRAGMA cache_size").fetchone()[0]

    def checkpoint_pages():
        return store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert (cache_kib(), checkpoint_pages()) == (store.CACHE_KIB, 1000)
    with pytest.raises(RuntimeError):
        with store.bulk_writes():
            assert (cache_kib(), checkpoint_pages()) == (store.BULK_CACHE_KIB, store.BULK_CHECKPOINT_PAGES)
            with store.transaction() as tx:
                tx.put(version("a", 1), entries("f"), expected_version=None)
            raise RuntimeError("the load stops")
    assert (cache_kib(), checkpoint_pages()) == (store.CACHE_KIB, 1000)
    assert store.read("Patient", "a") == version("a", 1)  # written as any other write
