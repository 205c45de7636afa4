"""Index extraction: hand-checked entries, a fhirpathpy cross-check, odd data, UCUM, timing."""
from __future__ import annotations

import copy
import datetime as dt
import json
import math
import re
import pickle
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from fhir_server.definitions import Definitions
from fhir_server.model import jsonio
from fhir_server.search import ucum
from fhir_server.search.entries import (
    DATE_MAX, DATE_MIN, CompositeEntry, DateEntry, IndexEntries, NumberEntry, PackedIndex, QuantityEntry,
    ReferenceEntry, StringEntry, TokenEntry, UriEntry,
)
from fhir_server.search.extract import Indexer, parse_reference, precision_range
from fhir_server.search.parameters import SearchParameterRegistry

EXAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "search-examples"
UCUM = "http://unitsofmeasure.org"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
FR_V2_0203 = "http://interopsante.org/CodeSystem/v2-0203"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def us(*args: int, micro: int = 0) -> int:
    d = dt.datetime(*args, tzinfo=dt.timezone.utc)
    return (d - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1) + micro


def day(y: int, m: int, d: int) -> tuple[int, int]:
    start = us(y, m, d)
    return start, start + 86_400_000_000 - 1


def load(name: str) -> dict:
    return jsonio.loads((EXAMPLES / name).read_bytes())


@pytest.fixture(scope="module")
def definitions() -> Definitions:
    return Definitions()


@pytest.fixture(scope="module")
def indexer(definitions: Definitions) -> Indexer:
    return Indexer(SearchParameterRegistry(definitions))


@pytest.fixture()
def fresh_indexer(definitions: Definitions) -> Indexer:
    """An indexer over its own registry, for tests that add custom parameters."""
    return Indexer(SearchParameterRegistry(definitions))


def of(entries: IndexEntries, param: str) -> list:
    out = []
    for bucket in (entries.tokens, entries.strings, entries.dates, entries.numbers, entries.quantities,
                   entries.references, entries.uris, entries.composites):
        out.extend(e for e in bucket if e.param == param)
    return out


# -- Patient ---------------------------------------------------------------------------------------

def test_patient_example(indexer: Indexer) -> None:
    e = indexer.index(load("Patient-example.json"))
    assert of(e, "_id") == [], "_id is searched on the resource's own id, not indexed"
    assert of(e, "gender") == [TokenEntry("gender", None, "male")]
    assert of(e, "active") == [TokenEntry("active", None, "true")]
    assert of(e, "birthdate") == [DateEntry("birthdate", *day(1974, 12, 25))]
    assert of(e, "identifier") == [TokenEntry("identifier", "urn:oid:1.2.36.146.595.217.0.1", "12345")]
    assert of(e, "identifier:of-type") == [
        TokenEntry("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203", "MR|12345")]
    # name: one entry per part of every HumanName (family, given...), normalised and exact
    assert {(s.normalized, s.exact) for s in of(e, "name")} == {
        ("chalmers", "Chalmers"), ("peter", "Peter"), ("james", "James"), ("jim", "Jim"),
        ("windsor", "Windsor")}
    assert {s.exact for s in of(e, "given")} == {"Peter", "James", "Jim"}
    assert {s.exact for s in of(e, "family")} == {"Chalmers", "Windsor"}
    # telecom: ContactPoint -> value as code; phone/email filter on ContactPoint.system
    assert {t.code for t in of(e, "phone")} == {"(03) 5555 6473", "(03) 3410 5613", "(03) 5555 8834"}
    assert of(e, "email") == []
    assert all(t.system is None for t in of(e, "telecom"))
    assert {s.exact for s in of(e, "address-city")} == {"PleasantVille"}
    assert StringEntry("address", "534 erewhon st", "534 Erewhon St") in of(e, "address")
    assert of(e, "address-use") == [TokenEntry("address-use", None, "home")]
    assert of(e, "organization") == [ReferenceEntry("organization", "Organization", "1")]
    # no deceased[x]: "deceased.exists() and deceased != false" evaluates to false
    assert of(e, "deceased") == [TokenEntry("deceased", None, "false")]
    assert of(e, "death-date") == []


