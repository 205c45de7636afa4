"""SearchParameterService: checks of custom SearchParameters, their effect on the registry and indexing,
the refresh across processes, the write hook of ResourceService and the reindex command (both stores)."""
from __future__ import annotations

import json

import pytest

from fhir_server.access.gate import ANONYMOUS, OpenGate
from fhir_server.app import FHIRServer
from fhir_server.cli import main, run_reindex
from fhir_server.model import jsonio
from fhir_server.model.outcome import FHIRError
from fhir_server.services.bundles import BundleService
from fhir_server.settings import Settings
from fhir_server.store.base import StoredResource

MMN = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"


def mothers_maiden_name(**changes) -> dict:
    sp = {"resourceType": "SearchParameter", "url": "http://example.org/fhir/SearchParameter/mothers-maiden-name",
          "name": "MothersMaidenName", "status": "active", "description": "Mother's maiden name",
          "code": "mothers-maiden-name", "base": ["Patient"], "type": "string",
          "expression": f"Patient.extension('{MMN}').value"}
    return {**sp, **changes}


def interpretation(**changes) -> dict:
    sp = {"resourceType": "SearchParameter", "url": "http://example.org/fhir/SearchParameter/interpretation",
          "name": "Interpretation", "status": "active", "description": "High, low, normal...",
          "code": "interpretation", "base": ["Observation"], "type": "token",
          "expression": "Observation.interpretation"}
    return {**sp, **changes}


def patient(maiden_name: str) -> dict:
    return {"resourceType": "Patient", "extension": [{"url": MMN, "valueString": maiden_name}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_server(store, engine) -> FHIRServer:
    return FHIRServer(Settings(insecure_no_auth=True), engine, store, OpenGate())


@pytest.fixture
def server(store, engine):
    return make_server(store, engine)


def create(server, resource: dict) -> StoredResource:
    return server.resources.create(ANONYMOUS, resource["resourceType"], resource).resource


def found(server, rtype: str, *params: tuple[str, str]) -> set[str]:
    parsed = server.parser.parse((rtype,), list(params), strict=True)
    return {r.id for r in server.store.search(parsed.query, count=100).resources}


def errors(server, resource: dict) -> list:
    with pytest.raises(FHIRError) as caught:
        create(server, resource)
    assert caught.value.status == 400
    return [(i.expression, i.diagnostics) for i in caught.value.issues if i.severity == "error"]


# -- the registry copy -------------------------------------------------------------------------------
def test_each_server_has_its_own_registry_and_the_shared_engine_never_changes(server, engine, store):
    assert server.engine is not engine and server.engine.registry is not engine.registry
    assert server.indexer.registry is server.engine.registry and server.parser.registry is server.engine.registry
    create(server, mothers_maiden_name())
    assert server.engine.registry.get("Patient", "mothers-maiden-name") is not None
    assert engine.registry.get("Patient", "mothers-maiden-name") is None
    assert "mothers-maiden-name" not in engine.indexer.report("Patient")


def test_parameters_the_engine_was_built_with_are_kept_and_cannot_be_redefined(store):
    from fhir_server.app import Engine
    built = Engine.build()
    built.registry.add(interpretation(url="http://example.org/configured"))
    server = make_server(store, built)
    assert server.engine.registry.get("Observation", "interpretation").url == "http://example.org/configured"
    assert errors(server, interpretation()) == [
        ("SearchParameter.code", "the search parameter 'interpretation' of Observation is already defined by this "
                                 "server's configuration; choose another code")]


# -- checks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, where, message", [
    ({"code": "mothers maiden"}, "SearchParameter.code", "not a usable search parameter code"),
    ({"code": "_maiden"}, "SearchParameter.code", "not a usable search parameter code"),
    ({"code": "maiden.name"}, "SearchParameter.code", "not a usable search parameter code"),
    ({"base": ["Patient", "Device"]}, "SearchParameter.base[1]", "'Device' is not a resource type served here"),
    ({"type": "special"}, "SearchParameter.type", "type 'special' are not supported"),
    ({"expression": None}, "SearchParameter.expression", "needs an expression"),
    ({"expression": "Patient.name.((("}, "SearchParameter.expression", "syntax error"),
    ({"expression": "Patient.name.frobnicate()"}, "SearchParameter.expression", "frobnicate"),
    ({"expression": "Observation.method"}, "SearchParameter.expression", "no part that applies to Patient"),
    ({"type": "reference", "target": ["Spaceship"]}, "SearchParameter.target[0]", "not in the required value set"),
])
def test_an_unusable_definition_is_refused_naming_the_element(server, changes, where, message):
    sp = {k: v for k, v in mothers_maiden_name(**changes).items() if v is not None}
    found_errors = errors(server, sp)
    assert any(w == where and message in d for w, d in found_errors), found_errors
    assert server.engine.registry.get("Patient", sp["code"]) is None


