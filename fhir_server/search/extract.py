"""Index extraction: a resource in, its search-index entries out.

:class:`Indexer` compiles, once, every search parameter expression of every served type
(:mod:`fhir_server.search.expressions`; fhirpathpy only for what that compiler does not
cover), and turns the values each expression reaches into the typed entries of
:mod:`fhir_server.search.entries`, according to the parameter type and the FHIR type of
the value:

token
    code/string/id/uri... -> ``(None, value)``; boolean -> ``"true"``/``"false"``;
    Coding -> ``(system, code, text=normalised display)``; CodeableConcept -> one entry per
    coding, plus a text-only entry ``(None, None, normalised text)`` when it has ``text``;
    Identifier -> ``(system, value, text=normalised type.text)`` plus, per
    ``type.coding``, an entry under ``<code>:of-type`` with ``(type system,
    "<type code>|<value>")``; ContactPoint -> ``(None, value)``.
string
    string/markdown/code... as they are; HumanName -> family, each given, prefix, suffix,
    text; Address -> each line, city, district, state, postalCode, country, text.
date
    date/dateTime/instant -> the range of their precision; Period -> start..end (open ends
    DATE_MIN/DATE_MAX); Timing -> min..max of its events, else repeat.boundsPeriod.
number
    integer/decimal -> the range of their precision (``1.5`` -> 1.45..1.55, ``100`` -> 99.5..100.5).
quantity
    Quantity and its profiles (Age, Duration...) -> value range, system, code (the unit text
    when there is no code), plus the UCUM canonical form (:mod:`.ucum`) when the system is
    UCUM; a comparator ``<``/``<=`` opens the low end (``-inf``), ``>``/``>=`` the high end
    (``+inf``); Money -> value with ``urn:iso:std:iso:4217`` and the currency;
    Range -> low..high (open ends infinite). SampledData is skipped.
reference
    ``Type/id[/_history/v]`` -> (Type, id, version); absolute ``http(s)://base/Type/id`` ->
    (Type, id) and ``url`` = the reference without its ``/_history/v`` part; ``#contained``
    -> skipped; anything else (``urn:uuid:...``) -> ``url`` only; canonical -> ``url`` with
    the ``|version`` split into ``version``; ``Reference.identifier`` -> token under
    ``<code>:identifier``.
uri
    uri/url/canonical/oid/uuid strings as they are.
composite
    for each node of the base expression, every combination of its components' entries
    (component entries are named after the component parameter's code).

Parameters without an expression and ``special`` ones are not indexed. Nothing here raises
on odd data: a value of an unexpected shape is skipped.
"""
from __future__ import annotations

import copy

import itertools
import logging
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from fhir_server.model.dates import parse_range
from fhir_server.model.text import normalize
from fhir_server.search import ucum
from fhir_server.search.entries import (
    DATE_MAX, DATE_MIN, CompositeEntry, DateEntry, IndexEntries, NumberEntry, QuantityEntry, ReferenceEntry,
    StringEntry, TokenEntry, UriEntry,
)
from fhir_server.search.expressions import (
    PRIMITIVE_TYPES, QUANTITY_TYPES, REF, Compiler, TypeModel, Unsupported, node_type,
)
from fhir_server.search.parameters import SearchParam, SearchParameterRegistry

__all__ = ["Indexer", "parse_reference", "precision_range", "ISO_4217"]

log = logging.getLogger(__name__)

ISO_4217 = "urn:iso:std:iso:4217"
_INF = math.inf

# Known errata of the R4 definitions: component expressions given in the wrong order.
# DocumentReference "relationship" declares (relatesto, code) and (relation, target); the
# relatesto component is the target reference and relation is the code.
COMPONENT_ERRATA: dict[str, tuple[str, ...]] = {
    "http://hl7.org/fhir/SearchParameter/DocumentReference-relationship": ("target", "code"),
}

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_HISTORY = re.compile(r"(.*)/_history/([A-Za-z0-9\-.]{1,64})")

Converter = Callable[[str, Any, Any, "_Collector"], None]


# -- value helpers -------------------------------------------------------------------------------

