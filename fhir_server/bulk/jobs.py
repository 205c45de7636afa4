"""Bulk export jobs, kept in the same database as the resources so they survive restarts.

A job moves ``queued`` → ``running`` → ``completed`` | ``failed``; ``deleted`` is a flag
(a client's DELETE) that any state can carry until a worker removes the job and its files.

Workers in any number of processes share the table (SQLite) or collection (MongoDB) and
*claim* a job atomically with a lease (``lease_owner``, ``lease_until``). The owner renews
the lease while it works (:meth:`JobStore.heartbeat`); a job whose lease ran out belongs to
a worker that died and is claimed again, up to :data:`MAX_ATTEMPTS` times, and restarted
from scratch. Every write by a worker is conditioned on still holding the lease, so a
worker that was presumed dead can never overwrite its successor's work.
"""
from __future__ import annotations

import abc
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

MAX_ATTEMPTS = 3

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"

# What a heartbeat tells the worker holding a job.
KEEP_GOING, CANCELLED, LOST = "ok", "cancelled", "lost"


@dataclass
class Job:
    id: str
    kind: str  # system | patient | group
    request: str  # the kick-off URL (without parameters for POST)
    spec: dict[str, Any]  # what to export: types, since, type_filters, group, issues (see export.plan_export)
    principal: dict[str, Any]  # who asked (see export.principal_to_dict); the worker applies their constraints
    owner: str  # principal subject: only they may poll, download and delete
    created: float = field(default_factory=time.time)
    state: str = QUEUED
    deleted: bool = False
    attempts: int = 0
    lease_owner: str | None = None
    lease_until: float = 0.0
    progress: str = ""
    transaction_time: str | None = None
    completed_at: float | None = None
    result: dict[str, Any] | None = None  # {"dir", "output": [{type, file, count}], "error": [...]}
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in (QUEUED, RUNNING)


class JobStore(abc.ABC):
    """Where jobs live; one implementation per store backend (see :func:`job_store_for`)."""

    @abc.abstractmethod
    def create(self, job: Job) -> None: ...

    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    def count_active(self, owner: str) -> int:
        """Queued or running, not deleted, jobs of one client."""

    @abc.abstractmethod
    def claim(self, worker: str, now: float, lease: float) -> Job | None:
        """Atomically take the oldest queued job, or a running one whose lease expired."""

    @abc.abstractmethod
    def heartbeat(self, job_id: str, worker: str, lease_until: float, progress: str | None = None) -> str:
        """Renew the lease (and record progress): :data:`KEEP_GOING`, :data:`CANCELLED` or :data:`LOST`."""

    @abc.abstractmethod
    def check(self, job_id: str, worker: str) -> str:
        """Like :meth:`heartbeat` without writing: is the job still ours and not cancelled?"""

    @abc.abstractmethod
    def start(self, job_id: str, worker: str, transaction_time: str) -> bool:
        """Record the transaction time of this run; False when the lease is lost."""

    @abc.abstractmethod
    def complete(self, job_id: str, worker: str, result: dict, now: float) -> bool:
        """Mark done with the manifest data; False when the lease was lost or the job deleted meanwhile."""

    @abc.abstractmethod
    def fail(self, job_id: str, worker: str | None, message: str, now: float) -> bool: ...

    @abc.abstractmethod
    def release(self, job_id: str, worker: str) -> None:
        """Give a running job back (graceful shutdown): another worker may claim it at once."""

    @abc.abstractmethod
    def mark_deleted(self, job_id: str) -> bool:
        """The client's DELETE: cancel if running, forget afterwards. False when unknown or already deleted."""

    @abc.abstractmethod
    def reapable(self, now: float, retention: float) -> list[Job]:
        """Jobs whose files and record can go: deleted and not held by a live worker, or finished
        longer than ``retention`` seconds ago; also running jobs whose worker died once too often."""

    @abc.abstractmethod
    def purge(self, job_id: str, now: float, worker: str | None = None) -> bool:
        """Remove a job record, unless a live worker other than ``worker`` holds it."""

    def close_thread(self) -> None:
        """Release what the calling thread holds (the SQLite thread-local connection)."""


def job_store_for(store: Any) -> JobStore | None:
    """The job store living in the same database as ``store``; None for a store that has no place for jobs."""
    from fhir_server.store.sqlite import SQLiteStore
    if isinstance(store, SQLiteStore):
        return SQLiteJobStore(store)
    db = getattr(store, "db", None)
    if db is not None and hasattr(db, "create_collection"):
        return MongoJobStore(db)
    return None


