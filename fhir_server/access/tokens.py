"""Verify SMART access tokens on the resource server (docs/adr/0005-access-tokens.md).

The resource server never calls the authorization server to accept a token. It checks, on its own:

* the RS256 signature, against the authorization server's public keys: a callable returning the
  current JWKS (in-process: the auth server's key set) or a JWKS URL fetched and cached for a short
  time (split deployment; refetched early when a token names an unknown ``kid``, for key rotation);
* ``exp`` (with 60 s leeway; ``nbf`` too when present), ``aud`` = the FHIR base URL, ``iss`` = the
  configured issuer, a ``jti``, and ``typ`` (``at+jwt`` when given: an ``id_token`` is no access token);
* the revocation deny list when one is given (``is_revoked(jti) -> bool``).

Every refusal is :class:`InvalidToken` with a short reason; the gate turns it into a 401.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from typing import Any, Callable, Union

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

ALGORITHMS = ["RS256"]
LEEWAY = 60  # seconds of clock skew allowed on exp / nbf
JWKS_TTL = 300  # seconds a fetched JWKS is used before it is fetched again
JWKS_MIN_REFRESH = 30  # seconds between two fetches caused by unknown key ids
ACCESS_TOKEN_TYPES = {"at+jwt", "application/at+jwt"}

KeySource = Union[str, Callable[[], Any]]  # a JWKS URL, or a callable returning a JWKS dict (or a KeySet)
Text = Union[str, Callable[[], str]]


class InvalidToken(Exception):
    """The bearer token is not acceptable: malformed, forged, expired, for another audience or issuer, revoked."""


class KeysUnavailable(Exception):
    """The signing keys cannot be obtained (JWKS URL unreachable and nothing cached)."""


def _b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _text(value: Text | None) -> str | None:
    return value() if callable(value) else value


class KeyCache:
    """The verification keys: from a callable (asked every time, imported again only when it changes) or
    from a JWKS URL (fetched, cached ``ttl`` seconds, fetched early for an unknown ``kid``)."""

    def __init__(self, source: KeySource, *, ttl: float = JWKS_TTL, clock: Callable[[], float] = time.time,
                 fetch: Callable[[str], dict] | None = None):
        self.source = source
        self.ttl = ttl
        self.clock = clock
        self.fetch = fetch or self._fetch_url
        self._lock = threading.Lock()
        self._jwks: Any = None
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")

    @staticmethod
    def _fetch_url(url: str) -> dict:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (configured https URL)
            return json.loads(response.read(1_000_000))

    def _import(self, jwks: Any) -> KeySet:
        if isinstance(jwks, KeySet):
            return jwks
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise KeysUnavailable("the key source did not return a JWKS")
        public = [k for k in jwks["keys"] if isinstance(k, dict) and k.get("kty") == "RSA"
                  and k.get("use", "sig") == "sig"]
        return KeySet.import_key_set({"keys": public})

    def keys(self, *, refresh: bool = False) -> KeySet:
        if callable(self.source):
            jwks = self.source()
            with self._lock:
                if self._keys is None or jwks is not self._jwks and jwks != self._jwks:
                    self._keys, self._jwks = self._import(jwks), jwks
                return self._keys
        with self._lock:
            now = self.clock()
            stale = now - self._fetched_at >= self.ttl
            early = refresh and now - self._fetched_at >= JWKS_MIN_REFRESH
            if self._keys is None or stale or early:
                try:
                    self._keys = self._import(self.fetch(self.source))
                    self._fetched_at = now
                except Exception as exc:  # network, JSON, key format: keep the last good keys if any
                    if self._keys is None:
                        raise KeysUnavailable(f"cannot fetch the JWKS from {self.source}: {exc}") from None
            return self._keys

    def key_for(self, kid: str | None) -> Any:
        for refresh in (False, True):
            keys = self.keys(refresh=refresh)
            if kid is None:
                if len(keys.keys) == 1:
                    return keys.keys[0]
                raise InvalidToken("the token names no signing key (kid)")
            try:
                return keys.get_by_kid(kid)
            except (ValueError, KeyError, JoseError):
                if callable(self.source):
                    break
        raise InvalidToken("the token is not signed by a key of the authorization server")


class TokenVerifier:
    """Checks a bearer token and returns its claims (raises :class:`InvalidToken`).

    ``audience`` and ``issuer`` are strings or callables (the FHIR base URL may come from the request
    when no base URL is configured). ``is_revoked(jti)`` is the deny list of the authorization server
    when it shares this server's database; leave it None in a split deployment.
    """

    def __init__(self, keys: KeySource | KeyCache, *, audience: Text, issuer: Text | None,
                 is_revoked: Callable[[str], bool] | None = None,
                 client_revoked: Callable[[str], bool] | None = None, leeway: int = LEEWAY,
                 clock: Callable[[], float] = time.time):
        self.keys = keys if isinstance(keys, KeyCache) else KeyCache(keys, clock=clock)
        self.audience = audience
        self.issuer = issuer
        self.is_revoked = is_revoked
        self.client_revoked = client_revoked  # the client application was withdrawn (operators)
        self.leeway = leeway
        self.clock = clock

    def verify(self, token: str) -> dict:
        segments = token.split(".")
        if len(segments) != 3 or not all(segments[:2]):
            raise InvalidToken("the bearer token is not a signed JWT")
        try:
            header = _b64json(segments[0])
        except (ValueError, TypeError):
            raise InvalidToken("the bearer token is not a signed JWT") from None
        if not isinstance(header, dict) or header.get("alg") not in ALGORITHMS:
            raise InvalidToken("the token must be signed with RS256")
        typ = header.get("typ")
        if typ is not None and str(typ).lower() not in ACCESS_TOKEN_TYPES:
            raise InvalidToken("the token is not an access token")
        kid = header.get("kid")
        key = self.keys.key_for(kid if isinstance(kid, str) else None)
        try:
            claims = dict(jwt.decode(token, key, algorithms=ALGORITHMS).claims)
        except (JoseError, ValueError, TypeError):
            raise InvalidToken("the token signature is not valid") from None
        self.check_claims(claims)
        return claims

    def check_claims(self, claims: dict) -> None:
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise InvalidToken("the token has no expiry")
        if now > exp + self.leeway:
            raise InvalidToken("the token has expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) and now + self.leeway < nbf:
            raise InvalidToken("the token is not valid yet")
        audience = (_text(self.audience) or "").rstrip("/")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not audience or audience not in [a.rstrip("/") for a in auds if isinstance(a, str)]:
            raise InvalidToken("the token is for another audience")
        issuer = _text(self.issuer)
        if issuer is not None and claims.get("iss") != issuer:
            raise InvalidToken("the token comes from another issuer")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise InvalidToken("the token has no identifier (jti)")
        if self.is_revoked is not None and self.is_revoked(jti):
            raise InvalidToken("the token has been revoked")
        client = claims.get("client_id")
        if self.client_revoked is not None and isinstance(client, str) and self.client_revoked(client):
            raise InvalidToken("the client application this token was issued to has been revoked")
