"""The authlib authorization server, with the SMART rules authlib 1.9 does not enforce by itself.

Fixes of /work/shared/notes/libraries.md §3, each covered by a test in tests/auth/:

1. client assertions are decoded with ``algorithms=["RS384", "ES384"]`` (joserfc refuses them by default);
2. ``private_key_jwt`` is its own client-auth class (``validate_jti``, ``get_audiences``, one-argument
   ``resolve_client_public_key`` returning a joserfc KeySet);
3. PKCE: a ``code_challenge`` is required from every client, ``S256`` only (``plain`` or no method refused);
4. ``get_consent_grant`` then ``create_authorization_response(grant=...)`` (no deprecated calls);
5. ``expires_in`` is ``--access-token-ttl``; refresh tokens come with ``offline_access``/``online_access``;
6. the launch context (patient, fhirUser, encounter) is copied into every refresh token;
7. OIDC: ``resolve_client_private_key``/``get_client_algorithm``/``get_client_claims``, a ``kid``
   header, ``exp`` from our clock;
8. joserfc everywhere, never ``authlib.jose``;
9. RFC 7591 ``generate_client_id(request)``/``generate_client_secret(request)``.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import urllib.request
from typing import Any, Callable

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.flask_oauth2.requests import FlaskJsonRequest, FlaskOAuth2Request
from authlib.oauth2.rfc6749 import (InvalidClientError, InvalidRequestError,
                                    InvalidScopeError, OAuth2Request, grants)
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint, InvalidClientMetadataError
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core import OpenIDCode
from flask import request as flask_request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from auth import scopes as smart_scopes
from auth.models import AccessToken, AuthorizationCode, Client, RefreshToken, Subject, token_key
from auth.registry import RegistryError, find_account, register_client
from auth.storage import AuthStore
from auth.tokens import TokenAuthority, TokenError

log = logging.getLogger("auth")

CODE_TTL = 300              # seconds an authorization code stays valid
OFFLINE_REFRESH_TTL = 30 * 86400
ONLINE_REFRESH_TTL = 12 * 3600
ASSERTION_MAX_LIFETIME = 300
CLIENT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt", "none"]


# -- requests ----------------------------------------------------------------------------------------------
class StoredAuthorizationRequest(OAuth2Request):
    """An authorization request replayed from its stored parameters (at approval, after login)."""

    def __init__(self, params: dict, uri: str):
        super().__init__("GET", uri, headers={})
        self._params = dict(params)
        self.payload = BasicOAuth2Payload(self._params)

    @property
    def args(self):
        return self._params

    @property
    def form(self):
        return {}


class PublicFlaskOAuth2Request(FlaskOAuth2Request):
    """The live request at its public URL (behind a TLS-terminating proxy: ``--base-url https://...``)."""

    def __init__(self, request, uri: str):
        OAuth2Request.__init__(self, method=request.method, uri=uri, headers=request.headers)
        self._request = request
        from authlib.integrations.flask_oauth2.requests import FlaskOAuth2Payload
        self.payload = FlaskOAuth2Payload(request)


class PublicFlaskJsonRequest(FlaskJsonRequest):
    def __init__(self, request, uri: str):
        from authlib.integrations.flask_oauth2.requests import FlaskJsonPayload
        from authlib.oauth2.rfc6749 import JsonRequest
        JsonRequest.__init__(self, request.method, uri, request.headers)
        self.payload = FlaskJsonPayload(request)


# -- client authentication with a signed assertion (RFC 7523, SMART asymmetric) ----------------------------
class ClientKeys:
    """The client's public keys, resolved lazily so a JWKS URL can be fetched again on an unknown kid."""

    def __init__(self, smart: "SmartAuth", client: Client):
        self.smart, self.client = smart, client


class PrivateKeyJWT(JWTBearerClientAssertion):
    CLIENT_AUTH_METHOD = "private_key_jwt"
    ALGORITHMS = ["RS384", "ES384"]

    def __init__(self, smart: "SmartAuth"):
        super().__init__(validate_jti=True, leeway=60)
        self.smart = smart

    def get_audiences(self):
        issuer = self.smart.issuer()
        return [issuer + "/token", issuer, issuer + "/introspect", issuer + "/revoke"]

    def resolve_client_public_key(self, client):
        return ClientKeys(self.smart, client)

    def process_assertion_claims(self, assertion, resolve_key):
        keys: ClientKeys = resolve_key
        try:
            token = jwt.decode(assertion, self.smart.client_keys(keys.client), algorithms=self.ALGORITHMS)
        except JoseError as first:
            if not keys.client.data.get("jwks_uri"):
                raise InvalidClientError(
                    description=f"Invalid client assertion: {first.description}") from None
            try:  # the client may have rotated its keys: fetch its JWKS URL again once
                token = jwt.decode(assertion, self.smart.client_keys(keys.client, refresh=True),
                                   algorithms=self.ALGORITHMS)
            except JoseError as exc:
                raise InvalidClientError(description=f"Invalid client assertion: {exc.description}") from None
        except (ValueError, TypeError) as exc:
            raise InvalidClientError(description=f"Invalid client assertion: {exc}") from None
        self.verify_claims(token.claims)
        return token.claims

    def verify_claims(self, claims):
        registry = jwt.JWTClaimsRegistry(now=lambda: int(self.smart.now()), leeway=self.leeway,
                                         iss={"essential": True}, sub={"essential": True},
                                         aud={"essential": True, "values": self.get_audiences()},
                                         exp={"essential": True}, jti={"essential": True})
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise InvalidClientError(description=f"Invalid client assertion: {exc.description}") from None
        if claims["sub"] != claims["iss"]:
            raise InvalidClientError(description="Issuer and Subject MUST match.")
        if claims["exp"] > self.smart.now() + ASSERTION_MAX_LIFETIME + self.leeway:
            raise InvalidClientError(description="The assertion expires more than 5 minutes from now.")
        if not self.validate_jti(claims, claims["jti"]):
            raise InvalidClientError(description="The assertion's jti was already used.")

    def validate_jti(self, claims, jti):
        return self.smart.store.add("assertions", f"{claims['iss']}:{jti}", {"exp": claims["exp"]},
                                    float(claims["exp"]) + self.leeway, self.smart.now())


# -- grants ------------------------------------------------------------------------------------------------
class SmartPKCE(CodeChallenge):
    """PKCE as SMART App Launch 2 wants it: S256 required of every client, ``plain`` refused."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant, redirect_uri):
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge and code_challenge_method=S256")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256 ('plain' is not supported)")
        return super().validate_code_challenge(grant, redirect_uri)


class SmartAuthorizationChecks:
    """``state``, ``aud`` and ``launch`` of an authorization request (SMART App Launch 2)."""

    def __init__(self, smart: "SmartAuth"):
        self.smart = smart

    def __call__(self, grant):
        grant.register_hook("after_validate_authorization_request_payload", self.check)

    def check(self, grant, redirect_uri):
        data = grant.request.payload.data
        datalist = grant.request.payload.datalist
        for name in ("aud", "launch", "code_challenge", "code_challenge_method", "nonce"):
            if len(datalist.get(name, [])) > 1:
                raise InvalidRequestError(f"Multiple '{name}' in request.")
        if not data.get("state"):
            raise InvalidRequestError("Missing 'state': SMART apps must send an unguessable state value")
        aud = (data.get("aud") or "").rstrip("/")
        if aud != self.smart.fhir_base().rstrip("/"):
            raise InvalidRequestError(f"'aud' must be this server's FHIR base URL {self.smart.fhir_base()}")
        launch = data.get("launch")
        if launch and self.smart.launch_context(launch) is None:
            raise InvalidRequestError("Unknown or expired 'launch' value")


class SmartOpenIDCode(OpenIDCode):
    def __init__(self, smart: "SmartAuth"):
        super().__init__(require_nonce=False)
        self.smart = smart

    def resolve_client_private_key(self, client):
        return self.smart.authority.signing_key()

    def get_client_algorithm(self, client):
        return "RS256"

    def get_encode_header(self, client):
        return {"alg": "RS256", "kid": self.smart.authority.kid, "typ": "JWT"}

    def get_client_claims(self, client):
        return {"iss": self.smart.issuer(), "aud": [client.get_client_id()]}

    def get_compatible_claims(self, request):
        now = int(self.smart.now())
        claims = self.get_client_claims(request.client)
        claims.update(iat=now, exp=now + self.smart.settings.access_token_ttl)
        claims["auth_time"] = (request.user.auth_time if request.user else None) or now
        return claims

    def exists_nonce(self, nonce, request):
        return False

    def generate_user_info(self, user: Subject, scope):
        info = {"sub": user.account_id}
        if user.fhir_user and "fhirUser" in smart_scopes.split(scope):
            info["fhirUser"] = user.fhir_user
        return info


class SmartCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    @staticmethod
    def validate_authorization_redirect_uri(request, client):
        uri = request.payload.redirect_uri
        if not uri:
            raise InvalidRequestError("Missing 'redirect_uri' in request.")
        if not client.check_redirect_uri(uri):
            raise InvalidRequestError(f"Redirect URI {uri} is not registered for this client.")
        return uri

    @property
    def smart(self) -> "SmartAuth":
        return self.server.smart

    def save_authorization_code(self, code, request):
        smart, now = self.smart, self.smart.now()
        data = request.payload.data
        smart.store.put("codes", token_key(code), {
            "client_id": request.client.get_client_id(),
            "redirect_uri": data.get("redirect_uri"),
            "scope": request.scope,
            "code_challenge": data.get("code_challenge"),
            "code_challenge_method": data.get("code_challenge_method"),
            "nonce": data.get("nonce"),
            "subject": request.user.record(),
            "used": False,
            "issued": [],
            "created": now,
        }, now + CODE_TTL)

    def query_authorization_code(self, code, client):
        return self.smart.use_code(code, client)

    def delete_authorization_code(self, authorization_code):
        """Nothing to do: the code was marked used when it was read (a replay revokes its tokens)."""

    def authenticate_user(self, authorization_code: AuthorizationCode):
        return self.smart.live_subject(authorization_code.subject)


class SmartRefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token):
        smart = self.server.smart
        token = smart.use_refresh_token(refresh_token)
        if token is None:
            return None
        scopes = smart_scopes.split(token.get_scope())
        subject = token.subject
        if "online_access" in scopes and "offline_access" not in scopes:
            if not subject.session or smart.store.get("sessions", subject.session, smart.now()) is None:
                return None  # online access ends with the sign-in session
        return token if smart.live_subject(subject) is not None else None

    def authenticate_user(self, refresh_token: RefreshToken):
        return refresh_token.subject

    def revoke_old_credential(self, refresh_token):
        """Nothing to do: the refresh token was consumed when it was read (rotation)."""


class SmartClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt", "client_secret_basic"]

    def create_token_response(self):
        client = self.request.client
        granted = smart_scopes.grantable(self.request.payload.scope, client.data.get("scope"),
                                         "client_credentials")
        if not granted:
            raise InvalidScopeError("Request system/ scopes this client is registered for, e.g. system/*.rs")
        token = self.generate_token(scope=" ".join(granted), include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


# -- introspection, revocation, registration ---------------------------------------------------------------
class _TokenLookup:
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string, token_type_hint):
        return self.server.smart.find_token(token_string, token_type_hint)


class SmartIntrospection(_TokenLookup, IntrospectionEndpoint):
    def check_permission(self, token, client, request):
        # confidential clients act as resource servers; a public client may only look at its own tokens
        return not client.is_public or token.check_client(client)

    def introspect_token(self, token):
        if isinstance(token, AccessToken):
            claims = token.claims
            body = {"active": True, "token_type": "Bearer"}
            names = ("scope", "client_id", "exp", "iat", "sub", "iss", "aud", "jti", "patient", "fhirUser",
                     "role")
            body.update({k: claims[k] for k in names if k in claims})
            return body
        subject = token.subject
        body = {"active": True, "token_type": "refresh_token", "scope": token.get_scope(),
                "client_id": token.data["client_id"], "exp": int(token.data["expires"]),
                "sub": subject.account_id or token.data["client_id"], "role": subject.role}
        if subject.patient:
            body["patient"] = subject.patient
        if subject.fhir_user:
            body["fhirUser"] = subject.fhir_user
        return body


class SmartRevocation(_TokenLookup, RevocationEndpoint):
    def revoke_token(self, token, request):
        self.server.smart.revoke(token)


class SmartRegistration(ClientRegistrationEndpoint):
    """Open dynamic registration (RFC 7591) of authorization-code apps only: never system access."""

    def authenticate_token(self, request):
        return {"open_registration": True}

    def get_server_metadata(self):
        return {"grant_types_supported": ["authorization_code", "refresh_token"],
                "response_types_supported": ["code"],
                "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS}

    def generate_client_info(self, request):
        info = super().generate_client_info(request)
        info["client_id_issued_at"] = int(self.server.smart.now())
        if (request.payload.data or {}).get("token_endpoint_auth_method", "client_secret_basic") != \
                "client_secret_basic":
            info.pop("client_secret", None)
            info.pop("client_secret_expires_at", None)
        return info

    def save_client(self, client_info, client_metadata, request):
        method = client_metadata.get("token_endpoint_auth_method", "client_secret_basic")
        try:
            record, _ = register_client(
                self.server.smart.store, name=client_metadata.get("client_name") or "unnamed app",
                now=self.server.smart.now(), redirect_uris=client_metadata.get("redirect_uris"),
                public=method == "none", scope=client_metadata.get("scope"),
                jwks=client_metadata.get("jwks") if method == "private_key_jwt" else None,
                jwks_uri=client_metadata.get("jwks_uri") if method == "private_key_jwt" else None,
                dynamic=True)
        except RegistryError as exc:
            raise InvalidClientMetadataError(str(exc)) from None
        if method == "private_key_jwt" and not (record.get("jwks") or record.get("jwks_uri")):
            self.server.smart.store.delete("clients", record["client_id"])
            raise InvalidClientMetadataError("private_key_jwt needs jwks or jwks_uri")
        # the generated id and secret are the ones returned to the app
        self.server.smart.store.delete("clients", record["client_id"])
        record["client_id"] = client_info["client_id"]
        if client_info.get("client_secret"):
            from auth.models import secret_digest
            record["client_secret_hash"] = secret_digest(client_info["client_secret"])
        self.server.smart.store.put("clients", record["client_id"], record)
        return Client(record)

    def create_endpoint_request(self, request):
        return self.server.create_json_request(request)


# -- the authlib server ------------------------------------------------------------------------------------
class SmartAuthorizationServer(AuthorizationServer):
    def __init__(self, smart: "SmartAuth"):
        super().__init__()
        self.smart = smart
        self._query_client = smart.client
        self._save_token = smart.save_token
        self.register_token_generator("default", smart.generate_token)
        self.register_client_auth_method("private_key_jwt", PrivateKeyJWT(smart))
        self.register_grant(SmartCodeGrant, [SmartPKCE(required=True), SmartAuthorizationChecks(smart),
                                             SmartOpenIDCode(smart)])
        self.register_grant(SmartRefreshGrant)
        self.register_grant(SmartClientCredentialsGrant)
        self.register_endpoint(SmartIntrospection)
        self.register_endpoint(SmartRevocation)
        self.register_endpoint(SmartRegistration(self))

    def create_oauth2_request(self, request):
        if isinstance(request, OAuth2Request):
            return request
        return PublicFlaskOAuth2Request(flask_request, self.smart.public_url())

    def create_json_request(self, request):
        return PublicFlaskJsonRequest(flask_request, self.smart.public_url())

    def handle_response(self, status_code, payload, headers):
        response = super().handle_response(status_code, payload, headers)
        response.headers.setdefault("Access-Control-Allow-Origin", "*")
        return response


# -- the service -------------------------------------------------------------------------------------------
class SmartAuth:
    """The authorization server of one application: settings, clock, storage, keys, authlib wiring.

    ``clock`` (epoch seconds) is replaceable, e.g. by tests: every expiry decision reads it.
    """

    def __init__(self, settings: Any, fhir_store: Any, auth_store: AuthStore, sender: Any,
                 clock: Callable[[], float] = time.time):
        from auth.otp import Lockout, OneTimeCodes
        self.settings = settings
        self.fhir_store = fhir_store
        self.store = auth_store
        self.clock = clock
        self.authority = TokenAuthority(auth_store, clock=self.now)
        self.sender = sender
        self.codes = OneTimeCodes(auth_store, sender, self.now, settings.otp_ttl)
        self.lockout = Lockout(auth_store, self.now)
        self._jwks_cache: dict[str, tuple[float, KeySet]] = {}
        self._jwks_lock = threading.Lock()
        self.oauth = SmartAuthorizationServer(self)

    def now(self) -> float:
        return self.clock()

    # -- URLs (from --base-url, else from the request) ------------------------------------------------------
    def server_root(self) -> str:
        base = self.settings.base_url
        if base:
            base = base.rstrip("/")
            if base.endswith("/fhir"):
                return base[: -len("/fhir")]
            from urllib.parse import urlsplit
            parts = urlsplit(base)
            return f"{parts.scheme}://{parts.netloc}"
        return flask_request.host_url.rstrip("/")

    def issuer(self) -> str:
        return self.server_root() + "/auth"

    def fhir_base(self) -> str:
        base = self.settings.base_url
        return base.rstrip("/") if base else flask_request.host_url.rstrip("/") + "/fhir"

    def public_url(self) -> str:
        """The URL of the current request as clients see it."""
        if self.settings.base_url:
            return self.server_root() + flask_request.full_path.rstrip("?")
        return flask_request.url

    # -- lookups --------------------------------------------------------------------------------------------
    def client(self, client_id) -> Client | None:
        if not isinstance(client_id, str) or not client_id:
            return None
        record = self.store.get("clients", client_id, self.now())
        return Client(record) if record and not record.get("revoked_at") else None  # revoked: unknown

    def account(self, username: str):
        return find_account(self.store, username, self.now())

    def launch_context(self, launch: str) -> dict | None:
        return self.store.get("launches", launch, self.now()) if launch else None

    def live_subject(self, subject: Subject) -> Subject | None:
        """The subject if its account still exists and is enabled (system subjects always)."""
        if subject.username is None:
            return subject
        account = self.account(subject.username)
        if account is None or account.disabled or account.id != subject.account_id:
            return None
        return subject

    def client_keys(self, client: Client, refresh: bool = False) -> KeySet:
        if client.data.get("jwks"):
            return KeySet.import_key_set(client.data["jwks"])
        url = client.data.get("jwks_uri")
        if not url:
            raise InvalidClientError(description="The client has no registered keys.")
        with self._jwks_lock:
            cached = self._jwks_cache.get(url)
            if cached and not refresh and cached[0] > time.monotonic():
                return cached[1]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (operator-registered URL)
                keys = KeySet.import_key_set(json.loads(response.read(1_000_000)))
        except (OSError, ValueError, JoseError) as exc:
            raise InvalidClientError(description=f"Cannot read the client's JWKS URL: {exc}") from None
        with self._jwks_lock:
            self._jwks_cache[url] = (time.monotonic() + 300, keys)
        return keys

    # -- patients a user may pick: the hook for the record's access rules -----------------------------------
    def patient_exists(self, patient_id: str) -> bool:
        try:
            stored = self.fhir_store.read("Patient", patient_id)
        except Exception:  # a malformed id is simply not a patient
            return False
        return stored is not None and not stored.deleted

    def patient_choices(self, account, limit: int = 50) -> list[tuple[str, str]]:
        """(id, label) of patients offered in the picker. HOOK: the record's access rules will narrow it."""
        from fhir_server.model import jsonio
        choices = []
        try:
            for stored in self.fhir_store.iterate("Patient"):
                if stored.deleted:
                    continue
                choices.append((stored.id, patient_label(jsonio.loads(stored.body))))
                if len(choices) >= limit:
                    break
        except Exception:
            log.exception("cannot list patients for the picker")
        return choices

    def may_select_patient(self, account, patient_id: str) -> bool:
        """HOOK for the record's access rules (care relationships, guardianship): may ``account`` act on
        this patient? For now a practitioner, related person or administrator may pick any existing
        Patient; a patient only themselves."""
        if account.role == "patient":
            return account.own_patient == patient_id
        return self.patient_exists(patient_id)

    # -- authorization codes and refresh tokens -------------------------------------------------------------
    def use_code(self, code: str, client: Client) -> AuthorizationCode | None:
        key, seen = token_key(code or ""), {}

        def use(record):
            if record is None or record["client_id"] != client.get_client_id():
                return record
            seen["replay" if record["used"] else "fresh"] = dict(record)
            record["used"] = True
            return record

        self.store.update("codes", key, use, self.now())
        if "replay" in seen:  # RFC 6749 §4.1.2: refuse, and revoke what the code gave
            log.warning("authorization code replayed by client %s: revoking its tokens",
                        client.get_client_id())
            record = seen["replay"]
            for jti, exp in record.get("issued", []):
                self.authority.revoke(jti, exp)
            if record.get("family"):
                self.revoke_family(record["family"])
            return None
        if "fresh" in seen:
            return AuthorizationCode(key, seen["fresh"])
        return None

    def use_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        key, seen = token_key(refresh_token or ""), {}
        now = self.now()

        def use(record):
            if record is None:
                return None
            seen["reuse" if record["used"] else "fresh"] = dict(record)
            record["used"] = True
            return record

        self.store.update("refresh_tokens", key, use, now)
        if "reuse" in seen:  # a rotated refresh token came back: someone holds a copy
            log.warning("refresh token reused for client %s: revoking its family", seen["reuse"]["client_id"])
            self.revoke_family(seen["reuse"]["subject"].get("family"))
            return None
        record = seen.get("fresh")
        if record is None:
            return None
        family = self.store.get("token_families", record["subject"].get("family") or "-", now)
        if family is None or family.get("revoked"):
            return None
        return RefreshToken(key, record, now)

    def revoke_family(self, family: str | None) -> None:
        if not family:
            return
        jtis: list = []

        def revoke(record):
            record = record or {"jtis": []}
            jtis.extend(record.get("jtis", []))
            record["revoked"] = True
            return record

        self.store.update("token_families", family, revoke, self.now(),
                          expires=lambda r: self.now() + OFFLINE_REFRESH_TTL)
        for jti, exp in jtis:
            self.authority.revoke(jti, exp)

    # -- issuing --------------------------------------------------------------------------------------------
    def generate_token(self, grant_type, client, user=None, scope=None, expires_in=None,
                       include_refresh_token=True):
        now = int(self.now())
        ttl = int(self.settings.access_token_ttl)
        subject: Subject | None = user
        claims = {"iss": self.issuer(), "aud": self.fhir_base(),
                  "sub": subject.account_id if subject else client.get_client_id(),
                  "exp": now + ttl, "iat": now, "jti": self.authority.new_jti(),
                  "client_id": client.get_client_id(), "scope": scope or "",
                  "role": subject.role if subject else "system"}
        if subject and subject.patient:
            claims["patient"] = subject.patient
        if subject and subject.fhir_user:
            claims["fhirUser"] = subject.fhir_user
        token = {"access_token": self.authority.encode(claims), "token_type": "Bearer", "expires_in": ttl,
                 "scope": scope or ""}
        scopes = smart_scopes.split(scope)
        if include_refresh_token and subject is not None and client.check_grant_type("refresh_token") and \
                ("offline_access" in scopes or "online_access" in scopes):
            token["refresh_token"] = secrets.token_urlsafe(32)
        token["_claims"] = claims  # taken out again by save_token, never sent
        return token

    def save_token(self, token: dict, request) -> None:
        claims = token.pop("_claims")
        subject: Subject | None = request.user if isinstance(request.user, Subject) else None
        now = self.now()
        family = subject.family if subject else None
        if "refresh_token" in token and subject is not None:
            scopes = smart_scopes.split(token["scope"])
            offline = "offline_access" in scopes
            expires = now + (OFFLINE_REFRESH_TTL if offline else ONLINE_REFRESH_TTL)
            family = family or secrets.token_urlsafe(16)
            subject.family = family
            self.store.put("refresh_tokens", token_key(token["refresh_token"]), {
                "client_id": claims["client_id"], "scope": token["scope"], "subject": subject.record(),
                "expires": expires, "used": False, "created": now}, expires)
        if family:
            def track(record):
                record = record or {"revoked": False, "jtis": []}
                record["jtis"] = [j for j in record["jtis"] if j[1] > now] + [[claims["jti"], claims["exp"]]]
                return record
            self.store.update("token_families", family, track, now,
                              expires=lambda r: now + OFFLINE_REFRESH_TTL + 86400)
        code = getattr(request, "authorization_code", None)
        if isinstance(code, AuthorizationCode):
            def issued(record):
                if record is not None:
                    record["issued"].append([claims["jti"], claims["exp"]])
                    record["family"] = family
                return record
            self.store.update("codes", code.key, issued, now)
        if subject is not None:
            if subject.patient:
                token["patient"] = subject.patient
                token["need_patient_banner"] = subject.need_patient_banner
            if subject.encounter:
                token["encounter"] = subject.encounter
            if subject.fhir_user:
                token["fhirUser"] = subject.fhir_user
            token["smart_style_url"] = self.issuer() + "/smart-style.json"
        self.store.maybe_purge(now)

    # -- introspection and revocation -----------------------------------------------------------------------
    def find_token(self, token_string: str, hint: str | None):
        now = self.now()
        if hint != "refresh_token" and token_string.count(".") == 2:
            try:
                claims = self.authority.decode(token_string)
            except TokenError:
                claims = None
            if claims and isinstance(claims.get("exp"), (int, float)) and claims.get("jti"):
                return AccessToken(claims, now, self.authority.is_revoked(claims["jti"])
                                   or self.authority.client_revoked(claims.get("client_id")))
        record = self.store.get("refresh_tokens", token_key(token_string), now)
        if record is None:
            return None
        family = self.store.get("token_families", record["subject"].get("family") or "-", now)
        revoked = record["used"] or family is None or bool(family.get("revoked"))
        return RefreshToken(token_key(token_string), record, now, revoked=revoked)

    def revoke(self, token) -> None:
        if isinstance(token, AccessToken):
            self.authority.revoke(token.claims["jti"], token.claims["exp"])
        elif isinstance(token, RefreshToken):
            self.store.delete("refresh_tokens", token.key)
            self.revoke_family(token.subject.family)

    def is_revoked(self, jti: str) -> bool:
        return self.authority.is_revoked(jti)


def patient_label(patient: dict) -> str:
    names = patient.get("name") or []
    text = ""
    if names and isinstance(names[0], dict):
        name = names[0]
        text = name.get("text") or " ".join([*(name.get("given") or []), name.get("family") or ""]).strip()
    birth = patient.get("birthDate")
    return " ".join(p for p in (text or "(no name)", f"born {birth}" if birth else "") if p)


__all__ = ["SmartAuth", "SmartAuthorizationServer", "StoredAuthorizationRequest", "Subject"]
