"""Compile a parsed :class:`~fhir_server.search.query.Query` into a MongoDB filter document.

The current-version document of each resource embeds its index entries as arrays of
small documents (see :mod:`fhir_server.store.mongo`)::

    tok: [{p, s, c, t}]                  token (and "special"): param, system, code, text
    str: [{p, n, e}]                     string: normalised, exact
    dt:  [{p, lo, hi}]                   date: closed µs range
    num: [{p, lo, hi}]                   number
    qty: [{p, lo, hi, s, c, cc, clo, chi}]  quantity, with the UCUM canonical form
    ref: [{p, tt, ti, u, v}]             reference: target type / id, url, version
    uri: [{p, u}]
    cmp: [{p, s, c, vs, vc, vlo, vhi, vt, vcc, vclo, vchi}]  composite, flattened like SQLite's

The semantics are those of :class:`~fhir_server.store.sqlite_search.SQLCompiler`, clause
for clause: every condition on one index entry sits inside one ``$elemMatch`` (so a
token's system and code, or a range's low and high, come from the same entry; this is
also the only range form mongomock evaluates correctly on arrays of documents). The
values of a clause are ORed as one ``$elemMatch`` per value, which the planner can
answer from the compound multikey index of each branch.

Chains and ``_has`` run their inner query first (through the ``find`` callable, so
they see the same session as the outer query) and filter the outer query by the ids
found; there is no ``$lookup``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from fhir_server.search.query import (AnyOf, Chain, Clause, CompositeValue, HasClause, Query, RangeValue,
                                      ReferenceValue, SortKey, StringValue, TokenValue, UriValue, approximate_range)
from fhir_server.store.sqlite_search import uri_ancestors

FIELD_OF = {"token": "tok", "string": "str", "date": "dt", "number": "num", "quantity": "qty", "reference": "ref",
            "uri": "uri", "composite": "cmp", "special": "tok"}
SORT_FIELDS = {"token": ("c", "c"), "string": ("n", "n"), "date": ("lo", "hi"), "number": ("lo", "hi"),
               "quantity": ("lo", "hi"), "reference": ("ti", "ti"), "uri": ("u", "u")}
NOTHING: dict = {"_id": {"$in": []}}  # a filter no document matches

Find = Callable[[dict, dict], Iterable[dict]]

_REGEX_SPECIAL = set("\\^$.|?*+()[]{}")


def regex_escape(text: str) -> str:
    """Escape ``text`` for a PCRE / Python regex; only the metacharacters are escaped, so
    MongoDB still sees an anchored literal prefix and answers it from the index."""
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)


def all_of(conditions: list[dict]) -> dict:
    """AND filter documents, merging them when their keys do not collide."""
    merged: dict = {}
    extra: list[dict] = []
    for cond in conditions:
        if not cond:
            continue
        if any(key in merged for key in cond):
            extra.append(cond)
        else:
            merged.update(cond)
    if extra:
        if "$and" in merged:
            merged["$and"] = [*merged["$and"], *extra]
        else:
            merged["$and"] = extra
    return merged


def any_of(conditions: list[dict]) -> dict:
    if not conditions:
        return dict(NOTHING)
    if len(conditions) == 1:
        return conditions[0]
    return {"$or": conditions}


def _ops(*triples: tuple[str, str, Any]) -> dict:
    out: dict = {}
    for field, op, value in triples:
        out.setdefault(field, {})[op] = value
    return out


def range_filter(prefix: str, low_f: str, high_f: str, low: Any, high: Any) -> dict:
    """The R4 prefix semantics for a stored range [low_f, high_f] against a search range [low, high]
    (the same table as :func:`fhir_server.store.sqlite_search.range_condition`)."""
    if prefix == "eq":
        return _ops((low_f, "$gte", low), (high_f, "$lte", high))
    if prefix == "ne":
        return {"$or": [{low_f: {"$lt": low}}, {high_f: {"$gt": high}}]}
    if prefix == "gt":
        return {high_f: {"$gt": high}}
    if prefix == "lt":
        return {low_f: {"$lt": low}}
    if prefix == "ge":
        return {high_f: {"$gte": low}}
    if prefix == "le":
        return {low_f: {"$lte": high}}
    if prefix == "sa":
        return {low_f: {"$gt": high}}
    if prefix == "eb":
        return {high_f: {"$lt": low}}
    if prefix == "ap":
        lo, hi = approximate_range(low, high)
        return _ops((low_f, "$lte", hi), (high_f, "$gte", lo))
    raise ValueError(f"unknown prefix {prefix}")


def token_filter(value: TokenValue, system_f: str, code_f: str) -> dict:
    out: dict = {}
    if value.code is not None:
        out[code_f] = value.code
    if value.match_system:
        out[system_f] = value.system  # None: the entry has no system
    return out


class MongoCompiler:
    """Turns queries into filter documents over the ``resources`` collection.

    ``find(filter, projection)`` runs the inner queries of chains and ``_has``; pass one
    bound to the caller's session so they read the same state.
    """

    def __init__(self, find: Find):
        self.find = find

    # -- the filter -------------------------------------------------------------------------
    def compile(self, query: Query) -> dict:
        conditions: list[dict] = [{"deleted": False}]
        if query.types:
            types = list(query.types)
            conditions.append({"type": types[0] if len(types) == 1 else {"$in": types}})
        for clause in query.clauses:
            conditions.append(self.any_clause(clause, query))
        return all_of(conditions)

    def any_clause(self, clause: Any, query: Query) -> dict:
        if isinstance(clause, HasClause):
            return self.has(clause, query)
        if isinstance(clause, AnyOf):
            return any_of([self.any_clause(sub, query) for sub in clause.clauses])
        return self.clause(clause)

    def clause(self, clause: Clause) -> dict:
        if clause.param == "_id" and clause.missing is None:
            ids = [v.code for v in clause.values]
            return {"id": {"$nin" if clause.modifier == "not" else "$in": ids}}
        if clause.param == "_lastUpdated" and clause.missing is None:
            return any_of([range_filter(v.prefix, "lu", "lu", v.low, v.high) for v in clause.values])
        if clause.param in ("_id", "_lastUpdated"):  # every resource has both
            return NOTHING if clause.missing else {}
        field = FIELD_OF[clause.type]
        if clause.missing is not None:
            return {f"{field}.p": {"$ne": clause.param}} if clause.missing else {f"{field}.p": clause.param}
        if clause.chain is not None:
            return self.chain(clause)
        matches = [{field: {"$elemMatch": all_of([{"p": clause.param}, self.value(clause, value)])}}
                   for value in clause.values] or [{f"{field}.p": clause.param}]
        if clause.modifier in ("not", "not-in"):
            return {"$nor": matches}
        return any_of(matches)

    def value(self, clause: Clause, value: Any) -> dict:
        mod = clause.modifier
        if isinstance(value, TokenValue):
            if mod == "text":
                return {"t": {"$regex": "^" + regex_escape(value.code or "")}}
            return token_filter(value, "s", "c")
        if isinstance(value, StringValue):
            if mod == "exact":
                return {"e": value.text}
            if mod == "contains":
                return {"n": {"$regex": regex_escape(value.text)}}
            return {"n": {"$regex": "^" + regex_escape(value.text)}}
        if isinstance(value, RangeValue):
            return self.range(clause.type, value, "lo", "hi", "s", "c", ("cc", "clo", "chi"))
        if isinstance(value, ReferenceValue):
            if value.url is not None and value.target_id is None:
                return {"u": value.url}
            parts: dict = {}
            if value.target_id is not None:
                parts["ti"] = value.target_id
            if value.target_type is not None:
                parts["tt"] = value.target_type
            if value.url is not None:  # a local resource: relative reference, or absolute on our base
                parts["u"] = {"$in": [None, value.url]}
            return parts
        if isinstance(value, UriValue):
            if mod == "below":  # the uri itself, or anything under it on a path boundary
                stem = value.uri if value.uri.endswith("/") else value.uri + "/"
                return {"$or": [{"u": value.uri}, {"u": {"$regex": "^" + regex_escape(stem)}}]}
            if mod == "above":  # the stored uri is the query uri or one of its ancestors
                return {"u": {"$in": uri_ancestors(value.uri)}}
            return {"u": value.uri}
        if isinstance(value, CompositeValue):
            return self.composite(value)
        raise ValueError(f"cannot compile {value!r}")

    @staticmethod
    def range(kind: str, value: RangeValue, low: str, high: str, system: str, code: str,
              canonical: tuple[str, str, str]) -> dict:
        if kind == "quantity" and value.canonical is not None:
            unit, clow, chigh = value.canonical
            ccode, clow_f, chigh_f = canonical
            by_canonical = all_of([{ccode: unit}, range_filter(value.prefix, clow_f, chigh_f, clow, chigh)])
            as_given = all_of([range_filter(value.prefix, low, high, value.low, value.high),
                               MongoCompiler._unit(value, system, code)])
            return {"$or": [by_canonical, as_given]}
        cond = range_filter(value.prefix, low, high, value.low, value.high)
        if kind == "quantity":
            cond = all_of([cond, MongoCompiler._unit(value, system, code)])
        return cond

    @staticmethod
    def _unit(value: RangeValue, system: str, code: str) -> dict:
        out: dict = {}
        if value.code is not None:
            out[code] = value.code
        if value.system is not None:
            out[system] = value.system
        return out

    def composite(self, value: CompositeValue) -> dict:
        first, second = value.parts
        conditions = [token_filter(first, "s", "c")]
        if isinstance(second, TokenValue):
            conditions.append(token_filter(second, "vs", "vc"))
        elif isinstance(second, RangeValue):
            kind = "quantity" if (second.code or second.system) else "number"
            conditions.append(self.range(kind, second, "vlo", "vhi", "vs", "vc", ("vcc", "vclo", "vchi")))
        elif isinstance(second, StringValue):
            conditions.append({"vt": {"$regex": "^" + regex_escape(second.text)}})
        elif isinstance(second, ReferenceValue):
            ref: dict = {"vc": second.target_id}
            if second.target_type:
                ref["vs"] = second.target_type
            conditions.append(ref)
        return all_of(conditions)

    # -- chains and _has: inner query first -------------------------------------------------
    def chain(self, clause: Clause) -> dict:
        chain: Chain = clause.chain
        branches = []
        for target in chain.target_types:
            inner = self.compile(Query(types=(target,), clauses=list(chain.query.clauses)))
            ids = sorted({doc["id"] for doc in self.find(inner, {"id": 1})})
            if ids:
                branches.append({"ref": {"$elemMatch": {"p": clause.param, "tt": target, "ti": {"$in": ids}}}})
        return any_of(branches)

    def has(self, clause: HasClause, outer: Query) -> dict:
        inner = self.compile(Query(types=(clause.source_type,), clauses=list(clause.query.clauses)))
        wanted = set(outer.types)
        targets: dict[str, set[str]] = {}
        for doc in self.find(inner, {"ref.p": 1, "ref.tt": 1, "ref.ti": 1}):
            for entry in doc.get("ref") or ():
                tt, ti = entry.get("tt"), entry.get("ti")
                if entry.get("p") != clause.reference_param or tt is None or ti is None:
                    continue
                if wanted and tt not in wanted:
                    continue
                targets.setdefault(tt, set()).add(ti)
        return any_of([{"type": tt, "id": {"$in": sorted(ids)}} for tt, ids in sorted(targets.items())])

    # -- sorting (done in Python over a projection of the matches) ---------------------------
    @staticmethod
    def sort_projection(keys: list[SortKey]) -> dict:
        projection = {"_id": 1, "seq": 1}
        for key in keys:
            if key.param == "_id":
                projection["id"] = 1
            elif key.param == "_lastUpdated":
                projection["lu"] = 1
            else:
                field = FIELD_OF.get(key.type, "tok")
                low, high = SORT_FIELDS.get(key.type, ("c", "c"))
                projection.update({f"{field}.p": 1, f"{field}.{low}": 1, f"{field}.{high}": 1})
        return projection

    @staticmethod
    def sort_docs(docs: list[dict], keys: list[SortKey]) -> list[dict]:
        """Order like SQLCompiler.order_by: per key the min (ascending) or max (descending) value of
        the parameter's entries, missing values last in either direction, then creation order."""
        docs = sorted(docs, key=lambda d: d["seq"])
        for key in reversed(keys):
            extract = MongoCompiler._sort_value(key)
            present, missing = [], []
            for doc in docs:
                (missing if extract(doc) is None else present).append(doc)
            present.sort(key=extract, reverse=key.descending)  # stable, also when reversed
            docs = present + missing
        return docs

    @staticmethod
    def _sort_value(key: SortKey) -> Callable[[dict], Any]:
        if key.param == "_id":
            return lambda doc: doc.get("id")
        if key.param == "_lastUpdated":
            return lambda doc: doc.get("lu")
        field = FIELD_OF.get(key.type, "tok")
        low, high = SORT_FIELDS.get(key.type, ("c", "c"))
        column, pick = (high, max) if key.descending else (low, min)
        cache: dict[Any, Any] = {}

        def value(doc: dict) -> Any:
            k = doc["_id"]
            if k not in cache:
                values = [e.get(column) for e in doc.get(field) or () if e.get("p") == key.param
                          and e.get(column) is not None]
                cache[k] = pick(values) if values else None
            return cache[k]
        return value
