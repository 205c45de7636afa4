"""A trace that names an item hidden from the patient is hidden with it, until the item is shown.

A trace (AuditEvent) names the items its request touched. An item a professional made invisible to
the patient (``INVISIBLE_PATIENT``, until it is announced in a consultation, R1111-53) or to a
minor's legal representatives would show through the trace of any access to it: its type, its id,
that it exists. So:

* the builder labels such a trace with the item's label in ``meta.security`` (:func:`hiding_labels`,
  installed by :func:`fhir_server.policy.install`); the holder's and representatives' reach already
  leave labelled items out, traces included (:meth:`~fhir_server.policy.gate.RecordGate.holder_reach`);
* when the item's label is lifted — by a professional, or by the schedule after a month — the traces
  it hid get their label lifted too, unless another item they name is still hidden
  (:class:`TraceRelabeller`, a write listener, and :meth:`TraceRelabeller.sweep` in the record's timed
  jobs for traces that were still queued elsewhere). That is a new version of the trace whose only change
  is ``meta.security``; the labelled version stays in its history.

Professionals' reach is unchanged: the treating doctor's rights show every trace of the record.
See docs/adr/0012-traces-of-hidden-items.md.
"""
from __future__ import annotations

from typing import Any

from fhir_server.model import jsonio
from fhir_server.policy import codes
from fhir_server.policy.gate import label_clause
from fhir_server.search.query import Clause, Query, ReferenceValue
from fhir_server.store.base import StoredResource

#: the labels that hide an item from its holder or their representatives (not MASQUE_PS: professionals)
HIDING = (codes.INVISIBLE_TO_PATIENT, codes.INVISIBLE_TO_REPRESENTATIVES)
_MARKER = b"INVISIBLE_"  # in the body of any labelled item: the common case is decided without parsing
PAGE = 200
_NONE: frozenset[str] = frozenset()


def hidden_from(body: Any) -> frozenset[str] | set[str]:
    """The hiding labels an item (its body: bytes, str or dict) carries."""
    if type(body) is bytes and _MARKER not in body:  # the common case, first
        return _NONE
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        if _MARKER not in body:
            return _NONE
        try:
            body = jsonio.loads(bytes(body))
        except Exception:
            return set()
    if not isinstance(body, dict):
        return set()
    return codes.labels_of(body) & set(HIDING)


def hiding_labels(body: Any) -> list[dict]:
    """The ``meta.security`` codings a trace naming this item must carry (the builder's hook)."""
    found = hidden_from(body)
    return [{"system": codes.VISIBILITY, "code": code} for code in sorted(found)] if found else []


class TraceRelabeller:
    """The write listener that shows again the traces an item hid, once its label is lifted."""

    def __init__(self, server: Any):
        self.server = server

    def on_write(self, stored: StoredResource) -> None:
        if stored.type == "AuditEvent" or stored.deleted or stored.version < 2:
            return  # a first version lifts nothing; a deleted item's traces stay as they were
        previous = self.server.store.vread(stored.type, stored.id, stored.version - 1)
        if previous is None or previous.deleted:
            return
        lifted = hidden_from(previous.body) - hidden_from(stored.body)
        if not lifted:
            return
        auditor = getattr(self.server, "audit", None)
        if auditor is not None:  # this process's traces still queued (an access just before the lift) first
            auditor.flush(timeout=5.0)
        for label in sorted(lifted):
            for trace in self._traces(label, (stored.type, stored.id)):
                self._relabel(trace, label)

    def sweep(self) -> int:
        """Show every labelled trace none of whose items is hidden any more; how many were shown. Run with the
        record's timed jobs: it heals what the listener cannot see (a trace still queued in another process
        when the item was shown)."""
        return sum(self._relabel(trace, label) for label in HIDING for trace in self._traces(label))

    def _traces(self, label: str, item: tuple[str, str] | None = None) -> list[StoredResource]:
        clauses = [label_clause(label, None)]
        if item is not None:
            clauses.append(Clause("entity", "reference", None, (ReferenceValue(*item),)))
        query = Query(types=("AuditEvent",), clauses=clauses)
        out, cursor = [], None
        while True:
            page = self.server.store.search(query, count=PAGE, cursor=cursor)
            out.extend(page.resources)
            cursor = page.next_cursor
            if cursor is None:
                return out

    def _relabel(self, trace: StoredResource, label: str) -> bool:
        event = jsonio.loads(trace.body)
        if any(label in self._current_labels(ref) for ref in _named_items(event)):
            return False  # an item it names is still hidden
        meta = dict(event.get("meta") or {})
        security = [c for c in meta.get("security", []) if not (isinstance(c, dict) and c.get("code") == label
                                                                and c.get("system") == codes.VISIBILITY)]
        if security:
            meta["security"] = security
        else:
            meta.pop("security", None)
        resources = self.server.resources
        resources.atomic(lambda tx: resources.system_put_in(tx, dict(event, meta=meta)),
                         what=f"AuditEvent/{trace.id}")
        return True

    def _current_labels(self, reference: tuple[str, str]) -> frozenset[str] | set[str]:
        """The hiding labels of an item now; of its last version for a deleted one (it stays hidden)."""
        store = self.server.store
        current = store.read(*reference)
        if current is not None and current.deleted:
            current = store.vread(*reference, current.version - 1) if current.version > 1 else None
        return hidden_from(current.body) if current is not None and not current.deleted else _NONE


def _named_items(event: dict) -> set[tuple[str, str]]:
    """(type, id) of the items a trace names (``entity.what``, versioned or not), patients aside."""
    out = set()
    for entity in event.get("entity") or ():
        reference = ((entity or {}).get("what") or {}).get("reference")
        if not isinstance(reference, str):
            continue
        parts = reference.split("/_history/", 1)[0].split("/")
        if len(parts) == 2 and parts[0] != "Patient":
            out.add((parts[0], parts[1]))
    return out
