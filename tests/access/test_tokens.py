"""Access-token verification on the resource server (ADR 0005) and the 401 answers of the gate."""
from __future__ import annotations

import base64
import json
import time

import pytest
from access_helpers import BASE, ISSUER, claims_for, sign

from fhir_server.access.tokens import InvalidToken, KeyCache, KeysUnavailable, TokenVerifier


@pytest.fixture
def verifier(signing_key):
    revoked = {"revoked-jti"}
    return TokenVerifier(lambda: {"keys": [signing_key.as_dict(private=False)]}, audience=BASE, issuer=ISSUER,
                         is_revoked=revoked.__contains__)


def test_a_good_token_gives_its_claims(verifier, signing_key):
    claims = claims_for("patient/*.rs", "pa")
    assert verifier.verify(sign(signing_key, claims)) == claims


@pytest.mark.parametrize("change, reason", [
    ({"exp": int(time.time()) - 61}, "expired"),
    ({"aud": "http://elsewhere.test/fhir"}, "audience"),
    ({"aud": ["http://elsewhere.test/fhir"]}, "audience"),
    ({"iss": "http://evil.test/auth"}, "issuer"),
    ({"jti": "revoked-jti"}, "revoked"),
    ({"jti": None}, "jti"),
    ({"exp": None}, "expiry"),
    ({"nbf": int(time.time()) + 600}, "not valid yet"),
])
def test_bad_claims_are_refused(verifier, signing_key, change, reason):
    claims = claims_for("patient/*.rs", "pa")
    claims.update(change)
    with pytest.raises(InvalidToken, match=reason):
        verifier.verify(sign(signing_key, {k: v for k, v in claims.items() if v is not None}))


def test_leeway_and_audience_list(verifier, signing_key):
    claims = claims_for("patient/*.rs", "pa", exp=int(time.time()) - 30, aud=["other", BASE + "/"])
    assert verifier.verify(sign(signing_key, claims))["sub"] == "account-1"


def test_forged_unsigned_and_foreign_tokens_are_refused(verifier, signing_key, other_key):
    claims = claims_for("user/*.*")
    with pytest.raises(InvalidToken):  # signed by another key claiming our kid
        verifier.verify(sign(other_key, claims, kid=signing_key.kid))
    with pytest.raises(InvalidToken):  # another key, its own kid
        verifier.verify(sign(other_key, claims))
    good = sign(signing_key, claims)
    head, payload, signature = good.split(".")
    tampered = dict(claims, scope="system/*.cruds")
    forged_payload = base64.urlsafe_b64encode(json.dumps(tampered).encode()).decode().rstrip("=")
    with pytest.raises(InvalidToken):  # claims changed after signing
        verifier.verify(f"{head}.{forged_payload}.{signature}")
    none_head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').decode().rstrip("=")
    with pytest.raises(InvalidToken, match="RS256"):
        verifier.verify(f"{none_head}.{payload}.")
    with pytest.raises(InvalidToken, match="not an access token"):  # an id_token is no access token
        verifier.verify(sign(signing_key, claims, typ="JWT"))
    for garbage in ("", "abc", "a.b", "a.b.c.d.e", "!!!.???.###"):
        with pytest.raises(InvalidToken):
            verifier.verify(garbage)


def test_jwks_url_is_cached_and_refetched_for_an_unknown_kid(signing_key, other_key):
    fetched = []
    current = {"keys": [signing_key.as_dict(private=False)]}
    now = [1000.0]

    def fetch(url):
        fetched.append(url)
        return current

    keys = KeyCache("https://auth.test/auth/.well-known/jwks.json", clock=lambda: now[0], fetch=fetch)
    verifier = TokenVerifier(keys, audience=BASE, issuer=ISSUER, clock=time.time)
    verifier.verify(sign(signing_key, claims_for("user/*.*")))
    verifier.verify(sign(signing_key, claims_for("user/*.*")))
    assert len(fetched) == 1  # cached
    now[0] += 301
    verifier.verify(sign(signing_key, claims_for("user/*.*")))
    assert len(fetched) == 2  # the TTL passed
    current = {"keys": [signing_key.as_dict(private=False), other_key.as_dict(private=False)]}  # rotation
    now[0] += 31
    verifier.verify(sign(other_key, claims_for("user/*.*")))
    assert len(fetched) == 3  # an unknown kid fetched the new set at once
    with pytest.raises(InvalidToken):
        verifier.verify(sign(other_key, claims_for("user/*.*"), kid="never-published"))
    assert len(fetched) == 3  # ... but not more than once per 30 s


def test_unreachable_jwks_url_without_cache(signing_key):
    def fetch(url):
        raise OSError("connection refused")

    verifier = TokenVerifier(KeyCache("https://auth.test/jwks", fetch=fetch), audience=BASE, issuer=ISSUER)
    with pytest.raises(KeysUnavailable):
        verifier.verify(sign(signing_key, claims_for("user/*.*")))


# -- through HTTP -------------------------------------------------------------------------------------
def _assert_401(response, error: str | None):
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="fhir"')
    assert (f'error="{error}"' in challenge) if error else "error=" not in challenge
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"


def test_missing_token_is_401_with_a_bearer_challenge(smart):
    _assert_401(smart.client.get("/fhir/Patient"), None)
    _assert_401(smart.client.get("/fhir/Patient/pa"), None)
    _assert_401(smart.client.post("/fhir/Patient", json={"resourceType": "Patient"}), None)
    _assert_401(smart.client.get("/fhir/Patient", headers={"Authorization": "Basic dXNlcjpwYXNz"}),
                "invalid_request")


@pytest.mark.parametrize("change", [
    {"exp": int(time.time()) - 120}, {"aud": "http://elsewhere.test/fhir"}, {"iss": "http://evil.test/auth"}])
def test_expired_wrong_audience_wrong_issuer_are_401_invalid_token(smart, change):
    token = sign(smart.key, claims_for("user/*.*", **change))
    _assert_401(smart.client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"}), "invalid_token")


def test_forged_and_revoked_tokens_are_401(smart, other_key):
    forged = sign(other_key, claims_for("user/*.*"), kid=smart.key.kid)
    _assert_401(smart.client.get("/fhir/Patient", headers={"Authorization": f"Bearer {forged}"}), "invalid_token")
    claims = claims_for("user/*.*")
    token = sign(smart.key, claims)
    assert smart.client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    smart.revoked.add(claims["jti"])
    _assert_401(smart.client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"}), "invalid_token")
    _assert_401(smart.client.get("/fhir/Patient", headers={"Authorization": "Bearer not-a-jwt"}), "invalid_token")


def test_metadata_and_discovery_stay_public(smart):
    assert smart.client.get("/fhir/metadata").status_code == 200
    assert smart.client.get("/fhir/.well-known/smart-configuration").status_code == 200


def test_a_valid_token_without_the_scope_is_403(smart):
    response = smart.client.get("/fhir/Condition", headers=smart.auth("user/Observation.rs"))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert response.get_json()["issue"][0]["code"] == "forbidden"
