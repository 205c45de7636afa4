"""Regenerate ``resources/r4/`` from the official FHIR R4 4.0.1 core package.

The server never reads the full package at run time: it reads the subset this
script copies, trimmed to what validation, search and the CapabilityStatement use.
Run it after changing the served types in ``resources/registry/``::

    python resources/build_r4_subset.py [PATH_TO_PACKAGE]

PATH_TO_PACKAGE defaults to ``../shared/fhir-r4/package`` beside the repository.
The output is deterministic (sorted keys, stable order) so a rerun without
changes leaves git clean.

Besides the served types, ``conformance.json.gz`` (the "conformance pack", read by the
profile validator only) holds, trimmed the same way: the other R4 resource types (so
that ``fhir-server validate`` and Bundles can check any R4 type), every core extension
definition and core profile (vital signs...), and the expansions of the value sets
bound by them and of the extensible/preferred bindings of everything above.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "r4"
DEFAULT_PACKAGE = HERE.parent.parent / "shared" / "fhir-r4" / "package"

# Resource types the server needs besides the served ones: the abstract bases and
# the types it reads or writes itself (bundles, operation parameters and outcomes).
INFRASTRUCTURE_TYPES = ["Resource", "DomainResource", "Bundle", "Parameters", "OperationOutcome",
                        "SearchParameter"]
# Constraint profiles of data types that base definitions name in type.profile.
DATATYPE_PROFILES = ["SimpleQuantity", "MoneyQuantity"]

ELEMENT_KEYS = ("id", "path", "sliceName", "min", "max", "type", "contentReference", "binding",
                "constraint", "base", "isModifier", "isSummary", "maxLength")
CONSTRAINT_KEYS = ("key", "severity", "human", "expression", "source")
SEARCH_KEYS = ("resourceType", "id", "url", "name", "code", "base", "type", "description",
               "expression", "target", "multipleOr", "multipleAnd", "comparator", "modifier",
               "chain", "component", "xpathUsage")


PACK = "conformance.json.gz"
PACK_STRUCTURE_KEYS = ("resourceType", "id", "url", "version", "name", "kind", "abstract", "type",
                       "baseDefinition", "derivation", "context")
STRUCTURAL_CONSTRAINTS = ("ele-1", "ext-1")  # checked by the walk itself, never by the FHIRPath engine


def served_types() -> list[str]:
    return sorted(json.loads(p.read_text())["type"] for p in (HERE / "registry").glob("*.json"))


def load(package: Path, name: str) -> dict:
    return json.loads((package / name).read_text(encoding="utf-8"))


def trim_element(element: dict) -> dict:
    out = {k: element[k] for k in ELEMENT_KEYS if k in element}
    for key, value in element.items():
        if key.startswith(("fixed", "pattern")):
            out[key] = value
    if "constraint" in out:
        out["constraint"] = [{k: c[k] for k in CONSTRAINT_KEYS if k in c} for c in out["constraint"]]
    if "binding" in out:
        out["binding"] = {k: out["binding"][k] for k in ("strength", "valueSet") if k in out["binding"]}
    if "type" in out:
        out["type"] = [{k: t[k] for k in ("code", "profile", "targetProfile", "extension") if k in t}
                       for t in out["type"]]
    return out


def trim_structure(sd: dict) -> dict:
    out = {k: sd[k] for k in ("resourceType", "id", "url", "name", "kind", "abstract", "type",
                              "baseDefinition", "derivation") if k in sd}
    out["snapshot"] = {"element": [trim_element(e) for e in sd["snapshot"]["element"]]}
    return out


def structure_files(package: Path, types: list[str]) -> dict[str, dict]:
    wanted: dict[str, dict] = {}
    for path in sorted(package.glob("StructureDefinition-*.json")):
        sd = json.loads(path.read_text(encoding="utf-8"))
        is_datatype = sd["kind"] in ("primitive-type", "complex-type") and sd.get("derivation") != "constraint"
        if (is_datatype or sd["id"] in DATATYPE_PROFILES
                or (sd["kind"] == "resource" and sd.get("derivation") != "constraint" and sd["id"] in types)):
            wanted[sd["id"]] = trim_structure(sd)
    return wanted


def trim_pack_element(element: dict) -> dict:
    out = trim_element(element)
    for key in ("isSummary", "isModifier"):
        out.pop(key, None)
    if "slicing" in element:
        out["slicing"] = {k: element["slicing"][k] for k in ("discriminator", "rules", "ordered")
                          if k in element["slicing"]}
    if "constraint" in out:
        kept = [{k: v for k, v in c.items() if k != "source"} for c in out["constraint"]
                if c.get("severity") == "error" and c.get("key") not in STRUCTURAL_CONSTRAINTS]
        if kept:
            out["constraint"] = kept
        else:
            del out["constraint"]
    return out


def pack_structures(package: Path, have: dict[str, dict]) -> list[dict]:
    """Resource types not in the subset, core extensions and core profiles (not logical models)."""
    out = []
    for path in sorted(package.glob("StructureDefinition-*.json")):
        sd = json.loads(path.read_text(encoding="utf-8"))
        if sd["id"] in have or "snapshot" not in sd or sd["kind"] == "logical":
            continue
        if sd["kind"] == "resource" or sd.get("derivation") == "constraint":
            trimmed = {k: sd[k] for k in PACK_STRUCTURE_KEYS if k in sd}
            trimmed["snapshot"] = {"element": [trim_pack_element(e) for e in sd["snapshot"]["element"]]}
            out.append(trimmed)
    return out


def pack_expansions(structures: list[dict], terminology: "Terminology", known: dict) -> dict:
    """Expansions of the pack's required bindings and of every extensible/preferred binding."""
    urls = set()
    for sd in structures:
        for element in sd["snapshot"]["element"]:
            binding = element.get("binding") or {}
            if binding.get("valueSet") and binding.get("strength") in ("required", "extensible", "preferred"):
                urls.add(binding["valueSet"].split("|")[0])
    out = {}
    for url in sorted(urls - set(known)):
        codes, reason = terminology.expand(url)
        out[url] = {"codes": codes} if codes is not None else {"notExpandable": reason}
    return out


