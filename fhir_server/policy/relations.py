"""Who the acting user is to which records, read from the record itself once per request.

A professional reaches a patient's record through the patient's decisions, all FHIR resources:
an authorisation (``Consent`` AUTORISATION_ACCES naming them, a role of theirs or their
organisation as actor), the treating doctor's rights (``Patient.generalPractitioner``, a care-team
role ``PCP``, or ``Consent`` DROITS_MEDECIN_TRAITANT), membership of the patient's care team
(``CareTeam``, deemed authorised), or an emergency access they opened (:mod:`.emergency`). A block
(``Consent`` BLOCAGE_PS) overrides all of them, and a record is reachable only while its creation
consent (``Consent`` CREATION_DMP) is active: a closed record refuses every professional.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from fhir_server.model import jsonio
from fhir_server.policy import codes

MAX_ROWS = 2000  # relations of one user read per query (a practice has far fewer patients in reach)


@dataclass(frozen=True)
class RecordPolicy:
    """The settings of the record's rules (README "Who can see what")."""

    emergency_minutes: int = 60  # how long an emergency access lasts
    emergency_sees_masked: bool = False  # whether emergency access sees items masked from professionals
    age_of_majority: int = 18  # legal representatives' access ends on this birthday
    announce_notice_days: int = 14  # an item invisible to the patient: the patient is told after this
    announce_lift_days: int = 30  # ... and it becomes visible after this (R1111-53: 2 weeks, 1 month)
    deletion_grace_days: int = 30  # a closed record whose deletion was requested is deleted after this (law: < 3 months)


@dataclass(frozen=True)
class Relations:
    """A professional's relations to records at one moment (sets of patient ids)."""

    user: str  # Practitioner/x
    actors: frozenset[str] = frozenset()  # the references that stand for the user (practitioner, roles, orgs)
    authorised: frozenset[str] = frozenset()
    treating: frozenset[str] = frozenset()
    emergency: tuple[tuple[str, str, str], ...] = ()  # (patient id, mode, written reason), active now
    blocked: frozenset[str] = frozenset()
    closed: frozenset[str] = frozenset()  # records without an active creation consent, among those above

    @property
    def emergency_patients(self) -> frozenset[str]:
        return frozenset(p for p, _, _ in self.emergency)

    @property
    def reachable(self) -> frozenset[str]:
        """The records the user may read and add to."""
        return (self.authorised | self.treating | self.emergency_patients) - self.blocked - self.closed

    def sees_masked(self, policy: RecordPolicy) -> frozenset[str]:
        """The records whose items masked from professionals the user still sees (treating doctor's rights)."""
        extra = self.emergency_patients if policy.emergency_sees_masked else frozenset()
        return (self.treating | extra) - self.blocked - self.closed

    def emergency_access(self, patient: str | None = None) -> tuple[str, str] | None:
        """(mode, reason) of the emergency access the user acts in (for ``patient``, or any): None outside one."""
        for pid, mode, reason in self.emergency:
            if patient is None or pid == patient:
                return mode, reason
        return None


@dataclass(frozen=True)
class Representation:
    """A legal representative's standing at one moment: the minor they may act for (None: nobody)."""

    minor: str | None = None


