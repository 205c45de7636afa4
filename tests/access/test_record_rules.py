"""The record's access rules (issue #7), played end to end through the REST API with real tokens.

Cast: patient A (``pa``, adult, treating doctor ``gp``), minor M (``pm``, represented by ``rp``),
professionals ``drA`` (authorised by A), ``drB`` (not authorised), ``drX`` (authorised, then blocked),
``drE`` (emergency doctor), ``gp`` (treating doctor of A and M). A fake clock drives time.
"""
from __future__ import annotations

import datetime as dt

from access_helpers import LAB, Smart, creation_consent, observation
from record_helpers import (AUTHOR, AUTHORISATION, BLOCK, KIND, PATCH, VIS, allergy, consent, found, holder, label,
                            messages, patient, pro, representative, write)

# -- authorisations and blocks (rule 3) ----------------------------------------------------------------------
def test_a_professional_reads_only_with_the_patients_authorisation(dmp):
    stored = write(dmp, pro(dmp, "drA"), observation("o1", "pa", LAB))
    assert {"system": AUTHOR, "code": "Practitioner/drA"} in stored["meta"]["tag"]
    drb = pro(dmp, "drB")
    assert dmp.get("/fhir/Observation/o1", drb).status_code == 404
    assert found(dmp, "/fhir/Observation?subject=Patient/pa", drb) == set()
    assert dmp.get("/fhir/Observation?_summary=count", drb).get_json()["total"] == 0
    assert dmp.get("/fhir/Patient/pa", drb).status_code == 404
    assert write(dmp, drb, observation("o2", "pa", LAB), 403)["resourceType"] == "OperationOutcome"
    # the patient authorises drB: reading and adding work
    write(dmp, holder(dmp), consent(AUTHORISATION, "pa", "Practitioner/drB", "auth-drb"))
    assert dmp.get("/fhir/Observation/o1", drb).status_code == 200
    assert found(dmp, "/fhir/Observation?subject=Patient/pa", drb) == {"o1"}
    write(dmp, drb, observation("o2", "pa", LAB))
    # the patient withdraws it: nothing again
    assert dmp.send("PATCH", "/fhir/Consent/auth-drb", [{"op": "replace", "path": "/status", "value": "inactive"}],
                    holder(dmp), content_type=PATCH).status_code == 200
    assert dmp.get("/fhir/Observation/o1", drb).status_code == 404
    assert dmp.get("/fhir/Observation?_summary=count", drb).get_json()["total"] == 0


def test_a_professional_may_declare_the_patients_agreement_and_the_patient_is_told(dmp):
    drb = pro(dmp, "drB")
    write(dmp, drb, consent(AUTHORISATION, "pa", "Practitioner/drB", "declared"))
    assert dmp.get("/fhir/Patient/pa", drb).status_code == 200
    told = [m for m in messages(dmp) if m["to"] == "pa@example.org"]
    assert told and "Practitioner/drB" in told[-1]["text"]
    # but not for a colleague, and never a block or the treating doctor's rights
    assert dmp.send("POST", "/fhir/Consent", consent(AUTHORISATION, "pa", "Practitioner/drE"), drb).status_code == 403
    assert dmp.send("POST", "/fhir/Consent", consent(BLOCK, "pa", "Practitioner/drA"), drb).status_code == 403
    assert dmp.send("POST", "/fhir/Consent", consent("DROITS_MEDECIN_TRAITANT", "pa", "Practitioner/drB"),
                    drb).status_code == 403


def test_a_blocked_professional_never_gets_in_even_with_an_authorisation(dmp):
    write(dmp, pro(dmp, "drA"), observation("o1", "pa", LAB))
    drx = pro(dmp, "drX")
    assert dmp.get("/fhir/Observation/o1", drx).status_code == 200
    write(dmp, holder(dmp), consent(BLOCK, "pa", "Practitioner/drX", "block-drx"))
    assert dmp.get("/fhir/Observation/o1", drx).status_code == 404
    assert dmp.get("/fhir/Observation?_summary=count", drx).get_json()["total"] == 0
    assert dmp.send("POST", "/fhir/Consent", consent(AUTHORISATION, "pa", "Practitioner/drX"), drx).status_code == 403
    emergency = pro(dmp, "drX", "user/*.rs emergency-access")
    assert _break_glass(dmp, emergency, "pa").status_code == 403
    # unblocking (the patient deletes their block) restores the authorisation
    assert dmp.client.delete("/fhir/Consent/block-drx", headers=holder(dmp)).status_code in (200, 204)
    assert dmp.get("/fhir/Observation/o1", drx).status_code == 200


