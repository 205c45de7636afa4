"""The write-side check of the feed: a care item must belong to a Patient this server holds.

An ExplanationOfBenefit whose ``patient`` names a Patient the store does not hold (never
created, or deleted) is refused, like any validation error, with an issue whose expression is
``ExplanationOfBenefit.patient`` and whose text names the reference: in a batch Bundle that
entry's ``response.outcome``, in a transaction the whole Bundle's answer, in an ``$import``
a line of the error file. Nothing is stored for a patient the record does not know (the item
would be in nobody's record); the insurer re-sends it once the record exists.

It wraps the validator of the server's :class:`ResourceService` (the checks every write path
shares: REST, Bundles, ``$import``, ``fhir-server load``). The lookup is one read of the
current Patient by id (inside the write transaction's connection on SQLite, so a Patient
created earlier in the same transaction Bundle counts).
"""
from __future__ import annotations

from typing import Any

from fhir_server.carehistory import EOB
from fhir_server.model.outcome import Issue
from fhir_server.search.extract import parse_reference

PATIENT = frozenset({"Patient"})


class PatientReferenceCheck:
    """The server's validator, plus: an ExplanationOfBenefit's patient must exist."""

    def __init__(self, inner: Any, store: Any):
        self.inner = inner
        self.store = store

    def validate(self, resource: Any) -> list[Issue]:
        issues = self.inner.validate(resource)
        if isinstance(resource, dict) and resource.get("resourceType") == EOB \
                and not any(i.severity in ("error", "fatal") for i in issues):
            problem = self.unknown_patient(resource)
            if problem:
                issues = issues + [problem]
        return issues

    def unknown_patient(self, resource: dict) -> Issue | None:
        reference = (resource.get("patient") or {}).get("reference")
        if not isinstance(reference, str):
            return None  # no literal reference: the structure and profile checks report what is missing
        parsed = parse_reference(reference, PATIENT)
        if not parsed or parsed[0] != "Patient" or parsed[2] is not None:
            return Issue("error", "not-found", f"The care item's patient '{reference}' is not a reference to a "
                         "Patient of this server (Patient/[id])", f"{EOB}.patient")
        current = self.store.read("Patient", parsed[1])
        if current is None or current.deleted:
            return Issue("error", "not-found", f"Unknown patient {reference}: this server holds no record for "
                         "it; the care item was not stored", f"{EOB}.patient")
        return None

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "store"):
            raise AttributeError(name)
        return getattr(self.inner, name)