def precision_range(value: Any) -> tuple[float, float] | None:
    """``[low, high]`` implied by the precision of a FHIR number (int, Decimal or float)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value - 0.5, value + 0.5
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = Decimal(repr(value))
    if isinstance(value, Decimal):
        if not value.is_finite():
            return None
        exp = value.as_tuple().exponent
        try:
            half = Decimal(5).scaleb(exp - 1)
            return float(value - half), float(value + half)
        except (InvalidOperation, OverflowError):
            return None
    return None


def parse_reference(text: str, resource_types: frozenset[str] | set[str]) -> tuple | None:
    """Reference text -> ``(type, id, url, version)``; ``None`` for ``#contained`` or empty text."""
    if not isinstance(text, str) or not text or text.startswith("#"):
        return None
    version = None
    body = text
    m = _HISTORY.fullmatch(text)
    if m is not None:
        body, version = m.group(1), m.group(2)
    parts = body.rsplit("/", 2)
    if len(parts) >= 2 and parts[-2] in resource_types and _ID.fullmatch(parts[-1]):
        if "://" in body:
            return parts[-2], parts[-1], body, version
        if len(parts) == 2:
            return parts[-2], parts[-1], None, version
    return None, None, text, None


def _unwrap_extension(v: Any) -> tuple[str | None, Any]:
    if type(v) is not dict:
        return None, None
    for k, x in v.items():
        if len(k) > 5 and k.startswith("value") and k[5].isupper():
            t = k[5:]
            lowered = t[0].lower() + t[1:]
            return (lowered if lowered in PRIMITIVE_TYPES else t), x
    return None, None


def _s(v: Any) -> str | None:
    return v if type(v) is str and v else None


def _list(v: Any) -> list:
    if type(v) is list:
        return v
    return [] if v is None else [v]


class _Collector:
    """Collects entries, dropping duplicates as they come (cheaper than deduplicating at the end)."""

    __slots__ = ("tokens", "strings", "dates", "numbers", "quantities", "references", "uris", "composites",
                 "_seen")

    def __init__(self) -> None:
        self.tokens: list = []
        self.strings: list = []
        self.dates: list = []
        self.numbers: list = []
        self.quantities: list = []
        self.references: list = []
        self.uris: list = []
        self.composites: list = []
        self._seen: set = set()

    def token(self, code: str, system: str | None, value: str | None, text: str | None) -> None:
        key = ("t", code, system, value, text)
        if key not in self._seen:
            self._seen.add(key)
            self.tokens.append(TokenEntry(code, system, value, text))

    def string(self, code: str, normalized: str, exact: str) -> None:
        key = ("s", code, exact)
        if key not in self._seen:
            self._seen.add(key)
            self.strings.append(StringEntry(code, normalized, exact))

    def date(self, code: str, low: int, high: int) -> None:
        key = ("d", code, low, high)
        if key not in self._seen:
            self._seen.add(key)
            self.dates.append(DateEntry(code, low, high))

    def number(self, code: str, low: float, high: float) -> None:
        key = ("n", code, low, high)
        if key not in self._seen:
            self._seen.add(key)
            self.numbers.append(NumberEntry(code, low, high))

    def quantity(self, code: str, low: float, high: float, system: str | None, unit: str | None,
                 canonical: str | None, clow: float | None, chigh: float | None) -> None:
        key = ("q", code, low, high, system, unit)
        if key not in self._seen:
            self._seen.add(key)
            self.quantities.append(QuantityEntry(code, low, high, system, unit, canonical, clow, chigh))

    def reference(self, code: str, target_type: str | None, target_id: str | None, url: str | None,
                  version: str | None) -> None:
        key = ("r", code, target_type, target_id, url, version)
        if key not in self._seen:
            self._seen.add(key)
            self.references.append(ReferenceEntry(code, target_type, target_id, url, version))

    def uri(self, code: str, uri: str) -> None:
        key = ("u", code, uri)
        if key not in self._seen:
            self._seen.add(key)
            self.uris.append(UriEntry(code, uri))

    def entries(self) -> IndexEntries:
        return IndexEntries(self.tokens, self.strings, self.dates, self.numbers, self.quantities,
                            self.references, self.uris, list(dict.fromkeys(self.composites)))


# -- converters per parameter type ---------------------------------------------------------------