def write_pack(path: Path, data: dict) -> None:
    """gzip with a fixed mtime: the same input gives the same bytes."""
    import gzip
    raw = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    with open(path, "wb") as handle, gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0) as gz:
        gz.write(raw)


def search_parameters(package: Path, types: list[str]) -> dict:
    bases = set(types) | {"Resource", "DomainResource"}
    entries = []
    for path in sorted(package.glob("SearchParameter-*.json")):
        sp = json.loads(path.read_text(encoding="utf-8"))
        if bases & set(sp.get("base", [])):
            entries.append({"fullUrl": sp["url"], "resource": {k: sp[k] for k in SEARCH_KEYS if k in sp}})
    return {"resourceType": "Bundle", "id": "search-parameters", "type": "collection", "entry": entries}


class Terminology:
    """Expand the enumerable value sets of the package (no filters, no external systems)."""

    def __init__(self, package: Path):
        self.code_systems: dict[str, dict] = {}
        self.value_sets: dict[str, dict] = {}
        for path in package.glob("CodeSystem-*.json"):
            cs = json.loads(path.read_text(encoding="utf-8"))
            self.code_systems[cs["url"]] = cs
        for path in package.glob("ValueSet-*.json"):
            vs = json.loads(path.read_text(encoding="utf-8"))
            self.value_sets[vs["url"]] = vs

    def system_codes(self, url: str) -> list[str] | None:
        cs = self.code_systems.get(url)
        if cs is None or cs.get("content") != "complete":
            return None
        codes: list[str] = []

        def walk(concepts):
            for c in concepts:
                codes.append(c["code"])
                walk(c.get("concept", []))
        walk(cs.get("concept", []))
        return codes

    def expand(self, url: str, seen: frozenset = frozenset()) -> tuple[list[list[str]] | None, str]:
        url = url.split("|")[0]
        vs = self.value_sets.get(url)
        if vs is None:
            return None, f"value set {url} is not in the R4 package"
        if url in seen:
            return None, f"value set {url} includes itself"
        included: list[list[str]] = []
        for inc in vs.get("compose", {}).get("include", []):
            part, reason = self._part(inc, seen | {url})
            if part is None:
                return None, reason
            included.extend(part)
        excluded = set()
        for exc in vs.get("compose", {}).get("exclude", []):
            part, reason = self._part(exc, seen | {url})
            if part is None:
                return None, reason
            excluded.update(map(tuple, part))
        result, keys = [], set()
        for pair in included:
            if tuple(pair) not in excluded and tuple(pair) not in keys:
                keys.add(tuple(pair))
                result.append(pair)
        return result, ""

    def _part(self, inc: dict, seen: frozenset):
        if inc.get("filter"):
            return None, "uses a filter"
        pairs: list[list[str]] = []
        system = inc.get("system")
        if system:
            if inc.get("concept"):
                pairs = [[system, c["code"]] for c in inc["concept"]]
            else:
                codes = self.system_codes(system)
                if codes is None:
                    return None, f"code system {system} is not enumerated in the R4 package"
                pairs = [[system, c] for c in codes]
        for ref in inc.get("valueSet", []):
            part, reason = self.expand(ref, seen)
            if part is None:
                return None, reason
            pairs = part if not system else [p for p in pairs if p in part]
        return pairs, ""


def required_value_sets(structures: dict[str, dict], terminology: Terminology) -> dict:
    urls = sorted({e["binding"]["valueSet"].split("|")[0]
                   for sd in structures.values() for e in sd["snapshot"]["element"]
                   if e.get("binding", {}).get("strength") == "required" and "valueSet" in e["binding"]})
    out = {}
    for url in urls:
        codes, reason = terminology.expand(url)
        out[url] = {"codes": codes} if codes is not None else {"notExpandable": reason}
    return out


def write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    package = Path(argv[1]) if len(argv) > 1 else DEFAULT_PACKAGE
    types = served_types() + INFRASTRUCTURE_TYPES
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.json"):
        old.unlink()
    structures = structure_files(package, types)
    (OUT / "structure").mkdir(exist_ok=True)
    for old in (OUT / "structure").glob("*.json"):
        old.unlink()
    for sid, sd in structures.items():
        write(OUT / "structure" / f"{sid}.json", sd)
    write(OUT / "search-parameters.json", search_parameters(package, types))
    terminology = Terminology(package)
    required = required_value_sets(structures, terminology)
    write(OUT / "valuesets-required.json", required)
    pack = pack_structures(package, structures)
    expansions = pack_expansions(list(structures.values()) + pack, terminology, required)
    write_pack(OUT / PACK, {"structures": pack, "expansions": expansions})
    write(OUT / "CompartmentDefinition-patient.json", load(package, "CompartmentDefinition-patient.json"))
    print(f"wrote {len(structures)} StructureDefinitions and the search parameters, required value sets "
          f"and patient compartment to {OUT}; {PACK}: {len(pack)} more StructureDefinitions, "
          f"{len(expansions)} value set expansions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
