"""Authorization code grant with PKCE, end to end through the sign-in pages (both store backends)."""
from __future__ import annotations

import json

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from auth.registry import create_launch
from smart_flow import FHIR_BASE, REDIRECT, pkce_pair, query
from fhir_server.store.base import StoredResource

ADR_CLAIMS = {"iss", "aud", "sub", "exp", "iat", "jti", "client_id", "scope", "role"}


def put_patient(store, pid: str, family: str = "Martin") -> None:
    body = json.dumps({"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": ["Léa"]}],
                       "birthDate": "2015-04-02"}).encode()
    with store.transaction() as tx:
        tx.put(StoredResource("Patient", pid, 1, "2024-01-01T00:00:00.000000Z", False, body, "PUT"), None,
               expected_version=None)


def decode(env, token: str) -> dict:
    return dict(jwt.decode(token, KeySet.import_key_set(env.client.get("/auth/.well-known/jwks.json").json)).claims)


def test_public_client_standalone_patient_launch(env):
    env.user()
    app = env.app_client(public=True)
    code, verifier, params = env.authorization_code(app.id, "launch/patient patient/*.rs openid fhirUser")
    response = env.exchange(code, verifier, client_id=app.id)
    assert response.status_code == 200, response.json
    body = response.json
    assert response.headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["patient"] == "p1" and body["fhirUser"] == "Patient/p1"
    assert body["need_patient_banner"] is True and body["scope"] == "launch/patient patient/*.rs openid fhirUser"
    assert "refresh_token" not in body  # no offline_access / online_access asked

    claims = decode(env, body["access_token"])
    assert set(claims) == ADR_CLAIMS | {"patient", "fhirUser"}
    account = env.smart.account("alice")
    assert claims["iss"] == "http://localhost/auth" and claims["aud"] == FHIR_BASE
    assert claims["sub"] == account.id and claims["client_id"] == app.id and claims["role"] == "patient"
    assert claims["patient"] == "p1" and claims["fhirUser"] == "Patient/p1"
    assert claims["exp"] - claims["iat"] == 3600 and claims["iat"] == int(env.clock())
    header = jwt.decode(body["access_token"], KeySet.import_key_set(env.client.get(
        "/auth/.well-known/jwks.json").json)).header
    assert header["alg"] == "RS256" and header["kid"] == env.smart.authority.kid

    id_token = jwt.decode(body["id_token"], env.smart.authority.key_set())
    assert id_token.header["kid"] == env.smart.authority.kid and id_token.header["alg"] == "RS256"
    assert id_token.claims["aud"] == [app.id] and id_token.claims["iss"] == "http://localhost/auth"
    assert id_token.claims["sub"] == account.id and id_token.claims["fhirUser"] == "Patient/p1"
    assert id_token.claims["exp"] == int(env.clock()) + 3600  # our clock, not a literal 3600 (pitfall 7)


def test_access_token_ttl_setting(tmp_path, clock):
    from backends import make_store
    from smart_flow import Env
    store = make_store("sqlite", tmp_path)
    env = Env(store, tmp_path / "outbox", clock, access_token_ttl=120)
    env.user()
    app = env.app_client()
    code, verifier, _ = env.authorization_code(app.id)
    body = env.exchange(code, verifier, client_id=app.id).json
    assert body["expires_in"] == 120
    claims = decode(env, body["access_token"])
    assert claims["exp"] - claims["iat"] == 120
    store.close()


def test_confidential_client_secret_basic(env):
    env.user()
    app = env.app_client(public=False)
    assert app.secret
    code, verifier, _ = env.authorization_code(app.id, "launch/patient patient/Observation.rs offline_access")
    assert env.exchange(code, verifier, client_id=app.id).status_code == 401  # must authenticate
    code, verifier, _ = env.authorization_code(app.id, "launch/patient patient/Observation.rs offline_access")
    assert env.exchange(code, verifier, auth=(app.id, "wrong")).status_code == 401
    code, verifier, _ = env.authorization_code(app.id, "launch/patient patient/Observation.rs offline_access")
    response = env.exchange(code, verifier, auth=(app.id, app.secret))
    assert response.status_code == 200, response.json
    assert response.json["patient"] == "p1" and response.json["refresh_token"]


