"""Compile a parsed :class:`~fhir_server.search.query.Query` into SQL over the SQLite index tables.

The most selective clause becomes ``r.rpk IN (SELECT rpk FROM idx_<kind> WHERE ...)``, so
SQLite drives the query from the composite index of that table; the other clauses are
correlated ``EXISTS`` probes on the candidate's own index rows. Chains and ``_has`` nest
the same shape instead of joining in Python.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fhir_server.search.query import (AnyOf, Chain, Clause, CompositeValue, HasClause, Query, RangeValue, ReferenceValue,
                                      SortKey, StringValue, TokenValue, UriValue, approximate_range)

TABLE_OF = {"token": "idx_token", "string": "idx_string", "date": "idx_date", "number": "idx_number",
            "quantity": "idx_quantity", "reference": "idx_reference", "uri": "idx_uri",
            "composite": "idx_composite", "special": "idx_token"}
SORT_COLUMN = {"token": ("code", "code"), "string": ("norm", "norm"), "date": ("low", "high"),
               "number": ("low", "high"), "quantity": ("low", "high"), "reference": ("target_id", "target_id"),
               "uri": ("uri", "uri")}
RESOURCE_COLUMNS = "v.type, v.id, v.version, v.last_updated, v.deleted, v.method, v.body"
STRING_END = "\U0010ffff"


def encode_cursor(state: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> dict:
    """The state of a page link; :class:`PageExpired` for anything that is not one we could have made
    (a flat JSON object of short strings and non-negative integers)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        state = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8"))
        if not isinstance(state, dict) or not state:
            raise ValueError
        for key, value in state.items():
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError
            if isinstance(value, int) and value < 0 or isinstance(value, str) and len(value) > 200:
                raise ValueError
        return state
    except (ValueError, TypeError, UnicodeError, binascii.Error):
        from fhir_server.store.base import PageExpired
        raise PageExpired() from None


def previous_cursor(cursor: str | None, count: int) -> str | None:
    """The link state of the page before a sorted (snapshot) page: same snapshot, ``count`` earlier.

    Snapshot cursors (``{"s": snapshot, "o": offset, ...}``) are shared by the SQLite and MongoDB
    stores; keyset cursors of unsorted searches (``{"k": ...}``) cannot go back: ``None``."""
    if not cursor:
        return None
    state = decode_cursor(cursor)
    if "s" not in state or "o" not in state:
        return None
    try:
        offset = int(state["o"])
    except (TypeError, ValueError):
        return None
    if offset <= 0:
        return None
    return encode_cursor(dict(state, o=max(0, offset - count)))


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def range_condition(prefix: str, low_col: str, high_col: str, low: Any, high: Any, args: list) -> str:
    """The R4 prefix semantics for a stored range [low_col, high_col] against a search range [low, high]."""
    if prefix == "eq":
        args += [low, high]
        return f"({low_col} >= ? AND {high_col} <= ?)"
    if prefix == "ne":
        args += [low, high]
        return f"NOT ({low_col} >= ? AND {high_col} <= ?)"
    if prefix == "gt":
        args.append(high)
        return f"{high_col} > ?"
    if prefix == "lt":
        args.append(low)
        return f"{low_col} < ?"
    if prefix == "ge":
        args.append(low)
        return f"{high_col} >= ?"
    if prefix == "le":
        args.append(high)
        return f"{low_col} <= ?"
    if prefix == "sa":
        args.append(high)
        return f"{low_col} > ?"
    if prefix == "eb":
        args.append(low)
        return f"{high_col} < ?"
    if prefix == "ap":
        lo, hi = approximate_range(low, high)
        args += [hi, lo]
        return f"({low_col} <= ? AND {high_col} >= ?)"
    raise ValueError(f"unknown prefix {prefix}")


QUANTITY_COLUMNS = ("low", "high", "system", "code", ("ccode", "clow", "chigh"))
COMPOSITE_COLUMNS = ("v_low", "v_high", "v_system", "v_code", ("v_ccode", "v_clow", "v_chigh"))
CANONICAL_EPSILON = 1e-9  # relative: unit conversions are float products, equal values may differ by an ulp


def is_id_clause(clause: Any) -> bool:
    return isinstance(clause, Clause) and clause.param == "_id" and clause.missing is None \
        and clause.modifier != "not"


