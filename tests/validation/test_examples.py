"""Official FHIR R4 examples of the served types are valid.

The first test reads the unmodified copies in ``tests/fixtures/r4-examples`` (see its
SOURCES.md) and always runs. The second reads the whole official example corpus, kept
outside the repository at ``<repo>/../shared/data/r4-spec-examples``; it skips, saying
why, when that folder is absent.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_server.definitions import Definitions
from fhir_server.model import jsonio
from fhir_server.validation import StructureValidator

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "r4-examples"
CORPUS = REPO.parent / "shared" / "data" / "r4-spec-examples"
SERVED = sorted(json.loads(p.read_text())["type"] for p in (REPO / "resources" / "registry").glob("*.json"))

# Official examples that are genuinely invalid against R4 4.0.1, with the reason.
KNOWN_INVALID: dict[str, str] = {
    "Observation-clinical-gender.json": "performer references an Encounter; Observation.performer allows Practitioner, "
                                        "PractitionerRole, Organization, CareTeam, Patient and RelatedPerson only",
}


@pytest.fixture(scope="module")
def validator() -> StructureValidator:
    return StructureValidator(Definitions())


def errors(validator: StructureValidator, resource: dict) -> list[str]:
    return [f"{i.code} at {i.expression}: {i.diagnostics}" for i in validator.validate(resource)
            if i.severity in ("error", "fatal")]


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_official_example_copy_is_valid(validator, path):
    resource = jsonio.loads(path.read_bytes())
    assert resource["resourceType"] in SERVED
    assert errors(validator, resource) == []


def test_fixture_copies_cover_the_interesting_shapes():
    names = {p.name for p in FIXTURES.glob("*.json")}
    assert len(names) >= 8
    assert (FIXTURES / "SOURCES.md").is_file()


def _corpus_files() -> list:
    if not CORPUS.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"official example corpus not found at {CORPUS} (it sits beside the repository in CI)"))]
    files = []
    for path in sorted(CORPUS.glob("*.json")):
        kind = path.name.split("-", 1)[0]
        if kind in SERVED:
            files.append(pytest.param(path, id=path.name))
    return files


@pytest.mark.parametrize("path", _corpus_files())
def test_every_official_example_of_a_served_type_is_valid(validator, path):
    resource = jsonio.loads(path.read_bytes())
    if resource.get("resourceType") not in SERVED:
        pytest.skip(reason=f"{path.name} holds a {resource.get('resourceType')}, not a served type")
    if path.name in KNOWN_INVALID:
        assert errors(validator, resource), f"{path.name} is listed as invalid but validates"
        return
    assert errors(validator, resource) == []
