"""Publish the record's definitions (``profiles/``) as readable, searchable resources at ``/fhir``.

Integrators read and search the StructureDefinitions, ValueSets and CodeSystems they must
meet (``GET /fhir/StructureDefinition?url=...``) and the OperationDefinitions of the operations the
CapabilityStatement names under the project's base. Those types are read-only for clients: the
server itself writes them from the ``profiles/`` folder, once at ``serve`` start-up, through
the normal store transaction and indexer, so searches work as on any resource. A definition
whose content did not change makes no new version, so publishing again is cheap and idempotent.
"""
from __future__ import annotations

import json
from pathlib import Path

from fhir_server.definitions import DEFAULT_RESOURCES
from fhir_server.model import jsonio
from fhir_server.services.resources import ResourceService

PUBLISHED_TYPES = ("StructureDefinition", "ValueSet", "CodeSystem", "OperationDefinition")
DEFAULT_FOLDER = DEFAULT_RESOURCES.parent / "profiles"


def definition_files(folder: Path) -> list[Path]:
    """The JSON files of ``folder`` outside its ``examples`` folders."""
    return sorted(p for p in folder.rglob("*.json")
                  if "examples" not in p.relative_to(folder).parts and not p.name.startswith("."))


def publish(resources: ResourceService, folder: Path = DEFAULT_FOLDER) -> int:
    """Write every published definition of ``folder`` that is new or changed; return how many were."""
    written = 0
    for path in definition_files(folder):
        try:
            resource = jsonio.loads(path.read_bytes())
        except (OSError, json.JSONDecodeError, jsonio.JSONError):
            continue
        if not isinstance(resource, dict) or resource.get("resourceType") not in PUBLISHED_TYPES \
                or not resource.get("id"):
            continue
        stored = resources.atomic(lambda tx: resources.system_put_in(tx, resource), what=str(path))
        written += stored is not None
    return written