PATIENT = {
    "resourceType": "Patient", "id": "p1",
    "meta": {"lastUpdated": "2024-03-01T12:00:00.123Z", "versionId": "3",
             "profile": ["http://example.org/StructureDefinition/fr-patient|1.2"],
             "tag": [{"system": "http://example.org/tags", "code": "vip", "display": "V.I.P."}],
             "security": [{"system": CONFIDENTIALITY, "code": "R"}],
             "source": "urn:dmp:source:1"},
    "identifier": [{"use": "official", "system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1234567890123",
                    "type": {"coding": [{"system": FR_V2_0203, "code": "NH"}],
                             "text": "N° d'inscription au Répertoire"}}],
    "name": [{"family": "Jones", "given": ["John", "Émile"], "prefix": ["Mr"]}],
    "telecom": [{"system": "email", "value": "john@example.org"}, {"system": "phone", "value": "+33 1 02"}],
    "gender": "male",
    "birthDate": "1980-02",
    "deceasedDateTime": "2020-03-04T10:11:12+01:00",
    "generalPractitioner": [{"reference": "Practitioner/dr1"},
                            {"reference": "https://other.example.org/fhir/PractitionerRole/r9/_history/2"},
                            {"identifier": {"system": "urn:oid:1.2.250.1.71.4.2.1",
                                            "value": "810000000001"}}],
}


def test_patient_hand_made(indexer: Indexer) -> None:
    e = indexer.index(PATIENT)
    assert of(e, "_lastUpdated") == [], "_lastUpdated is searched on the stored version's own time"
    assert of(e, "_profile") == [UriEntry("_profile",
                                          "http://example.org/StructureDefinition/fr-patient|1.2")]
    assert of(e, "_source") == [UriEntry("_source", "urn:dmp:source:1")]
    assert of(e, "_tag") == [TokenEntry("_tag", "http://example.org/tags", "vip", "v.i.p.")]
    assert of(e, "_security") == [TokenEntry("_security", CONFIDENTIALITY, "R")]
    assert of(e, "identifier") == [TokenEntry("identifier", "urn:oid:1.2.250.1.213.1.4.8", "1234567890123",
                                              "n° d'inscription au repertoire")]
    assert of(e, "identifier:of-type") == [TokenEntry("identifier:of-type", FR_V2_0203, "NH|1234567890123")]
    # `name=Jo` matches given John and family Jones: one StringEntry per part
    assert [s for s in of(e, "name") if s.normalized.startswith("jo")] == [
        StringEntry("name", "jones", "Jones"), StringEntry("name", "john", "John")]
    assert StringEntry("name", "emile", "Émile") in of(e, "name")
    assert StringEntry("name", "mr", "Mr") in of(e, "name")
    assert of(e, "email") == [TokenEntry("email", None, "john@example.org")]
    assert of(e, "phone") == [TokenEntry("phone", None, "+33 1 02")]
    assert len(of(e, "telecom")) == 2
    low, _ = day(1980, 2, 1)
    assert of(e, "birthdate") == [DateEntry("birthdate", low, day(1980, 2, 29)[1])]
    assert of(e, "deceased") == [TokenEntry("deceased", None, "true")]
    assert of(e, "death-date") == [DateEntry("death-date", us(2020, 3, 4, 9, 11, 12),
                                             us(2020, 3, 4, 9, 11, 12, micro=999_999))]
    assert of(e, "general-practitioner") == [
        ReferenceEntry("general-practitioner", "Practitioner", "dr1"),
        ReferenceEntry("general-practitioner", "PractitionerRole", "r9",
                       "https://other.example.org/fhir/PractitionerRole/r9", "2"),
    ]
    assert of(e, "general-practitioner:identifier") == [
        TokenEntry("general-practitioner:identifier", "urn:oid:1.2.250.1.71.4.2.1", "810000000001")]


@pytest.mark.parametrize(("deceased", "expected"), [
    ({"deceasedBoolean": True}, "true"),
    ({"deceasedBoolean": False}, "false"),
    ({"deceasedDateTime": "2020"}, "true"),
    ({}, "false"),
])
def test_patient_deceased(indexer: Indexer, deceased: dict, expected: str) -> None:
    e = indexer.index({"resourceType": "Patient", "id": "x", **deceased})
    assert of(e, "deceased") == [TokenEntry("deceased", None, expected)]


# -- Observation -----------------------------------------------------------------------------------

def test_observation_example(indexer: Indexer) -> None:
    e = indexer.index(load("Observation-example.json"))
    assert {(t.system, t.code) for t in of(e, "code")} == {
        (LOINC, "29463-7"), (LOINC, "3141-9"), (SNOMED, "27113001"),
        ("http://acme.org/devices/clinical-codes", "body-weight")}
    assert TokenEntry("code", LOINC, "29463-7", "body weight") in of(e, "code")
    assert of(e, "date") == [DateEntry("date", *day(2016, 3, 28))]
    assert of(e, "subject") == [ReferenceEntry("subject", "Patient", "example")]
    assert of(e, "patient") == [ReferenceEntry("patient", "Patient", "example")]
    assert of(e, "encounter") == [ReferenceEntry("encounter", "Encounter", "example")]
    lb = 453.59237
    [q] = of(e, "value-quantity")
    assert (q.low, q.high, q.system, q.code, q.canonical_code) == (184.5, 185.5, UCUM, "[lb_av]", "g")
    assert q.canonical_low == pytest.approx(184.5 * lb) and q.canonical_high == pytest.approx(185.5 * lb)
    composites = of(e, "code-value-quantity")
    assert len(composites) == 4  # 4 codings x 1 quantity
    loinc_weight = TokenEntry("code", LOINC, "29463-7", "body weight")
    assert CompositeEntry("code-value-quantity", (loinc_weight, q)) in composites
    assert of(e, "code-value-concept") == [] and of(e, "value-concept") == []


