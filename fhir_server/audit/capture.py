"""The REST layer's side of tracing: what a request touched, collected as it is answered.

Handlers and response helpers call :func:`item`, :func:`bundle`, :func:`patient`, :func:`file`
(cheap appends to ``flask.g``); :func:`after_request` then turns the request into one
:class:`~fhir_server.audit.model.AuditRecord` (bundles: one per entry, :func:`bundle_entries`) and
hands it to the writer. Nothing here parses a body that the request did not already parse, except the
(small) OperationOutcome of a refusal, to keep its message.
"""
from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlencode

from flask import Response, current_app, g, request

from fhir_server.audit.model import INTERACTIONS, AuditRecord, Item
from fhir_server.http.urls import fhir_base
from fhir_server.model import jsonio

log = logging.getLogger("fhir_server.audit")

#: endpoint -> restful-interaction subtype
ENDPOINTS = {
    "fhir.read": "read", "fhir.vread": "vread", "fhir.update": "update", "fhir.patch": "patch",
    "fhir.delete": "delete", "fhir.history_instance": "history-instance", "fhir.create": "create",
    "fhir.conditional_update": "update", "fhir.conditional_patch": "patch", "fhir.conditional_delete": "delete",
    "fhir.history_type": "history-type", "fhir.history_system": "history-system",
    "fhir.search_type": "search-type", "fhir.search_type_post": "search-type",
    "fhir.search_system": "search-system", "fhir.search_system_post": "search-system",
    "fhir.search_compartment": "search-type",
}
METHOD_ACTIONS = {"GET": "R", "HEAD": "R", "POST": "C", "PUT": "U", "PATCH": "U", "DELETE": "D"}
OPERATION_ACTIONS = {"$meta-add": "U", "$meta-delete": "U", "$meta": "R", "$export-status": "R",
                     "$export-file": "R"}
UNTRACED = ("/fhir/metadata", "/fhir/.well-known")
AUTH_ENDPOINTS = {"smart_auth.login": "password", "smart_auth.code": "login", "smart_auth.token": "token",
                  "smart_auth.revoke": "revoke", "smart_auth.logout": "logout"}
MAX_REQUEST_BODY = 1_000_000


def _items() -> list[Item]:
    items = g.get("audit_items")
    if items is None:
        items = g.audit_items = []
    return items


# -- what handlers report -----------------------------------------------------------------------------
def item(stored: Any, mode: str | None = None) -> None:
    """A resource version the request read or wrote (a StoredResource)."""
    if stored is not None and g.get("audit_on"):
        _items().append(Item(stored.type, stored.id, stored.version, stored.body, mode, stored.deleted))


def reference(rtype: str, rid: str | None, version: int | None = None, mode: str | None = None) -> None:
    _items().append(Item(rtype, rid, version, None, mode))


def patient(pid: str | None) -> None:
    """A patient the request concerns although no item of theirs was returned (a compartment, $everything)."""
    if pid:
        patients = g.get("audit_patients")
        if patients is None:
            patients = g.audit_patients = []
        patients.append(pid)


def file(url: str, rtype: str | None = None) -> None:
    """A file handed out (a bulk export file): its URL, the resource type it holds."""
    _items().append(Item(None, url, None, None, "file"))
    if rtype:
        g.audit_file_type = rtype


def bundle(body: Any) -> None:
    """The items of a searchset or history Bundle the request answers (every match and include)."""
    if type(body) is not dict or body.get("resourceType") != "Bundle" or not g.get("audit_on"):
        return
    kind = body.get("type")
    if kind not in ("searchset", "history"):
        return
    items = _items()
    _bundle_items(body, items)


def _bundle_items(body: dict, items: list[Item]) -> None:
    history = body.get("type") == "history"
    for entry in body.get("entry") or ():
        resource = entry.get("resource")
        if history:
            version = _etag_version((entry.get("response") or {}).get("etag"))
            rtype, rid = _type_id(entry.get("fullUrl"))
            if rtype:
                items.append(Item(rtype, rid, version, resource, "history", resource is None))
            continue
        if type(resource) is not dict or "id" not in resource:
            continue  # the outcome entry
        meta = resource.get("meta") or {}
        version = meta.get("versionId")
        mode = (entry.get("search") or {}).get("mode")
        items.append(Item(resource.get("resourceType"), resource["id"],
                          int(version) if isinstance(version, str) and version.isdigit() else None, resource, mode))


