#!/usr/bin/env python3
"""CRUD benchmark of the served FHIR API: create, read by id and update over keep-alive HTTP.

Each round starts its own server (``fhir-server serve --insecure-no-auth`` under granian
(WSGI), on 127.0.0.1, a free port and a fresh temporary SQLite store), waits for
``/fhir/metadata`` and then measures:

1. create: ``--resources`` validated POSTs (25 % Patients, then Observations, Conditions and
   AllergyIntolerances referencing them; generated French names, LOINC and SNOMED CT codes);
2. read: GET [type]/[id] on random ids for ``--duration`` seconds (after a short warm-up),
   with the Python client and, when ``wrk`` is installed, with wrk and a Lua script;
3. update: PUT with ``If-Match`` on ``--updates`` random resources (each changed, so each
   makes a new version).

Each phase uses ``--clients`` concurrent keep-alive connections (one ``http.client``
connection per thread). Throughput and p50/p95/p99 latency are reported per phase as the
median of ``--repeat`` rounds. Every non-2xx response is counted and the first ones are
shown with the request that caused them. The load generator runs on the same machine as
the server and shares its cores; the CPU each side used is reported.

Usage: .venv/bin/python bench/crud.py [--write]   (--help for the options)
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import math
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import free_port, group_cpu_by_pid, machine_busy_seconds, own_cpu_seconds  # noqa: E402  (bench/harness.py)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "## CRUD (issue: server core)"
HOST = "127.0.0.1"  # all traffic stays on loopback
FHIR_JSON = "application/fhir+json"
TARGETS = {"read_rps": 2000, "read_p99_ms": 20.0, "create_rps": 500}
MAX_EXAMPLES = 5  # non-2xx responses shown per phase
STARTUP_TIMEOUT = 90.0  # seconds to wait for /fhir/metadata
REQUEST_TIMEOUT = 60.0  # socket timeout of one request
PHASE_TIMEOUT = 900.0  # a create or update phase is cut off after this many seconds

# -- generated data ---------------------------------------------------------------------------
FEMALE = ["Marie", "Camille", "Léa", "Chloé", "Manon", "Inès", "Zoé", "Élodie", "Hélène", "Cécile", "Anaïs",
          "Margaux", "Thérèse", "Françoise", "Geneviève", "Juliette", "Louise", "Sophie", "Nathalie", "Isabelle",
          "Sylvie", "Émilie", "Océane", "Maëlle", "Noémie", "Brigitte", "Agnès", "Bénédicte", "Clémence", "Aurélie"]
MALE = ["Jean", "Pierre", "Louis", "Lucas", "Hugo", "Théo", "Nicolas", "François", "Jérôme", "Frédéric",
        "Stéphane", "Sébastien", "Benoît", "Noël", "Raphaël", "Gaël", "Mathéo", "Étienne", "Antoine", "Julien",
        "Philippe", "Michel", "Alain", "Bernard", "Thierry", "Régis", "Hervé", "Joël", "Cédric", "Maxime"]
FAMILY = ["Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois", "Moreau", "Laurent",
          "Simon", "Michel", "Lefèvre", "Leroy", "Roux", "David", "Bertrand", "Morel", "Fournier", "Girard",
          "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Vincent", "Muller", "Faure", "André", "Mercier",
          "Blanc", "Guérin", "Boyer", "Garnier", "Chevalier", "François", "Legrand", "Gauthier", "Perrin",
          "Robin", "Clément", "Morin", "Nicolas", "Henry", "Roussel", "Mathieu", "Gautier", "Masson", "Lemaître",
          "Le Gall", "Dupuis", "Bénard", "Barbier", "Brun", "Hoarau", "Lecomte", "Giraud", "Aubert", "Ménard"]
CITIES = [("Paris", "75015", "75", "115"), ("Lyon", "69003", "69", "383"), ("Marseille", "13008", "13", "208"),
          ("Toulouse", "31000", "31", "555"), ("Nice", "06000", "06", "088"), ("Nantes", "44000", "44", "109"),
          ("Strasbourg", "67000", "67", "482"), ("Montpellier", "34000", "34", "172"),
          ("Bordeaux", "33000", "33", "063"), ("Lille", "59000", "59", "350"), ("Rennes", "35000", "35", "238"),
          ("Saint-Étienne", "42000", "42", "218"), ("Grenoble", "38000", "38", "185"),
          ("Dijon", "21000", "21", "231"), ("Angers", "49000", "49", "007"), ("Nîmes", "30000", "30", "189"),
          ("Clermont-Ferrand", "63000", "63", "113"), ("Besançon", "25000", "25", "056"),
          ("Orléans", "45000", "45", "234"), ("Rouen", "76000", "76", "540"), ("Brest", "29200", "29", "019"),
          ("Limoges", "87000", "87", "085"), ("Saint-Denis", "97400", "97", "411"), ("Caen", "14000", "14", "118")]
STREETS = ["rue de la République", "avenue Jean Jaurès", "boulevard Victor Hugo", "place de l'Église", "rue Pasteur",
           "allée des Tilleuls", "chemin des Vignes", "rue du Général de Gaulle", "impasse des Lilas",
           "rue Émile Zola", "quai de la Fosse", "cours Gambetta", "rue des Écoles", "avenue de la Libération"]
MAIL_DOMAINS = ["example.fr", "example.org", "example.com"]

# LOINC: (code, display, French text, category, UCUM unit, low, high, decimals)
VITALS = [("8867-4", "Heart rate", "Fréquence cardiaque", "/min", 48, 110, 0),
          ("29463-7", "Body weight", "Poids", "kg", 45, 120, 1),
          ("8302-2", "Body height", "Taille", "cm", 150, 195, 0),
          ("39156-5", "Body mass index (BMI) [Ratio]", "Indice de masse corporelle", "kg/m2", 17, 38, 1),
          ("8310-5", "Body temperature", "Température corporelle", "Cel", 36.0, 39.5, 1),
          ("2708-6", "Oxygen saturation in Arterial blood", "Saturation en oxygène", "%", 88, 100, 0),
          ("9279-1", "Respiratory rate", "Fréquence respiratoire", "/min", 10, 26, 0)]
LABS = [("15074-8", "Glucose [Moles/volume] in Blood", "Glycémie", "mmol/L", 3.8, 12.0, 1, (3.9, 5.8)),
        ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "Hémoglobine glyquée (HbA1c)", "%", 4.5, 10.5, 1,
         (4.0, 6.0)),
        ("14682-9", "Creatinine [Moles/volume] in Serum or Plasma", "Créatininémie", "umol/L", 45, 180, 0,
         (45, 104)),
        ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "Kaliémie", "mmol/L", 3.2, 5.8, 1, (3.5, 5.0)),
        ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "Natrémie", "mmol/L", 130, 148, 0, (136, 145)),
        ("718-7", "Hemoglobin [Mass/volume] in Blood", "Hémoglobine", "g/dL", 9.5, 17.5, 1, (12.0, 16.0)),
        ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "Cholestérol total", "g/L", 1.3, 3.0, 2,
         (1.5, 2.0)),
        ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "TSH", "m[IU]/L", 0.2, 8.0, 2, (0.4, 4.0)),
        ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "Protéine C réactive (CRP)", "mg/L",
         0.5, 120, 1, (0, 5))]
# SNOMED CT disorders with ICD-10: (snomed, display, ICD-10, French text)
CONDITIONS = [("44054006", "Diabetes mellitus type 2", "E11", "Diabète de type 2"),
              ("38341003", "Hypertensive disorder, systemic arterial", "I10", "Hypertension artérielle"),
              ("195967001", "Asthma", "J45", "Asthme"),
              ("13645005", "Chronic obstructive lung disease", "J44", "BPCO"),
              ("35489007", "Depressive disorder", "F32", "Épisode dépressif"),
              ("49436004", "Atrial fibrillation", "I48", "Fibrillation auriculaire"),
              ("55822004", "Hyperlipidemia", "E78", "Hyperlipidémie"),
              ("40930008", "Hypothyroidism", "E03", "Hypothyroïdie"),
              ("69896004", "Rheumatoid arthritis", "M06", "Polyarthrite rhumatoïde"),
              ("396275006", "Osteoarthritis", "M19", "Arthrose"),
              ("414545008", "Ischemic heart disease", "I25", "Cardiopathie ischémique"),
              ("709044004", "Chronic kidney disease", "N18", "Insuffisance rénale chronique"),
              ("84114007", "Heart failure", "I50", "Insuffisance cardiaque"),
              ("230690007", "Cerebrovascular accident", "I64", "Accident vasculaire cérébral")]
SEVERITY = [("255604002", "Mild", "Léger"), ("6736007", "Moderate", "Modéré"), ("24484000", "Severe", "Sévère")]
# SNOMED CT allergies: (code, display, French text, category)
ALLERGIES = [("91936005", "Allergy to penicillin", "Allergie à la pénicilline", "medication"),
             ("293586001", "Allergy to aspirin", "Allergie à l'aspirine", "medication"),
             ("91935009", "Allergy to peanut", "Allergie à l'arachide", "food"),
             ("300913006", "Shellfish allergy", "Allergie aux crustacés", "food"),
             ("91930004", "Allergy to eggs", "Allergie à l'œuf", "food"),
             ("425525006", "Allergy to dairy product", "Allergie aux produits laitiers", "food"),
             ("418689008", "Allergy to grass pollen", "Allergie aux pollens de graminées", "environment"),
             ("232350006", "House dust mite allergy", "Allergie aux acariens", "environment"),
             ("300916003", "Latex allergy", "Allergie au latex", "environment")]
MANIFESTATIONS = [("247472004", "Hives", "Urticaire"), ("39579001", "Anaphylaxis", "Anaphylaxie"),
                  ("271807003", "Eruption of skin", "Éruption cutanée"), ("267036007", "Dyspnea", "Dyspnée"),
                  ("418290006", "Itching of skin", "Prurit")]
LOINC, SNOMED, UCUM = "http://loinc.org", "http://snomed.info/sct", "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def _concept(system: str, code: str, display: str, text: str | None = None) -> dict:
    concept: dict = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        concept["text"] = text
    return concept


def _instant(rng: random.Random, start_year: int = 2015) -> str:
    day = dt.date(start_year, 1, 1) + dt.timedelta(days=rng.randrange((dt.date(2024, 12, 31)
                                                                       - dt.date(start_year, 1, 1)).days))
    offset = "+02:00" if 4 <= day.month <= 10 else "+01:00"
    return f"{day.isoformat()}T{rng.randrange(7, 20):02d}:{rng.randrange(60):02d}:00{offset}"


def _nir(rng: random.Random, gender: str, birth: dt.date, dept: str, commune: str) -> str:
    """A well-formed 15-digit NIR (sex, year, month, place, order number, key = 97 - n mod 97)."""
    body = f"{1 if gender == 'male' else 2}{birth.year % 100:02d}{birth.month:02d}{dept}{commune}{rng.randrange(1, 999):03d}"
    numeric = int(body.replace("2A", "19").replace("2B", "18"))
    return f"{body}{97 - numeric % 97:02d}"


def make_patient(rng: random.Random) -> dict:
    gender = rng.choice(["female", "male"])
    given = rng.sample(FEMALE if gender == "female" else MALE, rng.choice([1, 1, 2]))
    family = rng.choice(FAMILY)
    birth = dt.date(1935, 1, 1) + dt.timedelta(days=rng.randrange(32_000))
    city, postcode, dept, commune = rng.choice(CITIES)
    email_name = "".join(c for c in f"{given[0]}.{family}".lower().replace(" ", "-")
                         .translate(str.maketrans("éèêëàâäîïôöûüùçœ", "eeeeaaaiioouuuco")))
    patient = {
        "resourceType": "Patient",
        # what the record's dmp-patient profile asks of an EHR: a current INS of FR Core's type, and the birth
        # place's INSEE code (dmp-pat-1, dmp-pat-3)
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {
            "extension": [{"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code",
                           "valueCoding": {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/"
                                                     "TRE-R13-CommuneOM", "code": dept + commune}}],
            "city": city}}],
        "identifier": [{"use": "official",
                        "type": {"coding": [{"system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203",
                                             "code": "INS-NIR", "display": "NIR définitif"}]},
                        "system": "urn:oid:1.2.250.1.213.1.4.8",
                        "value": _nir(rng, gender, birth, dept, commune)}],
        "active": True,
        "name": [{"extension": [{"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/"
                                        "fr-core-patient-birth-list-given-name", "valueString": " ".join(given)}],
                  "use": "official", "family": family, "given": given}],
        "telecom": [{"system": "phone", "value": f"+33 6 {rng.randrange(10, 100)} {rng.randrange(10, 100)} "
                                                  f"{rng.randrange(10, 100)} {rng.randrange(10, 100)}",
                     "use": "mobile"},
                    {"system": "email", "value": f"{email_name}@{rng.choice(MAIL_DOMAINS)}"}],
        "gender": gender,
        "birthDate": birth.isoformat(),
        "address": [{"use": "home", "type": "physical",
                     "line": [f"{rng.randrange(1, 180)} {rng.choice(STREETS)}"],
                     "city": city, "postalCode": postcode, "country": "FR"}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "fr-FR",
                                                    "display": "French (France)"}]},
                           "preferred": True}],
    }
    if gender == "female" and rng.random() < 0.4:
        patient["name"].append({"use": "maiden", "family": rng.choice(FAMILY), "given": given})
    return patient


def _value(rng: random.Random, low: float, high: float, decimals: int) -> float | int:
    value = round(rng.uniform(low, high), decimals)
    return int(value) if decimals == 0 else value


def make_observation(rng: random.Random, patient_ref: dict) -> dict:
    obs = {"resourceType": "Observation", "status": "final", "subject": patient_ref,
           "effectiveDateTime": _instant(rng)}
    obs["issued"] = obs["effectiveDateTime"][:19] + ".000" + obs["effectiveDateTime"][19:]
    if rng.random() < 0.45:
        code, display, text, unit, low, high, decimals = rng.choice(VITALS)
        obs["category"] = [_concept(OBS_CATEGORY, "vital-signs", "Vital Signs")]
        obs["code"] = _concept(LOINC, code, display, text)
        obs["valueQuantity"] = {"value": _value(rng, low, high, decimals), "unit": unit, "system": UCUM,
                                "code": unit}
    else:
        code, display, text, unit, low, high, decimals, (ref_low, ref_high) = rng.choice(LABS)
        obs["category"] = [_concept(OBS_CATEGORY, "laboratory", "Laboratory")]
        obs["code"] = _concept(LOINC, code, display, text)
        value = _value(rng, low, high, decimals)
        obs["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
        flag = "H" if value > ref_high else "L" if value < ref_low else "N"
        obs["interpretation"] = [_concept("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                          flag, {"H": "High", "L": "Low", "N": "Normal"}[flag])]
        obs["referenceRange"] = [{"low": {"value": ref_low, "unit": unit, "system": UCUM, "code": unit},
                                  "high": {"value": ref_high, "unit": unit, "system": UCUM, "code": unit}}]
    return obs


def make_condition(rng: random.Random, patient_ref: dict) -> dict:
    code, display, icd10, text = rng.choice(CONDITIONS)
    status = rng.choices(["active", "remission", "resolved"], [8, 1, 1])[0]
    sev_code, sev_display, sev_text = rng.choice(SEVERITY)
    onset = _instant(rng, 1995)
    condition = {
        "resourceType": "Condition",
        "clinicalStatus": _concept("http://terminology.hl7.org/CodeSystem/condition-clinical", status,
                                   status.capitalize()),
        "verificationStatus": _concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed",
                                       "Confirmed"),
        "category": [_concept("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item",
                              "Problem List Item")],
        "severity": _concept(SNOMED, sev_code, sev_display, sev_text),
        "code": {"coding": [{"system": SNOMED, "code": code, "display": display},
                            {"system": "http://hl7.org/fhir/sid/icd-10", "code": icd10}], "text": text},
        "subject": patient_ref,
        "onsetDateTime": onset,
        "recordedDate": onset,
    }
    if status == "resolved":
        condition["abatementDateTime"] = _instant(rng, int(onset[:4]) if onset[:4] < "2024" else 2024)
        if condition["abatementDateTime"] < onset:
            condition["abatementDateTime"] = onset
    return condition


def make_allergy(rng: random.Random, patient_ref: dict) -> dict:
    code, display, text, category = rng.choice(ALLERGIES)
    man_code, man_display, man_text = rng.choice(MANIFESTATIONS)
    return {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": _concept("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active",
                                   "Active"),
        "verificationStatus": _concept("http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                                       "confirmed", "Confirmed"),
        "type": "allergy",
        "category": [category],
        "criticality": "high" if man_code == "39579001" else rng.choice(["low", "high"]),
        "code": _concept(SNOMED, code, display, text),
        "patient": patient_ref,
        "recordedDate": _instant(rng),
        "reaction": [{"manifestation": [_concept(SNOMED, man_code, man_display, man_text)],
                      "severity": "severe" if man_code == "39579001" else rng.choice(["mild", "moderate"])}],
    }


def clinical_bodies(rng: random.Random, count: int, patients: list[tuple[str, str]]) -> list[dict]:
    """``count`` Observations/Conditions/AllergyIntolerances (60/25/15 %) referencing the created patients."""
    out = []
    for _ in range(count):
        pid, name = rng.choice(patients)
        ref = {"reference": f"Patient/{pid}", "display": name}
        pick = rng.random()
        out.append(make_observation(rng, ref) if pick < 0.60 else make_condition(rng, ref) if pick < 0.85
                   else make_allergy(rng, ref))
    return out


def changed(resource: dict, rng: random.Random) -> dict:
    """A realistic edit of a stored resource, so that the PUT makes a new version."""
    body = json.loads(json.dumps(resource))
    rtype = body["resourceType"]
    if rtype == "Patient":
        body["telecom"][0]["value"] = f"+33 6 {rng.randrange(10, 100)} {rng.randrange(10, 100)} " \
                                      f"{rng.randrange(10, 100)} {rng.randrange(10, 100)}"
    elif rtype == "Observation":
        body["status"] = "amended"
        body["note"] = [{"text": f"Valeur contrôlée le {dt.date.today().isoformat()} ({rng.randrange(10**6)})"}]
    elif rtype == "Condition":
        body["note"] = [{"text": f"Revu en consultation ({rng.randrange(10**6)})"}]
    else:
        body["lastOccurrence"] = _instant(rng, 2020)
        body["note"] = [{"text": f"Réaction confirmée ({rng.randrange(10**6)})"}]
    return body


# -- HTTP load generator ----------------------------------------------------------------------
@dataclass
class Request:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tag: str = ""  # resource type, for per-type latency


@dataclass
class PhaseResult:
    name: str
    client: str
    requests: int = 0
    ok: int = 0
    elapsed: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    by_tag: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # first non-2xx / transport errors, with the request
    server_cpu: float = 0.0  # CPU seconds used by the server processes during the phase
    client_cpu: float = 0.0  # CPU seconds used by the load generator during the phase
    other_cpu: float = 0.0  # CPU seconds used by everything else on the machine during the phase
    worker_share: float = 0.0  # the busiest worker process's share of the workers' CPU
    drain: float = 0.0  # seconds the server stayed busy after the last answer (writing the phase's traces)
    responses: list[tuple[Request, int, bytes]] = field(default_factory=list)  # kept only when asked

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @property
    def errors(self) -> int:
        return self.requests - self.ok

    def pct(self, q: float) -> float:
        return percentile(sorted(self.latencies_ms), q)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (q in 0..100)."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


class Connection:
    """One keep-alive HTTP/1.1 connection to the server, reopened after a transport error."""

    def __init__(self, port: int):
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def send(self, req: Request) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT)
        try:
            self.conn.request(req.method, req.path, body=req.body, headers=req.headers)
            response = self.conn.getresponse()
            data = response.read()
            if response.will_close:
                self.close()
            return response.status, data
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def server_cpu_seconds(pgid: int) -> float:
    """User+system CPU seconds of every live process in the server's process group."""
    return sum(group_cpu_by_pid(pgid).values())


