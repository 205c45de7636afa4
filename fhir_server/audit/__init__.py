"""Traceability (issue #7 item 9, docs/adr/0008-traceability.md): every access becomes an AuditEvent.

* :mod:`.model`: what a request captures (:class:`AuditRecord`), codes;
* :mod:`.builder`: record -> AuditEvent of the dmp-auditevent profile (TDE shape);
* :mod:`.writer`: the bounded queue and the background thread writing batches, one transaction each;
* :mod:`.capture`: the REST layer's hooks (items read or written, one trace per request or Bundle entry);
* :mod:`.auth_events`: sign-in, token and revocation traces of the authorization server.

Wiring (``fhir_server.app.create_app``)::

    from fhir_server import audit
    audit.install(app, server)          # app.extensions["fhir_audit"], request hooks

Traces are append-only: the registry offers no update/patch/delete on AuditEvent, and only backend
(``system/``) clients may create AuditEvents of their own (:func:`check_client_create`).
"""
from __future__ import annotations

from typing import Any

from fhir_server.audit.model import AuditRecord, Item
from fhir_server.model.outcome import FHIRError

__all__ = ["Auditor", "AuditRecord", "Item", "install", "check_client_create", "check_bundle_feeds"]


class Auditor:
    """Builds and writes the traces of one server; ``enabled`` is ``Settings.audit``."""

    def __init__(self, server: Any, *, enabled: bool = True, max_queue: int = 1_000, max_batch: int = 500,
                 linger: float = 0.1):
        from fhir_server.audit.builder import AuditEventBuilder
        from fhir_server.audit.writer import AuditWriter, StoreBatchWriter
        self.enabled = enabled
        self.builder = AuditEventBuilder(server)
        store_writer = StoreBatchWriter(server, self.builder.build)
        self.writer = AuditWriter(store_writer, prepare=store_writer.prepare, max_queue=max_queue,
                                  max_batch=max_batch, linger=linger)

    def record(self, record: AuditRecord) -> None:
        if self.enabled:
            self.writer.submit(record)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every trace recorded so far is in the store (tests, shutdown)."""
        return self.writer.flush(timeout)


def install(app: Any, server: Any) -> Auditor:
    """Create the server's :class:`Auditor` and hook it into the app's requests."""
    from fhir_server.audit import capture
    from fhir_server.audit.auth_events import before_auth_request
    settings = server.settings
    auditor = Auditor(server, enabled=getattr(settings, "audit", True),
                      max_queue=getattr(settings, "audit_queue", 1_000),
                      max_batch=getattr(settings, "audit_batch", 500))
    app.extensions["fhir_audit"] = auditor
    server.audit = auditor
    funcs = app.before_request_funcs.setdefault(None, [])
    funcs.insert(0, capture.before_request)  # first: it times the request, even one the gate refuses
    funcs.append(before_auth_request)
    app.after_request(capture.after_request)
    return auditor


def may_feed_traces(principal: Any, gate: Any) -> bool:
    """Backend clients (``system/`` tokens: an EHR feeding its own traces, IHE ITI-20) may create
    AuditEvents; so may the operator of a development server without authentication."""
    from fhir_server.access.gate import OpenGate
    if isinstance(gate, OpenGate):
        return True
    if principal is None:
        return False
    return principal.role == "system" or any(s.startswith("system/") for s in principal.scopes)


def _refusal() -> FHIRError:
    return FHIRError.of(403, "forbidden", "AuditEvents are the record's traces: this server writes them, and "
                        "only backend (system/) clients may add their own; traces can never be changed or "
                        "deleted")


def check_client_create(principal: Any, gate: Any, rtype: str) -> None:
    """403 when ``principal`` may not create an AuditEvent (called by the REST create handler)."""
    if rtype == "AuditEvent" and not may_feed_traces(principal, gate):
        raise _refusal()


def check_bundle_feeds(principal: Any, gate: Any, bundle: Any) -> None:
    """403 for a batch/transaction Bundle creating AuditEvents for a principal that may not (the other
    write methods on AuditEvent are refused entry by entry with 405 by the registry)."""
    if not isinstance(bundle, dict) or may_feed_traces(principal, gate):
        return
    for entry in bundle.get("entry") or ():
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            continue
        url = str(request.get("url") or "").split("?", 1)[0].strip("/")
        method = str(request.get("method") or "").upper()
        if method == "POST" and (url == "AuditEvent" or url.endswith("/AuditEvent")):
            raise _refusal()