def is_plain(clause: Any) -> bool:
    """A positive clause on one index table (no chain, no :missing, no negation, not on resource columns)."""
    return (isinstance(clause, Clause) and clause.chain is None and clause.missing is None
            and clause.modifier not in ("not", "not-in") and clause.param != "_lastUpdated" and bool(clause.values))


def _rank(clause: Any) -> int | None:
    """How well a clause drives a query (lower is more selective); None: it cannot drive."""
    if is_id_clause(clause):
        return 0
    if isinstance(clause, AnyOf):
        return 1 if clause.clauses and all(isinstance(c, Clause) and is_plain(c) and c.type == "reference"
                                           for c in clause.clauses) else None
    if isinstance(clause, HasClause):
        return 3  # an uncorrelated subquery driven by its own inner query, whatever its rank
    if isinstance(clause, Clause) and clause.chain is not None:
        return 1  # a chain usually names one target (subject:Patient.identifier=...)
    if not is_plain(clause):
        return None
    if clause.type == "reference":
        return 1
    if clause.type == "token" and clause.modifier != "text":
        return 2
    if clause.type == "string":
        return 4 if clause.modifier != "contains" else 6
    return 5


def choose_driver(clauses: list) -> Any:
    """The clause whose index lookup should produce the candidates; the others only check them."""
    ranked = [(rank, i) for i, c in enumerate(clauses) if (rank := _rank(c)) is not None]
    return clauses[min(ranked)[1]] if ranked else None


