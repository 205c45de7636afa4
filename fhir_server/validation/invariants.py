"""FHIRPath invariants (``ElementDefinition.constraint``) evaluated with fhirpathpy.

Every constraint of severity ``error`` is compiled once at start-up. Those the engine
cannot run are left out and listed, with the reason, in :attr:`InvariantEngine.skipped`:
a parse failure, or a function fhirpathpy lacks (``resolve()``, ``htmlChecks()``...).
Constraints that raise inside fhirpathpy at run time are listed in
:attr:`InvariantEngine.failures` when it first happens (they count as satisfied there).
``ele-1``, ``ext-1`` and ``dom-3`` are not evaluated here: the structural walk checks
them (dom-3 needs ``as()`` on a collection, which fhirpathpy refuses, and
``descendants()`` over the whole resource, ~20 ms).

fhirpathpy is an interpreter and costs 100-200 µs per evaluation, more than the
whole structural walk of a resource. Most constraints guard an optional element
(``abatement.empty() or ...``, ``contained.where(...).empty()``), so each one also
gets a *pre-check*: a tiny evaluator of the boolean skeleton of the expression
(``or``/``and``/``implies``, paths ending in ``empty()``/``exists()``/``hasValue()``/
``not()``/``startsWith('...')``/``contains('...')``/``all(...)``, ``=`` and ``!=`` on
strings and booleans, ``<``/``<=`` on strings of the same length and time zone). It
answers only when the answer is certainly *true* (or certainly empty, which is no
violation either) from the JSON at hand; anything else goes to fhirpathpy, the only
judge of a violation. The tests check the pre-check against the engine.
"""
from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import FP_DateTime, FP_Time, ResourceNode
from fhirpathpy.models import models
from fhirpathpy.parser import parse

# Checked by the structural walk (structure.py), not by the engine.
STRUCTURAL_KEYS = frozenset({"ele-1", "ext-1", "dom-3"})


def _has_value(inputs: list) -> bool:
    """FHIRPath ``hasValue()``: a single primitive that carries a value (fhirpathpy lacks it)."""
    return len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], (dict, list))


USER_FUNCTIONS = {"hasValue": {"fn": _has_value}}
ENGINE_OPTIONS = {"userInvocationTable": USER_FUNCTIONS, "traceFn": lambda *args: None}
KNOWN_FUNCTIONS = frozenset(invocation_registry) | frozenset(USER_FUNCTIONS)


@dataclass(frozen=True)
class Invariant:
    key: str
    human: str
    expression: str
    run: Callable[..., list]
    precheck: Callable[[Any, Any, tuple], Any] | None


# --- the pre-check: a three-valued reading of the expression's boolean skeleton ---------
#
# A compiled check is a function (data, members, context) -> True / False / EMPTY / a str /
# UNKNOWN, where ``members`` maps element names to their JSON keys in the focus (None
# inside ``all(...)``, where the item's raw keys are used) and ``context`` is the pair
# (%resource, %rootResource). States of a path: EMPTY, a str/bool/dict, a tuple of 2+
# items, NONEMPTY (items whose values are not needed) or UNKNOWN.

EMPTY = object()  # the empty collection
UNKNOWN = object()  # anything the pre-check cannot decide
NONEMPTY = object()  # one or more items whose values are not needed

Check = Callable[[Any, Any, tuple], Any]

_CHOICE_SUFFIXES = frozenset(_type[0].upper() + _type[1:] for types in models["r4"]["choiceTypePaths"].values()
                             for _type in types)
_NULLABLE_INPUT = {name: bool(entry.get("nullable_input")) for name, entry in invocation_registry.items()}
_FILTERS = frozenset({"where", "select", "ofType", "first", "last", "tail", "skip", "take", "distinct",
                      "as", "trace", "single", "children", "descendants", "repeat"})
_CONSTANTS = {"ucum": "http://unitsofmeasure.org"}
_NO_LITERAL = object()


def _unknown(d: Any, m: Any, c: tuple) -> Any:
    return UNKNOWN


def _functions(node: dict) -> set[str]:
    names = set()
    if node.get("type") == "Functn":
        names.add(node["children"][0]["text"])
    for child in node.get("children") or []:
        names |= _functions(child)
    return names


