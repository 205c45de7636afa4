"""The subscriptions of one server process: which are in effect, what a committed write matches, and the
Subscription status the server maintains (docs/adr/0007-subscriptions.md).

*In effect.* The Subscriptions whose status is ``active`` or ``error``, loaded by a search at start-up,
kept up to date by the write listener for this process's writes and, for the other worker processes'
writes, by a cheap look at the store (the newest Subscription version) at most every
:data:`REFRESH_INTERVAL` seconds, before matching a write.

*Matching.* After each committed write (``FHIRServer.add_write_listener``), for each subscription
on the written type: the criteria run as a search ANDed with ``_id=<id>`` and the gate's standing
rules, against the store, so every search parameter, modifier, chain and ``_has`` behaves exactly
as in a search. A match queues a :class:`~fhir_server.subscriptions.delivery.Notification`; nothing
is sent in the request. A deletion notifies the subscriptions the last version before it matched,
when that can be decided from that version alone (criteria made of ``_id``, token and reference
parameters, checked in memory: the index no longer holds a deleted resource); other criteria are not
notified of deletions.

*Status.* The server writes a new version of the Subscription (``system_put_in``: no gate, its
owner tag kept) when a notification is given up (``status: error`` and ``error``: what failed), when
a delivery succeeds while it is in error (back to ``active``), and when its ``end`` has passed
(``off``).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable

from fhir_server.access import matching
from fhir_server.access.gate import Principal, id_clause
from fhir_server.model import jsonio
from fhir_server.model.outcome import FHIRError
from fhir_server.search.query import AnyOf, Clause, Query
from fhir_server.services.store_mirror import StoreMirror
from fhir_server.store.base import StoredResource
from fhir_server.subscriptions.checks import DELIVERED, TYPE, Definition, definition
from fhir_server.subscriptions.delivery import Deliveries, Notification, Outcome, send
from fhir_server.subscriptions.endpoints import EndpointPolicy

log = logging.getLogger(__name__)

REFRESH_INTERVAL = 5.0  # seconds between two looks at the store for other processes' Subscription changes


class SubscriptionService(StoreMirror):
    mirrored_type = TYPE

    def __init__(self, server: Any, *, interval: float = REFRESH_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, **delivery_options: Any) -> None:
        self.server = server
        self.init_mirror(interval, clock)
        self.endpoints = EndpointPolicy(getattr(server.settings, "subscription_endpoints", ()))
        # whether an owner (a client id) was withdrawn: set by the app when the authorization server shares the
        # store (``fhir-server clients revoke``); its subscriptions are then turned off at their next match
        self.owner_revoked: Callable[[str], bool] | None = None
        sender = delivery_options.pop("sender", send)

        def guarded(request: Any, timeout: float) -> None:  # checked before every attempt: names may change
            self.endpoints.check_delivery(request.full_url)
            sender(request, timeout)

        self.deliveries = Deliveries(self._delivered, self._still_wanted, sender=guarded, **delivery_options)
        self._by_id: dict[str, Definition] = {}
        self._by_type: dict[str, list[Definition]] = {}
        self._versions: dict[str, int] = {}  # newest Subscription version seen per id (any status)

    # -- who may subscribe ---------------------------------------------------------------------
    def check_owner(self, principal: Principal, rtype: str) -> None:
        """A subscription's owner must be allowed to search ``rtype`` with no limit of its own (the gate's
        standing rules apply to every notification anyway): notifications then never tell more than the
        owner could find by searching. 403 otherwise."""
        gate = self.server.gate
        gate.authorize(principal, "search", rtype, None)
        standing = gate.standing_limits(rtype, "search")
        if any(c not in standing for c in gate.limits(principal, rtype, "search")):
            raise FHIRError.of(403, "forbidden", f"This access token may not subscribe to {rtype}: it sees only "
                               f"part of the {rtype} resources (a patient's record, or granular scopes), and "
                               "subscriptions are for clients that may search the whole type (system clients)",
                               "Subscription.criteria")

    # -- what is in effect -----------------------------------------------------------------------
    def active(self) -> list[Definition]:
        with self._lock:
            return [self._by_id[k] for k in sorted(self._by_id)]

    def get(self, rid: str) -> Definition | None:
        with self._lock:
            return self._by_id.get(rid)

    def mirror_store(self) -> Any:
        return self.server.store

    def load(self) -> int:
        """(Re)load the subscriptions in effect from the store, by a search on their status."""
        with self._lock:
            marker = self._store_marker()  # before reading: a write in between makes the next refresh reload
            query = self.server.parser.criteria(TYPE, "status=" + ",".join(sorted(DELIVERED)))
            found: dict[str, Definition] = {}
            cursor = None
            while True:
                page = self.server.store.search(query, count=500, cursor=cursor)
                for stored in page.resources:
                    sub = self._definition(stored)
                    if sub is not None:
                        found[sub.id] = sub
                cursor = page.next_cursor
                if cursor is None:
                    break
            self._by_id = found
            self._versions = {k: v.version for k, v in found.items()}
            self._reindex()
            self._marker = marker
            self._checked_at = self.clock()
            return len(found)

    def _definition(self, stored: StoredResource) -> Definition | None:
        if stored.deleted or stored.body is None:
            return None
        body = jsonio.loads(stored.body)
        if body.get("status") not in DELIVERED:
            return None
        try:
            return definition(stored.id, stored.version, body, self.server.parser)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("Subscription/%s is not in effect: %s", stored.id, exc)
            return None

    def _reindex(self) -> None:
        by_type: dict[str, list[Definition]] = {}
        for sub in self._by_id.values():
            by_type.setdefault(sub.rtype, []).append(sub)
        self._by_type = by_type

    def _apply(self, stored: StoredResource) -> None:
        """A Subscription version committed by this process: in effect from now on, or no longer."""
        with self._lock:
            if self._versions.get(stored.id, 0) > stored.version:
                return  # a newer version was applied already
            self._versions[stored.id] = stored.version
            sub = self._definition(stored)
            if sub is None:
                self._by_id.pop(stored.id, None)
            else:
                self._by_id[stored.id] = sub
            self._reindex()
            self._marker = None  # the next refresh reloads (heals any race with a concurrent reload)

    # -- the write listener ----------------------------------------------------------------------
    def on_write(self, stored: StoredResource) -> None:
        """Called after each committed write: queue the notifications it calls for."""
        if stored.type == TYPE:
            self._apply(stored)
            return
        try:
            self.refresh()
        except Exception:
            log.exception("cannot refresh the subscriptions; keeping the current ones")
        with self._lock:
            candidates = list(self._by_type.get(stored.type, ()))
        if not candidates:
            return
        previous = None
        for sub in candidates:
            if sub.expired():
                self._set_status(sub, "off", None)
                continue
            if sub.owner and self.owner_revoked is not None and self.owner_revoked(sub.owner):
                when = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
                self._set_status(sub, "off", f"{when}: turned off: the client application that owns it "
                                 f"({sub.owner}) was revoked")
                continue
            if stored.deleted:
                if previous is None:
                    previous = self._previous(stored)
                hit = previous is not None and self._matched_before(sub, previous)
            else:
                hit = self._matches(sub, stored)
            if hit:
                self.deliveries.submit(Notification(sub, stored.type, stored.id, stored.version,
                                                    None if stored.deleted else stored.body))

    def _matches(self, sub: Definition, stored: StoredResource) -> bool:
        gate = self.server.gate
        query = Query(types=(sub.rtype,), clauses=[*sub.query.clauses, id_clause([stored.id]),
                                                   *gate.standing_limits(sub.rtype, "search")])
        return bool(self.server.store.search(query, count=1).resources)

    def _previous(self, marker: StoredResource) -> tuple[str, Any] | None:
        """The id and index entries of the version a deletion ended (None when there is none)."""
        before = self.server.store.vread(marker.type, marker.id, marker.version - 1) if marker.version > 1 else None
        if before is None or before.deleted or before.body is None:
            return None
        return before.id, self.server.indexer.index(jsonio.loads(before.body))

    def _matched_before(self, sub: Definition, previous: tuple[str, Any]) -> bool:
        clauses = [*sub.query.clauses, *self.server.gate.standing_limits(sub.rtype, "search")]
        if not all(in_memory(c) for c in clauses):
            return False  # not decidable without the index: deletions are not notified (see the module docs)
        return matching.matches(clauses, previous[0], previous[1])

    # -- after a delivery ------------------------------------------------------------------------
    def _still_wanted(self, notification: Notification) -> bool:
        current = self.get(notification.subscription.id)
        return current is not None and current.channel == notification.subscription.channel

    def _delivered(self, outcome: Outcome) -> None:
        sub = outcome.notification.subscription
        current = self.get(sub.id)
        if outcome.delivered:
            if current is not None and current.status == "error":
                self._set_status(current, "active", None)
            return
        if current is not None and current.status == "error":
            return  # already in error: its first failure stays recorded (no new version per failed notification)
        when = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        self._set_status(sub, "error", f"{when}: the notification of {outcome.notification.describe()} to "
                         f"{sub.endpoint} failed after {outcome.attempts} attempts: {outcome.error}")

    def _set_status(self, sub: Definition, status: str, error: str | None) -> None:
        """Write the Subscription's new status as the server, unless it was changed meanwhile (deleted, turned
        off, or given another channel or criteria)."""
        resources = self.server.resources

        def change(tx):
            current = tx.current(TYPE, sub.id)
            if current is None or current.deleted or current.body is None:
                return None
            body = jsonio.loads(current.body)
            if body.get("status") not in DELIVERED:
                return None
            try:
                now = definition(sub.id, current.version, body, self.server.parser)
            except (ValueError, KeyError, TypeError):
                now = None
            if now is not None and (now.channel != sub.channel or now.criteria != sub.criteria):
                return None
            body["status"] = status
            if error is None:
                body.pop("error", None)
            else:
                body["error"] = error
            return resources.system_put_in(tx, body)

        try:
            resources.atomic(change, what=f"{TYPE}/{sub.id}")
        except Exception:
            log.exception("cannot record status %s on Subscription/%s", status, sub.id)

    def close(self) -> None:
        self.deliveries.stop()


def in_memory(clause: Any) -> bool:
    """Whether :mod:`fhir_server.access.matching` can decide ``clause`` from one version's index entries."""
    if isinstance(clause, AnyOf):
        return all(in_memory(c) for c in clause.clauses)
    if not isinstance(clause, Clause) or clause.chain is not None or clause.missing is not None:
        return False
    if clause.param == "_id":
        return clause.modifier in (None, "not")
    return clause.modifier is None and clause.type in ("token", "reference")
