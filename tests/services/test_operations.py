"""OperationService without HTTP: meta merging, page tokens, compartment queries, gate constraints, query counts."""
from __future__ import annotations

import pytest

from fhir_server.access.gate import ANONYMOUS, OpenGate
from fhir_server.app import create_app
from fhir_server.model.outcome import FHIRError
from fhir_server.search.query import AnyOf, Clause, RangeValue, ReferenceValue, TokenValue
from fhir_server.services.operations import OperationService, _Position, merge_meta
from fhir_server.settings import Settings

TAG = {"system": "http://example.org/tags", "code": "vip"}
MARKER = Clause("_id", "token", "not", (TokenValue(None, "never-an-id", False),))


class MarkingGate(OpenGate):
    """Adds a recognisable (harmless) clause to every constrained query."""

    def constrain(self, principal, rtype):
        return [MARKER]


@pytest.fixture
def server(store, engine):
    app = create_app(Settings(insecure_no_auth=True), store=store, gate=MarkingGate(), engine=engine)
    return app.extensions["fhir"]


@pytest.fixture
def ops(server):
    return service_of_server(server)


def service_of_server(server) -> OperationService:
    return OperationService(server.definitions, server.store, server.resources, server.search,
                            server.engine.validator, server.indexer, server.gate)


def put(server, resource):
    return server.resources.update(ANONYMOUS, resource["resourceType"], resource["id"], resource).resource


def spy(store, monkeypatch) -> list:
    """Record every query the store is asked to search."""
    queries = []
    original = store.search

    def search(query, *, count, cursor=None):
        queries.append(query)
        return original(query, count=count, cursor=cursor)

    monkeypatch.setattr(store, "search", search)
    return queries


# -- meta merging -------------------------------------------------------------------------------
def test_merge_meta_adds_without_duplicates_and_keeps_other_keys():
    meta = {"versionId": "3", "source": "urn:s", "tag": [TAG], "profile": ["urn:p1"]}
    out = merge_meta(meta, {"tag": [dict(TAG, display="V.I.P."), {"code": "local"}], "profile": ["urn:p1", "urn:p2",
                                                                                                  "urn:p2"],
                            "versionId": "99"}, add=True)
    assert out == {"versionId": "3", "source": "urn:s", "tag": [TAG, {"code": "local"}],
                   "profile": ["urn:p1", "urn:p2"]}
    assert meta["tag"] == [TAG]  # the input is not changed


def test_merge_meta_deletes_on_system_and_code_and_drops_empty_lists():
    meta = {"tag": [TAG, {"code": "vip"}], "security": [{"system": "s", "code": "R"}], "profile": ["urn:p1"]}
    out = merge_meta(meta, {"tag": [{"code": "vip"}], "security": [{"system": "s", "code": "R", "display": "x"}],
                            "profile": ["urn:p1"]}, add=False)
    assert out == {"tag": [TAG]}
    assert merge_meta({"tag": [TAG]}, {"tag": [{"system": "other", "code": "vip"}]}, add=False) == {"tag": [TAG]}


# -- page tokens ----------------------------------------------------------------------------------
def test_page_tokens_round_trip_and_garbage_is_400():
    position = _Position("a", "cur-of-patients", "Observation", "cur")
    assert _Position.parse(position.token()) == position
    assert _Position.parse(_Position("a", None, "Patient", None).token()) == _Position("a", None, "Patient", None)
    for garbage in ("", "!!!", "e30", "WzFd"):  # "{}" and "[1]" in base64
        with pytest.raises(FHIRError) as error:
            _Position.parse(garbage)
        assert error.value.status == 400


# -- compartment queries ------------------------------------------------------------------------
def test_compartment_queries_follow_the_compartment_definition(ops):
    observation = ops.compartment_query("Observation", "a")
    value = (ReferenceValue("Patient", "a"),)
    assert observation.types == ("Observation",)
    assert observation.clauses == [AnyOf((Clause("subject", "reference", None, value),
                                          Clause("performer", "reference", None, value)))]
    encounter = ops.compartment_query("Encounter", "a", since=123)
    assert encounter.clauses == [Clause("patient", "reference", None, value),
                                 Clause("_lastUpdated", "date", None, (RangeValue("ge", 123, 123),))]
    patient = ops.compartment_query("Patient", "a")
    assert patient.clauses[0].clauses[0].param == "_id" and patient.clauses[0].clauses[1].param == "link"
    assert ops.compartment_types()[0] == "Patient"
    assert {"Practitioner", "Organization", "Medication", "PractitionerRole"} <= set(ops.include_types())
    assert not set(ops.compartment_types()) & set(ops.include_types())


# -- $everything: constraints, query counts, paging ---------------------------------------------
def build(server, observations=3):
    put(server, {"resourceType": "Practitioner", "id": "pr1"})
    put(server, {"resourceType": "Practitioner", "id": "pr2"})
    put(server, {"resourceType": "Organization", "id": "org1", "name": "x"})
    put(server, {"resourceType": "Patient", "id": "a", "managingOrganization": {"reference": "Organization/org1"}})
    put(server, {"resourceType": "Patient", "id": "b"})
    for i in range(observations):
        put(server, {"resourceType": "Observation", "id": f"o{i}", "status": "final", "code": {"text": "x"},
                     "subject": {"reference": "Patient/a"},
                     "performer": [{"reference": f"Practitioner/pr{1 + i % 2}"}]})
    put(server, {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/a"},
                 "code": {"text": "x"}, "asserter": {"reference": "Practitioner/pr1"}})
    put(server, {"resourceType": "Observation", "id": "ob", "status": "final", "code": {"text": "x"},
                 "subject": {"reference": "Patient/b"}})


