"""The profile registry: every StructureDefinition, ValueSet and CodeSystem the validator knows.

Sources, loaded once:

1. the R4 subset of :class:`~fhir_server.definitions.Definitions` (served types, data types);
2. the conformance pack ``resources/r4/conformance.json.gz`` (the other R4 resource types,
   core extensions and core profiles, value set expansions; see ``build_r4_subset.py``);
3. folders of conformance resources, by default the repository's ``profiles/``: every
   ``*.json`` file below them (recursively) holding a StructureDefinition, ValueSet or
   CodeSystem, or a Bundle of those. Other resources (examples) are ignored, and so are
   folders named ``examples`` and hidden ones.

Look-ups are by canonical URL, optionally ``url|version``: the exact version when it is
held, otherwise the highest version held (noted in :attr:`ProfileRegistry.notes`), and
without a version the highest one (FR Core 2.1.0 and 2.2.0 can both be loaded). A
StructureDefinition that has only a differential gets its snapshot generated on first use
(:mod:`fhir_server.validation.snapshot`), from its base's snapshot (recursively).
Problems (unreadable files, duplicate URLs, snapshots that cannot be generated) never
stop the server: they are listed in :attr:`ProfileRegistry.problems`, and the profile
concerned is treated as unknown.
"""
from __future__ import annotations

import gzip
import json
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fhir_server.definitions import DEFAULT_RESOURCES, Definitions
from fhir_server.validation.snapshot import SnapshotError, generate_snapshot, has_snapshot
from fhir_server.validation.structure import CORE_PREFIX

log = logging.getLogger(__name__)

DEFAULT_PROFILES = DEFAULT_RESOURCES.parent / "profiles"
PACK = "conformance.json.gz"
KINDS = ("StructureDefinition", "ValueSet", "CodeSystem")
SKIPPED_FOLDERS = frozenset({"examples", "example", "node_modules"})
DATATYPE_PROFILES = frozenset({"SimpleQuantity", "MoneyQuantity"})


def version_key(version: str) -> tuple:
    """Order versions: 2.10.0 > 2.2.0 > 2.2.0-ballot-2 > 2.1.0; unknown text sorts by itself."""
    main, _, label = (version or "").partition("-")
    numbers = tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.]", main))
    return numbers, 0 if label else 1, label


