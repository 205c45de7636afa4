"""FR Core 2.1.0 and 2.2 shapes of the two extensions whose definitions differ under the same URL.

``dmp-patient`` accepts both (its slices ``deathPlace`` and ``birthPlace.value[x].extension:inseeCode`` are typed
with our union definitions ``dmp-fr-core-patient-death-place`` and ``dmp-fr-core-address-insee-code``), refuses
what neither version allows with an error at the extension's path, and a resource claiming FR Core's own
``fr-core-patient`` is still checked against the FR Core 2.2 definitions (profiles/README.md, "FR Core 2.1.0 and
2.2", note 1).
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

import pytest

from fhir_server.validation.profiles import ProfileRegistry
from fhir_server.validation.validator import Validator

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
DMP_PATIENT = "https://dmp.example.org/fhir/StructureDefinition/dmp-patient"
FR_CORE_PATIENT = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"
DEATH_PLACE = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-death-place"
INSEE_CODE = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code"
COMMUNE_OM = "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM"  # FR Core 2.2 binding
COMMUNE = "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune"  # FR Core 2.1.0 example


@lru_cache(maxsize=None)
def validator() -> Validator:
    registry = ProfileRegistry(folders=[PROFILES])
    assert registry.problems == [], registry.problems
    return Validator(registry)


def holder(insee: dict | None = None, death_place: dict | None = None) -> dict:
    """A valid record holder (INS-NIR, official name, birth place in Paris); extension[0] is the birth place,
    extension[1] the death place when given."""
    patient = {
        "resourceType": "Patient",
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                       "valueAddress": {"extension": [{"url": INSEE_CODE, "valueCoding": {"system": COMMUNE_OM,
                                                                                           "code": "75056"}}],
                                        "city": "Paris"}}],
        "identifier": [{"use": "official",
                        "type": {"coding": [{"system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
                                             "code": "INS-NIR"}]},
                        "system": "urn:oid:1.2.250.1.213.1.4.8", "value": "280047512345691"}],
        "name": [{"extension": [{"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/"
                                        "fr-core-patient-birth-list-given-name", "valueString": "Claire Marie"}],
                  "use": "official", "family": "MARTIN", "given": ["Claire"]}],
        "gender": "female",
        "birthDate": "1980-04-12",
    }
    if insee is not None:
        patient["extension"][0]["valueAddress"]["extension"][0] = dict(insee, url=INSEE_CODE)
    if death_place is not None:
        patient["extension"].append(dict(death_place, url=DEATH_PLACE))
        patient["deceasedDateTime"] = "2025-12-01"
    return patient


def errors(resource: dict, profile: str = DMP_PATIENT) -> list:
    return [i for i in validator().validate_all(resource, [profile]) if i.severity in ("error", "fatal")]


def test_the_reference_holder_is_valid():
    assert errors(holder()) == []


# ------------------------------------------------------------------------------------------------ deathPlace
@pytest.mark.parametrize("value", [
    {"valueString": "Rennes"},  # FR Core 2.1.0
    {"valueAddress": {"city": "Rennes", "postalCode": "35000"}},  # FR Core 2.2
], ids=["2.1.0-valueString", "2.2-valueAddress"])
def test_death_place_of_either_version_is_accepted(value):
    assert errors(holder(death_place=value)) == []


@pytest.mark.parametrize("value", [
    {"valueCodeableConcept": {"text": "Rennes"}},
    {"valueCoding": {"system": COMMUNE_OM, "code": "35238"}},
    {"valueBoolean": True},
    {"valueReference": {"reference": "Location/l1"}},
], ids=lambda v: next(iter(v)))
def test_death_place_of_a_type_neither_version_allows_is_an_error_at_the_extension(value):
    found = errors(holder(death_place=value))
    key = next(iter(value))
    assert [(i.code, i.expression) for i in found] == [("structure", f"Patient.extension[1].{key}")]
    assert "Address, string" in found[0].diagnostics


def test_death_place_with_both_shapes_at_once_is_an_error():
    found = errors(holder(death_place={"valueString": "Rennes", "valueAddress": {"city": "Rennes"}}))
    assert found and all(i.expression.startswith("Patient.extension[1]") for i in found)


def test_a_second_death_place_is_an_error():
    patient = holder(death_place={"valueString": "Rennes"})
    patient["extension"].append({"url": DEATH_PLACE, "valueString": "Brest"})
    assert [i.expression for i in errors(patient)] == ["Patient.extension"]


# ------------------------------------------------------------------------------------------------ INSEE code
@pytest.mark.parametrize("system", [COMMUNE_OM, COMMUNE], ids=["2.2-CommuneOM", "2.1.0-Commune"])
def test_birth_place_insee_code_of_either_version_is_accepted_and_said_not_checked(system):
    issues = validator().validate_all(holder(insee={"valueCoding": {"system": system, "code": "01006"}}),
                                      [DMP_PATIENT])
    assert [i for i in issues if i.severity in ("error", "fatal")] == []
    notes = [i for i in issues if i.expression == "Patient.extension[0].valueAddress.extension[0].valueCoding"]
    assert [i.severity for i in notes] == ["information"]
    assert "not checked" in notes[0].diagnostics and system in notes[0].diagnostics


@pytest.mark.parametrize("coding", [
    {"code": "75056"},  # no system
    {"system": "urn:oid:1.2.250.1.213.1.4.8", "code": "75056"},  # a system neither version binds
    {"system": COMMUNE_OM},  # no code
], ids=["no-system", "other-system", "no-code"])
def test_birth_place_insee_code_from_neither_version_is_an_error_at_the_coding(coding):
    found = errors(holder(insee={"valueCoding": coding}))
    at_coding = [i for i in found if i.expression == "Patient.extension[0].valueAddress.extension[0].valueCoding"]
    assert [i.code for i in at_coding] == ["code-invalid"]
    assert "dmp-insee-commune" in at_coding[0].diagnostics
    # without a code, dmp-pat-3 (the birth place carries its INSEE code) fails too
    assert all("dmp-pat-3" in i.diagnostics for i in found if i not in at_coding)


def test_birth_place_insee_code_of_another_type_is_an_error():
    found = errors(holder(insee={"valueString": "75056"}))
    at_extension = [i for i in found if i.expression.startswith("Patient.extension[0].valueAddress.extension[0]")]
    assert [(i.code, i.expression) for i in at_extension] == [
        ("structure", "Patient.extension[0].valueAddress.extension[0].valueString")]
    assert all("dmp-pat-3" in i.diagnostics for i in found if i not in at_extension)


# ------------------------------------------------------------------------------------------------ FR Core copies
def test_fr_core_patient_claims_are_still_checked_against_the_2_2_definitions():
    string_place = errors(holder(death_place={"valueString": "Rennes"}), FR_CORE_PATIENT)
    assert [i.expression for i in string_place] == ["Patient.extension[1].valueString"]
    commune = errors(holder(insee={"valueCoding": {"system": COMMUNE, "code": "01006"}}), FR_CORE_PATIENT)
    assert [i.expression for i in commune] == ["Patient.extension[0].valueAddress.extension[0].valueCoding"]
    assert errors(holder(death_place={"valueAddress": {"city": "Rennes"}}), FR_CORE_PATIENT) == []


def test_a_2_1_0_holder_claiming_nothing_is_accepted_by_the_record_profile_and_keeps_its_shape():
    patient = holder(insee={"valueCoding": {"system": COMMUNE, "code": "01006"}},
                     death_place={"valueString": "Rennes"})
    before = copy.deepcopy(patient)
    assert errors(patient) == []
    assert patient == before


# ------------------------------------------------------------------------------------------------ over HTTP
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from backends import make_store
    from fhir_server.access.gate import OpenGate
    from fhir_server.app import create_app
    from fhir_server.settings import Settings

    app = create_app(Settings(insecure_no_auth=True, profile_mode="enforce"),
                     store=make_store("sqlite", tmp_path_factory.mktemp("store")), gate=OpenGate())
    return app.test_client()


def _validate(client, resource: dict):
    return client.post(f"/fhir/Patient/$validate?profile={DMP_PATIENT}", data=json.dumps(resource),
                       headers={"Content-Type": "application/fhir+json"})


def test_validate_operation_accepts_both_shapes_and_refuses_others_with_an_expression(client):
    for good in (holder(death_place={"valueString": "Rennes"}),
                 holder(insee={"valueCoding": {"system": COMMUNE, "code": "01006"}})):
        response = _validate(client, good)
        assert response.status_code == 200
        assert [i for i in response.get_json()["issue"] if i["severity"] == "error"] == []
    bad = _validate(client, holder(death_place={"valueCodeableConcept": {"text": "Rennes"}}))
    outcome = bad.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [i["expression"] for i in outcome["issue"] if i["severity"] == "error"] == [
        ["Patient.extension[1].valueCodeableConcept"]]
