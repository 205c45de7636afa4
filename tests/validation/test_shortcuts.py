"""The validator's shortcuts change no issue.

What makes validation cheaper must not change what it says: the profile walks leave out what can
only repeat the base walk (:meth:`_Compiler.inert`, :meth:`_Compiler.pruned`), and invariants that
hold for want of their elements are not evaluated (:func:`invariants.absent_keys`). Two tests:

1. *differential*: a validator with the shortcuts and one without (``ValidationOptions(shortcuts=False)``)
   give the same issues (severity, code, diagnostics, expression, in the same order) on a corpus (the
   examples of ``profiles/examples``, the R4 fixtures, the insurer's synthetic care items and patients,
   resources for the test profiles) and deterministic broken variants of it (:mod:`.mutants`);
2. *expectations*: ``data/validation-expectations.json`` holds invalid resources (the corpus's, and one
   broken variant of each of its resources) with the issues the validator gave before the shortcuts
   existed (commit 32b948e); both validators must give exactly those. Regenerate it only for an
   intended change of the issues: ``.venv/bin/python -m tests.validation.test_shortcuts --write``.

The memos of values already seen (verdicts on string primitives, a profile's notes on codes it cannot
check, issues named with their profile) are on in both validators: the second test, run over
resources in a row, is what compares them with the validator before them.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fhir_server.definitions import Definitions
from fhir_server.model import jsonio
from fhir_server.validation.profiles import ProfileRegistry
from fhir_server.validation.validator import ValidationOptions, Validator
from tests.validation.mutants import mutants

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "profiles" / "examples" / "manifest.json"
R4_FIXTURES = REPO / "tests" / "fixtures" / "r4-examples"
TEST_PROFILES = REPO / "tests" / "fixtures" / "profiles" / "test"
EXPECTATIONS = Path(__file__).parent / "data" / "validation-expectations.json"
T = "https://test.example.org/fhir/StructureDefinition/"
MUTANTS_PER_RESOURCE = 8


def corpus(definitions: Definitions) -> list[tuple[str, dict, list[str]]]:
    """(name, resource, profiles asked for explicitly) of the resources the tests start from."""
    from fhir_server.carehistory.synthetic import SyntheticInsurer
    from tests.validation.test_profiles import observation, patient

    out = []
    for entry in json.loads(MANIFEST.read_text())["examples"]:
        resource = jsonio.loads((MANIFEST.parent / entry["file"]).read_bytes())
        out.append((f"example:{entry['file']}", resource, [entry["profile"]]))
    for path in sorted(R4_FIXTURES.glob("*.json")):
        out.append((f"r4:{path.name}", jsonio.loads(path.read_bytes()), []))
    insurer = SyntheticInsurer(3, seed=8, now=datetime(2025, 6, 1, tzinfo=timezone.utc))
    for i in range(3):
        out.append((f"insurer:patient-{i}", insurer.patient(i), []))
        out += [(f"insurer:item-{i}-{n}", item, []) for n, item in enumerate(insurer.care_items(i)[:6])]
    out += [("test:patient", patient(), [T + "test-patient", T + "test-patient-strict"]),
            ("test:observation", observation(), [T + "test-observation"])]
    for name, resource, profiles in out:  # what a write checks too: the type's registry profiles
        entry = definitions.served.get(resource.get("resourceType"))
        profiles[:0] = [p for p in (entry.profiles if entry else ()) if p not in profiles]
    return out


def cases(definitions: Definitions, per_resource: int = MUTANTS_PER_RESOURCE) -> list[tuple[str, dict, list[str]]]:
    """The corpus and ``per_resource`` broken variants of each of its resources."""
    out = []
    for number, (name, resource, profiles) in enumerate(corpus(definitions)):
        out.append((name, resource, profiles))
        for index, (what, variant) in enumerate(mutants(resource, seed=number, count=per_resource)):
            out.append((f"{name}#{index}:{what}", variant, profiles))
    return out


def issues_of(validator: Validator, resource: dict, profiles: list[str]) -> list[list]:
    return [[i.severity, i.code, i.diagnostics, i.expression] for i in validator.validate_all(resource, profiles)]


@pytest.fixture(scope="module")
def definitions() -> Definitions:
    return Definitions()


@pytest.fixture(scope="module")
def validators(definitions) -> tuple[Validator, Validator]:
    """(with shortcuts, without), each with its own registry and compiled trees."""
    def make(shortcuts: bool) -> Validator:
        registry = ProfileRegistry(definitions, folders=[REPO / "profiles", TEST_PROFILES])
        return Validator(registry, ValidationOptions(shortcuts=shortcuts))
    return make(True), make(False)


def test_shortcuts_give_the_issues_of_the_full_walks(definitions, validators):
    fast, full = validators
    all_cases = cases(definitions)
    assert len(all_cases) > 1000
    differences = []
    invalid = 0
    for name, resource, profiles in all_cases:
        expected = issues_of(full, resource, profiles)
        invalid += any(i[0] in ("error", "fatal") for i in expected)
        found = issues_of(fast, resource, profiles)
        if found != expected:
            differences.append(f"{name}:\n  full walks: {expected}\n  shortcuts:  {found}")
    assert not differences, f"{len(differences)} differences, the first ones:\n" + "\n".join(differences[:3])
    assert invalid > len(all_cases) // 2  # the variants do reach the error paths


def test_shortcuts_skip_the_profile_walk_of_base_types_and_absent_invariants(definitions, validators, monkeypatch):
    """The shortcuts do apply (else the first test proves nothing): fewer nodes walked, fewer evaluations."""
    from fhir_server.carehistory.synthetic import SyntheticInsurer
    from fhir_server.validation.invariants import InvariantEngine
    from fhir_server.validation.structure import StructureValidator

    item = SyntheticInsurer(1, seed=8).care_items(0)[0]
    counts: dict[str, int] = {}
    original_object, original_holds = StructureValidator._object, InvariantEngine.holds

    def spy_object(self, *args, **kwargs):
        counts["objects"] = counts.get("objects", 0) + 1
        return original_object(self, *args, **kwargs)

    def spy_holds(self, *args, **kwargs):
        counts["invariants"] = counts.get("invariants", 0) + 1
        return original_holds(self, *args, **kwargs)
    monkeypatch.setattr(StructureValidator, "_object", spy_object)
    monkeypatch.setattr(InvariantEngine, "holds", spy_holds)
    measured = []
    for validator in validators:
        validator.validate_all(item)  # compiles
        counts.clear()
        validator.validate_all(item)
        measured.append(dict(counts))
    fast, full = measured
    # measured when written: 37 objects and 5 evaluations with the shortcuts, 52 and 13 without
    assert fast["objects"] <= full["objects"] * 0.8 and fast["invariants"] <= full["invariants"] * 0.5, measured


def test_the_issues_are_those_before_the_shortcuts(validators):
    expectations = jsonio.loads(EXPECTATIONS.read_bytes())
    assert len(expectations["cases"]) >= 150
    for validator in validators:
        for case in expectations["cases"]:
            assert issues_of(validator, case["resource"], case["profiles"]) == case["issues"], case["name"]


def write_expectations() -> None:
    """Regenerate ``data/validation-expectations.json`` with the validator as it is (see the module docs)."""
    definitions = Definitions()
    registry = ProfileRegistry(definitions, folders=[REPO / "profiles", TEST_PROFILES])
    validator = Validator(registry)
    out = []
    for name, resource, profiles in cases(definitions, per_resource=1):  # the broken ones only
        issues = issues_of(validator, resource, profiles)
        if any(severity in ("error", "fatal") for severity, *_ in issues):
            out.append({"name": name, "profiles": profiles, "resource": resource, "issues": issues})
    EXPECTATIONS.parent.mkdir(exist_ok=True)
    with EXPECTATIONS.open("w", encoding="utf-8") as handle:
        handle.write('{"cases": [\n')
        handle.write(",\n".join(jsonio.dumps(case).decode() for case in out))  # decimals as written
        handle.write("\n]}\n")
    print(f"{len(out)} cases, {sum(bool(c['issues']) for c in out)} with issues -> {EXPECTATIONS}")


if __name__ == "__main__" and "--write" in sys.argv:
    write_expectations()