def _etag_version(etag: Any) -> int | None:
    if not isinstance(etag, str):
        return None
    value = etag.removeprefix("W/").strip('"')
    return int(value) if value.isdigit() else None


def _type_id(url: Any) -> tuple[str | None, str | None]:
    if not isinstance(url, str):
        return None, None
    parts = url.split("?", 1)[0].rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) >= 2 and parts[-2][:1].isupper() and not parts[-1].startswith(("$", "_")):
        return parts[-2], parts[-1]
    return None, None


# -- batch and transaction Bundles: one trace per entry -----------------------------------------------
def bundle_request(body: Any) -> None:
    """The batch/transaction Bundle being processed (its kind; its entries if the whole Bundle fails)."""
    g.audit_bundle = body


def bundle_entries(request_bundle: Any, response_bundle: dict) -> None:
    """One record per entry: its interaction, status, and the items it wrote or read."""
    auditor = current_app.extensions.get("fhir_audit")
    if auditor is None or not auditor.enabled:
        return
    g.audit_done = True
    start, end = g.get("audit_t0") or time.time(), time.time()
    principal = g.get("principal")
    server = fhir_base()
    address = request.remote_addr
    requested = (request_bundle.get("entry") if isinstance(request_bundle, dict) else None) or []
    for index, answer in enumerate(response_bundle.get("entry") or ()):
        asked = requested[index] if index < len(requested) and isinstance(requested[index], dict) else {}
        req = asked.get("request") if isinstance(asked.get("request"), dict) else {}
        method = str(req.get("method") or "").upper()
        url = str(req.get("url") or "")
        response = answer.get("response") or {}
        try:
            status = int(str(response.get("status", "0")).split()[0])
        except ValueError:
            status = 0
        subtype = _entry_subtype(method, url)
        action = INTERACTIONS.get(subtype, (METHOD_ACTIONS.get(method, "E"),))[0]
        if subtype == "update" and status == 201:
            action = "C"
        items: list[Item] = []
        rtype, rid, version = _location(response.get("location"))
        resource = answer.get("resource")
        if rtype:
            items.append(Item(rtype, rid, version, resource if type(resource) is dict else None))
        elif method in ("GET", "HEAD") and type(resource) is dict:
            if resource.get("resourceType") == "Bundle":
                _bundle_items(resource, items)
            elif "id" in resource:
                meta = resource.get("meta") or {}
                version = meta.get("versionId")
                items.append(Item(resource.get("resourceType"), resource["id"],
                                  int(version) if str(version).isdigit() else None, resource))
        if not items:
            etype, eid = _type_id(url)
            if etype:
                items.append(Item(etype, eid, _etag_version(response.get("etag")), None,
                                  deleted=method == "DELETE"))
        outcome = _issue_text(response.get("outcome")) if status >= 400 else None
        query = url.split("?", 1)[1] if "?" in url else None
        body = asked.get("resource") if status >= 400 and method in ("POST", "PUT") else None
        auditor.record(AuditRecord("rest", subtype, action, start, end, status, principal, items,
                                   query=query, outcome_text=outcome, address=address, request_body=body,
                                   server=server, operation=_operation_name(url)))


def _entry_subtype(method: str, url: str) -> str:
    path = url.split("?", 1)[0].strip("/")
    parts = [p for p in path.split("/") if p]
    if any(p.startswith("$") for p in parts):
        return "operation"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete"
    if "_history" in parts:
        at = parts.index("_history")
        if at == 0:
            return "history-system"
        if at == 1:
            return "history-type"
        return "history-instance" if at == len(parts) - 1 else "vread"
    if len(parts) >= 2 and parts[-1] != "_search":
        return "read" if len(parts) == 2 else "search-type"
    return "search-type" if parts else "search-system"


def _location(location: Any) -> tuple[str | None, str | None, int | None]:
    if not isinstance(location, str):
        return None, None, None
    parts = location.split("/")
    if "_history" in parts:
        at = parts.index("_history")
        version = parts[at + 1] if at + 1 < len(parts) else ""
        if at >= 2:
            return parts[at - 2], parts[at - 1], int(version) if version.isdigit() else None
    if len(parts) >= 2:
        return parts[-2], parts[-1], None
    return None, None, None


def _operation_name(path: str) -> str | None:
    for part in path.split("?", 1)[0].split("/"):
        if part.startswith("$"):
            return part
    return None


