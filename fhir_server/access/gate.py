"""The access gate every interaction passes through (see docs/adr/0003-access-gate.md).

Services ask the gate twice: ``authorize`` before touching the store (may this
principal perform this interaction on this type/instance?) and ``constrain`` /
``limits`` while building a query, so that the principal's limits become clauses of
the query itself and paging, counts, includes, chains and ``_has`` obey them
(:meth:`AccessGate.constrained`); reads and writes check membership of one resource
with the same clauses. Gates: :class:`fhir_server.access.smart.SmartGate` (SMART on FHIR
access tokens, the default), :class:`OpenGate` for ``--insecure-no-auth`` on loopback,
and :class:`ClosedGate`, which refuses every record access.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from fhir_server.model.outcome import FHIRError
from fhir_server.search.query import AnyOf, Chain, Clause, HasClause, Query, TokenValue


@dataclass(frozen=True)
class Principal:
    """Who acts: a user or client, for which patient, with which scopes."""

    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    patient: str | None = None
    authenticated: bool = False
    fhir_user: str | None = None  # Patient/x, Practitioner/x, RelatedPerson/x
    client_id: str | None = None
    role: str | None = None  # patient | practitioner | related-person | admin | system
    purpose: str | None = None  # purpose of use for traces: TREAT by default, BTG / CENTRE_REGULATION in emergencies
    purpose_reason: str | None = None  # the written reason of an emergency access (traces carry it)
    relations: Any = None  # what the record's rules found about this user (fhir_server.policy), hashable


def id_clause(ids: Iterable[str]) -> Clause:
    """``_id`` = any of ``ids``."""
    return Clause("_id", "token", None, tuple(TokenValue(None, i, False) for i in ids))


NOTHING = id_clause(())  # a clause no resource matches


ANONYMOUS = Principal("anonymous")


StandingRule = Callable[[str, str], list]  # (resource type, interaction) -> clauses every principal is held to

READ_INTERACTIONS = frozenset({"read", "vread", "history-instance", "search", "history", "history-type",
                               "history-system", "everything", "export"})


class AccessGate(abc.ABC):
    #: rules that hold for every principal, whatever the gate (e.g. the care history's 24-month window):
    #: their clauses are ANDed into what any principal can find or read of a type
    standing_rules: tuple[StandingRule, ...] = ()

    def attach(self, server: Any) -> None:
        """Called once by the FHIRServer being built on this gate (definitions, search parser)."""

    def add_standing_rule(self, rule: StandingRule) -> None:
        """Hold every principal to ``rule(rtype, interaction)`` when finding or reading resources."""
        self.standing_rules = (*self.standing_rules, rule)

    def standing_limits(self, rtype: str | None, interaction: str) -> list:
        """The clauses of the standing rules for ``rtype`` (none for writes, or for no type)."""
        if rtype is None or interaction not in READ_INTERACTIONS:
            return []
        out: list = []
        for rule in self.standing_rules:
            out.extend(c for c in rule(rtype, interaction) if c not in out)
        return out

    @abc.abstractmethod
    def principal(self, authorization: str | None) -> Principal:
        """The principal named by the request's Authorization header (raises 401 when required)."""

    @abc.abstractmethod
    def authorize(self, principal: Principal, interaction: str, rtype: str | None,
                  resource: dict | None = None) -> None:
        """Raise :class:`FHIRError` (403, or 404 where existence must not leak) when refused."""

    def check_write(self, principal: Principal, interaction: str, rtype: str, new: dict | None,
                    current: Any | None, tx: Any = None) -> bool:
        """The record's rules on one write, inside its transaction ``tx``, once the current version
        (``current``, a StoredResource, or None) is known: may raise :class:`FHIRError`, and may add
        server-managed tags to ``new`` (the version about to be written; None for a delete). Returns
        whether it changed ``new`` (its index must then be recomputed). Nothing by default."""
        return False

    def constrain(self, principal: Principal, rtype: str | None) -> list:
        """Extra search clauses that limit what the principal can find; none by default."""
        return []

    def limits(self, principal: Principal, rtype: str | None, interaction: str = "search") -> list:
        """Extra search clauses (ANDed) limiting the resources of ``rtype`` the principal can reach with
        ``interaction`` (``search``, ``read``, ``update``...): what reads and writes check membership
        with. By default those of :meth:`constrain` for the interactions that find or read resources,
        none for writes (``constrain`` limits what the principal can *find*)."""
        if interaction in ("create", "update", "patch", "delete"):
            return []
        return [*self.constrain(principal, rtype), *self.standing_limits(rtype, interaction)]

    def constrained(self, principal: Principal, query: Query, served: Iterable[str] = (),
                    interaction: str = "search") -> Query:
        """``query`` with the principal's constraints: those of its types (``served`` when it names none)
        for ``interaction``, and, recursively, those of the types that chains and ``_has`` search
        (which the principal must be allowed to search: 403 otherwise). A chain to several target
        types limited differently becomes one chain per target type. Several top-level types limited
        differently cannot be expressed by one query (clauses are not typed): 403, search them one
        at a time."""
        served = tuple(sorted(served))
        inner = [self._constrain_clause(principal, c, served) for c in query.clauses]
        types = query.types or served
        extra = self.limits(principal, types[0] if types else None, interaction)
        for rtype in types[1:]:
            if self.limits(principal, rtype, interaction) != extra:
                extra = self._limits_across(principal, types, interaction)
                break
        if not extra and all(a is b for a, b in zip(inner, query.clauses)):
            return query
        return Query(types=query.types, clauses=[*inner, *extra], sort=query.sort)

    def _limits_across(self, principal: Principal, types: tuple[str, ...], interaction: str) -> list:
        """The limits of one query over several types that are limited differently. Possible only when the
        principal's own limits agree and every standing rule that limits some of the types can state its
        clauses in a form true of the others (``rule.across(types, interaction)``, e.g. the care history's
        ``service-date`` window ORed with ``service-date:missing``); otherwise 403."""
        standing = {t: self.standing_limits(t, interaction) for t in types}
        own = [[c for c in self.limits(principal, t, interaction) if c not in standing[t]] for t in types]
        rules = [r for r in self.standing_rules if any(r(t, interaction) for t in types)]
        if any(limit != own[0] for limit in own) or not all(hasattr(r, "across") for r in rules):
            raise FHIRError.of(403, "forbidden", "This access token limits the resource types of this "
                               "search differently; search them one type at a time")
        out = list(own[0])
        for rule in rules:
            out.extend(c for c in rule.across(types, interaction) if c not in out)
        return out

    def _constrain_clause(self, principal: Principal, clause: Any, served: tuple[str, ...]) -> Any:
        if isinstance(clause, AnyOf):
            subs = tuple(self._constrain_clause(principal, c, served) for c in clause.clauses)
            return clause if all(a is b for a, b in zip(subs, clause.clauses)) else AnyOf(subs)
        if isinstance(clause, HasClause):
            self.authorize(principal, "search", clause.source_type, None)
            inner = self.constrained(principal, clause.query, served)
            return clause if inner is clause.query else HasClause(clause.source_type, clause.reference_param, inner)
        if isinstance(clause, Clause) and clause.chain is not None:
            chain = clause.chain
            targets = []  # the target types the principal may search; a chain to none of them is refused
            for rtype in chain.target_types:
                try:
                    self.authorize(principal, "search", rtype, None)
                    targets.append(rtype)
                except FHIRError:
                    if rtype == chain.target_types[-1] and not targets:
                        raise
            limits = [self.constrain(principal, t) for t in targets]
            if len(targets) == len(chain.target_types) and all(limit == limits[0] for limit in limits):
                inner = self.constrained(principal, chain.query, served)
                return clause if inner is chain.query else replace(clause, chain=Chain(chain.target_types, inner))
            if all(limit == limits[0] for limit in limits):
                query = Query(types=tuple(targets), clauses=list(chain.query.clauses))
                return replace(clause, chain=Chain(tuple(targets), self.constrained(principal, query, served)))
            return AnyOf(tuple(
                replace(clause, chain=Chain((t,), self.constrained(principal, Query(types=(t,), clauses=list(
                    chain.query.clauses)), served))) for t in targets))
        return clause


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
