"""SMART Backend Services: client_credentials with a private_key_jwt assertion (RFC 7523)."""
from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from auth.registry import register_client

TOKEN_URL = "http://localhost/auth/token"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def backend_client(env, key, scope="system/*.rs"):
    record, secret = register_client(env.smart.store, name="Insurer feed", now=env.clock(), scope=scope,
                                     jwks={"keys": [key.as_dict(private=False)]}, grant="client_credentials")
    assert secret is None and record["token_endpoint_auth_method"] == "private_key_jwt"
    return record["client_id"]


def assertion(env, client_id, key, alg="RS384", jti=None, aud=TOKEN_URL, lifetime=300, **overrides):
    now = int(env.clock())
    claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + lifetime, "jti": jti or uuid.uuid4().hex}
    claims.update(overrides)
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[alg])


def token_request(env, signed, scope="system/*.rs"):
    return env.client.post("/auth/token", data={"grant_type": "client_credentials", "scope": scope,
                                                "client_assertion_type": ASSERTION_TYPE,
                                                "client_assertion": signed})


@pytest.fixture
def rsa_key():
    return RSAKey.generate_key(2048, auto_kid=True)


def test_rs384_assertion_gets_a_system_token(env, rsa_key):
    client_id = backend_client(env, rsa_key)
    response = token_request(env, assertion(env, client_id, rsa_key))
    assert response.status_code == 200, response.json
    body = response.json
    assert body["token_type"] == "Bearer" and body["scope"] == "system/*.rs" and body["expires_in"] == 3600
    assert "refresh_token" not in body and "patient" not in body
    claims = env.smart.authority.decode(body["access_token"])
    assert claims["sub"] == client_id and claims["client_id"] == client_id and claims["role"] == "system"
    assert claims["aud"] == "http://localhost/fhir" and "patient" not in claims and "fhirUser" not in claims


def test_es384_assertion(env):
    key = ECKey.generate_key("P-384", auto_kid=True)
    client_id = backend_client(env, key)
    response = token_request(env, assertion(env, client_id, key, alg="ES384"))
    assert response.status_code == 200, response.json


def test_jti_replay_is_refused(env, rsa_key):
    client_id = backend_client(env, rsa_key)
    signed = assertion(env, client_id, rsa_key, jti="once")
    assert token_request(env, signed).status_code == 200
    replay = token_request(env, signed)
    assert replay.status_code == 400 and replay.json["error"] == "invalid_client"
    # a new assertion reusing the jti is refused too
    again = token_request(env, assertion(env, client_id, rsa_key, jti="once"))
    assert again.json["error"] == "invalid_client"


def test_bad_assertions_are_refused(env, rsa_key):
    client_id = backend_client(env, rsa_key)
    other_key = RSAKey.generate_key(2048, auto_kid=True)
    cases = {
        "wrong audience": assertion(env, client_id, rsa_key, aud="http://localhost/other"),
        "expired": assertion(env, client_id, rsa_key, lifetime=-120),
        "too long-lived": assertion(env, client_id, rsa_key, lifetime=3600),
        "iss differs from sub": assertion(env, client_id, rsa_key, iss="someone-else"),
        "signed by another key": jwt.encode({"alg": "RS384", "kid": rsa_key.kid},
                                            {"iss": client_id, "sub": client_id, "aud": TOKEN_URL,
                                             "exp": int(env.clock()) + 60, "jti": "x1"}, other_key,
                                            algorithms=["RS384"]),
        "RS256 (not allowed)": assertion(env, client_id, rsa_key, alg="RS256"),
    }
    for why, signed in cases.items():
        response = token_request(env, signed)
        assert response.status_code in (400, 401) and response.json["error"] == "invalid_client", why


def test_the_fake_clock_governs_assertion_expiry(env, rsa_key):
    client_id = backend_client(env, rsa_key)
    signed = assertion(env, client_id, rsa_key, lifetime=120)
    env.clock.advance(600)
    assert token_request(env, signed).json["error"] == "invalid_client"


def test_scopes_are_limited_to_system_and_the_registration(env, rsa_key):
    client_id = backend_client(env, rsa_key, scope="system/Observation.rs system/Patient.rs")
    response = token_request(env, assertion(env, client_id, rsa_key),
                             scope="system/Observation.rs system/Condition.rs patient/*.rs launch")
    assert response.status_code == 200 and response.json["scope"] == "system/Observation.rs"
    response = token_request(env, assertion(env, client_id, rsa_key), scope="system/*.cruds")
    assert response.status_code == 400 and response.json["error"] == "invalid_scope"


def test_authorization_code_clients_cannot_use_client_credentials(env, rsa_key):
    record, _ = register_client(env.smart.store, name="app", now=env.clock(), redirect_uris=["http://localhost/cb"],
                                jwks={"keys": [rsa_key.as_dict(private=False)]})
    response = token_request(env, assertion(env, record["client_id"], rsa_key))
    assert response.status_code == 400 and response.json["error"] == "unauthorized_client"


def test_jwks_url_client(env, rsa_key):
    jwks = json.dumps({"keys": [rsa_key.as_dict(private=False)]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        record, _ = register_client(env.smart.store, name="feed", now=env.clock(), grant="client_credentials",
                                    jwks_uri=f"http://127.0.0.1:{server.server_port}/jwks.json")
        response = token_request(env, assertion(env, record["client_id"], rsa_key))
        assert response.status_code == 200, response.json
    finally:
        server.shutdown()
        server.server_close()


def test_secret_client_credentials(env):
    record, secret = register_client(env.smart.store, name="script", now=env.clock(), grant="client_credentials")
    import base64
    basic = "Basic " + base64.b64encode(f"{record['client_id']}:{secret}".encode()).decode()
    response = env.client.post("/auth/token", data={"grant_type": "client_credentials", "scope": "system/*.rs"},
                               headers={"Authorization": basic})
    assert response.status_code == 200 and response.json["scope"] == "system/*.rs"
