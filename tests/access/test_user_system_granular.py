"""user/ and system/ scopes, granular v2 scopes, unions of scopes, and the interaction → permission map."""
from __future__ import annotations

from access_helpers import LAB, ids, observation


def test_user_observation_scope_reads_observations_but_not_conditions(record):
    clinician = record.auth("user/Observation.rs")
    assert record.get("/fhir/Observation/ob1", clinician).status_code == 200
    assert ids(record.get("/fhir/Observation", clinician).get_json()) == {
        "Observation/oa1", "Observation/oa2", "Observation/ob1", "Observation/ob2"}
    assert record.get("/fhir/Condition/ca1", clinician).status_code == 403
    assert record.get("/fhir/Condition", clinician).status_code == 403
    assert record.get("/fhir/Patient/pa/$everything", clinician).status_code == 403
    # what the token may not search is left out of includes, not an error
    bundle = record.get("/fhir/Observation?_include=Observation:subject", clinician).get_json()
    assert ids(bundle, "include") == set()
    # and a chain into a type it may not search is refused; a target type it may not search is left out
    assert record.get("/fhir/Observation?subject:Patient.name=Bravo", clinician).status_code == 403
    assert record.get("/fhir/Observation?subject.name=Bravo", clinician).status_code == 403
    partial = record.auth("user/Observation.rs user/Patient.rs")
    assert ids(record.get("/fhir/Observation?subject.name=Bravo", partial).get_json()) == {
        "Observation/ob1", "Observation/ob2"}  # Group, also a subject target type, is not searchable
    assert record.send("POST", "/fhir/Observation", observation("n", "pa", LAB), clinician).status_code == 403


def test_read_and_search_are_distinct_permissions(record):
    read_only = record.auth("user/Observation.r")
    assert record.get("/fhir/Observation/oa1", read_only).status_code == 200
    assert record.get("/fhir/Observation", read_only).status_code == 403
    assert record.get("/fhir/Observation/oa1/_history", read_only).status_code == 200  # instance history: r
    assert record.get("/fhir/Observation/_history", read_only).status_code == 403  # type history: s
    search_only = record.auth("user/Observation.s")
    assert record.get("/fhir/Observation", search_only).status_code == 200
    assert record.get("/fhir/Observation/oa1", search_only).status_code == 403


def test_system_read_reads_everything_and_writes_nothing(record):
    backend = record.auth("system/*.read", role="system", sub="client-9")
    assert record.get("/fhir/Observation", backend).get_json()["total"] == 4
    assert record.get("/fhir/Condition/cb1", backend).status_code == 200
    assert record.get("/fhir/_history", backend).status_code == 200
    assert record.get("/fhir/Patient/pb/$everything", backend).status_code == 200
    assert record.send("POST", "/fhir/Observation", observation("n", "pa", LAB), backend).status_code == 403
    assert record.client.delete("/fhir/Observation/ob1", headers=backend).status_code == 403


def test_v1_write_and_star(record):
    writer = record.auth("user/Observation.write")
    assert record.send("POST", "/fhir/Observation", observation("n", "pa", LAB), writer).status_code == 201
    assert record.get("/fhir/Observation/oa1", writer).status_code == 403
    everything = record.auth("user/*.*")
    assert record.get("/fhir/Condition/cb1", everything).status_code == 200
    assert record.client.delete("/fhir/Condition/cb1", headers=everything).status_code == 200


def test_granular_scope_sees_only_lab_results(record):
    lab = record.auth("patient/Observation.rs?category=laboratory", "pa")
    assert ids(record.get("/fhir/Observation", lab).get_json()) == {"Observation/oa1"}
    assert record.get("/fhir/Observation?_summary=count", lab).get_json()["total"] == 1
    assert record.get("/fhir/Observation/oa1", lab).status_code == 200
    assert record.get("/fhir/Observation/oa2", lab).status_code == 404  # A's vital signs
    assert record.get("/fhir/Observation/ob1", lab).status_code == 404  # B's lab
    assert record.get("/fhir/Condition", lab).status_code == 403
    system_coded = record.auth("user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
                               "observation-category|laboratory")
    assert ids(record.get("/fhir/Observation", system_coded).get_json()) == {
        "Observation/oa1", "Observation/ob1", "Observation/ob2"}


def test_several_scopes_on_one_type_are_a_union(record):
    both = record.auth("patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs",
                       "pa")
    assert ids(record.get("/fhir/Observation", both).get_json()) == {"Observation/oa1", "Observation/oa2"}
    broader = record.auth("patient/Observation.rs?category=laboratory patient/Observation.rs", "pa")
    assert ids(record.get("/fhir/Observation", broader).get_json()) == {"Observation/oa1", "Observation/oa2"}
    # a patient account: its user/ scopes are kept to its own record too (until the record's access rules)
    mixed = record.auth("patient/Observation.rs?category=vital-signs user/Observation.rs?category=laboratory",
                        "pa")
    assert ids(record.get("/fhir/Observation", mixed).get_json()) == {"Observation/oa1", "Observation/oa2"}
    # a professional's scopes are only the outer limit: without the patients' authorisation (the record's
    # rules, tests/policy) they reach nothing
    clinician = record.auth("patient/Observation.rs?category=vital-signs user/Observation.rs?category=laboratory",
                            patient="pa", role="practitioner", fhirUser="Practitioner/dr1")
    assert ids(record.get("/fhir/Observation", clinician).get_json()) == set()


def test_a_granular_scope_the_server_cannot_apply_grants_nothing(record):
    unknown = record.auth("patient/Observation.rs?no-such-param=1", "pa")
    assert record.get("/fhir/Observation", unknown).get_json()["total"] == 0
    assert record.get("/fhir/Observation/oa1", unknown).status_code == 404


def test_granular_writes_must_stay_within_the_scope(record):
    lab_writer = record.auth("patient/Observation.cruds?category=laboratory", "pa")
    assert record.send("POST", "/fhir/Observation", observation("n", "pa", LAB), lab_writer).status_code == 201
    vitals = observation("n", "pa", {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                           "observation-category", "code": "vital-signs"}]})
    assert record.send("POST", "/fhir/Observation", vitals, lab_writer).status_code == 403
    moved = observation("oa1", "pa", vitals["category"][0])
    assert record.send("PUT", "/fhir/Observation/oa1", moved, lab_writer).status_code == 403


def test_user_scopes_of_patient_and_related_person_accounts(record):
    patient_user = record.auth("user/*.rs", role="patient", fhirUser="Patient/pa")
    assert ids(record.get("/fhir/Observation", patient_user).get_json()) == {"Observation/oa1", "Observation/oa2"}
    assert record.get("/fhir/Observation/ob1", patient_user).status_code == 404
    guardian = record.auth("user/*.rs", role="related-person", fhirUser="RelatedPerson/rp1")
    assert record.get("/fhir/Observation", guardian).status_code == 403
    # a related person's patient/ scopes reach the minor's record only while the record says they represent
    # a minor (tests/policy/test_minors.py); RelatedPerson/rp1 is not in the record
    guardian_for_a = record.auth("patient/*.rs", "pa", role="related-person", fhirUser="RelatedPerson/rp1")
    assert ids(record.get("/fhir/Observation", guardian_for_a).get_json()) == set()