def test_packed_entries_cross_a_process_boundary_unchanged(indexer: Indexer) -> None:
    """What a bulk import's worker process sends: the entries as tuples, rebuilt identical on first access."""
    e = indexer.index(load("Observation-example.json"))
    packed = pickle.loads(pickle.dumps(PackedIndex.of(e)))
    assert packed == e and packed.unpacked() == e
    assert packed.quantities == e.quantities and packed.composites == e.composites
    assert packed.params() == e.params()
    assert PackedIndex.of(packed) is packed


OBSERVATION = {
    "resourceType": "Observation", "id": "o1", "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                              "code": "laboratory"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose"}],
             "text": "Glycémie"},
    "subject": {"reference": "Group/g1"},
    "effectivePeriod": {"start": "2021-06-01T08:00:00Z", "end": "2021-06-01T09:30:00Z"},
    "valueQuantity": {"value": Decimal("95.0"), "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
}


def test_observation_hand_made(indexer: Indexer) -> None:
    e = indexer.index(OBSERVATION)
    assert of(e, "code") == [TokenEntry("code", LOINC, "2339-0", "glucose"),
                             TokenEntry("code", None, None, "glycemie")]
    assert of(e, "date") == [DateEntry("date", us(2021, 6, 1, 8), us(2021, 6, 1, 9, 30, micro=999_999))]
    assert of(e, "subject") == [ReferenceEntry("subject", "Group", "g1")]
    assert of(e, "patient") == []  # restricted to Patient targets
    [q] = of(e, "value-quantity")
    assert (q.low, q.high, q.code, q.canonical_code) == (94.95, 95.05, "mg/dL", "g.m-3")
    assert q.canonical_low == pytest.approx(949.5) and q.canonical_high == pytest.approx(950.5)
    # composite: the text-only token does not take part
    [c] = of(e, "code-value-quantity")
    assert c.components == (TokenEntry("code", LOINC, "2339-0", "glucose"), q)
    assert of(e, "value-string") == []


def test_observation_other_value_types(indexer: Indexer) -> None:
    base = {"resourceType": "Observation", "id": "o2", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "x"}]}}
    e = indexer.index({**base, "valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "260385009"}],
                                                         "text": "Négatif"}})
    assert TokenEntry("value-concept", "http://snomed.info/sct", "260385009") in of(e, "value-concept")
    assert of(e, "value-string") == [StringEntry("value-string", "negatif", "Négatif")]
    assert of(e, "code-value-concept") == [CompositeEntry("code-value-concept", (
        TokenEntry("code", LOINC, "x"), TokenEntry("value-concept", SNOMED, "260385009")))]
    e = indexer.index({**base, "valueString": "Trace"})
    assert of(e, "value-string") == [StringEntry("value-string", "trace", "Trace")]
    assert of(e, "code-value-string") == [CompositeEntry("code-value-string", (
        TokenEntry("code", LOINC, "x"), StringEntry("value-string", "trace", "Trace")))]
    e = indexer.index({**base, "valueDateTime": "2021-01-02"})
    assert of(e, "value-date") == [DateEntry("value-date", *day(2021, 1, 2))]
    assert of(e, "code-value-date") == [CompositeEntry("code-value-date", (
        TokenEntry("code", LOINC, "x"), DateEntry("value-date", *day(2021, 1, 2))))]
    e = indexer.index({**base, "valueQuantity": {"value": 5, "comparator": "<", "system": UCUM,
                                                 "code": "mmol/L"}})
    [q] = of(e, "value-quantity")
    assert q.low == -math.inf and q.high == 5.5 and q.canonical_code == "m-3.mol"
    assert q.canonical_high == pytest.approx(5.5)


