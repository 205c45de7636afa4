"""Traces of the authorization server (``/auth``): sign-in steps, token issuance, revocation, sign-out.

Recorded as AuditEvents of type DICOM 110114 "User Authentication" with the account as the agent
(its ``fhirUser`` when it has one, so a patient finds their own sign-ins in their compartment), from
the app-level request hooks (:func:`fhir_server.audit.capture.after_request`): the views themselves
are not changed.
"""
from __future__ import annotations

import base64
import time
from typing import Any

from flask import Response, current_app, g, request

from fhir_server.access.gate import Principal
from fhir_server.audit.model import AuditRecord
from fhir_server.http.urls import fhir_base
from fhir_server.model import jsonio


def before_auth_request() -> None:
    """Remember whose one-time code is being checked (the view forgets it when the code expires)."""
    if request.endpoint == "smart_auth.code" and request.method == "POST":
        try:
            from auth.views import session
            g.audit_auth_user = (session().data.get("pending") or {}).get("username")
        except Exception:
            g.audit_auth_user = None
    elif request.endpoint == "smart_auth.logout":
        try:
            from auth.views import session
            g.audit_auth_user = session().user
        except Exception:
            g.audit_auth_user = None


def _smart() -> Any:
    return current_app.extensions.get("smart_auth")


def _account_principal(username: str | None) -> Principal:
    smart = _smart()
    account = smart.account(username) if smart is not None and username else None
    if account is None:
        return Principal(username or "unknown", authenticated=False)
    return Principal(account.id, authenticated=True, fhir_user=account.fhir_user, role=account.role)


def _claims(token: str) -> dict:
    """The claims of an access token this server has just issued (its payload; no verification needed)."""
    try:
        payload = token.split(".")[1]
        return jsonio.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except Exception:
        return {}


def _client_id() -> str | None:
    client_id = request.form.get("client_id")
    if client_id:
        return client_id
    auth = request.authorization
    if auth is not None and auth.type == "basic":
        return auth.username
    assertion = request.form.get("client_assertion")
    if assertion:
        return _claims(assertion).get("iss")
    return None


def _error(response: Response) -> str | None:
    if response.mimetype == "application/json":
        try:
            body = jsonio.loads(response.get_data())
            return " ".join(str(body.get(k)) for k in ("error", "error_description") if body.get(k)) or None
        except Exception:
            return None
    return None


def auth_record(kind: str, response: Response) -> AuditRecord | None:
    status = response.status_code
    patients: list[str] = []
    text = None
    if kind == "password":
        principal = _account_principal(request.form.get("username", "").strip() or None)
        if status in (302, 303):
            text = "password accepted; one-time code sent"
        elif status == 429:
            text = "account locked after too many failed attempts"
        else:
            text = "wrong username or password" if status == 401 else "sign-in refused"
    elif kind == "login":
        sess = g.get("smart_session")
        user = (sess.data.get("user") if sess is not None else None) if status in (302, 303) else None
        principal = _account_principal(user or g.get("audit_auth_user"))
        text = "signed in (password and one-time code)" if user else "one-time code refused"
        if not user and status in (302, 303):
            return None  # no pending sign-in: sent back to the password page, nothing was checked
    elif kind == "logout":
        principal = _account_principal(g.get("audit_auth_user"))
        text = "signed out"
    else:  # token, revoke
        client_id = _client_id()
        claims: dict = {}
        if kind == "token" and status == 200:
            try:
                claims = _claims(jsonio.loads(response.get_data()).get("access_token") or "")
            except Exception:
                claims = {}
        if claims:
            role = claims.get("role")
            subject = claims.get("sub") or client_id or "unknown"
            principal = Principal(subject, authenticated=True, fhir_user=claims.get("fhirUser"),
                                  client_id=claims.get("client_id") or client_id, role=role)
            if claims.get("patient"):
                patients.append(str(claims["patient"]))
            text = f"access token issued to {claims.get('client_id') or client_id} " \
                   f"(grant {request.form.get('grant_type')}, scope {claims.get('scope', '')})"
        else:
            principal = Principal(client_id or "unknown", authenticated=False, client_id=client_id)
            text = (_error(response) or ("token revoked" if kind == "revoke" and status == 200 else None))
    start = g.get("audit_t0") or time.time()
    return AuditRecord("auth", kind, "E", start, time.time(), status, principal, [], patients,
                       outcome_text=text, address=request.remote_addr, server=fhir_base())
