"""Refresh tokens (rotation, launch context kept), introspection (RFC 7662) and revocation (RFC 7009)."""
from __future__ import annotations

import base64

import auth


def tokens(env, scope="launch/patient patient/*.rs openid fhirUser offline_access", public=True, **kwargs):
    env.user()
    app = env.app_client(public=public)
    code, verifier, _ = env.authorization_code(app.id, scope, **kwargs)
    if public:
        response = env.exchange(code, verifier, client_id=app.id)
    else:
        response = env.exchange(code, verifier, auth=(app.id, app.secret))
    assert response.status_code == 200, response.json
    return app, response.json


def refresh(env, app, refresh_token, **extra):
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": app.id, **extra}
    return env.client.post("/auth/token", data=data)


def claims_of(env, token):
    return env.smart.authority.decode(token)


def test_refresh_rotates_and_keeps_the_launch_context(env):
    app, first = tokens(env)
    assert first["refresh_token"]
    second = refresh(env, app, first["refresh_token"])
    assert second.status_code == 200, second.json
    body = second.json
    assert body["refresh_token"] != first["refresh_token"]  # rotation
    assert body["patient"] == "p1" and body["fhirUser"] == "Patient/p1" and body["need_patient_banner"] is True
    assert body["scope"] == first["scope"]
    claims = claims_of(env, body["access_token"])
    assert claims["patient"] == "p1" and claims["fhirUser"] == "Patient/p1" and claims["role"] == "patient"
    assert claims["jti"] != claims_of(env, first["access_token"])["jti"]
    third = refresh(env, app, body["refresh_token"])
    assert third.status_code == 200 and third.json["patient"] == "p1"


