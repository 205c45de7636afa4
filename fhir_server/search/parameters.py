"""The registry of search parameters: official R4 definitions plus custom ones.

Every SearchParameter applies to one or more base types, and the official ones carry one
FHIRPath expression for all of them (``AllergyIntolerance.code | Condition.code | ...``).
The registry keeps one :class:`SearchParam` per (resource type, code), whose
``expression`` is only the part for that type, so the extractor never evaluates the parts
of other types.

Choices made here:

* The spec's own *example* SearchParameters that ship in the R4 bundle (``example``,
  ``example-extension``, ``example-reference``) are not loaded: one of them redefines
  Condition ``subject`` with a wrong target.
* Resource-level parameters (``_id``, ``_lastUpdated``, ``_tag``, ``_profile``,
  ``_security``, ``_source``, and ``_content``, ``_query``, ``_filter`` which have no
  expression) apply to every type; DomainResource ones (``_text``) to every type except
  Binary, Bundle and Parameters. Parameters without expression are kept (the query side
  decides what to do with them) and are never indexed.
* ``targets`` are the declared ones, narrowed to ``X`` when the type's expression only
  keeps ``.where(resolve() is X)`` (Observation ``patient`` targets Patient, not Group).
* A custom SearchParameter (:meth:`SearchParameterRegistry.add`) replaces a parameter of
  the same code on its base types; it takes effect for writes indexed after the call
  (:attr:`SearchParameterRegistry.version` tells indexers to refresh).
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from fhir_server.definitions import Definitions

__all__ = ["SearchParam", "SearchParameterRegistry", "split_expression", "part_root", "PARAM_TYPES"]

PARAM_TYPES = frozenset({"number", "date", "string", "token", "reference", "composite", "quantity", "uri",
                         "special"})

# SearchParameters of the R4 bundle that are examples, not definitions
EXCLUDED_URLS = frozenset({
    "http://hl7.org/fhir/SearchParameter/example",
    "http://hl7.org/fhir/SearchParameter/example-extension",
    "http://hl7.org/fhir/SearchParameter/example-reference",
})

# Resources that are not DomainResources (no text, contained, extension)
NON_DOMAIN_RESOURCES = frozenset({"Binary", "Bundle", "Parameters"})


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str  # number|date|string|token|reference|composite|quantity|uri|special
    url: str
    description: str
    expression: str | None  # the part of the expression for THIS resource type only
    targets: tuple[str, ...]  # reference target types
    components: tuple[tuple[str, str], ...]  # composite: (component SearchParam url, relative expression)
    modifiers: tuple[str, ...] = ()  # as declared, may be empty


# -- expression splitting ------------------------------------------------------------------

def split_expression(expression: str) -> list[str]:
    """Split a FHIRPath expression on its top-level ``|`` (outside parentheses and quotes)."""
    parts: list[str] = []
    depth = 0
    start = 0
    quote: str | None = None
    i = 0
    n = len(expression)
    while i < n:
        ch = expression[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'`\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
        i += 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


_ROOT = re.compile(r"[\s(]*([A-Za-z_][A-Za-z0-9_]*)")


def part_root(part: str) -> str | None:
    """The type name a union part starts with (``(Observation.value as X)`` -> ``Observation``).

    ``None`` when the part does not start with a capitalised identifier (a relative path,
    ``$this``, a literal), i.e. it applies to every base type.
    """
    m = _ROOT.match(part)
    if m is None:
        return None
    name = m.group(1)
    return name if name[:1].isupper() else None


def expression_for_type(expression: str | None, resource_type: str) -> str | None:
    """The union parts of ``expression`` that apply to ``resource_type`` (joined by `` | ``)."""
    if not expression:
        return None
    domain = resource_type not in NON_DOMAIN_RESOURCES
    keep = []
    for part in split_expression(expression):
        root = part_root(part)
        if (root is None or root == resource_type or root == "Resource"
                or (root == "DomainResource" and domain)):
            keep.append(part)
    return " | ".join(keep) if keep else None


# -- registry --------------------------------------------------------------------------------

_RESOLVE_IS = re.compile(r".*\.where\(\s*resolve\(\)\s+is\s+([A-Za-z]+)\s*\)\s*")


def _targets(sp: dict, expression: str | None) -> tuple[str, ...]:
    """Declared targets, narrowed when every part of the type's expression is ``.where(resolve() is X)``."""
    declared = tuple(sp.get("target", ()) or ())
    if not expression or sp.get("type") != "reference":
        return declared
    only = []
    for part in split_expression(expression):
        m = _RESOLVE_IS.fullmatch(part)
        if m is None:
            return declared
        only.append(m.group(1))
    narrowed = tuple(t for t in declared if t in only) or tuple(dict.fromkeys(only))
    return narrowed


def _make_param(sp: dict, expression: str | None) -> SearchParam:
    components = tuple((c.get("definition", ""), c.get("expression", ""))
                       for c in sp.get("component", ()) or ())
    return SearchParam(
        code=sp["code"],
        type=sp["type"],
        url=sp.get("url") or f"urn:search-parameter:{sp['code']}",
        description=sp.get("description", "") or "",
        expression=expression,
        targets=_targets(sp, expression),
        components=components,
        modifiers=tuple(sp.get("modifier", ()) or ()),
    )