_TOKEN_STRINGS = frozenset({"code", "string", "id", "uri", "url", "canonical", "oid", "uuid", "markdown"})
_INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt"})


def _token(code: str, t: str | None, v: Any, out: _Collector) -> None:
    if t == "CodeableConcept":
        if type(v) is not dict:
            return
        for c in _list(v.get("coding")):
            if type(c) is dict:
                system, cd, display = _s(c.get("system")), _s(c.get("code")), _s(c.get("display"))
                if system or cd:
                    out.token(code, system, cd, normalize(display) if display else None)
                elif display:
                    out.token(code, None, None, normalize(display))
        text = _s(v.get("text"))
        if text:
            out.token(code, None, None, normalize(text))
    elif t == "Coding":
        if type(v) is dict:
            system, cd, display = _s(v.get("system")), _s(v.get("code")), _s(v.get("display"))
            if system or cd:
                out.token(code, system, cd, normalize(display) if display else None)
    elif t == "Identifier":
        if type(v) is not dict:
            return
        system, value = _s(v.get("system")), _s(v.get("value"))
        itype = v.get("type")
        type_text = _s(itype.get("text")) if type(itype) is dict else None
        if system or value:
            out.token(code, system, value, normalize(type_text) if type_text else None)
        if value and type(itype) is dict:
            for c in _list(itype.get("coding")):
                if type(c) is dict and _s(c.get("code")):
                    out.token(code + ":of-type", _s(c.get("system")), f"{c['code']}|{value}", None)
    elif t == "ContactPoint":
        if type(v) is dict and _s(v.get("value")):
            out.token(code, None, v["value"], None)
    elif t in _TOKEN_STRINGS:
        if type(v) is str and v:
            out.token(code, None, v, None)
    elif t == "boolean":
        if type(v) is bool:
            out.token(code, None, "true" if v else "false", None)
    elif t in _INTEGERS:
        if type(v) is int:
            out.token(code, None, str(v), None)
    elif t == "Extension":
        _token(code, *_unwrap_extension(v), out)


_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")
_STRING_PRIMS = frozenset({"string", "markdown", "code", "id", "uri", "url", "canonical", "oid", "uuid"})


def _add_string(code: str, v: Any, out: _Collector) -> None:
    if type(v) is str:
        norm = normalize(v)
        if norm:
            out.string(code, norm, v)


def _string(code: str, t: str | None, v: Any, out: _Collector) -> None:
    if t in _STRING_PRIMS:
        _add_string(code, v, out)
    elif t == "HumanName" or t == "Address":
        if type(v) is dict:
            for part in (_NAME_PARTS if t == "HumanName" else _ADDRESS_PARTS):
                for x in _list(v.get(part)):
                    _add_string(code, x, out)
    elif t == "Extension":
        _string(code, *_unwrap_extension(v), out)


def _date_bounds(v: Any) -> tuple[int, int] | None:
    if type(v) is not str:
        return None
    try:
        return parse_range(v)
    except ValueError:
        return None


def _period(v: Any) -> tuple[int, int] | None:
    if type(v) is not dict:
        return None
    start, end = v.get("start"), v.get("end")
    if start is None and end is None:
        return None
    lo = _date_bounds(start) if start is not None else (DATE_MIN, DATE_MIN)
    hi = _date_bounds(end) if end is not None else (DATE_MAX, DATE_MAX)
    if lo is None or hi is None:
        return None
    return lo[0], hi[1]


def _date(code: str, t: str | None, v: Any, out: _Collector) -> None:
    rng = None
    if t in ("dateTime", "date", "instant", "string"):
        rng = _date_bounds(v)
    elif t == "Period":
        rng = _period(v)
    elif t == "Timing":
        if type(v) is dict:
            events = [b for b in (_date_bounds(e) for e in _list(v.get("event"))) if b is not None]
            if events:
                rng = (min(b[0] for b in events), max(b[1] for b in events))
            else:
                repeat = v.get("repeat")
                if type(repeat) is dict:
                    rng = _period(repeat.get("boundsPeriod"))
    elif t == "Extension":
        _date(code, *_unwrap_extension(v), out)
        return
    if rng is not None:
        out.date(code, rng[0], rng[1])


