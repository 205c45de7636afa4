"""FHIRPath invariants of the R4 definitions (ElementDefinition.constraint, severity error).

A violation is an error with code ``invariant``, a message ``"<key>: <human>"`` and the
location of the resource or element instance the constraint is defined on.
"""
from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path

import pytest
from fhirpathpy.engine.nodes import ResourceNode

from fhir_server.definitions import Definitions
from fhir_server.model import jsonio
from fhir_server.model.outcome import Issue
from fhir_server.validation import StructureValidator
from fhir_server.validation.invariants import EMPTY, InvariantEngine, _with_temporal_values

UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"


@pytest.fixture(scope="module")
def validator() -> StructureValidator:
    return StructureValidator(Definitions())


def violations(issues: list[Issue]) -> list[tuple[str, str]]:
    """(key, location) of every invariant error."""
    assert all(i.severity == "error" for i in issues if i.code == "invariant")
    return [(i.diagnostics.split(":", 1)[0], i.expression) for i in issues if i.code == "invariant"]


def condition(**changes) -> dict:
    resource = {"resourceType": "Condition", "id": "c1",
                "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
                "code": {"text": "Asthma"}, "subject": {"reference": "Patient/p1"}}
    resource.update(changes)
    return resource


def status(code: str) -> dict:
    return {"coding": [{"system": CLINICAL, "code": code}]}


# -- resource-level invariants ----------------------------------------------------------------------------

def test_con_4_abated_condition_cannot_be_active(validator):
    issues = validator.validate(condition(abatementDateTime="2020-02-01"))
    assert violations(issues) == [("con-4", "Condition")]
    assert [i for i in issues if i.code != "invariant"] == []
    assert "abated" in issues[0].diagnostics


def test_con_4_abated_and_resolved_is_fine(validator):
    resolved = condition(abatementDateTime="2020-02-01", clinicalStatus=status("resolved"))
    in_remission = condition(abatementString="in spring", clinicalStatus=status("remission"))
    assert validator.validate(resolved) == [] and validator.validate(in_remission) == []


def allergy(verification: str, clinical: str | None) -> dict:
    resource = {"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/p1"},
                "verificationStatus": {"coding": [{"system": ALLERGY_VERIFICATION, "code": verification}]}}
    if clinical:
        resource["clinicalStatus"] = {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": clinical}]}
    return resource


def test_ait_1_and_ait_2_clinical_status_follows_verification_status(validator):
    assert validator.validate(allergy("confirmed", "active")) == []
    assert validator.validate(allergy("entered-in-error", None)) == []
    assert violations(validator.validate(allergy("confirmed", None))) == [("ait-1", "AllergyIntolerance")]
    assert violations(validator.validate(allergy("entered-in-error", "active"))) == [
        ("ait-2", "AllergyIntolerance")]


def test_obs_6_data_absent_reason_only_without_a_value(validator):
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                   "valueQuantity": {"value": 70, "unit": "kg"},
                   "dataAbsentReason": {"text": "not measured"}}
    assert violations(validator.validate(observation)) == [("obs-6", "Observation")]


def test_org_1_organization_needs_a_name_or_an_identifier(validator):
    assert violations(validator.validate({"resourceType": "Organization", "active": True})) == [
        ("org-1", "Organization")]
    assert validator.validate({"resourceType": "Organization", "name": "ACME"}) == []


def test_bdl_1_total_only_in_search_and_history_bundles(validator):
    bundle = {"resourceType": "Bundle", "type": "collection", "total": 0}
    assert violations(validator.validate(bundle)) == [("bdl-1", "Bundle")]
    assert validator.validate({"resourceType": "Bundle", "type": "searchset", "total": 0}) == []


# -- element-level invariants -------------------------------------------------------------------------------

