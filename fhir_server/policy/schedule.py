"""The record's timed rules, run by a periodic task in ``serve`` and by ``fhir-server record-jobs``.

* **Items invisible to the patient** (R1111-53): two weeks after a professional set
  ``INVISIBLE_PATIENT`` without lifting it, the patient is told their record was updated and invited
  to consult it (once); after a month the label is lifted by the server itself.
* **Closed records** (R1111-36): a record closed by its holder (creation consent ``inactive``) is
  kept ten years, then deleted; when the holder asked for deletion (``$close`` with ``delete``), it
  is deleted after a grace period of ``RecordPolicy.deletion_grace_days`` (within the three months
  the law allows), which lets the holder change their mind by reopening. Deleting means physically
  removing every version of the Patient and of everything in its compartment; the deletion is traced.

Every change is a new version written by the server (the author tag and the rest of the item kept),
so the patient sees in the item's history when and why it became visible.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from fhir_server.model import jsonio
from fhir_server.model.ids import new_id
from fhir_server.policy import codes
from fhir_server.policy.gate import label_clause
from fhir_server.policy.relations import RecordPolicy, RelationFinder
from fhir_server.policy.trace_visibility import TraceRelabeller
from fhir_server.search.query import Clause, Query, ReferenceValue, TokenValue

log = logging.getLogger(__name__)

ANNOUNCEMENT_TAG = "https://dmp.example.org/fhir/CodeSystem/dmp-announcement"  # code "notified": the 2-week notice
DELETION_REQUEST = "https://dmp.example.org/fhir/StructureDefinition/dmp-deletion-request"  # valueDateTime
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
JOB_SYSTEM = "https://dmp.example.org/fhir/sid/client"  # the server's own jobs, named like OAuth clients
RETENTION_YEARS = 10
PAGE = 200


@dataclass
class JobReport:
    notified: list[str] = field(default_factory=list)  # items whose patient was told (Type/id)
    lifted: list[str] = field(default_factory=list)  # items made visible to the patient
    deleted: list[str] = field(default_factory=list)  # records physically deleted (patient ids)
    traces_shown: int = 0  # traces labelled like a hidden item, shown since none of their items is hidden now


def run_record_jobs(server: Any, notifier: Any, finder: RelationFinder) -> JobReport:
    """Run every timed rule once, at ``finder``'s clock and with its policy."""
    now = finder.clock()
    report = JobReport()
    announce(server, notifier, finder.policy, now, report)
    report.traces_shown = TraceRelabeller(server).sweep()
    delete_closed_records(server, finder.policy, now, report)
    return report


# -- items invisible to the patient ----------------------------------------------------------------
def announce(server: Any, notifier: Any, policy: RecordPolicy, now: dt.datetime, report: JobReport) -> None:
    for stored in _labelled(server, codes.INVISIBLE_TO_PATIENT):
        since = labelled_since(server.store, stored, codes.INVISIBLE_TO_PATIENT)
        resource = jsonio.loads(stored.body)
        patient = _patient_of(resource)
        key = f"{stored.type}/{stored.id}"
        if now - since >= dt.timedelta(days=policy.announce_lift_days):
            if not _system_write(server, lift_label(resource, codes.INVISIBLE_TO_PATIENT)):
                continue  # another process did it (every worker runs the jobs: whoever writes first notifies)
            report.lifted.append(key)
            if patient:
                notifier.notify(patient, "pending-announcement", "A new item of your health record is now visible "
                                "to you. You can read it in your record.")
        elif now - since >= dt.timedelta(days=policy.announce_notice_days) and not _notified(resource):
            tags = [*(resource.get("meta") or {}).get("tag", []), {"system": ANNOUNCEMENT_TAG, "code": "notified"}]
            if not _system_write(server, dict(resource, meta=dict(resource.get("meta") or {}, tag=tags))):
                continue
            report.notified.append(key)
            if patient:
                notifier.notify(patient, "pending-announcement", "Your health record was updated. Please contact "
                                "your doctor, or read your record, to learn about the new items.")


def labelled_since(store: Any, stored: Any, label: str) -> dt.datetime:
    """When the current run of versions carrying ``label`` began (its oldest version's lastUpdated)."""
    since = stored.last_updated
    cursor = None
    while True:
        page = store.history(stored.type, stored.id, count=50, cursor=cursor)
        for version in page.entries:
            if version.deleted or label not in codes.labels_of(jsonio.loads(version.body)):
                return _instant(since)
            since = version.last_updated
        cursor = page.next_cursor
        if cursor is None:
            return _instant(since)


