"""Compile a parsed :class:`~fhir_server.search.query.Query` into SQL over the SQLite index tables.

Each clause becomes ``r.rpk IN (SELECT rpk FROM idx_<kind> WHERE ...)``, so SQLite
drives the query from the composite index of the most useful table; chains and
``_has`` nest the same shape instead of joining in Python.
"""
from __future__ import annotations

import base64
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
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        state = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(state, dict):
            raise ValueError
        return state
    except ValueError:
        from fhir_server.store.base import PageExpired
        raise PageExpired() from None


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


class SQLCompiler:
    """Turns queries into (sql, args) pairs. Stateless; one per store."""

    # -- public statements ------------------------------------------------------------------
    def select_page(self, query: Query, limit: int, cursor: dict | None) -> tuple[str, list]:
        where, args = self.where(query, "r")
        if cursor:
            where += " AND r.rpk > ?"
            args.append(int(cursor["k"]))
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
        where, args = self.where(query, "r")
        return f"SELECT count(*) FROM resources r WHERE {where}", args

    # -- WHERE ------------------------------------------------------------------------------
    def where(self, query: Query, alias: str, depth: int = 0) -> tuple[str, list]:
        parts, args = [f"{alias}.deleted = 0"], []
        if query.types:
            parts.append(f"{alias}.type IN ({','.join('?' * len(query.types))})")
            args += list(query.types)
        for clause in query.clauses:
            sql, cargs = self.any_clause(clause, query, alias, depth)
            parts.append(sql)
            args += cargs
        return " AND ".join(parts), args

    def any_clause(self, clause: Any, query: Query, alias: str, depth: int) -> tuple[str, list]:
        if isinstance(clause, HasClause):
            return self.has(clause, query, alias, depth)
        if isinstance(clause, AnyOf):
            parts, args = [], []
            for sub in clause.clauses:
                sql, sargs = self.any_clause(sub, query, alias, depth)
                parts.append(sql)
                args += sargs
            return "(" + " OR ".join(parts) + ")", args
        return self.clause(clause, query.types, alias, depth)

    def _type_filter(self, types: tuple[str, ...], column: str, args: list) -> str:
        if not types:
            return ""
        args += list(types)
        if len(types) == 1:
            return f"{column} = ? AND "
        return f"{column} IN ({','.join('?' * len(types))}) AND "

    def clause(self, clause: Clause, types: tuple[str, ...], alias: str, depth: int) -> tuple[str, list]:
        if clause.param == "_id" and clause.missing is None:
            ids = [v.code for v in clause.values]
            negate = "NOT " if clause.modifier == "not" else ""
            return f"{alias}.id {negate}IN ({','.join('?' * len(ids))})", ids
        if clause.param == "_lastUpdated" and clause.missing is None:
            args: list = []
            ors = [range_condition(v.prefix, f"{alias}.lu", f"{alias}.lu", v.low, v.high, args)
                   for v in clause.values]
            return "(" + " OR ".join(ors) + ")", args
        table = TABLE_OF[clause.type]
        args = []
        head = f"SELECT rpk FROM {table} WHERE " + self._type_filter(types, "type", args) + "param = ?"
        args.append(clause.param)
        if clause.missing is not None:
            return f"{alias}.rpk {'NOT ' if clause.missing else ''}IN ({head})", args
        if clause.chain is not None:
            return self.chain(clause, types, alias, depth)
        ors = [self.value(clause, value, args) for value in clause.values]
        negate = clause.modifier in ("not", "not-in")
        return f"{alias}.rpk {'NOT ' if negate else ''}IN ({head} AND ({' OR '.join(ors)}))", args

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
            return self.range(clause.type, value, "low", "high", "system", "code", args)
        if isinstance(value, ReferenceValue):
            parts = []
            if value.url is not None and value.target_id is None:
                args.append(value.url)
                return "url = ?"
            if value.target_id is not None:
                parts.append("target_id = ?")
                args.append(value.target_id)
            if value.target_type is not None:
                parts.append("target_type = ?")
                args.append(value.target_type)
            if value.url is not None:
                args.append(value.url)
                return f"(({' AND '.join(parts)}) OR url = ?)"
            return "(" + " AND ".join(parts or ["1"]) + ")"
        if isinstance(value, UriValue):
            if mod == "below":
                args += [value.uri, value.uri + STRING_END]
                return "(uri >= ? AND uri < ?)"
            if mod == "above":
                args.append(value.uri)
                return "(substr(?1, 1, length(uri)) = uri)".replace("?1", "?")
            args.append(value.uri)
            return "uri = ?"
        if isinstance(value, CompositeValue):
            return self.composite(value, args)
        raise ValueError(f"cannot compile {value!r}")

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
    def range(kind: str, value: RangeValue, low: str, high: str, system: str, code: str, args: list) -> str:
        if kind == "quantity" and value.canonical is not None:
            unit, clow, chigh = value.canonical
            args.append(unit)
            cond = range_condition(value.prefix, "clow", "chigh", clow, chigh, args)
            plain_args: list = []
            plain = range_condition(value.prefix, low, high, value.low, value.high, plain_args)
            unit_sql = SQLCompiler._unit(value, system, code, plain_args)
            args += plain_args
            return f"((ccode = ? AND {cond}) OR ({plain}{unit_sql}))"
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
            sql += " AND " + self.range(kind, second, "v_low", "v_high", "v_system", "v_code", args)
        elif isinstance(second, StringValue):
            args += [second.text, second.text + STRING_END]
            sql += " AND (v_text >= ? AND v_text < ?)"
        elif isinstance(second, ReferenceValue):
            sql += " AND v_code = ?"
            args.append(second.target_id)
            if second.target_type:
                sql += " AND v_system = ?"
                args.append(second.target_type)
        return f"({sql})"

    def chain(self, clause: Clause, types: tuple[str, ...], alias: str, depth: int) -> tuple[str, list]:
        chain: Chain = clause.chain
        inner = f"c{depth}"
        args: list = []
        head = ("SELECT ref.rpk FROM idx_reference ref WHERE " + self._type_filter(types, "ref.type", args)
                + "ref.param = ? AND (")
        args.append(clause.param)
        ors = []
        for target in chain.target_types:
            sub = Query(types=(target,), clauses=chain.query.clauses)
            where, wargs = self.where(sub, inner, depth + 1)
            ors.append(f"(ref.target_type = ? AND ref.target_id IN (SELECT {inner}.id FROM resources {inner}"
                       f" WHERE {where}))")
            args += [target, *wargs]
        return f"{alias}.rpk IN ({head}{' OR '.join(ors)}))", args

    def has(self, clause: HasClause, outer: Query, alias: str, depth: int) -> tuple[str, list]:
        inner = f"h{depth}"
        sub = Query(types=(clause.source_type,), clauses=clause.query.clauses)
        where, wargs = self.where(sub, inner, depth + 1)
        sql = (f"{alias}.id IN (SELECT ref.target_id FROM idx_reference ref JOIN resources {inner}"
               f" ON {inner}.rpk = ref.rpk WHERE ref.type = ? AND ref.param = ? AND ref.target_type = {alias}.type"
               f" AND {where})")
        return sql, [clause.source_type, clause.reference_param, *wargs]

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
