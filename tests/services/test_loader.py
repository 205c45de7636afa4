"""`fhir-server load`: chunked writes through the validated path, per-resource rejections, resumable."""
from __future__ import annotations

import json

import pytest

from fhir_server.access.gate import ANONYMOUS
from fhir_server.cli import iter_resources, main
from fhir_server.services.loader import Loader, LoadState


def patient(n: int) -> dict:
    return {"resourceType": "Patient", "id": f"p{n}", "name": [{"family": f"Family{n}"}]}


@pytest.fixture
def server(app):
    return app.extensions["fhir"]


def test_a_bad_resource_is_rejected_with_its_reason_and_the_rest_of_its_chunk_lands(server):
    items = [("a", patient(1)), ("b", dict(patient(2), gender="robot")), ("c", patient(3)),
             ("d", {"resourceType": "Spaceship"}), ("e", ValueError("broken JSON"))]
    report = Loader(server.resources, ANONYMOUS).load(items, chunk_size=10)
    assert report.loaded == 2
    rejected = dict(report.rejected)
    assert set(rejected) == {"b", "d", "e"}
    assert "Patient.gender" in rejected["b"]
    assert {r.id for r in server.store.read_many([("Patient", "p1"), ("Patient", "p2"), ("Patient", "p3")])} \
        == {"p1", "p3"}


def test_an_interrupted_load_resumes_where_it_stopped(server, tmp_path):
    source = tmp_path / "patients.ndjson"
    source.write_text("\n".join(json.dumps(patient(n)) for n in range(10)))
    state = LoadState(tmp_path / "state.json", [source])

    def crash_after_first_chunk(report):
        if report.loaded >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Loader(server.resources, ANONYMOUS).load(iter_resources(source), chunk_size=4, state=state,
                                                 progress=crash_after_first_chunk)
    assert state.done() == 4
    report = Loader(server.resources, ANONYMOUS).load(iter_resources(source), chunk_size=4, state=state)
    assert report.skipped == 4 and report.loaded == 6
    history = server.store.history("Patient", count=100)
    assert history.total == 10, "no resource was written twice"


def test_bundle_urn_references_are_rewritten_to_the_loaded_ids(tmp_path):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
         "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": {"resourceType": "Condition",
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
         "request": {"method": "POST", "url": "Condition"}}]}
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    (_, patient_resource), (_, condition) = list(iter_resources(path))
    assert condition["subject"]["reference"] == f"Patient/{patient_resource['id']}"


def test_the_load_command_reports_what_was_rejected(tmp_path, capsys):
    source = tmp_path / "data.ndjson"
    source.write_text(json.dumps(patient(1)) + "\n" + json.dumps(dict(patient(2), birthDate="12/25/1974")) + "\n")
    code = main(["load", "--quiet", "--store", f"sqlite:///{tmp_path / 'db.sqlite3'}", str(source)])
    out = capsys.readouterr().out
    assert code == 1
    assert "1 resources loaded, 1 rejected" in out
    assert "data.ndjson:2" in out and "Patient.birthDate" in out


# -- worker processes (validation and indexing in forked workers, writes in this process) -------------------

def load_with_workers(server, items, **kwargs):
    return Loader(server.resources, ANONYMOUS, workers=2, worker_server=lambda: server).load(items, **kwargs)


def test_with_workers_bad_resources_are_rejected_with_reasons_and_the_rest_lands(server):
    items = [(f"ok{n}", patient(n)) for n in range(25)]
    items[3] = ("bad-gender", dict(patient(3), gender="robot"))
    items[11] = ("unknown-type", {"resourceType": "Spaceship"})
    items[17] = ("broken", ValueError("broken JSON"))
    items[20] = ("no-resource", ["not", "a", "resource"])
    report = load_with_workers(server, items, chunk_size=4)
    rejected = dict(report.rejected)
    assert set(rejected) == {"bad-gender", "unknown-type", "broken", "no-resource"}
    assert "Patient.gender" in rejected["bad-gender"] and "Spaceship" in rejected["unknown-type"]
    assert "broken JSON" in rejected["broken"]
    assert report.loaded == 21
    expected = {f"p{n}" for n in range(25)} - {"p3", "p11", "p17", "p20"}
    assert {r.id for r in server.store.read_many([("Patient", f"p{n}") for n in range(25)])} == expected
    query = server.parser.parse(("Patient",), [("family", "Family24")]).query
    assert [r.id for r in server.store.search(query, count=10).resources] == ["p24"], "indexed by the workers"


def test_with_workers_the_load_keeps_input_order_and_resumes(server, tmp_path):
    source = tmp_path / "patients.ndjson"
    source.write_text("\n".join(json.dumps(patient(n)) for n in range(30)))
    state = LoadState(tmp_path / "state.json", [source])

    def crash(report):
        if report.loaded >= 12:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        load_with_workers(server, iter_resources(source), chunk_size=4, state=state, progress=crash)
    assert state.done() == 12
    report = load_with_workers(server, iter_resources(source), chunk_size=4, state=state)
    assert report.skipped == 12 and report.loaded == 18
    history = server.store.history("Patient", count=100)
    assert history.total == 30, "no resource was written twice"
    assert [e.id for e in reversed(history.entries)] == [f"p{n}" for n in range(30)], "written in input order"


def test_with_workers_a_search_parameter_loaded_first_indexes_what_follows(server):
    """Chunks prepared by the workers before the SearchParameter was committed are prepared again."""
    mmn = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
    sp = {"resourceType": "SearchParameter", "id": "mmn", "url": "http://example.org/fhir/SearchParameter/mmn",
          "name": "MothersMaidenName", "status": "active", "description": "Mother's maiden name",
          "code": "mothers-maiden-name", "base": ["Patient"], "type": "string",
          "expression": f"Patient.extension('{mmn}').value"}
    items = [("sp", sp)] + [(f"p{n}", dict(patient(n), extension=[{"url": mmn, "valueString": f"Maiden{n}"}]))
                            for n in range(12)]
    report = load_with_workers(server, items, chunk_size=1)
    assert report.loaded == 13 and not report.rejected
    for n in (0, 5, 11):
        query = server.parser.parse(("Patient",), [("mothers-maiden-name", f"Maiden{n}")]).query
        assert [r.id for r in server.store.search(query, count=10).resources] == [f"p{n}"]


def test_the_load_command_with_workers(tmp_path, capsys):
    source = tmp_path / "data.ndjson"
    source.write_text("\n".join(json.dumps(dict(patient(n), birthDate="12/25/1974") if n == 7 else patient(n))
                                for n in range(40)) + "\n")
    code = main(["load", "--quiet", "--workers", "2", "--chunk", "8", "--store",
                 f"sqlite:///{tmp_path / 'db.sqlite3'}", str(source)])
    out = capsys.readouterr().out
    assert code == 1
    assert "39 resources loaded, 1 rejected" in out
    assert "data.ndjson:8" in out and "Patient.birthDate" in out