def _number(code: str, t: str | None, v: Any, out: _Collector) -> None:
    if t == "Extension":
        _number(code, *_unwrap_extension(v), out)
        return
    rng = precision_range(v)
    if rng is not None:
        out.number(code, rng[0], rng[1])


def _add_quantity(out: _Collector, code: str, low: float, high: float, system: str | None,
                  unit: str | None) -> None:
    if system == ucum.UCUM_SYSTEM and unit:
        conv = ucum.to_canonical(low, high, unit)
        if conv is not None:
            out.quantity(code, low, high, system, unit, conv[0], conv[1], conv[2])
            return
    out.quantity(code, low, high, system, unit, None, None, None)


def _quantity(code: str, t: str | None, v: Any, out: _Collector) -> None:
    if type(v) is not dict:
        return
    if t in QUANTITY_TYPES:
        rng = precision_range(v.get("value"))
        if rng is None:
            return
        low, high = rng
        comparator = v.get("comparator")
        if comparator in ("<", "<="):
            low = -_INF
        elif comparator in (">", ">="):
            high = _INF
        _add_quantity(out, code, low, high, _s(v.get("system")), _s(v.get("code")) or _s(v.get("unit")))
    elif t == "Money":
        rng = precision_range(v.get("value"))
        if rng is not None:
            out.quantity(code, rng[0], rng[1], ISO_4217, _s(v.get("currency")), None, None, None)
    elif t == "Range":
        lo, hi = v.get("low"), v.get("high")
        lo = lo if type(lo) is dict else {}
        hi = hi if type(hi) is dict else {}
        lr, hr = precision_range(lo.get("value")), precision_range(hi.get("value"))
        if lr is None and hr is None:
            return
        unit_of = lo if lr is not None else hi
        system, unit = _s(unit_of.get("system")), _s(unit_of.get("code")) or _s(unit_of.get("unit"))
        low = lr[0] if lr is not None else -_INF
        high = hr[1] if hr is not None else _INF
        hi_unit = _s(hi.get("code")) or _s(hi.get("unit"))
        same_unit = lr is None or hr is None or (hi_unit == unit and _s(hi.get("system")) == system)
        if same_unit:
            _add_quantity(out, code, low, high, system, unit)
        else:
            out.quantity(code, low, high, system, unit, None, None, None)
    elif t == "Extension":
        _quantity(code, *_unwrap_extension(v), out)


def _uri(code: str, t: str | None, v: Any, out: _Collector) -> None:
    if t in _STRING_PRIMS:
        if type(v) is str and v:
            out.uri(code, v)
    elif t == "Extension":
        _uri(code, *_unwrap_extension(v), out)


_CONVERTERS: dict[str, Converter] = {
    "token": _token, "string": _string, "date": _date, "number": _number, "quantity": _quantity,
    "uri": _uri,
}


class _ReferenceConverter:
    def __init__(self, resource_types: frozenset[str]) -> None:
        self.resource_types = resource_types

    def __call__(self, code: str, t: str | None, v: Any, out: _Collector) -> None:
        if t == "Reference":
            if type(v) is not dict:
                return
            ref = v.get("reference")
            if type(ref) is str:
                parsed = parse_reference(ref, self.resource_types)
                if parsed is not None:
                    out.reference(code, *parsed)
            ident = v.get("identifier")
            if type(ident) is dict:
                system, value = _s(ident.get("system")), _s(ident.get("value"))
                if system or value:
                    out.token(code + ":identifier", system, value, None)
        elif t == "canonical":
            if type(v) is str and v and not v.startswith("#"):
                url, _, version = v.partition("|")
                out.reference(code, None, None, url, version or None)
        elif t in ("uri", "url", "string", "uuid", "oid"):
            if type(v) is str:
                parsed = parse_reference(v, self.resource_types)
                if parsed is not None:
                    out.reference(code, *parsed)
        elif t == "Extension":
            self(code, *_unwrap_extension(v), out)


# -- plans ---------------------------------------------------------------------------------------

def _fhirpathpy_fn(expression: str) -> Callable[[list], list]:
    """Compile with fhirpathpy (R4 model) once; nodes in, (None, value) nodes out."""
    from fhirpathpy import compile as fp_compile
    from fhirpathpy.models import models

    compiled = fp_compile(expression, models["r4"])

    def run(nodes: list) -> list:
        out = []
        for _, resource in nodes:
            for v in compiled(resource):
                if not isinstance(v, (dict, str, bool, int, float, Decimal)):
                    v = str(v)
                out.append((None, v))
        return out
    return run