def test_no_path_leaks_to_an_unauthorised_professional(dmp):
    write(dmp, pro(dmp, "drA"), observation("o1", "pa", LAB, performer=[{"reference": "Practitioner/drA"}]))
    drb = pro(dmp, "drB")
    assert found(dmp, "/fhir/Observation?subject:Patient.name=PA", drb) == set()
    assert found(dmp, "/fhir/Patient?_has:Observation:subject:status=final", drb, "Patient") == set()
    assert found(dmp, "/fhir/Practitioner?_id=drA&_revinclude=Observation:performer", drb) == set()
    assert found(dmp, "/fhir/Observation?_include=Observation:subject", drb, "Patient") == set()
    assert dmp.get("/fhir/Patient/pa/$everything", drb).status_code == 404
    assert dmp.get("/fhir/Observation/o1/_history", drb).status_code == 404
    assert dmp.get("/fhir/Patient/pa/Observation", drb).status_code == 404
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("t1", "pa", LAB), "request": {"method": "PUT", "url": "Observation/t1"}}]}
    assert dmp.send("POST", "/fhir", transaction, drb).status_code == 403
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET",
                                                                              "url": "Observation/o1"}}]}
    assert dmp.send("POST", "/fhir", batch, drb).get_json()["entry"][0]["response"]["status"].startswith("404")


# -- masking (rule 4) and the treating doctor -----------------------------------------------------------------
def test_masked_items_are_hidden_from_professionals_but_their_author_and_the_treating_doctor(dmp):
    write(dmp, pro(dmp, "drA"), observation("o1", "pa", LAB))
    write(dmp, pro(dmp, "drA"), observation("o2", "pa", LAB))
    write(dmp, holder(dmp), consent(AUTHORISATION, "pa", "Practitioner/drB", "auth-drb"))
    # the patient masks drA's item: a label-only change of someone else's item is allowed, content is not
    assert label(dmp, holder(dmp), "/fhir/Observation/o1", "add", "MASQUE_PS") == 200
    changed = observation("o1", "pa", LAB, note=[{"text": "rewritten by the patient"}])
    assert write(dmp, holder(dmp), changed, 403)["issue"][0]["code"] == "forbidden"
    drb = pro(dmp, "drB")
    assert dmp.get("/fhir/Observation/o1", drb).status_code == 404
    assert found(dmp, "/fhir/Observation?subject=Patient/pa", drb) == {"o2"}
    assert dmp.get("/fhir/Observation?subject=Patient/pa&_summary=count", drb).get_json()["total"] == 1
    assert found(dmp, "/fhir/Patient/pa/$everything", drb) == {"o2"}
    assert dmp.get("/fhir/Observation/o1/_history/2", drb).status_code == 404
    assert label(dmp, drb, "/fhir/Observation/o1", "remove") == 404  # cannot unmask what it cannot see
    # its author and the treating doctor still see it
    assert dmp.get("/fhir/Observation/o1", pro(dmp, "drA")).status_code == 200
    assert found(dmp, "/fhir/Observation?subject=Patient/pa", pro(dmp, "gp")) == {"o1", "o2"}
    # the patient unmasks it
    assert label(dmp, holder(dmp), "/fhir/Observation/o1", "remove") == 200
    assert dmp.get("/fhir/Observation/o1", drb).status_code == 200


