"""Bulk Data export ($export, Bulk Data Access IG 2.0.0) from the outside, as a Bulk Data client does it.

Kick-off → poll the Content-Location until 200 → download every output URL → parse the
NDJSON. The worker is run synchronously between polls (``run_once``), so nothing waits.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import pytest

from fhir_server.access.gate import ANONYMOUS, AccessGate, Principal
from fhir_server.bulk.worker import JobControl
from fhir_server.model.outcome import FHIRError
from fhir_server.search.query import Clause, Query, TokenValue
from fhir_server.services.resources import utc_now

from bulk_helpers import make_bulk_app

BASE = "http://localhost"
KICKOFF_HEADERS = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


# -- harness --------------------------------------------------------------------------------------


@pytest.fixture
def bulk_app(store, engine, tmp_path):
    return make_bulk_app(store, engine, tmp_path / "bulk")


@pytest.fixture
def bulk_client(bulk_app):
    return bulk_app.test_client()


def create(app, resource: dict, principal: Principal = ANONYMOUS) -> dict:
    result = app.extensions["fhir"].resources.create(principal, resource["resourceType"], resource)
    return json.loads(result.resource.body)


def local(url: str) -> str:
    assert url.startswith(BASE + "/fhir/"), url
    return url[len(BASE):]


def kickoff(client, url: str, *, method: str = "GET", body: dict | None = None, headers: dict | None = None) -> str:
    headers = {**KICKOFF_HEADERS, **(headers or {})}
    if method == "POST":
        response = client.post(url, data=json.dumps(body or {"resourceType": "Parameters"}),
                               headers={**headers, "Content-Type": "application/fhir+json"})
    else:
        response = client.get(url, headers=headers)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["resourceType"] == "OperationOutcome"
    return response.headers["Content-Location"]


def poll(client, app, location: str, *, rounds: int = 20):
    """Poll like a client; between polls this process's worker does one step."""
    for _ in range(rounds):
        response = client.get(local(location), headers={"Accept": "application/json"})
        if response.status_code != 202:
            return response
        assert response.headers["Retry-After"].isdigit()
        assert 0 < len(response.headers["X-Progress"]) < 100
        app.extensions["fhir"].bulk.worker.run_once()
    raise AssertionError("the export did not finish")


def download(client, manifest: dict, *, accept: str = "application/fhir+ndjson") -> dict[str, list[dict]]:
    """Every output file, parsed: {type: [resources]}; checks each file holds its type and its count."""
    out: dict[str, list[dict]] = {}
    for item in manifest["output"]:
        response = client.get(local(item["url"]), headers={"Accept": accept} if accept else {})
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/fhir+ndjson"
        lines = response.data.decode().splitlines()
        assert all(lines) and response.data.endswith(b"\n")
        resources = [json.loads(line) for line in lines]
        assert {r["resourceType"] for r in resources} == {item["type"]}
        assert item["count"] == len(resources)
        out.setdefault(item["type"], []).extend(resources)
    return out


def export(client, app, url: str, **kw) -> tuple[dict, dict[str, list[dict]]]:
    response = poll(client, app, kickoff(client, url, **kw))
    assert response.status_code == 200, response.get_json()
    return response.get_json(), download(client, response.get_json())


def ids(resources) -> set[str]:
    return {r["id"] for r in resources}


def patient(family: str = "Martin") -> dict:
    return {"resourceType": "Patient", "name": [{"family": family}]}


def observation(subject: str | None, category: str = "laboratory", code: str = "2345-7", **extra) -> dict:
    body = {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}}
    if subject:
        body["subject"] = {"reference": subject}
    body.update(extra)
    return body


def group(*members: str, inactive: tuple[str, ...] = ()) -> dict:
    body = {"resourceType": "Group", "type": "person", "actual": True,
            "member": [{"entity": {"reference": f"Patient/{m}"}} for m in members]
            + [{"entity": {"reference": f"Patient/{m}"}, "inactive": True} for m in inactive]}
    if not body["member"]:
        del body["member"]
    return body