def test_per_1_period_must_not_end_before_it_starts(validator):
    encounter = {"resourceType": "Encounter", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "period": {"start": "2023-01-02", "end": "2023-01-01"}}
    assert violations(validator.validate(encounter)) == [("per-1", "Encounter.period")]
    encounter["period"] = {"start": "2023-01-01T10:00:00Z", "end": "2023-01-01T11:00:00+01:00"}
    assert validator.validate(encounter) == []


@pytest.mark.parametrize("start,end,valid", [
    ("2022-11-06T01:52:06-04:00", "2022-11-06T01:07:06-05:00", True),  # 05:52Z before 06:07Z
    ("2022-11-06T01:07:06-05:00", "2022-11-06T01:52:06-04:00", False),
    ("2020-01-01T10:00:00.5Z", "2020-01-01T10:00:00Z", False),
    ("2023-06-21", "2023-06-21T06:20:00Z", True),  # different precisions: not comparable, no violation
    ("2021", "2020-05", False),
])
def test_per_1_compares_instants_not_strings(validator, start, end, valid):
    encounter = {"resourceType": "Encounter", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "period": {"start": start, "end": end}}
    assert violations(validator.validate(encounter)) == ([] if valid else [("per-1", "Encounter.period")])


def test_pat_1_contact_needs_some_detail(validator):
    patient = {"resourceType": "Patient", "contact": [{"name": {"family": "Du"}}, {"gender": "female"}]}
    assert violations(validator.validate(patient)) == [("pat-1", "Patient.contact[1]")]


def test_obs_3_reference_range_needs_low_high_or_text_also_when_reused(validator):
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                   "referenceRange": [{"type": {"text": "normal"}}],
                   "component": [{"code": {"text": "systolic"}, "referenceRange": [{"text": "ok"}, {"age": {
                       "low": {"value": 18, "unit": "a", "system": UCUM, "code": "a"}}}]}]}
    assert violations(validator.validate(observation)) == [
        ("obs-3", "Observation.referenceRange[0]"), ("obs-3", "Observation.component[0].referenceRange[1]")]


def test_qty_3_code_needs_a_system(validator):
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                   "valueQuantity": {"value": 70, "code": "kg"}}
    assert violations(validator.validate(observation)) == [("qty-3", "Observation.valueQuantity")]


def test_ref_1_local_reference_must_point_to_a_contained_resource(validator):
    patient = {"resourceType": "Patient", "contained": [{"resourceType": "Practitioner", "id": "pr1"}],
               "generalPractitioner": [{"reference": "#pr1"}, {"reference": "#pr2"}]}
    assert violations(validator.validate(patient)) == [("ref-1", "Patient.generalPractitioner[1]")]


def test_invariants_inside_bundle_entries_are_located(validator):
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": condition()},
        {"resource": condition(abatementDateTime="2020-02-01",
                               onsetPeriod={"start": "2020", "end": "2019"})}]}
    assert sorted(violations(validator.validate(bundle))) == [
        ("con-4", "Bundle.entry[1].resource"), ("per-1", "Bundle.entry[1].resource.onsetPeriod")]


# -- decimals from the JSON codec -------------------------------------------------------------------------

def test_decimal_values_are_compared_as_numbers(validator):
    age = {"unit": "years", "system": UCUM, "code": "a"}
    assert validator.validate(condition(onsetAge=age | {"value": Decimal("2.5")})) == []
    assert violations(validator.validate(condition(onsetAge=age | {"value": Decimal("-0.5")}))) == [
        ("age-1", "Condition.onsetAge")]


def test_tim_4_negative_decimal_duration(validator):
    def statement(duration):
        return {"resourceType": "MedicationStatement", "status": "active",
                "medicationCodeableConcept": {"text": "aspirin"}, "subject": {"reference": "Patient/p1"},
                "dosage": [{"timing": {"repeat": {"duration": duration, "durationUnit": "h"}}}]}
    assert validator.validate(statement(Decimal("1.5"))) == []
    assert violations(validator.validate(statement(Decimal("-1.5")))) == [
        ("tim-4", "MedicationStatement.dosage[0].timing.repeat")]


