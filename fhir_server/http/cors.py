"""Cross-origin access for browser SMART apps: the FHIR API and the token endpoints answer any origin.

Access is carried by bearer tokens, never by cookies, so allowing every origin exposes
nothing a script could not already reach with a token; the login and approval pages (which
use a session cookie) get no CORS headers at all.
"""
from __future__ import annotations

from flask import Flask, Response, request

CORS_PATHS = ("/fhir", "/auth/token", "/auth/introspect", "/auth/revoke", "/auth/register",
              "/auth/.well-known/", "/auth/userinfo", "/.well-known/")
ALLOW_HEADERS = ("Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist, "
                 "If-Modified-Since, X-Requested-With")
EXPOSE_HEADERS = "Location, Content-Location, ETag, Last-Modified, X-Progress, Retry-After, WWW-Authenticate"


def applies() -> bool:
    return request.path.startswith(CORS_PATHS)


def preflight() -> Response | None:
    """Answer a CORS preflight before the gate asks for a token (a preflight never carries one)."""
    if request.method == "OPTIONS" and applies() and "Access-Control-Request-Method" in request.headers:
        return Response(status=204)
    return None


def add_headers(response: Response) -> Response:
    if applies() and "Origin" in request.headers:
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
    return response


def init_app(app: Flask) -> None:
    app.before_request(preflight)  # registered first: it runs before the gate
    app.after_request(add_headers)
