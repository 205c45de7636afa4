"""The FHIR RESTful API (R4 http.html) at ``/fhir``: one blueprint, thin handlers.

Handlers parse the HTTP request (ids, headers, body), call a service and shape
the response (status, ETag, Location, Prefer). They hold no FHIR logic of their own.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, g, request

from fhir_server.audit import capture as audit_capture
from fhir_server.audit import check_client_create
from fhir_server.http.negotiation import read_json, read_patch
from fhir_server.http.rendering import version_headers
from fhir_server.http.responses import base_url, fhir, prefer_value, resource_response, respond
from fhir_server.model.outcome import FHIRError, Issue, operation_outcome
from fhir_server.store.base import StoredResource

api = Blueprint("fhir", __name__)

TYPE = "<type:rtype>"
ID = "<string(minlength=1):rid>"


def _if_match() -> int | None:
    value = request.headers.get("If-Match")
    if not value:
        return None
    tag = value.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise FHIRError.of(400, "invalid", f"If-Match must be an ETag such as W/\"3\", not {value!r}")
    return int(tag)


def _criteria() -> str:
    return urlencode([(k, v) for k, v in request.args.items(multi=True) if not k.startswith("_format")
                      and k != "_pretty"])


# -- instance level -----------------------------------------------------------------------------
@api.get(f"/{TYPE}/{ID}")
def read(rtype: str, rid: str) -> Response:
    stored = fhir().resources.read(g.principal, rtype, rid)
    if _not_modified(stored):
        audit_capture.item(stored)  # a conditional read is a read: traced
        return Response(status=304, headers=version_headers(stored))
    return resource_response(stored)


def _not_modified(stored: StoredResource) -> bool:
    none_match = request.headers.get("If-None-Match")
    if none_match:
        tags = {t.strip().removeprefix("W/").strip('"') for t in none_match.split(",")}
        return str(stored.version) in tags or "*" in tags
    since = request.if_modified_since
    if since is not None:
        from datetime import datetime
        modified = datetime.fromisoformat(stored.last_updated.replace("Z", "+00:00")).replace(microsecond=0)
        return modified <= since
    return False


@api.get(f"/{TYPE}/{ID}/_history/<string:vid>")
def vread(rtype: str, rid: str, vid: str) -> Response:
    return resource_response(fhir().resources.vread(g.principal, rtype, rid, vid))


@api.put(f"/{TYPE}/{ID}")
def update(rtype: str, rid: str) -> Response:
    result = fhir().resources.update(g.principal, rtype, rid, read_json(request), _if_match())
    return resource_response(result.resource, 201 if result.created else 200, location=True, issues=result.outcome)


@api.patch(f"/{TYPE}/{ID}")
def patch(rtype: str, rid: str) -> Response:
    result = fhir().resources.patch(g.principal, rtype, rid, read_patch(request), _if_match())
    return resource_response(result.resource, 200, issues=result.outcome)


@api.delete(f"/{TYPE}/{ID}")
def delete(rtype: str, rid: str) -> Response:
    marker = fhir().resources.delete(g.principal, rtype, rid)
    audit_capture.item(marker)  # the deletion marker (its patient is found from the version before)
    headers = {"ETag": f'W/"{marker.version}"'} if marker else {}
    return respond(operation_outcome([Issue("information", "informational",
                                            f"{rtype}/{rid} deleted" if marker else f"{rtype}/{rid} was not there "
                                            "or already deleted: nothing to do")]), 200, headers)


@api.get(f"/{TYPE}/{ID}/_history")
def history_instance(rtype: str, rid: str) -> Response:
    return _history(rtype, rid)


# -- type level ---------------------------------------------------------------------------------
@api.post(f"/{TYPE}")
def create(rtype: str) -> Response:
    check_client_create(g.principal, fhir().gate, rtype)  # traces: only the server and system/ clients write
    result = fhir().resources.create(g.principal, rtype, read_json(request), request.headers.get("If-None-Exist"))
    return resource_response(result.resource, 201 if result.created else 200, location=True,
                             issues=result.outcome)


@api.put(f"/{TYPE}")
def conditional_update(rtype: str) -> Response:
    criteria = _require_criteria("update")
    result = fhir().resources.conditional_update(g.principal, rtype, criteria, read_json(request), _if_match())
    return resource_response(result.resource, 201 if result.created else 200, location=True, issues=result.outcome)


@api.patch(f"/{TYPE}")
def conditional_patch(rtype: str) -> Response:
    criteria = _require_criteria("patch")
    result = fhir().resources.conditional_patch(g.principal, rtype, criteria, read_patch(request),
                                                _if_match())
    return resource_response(result.resource, 200, issues=result.outcome)


@api.delete(f"/{TYPE}")
def conditional_delete(rtype: str) -> Response:
    criteria = _require_criteria("delete")
    count = fhir().resources.conditional_delete(g.principal, rtype, criteria)
    message = f"{count} resource(s) deleted" if count else "No resource matched: nothing to delete"
    return respond(operation_outcome([Issue("information", "informational", message)]), 200)


def _require_criteria(interaction: str) -> str:
    criteria = _criteria()
    if not criteria:
        raise FHIRError.of(400, "invalid", f"A conditional {interaction} needs search criteria in the URL; "
                           f"to {interaction} one resource use its id: [type]/[id]")
    return criteria


@api.get(f"/{TYPE}/_history")
def history_type(rtype: str) -> Response:
    return _history(rtype, None)


@api.get("/_history")
def history_system() -> Response:
    return _history(None, None)


def _history(rtype: str | None, rid: str | None) -> Response:
    from fhir_server.http.bundles import history_bundle
    args = request.args
    count = args.get("_count", "50")
    if not count.isdigit():
        raise FHIRError.of(400, "invalid", "_count must be a non-negative integer", "_count")
    since = _instant_arg("_since")
    at = _instant_arg("_at", period=True)
    page = fhir().resources.history(g.principal, rtype, rid, since=since, at=at,
                                    count=min(int(count), 1000), cursor=args.get("_page"))
    return respond(history_bundle(page, base_url(), request.path, args))


def _instant_arg(name: str, period: bool = False) -> Any:
    """The instant a date parameter starts at, or with ``period`` the (start, end) of its period."""
    value = request.args.get(name)
    if value is None:
        return None
    from fhir_server.model.dates import period_instants
    try:
        return period_instants(value) if period else period_instants(value)[0]
    except ValueError:
        raise FHIRError.of(400, "invalid", f"{name} must be a FHIR instant, not '{value}'", name) from None


# -- search -------------------------------------------------------------------------------------
@api.get(f"/{TYPE}")
def search_type(rtype: str) -> Response:
    return _search((rtype,), list(request.args.items(multi=True)))


@api.post(f"/{TYPE}/_search")
def search_type_post(rtype: str) -> Response:
    return _search((rtype,), _form_params())


@api.get("/")
@api.get("")
def search_system() -> Response:
    return _search(_types_param(request.args.getlist("_type")), list(request.args.items(multi=True)))


@api.post("/_search")
def search_system_post() -> Response:
    params = _form_params()
    return _search(_types_param([v for k, v in params if k == "_type"]), params)


@api.get(f"/Patient/{ID}/{TYPE}")
def search_compartment(rid: str, rtype: str) -> Response:
    if rtype == "*":
        raise FHIRError.of(400, "not-supported", "Compartment search over every type is not supported; "
                           "name a type")
    links = fhir().definitions.patient_compartment.get(rtype)
    if not links:
        raise FHIRError.of(404, "not-found", f"{rtype} is not in the Patient compartment")
    try:
        fhir().resources.read(g.principal, "Patient", rid)  # 404/410 for an unknown patient (or one out of reach)
    except FHIRError as exc:
        if exc.status != 403:
            raise
        # a token that may search the type but not read Patient: no existence check (the search is constrained)
    return _search((rtype,), list(request.args.items(multi=True)), compartment=("Patient", rid, tuple(links)))


def _form_params() -> list[tuple[str, str]]:
    if request.mimetype not in ("application/x-www-form-urlencoded", "", None):
        raise FHIRError.of(415, "not-supported", "POST _search takes application/x-www-form-urlencoded")
    return list(request.args.items(multi=True)) + list(request.form.items(multi=True))


def _types_param(values: list[str]) -> tuple[str, ...]:
    types = tuple(t for value in values for t in value.split(",") if t)
    unknown = [t for t in types if not fhir().definitions.is_served(t)]
    if unknown:
        raise FHIRError.of(400, "invalid", f"_type names types this server does not serve: {', '.join(unknown)}",
                           "_type")
    return types


def _search(types: tuple[str, ...], params: list[tuple[str, str]],
            compartment: tuple[str, str, tuple[str, ...]] | None = None) -> Response:
    from fhir_server.http.bundles import search_bundle
    from fhir_server.search.query import AnyOf, Clause, ReferenceValue
    for rtype in types:
        fhir().resources.served(rtype, "search-type")
    strict = prefer_value("handling") == "strict"
    params = [(k, v) for k, v in params if k not in ("_format", "_pretty")]
    base = base_url()
    parsed = fhir().parser.parse(types, params, strict=strict, base=base)
    if compartment is not None:  # any of the type's links to the compartment's resource, on this server
        ctype, cid, links = compartment
        value = (ReferenceValue(ctype, cid, f"{base}/{ctype}/{cid}"),)
        clauses = tuple(Clause(p, "reference", None, value) for p in links)
        parsed.query.clauses.append(clauses[0] if len(clauses) == 1 else AnyOf(clauses))
    result = fhir().search.search(g.principal, parsed)
    path = request.path if request.method == "GET" else request.path.removesuffix("/_search")
    return respond(search_bundle(result, parsed, base_url(), path, fhir().renderer))


# -- capability ---------------------------------------------------------------------------------
@api.get("/metadata")
def metadata() -> Response:
    return respond(fhir().capability_json(base_url()))