# -- contained resources: dom-2..dom-5 ---------------------------------------------------------------------

def practitioner(**changes) -> dict:
    return {"resourceType": "Practitioner", "id": "pr1", **changes}


def test_dom_2_contained_resources_do_not_contain_others(validator):
    patient = {"resourceType": "Patient", "generalPractitioner": [{"reference": "#pr1"}],
               "contained": [practitioner(contained=[{"resourceType": "Organization", "name": "x"}])]}
    assert ("dom-2", "Patient") in violations(validator.validate(patient))


def test_dom_3_contained_resource_must_be_referenced(validator):
    patient = {"resourceType": "Patient", "contained": [practitioner()]}
    assert violations(validator.validate(patient)) == [("dom-3", "Patient.contained[0]")]
    referenced = patient | {"generalPractitioner": [{"reference": "#pr1"}]}
    assert validator.validate(referenced) == []


def test_dom_3_contained_resource_may_refer_to_its_container_instead(validator):
    patient = {"resourceType": "Patient", "id": "p1", "contained": [
        {"resourceType": "RelatedPerson", "id": "rp", "patient": {"reference": "#"}}]}
    assert validator.validate(patient) == []


def test_dom_4_contained_resource_has_no_version_or_last_updated(validator):
    patient = {"resourceType": "Patient", "generalPractitioner": [{"reference": "#pr1"}],
               "contained": [practitioner(meta={"versionId": "3"})]}
    assert violations(validator.validate(patient)) == [("dom-4", "Patient")]


def test_element_invariants_inside_contained_resources(validator):
    patient = {"resourceType": "Patient", "generalPractitioner": [{"reference": "#pr1"}],
               "contained": [practitioner(name=[{"family": "X",
                                                 "period": {"start": "2020-02", "end": "2020-01"}}])]}
    assert violations(validator.validate(patient)) == [("per-1", "Patient.contained[0].name[0].period")]


# -- engine limits and switches --------------------------------------------------------------------------

def test_skipped_invariants_are_listed_with_a_reason(validator):
    skipped = validator.skipped_invariants
    assert "resolve()" in skipped["ctm-1"]
    assert "htmlChecks()" in skipped["txt-1"]
    for key in ("ele-1", "ext-1", "dom-3"):
        assert "structural" in skipped[key]
    for evaluated in ("con-4", "per-1", "ref-1", "dom-2", "obs-6"):
        assert evaluated not in skipped


def test_invariants_can_be_switched_off():
    validator = StructureValidator(Definitions(), invariants=False)
    assert validator.validate(condition(abatementDateTime="2020-02-01")) == []
    assert validator.validate(condition(clinicalStatus=status("cured")))  # structure is still checked


def test_validation_does_not_touch_the_resource(validator):
    resource = condition(abatementDateTime="2020-02-01", onsetPeriod={"start": "2020", "end": "2021"},
                         contained=[practitioner()], asserter={"reference": "#pr1"})
    before = copy.deepcopy(resource)
    validator.validate(resource)
    assert resource == before


# -- the pre-check never claims a constraint holds when fhirpathpy says it does not ---------------------

