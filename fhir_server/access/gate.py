"""The access gate every interaction passes through (see docs/adr/0003-access-gate.md).

Services ask the gate twice: ``authorize`` before touching the store (may this
principal perform this interaction on this type/instance?) and ``constrain``
while building a search, so that the principal's limits become clauses of the
query itself and paging, counts and includes obey them. Until the SMART issue
lands there are two gates: :class:`OpenGate` for ``--insecure-no-auth`` on
loopback, and :class:`ClosedGate`, the default, which refuses every record access.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

from fhir_server.model.outcome import FHIRError


@dataclass(frozen=True)
class Principal:
    """Who acts: a user or client, for which patient, with which scopes."""

    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    patient: str | None = None
    authenticated: bool = False


ANONYMOUS = Principal("anonymous")


class AccessGate(abc.ABC):
    @abc.abstractmethod
    def principal(self, authorization: str | None) -> Principal:
        """The principal named by the request's Authorization header (raises 401 when required)."""

    @abc.abstractmethod
    def authorize(self, principal: Principal, interaction: str, rtype: str | None,
                  resource: dict | None = None) -> None:
        """Raise :class:`FHIRError` (403, or 404 where existence must not leak) when refused."""

    def constrain(self, principal: Principal, rtype: str | None) -> list:
        """Extra search clauses that limit what the principal can find; none by default."""
        return []


class OpenGate(AccessGate):
    """No authentication: for development on loopback only (``serve --insecure-no-auth``)."""

    def principal(self, authorization: str | None) -> Principal:
        return ANONYMOUS

    def authorize(self, principal: Principal, interaction: str, rtype: str | None,
                  resource: dict | None = None) -> None:
        return None


class ClosedGate(AccessGate):
    """Default-deny until an authorization server is configured: every record access is 401."""

    def principal(self, authorization: str | None) -> Principal:
        raise FHIRError.of(401, "login", "Authentication is required. This server has no authorization server "
                           "configured yet; for local development run `fhir-server serve --insecure-no-auth` "
                           "on a loopback address.", headers={"WWW-Authenticate": 'Bearer realm="fhir"'})

    def authorize(self, principal: Principal, interaction: str, rtype: str | None,
                  resource: dict | None = None) -> None:
        raise FHIRError.of(403, "forbidden", "Access denied")
