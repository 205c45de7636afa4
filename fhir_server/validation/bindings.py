"""Bindings: codes checked against the value sets the server holds, expanded locally.

Value sets come from two places: the R4 value sets expanded when ``resources/r4`` was
generated (``valuesets-required.json`` and the conformance pack), and the ValueSet /
CodeSystem resources the profile registry loaded (``profiles/``), expanded here on first
use: enumerated ``concept`` lists, whole code systems the server holds (``content:
complete``), ``is-a`` / ``descendent-of`` / ``=`` filters on those, imported value sets,
excludes, and a ValueSet's own ``expansion`` when it has no usable ``compose``.

A value set may include a code system the server does not hold (LOINC, SNOMED CT, the
French NOS terminologies...): codes of that system are then *not checked*, and the
profile validator says so with an ``information`` issue; codes of the other systems are
still checked. Strengths (http://hl7.org/fhir/R4/terminologies.html#strength): required
-> error; extensible and preferred -> warning; example bindings are not checked.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fhir_server.model.outcome import Issue

MAX_LISTED_CODES = 12
NOTES_MEMO = 1024  # "not checked" notes kept per binding for reuse (then forgotten): the same codes recur
SEVERITY = {"required": "error", "extensible": "warning", "preferred": "warning"}


class Expansion:
    """What is known of one value set: enumerated (system, code) pairs, and systems taken whole."""

    __slots__ = ("url", "pairs", "codes", "open_systems", "opaque")

    def __init__(self, url: str, pairs: set[tuple[str, str]] | None = None,
                 open_systems: dict[str, str] | None = None, opaque: str | None = None) -> None:
        self.url = url
        self.pairs = frozenset(pairs or ())
        self.codes = frozenset(code for _, code in self.pairs)
        self.open_systems = dict(open_systems or {})  # system -> why its codes are not checked
        self.opaque = opaque  # why nothing can be checked at all


class ValueSets:
    """Expands value sets (once each) from pre-computed R4 expansions and the registry's resources."""

    def __init__(self, expansions: Mapping[str, dict], value_set: Callable[[str], dict | None],
                 code_system: Callable[[str], dict | None],
                 all_codes_of: Callable[[str], dict | None] = lambda url: None) -> None:
        self._pre = expansions
        self._value_set = value_set
        self._code_system = code_system
        self._all_codes_of = all_codes_of  # value set url -> the code system whose ``valueSet`` it is
        self._cache: dict[str, Expansion] = {}

    def expand(self, url: str) -> Expansion:
        key = url
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._expand(url, frozenset())
        return found

    def _expand(self, url: str, seen: frozenset) -> Expansion:
        plain = url.split("|")[0]
        if plain in seen:
            return Expansion(plain, opaque=f"value set {plain} includes itself")
        vs = self._value_set(url)
        if vs is None:
            entry = self._pre.get(plain)
            if entry is not None:
                if "codes" in entry:
                    return Expansion(plain, {tuple(p) for p in entry["codes"]})
                return Expansion(plain, opaque=entry.get("notExpandable") or "cannot be expanded here")
            cs = self._all_codes_of(plain)
            if cs is not None:
                codes = _all_codes(cs)
                if codes is not None:
                    return Expansion(plain, {(cs["url"], c) for c in codes})
            return Expansion(plain, opaque=f"value set {plain} is not held by this server")
        compose = vs.get("compose")
        if not compose:
            return self._from_expansion(vs, plain)
        pairs: set[tuple[str, str]] = set()
        open_systems: dict[str, str] = {}
        for include in compose.get("include") or ():
            part = self._part(include, seen | {plain})
            if part.opaque:
                return self._from_expansion(vs, plain, part.opaque)
            pairs |= part.pairs
            open_systems.update(part.open_systems)
        for exclude in compose.get("exclude") or ():
            part = self._part(exclude, seen | {plain})
            pairs -= part.pairs
        return Expansion(plain, pairs, open_systems)

    def _from_expansion(self, vs: dict, url: str, reason: str | None = None) -> Expansion:
        contains = (vs.get("expansion") or {}).get("contains")
        if contains:
            pairs: set[tuple[str, str]] = set()

            def walk(items):
                for item in items:
                    if item.get("system") and item.get("code"):
                        pairs.add((item["system"], item["code"]))
                    walk(item.get("contains") or ())
            walk(contains)
            return Expansion(url, pairs)
        return Expansion(url, opaque=reason or f"value set {url} has neither compose nor expansion")

    def _part(self, include: dict, seen: frozenset) -> Expansion:
        system = include.get("system")
        pairs: set[tuple[str, str]] | None = None
        open_systems: dict[str, str] = {}
        if system:
            if include.get("concept"):
                pairs = {(system, c["code"]) for c in include["concept"] if c.get("code")}
            else:
                cs = self._code_system(system)
                codes = _all_codes(cs) if cs is not None else None
                filters = include.get("filter") or []
                if codes is None:
                    reason = (f"code system {system} is not held by this server" if cs is None
                              else f"code system {system} is not complete here (content: {cs.get('content')})")
                    open_systems[system] = reason
                    pairs = set()
                elif filters:
                    selected = _filtered(cs, filters)
                    if selected is None:
                        open_systems[system] = f"a filter on {system} is not supported here"
                        pairs = set()
                    else:
                        pairs = {(system, c) for c in selected}
                else:
                    pairs = {(system, c) for c in codes}
        for ref in include.get("valueSet") or ():
            part = self._expand(ref, seen)
            if part.opaque:
                return Expansion("", opaque=part.opaque)
            open_systems.update(part.open_systems)
            if pairs is None:
                pairs = set(part.pairs)
            else:
                pairs = {p for p in pairs if p in part.pairs or p[0] in part.open_systems}
        return Expansion("", pairs or set(), open_systems)


