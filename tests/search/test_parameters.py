"""The search parameter registry: official R4 definitions split per type, plus custom ones."""
from __future__ import annotations

import pytest

from fhir_server.definitions import Definitions
from fhir_server.search.parameters import (
    SearchParameterRegistry, expression_for_type, part_root, split_expression,
)


@pytest.fixture(scope="module")
def definitions() -> Definitions:
    return Definitions()


@pytest.fixture()
def registry(definitions: Definitions) -> SearchParameterRegistry:
    return SearchParameterRegistry(definitions)


RESOURCE_LEVEL = {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"}


def test_split_expression_respects_parentheses_and_quotes() -> None:
    expr = "(A.value as Quantity) | A.x.where(y = 'a|b') | B.z.where((c | d).exists())"
    assert split_expression(expr) == ["(A.value as Quantity)", "A.x.where(y = 'a|b')",
                                      "B.z.where((c | d).exists())"]
    assert part_root("(Observation.value as Quantity)") == "Observation"
    assert part_root("Patient.name") == "Patient"
    assert part_root("name.given") is None


def test_expression_for_type_keeps_own_parts() -> None:
    expr = "AllergyIntolerance.code | AllergyIntolerance.reaction.substance | Condition.code | Resource.id"
    assert expression_for_type(expr, "AllergyIntolerance") == (
        "AllergyIntolerance.code | AllergyIntolerance.reaction.substance | Resource.id")
    assert expression_for_type(expr, "Condition") == "Condition.code | Resource.id"
    assert expression_for_type("Observation.code", "Patient") is None


def test_every_served_type_has_resource_level_params(registry: SearchParameterRegistry,
                                                     definitions: Definitions) -> None:
    for rtype in definitions.served:
        params = registry.for_type(rtype)
        assert RESOURCE_LEVEL <= set(params), rtype
        assert params["_id"].expression == "Resource.id"
        assert params["_lastUpdated"].type == "date"
        assert ("_text" in params) == (rtype != "Binary")


def test_text_and_content_have_no_expression(registry: SearchParameterRegistry) -> None:
    params = registry.for_type("Patient")
    assert params["_text"].expression is None
    assert params["_text"].type == "string"
    assert params["_content"].expression is None


def test_union_is_split_per_type(registry: SearchParameterRegistry) -> None:
    code = registry.get("Condition", "code")
    assert code is not None and code.type == "token"
    assert code.expression == "Condition.code"
    assert code.url == "http://hl7.org/fhir/SearchParameter/clinical-code"
    assert registry.get("AllergyIntolerance", "code").expression == (
        "AllergyIntolerance.code | AllergyIntolerance.reaction.substance")
    assert registry.get("Observation", "date").expression == "Observation.effective"
    assert registry.get("Patient", "email").expression == "Patient.telecom.where(system='email')"
    assert registry.get("MedicationStatement", "medication").expression == (
        "(MedicationStatement.medication as Reference)")
    patient = registry.get("Observation", "patient")
    assert patient.expression == "Observation.subject.where(resolve() is Patient)"
    assert patient.targets == ("Patient",)


def test_spec_examples_are_not_loaded(registry: SearchParameterRegistry) -> None:
    # "example-reference" redefines Condition.subject with target Organization
    subject = registry.get("Condition", "subject")
    assert subject.url == "http://hl7.org/fhir/SearchParameter/Condition-subject"
    assert set(subject.targets) == {"Group", "Patient"}
    assert registry.get("Patient", "part-agree") is None
    assert registry.get("Patient", "_id").url == "http://hl7.org/fhir/SearchParameter/Resource-id"


def test_composites(registry: SearchParameterRegistry) -> None:
    cvq = registry.get("Observation", "code-value-quantity")
    assert cvq.type == "composite"
    assert cvq.expression == "Observation"
    assert cvq.components == (
        ("http://hl7.org/fhir/SearchParameter/clinical-code", "code"),
        ("http://hl7.org/fhir/SearchParameter/Observation-value-quantity", "value.as(Quantity)"),
    )
    rel = registry.get("DocumentReference", "relationship")
    assert rel.type == "composite" and len(rel.components) == 2
    for url, _ in cvq.components + rel.components:
        assert registry.by_url(url) is not None


def test_get_unknown(registry: SearchParameterRegistry) -> None:
    assert registry.get("Patient", "nope") is None
    assert registry.by_url("http://example.org/nope") is None
    # a type without own parameters still gets the Resource-level ones
    assert RESOURCE_LEVEL <= set(registry.for_type("Basic"))


def test_for_type_returns_a_copy(registry: SearchParameterRegistry) -> None:
    registry.for_type("Patient").pop("name")
    assert registry.get("Patient", "name") is not None


def test_by_url_keeps_the_full_expression(registry: SearchParameterRegistry) -> None:
    clinical = registry.by_url("http://hl7.org/fhir/SearchParameter/clinical-code")
    assert "Condition.code" in clinical.expression and "Observation.code" in clinical.expression


def test_add_custom_parameter(registry: SearchParameterRegistry) -> None:
    before = registry.version
    registry.add({
        "resourceType": "SearchParameter", "url": "http://example.org/SearchParameter/patient-birth-place",
        "name": "birthPlace", "status": "active", "code": "birth-place", "base": ["Patient"],
        "type": "string",
        "description": "Birth place city",
        "expression": ("Patient.extension('http://hl7.org/fhir/StructureDefinition/patient-birthPlace')"
                       ".value.city"),
    })
    assert registry.version == before + 1
    param = registry.get("Patient", "birth-place")
    assert param is not None and param.type == "string"
    assert registry.by_url("http://example.org/SearchParameter/patient-birth-place") == param
    assert registry.get("Observation", "birth-place") is None


def test_custom_parameter_replaces_same_code(registry: SearchParameterRegistry) -> None:
    registry.add({"resourceType": "SearchParameter", "url": "http://example.org/sp/gender", "code": "gender",
                  "base": ["Patient"], "type": "token", "expression": "Patient.gender"})
    assert registry.get("Patient", "gender").url == "http://example.org/sp/gender"
    assert registry.get("Practitioner", "gender").url == (
        "http://hl7.org/fhir/SearchParameter/individual-gender")


def test_custom_in_constructor(definitions: Definitions) -> None:
    reg = SearchParameterRegistry(definitions, custom=[{
        "resourceType": "SearchParameter", "url": "http://example.org/sp/x", "code": "x",
        "base": ["Resource"],
        "type": "token", "expression": "Resource.language"}])
    assert reg.get("Patient", "x").expression == "Resource.language"
    assert reg.get("Binary", "x") is not None


@pytest.mark.parametrize("bad", [
    {"resourceType": "Patient"},
    {"resourceType": "SearchParameter", "base": ["Patient"], "type": "token"},
    {"resourceType": "SearchParameter", "code": "x", "type": "token"},
    {"resourceType": "SearchParameter", "code": "x", "base": ["Patient"], "type": "nope"},
    {"resourceType": "SearchParameter", "code": "x y", "base": ["Patient"], "type": "token"},
    {"resourceType": "SearchParameter", "code": "x", "base": ["Patient"], "type": "composite"},
    {"resourceType": "SearchParameter", "code": "x", "base": ["Patient"], "type": "token", "expression": 3},
])
def test_add_rejects_invalid(registry: SearchParameterRegistry, bad: dict) -> None:
    with pytest.raises(ValueError):
        registry.add(bad)
