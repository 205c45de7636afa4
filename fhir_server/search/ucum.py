"""A small UCUM converter: enough to compare common clinical quantities across units.

Quantity search may compare ``5.4 mmol/L`` with ``0.0054 mol/L`` or ``1 kg`` with
``1000 g``. Both sides (index entries and query values) are reduced to a *canonical
unit* with :func:`canonical`, which returns the canonical unit code and the
multiplicative factor; values are then multiplied by the factor.

Covered: the metric prefixes Y Z E P T G M k h da d c m u n p f a (``u`` is micro), the
metric atoms g, m, L/l (canonical m3), s, mol, eq, Pa, U, kat, Hz, cal, the time units
min, h, d, wk, mo, a, some customary units ([lb_av], [oz_av], [in_i], [ft_i]),
``mm[Hg]``/``cm[H2O]`` kept as their own atoms, ``%``, the factor ``10*n`` / ``10^n``,
annotations ``{...}`` (ignored), exponents (``m2``, ``s-1``), ``.`` and ``/`` with one
level of parentheses. Units with offsets (Cel, [degF]) and anything else are unknown:
:func:`canonical` returns ``None`` and the caller leaves the canonical fields empty.

The canonical code is written as the base atoms in alphabetical order with their exponent,
joined by ``.``, e.g. ``g.m-3`` for ``mg/dL``; ``1`` for a pure number.
"""
from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["canonical", "canonicalize", "to_canonical", "UCUM_SYSTEM"]

UCUM_SYSTEM = "http://unitsofmeasure.org"

# prefix -> factor
_PREFIXES: dict[str, float] = {
    "Y": 1e24, "Z": 1e21, "E": 1e18, "P": 1e15, "T": 1e12, "G": 1e9, "M": 1e6, "k": 1e3,
    "h": 1e2, "da": 1e1, "d": 1e-1, "c": 1e-2, "m": 1e-3, "u": 1e-6, "n": 1e-9, "p": 1e-12,
    "f": 1e-15, "a": 1e-18,
}

# atom -> (factor, {base: exponent}, metric)  — metric atoms accept prefixes
_ATOMS: dict[str, tuple[float, dict[str, int], bool]] = {
    "g": (1.0, {"g": 1}, True),
    "m": (1.0, {"m": 1}, True),
    "L": (1e-3, {"m": 3}, True),
    "l": (1e-3, {"m": 3}, True),
    "s": (1.0, {"s": 1}, True),
    "mol": (1.0, {"mol": 1}, True),
    "eq": (1.0, {"eq": 1}, True),
    "Pa": (1.0, {"Pa": 1}, True),
    "U": (1.0, {"U": 1}, True),
    "kat": (1.0, {"kat": 1}, True),
    "Hz": (1.0, {"s": -1}, True),
    "cal": (1.0, {"cal": 1}, True),
    "min": (60.0, {"s": 1}, False),
    "h": (3600.0, {"s": 1}, False),
    "d": (86400.0, {"s": 1}, False),
    "wk": (604800.0, {"s": 1}, False),
    "mo": (2629800.0, {"s": 1}, False),  # mean Julian month
    "a": (31557600.0, {"s": 1}, False),  # Julian year
    "[lb_av]": (453.59237, {"g": 1}, False),
    "[oz_av]": (28.349523125, {"g": 1}, False),
    "[in_i]": (0.0254, {"m": 1}, False),
    "[ft_i]": (0.3048, {"m": 1}, False),
    "mm[Hg]": (1.0, {"mm[Hg]": 1}, False),
    "cm[H2O]": (1.0, {"cm[H2O]": 1}, False),
    "[IU]": (1.0, {"[IU]": 1}, False),
    "[iU]": (1.0, {"[IU]": 1}, False),
    "%": (0.01, {}, False),
    "1": (1.0, {}, False),
}

_ANNOTATION = re.compile(r"\{[^{}]*\}")
_TEN_POWER = re.compile(r"10[*^]([+-]?\d+)")
_NUMBER = re.compile(r"\d+")
_WITH_EXPONENT = re.compile(r"(.*?[^\d+-])([+-]?\d+)")


class _Unknown(Exception):
    pass


def _atom(text: str) -> tuple[float, dict[str, int]]:
    hit = _ATOMS.get(text)
    if hit is not None:
        return hit[0], hit[1]
    for plen in (2, 1):
        prefix, rest = text[:plen], text[plen:]
        if prefix in _PREFIXES and rest:
            hit = _ATOMS.get(rest)
            if hit is not None and hit[2]:
                return _PREFIXES[prefix] * hit[0], hit[1]
    raise _Unknown(text)


def _component(text: str) -> tuple[float, dict[str, int]]:
    if not text:
        return 1.0, {}
    m = _TEN_POWER.fullmatch(text)
    if m:
        return 10.0 ** int(m.group(1)), {}
    if _NUMBER.fullmatch(text):
        return float(int(text)), {}
    try:
        return _atom(text)
    except _Unknown:
        pass
    m = _WITH_EXPONENT.fullmatch(text)
    if m:
        factor, dims = _atom(m.group(1))
        exp = int(m.group(2))
        return factor ** exp, {k: v * exp for k, v in dims.items()}
    raise _Unknown(text)


def _split_top(term: str) -> list[tuple[str, str]]:
    """Split on top-level ``.`` and ``/``, returning (operator, component) pairs."""
    out: list[tuple[str, str]] = []
    depth, start, op = 0, 0, "."
    for i, ch in enumerate(term):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0 and ch in "./":
            out.append((op, term[start:i]))
            op, start = ch, i + 1
    if depth != 0:
        raise _Unknown(term)
    out.append((op, term[start:]))
    return out


def _term(term: str) -> tuple[float, dict[str, int]]:
    factor, dims = 1.0, {}
    for op, comp in _split_top(term):
        if comp.startswith("(") and comp.endswith(")"):
            f, d = _term(comp[1:-1])
        else:
            f, d = _component(comp)
        sign = 1 if op == "." else -1
        factor = factor * f if sign == 1 else factor / f
        for k, v in d.items():
            dims[k] = dims.get(k, 0) + sign * v
    return factor, dims


@lru_cache(maxsize=2048)
def canonical(code: str) -> tuple[str, float] | None:
    """UCUM code -> (canonical unit code, factor) or ``None`` when the unit is not covered."""
    if not isinstance(code, str):
        return None
    text = code.strip()
    if not text or " " in text:
        return None
    stripped = _ANNOTATION.sub("", text)
    if not stripped:
        stripped = "1"
    try:
        factor, dims = _term(stripped)
    except (_Unknown, ValueError, OverflowError, ZeroDivisionError):
        return None
    parts = [f"{k}{v}" if v != 1 else k for k, v in sorted(dims.items()) if v != 0]
    return (".".join(parts) or "1"), factor


def to_canonical(low: float, high: float, code: str | None) -> tuple[str, float, float] | None:
    """Convert a ``[low, high]`` range in ``code`` units: (canonical code, low, high) or ``None``."""
    if code is None:
        return None
    hit = canonical(code)
    if hit is None:
        return None
    unit, factor = hit
    return unit, low * factor, high * factor


canonicalize = to_canonical  # the name the query parser uses
