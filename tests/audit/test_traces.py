"""Every access to the record leaves an AuditEvent: who (identifier, role), which patient and items, what,
when, the outcome and the purpose of use (issue #7 item 9; docs/adr/0008-traceability.md)."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

from access_helpers import admin_headers, ids
from audit_helpers import all_traces, flush, mark, traces

from fhir_server.audit.model import ACCOUNT_SYSTEM, CLIENT_SYSTEM, DMP_AUDIT_PROFILE, RPPS_SYSTEM

DR = {"fhirUser": "Practitioner/dr1", "role": "admin"}  # a professional account with every right (the
# record's consent rules for plain practitioners are tested with the access rules)


def practitioner(smart, scope="user/*.cruds"):
    return smart.auth(scope, **DR)


def one(events: list[dict]) -> dict:
    assert len(events) == 1, [e.get("subtype") for e in events]
    return events[0]


def code(concept: dict | list) -> str:
    if isinstance(concept, list):
        concept = concept[0]
    return (concept.get("coding") or [concept])[0]["code"]


def patients(event: dict) -> set[str]:
    return {e["what"]["reference"].split("/_history")[0] for e in event.get("entity", [])
            if "role" in e and code(e["role"]) == "1"}


def items(event: dict) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", [])
            if "role" not in e and "reference" in e.get("what", {})]


def role(agent: dict) -> str:
    return next(c["code"] for c in agent["type"]["coding"] if c["system"].endswith("dmp-agent-role"))


def requestor(event: dict) -> dict:
    return one([a for a in event["agent"] if a["requestor"]])


def test_a_read_is_traced_with_who_what_whom_and_why(record):
    response = record.get("/fhir/Observation/oa1", practitioner(record))
    assert response.status_code == 200
    event = one(traces(record))
    assert event["type"]["code"] == "rest" and code(event["subtype"]) == "read"
    assert event["action"] == "R" and event["outcome"] == "0"
    assert event["period"]["start"] <= event["recorded"]
    who = requestor(event)
    assert who["who"]["reference"] == "Practitioner/dr1"
    assert who["who"]["identifier"] == {"system": ACCOUNT_SYSTEM, "value": "account-1"}  # dr1 has no RPPS
    assert role(who) == "admin"
    assert code(who["purposeOfUse"]) == "TREAT" and code(event["purposeOfEvent"]) == "TREAT"
    app = one([a for a in event["agent"] if not a["requestor"]])
    assert app["who"] == {"display": "app-1"}
    assert patients(event) == {"Patient/pa"}
    assert items(event) == ["Observation/oa1/_history/1"]
    # who looked at my record, when, and why, in one line a portal can show
    line = event["text"]["div"]
    assert all(part in line for part in (event["recorded"], "Practitioner/dr1", "via app-1", "read",
                                         "Observation/oa1", "purpose: treatment", "success"))


def test_a_professional_with_an_rpps_number_is_identified_by_it(record):
    dr = {"resourceType": "Practitioner", "id": "dr2",
          "identifier": [{"system": RPPS_SYSTEM, "value": "810002345678"}]}
    assert record.send("PUT", "/fhir/Practitioner/dr2", dr, admin_headers(record)).status_code == 201
    mark(record)
    headers = record.auth("user/*.rs", fhirUser="Practitioner/dr2", role="admin")
    assert record.get("/fhir/Patient/pa", headers).status_code == 200
    event = one(traces(record))
    who = requestor(event)
    assert who["who"] == {"reference": "Practitioner/dr2", "identifier": {"system": RPPS_SYSTEM,
                                                                          "value": "810002345678"}}
    assert who["altId"] == "account-1"
    assert patients(event) == {"Patient/pa"}
    assert [e["what"]["reference"] for e in event["entity"]] == ["Patient/pa/_history/1"]


def test_a_search_lists_every_item_it_returned_matches_and_includes(record):
    url = "/fhir/Observation?category=laboratory&_include=Observation:performer"
    bundle = record.get(url, practitioner(record)).get_json()
    assert ids(bundle, "match") == {"Observation/ob1", "Observation/ob2", "Observation/oa1"}
    assert ids(bundle, "include") == {"Practitioner/dr1"}
    event = one(traces(record))
    assert code(event["subtype"]) == "search-type" and event["action"] == "E"
    assert sorted(items(event)) == ["Observation/oa1/_history/1", "Observation/ob1/_history/1",
                                    "Observation/ob2/_history/1", "Practitioner/dr1/_history/1"]
    include = [e for e in event["entity"] if e.get("what", {}).get("reference", "").startswith("Practitioner/")]
    assert include[0]["detail"] == [{"type": "mode", "valueString": "include"}]
    assert patients(event) == {"Patient/pa", "Patient/pb"}
    query = one([e for e in event["entity"] if "role" in e and code(e["role"]) == "24"])
    assert base64.b64decode(query["query"]).decode() == \
        "category=laboratory&_include=Observation:performer"


def test_a_write_is_traced_with_the_version_written(record):
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "glycemia"},
            "subject": {"reference": "Patient/pa"}}
    response = record.send("POST", "/fhir/Observation", body, practitioner(record))
    assert response.status_code == 201, response.get_json()
    new = response.get_json()["id"]
    event = one(traces(record))
    assert code(event["subtype"]) == "create" and event["action"] == "C" and event["outcome"] == "0"
    who = requestor(event)
    assert who["who"]["reference"] == "Practitioner/dr1"
    assert items(event) == [f"Observation/{new}/_history/1"]
    assert patients(event) == {"Patient/pa"}


def test_updates_and_deletes_are_traced(record):
    headers = admin_headers(record)
    changed = dict(record.get("/fhir/Condition/ca1", headers).get_json(), code={"text": "severe asthma"})
    mark(record)
    assert record.send("PUT", "/fhir/Condition/ca1", changed, headers).status_code == 200
    assert record.client.delete("/fhir/Condition/ca1", headers=headers).status_code == 200
    update, delete = traces(record)
    assert (code(update["subtype"]), update["action"]) == ("update", "U")
    assert items(update) == ["Condition/ca1/_history/2"]
    assert (code(delete["subtype"]), delete["action"]) == ("delete", "D")
    assert items(delete) == ["Condition/ca1/_history/3"]
    assert patients(update) == patients(delete) == {"Patient/pa"}  # found from the version before the deletion
    system = requestor(delete)
    assert system["who"]["identifier"] == {"system": CLIENT_SYSTEM, "value": "app-1"}
    assert role(system) == "system" and len(delete["agent"]) == 1


def test_a_refused_read_is_traced_without_revealing_whose_record_it_was(record):
    response = record.get("/fhir/Observation/ob1", record.auth("patient/*.rs", patient="pa"))
    assert response.status_code == 404
    event = one(traces(record))
    assert event["outcome"] == "4" and event["outcomeDesc"].startswith("HTTP 404")
    assert requestor(event)["who"]["reference"] == "Patient/pa"
    assert items(event) == ["Observation/ob1"]
    # the requester finds this trace in their own compartment: it must not say ob1 is B's
    assert patients(event) == set()


def test_refusals_by_the_gate_are_serious_failures_with_who_when_known(record):
    assert record.client.get("/fhir/Patient/pa").status_code == 401
    assert record.get("/fhir/Patient/pa", {"Authorization": "Bearer forged"}).status_code == 401
    assert record.get("/fhir/Condition/cb1", record.auth("patient/Observation.rs", patient="pb")).status_code == 403
    anonymous, forged, refused = traces(record)
    for event in (anonymous, forged):
        assert event["outcome"] == "8"
        assert requestor(event)["who"]["identifier"]["value"] == "unauthenticated"
        assert patients(event) == {"Patient/pa"}  # the request named her
    assert refused["outcome"] == "8"
    assert requestor(refused)["who"]["reference"] == "Patient/pb"
    assert items(refused) == ["Condition/cb1"]


def test_no_trace_for_the_capability_statement_or_discovery(record):
    assert record.client.get("/fhir/metadata").status_code == 200
    record.client.get("/fhir/.well-known/smart-configuration")
    assert traces(record) == []


def test_traces_are_searchable_by_patient_and_date(record):
    since = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat(timespec="seconds")
    record.get("/fhir/Observation/oa1", practitioner(record))
    record.get("/fhir/Observation/ob1", practitioner(record))
    flush(record)
    headers = admin_headers(record)
    found = record.client.get("/fhir/AuditEvent", query_string={"patient": "Patient/pa", "date": f"ge{since}"},
                              headers=headers).get_json()
    reads = [e["resource"] for e in found.get("entry", []) if code(e["resource"].get("subtype", [{}])) == "read"]
    assert [items(e) for e in reads] == [["Observation/oa1/_history/1"]]
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(timespec="seconds")
    none = record.client.get("/fhir/AuditEvent", query_string={"patient": "Patient/pa", "date": f"ge{later}"},
                             headers=headers).get_json()
    assert none["total"] == 0
    # the patient reads her own traces: who looked at my record, when, why
    mine = record.client.get("/fhir/AuditEvent?patient=Patient/pa",
                             headers=record.auth("patient/AuditEvent.rs", patient="pa")).get_json()
    looked = {(requestor(e["resource"])["who"].get("reference"), code(e["resource"]["purposeOfEvent"]))
              for e in mine["entry"] if code(e["resource"].get("subtype", [{}])) == "read"}
    assert ("Practitioner/dr1", "TREAT") in looked


def test_every_trace_validates_against_the_dmp_auditevent_profile(record):
    headers = admin_headers(record)
    record.get("/fhir/Observation/oa1", practitioner(record))
    record.get("/fhir/Observation?subject=Patient/pa&_include=Observation:performer", practitioner(record))
    record.get("/fhir/Observation/ob1", record.auth("patient/*.rs", patient="pa"))
    record.client.get("/fhir/Patient/pa")
    record.send("POST", "/fhir/Condition", {"resourceType": "Condition", "subject": {"reference": "Patient/pa"},
                                            "code": {"text": "x"}}, headers)
    record.get("/fhir/Patient/pa/$everything", headers)
    events = traces(record)
    assert len(events) == 6
    validator = record.app.extensions["fhir"].engine.profiles
    for event in events:
        issues = validator.validate_all(event, [DMP_AUDIT_PROFILE])
        assert [i for i in issues if i.severity in ("error", "fatal")] == [], (event, issues)


def test_everything_lists_what_it_returned(record):
    bundle = record.get("/fhir/Patient/pa/$everything", admin_headers(record)).get_json()
    event = one(traces(record))
    assert code(event["subtype"]) == "operation"
    query = one([e for e in event["entity"] if "role" in e and code(e["role"]) == "24"])
    assert query["description"] == "$everything"
    returned = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]
                if "id" in e["resource"]}
    listed = {r.split("/_history")[0] for r in items(event)} | patients(event)
    assert returned <= listed and "Patient/pa" in patients(event)


def test_each_entry_of_a_transaction_is_traced(record):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Condition", "subject": {"reference": "Patient/pb"},
                                               "code": {"text": "x"}},
         "request": {"method": "POST", "url": "Condition"}},
        {"request": {"method": "GET", "url": "Observation?subject=Patient/pa"}},
    ]}
    response = record.send("POST", "/fhir", bundle, admin_headers(record))
    assert response.status_code == 200, response.get_json()
    create, search = traces(record)
    assert code(create["subtype"]) == "create" and patients(create) == {"Patient/pb"}
    assert code(search["subtype"]) == "search-type"
    assert sorted(items(search)) == ["Observation/oa1/_history/1", "Observation/oa2/_history/1"]


def test_a_purpose_of_use_set_by_the_gate_is_the_trace_purpose(record):
    """Emergency access (BTG, with its reason) and the SAMU regulating doctor (CENTRE_REGULATION)."""
    from fhir_server.access.gate import Principal
    from fhir_server.audit.model import AuditRecord, Item
    builder = record.app.extensions["fhir_audit"].builder
    validator = record.app.extensions["fhir"].engine.profiles
    for purpose, system in (("BTG", "http://terminology.hl7.org/CodeSystem/v3-ActReason"),
                            ("CENTRE_REGULATION", "https://dmp.example.org/fhir/CodeSystem/dmp-purpose-of-use")):
        principal = Principal("account-9", frozenset({"user/*.rs"}), None, True, "Practitioner/dr1", "app-1",
                              "practitioner", purpose)
        event = builder.build(AuditRecord("rest", "read", "R", 1.0, 2.0, 200, principal,
                                          [Item("Observation", "oa1", 1, None)], server="http://fhir.test/fhir"))
        coding = event["purposeOfEvent"][0]["coding"][0]
        assert (coding["system"], coding["code"]) == (system, purpose)
        assert requestor(event)["purposeOfUse"] == event["purposeOfEvent"]
        assert patients(event) == {"Patient/pa"}
        if purpose == "BTG":
            assert event["purposeOfEvent"][0]["text"]  # dmp-aud-3
        issues = validator.validate_all(event, [DMP_AUDIT_PROFILE])
        assert [i for i in issues if i.severity in ("error", "fatal")] == []


def test_traces_are_written_in_the_background_and_flushed_on_demand(record):
    auditor = record.app.extensions["fhir_audit"]
    for _ in range(20):
        record.get("/fhir/Observation/oa1", practitioner(record))
    assert auditor.flush(10) and auditor.writer.queued == 0
    assert len(traces(record)) == 20
    assert all(e["meta"]["versionId"] == "1" for e in all_traces(record))


def test_a_store_failure_loses_traces_but_never_a_response(record, monkeypatch):
    auditor = record.app.extensions["fhir_audit"]
    store = record.app.extensions["fhir"].store

    def broken(*args):
        raise RuntimeError("disk full")
    monkeypatch.setattr(store, "transaction", broken)
    monkeypatch.setattr(store, "atomically", broken)
    assert record.get("/fhir/Observation/oa1", practitioner(record)).status_code == 200
    assert auditor.flush(10)
    assert auditor.writer.failed >= 1
    monkeypatch.undo()
    record.get("/fhir/Observation/oa2", practitioner(record))
    assert [items(e) for e in traces(record)] == [["Observation/oa2/_history/1"]]


def test_a_trace_that_cannot_be_built_is_counted_as_lost_but_never_fails_its_request(record, monkeypatch):
    auditor = record.app.extensions["fhir_audit"]
    failed = auditor.writer.failed

    def broken(record):
        raise ValueError("odd record")
    monkeypatch.setattr(auditor.writer, "prepare", broken)  # the request thread builds its trace
    assert record.get("/fhir/Observation/oa1", practitioner(record)).status_code == 200
    assert auditor.writer.failed == failed + 1
    monkeypatch.undo()
    record.get("/fhir/Observation/oa2", practitioner(record))
    assert [items(e) for e in traces(record)] == [["Observation/oa2/_history/1"]]


def test_tracing_can_be_switched_off(store, engine):
    from fhir_server.access.gate import OpenGate
    from fhir_server.app import create_app
    from fhir_server.settings import Settings
    app = create_app(Settings(insecure_no_auth=True, audit=False), store=store, gate=OpenGate(), engine=engine)
    client = app.test_client()
    client.post("/fhir/Patient", data=json.dumps({"resourceType": "Patient"}),
                headers={"Content-Type": "application/fhir+json"})
    app.extensions["fhir_audit"].flush()
    assert client.get("/fhir/AuditEvent").get_json()["total"] == 0


def test_a_bulk_export_kick_off_and_its_file_downloads_are_traced(record, tmp_path):
    from fhir_server.bulk import BulkExports, BulkSettings
    server = record.app.extensions["fhir"]
    server.bulk.worker.stop()
    server.bulk = BulkExports(server, BulkSettings(directory=str(tmp_path / "bulk")))
    headers = {**admin_headers(record), "Accept": "application/fhir+json", "Prefer": "respond-async"}
    kickoff = record.client.get("/fhir/Patient/$export?_type=Patient,Observation", headers=headers)
    assert kickoff.status_code == 202, kickoff.get_json()
    status_path = kickoff.headers["Content-Location"].split("http://fhir.test", 1)[1]
    server.bulk.worker.run_pending()
    manifest = record.get(status_path, headers).get_json()
    files = [o["url"] for o in manifest["output"]]
    for url in files:
        assert record.get(url.split("http://fhir.test", 1)[1], headers).status_code == 200
    events = traces(record)
    assert [(code(e["subtype"]), e["action"]) for e in events] == \
        [("operation", "E"), ("operation", "R")] + [("operation", "R")] * len(files)
    query = one([e for e in events[0]["entity"] if "role" in e and code(e["role"]) == "24"])
    assert query["description"] == "$export"
    assert base64.b64decode(query["query"]).decode() == "_type=Patient,Observation"
    downloaded = [x["what"]["identifier"]["value"] for e in events[2:] for x in e["entity"] if "role" in x and code(x["role"]) == "3"]
    assert downloaded == files


def test_a_request_finding_the_trace_queue_full_waits_for_room_and_nothing_is_dropped():
    import threading

    from fhir_server.audit.writer import AuditWriter
    started, release = threading.Event(), threading.Event()
    written: list[str] = []

    def write_batch(batch: list) -> None:
        started.set()
        release.wait(10)  # a slow commit (or a writer thread starved of the GIL)
        written.extend(batch)

    writer = AuditWriter(write_batch, max_queue=2, max_batch=1, linger=0)
    writer.submit("r0")
    assert started.wait(10)  # r0 is being written
    writer.submit("r1")
    writer.submit("r2")  # the queue is full now
    third = threading.Thread(target=writer.submit, args=("r3",))
    third.start()
    third.join(0.3)
    assert third.is_alive() and writer.queued == 3  # the request waits; the queue holds its bound
    release.set()
    third.join(10)
    assert not third.is_alive()
    assert writer.flush(10) and written == ["r0", "r1", "r2", "r3"]