class _Composite:
    __slots__ = ("param", "base", "components", "mode")

    def __init__(self, param: SearchParam, base: Callable, components: list, mode: str) -> None:
        self.param = param
        self.base = base
        self.components = components  # [(component code, component type, fn, converter, bucket name)]
        self.mode = mode


def _item_code(item: Any) -> str:
    return item[0] if item.__class__ is tuple else item.param.code


_BUCKETS = {"token": "tokens", "string": "strings", "date": "dates", "number": "numbers",
            "quantity": "quantities", "reference": "references", "uri": "uris"}


# Parameters every store answers from the resource's own id and lastUpdated, never from index entries.
RESOURCE_COLUMNS = frozenset({"_id", "_lastUpdated"})


class Indexer:
    """Turns resources into :class:`IndexEntries`, from the registry's search parameters."""

    def __init__(self, registry: SearchParameterRegistry) -> None:
        self.registry = registry
        defs = registry.definitions
        types: set[str] = set(defs.served)
        for sp in defs.search_parameters:
            types.update(sp.get("target", ()) or ())
            types.update(b for b in sp.get("base", ()) or () if b not in ("Resource", "DomainResource"))
        self.model = TypeModel(defs.structures, types)
        self.resource_types = frozenset(self.model.resource_types - {"Resource", "DomainResource"})
        self.compiler = Compiler(self.model)
        self._converters: dict[str, Converter] = dict(_CONVERTERS)
        self._converters["reference"] = _ReferenceConverter(self.resource_types)
        self._compiled: dict[tuple, tuple] = {}
        self._plans: dict[str, tuple[int, list]] = {}
        self._report: dict[str, dict[str, str]] = {}
        for rtype in sorted(defs.served):
            self._plan(rtype)

    def fork(self, registry: SearchParameterRegistry) -> "Indexer":
        """An indexer for ``registry`` (a copy of this one's) that shares the type model, the compiler
        and the compiled expressions; its plans are rebuilt only once its registry changes."""
        clone = copy.copy(self)
        clone.registry = registry
        clone._plans = dict(self._plans)
        clone._report = dict(self._report)
        return clone

    # .. compilation ..

    def _root_ctx(self, rtype: str) -> str:
        return rtype if rtype in self.model.known_types else "Resource"

    def _compile(self, expression: str, ctxs: frozenset,
                 allow_fallback: bool) -> tuple[Callable, frozenset, str]:
        key = (expression, ctxs, allow_fallback)
        hit = self._compiled.get(key)
        if hit is not None:
            return hit
        try:
            fn, out = self.compiler.compile(expression, ctxs)
            result = (fn, out, "compiled")
        except Unsupported as exc:
            if not allow_fallback:
                raise
            log.debug("fhirpathpy fallback for %r: %s", expression, exc)
            try:
                result = (_fhirpathpy_fn(expression), frozenset({None}), "fallback")
            except Exception as exc2:  # fhirpathpy cannot parse it either
                raise Unsupported(f"{expression}: {exc2}") from exc2
        self._compiled[key] = result
        return result

    def _plan(self, rtype: str) -> list:
        version = self.registry.version
        cached = self._plans.get(rtype)
        if cached is not None and cached[0] == version:
            return cached[1]
        root = frozenset({self._root_ctx(rtype)})
        plan: list = []
        report: dict[str, str] = {}
        for code, param in sorted(self.registry.for_type(rtype).items()):
            if code in RESOURCE_COLUMNS:
                report[code] = "skipped: stores search it on the resource itself"
                continue
            if param.type == "special":
                report[code] = "skipped: special"
                continue
            if not param.expression:
                report[code] = "skipped: no expression"
                continue
            try:
                if param.type == "composite":
                    item = self._composite(param, rtype, root)
                    mode = item.mode
                else:
                    fn, out_ctxs, mode = self._compile(param.expression, root, allow_fallback=True)
                    typed = all(c is not None and c != REF and "." not in c for c in out_ctxs)
                    keys = self.compiler.root_keys(param.expression, root) if mode == "compiled" else None
                    item = (param.code, fn, self._converters[param.type], typed, keys)
            except (Unsupported, KeyError) as exc:
                report[code] = f"skipped: {exc}"
                continue
            report[code] = mode
            plan.append(item)
        self._plans[rtype] = (version, plan)
        self._report[rtype] = report
        return plan

    def _composite(self, param: SearchParam, rtype: str, root: frozenset) -> _Composite:
        base_fn, base_ctxs, mode = self._compile(param.expression, root, allow_fallback=False)
        errata = COMPONENT_ERRATA.get(param.url)
        components = []
        for i, (url, expr) in enumerate(param.components):
            comp = self.registry.by_url(url)
            if comp is None or comp.type in ("composite", "special"):
                raise Unsupported(f"component {url} is unknown")
            if errata is not None and i < len(errata):
                expr = errata[i]
            fn, _, _ = self._compile(expr, base_ctxs, allow_fallback=False)
            components.append((comp.code, comp.type, fn, self._converters[comp.type], _BUCKETS[comp.type]))
        return _Composite(param, base_fn, components, mode)

    # .. introspection ..

    def report(self, resource_type: str | None = None) -> dict:
        """How each parameter is extracted: ``compiled``, ``fallback`` or ``skipped: reason``.

        With a type: {code: mode}; without: {type: {code: mode}} for the served types.
        """
        if resource_type is not None:
            self._plan(resource_type)
            return dict(self._report[resource_type])
        for rtype in self.registry.definitions.served:
            self._plan(rtype)
        return {t: dict(r) for t, r in sorted(self._report.items())}

    def fallbacks(self) -> list[tuple[str, str]]:
        """The (type, code) pairs evaluated with fhirpathpy instead of compiled closures."""
        return [(t, c) for t, r in self.report().items() for c, m in r.items() if m == "fallback"]

    # .. indexing ..

    def index(self, resource: dict) -> IndexEntries:
        """All index entries of one resource; never raises on odd data."""
        if type(resource) is not dict:
            return IndexEntries()
        rtype = resource.get("resourceType")
        if type(rtype) is not str or not rtype:
            return IndexEntries()
        out = _Collector()
        cached = self._plans.get(rtype)
        if cached is not None and cached[0] == self.registry.version:
            plan = cached[1]
        else:
            try:
                plan = self._plan(rtype)
            except Exception:  # pragma: no cover - defensive
                log.exception("cannot build the index plan of %s", rtype)
                return IndexEntries()
        root = [(self._root_ctx(rtype), resource)]
        for item in plan:
            try:
                if item.__class__ is tuple:
                    code, fn, convert, typed, keys = item
                    if keys is not None and keys.isdisjoint(resource):
                        continue  # the resource has none of the elements the expression starts from
                    if typed:  # every node's ctx is its type name
                        for ctx, v in fn(root):
                            convert(code, ctx, v, out)
                    else:
                        for ctx, v in fn(root):
                            convert(code, node_type(ctx, v), v, out)
                else:
                    self._index_composite(item, root, out)
            except Exception:  # odd data must never break a write
                log.debug("index %s.%s failed", rtype, _item_code(item), exc_info=True)
        return out.entries()

    @staticmethod
    def _index_composite(item: _Composite, root: list, out: _Collector) -> None:
        code = item.param.code
        components = item.components
        for node in item.base(root):
            arg = [node]
            values = []
            for comp in components:  # reach every component's values first: cheap, often empty
                found = comp[2](arg)
                if not found:
                    break
                values.append(found)
            else:
                sink = _Collector()  # one per base node: component entries are told apart by their code
                for (ccode, _, _, convert, _), found in zip(components, values):
                    for ctx, v in found:
                        convert(ccode, node_type(ctx, v), v, sink)
                per_component = []
                for ccode, ctype, _, _, bucket in components:
                    entries = [e for e in getattr(sink, bucket) if e.param == ccode
                               and not (ctype == "token" and e.system is None and e.code is None)]
                    if not entries:
                        break
                    per_component.append(entries)
                else:
                    for combo in itertools.product(*per_component):
                        out.composites.append(CompositeEntry(code, combo))
