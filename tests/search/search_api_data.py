"""A small hand-built data set for the search API tests, loaded once per test module and backend.

Every resource has a fixed id (created with PUT), so the expected results in the tests are
plain sets of ids, checked by hand against the values below; ``conftest.py`` loads it into a
module-scoped ``dataset`` fixture (a test client) on each store. Test modules import helpers with::

    from search_api_data import bundle, ids, ...

``dataset`` is a module-scoped fixture (parametrised over the backends, ids ``sqlite`` /
``mongo`` so ``-k sqlite`` selects one) giving a Flask test client on a fresh store holding
the data set; tests that write must use the function-scoped ``client`` of tests/conftest.py.
"""
from __future__ import annotations

import json
from urllib.parse import parse_qsl, urlsplit


FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
NIR = "urn:oid:1.2.250.1.213.1.4.8"
MRN = "http://example.org/mrn"
BASE = "http://localhost/fhir"  # what the Flask test client's requests see as the server base


def _category(code: str) -> list:
    return [{"coding": [{"system": OBS_CATEGORY, "code": code}]}]


def _qty(value, code: str, unit: str | None = None) -> dict:
    return {"value": value, "unit": unit or code, "system": UCUM, "code": code}


RESOURCES: list[dict] = [
    # -- organisations and practitioners -----------------------------------------------------
    {"resourceType": "Organization", "id": "org1", "name": "Clinique Saint-Étienne", "active": True,
     "identifier": [{"system": "http://example.org/org", "value": "ORG1"}]},
    {"resourceType": "Organization", "id": "org2", "name": "Hôpital Nord", "active": True,
     "partOf": {"reference": "Organization/org1"}},
    {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Dupont", "given": ["Jean"]}],
     "gender": "male"},
    {"resourceType": "Practitioner", "id": "pr2", "name": [{"family": "Durand", "given": ["Marie"]}],
     "gender": "female"},
    # -- patients ----------------------------------------------------------------------------
    {"resourceType": "Patient", "id": "p1", "active": True, "gender": "female", "birthDate": "1980-04-12",
     "name": [{"family": "Martin", "given": ["Claire", "Élise"]}],
     "identifier": [
         {"system": NIR, "value": "2800412345678",
          "type": {"coding": [{"system": V2_0203, "code": "NI"}], "text": "Numéro national"}},
         {"system": MRN, "value": "MRN-1", "type": {"coding": [{"system": V2_0203, "code": "MR"}]}}],
     "telecom": [{"system": "email", "value": "claire.martin@example.org"}],
     "address": [{"line": ["12 rue de la Paix"], "city": "Paris", "postalCode": "75002", "country": "FR"}],
     "generalPractitioner": [{"reference": "Practitioner/pr1"}],
     "managingOrganization": {"reference": "Organization/org1"}},
    {"resourceType": "Patient", "id": "p2", "active": False, "gender": "male", "birthDate": "1975-11",
     "name": [{"family": "Müller", "given": ["Jérôme"]}],
     "identifier": [{"system": MRN, "value": "MRN-2", "type": {"coding": [{"system": V2_0203, "code": "MR"}]}}],
     "address": [{"city": "Lyon", "postalCode": "69001"}],
     "generalPractitioner": [{"reference": "Practitioner/pr2"}],
     "managingOrganization": {"reference": "Organization/org2"}},
    {"resourceType": "Patient", "id": "p3", "gender": "female", "birthDate": "2001-02-03",
     "name": [{"family": "Martinez", "given": ["Ana"]}],
     "identifier": [{"system": NIR, "value": "2010203999999"}],
     "generalPractitioner": [{"reference": "Practitioner/pr1"}]},
    {"resourceType": "Patient", "id": "p4", "gender": "other",
     "name": [{"family": "Lemartin", "given": ["Paul"]}],
     "link": [{"other": {"reference": "Patient/p1"}, "type": "seealso"}]},
    # -- encounters --------------------------------------------------------------------------
    {"resourceType": "Encounter", "id": "e1", "status": "finished",
     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
     "subject": {"reference": "Patient/p1"},
     "period": {"start": "2021-03-04T09:00:00Z", "end": "2021-03-04T11:00:00Z"},
     "length": {"value": 2, "unit": "h", "system": UCUM, "code": "h"},
     "serviceProvider": {"reference": "Organization/org1"}},
    {"resourceType": "Encounter", "id": "e2", "status": "in-progress",
     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
     "subject": {"reference": "Patient/p2"}, "period": {"start": "2021-06-01T08:00:00Z"},
     "length": {"value": 90, "unit": "min", "system": UCUM, "code": "min"}},
    # -- observations ------------------------------------------------------------------------
    {"resourceType": "Observation", "id": "o1", "status": "final", "category": _category("laboratory"),
     "meta": {"tag": [{"system": "http://example.org/tags", "code": "urgent"}]},
     "identifier": [{"system": "http://example.org/obs", "value": "OBS-1"}],
     "code": {"coding": [{"system": LOINC, "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"}],
              "text": "Glycémie"},
     "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
     "performer": [{"reference": "Practitioner/pr1"}],
     "effectiveDateTime": "2021-03-04T10:00:00Z", "valueQuantity": _qty(95, "mg/dL")},
    {"resourceType": "Observation", "id": "o2", "status": "preliminary", "category": _category("vital-signs"),
     "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
     "subject": {"reference": "Patient/p1"}, "performer": [{"reference": "Practitioner/pr2"}],
     "effectivePeriod": {"start": "2021-03-01", "end": "2021-03-10"},
     "valueQuantity": _qty(72, "/min", "beats/minute")},
    {"resourceType": "Observation", "id": "o3", "status": "final", "category": _category("laboratory"),
     "code": {"coding": [{"system": LOINC, "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"}]},
     "subject": {"reference": BASE + "/Patient/p2"},
     "effectiveDateTime": "2020-12-31", "valueQuantity": _qty(1.1, "g/L")},
    {"resourceType": "Observation", "id": "o4", "status": "amended", "category": _category("vital-signs"),
     "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}], "text": "Poids"},
     "subject": {"reference": "Patient/p3"}, "effectiveDateTime": "2022",
     "performer": [{"identifier": {"system": "http://example.org/rpps", "value": "10001"}}],
     "valueQuantity": _qty(60, "kg")},
    {"resourceType": "Observation", "id": "o5", "status": "cancelled",
     "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
     "subject": {"reference": "Patient/p2"}, "effectiveInstant": "2021-03-05T08:30:00.250Z",
     "valueQuantity": _qty(80, "/min", "beats/minute")},
    {"resourceType": "Observation", "id": "o6", "status": "final",
     "code": {"text": "Note libre"}, "valueString": "rien à signaler",
     "subject": {"reference": "http://other.example.org/fhir/Patient/p9"}},
    {"resourceType": "Observation", "id": "o7", "status": "final", "category": _category("vital-signs"),
     "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
     "subject": {"reference": "Patient/p3"}, "effectiveDateTime": "2021-03-04T12:00:00+02:00",
     "component": [
         {"code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic"}]},
          "valueQuantity": _qty(120, "mm[Hg]", "mmHg")},
         {"code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic"}]},
          "valueQuantity": _qty(80, "mm[Hg]", "mmHg")}]},
    # -- conditions, reports, procedures, documents ------------------------------------------
    {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
     "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                    "code": "active"}]},
     "code": {"coding": [{"system": SNOMED, "code": "44054006", "display": "Diabetes mellitus type 2"}]},
     "onsetDateTime": "2015", "recorder": {"reference": "Practitioner/pr1"}},
    {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/p2"},
     "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                    "code": "resolved"}]},
     "code": {"coding": [{"system": SNOMED, "code": "38341003", "display": "Hypertension"}]},
     "onsetAge": {"value": 40, "unit": "a", "system": UCUM, "code": "a"}},
    {"resourceType": "DiagnosticReport", "id": "dr1", "status": "final",
     "code": {"coding": [{"system": LOINC, "code": "24323-8", "display": "Metabolic panel"}]},
     "subject": {"reference": "Patient/p1"},
     "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2"}]},
    {"resourceType": "Procedure", "id": "proc1", "status": "completed", "subject": {"reference": "Patient/p1"},
     "instantiatesUri": ["http://example.org/protocols/diabetes/v2"],
     "performedDateTime": "2021-05-01"},
    {"resourceType": "Procedure", "id": "proc2", "status": "completed", "subject": {"reference": "Patient/p2"},
     "instantiatesUri": ["http://example.org/protocols"], "performedDateTime": "2021-06-02"},
    {"resourceType": "Procedure", "id": "proc3", "status": "in-progress", "subject": {"reference": "Patient/p3"},
     "instantiatesUri": ["http://example.org/protocolsX/other"]},
]