@pytest.fixture
def record(bulk_app):
    """Two patients with observations and conditions, plus data outside any patient's compartment."""
    app = bulk_app
    p1, p2 = create(app, patient("One")), create(app, patient("Two"))
    data = {"Patient": [p1, p2], "Observation": [], "Condition": []}
    for p in (p1, p2):
        for code in ("2345-7", "718-7"):
            data["Observation"].append(create(app, observation(f"Patient/{p['id']}", code=code)))
        data["Condition"].append(create(app, {"resourceType": "Condition", "code": {"text": "Asthma"},
                                              "subject": {"reference": f"Patient/{p['id']}"}}))
    data["Organization"] = [create(app, {"resourceType": "Organization", "name": "Clinic"})]
    data["Practitioner"] = [create(app, {"resourceType": "Practitioner", "name": [{"family": "House"}]})]
    return data


# -- round trips ----------------------------------------------------------------------------------
def test_system_export_round_trip(bulk_client, bulk_app, record, store):
    location = kickoff(bulk_client, "/fhir/$export")
    assert location.startswith(BASE + "/fhir/$export-status/")
    pending = bulk_client.get(local(location), headers={"Accept": "application/json"})
    assert pending.status_code == 202 and pending.headers["X-Progress"] == "queued"
    assert int(pending.headers["Retry-After"]) > 0

    before = utc_now()
    response = poll(bulk_client, bulk_app, location)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert "Expires" in response.headers
    manifest = response.get_json()
    assert manifest["request"] == BASE + "/fhir/$export"
    assert manifest["requiresAccessToken"] is False
    assert manifest["error"] == []
    margin = timedelta(seconds=bulk_app.extensions["fhir"].bulk.settings.transaction_margin)
    transaction_time = datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00"))
    # the start of the run, minus the margin for writes in flight
    assert datetime.fromisoformat(before.replace("Z", "+00:00")) - margin <= transaction_time
    assert transaction_time <= datetime.fromisoformat(utc_now().replace("Z", "+00:00")) - margin
    exported = download(bulk_client, manifest)
    stored = {t: store.count(Query(types=(t,))) for t in bulk_app.extensions["fhir"].definitions.served}
    assert {t: len(v) for t, v in exported.items()} == {t: n for t, n in stored.items() if n}
    for rtype, resources in record.items():
        assert ids(exported[rtype]) == ids(resources)
    # the lines are the stored bytes, byte for byte
    first = manifest["output"][0]
    line = bulk_client.get(local(first["url"])).data.splitlines()[0]
    assert line == store.read(first["type"], json.loads(line)["id"]).body


def test_type_and_since(bulk_client, bulk_app, record):
    location = kickoff(bulk_client, "/fhir/$export?_type=Patient&_type=Condition,Patient",
                       headers={"Accept": "application/fhir+json"})  # no Prefer: processed as respond-async
    bulk_app.extensions["fhir"].bulk.worker.run_pending()
    response = bulk_client.get(local(location), headers={"Accept": "application/fhir+json"})
    manifest, exported = response.get_json(), download(bulk_client, response.get_json(), accept="")
    assert set(exported) == {"Patient", "Condition"}
    assert [o["type"] for o in manifest["output"]] == ["Patient", "Condition"]  # in _type order
    assert ids(exported["Patient"]) == ids(record["Patient"])

    since = utc_now()
    time.sleep(0.002)
    server = bulk_app.extensions["fhir"]
    new = create(bulk_app, observation(f"Patient/{record['Patient'][0]['id']}"))
    changed = dict(record["Patient"][1], gender="female")
    server.resources.update(ANONYMOUS, "Patient", changed["id"], changed)
    manifest, exported = export(bulk_client, bulk_app, f"/fhir/$export?_since={since}")
    assert {t: ids(v) for t, v in exported.items()} == {"Observation": {new["id"]}, "Patient": {changed["id"]}}
    assert manifest["request"].endswith(f"/fhir/$export?_since={since}")
    assert exported["Patient"][0]["gender"] == "female"  # the current version