class ProfileRegistry:
    """Conformance resources by canonical URL; see the module documentation."""

    def __init__(self, definitions: Definitions | None = None, folders: Sequence[Path] | None = None, *,
                 pack: Path | None | bool = True) -> None:
        self.definitions = definitions or Definitions()
        self.problems: list[str] = []
        self.notes: dict[str, str] = {}  # what was not compiled or resolved exactly, keyed to say it once
        self._core: dict[str, dict] = dict(self.definitions.structures)  # base types and core SDs by id
        self._by_url: dict[str, dict[str, list[dict]]] = {kind: {} for kind in KINDS}
        self.expansions: dict[str, dict] = dict(self.definitions.required_value_sets)
        self.local: list[tuple[Path, dict]] = []  # what the folders held: (file, resource)
        self._snapshots: dict[int, dict | None] = {}
        self._lock = threading.RLock()
        self._value_set_of_system: dict[str, dict] = {}
        for sd in self.definitions.structures.values():
            self._index(sd)
        if pack is not False and pack is not None:
            self._load_pack(self.definitions.root / "r4" / PACK if pack is True else Path(pack))
        for folder in (folders if folders is not None else [DEFAULT_PROFILES]):
            self.load_folder(Path(folder))
        self.resource_types = frozenset(
            sd["type"] for sd in self._core.values()
            if sd.get("kind") == "resource" and sd.get("derivation") != "constraint" and not sd.get("abstract"))
        self.base_invariants = frozenset(
            (c.get("key"), c.get("expression"))
            for sd in self._core.values() if self._is_base(sd)
            for element in sd["snapshot"]["element"] for c in element.get("constraint", ()))

    @staticmethod
    def _is_base(sd: dict) -> bool:
        """Definitions the base walk uses: types, resources, SimpleQuantity & co, extension definitions."""
        return (sd.get("derivation") != "constraint" or sd.get("id") in DATATYPE_PROFILES
                or sd.get("type") == "Extension")

    # -- loading ----------------------------------------------------------------------------

    def _index(self, resource: dict, where: str = "") -> None:
        kind = resource.get("resourceType")
        url = resource.get("url")
        if kind not in KINDS or not isinstance(url, str) or not url:
            if kind in KINDS:
                self.problems.append(f"{where or resource.get('id')}: {kind} without a url, ignored")
            return
        versions = self._by_url[kind].setdefault(url, [])
        for held in versions:
            if held.get("version") == resource.get("version"):
                if held is not resource and held != resource and not url.startswith(CORE_PREFIX):
                    self.problems.append(f"{where}: {kind} {url}|{resource.get('version')} is loaded twice; "
                                         "the first one is used")
                return
        versions.append(resource)
        versions.sort(key=lambda r: version_key(r.get("version", "")))
        if kind == "CodeSystem" and isinstance(resource.get("valueSet"), str):
            self._value_set_of_system[resource["valueSet"].split("|")[0]] = resource

    def _load_pack(self, path: Path) -> None:
        if not path.is_file():
            self.problems.append(f"{path}: conformance pack missing (run resources/build_r4_subset.py); only the "
                                 "served types, their data types and base extensions are known")
            return
        data = json.loads(gzip.decompress(path.read_bytes()))
        for sd in data.get("structures", []):
            self._core.setdefault(sd["id"], sd)
            self._index(sd, str(path))
        for url, entry in data.get("expansions", {}).items():
            self.expansions.setdefault(url, entry)

    def load_folder(self, folder: Path) -> int:
        """Load the conformance resources below ``folder``; returns how many."""
        if not folder.is_dir():
            if folder != DEFAULT_PROFILES:
                self.problems.append(f"{folder}: not a folder")
            return 0
        count = 0
        for path in sorted(folder.rglob("*.json")):
            relative = path.relative_to(folder).parts[:-1]
            if any(part in SKIPPED_FOLDERS or part.startswith(".") for part in relative):
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8-sig"))
            except (OSError, ValueError) as exc:
                self.problems.append(f"{path}: not readable JSON ({exc})")
                continue
            for resource in self._conformance_resources(data):
                self._index(resource, str(path))
                self.local.append((path, resource))
                count += 1
        return count

    @staticmethod
    def _conformance_resources(data: Any) -> Iterable[dict]:
        if not isinstance(data, dict):
            return
        if data.get("resourceType") in KINDS:
            yield data
        elif data.get("resourceType") == "Bundle":
            for entry in data.get("entry") or ():
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict) and resource.get("resourceType") in KINDS:
                    yield resource

    # -- look-ups ---------------------------------------------------------------------------

    def find(self, kind: str, canonical: str) -> dict | None:
        """The resource of ``kind`` for ``url`` or ``url|version`` (see the module documentation)."""
        if not isinstance(canonical, str):
            return None
        url, _, version = canonical.partition("|")
        versions = self._by_url[kind].get(url)
        if not versions:
            return None
        if version:
            for held in versions:
                if held.get("version") == version:
                    return held
            self.notes.setdefault(canonical, f"{canonical}: version {version} is not held; "
                                             f"using version {versions[-1].get('version')}")
        return versions[-1]

    def versions(self, kind: str, url: str) -> list[str]:
        return [r.get("version", "") for r in self._by_url[kind].get(url.split("|")[0], [])]

    def core(self, name: str) -> dict | None:
        """A base type, resource or core profile by id (``Patient``, ``Identifier``, ``SimpleQuantity``)."""
        return self._core.get(name)

    def core_structures(self) -> dict[str, dict]:
        """The R4 definitions by id (subset and pack): types, resources, core extensions and profiles."""
        return dict(self._core)

    def resource_definition(self, rtype: str) -> dict | None:
        sd = self._core.get(rtype)
        if sd is not None and sd.get("kind") == "resource" and not sd.get("abstract") \
                and sd.get("derivation") != "constraint":
            return sd
        return None

    def url(self, canonical: str) -> dict | None:
        """The StructureDefinition for ``canonical``, with a snapshot (generated if needed); None if unknown."""
        sd = self.find("StructureDefinition", canonical)
        if sd is None and isinstance(canonical, str) and canonical.startswith(CORE_PREFIX):
            sd = self._core.get(canonical[len(CORE_PREFIX):].split("|")[0])
        return self.with_snapshot(sd) if sd is not None else None

    def type_of(self, canonical: str) -> str | None:
        sd = self.find("StructureDefinition", canonical)
        if sd is None and isinstance(canonical, str) and canonical.startswith(CORE_PREFIX):
            sd = self._core.get(canonical[len(CORE_PREFIX):].split("|")[0])
        return sd.get("type") if sd else None

    def extension(self, url: str) -> dict | None:
        """The definition of extension ``url`` (with a snapshot), if known."""
        sd = self.url(url)
        return sd if sd is not None and sd.get("type") == "Extension" else None

    def is_core(self, sd: dict) -> bool:
        """Is ``sd`` part of R4 itself (the subset or the pack), rather than loaded from a folder?"""
        held = self._core.get(sd.get("id", ""))
        return held is sd or (held is not None and held.get("url") == sd.get("url")
                              and sd.get("url", "").startswith(CORE_PREFIX))

    def value_set(self, canonical: str) -> dict | None:
        return self.find("ValueSet", canonical)

    def code_system(self, canonical: str) -> dict | None:
        return self.find("CodeSystem", canonical)

    def value_set_urls(self) -> list[str]:
        return list(self._by_url["ValueSet"])

    def code_system_of_value_set(self, url: str) -> dict | None:
        """The code system whose ``valueSet`` (all its codes) is ``url``."""
        return self._value_set_of_system.get(url.split("|")[0])

    def profiles(self) -> list[dict]:
        """The StructureDefinitions loaded from the folders (profiles and extensions), in file order."""
        return [r for _, r in self.local if r.get("resourceType") == "StructureDefinition"]

    def profiles_of_type(self, rtype: str) -> list[str]:
        """Canonical URLs of the folders' resource profiles on ``rtype`` (CapabilityStatement.supportedProfile)."""
        return sorted({sd["url"] for sd in self.profiles()
                       if sd.get("type") == rtype and sd.get("kind") == "resource"
                       and sd.get("derivation") == "constraint"})

    # -- snapshots --------------------------------------------------------------------------

    def with_snapshot(self, sd: dict) -> dict | None:
        if has_snapshot(sd):
            return sd
        key = id(sd)
        if key in self._snapshots:
            return self._snapshots[key]
        with self._lock:
            if key in self._snapshots:
                return self._snapshots[key]
            self._snapshots[key] = None  # a cycle in baseDefinition ends here
            result = None
            try:
                base_url = sd.get("baseDefinition")
                base = self.url(base_url) if base_url else None
                if base is None:
                    raise SnapshotError(f"base definition {base_url} is not known")
                elements = generate_snapshot(sd, base, self.url, self.core)
                result = dict(sd, snapshot={"element": elements})
            except (SnapshotError, KeyError, TypeError, ValueError) as exc:
                self.problems.append(f"{sd.get('url')}: no snapshot: {exc}")
                log.warning("profile %s: no snapshot: %s", sd.get("url"), exc)
            self._snapshots[key] = result
            return result

    def check(self) -> list[str]:
        """Generate every snapshot of the folders' StructureDefinitions now; returns the problems."""
        for sd in self.profiles():
            self.with_snapshot(sd)
        return list(self.problems)