def test_a_composite_needs_components_that_resolve(server):
    composite = interpretation(code="code-interpretation", type="composite", expression="Observation",
                               component=[{"definition": "http://hl7.org/fhir/SearchParameter/clinical-code",
                                           "expression": "code"},
                                          {"definition": "http://example.org/nowhere", "expression": "interpretation"}])
    assert errors(server, composite) == [
        ("SearchParameter.component[1].definition", "component http://example.org/nowhere is not a known search "
                                                    "parameter")]


def test_r4_parameters_are_never_redefined(server):
    assert errors(server, interpretation(code="method", expression="Observation.method")) == [
        ("SearchParameter.code", "the search parameter 'method' of Observation is already defined by R4; choose "
                                 "another code")]
    r4_url = "http://hl7.org/fhir/SearchParameter/Observation-method"
    assert ("SearchParameter.url", f"{r4_url} is already defined by R4") in errors(server, interpretation(url=r4_url))
    # not applied, so not checked for conflicts
    create(server, interpretation(code="method", expression="Observation.method", status="retired"))
    assert server.engine.registry.get("Observation", "method").url == r4_url


def test_urls_and_codes_are_unique_among_the_active_custom_parameters(server):
    first = create(server, mothers_maiden_name())
    assert errors(server, mothers_maiden_name(code="maiden-name")) == [
        ("SearchParameter.url", f"the active SearchParameter/{first.id} already has the url "
                                "http://example.org/fhir/SearchParameter/mothers-maiden-name")]
    assert errors(server, mothers_maiden_name(url="http://example.org/other")) == [
        ("SearchParameter.code", f"the active SearchParameter/{first.id} already defines 'mothers-maiden-name' "
                                 "for Patient")]
    # updating the parameter itself is no conflict
    body = jsonio.loads(first.body)
    server.resources.update(ANONYMOUS, "SearchParameter", first.id, dict(body, description="Maiden name"))


def test_validate_operation_applies_the_checks(server):
    issues = server.operations.validator.validate(mothers_maiden_name(expression="Patient.name.((("))
    assert [i.expression for i in issues if i.severity == "error"] == ["SearchParameter.expression"]


# -- effect --------------------------------------------------------------------------------------------
def test_new_writes_are_indexed_existing_ones_after_reindex(server):
    before = create(server, patient("Dupont")).id
    create(server, mothers_maiden_name())
    after = create(server, patient("Durand")).id
    assert found(server, "Patient", ("mothers-maiden-name", "durand")) == {after}
    assert found(server, "Patient", ("mothers-maiden-name", "dupont")) == set()

    printed: list[str] = []
    counts = run_reindex(server, ["Patient"], echo=printed.append)
    assert counts == {"Patient": 2}
    assert printed[0] == "1 custom search parameter(s): Patient:mothers-maiden-name"
    assert printed[-1] == "2 resources reindexed"
    assert found(server, "Patient", ("mothers-maiden-name", "dupont")) == {before}


