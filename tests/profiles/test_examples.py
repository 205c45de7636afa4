"""The record's profiles (``profiles/``) and their examples (``profiles/examples/manifest.json``).

Two groups of tests:

- *content* tests, which need no profile engine: every file is well-formed FHIR JSON of its
  kind with a unique canonical URL under the documented base (or an official one listed in
  ``profiles/SOURCES.md``), every reference between our definitions resolves, every example is
  in the manifest, valid examples pass base R4 validation, and the FHIRPath invariants of our
  profiles compile and say what the manifest says they say;
- *verdict* tests: each example validated against its profile by the profile engine
  (``fhir_server.validation.profiles``) must get the manifest's verdict, and an invalid one an
  error at the expected place. They are skipped, saying why, only while that module does not
  exist.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy import evaluate
from fhirpathpy.models import models

from fhir_server.definitions import Definitions
from fhir_server.validation import StructureValidator

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"
EXAMPLES = PROFILES / "examples"
BASE = "https://dmp.example.org/fhir"
KINDS = ("StructureDefinition", "ValueSet", "CodeSystem", "SearchParameter", "OperationDefinition")
# Publishers of the official definitions copied here (each copy is listed in profiles/SOURCES.md).
OFFICIAL = ("https://hl7.fr/ig/fhir/core/", "https://mos.esante.gouv.fr/NOS/",
            "https://interop.esante.gouv.fr/ig/fhir/",
            "http://hl7.org/fhir/5.0/StructureDefinition/")  # (FR Core defines an R5 cross-version extension)
# Code systems our definitions name but nobody here holds (validators report them "not checked").
EXTERNAL_SYSTEMS = {
    "http://loinc.org", "http://terminology.hl7.org/CodeSystem/claim-type",
    "http://terminology.hl7.org/CodeSystem/v3-ActReason", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
    "http://hl7.org/fhir/document-reference-status", "http://hl7.org/fhir/identifier-use",
    "https://smt.esante.gouv.fr/terminologie-ccam", "https://smt.esante.gouv.fr/terminologie-bdpm",
    "https://smt.esante.gouv.fr/terminologie-cip_ucd", "https://smt.esante.gouv.fr/terminologie-atc",
    "https://mos.esante.gouv.fr/NOS/TRE_A10-NomenclatureURN/FHIR/TRE-A10-NomenclatureURN",
    "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune",
}
R4 = models["r4"]
# Examples the engine does not (yet) judge as the manifest says, with the reason; each needs a decision.
# strict: when one starts passing, remove it here. (Empty since the FR Core 2.1.0 deathPlace and birth-place INSEE
# code shapes are accepted by dmp-patient's own slices: profiles/README.md, "FR Core 2.1.0 and 2.2", note 1.)
KNOWN_DISAGREEMENTS: dict[str, str] = {}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def definitions() -> dict[str, dict]:
    """Every definition file of profiles/, by file name."""
    return {p.name: _load(p) for p in sorted(PROFILES.glob("*.json"))}


@lru_cache(maxsize=None)
def by_url() -> dict[str, dict]:
    return {d["url"]: d for d in definitions().values()}


@lru_cache(maxsize=None)
def manifest() -> list[dict]:
    return _load(EXAMPLES / "manifest.json")["examples"]


def ours(d: dict) -> bool:
    return d["url"].startswith(BASE + "/")


def example(entry: dict) -> dict:
    return _load(EXAMPLES / entry["file"])


def _canonical(value: str) -> str:
    return value.split("|")[0]


# ------------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("name", sorted(definitions()), ids=str)
def test_file_is_a_definition_of_its_kind(name):
    d = definitions()[name]
    kind, _, rest = name.partition("-")
    assert kind in KINDS, f"{name}: profiles/ holds {', '.join(KINDS)} files only"
    assert d.get("resourceType") == kind
    assert rest == f"{d['id']}.json", f"{name}: file name and id differ ({d['id']})"
    assert isinstance(d.get("url"), str) and d["url"]


def test_canonical_urls_are_unique_and_under_the_documented_base_or_official():
    urls = [d["url"] for d in definitions().values()]
    assert len(urls) == len(set(urls)), sorted(u for u in urls if urls.count(u) > 1)
    sources = (PROFILES / "SOURCES.md").read_text(encoding="utf-8")
    for name, d in definitions().items():
        if ours(d):
            assert d["url"] == f"{BASE}/{d['resourceType']}/{d['id']}", name
            assert d["publisher"] == "fhir-dmp-server project", name
        else:
            assert d["url"].startswith(OFFICIAL), f"{name}: {d['url']} is neither ours nor an official canonical"
            assert name in sources, f"{name} is a copy: profiles/SOURCES.md must say where it comes from"


def test_readme_documents_the_base_and_every_profile():
    readme = (PROFILES / "README.md").read_text(encoding="utf-8")
    assert BASE in readme
    for d in definitions().values():
        if d["resourceType"] == "StructureDefinition" and ours(d):
            assert d["id"] in readme, f"{d['id']} is not described in profiles/README.md"


def _core_structure(url: str) -> bool:
    """An R4 core type, profile or extension: the server's R4 subset and conformance pack hold those."""
    return url.startswith("http://hl7.org/fhir/StructureDefinition/")