def worker_share(pgid: int, before: dict[int, float], after: dict[int, float]) -> float:
    """The largest share of the workers' CPU taken by one worker between two samples (1/workers if even)."""
    used = {pid: after[pid] - before.get(pid, 0.0) for pid in after if pid != pgid}
    total = sum(used.values())
    return max(used.values()) / total if total > 0 else 0.0


def settle(pgid: int, result: PhaseResult, window: float = 0.2, idle_cores: float = 0.1,
           max_wait: float = 60.0) -> None:
    """Count in ``result`` the time and CPU the server spends after the last answer until it is idle.

    Every request is traced, and traces are written asynchronously (a queue per worker process): when the
    clients stop, the server may still be writing the traces of the last requests. A throughput that
    stopped the clock at the last answer would count work not yet done; this adds the drain to the
    phase's elapsed time and server CPU, so that requests/s and CPU per request include every trace."""
    started = time.perf_counter()
    before = server_cpu_seconds(pgid)
    last = before
    while time.perf_counter() - started < max_wait:
        time.sleep(window)
        now = server_cpu_seconds(pgid)
        if (now - last) / window < idle_cores:
            break
        last = now
    else:
        last = server_cpu_seconds(pgid)
    # the last (idle) window is not part of the drain
    result.drain = max(0.0, time.perf_counter() - started - window)
    result.elapsed += result.drain
    result.server_cpu += last - before


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (at most ``max_wait`` s) until the rest of the machine uses < ``threshold`` cores; return that load."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0, own0, t0 = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
        time.sleep(1.0)
        load = (machine_busy_seconds() - busy0 - (own_cpu_seconds() - own0)) / (time.monotonic() - t0)
        if load < threshold or time.monotonic() >= deadline:
            return load
        print(f"  waiting for the machine to be quiet: other processes use {load:.2f} cores", file=sys.stderr)
        time.sleep(2.0)