def test_a_token_parameter(server):
    create(server, interpretation())
    high = create(server, {"resourceType": "Observation", "status": "final", "code": {"text": "K"},
                           "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                                     "v3-ObservationInterpretation", "code": "H"}]}]})
    create(server, {"resourceType": "Observation", "status": "final", "code": {"text": "K"}})
    assert found(server, "Observation", ("interpretation", "H")) == {high.id}
    assert found(server, "Observation", ("interpretation:missing", "false")) == {high.id}


def test_retiring_or_deleting_withdraws_and_recreating_restores(server):
    created = create(server, mothers_maiden_name())
    registry = server.engine.registry
    body = jsonio.loads(created.body)
    server.resources.update(ANONYMOUS, "SearchParameter", created.id, dict(body, status="retired"))
    assert registry.get("Patient", "mothers-maiden-name") is None
    assert registry.by_url(body["url"]) is None
    server.resources.update(ANONYMOUS, "SearchParameter", created.id, dict(body, status="draft"))
    assert registry.get("Patient", "mothers-maiden-name") is not None
    server.resources.delete(ANONYMOUS, "SearchParameter", created.id)
    assert registry.get("Patient", "mothers-maiden-name") is None
    assert server.search_parameters.applied == []
    with pytest.raises(FHIRError) as unknown:
        found(server, "Patient", ("mothers-maiden-name", "x"))
    assert unknown.value.status == 400


def test_changing_the_code_replaces_the_old_one(server):
    created = create(server, mothers_maiden_name())
    body = jsonio.loads(created.body)
    server.resources.update(ANONYMOUS, "SearchParameter", created.id, dict(body, code="maiden-name"))
    registry = server.engine.registry
    assert registry.get("Patient", "mothers-maiden-name") is None
    assert registry.get("Patient", "maiden-name").url == body["url"]


def test_a_parameter_in_a_transaction_bundle_applies_once_committed(server):
    bundles = BundleService.for_server(server)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": mothers_maiden_name(), "request": {"method": "POST", "url": "SearchParameter"}}]}
    bundles.process(ANONYMOUS, bundle, base="http://example.org/fhir")
    assert server.engine.registry.get("Patient", "mothers-maiden-name") is not None


def test_a_rolled_back_transaction_applies_nothing(server):
    bundles = BundleService.for_server(server)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": mothers_maiden_name(), "request": {"method": "POST", "url": "SearchParameter"}},
        {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}}]}
    with pytest.raises(FHIRError):
        bundles.process(ANONYMOUS, bundle, base="http://example.org/fhir")
    assert server.engine.registry.get("Patient", "mothers-maiden-name") is None


# -- the write hook ------------------------------------------------------------------------------------
def test_the_hook_sees_every_committed_version_including_deletions(server):
    seen: list[tuple] = []
    server.resources.on_write = lambda stored: seen.append((stored.type, stored.version, stored.deleted))
    created = create(server, patient("Dupont"))
    server.resources.delete(ANONYMOUS, "Patient", created.id)
    with pytest.raises(FHIRError):
        create(server, {"resourceType": "Patient", "gender": "robot"})  # refused: nothing written
    assert seen == [("Patient", 1, False), ("Patient", 2, True)]


def test_a_failing_hook_does_not_fail_the_write(server):
    def explode(stored):
        raise RuntimeError("boom")
    server.resources.on_write = explode
    created = create(server, patient("Dupont"))
    assert server.store.read("Patient", created.id) is not None


def test_an_older_version_reported_late_is_ignored(server):
    created = create(server, mothers_maiden_name())
    body = jsonio.loads(created.body)
    retired = server.resources.update(ANONYMOUS, "SearchParameter", created.id, dict(body, status="retired"))
    server.search_parameters.on_write(created)  # version 1 arriving after version 2
    assert retired.resource.version == 2
    assert server.engine.registry.get("Patient", "mothers-maiden-name") is None


# -- other processes ------------------------------------------------------------------------------------
def other_process(store, engine) -> tuple[FHIRServer, Clock]:
    other = make_server(store, engine)
    clock = Clock()
    other.search_parameters.clock = clock
    other.search_parameters.refresh(force=True)  # starts its interval on the fake clock
    return other, clock


