"""Signing keys, access-token JWTs (docs/adr/0005-access-tokens.md) and the revocation list.

:class:`TokenAuthority` is also what an in-process resource server uses::

    from auth import token_authority
    authority = token_authority(store)          # the FHIR store: same database, same keys
    authority.key_set()                         # joserfc KeySet of the public signing keys
    authority.jwks()                            # the same as a JWKS dict ({issuer}/.well-known/jwks.json)
    authority.is_revoked(claims["jti"])         # True once the token was revoked (RFC 7009)
    authority.verify(token, audience=..., issuer=...)   # full check, returns the claims (raises TokenError)

The signing key (RSA 2048, RS256) is generated once, stored in the database and shared by every
worker process; a key that another process stored first wins.
"""
from __future__ import annotations

import threading
import time
import uuid
import weakref
from typing import Any, Callable

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from auth.storage import AuthStore, open_auth_store

ALGORITHM = "RS256"
LEEWAY = 60
CLIENT_CHECK_TTL = 5.0  # seconds a client's revocation status is trusted in one process


class TokenError(Exception):
    """The token is not acceptable (malformed, forged, expired, wrong audience or issuer, revoked)."""


class TokenAuthority:
    def __init__(self, auth_store: AuthStore, clock: Callable[[], float] = time.time):
        self.auth_store = auth_store
        self.clock = clock
        self._lock = threading.Lock()
        self._private: RSAKey | None = None
        self._public: KeySet | None = None
        self._jwks: dict | None = None
        self._clients_checked: dict[str, tuple[float, bool]] = {}  # client_id -> (when looked up, revoked)

    # -- keys -----------------------------------------------------------------------------------------------
    def signing_key(self) -> RSAKey:
        if self._private is None:
            with self._lock:
                if self._private is None:
                    record = self.auth_store.get("keys", "signing", self.clock())
                    if record is None:
                        key = RSAKey.generate_key(2048, parameters={"alg": ALGORITHM, "use": "sig"},
                                                  auto_kid=True)
                        self.auth_store.add("keys", "signing", {"jwk": key.as_dict(private=True),
                                                                "created": self.clock()}, None, self.clock())
                        record = self.auth_store.get("keys", "signing", self.clock())
                    self._private = RSAKey.import_key(record["jwk"])
        return self._private

    @property
    def kid(self) -> str:
        return self.signing_key().kid

    def jwks(self) -> dict:
        """The public JWKS to publish (a fresh copy of the cached document)."""
        if self._jwks is None:
            self._jwks = {"keys": [self.signing_key().as_dict(private=False)]}
        return {"keys": [dict(k) for k in self._jwks["keys"]]}

    def key_set(self) -> KeySet:
        if self._public is None:
            self._public = KeySet.import_key_set(self.jwks())
        return self._public

    # -- tokens ---------------------------------------------------------------------------------------------
    def encode(self, claims: dict, typ: str = "at+jwt") -> str:
        key = self.signing_key()
        return jwt.encode({"alg": ALGORITHM, "kid": key.kid, "typ": typ}, claims, key, algorithms=[ALGORITHM])

    def decode(self, token: str) -> dict:
        """The claims of a token signed by our key; signature only (no time or audience checks)."""
        try:
            return dict(jwt.decode(token, self.key_set(), algorithms=[ALGORITHM]).claims)
        except (JoseError, ValueError, TypeError) as exc:
            raise TokenError(f"not a token of this server: {exc}") from None

    def verify(self, token: str, *, audience: str | None = None, issuer: str | None = None,
               leeway: int = LEEWAY) -> dict:
        """Signature, ``exp`` (with leeway), ``aud``, ``iss`` and the revocation list; returns the claims."""
        claims = self.decode(token)
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp + leeway <= now:
            raise TokenError("the token has expired")
        if audience is not None:
            aud = claims.get("aud")
            auds = aud if isinstance(aud, list) else [aud]
            if audience.rstrip("/") not in [str(a).rstrip("/") for a in auds if a]:
                raise TokenError("the token is for another audience")
        if issuer is not None and claims.get("iss") != issuer:
            raise TokenError("the token comes from another issuer")
        if self.is_revoked(claims.get("jti")):
            raise TokenError("the token has been revoked")
        return claims

    # -- revocation -----------------------------------------------------------------------------------------
    def is_revoked(self, jti: Any) -> bool:
        if not isinstance(jti, str) or not jti:
            return True
        return self.auth_store.get("revoked", jti, self.clock()) is not None

    def client_revoked(self, client_id: Any) -> bool:
        """Whether the client a token was issued to has been withdrawn (``fhir-server clients revoke``).
        Looked up at most every ``CLIENT_CHECK_TTL`` seconds per client in this process, so a revocation
        takes effect everywhere within that delay without a store read per request."""
        if not isinstance(client_id, str) or not client_id:
            return False
        now = self.clock()
        cached = self._clients_checked.get(client_id)
        if cached is not None and now - cached[0] < CLIENT_CHECK_TTL:
            return cached[1]
        record = self.auth_store.get("clients", client_id, now)
        revoked = bool(record and record.get("revoked_at"))
        if len(self._clients_checked) > 10_000:
            self._clients_checked.clear()
        self._clients_checked[client_id] = (now, revoked)
        return revoked

    def revoke(self, jti: str, exp: float | None) -> None:
        """Deny ``jti`` until it would have expired anyway (plus the verifiers' leeway)."""
        until = (exp + LEEWAY + 60) if exp else self.clock() + 86400
        self.auth_store.put("revoked", jti, {"revoked_at": self.clock()}, until)

    @staticmethod
    def new_jti() -> str:
        return uuid.uuid4().hex


_lock = threading.Lock()
_authorities: "weakref.WeakKeyDictionary[Any, TokenAuthority]" = weakref.WeakKeyDictionary()


def token_authority(store: Any, authority: TokenAuthority | None = None) -> TokenAuthority:
    """The TokenAuthority of the database behind a FHIR store (one per store object).

    The authorization server registers its own (``authority``) when it is set up on an app, so an
    in-process resource server shares its clock and key cache.
    """
    with _lock:
        if authority is not None:
            _authorities[store] = authority
        found = _authorities.get(store)
        if found is None:
            found = _authorities[store] = TokenAuthority(open_auth_store(store))
        return found
