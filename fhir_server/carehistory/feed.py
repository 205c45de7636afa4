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

``$import`` validates ahead of its writes (in worker processes, before the transaction): it defers
the lookup (:func:`deferred`) and makes it with :func:`unknown_patient_in` inside the write's
transaction, so that a Patient imported earlier in the same file counts.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

from fhir_server.carehistory import EOB
from fhir_server.model.outcome import Issue
from fhir_server.search.extract import parse_reference

PATIENT = frozenset({"Patient"})
_deferred: ContextVar[bool] = ContextVar("patient_check_deferred", default=False)


@contextmanager
def deferred() -> Iterator[None]:
    """Validation in this context skips the patient lookup (the caller makes it in the write transaction)."""
    token = _deferred.set(True)
    try:
        yield
    finally:
        _deferred.reset(token)


def unknown_patient_in(tx: Any, resource: Any) -> Issue | None:
    """The issue refusing a care item whose patient the store (as ``tx`` sees it) does not hold, else None."""
    if not isinstance(resource, dict) or resource.get("resourceType") != EOB:
        return None
    return _unknown_patient(resource, tx.current)


class PatientReferenceCheck:
    """The server's validator, plus: an ExplanationOfBenefit's patient must exist."""

    def __init__(self, inner: Any, store: Any):
        self.inner = inner
        self.store = store

    def validate(self, resource: Any) -> list[Issue]:
        issues = self.inner.validate(resource)
        if isinstance(resource, dict) and resource.get("resourceType") == EOB \
                and not any(i.severity in ("error", "fatal") for i in issues) and not _deferred.get():
            problem = self.unknown_patient(resource)
            if problem:
                issues = issues + [problem]
        return issues

    def unknown_patient(self, resource: dict) -> Issue | None:
        return _unknown_patient(resource, self.store.read)

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "store"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def _unknown_patient(resource: dict, read: Callable[[str, str], Any]) -> Issue | None:
    reference = (resource.get("patient") or {}).get("reference")
    if not isinstance(reference, str):
        return None  # no literal reference: the structure and profile checks report what is missing
    parsed = parse_reference(reference, PATIENT)
    if not parsed or parsed[0] != "Patient" or parsed[2] is not None:
        return Issue("error", "not-found", f"The care item's patient '{reference}' is not a reference to a "
                     "Patient of this server (Patient/[id])", f"{EOB}.patient")
    current = read("Patient", parsed[1])
    if current is None or current.deleted:
        return Issue("error", "not-found", f"Unknown patient {reference}: this server holds no record for "
                     "it; the care item was not stored", f"{EOB}.patient")
    return None
