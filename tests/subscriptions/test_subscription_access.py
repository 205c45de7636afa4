"""Who may subscribe, with SMART access tokens: the Subscription permission and unlimited search on the
criteria's type (system clients); the owner is recorded from the token."""
from __future__ import annotations

import json
import time
import uuid

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from fhir_server.access.smart import build_gate
from fhir_server.app import create_app
from fhir_server.settings import Settings
from fhir_server.subscriptions import OWNER_SYSTEM

BASE = "http://fhir.test/fhir"
FHIR_JSON = "application/fhir+json"
SUBSCRIPTION = {"resourceType": "Subscription", "status": "requested", "reason": "lab results",
                "criteria": "Observation?code=http://loinc.org|2345-7",
                "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}}


@pytest.fixture(scope="module")
def key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}, auto_kid=True)


@pytest.fixture
def smart(store, engine, key):
    settings = Settings(base_url=BASE, max_body_bytes=1_000_000)
    jwks = {"keys": [key.as_dict(private=False)]}
    app = create_app(settings, store=store, gate=build_gate(settings, lambda: jwks, lambda jti: False),
                     engine=engine)
    yield app.test_client()
    app.extensions["fhir"].subscriptions.close()


def headers(key: RSAKey, scope: str, **claims) -> dict:
    now = int(time.time())
    body = {"iss": "http://fhir.test/auth", "aud": BASE, "sub": "feed-client", "exp": now + 600, "iat": now,
            "jti": uuid.uuid4().hex, "client_id": "insurer-feed", "scope": scope, "role": "system", **claims}
    token = jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, body, key, algorithms=["RS256"])
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}


def create(client, key, scope, **claims):
    return client.post("/fhir/Subscription", data=json.dumps(SUBSCRIPTION), headers=headers(key, scope, **claims))


def test_a_system_client_subscribes_and_is_recorded_as_owner(smart, key):
    response = create(smart, key, "system/Subscription.cruds system/Observation.rs")
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["status"] == "active"
    assert {"system": OWNER_SYSTEM, "code": "insurer-feed"} in body["meta"]["tag"]


def test_a_client_that_may_not_search_the_criteria_type_may_not_subscribe(smart, key):
    assert create(smart, key, "system/Subscription.cruds system/Patient.rs").status_code == 403


def test_a_client_limited_by_granular_scopes_may_not_subscribe(smart, key):
    response = create(smart, key, "system/Subscription.cruds system/Observation.rs?category=laboratory")
    assert response.status_code == 403
    assert "Subscription.criteria" in response.get_json()["issue"][0]["expression"]


def test_patient_tokens_may_not_subscribe(smart, key):
    response = create(smart, key, "patient/*.cruds launch/patient", patient="pa", role="patient",
                      fhirUser="Patient/pa", sub="account-pa")
    assert response.status_code == 403
    assert smart.get("/fhir/Subscription", headers=headers(key, "system/Subscription.rs")).get_json()["total"] == 0
