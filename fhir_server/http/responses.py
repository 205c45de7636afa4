"""Request context and response helpers shared by every blueprint of the REST layer."""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, g, request
from werkzeug.routing import BaseConverter

from fhir_server.audit import capture as audit_capture
from fhir_server.http.negotiation import response_type
from fhir_server.http.rendering import version_headers
from fhir_server.http.urls import fhir_base
from fhir_server.model import jsonio
from fhir_server.model.outcome import Issue, operation_outcome
from fhir_server.store.base import StoredResource


class TypeConverter(BaseConverter):
    """A resource type name in a URL: ``Patient`` but never ``_history``, ``_search`` or ``$everything``."""

    regex = "[A-Z][A-Za-z]{1,63}"


PUBLIC_ENDPOINTS = {"fhir.metadata"}
# the SMART authorization server's pages, OAuth endpoints and discovery documents answer for themselves
NON_FHIR_BLUEPRINTS = {"smart_auth", "smart_discovery"}


def fhir() -> Any:
    """The application's services (see ``fhir_server.app.FHIRServer``)."""
    return current_app.extensions["fhir"]


def base_url() -> str:
    return fhir_base()


def before_request() -> None:
    """Negotiate the response format and identify the principal, once per request."""
    if request.blueprint in NON_FHIR_BLUEPRINTS:
        return
    g.mime = response_type(request)
    if request.endpoint not in PUBLIC_ENDPOINTS:
        g.principal = fhir().gate.principal(request.headers.get("Authorization"))


def respond(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A FHIR JSON response; ``body`` is a dict or already-encoded bytes."""
    if type(body) is dict:
        audit_capture.bundle(body)  # the items of a searchset/history Bundle, for the trace
    pretty = request.args.get("_pretty") == "true"
    data = body if isinstance(body, bytes) else jsonio.dumps(body, pretty=pretty)
    if pretty and isinstance(body, bytes):
        data = jsonio.dumps(jsonio.loads(body), pretty=True)
    response = Response(data, status=status, mimetype=g.get("mime", "application/fhir+json"))
    response.headers["Content-Type"] = f"{response.mimetype}; charset=utf-8"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def resource_response(stored: StoredResource, status: int = 200, *, location: bool = False,
                      issues: list[Issue] | None = None) -> Response:
    """A resource with its ETag/Last-Modified (and Location), shaped by ``Prefer: return=``."""
    audit_capture.item(stored)  # the version read or written, for the trace
    headers = version_headers(stored)
    if location:
        headers["Location"] = f"{base_url()}/{stored.type}/{stored.id}/_history/{stored.version}"
    prefer = prefer_value("return")
    if prefer == "minimal":
        response = Response(b"", status=status)
        for key, value in headers.items():
            response.headers[key] = value
        return response
    if prefer == "OperationOutcome":
        return respond(operation_outcome(issues or []), status, headers)
    summary, elements = request.args.get("_summary"), request.args.get("_elements")
    if summary or elements:
        body = fhir().renderer.body(stored, summary, elements.split(",") if elements else None)
        return respond(body, status, headers)
    return respond(stored.body, status, headers)


def prefer_value(name: str) -> str | None:
    """The value of one ``Prefer`` header preference (``return``, ``handling``, ``respond-async``)."""
    for part in request.headers.get("Prefer", "").split(";"):
        for item in part.split(","):
            key, _, value = item.strip().partition("=")
            if key.strip() == name:
                return value.strip().strip('"') or "true"
    return None
