"""Bulk Data export (``$export``, Bulk Data Access IG 2.0.0): jobs, the exporter and its worker.

:class:`BulkExports` holds the three for one application (``FHIRServer.bulk``); the REST
side is :mod:`fhir_server.http.bulk_api`. Jobs live in the resource store's database, the
work runs in one background thread per process (never in a request), and the files are
written under :attr:`BulkSettings.directory`, one directory per job.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from fhir_server.bulk.export import Exporter
from fhir_server.bulk.jobs import Job, JobStore, job_store_for
from fhir_server.bulk.worker import BulkWorker


@dataclass(frozen=True)
class BulkSettings:
    directory: str = "var/bulk"  # files go to <directory>/<job id>/; one directory per database
    max_file_bytes: int = 100_000_000  # a type's file is split above this size...
    max_file_resources: int | None = None  # ...or above this many resources
    page_size: int = 1000  # resources read from the store per query, at most...
    page_bytes: int = 8_000_000  # ...and about this many bytes of them (large resources: smaller pages)
    member_chunk: int = 50  # Group members per compartment query (an OR of one clause per member and link)
    lease_seconds: float = 60.0  # a job whose worker is silent this long is taken over
    progress_interval: float = 1.0  # seconds between lease renewals / X-Progress updates
    poll_interval: float = 2.0  # an idle worker looks for jobs this often
    reap_interval: float = 30.0
    retention_seconds: float = 24 * 3600  # finished jobs and their files are removed after this
    orphan_seconds: float = 3600  # job directories without a job record are removed after this
    retry_after: int = 5  # Retry-After of the status responses in progress
    transaction_margin: float = 2.0  # transactionTime = start of the run minus this (see worker.transaction_time)
    max_active_per_client: int = 5  # more queued/running jobs for one client: 429

    @classmethod
    def from_env(cls, **overrides: Any) -> "BulkSettings":
        env = os.environ
        values: dict[str, Any] = {}
        for name, key, kind in (("directory", "FHIR_SERVER_BULK_DIR", str),
                                ("max_file_bytes", "FHIR_SERVER_BULK_MAX_FILE_BYTES", int),
                                ("max_file_resources", "FHIR_SERVER_BULK_MAX_FILE_RESOURCES", int),
                                ("lease_seconds", "FHIR_SERVER_BULK_LEASE_SECONDS", float),
                                ("retention_seconds", "FHIR_SERVER_BULK_RETENTION_SECONDS", float),
                                ("max_active_per_client", "FHIR_SERVER_BULK_MAX_ACTIVE", int)):
            if env.get(key):
                values[name] = kind(env[key])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class BulkExports:
    """The job store (in the resource store's database), the exporter and this process's worker."""

    def __init__(self, server: Any, settings: BulkSettings | None = None):
        self.settings = settings or BulkSettings.from_env()
        self.jobs: JobStore | None = job_store_for(server.store)  # None: this store cannot hold jobs
        self.exporter = Exporter(server, self.settings)
        self.worker: BulkWorker | None = BulkWorker(self.jobs, self.exporter, self.settings) if self.jobs else None

    def start_worker(self) -> None:
        """Start this process's worker thread (idempotent; call after forking, e.g. in each server worker process)."""
        if self.worker is not None:
            self.worker.start()

    def stop_worker(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current page; a running job is given back to the other processes."""
        if self.worker is not None:
            self.worker.stop(timeout)


def worker_enabled() -> bool:
    """``FHIR_SERVER_BULK_WORKER=0`` keeps a process from running exports (it still accepts kick-offs)."""
    return os.environ.get("FHIR_SERVER_BULK_WORKER", "1") != "0"


__all__ = ["BulkExports", "BulkSettings", "BulkWorker", "Exporter", "Job", "JobStore", "worker_enabled"]
