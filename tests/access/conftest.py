"""Fixtures for the SMART resource-server tests (helpers in access_helpers.py)."""
from __future__ import annotations

import pytest
from access_helpers import BASE, RECORD, Smart, admin_headers
from record_helpers import FakeClock, cast
from joserfc.jwk import RSAKey

from fhir_server.access.smart import build_gate
from fhir_server.app import create_app
from fhir_server.settings import Settings


@pytest.fixture(scope="session")
def signing_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}, auto_kid=True)


@pytest.fixture(scope="session")
def other_key() -> RSAKey:
    """A key the server does not trust (forgeries)."""
    return RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}, auto_kid=True)


@pytest.fixture
def smart(store, engine, signing_key, tmp_path) -> Smart:
    """An app whose SmartGate trusts ``signing_key``, with a revocation set the test can fill."""
    # tracing off: a patient's traces are in her compartment, so they would show in the wildcard includes and
    # $everything these tests compare exactly (traces are tested in tests/audit)
    settings = Settings(base_url=BASE, max_body_bytes=1_000_000, otp_outbox=str(tmp_path / "outbox"),
                        audit=False)
    revoked: set = set()
    jwks = {"keys": [signing_key.as_dict(private=False)]}
    gate = build_gate(settings, lambda: jwks, revoked.__contains__)
    app = create_app(settings, store=store, gate=gate, engine=engine)
    return Smart(app.test_client(), signing_key, revoked)


@pytest.fixture
def record(smart) -> Smart:
    """Patients A (pa) and B (pb) with observations and conditions, written with a backend token."""
    for resource in RECORD:
        response = smart.send("PUT", f"/fhir/{resource['resourceType']}/{resource['id']}", resource,
                              admin_headers(smart))
        assert response.status_code in (200, 201), response.get_json()
    return smart


# -- the record-rule scenarios (record_helpers.py) ---------------------------------------------------
@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dmp(store, engine, signing_key: RSAKey, tmp_path, clock) -> Smart:
    settings = Settings(base_url=BASE, max_body_bytes=1_000_000, otp_outbox=str(tmp_path / "outbox"), clock=clock)
    jwks = {"keys": [signing_key.as_dict(private=False)]}
    app = create_app(settings, store=store, gate=build_gate(settings, lambda: jwks), engine=engine)
    smart = Smart(app.test_client(), signing_key)
    smart.outbox = tmp_path / "outbox"
    system = admin_headers(smart)
    for resource in cast():
        response = smart.send("PUT", f"/fhir/{resource['resourceType']}/{resource['id']}", resource, system)
        assert response.status_code in (200, 201), response.get_json()
    return smart
