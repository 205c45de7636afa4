"""The record's profiles are readable and searchable at /fhir, and read-only for clients."""
from __future__ import annotations

import json

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
    rest = client.get("/fhir/metadata").get_json()["rest"][0]
    assert {"export", "meta"} <= {o["name"] for o in rest["operation"]}
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert {"everything", "export", "validate"} <= {o["name"] for o in patient["operation"]}