def _references(d: dict) -> set[str]:
    """Canonicals one of our definitions points at: base, type profiles, bindings, imported value sets."""
    refs: set[str] = set()
    if d["resourceType"] == "StructureDefinition":
        refs.add(d["baseDefinition"])
        for element in d["differential"]["element"]:
            for t in element.get("type", []):
                refs.update(t.get("profile", []))
                refs.update(p for p in t.get("targetProfile", []) if not _core_structure(p))
            if "binding" in element:
                refs.add(element["binding"]["valueSet"])
    elif d["resourceType"] == "ValueSet":
        for include in d["compose"]["include"]:
            refs.update(include.get("valueSet", []))
            if "system" in include and include["system"] not in EXTERNAL_SYSTEMS:
                refs.add(include["system"])
    return {_canonical(r) for r in refs}


def test_every_reference_of_our_definitions_resolves():
    known = set(by_url())
    missing = {}
    for name, d in definitions().items():
        if ours(d):
            unresolved = {r for r in _references(d) if r not in known and not _core_structure(r)}
            if unresolved:
                missing[name] = sorted(unresolved)
    assert not missing


# ------------------------------------------------------------------------------------------------ manifest
def test_every_example_is_in_the_manifest_and_every_entry_is_well_formed():
    files = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.json") if p.name != "manifest.json"}
    listed = [e["file"] for e in manifest()]
    assert len(listed) == len(set(listed)), "an example is listed twice"
    assert files == set(listed), {"not listed": sorted(files - set(listed)),
                                  "listed, no file": sorted(set(listed) - files)}
    for entry in manifest():
        assert entry["expected"] in ("valid", "invalid"), entry
        assert Path(entry["file"]).name.startswith(entry["expected"] + "-"), entry["file"]
        assert entry.get("why"), entry["file"]
        profile = by_url().get(entry["profile"])
        assert profile is not None, f"{entry['file']}: unknown profile {entry['profile']}"
        resource = example(entry)
        assert resource["resourceType"] == profile["type"], entry["file"]
        if entry["expected"] == "invalid":
            issue = entry["issue"]
            assert issue["expression"].split(".")[0].split("[")[0] == profile["type"], entry["file"]
            if "key" in issue:
                assert issue["key"] in _keys(profile), f"{entry['file']}: {issue['key']} is not in {profile['id']}"


def _chain(profile: dict) -> list[dict]:
    """The profile and the profiles it derives from (those held in profiles/)."""
    out = [profile]
    while (parent := by_url().get(_canonical(out[-1].get("baseDefinition", "")))) is not None:
        out.append(parent)
    return out


def _keys(profile: dict) -> set[str]:
    keys = set()
    for sd in _chain(profile):
        for element in sd.get("snapshot", sd["differential"])["element"]:
            keys.update(c["key"] for c in element.get("constraint", []))
        for element in sd["differential"]["element"]:
            keys.update(c["key"] for c in element.get("constraint", []))
    return keys


def _resource_profiles() -> list[dict]:
    return [d for d in definitions().values()
            if d["resourceType"] == "StructureDefinition" and d.get("kind") == "resource"
            and d.get("derivation") == "constraint"]


def test_every_resource_profile_has_valid_and_invalid_examples():
    for profile in _resource_profiles():
        verdicts = {e["expected"] for e in manifest() if e["profile"] == profile["url"]}
        assert verdicts == {"valid", "invalid"}, f"{profile['id']}: examples {sorted(verdicts)}"


def test_both_fr_core_shapes_are_covered():
    shapes = {e.get("shape") for e in manifest() if e["expected"] == "valid"
              and by_url()[e["profile"]]["id"].startswith("dmp-")}
    assert {"FR Core 2.1.0", "FR Core 2.2"} <= shapes


# ------------------------------------------------------------------------------------------------ content
@pytest.fixture(scope="module")
def base_validator() -> StructureValidator:
    return StructureValidator(Definitions())


@pytest.mark.parametrize("entry", [e for e in manifest() if e["expected"] == "valid"], ids=lambda e: e["file"])
def test_valid_example_passes_base_r4_validation(base_validator, entry):
    errors = [f"{i.expression}: {i.diagnostics}" for i in base_validator.validate(example(entry))
              if i.severity in ("error", "fatal")]
    assert errors == []