def test_rotated_refresh_token_reuse_revokes_the_family(env):
    app, first = tokens(env)
    second = refresh(env, app, first["refresh_token"]).json
    reuse = refresh(env, app, first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json["error"] == "invalid_grant"
    # the whole chain is dead: the newest refresh token and the access tokens it gave
    assert refresh(env, app, second["refresh_token"]).json["error"] == "invalid_grant"
    assert env.smart.is_revoked(claims_of(env, second["access_token"])["jti"])
    assert env.smart.is_revoked(claims_of(env, first["access_token"])["jti"])


def test_refresh_may_narrow_but_not_widen_the_scope(env):
    app, first = tokens(env)
    wider = refresh(env, app, first["refresh_token"], scope="patient/*.cruds offline_access")
    assert wider.status_code == 400 and wider.json["error"] == "invalid_scope"
    # a fresh token (the one above was consumed by the refused request)
    code, verifier, _ = env.authorization_code(app.id, "launch/patient patient/*.rs offline_access")
    fresh = env.exchange(code, verifier, client_id=app.id).json
    narrower = refresh(env, app, fresh["refresh_token"], scope="patient/*.rs offline_access")
    assert narrower.status_code == 200 and narrower.json["scope"] == "patient/*.rs offline_access"
    assert narrower.json["patient"] == "p1"


def test_refresh_token_belongs_to_its_client(env):
    app, first = tokens(env)
    other = env.app_client()
    assert refresh(env, other, first["refresh_token"]).json["error"] == "invalid_grant"


def test_confidential_refresh_needs_client_authentication(env):
    app, first = tokens(env, public=False)
    assert refresh(env, app, first["refresh_token"]).status_code == 401
    basic = "Basic " + base64.b64encode(f"{app.id}:{app.secret}".encode()).decode()
    response = env.client.post("/auth/token", data={"grant_type": "refresh_token",
                                                    "refresh_token": first["refresh_token"]},
                               headers={"Authorization": basic})
    # the unauthenticated attempt above consumed nothing: the client authenticates before the token is read
    assert response.status_code == 200 and response.json["patient"] == "p1"


def test_online_access_ends_with_the_sign_in_session(env):
    app, first = tokens(env, scope="launch/patient patient/*.rs online_access")
    second = refresh(env, app, first["refresh_token"])
    assert second.status_code == 200
    env.client.get("/auth/logout")
    assert refresh(env, app, second.json["refresh_token"]).json["error"] == "invalid_grant"


def test_refresh_token_expiry(env):
    app, first = tokens(env)
    env.clock.advance(31 * 86400)
    assert refresh(env, app, first["refresh_token"]).json["error"] == "invalid_grant"


def test_introspection(env):
    app, body = tokens(env)
    response = env.client.post("/auth/introspect", data={"token": body["access_token"], "client_id": app.id})
    assert response.status_code == 200
    info = response.json
    claims = claims_of(env, body["access_token"])
    assert info["active"] is True and info["scope"] == body["scope"] and info["patient"] == "p1"
    assert info["fhirUser"] == "Patient/p1" and info["client_id"] == app.id and info["exp"] == claims["exp"]
    assert info["sub"] == claims["sub"]
    refresh_info = env.client.post("/auth/introspect", data={"token": body["refresh_token"], "client_id": app.id,
                                                             "token_type_hint": "refresh_token"}).json
    assert refresh_info["active"] is True and refresh_info["patient"] == "p1"
    # expired
    env.clock.advance(3601)
    assert env.client.post("/auth/introspect", data={"token": body["access_token"],
                                                     "client_id": app.id}).json == {"active": False}
    # garbage and forged tokens
    assert env.client.post("/auth/introspect", data={"token": "nope", "client_id": app.id}).json == {"active": False}


def test_public_clients_introspect_only_their_own_tokens(env):
    app, body = tokens(env)
    other = env.app_client()
    response = env.client.post("/auth/introspect", data={"token": body["access_token"], "client_id": other.id})
    assert response.json == {"active": False}
    server = env.app_client(public=False)  # a confidential client (a resource server) may introspect any token
    basic = "Basic " + base64.b64encode(f"{server.id}:{server.secret}".encode()).decode()
    response = env.client.post("/auth/introspect", data={"token": body["access_token"]},
                               headers={"Authorization": basic})
    assert response.json["active"] is True and response.json["patient"] == "p1"
    assert env.client.post("/auth/introspect", data={"token": body["access_token"]}).status_code in (400, 401)


def test_revoking_an_access_token(env):
    app, body = tokens(env)
    jti = claims_of(env, body["access_token"])["jti"]
    assert not auth.is_revoked(env.store, jti)
    response = env.client.post("/auth/revoke", data={"token": body["access_token"], "client_id": app.id})
    assert response.status_code == 200
    assert env.client.post("/auth/introspect", data={"token": body["access_token"],
                                                     "client_id": app.id}).json == {"active": False}
    # the resource server's view: the deny list in the shared database
    assert auth.is_revoked(env.store, jti) and auth.token_authority(env.store).is_revoked(jti)
    try:
        auth.token_authority(env.store).verify(body["access_token"], audience="http://localhost/fhir")
        raise AssertionError("a revoked token verified")
    except auth.TokenError as exc:
        assert "revoked" in str(exc)
    # unknown tokens: 200 as RFC 7009 says
    assert env.client.post("/auth/revoke", data={"token": "unknown", "client_id": app.id}).status_code == 200


def test_revoking_a_refresh_token_kills_the_grant(env):
    app, body = tokens(env)
    response = env.client.post("/auth/revoke", data={"token": body["refresh_token"], "client_id": app.id,
                                                     "token_type_hint": "refresh_token"})
    assert response.status_code == 200
    assert refresh(env, app, body["refresh_token"]).json["error"] == "invalid_grant"
    assert env.smart.is_revoked(claims_of(env, body["access_token"])["jti"])


def test_a_client_cannot_revoke_another_clients_token(env):
    app, body = tokens(env)
    other = env.app_client()
    response = env.client.post("/auth/revoke", data={"token": body["access_token"], "client_id": other.id})
    assert response.status_code == 400
    assert not env.smart.is_revoked(claims_of(env, body["access_token"])["jti"])


def test_verify_api_for_the_resource_server(env):
    app, body = tokens(env)
    authority = auth.token_authority(env.store)
    claims = authority.verify(body["access_token"], audience="http://localhost/fhir", issuer="http://localhost/auth")
    assert claims["patient"] == "p1"
    for kwargs in ({"audience": "http://other/fhir"}, {"issuer": "http://other/auth"}):
        try:
            authority.verify(body["access_token"], **kwargs)
            raise AssertionError("accepted")
        except auth.TokenError:
            pass
    assert authority.key_set().as_dict()["keys"][0]["kid"] == env.smart.authority.kid
    assert env.client.get("/auth/.well-known/jwks.json").json == authority.jwks()
    # tampered signature
    head, payload, signature = body["access_token"].split(".")
    try:
        authority.verify(f"{head}.{payload}.{signature[::-1]}")
        raise AssertionError("accepted a forged token")
    except auth.TokenError:
        pass