def test_type_filter_queries_of_a_type_are_ored_and_written_once(bulk_client, bulk_app, record):
    p = record["Patient"][0]["id"]
    vital = create(bulk_app, observation(f"Patient/{p}", category="vital-signs", code="8867-4"))
    filters = ["Observation?category=vital-signs", "Observation?code=http://loinc.org|2345-7",
               "Observation?category=vital-signs,laboratory&code=8867-4"]  # the 3rd repeats the 1st
    from urllib.parse import quote
    url = "/fhir/$export?_type=Observation,Patient&_typeFilter=" + ",".join(quote(f, safe="") for f in filters)
    _, exported = export(bulk_client, bulk_app, url)
    expected = {vital["id"]} | {o["id"] for o in record["Observation"] if o["code"]["coding"][0]["code"] == "2345-7"}
    assert [o["id"] for o in exported["Observation"]] == list(dict.fromkeys(o["id"] for o in exported["Observation"]))
    assert ids(exported["Observation"]) == expected
    assert ids(exported["Patient"]) == ids(record["Patient"])  # no filter for Patient: all of them

    # repeated _typeFilter parameters act like comma-joined values
    url = ("/fhir/$export?_type=Observation&_typeFilter=" + quote(filters[0], safe="")
           + "&_typeFilter=" + quote(filters[1], safe=""))
    assert ids(export(bulk_client, bulk_app, url)[1]["Observation"]) == expected


def test_patient_level_export_is_the_patient_compartment(bulk_client, bulk_app, record):
    app = bulk_app
    cohort = create(app, group(record["Patient"][0]["id"]))
    outside = [create(app, observation(f"Group/{cohort['id']}")), create(app, observation(None))]
    performed = create(app, observation(None, performer=[{"reference": f"Patient/{record['Patient'][1]['id']}"}]))
    _, exported = export(bulk_client, app, "/fhir/Patient/$export")
    assert "Organization" not in exported and "Practitioner" not in exported
    assert ids(exported["Observation"]) == ids(record["Observation"]) | {performed["id"]}
    assert not ids(outside) & ids(exported["Observation"])
    assert ids(exported["Patient"]) == ids(record["Patient"])
    assert ids(exported["Condition"]) == ids(record["Condition"])
    assert ids(exported["Group"]) == {cohort["id"]}  # Group is in the compartment through member

    # outside-the-compartment types in _type are dropped with a warning; only such types: 400
    manifest, exported = export(bulk_client, app, "/fhir/Patient/$export?_type=Condition,Organization")
    assert set(exported) == {"Condition"} and len(manifest["error"]) == 1
    response = bulk_client.get("/fhir/Patient/$export?_type=Organization", headers=KICKOFF_HEADERS)
    assert response.status_code == 400


def test_group_level_export_is_the_members_data(store, engine, tmp_path):
    app = make_bulk_app(store, engine, tmp_path / "bulk", member_chunk=1)  # one member per query: exercises de-dup
    client = app.test_client()
    a, b, c, d = (create(app, patient(n)) for n in "ABCD")
    obs = {p["id"]: create(app, observation(f"Patient/{p['id']}")) for p in (a, b, c, d)}
    team = create(app, {"resourceType": "CareTeam", "subject": {"reference": f"Patient/{a['id']}"},
                        "participant": [{"member": {"reference": f"Patient/{b['id']}"}}]})
    cohort = create(app, group(a["id"], b["id"], inactive=(c["id"],)))
    manifest, exported = export(client, app, f"/fhir/Group/{cohort['id']}/$export")
    assert manifest["request"] == f"{BASE}/fhir/Group/{cohort['id']}/$export"
    assert ids(exported["Patient"]) == {a["id"], b["id"]}
    assert ids(exported["Observation"]) == {obs[a["id"]]["id"], obs[b["id"]]["id"]}
    assert [t["id"] for t in exported["CareTeam"]] == [team["id"]]  # in both members' compartments, once
    assert ids(exported["Group"]) == {cohort["id"]}

    _, exported = export(client, app, f"/fhir/Group/{cohort['id']}/$export?_type=Observation"
                                      "&_typeFilter=Observation%3Fcode%3D2345-7")
    assert set(exported) == {"Observation"} and len(exported["Observation"]) == 2

    empty = create(app, group())
    assert export(client, app, f"/fhir/Group/{empty['id']}/$export")[0]["output"] == []
    assert client.get("/fhir/Group/nope/$export", headers=KICKOFF_HEADERS).status_code == 404


