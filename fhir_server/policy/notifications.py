"""What the patient (and, for emergency access, the treating doctor) is told, by e-mail or SMS.

Messages go through the senders of the authorization server (:mod:`auth.senders`: SMTP, SMS
gateway, or the development outbox), to the ``telecom`` of the Patient (or Practitioner) resource:
the record holder's own contact details. Events (README "Who can see what"):

* ``emergency-access`` — always sent (R1111-48: the holder is informed of every emergency access);
* ``new-authorisation`` — a professional declared the patient's authorisation;
* ``new-document`` — a document was added to the record;
* ``pending-announcement`` — an item invisible to the patient for two weeks (R1111-53).

A patient opts out of the optional ones with the extension :data:`OPT_OUT` on their Patient
resource (``valueCode`` = an event name; repeat it for several).
"""
from __future__ import annotations

import logging
from typing import Any

from fhir_server.model import jsonio
from fhir_server.policy import codes
from fhir_server.store.base import StoredResource

log = logging.getLogger(__name__)

OPT_OUT = "https://dmp.example.org/fhir/StructureDefinition/dmp-notification-opt-out"
MANDATORY = frozenset({"emergency-access"})
EVENTS = ("emergency-access", "new-authorisation", "new-document", "pending-announcement")


class Notifier:
    """Sends the record's notifications; failures are logged, never raised into the request."""

    def __init__(self, server: Any, sender: Any):
        self.server = server
        self.sender = sender

    def notify(self, reference: str, event: str, text: str) -> bool:
        """Tell the holder of ``reference`` (Patient/x or Practitioner/x) about ``event``; False when
        they chose not to be told, or cannot be reached."""
        rtype, _, rid = reference.partition("/")
        stored = self.server.store.read(rtype, rid) if rtype in ("Patient", "Practitioner") else None
        if stored is None or stored.deleted:
            return False
        person = jsonio.loads(stored.body)
        if event not in MANDATORY and event in opted_out(person):
            return False
        contact = contact_of(person)
        if contact is None:
            log.info("no e-mail or phone for %s: %s not sent", reference, event)
            return False
        from auth.senders import OTPMessage, SendError
        channel, address = contact
        try:
            self.sender.send(OTPMessage(to=address, channel=channel, code="", text=text))
        except SendError:
            log.warning("notification %s to %s could not be sent", event, reference, exc_info=True)
            return False
        return True

    # -- events from writes (a write listener: after the commit) ---------------------------------
    def on_write(self, stored: StoredResource) -> None:
        if stored.deleted or stored.body is None:
            return
        resource = jsonio.loads(stored.body)
        patient = (resource.get("patient") or resource.get("subject") or {}).get("reference", "")
        if not patient.startswith("Patient/"):
            return
        author = codes.author_of(resource) or ""
        if stored.type == "Consent" and stored.version == 1 and codes.consent_kind(resource) == codes.AUTHORISATION \
                and author.startswith("Practitioner/"):
            self.notify(patient, "new-authorisation", f"{author} declared that you authorised their access to your "
                        "health record. If you did not, withdraw it from your record's access list.")
        elif stored.type == "DocumentReference" and stored.version == 1 and author != patient \
                and codes.INVISIBLE_TO_PATIENT not in codes.labels_of(resource):
            title = ((resource.get("type") or {}).get("text") or resource.get("description") or "a document")
            self.notify(patient, "new-document", f"A new document was added to your health record: {title}.")


def opted_out(person: dict) -> set[str]:
    return {e.get("valueCode") for e in person.get("extension", []) if e.get("url") == OPT_OUT}


def contact_of(person: dict) -> tuple[str, str] | None:
    """(channel, address): the first e-mail, else the first mobile or phone number."""
    telecom = [t for t in person.get("telecom", []) if isinstance(t, dict) and t.get("value")]
    for system, channel in (("email", "email"), ("sms", "sms"), ("phone", "sms")):
        for point in telecom:
            if point.get("system") == system:
                return channel, point["value"]
    return None
