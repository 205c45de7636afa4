"""The record gate: the SMART gate narrowed by the record's rules (README "Who can see what").

What a user reaches becomes search clauses, as in :class:`~fhir_server.access.smart.SmartGate`, so
every path that finds resources (search, counts, ``_include``, chains, ``_has``, ``$everything``,
history, export) obeys the same rules:

* **patient** (``fhirUser`` Patient/x): their own compartment, minus items labelled
  ``INVISIBLE_PATIENT`` (until a professional lifts the label, or :mod:`.schedule` does after a month);
* **legal representative** (RelatedPerson/x, ``patient/`` scopes bound to the minor): the minor's
  compartment minus items invisible to the patient or to representatives, while the person is linked
  to the minor, the minor is under age and the record is open; nothing otherwise;
* **professional** (Practitioner/x, ``user/`` scopes, or ``patient/`` scopes bound to one record):
  the records in :attr:`Relations.reachable`, minus items labelled ``MASQUE_PS`` except those they
  wrote and those of records where they hold the treating doctor's rights; traces
  (``AuditEvent``) only of records where they hold those rights, and their own;
* **admin** and **system** clients: what their scopes grant (rule 0: unchanged).

Writes (:meth:`RecordGate.check_write`): the server stamps the author tag; only an item's author
deletes it or changes its content, others may only change its labels, status and archive flag;
the label rules (who may set or lift which visibility); which consents a professional may write.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from fhir_server.access.gate import NOTHING, Principal, id_clause
from fhir_server.access.scopes import Scope
from fhir_server.access.smart import SmartGate
from fhir_server.access.tokens import TokenVerifier
from fhir_server.model import jsonio
from fhir_server.model.outcome import FHIRError
from fhir_server.policy import codes
from fhir_server.policy.relations import RecordPolicy, RelationFinder, Relations, Representation
from fhir_server.search.query import AnyOf, Clause, ReferenceValue, TokenValue

USER_ROLES = frozenset({"patient", "related-person", "practitioner"})
#: what a patient (or their representative) may add to their own record: allergies, treatments, their own
#: measurements, history and vaccinations, documents (class 90, advance directives), consents
PATIENT_WRITABLE = frozenset({"AllergyIntolerance", "MedicationStatement", "Observation", "Condition",
                              "Immunization", "DocumentReference", "Consent", "Patient", "Provenance"})
#: what anyone but an item's author may change on it (besides ``meta``)
LABEL_FIELDS = frozenset({"status", "securityLabel"})


def forbidden(message: str) -> FHIRError:
    return FHIRError.of(403, "forbidden", message)


def label_clause(code: str, modifier: str | None = "not") -> Clause:
    """``_security[:not]=<visibility>|code``."""
    return Clause("_security", "token", modifier, (TokenValue(codes.VISIBILITY, code, True),))


class RecordGate(SmartGate):
    """:class:`SmartGate` plus the record's rules (module docstring)."""

    def __init__(self, verifier: TokenVerifier, policy: RecordPolicy | None = None,
                 clock: Callable[[], Any] | None = None):
        super().__init__(verifier)
        self.policy = policy or RecordPolicy()
        self.clock = clock
        self.finder: RelationFinder | None = None

    def attach(self, server: Any) -> None:
        super().attach(server)
        kwargs = {"clock": self.clock} if self.clock is not None else {}
        self.finder = RelationFinder(server, self.policy, **kwargs)

    # -- who acts ------------------------------------------------------------------------------
    def principal(self, authorization: str | None) -> Principal:
        return self.with_relations(super().principal(authorization))

    def with_relations(self, principal: Principal) -> Principal:
        """The principal with what the record says about its user (once per request)."""
        user = principal.fhir_user or ""
        if principal.role == "practitioner" and user.startswith("Practitioner/") and self.finder is not None:
            relations = self.finder.professional(user)
            emergency = relations.emergency_access(principal.patient)
            if emergency is None:
                return replace(principal, relations=relations)
            mode, reason = emergency
            return replace(principal, relations=relations, purpose=codes.EMERGENCY_PURPOSE[mode][1],
                           purpose_reason=reason)
        if principal.role == "related-person" and self.finder is not None:
            valid = bool(principal.patient) and self.finder.represented_minor(user, principal.patient)
            return replace(principal, relations=Representation(principal.patient if valid else None))
        return principal

    # -- what a scope reaches --------------------------------------------------------------------
    def reach(self, principal: Principal, scope: Scope, rtype: str, permission: str) -> list | None:
        if scope.context == "patient":
            if principal.role == "practitioner":
                return self.professional_reach(principal, rtype, permission, only=principal.patient)
            if principal.role == "related-person":
                if not isinstance(principal.relations, Representation) or \
                        principal.relations.minor != principal.patient:
                    return None
                return self.holder_reach(rtype, principal.patient, permission, representative=True)
            if principal.role == "patient":
                return self.holder_reach(rtype, principal.patient, permission)
        return super().reach(principal, scope, rtype, permission)

    def user_scope_rules(self, principal: Principal, rtype: str, permission: str) -> list | None:
        if principal.role == "patient":
            user = principal.fhir_user or ""
            return self.holder_reach(rtype, user[len("Patient/"):], permission) if user.startswith("Patient/") \
                else None
        if principal.role == "practitioner":
            return self.professional_reach(principal, rtype, permission)
        if principal.role == "admin":
            return []
        return None  # related persons act through patient/ scopes bound to the minor; unknown roles: nothing

    def holder_reach(self, rtype: str, patient: str | None, permission: str, representative: bool = False
                     ) -> list | None:
        """The record holder's (or their representative's) reach: the compartment minus what is invisible
        to them."""
        limit = self.compartment(rtype, patient, permission)
        if not limit or rtype == "Patient" or rtype not in self._compartment_types():
            return limit
        hidden = [label_clause(codes.INVISIBLE_TO_PATIENT)]
        if representative:
            hidden.append(label_clause(codes.INVISIBLE_TO_REPRESENTATIVES))
        return [*limit, *hidden]

    def professional_reach(self, principal: Principal, rtype: str, permission: str, only: str | None = None
                           ) -> list | None:
        relations = principal.relations
        if not isinstance(relations, Relations):
            return None
        if rtype not in self._compartment_types():
            return []  # the directory, Binary, Subscription...: the professional's scopes decide
        if rtype == "Patient" and permission == "c":
            return []  # a professional opens a new record (its creation consent makes it reachable)
        if rtype == "Consent" and permission == "c":
            return []  # declaring an authorisation, collecting a creation consent: check_write decides
        patients = relations.reachable if only is None else relations.reachable & {only}
        if not patients:
            return [NOTHING]
        if rtype == "Patient":
            return [id_clause(sorted(patients))]
        in_reach = self.compartment_of(rtype, patients)
        sees_masked = relations.sees_masked(self.policy) & patients
        if rtype == "AuditEvent":  # traces: the treating doctor's rights, and one's own actions
            agent = Clause("agent", "reference", None, (_reference_value(relations.user),))
            return [in_reach, AnyOf((self.compartment_of(rtype, sees_masked), agent)) if sees_masked else agent]
        visible: list = [label_clause(codes.MASKED_FROM_PROFESSIONALS),
                         Clause("_tag", "token", None, (TokenValue(codes.AUTHOR_TAG, relations.user, True),))]
        if sees_masked:
            visible.append(self.compartment_of(rtype, sees_masked))
        return [in_reach, AnyOf(tuple(visible))]

    def compartment_of(self, rtype: str, patients: frozenset[str] | set[str]) -> Any:
        params = self.server.definitions.patient_compartment[rtype]
        values = tuple(ReferenceValue("Patient", p) for p in sorted(patients))
        clauses = tuple(Clause(p, "reference", None, values) for p in params)
        return clauses[0] if len(clauses) == 1 else AnyOf(clauses)

    def _compartment_types(self) -> dict:
        return self.server.definitions.patient_compartment if self.server is not None else {}

    # -- writes -----------------------------------------------------------------------------------
    def check_write(self, principal: Principal, interaction: str, rtype: str, new: dict | None,
                    current: Any | None, tx: Any = None) -> bool:
        old = jsonio.loads(current.body) if current is not None and current.body else None
        changed = False
        if new is not None:
            changed = stamp_author(new, old, principal.fhir_user if principal.role in USER_ROLES else None)
            changed = mirror_document_labels(new) or changed
        if principal.role not in USER_ROLES:
            return changed  # admin and system clients: their scopes decide (rule 0)
        user = principal.fhir_user or ""
        author = codes.author_of(old) if old is not None else user
        if interaction == "delete":
            if author != user:
                raise forbidden(f"Only the author of {rtype}/{current.id} may delete it")
            return changed
        assert new is not None
        self._check_labels(principal, rtype, old, new, author == user)
        if old is not None and author != user and rtype != "Patient" and _content(old) != _content(new):
            raise forbidden(f"{rtype}/{current.id} was written by someone else: only its labels, status and archive "
                            "flag may be changed")
        finder = self.finder.within(tx) if self.finder is not None else None
        if principal.role in ("patient", "related-person"):
            self._check_holder_write(principal, rtype, new, old, finder)
        elif rtype == "Consent" and old is None:
            self._check_professional_consent(principal, new, finder)
        return changed

    def _check_labels(self, principal: Principal, rtype: str, old: dict | None, new: dict, is_author: bool) -> None:
        before = codes.labels_of(old) if old is not None else set()
        after = codes.labels_of(new)
        added, lifted = after - before, before - after
        if codes.INVISIBLE_TO_REPRESENTATIVES in added and old is not None:
            raise forbidden("INVISIBLE_REPRESENTANTS_LEGAUX can only be set when the item is added: once lifted, "
                            "the item stays visible to the legal representatives")
        holder = principal.role in ("patient", "related-person")
        if holder and (added | lifted) & {codes.INVISIBLE_TO_PATIENT, codes.INVISIBLE_TO_REPRESENTATIVES}:
            raise forbidden("Only a professional sets or lifts the labels that hide an item from the patient or "
                            "their representatives")
        if not holder and codes.MASKED_FROM_PROFESSIONALS in lifted and not is_author:
            raise forbidden("An item masked from professionals is unmasked by the patient or by its author")

    def _check_holder_write(self, principal: Principal, rtype: str, new: dict, old: dict | None,
                            finder: RelationFinder | None) -> None:
        if old is None and rtype not in PATIENT_WRITABLE:
            raise forbidden(f"Patients add allergies, treatments, documents, advance directives and consents to "
                            f"their record, not {rtype}")
        if rtype == "DocumentReference" and old is None:
            classes = {c.get("code") for cat in new.get("category", []) for c in cat.get("coding", [])}
            types = {c.get("code") for c in (new.get("type") or {}).get("coding", [])}
            if codes.PATIENT_DOCUMENT_CLASS not in classes and codes.ADVANCE_DIRECTIVES_DOCUMENT not in types:
                raise forbidden("A document the patient adds has class '90' (documents added by the patient) "
                                "or type EXPPAT_3 (advance directives)")
        patient = principal.patient or (principal.fhir_user or "")[len("Patient/"):]
        if finder is not None and not finder.open_records([patient]) and not (
                rtype == "Consent" and codes.consent_kind(new) == codes.RECORD_CREATION):
            raise forbidden("This record is closed (or was never created): nothing can be added to it")

    def _check_professional_consent(self, principal: Principal, consent: dict, finder: RelationFinder | None
                                    ) -> None:
        relations = principal.relations
        kind = codes.consent_kind(consent)
        patient = (consent.get("patient") or {}).get("reference", "")
        pid = patient.split("/", 1)[1] if patient.startswith("Patient/") else ""
        if not isinstance(relations, Relations) or pid in relations.blocked:
            raise forbidden("This professional may not write to this record")
        if kind in codes.PATIENT_ONLY_KINDS:
            raise forbidden(f"Only the patient (or their representative) records a {kind} consent")
        if kind == codes.AUTHORISATION:
            actors = {(actor.get("reference") or {}).get("reference")
                      for actor in (consent.get("provision") or {}).get("actor", []) if isinstance(actor, dict)}
            if not actors or not actors <= set(relations.actors):
                raise forbidden("A professional declares the patient's authorisation for themself (or their "
                                "organisation) only; the patient authorises others")
        elif kind == codes.RECORD_CREATION:
            existing = finder.creation_consent(pid) if finder is not None else None
            if existing is not None and existing.get("status") == "active":
                raise FHIRError.of(409, "duplicate", f"The record of Patient/{pid} already exists")
        elif pid not in relations.reachable:
            raise forbidden("This professional is not authorised on this record")


