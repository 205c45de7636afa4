"""Checks of FHIR primitive values as they appear in JSON (R4, http://hl7.org/fhir/R4/datatypes.html).

Each primitive type gets one :class:`Primitive` built from its StructureDefinition: the
JSON kind it must have (``true``/``false``, a number, an integer or a string) and the
regular expression its ``value`` element carries in the ``regex`` type extension. A few
rules that a regular expression cannot say are added here: integer ranges, real
calendar dates, and the ``<div`` start of XHTML narrative.
"""
from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

REGEX_EXTENSION = "http://hl7.org/fhir/StructureDefinition/regex"
FHIR_TYPE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"

INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1

# Used only when a primitive's StructureDefinition carries no regex (R4 has none for xhtml).
FALLBACK_REGEX = {
    "string": r"[ \r\n\t\S]+",
    "id": r"[A-Za-z0-9\-\.]{1,64}",
}

BOOLEAN_TYPES = frozenset({"boolean"})
INTEGER_TYPES = frozenset({"integer", "positiveInt", "unsignedInt"})
DECIMAL_TYPES = frozenset({"decimal"})
INTEGER_MINIMUM = {"integer": INT32_MIN, "positiveInt": 1, "unsignedInt": 0}
DATE_TYPES = frozenset({"date", "dateTime", "instant"})

# A (code, message) pair describes one problem; None means the value is fine.
Problem = tuple[str, str] | None

# Verdicts on string values remembered per primitive type (codes, systems, dates recur from one
# resource to the next): at most this many, then the memory starts again.
MEMO_SIZE = 4096


def _json_kind(value: Any) -> str:
    if value is True or value is False:
        return "a boolean"
    if type(value) is int:
        return "an integer"
    if isinstance(value, (Decimal, float)):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return type(value).__name__


def _calendar_problem(text: str) -> str | None:
    """The regexes accept 2023-02-30; check that a full date exists in the calendar."""
    if len(text) >= 10 and text[4] == "-" and text[7] == "-":
        try:
            datetime.date(int(text[0:4]), int(text[5:7]), int(text[8:10]))
        except ValueError:
            return f"'{text[:10]}' is not a real calendar date"
    return None


_BASE64_CHARS = re.compile(r"[0-9a-zA-Z+/= \t\n\r\f\v]*")


def _base64_quads(text: str) -> bool:
    """The R4 base64Binary regex ``(\\s*([0-9a-zA-Z\\+/=]){4}\\s*)+`` in linear time: groups of
    four characters, with whitespace only between groups."""
    if _BASE64_CHARS.fullmatch(text) is None:
        return False
    tokens = text.split()  # only ASCII whitespace is left, so str.split() cuts where \s does
    return bool(tokens) and not any(map((3).__and__, map(len, tokens)))


_ZONELESS_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?")


class Primitive:
    """How to check one primitive type's JSON value."""

    __slots__ = ("name", "kind", "pattern", "check", "_memo")

    def __init__(self, name: str, regex: str | None) -> None:
        self.name = name
        if name in BOOLEAN_TYPES:
            self.kind = "boolean"
        elif name in INTEGER_TYPES:
            self.kind = "integer"
        elif name in DECIMAL_TYPES:
            self.kind = "decimal"
        else:
            self.kind = "string"
        regex = regex or FALLBACK_REGEX.get(name)
        # ASCII: the definitions use Java/XML Schema classes, where \s is ASCII whitespace only
        self.pattern = re.compile(regex, re.ASCII) if regex else None
        self._memo: dict[str, Problem] = {}
        self.check: Callable[[Any], Problem] = (self._check_string_memo if self.kind == "string"
                                                else getattr(self, "_check_" + self.kind))

    def _check_boolean(self, value: Any) -> Problem:
        if value is True or value is False:
            return None
        return "structure", f"a {self.name} must be a JSON boolean (true or false), not {_json_kind(value)}"

    def _check_integer(self, value: Any) -> Problem:
        if type(value) is not int:
            if isinstance(value, (Decimal, float)) and not isinstance(value, bool):
                return "value", f"a {self.name} must be a whole number, not {value}"
            return "structure", f"a {self.name} must be a JSON number, not {_json_kind(value)}"
        low = INTEGER_MINIMUM[self.name]
        if value < low or value > INT32_MAX:
            return "value", f"{value} is out of range for {self.name} ({low}..{INT32_MAX})"
        return None

    def _check_decimal(self, value: Any) -> Problem:
        if type(value) is int:
            return None
        if isinstance(value, Decimal):
            if value.is_finite():
                return None
            return "value", f"{value} is not a valid decimal"
        if type(value) is float:
            if value == value and value not in (float("inf"), float("-inf")):
                return None
            return "value", f"{value} is not a valid decimal"
        return "structure", f"a decimal must be a JSON number, not {_json_kind(value)}"

    def _check_string_memo(self, value: Any) -> Problem:
        """:meth:`_check_string`, remembered: a pure function of the value (regexes, calendars are not cheap)."""
        if type(value) is not str:
            return self._check_string(value)
        memo = self._memo
        try:
            return memo[value]
        except KeyError:
            pass
        problem = self._check_string(value)
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[value] = problem
        return problem

    def _check_string(self, value: Any) -> Problem:
        if type(value) is not str:
            return "structure", f"a {self.name} must be a JSON string, not {_json_kind(value)}"
        if not value:
            return "value", f"a {self.name} must not be an empty string"
        name = self.name
        if name == "xhtml":
            if not value.lstrip().startswith("<div"):
                return "value", "narrative XHTML must be a <div> element"
            return None
        pattern = self.pattern
        if name == "base64Binary" and _base64_quads(value):
            return None  # exactly what the definition's regex accepts, without its backtracking cost
        if pattern is not None and pattern.fullmatch(value) is None:
            if name in ("dateTime", "instant") and _ZONELESS_TIME.fullmatch(value):
                return "value", f"'{value}' has a time but no time zone (add Z or an offset such as +01:00)"
            return "value", f"'{_shorten(value)}' is not a valid {name}"
        if name in DATE_TYPES:
            problem = _calendar_problem(value)
            if problem:
                return "value", problem
        return None


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def value_regex(structure: dict) -> str | None:
    """The regex of a primitive StructureDefinition's ``value`` element, if it declares one."""
    for element in structure["snapshot"]["element"]:
        if element["path"].endswith(".value"):
            for type_ in element.get("type", []):
                for ext in type_.get("extension", []):
                    if ext.get("url") == REGEX_EXTENSION:
                        return ext.get("valueString")
    return None


def build_primitives(structures: dict[str, dict]) -> dict[str, Primitive]:
    """One :class:`Primitive` per primitive-type StructureDefinition."""
    return {sid: Primitive(sid, value_regex(sd)) for sid, sd in structures.items()
            if sd.get("kind") == "primitive-type"}