def test_observation_components(indexer: Indexer) -> None:
    e = indexer.index(load("Observation-blood-pressure.json"))
    systolic = TokenEntry("component-code", "http://loinc.org", "8480-6", "systolic blood pressure")
    diastolic = TokenEntry("component-code", "http://loinc.org", "8462-4", "diastolic blood pressure")
    assert systolic in of(e, "component-code") and diastolic in of(e, "component-code")
    by_code = {c.components[0].code: c.components[1] for c in of(e, "component-code-value-quantity")}
    assert (by_code["8480-6"].low, by_code["8480-6"].high) == (106.5, 107.5)
    assert (by_code["8462-4"].low, by_code["8462-4"].high) == (59.5, 60.5)
    assert by_code["8480-6"].code == "mm[Hg]"
    # combo-*: the Observation itself and its components
    combo = {t.code for t in of(e, "combo-code")}
    assert {"85354-9", "8480-6", "8462-4"} <= combo
    assert len(of(e, "combo-code-value-quantity")) == 4  # systolic (3 codings) + diastolic
    # never pairs a component's code with another component's value
    pairs = {(c.components[0].code, c.components[1].low) for c in of(e, "combo-code-value-quantity")}
    assert ("8462-4", 106.5) not in pairs and ("8480-6", 59.5) not in pairs
    assert of(e, "_profile") == [UriEntry("_profile", "http://hl7.org/fhir/StructureDefinition/vitalsigns")]
    assert of(e, "based-on:identifier") == [
        TokenEntry("based-on:identifier", "https://acme.org/identifiers", "1234")]


# -- Condition, AllergyIntolerance, MedicationStatement ---------------------------------------------

def test_condition_example(indexer: Indexer) -> None:
    e = indexer.index(load("Condition-example.json"))
    assert of(e, "onset-date") == [DateEntry("onset-date", *day(2012, 5, 24))]  # onset.as(dateTime)
    assert of(e, "code") == [TokenEntry("code", "http://snomed.info/sct", "39065001", "burn of ear"),
                             TokenEntry("code", None, None, "burnt ear")]
    assert of(e, "clinical-status") == [
        TokenEntry("clinical-status", "http://terminology.hl7.org/CodeSystem/condition-clinical", "active")]
    assert of(e, "subject") == [ReferenceEntry("subject", "Patient", "example")]
    assert of(e, "patient") == [ReferenceEntry("patient", "Patient", "example")]


def test_condition_onset_variants(indexer: Indexer) -> None:
    base = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"}}
    e = indexer.index({**base, "onsetPeriod": {"start": "2019-05"}})
    assert of(e, "onset-date") == [DateEntry("onset-date", us(2019, 5, 1), DATE_MAX)]
    e = indexer.index({**base, "onsetAge": {"value": 40, "unit": "years", "system": UCUM, "code": "a"}})
    [q] = of(e, "onset-age")
    assert (q.low, q.high, q.code, q.canonical_code) == (39.5, 40.5, "a", "s")
    assert q.canonical_low == pytest.approx(39.5 * 31557600)
    assert of(e, "onset-date") == []
    e = indexer.index({**base, "onsetRange": {"low": {"value": 20, "system": UCUM, "code": "a"},
                                              "high": {"value": Decimal("30.5"), "system": UCUM,
                                                       "code": "a"}}})
    [q] = of(e, "onset-age")
    assert (q.low, q.high, q.code) == (19.5, 30.55, "a")
    e = indexer.index({**base, "onsetString": "Childhood", "abatementPeriod": {"end": "2001-01-01"}})
    assert of(e, "onset-info") == [StringEntry("onset-info", "childhood", "Childhood")]
    assert of(e, "abatement-date") == [DateEntry("abatement-date", DATE_MIN, day(2001, 1, 1)[1])]


def test_allergy_clinical_status(indexer: Indexer) -> None:
    e = indexer.index(load("AllergyIntolerance-example.json"))
    assert of(e, "clinical-status") == [TokenEntry(
        "clinical-status", "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active",
        "active")]
    assert of(e, "criticality") == [TokenEntry("criticality", None, "high")]
    assert {t.code for t in of(e, "code")} == {"227493005", "1160593"}  # code | reaction.substance
    assert of(e, "patient") == [ReferenceEntry("patient", "Patient", "example")]
    assert set(of(e, "onset")) == {DateEntry("onset", *day(2012, 6, 12)),
                                   DateEntry("onset", us(2004, 1, 1), us(2005, 1, 1) - 1)}


def test_medication_statement_codeable_concept(indexer: Indexer) -> None:
    e = indexer.index(load("MedicationStatement-example003.json"))
    assert of(e, "code") == [TokenEntry("code", None, None, "little pink pill for water retention")]
    assert of(e, "medication") == []
    assert of(e, "effective") == [DateEntry("effective", *day(2014, 2, 1))]
    assert of(e, "subject") == [ReferenceEntry("subject", "Patient", "pat1")]