PRECHECK_CASES = [
    ("start.hasValue().not() or end.hasValue().not() or (start <= end)", "Period",
     [{"start": "2020"}, {"end": "2020"}, {"start": "2021", "end": "2020"}, {"start": "2020", "end": "2021"},
      {"_start": {"extension": [{"url": "u", "valueString": "x"}]}, "end": "2020"}]),
    ("reference.startsWith('#').not() or (reference.substring(1) in %rootResource.contained.id)", "Reference",
     [{"reference": "Patient/1"}, {"reference": "#x"}, {"display": "x"}]),
    ("code.empty() or system.exists()", "Quantity",
     [{"value": 1}, {"code": "kg"}, {"code": "kg", "system": UCUM}]),
    ("contained.contained.empty()", None,
     [{"resourceType": "Patient"}, {"resourceType": "Patient", "contained": [{"resourceType": "Patient"}]}]),
    ("total.empty() or (type = 'searchset') or (type = 'history')", None,
     [{"resourceType": "Bundle", "type": "collection", "total": 1},
      {"resourceType": "Bundle", "type": "searchset", "total": 1},
      {"resourceType": "Bundle", "type": "batch"}]),
    ("duration.exists() implies duration >= 0", "Timing.repeat",
     [{"duration": Decimal("-1")}, {"duration": 2}, {"count": 1}]),
    ("fullUrl.contains('/_history/').not()", "Bundle.entry",
     [{"fullUrl": "http://x/Patient/1/_history/2"}, {"fullUrl": "http://x/Patient/1"}, {"request": {}}]),
    ("entry.search.empty() or (type = 'searchset')", None,
     [{"resourceType": "Bundle", "type": "batch", "entry": [{"request": {}}, {"request": {}}]},
      {"resourceType": "Bundle", "type": "batch",
       "entry": [{"request": {}}, {"search": {"mode": "match"}}]}]),
    ("entry.all(request.exists() = (%resource.type = 'batch' or %resource.type = 'transaction'))", None,
     [{"resourceType": "Bundle", "type": "batch",
       "entry": [{"request": {"url": "a"}}, {"request": {"url": "b"}}]},
      {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"url": "a"}}, {"fullUrl": "b"}]},
      {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "a"}]},
      {"resourceType": "Bundle", "type": "collection"}]),
    ("start <= end", "Period",
     [{"start": "2020-01-02", "end": "2020-01-01"}, {"start": "2020-01-01T10:00:00+01:00",
                                                    "end": "2020-01-01T09:00:00+01:00"},
      {"start": "2020-01-01", "end": "2020-01-02"}, {"start": "2020"}]),
]


@pytest.mark.parametrize("expression,type_path,instances", PRECHECK_CASES)
def test_precheck_agrees_with_the_engine(expression, type_path, instances):
    engine = InvariantEngine()
    invariant = engine.compile({"key": "t-1", "severity": "error", "human": "t", "expression": expression})
    assert invariant is not None
    for data in instances:
        names = {k.lstrip("_") for k in data}
        members = {name: ((name,), ("_" + name,)) for name in names}
        context = {"resource": data, "rootResource": data}
        focus = data if type_path is None else ResourceNode.create_node(data, type_path)
        try:
            truth = invariant.run(focus, context)
        except Exception:  # fhirpathpy gives up: the engine counts the constraint as satisfied
            truth = None
        answer = invariant.precheck(data, members, (data, data))
        if answer is True:
            assert truth in ([True], None), (expression, data)
        elif answer is EMPTY:
            assert truth in ([], None), (expression, data)
        assert engine.holds(invariant, data, members, type_path, data, data) is (truth != [False])


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "r4-examples"


def test_precheck_agrees_with_the_engine_on_every_constraint_of_the_examples(monkeypatch):
    """For every invariant job of the fixture examples (and of broken variants), a pre-check
    answer of true/empty is confirmed by fhirpathpy itself."""
    checked = []

    def holds_and_compare(self, invariant, data, members, type_path, resource, root, temporal=None, *rest):
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
    validator = StructureValidator(Definitions())
    for path in sorted(FIXTURES.glob("*.json")):
        resource = jsonio.loads(path.read_bytes())
        validator.validate(resource)
        validator.validate(resource | {"contained": [{"resourceType": "Patient", "id": "x"}]})
    validator.validate(condition(abatementDateTime="2020",
                                 onsetPeriod={"start": "2020-01-02", "end": "2020-01-01"}))
    assert len(checked) > 100 and {"dom-2", "dom-4", "ref-1", "per-1"} <= set(checked)
