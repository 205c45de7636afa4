"""The RESTful interactions on resources: create, read, vread, update, patch, delete, history.

This is where a request becomes a store write: the service checks the gate,
validates, assigns the version and ``meta``, extracts the index entries and hands
one atomic unit to the store. It knows nothing about HTTP; the REST layer maps its
results and :class:`FHIRError` to responses.

A create or update is done in two steps (docs/adr/0004-validation-and-storage.md):
:meth:`ResourceService.prepare` does what needs no transaction (type and interaction
check, base and profile validation, index entries, the new id) before any store
lock is taken, and the ``*_in`` step, inside the transaction, does only what depends
on the stored state (gate, conditional matches, version, ``meta``, the write).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import jsonpatch

from fhir_server.access import matching
from fhir_server.access.gate import AccessGate, Principal, id_clause
from fhir_server.definitions import Definitions
from fhir_server.model import jsonio
from fhir_server.model.ids import new_id
from fhir_server.model.merge_patch import merge_patch
from fhir_server.model.outcome import FHIRError, Issue, bad_request, not_found
from fhir_server.search.entries import IndexEntries, PackedIndex
from fhir_server.search.extract import Indexer
from fhir_server.search.parse import SearchParser
from fhir_server.search.query import Query
from fhir_server.store.base import AlreadyExists, HistoryPage, Store, StoredResource, Transaction, VersionConflict
from fhir_server.validation.enforcement import ProfileEnforcer
from fhir_server.validation.structure import StructureValidator

MAX_RETRIES = 20
T = TypeVar("T")
log = logging.getLogger(__name__)


def utc_now() -> str:
    """The current instant as FHIR ``instant`` text in UTC with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Prepared:
    """A body checked and indexed for a write, before the transaction (:meth:`ResourceService.prepare`).

    ``rid`` is the id it will be stored under (a new one for a create without id). ``index`` holds
    the entries of the stored version: the stamp adds only ``meta.versionId``/``meta.lastUpdated``,
    which no index entry reads (``_lastUpdated`` is a resource column). ``registry_version`` is the
    search parameter registry it was indexed with; the write re-indexes when that changed since.
    Plain data: it can be made in another process (the loader's workers), which then sets
    ``registry_version`` to the one its parameters correspond to here.
    """

    interaction: str  # "create" or "update": what the checks were made for
    rtype: str
    rid: str
    resource: dict
    issues: list[Issue]
    index: IndexEntries | PackedIndex  # packed when it came from a worker process of a bulk import
    registry_version: Any = None

    def lean(self) -> None:
        """Make it what a bulk write's worker process sends back: no resource (the writing process parsed it
        too), no warnings (a bulk write reports only what it refuses), the index entries packed as tuples
        (cheaper to unpickle in the writing process, the bottleneck)."""
        self.resource = None
        self.issues = []
        self.index = PackedIndex.of(self.index)


@dataclass(frozen=True)
class WriteResult:
    resource: StoredResource
    created: bool  # a new logical resource (201) rather than a new version (200)
    outcome: list[Issue]  # warnings and information from validation


