"""The record's timed rules (issue #7 rules 2 and 4; fhir_server/policy/schedule.py), on a fake clock."""
from __future__ import annotations

from access_helpers import LAB, observation
from record_helpers import PATCH, VIS, holder, messages, pro, write

from fhir_server.policy.schedule import run_record_jobs


def run_jobs(dmp):
    app = dmp.client.application
    server = app.extensions["fhir"]
    return run_record_jobs(server, app.extensions["dmp-notifier"], server.gate.finder)


def told(dmp, address: str) -> list[str]:
    return [m["text"] for m in messages(dmp) if m["to"] == address]


def test_an_item_invisible_to_the_patient_is_announced_after_two_weeks_and_shown_after_a_month(dmp, clock):
    hidden = observation("o1", "pa", LAB, meta={"security": [{"system": VIS, "code": "INVISIBLE_PATIENT"}]})
    write(dmp, pro(dmp, "gp"), hidden)
    dmp.client.application.extensions["fhir_audit"].flush()  # its trace, labelled like it, is no item to announce
    clock.advance(days=13, hours=23)
    assert run_jobs(dmp).notified == [] and told(dmp, "pa@example.org") == []
    clock.advance(hours=2)  # two weeks have passed: the patient is told, once
    assert run_jobs(dmp).notified == ["Observation/o1"]
    assert len(told(dmp, "pa@example.org")) == 1
    assert run_jobs(dmp).notified == [] and len(told(dmp, "pa@example.org")) == 1
    assert dmp.get("/fhir/Observation/o1", holder(dmp)).status_code == 404  # still hidden
    clock.advance(days=16)  # a month: visible, and the author and the rest of the item are unchanged
    assert run_jobs(dmp).lifted == ["Observation/o1"]
    shown = dmp.get("/fhir/Observation/o1", holder(dmp))
    assert shown.status_code == 200
    assert "security" not in shown.get_json()["meta"]
    assert {"system": "https://dmp.example.org/fhir/CodeSystem/dmp-author", "code": "Practitioner/gp"} in \
        shown.get_json()["meta"]["tag"]


def test_the_month_counts_from_when_the_label_was_set(dmp, clock):
    write(dmp, pro(dmp, "gp"), observation("o1", "pa", LAB))
    clock.advance(days=40)
    hide = [{"op": "add", "path": "/meta/security", "value": [{"system": VIS, "code": "INVISIBLE_PATIENT"}]}]
    assert dmp.send("PATCH", "/fhir/Observation/o1", hide, pro(dmp, "gp"), content_type=PATCH).status_code == 200
    clock.advance(days=1)
    report = run_jobs(dmp)
    assert report.lifted == [] and report.notified == []


def test_a_record_whose_deletion_was_asked_is_deleted_after_the_grace_period(dmp, clock):
    write(dmp, pro(dmp, "drA"), observation("o1", "pa", LAB))
    close = {"resourceType": "Parameters", "parameter": [{"name": "delete", "valueBoolean": True}]}
    assert dmp.send("POST", "/fhir/Patient/pa/$close", close, pro(dmp, "drA")).status_code == 403  # holder only
    closed = dmp.send("POST", "/fhir/Patient/pa/$close", close, holder(dmp))
    assert closed.status_code == 200 and closed.get_json()["status"] == "inactive"
    assert dmp.get("/fhir/Observation/o1", pro(dmp, "drA")).status_code == 404  # closed: professionals refused
    assert dmp.get("/fhir/Observation/o1", holder(dmp)).status_code == 200  # the holder still reads it
    clock.advance(days=29)
    assert run_jobs(dmp).deleted == []
    clock.advance(days=2)
    assert run_jobs(dmp).deleted == ["pa"]
    system = dmp.auth("system/*.cruds", role="system", sub="backend")
    assert dmp.get("/fhir/Observation/o1", system).status_code == 404  # gone, not just deleted
    assert dmp.get("/fhir/Observation/o1/_history", system).status_code == 404
    assert dmp.get("/fhir/Patient/pa", system).status_code == 404
    traces = dmp.get("/fhir/AuditEvent?entity=Patient/pa&action=D", system).get_json()["entry"]
    assert len(traces) == 1
    profiles = dmp.client.application.extensions["fhir"].engine.profiles
    issues = profiles.validate_all(traces[0]["resource"], ["https://dmp.example.org/fhir/StructureDefinition/"
                                                           "dmp-auditevent"])
    assert [i for i in issues if i.severity in ("error", "fatal")] == []
    assert run_jobs(dmp).deleted == []


def test_a_closed_record_is_kept_ten_years_and_can_be_reopened(dmp, clock):
    write(dmp, pro(dmp, "drA"), observation("o1", "pa", LAB))
    assert dmp.send("POST", "/fhir/Patient/pa/$close", {"resourceType": "Parameters"}, holder(dmp)).status_code == 200
    clock.advance(days=365 * 9)
    assert run_jobs(dmp).deleted == []
    reopen = [{"op": "replace", "path": "/status", "value": "active"}]
    assert dmp.send("PATCH", "/fhir/Consent/creation-pa", reopen, holder(dmp), content_type=PATCH).status_code == 200
    assert dmp.get("/fhir/Observation/o1", pro(dmp, "drA")).status_code == 200