def test_a_server_starting_on_the_store_loads_the_active_parameters(server, store, engine):
    create(server, mothers_maiden_name())
    create(server, interpretation(status="retired"))
    later = make_server(store, engine)
    assert [sp["code"] for sp in later.search_parameters.applied] == ["mothers-maiden-name"]
    assert later.engine.registry.get("Observation", "interpretation") is None


def test_another_process_picks_changes_up_at_its_next_refresh(server, store, engine):
    other, clock = other_process(store, engine)
    created = create(server, mothers_maiden_name())
    assert other.search_parameters.refresh() is False  # within the interval: the store is not even read
    assert other.engine.registry.get("Patient", "mothers-maiden-name") is None
    clock.now += 5
    assert other.search_parameters.refresh() is True
    assert other.engine.registry.get("Patient", "mothers-maiden-name") is not None
    # its writes are now indexed for it
    written = create(other, patient("Durand"))
    assert found(server, "Patient", ("mothers-maiden-name", "durand")) == {written.id}

    clock.now += 5
    assert other.search_parameters.refresh() is False  # nothing changed since
    server.resources.delete(ANONYMOUS, "SearchParameter", created.id)
    clock.now += 5
    assert other.search_parameters.refresh() is True
    assert other.engine.registry.get("Patient", "mothers-maiden-name") is None


def test_conflicting_parameters_written_concurrently_resolve_the_same_everywhere(server, store, engine):
    """Two processes each accept one of two clashing parameters (their checks ran before seeing the other)."""
    other, clock = other_process(store, engine)
    a = create(server, mothers_maiden_name())
    b = create(other, mothers_maiden_name(url="http://example.org/other"))
    clock.now += 5
    other.search_parameters.refresh()
    server.search_parameters.refresh(force=True)
    winner = min(a.id, b.id)
    for process in (server, other):
        assert [sp["id"] for sp in process.search_parameters.applied] == [winner]
        assert process.engine.registry.get("Patient", "mothers-maiden-name").url == \
            (mothers_maiden_name()["url"] if winner == a.id else "http://example.org/other")


# -- reindex -----------------------------------------------------------------------------------------
def test_reindex_skips_a_resource_changed_while_it_runs(server, store):
    first = create(server, patient("Dupont"))
    create(server, mothers_maiden_name())
    calls = []

    def index_of(stored):
        calls.append(stored.id)
        if stored.id == first.id:  # the server updates it meanwhile: the new version is indexed already
            server.resources.update(ANONYMOUS, "Patient", first.id, dict(patient("Martin"), id=first.id))
        return server.indexer.index(jsonio.loads(stored.body))

    assert store.reindex("Patient", index_of) == 0
    assert calls == [first.id]
    assert found(server, "Patient", ("mothers-maiden-name", "martin")) == {first.id}
    assert found(server, "Patient", ("mothers-maiden-name", "dupont")) == set()


def test_the_reindex_command_applies_stored_parameters_to_existing_data(tmp_path, engine, capsys):
    from fhir_server.store.sqlite import SQLiteStore
    path = tmp_path / "fhir.sqlite3"
    store = SQLiteStore(path)
    try:
        server = make_server(store, engine)
        before = create(server, patient("Dupont")).id
        create(server, mothers_maiden_name())
        assert found(server, "Patient", ("mothers-maiden-name", "dupont")) == set()
        assert main(["reindex", "--store", f"sqlite:///{path}", "--type", "Patient"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out == ["1 custom search parameter(s): Patient:mothers-maiden-name", "Patient: 1 reindexed",
                       "1 resources reindexed"]
        assert found(server, "Patient", ("mothers-maiden-name", "dupont")) == {before}
        assert main(["reindex", "--store", f"sqlite:///{path}", "--type", "Spaceship"]) == 2
    finally:
        store.close()


def test_stored_parameters_are_kept_as_written(server):
    created = create(server, mothers_maiden_name())
    assert json.loads(server.store.read("SearchParameter", created.id).body)["code"] == "mothers-maiden-name"
    assert found(server, "SearchParameter", ("url", mothers_maiden_name()["url"])) == {created.id}
    assert found(server, "SearchParameter", ("code", "mothers-maiden-name"), ("base", "Patient")) == {created.id}