def test_post_kickoff_with_parameters(bulk_client, bulk_app, record):
    since = "2000-01-01T00:00:00Z"
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
        {"name": "_since", "valueInstant": since},
        {"name": "_type", "valueString": "Condition"}, {"name": "_type", "valueString": "Organization"}]}
    manifest, exported = export(bulk_client, bulk_app, "/fhir/$export", method="POST", body=body)
    assert manifest["request"] == BASE + "/fhir/$export"  # a POST's parameters are not in the URL
    assert {t: ids(v) for t, v in exported.items()} == {"Condition": ids(record["Condition"]),
                                                        "Organization": ids(record["Organization"])}


def test_several_files_per_type_above_the_configured_size(store, engine, tmp_path):
    app = make_bulk_app(store, engine, tmp_path / "bulk", max_file_resources=2)
    client = app.test_client()
    created = [create(app, patient(f"P{i}")) for i in range(5)]
    manifest, exported = export(client, app, "/fhir/$export?_type=Patient")
    assert [o["count"] for o in manifest["output"]] == [2, 2, 1]
    assert len({o["url"] for o in manifest["output"]}) == 3
    assert ids(exported["Patient"]) == ids(created)

    limit = 2 * max(len(store.read("Patient", p["id"]).body) for p in created) + 2
    app = make_bulk_app(store, engine, tmp_path / "bulk2", max_file_bytes=limit)
    client = app.test_client()
    manifest, exported = export(client, app, "/fhir/$export?_type=Patient")
    assert len(manifest["output"]) >= 3 and sum(o["count"] for o in manifest["output"]) == 5
    for item in manifest["output"]:
        assert len(client.get(local(item["url"])).data) <= limit


# -- cancel, delete, restart ----------------------------------------------------------------------
def test_delete_before_the_run_cancels_and_then_404(store, engine, tmp_path):
    app = make_bulk_app(store, engine, tmp_path / "bulk", max_active_per_client=1)
    client = app.test_client()
    location = kickoff(client, "/fhir/$export")
    busy = client.get("/fhir/$export", headers=KICKOFF_HEADERS)  # one export at a time for this client
    assert busy.status_code == 429 and busy.headers["Retry-After"].isdigit()
    response = client.delete(local(location))
    assert response.status_code == 202
    assert client.get(local(location)).status_code == 404
    assert client.delete(local(location)).status_code == 404
    assert app.extensions["fhir"].bulk.worker.run_pending() == 0  # nothing left to run
    kickoff(client, "/fhir/$export")  # the deleted one no longer counts

    response = client.post("/fhir/$export", data=json.dumps({"resourceType": "Patient"}),
                           headers={**KICKOFF_HEADERS, "Content-Type": "application/fhir+json"})
    assert response.status_code == 400
    assert client.get("/fhir/$export-status/" + "0" * 32).status_code == 404
    assert client.get("/fhir/$export-file/" + "0" * 32 + "/Patient-1.ndjson").status_code == 404


def test_delete_while_running_stops_the_worker_and_removes_the_files(store, engine, tmp_path, monkeypatch):
    app = make_bulk_app(store, engine, tmp_path / "bulk", page_size=2)
    client = app.test_client()
    for i in range(7):
        create(app, patient(f"P{i}"))
    location = kickoff(client, "/fhir/$export?_type=Patient")
    pages = []
    original = JobControl.page_done

    def page_done(self, progress):
        pages.append(progress)
        if len(pages) == 1:
            assert client.delete(local(location)).status_code == 202
        original(self, progress)

    monkeypatch.setattr(JobControl, "page_done", page_done)
    app.extensions["fhir"].bulk.worker.run_pending()
    assert pages == ["Patient: 2 resources (type 1 of 1)"]  # stopped at the first page after the DELETE
    assert client.get(local(location)).status_code == 404
    assert app.extensions["fhir"].bulk.jobs.get(location.rsplit("/", 1)[1]) is None
    assert list((tmp_path / "bulk").iterdir()) == []