def _identifier(node: dict) -> str:
    return node["text"].strip("`")


def _compile_check(node: dict) -> Check | None:
    """The check of an expression node, or None when it is not understood."""
    kind = node.get("type")
    children = node.get("children") or []
    if kind in ("TermExpression", "ParenthesizedTerm") and len(children) == 1:
        child = children[0]
        if child.get("type") in ("InvocationTerm", "ExternalConstantTerm"):
            return _compile_chain(node)
        if child.get("type") == "LiteralTerm":
            literal = _literal(child)
            return None if literal is _NO_LITERAL else (lambda d, m, c: literal)
        return _compile_check(child)
    if kind == "InvocationExpression":
        return _compile_chain(node)
    if kind == "OrExpression":
        membership = _compile_membership(node)
        if membership is not None:
            return membership
    if kind in ("OrExpression", "AndExpression", "ImpliesExpression"):
        left = _compile_check(children[0]) or _unknown
        right = _compile_check(children[1]) or _unknown
        return _LOGIC.get(node["terminalNodeText"][0], lambda a, b: None)(left, right)
    if kind == "MembershipExpression" and node["terminalNodeText"][0] == "in":
        element = _compile_check(children[0])
        if element is None:
            return None

        def check_in(d, m, c):  # "If the left operand is empty, the result is empty"
            return EMPTY if element(d, m, c) is EMPTY else UNKNOWN
        return check_in
    if kind == "InequalityExpression" and node["terminalNodeText"][0] in _ORDER:
        left = _compile_check(children[0])
        right = _compile_check(children[1])
        if left is None or right is None:
            return None
        order = _ORDER[node["terminalNodeText"][0]]

        def check_order(d, m, c):
            a = left(d, m, c)
            if a is UNKNOWN:
                return UNKNOWN
            b = right(d, m, c)
            if a is EMPTY or b is EMPTY:
                return EMPTY if b is not UNKNOWN else UNKNOWN
            if type(a) is str and type(b) is str and _shape(a) == _shape(b):
                return order(a, b)  # same length and zone: string order is time order too
            if type(a) is int and type(b) is int:
                return order(a, b)
            return UNKNOWN
        return check_order
    if kind == "EqualityExpression" and node["terminalNodeText"][0] in ("=", "!="):
        left = _compile_check(children[0])
        right = _compile_check(children[1])
        if left is None or right is None:
            return None
        negate = node["terminalNodeText"][0] == "!="

        def check_equal(d, m, c):
            a = left(d, m, c)
            if a is UNKNOWN:
                return UNKNOWN
            b = right(d, m, c)
            if a is EMPTY or b is EMPTY:
                return EMPTY if b is not UNKNOWN else UNKNOWN
            if type(a) in (str, bool, int) and type(a) is type(b):
                return (a == b) is not negate
            return UNKNOWN
        return check_equal
    return None


def _equalities(node: dict) -> list[tuple[dict, str]] | None:
    """The (left operand, string literal) pairs of an or-chain of ``left = 'literal'``, or None."""
    kind, children = node.get("type"), node.get("children") or []
    if kind == "OrExpression" and node["terminalNodeText"][0] == "or" and len(children) == 2:
        left, right = _equalities(children[0]), _equalities(children[1])
        return left + right if left is not None and right is not None else None
    if kind == "EqualityExpression" and node["terminalNodeText"][0] == "=" and len(children) == 2:
        literal = _literal(children[1])
        return [(children[0], literal)] if type(literal) is str else None
    return None


def _compile_membership(node: dict) -> Check | None:
    """``x = 'a' or x = 'b' or ...`` (the same ``x``) as one look-up in a set.

    It answers what the chain of ``or`` and ``=`` would, x being evaluated once instead of once
    per literal: unknown or empty when x is; for a string, whether it is one of the literals; for
    anything else (a boolean, a number, several items), unknown.
    """
    operands = _equalities(node)
    if operands is None or len(operands) < 2:
        return None
    if len({json.dumps(left, sort_keys=True) for left, _ in operands}) != 1:
        return None
    element = _compile_check(operands[0][0])
    if element is None:
        return None
    literals = frozenset(literal for _, literal in operands)

    def check_membership(d, m, c):
        a = element(d, m, c)
        if a is UNKNOWN or a is EMPTY:
            return a
        return (a in literals) if type(a) is str else UNKNOWN
    return check_membership


