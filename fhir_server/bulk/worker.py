"""The background worker: one thread per process claims export jobs and runs them.

Claims are atomic with a lease (see :mod:`fhir_server.bulk.jobs`), so with several server
processes exactly one runs a job. Files go to ``<directory>/<job id>/attempt-<n>/``: a run
that takes over a job whose worker died first removes the whole job directory, so nothing
partial survives, and a presumed-dead worker still writing can only touch its own attempt
directory (it stops at its next page when it sees the lease is gone).

The same loop reaps: deleted jobs (a client's DELETE) once no live worker holds them,
finished jobs older than the retention period, and jobs whose worker died too often.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fhir_server.bulk.export import Exporter, GroupGone
from fhir_server.bulk.jobs import CANCELLED, COMPLETED, FAILED, KEEP_GOING, LOST, RUNNING, Job, JobStore

log = logging.getLogger("fhir_server.bulk")


def transaction_time(margin: float) -> str:
    """The manifest's ``transactionTime``: the start of the run, minus ``margin`` seconds.

    A write stamps ``lastUpdated`` before it commits; one in flight when the run starts may
    commit after the run passed its place. Every change stamped before ``transactionTime`` was
    committed before the run began, so a client's next ``_since=transactionTime`` export misses
    nothing (it may see again a few changes of the margin).
    """
    moment = datetime.now(timezone.utc) - timedelta(seconds=margin)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class Stopping(Exception):
    """The worker is shutting down: give the job back."""


class Cancelled(Exception):
    """The client deleted the job."""


class LeaseLost(Exception):
    """Another worker took the job over (this one was presumed dead)."""


class JobControl:
    """Called by the exporter after each page: stop flags, lease renewal and progress."""

    def __init__(self, worker: "BulkWorker", job: Job):
        self.worker = worker
        self.job = job
        self.settings = worker.settings
        self.last_beat = time.monotonic()

    def page_done(self, progress: str) -> None:
        worker = self.worker
        if worker.stopping.is_set():
            raise Stopping()
        now = time.monotonic()
        if now - self.last_beat >= self.settings.progress_interval:
            status = worker.jobs.heartbeat(self.job.id, worker.worker_id, time.time() + self.settings.lease_seconds,
                                           progress[:99])
            self.last_beat = now
        else:
            status = worker.jobs.check(self.job.id, worker.worker_id)
        if status == CANCELLED:
            raise Cancelled()
        if status == LOST:
            raise LeaseLost()


class BulkWorker:
    def __init__(self, jobs: JobStore, exporter: Exporter, settings: Any):
        self.jobs = jobs
        self.exporter = exporter
        self.settings = settings
        self.root = Path(settings.directory)
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._last_reap = 0.0
        self.worker_id = self._new_id()

    @staticmethod
    def _new_id() -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- thread ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread of this process (idempotent; a forked child starts its own)."""
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.worker_id = self._new_id()
        self.stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="bulk-export-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop after its current page (a running job is given back) and wait."""
        self.stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread() \
                and self._pid == os.getpid():
            thread.join(timeout)

    def wake(self) -> None:
        """A job was queued or deleted in this process: look (and reap) now rather than at the next poll."""
        self._last_reap = 0.0
        self._wake.set()

    def _loop(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    worked = self.run_once()
                except Exception:
                    log.exception("bulk export worker iteration failed")
                    worked = False
                if not worked:
                    self._wake.wait(self.settings.poll_interval)
                    self._wake.clear()
        finally:
            self.jobs.close_thread()

    # -- one step (tests call these directly) ------------------------------------------------
    def run_once(self) -> bool:
        """Reap if due, then claim and run one job; False when there was nothing to do."""
        self.reap()
        job = self.jobs.claim(self.worker_id, time.time(), self.settings.lease_seconds)
        if job is None:
            return False
        self.run(job)
        return True

    def run_pending(self, limit: int = 100) -> int:
        """Run queued jobs until none is left (synchronous use: tests, benchmarks)."""
        done = 0
        while done < limit and self.run_once():
            done += 1
        self.reap(force=True)
        return done

    def run(self, job: Job) -> None:
        job_dir = self.root / job.id
        attempt = f"attempt-{job.attempts}"
        shutil.rmtree(job_dir, ignore_errors=True)  # whatever an earlier attempt left
        (job_dir / attempt).mkdir(parents=True)
        if not self.jobs.start(job.id, self.worker_id, transaction_time(self.settings.transaction_margin)):
            return
        log.info("bulk export %s: attempt %d by %s", job.id, job.attempts, self.worker_id)
        try:
            result = self.exporter.run(job, job_dir / attempt, JobControl(self, job))
        except Cancelled:
            log.info("bulk export %s cancelled", job.id)
            self._forget(job, job_dir)
        except LeaseLost:
            log.warning("bulk export %s was taken over by another worker; stopping", job.id)
        except Stopping:
            log.info("bulk export %s given back at shutdown", job.id)
            self.jobs.release(job.id, self.worker_id)
        except Exception as exc:
            if self.jobs.check(job.id, self.worker_id) == LOST:
                log.warning("bulk export %s failed after losing its lease: %s", job.id, exc)
                return
            if isinstance(exc, GroupGone):
                message = str(exc)
            else:
                log.exception("bulk export %s failed", job.id)
                message = "The export failed because of an internal error; it has been logged"
            shutil.rmtree(job_dir, ignore_errors=True)
            self.jobs.fail(job.id, self.worker_id, message, time.time())
        else:
            result["dir"] = attempt
            if not self.jobs.complete(job.id, self.worker_id, result, time.time()):
                if self.jobs.check(job.id, self.worker_id) == CANCELLED:
                    self._forget(job, job_dir)

    def _forget(self, job: Job, job_dir: Path) -> None:
        if self.jobs.purge(job.id, time.time(), self.worker_id):
            shutil.rmtree(job_dir, ignore_errors=True)

    def reap(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_reap < self.settings.reap_interval:
            return
        self._last_reap = now
        for job in self.jobs.reapable(now, self.settings.retention_seconds):
            job_dir = self.root / job.id
            if job.deleted or job.state in (COMPLETED, FAILED):
                if self.jobs.purge(job.id, now):
                    shutil.rmtree(job_dir, ignore_errors=True)
            elif job.state == RUNNING:
                if self.jobs.fail(job.id, None, "The export was interrupted too many times", now):
                    shutil.rmtree(job_dir, ignore_errors=True)
        self._sweep_orphans(now)

    def _sweep_orphans(self, now: float) -> None:
        """Directories whose job record is gone (the process died between purge and removal)."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            name = entry.name
            if len(name) != 32 or not entry.is_dir() or any(c not in "0123456789abcdef" for c in name):
                continue
            try:
                old = now - entry.stat().st_mtime > self.settings.orphan_seconds
            except OSError:
                continue
            if old and self.jobs.get(name) is None:
                shutil.rmtree(entry, ignore_errors=True)


__all__ = ["BulkWorker", "Cancelled", "JobControl", "KEEP_GOING", "LeaseLost", "Stopping"]
