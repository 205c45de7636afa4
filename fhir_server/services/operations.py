"""The R4 operations on resources: ``$validate``, ``$meta``, ``$meta-add``, ``$meta-delete`` and
``Patient/$everything``.

Like the other services this knows nothing about HTTP: the REST layer
(:mod:`fhir_server.http.operations_api`) parses the request and shapes the response.
Every path goes through the access gate; every search it runs is extended with the
gate's constraints (``SearchService.constrained``), so an operation never shows more
than a search would.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from fhir_server.access.gate import AccessGate, Principal
from fhir_server.definitions import Definitions
from fhir_server.model import jsonio
from fhir_server.model.references import literal_references
from fhir_server.model.outcome import FHIRError, Issue, bad_request, not_found
from fhir_server.search.extract import Indexer
from fhir_server.search.query import AnyOf, Clause, Query, RangeValue, ReferenceValue, TokenValue
from fhir_server.services.resources import ResourceService
from fhir_server.services.search import SearchService
from fhir_server.store.base import PageExpired, Store, StoredResource, Transaction
from fhir_server.validation.structure import StructureValidator

VALIDATE_MODES = ("create", "update", "delete")
META_LISTS = ("profile", "tag", "security")
# traces of accesses to the record: in the patient's compartment, but not part of "everything" unless _type asks
# (each $everything request is itself traced: the walk would never end, and clinical apps do not want them)
TRACE_TYPES = frozenset({"AuditEvent"})
EVERYTHING_DEFAULT_COUNT = 50
EVERYTHING_MAX_COUNT = 1000
ID_CHUNK = 500  # ids per ``_id`` query when fetching referenced resources
META_SCAN_PAGE = 1000


@dataclass
class EverythingPage:
    """One page of ``$everything``: compartment resources, what they refer to, the next page token."""

    matches: list[StoredResource]
    included: list[StoredResource]
    next_page: str | None
    issues: list[Issue] = field(default_factory=list)


@dataclass(frozen=True)
class _Position:
    """Where a ``$everything`` walk stands: a patient, the type being paged and the store's cursor in it.

    ``next_patients`` is the store cursor of the patient search after this patient (type level only).
    """

    patient: str
    next_patients: str | None
    rtype: str
    cursor: str | None

    def token(self) -> str:
        state = {"i": self.patient, "t": self.rtype, "c": self.cursor, "n": self.next_patients}
        raw = json.dumps({k: v for k, v in state.items() if v is not None}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str) -> "_Position":
        try:
            state = json.loads(base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode()))
            if not (isinstance(state, dict) and isinstance(state.get("i"), str) and isinstance(state.get("t"), str)):
                raise ValueError
            for key in ("c", "n"):
                if not isinstance(state.get(key), (str, type(None))):
                    raise ValueError
        except ValueError:
            raise FHIRError.of(400, "invalid", "_page is not a page token of this server; start again from the "
                               "first page", "_page") from None
        return cls(state["i"], state.get("n"), state["t"], state.get("c"))


#: R4's "care date" of a resource: the clinical-date search parameter (Encounter, Observation, Procedure...)
CLINICAL_DATE = "http://hl7.org/fhir/SearchParameter/clinical-date"

def _type_order(rtype: str) -> tuple[int, str]:
    """The fixed order ``$everything`` walks types in: the Patient first, then by name."""
    return (0 if rtype == "Patient" else 1, rtype)


def _coding_key(coding: dict) -> tuple[str, str]:
    return (coding.get("system") or "", coding.get("code") or "")


def merge_meta(meta: dict, change: dict, *, add: bool) -> dict:
    """``meta`` with the profiles, tags and security labels of ``change`` added (or removed).

    Profiles match on their value, tags and security labels on system + code (a coding
    without a system only matches codings without a system). Other keys of ``meta``
    (versionId, lastUpdated, source, extensions) are kept; ``change``'s other keys are ignored.
    """
    out = dict(meta)
    for key in META_LISTS:
        given = change.get(key) or []
        current = list(out.get(key) or [])
        if key == "profile":
            if add:
                current += [p for i, p in enumerate(given) if p not in current and p not in given[:i]]
            else:
                current = [p for p in current if p not in given]
        else:
            keys = {_coding_key(c) for c in given}
            if add:
                have = {_coding_key(c) for c in current}
                for coding in given:
                    if _coding_key(coding) not in have:
                        have.add(_coding_key(coding))
                        current.append(coding)
            else:
                current = [c for c in current if _coding_key(c) not in keys]
        if current:
            out[key] = current
        else:
            out.pop(key, None)
    return out


def meta_of(stored: StoredResource) -> dict:
    """The Meta ``$meta`` shows for one version: profiles, tags, security labels, versionId, lastUpdated."""
    meta = jsonio.loads(stored.body).get("meta") or {}
    return {k: meta[k] for k in (*META_LISTS, "versionId", "lastUpdated") if k in meta}


def meta_parameters(meta: dict) -> dict:
    """The ``Parameters`` every ``$meta`` operation answers: one ``return`` parameter holding a Meta."""
    return {"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": meta}]}


class OperationService:
    """``$validate``, ``$meta``, ``$meta-add``, ``$meta-delete`` and ``Patient/$everything``."""

    def __init__(self, definitions: Definitions, store: Store, resources: ResourceService, search: SearchService,
                 validator: StructureValidator, indexer: Indexer, gate: AccessGate):
        self.definitions = definitions
        self.store = store
        self.resources = resources
        self.search = search
        self.validator = validator
        self.indexer = indexer
        self.gate = gate

    # -- $validate ---------------------------------------------------------------------------
    def validate(self, principal: Principal, rtype: str, rid: str | None, body: Any, *,
                 mode: str | None = None, profiles: tuple[str, ...] = ()) -> list[Issue]:
        """``$validate`` (R4 resource-operation-validate): the issues found; nothing is ever stored.

        ``body`` is the resource itself or a ``Parameters`` with ``resource``, ``mode`` and
        ``profile`` (which may also come from the URL: ``mode``/``profiles``).

        Status choice: a validation that could be carried out returns its issues (the REST
        layer answers 200 with them, errors included, as R4 describes the outcome as the
        result of the operation); only a request that cannot be validated at all raises
        :class:`FHIRError` 400: a body that is not a resource, a Parameters without a
        ``resource`` (except for mode=delete), an unknown ``mode``, conflicting modes, a
        delete check without an id. An unknown URL type is 404, a refused principal 403.

        Checks besides the structure of the resource: ``resourceType`` against the URL type;
        mode=create: the type allows create; mode=update: the resource has an id equal to
        the URL id, the type allows update and the resource exists (not deleted);
        mode=delete: the type allows delete and the resource exists (no record rules
        yet). Profiles: those asked for (an unknown one is an error), those the registry
        requires for the type and those the resource claims in ``meta.profile``, the latter
        two as a write would see them (errors in enforce mode, warnings in warn mode);
        see :mod:`fhir_server.validation.enforcement`.
        """
        self.resources.served(rtype)
        resource, mode, profiles = self._validate_request(rtype, body, mode, profiles)
        if mode is not None and mode not in VALIDATE_MODES:
            raise bad_request(f"mode must be one of {', '.join(VALIDATE_MODES)}, not '{mode}'", "mode")
        if resource is None and mode != "delete":
            raise bad_request("Nothing to validate: send the resource, or a Parameters with a 'resource' "
                              "parameter", code="required")
        if resource is not None and (not isinstance(resource, dict) or not isinstance(resource.get("resourceType"),
                                                                                      str)):
            raise bad_request("The body must be a FHIR resource (a JSON object with a resourceType) or a "
                              "Parameters holding one", code="structure")
        target = rid or (resource.get("id") if isinstance(resource, dict) else None)
        if mode == "delete" and not isinstance(target, str):
            raise bad_request("mode=delete needs the id of the resource: POST [type]/[id]/$validate", "mode")
        self.gate.authorize(principal, "validate", rtype, resource)

        issues: list[Issue] = []
        if resource is not None:
            if resource["resourceType"] != rtype:
                issues.append(Issue("error", "invalid", f"resourceType '{resource['resourceType']}' does not "
                                    f"match the URL type '{rtype}'", "resourceType"))
            issues += self.validator.validate(resource)
            if rid is not None and "id" in resource and resource["id"] != rid:
                issues.append(Issue("error", "invalid", f"The resource id '{resource['id']}' does not match the "
                                    f"URL id '{rid}'", f"{rtype}.id"))
        enforcer = getattr(self.resources, "profiles", None)
        if resource is not None and enforcer is not None:
            issues += enforcer.report(resource, rtype, issues, explicit=profiles)
        else:
            for profile in profiles:
                issues.append(Issue("error", "not-supported", f"Profile '{profile}' is not known to this server: "
                                    "validation against profiles is not supported yet", "profile"))
        if mode is not None:
            issues += self._mode_checks(principal, rtype, rid, resource, mode)
        if not any(i.severity in ("error", "fatal") for i in issues) and issues:
            issues.append(Issue("information", "informational", "No errors found"))
        return issues

    @staticmethod
    def _validate_request(rtype: str, body: Any, mode: str | None,
                          profiles: tuple[str, ...]) -> tuple[Any, str | None, tuple[str, ...]]:
        """Unwrap a Parameters body; the URL's ``mode``/``profile`` and the body's must agree."""
        if not (isinstance(body, dict) and body.get("resourceType") == "Parameters" and rtype != "Parameters"):
            return body, mode, tuple(profiles)
        resource = None
        body_mode = None
        body_profiles: list[str] = []
        parameters = body.get("parameter") or []
        if not isinstance(parameters, list):
            raise bad_request("Parameters.parameter must be an array", "Parameters.parameter", code="structure")
        for index, parameter in enumerate(parameters):
            where = f"Parameters.parameter[{index}]"
            if not isinstance(parameter, dict):
                raise bad_request("A parameter must be an object", where, code="structure")
            name = parameter.get("name")
            if name == "resource":
                if resource is not None:
                    raise bad_request("Only one 'resource' parameter may be given", where)
                resource = parameter.get("resource")
                if resource is None:
                    raise bad_request("The 'resource' parameter must carry a resource", where, code="required")
            elif name == "mode":
                body_mode = parameter.get("valueCode", parameter.get("valueString"))
                if not isinstance(body_mode, str):
                    raise bad_request("The 'mode' parameter must be a valueCode", where)
            elif name == "profile":
                value = next((parameter[k] for k in ("valueUri", "valueCanonical", "valueString", "valueUrl")
                              if k in parameter), None)
                if not isinstance(value, str):
                    raise bad_request("The 'profile' parameter must be a valueUri", where)
                body_profiles.append(value)
        if body_mode is not None and mode is not None and body_mode != mode:
            raise bad_request(f"The URL asks for mode={mode} but the Parameters for mode={body_mode}", "mode")
        all_profiles = tuple(dict.fromkeys([*profiles, *body_profiles]))
        return resource, body_mode or mode, all_profiles

    def _mode_checks(self, principal: Principal, rtype: str, rid: str | None, resource: dict | None,
                     mode: str) -> list[Issue]:
        issues: list[Issue] = []
        served = self.definitions.served[rtype]
        if mode not in served.interactions:
            issues.append(Issue("error", "not-supported", f"The {mode} interaction is not allowed on {rtype}"))
        target = rid
        if mode == "update":
            rid_in_body = resource.get("id") if resource is not None else None
            if not isinstance(rid_in_body, str):
                issues.append(Issue("error", "required", "An update needs the resource id in the resource",
                                    f"{rtype}.id"))
            target = target or rid_in_body
        elif mode == "delete":
            target = target or (resource or {}).get("id")
        try:
            self.gate.authorize(principal, mode, rtype, resource if mode != "delete" else None)
        except FHIRError as refused:
            # the answer to "would this succeed" is no; existence is not looked at (nothing leaks)
            return issues + [Issue("error", i.code, i.diagnostics, i.expression) for i in refused.issues]
        if mode in ("update", "delete") and isinstance(target, str):
            current = self.store.read(rtype, target)
            if current is not None and not current.deleted and not self.resources.visible(principal, mode, rtype,
                                                                                          target):
                current = None  # out of the principal's reach: reported like an unknown id
            elif current is not None and current.deleted and self.gate.limits(principal, rtype, mode):
                current = None
            if current is None:
                issues.append(Issue("error", "not-found", f"{rtype}/{target} does not exist: there is nothing "
                                    f"to {mode}"))
            elif current.deleted:
                issues.append(Issue("error", "deleted", f"{rtype}/{target} was deleted (version "
                                    f"{current.version}): there is nothing to {mode}"))
        return issues

    # -- $meta ---------------------------------------------------------------------------------
    def meta(self, principal: Principal, rtype: str, rid: str, version: str | None = None) -> dict:
        """Instance ``$meta`` (of the current version, or of ``version``): its Meta; 404/410 as read/vread.

        The Meta holds the resource's profiles, tags and security labels, and also its
        versionId and lastUpdated (so it is never an empty object).
        """
        stored = (self.resources.vread(principal, rtype, rid, version) if version is not None
                  else self.resources.read(principal, rtype, rid))
        return meta_of(stored)

    def meta_in_use(self, principal: Principal, rtype: str | None) -> dict:
        """Type and system ``$meta``: the union of the profiles, tags and security labels in use.

        Computed by scanning every current resource of each type (all served types at
        system level) through constrained, keyset-paged searches, so the principal only
        learns the labels of resources it could find. That is a full scan: acceptable for
        now (no dedicated index of meta values); a type the principal may not search is
        403 at type level and left out at system level.
        """
        if rtype is not None:
            self.resources.served(rtype)
            self.gate.authorize(principal, "search", rtype, None)
            types = [rtype]
        else:
            types = []
            for candidate in sorted(self.definitions.served):
                try:
                    self.gate.authorize(principal, "search", candidate, None)
                except FHIRError:
                    continue
                types.append(candidate)
        profiles: dict[str, None] = {}
        codings: dict[str, dict[tuple[str, str], dict]] = {"tag": {}, "security": {}}
        for scanned in types:
            query = self.search.constrained(principal, Query(types=(scanned,)))
            cursor = None
            while True:
                page = self.store.search(query, count=META_SCAN_PAGE, cursor=cursor)
                for stored in page.resources:
                    meta = jsonio.loads(stored.body).get("meta") or {}
                    for profile in meta.get("profile") or []:
                        profiles.setdefault(profile, None)
                    for key in ("tag", "security"):
                        for coding in meta.get(key) or []:
                            codings[key].setdefault(_coding_key(coding), coding)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        out: dict[str, Any] = {}
        if profiles:
            out["profile"] = sorted(profiles)
        for key in ("security", "tag"):
            if codings[key]:
                out[key] = [codings[key][k] for k in sorted(codings[key])]
        return out

    def meta_change(self, principal: Principal, rtype: str, rid: str, parameters: Any, *,
                    add: bool) -> StoredResource:
        """``$meta-add`` / ``$meta-delete``: change the profiles, tags and security labels of a resource.

        Deviation from R4, on purpose: R4 says these operations do not change the version,
        but this store is append-only and versioned, so the change is written as a new
        version through :meth:`ResourceService.update_in` (gate ``update``, validation,
        history entry, optimistic concurrency with retries): auditable, and the version a
        client holds never changes under it. A change that changes nothing makes no new
        version. 404 for an unknown resource, 410 for a deleted one.
        """
        change = self._meta_argument(parameters)
        self.resources.served(rtype, "update")

        def action(tx: Transaction) -> StoredResource:
            self.gate.authorize(principal, "update", rtype, None)
            current = tx.current(rtype, rid)
            if current is None or self.gate.limits(principal, rtype, "update") and (
                    current.deleted or not self.resources.visible(principal, "update", rtype, rid, tx)):
                raise not_found(f"{rtype}/{rid} is not known")
            if current.deleted:
                raise FHIRError.of(410, "deleted", f"{rtype}/{rid} was deleted (version {current.version})")
            body = jsonio.loads(current.body)
            meta = merge_meta(body.get("meta") or {}, change, add=add)
            return self.resources.update_in(tx, principal, rtype, rid, dict(body, meta=meta)).resource

        return self.resources.atomic(action, what=f"{rtype}/{rid}")

    def _meta_argument(self, parameters: Any) -> dict:
        """The ``meta`` parameter (valueMeta) of a ``Parameters`` body; 400 when there is none or it is malformed."""
        if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
            raise bad_request("The body must be a Parameters resource with a 'meta' parameter (valueMeta)",
                              code="structure")
        errors = [i for i in self.validator.validate(parameters) if i.severity in ("error", "fatal")]
        if errors:
            raise FHIRError(400, errors)
        metas = [p.get("valueMeta") for p in parameters.get("parameter") or [] if p.get("name") == "meta"]
        if len(metas) != 1 or not isinstance(metas[0], dict):
            raise bad_request("The Parameters must hold exactly one 'meta' parameter with a valueMeta",
                              "Parameters.parameter", code="required")
        meta = metas[0]
        for key in ("tag", "security"):
            for index, coding in enumerate(meta.get(key) or []):
                if not coding.get("code"):
                    raise bad_request(f"Each {key} needs a code (codings are matched on system and code)",
                                      f"Parameters.parameter.valueMeta.{key}[{index}]", code="required")
        return meta

    # -- Patient/$everything -------------------------------------------------------------------
    def compartment_types(self) -> list[str]:
        """The served types in the patient compartment, in the fixed order ``$everything`` walks them."""
        compartment = self.definitions.patient_compartment
        return sorted((t for t in self.definitions.served if compartment.get(t)), key=_type_order)

    def include_types(self) -> list[str]:
        """Served types outside the patient compartment, which ``$everything`` adds when referenced."""
        compartment = self.definitions.patient_compartment
        return sorted(t for t in self.definitions.served if not compartment.get(t))

    def everything(self, principal: Principal, patient: str | None, *, since: int | None = None,
                   types: tuple[str, ...] | None = None, count: int = EVERYTHING_DEFAULT_COUNT,
                   page: str | None = None, care: tuple[int | None, int | None] | None = None) -> EverythingPage:
        """``Patient/[id]/$everything`` (or every patient the principal may see when ``patient`` is None).

        Matches are the Patient itself (and patients whose ``link`` points at it), then every
        resource of each served compartment type linked to the patient by one of the
        compartment's parameters, type by type in a fixed order (Patient first, then by type
        name), each type paged with the store's keyset cursor. The page token records the
        patient, the type and the cursor, so walking the ``next`` links returns every
        compartment resource exactly once, even while resources are created (a resource
        created in a type already walked is not returned; one created in a type not yet
        finished is returned once).

        Resources referenced by a page's matches whose type is outside the compartment
        (Practitioner, Organization, Medication, PractitionerRole...) are added as includes,
        fetched with one ``_id`` query per type (per 500 ids) per page. An include referenced
        from several pages is repeated on each of them.

        ``since`` (µs, from ``_since``) keeps the compartment resources, the Patient
        included, whose lastUpdated is at or after it; includes are not filtered by it (the
        client needs them to resolve the references of what changed). ``types`` (``_type``)
        restricts both the compartment types and the include types.

        ``care`` (µs, from ``start``/``end``: "care dates, not record currency dates") keeps, of the
        types R4's ``clinical-date`` parameter covers (Encounter, Observation, Procedure, DiagnosticReport,
        Immunization...), the resources whose care date overlaps the period (an undated one is left out, as
        a date search would); resources of the other types (the Patient, Condition, MedicationStatement...)
        have no care date this server can compare and are all kept.

        Access: ``gate.authorize(principal, "everything", "Patient")``; then every query is
        extended with the gate's constraints; a type the principal may not search is left
        out (with a warning issue on the first page). A patient the principal cannot find
        is 404 like an unknown one; a deleted one is 410.

        Type level (``patient`` None): the same walk over each patient found by a
        constrained ``Patient`` search in store order; the page token also holds the cursor of
        that search. Bundles are the concatenation per patient, so a resource in the
        compartment of two patients (or a patient linked to another) appears under each.
        """
        self.resources.served("Patient")
        self.gate.authorize(principal, "everything", "Patient", None)
        if count < 1:
            raise bad_request("_count must be a positive integer", "_count")
        count = min(count, EVERYTHING_MAX_COUNT)
        walk, includable, issues = self._everything_types(principal, types)
        if patient is not None:
            self._visible_patient(principal, patient)
        position = _Position.parse(page) if page else None
        if not walk:
            return EverythingPage([], [], None, issues if page is None else [])
        if position is not None and patient is not None and position.patient != patient:
            raise bad_request("This _page token belongs to another patient's $everything", "_page")
        if position is not None and patient is None and not self._is_visible(principal, position.patient):
            # the token's patient was deleted or hidden since (or the token was forged): go on with the next one
            position = (self._next_patient(principal, position.next_patients, walk)
                        if position.next_patients is not None else None)
            if position is None:
                return EverythingPage([], [], None, [])
        if position is None:
            if patient is not None:
                position = _Position(patient, None, walk[0], None)
            else:
                position = self._next_patient(principal, None, walk)
                if position is None:
                    return EverythingPage([], [], None, issues)
        matches: list[StoredResource] = []
        following: _Position | None = None
        try:
            while True:
                found, following = self._walk_patient(principal, position, walk, since, count - len(matches),
                                                      care)
                matches += found
                if following is not None or patient is not None or position.next_patients is None:
                    break
                position = self._next_patient(principal, position.next_patients, walk)
                if position is None:
                    break
                if len(matches) >= count:
                    following = position
                    break
        except PageExpired:
            raise FHIRError.of(410, "expired", "This page link has expired or is not valid; run $everything "
                               "again from its first page") from None
        included = self._referenced(principal, matches, includable)
        return EverythingPage(matches, included, following.token() if following else None,
                              issues if page is None else [])

    def _everything_types(self, principal: Principal,
                          types: tuple[str, ...] | None) -> tuple[list[str], list[str], list[Issue]]:
        if types is not None:
            unknown = [t for t in types if not self.definitions.is_served(t)]
            if unknown:
                raise bad_request(f"_type names types this server does not serve: {', '.join(unknown)}", "_type")
        wanted = set(types) if types is not None else None
        walk, includable, refused = [], [], []
        for group, out in ((self.compartment_types(), walk), (self.include_types(), includable)):
            for rtype in group:
                if wanted is not None and rtype not in wanted or wanted is None and rtype in TRACE_TYPES:
                    continue
                try:
                    self.gate.authorize(principal, "search", rtype, None)
                except FHIRError:
                    refused.append(rtype)
                    continue
                out.append(rtype)
        issues = []
        if refused:
            issues.append(Issue("warning", "suppressed", "Left out because this client may not search them: "
                                + ", ".join(sorted(refused))))
        return walk, includable, issues

    def _visible_patient(self, principal: Principal, patient: str) -> None:
        current = self.store.read("Patient", patient)
        if current is None or current.deleted and self.gate.constrain(principal, "Patient"):
            raise not_found(f"Patient/{patient} is not known")  # a limited principal cannot tell a deleted one
        if current.deleted:
            raise FHIRError.of(410, "deleted", f"Patient/{patient} was deleted (version {current.version})")
        if not self._is_visible(principal, patient):
            raise not_found(f"Patient/{patient} is not known")

    def _is_visible(self, principal: Principal, patient: str) -> bool:
        """Whether a constrained search of Patient finds this patient (it exists and the principal may see it)."""
        query = self.search.constrained(principal, Query(types=("Patient",), clauses=[self._id_clause([patient])]))
        return bool(self.store.search(query, count=1).resources)

    def _next_patient(self, principal: Principal, cursor: str | None, walk: list[str]) -> _Position | None:
        query = self.search.constrained(principal, Query(types=("Patient",)))
        try:
            found = self.store.search(query, count=1, cursor=cursor)
        except PageExpired:
            raise FHIRError.of(410, "expired", "This page link has expired or is not valid; run $everything "
                               "again from its first page") from None
        if not found.resources:
            return None
        return _Position(found.resources[0].id, found.next_cursor, walk[0], None)

    def _walk_patient(self, principal: Principal, position: _Position, walk: list[str], since: int | None,
                      budget: int, care: tuple[int | None, int | None] | None = None
                      ) -> tuple[list[StoredResource], _Position | None]:
        """Up to ``budget`` compartment resources of one patient from ``position``; and where the next page starts
        (None once this patient is done)."""
        start = next((i for i, t in enumerate(walk) if _type_order(t) >= _type_order(position.rtype)), len(walk))
        cursor = position.cursor if start < len(walk) and walk[start] == position.rtype else None
        found: list[StoredResource] = []
        for index in range(start, len(walk)):
            rtype = walk[index]
            query = self.search.constrained(principal, self.compartment_query(rtype, position.patient, since, care))
            page = self.store.search(query, count=budget - len(found), cursor=cursor)
            found += page.resources
            if page.next_cursor is not None:
                return found, _Position(position.patient, position.next_patients, rtype, page.next_cursor)
            cursor = None
            if len(found) >= budget:
                if index + 1 < len(walk):
                    return found, _Position(position.patient, position.next_patients, walk[index + 1], None)
                return found, None
        return found, None

    def compartment_query(self, rtype: str, patient: str, since: int | None = None,
                          care: tuple[int | None, int | None] | None = None) -> Query:
        """The resources of ``rtype`` in the patient's compartment (for Patient: itself and who links to it);
        with ``care``, those whose clinical date overlaps it, for the types that have one."""
        params = self.definitions.patient_compartment.get(rtype) or []
        value = (ReferenceValue("Patient", patient),)
        clauses: list = [Clause(p, "reference", None, value) for p in params]
        if rtype == "Patient":
            clauses.insert(0, self._id_clause([patient]))
        query = Query(types=(rtype,), clauses=[clauses[0] if len(clauses) == 1 else AnyOf(tuple(clauses))])
        if since is not None:
            query.clauses.append(Clause("_lastUpdated", "date", None, (RangeValue("ge", since, since),)))
        care_date = self._care_date(rtype) if care is not None else None
        if care_date is not None:
            start, end = care
            if start is not None:
                query.clauses.append(Clause(care_date, "date", None, (RangeValue("ge", start, start),)))
            if end is not None:
                query.clauses.append(Clause(care_date, "date", None, (RangeValue("le", end, end),)))
        return query

    def _care_date(self, rtype: str) -> str | None:
        """The code of ``rtype``'s care-date parameter: R4's ``clinical-date`` where it applies."""
        param = self.search.registry.get(rtype, "date")
        return "date" if param is not None and param.url == CLINICAL_DATE else None

    @staticmethod
    def _id_clause(ids: list[str]) -> Clause:
        return Clause("_id", "token", None, tuple(TokenValue(None, i, False) for i in ids))

    def _referenced(self, principal: Principal, matches: list[StoredResource],
                    includable: list[str]) -> list[StoredResource]:
        """The resources of ``includable`` types the matches refer to: one constrained query per type (per chunk)."""
        if not matches or not includable:
            return []
        allowed = set(includable)
        seen = {(r.type, r.id) for r in matches}
        targets: dict[str, dict[str, None]] = {}
        for stored in matches:
            for key in literal_references(jsonio.loads(stored.body)):
                if key[0] in allowed and key not in seen:
                    targets.setdefault(key[0], {})[key[1]] = None
        found: list[StoredResource] = []
        for rtype in sorted(targets):
            ids = list(targets[rtype])
            for start in range(0, len(ids), ID_CHUNK):
                chunk = ids[start:start + ID_CHUNK]
                query = self.search.constrained(principal, Query(types=(rtype,), clauses=[self._id_clause(chunk)]))
                found += self.store.search(query, count=len(chunk)).resources
        return found