# -- SQLite ---------------------------------------------------------------------------------------

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bulk_jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, request TEXT NOT NULL, spec TEXT NOT NULL,
    principal TEXT NOT NULL, owner TEXT NOT NULL, created REAL NOT NULL, state TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0, progress TEXT NOT NULL DEFAULT '', transaction_time TEXT,
    completed_at REAL, result TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS bulk_jobs_state ON bulk_jobs (state, created);
CREATE INDEX IF NOT EXISTS bulk_jobs_owner ON bulk_jobs (owner, state);
"""

_COLUMNS = ("id", "kind", "request", "spec", "principal", "owner", "created", "state", "deleted", "attempts",
            "lease_owner", "lease_until", "progress", "transaction_time", "completed_at", "result", "error")
_SELECT = "SELECT " + ", ".join(_COLUMNS) + " FROM bulk_jobs"


def _row_to_job(row: tuple) -> Job:
    values = dict(zip(_COLUMNS, row))
    values["spec"] = json.loads(values["spec"])
    values["principal"] = json.loads(values["principal"])
    values["result"] = json.loads(values["result"]) if values["result"] else None
    values["deleted"] = bool(values["deleted"])
    return Job(**values)


class SQLiteJobStore(JobStore):
    """Jobs in a ``bulk_jobs`` table of the store's own file, through the store's connections."""

    def __init__(self, store: Any):
        self.store = store
        self.store._conn().executescript(SQLITE_SCHEMA)

    def _read(self) -> sqlite3.Connection:
        return self.store._conn()

    def create(self, job: Job) -> None:
        with self.store._write() as conn:
            conn.execute(f"INSERT INTO bulk_jobs ({', '.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})",
                         (job.id, job.kind, job.request, json.dumps(job.spec), json.dumps(job.principal), job.owner,
                          job.created, job.state, int(job.deleted), job.attempts, job.lease_owner, job.lease_until,
                          job.progress, job.transaction_time, job.completed_at,
                          json.dumps(job.result) if job.result is not None else None, job.error))

    def get(self, job_id: str) -> Job | None:
        row = self._read().execute(_SELECT + " WHERE id=?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def count_active(self, owner: str) -> int:
        return self._read().execute("SELECT count(*) FROM bulk_jobs WHERE owner=? AND deleted=0 AND state IN (?,?)",
                                    (owner, QUEUED, RUNNING)).fetchone()[0]

    def claim(self, worker: str, now: float, lease: float) -> Job | None:
        with self.store._write() as conn:
            row = conn.execute(_SELECT + " WHERE deleted=0 AND attempts<?"
                               " AND (state=? OR (state=? AND lease_until<?)) ORDER BY created LIMIT 1",
                               (MAX_ATTEMPTS, QUEUED, RUNNING, now)).fetchone()
            if row is None:
                return None
            job = _row_to_job(row)
            conn.execute("UPDATE bulk_jobs SET state=?, lease_owner=?, lease_until=?, attempts=attempts+1,"
                         " progress=?, transaction_time=NULL WHERE id=?",
                         (RUNNING, worker, now + lease, "starting", job.id))
        job.state, job.lease_owner, job.lease_until = RUNNING, worker, now + lease
        job.attempts += 1
        job.progress, job.transaction_time = "starting", None
        return job

    def _status(self, row: tuple | None, worker: str) -> str:
        if row is None or row[0] != worker or row[2] != RUNNING:
            return LOST
        return CANCELLED if row[1] else KEEP_GOING

    def heartbeat(self, job_id: str, worker: str, lease_until: float, progress: str | None = None) -> str:
        with self.store._write() as conn:
            row = conn.execute("SELECT lease_owner, deleted, state FROM bulk_jobs WHERE id=?", (job_id,)).fetchone()
            status = self._status(row, worker)
            if status == KEEP_GOING:
                if progress is None:
                    conn.execute("UPDATE bulk_jobs SET lease_until=? WHERE id=?", (lease_until, job_id))
                else:
                    conn.execute("UPDATE bulk_jobs SET lease_until=?, progress=? WHERE id=?",
                                 (lease_until, progress, job_id))
        return status

    def check(self, job_id: str, worker: str) -> str:
        row = self._read().execute("SELECT lease_owner, deleted, state FROM bulk_jobs WHERE id=?",
                                   (job_id,)).fetchone()
        return self._status(row, worker)

    def start(self, job_id: str, worker: str, transaction_time: str) -> bool:
        with self.store._write() as conn:
            cur = conn.execute("UPDATE bulk_jobs SET transaction_time=? WHERE id=? AND lease_owner=? AND state=?",
                               (transaction_time, job_id, worker, RUNNING))
            return cur.rowcount == 1

    def complete(self, job_id: str, worker: str, result: dict, now: float) -> bool:
        with self.store._write() as conn:
            cur = conn.execute("UPDATE bulk_jobs SET state=?, result=?, completed_at=?, progress=?, lease_owner=NULL,"
                               " lease_until=0 WHERE id=? AND lease_owner=? AND state=? AND deleted=0",
                               (COMPLETED, json.dumps(result), now, "completed", job_id, worker, RUNNING))
            return cur.rowcount == 1

    def fail(self, job_id: str, worker: str | None, message: str, now: float) -> bool:
        with self.store._write() as conn:
            sql = ("UPDATE bulk_jobs SET state=?, error=?, completed_at=?, progress=?, lease_owner=NULL,"
                   " lease_until=0 WHERE id=? AND state=?")
            args: list = [FAILED, message, now, "failed", job_id, RUNNING]
            if worker is not None:
                sql += " AND lease_owner=?"
                args.append(worker)
            return conn.execute(sql, args).rowcount == 1

    def release(self, job_id: str, worker: str) -> None:
        with self.store._write() as conn:
            conn.execute("UPDATE bulk_jobs SET lease_until=0, attempts=max(attempts-1, 0), progress=?"
                         " WHERE id=? AND lease_owner=? AND state=?", ("queued again", job_id, worker, RUNNING))

    def mark_deleted(self, job_id: str) -> bool:
        with self.store._write() as conn:
            return conn.execute("UPDATE bulk_jobs SET deleted=1 WHERE id=? AND deleted=0", (job_id,)).rowcount == 1

    def reapable(self, now: float, retention: float) -> list[Job]:
        rows = self._read().execute(
            _SELECT + " WHERE (deleted=1 AND (state<>? OR lease_until<?))"
            " OR (state IN (?,?) AND completed_at<?)"
            " OR (state=? AND lease_until<? AND attempts>=?) LIMIT 100",
            (RUNNING, now, COMPLETED, FAILED, now - retention, RUNNING, now, MAX_ATTEMPTS)).fetchall()
        return [_row_to_job(r) for r in rows]

    def purge(self, job_id: str, now: float, worker: str | None = None) -> bool:
        with self.store._write() as conn:
            return conn.execute("DELETE FROM bulk_jobs WHERE id=? AND (state<>? OR lease_until<? OR lease_owner=?)",
                                (job_id, RUNNING, now, worker)).rowcount == 1

    def close_thread(self) -> None:
        self.store.close_thread()


# -- MongoDB --------------------------------------------------------------------------------------

class MongoJobStore(JobStore):
    """Jobs in a ``bulk_jobs`` collection of the store's database; claims are ``find_one_and_update``."""

    def __init__(self, db: Any):
        from pymongo import ASCENDING
        self.jobs = db["bulk_jobs"]
        self.jobs.create_index([("state", ASCENDING), ("created", ASCENDING)])
        self.jobs.create_index([("owner", ASCENDING), ("state", ASCENDING)])

    @staticmethod
    def _to_doc(job: Job) -> dict:
        doc = {k: getattr(job, k) for k in _COLUMNS}
        doc["_id"] = doc.pop("id")
        return doc

    @staticmethod
    def _to_job(doc: dict) -> Job:
        values = {k: doc.get(k) for k in _COLUMNS if k != "id"}
        values["id"] = doc["_id"]
        values["deleted"] = bool(values["deleted"])
        values["attempts"] = int(values["attempts"] or 0)
        values["lease_until"] = float(values["lease_until"] or 0)
        values["progress"] = values["progress"] or ""
        return Job(**values)

    def create(self, job: Job) -> None:
        self.jobs.insert_one(self._to_doc(job))

    def get(self, job_id: str) -> Job | None:
        doc = self.jobs.find_one({"_id": job_id})
        return self._to_job(doc) if doc else None

    def count_active(self, owner: str) -> int:
        return self.jobs.count_documents({"owner": owner, "deleted": False, "state": {"$in": [QUEUED, RUNNING]}})

    def claim(self, worker: str, now: float, lease: float) -> Job | None:
        from pymongo import ReturnDocument
        doc = self.jobs.find_one_and_update(
            {"deleted": False, "attempts": {"$lt": MAX_ATTEMPTS},
             "$or": [{"state": QUEUED}, {"state": RUNNING, "lease_until": {"$lt": now}}]},
            {"$set": {"state": RUNNING, "lease_owner": worker, "lease_until": now + lease, "progress": "starting",
                      "transaction_time": None},
             "$inc": {"attempts": 1}},
            sort=[("created", 1)], return_document=ReturnDocument.AFTER)
        return self._to_job(doc) if doc else None

    @staticmethod
    def _status(doc: dict | None, worker: str) -> str:
        if doc is None or doc.get("lease_owner") != worker or doc.get("state") != RUNNING:
            return LOST
        return CANCELLED if doc.get("deleted") else KEEP_GOING

    def heartbeat(self, job_id: str, worker: str, lease_until: float, progress: str | None = None) -> str:
        from pymongo import ReturnDocument
        update: dict = {"lease_until": lease_until}
        if progress is not None:
            update["progress"] = progress
        doc = self.jobs.find_one_and_update({"_id": job_id, "lease_owner": worker, "state": RUNNING},
                                            {"$set": update}, projection={"deleted": 1, "lease_owner": 1, "state": 1},
                                            return_document=ReturnDocument.AFTER)
        return self._status(doc, worker)

    def check(self, job_id: str, worker: str) -> str:
        return self._status(self.jobs.find_one({"_id": job_id}, {"deleted": 1, "lease_owner": 1, "state": 1}),
                            worker)

    def start(self, job_id: str, worker: str, transaction_time: str) -> bool:
        return self.jobs.update_one({"_id": job_id, "lease_owner": worker, "state": RUNNING},
                                    {"$set": {"transaction_time": transaction_time}}).matched_count == 1

    def complete(self, job_id: str, worker: str, result: dict, now: float) -> bool:
        return self.jobs.update_one(
            {"_id": job_id, "lease_owner": worker, "state": RUNNING, "deleted": False},
            {"$set": {"state": COMPLETED, "result": result, "completed_at": now, "progress": "completed",
                      "lease_owner": None, "lease_until": 0.0}}).matched_count == 1

    def fail(self, job_id: str, worker: str | None, message: str, now: float) -> bool:
        query: dict = {"_id": job_id, "state": RUNNING}
        if worker is not None:
            query["lease_owner"] = worker
        return self.jobs.update_one(query, {"$set": {"state": FAILED, "error": message, "completed_at": now,
                                                     "progress": "failed", "lease_owner": None,
                                                     "lease_until": 0.0}}).matched_count == 1

    def release(self, job_id: str, worker: str) -> None:
        self.jobs.update_one({"_id": job_id, "lease_owner": worker, "state": RUNNING, "attempts": {"$gt": 0}},
                             {"$set": {"lease_until": 0.0, "progress": "queued again"}, "$inc": {"attempts": -1}})

    def mark_deleted(self, job_id: str) -> bool:
        return self.jobs.update_one({"_id": job_id, "deleted": False}, {"$set": {"deleted": True}}).matched_count == 1

    def reapable(self, now: float, retention: float) -> list[Job]:
        docs = self.jobs.find({"$or": [
            {"deleted": True, "$or": [{"state": {"$ne": RUNNING}}, {"lease_until": {"$lt": now}}]},
            {"state": {"$in": [COMPLETED, FAILED]}, "completed_at": {"$lt": now - retention}},
            {"state": RUNNING, "lease_until": {"$lt": now}, "attempts": {"$gte": MAX_ATTEMPTS}},
        ]}).limit(100)
        return [self._to_job(d) for d in docs]

    def purge(self, job_id: str, now: float, worker: str | None = None) -> bool:
        free: list[dict] = [{"state": {"$ne": RUNNING}}, {"lease_until": {"$lt": now}}]
        if worker is not None:
            free.append({"lease_owner": worker})
        return self.jobs.delete_one({"_id": job_id, "$or": free}).deleted_count == 1