def test_delete_after_completion_removes_the_files(bulk_client, bulk_app, record, tmp_path):
    manifest, _ = export(bulk_client, bulk_app, "/fhir/$export?_type=Patient")
    job_dir = next((tmp_path / "bulk").iterdir())
    location = BASE + "/fhir/$export-status/" + job_dir.name
    assert bulk_client.delete(local(location)).status_code == 202
    assert bulk_client.get(local(manifest["output"][0]["url"])).status_code == 404
    bulk_app.extensions["fhir"].bulk.worker.run_pending()
    assert not job_dir.exists()


def test_a_job_survives_a_restart(store, engine, tmp_path):
    first = make_bulk_app(store, engine, tmp_path / "bulk")
    for i in range(3):
        create(first, patient(f"P{i}"))
    location = kickoff(first.test_client(), "/fhir/$export?_type=Patient")
    # the process stops before the worker ran; a new one starts on the same database
    if hasattr(store, "path"):
        from fhir_server.store.sqlite import SQLiteStore
        store = SQLiteStore(store.path)
    second = make_bulk_app(store, engine, tmp_path / "bulk")
    client = second.test_client()
    response = poll(client, second, location)
    assert response.status_code == 200
    assert len(download(client, response.get_json())["Patient"]) == 3


def test_a_job_whose_worker_died_is_taken_over_and_restarted_cleanly(bulk_client, bulk_app, record, tmp_path):
    location = kickoff(bulk_client, "/fhir/$export?_type=Patient,Observation")
    bulk = bulk_app.extensions["fhir"].bulk
    job = bulk.jobs.claim("dead-worker", time.time() - 120, 60)  # claimed, then the worker died
    partial = tmp_path / "bulk" / job.id / "attempt-1" / "Patient-1.ndjson"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b'{"resourceType":"Patient","id":"half')
    assert bulk_client.get(local(location)).status_code == 202

    assert bulk.worker.run_once()  # the lease expired: taken over
    assert not partial.parent.exists()
    response = poll(bulk_client, bulk_app, location)
    exported = download(bulk_client, response.get_json())
    assert ids(exported["Patient"]) == ids(record["Patient"])
    assert bulk.jobs.heartbeat(job.id, "dead-worker", time.time() + 60) == "lost"


def test_a_job_whose_group_vanished_fails_with_500(bulk_client, bulk_app, record):
    cohort = create(bulk_app, group(record["Patient"][0]["id"]))
    location = kickoff(bulk_client, f"/fhir/Group/{cohort['id']}/$export")
    bulk_app.extensions["fhir"].resources.delete(ANONYMOUS, "Group", cohort["id"])
    response = poll(bulk_client, bulk_app, location)
    assert response.status_code == 500
    assert "no longer exists" in response.get_json()["issue"][0]["diagnostics"]
    assert bulk_client.delete(local(location)).status_code == 202


# -- parameters -----------------------------------------------------------------------------------
KICKOFF_CASES = [
    ("/fhir/$export?_outputFormat=text/csv", None, 400),
    ("/fhir/$export?_since=yesterday", None, 400),
    ("/fhir/$export?_type=Unicorn", None, 400),
    ("/fhir/$export?_type=Unicorn,Patient", "respond-async, handling=lenient", 202),
    ("/fhir/$export?_typeFilter=Observation", None, 400),
    ("/fhir/$export?_typeFilter=Observation%3Fcode%3Dx%26_sort%3Dcode", None, 400),
    ("/fhir/$export?_typeFilter=Observation%3Funknown%3Dx", None, 400),
    ("/fhir/$export?_typeFilter=Observation%3Funknown%3Dx", "respond-async, handling=lenient", 202),
    ("/fhir/$export?includeAssociatedData=LatestProvenanceResources", "respond-async, handling=strict", 400),
    ("/fhir/$export?_elements=id&includeAssociatedData=LatestProvenanceResources", None, 202),
    ("/fhir/$export?_outputFormat=ndjson&_outputFormat=application/ndjson", None, 400),
    ("/fhir/$export?_outputFormat=application%2Fndjson", None, 202),
    ("/fhir/$export?_outputFormat=ndjson", "", 202),  # no Prefer: processed as respond-async
    ("/fhir/$export?_outputFormat=application/fhir+ndjson&_since=2020-01-01T00:00:00+01:00", None, 202),  # '+'
]