@dataclass
class RelationFinder:
    """Reads relations from the store (no access gate: this is the gate's own lookup)."""

    server: Any  # the FHIRServer: parser and store
    policy: RecordPolicy = field(default_factory=RecordPolicy)
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)

    tx: Any = None  # inside a write: the transaction to read through (None: the store)

    def within(self, tx: Any) -> "RelationFinder":
        """This finder reading through the write transaction ``tx`` (sees what it wrote so far)."""
        return RelationFinder(self.server, self.policy, self.clock, tx) if tx is not None else self

    # -- queries ------------------------------------------------------------------------------
    def find(self, rtype: str, params: list[tuple[str, str]]) -> list[dict]:
        parsed = self.server.parser.parse((rtype,), params, strict=True)
        if self.tx is not None:
            found = (self.tx.current(t, i) for t, i in self.tx.search(parsed.query)[:MAX_ROWS])
            return [jsonio.loads(r.body) for r in found if r is not None and not r.deleted]
        page = self.server.store.search(parsed.query, count=MAX_ROWS)
        return [jsonio.loads(r.body) for r in page.resources]

    def read(self, rtype: str, rid: str) -> dict | None:
        stored = self.tx.current(rtype, rid) if self.tx is not None else self.server.store.read(rtype, rid)
        return None if stored is None or stored.deleted else jsonio.loads(stored.body)

    # -- professionals --------------------------------------------------------------------------
    def professional(self, user: str) -> Relations:
        actors = {user}
        for role in self.find("PractitionerRole", [("practitioner", user)]):
            actors.add(f"PractitionerRole/{role['id']}")
            organization = _reference(role.get("organization"))
            if organization:
                actors.add(organization)
        actor_list = ",".join(sorted(actors))
        authorised: set[str] = set()
        treating: set[str] = set()
        blocked: set[str] = set()
        for consent in self.find("Consent", [("actor", actor_list), ("status", "active")]):
            patient = _patient_id(consent.get("patient"))
            if patient is None or not _in_force(consent, self.clock()):
                continue
            kind = codes.consent_kind(consent)
            if kind == codes.BLOCK:
                blocked.add(patient)
            elif kind == codes.TREATING_DOCTOR_RIGHTS:
                treating.add(patient)
            elif kind == codes.AUTHORISATION:
                authorised.add(patient)
        for patient in self.find("Patient", [("general-practitioner", actor_list)]):
            treating.add(patient["id"])
        for team in self.find("CareTeam", [("participant", actor_list), ("status", "active")]):
            patient = _patient_id(team.get("subject"))
            if patient is None:
                continue
            authorised.add(patient)
            for participant in team.get("participant", []):
                if _reference(participant.get("member")) in actors and any(
                        codes.TREATING_ROLE in codes.codes_of(role, coding.get("system"))
                        for role in participant.get("role", []) for coding in role.get("coding", [])):
                    treating.add(patient)
        emergency = self.emergencies(user)
        candidates = authorised | treating | {p for p, _, _ in emergency}
        return Relations(user=user, actors=frozenset(actors), authorised=frozenset(authorised),
                         treating=frozenset(treating), emergency=tuple(sorted(emergency)),
                         blocked=frozenset(blocked), closed=frozenset(candidates - self.open_records(candidates)))

    def emergencies(self, user: str) -> set[tuple[str, str, str]]:
        """The emergency accesses ``user`` opened that are still running (see :mod:`.emergency`)."""
        now = self.clock()
        since = (now - dt.timedelta(minutes=self.policy.emergency_minutes)).isoformat()
        subtypes = ",".join(f"{codes.EMERGENCY_SUBTYPE}|{mode}" for mode in codes.EMERGENCY_PURPOSE)
        out = set()
        for event in self.find("AuditEvent", [("agent", user), ("subtype", subtypes), ("date", f"ge{since}")]):
            if event.get("outcome") != "0":
                continue
            end = (event.get("period") or {}).get("end")
            if not end or dt.datetime.fromisoformat(end.replace("Z", "+00:00")) <= now:
                continue
            mode = next(iter(codes.codes_of(event.get("subtype", []), codes.EMERGENCY_SUBTYPE)), None)
            for entity in event.get("entity", []):
                patient = _patient_id(entity.get("what"))
                if patient and mode:
                    out.add((patient, mode, event.get("outcomeDesc") or ""))
        return out

    # -- records --------------------------------------------------------------------------------
    def open_records(self, patients: Iterable[str]) -> set[str]:
        """Those of ``patients`` whose record is open: an active creation consent."""
        patients = sorted(set(patients))
        if not patients:
            return set()
        out = set()
        for start in range(0, len(patients), 200):
            refs = ",".join(f"Patient/{p}" for p in patients[start:start + 200])
            for consent in self.find("Consent", [("patient", refs), ("status", "active"),
                                                 ("category", f"{codes.CONSENT_KIND}|{codes.RECORD_CREATION}")]):
                patient = _patient_id(consent.get("patient"))
                if patient:
                    out.add(patient)
        return out

    def creation_consent(self, patient: str) -> dict | None:
        """The record's creation consent, whatever its status (None: the record was never created)."""
        found = self.find("Consent", [("patient", f"Patient/{patient}"),
                                      ("category", f"{codes.CONSENT_KIND}|{codes.RECORD_CREATION}")])
        return max(found, key=lambda c: c.get("dateTime", "")) if found else None

    def opposed(self, patient: str, kind: str) -> bool:
        """Whether the patient has an active consent of ``kind`` (an opposition) in force."""
        return any(_in_force(c, self.clock()) for c in self.find("Consent", [
            ("patient", f"Patient/{patient}"), ("status", "active"), ("category", f"{codes.CONSENT_KIND}|{kind}")]))

    # -- legal representatives -------------------------------------------------------------------
    def represented_minor(self, related_person: str, patient: str) -> bool:
        """Whether ``related_person`` (RelatedPerson/x) represents ``patient`` now: linked to them,
        active, the patient still a minor, and the record open."""
        rid = related_person.split("/", 1)[1] if related_person.startswith("RelatedPerson/") else None
        person = self.read("RelatedPerson", rid) if rid else None
        if person is None or person.get("active") is False or _patient_id(person.get("patient")) != patient:
            return False
        record = self.read("Patient", patient)
        return record is not None and self.is_minor(record) and bool(self.open_records([patient]))

    def is_minor(self, patient: dict) -> bool:
        birth = patient.get("birthDate")
        if not isinstance(birth, str) or len(birth) < 4:
            return False  # no birth date: nobody can act as the representative of a minor
        parts = [int(p) for p in birth[:10].split("-")]
        year, month = parts[0], parts[1] if len(parts) > 1 else 1
        # a partial date counts from its earliest possible day: representatives' access never outlasts majority
        majority = _add_years(dt.date(year, month, parts[2] if len(parts) > 2 else 1), self.policy.age_of_majority)
        return self.clock().date() < majority


def _add_years(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February: majority on 1 March
        return day.replace(year=day.year + years, month=3, day=1)


def _reference(value: Any) -> str | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) else None


def _patient_id(value: Any) -> str | None:
    ref = _reference(value)
    if ref and ref.startswith("Patient/"):
        return ref.split("/", 2)[1]
    return None


def _in_force(consent: dict, now: dt.datetime) -> bool:
    """Whether a consent's provision period (if any) holds ``now``."""
    period = (consent.get("provision") or {}).get("period") or {}
    start, end = period.get("start"), period.get("end")
    stamp = now.isoformat()
    return (not start or start[:len(stamp)] <= stamp) and (not end or end >= stamp[:len(end)])
