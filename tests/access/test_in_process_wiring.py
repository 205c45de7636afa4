"""The default wiring of ``create_app``: the SmartGate trusts the in-process authorization server's keys,
derives the same audience and issuer, and sees its revocations at once."""
from __future__ import annotations

import time
import uuid

from joserfc import jwt
from joserfc.jwk import RSAKey

import auth
from auth.registry import register_client
from fhir_server.access.smart import SmartGate
from fhir_server.app import create_app
from fhir_server.settings import Settings


def test_a_token_of_the_in_process_authorization_server_is_accepted_then_revoked(store, engine, tmp_path):
    app = create_app(Settings(otp_outbox=str(tmp_path / "outbox")), store=store, engine=engine)
    assert isinstance(app.extensions["fhir"].gate, SmartGate)
    client = app.test_client()
    assert client.get("/fhir/Patient").status_code == 401

    key = RSAKey.generate_key(2048, auto_kid=True)
    record, _ = register_client(app.extensions["smart_auth"].store, name="Backend", now=time.time(),
                                scope="system/*.rs", jwks={"keys": [key.as_dict(private=False)]},
                                grant="client_credentials")
    client_id = record["client_id"]
    now = int(time.time())
    assertion = jwt.encode({"alg": "RS384", "kid": key.kid, "typ": "JWT"},
                           {"iss": client_id, "sub": client_id, "aud": "http://localhost/auth/token",
                            "exp": now + 300, "jti": uuid.uuid4().hex}, key, algorithms=["RS384"])
    response = client.post("/auth/token", data={
        "grant_type": "client_credentials", "scope": "system/*.rs", "client_assertion": assertion,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    assert response.status_code == 200, response.json
    token = response.json["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/fhir/Patient", headers=headers).status_code == 200
    assert client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=headers).status_code == 403
    # another host name is another audience
    assert client.get("/fhir/Patient", headers=headers, base_url="http://127.0.0.1").status_code == 401

    claims = auth.token_authority(store).decode(token)
    auth.token_authority(store).revoke(claims["jti"], claims["exp"])
    refused = client.get("/fhir/Patient", headers=headers)
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["WWW-Authenticate"]



def _backend_token(client, store_of_auth, scope: str) -> tuple[str, str]:
    key = RSAKey.generate_key(2048, auto_kid=True)
    record, _ = register_client(store_of_auth, name="Backend", now=time.time(), scope=scope,
                                jwks={"keys": [key.as_dict(private=False)]}, grant="client_credentials")
    now = int(time.time())
    assertion = jwt.encode({"alg": "RS384", "kid": key.kid, "typ": "JWT"},
                           {"iss": record["client_id"], "sub": record["client_id"],
                            "aud": "http://localhost/auth/token", "exp": now + 300, "jti": uuid.uuid4().hex},
                           key, algorithms=["RS384"])
    response = client.post("/auth/token", data={
        "grant_type": "client_credentials", "scope": scope, "client_assertion": assertion,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    assert response.status_code == 200, response.json
    return record["client_id"], response.json["access_token"]


def test_a_revoked_client_loses_its_tokens_and_its_subscriptions(store, engine, tmp_path, monkeypatch):
    import auth.tokens
    from auth.registry import revoke_client
    monkeypatch.setattr(auth.tokens, "CLIENT_CHECK_TTL", 0.0)  # no cached status: the test sees it at once
    app = create_app(Settings(otp_outbox=str(tmp_path / "outbox")), store=store, engine=engine)
    client, auth_store = app.test_client(), app.extensions["smart_auth"].store
    feed_id, feed_token = _backend_token(client, auth_store, "system/Subscription.crs system/Observation.rs")
    _, other_token = _backend_token(client, auth_store, "system/*.cruds")
    feed, other = ({"Authorization": f"Bearer {t}"} for t in (feed_token, other_token))
    subscription = {"resourceType": "Subscription", "status": "requested", "reason": "feed",
                    "criteria": "Observation?code=2345-7",
                    "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook"}}
    created = client.post("/fhir/Subscription", json=subscription, headers=feed)
    assert created.status_code == 201, created.json
    assert client.get("/fhir/Observation", headers=feed).status_code == 200

    revoke_client(auth_store, feed_id, time.time())
    refused = client.get("/fhir/Observation", headers=feed)
    assert refused.status_code == 401 and "revoked" in refused.json["issue"][0]["diagnostics"]
    assert client.get("/fhir/Observation", headers=other).status_code == 200  # other clients are unaffected
    # its subscription is turned off at its next match, with the reason
    observation = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": "2345-7"}]}}
    assert client.post("/fhir/Observation", json=observation, headers=other).status_code == 201
    stored = client.get(f"/fhir/Subscription/{created.json['id']}", headers=other).json
    assert stored["status"] == "off" and feed_id in stored["error"] and "revoked" in stored["error"]