class SQLCompiler:
    """Turns queries into (sql, args) pairs. Stateless; one per store."""

    # -- public statements ------------------------------------------------------------------
    def select_page(self, query: Query, limit: int, cursor: dict | None) -> tuple[str, list]:
        where, args = self.where(query, "r")
        if cursor:
            after = cursor.get("k")
            if isinstance(after, str) and after.isdigit():
                after = int(after)
            if not isinstance(after, int) or isinstance(after, bool) or set(cursor) != {"k"}:
                from fhir_server.store.base import PageExpired
                raise PageExpired()  # a sorted search's link, or not one of ours
            where += " AND r.rpk > ?"
            args.append(after)
        sql = (f"SELECT r.rpk, {RESOURCE_COLUMNS} FROM resources r JOIN versions v ON v.vrow = r.vrow"
               f" WHERE {where} ORDER BY r.rpk LIMIT ?")
        return sql, [*args, limit]

    def select_sorted_rpks(self, query: Query) -> tuple[str, list]:
        where, args = self.where(query, "r")
        order, order_args = self.order_by(query.sort, "r")
        return f"SELECT r.rpk FROM resources r WHERE {where} ORDER BY {order}", [*args, *order_args]

    def select_keys(self, query: Query) -> tuple[str, list]:
        where, args = self.where(query, "r")
        return f"SELECT r.type, r.id FROM resources r WHERE {where}", args

    def count(self, query: Query) -> tuple[str, list]:
        if query.types and len(query.clauses) == 1 and is_plain(query.clauses[0]) \
                and not is_id_clause(query.clauses[0]):
            # index rows exist only for current, non-deleted versions: count them without the join
            clause, args = query.clauses[0], []
            head = f"SELECT count(DISTINCT rpk) FROM {TABLE_OF[clause.type]} WHERE " \
                + self._type_filter(query.types, "type", args) + "param = ?"
            args.append(clause.param)
            return f"{head} AND ({self.values_condition(clause, args)})", args
        where, args = self.where(query, "r")
        return f"SELECT count(*) FROM resources r WHERE {where}", args

    # -- WHERE ------------------------------------------------------------------------------
    def where(self, query: Query, alias: str, depth: int = 0) -> tuple[str, list]:
        """The WHERE of a query: one clause drives (an ``IN`` list from its index), the others are probes.

        A query costs what its driving clause costs: the most selective kind of clause (ids,
        references, exact codes...) is compiled as ``rpk IN (SELECT rpk FROM idx_...)``, and every
        other clause as a correlated ``EXISTS`` probe on the candidate's own index rows, so an
        unselective clause (a date range, a common code) never builds its whole match list.
        """
        parts, args = [f"+{alias}.deleted = 0"], []  # + : "deleted" must never steer the choice of index
        driver = choose_driver(query.clauses)
        if query.types:
            # when an rpk list drives, the type test must not (a scan of the whole type): the unary
            # + keeps it off the type index; an _id driver uses the (type, id) index itself
            by_type = driver is None or is_id_clause(driver)
            column = f"{alias}.type" if by_type else f"+{alias}.type"
            parts.append(f"{column} IN ({','.join('?' * len(query.types))})")
            args += list(query.types)
        for clause in query.clauses:
            sql, cargs = self.any_clause(clause, query, alias, depth, probe=clause is not driver)
            parts.append(sql)
            args += cargs
        return " AND ".join(parts), args

    def any_clause(self, clause: Any, query: Query, alias: str, depth: int, probe: bool = False) -> tuple[str, list]:
        if isinstance(clause, HasClause):
            return self.has(clause, query, alias, depth)
        if isinstance(clause, AnyOf):
            parts, args = [], []
            for sub in clause.clauses:
                sql, sargs = self.any_clause(sub, query, alias, depth, probe)
                parts.append(sql)
                args += sargs
            return "(" + " OR ".join(parts) + ")", args
        return self.clause(clause, query.types, alias, depth, probe)

    def _type_filter(self, types: tuple[str, ...], column: str, args: list) -> str:
        if not types:
            return ""
        args += list(types)
        if len(types) == 1:
            return f"{column} = ? AND "
        return f"{column} IN ({','.join('?' * len(types))}) AND "

    def clause(self, clause: Clause, types: tuple[str, ...], alias: str, depth: int,
               probe: bool = False) -> tuple[str, list]:
        if clause.param == "_id" and clause.missing is None:
            ids = [v.code for v in clause.values]
            negate = "NOT " if clause.modifier == "not" else ""
            return f"{alias}.id {negate}IN ({','.join('?' * len(ids))})", ids
        if clause.param == "_lastUpdated" and clause.missing is None:
            args: list = []
            ors = [range_condition(v.prefix, f"{alias}.lu", f"{alias}.lu", v.low, v.high, args)
                   for v in clause.values]
            return "(" + " OR ".join(ors) + ")", args
        if clause.param in ("_id", "_lastUpdated"):  # :missing on what every resource has
            return ("0" if clause.missing else "1"), []
        if clause.chain is not None:
            return self.chain(clause, types, alias, depth, probe)
        table = TABLE_OF[clause.type]
        if clause.missing is not None:  # a probe whatever its rank: "has no row for this parameter"
            return (f"{'NOT ' if clause.missing else ''}EXISTS (SELECT 1 FROM {table} m WHERE m.rpk = {alias}.rpk"
                    f" AND m.param = ?)"), [clause.param]
        negate = clause.modifier in ("not", "not-in")
        args = []
        condition = self.values_condition(clause, args)
        if probe or negate:
            return (f"{'NOT ' if negate else ''}EXISTS (SELECT 1 FROM {table} p WHERE p.rpk = {alias}.rpk"
                    f" AND p.param = ? AND ({condition}))"), [clause.param, *args]
        head_args: list = []
        head = f"SELECT rpk FROM {table} WHERE " + self._type_filter(types, "type", head_args) + "param = ?"
        return f"{alias}.rpk IN ({head} AND ({condition}))", [*head_args, clause.param, *args]

    def values_condition(self, clause: Clause, args: list) -> str:
        """The OR of a clause's values over the columns of its index table."""
        if clause.values and clause.modifier != "text" and all(isinstance(v, TokenValue) for v in clause.values):
            ors = self.tokens(clause.values, "system", "code", args)
        else:
            ors = [self.value(clause, value, args) for value in clause.values]
        return " OR ".join(ors or ["0"])

    def value(self, clause: Clause, value: Any, args: list) -> str:
        mod = clause.modifier
        if isinstance(value, TokenValue):
            if mod == "text":
                args.append(_like_escape(value.code or "") + "%")
                return "text LIKE ? ESCAPE '\\'"
            return self.token(value, "system", "code", args)
        if isinstance(value, StringValue):
            if mod == "exact":
                args.append(value.text)
                return "exact = ?"
            if mod == "contains":
                args.append("%" + _like_escape(value.text) + "%")
                return "norm LIKE ? ESCAPE '\\'"
            args += [value.text, value.text + STRING_END]
            return "(norm >= ? AND norm < ?)"
        if isinstance(value, RangeValue):
            return self.range(clause.type, value, QUANTITY_COLUMNS, args)
        if isinstance(value, ReferenceValue):
            return self.reference(value, "target_type", "target_id", "url", args)
        if isinstance(value, UriValue):
            if mod == "below":  # the value itself, or below it on a path segment boundary
                stem = value.uri if value.uri.endswith("/") else value.uri + "/"
                args += [value.uri, stem, stem + STRING_END]
                return "(uri = ? OR (uri >= ? AND uri < ?))"
            if mod == "above":  # the stored uri is the value or one of its ancestors
                candidates = uri_ancestors(value.uri)
                args += candidates
                return f"uri IN ({','.join('?' * len(candidates))})"
            args.append(value.uri)
            return "uri = ?"
        if isinstance(value, CompositeValue):
            return self.composite(value, args)
        raise ValueError(f"cannot compile {value!r}")

    @staticmethod
    def reference(value: ReferenceValue, type_col: str, id_col: str, url_col: str, args: list) -> str:
        """A local reference (type/id; ``url`` its absolute URL on this server) matches relative
        references and absolute ones on this server, not another server's with the same tail; a
        reference given as a URL only matches that URL."""
        if value.target_id is None:
            if value.url is None:
                return "0"
            args.append(value.url)
            return f"{url_col} = ?"
        parts = [f"{id_col} = ?"]
        args.append(value.target_id)
        if value.target_type is not None:
            parts.append(f"{type_col} = ?")
            args.append(value.target_type)
        if value.url is not None:
            parts.append(f"({url_col} IS NULL OR {url_col} = ?)")
            args.append(value.url)
        return "(" + " AND ".join(parts) + ")"

    @staticmethod
    def tokens(values: tuple, system_col: str, code_col: str, args: list) -> list[str]:
        """ORed token values, the codes of one system grouped in one ``IN`` (value set expansions)."""
        groups: dict[tuple[bool, str | None], list[str]] = {}
        ors = []
        for value in values:
            if value.code is None:
                ors.append(SQLCompiler.token(value, system_col, code_col, args))
            else:
                groups.setdefault((value.match_system, value.system), []).append(value.code)
        for (match_system, system), codes in groups.items():
            codes = list(dict.fromkeys(codes))
            test = f"{code_col} = ?" if len(codes) == 1 else f"{code_col} IN ({','.join('?' * len(codes))})"
            args += codes
            if match_system and system is None:
                test += f" AND {system_col} IS NULL"
            elif match_system:
                test += f" AND {system_col} = ?"
                args.append(system)
            ors.append(f"({test})")
        return ors

    @staticmethod
    def token(value: TokenValue, system_col: str, code_col: str, args: list) -> str:
        parts = []
        if value.code is not None:
            parts.append(f"{code_col} = ?")
            args.append(value.code)
        if value.match_system:
            if value.system is None:
                parts.append(f"{system_col} IS NULL")
            else:
                parts.append(f"{system_col} = ?")
                args.append(value.system)
        return "(" + " AND ".join(parts or ["1"]) + ")"

    @staticmethod
    def range(kind: str, value: RangeValue, columns: tuple, args: list) -> str:
        """A date, number or quantity value; a quantity with a UCUM unit is compared in canonical
        units with every stored quantity convertible to them, and as given with the others."""
        low, high, system, code, canonical = columns
        if kind == "quantity" and value.canonical is not None and canonical is not None:
            unit, clow, chigh = value.canonical
            eps = CANONICAL_EPSILON * max(abs(clow), abs(chigh))
            ccode, clow_col, chigh_col = canonical
            args.append(unit)
            cond = range_condition(value.prefix, clow_col, chigh_col, clow - eps, chigh + eps, args)
            plain_args: list = []
            plain = range_condition(value.prefix, low, high, value.low, value.high, plain_args)
            unit_sql = SQLCompiler._unit(value, system, code, plain_args)
            args += plain_args
            return f"(({ccode} = ? AND {cond}) OR ({plain}{unit_sql}))"
        cond = range_condition(value.prefix, low, high, value.low, value.high, args)
        if kind == "quantity":
            cond += SQLCompiler._unit(value, system, code, args)
        return f"({cond})"

    @staticmethod
    def _unit(value: RangeValue, system: str, code: str, args: list) -> str:
        sql = ""
        if value.code is not None:
            sql += f" AND {code} = ?"
            args.append(value.code)
        if value.system is not None:
            sql += f" AND {system} = ?"
            args.append(value.system)
        return sql

    def composite(self, value: CompositeValue, args: list) -> str:
        first, second = value.parts
        sql = self.token(first, "system", "code", args)
        if isinstance(second, TokenValue):
            sql += " AND " + self.token(second, "v_system", "v_code", args)
        elif isinstance(second, RangeValue):
            kind = "quantity" if (second.code or second.system) else "number"
            sql += " AND " + self.range(kind, second, COMPOSITE_COLUMNS, args)
        elif isinstance(second, StringValue):
            args += [second.text, second.text + STRING_END]
            sql += " AND (v_text >= ? AND v_text < ?)"
        elif isinstance(second, ReferenceValue):
            sql += " AND " + self.reference(second, "v_system", "v_code", "v_text", args)
        return f"({sql})"

    def chain(self, clause: Clause, types: tuple[str, ...], alias: str, depth: int,
              probe: bool = False) -> tuple[str, list]:
        chain: Chain = clause.chain
        inner, ref = f"c{depth}", f"cr{depth}"
        args: list = []
        if probe:
            head = f"EXISTS (SELECT 1 FROM idx_reference {ref} WHERE {ref}.rpk = {alias}.rpk AND {ref}.param = ? AND ("
        else:
            head = (f"{alias}.rpk IN (SELECT {ref}.rpk FROM idx_reference {ref} WHERE "
                    + self._type_filter(types, f"{ref}.type", args) + f"{ref}.param = ? AND (")
        args.append(clause.param)
        ors = []
        for target in chain.target_types:
            sub = Query(types=(target,), clauses=chain.query.clauses)
            where, wargs = self.where(sub, inner, depth + 1)
            ors.append(f"({ref}.target_type = ? AND {ref}.target_id IN (SELECT {inner}.id FROM resources {inner}"
                       f" WHERE {where}))")
            args += [target, *wargs]
        return f"{head}{' OR '.join(ors)}))", args

    def has(self, clause: HasClause, outer: Query, alias: str, depth: int) -> tuple[str, list]:
        """``_has``: the resources some matching ``source_type`` resource refers to, by an uncorrelated
        subquery driven by the inner query (source rows, their references, then the targets)."""
        inner, ref, target = f"h{depth}", f"hr{depth}", f"ht{depth}"
        sub = Query(types=(clause.source_type,), clauses=clause.query.clauses)
        where, wargs = self.where(sub, inner, depth + 1)
        sql = (f"{alias}.rpk IN (SELECT {target}.rpk FROM resources {inner}"
               f" JOIN idx_reference {ref} ON {ref}.rpk = {inner}.rpk"
               f" JOIN resources {target} ON {target}.type = {ref}.target_type AND {target}.id = {ref}.target_id"
               f" WHERE {ref}.param = ? AND {where})")
        return sql, [clause.reference_param, *wargs]

    # -- ORDER BY ---------------------------------------------------------------------------
    def order_by(self, keys: list[SortKey], alias: str) -> tuple[str, list]:
        parts, args = [], []
        for key in keys:
            direction = "DESC" if key.descending else "ASC"
            if key.param == "_id":
                parts.append(f"{alias}.id {direction}")
            elif key.param == "_lastUpdated":
                parts.append(f"{alias}.lu {direction}")
            else:
                low, high = SORT_COLUMN.get(key.type, ("code", "code"))
                func, col = ("MAX", high) if key.descending else ("MIN", low)
                parts.append(f"(SELECT {func}({col}) FROM {TABLE_OF[key.type]} s WHERE s.rpk = {alias}.rpk"
                             f" AND s.param = ?) {direction} NULLS LAST")
                args.append(key.param)
        parts.append(f"{alias}.rpk ASC")
        return ", ".join(parts), args


def uri_ancestors(uri: str) -> list[str]:
    """``uri`` and every ancestor of it on a path boundary, with and without the trailing slash
    (``:above``): ``http://a/b/c`` -> ``http://a/b/c``, ``http://a/b/``, ``http://a/b``, ``http://a/``, ``http://a``."""
    start = uri.find("://")
    start = start + 3 if start >= 0 else 0
    out = [uri]
    position = len(uri)
    while True:
        position = uri.rfind("/", start, position)
        if position < 0:
            break
        out += [uri[:position + 1], uri[:position]]
    return list(dict.fromkeys(c for c in out if c and len(c) > start))
