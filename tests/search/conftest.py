"""The shared, read-only search data set, loaded once per module and per store."""
from __future__ import annotations

import pytest

from backends import BACKENDS, make_store
from fhir_server.access.gate import OpenGate
from fhir_server.app import create_app
from fhir_server.settings import Settings
from search_api_data import load


@pytest.fixture(scope="module", params=BACKENDS, name="dataset")
def dataset_fixture(request, tmp_path_factory, engine):
    """A test client on a fresh store holding :data:`RESOURCES` (read-only: do not write through it)."""
    store = make_store(request.param, tmp_path_factory.mktemp(request.param))
    # tracing off: the searches over every type and _revinclude=* compare exact result sets (traces: tests/audit)
    app = create_app(Settings(insecure_no_auth=True, max_body_bytes=1_000_000, audit=False), store=store,
                     gate=OpenGate(), engine=engine)
    client = app.test_client()
    load(client)
    yield client
    store.close()
