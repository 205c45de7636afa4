"""The objects authlib works with, as thin views over the stored JSON records (see :mod:`auth.storage`)."""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import asdict, dataclass, field

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin
from authlib.oidc.core import AuthorizationCodeMixin

from auth import scopes as smart_scopes

ROLES = ("patient", "practitioner", "related-person", "admin")
ROLE_RESOURCE = {"patient": "Patient", "practitioner": "Practitioner", "related-person": "RelatedPerson"}
FHIR_USER = re.compile(r"^(Patient|Practitioner|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$")
AUTH_METHODS = ("none", "client_secret_basic", "private_key_jwt")


def secret_digest(secret: str) -> str:
    """Client secrets are long random strings: a plain SHA-256 is enough to keep them unreadable at rest."""
    return hashlib.sha256(secret.encode()).hexdigest()


def token_key(token: str) -> str:
    """The storage key of an opaque code or refresh token (never stored in clear)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Account:
    id: str
    username: str
    role: str
    password_hash: str
    email: str | None = None
    phone: str | None = None
    fhir_user: str | None = None
    created: float = 0.0
    disabled: bool = False

    @classmethod
    def from_record(cls, data: dict) -> "Account":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})

    def record(self) -> dict:
        return asdict(self)

    @property
    def own_patient(self) -> str | None:
        if self.role == "patient" and self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user.split("/", 1)[1]
        return None

    @property
    def contact(self) -> tuple[str, str] | None:
        """(channel, address) for one-time codes: e-mail if set, else phone."""
        if self.email:
            return "email", self.email
        if self.phone:
            return "sms", self.phone
        return None


@dataclass
class Subject:
    """Who a token acts for, with its launch context: the ``user`` authlib passes around.

    Built at approval from the signed-in account and the chosen patient or EHR launch context;
    copied into the authorization code and every refresh token, so a refresh keeps the context.
    """

    account_id: str | None
    username: str | None
    role: str
    fhir_user: str | None = None
    patient: str | None = None
    encounter: str | None = None
    need_patient_banner: bool = False
    auth_time: int | None = None
    session: str | None = None     # browser session id (online_access refresh tokens live with it)
    family: str | None = None      # refresh-token family (rotation chain)
    extra: dict = field(default_factory=dict)

    def get_user_id(self):
        return self.account_id

    def record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, data: dict) -> "Subject":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


class Client(ClientMixin):
    def __init__(self, data: dict):
        self.data = data

    @property
    def client_id(self) -> str:
        return self.data["client_id"]

    @property
    def auth_method(self) -> str:
        return self.data.get("token_endpoint_auth_method", "none")

    @property
    def is_public(self) -> bool:
        return self.auth_method == "none"

    @property
    def grant_types(self) -> list[str]:
        return list(self.data.get("grant_types") or [])

    @property
    def id_token_signed_response_alg(self) -> str:
        return "RS256"

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None  # SMART: redirect_uri is required in every authorization request

    def get_allowed_scope(self, scope):
        granted = smart_scopes.grantable(scope, self.data.get("scope"), "authorization_code")
        return " ".join(granted) if granted else None

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in (self.data.get("redirect_uris") or [])

    def check_client_secret(self, client_secret):
        stored = self.data.get("client_secret_hash")
        return bool(stored) and hmac.compare_digest(stored, secret_digest(client_secret))

    def check_endpoint_auth_method(self, method, endpoint):
        return method == self.auth_method

    def check_response_type(self, response_type):
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types

    def public_view(self) -> dict:
        return {k: v for k, v in self.data.items() if k != "client_secret_hash"}


class AuthorizationCode(AuthorizationCodeMixin):
    def __init__(self, key: str, data: dict):
        self.key = key
        self.data = data

    @property
    def code_challenge(self):
        return self.data.get("code_challenge")

    @property
    def code_challenge_method(self):
        return self.data.get("code_challenge_method")

    @property
    def subject(self) -> Subject:
        return Subject.from_record(self.data["subject"])

    def get_redirect_uri(self):
        return self.data.get("redirect_uri")

    def get_scope(self):
        return self.data.get("scope") or ""

    def get_nonce(self):
        return self.data.get("nonce")

    def get_auth_time(self):
        return self.data["subject"].get("auth_time")

    def get_acr(self):
        return None

    def get_amr(self):
        return ["pwd", "otp"]


class RefreshToken(TokenMixin):
    def __init__(self, key: str, data: dict, now: float, revoked: bool = False):
        self.key, self.data, self.now, self.revoked = key, data, now, revoked

    @property
    def subject(self) -> Subject:
        return Subject.from_record(self.data["subject"])

    def check_client(self, client):
        return client.get_client_id() == self.data["client_id"]

    def get_scope(self):
        return self.data.get("scope") or ""

    def get_expires_in(self):
        return max(0, int(self.data["expires"] - self.now))

    def is_expired(self):
        return self.data["expires"] <= self.now

    def is_revoked(self):
        return self.revoked


class AccessToken(TokenMixin):
    """A verified access-token JWT (for introspection and revocation)."""

    def __init__(self, claims: dict, now: float, revoked: bool):
        self.claims, self.now, self.revoked = claims, now, revoked

    def check_client(self, client):
        return client.get_client_id() == self.claims.get("client_id")

    def get_scope(self):
        return self.claims.get("scope") or ""

    def get_expires_in(self):
        return max(0, int(self.claims["exp"] - self.now))

    def is_expired(self):
        return self.claims["exp"] <= self.now

    def is_revoked(self):
        return self.revoked