IDS = {(r["resourceType"], r["id"]) for r in RESOURCES}


def load(client, resources=RESOURCES) -> None:
    for resource in resources:
        response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", data=json.dumps(resource),
                              headers={"Content-Type": FHIR_JSON})
        assert response.status_code in (200, 201), (resource["id"], response.get_json())


# -- helpers -------------------------------------------------------------------------------------
def get(client, url: str, **headers):
    return client.get(url if url.startswith("/fhir") else "/fhir/" + url, headers=headers)


def bundle(client, url: str, **headers) -> dict:
    response = get(client, url, **headers)
    assert response.status_code == 200, (url, response.get_json())
    body = response.get_json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def ids(client, url: str, mode: str = "match", **headers) -> set[str]:
    """The ids of the entries of one page with that search mode (the whole result on a small data set)."""
    body = bundle(client, url, **headers)
    return {e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == mode}


def typed_ids(client, url: str, mode: str = "match") -> set[str]:
    body = bundle(client, url)
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in body.get("entry", [])
            if e["search"]["mode"] == mode}


def link(body: dict, relation: str) -> str | None:
    for entry in body.get("link", []):
        if entry["relation"] == relation:
            return entry["url"]
    return None


def local(url: str) -> str:
    """A link URL as a path the test client can GET."""
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def query_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def error(client, url: str, status: int = 400, **headers) -> dict:
    response = get(client, url, **headers)
    assert response.status_code == status, (url, response.status_code, response.get_json())
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return body
