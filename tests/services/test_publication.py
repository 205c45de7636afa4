"""The record's profiles are readable and searchable at /fhir, and read-only for clients."""
from __future__ import annotations

import json

from fhir_server.services.capability import DMP_OPERATION, with_record_operations
from fhir_server.services.publication import publish

DMP_PATIENT = "https://dmp.example.org/fhir/StructureDefinition/dmp-patient"


def test_published_definitions_are_searchable_by_url_name_and_status(app, client):
    server = app.extensions["fhir"]
    assert publish(server.resources) > 20
    found = client.get(f"/fhir/StructureDefinition?url={DMP_PATIENT}").get_json()
    assert found["total"] == 1 and found["entry"][0]["resource"]["type"] == "Patient"
    by_name = client.get("/fhir/ValueSet?status=active&_summary=count").get_json()
    assert by_name["total"] > 0
    assert client.get("/fhir/CodeSystem?_count=1").get_json()["total"] > 0


def test_publishing_again_makes_no_new_version(app):
    server = app.extensions["fhir"]
    publish(server.resources)
    assert publish(server.resources) == 0


def test_clients_cannot_write_definitions(app, client):
    publish(app.extensions["fhir"].resources)
    profile = client.get(f"/fhir/StructureDefinition?url={DMP_PATIENT}").get_json()["entry"][0]["resource"]
    response = client.put(f"/fhir/StructureDefinition/{profile['id']}", data=json.dumps(profile),
                          headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 405


def test_the_capability_statement_names_each_type_s_record_profile(client):
    resources = {r["type"]: r for r in client.get("/fhir/metadata").get_json()["rest"][0]["resource"]}
    assert resources["Patient"]["supportedProfile"] == [DMP_PATIENT]
    assert {"read", "search-type"} <= {i["code"] for i in resources["StructureDefinition"]["interaction"]}


def test_the_capability_statement_lists_the_operations_that_run(client):
    statement = client.get("/fhir/metadata").get_json()
    assert statement["instantiates"] == ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]
    rest = statement["rest"][0]
    assert {"export", "meta"} <= {o["name"] for o in rest["operation"]}
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert {"everything", "export", "validate"} <= {o["name"] for o in patient["operation"]}


def _project_operations(statement: dict) -> list[tuple[str, str, str | None]]:
    """(name, definition, resource type or None at system level) of each operation under the project's base."""
    rest = statement["rest"][0]
    listed = [(o["name"], o["definition"], None) for o in rest["operation"]]
    listed += [(o["name"], o["definition"], r["type"]) for r in rest["resource"] for o in r.get("operation", [])]
    return [op for op in listed if op[1].startswith(DMP_OPERATION)]


def test_every_operation_the_capability_statement_names_under_our_base_is_published(app, client, engine):
    server = app.extensions["fhir"]
    publish(server.resources)
    statement = with_record_operations(client.get("/fhir/metadata").get_json())  # as served under record rules
    operations = _project_operations(statement)
    assert {name for name, _, _ in operations} == {"import", "emergency-access", "close"}
    for name, url, rtype in operations:
        found = client.get(f"/fhir/OperationDefinition?url={url}").get_json()
        assert found["total"] == 1, url
        definition = found["entry"][0]["resource"]
        assert definition["code"] == name
        assert definition["system"] is (rtype is None)
        assert definition.get("resource", []) == ([rtype] if rtype else [])
        assert engine.validator.validate(definition) == [], url  # valid R4