def test_items_invisible_to_the_patient_until_a_professional_lifts_the_label(dmp):
    hidden = observation("o1", "pa", LAB, meta={"security": [{"system": VIS, "code": "INVISIBLE_PATIENT"}]})
    write(dmp, pro(dmp, "gp"), hidden)
    me = holder(dmp)
    assert dmp.get("/fhir/Observation/o1", me).status_code == 404
    assert found(dmp, "/fhir/Observation", me) == set()
    assert dmp.get("/fhir/Observation?_summary=count", me).get_json()["total"] == 0
    assert dmp.get("/fhir/Observation/o1", pro(dmp, "drA")).status_code == 200  # professionals see it
    assert label(dmp, pro(dmp, "gp"), "/fhir/Observation/o1", "remove") == 200
    assert dmp.get("/fhir/Observation/o1", me).status_code == 200



def _traces(dmp: Smart, headers: dict, pid: str = "pa") -> list[set[str]]:
    """The items each trace of ``pid``'s record names, as ``headers`` sees those traces."""
    dmp.client.application.extensions["fhir_audit"].flush()
    response = dmp.get(f"/fhir/AuditEvent?patient=Patient/{pid}&_count=500", headers)
    assert response.status_code == 200, response.get_json()
    return [{e["what"]["reference"].split("/_history/")[0] for e in entry["resource"].get("entity", [])
             if "reference" in e.get("what", {}) and not e["what"]["reference"].startswith("Patient/")}
            for entry in response.get_json().get("entry", [])]


def test_traces_naming_an_item_hidden_from_the_patient_are_hidden_until_it_is_shown(dmp):
    gp, dra, me = pro(dmp, "gp"), pro(dmp, "drA"), holder(dmp)
    invisible = {"security": [{"system": VIS, "code": "INVISIBLE_PATIENT"}]}
    write(dmp, gp, observation("o1", "pa", LAB, meta=invisible))
    write(dmp, gp, observation("o3", "pa", LAB, meta=invisible))
    write(dmp, gp, observation("o2", "pa", LAB))
    assert dmp.get("/fhir/Observation/o1", dra).status_code == 200
    assert found(dmp, "/fhir/Observation?subject=Patient/pa", dra) == {"o1", "o2", "o3"}
    # the patient sees the traces of o2, and nothing that names o1 or o3: not their creation, read or search
    mine = _traces(dmp, me)
    assert any(t == {"Observation/o2"} for t in mine)
    assert not any(t & {"Observation/o1", "Observation/o3"} for t in mine)
    # the treating doctor sees every trace of the record
    assert any(t == {"Observation/o1", "Observation/o2", "Observation/o3"} for t in _traces(dmp, gp))
    # o1 is shown: the traces naming only o1 appear; the search that also named o3 stays hidden
    assert label(dmp, gp, "/fhir/Observation/o1", "remove") == 200
    mine = _traces(dmp, me)
    assert sum(t == {"Observation/o1"} for t in mine) >= 2  # gp's write and drA's read (and the lifting write)
    assert not any("Observation/o3" in t for t in mine)
    # o3 is shown by the schedule's path (a server write): every trace is visible now
    app = dmp.client.application
    from fhir_server.policy.schedule import _system_write, lift_label
    current = dmp.get("/fhir/Observation/o3", gp).get_json()
    assert _system_write(app.extensions["fhir"], lift_label(current, "INVISIBLE_PATIENT"))
    assert {"Observation/o1", "Observation/o2", "Observation/o3"} in _traces(dmp, me)


def test_a_trace_still_queued_when_its_item_is_shown_is_shown_too(dmp):
    gp, me = pro(dmp, "gp"), holder(dmp)
    write(dmp, gp, observation("o1", "pa", LAB, meta={"security": [{"system": VIS, "code": "INVISIBLE_PATIENT"}]}))
    assert dmp.get("/fhir/Observation/o1", pro(dmp, "drA")).status_code == 200  # its trace is queued, not written
    assert label(dmp, gp, "/fhir/Observation/o1", "remove") == 200  # shown at once
    assert sum(t == {"Observation/o1"} for t in _traces(dmp, me)) >= 3  # creation, read, lifting