@pytest.mark.parametrize("kind", ["RS384", "ES384"])
def test_confidential_client_private_key_jwt(env, kind):
    key = RSAKey.generate_key(2048, auto_kid=True) if kind == "RS384" else ECKey.generate_key("P-384", auto_kid=True)
    env.user()
    app = env.app_client(public=False, jwks={"keys": [key.as_dict(private=False)]})
    code, verifier, _ = env.authorization_code(app.id)
    now = int(env.clock())
    assertion = jwt.encode({"alg": kind, "kid": key.kid},
                           {"iss": app.id, "sub": app.id, "aud": "http://localhost/auth/token", "exp": now + 240,
                            "jti": "a-1"}, key, algorithms=[kind])
    response = env.exchange(code, verifier, client_assertion_type="urn:ietf:params:oauth:client-assertion-type:"
                            "jwt-bearer", client_assertion=assertion)
    assert response.status_code == 200, response.json
    assert response.json["patient"] == "p1"


def test_pkce_missing_challenge_is_refused(env):
    env.user()
    for public in (True, False):
        app = env.app_client(public=public)
        params = env.authorize_params(app.id)  # no code_challenge
        response = env.start(params)
        assert response.status_code == 302
        back = query(response.headers["Location"])
        assert back["error"] == "invalid_request" and back["state"] == params["state"]
        assert "PKCE" in back["error_description"]


def test_pkce_plain_and_missing_method_are_refused(env):
    env.user()
    app = env.app_client()
    verifier, _ = pkce_pair()
    for method in ("plain", None):
        params = env.authorize_params(app.id, code_challenge=verifier, code_challenge_method=method)
        response = env.start(params)
        assert response.status_code == 302
        back = query(response.headers["Location"])
        assert back["error"] == "invalid_request" and "S256" in back["error_description"]


def test_pkce_wrong_or_missing_verifier_is_refused(env):
    env.user()
    app = env.app_client()
    code, verifier, _ = env.authorization_code(app.id)
    response = env.exchange(code, pkce_pair()[0], client_id=app.id)
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"
    code, verifier, _ = env.authorization_code(app.id)
    response = env.exchange(code, None, client_id=app.id)
    assert response.status_code == 400 and response.json["error"] == "invalid_request"


def test_code_works_once_and_replay_revokes_its_tokens(env):
    env.user()
    app = env.app_client()
    code, verifier, _ = env.authorization_code(app.id)
    first = env.exchange(code, verifier, client_id=app.id)
    assert first.status_code == 200
    replay = env.exchange(code, verifier, client_id=app.id)
    assert replay.status_code == 400 and replay.json["error"] == "invalid_grant"
    claims = decode(env, first.json["access_token"])
    assert env.smart.is_revoked(claims["jti"])
    introspection = env.client.post("/auth/introspect", data={"token": first.json["access_token"], "client_id": app.id})
    assert introspection.json == {"active": False}


def test_code_expires(env):
    env.user()
    app = env.app_client()
    code, verifier, _ = env.authorization_code(app.id)
    env.clock.advance(301)
    response = env.exchange(code, verifier, client_id=app.id)
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


def test_code_is_bound_to_its_client(env):
    env.user()
    app, other = env.app_client(), env.app_client()
    code, verifier, _ = env.authorization_code(app.id)
    assert env.exchange(code, verifier, client_id=other.id).json["error"] == "invalid_grant"


def test_redirect_uri_checks(env):
    env.user()
    app = env.app_client()
    _, challenge = pkce_pair()
    # unregistered redirect URI: never redirected there, a page explains
    response = env.start(env.authorize_params(app.id, challenge=challenge, redirect_uri="http://127.0.0.1:9999/evil"))
    assert response.status_code == 400 and "Location" not in response.headers
    assert "not registered" in response.get_data(as_text=True)
    # missing redirect URI
    response = env.start(env.authorize_params(app.id, challenge=challenge, redirect_uri=None))
    assert response.status_code == 400 and "Location" not in response.headers
    # unknown client
    response = env.start(env.authorize_params("nobody", challenge=challenge))
    assert response.status_code == 400 and "Location" not in response.headers
    # token request with another redirect URI than the authorization request
    code, verifier, _ = env.authorization_code(app.id)
    response = env.exchange(code, verifier, client_id=app.id, redirect_uri=REDIRECT + "/other")
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


