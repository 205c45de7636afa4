"""The server's knowledge of FHIR: the registry of served types and the R4 subset.

Both live as data under ``resources/`` (see its README): adding a served type is
adding a registry file and rerunning ``resources/build_r4_subset.py``. Loaded once
per application; nothing here is read again per request.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jsonschema

DEFAULT_RESOURCES = Path(__file__).resolve().parent.parent / "resources"


@dataclass(frozen=True)
class ServedType:
    """One registry entry: a FHIR type the server serves and what it may do with it."""

    type: str
    dmp_item: str
    description: str
    interactions: frozenset[str]
    profiles: tuple[str, ...]


@dataclass
class Definitions:
    """Registry + R4 definitions, loaded from a ``resources/`` folder."""

    root: Path = DEFAULT_RESOURCES
    served: dict[str, ServedType] = field(init=False)

    def __post_init__(self) -> None:
        schema = json.loads((self.root / "registry.schema.json").read_text())
        served = {}
        for path in sorted((self.root / "registry").glob("*.json")):
            entry = json.loads(path.read_text(encoding="utf-8"))
            jsonschema.validate(entry, schema)
            served[entry["type"]] = ServedType(entry["type"], entry["dmpItem"], entry["description"],
                                               frozenset(entry["interactions"]),
                                               tuple(entry.get("profiles", [])))
        self.served = served

    def _r4(self, name: str) -> Any:
        return json.loads((self.root / "r4" / name).read_text(encoding="utf-8"))

    @cached_property
    def structures(self) -> dict[str, dict]:
        """StructureDefinitions (trimmed snapshots) by id: served types, bases and data types."""
        return {p.stem: json.loads(p.read_text(encoding="utf-8"))
                for p in sorted((self.root / "r4" / "structure").glob("*.json"))}

    @cached_property
    def search_parameters(self) -> list[dict]:
        """The official R4 SearchParameter resources whose base is a served type or Resource."""
        return [e["resource"] for e in self._r4("search-parameters.json")["entry"]]

    @cached_property
    def required_value_sets(self) -> dict[str, dict]:
        """Expansions of the value sets of required bindings: {url: {"codes": [[system, code]...]}}."""
        return self._r4("valuesets-required.json")

    @cached_property
    def patient_compartment(self) -> dict[str, list[str]]:
        """{resource type: [search parameter codes linking it to the patient]} from the official definition."""
        cd = self._r4("CompartmentDefinition-patient.json")
        return {r["code"]: r.get("param", []) for r in cd["resource"] if r.get("param")}

    def is_served(self, rtype: str) -> bool:
        return rtype in self.served