def run_phase(name: str, port: int, pgid: int, clients: int, *, jobs: list[Request] | None = None,
              make_job=None, duration: float | None = None, max_requests: int | None = None,
              keep_responses: bool = False, timeout: float = PHASE_TIMEOUT) -> PhaseResult:
    """Send ``jobs`` (or ``make_job()`` until ``duration``/``max_requests``) over ``clients`` connections."""
    result = PhaseResult(name, f"Python http.client, {clients} connections")
    lock = threading.Lock()
    cursor = iter(range(len(jobs))) if jobs is not None else None
    limit = max_requests if max_requests is not None else (len(jobs) if jobs is not None else 10**9)
    sent = [0]
    start_barrier = threading.Barrier(clients + 1)
    deadline_box = [0.0]
    stop = threading.Event()

    def next_job() -> Request | None:
        with lock:
            if stop.is_set() or sent[0] >= limit or time.perf_counter() >= deadline_box[0]:
                return None
            sent[0] += 1
            if jobs is not None:
                return jobs[next(cursor)]
        return make_job()

    def worker() -> None:
        conn = Connection(port)
        lat: list[tuple[str, float]] = []
        statuses: dict[str, int] = {}
        failures: list[str] = []
        kept: list[tuple[Request, int, bytes]] = []
        ok = 0
        start_barrier.wait()
        try:
            while True:
                req = next_job()
                if req is None:
                    break
                t0 = time.perf_counter()
                try:
                    status, data = conn.send(req)
                except Exception as exc:  # transport error: counted and shown, never hidden
                    key = type(exc).__name__
                    statuses[key] = statuses.get(key, 0) + 1
                    if len(failures) < MAX_EXAMPLES:
                        failures.append(f"{req.method} {req.path} -> {exc!r}"
                                        + (f"; request body: {req.body[:300]!r}" if req.body else ""))
                    continue
                elapsed_ms = (time.perf_counter() - t0) * 1000
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if 200 <= status < 300:
                    ok += 1
                    lat.append((req.tag, elapsed_ms))
                    if keep_responses:
                        kept.append((req, status, data))
                elif len(failures) < MAX_EXAMPLES:
                    failures.append(f"{req.method} {req.path} -> HTTP {status}: {data[:600]!r}"
                                    + (f"; request body: {req.body[:600]!r}" if req.body else ""))
        finally:
            conn.close()
            with lock:
                result.ok += ok
                for tag, ms in lat:
                    result.latencies_ms.append(ms)
                    result.by_tag.setdefault(tag, []).append(ms)
                for key, n in statuses.items():
                    result.statuses[key] = result.statuses.get(key, 0) + n
                result.failures.extend(failures[:MAX_EXAMPLES - len(result.failures)])
                result.responses.extend(kept)

    threads = [threading.Thread(target=worker, name=f"{name}-{i}", daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    pids0 = group_cpu_by_pid(pgid)
    busy0, server0, client0 = machine_busy_seconds(), sum(pids0.values()), own_cpu_seconds()
    wall0 = time.perf_counter()
    deadline_box[0] = wall0 + (duration if duration is not None else timeout)
    start_barrier.wait()
    for thread in threads:
        thread.join(timeout=max(1.0, deadline_box[0] - time.perf_counter() + REQUEST_TIMEOUT + 5))
    if any(t.is_alive() for t in threads):
        stop.set()
        raise RuntimeError(f"{name}: clients still running after the time limit")
    result.elapsed = time.perf_counter() - wall0
    pids1 = group_cpu_by_pid(pgid)
    result.server_cpu = sum(pids1.values()) - server0
    result.worker_share = worker_share(pgid, pids0, pids1)
    result.client_cpu = own_cpu_seconds() - client0
    result.other_cpu = max(0.0, machine_busy_seconds() - busy0 - result.server_cpu - result.client_cpu)
    result.requests = sum(result.statuses.values())
    settle(pgid, result)
    if jobs is not None and result.requests < len(jobs):
        result.failures.append(f"only {result.requests} of {len(jobs)} requests were sent before the "
                               f"{timeout:.0f} s limit")
    return result


# -- wrk --------------------------------------------------------------------------------------
WRK_LUA = r"""
local paths = {}
bad, first = 0, ""  -- globals, so that done() can read them from each thread with thread:get()
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  math.randomseed(tonumber(args[2]) * 100 + (id or 0))
end
function setup(thread)
  threads = threads or {}
  thread:set("id", #threads)
  threads[#threads + 1] = thread
end
function request()
  return wrk.format("GET", paths[math.random(#paths)], {["Accept"] = "application/fhir+json"})
end
function response(status, headers, body)
  if status < 200 or status > 299 then
    bad = bad + 1
    if first == "" then first = status .. " " .. string.sub(body or "", 1, 400) end
  end
end
function done(summary, latency, requests)
  local nbad, firsts = 0, {}
  for _, t in ipairs(threads or {}) do
    nbad = nbad + (t:get("bad") or 0)
    local f = t:get("first")
    if f and f ~= "" then firsts[#firsts + 1] = f end
  end
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\": %d, \"duration_us\": %d, \"p50\": %d, \"p95\": %d, \"p99\": %d, \"max\": %d, " ..
    "\"non2xx\": %d, \"connect\": %d, \"read\": %d, \"write\": %d, \"timeout\": %d, \"status\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, nbad, e.connect, e.read, e.write, e.timeout, e.status))
  for _, f in ipairs(firsts) do io.write("WRKBAD " .. f:gsub("\n", " ") .. "\n") end
end
"""


def run_wrk(wrk: str, port: int, pgid: int, clients: int, threads: int, duration: float, paths_file: Path,
            script: Path, seed: int) -> PhaseResult:
    result = PhaseResult("read", f"wrk -t{threads} -c{clients}")
    cmd = [wrk, f"-t{threads}", f"-c{clients}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
           "-s", str(script), f"http://{HOST}:{port}/", "--", str(paths_file), str(seed)]
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    pids0 = group_cpu_by_pid(pgid)
    busy0, server0, wall0 = machine_busy_seconds(), sum(pids0.values()), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    result.elapsed = time.perf_counter() - wall0
    pids1 = group_cpu_by_pid(pgid)
    result.server_cpu = sum(pids1.values()) - server0
    result.worker_share = worker_share(pgid, pids0, pids1)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.client_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    result.other_cpu = max(0.0, machine_busy_seconds() - busy0 - result.server_cpu - result.client_cpu)
    line = next((l for l in done.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    data = json.loads(line[len("WRKJSON "):])
    transport = data["connect"] + data["read"] + data["write"] + data["timeout"]
    result.requests = data["requests"] + transport
    result.ok = data["requests"] - data["non2xx"]
    wall = result.elapsed
    result.elapsed = data["duration_us"] / 1e6
    # wrk's run is shorter than the wall time around it (start-up, Lua loading): scale CPU to its duration
    result.server_cpu, result.client_cpu, result.other_cpu = (v * result.elapsed / wall for v in (
        result.server_cpu, result.client_cpu, result.other_cpu))
    result.statuses = {"2xx": result.ok}
    if data["non2xx"]:
        result.statuses["non-2xx"] = data["non2xx"]
    for key in ("connect", "read", "write", "timeout"):
        if data[key]:
            result.statuses[f"socket {key} error"] = data[key]
    result.failures = [f"GET (random id) -> HTTP {l[len('WRKBAD '):]}" for l in done.stdout.splitlines()
                       if l.startswith("WRKBAD ")][:MAX_EXAMPLES]
    result.wrk_pcts = {q: data[f"p{q}"] / 1000 for q in (50, 95, 99)}  # type: ignore[attr-defined]
    settle(pgid, result)
    return result


# -- the server -------------------------------------------------------------------------------
class Server:
    """``fhir-server serve`` in its own process group, on loopback, with a fresh SQLite store."""

    def __init__(self, workdir: Path, workers: int, threads: int, synchronous: str = "FULL"):
        self.workdir = workdir
        self.synchronous = synchronous
        self.workers = workers
        self.threads = threads
        self.port = free_port()
        self.db = workdir / "fhir.sqlite3"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        script = Path(sys.executable).parent / "fhir-server"
        base = [str(script)] if script.exists() else [sys.executable, "-m", "fhir_server.cli"]
        return base + ["serve", "--insecure-no-auth", "--host", HOST, "--port", str(self.port), "--store",
                       self.store_url, "--workers", str(self.workers), "--threads", str(self.threads)]

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.db}" + ("" if self.synchronous == "FULL" else f"?synchronous={self.synchronous}")

    def start(self) -> None:
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.command(), stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} while starting:\n"
                                   + self.log_tail())
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
                conn.request("GET", "/fhir/metadata", headers={"Accept": FHIR_JSON})
                response = conn.getresponse()
                response.read()
                conn.close()
                if response.status == 200:
                    self.wait_for_workers()
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"/fhir/metadata did not answer 200 within {STARTUP_TIMEOUT:.0f} s:\n" + self.log_tail())

    def wait_for_workers(self, limit: float = 30.0) -> None:
        """Wait until every worker process has booted (the master plus ``workers`` processes, and their CPU
        use has settled): the first answer comes from the first worker ready, and keep-alive connections
        opened before the others are ready would all stay on it (one worker doing all the work)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            before = group_cpu_by_pid(self.pgid)
            time.sleep(0.5)
            after = group_cpu_by_pid(self.pgid)
            busy = sum(after.values()) - sum(v for k, v in before.items() if k in after)
            if len(after) >= self.workers + 1 and busy / 0.5 < 0.15:
                return

    @property
    def pgid(self) -> int:
        return self.proc.pid  # the leader of its own session/process group

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def problems(self) -> list[str]:
        """Server log lines that signal trouble (tracebacks, worker timeouts or deaths, errors)."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        pattern = re.compile(r"Traceback|\[ERROR\]|\[CRITICAL\]|WORKER TIMEOUT|was sent (SIGKILL|code)|"
                             r"Exception|database is locked|Booting worker", re.I)
        hits = [line for line in text if pattern.search(line)]
        boots = [line for line in hits if "Booting worker" in line]
        others = [line for line in hits if "Booting worker" not in line]
        if len(boots) > self.workers:  # a worker was restarted
            others.append(f"{len(boots)} worker boots for {self.workers} workers: a worker died and was restarted")
        return others

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        try:  # workers left behind by a dead master, or a master that ignored SIGTERM
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