def test_medication_statement_reference(indexer: Indexer) -> None:
    ms = {"resourceType": "MedicationStatement", "id": "m", "status": "active",
          "medicationReference": {"reference": "Medication/med1"}, "subject": {"reference": "Patient/p"}}
    e = indexer.index(ms)
    assert of(e, "medication") == [ReferenceEntry("medication", "Medication", "med1")]
    assert of(e, "code") == []
    contained = dict(ms, medicationReference={"reference": "#med0309"}, contained=[
        {"resourceType": "Medication", "id": "med0309", "code": {"coding": [{"system": "x", "code": "y"}]}}])
    assert of(indexer.index(contained), "medication") == []  # contained references are skipped


# -- DocumentReference, Encounter ------------------------------------------------------------------

def test_document_reference_relatesto(indexer: Indexer) -> None:
    e = indexer.index(load("DocumentReference-example.json"))
    assert of(e, "relatesto") == [ReferenceEntry("relatesto", "DocumentReference", "example")]
    assert of(e, "relation") == [TokenEntry("relation", None, "appends")]
    # composite in the declared component order: (relatesto, relation); the R4 component
    # expressions are swapped in the definitions and are corrected by the extractor
    assert of(e, "relationship") == [CompositeEntry("relationship", (
        ReferenceEntry("relatesto", "DocumentReference", "example"),
        TokenEntry("relation", None, "appends")))]
    assert of(e, "author") == [ReferenceEntry("author", "Practitioner", "xcda1")]  # '#a2' skipped
    assert of(e, "related:identifier") == [
        TokenEntry("related:identifier", "urn:ietf:rfc:3986", "urn:oid:1.3.6.1.4.1.21367.2005.3.7.2345")]
    assert of(e, "location") == [
        UriEntry("location", "http://example.org/xds/mhd/Binary/07a6483f-732b-461e-86b6-edb665c45510")]
    assert of(e, "period") == [DateEntry("period", us(2004, 12, 22, 21),
                                         us(2004, 12, 22, 21, 1, micro=999_999))]
    assert of(e, "description") == [StringEntry("description", "physical", "Physical")]


def test_encounter_date_period(indexer: Indexer) -> None:
    e = indexer.index(load("Encounter-home.json"))
    # 2015-01-17T16:00:00+10:00 .. 16:30:00+10:00
    assert of(e, "date") == [DateEntry("date", us(2015, 1, 17, 6), us(2015, 1, 17, 6, 30, micro=999_999))]
    assert of(e, "practitioner") == [ReferenceEntry("practitioner", "Practitioner", "example")]
    e = indexer.index({"resourceType": "Encounter", "id": "e", "status": "in-progress",
                       "period": {"start": "2024-01-01T10:00:00Z"}})
    assert of(e, "date") == [DateEntry("date", us(2024, 1, 1, 10), DATE_MAX)]


# -- canonical, uri, references -----------------------------------------------------------------------

def test_canonical_and_uri(indexer: Indexer) -> None:
    e = indexer.index({"resourceType": "Procedure", "id": "p", "status": "completed",
                       "subject": {"reference": "Patient/x"},
                       "instantiatesCanonical": ["http://example.org/fhir/PlanDefinition/kidney|2.1",
                                                 "http://example.org/fhir/ActivityDefinition/a"],
                       "instantiatesUri": ["http://example.org/protocol.pdf"]})
    assert of(e, "instantiates-canonical") == [
        ReferenceEntry("instantiates-canonical", None, None, "http://example.org/fhir/PlanDefinition/kidney",
                       "2.1"),
        ReferenceEntry("instantiates-canonical", None, None, "http://example.org/fhir/ActivityDefinition/a")]
    assert of(e, "instantiates-uri") == [UriEntry("instantiates-uri", "http://example.org/protocol.pdf")]
    e = indexer.index({"resourceType": "Subscription", "id": "s", "status": "active",
                       "criteria": "Observation?", "reason": "r",
                       "channel": {"type": "rest-hook", "endpoint": "https://hook.example.org/x"}})
    assert of(e, "url") == [UriEntry("url", "https://hook.example.org/x")]
    assert of(e, "criteria") == [StringEntry("criteria", "observation?", "Observation?")]


RESOURCE_TYPES = frozenset({"Patient", "Observation", "DocumentReference"})


@pytest.mark.parametrize(("text", "expected"), [
    ("Patient/123", ("Patient", "123", None, None)),
    ("Patient/123/_history/4", ("Patient", "123", None, "4")),
    ("http://x.org/fhir/Patient/123", ("Patient", "123", "http://x.org/fhir/Patient/123", None)),
    ("http://x.org/fhir/Patient/123/_history/7", ("Patient", "123", "http://x.org/fhir/Patient/123", "7")),
    ("urn:uuid:5b3a3f2e-0000-4000-8000-000000000001",
     (None, None, "urn:uuid:5b3a3f2e-0000-4000-8000-000000000001", None)),
    ("http://x.org/fhir/Unknown/123", (None, None, "http://x.org/fhir/Unknown/123", None)),
    ("Foo/1", (None, None, "Foo/1", None)),
    ("#contained", None),
    ("", None),
])
def test_parse_reference(text: str, expected: tuple | None) -> None:
    assert parse_reference(text, RESOURCE_TYPES) == expected


