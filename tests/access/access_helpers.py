"""Helpers for the SMART resource-server tests: tokens minted with a test RSA key, a client wrapper,
and a small record of two patients (A: ``pa``, B: ``pb``)."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from joserfc import jwt
from joserfc.jwk import RSAKey

BASE = "http://fhir.test/fhir"
ISSUER = "http://fhir.test/auth"
FHIR_JSON = "application/fhir+json"
LAB = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
VITALS = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                      "code": "vital-signs"}]}


def sign(key: RSAKey, claims: dict, typ: str = "at+jwt", kid: str | None = None) -> str:
    header = {"alg": "RS256", "kid": kid or key.kid, "typ": typ}
    return jwt.encode(header, claims, key, algorithms=["RS256"])


def claims_for(scope: str, patient: str | None = None, **extra) -> dict:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": BASE, "sub": "account-1", "exp": now + 3600, "iat": now,
              "jti": uuid.uuid4().hex, "client_id": "app-1", "scope": scope, "role": "admin"}
    if patient is not None:
        claims.update(patient=patient, role="patient", fhirUser=f"Patient/{patient}")
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


@dataclass
class Smart:
    client: object
    key: RSAKey
    revoked: set = field(default_factory=set)

    def token(self, scope: str, patient: str | None = None, **extra) -> str:
        return sign(self.key, claims_for(scope, patient, **extra))

    def auth(self, scope: str, patient: str | None = None, **extra) -> dict:
        return {"Authorization": f"Bearer {self.token(scope, patient, **extra)}"}

    def get(self, path: str, headers: dict):
        return self.client.get(path, headers=headers)

    def send(self, method: str, path: str, body, headers: dict, content_type: str = FHIR_JSON):
        return self.client.open(path, method=method, data=json.dumps(body),
                                headers={"Content-Type": content_type, **headers})


# -- the record -----------------------------------------------------------------------------------
def observation(oid: str, patient: str, category: dict, **extra) -> dict:
    body = {"resourceType": "Observation", "id": oid, "status": "final", "category": [category],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": f"Patient/{patient}"}}
    body.update(extra)
    return body


def creation_consent(patient: str, cid: str | None = None, status: str = "active") -> dict:
    """The consent that opens a patient's record (issue #7 rule 2)."""
    return {"resourceType": "Consent", "id": cid or f"creation-{patient}", "status": status,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "https://dmp.example.org/fhir/CodeSystem/dmp-consent-kind",
                                      "code": "CREATION_DMP"}]}],
            "patient": {"reference": f"Patient/{patient}"}, "dateTime": "2026-01-05T10:00:00+01:00",
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentpolicycodes",
                                       "code": "cric"}]}}


RECORD = [
    {"resourceType": "Patient", "id": "pa", "name": [{"family": "Alpha"}]},
    {"resourceType": "Patient", "id": "pb", "name": [{"family": "Bravo"}]},
    creation_consent("pa"),
    creation_consent("pb"),
    {"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "House"}]},
    observation("ob1", "pb", LAB, performer=[{"reference": "Practitioner/dr1"}]),
    # B's observation about A (focus): not in A's compartment, must not show through A's _has
    observation("ob2", "pb", LAB, focus=[{"reference": "Patient/pa"}],
                code={"coding": [{"system": "http://loinc.org", "code": "secret"}]}),
    observation("oa1", "pa", LAB, performer=[{"reference": "Practitioner/dr1"}],
                derivedFrom=[{"reference": "Observation/ob1"}]),
    observation("oa2", "pa", VITALS),
    {"resourceType": "Condition", "id": "ca1", "subject": {"reference": "Patient/pa"},
     "code": {"text": "asthma"}},
    {"resourceType": "Condition", "id": "cb1", "subject": {"reference": "Patient/pb"},
     "code": {"text": "secret condition"}},
]
ADMIN = "system/*.cruds"


def admin_headers(smart: "Smart") -> dict:
    return smart.auth(ADMIN, role="system", sub="backend")


def ids(bundle: dict, mode: str | None = None) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if "id" in e.get("resource", {}) and (mode is None or e.get("search", {}).get("mode") == mode)}