def _our_constraints() -> list[tuple[dict, dict, dict]]:
    return [(d, element, c) for d in definitions().values() if d["resourceType"] == "StructureDefinition"
            and ours(d) for element in d["differential"]["element"] for c in element.get("constraint", [])]


@pytest.mark.parametrize("profile,element,constraint", _our_constraints(),
                         ids=lambda x: x.get("key") or x.get("id") if isinstance(x, dict) else str(x))
def test_invariant_is_well_formed_and_compiles(profile, element, constraint):
    assert constraint["key"] and constraint["human"] and constraint["expression"]
    assert constraint["severity"] in ("error", "warning")
    assert constraint["source"] == profile["url"]
    fhirpath_compile(constraint["expression"], R4)


def _root_constraints(profile: dict) -> list[dict]:
    return [c for element in profile["differential"]["element"] if element["path"] == profile["type"]
            for c in element.get("constraint", [])]


@pytest.mark.parametrize("entry", [e for e in manifest() if e["profile"].startswith(BASE)], ids=lambda e: e["file"])
def test_our_root_invariants_agree_with_the_manifest(entry):
    """Resource-level invariants hold on valid examples; the one an invalid example names fails on it."""
    profile = by_url()[entry["profile"]]
    resource = example(entry)
    failing = {c["key"] for c in _root_constraints(profile) if c["severity"] == "error"
               and evaluate(resource, c["expression"], {}, R4) == [False]}
    if entry["expected"] == "valid":
        assert failing == set()
    elif entry["issue"]["expression"] == profile["type"] and "key" in entry["issue"]:
        assert entry["issue"]["key"] in failing


def test_search_parameters_extract_values_from_the_care_history_examples():
    params = {d["code"]: d for d in definitions().values() if d["resourceType"] == "SearchParameter"}
    assert set(params) == {"service-date", "type", "code"}
    eob = [example(e) for e in manifest()
           if e["expected"] == "valid" and e["profile"] == f"{BASE}/StructureDefinition/dmp-explanationofbenefit"]
    assert eob
    for code, sp in params.items():
        assert sp["base"] == ["ExplanationOfBenefit"] and sp["status"] == "active"
        assert sp["type"] == ("date" if code == "service-date" else "token")
        for resource in eob:
            values = evaluate(resource, sp["expression"], {}, R4)
            assert values, f"{code} extracts nothing from {resource['id']}"


# ------------------------------------------------------------------------------------------------ verdicts
def _engine():
    return pytest.importorskip(
        "fhir_server.validation.profiles",
        reason="the profile engine (fhir_server.validation.profiles, issue 5 item 1) is not there yet: "
               "the examples' verdicts cannot be checked; the content tests above still run")


def _normalise(expression: str | None) -> str:
    return re.sub(r"\[x\]$", "", expression or "")


def _at(issue_expression: str, expected: str) -> bool:
    got = _normalise(issue_expression)
    return got == expected or got.startswith(expected + ".") or got.startswith(expected + "[")


def _verdict_cases() -> list:
    return [pytest.param(e, id=e["file"], marks=[pytest.mark.xfail(strict=True, reason=KNOWN_DISAGREEMENTS[e["file"]])]
                         if e["file"] in KNOWN_DISAGREEMENTS else []) for e in manifest()]


def test_known_disagreements_are_examples():
    assert set(KNOWN_DISAGREEMENTS) <= {e["file"] for e in manifest()}


@pytest.mark.parametrize("entry", _verdict_cases())
def test_example_gets_its_verdict(entry):
    engine = _engine()
    issues = engine_validate(engine, example(entry), entry["profile"])
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    shown = [f"{i.expression}: {i.diagnostics}" for i in errors]
    if entry["expected"] == "valid":
        assert shown == [], entry["why"]
        return
    expected = entry["issue"]
    matching = [i for i in errors if _at(i.expression, expected["expression"])
                and ("key" not in expected or expected["key"] in i.diagnostics)]
    assert matching, f"expected an error at {expected['expression']} {expected.get('key', '')} ({entry['why']}); " \
                     f"got {shown}"


def engine_validate(engine, resource: dict, profile: str) -> list:
    """Base validation, the example's profile and the profiles it claims, as the server does on write."""
    return _validator(engine).validate_all(resource, [profile])


@lru_cache(maxsize=None)
def _validator(engine):
    from fhir_server.validation.validator import Validator

    registry = engine.ProfileRegistry(folders=[PROFILES])
    assert registry.problems == [], registry.problems
    return Validator(registry)