class SearchParameterRegistry:
    """Search parameters by resource type and code, built from the official R4 definitions."""

    def __init__(self, definitions: Definitions, custom: Iterable[dict] = ()) -> None:
        self.definitions = definitions
        self._lock = threading.Lock()
        self._version = 0
        # base -> code -> raw SearchParameter; base may be "Resource" / "DomainResource"
        self._raw: dict[str, dict[str, dict]] = {}
        self._by_url: dict[str, SearchParam] = {}
        self._cache: dict[str, dict[str, SearchParam]] = {}
        for sp in definitions.search_parameters:
            if sp.get("url") in EXCLUDED_URLS:
                continue
            self._register(sp)
        for sp in custom:
            self.add(sp)

    # .. building ..

    def _register(self, sp: dict) -> None:
        for base in sp.get("base", ()) or ():
            self._raw.setdefault(base, {})[sp["code"]] = sp
        param = _make_param(sp, sp.get("expression"))
        self._by_url[param.url] = param

    @property
    def version(self) -> int:
        """Incremented by every :meth:`add` and :meth:`remove`; indexers compare it to refresh their plans."""
        return self._version

    @property
    def resource_types(self) -> list[str]:
        """Every concrete type some parameter is defined for (plus the served types)."""
        names = {b for b in self._raw if b not in ("Resource", "DomainResource")}
        names.update(self.definitions.served)
        return sorted(names)

    def _build(self, resource_type: str) -> dict[str, SearchParam]:
        layers = [self._raw.get("Resource", {})]
        if resource_type not in NON_DOMAIN_RESOURCES:
            layers.append(self._raw.get("DomainResource", {}))
        if resource_type not in ("Resource", "DomainResource"):
            layers.append(self._raw.get(resource_type, {}))
        out: dict[str, SearchParam] = {}
        for layer in layers:  # later layers (more specific) win on a code clash
            for code, sp in layer.items():
                expr = expression_for_type(sp.get("expression"), resource_type)
                out[code] = _make_param(sp, expr)
        return out

    # .. public API ..

    def for_type(self, resource_type: str) -> dict[str, SearchParam]:
        """code -> parameter for a type, including the Resource/DomainResource ones (a copy)."""
        table = self._cache.get(resource_type)
        if table is None:
            with self._lock:
                table = self._cache.get(resource_type)
                if table is None:
                    table = self._build(resource_type)
                    self._cache[resource_type] = table
        return dict(table)

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        table = self._cache.get(resource_type)
        if table is None:  # (the cache may be cleared by a concurrent add/remove: use the table built)
            return self.for_type(resource_type).get(code)
        return table.get(code)

    def by_url(self, url: str) -> SearchParam | None:
        """The parameter with that canonical URL (its full, unsplit expression)."""
        return self._by_url.get(url)

    def add(self, search_parameter: dict) -> None:
        """Register a custom SearchParameter resource (R4 JSON); it applies to new writes.

        Raises :class:`ValueError` when the resource lacks ``code``, ``base`` or a valid ``type``,
        or a composite lacks components.
        """
        sp = search_parameter
        if not isinstance(sp, dict) or sp.get("resourceType", "SearchParameter") != "SearchParameter":
            raise ValueError("not a SearchParameter resource")
        code, bases, ptype = sp.get("code"), sp.get("base"), sp.get("type")
        if not isinstance(code, str) or not code or not re.fullmatch(r"[A-Za-z0-9_\-.:]+", code):
            raise ValueError("SearchParameter.code is missing or invalid")
        if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b for b in bases):
            raise ValueError("SearchParameter.base is missing")
        if ptype not in PARAM_TYPES:
            raise ValueError(f"SearchParameter.type {ptype!r} is not a search parameter type")
        if ptype == "composite" and not sp.get("component"):
            raise ValueError("a composite SearchParameter needs components")
        expr = sp.get("expression")
        if expr is not None and not isinstance(expr, str):
            raise ValueError("SearchParameter.expression must be a string")
        with self._lock:
            self._register(sp)
            self._cache.clear()
            self._version += 1

    def copy(self) -> "SearchParameterRegistry":
        """An independent registry holding the same parameters (custom ones included), at the same version."""
        other = SearchParameterRegistry.__new__(SearchParameterRegistry)
        with self._lock:
            other.definitions = self.definitions
            other._lock = threading.Lock()
            other._version = self._version
            other._raw = {base: dict(codes) for base, codes in self._raw.items()}
            other._by_url = dict(self._by_url)
            other._cache = dict(self._cache)
        return other

    def remove(self, url: str) -> bool:
        """Unregister the parameter with that canonical URL (added by :meth:`add`); False when unknown.

        It stops applying to searches and to writes indexed after the call. A parameter it had
        replaced (same base and code) is not restored: the caller must not replace built-in ones.
        """
        with self._lock:
            found = self._by_url.pop(url, None) is not None
            for codes in self._raw.values():
                for code in [c for c, sp in codes.items() if sp.get("url") == url]:
                    del codes[code]
                    found = True
            if found:
                self._cache.clear()
                self._version += 1
            return found