# -- one round --------------------------------------------------------------------------------
@dataclass
class Round:
    create: PhaseResult
    read: PhaseResult
    update: PhaseResult
    wrk: PhaseResult | None
    server_problems: list[str]
    workers: int = 1
    loadavg: str = ""  # at the start and end of the round


def json_request(method: str, path: str, body: dict, **headers: str) -> Request:
    return Request(method, path, json.dumps(body, ensure_ascii=False).encode(),
                   {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **headers}, body["resourceType"])


def check_alive(server: Server, phase: str) -> None:
    if not server.alive():
        raise RuntimeError(f"the server died during the {phase} phase (exit {server.proc.returncode}):\n"
                           + server.log_tail())


def one_round(number: int, args, workdir: Path, wrk: str | None) -> Round:
    rng = random.Random(args.seed + number)
    server = Server(workdir, args.workers, args.threads, args.synchronous)
    wait_for_quiet(args.wait_idle)
    load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    try:
        server.start()
        print(f"round {number + 1}/{args.repeat}: server pid {server.proc.pid} on port {server.port}, "
              f"store {server.db}", file=sys.stderr)

        # (1) create: patients first (their ids are needed), then the clinical resources
        n_patients = max(1, args.resources // 4)
        patients = [make_patient(rng) for _ in range(n_patients)]
        jobs = [json_request("POST", "/fhir/Patient", p) for p in patients]
        first = run_phase("create", server.port, server.pgid, args.clients, jobs=jobs, keep_responses=True)
        check_alive(server, "create")
        created = [json.loads(data) for _, _, data in first.responses]
        refs = [(p["id"], f"{p['name'][0]['family']} {p['name'][0]['given'][0]}") for p in created]
        if not refs:
            raise RuntimeError("no Patient could be created: " + "; ".join(first.failures))
        clinical = clinical_bodies(rng, args.resources - n_patients, refs)
        jobs = [json_request("POST", f"/fhir/{r['resourceType']}", r) for r in clinical]
        second = run_phase("create", server.port, server.pgid, args.clients, jobs=jobs, keep_responses=True)
        check_alive(server, "create")
        create = merge("create", [first, second])
        created += [json.loads(data) for _, _, data in second.responses]
        first.responses = second.responses = create.responses = []
        print(f"  create: {create.ok}/{create.requests} in {create.elapsed:.1f} s = {create.rps:.0f}/s", file=sys.stderr)

        # (2) read by id: random picks among everything created, warm-up first
        paths = [f"/fhir/{r['resourceType']}/{r['id']}" for r in created]
        if not paths:
            raise RuntimeError("nothing was created, so nothing can be read")
        reader = random.Random(args.seed * 7 + number)

        def read_job() -> Request:
            return Request("GET", reader.choice(paths), None, {"Accept": FHIR_JSON}, "read")

        def python_read() -> PhaseResult:
            wait_for_quiet(args.wait_idle)
            run_phase("warm-up", server.port, server.pgid, args.clients, make_job=read_job, duration=args.warmup,
                      max_requests=args.max_reads)
            return run_phase("read", server.port, server.pgid, args.clients, make_job=read_job,
                             duration=args.duration, max_requests=args.max_reads)

        read = least_disturbed(python_read, args.read_attempts)
        check_alive(server, "read")
        print(f"  read (python): {read.ok}/{read.requests} = {read.rps:.0f}/s, p99 {read.pct(99):.1f} ms, "
              f"busiest worker {read.worker_share:.0%} of the workers' CPU",
              file=sys.stderr)
        wrk_result = None
        if wrk:
            paths_file = workdir / "paths.txt"
            paths_file.write_text("\n".join(paths) + "\n")
            script = workdir / "read.lua"
            script.write_text(WRK_LUA)

            def wrk_read() -> PhaseResult:
                wait_for_quiet(args.wait_idle)
                return run_wrk(wrk, server.port, server.pgid, args.clients, args.wrk_threads, args.duration,
                               paths_file, script, args.seed + number)

            wrk_result = least_disturbed(wrk_read, args.read_attempts)
            check_alive(server, "read (wrk)")
            print(f"  read (wrk): {wrk_result.ok}/{wrk_result.requests} = {wrk_result.rps:.0f}/s, "
                  f"p99 {wrk_result.wrk_pcts[99]:.1f} ms", file=sys.stderr)

        # (3) update: PUT with If-Match on a sample, each a real change
        wait_for_quiet(args.wait_idle)
        sample = reader.sample(created, min(args.updates, len(created)))
        jobs = [json_request("PUT", f"/fhir/{r['resourceType']}/{r['id']}", changed(r, reader),
                             **{"If-Match": f'W/"{r["meta"]["versionId"]}"'}) for r in sample]
        update = run_phase("update", server.port, server.pgid, args.clients, jobs=jobs)
        check_alive(server, "update")
        print(f"  update: {update.ok}/{update.requests} = {update.rps:.0f}/s", file=sys.stderr)
        return Round(create, read, update, wrk_result, server.problems(), args.workers,
                     f"{load_start} → {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    except BaseException:
        if server.proc is not None:
            print("server log (tail):\n" + server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
        for leftover in ("fhir.sqlite3", "fhir.sqlite3-wal", "fhir.sqlite3-shm"):
            (workdir / leftover).unlink(missing_ok=True)


def least_disturbed(measure, attempts: int, threshold: float = 0.3) -> PhaseResult:
    """Run a read measurement up to ``attempts`` times while other processes used >= ``threshold`` cores
    during it; keep the least disturbed run (or the first one with errors: errors are never dropped)."""
    runs: list[PhaseResult] = []
    for attempt in range(attempts):
        result = measure()
        runs.append(result)
        other = result.other_cpu / result.elapsed if result.elapsed else 0.0
        if result.errors or other < threshold or attempt == attempts - 1:
            break
        print(f"  other processes used {other:.2f} cores during this read measurement: measuring again",
              file=sys.stderr)
    failed = [r for r in runs if r.errors]
    return failed[0] if failed else min(runs, key=lambda r: r.other_cpu / r.elapsed if r.elapsed else 0.0)


def merge(name: str, parts: list[PhaseResult]) -> PhaseResult:
    out = PhaseResult(name, parts[0].client)
    for part in parts:
        out.requests += part.requests
        out.ok += part.ok
        out.elapsed += part.elapsed
        out.drain += part.drain
        out.latencies_ms += part.latencies_ms
        for tag, values in part.by_tag.items():
            out.by_tag.setdefault(tag, []).extend(values)
        for key, n in part.statuses.items():
            out.statuses[key] = out.statuses.get(key, 0) + n
        out.failures += part.failures
        out.server_cpu += part.server_cpu
        out.client_cpu += part.client_cpu
        out.other_cpu += part.other_cpu
        out.responses += part.responses
    return out


# -- report -----------------------------------------------------------------------------------
def machine_facts(args, workdir: Path, wrk: str | None) -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    import sqlite3

    from importlib.metadata import version
    fs = "?"
    try:
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(workdir).startswith(mount) and len(mount) > len(best):
                best, fs = mount, fstype
    except OSError:
        pass
    wrk_version = ""
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
        wrk_version = (out.stdout or out.stderr).split("Copyright")[0].strip()
    return {
        "cpu": f"{os.cpu_count()} × {model} (nproc {len(os.sched_getaffinity(0))}), {mem}",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "server": f"granian {version('granian')} WSGI --workers {args.workers} --threads {args.threads}, "
                  f"SQLite WAL synchronous={args.synchronous} on {fs}, access log off (the serve default)",
        "wrk": wrk_version or "not installed",
    }


def fmt_rps(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f}"


def summarize(rounds: list[Round], phase: str) -> dict | None:
    parts: list[PhaseResult] = [getattr(r, phase) for r in rounds if getattr(r, phase) is not None]
    if not parts:
        return None
    pcts = {}
    for q in (50, 95, 99):
        pcts[q] = statistics.median((p.wrk_pcts[q] if hasattr(p, "wrk_pcts") else p.pct(q)) for p in parts)
    return {
        "client": parts[0].client,
        "requests": statistics.median(p.requests for p in parts),
        "errors": sum(p.errors for p in parts),
        "rps": statistics.median(p.rps for p in parts),
        "rounds": [p.rps for p in parts],
        "pcts": pcts,
        "server_cores": statistics.median(p.server_cpu / p.elapsed for p in parts if p.elapsed),
        "client_cores": statistics.median(p.client_cpu / p.elapsed for p in parts if p.elapsed),
        "other_cores": statistics.median(p.other_cpu / p.elapsed for p in parts if p.elapsed),
        "server_ms": statistics.median(p.server_cpu / p.requests * 1000 for p in parts if p.requests),
        "drain": statistics.median(p.drain for p in parts),
        "statuses": {k: sum(p.statuses.get(k, 0) for p in parts) for p in parts for k in p.statuses},
        "failures": [f for p in parts for f in p.failures][:MAX_EXAMPLES],
    }


PHASES = [("create", "create (validated POST)"), ("read", "read by id (GET)"), ("wrk", "read by id (GET)"),
          ("update", "update (PUT + If-Match)")]


def markdown_table(rounds: list[Round], args) -> str:
    lines = ["| phase | client | requests/round | non-2xx | throughput (req/s) | p50 ms | p95 ms | p99 ms | "
             "per round (req/s) | drain (s) | server CPU per request (ms) | CPU cores: server / client / other |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for key, label in PHASES:
        s = summarize(rounds, key)
        if s is None:
            continue
        client = s["client"] + (f", {args.duration:g} s" if key in ("read", "wrk") else "")
        lines.append(f"| {label} | {client} | {s['requests']:,.0f} | {s['errors']} | **{s['rps']:,.0f}** | "
                     f"{s['pcts'][50]:.1f} | {s['pcts'][95]:.1f} | {s['pcts'][99]:.1f} | "
                     f"{', '.join(f'{v:,.0f}' for v in s['rounds'])} | {s['drain']:.2f} | {s['server_ms']:.2f} | "
                     f"{s['server_cores']:.2f} / {s['client_cores']:.2f} / {s['other_cores']:.2f} |")
    return "\n".join(lines)


def per_type_table(rounds: list[Round]) -> str:
    tags = sorted({t for r in rounds for t in r.create.by_tag})
    lines = ["| resource type | created/round | create p50 ms | create p99 ms |", "|---|---:|---:|---:|"]
    for tag in tags:
        per = [sorted(r.create.by_tag.get(tag, [])) for r in rounds]
        lines.append(f"| {tag} | {statistics.median(len(p) for p in per):,.0f} | "
                     f"{statistics.median(percentile(p, 50) for p in per):.1f} | "
                     f"{statistics.median(percentile(p, 99) for p in per):.1f} |")
    return "\n".join(lines)


def verdict(rounds: list[Round]) -> str:
    create = summarize(rounds, "create")
    reads = [s for s in (summarize(rounds, "wrk"), summarize(rounds, "read")) if s]
    best = reads[0]
    read_ok = best["rps"] >= TARGETS["read_rps"] and best["pcts"][99] < TARGETS["read_p99_ms"]
    create_ok = create["rps"] >= TARGETS["create_rps"]
    text = (f"Against the targets (read by id ≥ {TARGETS['read_rps']:,} req/s with p99 < "
            f"{TARGETS['read_p99_ms']:g} ms; validated create ≥ {TARGETS['create_rps']} resources/s): read "
            f"{'meets' if read_ok else 'misses'} it with {best['rps']:,.0f} req/s and p99 {best['pcts'][99]:.1f} ms "
            f"({best['client'].split(',')[0]}"
            + (f"; the Python client reaches {reads[1]['rps']:,.0f} req/s, p99 {reads[1]['pcts'][99]:.1f} ms"
               if len(reads) > 1 else "")
            + f"), and create {'meets' if create_ok else 'misses'} it with {create['rps']:,.0f} resources/s"
            + (f" ({create['rps'] / TARGETS['create_rps']:.0%} of the target)" if not create_ok else "")
            + "; the load generator ran on the same 2 cores as the server, so these are lower bounds for a "
              "server with the machine to itself.")
    disturbed = [(f"{label}, {s['client'].split(',')[0]}", s["other_cores"]) for key, label in PHASES
                 if (s := summarize(rounds, key)) and s["other_cores"] >= 0.3]
    if disturbed:
        text += (" Other processes on the machine took CPU during the measurements ("
                 + ", ".join(f"{label}: {cores:.2f} cores" for label, cores in disturbed)
                 + " on average), so those figures understate what the server does on a quiet machine.")
    errors = sum(s["errors"] for s in [create, *reads, summarize(rounds, "update")])
    if errors:
        text += f" {errors} requests did not get a 2xx answer (see below)."
    return text


def failures_text(rounds: list[Round]) -> str:
    out = []
    for key, label in PHASES:
        s = summarize(rounds, key)
        if s and (s["errors"] or s["failures"]):
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(s["statuses"].items()))
            out.append(f"- {label} ({s['client'].split(',')[0]}): {s['errors']} non-2xx or failed over all rounds "
                       f"({statuses}). First ones:")
            out += [f"  - `{f[:900]}`" for f in s["failures"]]
    for i, r in enumerate(rounds):
        for phase in (r.read, r.wrk):
            if phase is not None and phase.worker_share > 0.8 and r.workers > 1:
                out.append(f"- round {i + 1}, {phase.name} ({phase.client.split(',')[0]}): one worker process did "
                           f"{phase.worker_share:.0%} of the work (its keep-alive connections were not spread "
                           f"over the {r.workers} workers), which caps the throughput at about one core")
        for line in r.server_problems[:MAX_EXAMPLES]:
            out.append(f"- server log, round {i + 1}: `{line[:300]}`")
    return "\n".join(out)


def report(rounds: list[Round], args, facts: dict[str, str], command: str, started: str) -> str:
    parts = [SECTION, "",
             f"Command (from the repository root): `{command}`  ",
             f"Date: {started}  ",
             f"Machine: {facts['cpu']}; {facts['os']}; Python {facts['python']}; SQLite {facts['sqlite']}  ",
             f"Server: `fhir-server serve --insecure-no-auth` ({facts['server']}); load generator: Python "
             f"http.client threads (one keep-alive connection each) and {facts['wrk']}",
             "",
             f"Each of {args.repeat} rounds starts a fresh server and empty store, creates {args.resources:,} "
             f"resources (25 % Patient, then Observation 60 %, Condition 25 %, AllergyIntolerance 15 % of the "
             f"rest, referencing those patients), reads random ids for {args.duration:g} s after a "
             f"{args.warmup:g} s warm-up, then updates {args.updates:,} random resources with `If-Match`. "
             f"Figures are medians over the rounds; latency is per request as seen by the client; "
             f"throughput counts 2xx answers only, over the phase **and its drain**: every request is traced, "
             f"and the traces are written by a background thread per worker, so when the clients stop the "
             f"server may still be writing the last ones; the clock runs until the server is idle again "
             f"(column *drain*), and the server CPU per request includes that work. "
             f"**The load generator shares the {os.cpu_count()} cores with the server**: the last column shows "
             f"how many cores each used on average (server = granian master and workers, client = this "
             f"script or wrk, other = the rest of the machine, from /proc/stat). Before each phase the script waits up to "
             f"{args.wait_idle:g} s for other processes to use less than 0.3 cores, and a read measurement "
             f"disturbed by them is taken again (up to {args.read_attempts} times, the least disturbed kept).",
             "",
             markdown_table(rounds, args),
             "",
             "Create latency by resource type (medians over the rounds):",
             "",
             per_type_table(rounds),
             "",
             "Load average (1, 5, 15 min) at the start → end of each round: "
             + "; ".join(f"round {i + 1}: {r.loadavg}" for i, r in enumerate(rounds)) + ".",
             "",
             verdict(rounds)]
    failures = failures_text(rounds)
    if failures:
        parts += ["", "Errors and anomalies seen:", "", failures]
    return "\n".join(parts) + "\n"


def write_section(text: str) -> None:
    """Replace the CRUD section of docs/benchmarks.md (up to the next ``## `` heading), keeping the others."""
    if DOC.exists():
        lines = DOC.read_text(encoding="utf-8").splitlines(keepends=True)
    else:
        lines = ["# Benchmarks\n", "\n", "Measurements of the served API. Each section names the command that "
                 "produced it and the machine it ran on.\n", "\n"]
    start = next((i for i, line in enumerate(lines) if line.startswith("## CRUD")), None)
    if start is None:
        if lines and lines[-1].strip():
            lines.append("\n")
        lines += [text]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = [text + ("\n" if end < len(lines) else "")]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text("".join(lines), encoding="utf-8")


# -- main -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--resources", type=int, default=10_000, help="resources created per round")
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (each with a fresh server and store)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--threads", type=int, default=4, help="WSGI threads per worker process (serve's default)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each read measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured reads before")
    parser.add_argument("--max-reads", type=int, default=500_000, help="upper bound on reads per measurement")
    parser.add_argument("--updates", type=int, default=2_000, help="resources updated per round")
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL",
                        help="SQLite synchronous mode of the store (the server's default is FULL: one fsync per "
                             "commit; NORMAL in WAL mode may lose the last commits on power loss, not on a crash)")
    parser.add_argument("--wrk", choices=["auto", "no"], default="auto",
                        help="also measure reads with wrk when it is installed")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (-t)")
    parser.add_argument("--wait-idle", type=float, default=120.0,
                        help="before each phase, wait up to this many seconds for other processes on the "
                             "machine to use less than 0.3 cores (0: do not wait)")
    parser.add_argument("--read-attempts", type=int, default=3,
                        help="repeat a read measurement (at most this many times) while other processes "
                             "used 0.3 cores or more during it; the least disturbed one is kept")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--tmpdir", help="where the temporary store goes (default: the system temp dir)")
    parser.add_argument("--write", action="store_true", help=f"replace the CRUD section of {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    for name in ("resources", "clients", "repeat", "workers", "threads", "updates", "max_reads", "wrk_threads",
                 "read_attempts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be in (0, 600] and --warmup in [0, 60]")
    if args.resources < 2:
        parser.error("--resources must be at least 2 (patients and resources that reference them)")
    return args


def display_command(argv: list[str]) -> str:
    def rel(path: str) -> str:
        try:
            return str(Path(path).absolute().relative_to(ROOT))
        except ValueError:
            return path
    return shlex.join([rel(sys.executable), rel(sys.argv[0]), *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    wrk = shutil.which("wrk") if args.wrk == "auto" else None
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    workdir = Path(tempfile.mkdtemp(prefix="fhir-bench-", dir=args.tmpdir))

    def on_term(signum, frame):  # SIGTERM/SIGHUP: unwind through the finally blocks that stop the server
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    rounds: list[Round] = []
    try:
        facts = machine_facts(args, workdir, wrk)
        print(f"machine: {facts}", file=sys.stderr)
        for number in range(args.repeat):
            rounds.append(one_round(number, args, workdir, wrk))
    except KeyboardInterrupt:
        print("interrupted: the server was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = report(rounds, args, facts, display_command(argv), started)
    print(text)
    if args.write:
        write_section(text)
        print(f"wrote the CRUD section of {DOC}", file=sys.stderr)
    return 1 if any(summarize(rounds, k)["errors"] for k, _ in PHASES if summarize(rounds, k)) else 0


if __name__ == "__main__":
    sys.exit(main())