def _logic_or(left: Check, right: Check) -> Check:
    def check_or(d, m, c):
        a = left(d, m, c)
        if a is True:
            return True
        b = right(d, m, c)
        if b is True:
            return True
        if _false_or_empty(a) and _false_or_empty(b):
            return False if (a is False and b is False) else EMPTY
        return UNKNOWN
    return check_or


def _logic_and(left: Check, right: Check) -> Check:
    def check_and(d, m, c):
        a = left(d, m, c)
        if a is False:
            return False
        b = right(d, m, c)
        if b is False:
            return False
        if _true_or_empty(a) and _true_or_empty(b):
            return True if (a is True and b is True) else EMPTY
        return UNKNOWN
    return check_and


def _logic_implies(left: Check, right: Check) -> Check:
    def check_implies(d, m, c):
        a = left(d, m, c)
        if a is False:
            return True
        b = right(d, m, c)
        if b is True:
            return True
        if a is True and b is False:
            return False
        if _true_or_empty(a) and _false_or_empty(b):
            return EMPTY
        return UNKNOWN
    return check_implies


def _logic_xor(left: Check, right: Check) -> Check:
    def check_xor(d, m, c):
        a, b = left(d, m, c), right(d, m, c)
        if type(a) is bool and type(b) is bool:
            return a is not b
        if (a is EMPTY or type(a) is bool) and (b is EMPTY or type(b) is bool):
            return EMPTY
        return UNKNOWN
    return check_xor


_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _shape(text: str) -> tuple[int, str]:
    """Length and zone of a date/time string: equal shapes compare in time order as strings."""
    return len(text), ("Z" if text.endswith("Z") else text[-6:] if "T" in text else "")


_LOGIC = {"or": _logic_or, "and": _logic_and, "implies": _logic_implies, "xor": _logic_xor}


def _false_or_empty(value: Any) -> bool:
    return value is False or value is EMPTY


def _true_or_empty(value: Any) -> bool:
    return value is True or value is EMPTY


def _literal(node: dict) -> Any:
    """The value of a string or boolean literal (``_NO_LITERAL`` for anything else)."""
    while node.get("type") in ("TermExpression", "LiteralTerm") and len(node.get("children") or []) == 1:
        node = node["children"][0]
    text = node.get("text", "")
    if node.get("type") == "StringLiteral" and len(text) >= 2 and "\\" not in text:
        return text[1:-1]
    if node.get("type") == "BooleanLiteral" and text in ("true", "false"):
        return text == "true"
    if node.get("type") == "NumberLiteral" and text.isdigit():
        return int(text)
    return _NO_LITERAL


def _flatten(node: dict) -> list[dict]:
    steps = []
    while node.get("type") == "InvocationExpression":
        steps.append(node["children"][1])
        node = node["children"][0]
    steps.append(node)
    return steps[::-1]


