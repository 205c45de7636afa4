"""``POST [base]``: batch and transaction Bundles (R4 http.html §3.1.0.11).

Registered with ``app.register_blueprint(bundle_api, url_prefix="/fhir")``. The
processing is :class:`fhir_server.services.bundles.BundleService`; this handler only
reads the body and the ``Prefer`` header and answers the response Bundle.
"""
from __future__ import annotations

from flask import Blueprint, Response, g, request

from fhir_server.audit import capture as audit_capture
from fhir_server.audit import check_bundle_feeds
from fhir_server.http.negotiation import read_json
from fhir_server.http.responses import base_url, fhir, prefer_value, respond

bundle_api = Blueprint("bundles", __name__)


@bundle_api.post("")
@bundle_api.post("/")
def batch_or_transaction() -> Response:
    body = read_json(request)
    audit_capture.bundle_request(body)
    check_bundle_feeds(g.principal, fhir().gate, body)  # only system/ clients may feed AuditEvents
    result = fhir().bundles.process(g.principal, body, base=base_url(), prefer_return=prefer_value("return"),
                                      strict=prefer_value("handling") == "strict")
    audit_capture.bundle_entries(body, result)  # one trace per entry
    return respond(result, 200)