# -- numbers, quantities, custom parameters, fallback --------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (100, (99.5, 100.5)),
    (0, (-0.5, 0.5)),
    (Decimal("1.5"), (1.45, 1.55)),
    (Decimal("1.50"), (1.495, 1.505)),
    (Decimal("-2.0"), (-2.05, -1.95)),
    (Decimal("1E+2"), (50.0, 150.0)),
    (1.5, (1.45, 1.55)),
    (True, None),
    ("1.5", None),
    (None, None),
])
def test_precision_range(value: object, expected: tuple | None) -> None:
    got = precision_range(value)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_custom_number_money_and_extension(fresh_indexer: Indexer) -> None:
    reg = fresh_indexer.registry
    reg.add({"resourceType": "SearchParameter", "url": "http://example.org/sp/birth-order",
             "code": "birth-order", "base": ["Patient"], "type": "number",
             "expression": "Patient.multipleBirth.as(integer)"})
    reg.add({"resourceType": "SearchParameter", "url": "http://example.org/sp/birth-place",
             "code": "birth-place", "base": ["Patient"], "type": "string",
             "expression": "Patient.extension('http://hl7.org/fhir/StructureDefinition/patient-birthPlace')"
                           ".value.as(Address).city"})
    reg.add({"resourceType": "SearchParameter", "url": "http://example.org/sp/nationality",
             "code": "nationality", "base": ["Patient"], "type": "token",
             "expression": "Patient.extension('http://example.org/nationality')"})
    reg.add({"resourceType": "SearchParameter", "url": "http://example.org/sp/total", "code": "total",
             "base": ["ExplanationOfBenefit"], "type": "quantity",
             "expression": "ExplanationOfBenefit.total.amount"})
    e = fresh_indexer.index({
        "resourceType": "Patient", "id": "p", "multipleBirthInteger": 2,
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                       "valueAddress": {"city": "Saint-Étienne", "country": "FR"}},
                      {"url": "http://example.org/nationality",
                       "valueCodeableConcept": {"coding": [{"system": "urn:iso:std:iso:3166",
                                                            "code": "FR"}]}}]})
    assert of(e, "birth-order") == [NumberEntry("birth-order", 1.5, 2.5)]
    assert of(e, "birth-place") == [StringEntry("birth-place", "saint-etienne", "Saint-Étienne")]
    assert of(e, "nationality") == [TokenEntry("nationality", "urn:iso:std:iso:3166", "FR")]
    e = fresh_indexer.index({"resourceType": "ExplanationOfBenefit", "id": "eob",
                             "total": [{"category": {"text": "submitted"},
                                        "amount": {"value": Decimal("135.57"), "currency": "EUR"}}]})
    assert of(e, "total") == [QuantityEntry("total", 135.565, 135.575, "urn:iso:std:iso:4217", "EUR")]
    assert fresh_indexer.fallbacks() == []


def test_custom_parameter_applies_to_new_writes(fresh_indexer: Indexer) -> None:
    patient = {"resourceType": "Patient", "id": "p", "language": "fr-FR"}
    assert of(fresh_indexer.index(patient), "lang") == []
    fresh_indexer.registry.add({"resourceType": "SearchParameter", "url": "http://example.org/sp/lang",
                                "code": "lang", "base": ["Resource"], "type": "token",
                                "expression": "Resource.language"})
    assert of(fresh_indexer.index(patient), "lang") == [TokenEntry("lang", None, "fr-FR")]
    assert fresh_indexer.report("Patient")["lang"] == "compiled"


def test_fhirpathpy_fallback(fresh_indexer: Indexer) -> None:
    fresh_indexer.registry.add({
        "resourceType": "SearchParameter", "url": "http://example.org/sp/fr-phone", "code": "fr-phone",
        "base": ["Patient"], "type": "token", "expression": "Patient.telecom.where(value.startsWith('+33'))"})
    e = fresh_indexer.index(PATIENT)
    assert of(e, "fr-phone") == [TokenEntry("fr-phone", None, "+33 1 02")]
    assert fresh_indexer.report("Patient")["fr-phone"] == "fallback"
    assert ("Patient", "fr-phone") in fresh_indexer.fallbacks()


