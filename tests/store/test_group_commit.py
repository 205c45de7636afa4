"""Store.atomically (group commit on SQLite) and the write path that uses it: every write is acknowledged
only once committed, each on its own (a failing one never fails the others), none is lost under concurrency.

Runs on every backend: MongoDB has no group commit (one transaction per call), same contract.
"""
from __future__ import annotations

import contextvars
import threading

import pytest

from fhir_server.access.gate import ANONYMOUS
from fhir_server.model.outcome import FHIRError
from fhir_server.store.base import AlreadyExists, VersionConflict

from test_contract import entries, version

REQUEST = contextvars.ContextVar("request", default=None)


def writer(rid: str, n: int = 1, expected: int | None = None):
    def action(tx):
        tx.put(version(rid, n), entries(), expected_version=expected)
        return rid
    return action


def run_threads(target, count: int) -> list:
    results: list = [None] * count

    def run(i: int) -> None:
        try:
            results[i] = target(i)
        except BaseException as exc:  # noqa: B902 - the test looks at it
            results[i] = exc
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_atomically_returns_the_result_and_commits(store):
    assert store.atomically(writer("a")) == "a"
    assert store.read("Patient", "a").version == 1


def test_an_action_that_raises_leaves_nothing_and_its_error_reaches_the_caller(store):
    def failing(tx):
        tx.put(version("b", 1), entries(), expected_version=None)
        raise ValueError("boom")
    with pytest.raises(ValueError, match="boom"):
        store.atomically(failing)
    assert store.read("Patient", "b") is None
    store.atomically(writer("c"))
    with pytest.raises(AlreadyExists):
        store.atomically(writer("c"))
    with pytest.raises(VersionConflict):
        store.atomically(writer("c", 3, expected=2))


def test_concurrent_writers_are_all_acknowledged_and_all_readable(store):
    results = run_threads(lambda i: store.atomically(writer(f"p{i}")), 24)
    assert results == [f"p{i}" for i in range(24)]
    assert len(store.read_many([("Patient", f"p{i}") for i in range(24)])) == 24


def test_actions_see_their_callers_context(store):
    def run(i: int):
        REQUEST.set(f"request-{i}")
        return store.atomically(lambda tx: REQUEST.get())
    assert run_threads(run, 8) == [f"request-{i}" for i in range(8)]


def test_a_failing_write_in_a_group_fails_alone(store):
    """The first writer is held inside its transaction while the others queue: they are committed
    together (on SQLite: one batch, each in its own savepoint); the failing one is rolled back alone."""
    store.atomically(writer("taken"))
    entered, release = threading.Event(), threading.Event()

    def first(tx):
        tx.put(version("first", 1), entries(), expected_version=None)
        entered.set()
        assert release.wait(10)
        return "first"
    holder = threading.Thread(target=lambda: store.atomically(first))
    holder.start()
    assert entered.wait(10)
    batches_before = getattr(store, "batches", None)

    def action(i: int):
        if i == 3:
            return store.atomically(writer("taken"))  # AlreadyExists
        if i == 5:
            def half_then_fail(tx):
                tx.put(version("half", 1), entries(), expected_version=None)
                raise FHIRError.of(400, "invalid", "refused after a put")
            return store.atomically(half_then_fail)
        return store.atomically(writer(f"g{i}"))
    queued = []
    threads = []
    for i in range(8):
        queued.append(None)
        thread = threading.Thread(target=lambda i=i: queued.__setitem__(i, _outcome(action, i)))
        thread.start()
        threads.append(thread)
    if hasattr(store, "_queue"):  # SQLite: wait until the 8 are queued behind the held batch
        for _ in range(1000):
            if len(store._queue) == 8:
                break
            threading.Event().wait(0.005)
        assert len(store._queue) == 8
    release.set()
    holder.join(10)
    for thread in threads:
        thread.join(10)
    assert isinstance(queued[3], AlreadyExists)
    assert isinstance(queued[5], FHIRError)
    assert [queued[i] for i in range(8) if i not in (3, 5)] == [f"g{i}" for i in range(8) if i not in (3, 5)]
    assert store.read("Patient", "half") is None, "the failed action's own writes were rolled back"
    assert store.read("Patient", "first").version == 1
    assert len(store.read_many([("Patient", f"g{i}") for i in range(8)])) == 6
    if batches_before is not None:
        assert store.batches == batches_before + 2, "the held batch, then the 8 queued writers in one batch"


def _outcome(action, i):
    try:
        return action(i)
    except Exception as exc:
        return exc


