"""The record's own SearchParameters (``profiles/SearchParameter-*.json``), part of the engine.

They are definitions the project publishes with its profiles, not data a client wrote, so
they are built into the engine's registry at start-up (:meth:`fhir_server.app.Engine.build`)
like the R4 ones: indexed on every write, searchable, listed in the CapabilityStatement, and,
like R4's, never redefinable by a client's SearchParameter (same URL or same base and code).
"""
from __future__ import annotations

import json
from pathlib import Path

from fhir_server.definitions import DEFAULT_RESOURCES

PROFILES = DEFAULT_RESOURCES.parent / "profiles"


def profile_search_parameters(folder: Path = PROFILES) -> list[dict]:
    """The active SearchParameter resources of ``folder`` (``SearchParameter-*.json``), by file name."""
    out = []
    for path in sorted(folder.glob("SearchParameter-*.json")):
        sp = json.loads(path.read_text(encoding="utf-8"))
        if sp.get("resourceType") == "SearchParameter" and sp.get("status") in ("active", "draft"):
            out.append(sp)
    return out