def _all_codes(cs: dict | None) -> list[str] | None:
    if cs is None or cs.get("content", "complete") != "complete":
        return None
    codes: list[str] = []

    def walk(concepts):
        for concept in concepts:
            if concept.get("code"):
                codes.append(concept["code"])
            walk(concept.get("concept") or ())
    walk(cs.get("concept") or ())
    return codes


def _filtered(cs: dict, filters: list[dict]) -> set[str] | None:
    """Codes of a held code system selected by ``is-a``/``descendent-of``/``=`` filters (None: unsupported)."""
    parents: dict[str, list[str]] = {}
    properties: dict[str, dict[str, Any]] = {}

    def walk(concepts, parent):
        for concept in concepts:
            code = concept.get("code")
            if not code:
                continue
            if parent:
                parents.setdefault(code, []).append(parent)
            properties[code] = {p.get("code"): next((v for k, v in p.items() if k.startswith("value")), None)
                                for p in concept.get("property") or ()}
            walk(concept.get("concept") or (), code)
    walk(cs.get("concept") or (), None)

    def ancestors(code):
        seen, stack = set(), list(parents.get(code, ()))
        while stack:
            item = stack.pop()
            if item not in seen:
                seen.add(item)
                stack.extend(parents.get(item, ()))
        return seen

    selected = set(properties)
    for f in filters:
        op, prop, value = f.get("op"), f.get("property"), f.get("value")
        if prop == "concept" and op == "is-a":
            selected &= {c for c in properties if c == value or value in ancestors(c)}
        elif prop == "concept" and op == "descendent-of":
            selected &= {c for c in properties if value in ancestors(c)}
        elif op == "=":
            selected &= {c for c in properties if str(properties[c].get(prop)) == value}
        else:
            return None
    return selected


