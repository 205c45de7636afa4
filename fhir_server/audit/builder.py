"""From an :class:`~fhir_server.audit.model.AuditRecord` to an ``AuditEvent`` of the dmp-auditevent profile.

The shape follows the French traceability profile (TDE ``tde-auditevent``, ``shared notes §4.1``) and
the record's own constraints (``profiles/StructureDefinition-dmp-auditevent.json``):

* ``type`` ``audit-event-type#rest`` with a ``restful-interaction`` subtype (read, search-type,
  create, operation...), or DICOM ``110114`` "User Authentication" for sign-in and token events;
* ``action`` C/R/U/D/E, ``period.start`` (when the request arrived), ``period.end`` and ``recorded``
  (when its answer was built), ``outcome`` 0 / 4 (refused or invalid request) / 8 (access denied:
  401, 403; server error), ``outcomeDesc`` the HTTP status and message;
* ``agent`` (at most 2): the requestor — the user's ``fhirUser`` reference (Practitioner,
  Patient, RelatedPerson) with an identifier (RPPS when the Practitioner carries one, otherwise
  the account id), or the backend client — with its role and purpose of use; then the client
  application the user acted through;
* ``source.observer``: this server (a Device identified by its base URL);
* ``entity``: every patient concerned (``Patient/x``, role 1 "Patient"), every resource version
  touched (``Type/id/_history/n``, role 4 "Domain Resource"), the query (role 24, base64).

Runs in the writer thread: parsing bodies and the look-ups it needs stay off the request path.
"""
from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from typing import Any, Callable

import orjson

from fhir_server.audit.model import (
    ACCOUNT_SYSTEM, ACT_REASON, ACT_REASON_CODES, AUDIT_EVENT_TYPE, AUTH_SUBTYPES, CLIENT_SYSTEM, DICOM, DICOM_CODES,
    DMP_AGENT_ROLE, DMP_PURPOSE, DMP_PURPOSES, ENTITY_TYPE, INTERACTIONS, OBJECT_ROLE,
    RESTFUL_INTERACTION, ROLE_DISPLAY, RPPS_SYSTEM, SECURITY_ROLE_TYPE, SOURCE_TYPE, AuditRecord, Item)
from fhir_server.model import jsonio

BTG_DEFAULT_TEXT = "Accès en urgence (bris de glace)"
MAX_CACHE = 10_000

