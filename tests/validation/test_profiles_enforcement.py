"""Where profiles act: writes per profile mode, ``meta.profile`` claims, ``$validate?profile=``, settings.

The server here requires the test profile ``test-patient`` (tests/fixtures/profiles/test) for
Patient, as ``resources/registry/Patient.json`` would with ``"profiles": [...]``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from backends import make_store
from fhir_server.access.gate import OpenGate
from fhir_server.app import Engine, create_app
from fhir_server.definitions import Definitions
from fhir_server.http.rendering import Renderer
from fhir_server.search.extract import Indexer
from fhir_server.search.parameters import SearchParameterRegistry
from fhir_server.settings import Settings
from fhir_server.validation.enforcement import ProfileEnforcer
from fhir_server.validation.profiles import ProfileRegistry
from fhir_server.validation.validator import Validator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"
T = "https://test.example.org/fhir/StructureDefinition/"
PATIENT = T + "test-patient"
FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def profile_engine() -> Engine:
    definitions = Definitions()
    definitions.served["Patient"] = dataclasses.replace(definitions.served["Patient"], profiles=(PATIENT,))
    validator = Validator(ProfileRegistry(definitions, folders=[FIXTURES]))
    search = SearchParameterRegistry(definitions)
    return Engine(definitions, validator, search, Indexer(search), Renderer(definitions), validator)


def make_client(engine: Engine, tmp_path, mode: str):
    app = create_app(Settings(insecure_no_auth=True, profile_mode=mode), store=make_store("sqlite", tmp_path),
                     gate=OpenGate(), engine=engine)
    return app.test_client()


@pytest.fixture
def enforcing(profile_engine, tmp_path):
    return make_client(profile_engine, tmp_path, "enforce")


@pytest.fixture
def warning(profile_engine, tmp_path):
    return make_client(profile_engine, tmp_path, "warn")


def patient(**changes) -> dict:
    body = {"resourceType": "Patient", "active": True, "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8",
                                                                      "value": "180012B123456"}],
            "name": [{"family": "Martin", "given": ["Léa"]}], "gender": "female"}
    body.update(changes)
    return body


def post(client, resource, **headers):
    return client.post(f"/fhir/{resource['resourceType']}", data=json.dumps(resource),
                       headers={"Content-Type": FHIR_JSON, **headers})


def issues_of(response) -> list[dict]:
    return response.get_json()["issue"]


def test_enforce_refuses_a_resource_that_misses_the_required_profile_with_422(enforcing):
    response = post(enforcing, patient(active=False))
    assert response.status_code == 422
    found = [(i["severity"], i["code"], i["expression"]) for i in issues_of(response)]
    assert ("error", "value", ["Patient.active"]) in found
    assert any(PATIENT in i["diagnostics"] for i in issues_of(response))
    assert enforcing.get("/fhir/Patient").get_json().get("total", 0) == 0


def test_enforce_accepts_a_conforming_resource(enforcing):
    assert post(enforcing, patient()).status_code == 201


def test_base_errors_are_400_in_both_modes(enforcing, warning):
    for client in (enforcing, warning):
        response = post(client, patient(gender="robot"))
        assert response.status_code == 400
        assert [i["code"] for i in issues_of(response) if i["severity"] == "error"] == ["code-invalid"]


def test_warn_stores_the_resource_and_returns_the_problems_as_warnings(warning):
    response = post(warning, patient(active=False), Prefer="return=OperationOutcome")
    assert response.status_code == 201
    found = [(i["severity"], i["code"], i.get("expression")) for i in issues_of(response)]
    assert ("warning", "value", ["Patient.active"]) in found
    assert not [i for i in issues_of(response) if i["severity"] == "error"]
    rid = response.headers["Location"].split("/")[-3]
    assert warning.get(f"/fhir/Patient/{rid}").get_json()["active"] is False


def test_a_claimed_profile_is_checked(enforcing):
    resource = patient(active=False, meta={"profile": [PATIENT]})
    assert post(enforcing, resource).status_code == 422
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "meta": {"profile": [T + "test-observation"]}}
    refused = post(enforcing, observation)
    assert refused.status_code == 422
    assert any("test-observation" in i["diagnostics"] for i in issues_of(refused))


def test_an_unknown_claimed_profile_is_a_warning_not_a_crash(enforcing):
    resource = patient(meta={"profile": [T + "nobody-knows-me"]})
    response = post(enforcing, resource, Prefer="return=OperationOutcome")
    assert response.status_code == 201
    assert [(i["severity"], i["code"], i["expression"]) for i in issues_of(response)] == [
        ("warning", "not-supported", ["Patient.meta.profile[0]"])]


def test_a_required_profile_the_server_does_not_know_is_a_warning(tmp_path, caplog):
    definitions = Definitions()
    definitions.served["Patient"] = dataclasses.replace(definitions.served["Patient"], profiles=(T + "missing",))
    validator = Validator(ProfileRegistry(definitions, folders=[FIXTURES]))
    enforcer = ProfileEnforcer(validator, definitions, "enforce")
    assert any("missing" in record.getMessage() for record in caplog.records)
    issues = enforcer.on_write(patient(), "Patient", [])
    assert [(i.severity, i.code) for i in issues] == [("warning", "not-supported")]


def test_transactions_refuse_an_entry_that_misses_its_profile(enforcing):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:a", "resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:b", "resource": patient(active=False), "request": {"method": "POST", "url": "Patient"}}]}
    response = enforcing.post("/fhir", data=json.dumps(bundle), headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 422
    assert enforcing.get("/fhir/Patient").get_json().get("total", 0) == 0


def test_validate_operation_with_a_profile_parameter(warning):
    url = f"/fhir/Patient/$validate?profile={PATIENT}"
    good = warning.post(url, data=json.dumps(patient()), headers={"Content-Type": FHIR_JSON})
    assert good.status_code == 200
    assert not [i for i in issues_of(good) if i["severity"] == "error"]
    bad = warning.post(url, data=json.dumps(patient(active=False)), headers={"Content-Type": FHIR_JSON})
    assert [(i["severity"], i["expression"]) for i in issues_of(bad) if i["severity"] == "error"] == [
        ("error", ["Patient.active"])]  # asked for explicitly: an error even in warn mode
    unknown = warning.post(f"/fhir/Patient/$validate?profile={T}nothing", data=json.dumps(patient()),
                           headers={"Content-Type": FHIR_JSON})
    assert [i["code"] for i in issues_of(unknown) if i["severity"] == "error"] == ["not-supported"]


def test_validate_operation_reports_the_required_profile_as_a_write_would(enforcing, warning):
    body = json.dumps(patient(active=False))
    strict = enforcing.post("/fhir/Patient/$validate", data=body, headers={"Content-Type": FHIR_JSON})
    assert [i["severity"] for i in issues_of(strict) if i.get("expression") == ["Patient.active"]] == ["error"]
    lenient = warning.post("/fhir/Patient/$validate", data=body, headers={"Content-Type": FHIR_JSON})
    assert [i["severity"] for i in issues_of(lenient) if i.get("expression") == ["Patient.active"]] == ["warning"]


def test_profile_mode_setting(monkeypatch):
    assert Settings().profile_mode == "warn"
    monkeypatch.setenv("FHIR_SERVER_PROFILE_MODE", "enforce")
    assert Settings.from_env().profile_mode == "enforce"
    assert Settings.from_env(profile_mode="warn").profile_mode == "warn"
    with pytest.raises(ValueError):
        Settings(profile_mode="sometimes")


def test_serve_takes_a_profile_mode_option():
    from fhir_server.cli import build_parser
    assert build_parser().parse_args(["serve", "--profile-mode", "enforce"]).profile_mode == "enforce"
    assert build_parser().parse_args(["serve"]).profile_mode is None
