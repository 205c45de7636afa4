"""Bulk export fixtures: an app whose job store and files live under the test's own directory."""
from __future__ import annotations

from pathlib import Path

from fhir_server.access.gate import AccessGate, OpenGate
from fhir_server.app import create_app
from fhir_server.bulk import BulkExports, BulkSettings
from fhir_server.settings import Settings


def make_bulk_app(store, engine, directory: Path, gate: AccessGate | None = None, **settings):
    """An app with a job store and worker writing under ``directory``; the worker thread is not started
    (tests run jobs synchronously or start it themselves)."""
    # tracing off: traces written in the background would land in the system exports these tests count
    # (bulk requests' traces are tested in tests/audit)
    app = create_app(Settings(insecure_no_auth=True, max_body_bytes=1_000_000, audit=False), store=store,
                     gate=gate or OpenGate(), engine=engine)
    server = app.extensions["fhir"]
    server.bulk.worker.stop()
    server.bulk = BulkExports(server, BulkSettings(directory=str(directory), **settings))
    return app
