"""Helpers of the traceability tests: wait for the traces and read them back (from the store: reading them
over the API would itself be traced)."""
from __future__ import annotations

from access_helpers import Smart


def flush(smart: Smart) -> None:
    assert smart.app.extensions["fhir_audit"].flush(10)


def all_traces(smart: Smart) -> list[dict]:
    """Every AuditEvent in the store, oldest first (read from the store: reading them over the API is traced)."""
    from fhir_server.model import jsonio
    flush(smart)
    store = smart.app.extensions["fhir"].store
    out = []
    cursor = None
    while True:
        page = store.history("AuditEvent", None, count=1000, cursor=cursor)
        out.extend(jsonio.loads(s.body) for s in page.entries if not s.deleted)
        cursor = page.next_cursor
        if not cursor:
            break
    out.sort(key=lambda e: (e["recorded"], e["meta"]["lastUpdated"]))
    return out


def mark(smart: Smart) -> None:
    smart.seen = {e["id"] for e in all_traces(smart)}


def traces(smart: Smart) -> list[dict]:
    """The AuditEvents written since the last ``mark`` (or since the record was set up)."""
    seen = getattr(smart, "seen", set())
    return [e for e in all_traces(smart) if e["id"] not in seen]
