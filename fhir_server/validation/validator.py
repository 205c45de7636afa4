"""The validator: base R4 validation of any resource type, plus profiles.

:class:`Validator` compiles definitions from a :class:`~fhir_server.validation.profiles.ProfileRegistry`
lazily (each resource type, profile and extension once, on first use) with the compiler of
:mod:`fhir_server.validation.structure`, and runs its walk:

- :meth:`Validator.validate` is the *base* validation (drop-in for ``StructureValidator``):
  the R4 definition of the resource's type, extensions checked against their definitions
  when known here (an unknown one is a warning by default), reference target types;
- :meth:`Validator.check_profiles` walks the resource again against each profile: the
  profile's tree has the profile's cardinalities, slicing, fixed and pattern values,
  bindings (extensible/preferred too, with "not checked" notes for code systems the server
  does not hold), type profiles and its *own* invariants (the base ones ran already). The
  issues it finds that the base walk also found are dropped, so what remains is what the
  profiles add; each of those names the profile.

A profile validation therefore costs one base walk plus a cheaper profile walk, made cheaper
still by shortcuts that change no issue (``ValidationOptions.shortcuts``, compared with the full
walks by tests/validation/test_shortcuts.py): the profile walk leaves out the values whose checks
can only repeat the base walk's (:meth:`_Compiler.inert`, :meth:`_Compiler.pruned`), and
invariants that hold for want of the elements they look at are not evaluated
(:func:`~fhir_server.validation.invariants.absent_keys`).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir_server.model.outcome import Issue
from fhir_server.validation import slicing
from fhir_server.validation.bindings import BindingFactory, ValueSets
from fhir_server.validation.checks import string_checks, type_checks
from fhir_server.validation.invariants import InvariantEngine
from fhir_server.validation.primitives import build_primitives
from fhir_server.validation.profiles import ProfileRegistry
from fhir_server.validation.structure import KNOWN, Node, StructureValidator, _Compiler, issue_key

ERRORS = ("error", "fatal")
NAMED_MEMO = 4096  # profile issues kept with the profile named (then forgotten): the same ones recur


@dataclass(frozen=True)
class ValidationOptions:
    """How strict the base walk is (the profile walks follow the profiles)."""

    unknown_extension: str | None = "warning"  # severity for an extension nobody defines here; None: silent
    invariants: bool = True  # evaluate FHIRPath invariants
    example_urls: bool = True  # False: URLs on example.org, acme.com... are errors (the HL7 validator's "examples")
    security_checks: bool = False  # True: HTML-looking text in strings is an error
    contained: bool = True  # False: contained resources are not validated
    # False: no shortcut (every node walked again by the profile walks, every invariant evaluated): the same
    # issues, slower; the reference the tests compare the shortcuts with
    shortcuts: bool = True


@dataclass
class ProfileReport:
    """What validating against profiles found, beyond the base validation."""

    issues: list[Issue] = field(default_factory=list)  # profile issues (each names its profile)
    unknown: list[str] = field(default_factory=list)  # profiles asked for that are not known here
    checked: list[str] = field(default_factory=list)  # profiles the resource was checked against

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity in ERRORS]


class Validator:
    """Base validation of any R4 type and profile validation; see the module documentation."""

    def __init__(self, registry: ProfileRegistry | None = None, options: ValidationOptions | None = None) -> None:
        self.registry = registry = registry or ProfileRegistry()
        self.options = options = options or ValidationOptions()
        self.engine = InvariantEngine()
        primitives = build_primitives(registry.core_structures())
        value_sets = ValueSets(registry.expansions, registry.value_set, registry.code_system,
                               registry.code_system_of_value_set)
        terminology = BindingFactory(value_sets)
        self.terminology = terminology
        checks = type_checks([*registry.expansions, *registry.value_set_urls()])
        self.base_compiler = _Compiler(registry, self.engine, terminology, primitives, slicing=slicing,
                                       notes=registry.notes, checks=checks)
        self.profile_compiler = _Compiler(registry, self.engine, terminology, primitives, profile=True,
                                          base_invariants=registry.base_invariants, slicing=slicing,
                                          notes=registry.notes)
        strings = string_checks(options.example_urls, options.security_checks)
        self.base = StructureValidator(
            compiler=self.base_compiler, invariants=options.invariants, resource_types=registry.resource_types,
            structures=registry.resource_definition, extensions=self._base_extension,
            unknown_extension=options.unknown_extension, conforms=self.conforms, strings=strings,
            contained=options.contained, skip_absent=options.shortcuts)
        self._named: dict[tuple[Issue, str], Issue] = {}  # (issue, profile) -> the issue naming it
        self.walker = StructureValidator(
            compiler=self.profile_compiler, invariants=options.invariants, resource_types=registry.resource_types,
            structures=registry.resource_definition, extensions=self._profile_extension,
            unknown_extension=options.unknown_extension, nested=False, conforms=self.conforms,
            skip_inert=options.shortcuts, skip_absent=options.shortcuts)

    # -- what StructureValidator offers -----------------------------------------------------

    def validate(self, resource: Any) -> list[Issue]:
        """Base validation (the R4 definition of the resource's type)."""
        return self.base.validate(resource)

    def knows(self, resource_type: str) -> bool:
        return self.base.knows(resource_type)

    @property
    def skipped_invariants(self) -> dict[str, str]:
        return self.base.skipped_invariants

    # -- profiles ---------------------------------------------------------------------------

    def knows_profile(self, canonical: str) -> bool:
        sd = self.registry.url(canonical)
        return sd is not None and sd.get("kind") == "resource"

    def check_profiles(self, resource: dict, profiles: Iterable[str],
                       base_issues: Sequence[Issue] | None = None) -> ProfileReport:
        """The issues ``profiles`` add to the base validation (``base_issues``, computed when not given)."""
        report = ProfileReport()
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return report
        rtype = resource["resourceType"]
        if base_issues is None:
            base_issues = self.validate(resource)
        seen = {issue_key(i) for i in base_issues}
        for canonical in dict.fromkeys(profiles):
            sd = self.registry.url(canonical)
            if sd is None or sd.get("kind") != "resource":
                report.unknown.append(canonical)
                continue
            report.checked.append(canonical)
            label = sd.get("url", canonical)
            if sd.get("type") != rtype:
                report.issues.append(Issue("error", "invalid", f"profile {label} is for {sd.get('type')} "
                                                               f"resources, not {rtype}", rtype))
                continue
            found: list[Issue] = []
            try:
                node = self.profile_compiler.resource_node(sd)
                self.walker.walk(node, resource, rtype, found)
            except Exception as exc:  # a profile the compiler chokes on must not fail the request
                found.append(Issue("error", "exception", f"validation against profile {label} failed "
                                                         f"unexpectedly: {exc!r}"))
            for issue in found:
                key = issue_key(issue)
                if key in seen:
                    continue
                seen.add(key)
                report.issues.append(self._naming(issue, label))
        return report

    def validate_all(self, resource: Any, profiles: Sequence[str] = (), *, claimed: bool = True,
                     unknown_severity: str = "warning") -> list[Issue]:
        """Base validation, then ``profiles`` and (``claimed``) the resource's ``meta.profile``.

        For integrators' tools: profile issues keep their severity; a profile that is not
        known is an issue of ``unknown_severity`` (explicitly requested ones: error).
        """
        issues = self.validate(resource)
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return issues
        wanted = list(profiles)
        claims = claimed_profiles(resource) if claimed else []
        report = self.check_profiles(resource, wanted + claims, issues)
        for canonical in report.unknown:
            explicit = canonical in wanted
            issues.append(Issue("error" if explicit else unknown_severity, "not-supported",
                                f"profile {canonical} is not known to this server: not checked",
                                None if explicit else f"{resource['resourceType']}.meta.profile"))
        return issues + report.issues

    def _naming(self, issue: Issue, label: str) -> Issue:
        """:func:`_naming`, remembered: issues are values, and a profile's notes recur from one resource to the next."""
        key = (issue, label)
        named = self._named.get(key)
        if named is None:
            named = _naming(issue, label)
            if len(self._named) >= NAMED_MEMO:
                self._named.clear()
            self._named[key] = named
        return named

    # -- hooks the walk calls ---------------------------------------------------------------

    def _extension_node(self, compiler: _Compiler, url: str, core_only: bool = False) -> Any:
        sd = self.registry.extension(url)
        if sd is None:
            return None
        if core_only and not self.registry.is_core(sd):
            return KNOWN  # defined in profiles/: checked by the profile walks only
        try:
            return compiler.datatype_node(sd)
        except (KeyError, TypeError, ValueError) as exc:
            self.registry.notes.setdefault(url, f"extension {url} could not be compiled: {exc}")
            return None

    def _base_extension(self, url: str) -> Any:
        return self._extension_node(self.base_compiler, url, core_only=True)

    def _profile_extension(self, url: str) -> Node | None:
        return self._extension_node(self.profile_compiler, url)

    def conforms(self, canonical: str, value: Any) -> bool:
        """Does ``value`` (a resource or a data type instance) meet profile ``canonical``, base rules included?"""
        sd = self.registry.url(canonical)
        if sd is None:
            return False
        issues: list[Issue] = []
        if sd.get("kind") == "resource":
            if not isinstance(value, dict) or value.get("resourceType") != sd.get("type"):
                return False
            base = self.base.validate(value)
            if any(i.severity in ERRORS for i in base):
                return False
            self.walker.walk(self.profile_compiler.resource_node(sd), value, sd["type"], issues)
        else:
            if not isinstance(value, dict):
                return False
            base_node = self.base_compiler.datatype_node(self.registry.core(sd["type"]) or sd)
            self.base.walk_value(base_node, value, sd["type"], issues, {})
            self.walker.walk_value(self.profile_compiler.datatype_node(sd), value, sd["type"], issues, {})
        return not any(i.severity in ERRORS for i in issues)


def claimed_profiles(resource: dict) -> list[str]:
    """The canonical URLs in ``meta.profile`` (strings only)."""
    meta = resource.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    return [p for p in profiles if isinstance(p, str)] if isinstance(profiles, list) else []


def _naming(issue: Issue, label: str) -> Issue:
    """The issue, its message naming the profile when it does not already."""
    if label in issue.diagnostics or "(profile " in issue.diagnostics:
        return issue
    diagnostics = f"{issue.diagnostics} (profile {label})"
    if hasattr(issue, "plain"):
        return type(issue)(issue.severity, issue.code, diagnostics, issue.expression, issue.plain)
    return Issue(issue.severity, issue.code, diagnostics, issue.expression)
