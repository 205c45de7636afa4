"""Patients' own entries are marked as theirs with a ``Provenance`` (issue #7 rule 6).

After a patient (or a minor's representative) adds an item, the server writes a Provenance whose
targets are the item and the patient (so it belongs to the patient's compartment and is seen with
the record), ``agent.who`` the patient (type ``author``; a representative as ``enterer`` acting
``onBehalfOf`` the patient) and ``activity`` CREATE. It is written right after the item's commit
(a write listener); the item's own author tag (:mod:`.codes`) is what the rules read.
"""
from __future__ import annotations

from typing import Any

from fhir_server.model import jsonio
from fhir_server.model.ids import new_id
from fhir_server.policy import codes
from fhir_server.store.base import StoredResource

PARTICIPATION = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
NOT_MARKED = frozenset({"Provenance", "AuditEvent", "Consent", "Patient"})


class PatientEntries:
    """The write listener that marks items a patient or their representative created."""

    def __init__(self, server: Any):
        self.server = server

    def on_write(self, stored: StoredResource) -> None:
        if stored.deleted or stored.version != 1 or stored.type in NOT_MARKED or stored.body is None:
            return
        resource = jsonio.loads(stored.body)
        author = codes.author_of(resource) or ""
        if not author.startswith(("Patient/", "RelatedPerson/")):
            return
        patient = (resource.get("patient") or resource.get("subject") or {}).get("reference")
        if not isinstance(patient, str) or not patient.startswith("Patient/"):
            return
        provenance = provenance_of(stored, author, patient)
        self.server.resources.atomic(lambda tx: self.server.resources.system_put_in(tx, provenance),
                                     what="Provenance")


def provenance_of(stored: StoredResource, author: str, patient: str) -> dict:
    if author == patient:
        agents = [{"type": {"coding": [{"system": PARTICIPATION, "code": "author"}]}, "who": {"reference": author}}]
    else:
        agents = [{"type": {"coding": [{"system": PARTICIPATION, "code": "enterer"}]}, "who": {"reference": author},
                   "onBehalfOf": {"reference": patient}}]
    return {"resourceType": "Provenance", "id": new_id(),
            "target": [{"reference": f"{stored.type}/{stored.id}/_history/{stored.version}"},
                       {"reference": patient}],
            "recorded": stored.last_updated,
            "activity": {"coding": [{"system": DATA_OPERATION, "code": "CREATE"}]},
            "agent": agents}
