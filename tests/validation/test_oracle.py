"""Cross-check: an independent implementation (fhir.resources R4B models, structurally identical to R4 for
the served types per shared/notes/libraries.md) agrees with our validator on the fixtures and on the
structural faults both are able to see. It guards against our validator drifting into false verdicts."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhir_server.model import jsonio

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "r4-examples").glob("*.json"))


def oracle_accepts(resource: dict) -> bool:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(json.loads(json.dumps(resource, default=float)))
        return True
    except ValidationError:
        return False


def errors(validator, resource: dict) -> list:
    return [i for i in validator.validate(resource) if i.severity == "error"]


@pytest.fixture(scope="module")
def validator(engine):
    return engine.validator


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_both_accept_the_official_examples(validator, path):
    resource = jsonio.loads(path.read_bytes())
    assert oracle_accepts(resource)
    assert errors(validator, resource) == []


BREAKAGES = {
    "unknown element": lambda r: r.__setitem__("favoriteColor", "blue"),
    "malformed date": lambda r: r.__setitem__("birthDate", "12/25/1974"),
    "array where one value belongs": lambda r: r.__setitem__("gender", ["female"]),
    "object where a string belongs": lambda r: r.__setitem__("birthDate", {"value": "1974-12-25"}),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_both_reject_structural_faults(validator, name):
    resource = copy.deepcopy(jsonio.loads((EXAMPLES[0].parent / "Patient-example.json").read_bytes()))
    BREAKAGES[name](resource)
    assert not oracle_accepts(resource)
    assert errors(validator, resource), f"our validator missed: {name}"