def test_the_record_jobs_show_traces_whose_items_are_all_shown(dmp):
    from fhir_server.policy.schedule import run_record_jobs
    from fhir_server.policy.trace_visibility import TraceRelabeller
    gp, me = pro(dmp, "gp"), holder(dmp)
    invisible = {"security": [{"system": VIS, "code": "INVISIBLE_PATIENT"}]}
    write(dmp, gp, observation("o1", "pa", LAB, meta=invisible))
    write(dmp, gp, observation("o9", "pa", LAB, meta=invisible))
    assert dmp.client.delete("/fhir/Observation/o9", headers=gp).status_code == 200  # deleted while hidden
    _traces(dmp, me)  # (flushes the traces)
    app = dmp.client.application
    server = app.extensions["fhir"]
    server.write_listeners = [f for f in server.write_listeners  # a lift this process's listener does not see
                              if not isinstance(getattr(f, "__self__", None), TraceRelabeller)]
    assert label(dmp, gp, "/fhir/Observation/o1", "remove") == 200
    assert sum("Observation/o1" in t for t in _traces(dmp, me)) == 1  # the lift's own; its creation's stays hidden
    report = run_record_jobs(server, app.extensions["dmp-notifier"], server.gate.finder)
    assert report.traces_shown >= 1
    mine = _traces(dmp, me)
    assert sum(t == {"Observation/o1"} for t in mine) == 2
    assert not any("Observation/o9" in t for t in mine)  # a hidden item deleted before being shown stays so

# -- minors and their representatives (rule 8) ---------------------------------------------------------------
def test_representatives_act_for_a_minor_except_what_is_hidden_from_them_until_majority(dmp, clock):
    gp = pro(dmp, "gp")
    write(dmp, gp, observation("m1", "pm", LAB))
    write(dmp, gp, observation("m2", "pm", LAB, meta={"security": [{"system": VIS,
                                                                    "code": "INVISIBLE_REPRESENTANTS_LEGAUX"}]}))
    parent = representative(dmp)
    assert found(dmp, "/fhir/Observation", parent) == {"m1"}
    assert dmp.get("/fhir/Observation/m2", parent).status_code == 404
    assert not any("Observation/m2" in t for t in _traces(dmp, parent, "pm"))  # nor any trace naming it
    write(dmp, parent, allergy("al1", "pm", "peanuts"))
    # lifting the label is irreversible
    assert label(dmp, gp, "/fhir/Observation/m2", "remove") == 200
    assert found(dmp, "/fhir/Observation", parent) == {"m1", "m2"}
    assert any("Observation/m2" in t for t in _traces(dmp, parent, "pm"))
    assert label(dmp, gp, "/fhir/Observation/m2", "add", "INVISIBLE_REPRESENTANTS_LEGAUX") == 403
    # not the representative of another patient
    assert dmp.get("/fhir/Observation", representative(dmp, "pa")).status_code == 403  # reaches nothing
    # at the minor's 18th birthday their access ends
    clock.now = dt.datetime(2033, 6, 1, 8, 0, tzinfo=dt.timezone.utc)
    assert dmp.get("/fhir/Observation", representative(dmp)).status_code == 403
    assert dmp.get("/fhir/Patient/pm", representative(dmp)).status_code == 403


# -- emergency access (rules 5 and 7) ------------------------------------------------------------------------
def _break_glass(dmp: Smart, headers: dict, pid: str, reason: str | None = "Unconscious patient in the ER",
                 mode: str | None = None):
    parameters = [{"name": "reason", "valueString": reason}] if reason is not None else []
    if mode:
        parameters.append({"name": "mode", "valueCode": mode})
    return dmp.send("POST", f"/fhir/Patient/{pid}/$emergency-access", {"resourceType": "Parameters",
                                                                        "parameter": parameters}, headers)