def test_state_and_aud_are_required(env):
    env.user()
    app = env.app_client()
    _, challenge = pkce_pair()
    response = env.start(env.authorize_params(app.id, challenge=challenge, state=None))
    back = query(response.headers["Location"])
    assert back["error"] == "invalid_request" and "state" in back["error_description"]
    for aud in (None, "https://elsewhere.example/fhir"):
        params = env.authorize_params(app.id, challenge=challenge, aud=aud)
        back = query(env.start(params).headers["Location"])
        assert back["error"] == "invalid_request" and "aud" in back["error_description"]
        assert back["state"] == params["state"]
    # a trailing slash on the FHIR base is the same audience
    response = env.start(env.authorize_params(app.id, challenge=challenge, aud=FHIR_BASE + "/"))
    assert response.status_code == 303


def test_deny_returns_access_denied_with_state(env):
    env.user()
    app = env.app_client()
    verifier, challenge = pkce_pair()
    params = env.authorize_params(app.id, challenge=challenge)
    response = env.sign_in(env.start(params).headers["Location"])
    response = env.approve(response.headers["Location"], decision="deny")
    assert response.status_code == 302
    back = query(response.headers["Location"])
    assert back["error"] == "access_denied" and back["state"] == params["state"] and "code" not in back


def test_approval_screen_lists_access_in_plain_words(env):
    env.user()
    app = env.app_client()
    _, challenge = pkce_pair()
    params = env.authorize_params(app.id, "launch/patient patient/Observation.rs?category=laboratory "
                                          "patient/Condition.read openid fhirUser offline_access", challenge)
    response = env.sign_in(env.start(params).headers["Location"])
    html = env.client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Read and search observations of the selected patient (only where category is laboratory)" in html
    assert "Read and search conditions of the selected patient" in html
    assert "Keep access after you sign out" in html
    assert 'name="approve"' in html and 'name="deny"' in html and 'name="csrf_token"' in html


def test_scopes_are_limited_to_the_client_registration(env):
    env.user()
    app = env.app_client(scope="launch/patient patient/Observation.rs openid fhirUser")
    code, verifier, _ = env.authorization_code(
        app.id, "launch/patient patient/Observation.rs patient/Condition.rs system/*.rs profile openid fhirUser")
    body = env.exchange(code, verifier, client_id=app.id).json
    assert body["scope"] == "launch/patient patient/Observation.rs openid fhirUser"


def test_no_grantable_scope_is_an_error(env):
    env.user()
    app = env.app_client(scope="patient/Observation.rs")
    _, challenge = pkce_pair()
    back = query(env.start(env.authorize_params(app.id, "system/*.rs", challenge)).headers["Location"])
    assert back["error"] == "invalid_scope"


def test_practitioner_picks_a_patient(env):
    put_patient(env.store, "child-1")
    env.user("doc", role="practitioner", fhir_user="Practitioner/pr1", email="doc@example.org")
    app = env.app_client()
    verifier, challenge = pkce_pair()
    params = env.authorize_params(app.id, "launch/patient patient/*.rs openid fhirUser", challenge)
    response = env.sign_in(env.start(params).headers["Location"], username="doc")
    location = response.headers["Location"]
    html = env.client.get(location).get_data(as_text=True)
    assert "child-1" in html and "Martin" in html  # listed in the picker
    refused = env.approve(location)  # nothing picked
    assert refused.status_code == 400
    refused = env.approve(location, patient_id="does-not-exist")
    assert refused.status_code == 403
    response = env.approve(location, patient="child-1")
    assert response.status_code == 302, response.get_data(as_text=True)
    body = env.exchange(query(response.headers["Location"])["code"], verifier, client_id=app.id).json
    assert body["patient"] == "child-1" and body["fhirUser"] == "Practitioner/pr1"
    claims = decode(env, body["access_token"])
    assert claims["role"] == "practitioner" and claims["patient"] == "child-1"