def test_every_everything_query_is_constrained_and_includes_take_one_query_per_type(server, ops, monkeypatch):
    build(server)
    queries = spy(server.store, monkeypatch)
    page = ops.everything(ANONYMOUS, "a")
    assert {(r.type, r.id) for r in page.matches} == {("Patient", "a"), ("Condition", "c1"),
                                                      *(("Observation", f"o{i}") for i in range(3))}
    assert sorted((r.type, r.id) for r in page.included) == [("Organization", "org1"), ("Practitioner", "pr1"),
                                                             ("Practitioner", "pr2")]
    assert queries and all(MARKER in q.clauses for q in queries)
    include_queries = [q for q in queries if q.types[0] in ("Practitioner", "Organization")]
    assert sorted(q.types[0] for q in include_queries) == ["Organization", "Practitioner"]


def test_walking_pages_of_one_returns_each_resource_once(server, ops):
    build(server, observations=5)
    seen, token, pages = [], None, 0
    while True:
        page = ops.everything(ANONYMOUS, "a", count=1, page=token)
        assert len(page.matches) <= 1
        seen += [(r.type, r.id) for r in page.matches]
        pages += 1
        token = page.next_page
        if token is None:
            break
    assert len(seen) == len(set(seen)) == 7  # Patient, Condition, 5 Observations
    assert pages in (7, 8)  # at most one empty last page


def test_type_level_everything_concatenates_patients(server, ops):
    build(server)
    seen, token = [], None
    while True:
        page = ops.everything(ANONYMOUS, None, count=2, page=token)
        seen += [(r.type, r.id) for r in page.matches]
        token = page.next_page
        if token is None:
            break
    assert seen.index(("Patient", "a")) < seen.index(("Observation", "o0")) < seen.index(("Patient", "b"))
    assert seen.index(("Patient", "b")) < seen.index(("Observation", "ob"))
    assert len(seen) == len(set(seen)) == 7


def test_count_is_capped_and_must_be_positive(server, ops):
    build(server)
    assert len(ops.everything(ANONYMOUS, "a", count=10_000).matches) == 5
    with pytest.raises(FHIRError):
        ops.everything(ANONYMOUS, "a", count=0)


def test_a_patient_the_gate_hides_is_not_found(store, engine):
    class HidesB(OpenGate):
        def constrain(self, principal, rtype):
            return [Clause("_id", "token", "not", (TokenValue(None, "b", False),))] if rtype == "Patient" else []

    server = create_app(Settings(insecure_no_auth=True), store=store, gate=HidesB(), engine=engine).extensions["fhir"]
    build(server)
    ops = service_of_server(server)
    with pytest.raises(FHIRError) as error:
        ops.everything(ANONYMOUS, "b")
    assert error.value.status == 404
    assert ("Patient", "b") not in {(r.type, r.id) for r in ops.everything(ANONYMOUS, None, count=100).matches}


# -- $meta and $validate ------------------------------------------------------------------------
def test_meta_in_use_scans_through_constrained_queries(server, ops, monkeypatch):
    put(server, {"resourceType": "Patient", "id": "a", "meta": {"tag": [TAG]}})
    queries = spy(server.store, monkeypatch)
    assert ops.meta_in_use(ANONYMOUS, "Patient") == {"tag": [TAG]}
    assert queries and all(MARKER in q.clauses for q in queries)


def test_meta_change_writes_a_new_version_and_a_no_op_writes_none(server, ops):
    put(server, {"resourceType": "Patient", "id": "a"})
    parameters = {"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [TAG]}}]}
    assert ops.meta_change(ANONYMOUS, "Patient", "a", parameters, add=True).version == 2
    assert ops.meta_change(ANONYMOUS, "Patient", "a", parameters, add=True).version == 2
    assert ops.meta_change(ANONYMOUS, "Patient", "a", parameters, add=False).version == 3
    assert server.store.history("Patient", "a").total == 3


def test_validate_never_writes(server, ops):
    put(server, {"resourceType": "Patient", "id": "a"})
    before = server.store.history().total
    def errors(found):
        return [i for i in found if i.severity == "error"]
    # (warnings: a bare Patient misses the record's Patient profile, which the registry names)
    assert errors(ops.validate(ANONYMOUS, "Patient", "a", {"resourceType": "Patient", "id": "a"}, mode="update")) == []
    assert ops.validate(ANONYMOUS, "Patient", "a", None, mode="delete") == []
    found = ops.validate(ANONYMOUS, "Patient", None, {"resourceType": "Patient", "gender": "x"})
    assert [i.expression for i in errors(found)] == ["Patient.gender"]
    assert server.store.history().total == before


def test_type_level_resume_skips_a_patient_deleted_between_pages(server, ops):
    build(server)
    first = ops.everything(ANONYMOUS, None, count=1)
    assert [(r.type, r.id) for r in first.matches] == [("Patient", "a")]
    server.resources.delete(ANONYMOUS, "Patient", "a")
    rest, token = [], first.next_page
    while token:
        page = ops.everything(ANONYMOUS, None, count=1, page=token)
        rest += [(r.type, r.id) for r in page.matches]
        token = page.next_page
    assert rest == [("Patient", "b"), ("Observation", "ob")]


def test_a_type_filter_without_compartment_types_is_an_empty_page(server, ops):
    build(server)
    page = ops.everything(ANONYMOUS, "a", types=("Practitioner",))
    assert page.matches == [] and page.included == [] and page.next_page is None
    with pytest.raises(FHIRError) as error:
        ops.everything(ANONYMOUS, "a", types=("Spaceship",))
    assert error.value.status == 400