def test_official_parameters_are_all_compiled(indexer: Indexer) -> None:
    """No official parameter of a served type needs fhirpathpy; the skipped ones have no expression."""
    report = indexer.report()
    modes = Counter()
    for rtype, params in report.items():
        for code, mode in params.items():
            modes[mode.split(":")[0]] += 1
            if mode.startswith("skipped"):
                assert mode in ("skipped: special", "skipped: no expression",
                                "skipped: stores search it on the resource itself"), (rtype, code, mode)
    assert indexer.fallbacks() == []
    assert modes["fallback"] == 0
    assert modes["compiled"] > 450


def test_root_keys(indexer: Indexer) -> None:
    keys = indexer.compiler.root_keys
    patient = frozenset({"Patient"})
    assert keys("Patient.name.given", patient) == {"name"}
    assert keys("Patient.telecom.where(system='email')", patient) == {"telecom"}
    assert keys("(Patient.deceased as dateTime)", patient) == {"deceasedBoolean", "deceasedDateTime"}
    assert keys("Resource.meta.lastUpdated | Patient.birthDate", patient) == {"meta", "birthDate"}
    assert keys("Patient.extension('http://x')", patient) == {"extension"}
    assert keys("Patient.deceased.exists() and Patient.deceased != false", patient) is None
    assert keys("Patient", patient) is None


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.json")))
def test_skipping_by_root_keys_is_sound(indexer: Indexer, name: str) -> None:
    """A parameter skipped because the resource lacks its root elements would have yielded nothing."""
    resource = load(name)
    rtype = resource["resourceType"]
    root = [(rtype, resource)]
    skipped = 0
    for item in indexer._plan(rtype):
        if type(item) is tuple and item[4] is not None and item[4].isdisjoint(resource):
            assert item[1](root) == [], item[0]
            skipped += 1
    assert skipped > 0


# -- odd data -----------------------------------------------------------------------------------------

ODD = [
    {"resourceType": "Patient", "id": "x", "name": "John", "telecom": {"system": "email", "value": 3},
     "birthDate": "1980-02-30", "gender": ["male"], "identifier": [None, 3, {"type": "MR", "value": 1}],
     "generalPractitioner": [{"reference": 12}, "Practitioner/1", {"reference": "#x"}],
     "address": [{"line": "not a list", "city": {"x": 1}}], "deceasedBoolean": "yes",
     "meta": {"lastUpdated": "yesterday", "tag": "x", "profile": [1]}},
    {"resourceType": "Observation", "id": "y", "code": {"coding": "nope", "text": 5},
     "valueQuantity": {"value": "12", "code": 3}, "effectivePeriod": {"start": "2020-13"},
     "component": [{"code": None, "valueQuantity": {"value": 1}}, 7],
     "subject": {"reference": "Patient/has space"}},
    {"resourceType": "Condition", "onsetRange": {"low": {"value": "x"}}, "onsetAge": 5, "code": []},
    {"resourceType": "Encounter", "period": "2020", "location": [{"period": {"start": 2020}}]},
    {"resourceType": "Basic", "id": "b", "meta": {"lastUpdated": "2020-01-01T00:00:00Z"}},
    {"resourceType": "NotAType", "id": "z"},
    {"resourceType": 3},
    {"id": "no-type"},
]


@pytest.mark.parametrize("resource", ODD)
def test_odd_data_never_raises(indexer: Indexer, resource: dict) -> None:
    entries = indexer.index(copy.deepcopy(resource))
    assert isinstance(entries, IndexEntries)


def test_odd_values_are_skipped(indexer: Indexer) -> None:
    e = indexer.index(ODD[0])
    assert of(e, "birthdate") == [] and of(e, "_lastUpdated") == []
    assert of(e, "general-practitioner") == []
    assert of(e, "name") == []
    e = indexer.index(ODD[1])
    assert of(e, "value-quantity") == [] and of(e, "date") == []
    assert of(e, "subject") == [ReferenceEntry("subject", None, None, "Patient/has space")]


def test_non_resources(indexer: Indexer) -> None:
    assert indexer.index([]) == IndexEntries()  # type: ignore[arg-type]
    assert indexer.index({"id": "x"}) == IndexEntries()


def test_unknown_type_gets_resource_level_entries(indexer: Indexer) -> None:
    basic = dict(ODD[4], meta={"lastUpdated": "2020-01-01T00:00:00Z", "tag": [{"system": "urn:t", "code": "x"}]})
    e = indexer.index(basic)
    assert of(e, "_tag") == [TokenEntry("_tag", "urn:t", "x")]


def test_duplicates_are_dropped(indexer: Indexer) -> None:
    e = indexer.index({"resourceType": "Patient", "id": "d",
                       "name": [{"given": ["Ann", "Ann"]}, {"given": ["Ann"]}]})
    assert of(e, "given") == [StringEntry("given", "ann", "Ann")]


