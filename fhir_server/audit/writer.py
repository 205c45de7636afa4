"""The asynchronous, batched trace writer (docs/adr/0008-traceability.md).

Requests hand their :class:`~fhir_server.audit.model.AuditRecord` to :meth:`AuditWriter.submit`, which
only appends it to a bounded queue. One background thread per process takes whatever is queued (up to
``max_batch``), builds the AuditEvents and writes them in ONE store transaction through the server-side
write path (stamped, indexed, no gate: traces are the server's own). Under load, batches form by
themselves while the previous one commits; when idle the thread waits for the next record, and exits after
``idle_exit`` seconds without any (it is started again by the next record), so short-lived applications
(tests, CLI commands) leave no thread behind.

Durability: a record is in memory until its batch commits; a crash loses what is queued (normally the last
few milliseconds of traces). Shutdown (``atexit``) and :meth:`flush` drain the queue. A full queue makes
the submitting request wait for room (back-pressure): traces are never dropped to keep a request fast.
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

    def __init__(self, write_batch: Callable[[list], None], *, max_queue: int = 10_000, max_batch: int = 500,
                 idle_exit: float = 2.0):
        self.write_batch = write_batch
        self.max_queue = max(1, max_queue)
        self.max_batch = max(1, max_batch)
        self.idle_exit = idle_exit
        self.written = 0  # records written (this process)
        self.failed = 0  # records lost to a failing store
        self._reset()
        _WRITERS.add(self)

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # a record was queued / room was made / all written
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
                self._ready.wait(1.0)
            self._queue.append(record)
            self._pending += 1
            self._ensure_thread()
            self._ready.notify_all()

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
            while self._pending:
                self._ensure_thread()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ready.wait(min(left, 0.5))
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
                    self._ready.wait(self.idle_exit)
                if not self._queue:
                    if self._thread is me:
                        self._thread = None
                    self._ready.notify_all()
                    return
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                self._ready.notify_all()  # room for waiting submitters
            try:
                self.write_batch(batch)
                self.written += len(batch)
            except Exception:
                self.failed += len(batch)
                log.exception("%d trace(s) could not be written", len(batch))
            finally:
                with self._lock:
                    self._pending -= len(batch)
                    self._ready.notify_all()


class StoreBatchWriter:
    """Writes a batch of records as AuditEvents in one store transaction (the server-side write path:
    ``meta`` stamped as any version, index extracted, no gate and no client-facing checks)."""

    def __init__(self, server: Any, build: Callable[[Any], dict]):
        self.server = server
        self.build = build

    def __call__(self, records: list) -> None:
        events = []
        for record in records:
            try:
                events.append(self.build(record))
            except Exception:  # one odd record must not lose the others
                log.exception("a trace could not be built")
        if not events:
            return
        resources = self.server.resources
        indexer = self.server.indexer
        with self.server.store.transaction() as tx:
            for event in events:
                rid = str(uuid.uuid4())
                now = resources.clock()
                stamped = resources.stamp(event, rid, 1, now)
                stored = StoredResource("AuditEvent", rid, 1, now, False, jsonio.dumps(stamped), "POST")
                tx.put(stored, indexer.index(stamped), expected_version=None)
