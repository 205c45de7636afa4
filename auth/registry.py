"""Operators' operations on accounts, clients and launch contexts (the CLI, the launch endpoint, tests)."""
from __future__ import annotations

import json
import secrets
import uuid
from urllib.parse import urlparse

from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from auth import scopes as smart_scopes
from auth.models import FHIR_USER, ROLE_RESOURCE, ROLES, Account, secret_digest
from auth.passwords import hash_password
from auth.storage import AuthStore

LAUNCH_TTL = 3600  # seconds an EHR launch context stays usable
GRANTS = ("authorization_code", "client_credentials")


class RegistryError(ValueError):
    """A request an operator must fix (message is for people)."""


def user_key(username: str) -> str:
    return username.strip().lower()


def find_account(store: AuthStore, username: str, now: float) -> Account | None:
    if not username or not username.strip():
        return None
    record = store.get("users", user_key(username), now)
    return Account.from_record(record) if record else None


def add_user(store: AuthStore, *, username: str, password: str, role: str, now: float,
             email: str | None = None, phone: str | None = None, fhir_user: str | None = None) -> Account:
    username = (username or "").strip()
    if not username or len(username) > 128 or any(c.isspace() for c in username):
        raise RegistryError("the username must be 1 to 128 characters without spaces")
    if role not in ROLES:
        raise RegistryError(f"the role must be one of {', '.join(ROLES)}")
    if not password or len(password) < 8:
        raise RegistryError("the password must have at least 8 characters")
    if fhir_user is not None:
        if not FHIR_USER.match(fhir_user):
            raise RegistryError("--fhir-user must be Patient/ID, Practitioner/ID or RelatedPerson/ID")
        expected = ROLE_RESOURCE.get(role)
        if expected and not fhir_user.startswith(expected + "/"):
            raise RegistryError(f"a {role} account links to a {expected} resource, not {fhir_user}")
    if email is not None and ("@" not in email or any(c.isspace() for c in email)):
        raise RegistryError(f"not an e-mail address: {email!r}")
    if phone is not None and not phone.replace("+", "", 1).replace(" ", "").isdigit():
        raise RegistryError(f"not a phone number: {phone!r} (use digits, e.g. +33612345678)")
    if not email and not phone:
        raise RegistryError("give --email or --phone: the one-time login codes are sent there")
    account = Account(id=str(uuid.uuid4()), username=username, role=role,
                      password_hash=hash_password(password), email=email, phone=phone,
                      fhir_user=fhir_user, created=now)
    if not store.add("users", user_key(username), account.record(), None, now):
        raise RegistryError(f"the username {username!r} is taken")
    return account