class Binding:
    """One binding (value set + strength), ready to check code, Coding and CodeableConcept values."""

    __slots__ = ("url", "strength", "expansion", "severity", "report", "_listing", "_open_reason", "_notes")

    def __init__(self, expansion: Expansion, strength: str, report: bool) -> None:
        self.url = expansion.url
        self.strength = strength
        self.expansion = expansion
        self.severity = SEVERITY.get(strength, "warning")
        self.report = report  # say "not checked" when codes cannot be checked
        listed = sorted(expansion.codes)[:MAX_LISTED_CODES]
        more = len(expansion.codes) - len(listed)
        self._listing = ", ".join(listed) + (f" and {more} more" if more > 0 else "")
        self._open_reason = "; ".join(sorted(set(expansion.open_systems.values())))  # why codes are not checked
        self._notes: dict[tuple[str, str, str], Issue] = {}  # (what, reason, path) -> the note (issues are values)

    def _vs(self) -> str:
        return f"the {self.strength} value set {self.url}"

    def _not_in(self, what: str) -> str:
        listing = f" ({self._listing})" if self._listing else ""
        return f"{what} is not in {self._vs()}{listing}"

    def _unchecked(self, what: str, reason: str, path: str, issues: list[Issue]) -> None:
        if self.report:
            key = (what, reason, path)
            note = self._notes.get(key)
            if note is None:
                if self.url not in reason:
                    reason = f"it cannot be expanded here ({reason})"
                note = Issue("information", "informational", f"{what} was not checked against {self._vs()}: "
                                                             f"{reason}", path)
                if len(self._notes) >= NOTES_MEMO:
                    self._notes.clear()
                self._notes[key] = note
            issues.append(note)

    # -- membership -------------------------------------------------------------------------

    def _coding_state(self, coding: Any) -> tuple[str, str]:
        """("ok" | "bad" | "unchecked" | "incomplete", message)."""
        expansion = self.expansion
        if not isinstance(coding, dict):
            return "bad", "not a Coding"
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(code, str):
            return "incomplete", f"a code from {self._vs()} is needed (the Coding has no code)"
        if expansion.opaque:
            return "unchecked", expansion.opaque
        if not isinstance(system, str):
            if code in expansion.codes and not expansion.open_systems:
                return "incomplete", (f"the Coding with code '{code}' has no system, so it cannot be from "
                                      f"{self._vs()}")
            return "incomplete", f"the Coding with code '{code}' has no system, so it cannot be from {self._vs()}"
        if (system, code) in expansion.pairs:
            return "ok", ""
        if system in expansion.open_systems:
            return "unchecked", expansion.open_systems[system]
        return "bad", self._not_in(f"{system}#{code}")

    def belongs(self, value: Any) -> bool:
        """Slice discriminators: is this code / Coding / CodeableConcept in the value set, as far as known?

        A code of a system the value set takes whole but the server does not hold belongs."""
        if isinstance(value, str):
            return value in self.expansion.codes
        if isinstance(value, dict):
            if "coding" in value:
                return any(self._coding_state(c)[0] in ("ok", "unchecked") for c in value.get("coding") or ())
            return self._coding_state(value)[0] in ("ok", "unchecked")
        return False

    # -- checks -----------------------------------------------------------------------------

    def check_code(self, code: str, path: str, issues: list[Issue]) -> None:
        expansion = self.expansion
        if expansion.opaque:
            self._unchecked(f"code '{code}'", expansion.opaque, path, issues)
            return
        if code in expansion.codes:
            return
        if expansion.open_systems:
            self._unchecked(f"code '{code}'", self._open_reason, path, issues)
            return
        issues.append(Issue(self.severity, "code-invalid", self._not_in(f"code '{code}'"), path))

    def check_coding(self, coding: dict, path: str, issues: list[Issue]) -> None:
        state, message = self._coding_state(coding)
        if state == "ok":
            return
        if state == "unchecked":
            self._unchecked(f"{coding.get('system')}#{coding.get('code')}", message, path, issues)
        elif state == "incomplete" and self.strength != "required":
            return
        else:
            issues.append(Issue(self.severity, "code-invalid", message, path))

    def check_codeable_concept(self, concept: dict, path: str, issues: list[Issue]) -> None:
        codings = concept.get("coding")
        if not isinstance(codings, list) or not codings:
            if self.strength == "required" and not self.expansion.opaque:
                issues.append(Issue("error", "code-invalid", f"no coding given; a code from {self._vs()} is needed",
                                    path))
            return
        states = [self._coding_state(c) for c in codings]
        if any(state == "ok" for state, _ in states):
            return
        unchecked = [(c, m) for c, (state, m) in zip(codings, states) if state == "unchecked"]
        if unchecked:
            coding, message = unchecked[0]
            what = f"{coding.get('system')}#{coding.get('code')}" if isinstance(coding, dict) else "the coding"
            self._unchecked(what, message, path, issues)
            return
        if len(states) == 1:
            message = states[0][1]
        else:
            listing = f" ({self._listing})" if self._listing else ""
            message = f"none of the {len(codings)} codings is from {self._vs()}{listing}"
        issues.append(Issue(self.severity, "code-invalid", message, path))


class BindingFactory:
    """What compilers call: ``binding(url, strength, profile)``, one Binding per (url, strength, profile)."""

    def __init__(self, value_sets: ValueSets) -> None:
        self.value_sets = value_sets
        self._made: dict[tuple[str, str, bool], Binding] = {}

    def binding(self, url: str, strength: str, profile: bool = False) -> Binding | None:
        if strength not in SEVERITY:
            return None
        key = (url, strength, profile)
        found = self._made.get(key)
        if found is None:
            # the base walk stays silent about codes it cannot check (every Attachment would carry a
            # note); profile walks say so
            found = self._made[key] = Binding(self.value_sets.expand(url), strength, report=profile)
        return found

    def matcher(self, url: str) -> Callable[[Any], bool] | None:
        """Slicing by value set: does a value belong to ``url`` (codes of systems not held: by system)?

        None when nothing at all is known of the value set."""
        binding = self.binding(url, "required", True)
        return None if binding.expansion.opaque else binding.belongs
