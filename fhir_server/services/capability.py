"""The CapabilityStatement, generated from the registry and the search parameters actually indexed.

Nothing here is hand-listed per type, so the statement cannot drift from what runs.
"""
from __future__ import annotations

from fhir_server import __version__
from fhir_server.definitions import Definitions
from fhir_server.search.parameters import SearchParameterRegistry

INTERACTION_ORDER = ("read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
                     "search-type")
R4_OPERATION = "http://hl7.org/fhir/OperationDefinition/"
BULK_OPERATION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
BULK_DATA_CAPABILITY = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
VALIDATE = ("validate", R4_OPERATION + "Resource-validate")
META = [("meta", R4_OPERATION + "Resource-meta"), ("meta-add", R4_OPERATION + "Resource-meta-add"),
        ("meta-delete", R4_OPERATION + "Resource-meta-delete")]
TYPE_OPERATIONS = {
    "Patient": [("everything", R4_OPERATION + "Patient-everything"), ("export", BULK_OPERATION + "patient-export")],
    "Group": [("export", BULK_OPERATION + "group-export")],
}
#: the project's operations, published from profiles/OperationDefinition-*.json (services/publication.py)
DMP_OPERATION = "https://dmp.example.org/fhir/OperationDefinition/"
#: the record's own operations (fhir_server/http/record_api.py), served when the record's rules are on
RECORD_OPERATIONS = [("emergency-access", DMP_OPERATION + "dmp-patient-emergency-access"),
                     ("close", DMP_OPERATION + "dmp-patient-close")]
SUPPORTED_SEARCH_TYPES = {"number", "date", "string", "token", "reference", "composite", "quantity", "uri"}


def _search_params(registry: SearchParameterRegistry, rtype: str) -> list[dict]:
    out = []
    for code, param in sorted(registry.for_type(rtype).items()):
        if param.type not in SUPPORTED_SEARCH_TYPES:
            continue
        if param.expression is None and code not in ("_id", "_lastUpdated"):
            continue
        entry = {"name": code, "definition": param.url, "type": param.type}
        if param.description:
            entry["documentation"] = param.description
        out.append(entry)
    return out


def capability_statement(definitions: Definitions, registry: SearchParameterRegistry) -> dict:
    resources = []
    for rtype, served in sorted(definitions.served.items()):
        params = _search_params(registry, rtype)
        writable = bool(served.interactions & {"update", "create"})
        entry = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": code} for code in INTERACTION_ORDER if code in served.interactions],
            "versioning": "versioned",
            "readHistory": True,
            "updateCreate": "update" in served.interactions,
            "conditionalCreate": "create" in served.interactions,
            "conditionalRead": "not-supported",
            "conditionalUpdate": "update" in served.interactions,
            "conditionalDelete": "single" if "delete" in served.interactions else "not-supported",
            "searchInclude": sorted(f"{rtype}:{p['name']}" for p in params if p["type"] == "reference"),
            "searchRevInclude": sorted(
                f"{other}:{p['name']}" for other in definitions.served
                for p in _search_params(registry, other)
                if p["type"] == "reference" and rtype in (registry.get(other, p["name"]).targets or ())),
            "searchParam": params,
        }
        if served.profiles:
            entry["supportedProfile"] = list(served.profiles)
        operations = TYPE_OPERATIONS.get(rtype, []) + ([VALIDATE, *META] if writable else META)
        entry["operation"] = [{"name": name, "definition": url} for name, url in operations]
        if not writable:
            entry.pop("updateCreate")
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "publisher": "fhir-dmp-server",
        "kind": "instance",
        # the Bulk Data IG asks a server declaring its conformance to name its CapabilityStatement here
        "instantiates": [BULK_DATA_CAPABILITY],
        "software": {"name": "fhir-dmp-server", "version": __version__},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/merge-patch+json"],
        "rest": [{
            "mode": "server",
            "documentation": "FHIR R4 REST API of the shared medical record (DMP)",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                            {"code": "search-system"}],
            "searchParam": [
                {"name": "_type", "type": "token",
                 "documentation": "Resource types to search across (system-level search)"},
            ],
            "operation": [{"name": "export", "definition": BULK_OPERATION + "export"},
                          {"name": "import", "definition": DMP_OPERATION + "dmp-import"},  # bulk_api, ADR 0006
                          {"name": "meta", "definition": R4_OPERATION + "Resource-meta"}],
        }],
    }


def with_record_operations(statement: dict) -> dict:
    """``statement`` with the record's operations on Patient (a copy: the cached statement is shared)."""
    rest = dict(statement["rest"][0])
    rest["resource"] = [dict(r, operation=[*r.get("operation", []), *({"name": n, "definition": d}
                                                                       for n, d in RECORD_OPERATIONS)])
                        if r["type"] == "Patient" else r for r in rest["resource"]]
    return dict(statement, rest=[rest, *statement["rest"][1:]])