def test_kickoff_parameters(store, engine, tmp_path):
    app = make_bulk_app(store, engine, tmp_path / "bulk", max_active_per_client=100)
    client = app.test_client()
    for url, prefer, status in KICKOFF_CASES:
        headers = dict(KICKOFF_HEADERS)
        if prefer is not None:
            headers["Prefer"] = prefer
        response = client.get(url, headers=headers)
        assert response.status_code == status, (url, response.get_json())
        assert response.get_json()["resourceType"] == "OperationOutcome"
        if status == 400:
            assert response.get_json()["issue"][0]["severity"] == "error"
        else:
            assert response.headers["Content-Location"]


def test_ignored_parameters_are_reported_in_the_error_files(bulk_client, bulk_app, record):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient"},
        {"name": "includeAssociatedData", "valueCode": "LatestProvenanceResources"}]}
    strict = bulk_client.post("/fhir/Patient/$export", data=json.dumps(body),
                              headers={**KICKOFF_HEADERS, "Prefer": "respond-async, handling=strict",
                                       "Content-Type": "application/fhir+json"})
    assert strict.status_code == 400
    manifest, exported = export(bulk_client, bulk_app, "/fhir/Patient/$export", method="POST", body=body)
    assert len(exported["Patient"]) == 2
    [error] = manifest["error"]
    assert error["type"] == "OperationOutcome" and error["count"] == 1
    outcome = json.loads(bulk_client.get(local(error["url"])).data.splitlines()[0])
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["expression"] == ["includeAssociatedData"]



def test_elements_keep_the_named_root_elements_and_the_mandatory_ones(bulk_client, bulk_app, record):
    manifest, exported = export(bulk_client, bulk_app, "/fhir/$export?_type=Patient,Observation,Condition"
                                "&_elements=id,Observation.code,Patient.name,Encounter.status")
    subsetted = "SUBSETTED"
    for resources in exported.values():
        assert all(subsetted in {t["code"] for t in r["meta"]["tag"]} for r in resources)
    assert {k for p in exported["Patient"] for k in p} == {"resourceType", "id", "meta", "name"}
    # Observation.status is mandatory: kept with the named code
    assert {k for o in exported["Observation"] for k in o} == {"resourceType", "id", "meta", "code", "status"}
    assert {k for c in exported["Condition"] for k in c} == {"resourceType", "id", "meta", "subject"}
    assert ids(exported["Observation"]) == ids(record["Observation"])
    # a type the export does not hold is reported in the error file
    [error] = manifest["error"]
    outcome = json.loads(bulk_client.get(local(error["url"])).data.splitlines()[0])
    assert "Encounter" in outcome["issue"][0]["diagnostics"]
    refused = bulk_client.get("/fhir/$export?_elements=name.given", headers=KICKOFF_HEADERS)
    assert refused.status_code == 400 and refused.get_json()["issue"][0]["expression"] == ["_elements"]

