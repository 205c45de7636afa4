"""What one traced access is, as captured on the request path: cheap facts, no FHIR building.

The request thread only fills an :class:`AuditRecord` (a few attribute copies and references to
bodies it already holds); :mod:`fhir_server.audit.builder` turns it into an ``AuditEvent`` in the
writer thread (:mod:`fhir_server.audit.writer`), off the request path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir_server.access.gate import Principal

# -- code systems and profile ---------------------------------------------------------------------
DMP_AUDIT_PROFILE = "https://dmp.example.org/fhir/StructureDefinition/dmp-auditevent"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DICOM = "http://dicom.nema.org/resources/ontology/DCM"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
DMP_PURPOSE = "https://dmp.example.org/fhir/CodeSystem/dmp-purpose-of-use"
DMP_AGENT_ROLE = "https://dmp.example.org/fhir/CodeSystem/dmp-agent-role"
DMP_AUTH_EVENT = "https://dmp.example.org/fhir/CodeSystem/dmp-auth-event"
SECURITY_ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ACCOUNT_SYSTEM = "https://dmp.example.org/fhir/sid/account"  # the authorization server's account id (token sub)
CLIENT_SYSTEM = "https://dmp.example.org/fhir/sid/client"  # an OAuth client id
RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"  # IdNatPS / RPPS of a health professional

#: ActReason codes of the dmp-purpose-of-use value set; any other purpose is a DMP code
ACT_REASON_CODES = {"TREAT": "treatment", "ETREAT": "Emergency Treatment", "BTG": "break the glass",
                    "PATRQT": "patient requested", "HPAYMT": "healthcare payment", "HRESCH": "healthcare research"}
DMP_PURPOSES = {"CENTRE_REGULATION": "Accès du médecin régulateur (SAMU-centre 15)"}

ROLE_DISPLAY = {"patient": "Patient", "practitioner": "Professionnel de santé",
                "related-person": "Représentant légal", "admin": "Administrateur", "system": "Système",
                "anonymous": "Non authentifié"}

#: restful-interaction code -> (action C/R/U/D/E, display)
INTERACTIONS = {
    "read": ("R", "read"), "vread": ("R", "vread"), "update": ("U", "update"), "patch": ("U", "patch"),
    "delete": ("D", "delete"), "history": ("R", "history"), "history-instance": ("R", "history-instance"),
    "history-type": ("R", "history-type"), "history-system": ("R", "history-system"),
    "create": ("C", "create"), "search": ("E", "search"), "search-type": ("E", "search-type"),
    "search-system": ("E", "search-system"), "capabilities": ("R", "capabilities"),
    "transaction": ("E", "transaction"), "batch": ("E", "batch"), "operation": ("E", "operation"),
}

#: authentication events (type DCM 110114 "User Authentication"): subtype -> (system, display)
AUTH_SUBTYPES = {
    "login": (DICOM, "Login"),  # DCM 110122
    "logout": (DICOM, "Logout"),  # DCM 110123
    "password": (DMP_AUTH_EVENT, "Password checked, one-time code sent"),
    "token": (DMP_AUTH_EVENT, "Access token issued"),
    "revoke": (DMP_AUTH_EVENT, "Token revoked"),
}
DICOM_CODES = {"login": "110122", "logout": "110123"}


@dataclass
class Item:
    """One resource (version) the request touched; ``body`` is what the request already holds (bytes or a
    parsed dict), or None (refusals, deletions: the writer looks the resource up to find its patient)."""

    type: str | None
    id: str | None = None
    version: int | None = None
    body: Any = None
    mode: str | None = None  # search: match | include; bundle entries: the entry's interaction
    deleted: bool = False


@dataclass
class AuditRecord:
    """The facts of one traced event, captured on the request path."""

    category: str  # "rest" (a /fhir request) or "auth" (sign-in, token)
    subtype: str | None  # restful-interaction code, or an AUTH_SUBTYPES key
    action: str  # C R U D E
    start: float  # epoch seconds
    end: float
    status: int  # HTTP status answered
    principal: Principal | None  # None: unknown (no or bad token)
    items: list[Item] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)  # ids of patients known to be concerned
    query: str | None = None  # the query (search parameters, operation URL), stored base64 in entity.query
    operation: str | None = None  # "$everything", "$export"...
    outcome_text: str | None = None  # the refusal/error message, or what happened (auth)
    address: str | None = None  # the client's network address
    request_body: bytes | None = None  # a refused write's body: who it concerned
    server: str | None = None  # this server's base URL (the observer)
