"""JSON codec that keeps FHIR decimals exactly as written.

FHIR decimals carry their precision in their text (``1.50`` is not ``1.5``), so
parsing them into floats silently rewrites stored data. Numbers with a fraction
or exponent are parsed into :class:`decimal.Decimal` and written back from their
original text through ``orjson.Fragment``; everything else uses orjson for speed.
"""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

_decoder = json.JSONDecoder(parse_float=Decimal, strict=True)


class JSONError(ValueError):
    """The bytes are not one well-formed JSON value."""


def _reject_constant(name: str) -> Any:
    raise JSONError(f"{name} is not valid JSON")


_strict_decoder = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def loads(data: bytes | str) -> Any:
    """Parse JSON, keeping decimals as :class:`Decimal` and refusing NaN/Infinity."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONError(f"body is not UTF-8: {exc}") from None
    if data.startswith("\ufeff"):
        data = data[1:]
    try:
        return _strict_decoder.decode(data)
    except json.JSONDecodeError as exc:
        raise JSONError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any, *, pretty: bool = False) -> bytes:
    """Encode to UTF-8 JSON bytes; decimals keep the text they were parsed from."""
    option = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(value, default=_default, option=option)
