"""The bulk export machinery below HTTP: job claims and leases, file splitting, the compartment
check, the exporter's streaming, and the background thread."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import mongomock
import pytest

from fhir_server.access.gate import ANONYMOUS
from fhir_server.bulk.export import CompartmentMatcher, NDJSONWriter
from fhir_server.bulk.jobs import MAX_ATTEMPTS, Job, MongoJobStore, SQLiteJobStore

from bulk_helpers import make_bulk_app

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "r4-examples"


# -- job store ------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "mongo"])
def jobs(request, tmp_path):
    if request.param == "sqlite":
        from fhir_server.store.sqlite import SQLiteStore
        store = SQLiteStore(tmp_path / "jobs.sqlite3", synchronous="OFF")
        yield SQLiteJobStore(store)
        store.close()
    else:
        yield MongoJobStore(mongomock.MongoClient()["fhir"])


def new_job(owner: str = "alice") -> Job:
    import uuid
    return Job(uuid.uuid4().hex, "system", "http://x/fhir/$export", {"types": ["Patient"]}, {"subject": owner}, owner)


def test_a_claim_is_exclusive_until_the_lease_expires(jobs):
    job = new_job()
    jobs.create(job)
    now = time.time()
    assert jobs.count_active("alice") == 1
    claimed = jobs.claim("A", now, 60)
    assert claimed.id == job.id and claimed.attempts == 1 and claimed.lease_owner == "A"
    assert jobs.claim("B", now + 30, 60) is None  # A holds the lease
    assert jobs.heartbeat(job.id, "A", now + 90, "Patient: 10 resources") == "ok"
    assert jobs.get(job.id).progress == "Patient: 10 resources"
    assert jobs.claim("B", now + 80, 60) is None  # renewed until now + 90

    taken = jobs.claim("B", now + 91, 60)  # A went silent: B takes over
    assert taken.id == job.id and taken.attempts == 2
    assert jobs.heartbeat(job.id, "A", now + 200) == "lost"
    assert jobs.check(job.id, "A") == "lost"
    assert not jobs.start(job.id, "A", "2026-01-01T00:00:00Z")
    assert not jobs.complete(job.id, "A", {"output": []}, now)
    assert jobs.start(job.id, "B", "2026-01-01T00:00:00Z")
    assert jobs.complete(job.id, "B", {"output": [], "error": [], "dir": "attempt-2"}, now + 100)
    done = jobs.get(job.id)
    assert done.state == "completed" and done.transaction_time == "2026-01-01T00:00:00Z"
    assert done.result["dir"] == "attempt-2" and jobs.count_active("alice") == 0


def test_cancel_release_and_reaping(jobs):
    now = time.time()
    running, given_back, finished, doomed = new_job(), new_job(), new_job(), new_job()
    for job in (running, given_back, finished, doomed):
        jobs.create(job)
        time.sleep(0.001)  # claims take the oldest first
    assert jobs.claim("A", now, 60).id == running.id
    assert jobs.mark_deleted(running.id) and not jobs.mark_deleted(running.id)
    assert jobs.heartbeat(running.id, "A", now + 60) == "cancelled"
    assert running.id not in {j.id for j in jobs.reapable(now, 3600)}  # A still holds it
    assert not jobs.purge(running.id, now) and jobs.purge(running.id, now, "A")

    assert jobs.claim("A", now, 60).id == given_back.id
    jobs.release(given_back.id, "A")  # shutdown: at once claimable, the attempt not counted
    again = jobs.claim("B", now + 1, 60)
    assert again.id == given_back.id and again.attempts == 1
    assert jobs.complete(given_back.id, "B", {"output": [], "error": []}, now)

    assert jobs.claim("A", now, 60).id == finished.id
    jobs.complete(finished.id, "A", {"output": [], "error": []}, now - 7200)
    assert jobs.claim("A", now, 60).id == doomed.id
    for attempt in range(2, MAX_ATTEMPTS + 1):  # its worker keeps dying
        assert jobs.claim("W", now + attempt * 100, 60).attempts == attempt
    later = now + 1000
    assert jobs.claim("W", later, 60) is None  # no more attempts
    reapable = {j.id: j for j in jobs.reapable(later, 3600)}
    assert set(reapable) == {finished.id, doomed.id}
    assert jobs.fail(doomed.id, None, "interrupted too many times", later)
    assert jobs.get(doomed.id).state == "failed"
    assert jobs.purge(finished.id, later) and jobs.get(finished.id) is None


def test_concurrent_claims_give_a_job_to_exactly_one_worker(tmp_path):
    from fhir_server.store.sqlite import SQLiteStore
    store = SQLiteStore(tmp_path / "jobs.sqlite3", synchronous="OFF")
    jobs = SQLiteJobStore(store)
    for _ in range(5):
        jobs.create(new_job())
    won: list[tuple[str, str]] = []
    barrier = threading.Barrier(8)

    def worker(name: str) -> None:
        barrier.wait()
        while (job := jobs.claim(name, time.time(), 60)) is not None:
            won.append((name, job.id))
        jobs.close_thread()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 5 and len({job_id for _, job_id in won}) == 5


# -- files ----------------------------------------------------------------------------------------
def test_the_writer_splits_by_size_and_by_count_and_writes_bytes_verbatim(tmp_path):
    bodies = [b'{"resourceType":"Patient","id":"%d","x":"%s"}' % (i, b"y" * i) for i in range(10)]
    writer = NDJSONWriter(tmp_path, "Patient", max_bytes=120, max_resources=None)
    writer.write(bodies[:4])
    writer.write(bodies[4:])
    files = writer.close()
    assert sum(f["count"] for f in files) == 10 and len(files) > 3
    lines = []
    for f in files:
        data = (tmp_path / f["file"]).read_bytes()
        assert len(data) <= 120 or f["count"] == 1
        assert data.count(b"\n") == f["count"]
        lines += data.splitlines()
    assert lines == bodies

    writer = NDJSONWriter(tmp_path, "Observation", max_bytes=10**9, max_resources=4)
    writer.write(bodies)
    assert [f["count"] for f in writer.close()] == [4, 4, 2]
    pretty = NDJSONWriter(tmp_path, "Basic", max_bytes=10**9, max_resources=None)
    pretty.write([b'{"resourceType":"Basic","id":"z"}'])
    pretty.write([b'{"resourceType":"Basic","id":"y"}', b'{\n  "resourceType": "Basic",\n  "id": "a"\n}'])
    assert pretty.close() == [{"type": "Basic", "file": "Basic-1.ndjson", "count": 3}]
    assert (tmp_path / "Basic-1.ndjson").read_bytes() == (b'{"resourceType":"Basic","id":"z"}\n'
                                                          b'{"resourceType":"Basic","id":"y"}\n'
                                                          b'{"resourceType":"Basic","id":"a"}\n')


def test_the_compartment_check_agrees_with_the_index(engine):
    compartment = engine.definitions.patient_compartment
    matcher = CompartmentMatcher(engine.indexer, engine.registry, compartment)
    checked = 0
    for path in sorted(FIXTURES.glob("*.json")):
        resource = json.loads(path.read_text())
        rtype = resource["resourceType"]
        if rtype not in compartment:
            continue
        links = set(compartment[rtype])
        expected = {e.target_id for e in engine.indexer.index(resource).references
                    if e.param in links and e.target_type == "Patient"}
        assert matcher.patients(rtype, resource) == expected, path.name
        checked += bool(expected)
    assert checked >= 5
    audit = {"resourceType": "AuditEvent", "agent": [{"who": {"reference": "Patient/p1"}},
                                                     {"who": {"reference": "Practitioner/x"}}],
             "entity": [{"what": {"reference": "http://other/fhir/Patient/p2"}}]}
    assert matcher.patients("AuditEvent", audit) == {"p1", "p2"}


# -- the exporter and the worker ------------------------------------------------------------------
def submit(app, kind: str = "system", types=("Patient", "Observation"), **spec) -> Job:
    server = app.extensions["fhir"]
    job = Job(__import__("uuid").uuid4().hex, kind, "http://localhost/fhir/$export",
              {"types": list(types), "since": None, "type_filters": {}, "group": None, "issues": [], **spec},
              {"subject": "anonymous"}, "anonymous")
    server.bulk.jobs.create(job)
    return job


def test_a_system_export_streams_pages_of_stored_bytes_without_parsing(store, engine, tmp_path, monkeypatch):
    app = make_bulk_app(store, engine, tmp_path / "bulk", page_size=3)
    server = app.extensions["fhir"]
    created = [server.resources.create(ANONYMOUS, "Patient", {"resourceType": "Patient", "gender": "male"})
               for _ in range(7)]
    counts: list[int] = []
    search = store.search

    def spy(query, *, count, cursor=None):
        page = search(query, count=count, cursor=cursor)
        counts.append(len(page.resources))
        assert len(page.resources) <= 3
        return page

    def no_parsing(*args, **kwargs):
        raise AssertionError("a system export must not parse resources")

    monkeypatch.setattr(store, "search", spy)
    monkeypatch.setattr("fhir_server.bulk.export.orjson.loads", no_parsing)
    monkeypatch.setattr("fhir_server.bulk.export.jsonio.loads", no_parsing)
    job = submit(app, types=("Patient",))
    server.bulk.worker.run_pending()
    done = server.bulk.jobs.get(job.id)
    assert done.state == "completed", done.error
    assert counts[:3] == [3, 3, 1]
    path = tmp_path / "bulk" / job.id / done.result["dir"] / "Patient-1.ndjson"
    assert path.read_bytes() == b"".join(c.resource.body + b"\n" for c in created)


def test_pages_shrink_for_large_resources(store, engine, tmp_path, monkeypatch):
    app = make_bulk_app(store, engine, tmp_path / "bulk", page_size=1000, page_bytes=5000)
    server = app.extensions["fhir"]
    for _ in range(25):
        server.resources.create(ANONYMOUS, "Binary", {"resourceType": "Binary", "contentType": "text/plain",
                                                      "data": "QUFB" * 500})  # ~2 KB each
    counts: list[int] = []
    search = store.search

    def spy(query, *, count, cursor=None):
        counts.append(count)
        return search(query, count=count, cursor=cursor)

    monkeypatch.setattr(store, "search", spy)
    job = submit(app, types=("Binary",))
    server.bulk.worker.run_pending()
    assert server.bulk.jobs.get(job.id).result["output"][0]["count"] == 25
    assert counts[0] == 10 and set(counts[1:]) == {2}  # ~5000 bytes a page once the sizes are known


def test_the_background_thread_runs_jobs_and_gives_them_back_at_shutdown(store, engine, tmp_path, monkeypatch):
    app = make_bulk_app(store, engine, tmp_path / "bulk", poll_interval=0.05, page_size=1)
    server = app.extensions["fhir"]
    for _ in range(3):
        server.resources.create(ANONYMOUS, "Patient", {"resourceType": "Patient"})
    worker = server.bulk.worker
    job = submit(app, types=("Patient",))
    worker.start()
    worker.start()  # idempotent: still one thread
    try:
        worker.wake()
        deadline = time.time() + 5
        while server.bulk.jobs.get(job.id).state != "completed":
            assert time.time() < deadline, server.bulk.jobs.get(job.id)
            time.sleep(0.02)
        assert [t.name for t in threading.enumerate()].count("bulk-export-worker") == 1

        # a job running when the process stops is given back, not failed
        entered, release = threading.Event(), threading.Event()
        from fhir_server.bulk.worker import JobControl
        original = JobControl.page_done

        def slow_page(self, progress):
            entered.set()
            release.wait(5)
            original(self, progress)

        monkeypatch.setattr(JobControl, "page_done", slow_page)
        second = submit(app, types=("Patient",))
        worker.wake()
        assert entered.wait(5)
        worker.stopping.set()
        release.set()
    finally:
        worker.stop()
    assert not worker._thread.is_alive()
    back = server.bulk.jobs.get(second.id)
    assert back.state == "running" and back.lease_until == 0 and back.attempts == 0