def test_related_person_acts_for_a_minor(env):
    put_patient(env.store, "minor-1")
    env.user("mum", role="related-person", fhir_user="RelatedPerson/rp1", email=None, phone="+33600000001")
    app = env.app_client()
    verifier, challenge = pkce_pair()
    params = env.authorize_params(app.id, "launch/patient patient/*.rs", challenge)
    response = env.sign_in(env.start(params).headers["Location"], username="mum")
    assert env.messages()[-1]["channel"] == "sms" and env.messages()[-1]["to"] == "+33600000001"
    response = env.approve(response.headers["Location"], patient_id="minor-1")
    body = env.exchange(query(response.headers["Location"])["code"], verifier, client_id=app.id).json
    assert body["patient"] == "minor-1" and decode(env, body["access_token"])["role"] == "related-person"


def test_user_scopes_without_patient_context(env):
    env.user("doc", role="practitioner", fhir_user="Practitioner/pr1", email="doc@example.org")
    app = env.app_client()
    code, verifier, _ = env.authorization_code(app.id, "user/*.rs openid fhirUser", username="doc")
    body = env.exchange(code, verifier, client_id=app.id).json
    assert "patient" not in body and body["fhirUser"] == "Practitioner/pr1"
    assert "patient" not in decode(env, body["access_token"])


def test_ehr_launch_binds_the_launch_context(env):
    env.user("doc", role="practitioner", fhir_user="Practitioner/pr1", email="doc@example.org")
    app = env.app_client()
    launch = create_launch(env.smart.store, patient="p42", user="doc", now=env.clock())["launch"]
    code, verifier, _ = env.authorization_code(app.id, "launch patient/*.rs openid fhirUser", username="doc",
                                               launch=launch)
    body = env.exchange(code, verifier, client_id=app.id).json
    assert body["patient"] == "p42" and body["need_patient_banner"] is False
    assert decode(env, body["access_token"])["patient"] == "p42"


def test_ehr_launch_refusals(env):
    env.user("doc", role="practitioner", fhir_user="Practitioner/pr1", email="doc@example.org")
    env.user("other", role="practitioner", fhir_user="Practitioner/pr2", email="other@example.org")
    app = env.app_client()
    _, challenge = pkce_pair()
    back = query(env.start(env.authorize_params(app.id, "launch patient/*.rs", challenge,
                                                launch="forged")).headers["Location"])
    assert back["error"] == "invalid_request" and "launch" in back["error_description"]
    launch = create_launch(env.smart.store, patient="p42", user="doc", now=env.clock())["launch"]
    response = env.start(env.authorize_params(app.id, "launch patient/*.rs", challenge, launch=launch))
    response = env.sign_in(response.headers["Location"], username="other")
    page = env.client.get(response.headers["Location"])
    assert page.status_code == 403 and "another user" in page.get_data(as_text=True)
    # expired launch
    env.clock.advance(3601)
    back = query(env.start(env.authorize_params(app.id, "launch patient/*.rs", challenge,
                                                launch=launch)).headers["Location"])
    assert back["error"] == "invalid_request"


def test_launch_endpoint(env):
    app = env.app_client(public=False)
    import base64
    basic = "Basic " + base64.b64encode(f"{app.id}:{app.secret}".encode()).decode()
    response = env.client.post("/auth/launch", json={"patient": "p7"}, headers={"Authorization": basic})
    assert response.status_code == 201 and env.smart.launch_context(response.json["launch"])["patient"] == "p7"
    assert env.client.post("/auth/launch", json={"patient": "p7"}).status_code == 401
    public = env.app_client(public=True)
    response = env.client.post("/auth/launch", data={"patient": "p7", "client_id": public.id})
    assert response.status_code == 401


def test_patient_without_record_link_cannot_get_patient_context(env):
    env.user("nolink", fhir_user=None, email="n@example.org")
    app = env.app_client()
    _, challenge = pkce_pair()
    response = env.sign_in(env.start(env.authorize_params(app.id, "launch/patient patient/*.rs", challenge))
                           .headers["Location"], username="nolink")
    page = env.client.get(response.headers["Location"])
    assert page.status_code == 403 and "not linked" in page.get_data(as_text=True)


def test_insecure_transport_refused_off_loopback(env):
    response = env.client.post("/auth/token", data={"grant_type": "client_credentials"},
                               base_url="http://dmp.example.org")
    assert response.status_code == 400 and response.json["error"] == "insecure_transport"