def test_a_failed_commit_fails_every_action_of_its_batch(store, monkeypatch):
    if not hasattr(store, "_commit_batch"):
        pytest.skip("MongoDB commits one transaction per write (no group commit): there is no batch to fail")
    import sqlite3
    real = store._conn

    class FailingCommit:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *args):
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")
            return self.conn.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.conn, name)
    monkeypatch.setattr(store, "_conn", lambda: FailingCommit(real()))
    with pytest.raises(sqlite3.OperationalError):
        store.atomically(writer("lost"))
    monkeypatch.undo()
    assert store.read("Patient", "lost") is None
    assert store.atomically(writer("after")) == "after", "the store keeps working"


# -- the write path through ResourceService -------------------------------------------------------------

def observation(n: int) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": f"test {n}"},
            "valueQuantity": {"value": n, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}


def test_concurrent_creates_are_all_acknowledged_readable_and_searchable(app):
    server = app.extensions["fhir"]
    notified = []
    server.add_write_listener(notified.append)
    results = run_threads(lambda i: server.resources.create(ANONYMOUS, "Observation", observation(i)), 20)
    assert all(r.created and r.resource.version == 1 for r in results), results
    ids = {r.resource.id for r in results}
    assert len(ids) == 20
    assert {s.id for s in server.store.read_many([("Observation", i) for i in ids])} == ids
    query = server.parser.parse(("Observation",), [("code:text", "test")]).query
    assert {h.id for h in server.store.search(query, count=100).resources} == ids
    assert sorted(s.id for s in notified) == sorted(ids), "each committed write notified once, after its commit"


def test_concurrent_updates_without_if_match_are_all_kept_and_with_if_match_one_wins(app):
    server = app.extensions["fhir"]
    created = server.resources.create(ANONYMOUS, "Observation", observation(0)).resource
    rid = created.id

    def update(i: int):
        return server.resources.update(ANONYMOUS, "Observation", rid, dict(observation(100 + i), id=rid))
    results = run_threads(update, 10)
    assert all(not isinstance(r, Exception) for r in results), results
    assert server.store.read("Observation", rid).version == 11, "no acknowledged update was lost"

    def update_if_match(i: int):
        return server.resources.update(ANONYMOUS, "Observation", rid, dict(observation(200 + i), id=rid),
                                       if_match=11)
    results = run_threads(update_if_match, 6)
    won = [r for r in results if not isinstance(r, Exception)]
    lost = [r for r in results if isinstance(r, FHIRError)]
    assert len(won) == 1 and len(lost) == 5
    assert all(e.status == 412 for e in lost)
    assert server.store.read("Observation", rid).version == 12


def test_an_invalid_create_among_concurrent_ones_is_refused_alone(app):
    server = app.extensions["fhir"]

    def create(i: int):
        body = observation(i) if i != 4 else dict(observation(i), status="not-a-status")
        return server.resources.create(ANONYMOUS, "Observation", body)
    results = run_threads(create, 10)
    assert isinstance(results[4], FHIRError) and results[4].status == 400
    assert sum(1 for r in results if not isinstance(r, Exception)) == 9


def test_prepared_index_equals_the_index_of_the_stored_version(app):
    from fhir_server.model import jsonio
    server = app.extensions["fhir"]
    body = dict(observation(7), meta={"tag": [{"system": "urn:t", "code": "x"}], "versionId": "99",
                                      "lastUpdated": "2020-01-01T00:00:00Z"})
    prepared = server.resources.prepare("create", "Observation", body)
    stored = server.resources.create(ANONYMOUS, "Observation", body).resource
    assert server.resources.indexer.index(jsonio.loads(stored.body)) == \
        server.resources.indexer.index(dict(jsonio.loads(stored.body), id=prepared.rid)) == \
        server.resources.prepare("create", "Observation", body, stored.id).index


def test_two_store_objects_on_one_file_share_the_process_write_lock(store, tmp_path):
    if not hasattr(store, "_writer_fd"):
        pytest.skip("the write-lock file is how SQLite writer processes wait for each other; MongoDB has none")
    from fhir_server.store.sqlite import SQLiteStore
    other = SQLiteStore(store.path, synchronous="NORMAL")
    try:
        results = run_threads(lambda i: (store if i % 2 else other).atomically(writer(f"s{i}")), 12)
        assert results == [f"s{i}" for i in range(12)]
        with store.transaction() as tx:  # one object's transaction open, the other's writers queue meanwhile
            tx.put(version("held", 1), entries(), expected_version=None)
            assert other._writer_fd() == store._writer_fd(), "one open lock file per process and database"
    finally:
        other.close()
    assert store.atomically(writer("after-close")) == "after-close", "the lock file stays open for the other"
