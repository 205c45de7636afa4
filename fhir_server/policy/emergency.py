"""Emergency access: "bris de glace" and the SAMU regulating doctor (L1111-17 I, R1111-48).

How a client asks (README "Emergency access"): the professional's app requests the SMART scope
``emergency-access`` (or ``emergency-regulation`` for a centre 15 regulating doctor) with its
clinical scopes, then calls ``POST /fhir/Patient/{id}/$emergency-access`` with a ``Parameters``
body holding a written ``reason`` (and ``mode`` = ``bris-de-glace`` | ``centre-regulation``). The
server refuses it when the patient opposed that kind of access beforehand, when the patient blocked
the professional, or when the record is closed; otherwise it records the access as an
``AuditEvent`` (subtype = the mode, purpose of use ``BTG`` or ``CENTRE_REGULATION``,
``period.end`` = when it ends) and tells the patient and the treating doctor at once. While the
period runs, the professional reaches the record like an authorised one (items masked by the
patient stay hidden unless ``RecordPolicy.emergency_sees_masked``); their accesses are traced with
that purpose of use.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from fhir_server.access.gate import Principal
from fhir_server.model.ids import new_id
from fhir_server.model.outcome import FHIRError, bad_request
from fhir_server.policy import codes
from fhir_server.policy.notifications import Notifier

ACCOUNT_SYSTEM = "https://dmp.example.org/fhir/sid/account"  # the authorization server's account id (token sub)
MIN_REASON = 10  # characters: a deliberate, written reason, not a click


def open_emergency_access(server: Any, notifier: Notifier | None, principal: Principal, patient: str,
                          reason: Any, mode: Any) -> dict:
    """Open an emergency access to ``patient``'s record; returns the recording AuditEvent."""
    gate = server.gate
    finder = getattr(gate, "finder", None)
    mode = mode or "bris-de-glace"
    if mode not in codes.EMERGENCY_PURPOSE:
        raise bad_request(f"Unknown emergency mode '{mode}': use bris-de-glace or centre-regulation",
                          "Parameters.parameter.where(name = 'mode').value")
    if not isinstance(reason, str) or len(reason.strip()) < MIN_REASON:
        raise bad_request(f"An emergency access needs a written reason (at least {MIN_REASON} characters)",
                          "Parameters.parameter.where(name = 'reason').value")
    user = principal.fhir_user or ""
    scope = next(s for s, m in codes.EMERGENCY_SCOPES.items() if m == mode)
    if finder is None or principal.role != "practitioner" or not user.startswith("Practitioner/"):
        raise FHIRError.of(403, "forbidden", "Emergency access is for health professionals")
    if scope not in principal.scopes:
        raise FHIRError.of(403, "forbidden", f"This access token was not granted the '{scope}' scope needed "
                           f"for a {mode} access", headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'})
    record = server.store.read("Patient", patient)
    if record is None or record.deleted:
        raise FHIRError.of(404, "not-found", f"Patient/{patient} is not known")
    if not finder.open_records([patient]):
        raise FHIRError.of(403, "forbidden", "This record is closed")
    relations = principal.relations
    if relations is not None and patient in relations.blocked:
        raise FHIRError.of(403, "forbidden", "The patient blocked this professional's access to their record")
    if finder.opposed(patient, codes.EMERGENCY_OPPOSITION[mode]):
        raise FHIRError.of(403, "forbidden", f"The patient opposed {mode} access to their record beforehand")
    now = finder.clock()
    end = now + dt.timedelta(minutes=gate.policy.emergency_minutes)
    event = grant_event(user, principal.subject, patient, mode, reason.strip(), now, end)
    server.resources.atomic(lambda tx: server.resources.system_put_in(tx, event), what="AuditEvent")
    if notifier is not None:
        when = now.strftime("%d/%m/%Y %H:%M UTC")
        notifier.notify(f"Patient/{patient}", "emergency-access",
                        f"{user} opened your health record in an emergency ({mode}) on {when}. Reason: "
                        f"{reason.strip()}")
        for doctor in treating_doctors(finder, patient):
            notifier.notify(doctor, "emergency-access", f"{user} opened the health record of Patient/{patient}, "
                            f"whose treating doctor you are, in an emergency ({mode}) on {when}.")
    return event


def grant_event(user: str, account: str, patient: str, mode: str, reason: str, start: dt.datetime,
                end: dt.datetime) -> dict:
    """The AuditEvent that records (and is) an emergency access, valid against dmp-auditevent: the requestor
    identified by their account, the written reason in purposeOfEvent.text."""
    system, code = codes.EMERGENCY_PURPOSE[mode]
    stamp = start.isoformat(timespec="seconds")
    return {
        "resourceType": "AuditEvent", "id": new_id(),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": codes.EMERGENCY_SUBTYPE, "code": mode}],
        "action": "E", "period": {"start": stamp, "end": end.isoformat(timespec="seconds")},
        "recorded": stamp, "outcome": "0", "outcomeDesc": reason,
        "purposeOfEvent": [{"coding": [{"system": system, "code": code}], "text": reason}],
        "agent": [{"who": {"reference": user, "identifier": {"system": ACCOUNT_SYSTEM, "value": account}},
                   "requestor": True,
                   "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                        "code": "IRCP"}]}}],
        "source": {"observer": {"display": "DMP FHIR server"}},
        "entity": [{"what": {"reference": f"Patient/{patient}"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}],
    }


def treating_doctors(finder: Any, patient: str) -> list[str]:
    record = finder.read("Patient", patient) or {}
    return [g["reference"] for g in record.get("generalPractitioner", [])
            if isinstance(g, dict) and str(g.get("reference", "")).startswith("Practitioner/")]