# -- UCUM ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "unit", "factor"), [
    ("g", "g", 1.0),
    ("kg", "g", 1000.0),
    ("mg", "g", 1e-3),
    ("ug", "g", 1e-6),
    ("L", "m3", 1e-3),
    ("mL", "m3", 1e-6),
    ("dL", "m3", 1e-4),
    ("mg/dL", "g.m-3", 10.0),
    ("g/L", "g.m-3", 1000.0),
    ("mmol/L", "m-3.mol", 1.0),
    ("umol/L", "m-3.mol", 1e-3),
    ("min", "s", 60.0),
    ("h", "s", 3600.0),
    ("d", "s", 86400.0),
    ("ms", "s", 1e-3),
    ("/min", "s-1", 1 / 60),
    ("{beats}/min", "s-1", 1 / 60),
    ("kg/m2", "g.m-2", 1000.0),
    ("cm", "m", 0.01),
    ("10*9/L", "m-3", 1e12),
    ("10*3/uL", "m-3", 1e12),
    ("mm[Hg]", "mm[Hg]", 1.0),
    ("kPa", "Pa", 1000.0),
    ("%", "1", 0.01),
    ("[lb_av]", "g", 453.59237),
    ("meq/L", "eq.m-3", 1.0),
    ("U/L", "U.m-3", 1000.0),
    ("mL/min", "m3.s-1", 1e-6 / 60),
    ("kg/(m.s2)", "g.m-1.s-2", 1000.0),
])
def test_ucum_canonical(code: str, unit: str, factor: float) -> None:
    got = ucum.canonical(code)
    assert got is not None, code
    assert got[0] == unit
    assert got[1] == pytest.approx(factor)


@pytest.mark.parametrize("code", ["Cel", "[degF]", "kilogram", "", "mg per dL", "xyz", "m(", "[IU]x"])
def test_ucum_unknown(code: str) -> None:
    assert ucum.canonical(code) is None


def test_ucum_comparable_across_units() -> None:
    a = ucum.canonicalize(1.0, 1.0, "kg")
    b = ucum.canonicalize(1000.0, 1000.0, "g")
    assert a[0] == b[0] and a[1] == pytest.approx(b[1])
    assert ucum.canonicalize(1.0, 2.0, "Cel") is None


# -- fhirpathpy as an oracle ----------------------------------------------------------------------------

PLAIN = re.compile(r"[A-Z][A-Za-z]*(\.[a-z][A-Za-z]*)+(\s*\|\s*[A-Z][A-Za-z]*(\.[a-z][A-Za-z]*)+)*")
FIXTURES = sorted(p.name for p in EXAMPLES.glob("*.json"))


def _canon(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _oracle(expression: str, rtype: str, resource: dict) -> set[str]:
    from fhirpathpy import compile as fp_compile
    from fhirpathpy.models import models
    # fhirpathpy does not match a concrete resource against the type name "Resource"
    expr = re.sub(r"\b(Resource|DomainResource)\.", rtype + ".", expression)
    return {_canon(v) for v in fp_compile(expr, models["r4"])(resource)}


def _mine(indexer: Indexer, expression: str, rtype: str, resource: dict) -> set[str]:
    fn, _, mode = indexer._compile(expression, frozenset({rtype}), allow_fallback=False)
    assert mode == "compiled"
    return {_canon(v) for _, v in fn([(rtype, resource)])}


@pytest.mark.parametrize("name", FIXTURES)
def test_plain_paths_match_fhirpathpy(indexer: Indexer, name: str) -> None:
    resource = load(name)
    rtype = resource["resourceType"]
    checked = 0
    for code, param in indexer.registry.for_type(rtype).items():
        if not param.expression or not PLAIN.fullmatch(param.expression):
            continue
        expected = _oracle(param.expression, rtype, resource)
        assert _mine(indexer, param.expression, rtype, resource) == expected, code
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", FIXTURES)
def test_other_expressions_match_fhirpathpy(indexer: Indexer, name: str) -> None:
    """Casts, where(field = literal), the deceased boolean: compared where fhirpathpy can evaluate them.

    fhirpathpy cannot evaluate ``resolve()`` and refuses ``as`` on a collection; those are covered
    by the hand-checked tests above.
    """
    resource = load(name)
    rtype = resource["resourceType"]
    for code, param in indexer.registry.for_type(rtype).items():
        expr = param.expression
        if not expr or PLAIN.fullmatch(expr) or "resolve()" in expr or param.type == "composite":
            continue
        try:
            expected = _oracle(expr, rtype, resource)
        except Exception:
            continue
        assert _mine(indexer, expr, rtype, resource) == expected, code

