"""Helpers for the record-rule scenarios (tests/access/test_record_*.py): the cast, tokens, a fake clock.

Cast: patient A (``pa``, adult, treating doctor ``gp``), minor M (``pm``, represented by ``rp``),
professionals ``drA`` (authorised by A), ``drB`` (not authorised), ``drX`` (authorised),
``drE`` (emergency doctor), ``gp`` (treating doctor of A and M).
"""
from __future__ import annotations

import datetime as dt
import json

from access_helpers import Smart, creation_consent


class FakeClock:
    """The server's clock in the scenarios: moved by the test."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(microseconds=1)  # distinct, increasing instants, like a real clock
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


KIND = "https://dmp.example.org/fhir/CodeSystem/dmp-consent-kind"
VIS = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
AUTHOR = "https://dmp.example.org/fhir/CodeSystem/dmp-author"
PATCH = "application/json-patch+json"


AUTHORISATION, BLOCK, CREATION = "AUTORISATION_ACCES", "BLOCAGE_PS", "CREATION_DMP"


def patient(pid: str, birth: str, email: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": pid.upper()}], "birthDate": birth,
            "telecom": [{"system": "email", "value": email}],
            "generalPractitioner": [{"reference": "Practitioner/gp"}]}


def practitioner(pid: str) -> dict:
    return {"resourceType": "Practitioner", "id": pid, "name": [{"family": pid}],
            "telecom": [{"system": "email", "value": f"{pid}@example.org"}]}


def consent(kind: str, pid: str, actor: str | None = None, cid: str | None = None) -> dict:
    body = creation_consent(pid, cid or f"{kind.lower().replace('_', '-')}-{pid}-{(actor or 'x').split('/')[-1]}")
    body["category"] = [{"coding": [{"system": KIND, "code": kind}]}]
    if actor:
        body["provision"] = {"type": "deny" if kind == BLOCK else "permit", "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP"}]}, "reference": {"reference": actor}}]}
    return body


def allergy(aid: str, pid: str, text: str) -> dict:
    return {"resourceType": "AllergyIntolerance", "id": aid, "patient": {"reference": f"Patient/{pid}"},
            "code": {"text": text}, "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]}}


def pro(dmp: Smart, who: str, scope: str = "user/*.cruds") -> dict:
    return dmp.auth(scope, role="practitioner", fhirUser=f"Practitioner/{who}", sub=who)


def holder(dmp: Smart, pid: str = "pa") -> dict:
    return dmp.auth("patient/*.cruds", pid)


def representative(dmp: Smart, pid: str = "pm") -> dict:
    return dmp.auth("patient/*.cruds", pid, role="related-person", fhirUser="RelatedPerson/rp", sub="rp")


def found(dmp: Smart, path: str, headers: dict, rtype: str = "Observation") -> set[str]:
    response = dmp.get(path, headers)
    assert response.status_code == 200, response.get_json()
    return {e["resource"]["id"] for e in response.get_json().get("entry", [])
            if e.get("resource", {}).get("resourceType") == rtype}


def write(dmp: Smart, headers: dict, resource: dict, expected: int = 201) -> dict:
    response = dmp.send("PUT", f"/fhir/{resource['resourceType']}/{resource['id']}", resource, headers)
    assert response.status_code == expected, response.get_json()
    return response.get_json()


def label(dmp: Smart, headers: dict, path: str, op: str, code: str | None = None) -> int:
    operation = [{"op": "add", "path": "/meta/security", "value": [{"system": VIS, "code": code}]}] if op == "add" \
        else [{"op": "remove", "path": "/meta/security"}]
    return dmp.send("PATCH", path, operation, headers, content_type=PATCH).status_code


def messages(dmp: Smart) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(dmp.outbox.glob("*.json"))] if dmp.outbox.exists() else []




def cast() -> list[dict]:
    """What the record holds before each scenario (written with a backend token)."""
    return [
        patient("pa", "1980-04-12", "pa@example.org"), patient("pm", "2015-06-01", "pm-parent@example.org"),
        creation_consent("pa"), creation_consent("pm"),
        *(practitioner(p) for p in ("gp", "drA", "drB", "drX", "drE")),
        {"resourceType": "RelatedPerson", "id": "rp", "patient": {"reference": "Patient/pm"}, "active": True},
        consent(AUTHORISATION, "pa", "Practitioner/drA"), consent(AUTHORISATION, "pa", "Practitioner/drX"),
    ]
