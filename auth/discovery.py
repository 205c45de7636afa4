"""Discovery documents: SMART configuration, OpenID configuration, JWKS; and the CapabilityStatement part.

* ``GET /fhir/.well-known/smart-configuration`` (SMART App Launch 2, conformance);
* ``GET {issuer}/.well-known/openid-configuration`` (OpenID Connect Discovery), issuer = ``{server}/auth``;
* ``GET {issuer}/.well-known/jwks.json`` (the public signing keys of ADR 0005).
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from auth import scopes as smart_scopes

bp = Blueprint("smart_discovery", __name__)

CAPABILITIES = [
    "launch-ehr", "launch-standalone", "authorize-post",
    "client-public", "client-confidential-symmetric", "client-confidential-asymmetric",
    "context-ehr-patient", "context-ehr-encounter", "context-standalone-patient", "context-banner",
    "context-style",
    "sso-openid-connect", "permission-offline", "permission-online", "permission-patient", "permission-user",
    "permission-v1", "permission-v2",
]
GRANT_TYPES = ["authorization_code", "refresh_token", "client_credentials"]
AUTH_METHODS = ["client_secret_basic", "private_key_jwt", "none"]
ASSERTION_ALGS = ["RS384", "ES384"]
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def endpoints(issuer: str) -> dict:
    return {
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "introspection_endpoint": f"{issuer}/introspect",
        "revocation_endpoint": f"{issuer}/revoke",
        "registration_endpoint": f"{issuer}/register",
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
    }


def smart_configuration(issuer: str) -> dict:
    return {
        "issuer": issuer,
        **endpoints(issuer),
        "grant_types_supported": GRANT_TYPES,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "introspection_endpoint_auth_methods_supported": AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": AUTH_METHODS,
        "scopes_supported": smart_scopes.SUPPORTED,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


def openid_configuration(issuer: str) -> dict:
    return {
        "issuer": issuer,
        **endpoints(issuer),
        "userinfo_endpoint": f"{issuer}/userinfo",
        "scopes_supported": smart_scopes.SUPPORTED,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": GRANT_TYPES,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "fhirUser"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent"],
    }


def capability_security(issuer: str) -> dict:
    """``CapabilityStatement.rest.security`` announcing SMART (the oauth-uris extension fhirclient reads)."""
    urls = endpoints(issuer)
    return {
        "cors": True,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
                     "text": "OAuth2 using SMART-on-FHIR profile (see .well-known/smart-configuration)"}],
        "extension": [{"url": OAUTH_URIS, "extension": [
            {"url": "authorize", "valueUri": urls["authorization_endpoint"]},
            {"url": "token", "valueUri": urls["token_endpoint"]},
            {"url": "introspect", "valueUri": urls["introspection_endpoint"]},
            {"url": "revoke", "valueUri": urls["revocation_endpoint"]},
            {"url": "register", "valueUri": urls["registration_endpoint"]},
        ]}],
    }


def _json(body: dict, max_age: int = 300) -> Response:
    response = jsonify(body)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    return response


@bp.get("/fhir/.well-known/smart-configuration")
def smart_configuration_view() -> Response:
    return _json(smart_configuration(current_app.extensions["smart_auth"].issuer()))


@bp.get("/auth/.well-known/openid-configuration")
def openid_configuration_view() -> Response:
    return _json(openid_configuration(current_app.extensions["smart_auth"].issuer()))


@bp.get("/auth/.well-known/jwks.json")
def jwks_view() -> Response:
    return _json(current_app.extensions["smart_auth"].authority.jwks(), max_age=3600)
