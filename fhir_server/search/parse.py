"""Parse a FHIR search query string once, into the typed :class:`Query` every store compiles.

Unknown parameters are ignored and reported (``handling=lenient``, the default) or
refused (``Prefer: handling=strict``); a known parameter with a malformed value
is always a 400 naming the parameter (R4 search.html, "Handling errors").
"""
from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Iterable
from urllib.parse import parse_qsl, urlencode

from fhir_server.model.dates import parse_range
from fhir_server.model.outcome import FHIRError, Issue
from fhir_server.model.text import normalize
from fhir_server.search.parameters import SearchParam, SearchParameterRegistry
from fhir_server.search.query import (Chain, Clause, CompositeValue, HasClause, Query, RangeValue, ReferenceValue,
                                      SortKey, StringValue, TokenValue, UriValue)

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "of-type", "in", "not-in", "missing"},
    "reference": {"identifier", "missing"},  # plus :<ResourceType>
    "date": {"missing"}, "number": {"missing"}, "quantity": {"missing"},
    "uri": {"below", "above", "missing"},
    "composite": {"missing"},
    "special": {"missing"},
}
RESULT_PARAMETERS = {"_count", "_sort", "_include", "_revinclude", "_total", "_summary", "_elements",
                     "_format", "_pretty", "_type", "_page", "_contained", "_containedType"}
DEFAULT_COUNT = 20
MAX_COUNT = 1000
_REQUEST_BASE: ContextVar[str | None] = ContextVar("search_request_base", default=None)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_ESCAPED_SPLIT = {",": re.compile(r"(?<!\\),"), "|": re.compile(r"(?<!\\)\|"), "$": re.compile(r"(?<!\\)\$")}


def split_escaped(text: str, sep: str, maxsplit: int = 0) -> list[str]:
    """Split on ``sep`` not preceded by a backslash (R4 search.html, "Escaping Search Parameters")."""
    return _ESCAPED_SPLIT[sep].split(text, maxsplit=maxsplit)