def _compile_chain(node: dict) -> Check | None:
    steps = _flatten(node)
    start = steps[0]
    if start.get("type") != "TermExpression":
        return None
    term = start["children"][0]
    first = term["children"][0] if term.get("children") else {}
    if term.get("type") == "InvocationTerm" and first.get("type") == "MemberInvocation":
        root_member, root_variable = _identifier(first["children"][0]), None
    elif term.get("type") == "ExternalConstantTerm":
        root_member, root_variable = None, _identifier(first["children"][0])
        if root_variable not in ("resource", "rootResource") and root_variable not in _CONSTANTS:
            return None
    else:
        return None
    ops: list[tuple[str, str, Any]] = []
    for step in steps[1:]:
        if step.get("type") == "MemberInvocation":
            ops.append(("member", _identifier(step["children"][0]), None))
        elif step.get("type") == "FunctionInvocation":
            functn = step["children"][0]
            name = _identifier(functn["children"][0])
            params = functn["children"][1]["children"] if len(functn["children"]) > 1 else []
            argument = _literal(params[0]) if len(params) == 1 else _NO_LITERAL
            criteria = (_compile_check(params[0]) if (name in ("all", "where", "exists") and len(params) == 1)
                        else None)
            ops.append(("call", name, (len(params), argument, criteria)))
        else:
            return None

    def check_chain(data, members, context):
        if root_member is not None:
            value = _member_of_root(data, members, root_member)
        elif root_variable == "resource":
            value = context[0]
        elif root_variable == "rootResource":
            value = context[1]
        else:
            value = _CONSTANTS[root_variable]
        for op, name, extra in ops:
            if value is UNKNOWN:
                return UNKNOWN
            if op == "member":
                value = _member_of(value, name)
                continue
            count, argument, criteria = extra
            if name == "empty" and count == 0:
                value = True if value is EMPTY else False
            elif name == "exists":
                if value is EMPTY:
                    value = False
                elif count == 0:
                    value = True
                elif criteria is not None:
                    value = _where(value, criteria, context)
                    if value is UNKNOWN:
                        return UNKNOWN
                    value = value is not EMPTY
                else:
                    return UNKNOWN
            elif name == "distinct" and count == 0 and value is not EMPTY:
                if type(value) is tuple:
                    if type(value[0]) not in (str, bool, int) or any(type(v) is not type(value[0]) for v in value):
                        return UNKNOWN
                    unique = tuple(dict.fromkeys(value))
                    value = unique[0] if len(unique) == 1 else unique
                elif type(value) not in (str, bool, int):
                    return UNKNOWN
            elif name == "where" and criteria is not None:
                value = _where(value, criteria, context)
            elif name == "count" and count == 0:
                if value is EMPTY:
                    value = 0
                elif type(value) is tuple:
                    value = len(value)
                elif type(value) in (str, bool, dict):
                    value = 1
                else:
                    return UNKNOWN
            elif name == "matches" and type(argument) is str:
                if type(value) is str:
                    if _regex(argument).fullmatch(value) is None:
                        return UNKNOWN  # only a match is trusted (engines differ on partial matches)
                    value = True
                elif value is not EMPTY:
                    return UNKNOWN
            elif name == "hasValue" and count == 0:
                if value is EMPTY:
                    value = False
                elif type(value) in (str, bool):
                    value = True
                else:
                    return UNKNOWN
            elif name == "not" and count == 0:
                if type(value) is bool:
                    value = not value
                elif value is not EMPTY:
                    return UNKNOWN
            elif name in ("startsWith", "contains") and type(argument) is str:
                if type(value) is str:
                    value = value.startswith(argument) if name == "startsWith" else argument in value
                elif value is not EMPTY:
                    return UNKNOWN
            elif name == "all" and criteria is not None:
                value = _all(value, criteria, context)
            elif value is EMPTY and (name in _FILTERS or _NULLABLE_INPUT.get(name)):
                continue  # these functions give an empty result for an empty input
            else:
                return UNKNOWN
        if value is EMPTY or type(value) in (bool, str, int):
            return value
        return UNKNOWN
    return check_chain


def _where(value: Any, criteria: Check, context: tuple) -> Any:
    """``where(criteria)``: the items for which the criteria is certainly true (false/empty ones dropped)."""
    if value is EMPTY:
        return EMPTY
    items = value if type(value) is tuple else (value,) if type(value) is dict else None
    if items is None:
        return UNKNOWN
    kept = []
    for item in items:
        if type(item) is not dict:
            return UNKNOWN
        answer = criteria(item, None, context)
        if answer is True:
            kept.append(item)
        elif answer is not False and answer is not EMPTY:
            return UNKNOWN
    if not kept:
        return EMPTY
    return kept[0] if len(kept) == 1 else tuple(kept)


_REGEXES: dict[str, Any] = {}


def _regex(pattern: str) -> Any:
    found = _REGEXES.get(pattern)
    if found is None:
        try:
            found = re.compile(pattern)
        except re.error:
            found = re.compile(r"(?!)")  # never matches: the engine decides
        _REGEXES[pattern] = found
    return found


