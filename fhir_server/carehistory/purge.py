"""The purge: care items out of the 24-month window are physically removed, and the purge is traced.

The window already hides them from everyone (:mod:`.window`); the purge removes them from the
store: every version, the current row and every index entry (``Store.expunge``), so nothing of
them remains to be restored or leaked. It runs as ``fhir-server purge [--store URL]`` (cron) and
as a periodic task in each ``serve`` process (:func:`purge_task`, every ``Settings.purge_interval``
seconds, 6 hours by default; removing is idempotent, so two processes purging together only
repeat each other's search).

A purge that removed something writes one ``AuditEvent`` (profile ``dmp-auditevent``): action
``D``, period = when it ran, the server as the requestor agent, and one entity saying what went
(care items whose service dates all fall before the cut-off day), how many items and versions,
and of how many patients. The audit holds no identifier of a removed item.

Expired = not in the window: no ``service-date`` value (billablePeriod, item.serviced[x]) reaches
the cut-off day. The candidates are found by ``service-date=lt<cut-off>`` (some value before it)
and each is checked on its own index entries, so an item with one old and one recent date stays.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from fhir_server.carehistory import EOB
from fhir_server.carehistory.window import PARAM
from fhir_server.model import jsonio
from fhir_server.model.ids import new_id
from fhir_server.services.periodic import PeriodicTask
from fhir_server.model.dates import parse_range

log = logging.getLogger("fhir_server.carehistory.purge")

PAGE = 500
AUDIT_PROFILE = "https://dmp.example.org/fhir/StructureDefinition/dmp-auditevent"
SERVER_SYSTEM = "https://dmp.example.org/fhir/sid/server"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


@dataclass(frozen=True)
class PurgeReport:
    cutoff: date
    items: int  # care items removed
    versions: int  # versions removed with them
    patients: int  # distinct patients they belonged to
    started: str
    ended: str
    audit_id: str | None  # the AuditEvent written (None when nothing was removed)


def _instant(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def expired_ids(server: Any, day: date) -> list[tuple[str, str | None]]:
    """(id, patient reference) of the care items whose every service date is before ``day``."""
    cutoff = parse_range(day.isoformat())[0]
    query = server.parser.parse((EOB,), [(PARAM, f"lt{day.isoformat()}")], strict=True).query
    out: list[tuple[str, str | None]] = []
    cursor = None
    while True:
        page = server.store.search(query, count=PAGE, cursor=cursor)
        for stored in page.resources:
            body = jsonio.loads(stored.body)
            dates = [e for e in server.indexer.index(body).dates if e.param == PARAM]
            if not any(e.high >= cutoff for e in dates):
                out.append((stored.id, (body.get("patient") or {}).get("reference")))
        cursor = page.next_cursor
        if cursor is None:
            return out


def purge(server: Any) -> PurgeReport:
    """Remove the expired care items of ``server``'s store now; write the AuditEvent; report."""
    clock = server.settings.clock
    started_at = clock()
    day = server.care_window.cutoff()
    expired = expired_ids(server, day)
    versions = 0
    for rid, _ in expired:
        versions += server.store.expunge(EOB, rid)
    ended_at = clock()
    report = PurgeReport(day, len(expired), versions, len({p for _, p in expired if p}), _instant(started_at),
                         _instant(ended_at), None)
    if expired:
        audit = audit_event(report)
        server.resources.atomic(lambda tx: server.resources.system_put_in(tx, audit), what="AuditEvent")
        report = PurgeReport(**{**report.__dict__, "audit_id": audit["id"]})
        log.info("care history purge: %d items (%d versions) of %d patients before %s removed; AuditEvent/%s",
                 report.items, report.versions, report.patients, day, report.audit_id)
    return report


def audit_event(report: PurgeReport) -> dict:
    """The AuditEvent of a purge (``dmp-auditevent``)."""
    what = (f"Care items (ExplanationOfBenefit) whose service dates all fall before {report.cutoff.isoformat()}, "
            "out of the 24-month care history, physically removed with all their versions")
    return {
        "resourceType": "AuditEvent", "id": new_id(),
        "meta": {"profile": [AUDIT_PROFILE]},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "delete"}],
        "action": "D",
        "period": {"start": report.started, "end": report.ended},
        "recorded": report.ended,
        "outcome": "0",
        "outcomeDesc": f"{report.items} care items ({report.versions} versions) of {report.patients} patients removed",
        "agent": [{
            "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
            "who": {"identifier": {"system": SERVER_SYSTEM, "value": "care-history-purge"},
                    "display": "fhir-dmp-server: care history purge"},
            "requestor": True,
        }],
        "source": {"observer": {"display": "fhir-dmp-server",
                                "identifier": {"system": SERVER_SYSTEM, "value": "dmp-1"}},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                             "display": "Application Server"}]},
        "entity": [{
            "what": {"display": what},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2",
                     "display": "System Object"},
            "description": what,
            "detail": [{"type": "cutoff", "valueString": report.cutoff.isoformat()},
                       {"type": "items", "valueString": str(report.items)},
                       {"type": "versions", "valueString": str(report.versions)},
                       {"type": "patients", "valueString": str(report.patients)}],
        }],
    }


def purge_task(server: Any, interval: float) -> PeriodicTask:
    """The periodic purge of a ``serve`` process (not started): every ``interval`` seconds, first after a minute."""
    return PeriodicTask("care-history-purge", lambda: purge(server), interval)
