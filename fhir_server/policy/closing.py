"""Closing a record: ``POST /fhir/Patient/{id}/$close`` by its holder (or a minor's representative).

The record's creation consent becomes ``inactive``: every professional, representative and
emergency access is refused from then on, and nothing can be added; the holder keeps reading it.
With ``delete`` = true the holder asks for its deletion, which :mod:`.schedule` carries out after
``RecordPolicy.deletion_grace_days`` (the law's limit is three months); otherwise it is kept ten
years. Reopening is the holder setting the creation consent back to ``active`` (a PATCH of its status).
"""
from __future__ import annotations

from typing import Any

from fhir_server.access.gate import Principal
from fhir_server.model.outcome import FHIRError
from fhir_server.policy.relations import Representation
from fhir_server.policy.schedule import DELETION_REQUEST


def close_record(server: Any, principal: Principal, patient: str, delete: bool) -> dict:
    """Close ``patient``'s record for its holder; returns the creation consent as now stored."""
    gate = server.gate
    holder = principal.role == "patient" and principal.fhir_user == f"Patient/{patient}"
    represents = principal.role == "related-person" and isinstance(principal.relations, Representation) \
        and principal.relations.minor == patient
    if not (holder or represents):
        raise FHIRError.of(403, "forbidden", "Only the record's holder (or a minor's representative) closes it")
    consent = gate.finder.creation_consent(patient) if getattr(gate, "finder", None) else None
    if consent is None:
        raise FHIRError.of(404, "not-found", f"Patient/{patient} has no record")
    if consent.get("status") == "inactive" and not delete:
        return consent
    closed = dict(consent, status="inactive")
    if delete:
        extensions = [e for e in consent.get("extension", []) if e.get("url") != DELETION_REQUEST]
        closed["extension"] = [*extensions, {"url": DELETION_REQUEST,
                                             "valueDateTime": gate.finder.clock().isoformat(timespec="seconds")}]
    server.resources.atomic(lambda tx: server.resources.system_put_in(tx, closed), what=f"Consent/{consent['id']}")
    return closed
