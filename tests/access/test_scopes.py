"""SMART scope parsing (App Launch 1.0 and 2.x): what each scope string grants, and what is ignored."""
from __future__ import annotations

import pytest

from fhir_server.access.gate import NOTHING, Principal
from fhir_server.access.scopes import parse_scope, parse_scopes, split_scopes
from fhir_server.access.smart import union
from fhir_server.search.query import AnyOf, Clause, TokenValue


@pytest.mark.parametrize("text, context, rtype, permissions, query, version", [
    ("patient/Observation.read", "patient", "Observation", "rs", (), 1),
    ("patient/*.read", "patient", "*", "rs", (), 1),
    ("user/*.*", "user", "*", "cruds", (), 1),
    ("user/Condition.write", "user", "Condition", "cud", (), 1),
    ("system/*.read", "system", "*", "rs", (), 1),
    ("patient/Observation.rs", "patient", "Observation", "rs", (), 2),
    ("user/Condition.cruds", "user", "Condition", "cruds", (), 2),
    ("system/Patient.s", "system", "Patient", "s", (), 2),
    ("user/Encounter.cu", "user", "Encounter", "cu", (), 2),
    ("patient/*.r", "patient", "*", "r", (), 2),
    ("patient/Observation.rs?category=laboratory", "patient", "Observation", "rs",
     (("category", "laboratory"),), 2),
    ("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
     "patient", "Observation", "rs",
     (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),), 2),
    ("user/Observation.rs?category=vital-signs&status=final", "user", "Observation", "rs",
     (("category", "vital-signs"), ("status", "final")), 2),
])
def test_clinical_scopes(text, context, rtype, permissions, query, version):
    scope = parse_scope(text)
    assert scope is not None
    assert (scope.context, scope.resource_type, scope.permissions, scope.query, scope.version) == (
        context, rtype, frozenset(permissions), query, version)


@pytest.mark.parametrize("text", [
    "openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter", "offline_access",
    "online_access",
    "patient/Observation.sr",  # v2 letters out of order
    "patient/Observation.rr",  # repeated
    "patient/Observation.x",
    "patient/Observation.",
    "patient/Observation",
    "practitioner/Observation.rs",  # unknown context
    "patient/observation.rs",  # not a type name
    "patient/Observation.read?category=laboratory",  # granular queries are v2 only
    "patient/Observation.rs?",  # empty query
    "patient/Observation.rs?category",  # no value
    "patient/Observation.rs?_count=10",  # result parameter
    "patient/Observation.rs?_include=Observation:subject",
    "patient/Observation.READ",
    "",
])
def test_other_and_malformed_scopes_grant_nothing(text):
    assert parse_scope(text) is None


def test_a_scope_claim_is_split_on_spaces_and_parsed_once():
    scopes = split_scopes("openid fhirUser launch/patient  patient/Observation.rs patient/Observation.sr\tuser/*.*")
    assert scopes == {"openid", "fhirUser", "launch/patient", "patient/Observation.rs", "patient/Observation.sr",
                      "user/*.*"}
    parsed = parse_scopes(scopes)
    assert [s.text for s in parsed] == ["patient/Observation.rs", "user/*.*"]
    assert parse_scopes(scopes) is parsed  # cached per scope set
    assert split_scopes(None) == frozenset()


def test_grants_by_type_and_wildcard():
    observation = parse_scope("patient/Observation.rs")
    assert observation.grants("r", "Observation") and observation.grants("s", "Observation")
    assert not observation.grants("c", "Observation") and not observation.grants("r", "Condition")
    assert not observation.grants("s", None)  # not a '*' scope
    wildcard = parse_scope("user/*.cruds")
    assert wildcard.grants("d", "Condition") and wildcard.grants("s", None)


def _token(code):
    return Clause("category", "token", None, (TokenValue(None, code, False),))


def test_union_of_scopes_factors_the_common_part_and_distributes_the_rest():
    compartment = Clause("subject", "reference", None, ())
    lab, vitals, final = _token("laboratory"), _token("vital-signs"), _token("final")
    assert union([[compartment, lab], [compartment, vitals]]) == [compartment, AnyOf((lab, vitals))]
    assert union([[compartment, lab], [compartment]]) == [compartment]  # the broader scope wins
    assert union([[lab], []]) == []  # one scope without limit: no limit
    assert union([[lab, final], [vitals]]) == [AnyOf((lab, vitals)), AnyOf((final, vitals))]
    assert union([[lab], [lab]]) == [lab]


def test_principal_stays_json_serialisable_for_bulk_jobs():
    from fhir_server.bulk.export import principal_from_dict, principal_to_dict
    principal = Principal("u", frozenset({"patient/*.rs"}), "pa", True, "Patient/pa", "app", "patient")
    assert principal_from_dict(principal_to_dict(principal)) == principal
    assert NOTHING.values == ()