def _issue_text(outcome: Any) -> str | None:
    if type(outcome) is not dict:
        return None
    for issue in outcome.get("issue") or ():
        if isinstance(issue, dict) and issue.get("diagnostics"):
            return str(issue["diagnostics"])
    return None


# -- request hooks ---------------------------------------------------------------------------------------
def before_request() -> None:
    g.audit_t0 = time.time()
    auditor = current_app.extensions.get("fhir_audit")
    g.audit_on = auditor is not None and auditor.enabled


def after_request(response: Response) -> Response:
    """Trace the request just answered (never fails the response)."""
    try:
        auditor = current_app.extensions.get("fhir_audit")
        if auditor is None or not auditor.enabled or request.method == "OPTIONS":
            return response
        path = request.path
        if path.startswith("/fhir"):
            if path.rstrip("/").startswith(UNTRACED) or request.endpoint == "fhir.metadata":
                return response
            if not g.get("audit_done"):
                auditor.record(rest_record(response))
        elif request.endpoint in AUTH_ENDPOINTS and request.method == "POST":
            from fhir_server.audit.auth_events import auth_record
            record = auth_record(AUTH_ENDPOINTS[request.endpoint], response)
            if record is not None:
                auditor.record(record)
    except Exception:  # tracing must never turn an answer into an error; the failure is logged
        log.exception("tracing %s %s failed", request.method, request.path)
    return response


def rest_record(response: Response) -> AuditRecord:
    endpoint = request.endpoint or ""
    method = request.method
    status = response.status_code
    view_args = request.view_args or {}
    operation = _operation_name(request.path)
    items = g.get("audit_items") or []
    patients = list(g.get("audit_patients") or ())
    request_body = None
    if endpoint == "bundles.batch_or_transaction":
        requested = g.get("audit_bundle")
        subtype = requested.get("type") if isinstance(requested, dict) else None
        subtype = subtype if subtype in ("batch", "transaction") else "transaction"
        action = "E"
        if not items and isinstance(requested, dict):  # the whole Bundle failed: what it asked for
            for entry in requested.get("entry") or ():
                if not isinstance(entry, dict):
                    continue
                url = (entry.get("request") or {}).get("url") if isinstance(entry.get("request"), dict) else None
                etype, eid = _type_id(url)
                resource = entry.get("resource")
                if etype:
                    items.append(Item(etype, eid, None, resource if type(resource) is dict else None))
                elif type(resource) is dict and isinstance(resource.get("resourceType"), str):
                    items.append(Item(resource["resourceType"], None, None, resource))
    elif operation:
        subtype = "operation"
        action = OPERATION_ACTIONS.get(operation, "E")
        if operation == "$export-status" and method == "DELETE":
            action = "D"
    else:
        subtype = ENDPOINTS.get(endpoint)
        action = INTERACTIONS[subtype][0] if subtype else METHOD_ACTIONS.get(method, "E")
        if subtype == "update" and status == 201:
            action = "C"
    rtype, rid = view_args.get("rtype"), view_args.get("rid")
    if endpoint == "fhir.search_compartment" or endpoint.startswith("operations_api.everything"):
        if rid:
            patients.append(rid)
    elif not items and rtype and rid:  # a refusal or an error: the resource the request named
        vid = view_args.get("vid")
        items = [Item(rtype, rid, int(vid) if isinstance(vid, str) and vid.isdigit() else None, None,
                      deleted=subtype == "delete")]
    elif not items and endpoint == "bulk_api.export_group":
        items = [Item("Group", view_args.get("group_id"))]
    if status >= 400 and method in ("POST", "PUT") and not operation \
            and (request.content_length or 0) <= MAX_REQUEST_BODY:
        request_body = request.get_data(cache=True) or None
    query = request.query_string.decode("utf-8", "replace") if request.query_string else None
    if method == "POST" and request.mimetype == "application/x-www-form-urlencoded":
        form = urlencode(list(request.form.items(multi=True)))
        query = "&".join(q for q in (query, form) if q) or None
    outcome = None
    if status >= 400 and not response.direct_passthrough and response.mimetype.endswith("json"):
        try:
            outcome = _issue_text(jsonio.loads(response.get_data()))
        except Exception:
            outcome = None
    if status >= 400 and outcome is None:
        outcome = response.status
    return AuditRecord("rest", subtype, action, g.get("audit_t0") or time.time(), time.time(), status,
                       g.get("principal"), list(items), patients, query=query, operation=operation,
                       outcome_text=outcome, address=request.remote_addr, request_body=request_body,
                       server=fhir_base())
