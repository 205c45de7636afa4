"""The asynchronous, batched trace writer (docs/adr/0008-traceability.md).

Requests hand their :class:`~fhir_server.audit.model.AuditRecord` to :meth:`AuditWriter.submit`, which
turns it into what the store writes (:meth:`StoreBatchWriter.prepare`: the AuditEvent built, stamped,
serialised and indexed, in the request's own thread) and appends that to a bounded queue. One background
thread per process takes whatever is queued (up to ``max_batch``, after letting the first record wait
``linger`` seconds for company) and writes it in ONE store transaction through the server-side write path
(no gate: traces are the server's own): one commit and one fsync for a batch. Under load, batches also form
while the previous one commits; when idle the thread waits for the next record, and exits after
``idle_exit`` seconds without any (it is started again by the next record), so short-lived applications
(tests, CLI commands) leave no thread behind.

Why the request builds its trace: the building is pure Python. Done by the writer thread, a batch of
traces held the interpreter lock for long stretches while the request threads of the process waited for
it (each return from I/O waits up to the interpreter's switch interval, 5 ms), and a writer that gave the
lock away after each trace was itself starved, let the queue fill and blocked the requests. In the request
it costs each request its own share (~0.2 ms of CPU), and the writer thread is left with the store's work, most
of which SQLite does without the interpreter lock.

Durability: a record is in memory until its batch commits; a crash loses what is queued (at most
``max_queue`` traces per process, normally those of the last few milliseconds). Shutdown (``atexit``) and
:meth:`flush` drain the queue. A full queue makes the submitting request wait for room (back-pressure):
traces are never dropped to keep a request fast, and a server never answers faster than it traces.
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable

from fhir_server.model import jsonio
from fhir_server.model.ids import new_id
from fhir_server.store.base import StoredResource

log = logging.getLogger("fhir_server.audit")

_WRITERS: "weakref.WeakSet[AuditWriter]" = weakref.WeakSet()


def flush_all(timeout: float = 10.0) -> None:
    """Drain every live writer of this process (registered with ``atexit``)."""
    for writer in list(_WRITERS):
        try:
            writer.flush(timeout)
        except Exception:  # shutting down: log and carry on with the others
            log.exception("flushing traces at exit failed")


atexit.register(flush_all)


class AuditWriter:
    """A bounded queue drained by one background thread writing batches, one transaction each."""

    def __init__(self, write_batch: Callable[[list], None], *, prepare: Callable[[Any], Any] | None = None,
                 max_queue: int = 1_000, max_batch: int = 500, linger: float = 0.1, idle_exit: float = 2.0):
        self.write_batch = write_batch
        self.prepare = prepare  # run by the submitting thread: what ``write_batch`` gets for a record
        self.max_queue = max(1, max_queue)
        self.max_batch = max(1, max_batch)
        self.linger = linger  # seconds a first record waits for others to share its transaction (and fsync)
        self.idle_exit = idle_exit
        self._flushing = 0  # flush() callers waiting: no lingering then
        self.written = 0  # records written (this process)
        self.failed = 0  # records lost to a failing store
        self._reset()
        _WRITERS.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # the writer waits on _work (a first record after an empty queue, a full batch, a flush); submitters
        # waiting for room and flushers wait on _done (a batch taken or written). A submit wakes the writer only
        # when the queue was empty or a batch is full: no thread switch per request.
        self._work = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._queue: deque = deque()
        self._pending = 0  # queued + being written
        self._thread: threading.Thread | None = None

    # -- the request side ----------------------------------------------------------------------
    def submit(self, record: Any) -> None:
        """Prepare one record (``prepare``) and queue it; returns at once unless the queue is full (then waits
        for room). A record that cannot be prepared is logged and counted as failed, never raised."""
        if self._pid != os.getpid():  # forked (gunicorn worker): the parent's queue and thread are not ours
            self._reset()
        if self.prepare is not None:
            try:
                record = self.prepare(record)
            except Exception:  # one odd record must not fail its request
                log.exception("a trace could not be built")
                with self._lock:
                    self.failed += 1
                return
        with self._lock:
            while len(self._queue) >= self.max_queue:
                self._ensure_thread()
                self._work.notify()
                self._done.wait(1.0)
            self._queue.append(record)
            self._pending += 1
            size = len(self._queue)
            if self._thread is None:
                self._ensure_thread()
            elif size == 1 or size == self.max_batch:
                self._work.notify()

    def _ensure_thread(self) -> None:  # under the lock
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every record queued so far is written (or failed); False on timeout."""
        if self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        with self._lock:
            self._flushing += 1
            try:
                while self._pending:
                    self._ensure_thread()
                    self._work.notify()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._done.wait(min(left, 0.5))
            finally:
                self._flushing -= 1
        return True

    @property
    def queued(self) -> int:
        return self._pending

    # -- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                if not self._queue:
                    self._work.wait(self.idle_exit)
                if not self._queue:
                    if self._thread is me:
                        self._thread = None
                    self._done.notify_all()
                    return
                # let a batch form: one commit (one fsync) for every trace of the next few milliseconds
                if len(self._queue) < self.max_batch and not self._flushing and self.linger > 0:
                    self._work.wait(self.linger)
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                self._done.notify_all()  # room for waiting submitters
            try:
                self.write_batch(batch)
                self.written += len(batch)
            except Exception:
                self.failed += len(batch)
                log.exception("%d trace(s) could not be written", len(batch))
            finally:
                with self._lock:
                    self._pending -= len(batch)
                    self._done.notify_all()


class StoreBatchWriter:
    """AuditEvents through the server-side write path (``meta`` stamped as any version, index extracted, no
    gate and no client-facing checks): :meth:`prepare` makes a record the row to store, in the request's
    thread; a call writes a batch of rows in one store transaction."""

    def __init__(self, server: Any, build: Callable[[Any], dict]):
        from fhir_server.audit.index import TraceIndexer, probe_records
        self.server = server
        self.build = build
        self.indexer = TraceIndexer(lambda: server.indexer, lambda: server.engine.registry,
                                    lambda: [self._stamped(build(r), "probe") for r in probe_records()])

    def _stamped(self, event: dict, rid: str) -> dict:
        return self.server.resources.stamp(event, rid, 1, self.server.resources.clock())

    def prepare(self, record: Any) -> tuple[StoredResource, Any, None]:
        """The AuditEvent of ``record`` as the store writes it: (version, index entries, expected version)."""
        stamped = self._stamped(self.build(record), new_id())
        return (StoredResource("AuditEvent", stamped["id"], 1, stamped["meta"]["lastUpdated"], False,
                               jsonio.dumps(stamped), "POST"), self.indexer.index(stamped), None)

    def __call__(self, rows: list) -> None:
        """Write prepared rows; through the store's group commit, with this process's other writers: a trace
        batch and the requests' creates share commits and queue for the write lock instead of polling SQLite."""
        self.server.store.atomically(lambda tx: tx.put_many(rows))  # creates in bulk (one statement per table)
