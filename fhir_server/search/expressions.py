"""A small FHIRPath compiler for search-parameter expressions.

Search-parameter expressions are a narrow slice of FHIRPath: dotted paths, unions, type
casts on choice elements (``Condition.onset.as(dateTime)``, ``(Observation.value as
Quantity)``), filters (``telecom.where(system='email')``, ``subject.where(resolve() is
Patient)``), ``extension('url')``, and a few boolean forms (``deceased.exists() and
deceased != false``). This module parses that slice and compiles it, once, into plain Python
closures that walk the resource dict — 40 to 500 times faster than fhirpathpy (see
``/work/shared/notes/libraries.md`` §2).

Nodes at run time are ``(ctx, value)`` pairs, ``value`` being the JSON value (dict, str,
bool, int, Decimal) and ``ctx`` the node's place in the type model:

* a data type or resource name (``"HumanName"``, ``"dateTime"``, ``"Patient"``),
* a backbone element path (``"Patient.contact"``, ``"Observation.component"``),
* :data:`REF` for the stub produced by ``resolve()`` (its value is the target type name),
* ``None`` when the type is not known (then :func:`infer_type` looks at the JSON shape).

Types come from the StructureDefinition snapshots (:class:`TypeModel`), which also map a
choice element ``value`` to its JSON keys ``valueQuantity``, ``valueString``... Arrays are
walked transparently, as in FHIRPath.

Anything outside the slice raises :class:`Unsupported` at compile time; the caller then
falls back to fhirpathpy (or skips the parameter).
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Callable, Iterable

__all__ = [
    "Unsupported", "TypeModel", "Compiler", "parse", "infer_type", "node_type", "is_type",
    "normalize_type_name", "REF", "PRIMITIVE_TYPES", "QUANTITY_TYPES",
]

Fn = Callable[[list], list]  # list of (ctx, value) nodes -> list of (ctx, value) nodes

REF = "@ref"  # ctx of the stub that resolve() yields; the value is the target type name
BOOL = "boolean"

PRIMITIVE_TYPES = frozenset({
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id", "instant",
    "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt", "uri", "url", "uuid",
    "xhtml",
})
_PRIMITIVE_BY_LOWER = {p.lower(): p for p in PRIMITIVE_TYPES}
QUANTITY_TYPES = frozenset({"Quantity", "Age", "Count", "Distance", "Duration", "MoneyQuantity",
                            "SimpleQuantity"})
# type -> its ancestors that matter for `is` / `as` / `ofType`
_SUPERTYPES: dict[str, frozenset[str]] = {
    **{q: frozenset({"Quantity", "Element"}) for q in QUANTITY_TYPES if q != "Quantity"},
    "code": frozenset({"string"}), "id": frozenset({"string"}), "markdown": frozenset({"string"}),
    "url": frozenset({"uri"}), "canonical": frozenset({"uri"}), "oid": frozenset({"uri"}),
    "uuid": frozenset({"uri"}), "positiveInt": frozenset({"integer"}), "unsignedInt": frozenset({"integer"}),
    "BackboneElement": frozenset({"Element"}),
}
_NON_DOMAIN = frozenset({"Binary", "Bundle", "Parameters"})
_SYSTEM_TYPES = {
    "System.String": "string", "System.Boolean": "boolean", "System.Integer": "integer",
    "System.Decimal": "decimal", "System.Date": "date", "System.DateTime": "dateTime",
    "System.Time": "time",
}


class Unsupported(Exception):
    """The expression uses FHIRPath outside the compiled slice."""


def normalize_type_name(name: str) -> str:
    """``FHIR.Quantity`` -> ``Quantity``, ``System.DateTime`` / ``DateTime`` -> ``dateTime``."""
    if name.startswith("FHIR."):
        name = name[5:]
    elif name.startswith("System."):
        name = name[7:]
    prim = _PRIMITIVE_BY_LOWER.get(name.lower())
    if prim is not None and (name[:1].islower() or name.lower() in
                             {"string", "boolean", "integer", "decimal", "date", "datetime", "time"}):
        return prim
    return name


# -- the type model ------------------------------------------------------------------------------

class TypeModel:
    """Element types from the StructureDefinition snapshots, for compile-time path typing."""

    def __init__(self, structures: dict[str, dict], resource_types: Iterable[str] = ()) -> None:
        self.elements: dict[str, tuple[tuple[str, ...], str | None]] = {}
        self.resource_types = set(resource_types)
        self.known_types = set(structures)
        for sid, sd in structures.items():
            if sd.get("kind") == "resource":
                self.resource_types.add(sid)
            for el in (sd.get("snapshot") or {}).get("element", ()):
                path = el.get("path")
                if not path or "." not in path:
                    continue
                types = tuple(self._type_code(t) for t in el.get("type", ()) or ())
                ref = el.get("contentReference")
                self.elements[path] = (types, ref[1:] if ref and ref.startswith("#") else None)
        self._cache: dict[tuple[str | None, str], list[tuple[str, str | None]] | None] = {}

    @staticmethod
    def _type_code(t: dict) -> str:
        code = t.get("code", "")
        for ext in t.get("extension", ()) or ():
            if ext.get("url", "").endswith("structuredefinition-fhir-type") and ext.get("valueUrl"):
                return ext["valueUrl"]
        if code.startswith("http://hl7.org/fhirpath/"):
            return _SYSTEM_TYPES.get(code.rsplit("/", 1)[1], "string")
        return code

    def _ctx_for(self, path: str, type_code: str) -> str | None:
        if type_code in ("BackboneElement", "Element"):
            return path
        if type_code == "Resource":
            return None  # contained / inline resources: typed at run time from resourceType
        return type_code

    def child(self, ctx: str | None, name: str) -> list[tuple[str, str | None]] | None:
        """JSON keys and their ctx for ``ctx.name``; ``None`` when the model does not know."""
        key = (ctx, name)
        if key in self._cache:
            return self._cache[key]
        out: list[tuple[str, str | None]] | None = None
        if ctx is not None and ctx != REF:
            base = ctx
            el = self.elements.get(f"{base}.{name}")
            if el is not None:
                types, ref = el
                path = f"{base}.{name}"
                if ref is not None:
                    out = [(name, ref)]
                elif len(types) == 1:
                    out = [(name, self._ctx_for(path, types[0]))]
                elif types:
                    out = [(name, None)]
            else:
                el = self.elements.get(f"{base}.{name}[x]")
                if el is not None:
                    path = f"{base}.{name}[x]"
                    out = [(name + t[0].upper() + t[1:], self._ctx_for(path, t)) for t in el[0]]
        self._cache[key] = out
        return out


# -- run-time typing -----------------------------------------------------------------------------

_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


def infer_type(value: Any) -> str | None:
    """A FHIR type guessed from the JSON shape (used when the model does not know)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, (Decimal, float)):
        return "decimal"
    if isinstance(value, str):
        return "string"
    if not isinstance(value, dict):
        return None
    if "resourceType" in value:
        return value["resourceType"] if isinstance(value["resourceType"], str) else None
    if "coding" in value:
        return "CodeableConcept"
    if "url" in value and ("extension" in value or any(k.startswith("value") for k in value)):
        return "Extension"
    if "reference" in value or ("identifier" in value and isinstance(value.get("identifier"), dict)):
        return "Reference"
    if "family" in value or "given" in value:
        return "HumanName"
    if "line" in value or "city" in value or "postalCode" in value or "country" in value:
        return "Address"
    if "start" in value or "end" in value:
        return "Period"
    if "low" in value or "high" in value:
        return "Range"
    if "event" in value or "repeat" in value:
        return "Timing"
    v = value.get("value")
    if "currency" in value:
        return "Money"
    if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool):
        return "Quantity"
    if "code" in value and ("system" in value or "display" in value):
        return "Coding"
    if v is not None:
        if value.get("system") in _CONTACT_SYSTEMS or "rank" in value:
            return "ContactPoint"
        return "Identifier"
    if "code" in value:
        return "Coding"
    if "text" in value and len(value) == 1:
        return "CodeableConcept"
    return None


