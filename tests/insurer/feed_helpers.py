"""The insurer feed's test harness: a SMART-gated app on a fake clock, tokens minted with a test key,
a small record (patients ``pa`` and ``pb``) and care items built on demand."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

from fhir_server.carehistory import INSURER_SYSTEM
from fhir_server.carehistory.synthetic import SyntheticInsurer

BASE = "http://fhir.test/fhir"
ISSUER = "http://fhir.test/auth"
FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
FEED_SCOPE = "system/ExplanationOfBenefit.cu system/Patient.rs"  # the insurer's backend client
ADMIN_SCOPE = "system/*.cruds"
EOB_PROFILE = "https://dmp.example.org/fhir/StructureDefinition/dmp-explanationofbenefit"
NGAP = "https://dmp.example.org/fhir/CodeSystem/dmp-ngap"
CCAM = "https://smt.esante.gouv.fr/terminologie-ccam"
CIP13 = "https://smt.esante.gouv.fr/terminologie-bdpm"
CLAIM_TYPE = "http://terminology.hl7.org/CodeSystem/claim-type"


# two valid dmp-patient records from the synthetic insurer, under short ids
PATIENTS = [dict(SyntheticInsurer(2).patient(i), id=pid) for i, pid in enumerate(("pa", "pb"))]


class FakeClock:
    """``Settings.clock``: a fixed instant the test moves."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# 2026-11-26 00:30 in Paris is still 2026-11-25 in UTC: the window follows the Paris calendar
NOW = datetime(2026, 11, 25, 23, 30, tzinfo=timezone.utc)
CUTOFF = date(2024, 11, 26)  # the first day still shown at NOW


def token(key: RSAKey, scope: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": BASE, "sub": "insurer-feed", "exp": now + 3600, "iat": now,
            "jti": uuid.uuid4().hex, "client_id": "insurer-feed", "scope": scope, "role": "system"}
    body.update(claims)
    return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "at+jwt"}, body, key, algorithms=["RS256"])


@dataclass
class Feed:
    """The client side: an app's test client and the tokens of its principals."""

    client: Any
    key: RSAKey
    server: Any
    clock: FakeClock
    headers: dict = field(default_factory=dict)

    def auth(self, scope: str, **claims: Any) -> dict:
        return {"Authorization": f"Bearer {token(self.key, scope, **claims)}"}

    @property
    def insurer(self) -> dict:
        return self.auth(FEED_SCOPE)

    @property
    def admin(self) -> dict:
        return self.auth(ADMIN_SCOPE, sub="admin-backend", client_id="admin-backend")

    def patient(self, pid: str) -> dict:
        return self.auth("patient/*.rs", sub=f"account-{pid}", client_id="patient-app", role="patient",
                         patient=pid, fhirUser=f"Patient/{pid}")

    def get(self, path: str, headers: dict):
        return self.client.get(path, headers=headers)

    def post(self, path: str, body: Any, headers: dict, content_type: str = FHIR_JSON):
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.client.post(path, data=data, headers={"Content-Type": content_type, **headers})

    def put(self, path: str, body: Any, headers: dict):
        return self.client.put(path, data=json.dumps(body), headers={"Content-Type": FHIR_JSON, **headers})


def care_item(item_id: str, patient: str = "pa", served: str = "2026-10-01", *, code: str = "G",
              system: str = NGAP, kind: str = "professional", **extra: Any) -> dict:
    """One reimbursed care item (dmp-explanationofbenefit) with the insurer's identifier ``item_id``."""
    body = {
        "resourceType": "ExplanationOfBenefit",
        "meta": {"profile": [EOB_PROFILE]},
        "identifier": [{"system": INSURER_SYSTEM, "value": item_id}],
        "status": "active",
        "type": {"coding": [{"system": CLAIM_TYPE, "code": kind}]},
        "use": "claim",
        "patient": {"reference": f"Patient/{patient}"},
        "created": served,
        "insurer": {"display": "Assurance maladie obligatoire"},
        "provider": {"identifier": {"system": "https://rpps.esante.gouv.fr", "value": "10101201234"}},
        "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"display": "Assurance maladie obligatoire"}}],
        "item": [{"sequence": 1, "productOrService": {"coding": [{"system": system, "code": code}]},
                  "servicedDate": served}],
    }
    body.update(extra)
    return body


def conditional_url(item_id: str) -> str:
    return f"ExplanationOfBenefit?identifier={INSURER_SYSTEM}|{item_id}"


def bundle(items: list[dict], kind: str = "batch") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": [
        {"resource": item, "request": {"method": "PUT", "url": conditional_url(item["identifier"][0]["value"])}}
        for item in items]}


def ids(bundle_body: dict) -> list[str]:
    return sorted(e["resource"]["id"] for e in bundle_body.get("entry", []) if "resource" in e)


def identifiers(bundle_body: dict) -> list[str]:
    return sorted(e["resource"]["identifier"][0]["value"] for e in bundle_body.get("entry", [])
                  if e.get("resource", {}).get("resourceType") == "ExplanationOfBenefit")
