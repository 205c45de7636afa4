"""OperationOutcome issues and the errors that carry them to the client.

Every failure a client can act on is raised as :class:`FHIRError` with one or more
:class:`Issue`; the HTTP layer turns it into an OperationOutcome with the status.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: severity, IssueType code, message and FHIRPath location."""

    severity: str  # fatal | error | warning | information
    code: str  # http://hl7.org/fhir/issue-type
    diagnostics: str
    expression: str | None = None

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = [self.expression]
        return out


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    if not issues:
        issues = [Issue("information", "informational", "All OK")]
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


@dataclass
class FHIRError(Exception):
    """An error answered with ``status`` and an OperationOutcome made of ``issues``."""

    status: int
    issues: list[Issue]
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status}: " + "; ".join(i.diagnostics for i in self.issues)

    @classmethod
    def of(cls, status: int, code: str, message: str, expression: str | None = None,
           headers: dict[str, str] | None = None) -> "FHIRError":
        return cls(status, [Issue("error", code, message, expression)], headers or {})


def not_found(message: str) -> FHIRError:
    return FHIRError.of(404, "not-found", message)


def bad_request(message: str, expression: str | None = None, code: str = "invalid") -> FHIRError:
    return FHIRError.of(400, code, message, expression)


def conflict(message: str, status: int = 409) -> FHIRError:
    return FHIRError.of(status, "conflict", message)