def _patient_parameters(*pids: str, **values: str) -> dict:
    return {"resourceType": "Parameters", "parameter": [
        *({"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}} for pid in pids),
        *({"name": name, "valueString": value} for name, value in values.items())]}


def test_the_patient_parameter_narrows_a_patient_level_export_to_those_compartments(bulk_client, bulk_app, record):
    one, two = (p["id"] for p in record["Patient"])
    manifest, exported = export(bulk_client, bulk_app, "/fhir/Patient/$export", method="POST",
                                body=_patient_parameters(one))
    assert manifest["error"] == []
    assert ids(exported["Patient"]) == {one}
    mine = {o["id"] for o in record["Observation"] if o["subject"]["reference"] == f"Patient/{one}"}
    assert ids(exported["Observation"]) == mine and len(mine) == 2
    assert [c["subject"]["reference"] for c in exported["Condition"]] == [f"Patient/{one}"]
    # with _type, and naming both: both compartments
    _, exported = export(bulk_client, bulk_app, "/fhir/Patient/$export", method="POST",
                         body=_patient_parameters(one, two, _type="Condition"))
    assert set(exported) == {"Condition"} and ids(exported["Condition"]) == ids(record["Condition"])


def test_the_patient_parameter_of_a_group_export_must_name_members(store, engine, tmp_path):
    app = make_bulk_app(store, engine, tmp_path / "bulk")
    client = app.test_client()
    a, b, c = (create(app, patient(n)) for n in "ABC")
    obs = {p["id"]: create(app, observation(f"Patient/{p['id']}")) for p in (a, b, c)}
    cohort = create(app, group(a["id"], b["id"]))
    url = f"/fhir/Group/{cohort['id']}/$export"
    _, exported = export(client, app, url, method="POST", body=_patient_parameters(b["id"]))
    assert ids(exported["Patient"]) == {b["id"]} and ids(exported["Observation"]) == {obs[b["id"]]["id"]}
    headers = {**KICKOFF_HEADERS, "Content-Type": "application/fhir+json"}
    refusals = [(url, _patient_parameters(c["id"]), "not a member"),  # exists, outside the Group
                (url, _patient_parameters("nobody"), "not known"),
                ("/fhir/Patient/$export", {"resourceType": "Parameters", "parameter": [
                    {"name": "patient", "valueReference": {"reference": "Observation/x"}}]}, "not a reference"),
                ("/fhir/$export", _patient_parameters(a["id"]), "Patient- and Group-level")]
    for where, body, message in refusals:
        response = client.post(where, data=json.dumps(body), headers=headers)
        assert response.status_code == 400, (where, body)
        issue = response.get_json()["issue"][0]
        assert message in issue["diagnostics"] and issue["expression"] == ["patient"]


# -- access ---------------------------------------------------------------------------------------
class TokenGate(AccessGate):
    """``Authorization: Bearer <name>``; the nurse may not export Organizations and sees vital signs only."""

    def principal(self, authorization):
        if not authorization:
            raise FHIRError.of(401, "login", "token required")
        return Principal(authorization.split()[-1], frozenset({"system/*.read"}), authenticated=True)

    def authorize(self, principal, interaction, rtype, resource=None):
        if principal.subject == "nurse" and interaction == "export" and rtype == "Organization":
            raise FHIRError.of(403, "forbidden", "no organizations for nurses")

    def constrain(self, principal, rtype):
        if principal.subject == "nurse" and rtype == "Observation":
            return [Clause("category", "token", None, (TokenValue(None, "vital-signs", False),))]
        return []


def test_the_principal_constraints_apply_and_only_the_owner_sees_the_job(store, engine, tmp_path):
    app = make_bulk_app(store, engine, tmp_path / "bulk", gate=TokenGate())
    client = app.test_client()
    someone = Principal("admin", authenticated=True)
    p = create(app, patient(), someone)
    vital = create(app, observation(f"Patient/{p['id']}", category="vital-signs"), someone)
    create(app, observation(f"Patient/{p['id']}", category="laboratory"), someone)
    create(app, {"resourceType": "Organization", "name": "Clinic"}, someone)
    nurse = {"Authorization": "Bearer nurse"}

    assert client.get("/fhir/$export", headers=KICKOFF_HEADERS).status_code == 401
    assert client.get("/fhir/$export?_type=Organization", headers={**KICKOFF_HEADERS, **nurse}).status_code == 403
    location = kickoff(client, "/fhir/$export", headers=nurse)
    other = {"Authorization": "Bearer intruder"}
    assert client.get(local(location), headers=other).status_code == 404
    assert client.delete(local(location), headers=other).status_code == 404
    app.extensions["fhir"].bulk.worker.run_pending()
    response = client.get(local(location), headers=nurse)
    manifest = response.get_json()
    assert manifest["requiresAccessToken"] is True
    assert client.get(local(manifest["output"][0]["url"]), headers=other).status_code == 404
    files: dict[str, list] = {}
    for item in manifest["output"]:
        lines = client.get(local(item["url"]), headers=nurse).data.splitlines()
        files.setdefault(item["type"], []).extend(json.loads(line) for line in lines)
    assert "Organization" not in files
    assert ids(files["Observation"]) == {vital["id"]}
    assert ids(files["Patient"]) == {p["id"]}