def unescape(text: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", text)


@dataclass(frozen=True)
class Include:
    source_type: str  # "*" for any
    param: str  # "*" for every reference parameter
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass
class ParsedSearch:
    """Everything a search request asks for, already validated."""

    query: Query
    count: int = DEFAULT_COUNT
    includes: list[Include] = field(default_factory=list)
    total: str | None = None  # none | estimate | accurate; None: the server's choice (first page only)
    summary: str | None = None
    elements: list[str] | None = None
    page: str | None = None
    applied: list[tuple[str, str]] = field(default_factory=list)  # what the self link shows
    issues: list[Issue] = field(default_factory=list)
    base: str = ""  # the server base the search was made on (local absolute references)


class SearchParser:
    """Turns query strings into :class:`ParsedSearch`, using the search parameter registry."""

    def __init__(self, registry: SearchParameterRegistry, served: Iterable[str], base_url: str = ""):
        self.registry = registry
        self.served = frozenset(served)
        self.base_url = base_url.rstrip("/")

    # -- entry points ------------------------------------------------------------------------
    def parse(self, types: tuple[str, ...], params: list[tuple[str, str]], *, strict: bool = False,
              base: str | None = None) -> ParsedSearch:
        """``base``: the server base URL the request was made on (absolute references on it are local);
        the configured base when not given."""
        result = ParsedSearch(Query(types=types), base=(base if base is not None else self.base_url).rstrip("/"))
        token = _REQUEST_BASE.set(result.base)
        try:
            self._parse(result, types, params, strict)
        finally:
            _REQUEST_BASE.reset(token)
        return result

    def _parse(self, result: ParsedSearch, types: tuple[str, ...], params: list[tuple[str, str]],
               strict: bool) -> None:
        for name, value in params:
            code = name.split(":", 1)[0]
            try:
                if code in RESULT_PARAMETERS:
                    self._result_parameter(result, name, value, types, strict)
                else:
                    clause = self._clause(types, name, value)
                    if clause is None:
                        continue
                    result.query.clauses.append(clause)
                    result.applied.append((name, value))
            except UnknownParameter as exc:
                if strict:
                    raise FHIRError.of(400, "not-supported", str(exc), name) from None
                result.issues.append(Issue("warning", "not-supported", f"{exc}; it was ignored", name))

    def criteria(self, rtype: str, criteria: str) -> Query:
        """Parse the criteria of a conditional interaction strictly: every parameter must be known."""
        criteria = criteria.split("?", 1)[1] if "?" in criteria else criteria
        params = parse_qsl(criteria, keep_blank_values=True)
        if not params:
            raise FHIRError.of(400, "invalid", "Conditional criteria must name at least one search parameter")
        parsed = self.parse((rtype,), params, strict=True)
        if not parsed.query.clauses:
            raise FHIRError.of(400, "invalid", "Conditional criteria must contain a search parameter")
        return parsed.query

    @staticmethod
    def canonical_criteria(criteria: str) -> str:
        criteria = criteria.split("?", 1)[1] if "?" in criteria else criteria
        return urlencode(sorted(parse_qsl(criteria, keep_blank_values=True)))

    # -- result parameters -------------------------------------------------------------------
    def _result_parameter(self, result: ParsedSearch, name: str, value: str, types: tuple[str, ...],
                          strict: bool) -> None:
        if name == "_count":
            if not value.isdigit():
                raise FHIRError.of(400, "invalid", f"_count must be a non-negative integer, not '{value}'", "_count")
            result.count = min(int(value), MAX_COUNT)
            result.applied.append((name, str(result.count)))
        elif name == "_sort":
            keys = []
            for key in value.split(","):
                descending = key.startswith("-")
                code = key[1:] if descending else key
                param = self._param(types, code)
                if param is None or param.type in ("composite", "special") or (
                        param.expression is None and code not in ("_id", "_lastUpdated")):
                    raise UnknownParameter(f"Unknown or unsortable sort parameter '{code}'")
                keys.append(SortKey(code, param.type, descending))
            result.query.sort.extend(keys)
            result.applied.append((name, value))
        elif name.split(":")[0] in ("_include", "_revinclude"):
            modifier = name.partition(":")[2]
            if modifier not in ("", "iterate", "recurse"):
                raise FHIRError.of(400, "invalid", f"Unknown modifier ':{modifier}' on {name.split(':')[0]}", name)
            result.includes.append(self._include(name, value))
            result.applied.append((name, value))
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise FHIRError.of(400, "invalid", "_total must be none, estimate or accurate", "_total")
            result.total = value
            result.applied.append((name, value))
        elif name == "_summary":
            if value not in ("true", "false", "text", "data", "count"):
                raise FHIRError.of(400, "invalid", "_summary must be true, false, text, data or count", "_summary")
            result.summary = value
            result.applied.append((name, value))
        elif name == "_elements":
            result.elements = [e.strip() for e in value.split(",") if e.strip()]
            result.applied.append((name, value))
        elif name == "_page":
            result.page = value
        elif name == "_type":
            if not types or value.split(",") != [t for t in value.split(",") if t in types]:
                return  # consumed by the system-level search route; ignored on a type-level search
            result.applied.append((name, value))
        elif name in ("_contained", "_containedType"):
            raise UnknownParameter(f"{name} is not supported")

    def _include(self, name: str, value: str) -> Include:
        reverse = name.startswith("_revinclude")
        iterate = name.endswith((":iterate", ":recurse"))
        parts = value.split(":")
        if value == "*":
            return Include("*", "*", None, iterate, reverse)
        if any(not p for p in parts):
            raise FHIRError.of(400, "invalid", f"{name} must be 'SourceType:param[:TargetType]', not '{value}'", name)
        if len(parts) < 2 or len(parts) > 3:
            raise FHIRError.of(400, "invalid", f"{name} must be 'SourceType:param[:TargetType]', not '{value}'", name)
        source, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if source not in self.served:
            raise FHIRError.of(400, "invalid", f"{name}: unknown resource type '{source}'", name)
        if code != "*":
            param = self.registry.get(source, code)
            if param is None or param.type != "reference":
                raise FHIRError.of(400, "invalid", f"{name}: '{code}' is not a reference parameter of {source}", name)
        if target is not None and target not in self.served:
            raise FHIRError.of(400, "invalid", f"{name}: unknown target type '{target}'", name)
        return Include(source, code, target, iterate, reverse)

    # -- clauses -----------------------------------------------------------------------------
    def _param(self, types: tuple[str, ...], code: str) -> SearchParam | None:
        """The parameter ``code`` of ``types``; a search across several types may only use parameters
        defined on each of them (400 otherwise), and one without ``_type`` only the Resource ones."""
        if not types:
            types = ("Resource",)
        found = [self.registry.get(t, code) for t in types]
        known = [p for p in found if p is not None]
        if not known:
            return None
        if len(known) < len(found) or len({p.type for p in known}) > 1:
            missing = [t for t, p in zip(types, found) if p is None]
            raise FHIRError.of(400, "invalid", f"Search parameter '{code}' is not defined (with one type) on every "
                               f"searched type" + (f"; not on {', '.join(missing)}" if missing else ""), code)
        return known[0]

    def _clause(self, types: tuple[str, ...], name: str, value: str) -> Clause | HasClause | None:
        if name.startswith("_has:"):
            return self._has(types, name, value)
        head, _, chain_rest = name.partition(".")
        code, _, modifier = head.partition(":")
        param = self._param(types, code)
        if param is None:
            raise UnknownParameter(f"Unknown search parameter '{code}'" + (f" for {', '.join(types)}" if types else ""))
        if chain_rest:
            return self._chain(types, param, modifier or None, chain_rest, value, name)
        modifier = modifier or None
        if param.type == "special" or (param.expression is None and code not in ("_id", "_lastUpdated")):
            raise UnknownParameter(f"Search parameter '{code}' is not supported")
        if modifier == "missing":
            if value not in ("true", "false"):
                raise FHIRError.of(400, "invalid", f"{name} must be true or false", name)
            return Clause(code, param.type, "missing", (), missing=value == "true")
        if modifier is not None and modifier not in MODIFIERS.get(param.type, set()):
            if param.type == "reference" and modifier in self.served:
                pass  # :Type restricts the target type
            else:
                raise FHIRError.of(400, "not-supported",
                                   f"Modifier ':{modifier}' is not supported on {param.type} parameter '{code}'", name)
        if value == "":
            raise FHIRError.of(400, "invalid", f"Search parameter '{name}' has an empty value", name)
        if modifier in ("in", "not-in"):
            return Clause(code, "token", modifier, self._expand(value, name))
        values = tuple(self._value(param, modifier, unescape_part, name)
                       for unescape_part in split_escaped(value, ","))
        if modifier == "of-type":
            return Clause(f"{code}:of-type", "token", None, values)
        if modifier == "identifier":
            return Clause(f"{code}:identifier", "token", None, values)
        if param.type == "reference":
            values = tuple(v for group in values for v in (group if isinstance(group, tuple) else (group,)))
            modifier = None if modifier and modifier[0].isupper() else modifier
        return Clause(code, param.type, modifier, values)

    def _chain(self, types: tuple[str, ...], param: SearchParam, type_modifier: str | None, rest: str,
               value: str, name: str) -> Clause:
        if param.type != "reference":
            raise FHIRError.of(400, "invalid", f"'{param.code}' is not a reference parameter and cannot be chained",
                               name)
        if type_modifier is not None and (type_modifier not in self.served or
                                          (param.targets and type_modifier not in param.targets)):
            raise FHIRError.of(400, "invalid", f"'{type_modifier}' is not a target type of '{param.code}'", name)
        targets = (type_modifier,) if type_modifier else tuple(t for t in param.targets if t in self.served)
        inner_code = rest.split(".", 1)[0].split(":", 1)[0]
        usable = tuple(t for t in targets if self.registry.get(t, inner_code) is not None)
        if not usable:
            raise UnknownParameter(f"Chained parameter '{inner_code}' is not defined on "
                                   f"{', '.join(targets) or 'the targets of ' + param.code}")
        if len(usable) > 1:  # the inner parameter must mean the same on every target: group by its type
            kinds = {self.registry.get(t, inner_code).type for t in usable}
            if len(kinds) > 1:
                raise FHIRError.of(400, "invalid", f"Chained parameter '{inner_code}' has different types on "
                                   f"{', '.join(usable)}; name the target type ({param.code}:Type.{rest})", name)
        inner = self._clause(usable, rest, value)
        return Clause(param.code, "reference", None, (), chain=Chain(usable, Query(types=usable, clauses=[inner])))

    def _has(self, types: tuple[str, ...], name: str, value: str) -> HasClause:
        parts = name.split(":", 3)
        if len(parts) < 4:
            raise FHIRError.of(400, "invalid", f"_has must be '_has:Type:reference:parameter', not '{name}'", name)
        _, source, ref_code, rest = parts
        if source not in self.served:
            raise FHIRError.of(400, "invalid", f"_has: unknown resource type '{source}'", name)
        ref = self.registry.get(source, ref_code)
        if ref is None or ref.type != "reference":
            raise FHIRError.of(400, "invalid", f"_has: '{ref_code}' is not a reference parameter of {source}", name)
        if not rest:
            raise FHIRError.of(400, "invalid", f"_has must be '_has:Type:reference:parameter', not '{name}'", name)
        inner = self._clause((source,), rest, value)
        return HasClause(source, ref_code, Query(types=(source,), clauses=[inner]))

    # -- values ------------------------------------------------------------------------------
    def _value(self, param: SearchParam, modifier: str | None, text: str, name: str):
        try:
            if modifier == "text":
                return TokenValue(None, normalize(unescape(text)), False)
            if modifier == "of-type":
                parts = split_escaped(text, "|")
                if len(parts) != 3 or not all(parts):
                    raise ValueError("':of-type' takes system|code|value")
                return TokenValue(unescape(parts[0]), f"{unescape(parts[1])}|{unescape(parts[2])}", True)
            if modifier == "identifier":
                return self._token(text)
            kind = param.type
            if kind == "token":
                return self._token(text)
            if kind == "string":
                raw = unescape(text)
                return StringValue(raw if modifier == "exact" else normalize(raw))
            if kind == "date":
                prefix, rest = self._prefix(text)
                low, high = parse_range(rest)
                return RangeValue(prefix, low, high)
            if kind == "number":
                prefix, rest = self._prefix(text)
                low, high = number_range(rest)
                return RangeValue(prefix, low, high)
            if kind == "quantity":
                return self._quantity(text)
            if kind == "reference":
                return self._reference(param, modifier, unescape(text))
            if kind == "uri":
                return UriValue(unescape(text))
            if kind == "composite":
                return self._composite(param, text)
        except (ValueError, InvalidOperation) as exc:
            raise FHIRError.of(400, "invalid", f"Invalid value '{text}' for search parameter '{name}': {exc}",
                               name) from None
        raise FHIRError.of(400, "not-supported", f"Parameter type {param.type} is not supported", name)

    @staticmethod
    def _token(text: str) -> TokenValue:
        parts = split_escaped(text, "|", maxsplit=1)
        if len(parts) == 1:
            return TokenValue(None, unescape(parts[0]), False)
        system, code = unescape(parts[0]) or None, unescape(parts[1]) or None
        if system is None and code is None:
            raise ValueError("a token needs a system or a code")
        return TokenValue(system, code, True)

    @staticmethod
    def _prefix(text: str) -> tuple[str, str]:
        if len(text) > 2 and text[:2] in PREFIXES and not text[:2].isdigit():
            return text[:2], text[2:]
        return "eq", text

    def _quantity(self, text: str) -> RangeValue:
        from fhir_server.search.ucum import canonicalize
        parts = split_escaped(text, "|")
        if len(parts) not in (1, 3):
            raise ValueError("a quantity is number or number|system|code")
        prefix, number = self._prefix(parts[0])
        low, high = number_range(number)
        system = unescape(parts[1]) or None if len(parts) == 3 else None
        code = unescape(parts[2]) or None if len(parts) == 3 else None
        canonical = None
        if code is not None and system in (None, "http://unitsofmeasure.org"):
            converted = canonicalize(low, high, code)
            if converted is not None:
                canonical = converted
        return RangeValue(prefix, low, high, system, code, canonical)

    def _reference(self, param: SearchParam, modifier: str | None, text: str):
        """A reference value: local ones (``id``, ``Type/id``, or an absolute URL on this server's base)
        become ``ReferenceValue(Type, id, url)`` with ``url`` the local resource's absolute URL, so a
        store matches relative references and absolute ones on this base, not another server's; an
        id alone with several possible target types gives one value per type (a tuple). Any other
        URL (another server, ``urn:``, a canonical) is matched as a URL."""
        target_type = modifier if modifier and modifier[0].isupper() else None
        base = _REQUEST_BASE.get() or self.base_url
        for local_base in {base, self.base_url} - {""}:
            if text.startswith(local_base + "/"):
                text = text[len(local_base) + 1:]
                break
        if "://" in text or text.startswith(("urn:", "#")):
            return ReferenceValue(None, None, text.split("|", 1)[0] if "|" in text else text)
        segments = text.split("/")
        if len(segments) == 4 and segments[2] == "_history":
            segments = segments[:2]
        if len(segments) == 2:
            rtype, rid = segments
            if not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", rtype) or not _ID.fullmatch(rid):
                raise ValueError("expected [Type/]id")
            if target_type is not None and rtype != target_type:
                raise ValueError(f"the value names {rtype}, the modifier {target_type}")
            return self._local(rtype, rid, base)
        if len(segments) != 1 or not _ID.fullmatch(text):
            raise ValueError("expected an id, Type/id or an absolute URL")
        if target_type is not None:
            return self._local(target_type, text, base)
        targets = param.targets or tuple(sorted(self.served))
        return tuple(self._local(t, text, base) for t in targets)

    @staticmethod
    def _local(rtype: str, rid: str, base: str) -> ReferenceValue:
        return ReferenceValue(rtype, rid, f"{base}/{rtype}/{rid}" if base else None)

    def _expand(self, value: str, name: str) -> tuple[TokenValue, ...]:
        """``:in`` / ``:not-in``: the codes of a value set this server holds, as token values.

        A code matches with its system, or without system (elements of type ``code`` carry their
        system implicitly)."""
        if "," in value:
            raise FHIRError.of(400, "invalid", f"{name} takes one value set URL", name)
        url = value.split("|", 1)[0]
        expansion = self.registry.definitions.required_value_sets.get(url)
        if expansion is None:
            raise FHIRError.of(400, "not-supported", f"{name}: the value set '{url}' is not known to this server",
                               name)
        codes = expansion.get("codes")
        if codes is None:
            raise FHIRError.of(400, "not-supported", f"{name}: the value set '{url}' cannot be expanded: "
                               f"{expansion.get('notExpandable', 'no expansion')}", name)
        out: dict[TokenValue, None] = {}
        for system, code in codes:
            out[TokenValue(system, code, True)] = None
            out[TokenValue(None, code, True)] = None
        if not out:  # an empty value set: a code no resource has, so :in matches nothing, :not-in everything
            out[TokenValue(None, "\x00no-code", True)] = None
        return tuple(out)

    def _composite(self, param: SearchParam, text: str) -> CompositeValue:
        parts = split_escaped(text, "$")
        if len(parts) != len(param.components):
            raise ValueError(f"a composite value for '{param.code}' has {len(param.components)} parts joined by $")
        values = []
        for (url, _expr), part in zip(param.components, parts):
            component = self.registry.by_url(url)
            if component is None:
                raise ValueError(f"component {url} is unknown")
            value = self._value(component, None, part, param.code)
            if isinstance(value, tuple):
                raise ValueError("a reference in a composite value must be Type/id or a URL")
            values.append(value)
        return CompositeValue(tuple(values))


class UnknownParameter(Exception):
    """A parameter this server does not know (ignored or refused by the handling preference)."""


def number_range(text: str) -> tuple[float, float]:
    """The closed range a decimal's significant figures imply: ``100`` → [99.5, 100.5], ``1.5`` → [1.45, 1.55]."""
    value = Decimal(text)
    if not value.is_finite():
        raise ValueError("not a finite number")
    exponent = value.as_tuple().exponent
    half = Decimal(5).scaleb(exponent - 1)
    return float(value - half), float(value + half)
