"""Discovery documents, and the authorization server inside the real application (create_app)."""
from __future__ import annotations

from joserfc.jwk import KeySet

import auth
from auth.discovery import CAPABILITIES
from fhir_server.access.gate import ClosedGate
from fhir_server.app import create_app
from fhir_server.settings import Settings

REQUIRED_CAPABILITIES = {"launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
                         "client-confidential-asymmetric", "context-ehr-patient", "context-standalone-patient",
                         "sso-openid-connect", "permission-offline", "permission-online", "permission-patient",
                         "permission-user", "permission-v1", "permission-v2"}


def test_smart_configuration(env):
    response = env.client.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200 and response.headers["Access-Control-Allow-Origin"] == "*"
    doc = response.json
    issuer = "http://localhost/auth"
    assert doc["issuer"] == issuer
    assert doc["authorization_endpoint"] == f"{issuer}/authorize" and doc["token_endpoint"] == f"{issuer}/token"
    assert doc["introspection_endpoint"] == f"{issuer}/introspect"
    assert doc["revocation_endpoint"] == f"{issuer}/revoke"
    assert doc["registration_endpoint"] == f"{issuer}/register"
    assert doc["jwks_uri"] == f"{issuer}/.well-known/jwks.json"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert {"client_secret_basic", "private_key_jwt"} <= set(doc["token_endpoint_auth_methods_supported"])
    assert {"RS384", "ES384"} <= set(doc["token_endpoint_auth_signing_alg_values_supported"])
    assert REQUIRED_CAPABILITIES <= set(doc["capabilities"]) and set(doc["capabilities"]) == set(CAPABILITIES)
    for scope in ("openid", "fhirUser", "launch", "launch/patient", "offline_access", "online_access",
                  "patient/*.rs", "user/*.rs", "system/*.rs", "patient/*.read"):
        assert scope in doc["scopes_supported"]
    assert doc["response_types_supported"] == ["code"]


def test_openid_configuration_and_jwks(env):
    doc = env.client.get("/auth/.well-known/openid-configuration").json
    assert doc["issuer"] == "http://localhost/auth"
    assert doc["jwks_uri"] == "http://localhost/auth/.well-known/jwks.json"
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "fhirUser" in doc["claims_supported"] and doc["subject_types_supported"] == ["public"]
    assert doc["userinfo_endpoint"] == "http://localhost/auth/userinfo"
    jwks = env.client.get("/auth/.well-known/jwks.json").json
    assert [k["kid"] for k in jwks["keys"]] == [env.smart.authority.kid]
    assert all("d" not in k for k in jwks["keys"])  # public parts only
    KeySet.import_key_set(jwks)


def test_the_signing_key_is_stored_once_and_shared(env):
    from auth.storage import open_auth_store
    from auth.tokens import TokenAuthority
    other_worker = TokenAuthority(open_auth_store(env.store))
    assert other_worker.kid == env.smart.authority.kid
    assert other_worker.jwks() == env.smart.authority.jwks()


def test_base_url_setting_decides_issuer_and_audience(tmp_path, clock):
    from backends import make_store
    from smart_flow import Env
    store = make_store("sqlite", tmp_path)
    env = Env(store, tmp_path / "outbox", clock, base_url="https://dmp.example.org/fhir")
    doc = env.client.get("/fhir/.well-known/smart-configuration").json
    assert doc["issuer"] == "https://dmp.example.org/auth"
    assert doc["token_endpoint"] == "https://dmp.example.org/auth/token"
    assert env.smart.fhir_base() is not None
    with env.app.test_request_context("/auth/token"):
        assert env.smart.fhir_base() == "https://dmp.example.org/fhir"
    store.close()


def test_capability_security_element():
    security = auth.capability_security("https://h/auth")
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["authorize"] == "https://h/auth/authorize" and uris["token"] == "https://h/auth/token"


def test_inside_create_app_with_the_closed_gate(tmp_path, engine):
    """The auth endpoints answer without a bearer token while the FHIR API stays closed."""
    from backends import make_store
    store = make_store("sqlite", tmp_path)
    app = create_app(Settings(otp_outbox=str(tmp_path / "outbox")), store=store, gate=ClosedGate(), engine=engine)
    client = app.test_client()
    assert client.get("/fhir/.well-known/smart-configuration").status_code == 200
    assert client.get("/auth/.well-known/openid-configuration").status_code == 200
    assert client.get("/auth/.well-known/jwks.json").status_code == 200
    assert client.get("/auth/login", headers={"Accept": "text/html"}).status_code == 200
    assert client.post("/auth/token", data={"grant_type": "client_credentials"}).json["error"] == "invalid_client"
    assert client.get("/fhir/Patient").status_code == 401  # the gate still guards the record
    assert client.get("/fhir/metadata").status_code == 200
    assert app.extensions["smart_auth"].authority is auth.token_authority(store)
    store.close()
