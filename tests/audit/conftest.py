"""Fixtures for the traceability tests: the SMART test app of tests/access (tokens signed with a test key)
and the record of two patients; helpers to wait for the traces and read them back."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for folder in ("access", "auth"):  # the SMART helpers live next to their own tests
    path = str(HERE.parent / folder)
    if path not in sys.path:
        sys.path.insert(0, path)

from access_helpers import BASE, RECORD, Smart, admin_headers  # noqa: E402
from audit_helpers import mark  # noqa: E402
from joserfc.jwk import RSAKey  # noqa: E402

from fhir_server.access.smart import build_gate  # noqa: E402
from fhir_server.app import create_app  # noqa: E402
from fhir_server.settings import Settings  # noqa: E402


@pytest.fixture(scope="session")
def signing_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}, auto_kid=True)


@pytest.fixture
def smart(store, engine, signing_key, tmp_path) -> Smart:
    settings = Settings(base_url=BASE, max_body_bytes=1_000_000, otp_outbox=str(tmp_path / "outbox"))
    jwks = {"keys": [signing_key.as_dict(private=False)]}
    gate = build_gate(settings, lambda: jwks, set().__contains__)
    app = create_app(settings, store=store, gate=gate, engine=engine)
    smart = Smart(app.test_client(), signing_key, set())
    smart.app = app
    return smart


@pytest.fixture
def record(smart) -> Smart:
    """Patients A (pa) and B (pb), observations and conditions (tests/access/access_helpers.py), written with
    a backend token; then the traces of that set-up are set aside: ``traces()`` returns the later ones."""
    for resource in RECORD:
        response = smart.send("PUT", f"/fhir/{resource['resourceType']}/{resource['id']}", resource,
                              admin_headers(smart))
        assert response.status_code in (200, 201), response.get_json()
    mark(smart)
    return smart