def node_type(ctx: str | None, value: Any) -> str | None:
    """The FHIR type of a run-time node."""
    if ctx is None:
        return infer_type(value)
    if ctx == REF:
        return value
    if "." in ctx:
        return "BackboneElement"
    return ctx


def is_type(ctx: str | None, value: Any, wanted: str) -> bool:
    """FHIRPath ``is``: the node's type is ``wanted`` or a specialisation of it."""
    t = node_type(ctx, value)
    if t is None:
        return False
    if t == wanted or wanted in _SUPERTYPES.get(t, ()):
        return True
    if wanted == "Resource" or wanted == "DomainResource":
        if ctx == REF or (isinstance(value, dict) and "resourceType" in value):
            return wanted == "Resource" or t not in _NON_DOMAIN
    return False


# -- parsing -------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>'(?:[^'\\]|\\.)*')
  | (?P<bq>`(?:[^`\\]|\\.)*`)
  | (?P<date>@[0-9T:\-+.Z]*)
  | (?P<num>\d+(?:\.\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<var>\$[A-Za-z]+|%[A-Za-z_][A-Za-z0-9_\-]*|%`[^`]*`|%'[^']*')
  | (?P<op>!=|!~|<=|>=|\{\}|[.()\[\],|=~<>+\-*/&])