def _all(value: Any, criteria: Check, context: tuple) -> Any:
    """``all(criteria)``: true for an empty input; only an all-true answer is trusted."""
    if value is EMPTY:
        return True
    items = value if type(value) is tuple else (value,) if type(value) is dict else None
    if items is None:
        return UNKNOWN
    for item in items:
        if type(item) is not dict or criteria(item, None, context) is not True:
            return UNKNOWN
    return True


def _single(value: Any) -> Any:
    """The pre-check state of a JSON value."""
    if isinstance(value, list):
        if not value:
            return EMPTY
        if len(value) > 1:
            return tuple(value)
        value = value[0]
    if value is None:
        return UNKNOWN
    if type(value) in (str, bool, dict):
        return value
    return NONEMPTY


def _member_of_root(data: Any, members: dict | None, name: str) -> Any:
    """``name`` at the root of the focus, through the node's JSON keys (choices, ``_x``)."""
    if members is None:
        return _member_of(data, name)
    keys = members.get(name)
    if keys is None or not isinstance(data, dict):
        return UNKNOWN
    value_keys, companion_keys = keys
    if len(value_keys) == 1:  # the usual element (not a choice): no list to build
        key = value_keys[0]
        if key in data:
            return _single(data[key])
        for key in companion_keys:
            if key in data:
                return NONEMPTY
        return EMPTY
    found = [data[k] for k in value_keys if k in data]
    if not found:
        return NONEMPTY if any(k in data for k in companion_keys) else EMPTY
    if len(found) > 1:
        return UNKNOWN
    return _single(found[0])


def _member_of(value: Any, name: str) -> Any:
    if value is EMPTY:
        return EMPTY
    if type(value) is tuple:  # a collection: the member of every item, flattened
        found: list = []
        for item in value:
            child = _member_of(item, name)
            if child is UNKNOWN or child is NONEMPTY:
                return UNKNOWN
            if child is not EMPTY:
                found.extend(child if type(child) is tuple else (child,))
        return EMPTY if not found else found[0] if len(found) == 1 else tuple(found)
    if type(value) is not dict:
        return UNKNOWN
    if name in value:
        return _single(value[name])
    variants = []
    for key in value:
        if key.startswith("_" + name):
            return UNKNOWN  # an extension-only primitive
        if key.startswith(name):
            if key[len(name):] not in _CHOICE_SUFFIXES:
                return UNKNOWN
            variants.append(key)
    if len(variants) == 1:  # a choice element (value -> valueAddress)
        return _single(value[variants[0]])
    return EMPTY if not variants else UNKNOWN


# --- invariants that hold when elements are absent -----------------------------------------

class _EmptyFocus(dict):
    """An empty focus that records which keys the pre-check looks for; any other use spoils it."""

    def __init__(self) -> None:
        super().__init__()
        self.looked_for: set = set()
        self.spoiled = False

    def __contains__(self, key: object) -> bool:
        self.looked_for.add(key)
        return False

    def _spoil(self, *args: Any, **kwargs: Any) -> Any:
        self.spoiled = True
        raise LookupError("the pre-check reads more than key presence")

    __getitem__ = get = keys = items = values = __iter__ = __len__ = _spoil


class _NoContext(tuple):
    """``(%resource, %rootResource)`` that must not be read."""

    def __getitem__(self, index: Any) -> Any:
        raise LookupError("the pre-check reads %resource or %rootResource")


def absent_keys(invariant: Invariant, members: dict) -> frozenset | None:
    """JSON keys whose joint absence from a focus makes ``invariant`` hold, or None.

    The pre-check is run once on an empty focus (with the node's ``members``). When it
    answers "holds" (true, or empty) having only asked whether some keys are present (no
    value read, no ``%resource``), then on any focus that has none of those keys it asks the
    same questions, gets the same answers and answers the same: the walk can skip the
    evaluation (``dom-2``: ``contained.contained.empty()`` on a resource without ``contained``).
    """
    if invariant.precheck is None or not members:
        return None
    focus = _EmptyFocus()
    try:
        answer = invariant.precheck(focus, members, _NoContext((None, None)))
    except Exception:
        return None
    if focus.spoiled or not (answer is True or answer is EMPTY):
        return None
    return frozenset(focus.looked_for)


# --- the engine ---------------------------------------------------------------------------

