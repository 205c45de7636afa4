"""The authorization server's HTTP endpoints and pages (blueprint ``smart_auth``, mounted at ``/auth``).

Pages a person sees: sign in (``username``, ``password``), one-time code (``code``), approval (the
requested access in plain words, a patient picker when one is needed, buttons ``approve`` and
``deny``). Every form carries a hidden ``csrf_token`` bound to the browser session; the session is a
random id in a cookie (HttpOnly, SameSite=Lax, Secure only over https so loopback http works in
development) naming a record in the database, so every worker process knows it.
"""
from __future__ import annotations

import hmac
import logging
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from authlib.oauth2.rfc6749 import OAuth2Error
from authlib.oauth2.rfc6749.errors import InsecureTransportError
from flask import Blueprint, Response, current_app, g, jsonify, redirect, request
from werkzeug.exceptions import HTTPException

from auth import scopes as smart_scopes
from auth.models import Subject
from auth.otp import NoContact
from auth.registry import RegistryError, create_launch
from auth.senders import SendError
from auth.server import SmartAuth, StoredAuthorizationRequest
from auth.tokens import TokenError

log = logging.getLogger("auth")

bp = Blueprint("smart_auth", __name__)

SESSION_COOKIE = "smart_session"
SESSION_TTL = 12 * 3600
REQUEST_TTL = 1800

_templates = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
                                autoescape=True, undefined=jinja2.StrictUndefined)


def smart() -> SmartAuth:
    return current_app.extensions["smart_auth"]