def test_emergency_access_is_explicit_traced_notified_and_time_limited(dmp, clock):
    write(dmp, pro(dmp, "drA"), observation("o1", "pa", LAB))
    write(dmp, pro(dmp, "drA"), observation("o2", "pa", LAB, meta={"security": [{"system": VIS,
                                                                                   "code": "MASQUE_PS"}]}))
    emergency = pro(dmp, "drE", "user/*.rs emergency-access")
    assert dmp.get("/fhir/Observation/o1", emergency).status_code == 404
    assert _break_glass(dmp, pro(dmp, "drE", "user/*.rs"), "pa").status_code == 403  # no emergency scope
    missing = _break_glass(dmp, emergency, "pa", reason=None)
    assert missing.status_code == 400 and "reason" in missing.get_json()["issue"][0]["expression"][0]
    assert _break_glass(dmp, emergency, "pa", reason="urgent").status_code == 400  # not a written reason
    opened = _break_glass(dmp, emergency, "pa")
    assert opened.status_code == 200, opened.get_json()
    assert dmp.get("/fhir/Observation/o1", emergency).status_code == 200
    assert dmp.get("/fhir/Observation/o2", emergency).status_code == 404  # masked items stay hidden (default)
    # the patient and the treating doctor are told at once; the patient sees the trace with its purpose
    recipients = {m["to"] for m in messages(dmp)}
    assert {"pa@example.org", "gp@example.org"} <= recipients
    traces = dmp.get("/fhir/AuditEvent?patient=Patient/pa&subtype=bris-de-glace", holder(dmp)).get_json()
    purposes = [c["code"] for e in traces.get("entry", []) for p in e["resource"].get("purposeOfEvent", [])
                for c in p["coding"]]
    assert "BTG" in purposes
    # the recording AuditEvent meets the traceability profile, and the emergency reads are traced as BTG with the reason
    app = dmp.client.application
    grant = opened.get_json()["parameter"][1]["valueReference"]["reference"]
    stored = dmp.get(f"/fhir/{grant}", dmp.auth("system/*.rs", role="system", sub="backend")).get_json()
    profiles = app.extensions["fhir"].engine.profiles
    dmp_auditevent = "https://dmp.example.org/fhir/StructureDefinition/dmp-auditevent"
    assert [i for i in profiles.validate_all(stored, [dmp_auditevent]) if i.severity in ("error", "fatal")] == []
    app.extensions["fhir_audit"].flush()
    reads = dmp.get("/fhir/AuditEvent?patient=Patient/pa&subtype=read", holder(dmp)).get_json()["entry"]
    assert {(c["code"], p.get("text")) for e in reads for p in e["resource"]["purposeOfEvent"]
            for c in p["coding"]} >= {("BTG", "Unconscious patient in the ER")}
    # it ends by itself
    clock.advance(minutes=61)
    assert dmp.get("/fhir/Observation/o1", emergency).status_code == 404


def test_a_patients_opposition_refuses_that_kind_of_emergency_access_only(dmp):
    write(dmp, holder(dmp), consent("OPPOSITION_BRIS_DE_GLACE", "pa", cid="no-btg"))
    refused = _break_glass(dmp, pro(dmp, "drE", "user/*.rs emergency-access"), "pa")
    assert refused.status_code == 403 and "opposed" in refused.get_json()["issue"][0]["diagnostics"]
    regulator = pro(dmp, "drE", "user/*.rs emergency-regulation")
    assert _break_glass(dmp, regulator, "pa", mode="centre-regulation").status_code == 200
    assert dmp.get("/fhir/Patient/pa", regulator).status_code == 200


def test_advance_directives_are_visible_in_an_emergency(dmp):
    directives = consent("DIRECTIVES_ANTICIPEES", "pa", cid="directives")
    write(dmp, holder(dmp), directives)
    emergency = pro(dmp, "drE", "user/*.rs emergency-access")
    assert _break_glass(dmp, emergency, "pa").status_code == 200
    assert "directives" in found(dmp, "/fhir/Consent?patient=Patient/pa", emergency, "Consent")


