"""The profile validator: registry, snapshot generation, and each profile feature on small test profiles.

The profiles are the differential-only definitions of ``tests/fixtures/profiles/test`` (made-up
canonical base ``https://test.example.org/fhir``) and the FR Core Practitioner (with its snapshot)
of ``tests/fixtures/profiles/fr-core`` (see SOURCES.md there). Each test breaks one rule and states
the issue expected: severity, code, FHIRPath location, and what the message names.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from fhir_server.definitions import Definitions
from fhir_server.model import jsonio
from fhir_server.model.outcome import Issue
from fhir_server.validation.invariants import EMPTY, InvariantEngine, _with_temporal_values
from fhir_server.validation.profiles import ProfileRegistry, version_key
from fhir_server.validation.snapshot import SnapshotError, generate_snapshot
from fhir_server.validation.validator import ValidationOptions, Validator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"
REPO = Path(__file__).resolve().parents[2]
T = "https://test.example.org/fhir/StructureDefinition/"
PATIENT, STRICT, OBSERVATION = T + "test-patient", T + "test-patient-strict", T + "test-observation"
BUNDLE, BUNDLE_BY_TYPE = T + "test-bundle", T + "test-bundle-by-type"
FR_PRACTITIONER = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-practitioner"
NIR, IPP = "urn:oid:1.2.250.1.213.1.4.8", "urn:oid:1.2.3.4.5"
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
TEST_CODES = "https://test.example.org/fhir/CodeSystem/test-codes"
UCUM = "http://unitsofmeasure.org"


@pytest.fixture(scope="module")
def definitions() -> Definitions:
    return Definitions()


@pytest.fixture(scope="module")
def registry(definitions) -> ProfileRegistry:
    return ProfileRegistry(definitions, folders=[FIXTURES])


@pytest.fixture(scope="module")
def validator(registry) -> Validator:
    return Validator(registry)


def patient(**changes) -> dict:
    resource = {"resourceType": "Patient", "id": "p1", "active": True,
                "identifier": [{"system": NIR, "value": "180012B123456"},
                               {"type": {"coding": [{"system": V2, "code": "PI"}]}, "system": IPP, "value": "42"}],
                "name": [{"family": "Martin", "given": ["Léa"]}], "gender": "female", "birthDate": "1980-01-02"}
    resource.update(changes)
    return resource


def observation(**changes) -> dict:
    resource = {"resourceType": "Observation", "id": "o1", "status": "final",
                "category": [{"coding": [{"system": CAT, "code": "vital-signs"}]}],
                "code": {"coding": [{"system": TEST_CODES, "code": "pulse"}]},
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-03-01T10:00:00+01:00",
                "valueQuantity": {"value": 72, "unit": "/min", "system": UCUM, "code": "/min"}}
    resource.update(changes)
    return resource


def errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity in ("error", "fatal")]


def check(validator: Validator, resource: dict, *profiles: str) -> list[Issue]:
    return validator.validate_all(resource, list(profiles), claimed=False)


def one_error(issues: list[Issue], code: str, expression: str | None) -> Issue:
    found = errors(issues)
    assert len(found) == 1, "expected exactly one error, got:\n" + "\n".join(map(repr, found))
    assert (found[0].code, found[0].expression) == (code, expression), found[0]
    return found[0]


# -- the registry --------------------------------------------------------------------------------------

def test_registry_loads_the_folder_and_the_r4_definitions(registry):
    assert registry.problems == []
    assert registry.url(PATIENT)["type"] == "Patient"
    assert registry.url("http://hl7.org/fhir/StructureDefinition/Patient")["kind"] == "resource"
    assert registry.url("http://hl7.org/fhir/StructureDefinition/Location") is not None  # from the pack
    assert registry.extension("http://hl7.org/fhir/StructureDefinition/patient-birthPlace") is not None
    assert registry.value_set("https://test.example.org/fhir/ValueSet/test-vitals") is not None
    assert registry.code_system(TEST_CODES)["content"] == "complete"
    assert registry.url(T + "nothing-here") is None
    assert {sd["url"] for sd in registry.profiles()} >= {PATIENT, OBSERVATION, FR_PRACTITIONER}
    assert registry.profiles_of_type("Patient") == [PATIENT, STRICT]


def test_canonical_versions(registry, tmp_path):
    assert registry.url(PATIENT + "|1.0.0")["version"] == "1.0.0"
    newer = json.loads((FIXTURES / "test" / "StructureDefinition-test-patient.json").read_text())
    newer["version"] = "1.10.0"
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    both = ProfileRegistry(registry.definitions, folders=[FIXTURES, tmp_path])
    assert both.versions("StructureDefinition", PATIENT) == ["1.0.0", "1.10.0"]
    assert both.url(PATIENT)["version"] == "1.10.0"  # unversioned: the highest
    assert both.url(PATIENT + "|1.0.0")["version"] == "1.0.0"
    assert both.url(PATIENT + "|9.9.9")["version"] == "1.10.0"  # not held: the highest, noted
    assert any("9.9.9" in note for note in both.notes.values())
    assert version_key("2.2.0") > version_key("2.2.0-ballot-2") > version_key("2.1.0")


def test_folders_skip_examples_and_non_conformance_resources(registry):
    files = {path.name for path, _ in registry.local}
    assert "Practitioner-FRCorePractitionerExample.json" not in files
    assert "StructureDefinition-fr-core-practitioner.json" in files


def test_problems_are_listed_not_raised(definitions, tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    bad = {"resourceType": "StructureDefinition", "url": T + "bad", "type": "Patient", "kind": "resource",
           "derivation": "constraint", "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
           "differential": {"element": [{"id": "Patient.nonsense", "path": "Patient.nonsense", "min": 1}]}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    registry = ProfileRegistry(definitions, folders=[tmp_path])
    assert any("broken.json" in p for p in registry.problems)
    assert registry.url(T + "bad") is None
    assert any("Patient.nonsense" in p for p in registry.problems)


# -- snapshot generation -----------------------------------------------------------------------------------

def _by_id(sd: dict) -> dict[str, dict]:
    return {e["id"]: e for e in sd["snapshot"]["element"]}


def test_snapshot_of_a_differential_only_profile(registry):
    sd = registry.url(PATIENT)
    elements = _by_id(sd)
    ids = [e["id"] for e in sd["snapshot"]["element"]]
    assert elements["Patient.identifier"]["min"] == 1 and elements["Patient.identifier"]["slicing"]
    nir = elements["Patient.identifier:nir"]
    assert (nir["sliceName"], nir["min"], nir["max"]) == ("nir", 0, "1")
    assert elements["Patient.identifier:nir.system"]["fixedUri"] == NIR
    assert elements["Patient.identifier:nir.system"]["base"]["path"] == "Identifier.system"  # from the type
    assert elements["Patient.identifier:nir.period"]["path"] == "Patient.identifier.period"  # whole type expanded
    # slices come after the sliced element and its children, in differential order
    assert ids.index("Patient.identifier") < ids.index("Patient.identifier:nir") < ids.index(
        "Patient.identifier:ipp") < ids.index("Patient.active")
    assert elements["Patient.deceased[x]"]["type"] == [{"code": "boolean"}]
    assert [c["key"] for c in elements["Patient"]["constraint"]][-1] == "tp-1"  # added to the base ones
    assert "dom-2" in [c["key"] for c in elements["Patient"]["constraint"]]
    assert "snapshot" not in registry.find("StructureDefinition", PATIENT)  # the loaded resource is untouched


def test_snapshot_type_slice_of_a_choice(registry):
    elements = _by_id(registry.url(OBSERVATION))
    quantity = elements["Observation.value[x]:valueQuantity"]
    assert quantity["type"] == [{"code": "Quantity"}]
    assert elements["Observation.value[x]:valueQuantity.system"]["fixedUri"] == UCUM


def test_snapshot_of_a_profile_on_a_profile(registry):
    elements = _by_id(registry.url(STRICT))
    assert elements["Patient.birthDate"]["min"] == 1
    assert elements["Patient.identifier:nir"]["min"] == 1
    assert elements["Patient.identifier:nir.system"]["fixedUri"] == NIR  # inherited from test-patient


def test_snapshot_of_an_extension_with_sub_extensions(registry):
    elements = _by_id(registry.url(T + "test-complex"))
    assert elements["Extension.extension:kind.url"]["fixedUri"] == "kind"
    assert elements["Extension.extension:kind.value[x]"]["binding"]["strength"] == "required"
    assert elements["Extension.value[x]"]["max"] == "0"


def test_snapshot_of_a_path_based_differential_without_ids(registry):
    sd = {"resourceType": "StructureDefinition", "url": T + "no-ids", "type": "Patient",
          "differential": {"element": [
              {"path": "Patient.identifier", "slicing": {"discriminator": [{"type": "value", "path": "system"}],
                                                         "rules": "open"}},
              {"path": "Patient.identifier", "sliceName": "a", "max": "1"},
              {"path": "Patient.identifier.system", "fixedUri": "urn:a"},
              {"path": "Patient.identifier", "sliceName": "b"},
              {"path": "Patient.identifier.system", "fixedUri": "urn:b"},
              {"path": "Patient.multipleBirthInteger", "maxValueInteger": 9}]}}
    elements = {e["id"]: e for e in generate_snapshot(sd, registry.core("Patient"), registry.url, registry.core)}
    assert elements["Patient.identifier:a.system"]["fixedUri"] == "urn:a"
    assert elements["Patient.identifier:b.system"]["fixedUri"] == "urn:b"
    assert elements["Patient.multipleBirth[x]:multipleBirthInteger"]["type"] == [{"code": "integer"}]


def test_snapshot_refuses_unknown_elements(registry):
    sd = {"url": T + "x", "differential": {"element": [{"id": "Patient.colour", "path": "Patient.colour"}]}}
    with pytest.raises(SnapshotError):
        generate_snapshot(sd, registry.core("Patient"), registry.url, registry.core)


# -- valid resources ---------------------------------------------------------------------------------------------

def test_valid_resources_have_no_errors(validator):
    assert errors(check(validator, patient(), PATIENT)) == []
    assert errors(check(validator, observation(), OBSERVATION)) == []
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": "urn:uuid:1", "resource": patient()},
                        {"fullUrl": "urn:uuid:2", "resource": observation()}]}
    assert errors(check(validator, bundle, BUNDLE)) == []


def test_profile_issues_name_the_profile(validator):
    issues = check(validator, patient(active=False), PATIENT)
    issue = one_error(issues, "value", "Patient.active")
    assert PATIENT in issue.diagnostics


def test_a_profile_of_another_type_is_an_error(validator):
    assert one_error(check(validator, observation(), PATIENT), "invalid", "Observation")


def test_base_issues_are_not_repeated_by_the_profile(validator):
    issues = check(validator, patient(birthDate="1980-13-45"), PATIENT)
    assert [(i.code, i.expression) for i in errors(issues)] == [("value", "Patient.birthDate")]


# -- cardinality, fixed and pattern values, types ----------------------------------------------------------------

def test_required_by_the_profile(validator):
    resource = patient()
    del resource["gender"]
    one_error(check(validator, resource, PATIENT), "required", "Patient.gender")
    assert errors(check(validator, patient(), STRICT)) == []
    del resource["birthDate"]
    resource["gender"] = "male"
    one_error(check(validator, resource, STRICT), "required", "Patient.birthDate")


def test_maximum_lowered_by_the_profile(validator):
    names = [{"family": "A"}, {"family": "B"}, {"family": "C"}]
    issue = one_error(check(validator, patient(name=names), PATIENT), "structure", "Patient.name")
    assert "at most 2" in issue.diagnostics


def test_fixed_value(validator):
    issue = one_error(check(validator, patient(active=False), PATIENT), "value", "Patient.active")
    assert "fixed value true" in issue.diagnostics


def test_pattern_value_in_a_slice(validator):
    resource = patient()
    resource["identifier"][1]["type"]["coding"][0]["code"] = "MR"
    issue = one_error(check(validator, resource, PATIENT), "value", "Patient.identifier[1].type")
    assert "slice 'ipp'" in issue.diagnostics and "pattern" in issue.diagnostics


def test_max_length(validator):
    resource = patient()
    resource["identifier"][0]["value"] = "1" * 16
    issue = one_error(check(validator, resource, PATIENT), "value", "Patient.identifier[0].value")
    assert "at most 15" in issue.diagnostics


def test_choice_type_removed_by_the_profile(validator):
    issue = one_error(check(validator, patient(deceasedDateTime="2020-01-01"), PATIENT), "structure",
                      "Patient.deceasedDateTime")
    assert "allowed: boolean" in issue.diagnostics
    assert errors(check(validator, patient(deceasedBoolean=False), PATIENT)) == []


def test_reference_target_restricted_by_the_profile(validator):
    resource = patient(generalPractitioner=[{"reference": "Organization/o1"}])
    assert errors(validator.validate(resource)) == []  # R4 allows an Organization
    issue = one_error(check(validator, resource, PATIENT), "structure", "Patient.generalPractitioner[0]")
    assert "Organization" in issue.diagnostics and "Practitioner" in issue.diagnostics
    fine = patient(generalPractitioner=[{"reference": "https://x.org/fhir/Practitioner/1/_history/2"}])
    assert errors(check(validator, fine, PATIENT)) == []


def test_reference_target_from_a_target_profile(validator):
    one_error(check(validator, observation(subject={"reference": "Group/g"}), OBSERVATION), "structure",
              "Observation.subject")


def test_reference_targets_of_the_base_definitions(validator):
    resource = observation(performer=[{"reference": "Encounter/e1"}])
    issue = one_error(validator.validate(resource), "structure", "Observation.performer[0]")
    assert "Encounter" in issue.diagnostics
    contained = observation(contained=[{"resourceType": "Device", "id": "d"}], performer=[{"reference": "#d"}])
    one_error(validator.validate(contained), "structure", "Observation.performer[0]")


# -- slicing ---------------------------------------------------------------------------------------------------

def test_value_slicing_cardinality(validator):
    resource = patient()
    resource["identifier"].append({"system": NIR, "value": "2"})
    issue = one_error(check(validator, resource, PATIENT), "structure", "Patient.identifier")
    assert "slice 'nir'" in issue.diagnostics and "at most 1" in issue.diagnostics


def test_items_of_no_slice_are_fine_when_slicing_is_open(validator):
    resource = patient()
    resource["identifier"].append({"system": "urn:other", "value": "x"})
    assert errors(check(validator, resource, PATIENT)) == []


def test_mandatory_slice_missing(validator):
    resource = patient(identifier=[{"system": IPP, "value": "1", "type": {"coding": [{"system": V2, "code": "PI"}]}}])
    issue = one_error(check(validator, resource, STRICT), "required", "Patient.identifier")
    assert "slice 'nir'" in issue.diagnostics


def test_mandatory_slice_missing_with_the_whole_element(validator):
    resource = observation()
    del resource["category"]
    found = errors(check(validator, resource, OBSERVATION))
    assert {(i.code, i.expression) for i in found} == {("required", "Observation.category")}
    assert any("slice 'vital'" in i.diagnostics for i in found)


def test_pattern_slicing_on_this(validator):
    resource = observation(category=[{"coding": [{"system": CAT, "code": "laboratory"}]}])
    issue = one_error(check(validator, resource, OBSERVATION), "required", "Observation.category")
    assert "slice 'vital'" in issue.diagnostics


def test_closed_slicing(validator):
    components = [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 1}},
                  {"code": {"coding": [{"system": "http://loinc.org", "code": "9999-9"}]}, "valueQuantity": {"value": 2}}]
    issue = one_error(check(validator, observation(component=components), OBSERVATION), "structure",
                      "Observation.component[1]")
    assert "closed" in issue.diagnostics and "systolic" in issue.diagnostics


def test_ordered_and_open_at_end_slicing(validator):
    good = [{"system": "urn:test:first", "value": "1"}, {"system": "urn:test:second", "value": "2"},
            {"system": "urn:else", "value": "3"}]
    assert errors(check(validator, observation(identifier=good), OBSERVATION)) == []
    bad = [good[1], good[0]]
    issue = one_error(check(validator, observation(identifier=bad), OBSERVATION), "structure",
                      "Observation.identifier[1]")
    assert "order" in issue.diagnostics
    late = [good[2], good[0]]
    issue = one_error(check(validator, observation(identifier=late), OBSERVATION), "structure",
                      "Observation.identifier[1]")
    assert "openAtEnd" in issue.diagnostics


def test_exists_slicing(validator):
    contacts = [{"organization": {"reference": "Organization/o"}}, {"name": {"family": "Martin"}}]
    assert errors(check(validator, patient(contact=contacts), PATIENT)) == []
    nameless = [{"telecom": [{"system": "phone", "value": "1"}]}]
    issue = one_error(check(validator, patient(contact=nameless), PATIENT), "required", "Patient.contact[0].name")
    assert "slice 'kin'" in issue.diagnostics


def test_type_slicing_of_a_choice(validator):
    resource = observation(valueQuantity={"value": 72, "unit": "bpm"})
    found = errors(check(validator, resource, OBSERVATION))
    assert {(i.code, i.expression) for i in found} == {("required", "Observation.valueQuantity.system"),
                                                       ("required", "Observation.valueQuantity.code")}
    coded = observation(valueCodeableConcept={"text": "high"})
    del coded["valueQuantity"]
    assert errors(check(validator, coded, OBSERVATION)) == []


def test_profile_slicing_of_bundle_entries(validator):
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": "urn:uuid:1", "resource": patient(active=False)},
                        {"fullUrl": "urn:uuid:2", "resource": observation()}]}
    found = errors(check(validator, bundle, BUNDLE))
    assert ("structure", "Bundle.entry[0]") in {(i.code, i.expression) for i in found}  # no slice takes it
    assert ("required", "Bundle.entry") in {(i.code, i.expression) for i in found}  # slice 'patient' is empty


def test_type_slicing_of_bundle_entries(validator):
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": "urn:uuid:1", "resource": patient()},
                        {"fullUrl": "urn:uuid:2", "resource": observation()}]}
    issue = one_error(check(validator, bundle, BUNDLE_BY_TYPE), "structure", "Bundle.entry[1]")
    assert "patient, condition" in issue.diagnostics


def test_extension_slices_are_checked_against_their_definitions(validator):
    nickname = {"url": T + "test-nickname", "valueInteger": 3}
    issue = one_error(check(validator, patient(extension=[nickname]), PATIENT), "structure",
                      "Patient.extension[0].valueInteger")
    assert "slice 'nickname'" in issue.diagnostics and "allowed: string" in issue.diagnostics
    birth_place = {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueString": "Paris"}
    issue = one_error(check(validator, patient(extension=[birth_place]), PATIENT), "structure",
                      "Patient.extension[0].valueString")
    assert "Address" in issue.diagnostics


def test_complex_extension_with_closed_sub_extensions_and_a_required_binding(validator):
    grade = {"url": T + "test-complex", "extension": [{"url": "kind", "valueCode": "glucose"},
                                                      {"url": "remark", "valueString": "x"}]}
    found = errors(check(validator, patient(extension=[grade]), PATIENT))
    assert {(i.code, i.expression) for i in found} == {
        ("code-invalid", "Patient.extension[0].extension[0].valueCode"),
        ("structure", "Patient.extension[0].extension[1]")}
    fine = {"url": T + "test-complex", "extension": [{"url": "kind", "valueCode": "lab"}]}
    assert errors(check(validator, patient(extension=[fine]), PATIENT)) == []


def test_fr_core_practitioner_identifier_slices(validator):
    example = jsonio.loads((FIXTURES / "fr-core" / "examples" / "Practitioner-FRCorePractitionerExample.json")
                           .read_bytes())
    assert errors(check(validator, example, FR_PRACTITIONER)) == []
    wrong = copy.deepcopy(example)
    wrong["identifier"][1]["type"]["coding"][0]["code"] = "ADELI"  # an RPPS number typed as something else
    issue = one_error(check(validator, wrong, FR_PRACTITIONER), "value", "Practitioner.identifier[1].type")
    assert "slice 'rpps'" in issue.diagnostics and FR_PRACTITIONER in issue.diagnostics


# -- bindings ---------------------------------------------------------------------------------------------------

def test_required_binding_to_a_local_value_set_with_a_filter(validator):
    for code in ("pulse", "temp", "vital"):
        resource = observation(code={"coding": [{"system": TEST_CODES, "code": code}]})
        assert errors(check(validator, resource, OBSERVATION)) == [], code
    resource = observation(code={"coding": [{"system": TEST_CODES, "code": "glucose"}]})
    issue = one_error(check(validator, resource, OBSERVATION), "code-invalid", "Observation.code")
    assert "required value set" in issue.diagnostics and "test-vitals" in issue.diagnostics


def test_required_binding_with_an_enumerated_external_system(validator):
    loinc = observation(code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]})
    assert errors(check(validator, loinc, OBSERVATION)) == []
    other = observation(code={"coding": [{"system": "http://loinc.org", "code": "1234-5"}]})
    one_error(check(validator, other, OBSERVATION), "code-invalid", "Observation.code")


def test_extensible_binding_is_a_warning(validator):
    divorced = patient(maritalStatus={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                                  "code": "D"}]})
    issues = check(validator, divorced, PATIENT)
    assert errors(issues) == []
    warning = [i for i in issues if i.severity == "warning" and i.expression == "Patient.maritalStatus"]
    assert len(warning) == 1 and warning[0].code == "code-invalid" and "extensible" in warning[0].diagnostics
    married = patient(maritalStatus={"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                                 "code": "M"}]})
    assert not [i for i in check(validator, married, PATIENT) if i.expression == "Patient.maritalStatus"]


def test_code_system_not_held_is_not_checked_and_says_so(validator):
    snomed = patient(maritalStatus={"coding": [{"system": "http://snomed.info/sct", "code": "87915002"}]})
    notes = [i for i in check(validator, snomed, PATIENT) if i.expression == "Patient.maritalStatus"]
    assert [(i.severity, i.code) for i in notes] == [("information", "informational")]
    assert "not checked" in notes[0].diagnostics and "snomed" in notes[0].diagnostics


def test_base_walk_stays_silent_about_value_sets_it_cannot_expand(validator):
    resource = patient(photo=[{"contentType": "text/x-anything", "url": "http://x.org/a"}])
    assert validator.validate(resource) == []  # mime types: not expandable offline


# -- invariants ---------------------------------------------------------------------------------------------------

def test_profile_invariant(validator):
    issue = one_error(check(validator, patient(name=[{"given": ["Léa"]}]), PATIENT), "invariant", "Patient")
    assert issue.diagnostics.startswith("tp-1: ")


def test_profile_invariant_with_implies(validator):
    resource = observation()
    del resource["effectiveDateTime"]
    issue = one_error(check(validator, resource, OBSERVATION), "invariant", "Observation")
    assert issue.diagnostics.startswith("to-1: ")


def test_base_invariants_run_once(validator, monkeypatch):
    seen: list[str] = []
    original = InvariantEngine.holds

    def spy(self, invariant, *args, **kwargs):
        seen.append(invariant.key)
        return original(self, invariant, *args, **kwargs)
    monkeypatch.setattr(InvariantEngine, "holds", spy)
    # with a contained resource, so that dom-2 (contained.contained.empty()) has something to look at: on a
    # resource without one it holds for want of its element and is not evaluated at all
    resource = patient(contained=[{"resourceType": "Practitioner", "id": "gp"}],
                       generalPractitioner=[{"reference": "#gp"}])
    assert errors(check(validator, resource, PATIENT)) == []
    assert seen.count("dom-2") == 1 and seen.count("tp-1") == 1


def test_precheck_agrees_with_the_engine_on_profile_invariants(monkeypatch):
    """Every pre-check answer of true/empty on the profiles' invariants (ours, FR Core, the record's
    profiles in profiles/ and their valid and invalid examples) is confirmed by fhirpathpy."""
    checked: list[str] = []

    def holds_and_compare(self, invariant, data, members, type_path, resource, root, temporal=None, *rest):
        from fhirpathpy.engine.nodes import ResourceNode
        answer = invariant.precheck(data, members, (resource, root)) if invariant.precheck else None
        if answer is True or answer is EMPTY:
            typed = _with_temporal_values(data, temporal) if temporal and isinstance(data, dict) else data
            focus = typed if type_path is None else ResourceNode.create_node(typed, type_path)
            try:
                truth = invariant.run(focus, {"resource": resource, "rootResource": root})
            except Exception:
                truth = None
            assert truth in (([True], None) if answer is True else ([], None)), (invariant.key, data)
            checked.append(invariant.key)
        return original(self, invariant, data, members, type_path, resource, root, temporal, *rest)

    original = InvariantEngine.holds
    monkeypatch.setattr(InvariantEngine, "holds", holds_and_compare)
    validator = Validator(ProfileRegistry(folders=[REPO / "profiles", FIXTURES]))
    cases = [(patient(), PATIENT), (patient(name=[{"given": ["x"]}]), PATIENT), (observation(), OBSERVATION)]
    manifest = REPO / "profiles" / "examples" / "manifest.json"
    if manifest.is_file():
        for entry in json.loads(manifest.read_text())["examples"]:
            resource = jsonio.loads((manifest.parent / entry["file"]).read_bytes())
            cases.append((resource, entry["profile"]))
    for resource, profile in cases:
        check(validator, resource, profile)
    assert len(checked) > 20


# -- unknown profiles, unknown extensions, options ------------------------------------------------------------

def test_unknown_claimed_profile_is_a_warning(validator):
    resource = patient(meta={"profile": [T + "does-not-exist"]})
    issues = validator.validate_all(resource)
    assert [(i.severity, i.code, i.expression) for i in issues] == [
        ("warning", "not-supported", "Patient.meta.profile")]


def test_claimed_profiles_are_checked(validator):
    resource = patient(active=False, meta={"profile": [PATIENT]})
    one_error(validator.validate_all(resource), "value", "Patient.active")
    assert errors(validator.validate_all(resource, claimed=False)) == []


def test_unknown_extension_is_a_warning_by_default_and_an_error_when_strict(registry, validator):
    resource = patient(extension=[{"url": "https://nobody.example/ext", "valueString": "x"}])
    issues = validator.validate(resource)
    assert [(i.severity, i.code, i.expression) for i in issues] == [("warning", "extension", "Patient.extension[0]")]
    strict = Validator(registry, ValidationOptions(unknown_extension="error"))
    assert [i.severity for i in strict.validate(resource)] == ["error"]
    silent = Validator(registry, ValidationOptions(unknown_extension=None))
    assert silent.validate(resource) == []


def test_unknown_modifier_extension_is_an_error(validator):
    resource = patient(modifierExtension=[{"url": "https://nobody.example/mod", "valueBoolean": True}])
    one_error(validator.validate(resource), "extension", "Patient.modifierExtension[0]")


def test_core_extensions_are_checked_in_base_validation(validator):
    resource = patient(extension=[{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                                   "valueString": "Paris"}])
    one_error(validator.validate(resource), "structure", "Patient.extension[0].valueString")


def test_any_r4_resource_type_is_validated(validator):
    assert validator.validate({"resourceType": "Location", "id": "l1", "status": "active"}) == []
    one_error(validator.validate({"resourceType": "Location", "id": "l1", "status": "sleeping"}),
              "code-invalid", "Location.status")
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Media", "status": "completed"}}]}
    one_error(validator.validate(bundle), "required", "Bundle.entry[0].resource.content")


def test_validation_leaves_the_resource_untouched(validator):
    resource = patient(extension=[{"url": T + "test-nickname", "valueString": "L"}])
    before = copy.deepcopy(resource)
    check(validator, resource, PATIENT, STRICT)
    assert resource == before


def test_official_examples_of_every_type_pass_base_validation(validator):
    """The registry-backed validator on the official R4 examples of *every* resource type (the
    served ones are also covered by test_examples.py with the plain StructureValidator)."""
    corpus = REPO.parent / "shared" / "data" / "r4-spec-examples"
    if not corpus.is_dir():
        pytest.skip(reason=f"official example corpus not found at {corpus}")
    known_invalid = {
        "Observation-clinical-gender.json": "performer references an Encounter (not an allowed target)",
        "MedicationRequest-medrx0301.json": "dispenseRequest.performer references a Practitioner; R4 allows an "
                                            "Organization only",
    }
    failures = {}
    for path in sorted(corpus.glob("*.json")):
        resource = jsonio.loads(path.read_bytes())
        if not isinstance(resource, dict) or "resourceType" not in resource:
            continue
        found = [f"{i.expression}: {i.diagnostics}" for i in errors(validator.validate(resource))]
        if found and path.name not in known_invalid:
            failures[path.name] = found
        if not found and path.name in known_invalid:
            failures[path.name] = ["listed as invalid but validates"]
    assert failures == {}
