"""Every failure leaves as an OperationOutcome: FHIR errors, HTTP errors, and crashes (logged, never shown)."""
from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from fhir_server.model import jsonio
from fhir_server.model.outcome import FHIRError, Issue, operation_outcome

log = logging.getLogger("fhir_server")

HTTP_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported",
                    406: "not-supported", 409: "conflict", 410: "deleted", 412: "conflict", 413: "too-costly",
                    415: "not-supported", 422: "processable", 429: "throttled"}


def outcome_response(status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> Response:
    response = Response(jsonio.dumps(operation_outcome(issues)), status=status,
                        content_type="application/fhir+json; charset=utf-8")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def register(app: Flask) -> None:
    @app.errorhandler(FHIRError)
    def fhir_error(error: FHIRError) -> Response:
        return outcome_response(error.status, error.issues, error.headers)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        message = {
            404: f"Nothing is served at {request.path}",
            405: f"{request.method} is not supported on {request.path}",
            413: "The request body is larger than this server accepts "
                 f"({app.config.get('MAX_CONTENT_LENGTH')} bytes)",
        }.get(status, error.description or error.name)
        headers = {}
        if status == 405 and getattr(error, "valid_methods", None):
            headers["Allow"] = ", ".join(error.valid_methods)
        return outcome_response(status, [Issue("error", HTTP_ISSUE_CODES.get(status, "exception"), message)], headers)

    @app.errorhandler(Exception)
    def crash(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return outcome_response(500, [Issue("fatal", "exception", "Internal server error; it has been logged")])