# -- patients' own entries (rule 6) and closing the record (rule 2) -----------------------------------------
def test_patients_add_to_their_record_and_only_an_author_deletes(dmp):
    me = holder(dmp)
    forged = dict(allergy("al1", "pa", "penicillin"), meta={"tag": [{"system": AUTHOR, "code": "Practitioner/drA"}]})
    stored = write(dmp, me, forged)
    assert [t for t in stored["meta"]["tag"] if t["system"] == AUTHOR] == [{"system": AUTHOR,
                                                                             "code": "Patient/pa"}]
    assert dmp.get("/fhir/AllergyIntolerance/al1", pro(dmp, "drA")).status_code == 200
    marks = dmp.get("/fhir/Provenance?target=AllergyIntolerance/al1", pro(dmp, "drA")).get_json()["entry"]
    assert [a["who"]["reference"] for m in marks for a in m["resource"]["agent"]] == ["Patient/pa"]
    assert dmp.client.delete("/fhir/AllergyIntolerance/al1", headers=pro(dmp, "drA")).status_code == 403
    write(dmp, pro(dmp, "drA"), observation("o1", "pa", LAB))
    assert dmp.client.delete("/fhir/Observation/o1", headers=me).status_code == 403
    assert dmp.client.delete("/fhir/AllergyIntolerance/al1", headers=me).status_code in (200, 204)
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished",
                 "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                 "subject": {"reference": "Patient/pa"}}
    assert write(dmp, me, encounter, 403)["issue"][0]["code"] == "forbidden"


def test_a_closed_record_refuses_professionals_and_new_entries(dmp):
    write(dmp, pro(dmp, "drA"), observation("o1", "pa", LAB))
    close = [{"op": "replace", "path": "/status", "value": "inactive"}]
    assert dmp.send("PATCH", "/fhir/Consent/creation-pa", close, holder(dmp), content_type=PATCH).status_code == 200
    assert dmp.get("/fhir/Observation/o1", pro(dmp, "drA")).status_code == 404
    assert dmp.get("/fhir/Observation/o1", pro(dmp, "gp")).status_code == 404
    assert write(dmp, holder(dmp), allergy("al2", "pa", "latex"), 403)["issue"][0]["code"] == "forbidden"
    assert _break_glass(dmp, pro(dmp, "drE", "user/*.rs emergency-access"), "pa").status_code == 403


def test_a_professional_opens_a_record_with_the_patients_consent(dmp):
    drb = pro(dmp, "drB")
    write(dmp, drb, patient("pn", "1990-01-01", "pn@example.org"))
    write(dmp, drb, consent(AUTHORISATION, "pn", "Practitioner/drB", "auth-pn"))
    assert dmp.get("/fhir/Patient/pn", drb).status_code == 404  # no creation consent yet: no record
    created = write(dmp, drb, creation_consent("pn"))
    assert {"system": AUTHOR, "code": "Practitioner/drB"} in created["meta"]["tag"]  # who collected it
    assert dmp.get("/fhir/Patient/pn", drb).status_code == 200
    assert dmp.send("POST", "/fhir/Consent", creation_consent("pn", "again"), drb).status_code == 409


# -- traces (rule 9) ---------------------------------------------------------------------------------------
def test_the_treating_doctor_sees_the_records_traces_other_professionals_only_their_own(dmp):
    opened = _break_glass(dmp, pro(dmp, "drE", "user/*.rs emergency-access"), "pa")
    assert opened.status_code == 200
    grant = opened.get_json()["parameter"][1]["valueReference"]["reference"].split("/")[1]
    assert grant in found(dmp, "/fhir/AuditEvent?patient=Patient/pa", pro(dmp, "gp"), "AuditEvent")
    assert grant not in found(dmp, "/fhir/AuditEvent?patient=Patient/pa", pro(dmp, "drA"), "AuditEvent")
    assert grant in found(dmp, "/fhir/AuditEvent?patient=Patient/pa", holder(dmp), "AuditEvent")
    assert dmp.client.delete(f"/fhir/AuditEvent/{grant}", headers=holder(dmp)).status_code in (403, 405)


