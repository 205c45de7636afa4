"""Shared fixtures: the compiled engine (once per session), a store per backend, a test client.

Every store-dependent test runs on SQLite and on the MongoDB backend: through
mongomock by default, and against a real server when ``MONGODB_URI`` is set.
"""
from __future__ import annotations

import pytest

from fhir_server.access.gate import OpenGate
from fhir_server.app import Engine, create_app
from fhir_server.settings import Settings

from backends import BACKENDS, make_store


@pytest.fixture(scope="session")
def engine() -> Engine:
    """What the R4 definitions compile into (validator, search parameters): built once, shared, read-only."""
    return Engine.build()


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