class InvariantEngine:
    """Compiles constraints once; evaluates them on resources and element instances."""

    def __init__(self) -> None:
        self.model = models["r4"]
        self.skipped: dict[str, str] = {}
        self.failures: dict[str, str] = {}
        self._compiled: dict[tuple[str, str], Invariant | None] = {}

    def compile(self, constraint: dict) -> Invariant | None:
        """The compiled constraint, or None when it is not evaluated here (listed in ``skipped``)."""
        key = constraint.get("key", "?")
        expression = constraint.get("expression")
        if constraint.get("severity") != "error":
            return None
        if key in STRUCTURAL_KEYS:
            self.skipped[key] = "checked by the structural walk instead"
            return None
        if not expression:
            self.skipped[key] = "no FHIRPath expression"
            return None
        cache_key = (key, expression)
        if cache_key in self._compiled:
            return self._compiled[cache_key]
        invariant = None
        try:
            tree = parse(expression)
            missing = sorted(_functions(tree) - KNOWN_FUNCTIONS)
            if missing:
                self.skipped[key] = "fhirpathpy lacks " + ", ".join(f"{name}()" for name in missing)
            else:
                run = fhirpath_compile(expression, self.model, ENGINE_OPTIONS)
                precheck = _compile_check(tree["children"][0])
                invariant = Invariant(key, constraint.get("human", ""), expression, run, precheck)
        except Exception as exc:  # the engine's parser rejects the expression
            self.skipped[key] = f"fhirpathpy cannot parse it: {exc}"
        self._compiled[cache_key] = invariant
        return invariant

    def holds(self, invariant: Invariant, data: Any, members: dict, type_path: str | None,
              resource: dict, root: dict, temporal: dict[str, str] | None = None,
              record_failure: bool = True) -> bool:
        """False only when the engine says the constraint is violated.

        ``temporal`` names the focus's date/dateTime/instant/time children ({JSON key: type}).
        fhirpathpy compares such values as plain strings when they come from JSON
        (``"10:00-04:00" <= "09:30-05:00"`` is lexically false), so the engine gets a
        shallow copy where they are FHIRPath date/time values: precision and time zones
        are then honoured as the FHIRPath specification says. That costs ~1 ms
        (fhirpathpy parses them with dateutil), so it is done only when the values differ
        in length or zone; otherwise their string order is their time order.

        An exception inside fhirpathpy counts as satisfied; it is recorded in ``failures``
        when ``record_failure`` (the caller passes False for structurally broken input,
        where the engine tripping over a number in a dateTime says nothing about it).
        """
        precheck = invariant.precheck
        if precheck is not None:
            try:
                answer = precheck(data, members, (resource, root))
            except Exception:  # unexpected JSON shapes: let the engine decide
                answer = UNKNOWN
            if answer is True or answer is EMPTY:  # an empty result is not a violation either
                return True
        if temporal and isinstance(data, dict) and _needs_temporal_values(data, temporal):
            data = _with_temporal_values(data, temporal)
        focus = data if type_path is None else ResourceNode.create_node(data, type_path)
        try:
            result = invariant.run(focus, {"resource": resource, "rootResource": root})
        except Exception as exc:  # an engine limitation must never fail a validation
            if record_failure and invariant.key not in self.failures:
                self.failures[invariant.key] = (f"fhirpathpy raised {type(exc).__name__} at run time "
                                                f"({str(exc)[:120]}); counted as satisfied where it raises")
            return True
        return not (len(result) == 1 and result[0] is False)


def _needs_temporal_values(data: dict, temporal: dict[str, str]) -> bool:
    shapes = set()
    for key in temporal:
        value = data.get(key)
        if value is None:
            continue
        for text in value if isinstance(value, list) else (value,):
            if isinstance(text, str):
                shapes.add(_shape(text))
    return len(shapes) > 1


def _with_temporal_values(data: dict, temporal: dict[str, str]) -> dict:
    typed = dict(data)
    for key, kind in temporal.items():
        value = typed.get(key)
        if value is None:
            continue
        convert = FP_Time if kind == "time" else FP_DateTime
        if isinstance(value, str):
            typed[key] = convert(value)
        elif isinstance(value, list):
            typed[key] = [convert(v) if isinstance(v, str) else v for v in value]
    return typed
