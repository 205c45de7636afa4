"""A synthetic health insurer: plausible reimbursement histories for N patients (``fhir-server demo``).

Every patient is a valid ``dmp-patient`` (INS-NIR with its key, birth place, official name) and
gets, for each of the :attr:`SyntheticInsurer.months` months before ``now``, care drawn from
:data:`CARE` with its monthly probability: general practitioner consultations (NGAP ``G``,
``GS``, ``VG``), specialist ones (``APC``, ``CS``, ``CNPSY``), nurse and physiotherapy acts
(``AMI``, ``AMK``), technical acts (CCAM: ECG, chest X-ray, echography, dental care),
medicines dispensed by a pharmacy (CIP13, one to three per dispensing, a chronic patient's
treatment every month) and hospital stays (GHM, with ``billablePeriod``). About 33 care items
per patient over 30 months; with the default 30 months, a fifth of them are older than the
24-month window.

Everything is deterministic for a (seed, patient number): patient ``i`` is generated from its
own random stream, so a history can be regenerated (a re-feed) or changed (a correction)
item by item, and large volumes can be generated in parallel. Items are ``dmp-explanationofbenefit``
resources carrying the insurer identifier ``<seed>-<patient>-<n>``; they come as NDJSON lines (for
``$import``) and as batch or transaction Bundles of conditional updates.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from fhir_server.carehistory import EOB, INSURER_SYSTEM
from fhir_server.carehistory.window import months_before
from fhir_server.model import jsonio

CCAM = "https://smt.esante.gouv.fr/terminologie-ccam"
CIP13 = "https://smt.esante.gouv.fr/terminologie-bdpm"
NGAP = "https://dmp.example.org/fhir/CodeSystem/dmp-ngap"
GHM = "https://dmp.example.org/fhir/CodeSystem/dmp-ghm"
CLAIM_TYPE = "http://terminology.hl7.org/CodeSystem/claim-type"
ADJUDICATION = "http://terminology.hl7.org/CodeSystem/adjudication"
RPPS = "https://rpps.esante.gouv.fr"
FINESS = "https://finess.esante.gouv.fr"

# kind, monthly probability, claim type, code system, [(code, display, price in euros)]
CARE: list[tuple[str, float, str, str, list[tuple[str, str, float]]]] = [
    ("gp", 0.34, "professional", NGAP, [("G", "Consultation de médecine générale", 26.5),
                                        ("GS", "Consultation de médecine générale (spécialiste en MG)", 26.5),
                                        ("VG", "Visite à domicile de médecine générale", 36.5)]),
    ("specialist", 0.07, "professional", NGAP, [("APC", "Avis ponctuel de consultant", 56.5),
                                                ("CS", "Consultation de spécialiste", 30.0),
                                                ("CNPSY", "Consultation de psychiatrie", 41.7)]),
    ("nurse", 0.05, "professional", NGAP, [("AMI", "Acte infirmier", 3.15),
                                           ("AMK", "Acte de masso-kinésithérapie", 2.15)]),
    ("technical", 0.09, "professional", CCAM, [("DEQP003", "Électrocardiographie sur au moins 12 dérivations", 14.26),
                                               ("ZBQK002", "Radiographie du thorax", 21.28),
                                               ("ZCQM001", "Échographie de l'abdomen", 56.7),
                                               ("HBJD001", "Détartrage et polissage des dents", 28.92),
                                               ("HBMD053", "Restauration d'une dent sur 1 face", 26.97)]),
    ("pharmacy", 0.45, "pharmacy", CIP13, [("3400933516390", "PARACETAMOL MYLAN 500 mg, comprimé", 1.16),
                                           ("3400934998331", "AMOXICILLINE BIOGARAN 1 g, comprimé", 4.36),
                                           ("3400935955838", "LEVOTHYROX 75 µg, comprimé sécable", 2.88),
                                           ("3400936404540", "METFORMINE ARROW 1000 mg, comprimé", 3.04),
                                           ("3400930028018", "IBUPROFENE MYLAN 400 mg, comprimé", 1.68),
                                           ("3400938330649", "ATORVASTATINE EG 20 mg, comprimé", 5.51),
                                           ("3400936725782", "VENTOLINE 100 µg, suspension pour inhalation", 3.49)]),
    ("stay", 0.012, "institutional", GHM, [("05M092", "Insuffisances cardiaques et états de choc circulatoire", 3210.0),
                                           ("06C041", "Appendicectomies non compliquées", 2870.0),
                                           ("08C241", "Prothèses de genou", 7450.0),
                                           ("14Z141", "Accouchements uniques par voie basse", 2660.0),
                                           ("04M051", "Pneumonies et pleurésies banales", 2950.0)]),
]
CHRONIC = ("3400935955838", "3400936404540", "3400938330649")  # a chronic patient's monthly treatment
GIVEN = ["Claire", "Louis", "Emma", "Jules", "Léa", "Hugo", "Chloé", "Lucas", "Manon", "Gabriel", "Inès", "Arthur"]
FAMILY = ["MARTIN", "BERNARD", "DUBOIS", "THOMAS", "ROBERT", "RICHARD", "PETIT", "DURAND", "LEROY", "MOREAU"]
COMMUNES = [("75056", "Paris"), ("69123", "Lyon"), ("13055", "Marseille"), ("35238", "Rennes"),
            ("31555", "Toulouse"), ("33063", "Bordeaux"), ("59350", "Lille"), ("44109", "Nantes")]


def _nir(sex: int, birth: date, commune: str, order: int) -> str:
    """A 15-character NIR: sex, year, month, INSEE commune (department + commune), order, key (97 - n mod 97)."""
    body = f"{sex}{birth.year % 100:02d}{birth.month:02d}{commune}{order % 1000:03d}"
    return body + f"{97 - int(body) % 97:02d}"


@dataclass
class SyntheticInsurer:
    """Reimbursement histories of ``patients`` patients, ending at ``now``, over ``months`` months."""

    patients: int
    seed: int = 8
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    months: int = 30

    def patient_id(self, i: int) -> str:
        return f"syn-{self.seed}-{i}"

    def _random(self, i: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + i)

    # -- patients -----------------------------------------------------------------------------
    def patient(self, i: int) -> dict:
        rng = self._random(-i - 1)
        sex = rng.choice((1, 2))
        birth = date(1930, 1, 1) + timedelta(days=rng.randrange(0, 365 * 90))
        code, city = rng.choice(COMMUNES)
        given = rng.choice(GIVEN)
        return {
            "resourceType": "Patient", "id": self.patient_id(i),
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {
                "extension": [{"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code",
                               "valueCoding": {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/"
                                                         "TRE-R13-CommuneOM", "code": code}}],
                "city": city}}],
            "identifier": [{"use": "official", "type": {"coding": [{
                "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203", "code": "INS-NIR"}]},
                "system": "urn:oid:1.2.250.1.213.1.4.8", "value": _nir(sex, birth, code, i)}],
            "name": [{"extension": [{"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/"
                                            "fr-core-patient-birth-list-given-name", "valueString": given}],
                      "use": "official", "family": rng.choice(FAMILY), "given": [given]}],
            "gender": "male" if sex == 1 else "female",
            "birthDate": birth.isoformat(),
        }

    # -- care items ---------------------------------------------------------------------------
    def care_items(self, i: int) -> list[dict]:
        """Patient ``i``'s care items, oldest first."""
        rng = self._random(i)
        chronic = rng.random() < 0.3
        today = self.now.astimezone(timezone.utc).date()
        start = months_before(today, self.months)
        items: list[dict] = []
        month_start = start
        while month_start < today:
            month_end = min(months_before(month_start, -1), today)
            span = (month_end - month_start).days
            for kind, probability, claim_type, system, codes in CARE:
                boost = 2.5 if chronic and kind in ("gp", "pharmacy", "nurse") else 1.0
                if rng.random() >= min(0.95, probability * boost):
                    continue
                day = month_start + timedelta(days=rng.randrange(max(span, 1)))
                if day >= today:
                    continue
                items.append(self._item(i, len(items) + 1, rng, kind, claim_type, system, codes, day, chronic))
            month_start = month_end
        return items

    def _item(self, i: int, n: int, rng: random.Random, kind: str, claim_type: str, system: str,
              codes: list, day: date, chronic: bool) -> dict:
        lines: list[tuple[str, str, float]]
        if kind == "pharmacy":
            lines = rng.sample(codes, rng.randint(1, 3))
            if chronic:
                lines = [c for c in codes if c[0] in CHRONIC][:2] + lines[:1]
        else:
            lines = [rng.choice(codes)]
        patient = self.patient_id(i)
        eob: dict = {
            "resourceType": EOB,
            "meta": {"profile": ["https://dmp.example.org/fhir/StructureDefinition/dmp-explanationofbenefit"]},
            "identifier": [{"system": INSURER_SYSTEM, "value": f"{self.seed}-{i}-{n}"}],
            "status": "active",
            "type": {"coding": [{"system": CLAIM_TYPE, "code": claim_type}]},
            "use": "claim",
            "patient": {"reference": f"Patient/{patient}"},
            "created": (day + timedelta(days=rng.randint(1, 12))).isoformat(),
            "insurer": {"display": "Assurance maladie obligatoire (CPAM)"},
            "provider": self._provider(rng, kind),
            "outcome": "complete",
            "insurance": [{"focal": True, "coverage": {"display": "Assurance maladie obligatoire"}}],
        }
        items = []
        total = 0.0
        if kind == "stay":
            end = day + timedelta(days=rng.randint(1, 9))
            eob["billablePeriod"] = {"start": day.isoformat(), "end": end.isoformat()}
        for sequence, (code, display, price) in enumerate(lines, 1):
            item: dict = {"sequence": sequence,
                          "productOrService": {"coding": [{"system": system, "code": code, "display": display}]}}
            if kind == "stay":
                item["servicedPeriod"] = dict(eob["billablePeriod"])
            else:
                item["servicedDate"] = day.isoformat()
            quantity = rng.randint(1, 3) if kind in ("pharmacy", "nurse") else 1
            if quantity > 1:
                item["quantity"] = {"value": quantity}
            items.append(item)
            total += price * quantity
        eob["item"] = items
        rate = 1.0 if kind == "stay" else (0.65 if kind == "pharmacy" else 0.7)
        eob["total"] = [
            {"category": {"coding": [{"system": ADJUDICATION, "code": "submitted"}]},
             "amount": {"value": round(total, 2), "currency": "EUR"}},
            {"category": {"coding": [{"system": ADJUDICATION, "code": "benefit"}]},
             "amount": {"value": round(total * rate, 2), "currency": "EUR"}}]
        return eob

    @staticmethod
    def _provider(rng: random.Random, kind: str) -> dict:
        if kind in ("pharmacy", "stay"):
            finess = f"{rng.randrange(10**8, 10**9)}"
            name = "Pharmacie" if kind == "pharmacy" else "Centre hospitalier"
            return {"identifier": {"system": FINESS, "value": finess}, "display": f"{name} {finess[-4:]}"}
        rpps = f"10{rng.randrange(10**8, 10**9)}"
        return {"identifier": {"system": RPPS, "value": rpps}, "display": f"Dr {rng.choice(FAMILY).title()}"}

    # -- outputs ------------------------------------------------------------------------------
    def all_items(self, patients: range | None = None) -> Iterator[dict]:
        for i in patients if patients is not None else range(self.patients):
            yield from self.care_items(i)

    @staticmethod
    def request_url(item: dict) -> str:
        value = next(x["value"] for x in item["identifier"] if x["system"] == INSURER_SYSTEM)
        return f"{EOB}?identifier={INSURER_SYSTEM}|{value}"

    @classmethod
    def bundle(cls, items: list[dict], kind: str = "batch") -> dict:
        """A batch (or transaction) Bundle of conditional updates on the insurer identifier."""
        return {"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": item, "request": {"method": "PUT", "url": cls.request_url(item)}} for item in items]}

    def bundles(self, size: int = 500, kind: str = "batch") -> Iterator[dict]:
        batch: list[dict] = []
        for item in self.all_items():
            batch.append(item)
            if len(batch) == size:
                yield self.bundle(batch, kind)
                batch = []
        if batch:
            yield self.bundle(batch, kind)

    def write(self, folder: Path, bundle_size: int = 0) -> dict[str, int]:
        """``Patient.ndjson`` and ``ExplanationOfBenefit.ndjson`` in ``folder`` (and ``bundles/batch-*.json``
        of ``bundle_size`` items when > 0); the counts written."""
        folder.mkdir(parents=True, exist_ok=True)
        counts = {"patients": 0, "items": 0, "bundles": 0}
        with open(folder / "Patient.ndjson", "wb") as out:
            for i in range(self.patients):
                out.write(jsonio.dumps(self.patient(i)) + b"\n")
                counts["patients"] += 1
        with open(folder / f"{EOB}.ndjson", "wb") as out:
            for item in self.all_items():
                out.write(jsonio.dumps(item) + b"\n")
                counts["items"] += 1
        if bundle_size > 0:
            (folder / "bundles").mkdir(exist_ok=True)
            for n, bundle in enumerate(self.bundles(bundle_size), 1):
                (folder / "bundles" / f"batch-{n:05d}.json").write_bytes(jsonio.dumps(bundle))
                counts["bundles"] += 1
        return counts
