"""The asynchronous, batched trace writer (docs/adr/0008-traceability.md).

Requests hand their :class:`~fhir_server.audit.model.AuditRecord` to :meth:`AuditWriter.submit`, which
only appends it to a bounded queue. One background thread per process takes whatever is queued (up to
``max_batch``, after letting the first record wait ``linger`` seconds for company), builds the
AuditEvents and writes them in ONE store transaction through the server-side write path (stamped,
indexed, no gate: traces are the server's own): one commit and one fsync for a batch. Under load,
batches also form while the previous one commits; when idle the thread waits for the next record, and exits after
``idle_exit`` seconds without any (it is started again by the next record), so short-lived applications
(tests, CLI commands) leave no thread behind.

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
import uuid
import weakref
from collections import deque
from typing import Any, Callable

from fhir_server.model import jsonio
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

    def __init__(self, write_batch: Callable[[list], None], *, max_queue: int = 1_000, max_batch: int = 100,
                 linger: float = 0.1, idle_exit: float = 2.0):
        self.write_batch = write_batch
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
        """Queue one record; returns at once unless the queue is full (then waits for room)."""
        if self._pid != os.getpid():  # forked (gunicorn worker): the parent's queue and thread are not ours
            self._reset()
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
    """Writes a batch of records as AuditEvents in one store transaction (the server-side write path:
    ``meta`` stamped as any version, index extracted, no gate and no client-facing checks)."""

    def __init__(self, server: Any, build: Callable[[Any], dict]):
        from fhir_server.audit.index import TraceIndexer, probe_records
        self.server = server
        self.build = build
        self.indexer = TraceIndexer(lambda: server.indexer, lambda: server.engine.registry,
                                    lambda: [self._stamped(build(r), "probe") for r in probe_records()])

    def _stamped(self, event: dict, rid: str) -> dict:
        return self.server.resources.stamp(event, rid, 1, self.server.resources.clock())

    def __call__(self, records: list) -> None:
        events = []
        for record in records:
            # give the GIL away between two traces: a request thread waiting on it would otherwise wait for the
            # interpreter's switch interval (5 ms) each time it comes back from I/O, and its latency explode
            time.sleep(0)
            try:
                events.append(self.build(record))
            except Exception:  # one odd record must not lose the others
                log.exception("a trace could not be built")
        if not events:
            return
        rows = []
        for event in events:  # everything but the store's own work happens before its write lock is taken
            stamped = self._stamped(event, str(uuid.uuid4()))
            now = stamped["meta"]["lastUpdated"]
            rows.append((StoredResource("AuditEvent", stamped["id"], 1, now, False, jsonio.dumps(stamped), "POST"),
                         self.indexer.index(stamped), None))
        # through the store's group commit, with this process's other writers: a trace batch and the requests'
        # creates share commits and queue for the write lock instead of polling SQLite for it
        self.server.store.atomically(lambda tx: tx.put_many(rows))  # creates in bulk (one statement per table)
