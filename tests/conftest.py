"""Shared fixtures: the compiled engine (once per session), a store per backend, a test client.

Every store-dependent test runs on SQLite and on the MongoDB backend: through
mongomock by default, and against a real server when ``MONGODB_URI`` is set.
"""
from __future__ import annotations

import os
import uuid

import pytest

from fhir_server.access.gate import OpenGate
from fhir_server.app import Engine, create_app
from fhir_server.settings import Settings

BACKENDS = ["sqlite", "mongo"]


@pytest.fixture(scope="session")
def engine() -> Engine:
    return Engine.build()


def make_store(backend: str, tmp_path):
    if backend == "sqlite":
        from fhir_server.store.sqlite import SQLiteStore
        return SQLiteStore(tmp_path / "fhir.sqlite3")
    from fhir_server.store.mongo import MongoStore
    uri = os.environ.get("MONGODB_URI")
    if uri:
        return MongoStore.from_url(uri.rstrip("/") + f"/test_{uuid.uuid4().hex[:12]}", drop_on_close=True)
    return MongoStore.from_url("mongomock://localhost/fhir")


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    store = make_store(request.param, tmp_path)
    yield store
    store.close()


@pytest.fixture
def app(store, engine):
    return create_app(Settings(insecure_no_auth=True, max_body_bytes=1_000_000), store=store, gate=OpenGate(),
                      engine=engine)


@pytest.fixture
def client(app):
    return app.test_client()