# -- the care team, the treating doctor's rights, the patient's lists (rules 1 and 3) -----------------------
def test_the_care_team_is_authorised_and_the_patient_can_give_treating_doctor_rights(dmp):
    write(dmp, pro(dmp, "drA"), observation("o1", "pa", LAB, meta={"security": [{"system": VIS,
                                                                                   "code": "MASQUE_PS"}]}))
    write(dmp, pro(dmp, "drA"), observation("o2", "pa", LAB))
    drb = pro(dmp, "drB")
    assert found(dmp, "/fhir/Observation", drb) == set()
    team = {"resourceType": "CareTeam", "id": "team-pa", "status": "active", "subject": {"reference": "Patient/pa"},
            "participant": [{"member": {"reference": "Practitioner/drB"}}]}
    write(dmp, dmp.auth("system/*.cruds", role="system", sub="backend"), team)
    assert found(dmp, "/fhir/Observation", drb) == {"o2"}  # a care-team member: authorised, masking applies
    write(dmp, holder(dmp), consent("DROITS_MEDECIN_TRAITANT", "pa", "Practitioner/drB", "same-rights"))
    assert found(dmp, "/fhir/Observation", drb) == {"o1", "o2"}
    # the patient lists who may access their record
    listed = found(dmp, f"/fhir/Consent?patient=Patient/pa&category={KIND}|{AUTHORISATION}", holder(dmp), "Consent")
    assert listed == {"autorisation-acces-pa-drA", "autorisation-acces-pa-drX"}


def test_patients_choose_the_optional_notifications(dmp):
    document_event = observation("o1", "pa", LAB)
    write(dmp, pro(dmp, "drA"), consent(AUTHORISATION, "pa", "Practitioner/drA", "again"))
    assert [m for m in messages(dmp) if "Practitioner/drA" in m["text"]]
    opted = dict(patient("pa", "1980-04-12", "pa@example.org"), extension=[{
        "url": "https://dmp.example.org/fhir/StructureDefinition/dmp-notification-opt-out",
        "valueCode": "new-authorisation"}])
    write(dmp, holder(dmp), opted, 200)
    before = len(messages(dmp))
    write(dmp, pro(dmp, "drB"), consent(AUTHORISATION, "pa", "Practitioner/drB", "declared-b"))
    assert len(messages(dmp)) == before
    write(dmp, pro(dmp, "drA"), document_event)  # not a document: no message either
    assert len(messages(dmp)) == before


# -- the insurer's care history (issue #8) under the same rules ------------------------------------------------
def test_the_care_history_is_seen_by_the_patient_and_authorised_professionals_only(dmp, clock):
    item = {"resourceType": "ExplanationOfBenefit", "id": "care1",
            "identifier": [{"system": "https://dmp.example.org/fhir/sid/insurer-care-item", "value": "A-1"}],
            "status": "active", "use": "claim", "outcome": "complete", "created": "2026-10-01",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                                 "code": "professional"}]},
            "patient": {"reference": "Patient/pa"}, "insurer": {"display": "Assurance maladie obligatoire"},
            "provider": {"display": "Dr Martin"},
            "insurance": [{"focal": True, "coverage": {"display": "Assurance maladie obligatoire"}}],
            "item": [{"sequence": 1, "servicedDate": "2026-10-01",
                      "productOrService": {"coding": [{"system": "https://dmp.example.org/fhir/CodeSystem/dmp-ngap",
                                                       "code": "G"}]}}]}
    insurer = dmp.auth("system/ExplanationOfBenefit.cu system/Patient.rs", role="system", sub="insurer")
    write(dmp, insurer, item)
    assert found(dmp, "/fhir/ExplanationOfBenefit", holder(dmp), "ExplanationOfBenefit") == {"care1"}
    assert found(dmp, "/fhir/ExplanationOfBenefit?patient=Patient/pa", pro(dmp, "drA"),
                 "ExplanationOfBenefit") == {"care1"}
    assert found(dmp, "/fhir/ExplanationOfBenefit", pro(dmp, "drB"), "ExplanationOfBenefit") == set()
    assert dmp.get("/fhir/ExplanationOfBenefit/care1", pro(dmp, "drB")).status_code == 404


def test_the_capability_statement_lists_the_records_operations(dmp):
    rest = dmp.client.get("/fhir/metadata").get_json()["rest"][0]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert {"emergency-access", "close", "everything"} <= {o["name"] for o in patient["operation"]}
    assert "import" in {o["name"] for o in rest["operation"]}
