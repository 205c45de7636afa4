"""Required bindings: codes must come from the (pre-expanded) value set.

Only ``required`` bindings are checked (http://hl7.org/fhir/R4/terminologies.html#required).
The expansions come from ``Definitions.required_value_sets``; a value set that could not
be expanded offline (a filter, or a code system outside the R4 package such as MIME
types or ISO 4217 currencies) is not checked: no issue at all, so that every Attachment
does not carry a note in every OperationOutcome.
"""
from __future__ import annotations

from typing import Any

from fhir_server.model.outcome import Issue

MAX_LISTED_CODES = 12


class RequiredBinding:
    """The expansion of one required value set, ready for membership tests."""

    __slots__ = ("url", "pairs", "codes", "systems", "not_expandable", "_listing")

    def __init__(self, url: str, entry: dict | None) -> None:
        self.url = url
        entry = entry or {"notExpandable": "value set is not in the R4 subset"}
        self.not_expandable: str | None = entry.get("notExpandable")
        pairs = [tuple(p) for p in entry.get("codes", [])]
        self.pairs = frozenset(pairs)
        self.codes = frozenset(code for _, code in pairs)
        self.systems = frozenset(system for system, _ in pairs)
        listed = [code for _, code in pairs[:MAX_LISTED_CODES]]
        more = len(pairs) - len(listed)
        self._listing = ", ".join(listed) + (f" and {more} more" if more > 0 else "")

    def _not_in(self, what: str) -> str:
        return f"{what} is not in the required value set {self.url} ({self._listing})"

    def check_code(self, code: str, path: str, issues: list[Issue]) -> None:
        if self.not_expandable is None and code not in self.codes:
            issues.append(Issue("error", "code-invalid", self._not_in(f"code '{code}'"), path))

    def check_coding(self, coding: dict, path: str, issues: list[Issue]) -> None:
        if self.not_expandable is not None:
            return
        problem = self._coding_problem(coding)
        if problem:
            issues.append(Issue("error", "code-invalid", problem, path))

    def _coding_problem(self, coding: Any) -> str | None:
        if not isinstance(coding, dict):
            return "not a Coding"
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(code, str):
            return f"a code from the required value set {self.url} is needed (the Coding has no code)"
        if not isinstance(system, str):
            return (f"the Coding with code '{code}' has no system, so it cannot be from the required "
                    f"value set {self.url}")
        if (system, code) not in self.pairs:
            return self._not_in(f"{system}#{code}")
        return None

    def check_codeable_concept(self, concept: dict, path: str, issues: list[Issue]) -> None:
        if self.not_expandable is not None:
            return
        codings = concept.get("coding")
        if not isinstance(codings, list) or not codings:
            issues.append(Issue("error", "code-invalid", "no coding given; a code from the required value "
                                                         f"set {self.url} is needed", path))
            return
        problems = [self._coding_problem(c) for c in codings]
        if any(p is None for p in problems):
            return
        if len(problems) == 1:
            message = problems[0]
        else:
            message = (f"none of the {len(codings)} codings is from the required value set {self.url} "
                       f"({self._listing})")
        issues.append(Issue("error", "code-invalid", message, path))


class Terminology:
    """All required bindings, compiled once; one shared object per value set url."""

    def __init__(self, required_value_sets: dict[str, dict]) -> None:
        self._sets = required_value_sets
        self._bindings: dict[str, RequiredBinding] = {}

    def required(self, value_set: str) -> RequiredBinding:
        url = value_set.split("|")[0]
        binding = self._bindings.get(url)
        if binding is None:
            binding = self._bindings[url] = RequiredBinding(url, self._sets.get(url))
        return binding