def lift_label(resource: dict, label: str) -> dict:
    """``resource`` without the visibility ``label`` (a document keeps a securityLabel: ``N`` if none is left)."""
    meta = dict(resource.get("meta") or {})
    meta["security"] = [c for c in meta.get("security", []) if not (c.get("system") == codes.VISIBILITY
                                                                     and c.get("code") == label)]
    if not meta["security"]:
        del meta["security"]
    meta["tag"] = [t for t in meta.get("tag", []) if t.get("system") != ANNOUNCEMENT_TAG]
    if not meta["tag"]:
        del meta["tag"]
    out = dict(resource, meta=meta)
    if isinstance(resource.get("securityLabel"), list):
        labels = [c for c in resource["securityLabel"] if label not in codes.codes_of(c, codes.VISIBILITY)]
        out["securityLabel"] = labels or [{"coding": [{"system": CONFIDENTIALITY, "code": "N"}]}]
    return out


def _notified(resource: dict) -> bool:
    return any(t.get("system") == ANNOUNCEMENT_TAG for t in (resource.get("meta") or {}).get("tag", []))


# -- closed records ----------------------------------------------------------------------------------
def delete_closed_records(server: Any, policy: RecordPolicy, now: dt.datetime, report: JobReport) -> None:
    query = Query(types=("Consent",), clauses=[
        Clause("category", "token", None, (TokenValue(codes.CONSENT_KIND, codes.RECORD_CREATION, True),)),
        Clause("status", "token", None, (TokenValue(None, "inactive", False),))])
    for stored in _all(server.store, query):
        consent = jsonio.loads(stored.body)
        patient = ((consent.get("patient") or {}).get("reference") or "").partition("/")[2]
        if not patient:
            continue
        requested = deletion_requested(consent)
        closed = _instant(stored.last_updated)
        due = (requested is not None and now >= requested + dt.timedelta(days=policy.deletion_grace_days)) or \
            now >= closed.replace(year=closed.year + RETENTION_YEARS)
        if due:
            removed = expunge_record(server, patient)
            if not removed:
                continue  # already deleted by another process
            report.deleted.append(patient)
            _system_write(server, deletion_trace(patient, removed, requested, now))
            log.info("record of Patient/%s deleted (%d versions)", patient, removed)


def deletion_requested(consent: dict) -> dt.datetime | None:
    for extension in consent.get("extension", []):
        if extension.get("url") == DELETION_REQUEST and isinstance(extension.get("valueDateTime"), str):
            return _instant(extension["valueDateTime"])
    return None


def expunge_record(server: Any, patient: str) -> int:
    """Physically remove the Patient and everything in its compartment; how many versions went."""
    definitions = server.definitions
    removed = 0
    for rtype, params in sorted(definitions.patient_compartment.items()):
        if rtype not in definitions.served or rtype in ("Patient", "AuditEvent"):
            continue  # traces are kept (they cannot be deleted); they name a patient that no longer exists
        value = (ReferenceValue("Patient", patient),)
        for param in params:
            query = Query(types=(rtype,), clauses=[Clause(param, "reference", None, value)])
            for stored in list(_all(server.store, query)):
                removed += server.store.expunge(rtype, stored.id)
    return removed + server.store.expunge("Patient", patient)


def deletion_trace(patient: str, versions: int, requested: dt.datetime | None, now: dt.datetime) -> dict:
    stamp = now.isoformat(timespec="seconds")
    why = "at the holder's request" if requested else f"{RETENTION_YEARS} years after its closure"
    return {
        "resourceType": "AuditEvent", "id": new_id(),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "delete"}],
        "action": "D", "period": {"start": stamp, "end": stamp}, "recorded": stamp, "outcome": "0",
        "outcomeDesc": f"Record deleted {why}: {versions} versions removed",
        "agent": [{"who": {"identifier": {"system": JOB_SYSTEM, "value": "record-jobs"},
                           "display": "DMP FHIR server (scheduled job)"}, "requestor": True,
                   "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150",
                                        "display": "Application"}]}}],
        "source": {"observer": {"display": "DMP FHIR server"}},
        "entity": [{"what": {"reference": f"Patient/{patient}"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}}],
    }


# -- helpers -------------------------------------------------------------------------------------------
def _labelled(server: Any, label: str) -> list:
    """The record items carrying ``label``. Not the traces: a trace is labelled like the hidden item it names
    and shown with it (trace_visibility.py); it is no item to announce or lift by itself."""
    definitions = server.definitions
    out = []
    for rtype in sorted(set(definitions.patient_compartment) & set(definitions.served) - {"AuditEvent"}):
        out.extend(_all(server.store, Query(types=(rtype,), clauses=[label_clause(label, None)])))
    return out


def _all(store: Any, query: Query):
    cursor = None
    while True:
        page = store.search(query, count=PAGE, cursor=cursor)
        yield from page.resources
        cursor = page.next_cursor
        if cursor is None:
            return


def _patient_of(resource: dict) -> str | None:
    for key in ("patient", "subject"):
        ref = (resource.get(key) or {}).get("reference") if isinstance(resource.get(key), dict) else None
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref
    return None


def _system_write(server: Any, resource: dict) -> bool:
    """Write a version made by the server; False when the stored one already says the same."""
    return server.resources.atomic(lambda tx: server.resources.system_put_in(tx, resource),
                                   what=f"{resource['resourceType']}/{resource['id']}") is not None


def _instant(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