class ResourceService:
    """Interactions on single resources, for every served type (driven by the registry).

    ``on_write``, when given, is called with every version (deletion markers included) that
    :meth:`atomic` wrote, after its transaction committed, in write order; a version that a
    rolled-back attempt wrote is never reported. It must not raise (what it raises is logged:
    the write stands). Writes made in a transaction not opened by :meth:`atomic` are not reported.
    """

    def __init__(self, definitions: Definitions, store: Store, validator: StructureValidator, indexer: Indexer,
                 parser: SearchParser, gate: AccessGate, clock: Callable[[], str] = utc_now,
                 on_write: Callable[[StoredResource], None] | None = None, profiles: ProfileEnforcer | None = None):
        self.definitions = definitions
        self.store = store
        self.validator = validator
        self.profiles = profiles  # required and claimed profiles, per the profile mode (None: base R4 only)
        self.indexer = indexer
        self.parser = parser
        self.gate = gate
        self.clock = clock
        self.on_write = on_write
        self._written: dict[int, list[StoredResource]] = {}  # id(open transaction) -> versions it wrote

    # -- helpers -----------------------------------------------------------------------------
    def served(self, rtype: str, interaction: str | None = None) -> None:
        entry = self.definitions.served.get(rtype)
        if entry is None:
            raise not_found(f"Resource type '{rtype}' is not served here")
        if interaction is not None and interaction not in entry.interactions:
            raise FHIRError.of(405, "not-supported", f"The {interaction} interaction is not allowed on {rtype}")

    def validate(self, resource: Any, rtype: str, rid: str | None) -> list[Issue]:
        """Validate a body for a write on ``rtype``; raise 400 with every error, return the warnings.

        Base R4 errors answer 400. Then the profiles (registry and ``meta.profile``): in enforce
        mode a miss answers 422, in warn mode its problems come back as warnings.
        """
        if not isinstance(resource, dict):
            raise bad_request("The body must be a JSON object holding a FHIR resource", code="structure")
        if resource.get("resourceType") != rtype:
            raise bad_request(f"resourceType '{resource.get('resourceType')}' does not match the URL type "
                              f"'{rtype}'", "resourceType")
        if rid is not None and resource.get("id") != rid:
            raise bad_request(f"The resource id '{resource.get('id')}' does not match the URL id '{rid}'"
                              if "id" in resource else "The resource must carry the id given in the URL",
                              f"{rtype}.id")
        issues = self.validator.validate(resource)
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        if errors:
            raise FHIRError(400, errors + [i for i in issues if i not in errors])
        if self.profiles is not None:
            issues = issues + self.profiles.on_write(resource, rtype, issues)
        return issues

    def prepare(self, interaction: str, rtype: str, resource: Any, rid: str | None = None) -> Prepared:
        """What a create (``rid``: the id to use, else a new one) or an update (``rid``: the URL id) needs
        that does not depend on the stored state, done outside any transaction: the served check, base
        and profile validation (raising exactly what the ``*_in`` step would) and the index entries."""
        self.served(rtype, interaction)
        issues = self.validate(resource, rtype, rid if interaction == "update" else None)
        rid = rid or new_id()
        return Prepared(interaction, rtype, rid, resource, issues, *self._index_for(resource, rid))

    def _index_for(self, resource: dict, rid: str) -> tuple[IndexEntries, Any]:
        """The index entries of ``resource`` once stored as ``rid``, and the registry version they follow."""
        version = self.indexer.registry.version
        meta = resource.get("meta")
        if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
            meta = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        body = dict(resource, id=rid)
        if meta is not None:
            body["meta"] = meta
        return self.indexer.index(body), version

    def _prepared_index(self, prepared: Prepared) -> IndexEntries:
        if prepared.registry_version == self.indexer.registry.version:
            return prepared.index
        return self._index_for(prepared.resource, prepared.rid)[0]  # a SearchParameter changed meanwhile

    def stamp(self, resource: dict, rid: str, version: int, now: str) -> dict:
        """Set id and meta.versionId/lastUpdated; everything else stays as the client sent it."""
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = now
        out = {"resourceType": resource["resourceType"], "id": rid, "meta": meta}
        out.update(resource)  # the first three keep their place and get their values back below
        out["id"] = rid
        out["meta"] = meta
        return out

    def _write(self, tx: Transaction, resource: dict, rid: str, current: StoredResource | None,
               method: str, index: IndexEntries | None = None) -> StoredResource:
        version = (current.version + 1) if current else 1
        now = self.clock()
        stamped = self.stamp(resource, rid, version, now)
        stored = StoredResource(stamped["resourceType"], rid, version, now, False, jsonio.dumps(stamped), method)
        tx.put(stored, self.indexer.index(stamped) if index is None else index,
               expected_version=current.version if current else None)
        self._wrote(tx, stored)
        return stored

    def _wrote(self, tx: Transaction, stored: StoredResource) -> None:
        written = self._written.get(id(tx))
        if written is not None:
            written.append(stored)

    def _notify(self, written: list[StoredResource]) -> None:
        for stored in written:
            try:
                self.on_write(stored)
            except Exception:  # the write is committed: a failing hook must not turn it into an error
                log.exception("on_write hook failed for %s/%s/_history/%s", stored.type, stored.id, stored.version)

    # -- access: what the gate's limits let the principal reach (docs/adr/0003-access-gate.md) --------
    def visible(self, principal: Principal, interaction: str, rtype: str, rid: str,
                tx: Transaction | None = None) -> bool:
        """Whether the current version of ``rtype/rid`` is within the principal's reach for ``interaction``:
        one constrained ``_id`` query (inside ``tx`` when given, so a version just written counts); no
        query at all for a principal the gate does not limit on this type."""
        limits = self.gate.limits(principal, rtype, interaction)
        if not limits:
            return True
        query = Query(types=(rtype,), clauses=[id_clause([rid]), *limits])
        return bool(tx.search(query)) if tx is not None else bool(self.store.search(query, count=1).resources)

    def version_visible(self, principal: Principal, interaction: str, stored: StoredResource) -> bool:
        """Whether one (possibly old) version satisfies the principal's limits, checked in memory (the index
        holds current versions only; see :mod:`fhir_server.access.matching`). Deletion markers carry no data."""
        limits = self.gate.limits(principal, stored.type, interaction)
        if not limits or stored.deleted:
            return True
        return matching.matches(limits, stored.id, self.indexer.index(jsonio.loads(stored.body)))

    def matches(self, tx: Transaction, principal: Principal, rtype: str, criteria: str,
                interaction: str) -> list[tuple[str, str]]:
        """The resources the criteria of a conditional interaction designate, among those the principal
        may reach with ``interaction`` (so a match out of reach is no match and leaks nothing)."""
        query = self.gate.constrained(principal, self.parser.criteria(rtype, criteria), self.definitions.served,
                                      interaction)
        return tx.search(query)

    def _check_in_reach(self, tx: Transaction, principal: Principal, interaction: str, rtype: str, rid: str) -> None:
        """After a write (in ``tx``): the new version must still be within the principal's reach, e.g. in the
        token's patient compartment; otherwise 403 and the transaction is rolled back."""
        if not self.visible(principal, interaction, rtype, rid, tx):
            raise FHIRError.of(403, "forbidden", f"This access token may not {interaction} this {rtype}: the "
                               "result would be outside what it may reach (another patient's record, or outside "
                               "its granular scopes)")

    def _prepared_for(self, prepared: Prepared | None, interaction: str, rtype: str, resource: Any,
                      rid: str | None) -> Prepared:
        """``prepared`` when it was made for this very write, else the preparation done now (in the
        transaction: transaction Bundles, conditional updates)."""
        if prepared is not None and prepared.resource is resource and prepared.rtype == rtype \
                and prepared.interaction == interaction and (rid is None or prepared.rid == rid):
            return prepared
        return self.prepare(interaction, rtype, resource, rid)

    @staticmethod
    def check_if_match(current: StoredResource | None, if_match: int | None) -> None:
        if if_match is None:
            return
        if current is None or current.deleted or current.version != if_match:
            raise FHIRError.of(412, "conflict", f"Version mismatch: If-Match asks for version {if_match}, the "
                               f"current version is {current.version if current else 'none'}")

    def system_put_in(self, tx: Transaction, resource: dict) -> StoredResource | None:
        """The server's own write of a resource it owns (published definitions): no gate, no
        interaction check; returns the new version, or None when the content is unchanged."""
        rtype, rid = resource["resourceType"], resource["id"]
        current = tx.current(rtype, rid)
        if current is not None and not current.deleted and self._unchanged(current, resource):
            return None
        return self._write(tx, resource, rid, current, "PUT")

    @staticmethod
    def _unchanged(current: StoredResource, resource: dict) -> bool:
        """An update whose content equals the current version makes no new version (idempotent PUT)."""
        old = jsonio.loads(current.body)
        strip = ("versionId", "lastUpdated")
        old_meta = {k: v for k, v in (old.get("meta") or {}).items() if k not in strip}
        new_meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in strip}
        old_rest = {k: v for k, v in old.items() if k != "meta"}
        new_rest = {k: v for k, v in resource.items() if k != "meta"}
        return old_meta == new_meta and old_rest == new_rest

    # -- read --------------------------------------------------------------------------------
    def read(self, principal: Principal, rtype: str, rid: str) -> StoredResource:
        """The current version. A resource out of the principal's reach answers exactly like an unknown id
        (404, same message): its existence does not leak; for a limited principal a deleted one too."""
        self.served(rtype, "read")
        self.gate.authorize(principal, "read", rtype, None)
        limits = self.gate.limits(principal, rtype, "read")
        if limits:
            found = self.store.search(Query(types=(rtype,), clauses=[id_clause([rid]), *limits]), count=1)
            if not found.resources:
                raise not_found(f"{rtype}/{rid} is not known")
            return found.resources[0]
        current = self.store.read(rtype, rid)
        if current is None:
            raise not_found(f"{rtype}/{rid} is not known")
        if current.deleted:
            raise FHIRError.of(410, "deleted", f"{rtype}/{rid} was deleted (version {current.version})",
                               headers={"ETag": f'W/"{current.version}"'})
        return current

    def vread(self, principal: Principal, rtype: str, rid: str, version: str) -> StoredResource:
        self.served(rtype, "vread")
        if not version.isdigit():
            raise not_found(f"{rtype}/{rid} has no version '{version}'")
        self.gate.authorize(principal, "vread", rtype, None)
        stored = self.store.vread(rtype, rid, int(version))
        if stored is not None and self.gate.limits(principal, rtype, "vread") and (
                stored.deleted or not self.visible(principal, "vread", rtype, rid)
                or not self.version_visible(principal, "vread", stored)):
            stored = None  # out of reach: answered like a version that does not exist
        if stored is None:
            raise not_found(f"{rtype}/{rid} has no version {version}")
        if stored.deleted:
            raise FHIRError.of(410, "deleted", f"Version {version} of {rtype}/{rid} is a deletion")
        return stored

    # -- atomic units ------------------------------------------------------------------------
    def atomic(self, action: Callable[[Transaction], T], *, if_match: int | None = None, what: str = "") -> T:
        """Run ``action`` in one store transaction, retrying when a concurrent writer got there first.

        With ``If-Match`` a conflict is the client's to resolve (412); otherwise the change is
        recomputed on the new current version, so no acknowledged write is ever lost.
        """
        for _ in range(MAX_RETRIES):
            written: list[StoredResource] = []

            def run(tx: Transaction) -> T:
                self._written[id(tx)] = written
                try:
                    return action(tx)
                finally:
                    del self._written[id(tx)]
            try:
                result = self.store.atomically(run)  # committed (and durable) when it returns
                if self.on_write is not None:
                    self._notify(written)
                return result
            except (VersionConflict, AlreadyExists):
                if if_match is not None:
                    raise FHIRError.of(412, "conflict", f"{what} was changed by another request") from None
        raise FHIRError.of(409, "conflict", f"{what} is being changed by other requests; try again")

    def create(self, principal: Principal, rtype: str, resource: Any,
               if_none_exist: str | None = None) -> WriteResult:
        prepared = self.prepare("create", rtype, resource)  # validated and indexed before the store lock
        return self.atomic(lambda tx: self.create_in(tx, principal, rtype, resource, if_none_exist,
                                                     prepared=prepared), what=f"{rtype}")

    def update(self, principal: Principal, rtype: str, rid: str, resource: Any,
               if_match: int | None = None) -> WriteResult:
        prepared = self.prepare("update", rtype, resource, rid)
        return self.atomic(lambda tx: self.update_in(tx, principal, rtype, rid, resource, if_match,
                                                     prepared=prepared),
                           if_match=if_match, what=f"{rtype}/{rid}")

    def conditional_update(self, principal: Principal, rtype: str, criteria: str, resource: Any,
                           if_match: int | None = None) -> WriteResult:
        return self.atomic(lambda tx: self.conditional_update_in(tx, principal, rtype, criteria, resource,
                                                                 if_match), if_match=if_match, what=rtype)

    def patch(self, principal: Principal, rtype: str, rid: str, patch: Any,
              if_match: int | None = None) -> WriteResult:
        return self.atomic(lambda tx: self.patch_in(tx, principal, rtype, rid, patch, if_match),
                           if_match=if_match, what=f"{rtype}/{rid}")

    def conditional_patch(self, principal: Principal, rtype: str, criteria: str, patch: Any,
                          if_match: int | None = None) -> WriteResult:
        return self.atomic(lambda tx: self.conditional_patch_in(tx, principal, rtype, criteria, patch, if_match),
                           if_match=if_match, what=rtype)

    def delete(self, principal: Principal, rtype: str, rid: str) -> StoredResource | None:
        """Delete; returns the deletion marker, or None when there was nothing to delete."""
        return self.atomic(lambda tx: self.delete_in(tx, principal, rtype, rid), what=f"{rtype}/{rid}")

    def conditional_delete(self, principal: Principal, rtype: str, criteria: str) -> int:
        return self.atomic(lambda tx: self.conditional_delete_in(tx, principal, rtype, criteria), what=rtype)

    # -- the interactions inside a transaction (also used by transaction Bundles) ----------------
    def create_in(self, tx: Transaction, principal: Principal, rtype: str, resource: Any,
                  if_none_exist: str | None = None, rid: str | None = None,
                  prepared: Prepared | None = None) -> WriteResult:
        """Create; with ``If-None-Exist`` return the single existing match instead (200).

        ``prepared`` (:meth:`prepare` of this body for a create) saves the checks already made."""
        prepared = self._prepared_for(prepared, "create", rtype, resource, rid)
        issues = prepared.issues
        self.gate.authorize(principal, "create", rtype, resource)
        if if_none_exist:
            matches = self.matches(tx, principal, rtype, if_none_exist, "create")
            if len(matches) > 1:
                raise FHIRError.of(412, "multiple-matches", f"If-None-Exist matched {len(matches)} resources")
            if matches:
                return WriteResult(tx.current(*matches[0]), False, issues)
            try:
                tx.claim(f"{rtype}?{self.parser.canonical_criteria(if_none_exist)}")
            except AlreadyExists:
                raise FHIRError.of(409, "conflict", "Another request is creating a resource matching "
                                   f"'{if_none_exist}'; retry to get its result") from None
        # the gate's record rules may refuse, and stamp server-managed tags (the author) that are
        # indexed: any index computed ahead of this point must be recomputed if the resource changed
        changed = self.gate.check_write(principal, "create", rtype, resource, None, tx)
        index = self._index_for(resource, prepared.rid)[0] if changed else self._prepared_index(prepared)
        stored = self._write(tx, resource, prepared.rid, None, "POST", index)
        self._check_in_reach(tx, principal, "create", rtype, stored.id)
        return WriteResult(stored, True, issues)

    def update_in(self, tx: Transaction, principal: Principal, rtype: str, rid: str, resource: Any,
                  if_match: int | None = None, prepared: Prepared | None = None) -> WriteResult:
        prepared = self._prepared_for(prepared, "update", rtype, resource, rid)
        issues = prepared.issues
        self.gate.authorize(principal, "update", rtype, resource)
        current = tx.current(rtype, rid)
        if current is None or current.deleted:
            self.gate.authorize(principal, "create", rtype, resource)  # an update that creates is a create
        elif not self.visible(principal, "update", rtype, rid, tx):
            raise FHIRError.of(403, "forbidden", f"This access token may not update {rtype}/{rid}")
        self.check_if_match(current, if_match)
        live = current if current is not None and not current.deleted else None
        changed = self.gate.check_write(principal, "update" if live else "create", rtype, resource, live, tx)
        if current is not None and not current.deleted and self._unchanged(current, resource):
            return WriteResult(current, False, issues)
        index = self._index_for(resource, rid)[0] if changed else self._prepared_index(prepared)
        stored = self._write(tx, resource, rid, current, "PUT", index)
        self._check_in_reach(tx, principal, "update" if current is not None and not current.deleted else "create",
                             rtype, rid)
        return WriteResult(stored, current is None or current.deleted, issues)

    def conditional_update_in(self, tx: Transaction, principal: Principal, rtype: str, criteria: str,
                              resource: Any, if_match: int | None = None) -> WriteResult:
        self.served(rtype, "update")
        matches = self.matches(tx, principal, rtype, criteria, "update")
        if len(matches) > 1:
            raise FHIRError.of(412, "multiple-matches",
                               f"The criteria '{criteria}' match {len(matches)} resources; be more selective")
        if matches:
            rid = matches[0][1]
            if isinstance(resource, dict) and "id" in resource and resource["id"] != rid:
                raise bad_request(f"The resource id '{resource['id']}' differs from the matching resource {rid}",
                                  f"{rtype}.id")
            body = dict(resource, id=rid) if isinstance(resource, dict) else resource
            return self.update_in(tx, principal, rtype, rid, body, if_match)
        if isinstance(resource, dict) and resource.get("id"):
            return self.update_in(tx, principal, rtype, resource["id"], resource, if_match)
        return self.create_in(tx, principal, rtype, resource)

    def patch_in(self, tx: Transaction, principal: Principal, rtype: str, rid: str, patch: Any,
                 if_match: int | None = None) -> WriteResult:
        self.served(rtype, "patch")
        if not isinstance(patch, (list, dict)):
            raise bad_request("A PATCH body is a JSON Patch (an array of operations, RFC 6902) or a JSON Merge "
                              "Patch (an object, RFC 7386)", code="structure")
        self.gate.authorize(principal, "patch", rtype, None)
        current = tx.current(rtype, rid)
        if current is None or current.deleted or not self.visible(principal, "patch", rtype, rid, tx):
            raise not_found(f"{rtype}/{rid} is not known")
        self.check_if_match(current, if_match)
        try:
            if isinstance(patch, dict):
                patched = merge_patch(jsonio.loads(current.body), patch)
            else:
                patched = jsonpatch.apply_patch(jsonio.loads(current.body), patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            status = 422 if isinstance(exc, jsonpatch.JsonPatchTestFailed) else 400
            raise FHIRError.of(status, "processing", f"The patch cannot be applied: {exc}") from None
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise bad_request(f"Malformed JSON Patch: {exc}", code="structure") from None
        issues = self.validate(patched, rtype, rid)
        self.gate.authorize(principal, "patch", rtype, patched)
        self.gate.check_write(principal, "patch", rtype, patched, current, tx)  # see create_in
        stored = self._write(tx, patched, rid, current, "PATCH")
        self._check_in_reach(tx, principal, "patch", rtype, rid)
        return WriteResult(stored, False, issues)

    def conditional_patch_in(self, tx: Transaction, principal: Principal, rtype: str, criteria: str, patch: Any,
                             if_match: int | None = None) -> WriteResult:
        self.served(rtype, "patch")
        matches = self.matches(tx, principal, rtype, criteria, "patch")
        if len(matches) != 1:
            status, code = (404, "not-found") if not matches else (412, "multiple-matches")
            raise FHIRError.of(status, code, f"The criteria '{criteria}' match {len(matches)} resources")
        return self.patch_in(tx, principal, rtype, matches[0][1], patch, if_match)

    def delete_in(self, tx: Transaction, principal: Principal, rtype: str, rid: str) -> StoredResource | None:
        self.served(rtype, "delete")
        self.gate.authorize(principal, "delete", rtype, None)
        current = tx.current(rtype, rid)
        if current is None or current.deleted or not self.visible(principal, "delete", rtype, rid, tx):
            return None  # out of reach: nothing this principal can see to delete, like an unknown id
        self.gate.check_write(principal, "delete", rtype, None, current, tx)
        marker = StoredResource(rtype, rid, current.version + 1, self.clock(), True, None, "DELETE")
        tx.put(marker, None, expected_version=current.version)
        self._wrote(tx, marker)
        return marker

    def conditional_delete_in(self, tx: Transaction, principal: Principal, rtype: str, criteria: str) -> int:
        """Delete the match of ``criteria``; several matches are refused (conditionalDelete: single)."""
        self.served(rtype, "delete")
        matches = self.matches(tx, principal, rtype, criteria, "delete")
        if len(matches) > 1:
            raise FHIRError.of(412, "multiple-matches",
                               f"The criteria '{criteria}' match {len(matches)} resources; conditional delete "
                               "removes one resource at a time here")
        return sum(self.delete_in(tx, principal, mtype, mid) is not None for mtype, mid in matches)

    # -- history -----------------------------------------------------------------------------
    def history(self, principal: Principal, rtype: str | None, rid: str | None, *, since: str | None,
                at: tuple[str, str] | None, count: int, cursor: str | None) -> HistoryPage:
        """History; ``at`` is ``_at``'s period (start, end): the versions current at some point of it.
        For a principal the gate limits (a patient/ token, granular scopes), instance history
        needs the current version within reach (404 like an unknown id otherwise) and shows only the
        versions within reach (checked in memory; no total); type and system history are 403
        for it: old versions are not in the index, so they cannot be filtered by query."""
        interaction = "history-instance" if rid else "history-type" if rtype else "history-system"
        bounds = {"since": since, "before": at[1] if at else None, "current_from": at[0] if at else None}
        if rtype is not None:
            self.served(rtype, interaction)
        self.gate.authorize(principal, interaction, rtype, None)
        if rid is None:
            types = [rtype] if rtype is not None else sorted(self.definitions.served)
            limited = {t for t in types if self.gate.limits(principal, t, interaction)}
            if any(self.gate.limits(principal, t, interaction) != self.gate.standing_limits(t, interaction)
                   for t in limited):
                raise FHIRError.of(403, "forbidden", "Type and system history are not available to this access "
                                   "token: it is limited to part of the record (a patient, or granular scopes) "
                                   "and past versions cannot be filtered; use instance history "
                                   "([type]/[id]/_history) or search")
            # types held to standing rules only matter when they have versions in this range (one probe each)
            limited = {t for t in limited if self.store.history(t, None, **bounds, count=1).entries}
            page = self.store.history(rtype, rid, **bounds, count=count, cursor=cursor)
            if not limited:
                return page
            # only rules every principal is held to (e.g. the care history's window): checked per version
            entries = [e for e in page.entries
                       if e.type not in limited or self.version_visible(principal, interaction, e)]
            whole = cursor is None and page.next_cursor is None and page.total is not None  # one page: exact
            return HistoryPage(entries, page.next_cursor, page.total - (len(page.entries) - len(entries))
                               if whole else None)
        limited = bool(self.gate.limits(principal, rtype, interaction))
        if limited and not self.visible(principal, interaction, rtype, rid) \
                or not limited and self.store.read(rtype, rid) is None:
            raise not_found(f"{rtype}/{rid} is not known")
        page = self.store.history(rtype, rid, **bounds, count=count, cursor=cursor)
        if not limited:
            return page
        entries = [e for e in page.entries if self.version_visible(principal, interaction, e)]
        return HistoryPage(entries, page.next_cursor, None)
