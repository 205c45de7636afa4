"""Custom SearchParameter resources through the REST API (both stores): what a client sees."""
from __future__ import annotations

import json

import pytest

from fhir_server.access.gate import OpenGate
from fhir_server.app import create_app
from fhir_server.cli import run_reindex
from fhir_server.settings import Settings

FHIR_JSON = "application/fhir+json"
MMN = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
MMN_URL = "http://example.org/fhir/SearchParameter/patient-mothers-maiden-name"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def mothers_maiden_name(**changes) -> dict:
    sp = {"resourceType": "SearchParameter", "url": MMN_URL, "name": "MothersMaidenName", "status": "active",
          "description": "Search by the mother's maiden name", "code": "mothers-maiden-name", "base": ["Patient"],
          "type": "string", "expression": f"Patient.extension('{MMN}').value"}
    return {**sp, **changes}


def interpretation(**changes) -> dict:
    sp = {"resourceType": "SearchParameter", "url": "http://example.org/fhir/SearchParameter/interpretation",
          "name": "Interpretation", "status": "active", "description": "Interpretation code (H, L, N...)",
          "code": "interpretation", "base": ["Observation"], "type": "token",
          "expression": "Observation.interpretation"}
    return {**sp, **changes}


def post(client, resource: dict):
    return client.post(f"/fhir/{resource['resourceType']}", data=json.dumps(resource),
                       headers={"Content-Type": FHIR_JSON})


def created(client, resource: dict) -> dict:
    response = post(client, resource)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def patient(client, maiden_name: str) -> str:
    return created(client, {"resourceType": "Patient", "extension": [{"url": MMN, "valueString": maiden_name}]})["id"]