APPLICATION = {"system": DICOM, "code": "110150", "display": "Application"}
HUMAN_USER = {"system": SECURITY_ROLE_TYPE, "code": "humanuser", "display": "human user"}
SYSTEM_OBJECT = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
ROLE_PATIENT = {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
ROLE_REPORT = {"system": OBJECT_ROLE, "code": "3", "display": "Report"}
ROLE_QUERY = {"system": OBJECT_ROLE, "code": "24", "display": "Query"}
REST_TYPE = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
AUTH_TYPE = {"system": DICOM, "code": "110114", "display": "User Authentication"}
APPLICATION_SERVER = {"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}


def instant(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def outcome_code(status: int) -> str:
    """0 success; 4 a request refused as invalid or not found; 8 access denied (401/403) or a server error."""
    if status < 400:
        return "0"
    if status in (401, 403) or status >= 500:
        return "8"
    return "4"


def purpose_of_use(principal: Any) -> dict:
    """The principal's purpose of use: TREAT (ordinary care) unless the gate set another (BTG, CENTRE_REGULATION)."""
    code = (getattr(principal, "purpose", None) if principal is not None else None) or "TREAT"
    if code in ACT_REASON_CODES:
        concept: dict = {"coding": [{"system": ACT_REASON, "code": code, "display": ACT_REASON_CODES[code]}]}
    else:
        coding = {"system": DMP_PURPOSE, "code": code}
        if code in DMP_PURPOSES:
            coding["display"] = DMP_PURPOSES[code]
        concept = {"coding": [coding]}
    reason = None
    for name in ("purpose_reason", "reason", "emergency_reason"):
        value = getattr(principal, name, None) if principal is not None else None
        if isinstance(value, str) and value.strip():
            reason = value.strip()
            break
    if reason:
        concept["text"] = reason
    elif code == "BTG":  # dmp-aud-3: an emergency access always says why
        concept["text"] = BTG_DEFAULT_TEXT
    return concept


class AuditEventBuilder:
    """Builds AuditEvents for one server (its store for look-ups, its indexer for patient compartments)."""

    def __init__(self, server: Any):
        from fhir_server.bulk.export import CompartmentMatcher
        self.server = server
        self.store = server.store
        self.matcher = CompartmentMatcher(server.indexer, server.engine.registry,
                                          server.definitions.patient_compartment)
        self._identifiers: dict[str, dict | None] = {}  # fhirUser -> RPPS identifier (or None)
        # the security labels a trace must carry for an item it names (bytes or dict body -> codings): set by the
        # record's rules (policy/trace_visibility.py), so that a trace is hidden from whom its items are hidden
        self.item_labels: Callable[[Any], list[dict]] | None = None

    # -- the event ---------------------------------------------------------------------------
    def build(self, record: AuditRecord) -> dict:
        # no meta.profile: the registry requires dmp-auditevent of every AuditEvent, and a claim would be one
        # more index row per trace
        event: dict[str, Any] = {"resourceType": "AuditEvent"}
        if record.category == "auth":
            event["type"] = AUTH_TYPE
            system, display = AUTH_SUBTYPES.get(record.subtype or "login", AUTH_SUBTYPES["login"])
            code = DICOM_CODES.get(record.subtype or "", record.subtype)
            event["subtype"] = [{"system": system, "code": code, "display": display}]
        else:
            event["type"] = REST_TYPE
            if record.subtype:
                event["subtype"] = [{"system": RESTFUL_INTERACTION, "code": record.subtype,
                                     "display": INTERACTIONS.get(record.subtype, ("", record.subtype))[1]}]
        event["action"] = record.action
        end = instant(record.end)
        event["period"] = {"start": instant(record.start), "end": end}
        event["recorded"] = end
        event["outcome"] = outcome_code(record.status)
        desc = f"HTTP {record.status}"
        if record.outcome_text:
            desc += ": " + record.outcome_text[:500]
        event["outcomeDesc"] = desc
        purpose = purpose_of_use(record.principal)
        event["purposeOfEvent"] = [purpose]
        event["agent"] = self.agents(record, purpose)
        # the observer is named, not identified: every token or identifier here would be one more index row per
        # trace (docs/adr/0008: what a trace costs)
        observer = {"type": "Device", "display": f"DMP FHIR server {record.server}" if record.server
                    else "DMP FHIR server"}
        event["source"] = {"observer": observer, "type": [APPLICATION_SERVER]}
        entities = self.entities(record)
        if entities:
            event["entity"] = entities
        if self.item_labels is not None:
            security = self.security(record)
            if security:
                event["meta"] = {"security": security}
        event["text"] = {"status": "generated", "div": self.narrative(event)}
        return event

    def security(self, record: AuditRecord) -> list[dict]:
        """The labels of the items the trace names (:attr:`item_labels`), each once."""
        seen: set[tuple] = set()
        out = []
        for item in record.items:
            if not item.type or not item.id or item.mode == "file":
                continue
            body = item.body
            if body is None and item.deleted and record.status < 400:
                body = self._stored_body(item)
            for coding in self.item_labels(body) if body is not None else ():
                key = (coding.get("system"), coding.get("code"))
                if key not in seen:
                    seen.add(key)
                    out.append(coding)
        return out

    @staticmethod
    def narrative(event: dict) -> str:
        """One line a portal can show as is: when, who (role, application), did what, to what, why, outcome."""
        agents = event["agent"]
        who = agents[0]["who"]
        name = who.get("reference") or who.get("display") or who["identifier"]["value"]
        role = agents[0]["type"]["coding"][-1].get("display", "")
        via = f", via {agents[1]['who']['display']}" if len(agents) > 1 else ""
        what = (event.get("subtype") or [{}])[0].get("display") or event["type"]["display"]
        items = [e["what"].get("reference") for e in event.get("entity", []) if "reference" in e.get("what", {})]
        shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        purpose = event["purposeOfEvent"][0]
        why = purpose.get("text") or purpose["coding"][0].get("display") or purpose["coding"][0]["code"]
        outcome = {"0": "success", "4": "refused", "8": "denied or failed"}.get(event["outcome"], event["outcome"])
        line = (f"{event['recorded']}: {name} ({role}{via}) — {what}"
                + (f" — {shown}" if shown else "") + f" — purpose: {why} — {outcome}")
        return f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(line, quote=False)}</p></div>'

    # -- who ---------------------------------------------------------------------------------
    def agents(self, record: AuditRecord, purpose: dict) -> list[dict]:
        principal = record.principal
        network = None  # the client's address stays in the access log: indexed here, it would cost every trace a row
        if principal is None:
            requestor: dict[str, Any] = {
                "type": self._type(HUMAN_USER, "anonymous"),
                "who": {"identifier": {"system": ACCOUNT_SYSTEM, "value": "unauthenticated"},
                        "display": "unauthenticated request"},
                "requestor": True}
            if network:
                requestor["network"] = network
            requestor["purposeOfUse"] = [purpose]
            return [requestor]
        role = principal.role or ("anonymous" if not principal.authenticated else "practitioner")
        client_id = principal.client_id
        is_client = role == "system" or (not principal.fhir_user and client_id and principal.subject == client_id)
        if is_client:
            value = client_id or principal.subject
            requestor = {"type": self._type(APPLICATION, "system"),
                         "who": {"identifier": {"system": CLIENT_SYSTEM, "value": value}, "display": value},
                         "requestor": True}
        else:
            who: dict[str, Any] = {}
            identifier = None
            if principal.fhir_user:
                who["reference"] = principal.fhir_user
                identifier = self._professional_identifier(principal.fhir_user)
            account = {"system": ACCOUNT_SYSTEM, "value": principal.subject or "anonymous"}
            who["identifier"] = identifier or account
            requestor = {"type": self._type(HUMAN_USER, role), "who": who}
            if identifier:
                requestor["altId"] = principal.subject
            requestor["requestor"] = True
        if network:
            requestor["network"] = network
        requestor["purposeOfUse"] = [purpose]
        agents = [requestor]
        if not is_client and client_id:  # the application the user acted through
            agents.append({"type": {"coding": [APPLICATION]}, "who": {"display": client_id}, "requestor": False})
        return agents

    @staticmethod
    def _type(kind: dict, role: str) -> dict:
        """``agent.type``: human user or application, and the DMP role (patient, practitioner, related-person,
        admin, system, anonymous). In ``type`` rather than ``role``: agent.role is indexed (agent-role), and
        every indexed value costs each trace one more row (docs/adr/0008)."""
        return {"coding": [kind, {"system": DMP_AGENT_ROLE, "code": role, "display": ROLE_DISPLAY.get(role, role)}]}

    def _professional_identifier(self, fhir_user: str) -> dict | None:
        """The RPPS identifier of a Practitioner user (cached; None when it has none)."""
        if not fhir_user.startswith("Practitioner/"):
            return None
        if fhir_user in self._identifiers:
            return self._identifiers[fhir_user]
        found = None
        try:
            stored = self.store.read("Practitioner", fhir_user.split("/", 1)[1])
            if stored is not None and not stored.deleted:
                for ident in jsonio.loads(stored.body).get("identifier") or []:
                    if isinstance(ident, dict) and ident.get("system") == RPPS_SYSTEM and ident.get("value"):
                        found = {"system": RPPS_SYSTEM, "value": ident["value"]}
                        break
        except Exception:  # a look-up failure only costs the RPPS: the account id identifies the user
            found = None
        if len(self._identifiers) >= MAX_CACHE:
            self._identifiers.clear()
        self._identifiers[fhir_user] = found
        return found

    # -- what ----------------------------------------------------------------------------------
    def entities(self, record: AuditRecord) -> list[dict]:
        patients: dict[str, str] = {pid: f"Patient/{pid}" for pid in record.patients if pid}
        items: list[dict] = []
        seen: set[tuple] = set()
        principal = record.principal
        if principal is not None and principal.fhir_user and principal.fhir_user.startswith("Patient/") \
                and record.category == "auth":
            pid = principal.fhir_user.split("/", 1)[1]
            patients.setdefault(pid, principal.fhir_user)
        lookup = record.status < 400  # a refusal is attributed from what the request named only (see ADR 0008)
        for item in record.items:
            for pid in self.patients_of(item, lookup):
                patients.setdefault(pid, f"Patient/{pid}")
            if item.type == "Patient" and item.id:
                ref = f"Patient/{item.id}" + (f"/_history/{item.version}" if item.version else "")
                patients[item.id] = ref
                continue
            key = (item.type, item.id, item.version)
            if key in seen:
                continue
            seen.add(key)
            items.append(self._item_entity(item))
        if not record.items and record.request_body and record.status >= 400:
            for pid in self._patients_of_body(record.request_body):
                patients.setdefault(pid, f"Patient/{pid}")
        out = [{"what": {"reference": ref}, "role": ROLE_PATIENT} for ref in patients.values()]
        out.extend(items)
        if record.query is not None or record.operation:
            query: dict[str, Any] = {"type": SYSTEM_OBJECT, "role": ROLE_QUERY}
            if record.query is not None:
                query["query"] = base64.b64encode(record.query.encode("utf-8")).decode("ascii")
            if record.operation:
                query["description"] = record.operation
            out.append(query)
        return out

    @staticmethod
    def _item_entity(item: Item) -> dict:
        entity: dict[str, Any] = {}
        if item.type and item.id:
            ref = f"{item.type}/{item.id}"
            if item.version:
                ref += f"/_history/{item.version}"
            entity["what"] = {"reference": ref}
        elif item.id:  # not a resource: an export file, a job
            entity["what"] = {"identifier": {"system": "urn:ietf:rfc:3986", "value": item.id}}
        if not item.type:  # a file: the type of a resource is in its reference (no index row for it)
            entity["type"] = SYSTEM_OBJECT
        if item.mode == "file":  # resources need no role: their reference says what they are (no index row)
            entity["role"] = ROLE_REPORT
        if item.mode and item.mode not in ("match", "file"):
            entity["detail"] = [{"type": "mode", "valueString": item.mode}]
        return entity

    def patients_of(self, item: Item, lookup: bool = True) -> set[str]:
        """Ids of the patients whose compartment holds the item: from its body; else, with ``lookup``, from
        its stored version (for deletions; never for refusals, whose requester may read their own traces
        and must not learn whose record an id belongs to)."""
        if item.mode == "file" or not item.type:
            return set()
        body = item.body
        if body is None and item.id:
            if item.type == "Patient":
                return {item.id}
            body = self._stored_body(item) if lookup else None
        if isinstance(body, (bytes, bytearray, str)):
            try:
                body = orjson.loads(body)  # references only: no need for the exact decimals of jsonio
            except Exception:
                return set()
        if not isinstance(body, dict):
            return set()
        rtype = body.get("resourceType") or item.type
        out = set(self.matcher.patients(rtype, body)) if rtype in self.matcher.compartment else set()
        if rtype == "Patient" and isinstance(body.get("id"), str):
            out.add(body["id"])
        return out

    def _stored_body(self, item: Item) -> bytes | None:
        """The stored body a refusal or a deletion was about, looked up server-side (never shown to anyone)."""
        try:
            stored = self.store.read(item.type, item.id)
            if stored is not None and stored.deleted and stored.version > 1:
                stored = self.store.vread(item.type, item.id, stored.version - 1)
            return stored.body if stored is not None and not stored.deleted else None
        except Exception:
            return None

    def _patients_of_body(self, raw: Any) -> set[str]:
        try:
            body = jsonio.loads(raw) if isinstance(raw, (bytes, bytearray, str)) else raw
        except Exception:
            return set()
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            return set()
        return self.patients_of(Item(body["resourceType"], body.get("id"), None, body))