def _check_redirect_uri(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.fragment or not parsed.scheme or (parsed.scheme in ("http", "https") and not parsed.netloc):
        raise RegistryError(f"not an absolute redirect URI without fragment: {uri!r}")
    if parsed.scheme == "http" and parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
        raise RegistryError(f"plain http redirect URIs are only allowed on loopback hosts: {uri!r}")
    return uri


def load_jwks(data: dict | str) -> dict:
    """A public JWKS (dict or JSON text), checked importable and without private parts."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise RegistryError(f"the JWKS is not JSON: {exc}") from None
    if isinstance(data, dict) and "keys" not in data and "kty" in data:
        data = {"keys": [data]}
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise RegistryError("a JWKS is a JSON object {\"keys\": [...]} with at least one key")
    if any(isinstance(k, dict) and any(p in k for p in ("d", "p", "q", "k")) for k in data["keys"]):
        raise RegistryError("the JWKS holds private key material: register the public keys only")
    try:
        KeySet.import_key_set(data)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise RegistryError(f"the JWKS cannot be read: {exc}") from None
    return data


def register_client(store: AuthStore, *, name: str, now: float, redirect_uris: list[str] | None = None,
                    public: bool = False, scope: str | None = None, jwks: dict | None = None,
                    jwks_uri: str | None = None, grant: str = "authorization_code",
                    dynamic: bool = False) -> tuple[dict, str | None]:
    """Store a client; returns (record without secret hash, client_secret or None).

    A confidential client with a JWKS (or JWKS URL) authenticates with ``private_key_jwt``; without,
    it gets a secret for ``client_secret_basic``; a public client (``public=True``) uses ``none``.
    """
    if grant not in GRANTS:
        raise RegistryError(f"the grant must be one of {', '.join(GRANTS)}")
    if not name or not name.strip():
        raise RegistryError("the client needs a name")
    if jwks is not None and jwks_uri is not None:
        raise RegistryError("give a JWKS or a JWKS URL, not both")
    if public and (jwks is not None or jwks_uri is not None):
        raise RegistryError("a public client has no keys; drop --public to register a private_key_jwt client")
    if public and grant == "client_credentials":
        raise RegistryError("client_credentials needs a confidential client (--jwks, --jwks-url or a secret)")
    if jwks_uri is not None:
        parsed = urlparse(jwks_uri)
        if parsed.scheme != "https" and parsed.hostname not in ("localhost", "127.0.0.1", "::1"):
            raise RegistryError("the JWKS URL must use https")
    redirect_uris = [_check_redirect_uri(u) for u in (redirect_uris or [])]
    if grant == "authorization_code" and not redirect_uris:
        raise RegistryError("an authorization_code client needs a redirect URI")
    kind = "client_credentials" if grant == "client_credentials" else "authorization_code"
    if scope:
        unusable = [s for s in smart_scopes.split(scope) if not smart_scopes.grantable(s, None, kind)]
        if unusable:
            raise RegistryError(f"not grantable with {grant}: {' '.join(unusable)}")
    secret = None
    if public:
        method = "none"
    elif jwks is not None or jwks_uri is not None:
        method = "private_key_jwt"
    else:
        method = "client_secret_basic"
        secret = secrets.token_urlsafe(32)
    record = {
        "client_id": secrets.token_urlsafe(16),
        "client_name": name.strip(),
        "redirect_uris": redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"] if grant == "authorization_code"
        else ["client_credentials"],
        "response_types": ["code"] if grant == "authorization_code" else [],
        "token_endpoint_auth_method": method,
        "scope": " ".join(smart_scopes.split(scope)) if scope else "",
        "jwks": load_jwks(jwks) if jwks is not None else None,
        "jwks_uri": jwks_uri,
        "created": now,
        "dynamic": dynamic,
    }
    if secret:
        record["client_secret_hash"] = secret_digest(secret)
    store.put("clients", record["client_id"], record)
    return {k: v for k, v in record.items() if k != "client_secret_hash"}, secret


def revoke_client(store: AuthStore, client_id: str, now: float) -> dict:
    """Withdraw a client application: the token endpoint no longer knows it, and the access tokens it holds
    stop working at every verifier of this store within a few seconds (``TokenAuthority.client_revoked``).
    Kept (marked ``revoked_at``), not deleted: its traces and subscriptions still name it."""
    if store.get("clients", client_id, now) is None:
        raise RegistryError(f"no client {client_id!r}")
    record = store.update("clients", client_id, lambda old: dict(old or {}, revoked_at=(old or {}).get("revoked_at")
                                                                    or now), now)
    return {"client_id": client_id, "client_name": record.get("client_name"), "revoked_at": record["revoked_at"]}


def create_launch(store: AuthStore, *, patient: str, now: float, user: str | None = None,
                  encounter: str | None = None, ttl: int = LAUNCH_TTL) -> dict:
    """An EHR launch context: the ``launch`` value binds an authorization request to this patient."""
    if not patient or not all(c.isalnum() or c in "-." for c in patient) or len(patient) > 64:
        raise RegistryError("--patient takes a Patient id (letters, digits, '-' and '.')")
    if user is not None and find_account(store, user, now) is None:
        raise RegistryError(f"no account named {user!r}")
    launch = secrets.token_urlsafe(24)
    record = {"patient": patient, "user": user_key(user) if user else None, "encounter": encounter,
              "created": now}
    store.put("launches", launch, record, now + ttl)
    return {"launch": launch, "patient": patient, "user": user, "expires_in": ttl}
