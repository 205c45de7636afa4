"""SMART on FHIR scopes (App Launch 1.0 and 2.x), parsed once per token.

Clinical scopes have the form ``<context>/<type>.<permissions>[?<query>]``:

* ``context``: ``patient`` (the token's patient only), ``user`` (what the user may see), ``system``
  (backend services);
* ``type``: a resource type or ``*``;
* permissions, SMART v2: a non-empty subsequence of ``cruds`` in that order (``rs``, ``cud``,
  ``cruds``); SMART v1: ``read`` (= ``rs``), ``write`` (= ``cud``) and ``*`` (= ``cruds``);
* v2 only, a granular query (``patient/Observation.rs?category=laboratory``): search parameters
  that every resource reached through the scope must match.

Anything else (``openid``, ``fhirUser``, ``profile``, ``launch``, ``launch/patient``,
``offline_access``, ``online_access``, malformed clinical scopes such as ``patient/Observation.sr``
or ``user/*.read?x=1``) grants no data access and is ignored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable
from urllib.parse import parse_qsl

PERMISSIONS = "cruds"
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
CONTEXTS = ("patient", "user", "system")
_CLINICAL = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.([A-Za-z*]+)(\?.*)?", re.S)
_V2 = re.compile(r"c?r?u?d?s?")
# result parameters shape a response, they do not select resources: meaningless in a scope
_RESULT_PARAMETERS = {"_count", "_sort", "_include", "_revinclude", "_total", "_summary", "_elements", "_format",
                      "_pretty", "_type", "_page", "_contained", "_containedType"}


@dataclass(frozen=True)
class Scope:
    """One clinical scope: who it is for, which type, which permissions, and its granular query."""

    context: str  # patient | user | system
    resource_type: str  # a resource type or "*"
    permissions: frozenset[str]  # letters of "cruds"
    query: tuple[tuple[str, str], ...] = ()  # granular search parameters, in order
    text: str = ""
    version: int = 2  # 1 for read/write/*

    def grants(self, permission: str, rtype: str | None) -> bool:
        """Whether this scope grants ``permission`` on ``rtype`` (None: on every type, i.e. a ``*`` scope)."""
        if permission not in self.permissions:
            return False
        return self.resource_type == "*" or (rtype is not None and self.resource_type == rtype)


def parse_scope(text: str) -> Scope | None:
    """The clinical scope ``text`` names, or None (not a clinical scope, or malformed)."""
    match = _CLINICAL.fullmatch(text)
    if match is None:
        return None
    context, rtype, letters, query = match.groups()
    if letters in V1_PERMISSIONS:
        if query is not None:
            return None  # granular queries are a SMART v2 feature
        return Scope(context, rtype, frozenset(V1_PERMISSIONS[letters]), (), text, 1)
    if not letters or not _V2.fullmatch(letters):
        return None
    params: tuple[tuple[str, str], ...] = ()
    if query is not None:
        try:
            params = tuple(parse_qsl(query[1:], keep_blank_values=True, strict_parsing=True))
        except ValueError:
            return None
        if not params or any(not name or not value or name.split(":", 1)[0] in _RESULT_PARAMETERS
                             for name, value in params):
            return None
    return Scope(context, rtype, frozenset(letters), params, text, 2)


def split_scopes(scope: str | Iterable[str] | None) -> frozenset[str]:
    """The scope strings of a token's space-separated ``scope`` claim (or of an iterable of them)."""
    if scope is None:
        return frozenset()
    if isinstance(scope, str):
        return frozenset(s for s in scope.split() if s)
    return frozenset(s for s in scope if isinstance(s, str) and s)


@lru_cache(maxsize=4096)
def parse_scopes(scopes: frozenset[str]) -> tuple[Scope, ...]:
    """The clinical scopes among ``scopes``, in a stable order; the rest is ignored. Cached: a token's
    scope set is parsed once however many requests and resource types it is checked against."""
    parsed = (parse_scope(text) for text in sorted(scopes))
    return tuple(s for s in parsed if s is not None)
