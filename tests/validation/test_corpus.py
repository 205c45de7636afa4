"""Conformance corpus: the HL7 validator test cases (R4 subset) as tests.

``<repo>/../shared/data/validator-test-cases/manifest-r4-subset.json`` lists public test cases of
the HL7 reference validator (FHIR/fhir-test-cases, see that folder's SOURCES entry in
``shared/data/SOURCES.md``) with the reference validator's verdict. Each case here validates the
file as the reference validator does by default (base R4 definitions, the profiles the resource
claims, unknown extensions are errors) with the case's options, and our valid/invalid verdict must
be the manifest's. Cases that need what this validator does not do (a terminology server, a server
to resolve references) are skipped with the reason; the few it gets wrong are listed in
``KNOWN_MISSES`` with the reason (they must keep failing: strict xfail). ``test_pass_rate`` prints
the pass rate (run with ``-s``); docs/conformance.md records it.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from fhir_server.model import jsonio
from fhir_server.validation.cli import strip_json_comments
from fhir_server.validation.profiles import ProfileRegistry
from fhir_server.validation.validator import ValidationOptions, Validator

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "data" / "validator-test-cases"
MANIFEST = CORPUS / "manifest-r4-subset.json"

TERMINOLOGY = ("needs a terminology server: the reference validator's errors are about codes and displays of "
               "LOINC, SNOMED CT, CVX... (display names, unknown codes, value sets defined by filters)")
SKIPPED_OPTIONS = {
    "validateReference": "resolves references against a FHIR server (CHECK_EXISTS_AND_TYPE); validation here is "
                         "offline",
}
# Cases this validator judges differently from the reference validator, and why. Each is a strict xfail:
# when one starts passing, remove it here.
KNOWN_MISSES = {
    "obs-temp-bad": "the reference validator applies the R4 vital-signs profiles to an Observation whose category is "
                    "vital-signs and picks bodytemp (LOINC 8310-5 required); this validator applies no implicit "
                    "profile, only the claimed one (here unknown: a warning)",
    "encounter-period": "per-1 compares a date (2023-06-21) with a dateTime: FHIRPath says the comparison is empty "
                        "(different precisions), so the invariant is not violated; the reference validator counts "
                        "the empty result as a failure",
}


def _cases() -> list:
    if not MANIFEST.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"validator test cases not found at {CORPUS} (they sit beside the repository)"))]
    params = []
    for case in json.loads(MANIFEST.read_text())["summary"]:
        marks = []
        reason = skip_reason(case)
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        elif case["name"] in KNOWN_MISSES:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[case["name"]]))
        params.append(pytest.param(case, id=case["name"], marks=marks))
    return params


def skip_reason(case: dict) -> str | None:
    if case.get("requires_terminology_server"):
        return TERMINOLOGY
    for option, reason in SKIPPED_OPTIONS.items():
        if option in (case.get("validator_options") or {}):
            return reason
    return None


def options_of(case: dict) -> ValidationOptions:
    given = case.get("validator_options") or {}
    return ValidationOptions(unknown_extension="error",
                             example_urls=given.get("examples", True) is not False,
                             security_checks=bool(given.get("security-checks")),
                             contained=given.get("validateContains") != "IGNORE")


@lru_cache(maxsize=None)
def _registry() -> ProfileRegistry:
    return ProfileRegistry(folders=[])  # base R4 only: the corpus cases need no profile of ours


@lru_cache(maxsize=None)
def _validator(options: ValidationOptions) -> Validator:
    return Validator(_registry(), options)


def verdict(case: dict) -> tuple[bool, list[str]]:
    """(valid?, the errors) as this validator sees the case's file."""
    data = (CORPUS / case["file"]).read_bytes()
    try:
        if (case.get("validator_options") or {}).get("allow-comments"):
            data = strip_json_comments(data.decode("utf-8-sig")).encode()
        resource = jsonio.loads(data)
    except (jsonio.JSONError, UnicodeDecodeError) as exc:
        return False, [f"not JSON: {exc}"]
    issues = _validator(options_of(case)).validate_all(resource)
    found = [f"{i.expression}: {i.diagnostics}" for i in issues if i.severity in ("error", "fatal")]
    return not found, found


@pytest.mark.parametrize("case", _cases())
def test_case_verdict_matches_the_reference_validator(case):
    valid, found = verdict(case)
    expected = [f"{e['expression']}: {e['text']}" for e in case["expected_errors"]]
    if case["expected_valid"]:
        assert valid, f"{case['name']} is valid for the reference validator; we found: {found}"
    else:
        assert not valid, f"{case['name']} is invalid for the reference validator ({expected}); we found nothing"


def test_pass_rate(capsys):
    if not MANIFEST.is_file():
        pytest.skip(reason=f"validator test cases not found at {CORPUS}")
    cases = json.loads(MANIFEST.read_text())["summary"]
    checked = [c for c in cases if not skip_reason(c)]
    passed = [c for c in checked if verdict(c)[0] == c["expected_valid"]]
    misses = sorted(c["name"] for c in checked if c not in passed)
    skipped_but_agreeing = [c for c in cases if skip_reason(c) and verdict(c)[0] == c["expected_valid"]]
    rate = len(passed) / len(checked)
    with capsys.disabled():
        print(f"\nvalidator test cases: {len(cases)}; checked {len(checked)}, skipped {len(cases) - len(checked)}; "
              f"verdict agrees on {len(passed)}/{len(checked)} = {rate:.1%}; misses: {', '.join(misses) or 'none'}; "
              f"skipped cases whose verdict agrees anyway: {len(skipped_but_agreeing)}")
    assert set(misses) == set(KNOWN_MISSES)
    assert rate >= 0.95