""", re.X)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/"}


def _unescape(body: str) -> str:
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)",
                  lambda m: chr(int(m.group(1)[1:], 16)) if m.group(1)[0] == "u" and len(m.group(1)) == 5
                  else _ESCAPES.get(m.group(1), m.group(1)), body)


def _tokenize(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise Unsupported(f"cannot tokenize at {pos}: {text[pos:pos + 10]!r}")
        pos = m.end()
        kind = m.lastgroup
        tok = m.group()
        if kind == "ws":
            continue
        if kind == "str":
            out.append(("str", _unescape(tok[1:-1])))
        elif kind == "bq":
            out.append(("ident", _unescape(tok[1:-1])))
        elif kind == "num":
            out.append(("num", Decimal(tok) if "." in tok else int(tok)))
        elif kind == "ident":
            out.append(("ident", tok))
        else:
            out.append((kind, tok))
    out.append(("eof", None))
    return out


class _Parser:
    """Recursive descent over the FHIRPath grammar (precedence as in the specification)."""

    def __init__(self, text: str) -> None:
        self.toks = _tokenize(text)
        self.i = 0

    def peek(self, k: int = 0) -> tuple[str, Any]:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> tuple[str, Any]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def accept_op(self, *ops: str) -> str | None:
        kind, val = self.peek()
        if kind == "op" and val in ops:
            self.i += 1
            return val
        return None

    def accept_kw(self, *kws: str) -> str | None:
        kind, val = self.peek()
        if kind == "ident" and val in kws:
            self.i += 1
            return val
        return None

    def expect_op(self, op: str) -> None:
        if self.accept_op(op) is None:
            raise Unsupported(f"expected {op!r}, got {self.peek()[1]!r}")

    def parse(self) -> tuple:
        node = self.expr()
        if self.peek()[0] != "eof":
            raise Unsupported(f"unexpected {self.peek()[1]!r}")
        return node

    def expr(self) -> tuple:
        left = self.or_()
        while self.accept_kw("implies"):
            left = ("bin", "implies", left, self.or_())
        return left

    def or_(self) -> tuple:
        left = self.and_()
        while True:
            op = self.accept_kw("or", "xor")
            if op is None:
                return left
            left = ("bin", op, left, self.and_())

    def and_(self) -> tuple:
        left = self.membership()
        while self.accept_kw("and"):
            left = ("bin", "and", left, self.membership())
        return left

    def membership(self) -> tuple:
        left = self.equality()
        while True:
            op = self.accept_kw("in", "contains")
            if op is None:
                return left
            left = ("bin", op, left, self.equality())

    def equality(self) -> tuple:
        left = self.inequality()
        while True:
            op = self.accept_op("=", "!=", "~", "!~")
            if op is None:
                return left
            left = ("bin", op, left, self.inequality())

    def inequality(self) -> tuple:
        left = self.union()
        while True:
            op = self.accept_op("<", ">", "<=", ">=")
            if op is None:
                return left
            left = ("bin", op, left, self.union())

    def union(self) -> tuple:
        left = self.type_expr()
        while self.accept_op("|"):
            left = ("bin", "|", left, self.type_expr())
        return left

    def type_expr(self) -> tuple:
        left = self.additive()
        while True:
            op = self.accept_kw("is", "as")
            if op is None:
                return left
            left = (op, left, self.type_specifier())

    def type_specifier(self) -> str:
        kind, val = self.next()
        if kind != "ident":
            raise Unsupported("type name expected")
        name = val
        while self.peek() == ("op", ".") and self.peek(1)[0] == "ident":
            self.i += 1
            name += "." + self.next()[1]
        return normalize_type_name(name)

    def additive(self) -> tuple:
        left = self.multiplicative()
        while True:
            op = self.accept_op("+", "-", "&")
            if op is None:
                return left
            left = ("bin", op, left, self.multiplicative())

    def multiplicative(self) -> tuple:
        left = self.unary()
        while True:
            op = self.accept_op("*", "/") or self.accept_kw("div", "mod")
            if op is None:
                return left
            left = ("bin", op, left, self.unary())

    def unary(self) -> tuple:
        op = self.accept_op("+", "-")
        node = self.invocation()
        return ("neg", node) if op == "-" else node

    def invocation(self) -> tuple:
        node = self.term()
        while True:
            if self.accept_op("."):
                node = self.item(node)
            elif self.accept_op("["):
                idx = self.expr()
                self.expect_op("]")
                node = ("index", node, idx)
            else:
                return node

    def item(self, base: tuple | None) -> tuple:
        kind, val = self.next()
        if kind != "ident":
            raise Unsupported(f"identifier expected, got {val!r}")
        if self.accept_op("("):
            args: list = []
            if not self.accept_op(")"):
                args.append(self._arg(val))
                while self.accept_op(","):
                    args.append(self._arg(val))
                self.expect_op(")")
            return ("fn", base, val, tuple(args))
        return ("member", base, val)

    def _arg(self, fname: str) -> Any:
        if fname in ("is", "as", "ofType"):
            return ("type", self.type_specifier())
        return self.expr()

    def term(self) -> tuple:
        kind, val = self.peek()
        if kind == "op" and val == "(":
            self.i += 1
            node = self.expr()
            self.expect_op(")")
            return node
        if kind == "op" and val == "{}":
            self.i += 1
            return ("empty",)
        if kind == "str":
            self.i += 1
            return ("lit", val)
        if kind == "num":
            self.i += 1
            return ("lit", val)
        if kind == "ident" and val in ("true", "false") and self.peek(1) != ("op", "("):
            self.i += 1
            return ("lit", val == "true")
        if kind == "var":
            self.i += 1
            return ("this",) if val == "$this" else ("var", val)
        if kind == "date":
            raise Unsupported("date literals")
        if kind == "ident":
            return self.item(None)
        raise Unsupported(f"unexpected {val!r}")


def parse(text: str) -> tuple:
    """Parse a FHIRPath expression into a tuple AST; :class:`Unsupported` on syntax outside it."""
    return _Parser(text).parse()


# -- compilation ---------------------------------------------------------------------------------

def _truth(nodes: list) -> bool | None:
    """FHIRPath singleton evaluation of a collection as a boolean (None = empty)."""
    if not nodes:
        return None
    if len(nodes) == 1:
        v = nodes[0][1]
        return v if isinstance(v, bool) else True
    raise _RuntimeError("a collection of several items used as a boolean")


class _RuntimeError(Exception):
    pass


def _bool(value: bool | None) -> list:
    return [] if value is None else [(BOOL, value)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, str) != isinstance(b, str):
        return False
    try:
        return a == b
    except Exception:  # pragma: no cover - defensive
        return False


def _equal(left: list, right: list) -> bool | None:
    if not left or not right:
        return None
    if len(left) != len(right):
        return False
    return all(_same(a[1], b[1]) for a, b in zip(left, right))


def _ref_type(value: Any) -> str | None:
    """Target type of a Reference (or reference string) for ``resolve() is X``."""
    ref = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(ref, str) or not ref or ref.startswith("#"):
        return None
    path = ref.split("/_history/", 1)[0]
    parts = path.rsplit("/", 2)
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return parts[-2]
    return None


def _flatten_into(out: list, ctx: str | None, x: Any) -> None:
    if type(x) is list:
        for i in x:
            if i is not None:
                out.append((ctx, i))
    else:
        out.append((ctx, x))


def _identity(nodes: list) -> list:
    return nodes


def _path_fast(keys: tuple[str, ...], octx: str | None) -> Fn:
    """Several single-key member steps fused: no intermediate (ctx, value) pairs."""
    *inner, last = keys

    def run(nodes: list) -> list:
        cur = [v for _, v in nodes]
        for key in inner:
            nxt: list = []
            for v in cur:
                if type(v) is dict:
                    x = v.get(key)
                    if x is not None:
                        if type(x) is list:
                            nxt.extend(x)
                        else:
                            nxt.append(x)
            if not nxt:
                return nxt
            cur = nxt
        out: list = []
        for v in cur:
            if type(v) is dict:
                x = v.get(last)
                if x is not None:
                    if type(x) is list:
                        out.extend([(octx, i) for i in x if i is not None])
                    else:
                        out.append((octx, x))
        return out
    run.fast_keys = keys  # type: ignore[attr-defined]
    run.fast_ctx = octx  # type: ignore[attr-defined]
    return run


def _member_fast(key: str, octx: str | None) -> Fn:
    """One single-key member step (consecutive ones are fused by :func:`_chain`)."""
    return _path_fast((key,), octx)


def _dynamic_child(v: dict, name: str, out: list) -> None:
    x = v.get(name)
    if x is not None:
        _flatten_into(out, None, x)
        return
    n = len(name)
    for k, x in v.items():
        if len(k) > n and k.startswith(name) and k[n].isupper() and x is not None:
            t = k[n:]
            lowered = t[0].lower() + t[1:]
            _flatten_into(out, lowered if lowered in PRIMITIVE_TYPES else t, x)


def _member_table(table: dict, name: str) -> Fn:
    def run(nodes: list) -> list:
        out: list = []
        for ctx, v in nodes:
            if type(v) is not dict:
                continue
            entries = table.get(ctx)
            if entries is None:
                _dynamic_child(v, name, out)
                continue
            for key, octx in entries:
                x = v.get(key)
                if x is not None:
                    _flatten_into(out, octx, x)
        return out
    return run


def _chain(fns: list[Fn]) -> Fn:
    fused: list[Fn] = []
    for f in fns:
        if f is _identity:
            continue
        prev = fused[-1] if fused else None
        if prev is not None and hasattr(prev, "fast_keys") and hasattr(f, "fast_keys"):
            fused[-1] = _path_fast(prev.fast_keys + f.fast_keys, f.fast_ctx)
        else:
            fused.append(f)
    fns = fused
    if not fns:
        return _identity
    if len(fns) == 1:
        return fns[0]
    if len(fns) == 2:
        a, b = fns

        def run2(nodes: list) -> list:
            nodes = a(nodes)
            return b(nodes) if nodes else nodes
        return run2

    def run(nodes: list) -> list:
        for f in fns:
            nodes = f(nodes)
            if not nodes:
                return nodes
        return nodes
    return run


class Compiler:
    """Compiles FHIRPath (the search slice) into closures over ``(ctx, value)`` nodes."""

    def __init__(self, model: TypeModel) -> None:
        self.model = model

    def compile(self, expression: str, ctxs: Iterable[str | None]) -> tuple[Fn, frozenset]:
        """Compile ``expression`` for input nodes of the given ctxs -> (function, output ctxs)."""
        return self._c(parse(expression), frozenset(ctxs))

    def root_keys(self, expression: str, ctxs: Iterable[str | None]) -> frozenset[str] | None:
        """The JSON keys of the input node an expression can start from, when it yields nothing without them.

        ``Patient.name.given`` -> ``{"name"}``; ``Observation.value as Quantity`` -> ``{"valueQuantity"}``.
        ``None`` when unknown or when the expression yields something anyway (``exists()``, ``=``, ...).
        Lets the indexer skip, with one set test, the many parameters a resource has no data for.
        """
        try:
            return self._keys(parse(expression), frozenset(ctxs))
        except Unsupported:
            return None

    def _keys(self, node: tuple, ctxs: frozenset) -> frozenset[str] | None:
        kind = node[0]
        if kind == "member":
            base = node[1]
            if base is None:
                name = node[2]
                if name[:1].isupper():
                    return None  # the focus itself
                keys: set[str] = set()
                for ctx in ctxs:
                    entries = self.model.child(ctx, name)
                    if entries is None:
                        return None
                    keys.update(k for k, _ in entries)
                return frozenset(keys)
            if base[0] == "member" and base[1] is None and base[2][:1].isupper():
                return self._keys(("member", None, node[2]), ctxs)  # Type.name
            return self._keys(base, ctxs)
        if kind == "as":
            return self._keys(node[1], ctxs)
        if kind == "fn":
            _, base, name, args = node
            if name in ("as", "ofType", "where", "first", "last", "tail", "select"):
                return None if base is None else self._keys(base, ctxs)
            if name == "extension":
                if base is None or (base[0] == "member" and base[1] is None and base[2][:1].isupper()):
                    return frozenset({"extension"})
                return self._keys(base, ctxs)
            return None
        if kind == "index":
            return self._keys(node[1], ctxs)
        if kind == "bin" and node[1] == "|":
            left, right = self._keys(node[2], ctxs), self._keys(node[3], ctxs)
            return None if left is None or right is None else left | right
        return None

    # each _c_* returns (fn, out_ctxs)
    def _c(self, node: tuple, ctxs: frozenset) -> tuple[Fn, frozenset]:
        kind = node[0]
        method = getattr(self, f"_c_{kind}", None)
        if method is None:
            raise Unsupported(f"{kind} expressions")
        return method(node, ctxs)

    # .. paths ..

    def _c_member(self, node: tuple, ctxs: frozenset) -> tuple[Fn, frozenset]:
        _, base, name = node
        if base is None:
            return self._first_identifier(name, ctxs)
        steps: list[tuple[str, ...]] = []
        cur = node
        while cur[0] == "member" and cur[1] is not None:  # collect a run of plain member steps
            steps.append(cur[2])
            cur = cur[1]
        steps.reverse()
        fns: list[Fn] = []
        if cur[0] == "member":  # a leading identifier
            f, ctxs = self._first_identifier(cur[2], ctxs)
            fns.append(f)
        else:
            f, ctxs = self._c(cur, ctxs)
            fns.append(f)
        for name in steps:
            f, ctxs = self._step(name, ctxs)
            fns.append(f)
        return _chain(fns), ctxs

    def _first_identifier(self, name: str, ctxs: frozenset) -> tuple[Fn, frozenset]:
        if name[:1].isupper():  # a type name: filters the focus by type
            if name not in ("Resource", "DomainResource") and name not in self.model.resource_types:
                raise Unsupported(f"unknown type {name}")
            if ctxs and all(self._static_is(c, name) is True for c in ctxs):
                return _identity, ctxs

            def type_filter(nodes: list, t: str = name) -> list:
                return [n for n in nodes if is_type(n[0], n[1], t)]
            return type_filter, frozenset(c for c in ctxs if self._static_is(c, name) is not False)
        return self._step(name, ctxs)

    def _static_is(self, ctx: str | None, t: str) -> bool | None:
        """Whether nodes of ``ctx`` are of type ``t``, when known at compile time (None: depends)."""
        if ctx is None or ctx == REF:
            return None
        if ctx in self.model.resource_types:
            if t == "Resource" or t == ctx:
                return True
            if t == "DomainResource":
                return ctx not in _NON_DOMAIN
            return False
        return is_type(ctx, None, t)

    def _step(self, name: str, ctxs: frozenset, restrict: str | None = None) -> tuple[Fn, frozenset]:
        """One member step; with ``restrict``, only the choice keys that may be of that type."""
        if REF in ctxs:
            raise Unsupported("navigation after resolve()")
        table: dict[str | None, list | None] = {}
        out: set = set()
        for ctx in ctxs:
            entries = self.model.child(ctx, name)
            if entries is not None and restrict is not None:
                entries = [(k, o) for k, o in entries if self._static_is(o, restrict) is not False]
            table[ctx] = entries
            if entries is None:
                out.add(None)
            else:
                out.update(o for _, o in entries)
                if any(o is None for _, o in entries):
                    out.add(None)
        known = [e for e in table.values() if e is not None]
        if len(table) == 1 and known and len(known[0]) == 1:
            key, octx = known[0][0]
            return _member_fast(key, octx), frozenset(out)
        return _member_table({k: v for k, v in table.items() if v is not None}, name), frozenset(out)

    def _c_this(self, node: tuple, ctxs: frozenset) -> tuple[Fn, frozenset]:
        return _identity, ctxs

    def _c_lit(self, node: tuple, ctxs: frozenset) -> tuple[Fn, frozenset]:
        value = node[1]
        if isinstance(value, bool):
            t = "boolean"
        elif isinstance(value, int):
            t = "integer"
        elif isinstance(value, Decimal):
            t = "decimal"
        else:
            t = "string"
        result = [(t, value)]
        return (lambda nodes: result), frozenset({t})

    def _c_empty(self, node: tuple, ctxs: frozenset) -> tuple[Fn, frozenset]:
        return (lambda nodes: []), frozenset()

    def _c_index(self, node: tuple, ctxs: frozenset) -> tuple[Fn, frozenset]:
        _, base, idx = node
        if idx[0] != "lit" or not isinstance(idx[1], int) or isinstance(idx[1], bool):
            raise Unsupported("non-literal index")
        f, out = self._c(base, ctxs)
        i = idx[1]
        return (lambda nodes: f(nodes)[i:i + 1]), out

    # .. type operators ..

    def _type_filter(self, f: Fn, out: frozenset, t: str) -> tuple[Fn, frozenset]:
        if out == {REF}:
            def ref_filter(nodes: list) -> list:
                return [n for n in f(nodes) if n[1] == t]
            return ref_filter, out

        def run(nodes: list) -> list:
            return [n for n in f(nodes) if is_type(n[0], n[1], t)]
        return run, frozenset(c for c in out if self._static_is(c, t) is not False)

    def _type_test(self, f: Fn, t: str) -> Fn:
        def run(nodes: list) -> list:
            items = f(nodes)
            if not items:
                return []
            if len(items) > 1:
                raise _RuntimeError("`is` on a collection")
            return [(BOOL, is_type(items[0][0], items[0][1], t))]
        return run

    def _c_as(self, node: tuple, ctxs: frozenset) -> tuple[Fn, frozenset]:
        return self._cast(node[1], node[2], ctxs)

    def _cast(self, base: tuple | None, t: str, ctxs: frozenset) -> tuple[Fn, frozenset]:
        """``base as t``; on a member step (a choice element) only the matching JSON keys are read."""
        if base is not None and base[0] == "member" and not base[2][:1].isupper():
            if base[1] is None:
                bf, bctxs = _identity, ctxs
            else:
                bf, bctxs = self._c(base[1], ctxs)
            if REF not in bctxs:
                step, out = self._step(base[2], bctxs, restrict=t)
                f = step if base[1] is None else _chain([bf, step])
                if all(self._static_is(c, t) is True for c in out):
                    return f, out
                return self._type_filter(f, out, t)
        if base is None:
            f, out = _identity, ctxs
        else:
            f, out = self._c(base, ctxs)
        return self._type_filter(f, out, t)

    def _c_is(self, node: tuple, ctxs: frozenset) -> tuple[Fn, frozenset]:
        f, _ = self._c(node[1], ctxs)
        return self._type_test(f, node[2]), frozenset({BOOL})

    # .. functions ..

    def _c_fn(self, node: tuple, ctxs: frozenset) -> tuple[Fn, frozenset]:
        _, base, name, args = node
        if name in ("as", "ofType"):
            return self._cast(base, self._type_arg(args), ctxs)
        if name == "where" and len(args) == 1 and self._is_resolve_is(args[0]):
            return self._where_reference_to(base, args[0][2], ctxs)
        if name == "where" and len(args) == 1 and self._is_field_literal(args[0]):
            try:
                return self._where_field_literal(base, args[0], ctxs)
            except Unsupported:
                pass
        if base is None:
            f, out = _identity, ctxs
        else:
            f, out = self._c(base, ctxs)
        handler = getattr(self, f"_fn_{name}", None)
        if handler is None:
            raise Unsupported(f"function {name}()")
        return handler(f, out, args)

    @staticmethod
    def _is_resolve_is(arg: tuple) -> bool:
        """``resolve() is X``"""
        return arg[0] == "is" and arg[1] == ("fn", None, "resolve", ())

    @staticmethod
    def _is_field_literal(arg: tuple) -> bool:
        """``field = 'literal'`` / ``field != 'literal'`` (a field of the focus against a literal)"""
        return (arg[0] == "bin" and arg[1] in ("=", "!=") and arg[2][0] == "member" and arg[2][1] is None
                and not arg[2][2][:1].isupper() and arg[3][0] == "lit")

    def _where_field_literal(self, base: tuple | None, arg: tuple, ctxs: frozenset) -> tuple[Fn, frozenset]:
        """``x.where(system = 'email')`` as a direct field test (same result as the generic where)."""
        if base is None:
            f, out = _identity, ctxs
        else:
            f, out = self._c(base, ctxs)
        _, op, (_, _, field), (_, literal) = arg
        for ctx in out:
            entries = self.model.child(ctx, field)
            if entries is None or len(entries) != 1 or entries[0][0] != field:
                raise Unsupported("where() on a field the model does not type simply")
        negate = op == "!="

        def run(nodes: list) -> list:
            res = []
            for n in f(nodes):
                v = n[1]
                if type(v) is dict:
                    x = v.get(field)
                    if x is not None and type(x) is not list and _same(x, literal) != negate:
                        res.append(n)
            return res
        return run, out

    def _where_reference_to(self, base: tuple | None, t: str, ctxs: frozenset) -> tuple[Fn, frozenset]:
        """``x.where(resolve() is T)``: the references whose target type is T (no resolution)."""
        if base is None:
            f, out = _identity, ctxs
        else:
            f, out = self._c(base, ctxs)

        def run(nodes: list) -> list:
            return [n for n in f(nodes) if _ref_type(n[1]) == t]
        return run, out

    def _fn_is(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        return self._type_test(f, self._type_arg(args)), frozenset({BOOL})

    @staticmethod
    def _type_arg(args: tuple) -> str:
        if len(args) != 1:
            raise Unsupported("type function arity")
        arg = args[0]
        if arg[0] == "type":
            return arg[1]
        raise Unsupported("type argument")

    def _fn_resolve(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        if args:
            raise Unsupported("resolve arity")

        def run(nodes: list) -> list:
            res = []
            for _, v in f(nodes):
                t = _ref_type(v)
                if t is not None:
                    res.append((REF, t))
            return res
        return run, frozenset({REF})

    def _fn_where(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        if len(args) != 1:
            raise Unsupported("where arity")
        crit, _ = self._c(args[0], out)

        def run(nodes: list) -> list:
            return [n for n in f(nodes) if _truth(crit([n])) is True]
        return run, out

    def _fn_select(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        if len(args) != 1:
            raise Unsupported("select arity")
        proj, pout = self._c(args[0], out)

        def run(nodes: list) -> list:
            res: list = []
            for n in f(nodes):
                res.extend(proj([n]))
            return res
        return run, pout

    def _fn_exists(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        if args:
            g, _ = self._fn_where(f, out, args)
            return (lambda nodes: [(BOOL, bool(g(nodes)))]), frozenset({BOOL})
        return (lambda nodes: [(BOOL, bool(f(nodes)))]), frozenset({BOOL})

    def _fn_empty(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        if args:
            raise Unsupported("empty arity")
        return (lambda nodes: [(BOOL, not f(nodes))]), frozenset({BOOL})

    def _fn_not(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        if args:
            raise Unsupported("not arity")

        def run(nodes: list) -> list:
            v = _truth(f(nodes))
            return _bool(None if v is None else not v)
        return run, frozenset({BOOL})

    def _fn_first(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        if args:
            raise Unsupported("first arity")
        return (lambda nodes: f(nodes)[:1]), out

    def _fn_last(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        if args:
            raise Unsupported("last arity")
        return (lambda nodes: f(nodes)[-1:]), out

    def _fn_tail(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        if args:
            raise Unsupported("tail arity")
        return (lambda nodes: f(nodes)[1:]), out

    def _fn_count(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        if args:
            raise Unsupported("count arity")
        return (lambda nodes: [("integer", len(f(nodes)))]), frozenset({"integer"})

    def _fn_extension(self, f: Fn, out: frozenset, args: tuple) -> tuple[Fn, frozenset]:
        if len(args) != 1 or args[0][0] != "lit" or not isinstance(args[0][1], str):
            raise Unsupported("extension() needs a literal url")
        url = args[0][1]

        def run(nodes: list) -> list:
            res = []
            for _, v in f(nodes):
                if type(v) is dict:
                    exts = v.get("extension")
                    if type(exts) is list:
                        for e in exts:
                            if type(e) is dict and e.get("url") == url:
                                res.append(("Extension", e))
            return res
        return run, frozenset({"Extension"})

    # .. operators ..

    def _c_bin(self, node: tuple, ctxs: frozenset) -> tuple[Fn, frozenset]:
        _, op, left, right = node
        lf, lout = self._c(left, ctxs)
        rf, rout = self._c(right, ctxs)
        if op == "|":
            # Union without FHIRPath's duplicate removal: the indexer drops duplicate entries
            # anyway, and decimals that compare equal (1.0, 1.00) still index differently.
            def union(nodes: list) -> list:
                a = lf(nodes)
                b = rf(nodes)
                if not a:
                    return b
                if not b:
                    return a
                return a + b
            return union, lout | rout
        if op in ("=", "!="):
            negate = op == "!="

            def eq(nodes: list) -> list:
                r = _equal(lf(nodes), rf(nodes))
                return _bool(None if r is None else (r != negate))
            return eq, frozenset({BOOL})
        if op == "and":
            def and_(nodes: list) -> list:
                a = _truth(lf(nodes))
                if a is False:
                    return _bool(False)
                b = _truth(rf(nodes))
                if b is False:
                    return _bool(False)
                return _bool(True if a is True and b is True else None)
            return and_, frozenset({BOOL})
        if op == "or":
            def or_(nodes: list) -> list:
                a = _truth(lf(nodes))
                if a is True:
                    return _bool(True)
                b = _truth(rf(nodes))
                if b is True:
                    return _bool(True)
                return _bool(False if a is False and b is False else None)
            return or_, frozenset({BOOL})
        raise Unsupported(f"operator {op}")
