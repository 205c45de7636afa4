"""Fixtures of the care history feed tests (helpers in feed_helpers.py)."""
from __future__ import annotations

import pytest
from feed_helpers import BASE, NOW, PATIENTS, FakeClock, Feed
from joserfc.jwk import RSAKey

from fhir_server.access.smart import build_gate
from fhir_server.app import create_app
from fhir_server.bulk import BulkExports, BulkSettings
from fhir_server.settings import Settings



@pytest.fixture(scope="session")
def signing_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}, auto_kid=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def feed(store, engine, signing_key, clock, tmp_path) -> Feed:
    """A SMART-gated app on the fake clock, profiles enforced (as deployed), bulk jobs under tmp_path (the
    tests run the worker), and the records of patients pa and pb."""
    settings = Settings(base_url=BASE, max_body_bytes=1_000_000, clock=clock, profile_mode="enforce")
    jwks = {"keys": [signing_key.as_dict(private=False)]}
    gate = build_gate(settings, lambda: jwks, lambda jti: False)
    app = create_app(settings, store=store, gate=gate, engine=engine)
    server = app.extensions["fhir"]
    server.bulk = BulkExports(server, BulkSettings(directory=str(tmp_path / "bulk")))
    server.imports.install()
    feed = Feed(app.test_client(), signing_key, server, clock)
    for patient in PATIENTS:
        response = feed.put(f"/fhir/Patient/{patient['id']}", patient, feed.admin)
        assert response.status_code == 201, response.get_json()
    return feed
