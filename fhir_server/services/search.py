"""Run a parsed search: the gate's constraints, the page, ``_include``/``_revinclude`` and the total.

Includes are resolved with one store query per include parameter per page (never
one per resource), and every included resource is fetched through a query that
carries the same access constraints as the main search, so nothing the principal
may not see arrives by the side door.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fhir_server.access.gate import AccessGate, Principal
from fhir_server.model import jsonio
from fhir_server.model.outcome import FHIRError, Issue
from fhir_server.search.extract import Indexer
from fhir_server.search.parse import Include, ParsedSearch, SearchParser
from fhir_server.search.query import Clause, Query, ReferenceValue, TokenValue
from fhir_server.store.base import PageExpired, Store, StoredResource

INCLUDE_LIMIT = 1000  # included resources per page, at most
ITERATE_DEPTH = 3


@dataclass
class SearchResult:
    matches: list[StoredResource]
    included: list[StoredResource]
    total: int | None
    next_page: str | None
    issues: list[Issue] = field(default_factory=list)


class SearchService:
    def __init__(self, store: Store, parser: SearchParser, indexer: Indexer, gate: AccessGate,
                 served: frozenset[str]):
        self.store = store
        self.parser = parser
        self.indexer = indexer
        self.gate = gate
        self.served = served

    def constrained(self, principal: Principal, query: Query) -> Query:
        """The query with the gate's clauses added for its types."""
        extra = []
        for rtype in query.types or (None,):
            extra += self.gate.constrain(principal, rtype)
        if not extra:
            return query
        return Query(types=query.types, clauses=[*query.clauses, *extra], sort=query.sort)

    def search(self, principal: Principal, parsed: ParsedSearch) -> SearchResult:
        for rtype in parsed.query.types or (None,):
            self.gate.authorize(principal, "search", rtype, None)
        query = self.constrained(principal, parsed.query)
        total = None
        if parsed.summary == "count" or (parsed.total != "none" and parsed.page is None):
            total = self.store.count(query)
        if parsed.summary == "count" or parsed.count == 0:
            return SearchResult([], [], total, None, list(parsed.issues))
        try:
            page = self.store.search(query, count=parsed.count, cursor=parsed.page)
        except PageExpired:
            raise FHIRError.of(410, "expired", "This page link has expired or is not valid; run the search "
                               "again from its first page") from None
        included = self.includes(principal, page.resources, parsed.includes)
        return SearchResult(page.resources, included, total, page.next_cursor, list(parsed.issues))

    # -- _include / _revinclude ------------------------------------------------------------------
    def includes(self, principal: Principal, matches: list[StoredResource],
                 includes: list[Include]) -> list[StoredResource]:
        if not includes or not matches:
            return []
        seen = {(r.type, r.id) for r in matches}
        found: list[StoredResource] = []
        frontier = matches
        for depth in range(ITERATE_DEPTH):
            active = [i for i in includes if depth == 0 or i.iterate]
            new: list[StoredResource] = []
            for include in active:
                batch = self._reverse(principal, frontier, include) if include.reverse \
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

    def _forward(self, principal: Principal, sources: list[StoredResource], include: Include) -> list[StoredResource]:
        targets: dict[str, set[str]] = {}
        for source in sources:
            if include.source_type not in ("*", source.type):
                continue
            entries = self.indexer.index(jsonio.loads(source.body)).references
            for entry in entries:
                if include.param != "*" and entry.param != include.param:
                    continue
                if entry.target_type is None or entry.target_id is None or entry.target_type not in self.served:
                    continue
                if include.target_type and entry.target_type != include.target_type:
                    continue
                targets.setdefault(entry.target_type, set()).add(entry.target_id)
        out: list[StoredResource] = []
        for rtype, ids in targets.items():
            query = Query(types=(rtype,), clauses=[Clause("_id", "token", None,
                                                          tuple(TokenValue(None, i, False) for i in sorted(ids)))])
            out += self._fetch(principal, query)
        return out

    def _reverse(self, principal: Principal, targets: list[StoredResource], include: Include) -> list[StoredResource]:
        if include.source_type == "*" or include.param == "*":
            raise FHIRError.of(400, "not-supported", "_revinclude needs an explicit 'SourceType:param'")
        values = tuple(ReferenceValue(t.type, t.id) for t in targets
                       if include.target_type in (None, t.type))
        if not values:
            return []
        query = Query(types=(include.source_type,), clauses=[Clause(include.param, "reference", None, values)])
        return self._fetch(principal, query)

    def _fetch(self, principal: Principal, query: Query) -> list[StoredResource]:
        for rtype in query.types:
            try:
                self.gate.authorize(principal, "search", rtype, None)
            except FHIRError:
                return []  # the principal may not read this type: include nothing of it
        page = self.store.search(self.constrained(principal, query), count=INCLUDE_LIMIT)
        return page.resources
