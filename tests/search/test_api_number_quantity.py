"""Number, quantity and composite search through the REST API.

Observation value-quantity of the data set (value range from precision; UCUM canonical form):
o1 95 mg/dL [94.5, 95.5] = [945, 955] g/m3     o4 60 kg [59.5, 60.5] = [59500, 60500] g
o2 72 /min                                     o5 80 /min
o3 1.1 g/L [1.05, 1.15] = [1050, 1150] g/m3    o7 components only: 120 and 80 mm[Hg]
Encounter length: e1 2 h, e2 90 min.
"""
from __future__ import annotations


import pytest

from backends import BACKENDS, make_store
from search_api_data import LOINC, UCUM, error, ids, load

from fhir_server.access.gate import OpenGate
from fhir_server.app import Engine, create_app
from fhir_server.settings import Settings


@pytest.mark.parametrize("query, expected", [
    ("value-quantity=95", {"o1"}),
    (f"value-quantity=95|{UCUM}|mg/dL", {"o1"}),
    ("value-quantity=95||mg/dL", {"o1"}),
    (f"value-quantity=95|{UCUM}|mg/L", set()),
    ("value-quantity=80", {"o5"}),  # not o7, whose 80 is a component
    ("value-quantity=80||/min", {"o5"}),
    (f"value-quantity=80|{UCUM}|mm[Hg]", set()),
    ("value-quantity=gt75", {"o1", "o5"}),
    ("value-quantity=lt2", {"o3"}),
    (f"value-quantity=ne95|{UCUM}|mg/dL", {"o3"}),  # other values in comparable units
    (f"value-quantity=ap100|{UCUM}|mg/dL", {"o1", "o3"}),
    (f"value-quantity=sa90|{UCUM}|mg/dL", {"o1", "o3"}),
    (f"value-quantity=eb100|{UCUM}|mg/dL", {"o1"}),
    ("value-quantity=60,72", {"o2", "o4"}),
    ("value-quantity:missing=true", {"o6", "o7"}),
    ("component-value-quantity=80", {"o7"}),
    ("combo-value-quantity=80", {"o5", "o7"}),
])
def test_quantity(dataset, query, expected):
    assert ids(dataset, "Observation?" + query) == expected


@pytest.mark.parametrize("query, expected", [
    (f"Observation?value-quantity=0.95|{UCUM}|g/L", {"o1"}),  # 95 mg/dL is 0.95 g/L
    (f"Observation?value-quantity=1|{UCUM}|g/L", {"o1", "o3"}),  # [0.5, 1.5] g/L contains both
    (f"Observation?value-quantity=gt1.0|{UCUM}|g/L", {"o3"}),
    (f"Observation?value-quantity=lt1000|{UCUM}|mg/L", {"o1"}),
    (f"Observation?value-quantity=60|{UCUM}|kg", {"o4"}),
    (f"Observation?value-quantity=6e4|{UCUM}|g", {"o4"}),  # 6e4 g: [55000, 65000] g contains 60 kg
    (f"Observation?value-quantity=gt0.5|{UCUM}|s-1", {"o2", "o5"}),  # 72 and 80 /min: 1.2 and 1.33 per second
    (f"Encounter?length=1.5|{UCUM}|h", {"e2"}),  # 90 min
    (f"Encounter?length=gt100|{UCUM}|min", {"e1"}),  # 2 h
    (f"Condition?onset-age=40|{UCUM}|a", {"c2"}),
    ("Condition?onset-age:missing=true", {"c1"}),
])
def test_quantity_ucum_canonical_comparison(dataset, query, expected):
    assert ids(dataset, query) == expected


@pytest.mark.parametrize("query, expected", [
    (f"code-value-quantity={LOINC}|2339-0$gt1.0|{UCUM}|g/L", {"o3"}),
    (f"code-value-quantity={LOINC}|2339-0$95|{UCUM}|mg/dL", {"o1"}),
    ("code-value-quantity=2339-0$95", {"o1"}),
    ("code-value-quantity=2339-0$95,8867-4$80", {"o1", "o5"}),
    ("code-value-quantity=8867-4$lt75", {"o2"}),
    ("code-value-quantity=2339-0$72", set()),  # 72 belongs to another code
    ("combo-code-value-quantity=8480-6$120", {"o7"}),
    (f"component-code-value-quantity={LOINC}|8462-4$80", {"o7"}),
    ("component-code-value-quantity=8480-6$80", set()),  # 80 is the diastolic, not the systolic
    ("code-value-quantity:missing=true", {"o6", "o7"}),
])
def test_composite(dataset, query, expected):
    assert ids(dataset, "Observation?" + query) == expected


def test_composite_quantity_in_other_units(dataset):
    assert ids(dataset, f"Observation?code-value-quantity={LOINC}|2339-0$gt100|{UCUM}|mg/dL") == {"o3"}
    assert ids(dataset, f"Observation?code-value-quantity=2339-0$0.95|{UCUM}|g/L") == {"o1"}


@pytest.mark.parametrize("query", ["value-quantity=abc", "value-quantity=1|x", "value-quantity=gt",
                                   "code-value-quantity=2339-0", "code-value-quantity=2339-0$x"])
def test_malformed_quantities_are_400(dataset, query):
    error(dataset, "Observation?" + query)


# -- number: no served type has a number parameter in R4, so a custom one is registered ------------
LENGTH_VALUE = {"resourceType": "SearchParameter", "url": "http://example.org/SearchParameter/length-value",
                "name": "length-value", "status": "active", "code": "length-value", "base": ["Encounter"],
                "type": "number", "expression": "Encounter.length.value", "description": "length as a number"}


@pytest.fixture(scope="module", params=BACKENDS)
def number_client(request, tmp_path_factory):
    engine = Engine.build()
    engine.registry.add(LENGTH_VALUE)
    store = make_store(request.param, tmp_path_factory.mktemp("number"))
    app = create_app(Settings(insecure_no_auth=True, max_body_bytes=1_000_000), store=store, gate=OpenGate(),
                     engine=engine)
    client = app.test_client()
    from search_api_data import RESOURCES
    load(client, [r for r in RESOURCES if r["resourceType"] in ("Encounter", "Patient", "Organization")])
    yield client
    store.close()


@pytest.mark.parametrize("query, expected", [
    ("length-value=2", {"e1"}),
    ("length-value=90", {"e2"}),
    ("length-value=1e2", {"e2"}),  # [50, 150]
    ("length-value=91", set()),
    ("length-value=gt10", {"e2"}),
    ("length-value=lt10", {"e1"}),
    ("length-value=ge90", {"e2"}),
    ("length-value=le2", {"e1"}),
    ("length-value=ne2", {"e2"}),
    ("length-value=sa2", {"e2"}),
    ("length-value=eb90", {"e1"}),
    ("length-value=ap85", {"e2"}),  # 85 ± 10 %
    ("length-value=2,90", {"e1", "e2"}),
    ("length-value=gt1&length-value=lt50", {"e1"}),
    ("length-value:missing=false", {"e1", "e2"}),
])
def test_number(number_client, query, expected):
    assert ids(number_client, "Encounter?" + query) == expected


def test_malformed_number_is_400(number_client):
    outcome = error(number_client, "Encounter?length-value=ten")
    assert outcome["issue"][0]["expression"] == ["length-value"]
