#!/usr/bin/env python3
"""A deterministic generator of realistic French shared-medical-record data (valid FHIR R4 JSON).

Reusable by every benchmark (``bench/`` has no ``__init__.py``: put the ``bench`` folder itself on
``sys.path``, as ``python bench/x.py`` does, or the repository root and import ``bench.generate``)::

    import generate as gen                      # or: from bench.generate import generate, ...

    for resource in gen.generate(patients=10_000, seed=1):   # streamed: ~100 resources per patient
        ...
    Loader(server.resources, ANONYMOUS).load(gen.loader_items(10_000, seed=1), chunk_size=500)

What it makes (every resource carries a client id, so loading it with PUT semantics keeps the
references between resources; ids are UUIDs derived from the seed, so the same arguments always
give the same resources, byte for byte):

* shared first: ``Organization`` (hospitals, medical laboratories, practices; FINESS ids) and
  ``Practitioner`` (RPPS ids), about one organization per 100 patients and one practitioner per 20;
* then, patient after patient, the patient's whole record (``patient_record(i)``), whose size
  depends on the patient's age and health (about 100 resources on average, from a handful to a
  few hundred):

  - ``Patient``: French names (surnames with a realistic skew), INS-NIR identifier, address,
    telecom, birthDate, gender, generalPractitioner, managingOrganization;
  - ``Condition``: chronic disorders (more with age) and resolved acute episodes, SNOMED CT and
    ICD-10 codes, onset/abatement dates, severity;
  - ``AllergyIntolerance`` (SNOMED CT), ``Immunization`` (ATC vaccines, lot numbers),
    ``MedicationStatement`` (ATC + CIP-13 codes, linked to the condition they treat, renewed
    over the years);
  - ``Encounter`` (ambulatory, emergency, inpatient; practitioner and organization) and, at each
    encounter, vital signs (``Observation`` LOINC + UCUM, blood pressure with components),
    sometimes lab work: ``DiagnosticReport`` panels (CBC, metabolic, lipids, HbA1c, TSH, liver,
    rare tests) referencing their ``Observation`` results (reference ranges, interpretation
    flags), and ``DocumentReference`` (consultation notes, discharge summaries).

Dates are spread over the patient's history (at most 2008..2025, after the birth date), in the
France time zones. Nothing depends on the current date or on global state; generating patient
``i`` alone (``patient_record(i, patients, seed)``) gives exactly what ``generate`` emits for it,
so a benchmark can pick realistic search values for any patient without keeping the data set.

Command line (writes NDJSON, or prints counts)::

    .venv/bin/python bench/generate.py --patients 100 --stats
    .venv/bin/python bench/generate.py --patients 100 > /tmp/records.ndjson
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import random
import sys
import uuid
from collections import Counter
from typing import Iterator

DEFAULT_SEED = 1
TODAY = dt.date(2025, 6, 30)  # the data set's "now": fixed, so the output never depends on the run date
HISTORY_START = dt.date(2008, 1, 1)
PER_PATIENT_ESTIMATE = 100  # average resources per patient (checked by --stats)

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"
ATC = "http://www.whocc.no/atc"
CIP13 = "urn:oid:1.2.250.1.213.2.3.1"  # French CIP drug pack codes
INS_NIR = "urn:oid:1.2.250.1.213.1.4.8"
RPPS = "urn:oid:1.2.250.1.71.4.2.1"
FINESS = "urn:oid:1.2.250.1.71.4.2.2"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"

# -- vocabularies ------------------------------------------------------------------------------
FEMALE = ["Marie", "Camille", "Léa", "Chloé", "Manon", "Inès", "Zoé", "Élodie", "Hélène", "Cécile", "Anaïs",
          "Margaux", "Thérèse", "Françoise", "Geneviève", "Juliette", "Louise", "Sophie", "Nathalie", "Isabelle",
          "Sylvie", "Émilie", "Océane", "Maëlle", "Noémie", "Brigitte", "Agnès", "Bénédicte", "Clémence", "Aurélie",
          "Jeanne", "Monique", "Christiane", "Valérie", "Sandrine", "Céline", "Laure", "Jade", "Emma", "Alice",
          "Lina", "Rose", "Anna", "Mila", "Ambre", "Lucie", "Pauline", "Mathilde", "Danielle", "Odette"]
MALE = ["Jean", "Pierre", "Louis", "Lucas", "Hugo", "Théo", "Nicolas", "François", "Jérôme", "Frédéric",
        "Stéphane", "Sébastien", "Benoît", "Noël", "Raphaël", "Gaël", "Mathéo", "Étienne", "Antoine", "Julien",
        "Philippe", "Michel", "Alain", "Bernard", "Thierry", "Régis", "Hervé", "Joël", "Cédric", "Maxime",
        "Gabriel", "Léo", "Arthur", "Jules", "Adam", "Paul", "Nathan", "Yves", "Daniel", "Patrick", "Christophe",
        "Laurent", "Olivier", "David", "Éric", "Pascal", "André", "Marcel", "René", "Guillaume"]
# French surnames, most frequent first (drawn with a Zipf-like weight, as real surnames are)
FAMILY = ["Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois", "Moreau", "Laurent",
          "Simon", "Michel", "Lefèvre", "Leroy", "Roux", "David", "Bertrand", "Morel", "Fournier", "Girard",
          "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Vincent", "Muller", "Lefebvre", "Faure",
          "André", "Mercier", "Blanc", "Guérin", "Boyer", "Garnier", "Chevalier", "François", "Legrand",
          "Gauthier", "Garcia", "Perrin", "Robin", "Clément", "Morin", "Nicolas", "Henry", "Roussel", "Mathieu",
          "Gautier", "Masson", "Marchand", "Duval", "Denis", "Dumont", "Marie", "Lemaire", "Noël", "Meyer",
          "Dufour", "Meunier", "Brun", "Blanchard", "Giraud", "Joly", "Rivière", "Lucas", "Brunet", "Gaillard",
          "Barbier", "Arnaud", "Martinez", "Gérard", "Roche", "Renard", "Schmitt", "Roy", "Leroux", "Colin",
          "Vidal", "Caron", "Picard", "Roger", "Fabre", "Aubert", "Lemoine", "Renaud", "Dumas", "Lacroix",
          "Olivier", "Philippe", "Bourgeois", "Pierre", "Benoît", "Rey", "Leclerc", "Payet", "Rolland",
          "Leclercq", "Guillaume", "Lecomte", "Lopez", "Jean", "Dupuy", "Guillot", "Hubert", "Berger", "Carpentier",
          "Sanchez", "Dupuis", "Moulin", "Louis", "Deschamps", "Huet", "Vasseur", "Perez", "Boucher", "Fleury",
          "Royer", "Klein", "Jacquet", "Adam", "Paris", "Poirier", "Marty", "Aubry", "Guyot", "Carré", "Charles",
          "Renault", "Charpentier", "Ménard", "Maillard", "Baron", "Bertin", "Bailly", "Hervé", "Schneider",
          "Fernandez", "Le Gall", "Collet", "Léger", "Bouvier", "Julien", "Prévost", "Millet", "Perrot", "Daniel",
          "Le Roux", "Cousin", "Germain", "Breton", "Besson", "Langlois", "Rémy", "Le Goff", "Pelletier",
          "Lévêque", "Perrier", "Leblanc", "Barré", "Lebrun", "Marchal", "Weber", "Mallet", "Hamon", "Boulanger",
          "Jacob", "Monnier", "Michaud", "Rodriguez", "Guichard", "Gillet", "Étienne", "Grondin", "Poulain",
          "Tessier", "Chevallier", "Collin", "Chauvin", "Da Silva", "Bouchet", "Gay", "Lemaître", "Bénard",
          "Maréchal", "Humbert", "Reynaud", "Antoine", "Hoarau", "Perret", "Barthélemy", "Cordier", "Pichon",
          "Lejeune", "Gilbert", "Lamy", "Delaunay", "Pasquier", "Carlier", "Laporte"]
FAMILY_WEIGHTS = [1 / (rank + 8) for rank in range(len(FAMILY))]
CITIES = [("Paris", "75015", "75", "115"), ("Paris", "75011", "75", "111"), ("Lyon", "69003", "69", "383"),
          ("Marseille", "13008", "13", "208"), ("Toulouse", "31000", "31", "555"), ("Nice", "06000", "06", "088"),
          ("Nantes", "44000", "44", "109"), ("Strasbourg", "67000", "67", "482"),
          ("Montpellier", "34000", "34", "172"), ("Bordeaux", "33000", "33", "063"), ("Lille", "59000", "59", "350"),
          ("Rennes", "35000", "35", "238"), ("Reims", "51100", "51", "454"), ("Saint-Étienne", "42000", "42", "218"),
          ("Toulon", "83000", "83", "137"), ("Le Havre", "76600", "76", "351"), ("Grenoble", "38000", "38", "185"),
          ("Dijon", "21000", "21", "231"), ("Angers", "49000", "49", "007"), ("Nîmes", "30000", "30", "189"),
          ("Villeurbanne", "69100", "69", "266"), ("Clermont-Ferrand", "63000", "63", "113"),
          ("Le Mans", "72000", "72", "181"), ("Aix-en-Provence", "13100", "13", "001"),
          ("Brest", "29200", "29", "019"), ("Tours", "37000", "37", "261"), ("Amiens", "80000", "80", "021"),
          ("Limoges", "87000", "87", "085"), ("Annecy", "74000", "74", "010"), ("Perpignan", "66000", "66", "136"),
          ("Besançon", "25000", "25", "056"), ("Metz", "57000", "57", "463"), ("Orléans", "45000", "45", "234"),
          ("Rouen", "76000", "76", "540"), ("Mulhouse", "68100", "68", "224"), ("Caen", "14000", "14", "118"),
          ("Nancy", "54000", "54", "395"), ("Saint-Denis", "97400", "97", "411"), ("Ajaccio", "20000", "2A", "004"),
          ("Bastia", "20200", "2B", "033"), ("Pau", "64000", "64", "445"), ("Poitiers", "86000", "86", "194")]
STREETS = ["rue de la République", "avenue Jean Jaurès", "boulevard Victor Hugo", "place de l'Église", "rue Pasteur",
           "allée des Tilleuls", "chemin des Vignes", "rue du Général de Gaulle", "impasse des Lilas",
           "rue Émile Zola", "quai de la Fosse", "cours Gambetta", "rue des Écoles", "avenue de la Libération",
           "rue Voltaire", "rue de la Gare", "rue du Moulin", "place du Marché", "boulevard Gambetta",
           "rue Jean Moulin", "rue des Acacias", "avenue Foch", "rue Nationale", "route de Paris"]
MAIL_DOMAINS = ["example.fr", "example.org", "example.com"]

# vital signs: (LOINC, display, French text, UCUM unit, low, high, decimals, probability per encounter)
VITALS = [("8867-4", "Heart rate", "Fréquence cardiaque", "/min", 52, 105, 0, 0.85),
          ("29463-7", "Body weight", "Poids", "kg", 45, 115, 1, 0.7),
          ("39156-5", "Body mass index (BMI) [Ratio]", "Indice de masse corporelle", "kg/m2", 17, 38, 1, 0.3),
          ("8302-2", "Body height", "Taille", "cm", 150, 195, 0, 0.12),
          ("8310-5", "Body temperature", "Température corporelle", "Cel", 36.0, 39.5, 1, 0.25),
          ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "Saturation en oxygène", "%",
           89, 100, 0, 0.2),
          ("9279-1", "Respiratory rate", "Fréquence respiratoire", "/min", 10, 26, 0, 0.1)]
BLOOD_PRESSURE = ("85354-9", "Blood pressure panel with all children optional", "Pression artérielle")
# lab results: code -> (display, French text, unit, low, high, decimals, (reference low, reference high))
LAB = {
    "718-7": ("Hemoglobin [Mass/volume] in Blood", "Hémoglobine", "g/dL", 9.5, 17.5, 1, (12.0, 16.0)),
    "6690-2": ("Leukocytes [#/volume] in Blood by Automated count", "Leucocytes", "10*9/L", 2.5, 16.0, 1,
               (4.0, 10.0)),
    "777-3": ("Platelets [#/volume] in Blood by Automated count", "Plaquettes", "10*9/L", 90, 480, 0, (150, 400)),
    "789-8": ("Erythrocytes [#/volume] in Blood by Automated count", "Hématies", "10*12/L", 3.2, 6.0, 2,
              (4.0, 5.5)),
    "4544-3": ("Hematocrit [Volume Fraction] of Blood by Automated count", "Hématocrite", "%", 30, 54, 1,
               (37, 50)),
    "2345-7": ("Glucose [Mass/volume] in Serum or Plasma", "Glycémie à jeun", "g/L", 0.65, 2.2, 2, (0.70, 1.10)),
    "2160-0": ("Creatinine [Mass/volume] in Serum or Plasma", "Créatininémie", "mg/L", 5, 25, 1, (6, 12)),
    "2951-2": ("Sodium [Moles/volume] in Serum or Plasma", "Natrémie", "mmol/L", 130, 148, 0, (136, 145)),
    "2823-3": ("Potassium [Moles/volume] in Serum or Plasma", "Kaliémie", "mmol/L", 3.2, 5.8, 1, (3.5, 5.0)),
    "33914-3": ("Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by "
                "Creatinine-based formula (MDRD)", "DFG estimé (MDRD)", "mL/min/{1.73_m2}", 15, 120, 0, (60, 120)),
    "2093-3": ("Cholesterol [Mass/volume] in Serum or Plasma", "Cholestérol total", "g/L", 1.3, 3.0, 2, (1.5, 2.0)),
    "2571-8": ("Triglyceride [Mass/volume] in Serum or Plasma", "Triglycérides", "g/L", 0.4, 3.5, 2, (0.35, 1.5)),
    "2085-9": ("Cholesterol in HDL [Mass/volume] in Serum or Plasma", "Cholestérol HDL", "g/L", 0.3, 0.9, 2,
               (0.4, 0.8)),
    "13457-7": ("Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation", "Cholestérol LDL calculé",
                "g/L", 0.6, 2.2, 2, (0.0, 1.6)),
    "4548-4": ("Hemoglobin A1c/Hemoglobin.total in Blood", "Hémoglobine glyquée (HbA1c)", "%", 4.8, 10.5, 1,
               (4.0, 6.0)),
    "3016-3": ("Thyrotropin [Units/volume] in Serum or Plasma", "TSH", "m[IU]/L", 0.2, 8.0, 2, (0.4, 4.0)),
    "1742-6": ("Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "ALAT", "U/L", 8, 120, 0,
               (7, 40)),
    "1920-8": ("Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "ASAT", "U/L", 8, 110,
               0, (8, 35)),
    "2324-2": ("Gamma glutamyl transferase [Enzymatic activity/volume] in Serum or Plasma", "Gamma GT", "U/L",
               8, 200, 0, (8, 60)),
    "1988-5": ("C reactive protein [Mass/volume] in Serum or Plasma", "Protéine C réactive (CRP)", "mg/L",
               0.5, 120, 1, (0, 5)),
    # rarer tests
    "2857-1": ("Prostate specific Ag [Mass/volume] in Serum or Plasma", "PSA total", "ng/mL", 0.2, 12, 2, (0, 4)),
    "2276-4": ("Ferritin [Mass/volume] in Serum or Plasma", "Ferritine", "ug/L", 8, 600, 0, (20, 300)),
    "62292-8": ("25-Hydroxyvitamin D2+D3 [Mass/volume] in Serum or Plasma", "Vitamine D (25-OH)", "ng/mL",
                6, 70, 0, (30, 100)),
    "6301-6": ("INR in Platelet poor plasma by Coagulation assay", "INR", "{INR}", 0.9, 4.5, 1, (0.8, 1.2)),
    "33762-6": ("Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in Serum or Plasma", "NT-proBNP",
                "pg/mL", 20, 5000, 0, (0, 125)),
    "10839-9": ("Troponin I.cardiac [Mass/volume] in Serum or Plasma", "Troponine I", "ng/mL", 0.0, 2.5, 2,
                (0, 0.04)),
    "2132-9": ("Cobalamin (Vitamin B12) [Mass/volume] in Serum or Plasma", "Vitamine B12", "pg/mL", 120, 900, 0,
               (190, 900)),
    "2284-8": ("Folate [Mass/volume] in Serum or Plasma", "Folates sériques", "ng/mL", 2, 20, 1, (3, 17)),
    "1751-7": ("Albumin [Mass/volume] in Serum or Plasma", "Albuminémie", "g/L", 25, 50, 0, (35, 50)),
    "14957-5": ("Microalbumin [Mass/volume] in Urine", "Microalbuminurie", "mg/L", 2, 250, 0, (0, 30)),
    "2498-4": ("Iron [Mass/volume] in Serum or Plasma", "Fer sérique", "ug/dL", 30, 200, 0, (60, 170)),
    "3024-7": ("Thyroxine (T4) free [Mass/volume] in Serum or Plasma", "T4 libre", "ng/dL", 0.5, 2.5, 2,
               (0.9, 1.7)),
}
# lab panels, each one DiagnosticReport: (code, display, French text, results, base probability per lab visit)
PANELS = [("58410-2", "CBC panel - Blood by Automated count", "Numération formule sanguine",
           ["718-7", "6690-2", "777-3", "789-8", "4544-3"], 0.55),
          ("51990-0", "Basic metabolic panel - Blood", "Ionogramme sanguin et fonction rénale",
           ["2345-7", "2160-0", "2951-2", "2823-3", "33914-3"], 0.6),
          ("57698-3", "Lipid panel with direct LDL - Serum or Plasma", "Bilan lipidique",
           ["2093-3", "2571-8", "2085-9", "13457-7"], 0.25),
          ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "Hémoglobine glyquée", ["4548-4"], 0.03),
          ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "TSH", ["3016-3"], 0.08),
          ("24325-3", "Hepatic function panel - Serum or Plasma", "Bilan hépatique", ["1742-6", "1920-8", "2324-2"],
           0.15),
          ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "CRP", ["1988-5"], 0.2)]
RARE_TESTS = ["2857-1", "2276-4", "62292-8", "6301-6", "33762-6", "10839-9", "2132-9", "2284-8", "1751-7",
              "14957-5", "2498-4", "3024-7"]
RARE_TEST_WEIGHTS = [1 / (rank + 1) for rank in range(len(RARE_TESTS))]

# chronic disorders: (SNOMED, display, ICD-10, French text, base prevalence (adult), per-decade increase,
#                     ATC drugs (code, name, CIP-13, French dosage text))
CHRONIC = [
    ("38341003", "Hypertensive disorder, systemic arterial", "I10", "Hypertension artérielle", 0.05, 0.06,
     [("C09AA05", "Ramipril 5 mg comprimé", "3400935586791", "1 comprimé le matin"),
      ("C08CA01", "Amlodipine 5 mg gélule", "3400933470191", "1 gélule le soir")]),
    ("44054006", "Diabetes mellitus type 2", "E11", "Diabète de type 2", 0.02, 0.025,
     [("A10BA02", "Metformine 1000 mg comprimé", "3400936544967", "1 comprimé matin et soir"),
      ("A10AE04", "Insuline glargine 100 U/mL", "3400936109340", "20 unités le soir")]),
    ("55822004", "Hyperlipidemia", "E78", "Hyperlipidémie", 0.04, 0.03,
     [("C10AA05", "Atorvastatine 20 mg comprimé", "3400936402588", "1 comprimé le soir")]),
    ("195967001", "Asthma", "J45", "Asthme", 0.07, 0.0,
     [("R03AC02", "Salbutamol 100 µg suspension pour inhalation", "3400933989129", "2 bouffées si besoin")]),
    ("13645005", "Chronic obstructive lung disease", "J44", "BPCO", 0.0, 0.012,
     [("R03BB04", "Tiotropium 18 µg gélule pour inhalation", "3400936065684", "1 inhalation par jour")]),
    ("35489007", "Depressive disorder", "F32", "Épisode dépressif", 0.06, 0.0,
     [("N06AB06", "Sertraline 50 mg gélule", "3400935727354", "1 gélule le matin")]),
    ("49436004", "Atrial fibrillation", "I48", "Fibrillation auriculaire", 0.0, 0.012,
     [("B01AF02", "Apixaban 5 mg comprimé", "3400926887561", "1 comprimé matin et soir"),
      ("C07AB07", "Bisoprolol 2,5 mg comprimé", "3400934952368", "1 comprimé le matin")]),
    ("40930008", "Hypothyroidism", "E03", "Hypothyroïdie", 0.02, 0.005,
     [("H03AA01", "Lévothyroxine 75 µg comprimé", "3400935864318", "1 comprimé à jeun")]),
    ("69896004", "Rheumatoid arthritis", "M06", "Polyarthrite rhumatoïde", 0.004, 0.002,
     [("L04AX03", "Méthotrexate 10 mg comprimé", "3400930000007", "1 comprimé par semaine")]),
    ("396275006", "Osteoarthritis", "M19", "Arthrose", 0.0, 0.03,
     [("N02BE01", "Paracétamol 1 g comprimé", "3400935955838", "1 comprimé jusqu'à 3 fois par jour")]),
    ("414545008", "Ischemic heart disease", "I25", "Cardiopathie ischémique", 0.0, 0.01,
     [("B01AC06", "Acide acétylsalicylique 75 mg sachet", "3400933309101", "1 sachet par jour")]),
    ("709044004", "Chronic kidney disease", "N18", "Insuffisance rénale chronique", 0.0, 0.008,
     [("C03CA01", "Furosémide 40 mg comprimé", "3400930432969", "1 comprimé le matin")]),
    ("84114007", "Heart failure", "I50", "Insuffisance cardiaque", 0.0, 0.006,
     [("C03CA01", "Furosémide 40 mg comprimé", "3400930432969", "1 comprimé le matin")]),
    ("235595009", "Gastroesophageal reflux disease", "K21", "Reflux gastro-œsophagien", 0.05, 0.01,
     [("A02BC01", "Oméprazole 20 mg gélule", "3400934547687", "1 gélule le matin")]),
]
ACUTE = [("10509002", "Acute bronchitis", "J20", "Bronchite aiguë",
          [("J01CA04", "Amoxicilline 1 g comprimé", "3400935971845", "1 comprimé matin et soir pendant 7 jours")]),
         ("444814009", "Viral sinusitis", "J01", "Sinusite virale", []),
         ("195662009", "Acute viral pharyngitis", "J02", "Pharyngite virale aiguë",
          [("N02BE01", "Paracétamol 1 g comprimé", "3400935955838", "1 comprimé jusqu'à 3 fois par jour")]),
         ("68566005", "Urinary tract infectious disease", "N39", "Infection urinaire",
          [("J01XX01", "Fosfomycine 3 g granulés", "3400933862538", "1 sachet en prise unique")]),
         ("6142004", "Influenza", "J11", "Grippe", []),
         ("840539006", "Disease caused by severe acute respiratory syndrome coronavirus 2", "U07", "COVID-19", []),
         ("65363002", "Otitis media", "H66", "Otite moyenne",
          [("J01CA04", "Amoxicilline 1 g comprimé", "3400935971845", "1 comprimé matin et soir pendant 7 jours")]),
         ("271737000", "Anemia", "D64", "Anémie", [])]
SEVERITY = [("255604002", "Mild", "Léger"), ("6736007", "Moderate", "Modéré"), ("24484000", "Severe", "Sévère")]
ALLERGIES = [("91936005", "Allergy to penicillin", "Allergie à la pénicilline", "medication", 5),
             ("293586001", "Allergy to aspirin", "Allergie à l'aspirine", "medication", 2),
             ("91935009", "Allergy to peanut", "Allergie à l'arachide", "food", 2),
             ("300913006", "Shellfish allergy", "Allergie aux crustacés", "food", 2),
             ("91930004", "Allergy to eggs", "Allergie à l'œuf", "food", 1),
             ("425525006", "Allergy to dairy product", "Allergie aux produits laitiers", "food", 1),
             ("418689008", "Allergy to grass pollen", "Allergie aux pollens de graminées", "environment", 6),
             ("232350006", "House dust mite allergy", "Allergie aux acariens", "environment", 5),
             ("300916003", "Latex allergy", "Allergie au latex", "environment", 1)]
MANIFESTATIONS = [("247472004", "Hives", "Urticaire"), ("39579001", "Anaphylaxis", "Anaphylaxie"),
                  ("271807003", "Eruption of skin", "Éruption cutanée"), ("267036007", "Dyspnea", "Dyspnée"),
                  ("418290006", "Itching of skin", "Prurit"), ("49727002", "Cough", "Toux")]
VACCINES = [("J07BB02", "Vaccin grippal inactivé", "Influenza, inactivated, split virus or surface antigen"),
            ("J07BN01", "Vaccin COVID-19 à ARNm", "Covid-19, RNA-based vaccine"),
            ("J07CA02", "Vaccin diphtérie-tétanos-coqueluche-poliomyélite", "Diphtheria-pertussis-poliomyelitis-tetanus"),
            ("J07AL02", "Vaccin pneumococcique conjugué", "Pneumococcus, purified polysaccharides antigen conjugated"),
            ("J07BC01", "Vaccin hépatite B", "Hepatitis B, purified antigen"),
            ("J07BD52", "Vaccin rougeole-oreillons-rubéole", "Measles, combinations with mumps and rubella, live")]
ENCOUNTER_TYPES = {"AMB": [("11429006", "Consultation", "Consultation"),
                           ("185349003", "Encounter for check up", "Consultation de suivi"),
                           ("390906007", "Follow-up encounter", "Consultation de contrôle")],
                   "EMER": [("50849002", "Emergency room admission", "Passage aux urgences")],
                   "IMP": [("32485007", "Hospital admission", "Hospitalisation")]}
CLASS_DISPLAY = {"AMB": "ambulatory", "EMER": "emergency", "IMP": "inpatient encounter"}
DOCUMENT_TYPES = [("11488-4", "Consult note", "Compte rendu de consultation", "AMB"),
                  ("11506-3", "Progress note", "Note d'évolution", "AMB"),
                  ("18842-5", "Discharge summary", "Compte rendu d'hospitalisation", "IMP"),
                  ("34111-5", "Emergency department note", "Compte rendu de passage aux urgences", "EMER")]
SPECIALTIES = [("SM26", "Qualifié en Médecine Générale"), ("SM04", "Cardiologie et maladies vasculaires"),
               ("SM15", "Endocrinologie et métabolisme"), ("SM24", "Médecine interne"), ("SM32", "Pneumologie"),
               ("SM28", "Néphrologie"), ("SM40", "Rhumatologie"), ("SM33", "Psychiatrie"), ("SM19", "Gynécologie"),
               ("SM36", "Pédiatrie")]


# -- helpers ------------------------------------------------------------------------------------
def make_id(seed: int, *parts: object) -> str:
    """A stable UUID (v4 layout) for the given parts: same seed and parts, same id."""
    digest = hashlib.blake2b("|".join(map(str, (seed, *parts))).encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


def patient_id(index: int, seed: int = DEFAULT_SEED) -> str:
    return make_id(seed, "Patient", index)


def organization_count(patients: int) -> int:
    return max(6, patients // 100)


def practitioner_count(patients: int) -> int:
    return max(10, patients // 20)


def organization_id(index: int, seed: int = DEFAULT_SEED) -> str:
    return make_id(seed, "Organization", index)


def practitioner_id(index: int, seed: int = DEFAULT_SEED) -> str:
    return make_id(seed, "Practitioner", index)


def concept(system: str, code: str, display: str, text: str | None = None) -> dict:
    out: dict = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        out["text"] = text
    return out


def ref(rtype: str, rid: str, display: str | None = None) -> dict:
    out = {"reference": f"{rtype}/{rid}"}
    if display:
        out["display"] = display
    return out


def _offset(day: dt.date) -> str:
    """France: +02:00 in summer time (end of March to end of October), +01:00 otherwise (close enough)."""
    return "+02:00" if (4 <= day.month <= 10 or (day.month == 3 and day.day >= 27)) else "+01:00"


def date_time(day: dt.date, hour: int, minute: int) -> str:
    return f"{day.isoformat()}T{hour:02d}:{minute:02d}:00{_offset(day)}"


def _clock(rng: random.Random, day: dt.date, start: int = 8, end: int = 19) -> str:
    return date_time(day, rng.randrange(start, end), rng.randrange(0, 60, 5))


def _day_between(rng: random.Random, low: dt.date, high: dt.date) -> dt.date:
    span = (high - low).days
    return low + dt.timedelta(days=rng.randrange(span + 1)) if span > 0 else low


def _quantity(value: float | int, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _value(rng: random.Random, low: float, high: float, decimals: int) -> float | int:
    value = round(rng.uniform(low, high), decimals)
    return int(value) if decimals == 0 else value


def _nir(rng: random.Random, gender: str, birth: dt.date, dept: str, commune: str) -> str:
    """A well-formed 15-digit NIR (sex, year, month, place, order number, key = 97 - n mod 97)."""
    body = f"{1 if gender == 'male' else 2}{birth.year % 100:02d}{birth.month:02d}{dept}{commune}" \
           f"{rng.randrange(1, 1000):03d}"
    numeric = int(body.replace("2A", "19").replace("2B", "18"))
    return f"{body}{97 - numeric % 97:02d}"


def _ascii(text: str) -> str:
    return text.lower().translate(str.maketrans("éèêëàâäîïôöûüùçœ ", "eeeeaaaiioouuuco-"))


def _phone(rng: random.Random, mobile: bool = True) -> str:
    lead = rng.choice("67") if mobile else rng.choice("12345")
    return f"+33 {lead} " + " ".join(f"{rng.randrange(100):02d}" for _ in range(4))


# -- shared resources -----------------------------------------------------------------------------
def _organization_kind(index: int) -> str:
    return ("laboratory", "hospital", "practice", "laboratory", "practice")[index % 5]


def organization(index: int, seed: int = DEFAULT_SEED) -> dict:
    rng = random.Random(f"{seed}:Organization:{index}")
    city, postcode, _, _ = rng.choice(CITIES)
    kind = _organization_kind(index)
    if kind == "hospital":
        name = rng.choice(["Centre hospitalier", "Centre hospitalier universitaire", "Clinique"]) + f" de {city}"
        if index >= len(CITIES):
            name += f" {rng.choice(['Nord', 'Sud', 'Est', 'Ouest', 'Centre'])} {index // len(CITIES)}"
        org_type = ("prov", "Healthcare Provider")
    elif kind == "laboratory":
        name = f"Laboratoire de biologie médicale {rng.choice(FAMILY)} - {city}"
        org_type = ("prov", "Healthcare Provider")
    else:
        name = f"Maison de santé pluriprofessionnelle {rng.choice(STREETS).split(' ', 1)[1].title()} - {city}"
        org_type = ("prov", "Healthcare Provider")
    return {
        "resourceType": "Organization", "id": organization_id(index, seed),
        "identifier": [{"use": "official", "system": FINESS, "value": f"{postcode[:2]}0{rng.randrange(10**6):06d}"}],
        "active": True,
        "type": [concept("http://terminology.hl7.org/CodeSystem/organization-type", *org_type)],
        "name": name,
        "telecom": [{"system": "phone", "value": _phone(rng, mobile=False), "use": "work"}],
        "address": [{"use": "work", "type": "physical", "line": [f"{rng.randrange(1, 200)} {rng.choice(STREETS)}"],
                     "city": city, "postalCode": postcode, "country": "FR"}],
    }


def practitioner(index: int, seed: int = DEFAULT_SEED) -> dict:
    rng = random.Random(f"{seed}:Practitioner:{index}")
    gender = rng.choice(["female", "male"])
    given = rng.choice(FEMALE if gender == "female" else MALE)
    family = rng.choices(FAMILY, FAMILY_WEIGHTS)[0]
    specialty = SPECIALTIES[0] if index % 3 else rng.choice(SPECIALTIES[1:])
    return {
        "resourceType": "Practitioner", "id": practitioner_id(index, seed),
        "identifier": [{"use": "official", "system": RPPS, "value": f"10{rng.randrange(10**9):09d}"}],
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given], "prefix": ["Dr"]}],
        "telecom": [{"system": "phone", "value": _phone(rng, mobile=False), "use": "work"},
                    {"system": "email", "value": f"{_ascii(given)}.{_ascii(family)}@{rng.choice(MAIL_DOMAINS)}",
                     "use": "work"}],
        "gender": gender,
        "qualification": [{"code": concept("https://mos.esante.gouv.fr/NOS/TRE_R38-SpecialiteOrdinale/FHIR/"
                                           "TRE-R38-SpecialiteOrdinale", *specialty)}],
    }


def shared_resources(patients: int, seed: int = DEFAULT_SEED) -> Iterator[dict]:
    for index in range(organization_count(patients)):
        yield organization(index, seed)
    for index in range(practitioner_count(patients)):
        yield practitioner(index, seed)


# -- one patient's record ----------------------------------------------------------------------------
class _Record:
    """Builds one patient's resources; every id derives from (seed, patient index, serial number)."""

    def __init__(self, index: int, patients: int, seed: int):
        self.index, self.seed = index, seed
        self.rng = random.Random(f"{seed}:patient:{index}")
        self.serial = 0
        self.out: list[dict] = []
        n_org, n_prac = organization_count(patients), practitioner_count(patients)
        rng = self.rng
        self.orgs = [organization_id(i, seed) for i in sorted(rng.sample(range(n_org), min(3, n_org)))]
        self.labs = [organization_id(i, seed) for i in range(n_org) if _organization_kind(i) == "laboratory"]
        self.lab = rng.choice(self.labs)
        generalists = [i for i in range(n_prac) if i % 3]
        self.gp = practitioner_id(rng.choice(generalists), seed)
        self.specialists = [practitioner_id(i, seed) for i in rng.sample(range(n_prac), min(3, n_prac))]

    def new_id(self, rtype: str) -> str:
        self.serial += 1
        return make_id(self.seed, self.index, rtype, self.serial)

    def add(self, resource: dict) -> dict:
        self.out.append(resource)
        return resource

    # -- the patient ---------------------------------------------------------------------------
    def patient(self) -> None:
        rng = self.rng
        gender = rng.choice(["female", "male"])
        # an ageing population: more people born 1940-1990 than before or after
        birth = dt.date(1930, 1, 1) + dt.timedelta(days=int(rng.triangular(0, (TODAY - dt.date(1930, 1, 1)).days,
                                                                            (dt.date(1965, 1, 1)
                                                                             - dt.date(1930, 1, 1)).days)))
        self.birth, self.gender = birth, gender
        self.age = (TODAY - birth).days / 365.25
        given = rng.sample(FEMALE if gender == "female" else MALE, rng.choice([1, 1, 1, 2]))
        family = rng.choices(FAMILY, FAMILY_WEIGHTS)[0]
        city, postcode, dept, commune = rng.choice(CITIES)
        self.pid = patient_id(self.index, self.seed)
        self.family, self.given = family, given
        self.nir = _nir(rng, gender, birth, dept, commune)
        self.subject = ref("Patient", self.pid, f"{given[0]} {family.upper()}")
        patient = {
            "resourceType": "Patient", "id": self.pid,
            "identifier": [{"use": "official",
                            "type": concept("http://interopsante.org/fhir/CodeSystem/fr-v2-0203", "INS-NIR",
                                            "NIR définitif"),
                            "system": INS_NIR, "value": self.nir}],
            "active": True,
            "name": [{"use": "official", "family": family, "given": given}],
            "telecom": [{"system": "phone", "value": _phone(rng), "use": "mobile"},
                        {"system": "email", "value": f"{_ascii(given[0])}.{_ascii(family)}{rng.randrange(100)}@"
                                                     f"{rng.choice(MAIL_DOMAINS)}", "use": "home"}],
            "gender": gender,
            "birthDate": birth.isoformat(),
            "address": [{"use": "home", "type": "physical",
                         "line": [f"{rng.randrange(1, 180)} {rng.choice(STREETS)}"],
                         "city": city, "postalCode": postcode, "country": "FR"}],
            "communication": [{"language": concept("urn:ietf:bcp:47", "fr-FR", "French (France)"), "preferred": True}],
            "generalPractitioner": [ref("Practitioner", self.gp)],
            "managingOrganization": ref("Organization", self.orgs[0]),
        }
        if gender == "female" and self.age > 25 and rng.random() < 0.4:
            patient["name"].append({"use": "maiden", "family": rng.choices(FAMILY, FAMILY_WEIGHTS)[0],
                                    "given": given})
        self.add(patient)
        self.start = max(HISTORY_START, birth)

    # -- conditions, treatments, allergies, immunizations -----------------------------------------
    def conditions(self) -> list[tuple[dict, list, dt.date, dt.date | None]]:
        rng, decades = self.rng, max(0.0, (self.age - 20) / 10)
        made = []
        for snomed, display, icd10, text, base, per_decade, drugs in CHRONIC:
            if self.age < 18 and base == 0:
                continue
            if rng.random() < min(0.8, base + per_decade * decades):
                onset = _day_between(rng, max(self.birth + dt.timedelta(days=365 * min(18, int(self.age))),
                                              dt.date(1995, 1, 1)), TODAY - dt.timedelta(days=30))
                made.append((self._condition(snomed, display, icd10, text, onset, None), drugs, onset, None))
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            snomed, display, icd10, text, drugs = rng.choice(ACUTE)
            onset = _day_between(rng, self.start, TODAY - dt.timedelta(days=20))
            end = onset + dt.timedelta(days=rng.randrange(5, 20))
            made.append((self._condition(snomed, display, icd10, text, onset, end), drugs, onset, end))
        return made

    def _condition(self, snomed: str, display: str, icd10: str, text: str, onset: dt.date,
                   end: dt.date | None) -> dict:
        rng = self.rng
        status = "resolved" if end else rng.choices(["active", "remission"], [12, 1])[0]
        sev = rng.choice(SEVERITY)
        condition = {
            "resourceType": "Condition", "id": self.new_id("Condition"),
            "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/condition-clinical", status,
                                      status.capitalize()),
            "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed",
                                          "Confirmed"),
            "category": [concept("http://terminology.hl7.org/CodeSystem/condition-category",
                                 "encounter-diagnosis" if end else "problem-list-item",
                                 "Encounter Diagnosis" if end else "Problem List Item")],
            "severity": concept(SNOMED, sev[0], sev[1], sev[2]),
            "code": {"coding": [{"system": SNOMED, "code": snomed, "display": display},
                                {"system": ICD10, "code": icd10}], "text": text},
            "subject": self.subject,
            "onsetDateTime": _clock(rng, onset),
            "recordedDate": _clock(rng, onset + dt.timedelta(days=rng.randrange(0, 15))
                                   if onset + dt.timedelta(days=15) < TODAY else onset),
            "recorder": ref("Practitioner", self.gp),
        }
        if end:
            condition["abatementDateTime"] = _clock(rng, end)
        return self.add(condition)

    def medications(self, conditions: list) -> None:
        rng = self.rng
        for condition, drugs, onset, end in conditions:
            for atc, name, cip, dosage in drugs:
                if end is None and rng.random() < 0.15:
                    continue  # not treated with this one
                if end:  # one short course
                    periods = [(onset, end)]
                else:  # renewed prescriptions: a statement per period of one to three years
                    periods, start = [], max(onset, HISTORY_START)
                    while start < TODAY and len(periods) < 12:
                        stop = start + dt.timedelta(days=rng.randrange(365, 3 * 365))
                        periods.append((start, min(stop, TODAY) if stop < TODAY else None))
                        start = stop
                for start, stop in periods:
                    statement = {
                        "resourceType": "MedicationStatement", "id": self.new_id("MedicationStatement"),
                        "status": "completed" if stop else "active",
                        "medicationCodeableConcept": {"coding": [{"system": ATC, "code": atc},
                                                                 {"system": CIP13, "code": cip, "display": name}],
                                                      "text": name},
                        "subject": self.subject,
                        "effectivePeriod": {"start": start.isoformat(), **({"end": stop.isoformat()} if stop else {})},
                        "dateAsserted": _clock(rng, start),
                        "informationSource": ref("Practitioner", self.gp),
                        "reasonReference": [ref("Condition", condition["id"])],
                        "dosage": [{"text": dosage, "route": concept(SNOMED, "26643006", "Oral route", "Voie orale")
                                    if "inhalation" not in name and "Insuline" not in name else
                                    concept(SNOMED, "447694001", "Respiratory tract route", "Voie inhalée")
                                    if "inhalation" in name else
                                    concept(SNOMED, "34206005", "Subcutaneous route", "Voie sous-cutanée")}],
                    }
                    self.add(statement)

    def allergies(self) -> None:
        rng = self.rng
        for _ in range(rng.choices([0, 1, 2, 3], [55, 30, 11, 4])[0]):
            code, display, text, category, _ = rng.choices(ALLERGIES, [a[4] for a in ALLERGIES])[0]
            manifestation = rng.choice(MANIFESTATIONS)
            severe = manifestation[0] == "39579001"
            self.add({
                "resourceType": "AllergyIntolerance", "id": self.new_id("AllergyIntolerance"),
                "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                                          "active", "Active"),
                "verificationStatus": concept(
                    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "confirmed", "Confirmed"),
                "type": "allergy", "category": [category],
                "criticality": "high" if severe else rng.choice(["low", "low", "high"]),
                "code": concept(SNOMED, code, display, text),
                "patient": self.subject,
                "recordedDate": _clock(rng, _day_between(rng, self.start, TODAY)),
                "recorder": ref("Practitioner", self.gp),
                "reaction": [{"manifestation": [concept(SNOMED, *manifestation)],
                              "severity": "severe" if severe else rng.choice(["mild", "moderate"])}],
            })

    def immunizations(self) -> None:
        rng = self.rng
        shots: list[tuple[tuple, dt.date]] = []
        if self.age >= 65 or rng.random() < 0.15:  # seasonal flu
            for year in range(max(self.start.year, 2008), 2025):
                if rng.random() < 0.55:
                    shots.append((VACCINES[0], dt.date(year, rng.choice([10, 11, 12]), rng.randrange(1, 29))))
        if self.age >= 12:
            for when in (dt.date(2021, 3, 1), dt.date(2021, 6, 1), dt.date(2022, 1, 1)):
                if rng.random() < (0.8 if self.age > 40 else 0.6):
                    shots.append((VACCINES[1], when + dt.timedelta(days=rng.randrange(90))))
        if rng.random() < 0.3:
            shots.append((VACCINES[2], _day_between(rng, self.start, TODAY)))
        if self.age >= 65 and rng.random() < 0.3:
            shots.append((VACCINES[3], _day_between(rng, self.start, TODAY)))
        if self.age < 30:
            for vaccine in VACCINES[4:]:
                if self.birth >= HISTORY_START and rng.random() < 0.9:
                    shots.append((vaccine, min(TODAY, self.birth + dt.timedelta(days=rng.randrange(60, 500)))))
        for (atc, french, display), day in shots:
            if day < self.start or day > TODAY:
                continue
            self.add({
                "resourceType": "Immunization", "id": self.new_id("Immunization"),
                "status": "completed",
                "vaccineCode": {"coding": [{"system": ATC, "code": atc, "display": display}], "text": french},
                "patient": self.subject,
                "occurrenceDateTime": _clock(rng, day),
                "primarySource": True,
                "lotNumber": f"{rng.choice('ABCDEFGHKMNPRSTX')}{rng.randrange(10**5):05d}",
                "performer": [{"actor": ref("Practitioner", self.gp)}],
            })

    # -- encounters and what happens at them ---------------------------------------------------------
    def encounters(self, chronic_codes: set[str]) -> None:
        rng = self.rng
        years = max(0.5, (TODAY - self.start).days / 365.25)
        rate = 0.5 + 0.012 * self.age + 0.35 * len(chronic_codes)  # encounters per year
        count = max(1, min(150, round(rng.gammavariate(2.0, 0.5) * rate * years * 0.40)))
        days = sorted(_day_between(rng, self.start, TODAY) for _ in range(count))
        for day in days:
            cls = rng.choices(["AMB", "EMER", "IMP"], [88, 8, 4])[0]
            self._encounter(day, cls, chronic_codes)

    def _encounter(self, day: dt.date, cls: str, chronic: set[str]) -> None:
        rng = self.rng
        code, display, text = rng.choice(ENCOUNTER_TYPES[cls])
        practitioner = self.gp if cls == "AMB" and rng.random() < 0.75 else rng.choice(self.specialists)
        org = self.orgs[0] if cls == "AMB" else rng.choice(self.orgs)
        start = _clock(rng, day, 0 if cls != "AMB" else 8, 24 if cls != "AMB" else 19)
        end_day = day + dt.timedelta(days=rng.randrange(1, 12)) if cls == "IMP" else day
        end_day = min(end_day, TODAY)
        end = _clock(rng, end_day, 8, 19) if end_day > day else start[:11] + \
            f"{min(23, int(start[11:13]) + 1):02d}" + start[13:]
        encounter_id = self.new_id("Encounter")
        encounter = {
            "resourceType": "Encounter", "id": encounter_id,
            "status": "finished",
            "class": {"system": ACT_CODE, "code": cls, "display": CLASS_DISPLAY[cls]},
            "type": [concept(SNOMED, code, display, text)],
            "subject": self.subject,
            "participant": [{"individual": ref("Practitioner", practitioner)}],
            "period": {"start": start, "end": end},
            "serviceProvider": ref("Organization", org),
        }
        self.add(encounter)
        context = ref("Encounter", encounter_id)
        taken = start
        # vital signs
        if rng.random() < 0.8:
            self._blood_pressure(context, taken, practitioner)
        for code, display, text, unit, low, high, decimals, probability in VITALS:
            if rng.random() < probability:
                self._observation("vital-signs", code, display, text, unit, _value(rng, low, high, decimals),
                                  context, taken, practitioner)
        # lab work
        lab_visit = rng.random() < (0.25 if cls == "AMB" else 0.9)
        if lab_visit:
            self._lab_visit(day, context, chronic)
        # a document
        doc_probability = {"AMB": 0.2, "EMER": 0.8, "IMP": 0.95}[cls]
        if rng.random() < doc_probability:
            self._document(day, cls, context, practitioner, org, end)

    def _blood_pressure(self, context: dict, taken: str, performer: str) -> None:
        rng = self.rng
        systolic = rng.randrange(100, 175)
        diastolic = max(50, min(systolic - 25, rng.randrange(55, 105)))
        code, display, text = BLOOD_PRESSURE
        self.add({
            "resourceType": "Observation", "id": self.new_id("Observation"),
            "status": "final",
            "category": [concept(OBS_CATEGORY, "vital-signs", "Vital Signs")],
            "code": concept(LOINC, code, display, text),
            "subject": self.subject, "encounter": context,
            "effectiveDateTime": taken, "performer": [ref("Practitioner", performer)],
            "component": [{"code": concept(LOINC, "8480-6", "Systolic blood pressure", "Pression systolique"),
                           "valueQuantity": _quantity(systolic, "mm[Hg]")},
                          {"code": concept(LOINC, "8462-4", "Diastolic blood pressure", "Pression diastolique"),
                           "valueQuantity": _quantity(diastolic, "mm[Hg]")}],
        })

    def _observation(self, category: str, code: str, display: str, text: str, unit: str, value: float | int,
                     context: dict, taken: str, performer: str, ref_range: tuple | None = None,
                     issued: str | None = None, performer_type: str = "Practitioner") -> dict:
        obs = {
            "resourceType": "Observation", "id": self.new_id("Observation"),
            "status": "final",
            "category": [concept(OBS_CATEGORY, category, "Vital Signs" if category == "vital-signs" else "Laboratory")],
            "code": concept(LOINC, code, display, text),
            "subject": self.subject, "encounter": context,
            "effectiveDateTime": taken,
            "performer": [ref(performer_type, performer)],
            "valueQuantity": _quantity(value, unit),
        }
        if issued:
            obs["issued"] = issued
        if ref_range:
            low, high = ref_range
            flag = "H" if value > high else "L" if value < low else "N"
            obs["interpretation"] = [concept(INTERPRETATION, flag, {"H": "High", "L": "Low", "N": "Normal"}[flag])]
            obs["referenceRange"] = [{"low": _quantity(low, unit), "high": _quantity(high, unit)}]
        return self.add(obs)

    def _lab_visit(self, day: dt.date, context: dict, chronic: set[str]) -> None:
        rng = self.rng
        sampled = _clock(rng, day, 7, 11)
        issued_day = min(TODAY, day + dt.timedelta(days=rng.choice([0, 1, 1, 2])))
        issued = f"{issued_day.isoformat()}T{rng.randrange(12, 20):02d}:{rng.randrange(60):02d}:00.000" \
                 f"{_offset(issued_day)}"
        panels = []
        for code, display, text, results, probability in PANELS:
            if code == "4548-4" and "44054006" in chronic:
                probability = 0.8
            elif code == "57698-3" and chronic & {"55822004", "44054006", "414545008"}:
                probability = 0.6
            elif code == "3016-3" and "40930008" in chronic:
                probability = 0.8
            if rng.random() < probability:
                panels.append((code, display, text, results))
        if rng.random() < 0.12:
            rare = rng.choices(RARE_TESTS, RARE_TEST_WEIGHTS)[0]
            panels.append((rare, LAB[rare][0], LAB[rare][1], [rare]))
        for code, display, text, results in panels:
            observations = []
            for result in results:
                r_display, r_text, unit, low, high, decimals, ref_range = LAB[result]
                observations.append(self._observation("laboratory", result, r_display, r_text, unit,
                                                      _value(rng, low, high, decimals), context, sampled, self.lab,
                                                      ref_range, issued, "Organization"))
            self.add({
                "resourceType": "DiagnosticReport", "id": self.new_id("DiagnosticReport"),
                "status": "final",
                "category": [concept(V2_0074, "LAB", "Laboratory")],
                "code": concept(LOINC, code, display, text),
                "subject": self.subject, "encounter": context,
                "effectiveDateTime": sampled, "issued": issued,
                "performer": [ref("Organization", self.lab)],
                "result": [ref("Observation", o["id"]) for o in observations],
                "conclusion": rng.choice(["Résultats dans les normes.", "À contrôler dans trois mois.",
                                          "Résultats à interpréter dans le contexte clinique.",
                                          "Pas d'anomalie significative."]),
            })

    def _document(self, day: dt.date, cls: str, context: dict, author: str, org: str, end: str) -> None:
        rng = self.rng
        code, display, text, _ = next((d for d in DOCUMENT_TYPES if d[3] == cls and rng.random() < 0.6),
                                      next(d for d in DOCUMENT_TYPES if d[3] == cls))
        doc_id = self.new_id("DocumentReference")
        self.add({
            "resourceType": "DocumentReference", "id": doc_id,
            "status": "current",
            "type": concept(LOINC, code, display, text),
            "category": [concept("http://loinc.org", "47039-3" if cls == "IMP" else "11488-4",
                                 "Hospital Admission history and physical note" if cls == "IMP" else "Consult note")],
            "subject": self.subject,
            "date": end[:19] + ".000" + end[19:],
            "author": [ref("Practitioner", author)],
            "custodian": ref("Organization", org),
            "content": [{"attachment": {"contentType": "application/pdf", "language": "fr-FR",
                                        "url": f"https://documents.dmp.example.fr/{doc_id}.pdf",
                                        "size": rng.randrange(20_000, 900_000),
                                        "title": f"{text} du {day.strftime('%d/%m/%Y')}",
                                        "creation": end},
                         "format": {"system": "http://ihe.net/fhir/ValueSet/IHE.FormatCode.codesystem",
                                    "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                                    "display": "mimeType Sufficient"}}],
            "context": {"encounter": [context],
                        "period": {"start": day.isoformat(), "end": end[:10]},
                        "practiceSetting": concept(SNOMED, "394802001", "General medicine", "Médecine générale")},
        })

    def build(self) -> list[dict]:
        self.patient()
        conditions = self.conditions()
        self.medications(conditions)
        self.allergies()
        self.immunizations()
        chronic = {c["code"]["coding"][0]["code"] for c, _, _, end in conditions if end is None}
        self.encounters(chronic)
        return self.out


def patient_record(index: int, patients: int, seed: int = DEFAULT_SEED) -> list[dict]:
    """Every resource of patient ``index`` (the Patient first), exactly as :func:`generate` emits them."""
    return _Record(index, patients, seed).build()


def generate(patients: int, seed: int = DEFAULT_SEED, *, start: int = 0, shared: bool = True) -> Iterator[dict]:
    """Stream the data set: the shared Organizations and Practitioners, then each patient's record.

    ``start`` skips the first patients (their records are not built), e.g. to resume a load;
    ``shared=False`` leaves out the shared resources."""
    if shared:
        yield from shared_resources(patients, seed)
    for index in range(start, patients):
        yield from patient_record(index, patients, seed)


def loader_items(patients: int, seed: int = DEFAULT_SEED, **options) -> Iterator[tuple[str, dict]]:
    """``(where, resource)`` pairs for :class:`fhir_server.services.loader.Loader`."""
    for resource in generate(patients, seed, **options):
        yield f"{resource['resourceType']}/{resource['id']}", resource


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--stats", action="store_true", help="print counts per type instead of NDJSON")
    args = parser.parse_args(argv)
    if args.stats:
        counts: Counter = Counter()
        sizes: list[int] = []
        for index in range(args.patients):
            record = patient_record(index, args.patients, args.seed)
            counts.update(r["resourceType"] for r in record)
            sizes.append(len(record))
        counts.update(r["resourceType"] for r in shared_resources(args.patients, args.seed))
        total = sum(counts.values())
        sizes.sort()
        print(f"{total} resources for {args.patients} patients ({total / args.patients:.1f} per patient; "
              f"per-patient median {sizes[len(sizes) // 2]}, min {sizes[0]}, max {sizes[-1]})")
        for rtype, count in counts.most_common():
            print(f"  {rtype:<22}{count:>10}")
        return 0
    out = sys.stdout
    for resource in generate(args.patients, args.seed):
        out.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