def search(client, query: str, **headers) -> tuple[set[str], list[dict]]:
    response = client.get(f"/fhir/{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    entries = response.get_json().get("entry", [])
    ids = {e["resource"]["id"] for e in entries if e["search"]["mode"] == "match"}
    outcomes = [i for e in entries if e["search"]["mode"] == "outcome" for i in e["resource"]["issue"]]
    return ids, outcomes


def capability(client, rtype: str) -> dict:
    statement = client.get("/fhir/metadata").get_json()
    return next(r for r in statement["rest"][0]["resource"] if r["type"] == rtype)


def listed(client, rtype: str) -> dict:
    return {p["name"]: p for p in capability(client, rtype)["searchParam"]}


def test_searchparameter_is_a_served_type(client):
    interactions = {i["code"] for i in capability(client, "SearchParameter")["interaction"]}
    assert interactions == {"read", "vread", "update", "delete", "history-instance", "history-type", "create",
                            "search-type"}
    assert {"url", "base", "code", "type", "status"} <= set(listed(client, "SearchParameter"))


def test_a_custom_parameter_applies_to_new_writes_and_to_old_ones_after_reindex(client, app, engine):
    before = patient(client, "Dupont")
    sp = created(client, mothers_maiden_name())
    after = patient(client, "Durand")

    assert search(client, "Patient?mothers-maiden-name=durand") == ({after}, [])
    assert search(client, "Patient?mothers-maiden-name:exact=Durand")[0] == {after}
    assert search(client, "Patient?mothers-maiden-name=dupont") == (set(), [])  # stored before: not indexed yet

    run_reindex(app.extensions["fhir"], echo=lambda line: None)
    assert search(client, "Patient?mothers-maiden-name=dupont")[0] == {before}
    assert search(client, "Patient?mothers-maiden-name=d")[0] == {before, after}

    entry = listed(client, "Patient")["mothers-maiden-name"]
    assert entry == {"name": "mothers-maiden-name", "definition": MMN_URL, "type": "string",
                     "documentation": "Search by the mother's maiden name"}
    assert client.get(f"/fhir/SearchParameter/{sp['id']}").get_json()["code"] == "mothers-maiden-name"
    assert engine.registry.get("Patient", "mothers-maiden-name") is None  # the shared engine is untouched


def test_a_custom_token_parameter(client):
    created(client, interpretation())
    high = created(client, {"resourceType": "Observation", "status": "final", "code": {"text": "Potassium"},
                            "interpretation": [{"coding": [{"system": INTERPRETATION_SYSTEM, "code": "H"}]}]})["id"]
    created(client, {"resourceType": "Observation", "status": "final", "code": {"text": "Potassium"},
                     "interpretation": [{"coding": [{"system": INTERPRETATION_SYSTEM, "code": "N"}]}]})
    assert search(client, f"Observation?interpretation={INTERPRETATION_SYSTEM}|H")[0] == {high}
    assert search(client, "Observation?interpretation:not=N")[0] == {high}
    assert listed(client, "Observation")["interpretation"]["type"] == "token"


@pytest.mark.parametrize("changes, message", [
    ({"expression": "Patient.name.((("}, "syntax error"),
    ({"expression": "Patient.extension('x').value.frobnicate()"}, "frobnicate"),
    ({"expression": "Observation.method"}, "no part that applies to Patient"),
])
def test_an_expression_that_does_not_compile_is_400_naming_it(client, changes, message):
    response = post(client, mothers_maiden_name(**changes))
    assert response.status_code == 400
    issues = response.get_json()["issue"]
    assert [i["expression"] for i in issues if i["severity"] == "error"] == [["SearchParameter.expression"]]
    assert message in issues[0]["diagnostics"]
    assert "mothers-maiden-name" not in listed(client, "Patient")


def test_other_unusable_definitions_are_400(client):
    for changes, where in [({"code": "maiden name"}, "SearchParameter.code"),
                           ({"base": ["Device"]}, "SearchParameter.base[0]"),
                           ({"type": "special"}, "SearchParameter.type")]:
        response = post(client, mothers_maiden_name(**changes))
        assert response.status_code == 400, changes
        assert where in [e for i in response.get_json()["issue"] for e in i.get("expression", [])], changes


def test_redefining_an_r4_parameter_is_400(client):
    response = post(client, interpretation(code="method", expression="Observation.method"))
    assert response.status_code == 400
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == ["SearchParameter.code"]
    assert "already defined by R4" in issue["diagnostics"]
    assert listed(client, "Observation")["method"]["definition"] == \
        "http://hl7.org/fhir/SearchParameter/Observation-method"


def test_a_second_parameter_with_the_same_url_or_code_is_400(client):
    created(client, mothers_maiden_name())
    for changes, where in [({"code": "maiden-name"}, "SearchParameter.url"),
                           ({"url": "http://example.org/other"}, "SearchParameter.code")]:
        response = post(client, mothers_maiden_name(**changes))
        assert response.status_code == 400
        assert [i["expression"] for i in response.get_json()["issue"]] == [[where]]


def test_deleting_or_retiring_withdraws_the_parameter(client):
    sp = created(client, mothers_maiden_name())
    durand = patient(client, "Durand")
    assert search(client, "Patient?mothers-maiden-name=durand")[0] == {durand}

    retired = dict(sp, status="retired")
    assert client.put(f"/fhir/SearchParameter/{sp['id']}", data=json.dumps(retired),
                      headers={"Content-Type": FHIR_JSON}).status_code == 200
    assert "mothers-maiden-name" not in listed(client, "Patient")
    assert client.put(f"/fhir/SearchParameter/{sp['id']}", data=json.dumps(dict(sp, status="active")),
                      headers={"Content-Type": FHIR_JSON}).status_code == 200
    assert "mothers-maiden-name" in listed(client, "Patient")

    assert client.delete(f"/fhir/SearchParameter/{sp['id']}").status_code in (200, 204)
    ids, outcomes = search(client, "Patient?mothers-maiden-name=durand")
    assert ids == {durand}  # the parameter is ignored: every Patient matches
    assert outcomes[0]["severity"] == "warning" and outcomes[0]["expression"] == ["mothers-maiden-name"]
    assert "Unknown search parameter 'mothers-maiden-name'" in outcomes[0]["diagnostics"]
    strict = client.get("/fhir/Patient?mothers-maiden-name=durand", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert "mothers-maiden-name" not in listed(client, "Patient")


@pytest.fixture
def second_store(store):
    """The store as another worker process opens it (SQLite: its own connection to the file)."""
    from fhir_server.store.sqlite import SQLiteStore
    if isinstance(store, SQLiteStore):
        other = SQLiteStore(store.path)
        yield other
        other.close()
    else:
        yield store  # mongomock keeps a database per client: share the client


def test_another_worker_process_picks_up_the_parameter_after_its_refresh(client, second_store, engine):
    other_app = create_app(Settings(insecure_no_auth=True, max_body_bytes=1_000_000), store=second_store,
                           gate=OpenGate(), engine=engine)
    other = other_app.test_client()
    service = other_app.extensions["fhir"].search_parameters
    offset = [-1000.0]
    clock = service.clock
    service.clock = lambda: clock() + offset[0]
    service.refresh(force=True)

    sp = created(client, mothers_maiden_name())
    assert "mothers-maiden-name" not in listed(other, "Patient")  # not looked yet: at most every 5 s
    offset[0] = 0.0
    durand = patient(other, "Durand")  # the request refreshes first, so this write is indexed for it
    assert "mothers-maiden-name" in listed(other, "Patient")
    assert search(client, "Patient?mothers-maiden-name=durand")[0] == {durand}
    assert search(other, "Patient?mothers-maiden-name=durand")[0] == {durand}

    assert client.delete(f"/fhir/SearchParameter/{sp['id']}").status_code in (200, 204)
    offset[0] = 1000.0
    _, outcomes = search(other, "Patient?mothers-maiden-name=durand")
    assert "Unknown search parameter" in outcomes[0]["diagnostics"]
