"""What goes back on the wire: ``_summary``/``_elements`` subsets, Bundles, and resource headers."""
from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache
from typing import Any

from fhir_server.definitions import Definitions
from fhir_server.model import jsonio
from fhir_server.store.base import StoredResource

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "Resource encoded in summary mode"}
ALWAYS = ("resourceType", "id", "meta")


class Renderer:
    """Applies the summary and element selections the StructureDefinitions define."""

    def __init__(self, definitions: Definitions):
        self._summary: dict[str, tuple[set[str], set[str]]] = {}
        self._mandatory: dict[str, tuple[set[str], set[str]]] = {}
        for rtype in definitions.served:
            sd = definitions.structures.get(rtype)
            if sd is None:
                continue
            summary, mandatory = (set(), set()), (set(), set())
            for element in sd["snapshot"]["element"]:
                path = element["path"].split(".")
                if len(path) != 2:
                    continue
                name = path[1]
                if name.endswith("[x]"):
                    if element.get("isSummary"):
                        summary[1].add(name[:-3])
                    if element.get("min", 0) > 0:
                        mandatory[1].add(name[:-3])
                else:
                    if element.get("isSummary"):
                        summary[0].add(name)
                    if element.get("min", 0) > 0:
                        mandatory[0].add(name)
            self._summary[rtype] = summary
            self._mandatory[rtype] = mandatory

    @staticmethod
    def _keep(key: str, names: tuple[set[str], set[str]]) -> bool:
        exact, prefixes = names
        base = key[1:] if key.startswith("_") else key
        return base in exact or any(base.startswith(p) and base[len(p):][:1].isupper() for p in prefixes)

    def subset(self, resource: dict, summary: str | None, elements: list[str] | None) -> dict:
        """The resource reduced per ``_summary`` / ``_elements`` (R4 search.html §3.1.1.5), marked SUBSETTED."""
        rtype = resource.get("resourceType", "")
        if summary in (None, "false") and not elements:
            return resource
        if summary == "data":
            out = {k: v for k, v in resource.items() if k != "text"}
        elif summary == "text":
            mandatory = self._mandatory.get(rtype, (set(), set()))
            out = {k: v for k, v in resource.items() if k in ALWAYS or k == "text" or self._keep(k, mandatory)}
        elif summary == "true":
            names = self._summary.get(rtype, (set(), set()))
            out = {k: v for k, v in resource.items() if k in ALWAYS or self._keep(k, names)}
        else:
            names = {e.split(".")[0].removesuffix("[x]") for e in elements or []}
            wanted = (names, names)  # "value" also selects valueQuantity
            mandatory = self._mandatory.get(rtype, (set(), set()))
            out = {k: v for k, v in resource.items()
                   if k in ALWAYS or self._keep(k, wanted) or self._keep(k, mandatory)}
        meta = dict(out.get("meta") or {})
        meta["tag"] = [*meta.get("tag", []), SUBSETTED]
        out["meta"] = meta
        return out

    def body(self, stored: StoredResource, summary: str | None = None, elements: list[str] | None = None) -> Any:
        """The parsed body, subset if asked (parsing only when a subset is needed)."""
        resource = jsonio.loads(stored.body)
        return self.subset(resource, summary, elements)


@lru_cache(maxsize=4096)
def http_date(instant: str) -> str:
    """FHIR instant → RFC 7231 date for Last-Modified."""
    return format_datetime(datetime.fromisoformat(instant.replace("Z", "+00:00")), usegmt=True)


def version_headers(stored: StoredResource) -> dict[str, str]:
    return {"ETag": f'W/"{stored.version}"', "Last-Modified": http_date(stored.last_updated)}