def page(name: str, status: int = 200, **context: Any) -> Response:
    context.setdefault("error", None)
    context.setdefault("message", None)
    html = _templates.get_template(name).render(**context)
    response = Response(html, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = \
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def error_page(message: str, status: int = 400) -> Response:
    return page("error.html", status, message=message)


# -- browser sessions --------------------------------------------------------------------------------------
class Session:
    def __init__(self, sid: str, data: dict, new: bool):
        self.sid, self.data, self.new = sid, data, new

    @property
    def csrf(self) -> str:
        return self.data["csrf"]

    @property
    def user(self) -> str | None:
        return self.data.get("user")


def session() -> Session:
    if "smart_session" in g:
        return g.smart_session
    auth, now = smart(), smart().now()
    sid = request.cookies.get(SESSION_COOKIE)
    data = auth.store.get("sessions", sid, now) if sid else None
    if data is None:
        sid = secrets.token_urlsafe(32)
        data = {"csrf": secrets.token_urlsafe(32), "created": now, "requests": []}
        auth.store.put("sessions", sid, data, now + SESSION_TTL)
        g.smart_session = Session(sid, data, True)
    else:
        g.smart_session = Session(sid, data, False)
    return g.smart_session


def save_session(sess: Session) -> None:
    auth = smart()
    auth.store.put("sessions", sess.sid, sess.data, sess.data["created"] + SESSION_TTL)


def rotate_session(sess: Session) -> Session:
    """A new id after sign-in (no session fixation); the old record is dropped."""
    auth, now = smart(), smart().now()
    auth.store.delete("sessions", sess.sid)
    data = dict(sess.data, csrf=secrets.token_urlsafe(32), created=now)
    fresh = Session(secrets.token_urlsafe(32), data, True)
    auth.store.put("sessions", fresh.sid, fresh.data, now + SESSION_TTL)
    g.smart_session = fresh
    return fresh


@bp.after_request
def set_session_cookie(response: Response) -> Response:
    sess = g.get("smart_session")
    if sess is not None and sess.new:
        response.set_cookie(SESSION_COOKIE, sess.sid, max_age=SESSION_TTL, path="/auth", httponly=True,
                            samesite="Lax", secure=request.is_secure)
    return response


def csrf_ok(sess: Session) -> bool:
    sent = request.form.get("csrf_token", "")
    return bool(sent) and hmac.compare_digest(sent, sess.csrf)


def csrf_refused() -> Response:
    return error_page("This form has expired or did not come from this site. Go back, reload the page and "
                      "try again.", 400)


# -- errors ------------------------------------------------------------------------------------------------
@bp.errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    if request.path.endswith(("/token", "/introspect", "/revoke", "/register", "/launch", "/userinfo")):
        return jsonify(error="invalid_request", error_description=error.description or error.name), error.code
    return error_page(error.description or error.name, error.code or 400)


def oauth_error(error: OAuth2Error, oauth_request=None) -> Response:
    """Back to the app when its redirect URI is known and checked; otherwise a page for the person."""
    if error.redirect_uri:
        return smart().oauth.handle_error_response(oauth_request, error)
    description = error.description or error.error
    return error_page(f"The application's request cannot be served: {description} ({error.error}).", 400)


def insecure_transport() -> Response:
    return jsonify(error="insecure_transport",
                   error_description="OAuth 2 needs https (plain http is allowed on loopback addresses "
                                     "only; behind a TLS proxy set --base-url https://...)"), 400


# -- pending authorization requests ------------------------------------------------------------------------
def _stored_request(rid: str | None, sess: Session) -> tuple[dict | None, StoredAuthorizationRequest | None]:
    if not rid or rid not in sess.data.get("requests", []):
        return None, None
    record = smart().store.get("requests", rid, smart().now())
    if record is None:
        return None, None
    return record, StoredAuthorizationRequest(record["params"], smart().issuer() + "/authorize")


def _next_step(rid: str | None) -> Response:
    sess = session()
    query = "?" + urlencode({"rid": rid}) if rid else ""
    if not sess.user:
        return redirect(f"{smart().issuer()}/login{query}", 303)
    if rid:
        return redirect(f"{smart().issuer()}/approve{query}", 303)
    return page("done.html", username=sess.user)


@bp.route("/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    auth = smart()
    try:
        oauth_request = auth.oauth.create_oauth2_request(None)
    except InsecureTransportError:
        return insecure_transport()
    sess = session()
    account = auth.account(sess.user) if sess.user else None
    try:
        auth.oauth.get_consent_grant(request=oauth_request, end_user=account)
    except OAuth2Error as error:
        return oauth_error(error, oauth_request)
    params = {k: request.values.get(k) for k in request.values.keys()}
    rid = secrets.token_urlsafe(24)
    now = auth.now()
    auth.store.put("requests", rid, {"params": params, "created": now}, now + REQUEST_TTL)
    sess.data["requests"] = (sess.data.get("requests", []) + [rid])[-20:]
    if params.get("prompt") and "login" in params["prompt"].split() and sess.user:
        sess.data.pop("user", None)
    save_session(sess)
    return _next_step(rid)


# -- sign in: password, then one-time code -----------------------------------------------------------------
@bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    auth, sess = smart(), session()
    rid = request.values.get("rid")
    if request.method == "GET":
        return page("login.html", csrf=sess.csrf, rid=rid or "", username="")
    if not csrf_ok(sess):
        return csrf_refused()
    username = request.form.get("username", "").strip()
    password = request.form.get("password", "")
    locked = auth.lockout.locked_for(username) if username else 0
    if locked:
        minutes = int(locked // 60) + 1
        return page("login.html", 429, csrf=sess.csrf, rid=rid or "", username=username,
                    error=f"Too many failed attempts: this account is locked. Try again in {minutes} "
                          f"minute{'s' if minutes > 1 else ''}.")
    account = auth.account(username)
    from auth.passwords import verify_password
    if not verify_password(password, account.password_hash if account else None) or account.disabled:
        auth.lockout.failure(username or "-")
        return page("login.html", 401, csrf=sess.csrf, rid=rid or "", username=username,
                    error="Wrong username or password.")
    auth.lockout.success(username)
    try:
        challenge = auth.codes.start(account)
    except NoContact:
        return error_page("This account has no e-mail address or phone number to send a sign-in code to. "
                          "Ask an administrator to add one.", 409)
    except SendError as exc:
        log.error("cannot send a sign-in code to %s: %s", account.username, exc)
        return error_page("The sign-in code could not be sent. Try again later.", 503)
    sess.data["pending"] = {"username": account.username, "challenge": challenge}
    save_session(sess)
    return redirect(f"{auth.issuer()}/code?" + urlencode({"rid": rid or ""}), 303)


def _masked(account) -> str:
    channel, address = account.contact
    if channel == "email":
        local, _, domain = address.partition("@")
        return f"e-mail to {local[:1]}•••@{domain}"
    return f"SMS to •••{address[-2:]}"


@bp.route("/code", methods=["GET", "POST"])
def code() -> Response:
    auth, sess = smart(), session()
    rid = request.values.get("rid") or ""
    pending = sess.data.get("pending")
    account = auth.account(pending["username"]) if pending else None
    if not pending or account is None:
        return redirect(f"{auth.issuer()}/login?" + urlencode({"rid": rid}), 303)
    if request.method == "GET":
        return page("code.html", csrf=sess.csrf, rid=rid, sent_to=_masked(account))
    if not csrf_ok(sess):
        return csrf_refused()
    check = auth.codes.check(pending["challenge"], request.form.get("code", ""))
    if check.ok and check.username == account.username:
        sess.data.pop("pending", None)
        sess = rotate_session(sess)
        sess.data.update(user=account.username, auth_time=int(auth.now()))
        save_session(sess)
        return _next_step(rid or None)
    if check.reason == "wrong":
        return page("code.html", 401, csrf=sess.csrf, rid=rid, sent_to=_masked(account),
                    error=f"Wrong code. {check.attempts_left} attempt"
                          f"{'s' if check.attempts_left > 1 else ''} left.")
    sess.data.pop("pending", None)
    save_session(sess)
    return page("login.html", 401, csrf=sess.csrf, rid=rid, username=account.username,
                error="The code has expired or was tried too many times. Sign in again to get a new one.")


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    auth = smart()
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        auth.store.delete("sessions", sid)
    response = page("done.html", username=None)
    response.delete_cookie(SESSION_COOKIE, path="/auth")
    return response


# -- approval ----------------------------------------------------------------------------------------------
def _context(auth: SmartAuth, account, scopes: list[str], params: dict) -> tuple[dict, str | None]:
    """The launch context this approval would bind: ({patient, encounter, banner, pick}, error)."""
    launch = params.get("launch")
    if launch:
        ctx = auth.launch_context(launch)
        if ctx is None:
            return {}, "The launch has expired. Start the application again from the record."
        if ctx.get("user") and ctx["user"] != account.username.lower():
            return {}, "This launch was prepared for another user."
        if "launch" in scopes or smart_scopes.needs_patient(scopes):
            return {"patient": ctx["patient"], "encounter": ctx.get("encounter"), "banner": False,
                    "pick": False}, None
        return {"pick": False}, None
    if not smart_scopes.needs_patient(scopes):
        return {"pick": False}, None
    if account.role == "patient":
        if not account.own_patient:
            return {}, "Your account is not linked to a patient record yet; ask an administrator."
        return {"patient": account.own_patient, "banner": True, "pick": False}, None
    return {"banner": True, "pick": True}, None


@bp.route("/approve", methods=["GET", "POST"])
def approve() -> Response:
    auth, sess = smart(), session()
    rid = request.values.get("rid")
    record, oauth_request = _stored_request(rid, sess)
    if record is None:
        return error_page("This authorization request has expired or is unknown. Go back to the application "
                          "and start again.", 400)
    if not sess.user:
        return redirect(f"{auth.issuer()}/login?" + urlencode({"rid": rid}), 303)
    account = auth.account(sess.user)
    if account is None or account.disabled:
        sess.data.pop("user", None)
        save_session(sess)
        return redirect(f"{auth.issuer()}/login?" + urlencode({"rid": rid}), 303)
    try:
        grant = auth.oauth.get_consent_grant(request=oauth_request, end_user=account)
    except OAuth2Error as error:
        return oauth_error(error, oauth_request)
    scopes = smart_scopes.split(oauth_request.scope)
    context, problem = _context(auth, account, scopes, record["params"])
    client = oauth_request.client

    def show(status: int = 200, error: str | None = None) -> Response:
        return page("approve.html", status, csrf=sess.csrf, rid=rid,
                    client_name=client.data.get("client_name"), client_id=client.get_client_id(),
                    username=account.username, role=account.role,
                    access=[(s, smart_scopes.describe(s)) for s in scopes], context=context,
                    choices=auth.patient_choices(account) if context.get("pick") else [],
                    problem=problem, error=error, redirect_host=_host(record["params"].get("redirect_uri")))

    if request.method == "GET":
        return show(403 if problem else 200)
    if not csrf_ok(sess):
        return csrf_refused()
    if "approve" not in request.form:  # "deny", or anything but an explicit approval
        return _finish(sess, rid, auth.oauth.create_authorization_response(request=oauth_request, grant=grant,
                                                                           grant_user=None))
    if problem:
        return show(403)
    patient = context.get("patient")
    if context.get("pick"):
        patient = (request.form.get("patient_id") or request.form.get("patient") or "").strip()
        if not patient:
            return show(400, "Choose the patient the application will work on.")
        if not auth.may_select_patient(account, patient):
            return show(403, f"You cannot open the record of patient {patient!r} (unknown or not allowed).")
    subject = Subject(account_id=account.id, username=account.username, role=account.role,
                      fhir_user=account.fhir_user, patient=patient, encounter=context.get("encounter"),
                      need_patient_banner=bool(context.get("banner")) if patient else False,
                      auth_time=sess.data.get("auth_time"), session=sess.sid)
    return _finish(sess, rid, auth.oauth.create_authorization_response(request=oauth_request, grant=grant,
                                                                       grant_user=subject))


def _finish(sess: Session, rid: str, response: Response) -> Response:
    smart().store.delete("requests", rid)
    sess.data["requests"] = [r for r in sess.data.get("requests", []) if r != rid]
    save_session(sess)
    return response


def _host(uri: str | None) -> str:
    from urllib.parse import urlsplit
    if not uri:
        return ""
    return urlsplit(uri).netloc or uri


# -- machine endpoints -------------------------------------------------------------------------------------
@bp.post("/token")
def token() -> Response:
    try:
        return smart().oauth.create_token_response()
    except InsecureTransportError:
        return insecure_transport()


@bp.post("/introspect")
def introspect() -> Response:
    try:
        return smart().oauth.create_endpoint_response("introspection")
    except InsecureTransportError:
        return insecure_transport()


@bp.post("/revoke")
def revoke() -> Response:
    try:
        return smart().oauth.create_endpoint_response("revocation")
    except InsecureTransportError:
        return insecure_transport()


@bp.post("/register")
def register() -> Response:
    if not request.is_json:
        return jsonify(error="invalid_request", error_description="send the client metadata as JSON"), 400
    try:
        return smart().oauth.create_endpoint_response("client_registration")
    except InsecureTransportError:
        return insecure_transport()


def _bearer_claims() -> dict | None:
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        return None
    auth = smart()
    try:
        return auth.authority.verify(header[7:].strip(), audience=auth.fhir_base(), issuer=auth.issuer())
    except TokenError:
        return None


@bp.post("/launch")
def launch() -> Response:
    """Create an EHR launch context: ``{"patient", "user"?, "encounter"?}`` → ``{"launch", ...}``.

    Callers: a confidential client (client_secret_basic or private_key_jwt), or a bearer token of a
    practitioner or administrator.
    """
    auth = smart()
    claims = _bearer_claims()
    if claims is not None:
        if claims.get("role") not in ("practitioner", "admin"):
            return jsonify(error="access_denied", error_description="only practitioners and administrators "
                           "may create launch contexts"), 403
    else:
        try:
            oauth_request = auth.oauth.create_oauth2_request(None)
            client = auth.oauth.authenticate_client(oauth_request, ["client_secret_basic", "private_key_jwt"],
                                                    "launch")
        except InsecureTransportError:
            return insecure_transport()
        except OAuth2Error as error:
            return auth.oauth.handle_error_response(None, error)
        if client is None:
            return jsonify(error="invalid_client"), 401
    body = request.get_json(silent=True) if request.is_json else request.form
    body = body or {}
    try:
        created = create_launch(auth.store, patient=str(body.get("patient") or ""), now=auth.now(),
                                user=body.get("user") or None, encounter=body.get("encounter") or None)
    except RegistryError as exc:
        return jsonify(error="invalid_request", error_description=str(exc)), 400
    return jsonify(created), 201


@bp.route("/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    claims = _bearer_claims()
    if claims is None or "openid" not in smart_scopes.split(claims.get("scope")):
        response = jsonify(error="invalid_token")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response
    info = {"sub": claims["sub"]}
    if claims.get("fhirUser") and "fhirUser" in smart_scopes.split(claims.get("scope")):
        info["fhirUser"] = claims["fhirUser"]
    response = jsonify(info)
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.get("/smart-style.json")
def smart_style() -> Response:
    response = jsonify({"color_background": "#f6f7f9", "color_error": "#b00020", "color_highlight": "#0a5cad",
                        "color_modal_backdrop": "", "color_success": "#1b7f3b", "color_text": "#1d1d1f",
                        "dim_border_radius": "6px", "dim_font_size": "16px", "dim_spacing_size": "16px",
                        "font_family_body": "system-ui, sans-serif",
                        "font_family_heading": "system-ui, sans-serif"})
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response
