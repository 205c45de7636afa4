"""Deterministic broken variants of valid resources, for tests that compare two ways of validating.

:func:`mutants` changes one or two places of a resource at random (seeded): a property removed,
nulled, emptied or given the wrong JSON kind, a primitive given a malformed value, a code or a
reference changed, an unknown property, a choice switched to another type, an item repeated, and
extensions: unknown ones, ones defined in ``profiles/`` (whose content only the profile walks
check), modifier extensions and ``_x`` companions carrying them, at any depth. The variants reach
the parts of the walks that shortcuts touch (what a profile walk may leave out, invariants that
hold for want of their elements), valid or not.
"""
from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from typing import Any

EXTENSIONS = [
    ("http://example.org/fhir/StructureDefinition/unknown", "valueString", "x"),
    ("https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability", "valueCoding",
     {"system": "https://mos.esante.gouv.fr/NOS/TRE_R323-ModeObtentionIdentite/FHIR/TRE-R323-ModeObtentionIdentite",
      "code": "NOPE"}),
    ("https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code", "valueCoding",
     {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM", "code": "33063"}),
    ("https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-comment", "valueString", "un commentaire"),
    ("https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-comment", "valueBoolean", True),
    ("https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type", "valueCoding",
     {"system": "https://mos.esante.gouv.fr/NOS/TRE_R256-TypeMessagerie/FHIR/TRE-R256-TypeMessagerie",
      "code": "MSSANTE"}),
    ("https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-birth-list-given-name", "valueString", "Léa"),
    ("https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-birthdate-update-indicator", "valueBoolean",
     True),
    ("http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress", {"city": "Lyon"}),
    ("http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode", "unknown"),
    ("http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode", "not-a-reason"),
    ("https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-ext-is-archived", "valueBoolean", False),
]
BAD_STRINGS = ["", "  ", "2023-02-30", "2023-06-01T10:00:00", "bogus-code", "not a uri", "x" * 70, "<b>html</b>",
               "#missing", "Device/1", "urn:uuid:not-a-uuid"]
BAD_NUMBERS = [-1, 0, 1.5, 2 ** 40, "12"]


def _locations(value: Any, trail: tuple = ()) -> Iterator[tuple]:
    """(trail, container, key) of every property and list item below ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "resourceType":
                continue
            yield trail + (key,), value, key
            yield from _locations(item, trail + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield trail + (index,), value, index
            yield from _locations(item, trail + (index,))


def _objects(value: Any) -> list[dict]:
    found = []
    if isinstance(value, dict):
        found.append(value)
        for item in value.values():
            found += _objects(item)
    elif isinstance(value, list):
        for item in value:
            found += _objects(item)
    return found


def _extension(rng: random.Random) -> dict:
    url, key, value = rng.choice(EXTENSIONS)
    return {"url": url, key: copy.deepcopy(value)}


def _mutate(resource: dict, rng: random.Random) -> str:
    """Change ``resource`` in place at one random place; what was done."""
    locations = list(_locations(resource))
    objects = _objects(resource)
    operation = rng.choice(["delete", "kind", "empty", "null", "primitive", "primitive", "unknown", "extension",
                            "extension", "extension", "modifier", "companion", "repeat", "choice", "code",
                            "reference"])
    if operation in ("extension", "modifier", "unknown"):
        target = rng.choice(objects)
        if operation == "unknown":
            target["bogusElement"] = 1
        else:
            key = "modifierExtension" if operation == "modifier" else "extension"
            target.setdefault(key, [])
            if isinstance(target[key], list):
                target[key].append(_extension(rng))
            else:
                target[key] = [_extension(rng)]
        return operation
    if not locations:
        return "none"
    trail, container, key = rng.choice(locations)
    current = container[key]
    if operation == "delete":
        if isinstance(container, dict):
            del container[key]
        else:
            container.pop(key)
    elif operation == "kind":
        container[key] = ("x" if isinstance(current, (dict, list, int, float)) and not isinstance(current, bool)
                          else 7 if isinstance(current, str) else {"a": 1})
    elif operation == "empty":
        container[key] = {} if isinstance(current, dict) else [] if isinstance(current, list) else ""
    elif operation == "null":
        container[key] = None
    elif operation == "primitive":
        if isinstance(current, str):
            container[key] = rng.choice(BAD_STRINGS)
        elif isinstance(current, (int, float)) and not isinstance(current, bool):
            container[key] = rng.choice(BAD_NUMBERS)
        elif isinstance(current, bool):
            container[key] = "true"
        else:
            container[key] = rng.choice(BAD_STRINGS)
    elif operation == "companion":
        if isinstance(container, dict) and not isinstance(current, (dict, list)) and not str(key).startswith("_"):
            container["_" + key] = rng.choice([{"extension": [_extension(rng)]}, {"id": "a"}, {}])
        elif isinstance(container, dict) and isinstance(current, list) and current \
                and not isinstance(current[0], (dict, list)):
            container["_" + key] = [rng.choice([None, {"extension": [_extension(rng)]}]) for _ in current]
        else:  # not a primitive: a companion of a property that does not exist
            container_object = rng.choice(objects)
            container_object["_bogus"] = {"extension": [_extension(rng)]}
    elif operation == "repeat":
        if isinstance(container, list):
            container.append(copy.deepcopy(current))
        elif isinstance(current, list) and current:
            current.append(copy.deepcopy(current[-1]))
        else:
            container[key] = [current]
    elif operation == "choice":
        if isinstance(container, dict) and isinstance(key, str):
            for prefix in ("value", "effective", "onset", "abatement", "serviced", "deceased", "multipleBirth",
                           "occurrence", "timing", "medication", "born", "age"):
                if key.startswith(prefix) and key != prefix:
                    new = prefix + rng.choice(["String", "Boolean", "Quantity", "DateTime", "Period", "Integer",
                                               "CodeableConcept", "Reference"])
                    container[new] = container.pop(key)
                    break
            else:
                container[key + "Extra"] = current
    elif operation == "code":
        codings = [o for o in objects if "code" in o or "system" in o]
        if codings:
            coding = rng.choice(codings)
            coding[rng.choice(["code", "system"])] = rng.choice(["bogus", "http://example.org/cs", "urn:x"])
    elif operation == "reference":
        references = [o for o in objects if "reference" in o]
        if references:
            rng.choice(references)["reference"] = rng.choice(["Device/1", "#missing", "Patient/1",
                                                              "http://x.org/fhir/Organization/2", "urn:uuid:1"])
    return operation


def mutants(resource: dict, seed: int, count: int) -> list[tuple[str, dict]]:
    """``count`` variants of ``resource`` with one or two random changes each (deterministic for ``seed``)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        variant = copy.deepcopy(resource)
        done = [_mutate(variant, rng) for _ in range(rng.choice((1, 1, 2)))]
        out.append(("+".join(done), variant))
    return out
