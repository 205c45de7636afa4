"""The record's own operations (issue #7): ``POST /fhir/Patient/{id}/$emergency-access`` and ``$close``.

See :mod:`fhir_server.policy.emergency` for the rules; the body is a ``Parameters`` resource with
``reason`` (string, required) and ``mode`` (code: ``bris-de-glace`` | ``centre-regulation``); the
answer is ``Parameters`` with ``expires`` (instant) and ``access`` (the AuditEvent recording it).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, request

from fhir_server.http.negotiation import read_json
from fhir_server.http.responses import fhir, respond
from fhir_server.model.outcome import bad_request
from fhir_server.policy.closing import close_record
from fhir_server.policy.emergency import open_emergency_access

record_api = Blueprint("record_api", __name__)


@record_api.post("/Patient/<string(minlength=1):rid>/$emergency-access")
def emergency_access(rid: str) -> Response:
    body = read_json(request)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("The body must be a Parameters resource with a 'reason'", "Parameters")
    values = {p.get("name"): _value(p) for p in body.get("parameter", []) if isinstance(p, dict)}
    event = open_emergency_access(fhir(), current_app.extensions.get("dmp-notifier"), g.principal, rid,
                                  values.get("reason"), values.get("mode"))
    return respond({"resourceType": "Parameters", "parameter": [
        {"name": "expires", "valueInstant": event["period"]["end"]},
        {"name": "access", "valueReference": {"reference": f"AuditEvent/{event['id']}"}}]})


@record_api.post("/Patient/<string(minlength=1):rid>/$close")
def close(rid: str) -> Response:
    """Close the record (``delete`` = true: and delete it after the grace period); answers the creation consent."""
    body = read_json(request) if request.get_data(cache=True).strip() else {"resourceType": "Parameters"}
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("The body must be a Parameters resource (optional 'delete')", "Parameters")
    values = {p.get("name"): _value(p) for p in body.get("parameter", []) if isinstance(p, dict)}
    return respond(close_record(fhir(), g.principal, rid, values.get("delete") is True))


def _value(parameter: dict) -> Any:
    return next((v for k, v in parameter.items() if k.startswith("value")), None)
