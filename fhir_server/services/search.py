"""Run a parsed search: the gate's constraints, the page, ``_include``/``_revinclude`` and the total.

Includes are resolved with one store query per include parameter per page and iteration level
(never one per resource), through the search index: a forward include is a reverse chain
(``_has``) from the page's resources, a reverse include a reference search on them. Every
included resource is fetched through a query that carries the same access constraints as the
main search, so nothing the principal may not see arrives by the side door.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fhir_server.access.gate import AccessGate, Principal
from fhir_server.model.outcome import FHIRError, Issue
from fhir_server.search.extract import Indexer
from fhir_server.search.parse import Include, ParsedSearch, SearchParser
from fhir_server.search.query import AnyOf, Clause, HasClause, Query, ReferenceValue, TokenValue
from fhir_server.store.base import PageExpired, Store, StoredResource
from fhir_server.store.sqlite_search import previous_cursor

INCLUDE_LIMIT = 1000  # included resources per page, at most
ITERATE_DEPTH = 4  # levels of :iterate after the first
MAX_INCLUDE_TERMS = 20_000  # reference terms in one reverse-include query; more are split


@dataclass
class SearchResult:
    matches: list[StoredResource]
    included: list[StoredResource]
    total: int | None
    next_page: str | None
    issues: list[Issue] = field(default_factory=list)
    previous_page: str | None = None


class SearchService:
    def __init__(self, store: Store, parser: SearchParser, indexer: Indexer, gate: AccessGate,
                 served: frozenset[str]):
        self.store = store
        self.parser = parser
        self.indexer = indexer
        self.gate = gate
        self.served = served
        self.registry = parser.registry

    def constrained(self, principal: Principal, query: Query) -> Query:
        """The query with the gate's clauses added for its types, and for the types its chains and ``_has``
        search (inner queries), see :meth:`AccessGate.constrained`."""
        return self.gate.constrained(principal, query, self.served)

    def search(self, principal: Principal, parsed: ParsedSearch) -> SearchResult:
        for rtype in parsed.query.types or (None,):
            self.gate.authorize(principal, "search", rtype, None)
        query = self.constrained(principal, parsed.query)
        total = None
        if parsed.summary == "count" or parsed.total in ("accurate", "estimate") or (
                parsed.total is None and parsed.page is None):
            total = self.store.count(query)
        if parsed.summary == "count" or parsed.count == 0:
            return SearchResult([], [], total, None, list(parsed.issues))
        try:
            page = self.store.search(query, count=parsed.count, cursor=parsed.page)
            previous = previous_cursor(parsed.page, parsed.count)
        except (PageExpired, KeyError, TypeError, ValueError):
            if parsed.page is None:
                raise
            raise FHIRError.of(410, "expired", "This page link has expired or is not valid for this search; run "
                               "the search again from its first page", "_page") from None
        included = self.includes(principal, page.resources, parsed.includes, parsed.base)
        return SearchResult(page.resources, included, total, page.next_cursor, list(parsed.issues), previous)

    # -- _include / _revinclude ------------------------------------------------------------------
    def includes(self, principal: Principal, matches: list[StoredResource], includes: list[Include],
                 base: str = "") -> list[StoredResource]:
        """The resources the includes reach from the page; ``:iterate`` ones again from what they
        reached, until nothing new comes (at most ITERATE_DEPTH more levels)."""
        if not includes or not matches:
            return []
        seen = {(r.type, r.id) for r in matches}
        found: list[StoredResource] = []
        frontier = matches
        for depth in range(ITERATE_DEPTH + 1):
            active = [i for i in includes if depth == 0 or i.iterate]
            new: list[StoredResource] = []
            for include in active:
                batch = self._reverse(principal, frontier, include, base) if include.reverse \
                    else self._forward(principal, frontier, include)
                for resource in batch:
                    key = (resource.type, resource.id)
                    if key not in seen and len(found) + len(new) < INCLUDE_LIMIT:
                        seen.add(key)
                        new.append(resource)
            found += new
            if not new or not any(i.iterate for i in includes):
                break
            frontier = new
        return found

    def _reference_params(self, source_type: str, code: str) -> list[str]:
        if code != "*":
            param = self.registry.get(source_type, code)
            return [code] if param is not None and param.type == "reference" else []
        return sorted(c for c, p in self.registry.for_type(source_type).items()
                      if p.type == "reference" and p.expression)

    def _forward(self, principal: Principal, sources: list[StoredResource], include: Include) -> list[StoredResource]:
        """``_include``: the resources the sources refer to with the parameter, in one query: the
        targets that some source (by id) refers to (a reverse chain), whatever their type."""
        by_type: dict[str, list[str]] = {}
        for source in sources:
            if include.source_type in ("*", source.type):
                by_type.setdefault(source.type, []).append(source.id)
        terms = []
        targets: set[str] = set()
        for source_type, ids in by_type.items():
            identity = Query(types=(source_type,), clauses=[Clause("_id", "token", None, tuple(
                TokenValue(None, i, False) for i in ids))])
            for code in self._reference_params(source_type, include.param):
                terms.append(HasClause(source_type, code, identity))
                targets.update(self.registry.get(source_type, code).targets or self.served)
        if include.target_type is not None:
            targets &= {include.target_type}
        targets &= self.served
        if not terms or not targets:
            return []
        clause = terms[0] if len(terms) == 1 else AnyOf(tuple(terms))
        return self._fetch(principal, Query(types=tuple(sorted(targets)), clauses=[clause]))

    def _reverse(self, principal: Principal, targets: list[StoredResource], include: Include,
                 base: str) -> list[StoredResource]:
        """``_revinclude``: the resources of the source type that refer to the targets with the
        parameter (``*``: any type, any reference parameter), in one query."""
        values = tuple(ReferenceValue(t.type, t.id, f"{base}/{t.type}/{t.id}" if base else None) for t in targets
                       if include.target_type in (None, t.type))
        if not values:
            return []
        sources = sorted(self.served) if include.source_type == "*" else [include.source_type]
        wanted = {v.target_type for v in values}
        codes: set[str] = set()
        for source_type in sources:
            for code in self._reference_params(source_type, include.param):
                param = self.registry.get(source_type, code)
                if include.param != "*" or not param.targets or wanted & set(param.targets):
                    codes.add(code)
        if not codes:
            return []
        types = () if include.source_type == "*" else (include.source_type,)
        out: list[StoredResource] = []
        step = max(1, MAX_INCLUDE_TERMS // (len(codes) * 3))
        for start in range(0, len(values), step):
            chunk = values[start:start + step]
            clauses = tuple(Clause(code, "reference", None, chunk) for code in sorted(codes))
            clause = clauses[0] if len(clauses) == 1 else AnyOf(clauses)
            out += self._fetch(principal, Query(types=types, clauses=[clause]))
        return out

    def _fetch(self, principal: Principal, query: Query) -> list[StoredResource]:
        types = query.types or tuple(sorted(self.served))
        allowed = []
        for rtype in types:
            try:
                self.gate.authorize(principal, "search", rtype, None)
                allowed.append(rtype)
            except FHIRError:
                continue  # the principal may not read this type: include nothing of it
        if not allowed:
            return []
        # one query per group of types the gate limits alike (one query when it limits none of them)
        groups: list[tuple[list, list[str]]] = []
        for rtype in allowed:
            limits = self.gate.limits(principal, rtype, "search")
            for group_limits, group_types in groups:
                if group_limits == limits:
                    group_types.append(rtype)
                    break
            else:
                groups.append((limits, [rtype]))
        out: list[StoredResource] = []
        for _, group_types in groups:
            sub = Query(types=tuple(group_types), clauses=query.clauses)
            page = self.store.search(self.constrained(principal, sub), count=INCLUDE_LIMIT - len(out))
            out += page.resources
            if len(out) >= INCLUDE_LIMIT:
                break
        return out