def stamp_author(new: dict, old: dict | None, user: str | None) -> bool:
    """The author tag is the server's: the first writer's, kept on every later version. Returns whether
    ``new`` changed."""
    before = codes.author_of(new), len((new.get("meta") or {}).get("tag", []))
    meta = new.get("meta")
    tags = [t for t in (meta or {}).get("tag", []) if not (isinstance(t, dict) and t.get("system") == codes.AUTHOR_TAG)]
    author = codes.author_of(old) if old is not None else user
    if author:
        tags.append({"system": codes.AUTHOR_TAG, "code": author})
    if tags:
        new["meta"] = dict(meta or {}, tag=tags)
    elif meta and "tag" in meta:
        new["meta"] = {k: v for k, v in meta.items() if k != "tag"}
    return (codes.author_of(new), len((new.get("meta") or {}).get("tag", []))) != before


def mirror_document_labels(new: dict) -> bool:
    """A document's visibility is its ``securityLabel``; ``meta.security`` carries the same codes, so one
    search parameter (``_security``) finds the labels of every kind of item."""
    if new.get("resourceType") != "DocumentReference" or not isinstance(new.get("securityLabel"), list):
        return False
    before = (new.get("meta") or {}).get("security")
    wanted = codes.codes_of(new["securityLabel"], codes.VISIBILITY)
    meta = new.get("meta") or {}
    kept = [c for c in meta.get("security", []) if not (isinstance(c, dict) and c.get("system") == codes.VISIBILITY)]
    security = kept + [{"system": codes.VISIBILITY, "code": code} for code in sorted(wanted)]
    if security or "security" in meta:
        new["meta"] = dict(meta, security=security) if security else {k: v for k, v in meta.items()
                                                                       if k != "security"}
    return (new.get("meta") or {}).get("security") != before


def _content(resource: dict) -> dict:
    """What only an item's author may change: all but meta, labels, status and the archive flag."""
    out = {k: v for k, v in resource.items() if k not in LABEL_FIELDS and k != "meta"}
    extensions = [e for e in resource.get("extension", []) if e.get("url") != codes.ARCHIVED_EXTENSION]
    if extensions:
        out["extension"] = extensions
    else:
        out.pop("extension", None)
    return out


def _reference_value(reference: str) -> ReferenceValue:
    rtype, _, rid = reference.partition("/")
    return ReferenceValue(rtype, rid)
